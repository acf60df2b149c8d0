"""expectigrad: parity with `expectigrad.pytorch.Expectigrad`, the sparse
counter, NaN gradients and bad input."""

import math
import re

import jax.numpy as jnp
import numpy as np
import optax
import optax_extras
import pytest

import torch_reference
from torch_reference import DTYPES


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", torch_reference.cases_for("expectigrad"))
def test_params_match_torch_expectigrad(name, dtype):
  torch_reference.assert_params_match(name, dtype)


@pytest.mark.parametrize(
    ("argument", "value"),
    [("beta", 1.0), ("beta", -0.1), ("beta", math.nan),
     ("eps", 0.0), ("eps", -1e-8), ("eps", math.nan),
     ("sparse_counter", 1), ("sparse_counter", "yes")])
def test_bad_hyperparameter_raises_naming_argument_and_value(argument, value):
  with pytest.raises(ValueError, match=re.escape(f"{argument}={value!r}")):
    optax_extras.expectigrad(**{argument: value})


def test_untouched_element_gets_zero_update_and_zero_counter():
  tx = optax_extras.expectigrad(learning_rate=0.1)
  params = jnp.array([1.0, 2.0])
  state = tx.init(params)
  for _ in range(3):
    updates, state = tx.update(jnp.array([0.5, 0.0]), state)
  assert updates[1] == 0.0 and updates[0] != 0.0
  np.testing.assert_array_equal(optax.tree.get(state, "counter"), [3, 0])


def test_sparse_counter_skips_zero_gradients():
  tx = optax_extras.scale_by_expectigrad(beta=0.0)
  params = jnp.array([1.0])
  state = tx.init(params)
  for grad in (2.0, 0.0, 1.0):
    updates, state = tx.update(jnp.array([grad]), state)
  # The mean square over the 2 nonzero gradients: (4 + 1) / 2.
  np.testing.assert_allclose(updates, [1.0 / (math.sqrt(2.5) + 1e-8)],
                             rtol=1e-6)


def test_dense_counter_keeps_no_counter_in_state():
  state = optax_extras.expectigrad(sparse_counter=False).init(jnp.ones(3))
  assert optax.tree.get(state, "counter") is None


def test_low_precision_params_accumulate_in_float32_and_int32():
  state = optax_extras.expectigrad().init(jnp.ones(3, jnp.bfloat16))
  assert optax.tree.get(state, "sum_sq").dtype == jnp.float32
  assert optax.tree.get(state, "counter").dtype == jnp.int32
  assert optax.tree.get(state, "momentum").dtype == jnp.bfloat16


def test_nan_gradient_propagates_instead_of_being_swallowed():
  """The reference maps NaN means to 0 and then steps by g / eps forever;
  optax_extras lets the NaN through (documented)."""
  tx = optax_extras.expectigrad(learning_rate=0.1, beta=0.0)
  params = jnp.array([1.0, 2.0])
  state = tx.init(params)
  updates, state = tx.update(jnp.array([math.nan, 0.5]), state)
  assert np.isnan(updates[0]) and np.isfinite(updates[1])
  updates, state = tx.update(jnp.array([0.5, 0.5]), state)
  assert np.isnan(updates[0]) and np.isfinite(updates[1])


@pytest.mark.parametrize("sparse_counter", [True, False])
def test_counters_saturate_instead_of_wrapping(sparse_counter):
  """Past 2**31 - 1 steps the counts stay at the int32 maximum: a wrapped
  (negative) count would turn the step into g / eps."""
  largest = jnp.iinfo(jnp.int32).max
  tx = optax_extras.scale_by_expectigrad(beta=0.0,
                                         sparse_counter=sparse_counter)
  state = tx.init(jnp.zeros(2))
  counter = (jnp.full(2, largest, jnp.int32) if sparse_counter else None)
  state = state._replace(count=jnp.asarray(largest, jnp.int32),
                         sum_sq=jnp.full(2, float(largest)), counter=counter)
  grads = jnp.array([1.0, -1.0])
  updates, state = tx.update(grads, state)
  assert state.count == largest
  if sparse_counter:
    np.testing.assert_array_equal(state.counter, [largest, largest])
  np.testing.assert_allclose(updates, grads, rtol=1e-6)


@pytest.mark.parametrize("make", [optax_extras.expectigrad,
                                  optax_extras.scale_by_expectigrad])
def test_update_accepts_extra_args(make):
  tx = make()
  assert isinstance(tx, optax.GradientTransformationExtraArgs)
  params = jnp.array([1.0, -2.0])
  updates, _ = tx.update(params, tx.init(params), params, value=jnp.ones([]))
  assert updates.shape == params.shape
