"""Soundness of the parity setup: the problem keeps the reference params away
from zero (so relative errors mean something) and the committed golden arrays
agree with the live upstream code within a tenth of the parity tolerance.

The optax contract shared by every transform is in test_contract.py.
"""

import numpy as np
import pytest

import torch_reference


@pytest.mark.parametrize("dtype", torch_reference.DTYPES)
@pytest.mark.parametrize("name", torch_reference.CASES)
def test_parity_problem_keeps_reference_params_away_from_zero(name, dtype):
  _, reference, _ = torch_reference.parity_runs(name, dtype)
  for key, value in reference.items():
    if key != "lr":
      assert np.min(np.abs(value)) > 0.5, key


@pytest.mark.parametrize("dtype", torch_reference.DTYPES)
@pytest.mark.parametrize("name", torch_reference.CASES)
def test_golden_arrays_match_live_torch(name, dtype):
  if not torch_reference.live_torch_available(torch_reference.CASES[name].algo):
    pytest.skip("torch reference not importable: the golden arrays are used")
  source, live, _ = torch_reference.parity_runs(name, dtype)
  assert source == "live"
  golden = torch_reference.golden_trajectory(name, dtype)
  assert golden.keys() == live.keys()
  for key in live:
    assert torch_reference.max_relative_difference(
        golden[key], live[key]) <= torch_reference.TOLERANCE[dtype] / 10, key
