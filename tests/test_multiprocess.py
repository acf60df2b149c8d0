"""Two processes on this machine (JAX multi-controller runtime, CPU
collectives over 127.0.0.1) train data-parallel over the global mesh and
match a single-process run: examples/multiprocess_train.py."""

import importlib.util
import pathlib

import numpy as np
import pytest

EXAMPLE = (pathlib.Path(__file__).resolve().parents[1] / "examples"
           / "multiprocess_train.py")
TIMEOUT_S = 120


@pytest.fixture(name="example", scope="module")
def fixture_example():
  spec = importlib.util.spec_from_file_location("multiprocess_train", EXAMPLE)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(name="runs", scope="module")
def fixture_runs(example, tmp_path_factory):
  """(results of each of two processes, the single-process results)."""
  out_dir = str(tmp_path_factory.mktemp("multiprocess"))
  workers = example.start_workers(2, out_dir)
  try:
    reference = example.single_process_results()
  finally:
    distributed = example.wait_for_workers(workers, out_dir, TIMEOUT_S)
  return distributed, reference


def test_two_processes_form_one_global_mesh(runs):
  distributed, _ = runs
  for result in distributed:
    assert result["process_count"] == 2
    assert result["device_count"] == 2


@pytest.mark.parametrize("name", [
    "optax.adam", "diffgrad", "expectigrad", "sgd_hd", "adam_hd",
    "gdtuo.Adam(optimizer=SGD(1e-5))"])
def test_data_parallel_step_matches_single_process(runs, name):
  distributed, reference = runs
  for leaf in ("w", "b"):
    key = f"{name}/{leaf}"
    for result in distributed:
      np.testing.assert_allclose(result[key], reference[key],
                                 rtol=1e-5, atol=1e-6)
