"""diffgrad: parity with `torch_optimizer.DiffGrad`, options and bad input."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax_extras
import pytest

import torch_reference
from torch_reference import DTYPES


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", torch_reference.cases_for("diffgrad"))
def test_params_match_torch_optimizer_diffgrad(name, dtype):
  torch_reference.assert_params_match(name, dtype)


@pytest.mark.parametrize(
    ("argument", "value"),
    [("b1", 1.0), ("b1", -0.1), ("b1", math.nan),
     ("b2", 1.0), ("b2", 1.5), ("b2", math.nan),
     ("eps", -1e-8), ("eps", math.nan)])
def test_bad_hyperparameter_raises_naming_argument_and_value(argument, value):
  with pytest.raises(ValueError, match=re.escape(f"{argument}={value!r}")):
    optax_extras.diffgrad(**{argument: value})


@pytest.mark.parametrize(
    ("argument", "value"), [("b1", 1.0), ("b2", -0.5), ("eps", -1.0)])
def test_scale_by_diffgrad_validates_too(argument, value):
  with pytest.raises(ValueError, match=re.escape(f"{argument}={value!r}")):
    optax_extras.scale_by_diffgrad(**{argument: value})


def test_nan_gradient_propagates_to_update_and_state():
  tx = optax_extras.diffgrad(learning_rate=0.1)
  params = jnp.array([1.0, 2.0])
  state = tx.init(params)
  updates, state = tx.update(jnp.array([math.nan, 0.5]), state, params)
  assert np.isnan(updates[0]) and np.isfinite(updates[1])
  updates, state = tx.update(jnp.array([0.5, 0.5]), state, params)
  assert np.isnan(updates[0]) and np.isfinite(updates[1])
  assert np.isnan(optax.tree.get(state, "mu")[0])


def test_mu_dtype_sets_first_moment_dtype_only():
  tx = optax_extras.diffgrad(learning_rate=0.1, mu_dtype=jnp.bfloat16)
  params = jnp.array([1.0, 2.0, 3.0])
  updates, state = tx.update(jnp.array([0.5, -0.5, 1.0]), tx.init(params),
                             params)
  assert optax.tree.get(state, "mu").dtype == jnp.bfloat16
  assert optax.tree.get(state, "nu").dtype == jnp.float32
  assert updates.dtype == jnp.float32


def test_stored_previous_gradient_includes_weight_decay():
  tx = optax_extras.diffgrad(learning_rate=0.1, weight_decay=0.5)
  params = jnp.array([1.0, -2.0])
  _, state = tx.update(jnp.array([0.25, 0.25]), tx.init(params), params)
  np.testing.assert_array_equal(optax.tree.get(state, "prev_grad"),
                                jnp.array([0.75, -0.75]))


def test_scale_by_diffgrad_jits_with_traced_decays():
  """b1, b2 and eps may be traced (no Python branch on their values)."""
  params = jnp.array([1.0, -2.0])
  grads = jnp.array([0.5, 0.25])

  @jax.jit
  def update(b1, b2, eps):
    tx = optax_extras.scale_by_diffgrad(b1=b1, b2=b2, eps=eps)
    return tx.update(grads, tx.init(params))[0]

  expected = optax_extras.scale_by_diffgrad(b1=0.8, b2=0.99, eps=1e-6).update(
      grads, optax_extras.scale_by_diffgrad().init(params))[0]
  np.testing.assert_allclose(update(0.8, 0.99, 1e-6), expected, rtol=1e-5)


@pytest.mark.parametrize("make", [
    optax_extras.diffgrad,
    lambda: optax_extras.diffgrad(weight_decay=0.1),
    optax_extras.scale_by_diffgrad])
def test_update_accepts_extra_args(make):
  tx = make()
  assert isinstance(tx, optax.GradientTransformationExtraArgs)
  params = jnp.array([1.0, -2.0])
  updates, _ = tx.update(params, tx.init(params), params, value=jnp.ones([]))
  assert updates.shape == params.shape
