"""sgd_hd and adam_hd: parity with hypergrad.SGDHD / AdamHD (seeds/002), the
learned rate in the state, schedule semantics and bad input."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax_extras
import pytest

import torch_reference
from torch_reference import CASES
from torch_reference import DTYPES

SGD_HD_CASES = torch_reference.cases_for("sgd_hd")
# AdamHD updates the rate inside its per-tensor loop: exact only for one tensor.
ADAM_HD_CASES = [name for name in torch_reference.cases_for("adam_hd")
                 if CASES[name].reference == "upstream"]
# Our torch AdamHD with one global dot product (the paper), several tensors.
ADAM_HD_GLOBAL_DOT_CASES = [name for name in torch_reference.cases_for("adam_hd")
                            if CASES[name].reference == "global_dot"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", SGD_HD_CASES)
def test_sgd_hd_params_match_reference_sgdhd(name, dtype):
  torch_reference.assert_params_match(name, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", SGD_HD_CASES)
def test_sgd_hd_learned_rate_matches_reference_sgdhd(name, dtype):
  torch_reference.assert_rates_match(name, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ADAM_HD_CASES)
def test_adam_hd_single_tensor_params_match_reference_adamhd(name, dtype):
  torch_reference.assert_params_match(name, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ADAM_HD_CASES)
def test_adam_hd_single_tensor_learned_rate_matches_reference_adamhd(
    name, dtype):
  torch_reference.assert_rates_match(name, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ADAM_HD_GLOBAL_DOT_CASES)
def test_adam_hd_multi_tensor_params_match_torch_global_dot_adamhd(
    name, dtype):
  torch_reference.assert_params_match(name, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ADAM_HD_GLOBAL_DOT_CASES)
def test_adam_hd_multi_tensor_learned_rate_matches_torch_global_dot_adamhd(
    name, dtype):
  torch_reference.assert_rates_match(name, dtype)


# ------------------------------------------------------------- learned rate

HD = {
    "sgd_hd": lambda **kw: optax_extras.sgd_hd(hypergrad_lr=1e-2, **kw),
    "adam_hd": lambda **kw: optax_extras.adam_hd(hypergrad_lr=1e-3, **kw),
}


def _params():
  return {"w": jnp.array([[1.0, -2.0], [0.5, 3.0]]), "b": jnp.array([1.5])}


def _grads(params):
  """Gradient of sum(p^2 / 2 + sin(p))."""
  return jax.tree.map(lambda p: p + jnp.cos(p), params)


def _run(tx, steps):
  params = _params()
  state = tx.init(params)
  rates, grads_seen, updates_seen = [], [], []
  for _ in range(steps):
    grads = _grads(params)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    rates.append(optax.tree.get(state, "learning_rate"))
    grads_seen.append(grads)
    updates_seen.append(updates)
  return rates, grads_seen, updates_seen, state


@pytest.mark.parametrize("name", HD)
def test_tree_get_reads_learned_rate(name):
  tx = HD[name](learning_rate=0.1)
  state = tx.init(_params())
  assert float(optax.tree.get(state, "learning_rate")) == pytest.approx(0.1)
  _, state = tx.update(_grads(_params()), state)
  _, state = tx.update(_grads(_params()), state)
  assert float(optax.tree.get(state, "learning_rate")) == float(
      state[-1].learning_rate)


@pytest.mark.parametrize("name", HD)
def test_tree_get_reads_learned_rate_inside_chain(name):
  tx = optax.chain(optax.clip_by_global_norm(10.0), HD[name](learning_rate=0.1,
                                                             weight_decay=0.1))
  rates, _, _, state = _run(tx, steps=3)
  rate = optax.tree.get(state, "learning_rate")
  assert rate.shape == () and float(rate) == float(rates[-1])


@pytest.mark.parametrize("name", HD)
def test_learned_rate_moves(name):
  rates, _, _, _ = _run(HD[name](learning_rate=0.1), steps=5)
  assert float(rates[0]) == pytest.approx(0.1)
  assert abs(float(rates[-1]) - 0.1) > 1e-4


@pytest.mark.parametrize("name", HD)
def test_learned_rate_starts_from_zero_learning_rate(name):
  rates, _, _, _ = _run(HD[name](learning_rate=0.0), steps=4)
  assert float(rates[0]) == 0.0 and float(rates[-1]) > 0.0


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_hd_without_hypergradient_equals_optax_sgd(nesterov):
  with jax.enable_x64(True):
    _, _, actual, _ = _run(optax_extras.sgd_hd(
        0.1, hypergrad_lr=0.0, momentum=0.7, nesterov=nesterov), steps=5)
    _, _, expected, _ = _run(
        optax.sgd(0.1, momentum=0.7, nesterov=nesterov), steps=5)
  for a, e in zip(actual, expected):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-14),
                 a, e)


def test_adam_hd_without_hypergradient_and_eps_zero_equals_optax_adam():
  """With eps = 0 the eps placements (before/after bias correction) agree."""
  with jax.enable_x64(True):
    _, _, actual, _ = _run(optax_extras.adam_hd(
        0.1, hypergrad_lr=0.0, eps=0.0), steps=5)
    _, _, expected, _ = _run(optax.adam(0.1, eps=0.0), steps=5)
  for a, e in zip(actual, expected):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-13),
                 a, e)


def test_sgd_hd_schedule_is_base_with_additive_learned_correction():
  """alpha_t = s(t - 1) + hypergrad_lr * sum_{i <= t} <g_i, g_{i-1}>."""
  # Values exact in float32: optax evaluates an int32 count in float32.
  schedule = optax.linear_schedule(0.25, 0.0625, transition_steps=4)
  hypergrad_lr = 0.01
  with jax.enable_x64(True):
    rates, grads, updates, _ = _run(
        optax_extras.sgd_hd(schedule, hypergrad_lr=hypergrad_lr), steps=8)
    correction, previous = 0.0, None
    for t, (rate, g, u) in enumerate(zip(rates, grads, updates), start=1):
      if previous is not None:
        correction += hypergrad_lr * sum(
            float(jnp.vdot(a, b)) for a, b in zip(jax.tree.leaves(g),
                                                  jax.tree.leaves(previous)))
      expected = float(schedule(t - 1)) + correction
      assert float(rate) == pytest.approx(expected, rel=1e-13), t
      for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(g)):
        np.testing.assert_allclose(a, -expected * b, rtol=1e-13)
      previous = g
  assert correction != 0.0


@pytest.mark.parametrize("name", HD)
def test_zero_hypergrad_lr_follows_schedule(name):
  schedule = optax.exponential_decay(0.1, transition_steps=1, decay_rate=0.5)
  tx = optax_extras.sgd_hd if name == "sgd_hd" else optax_extras.adam_hd
  rates, _, _, _ = _run(tx(schedule, hypergrad_lr=0.0), steps=4)
  np.testing.assert_allclose(rates, [schedule(t) for t in range(4)],
                             rtol=1e-6)


@pytest.mark.parametrize("name", HD)
def test_nan_gradient_makes_learned_rate_nan_for_later_steps(name):
  tx = HD[name](learning_rate=0.1)
  params = jnp.array([1.0, 2.0])
  state = tx.init(params)
  for grads in ([0.5, 0.5], [math.nan, 0.5], [0.5, 0.5], [0.5, 0.5]):
    _, state = tx.update(jnp.array(grads), state)
  assert np.isnan(optax.tree.get(state, "learning_rate"))


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize(
    ("argument", "value"),
    [("hypergrad_lr", -1e-3), ("hypergrad_lr", math.nan),
     ("momentum", -0.5), ("momentum", math.nan),
     ("dampening", 1.5), ("dampening", -0.1),
     ("nesterov", 1), ("nesterov", "true")])
def test_sgd_hd_bad_hyperparameter_raises_naming_argument_and_value(
    argument, value):
  kwargs = {"momentum": 0.9} if argument == "nesterov" else {}
  with pytest.raises(ValueError, match=re.escape(f"{argument}={value!r}")):
    optax_extras.sgd_hd(0.1, **kwargs, **{argument: value})


@pytest.mark.parametrize(
    ("momentum", "dampening"), [(0.0, 0.0), (0.9, 0.1)])
def test_sgd_hd_nesterov_needs_momentum_and_no_dampening(momentum, dampening):
  message = f"momentum={momentum!r}, dampening={dampening!r}"
  with pytest.raises(ValueError, match=re.escape(message)):
    optax_extras.sgd_hd(0.1, momentum=momentum, dampening=dampening,
                        nesterov=True)


@pytest.mark.parametrize(
    ("argument", "value"),
    [("hypergrad_lr", -1e-8), ("b1", 1.0), ("b1", -0.1), ("b2", 1.0),
     ("b2", math.nan), ("eps", -1e-8), ("eps", math.inf)])
def test_adam_hd_bad_hyperparameter_raises_naming_argument_and_value(
    argument, value):
  with pytest.raises(ValueError, match=re.escape(f"{argument}={value!r}")):
    optax_extras.adam_hd(**{argument: value})
