"""Edge cases of the JAX transformations; each test failed before its fix.

bfloat16 and bool hyperparameters, a ``square`` learned value with only an
upper bound, a ``unit_interval`` value that rounds to 1, a dead unit under a
learned ``b2``, adam_hd's per-tensor rates on one or no leaf, donation of an
injected learned rate, and a traced ``gdtuo.SGDPerParam`` rate.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_extras
from optax_extras import gdtuo
from optax_extras import hyperoptimize
from optax_extras import hyperparameters
from optax_extras import Learned


@pytest.mark.parametrize("factory", [
    optax_extras.diffgrad, optax_extras.expectigrad, optax_extras.sgd_hd,
    optax_extras.adam_hd])
def test_bfloat16_scalar_learning_rate_is_a_number(factory):
  params = {"w": jnp.ones(4, jnp.bfloat16)}
  tx = factory(learning_rate=jnp.asarray(1e-3, jnp.bfloat16))
  updates, _ = tx.update(params, tx.init(params), params)
  assert bool(jnp.all(jnp.isfinite(updates["w"].astype(jnp.float32))))


def test_injected_bfloat16_beta_that_rounds_to_one_names_the_dtype():
  # optax.inject_hyperparams stores b2=0.999 in the params' dtype: 1.0 in
  # bfloat16, outside [0, 1); the error says why and what to pass.
  params = {"w": jnp.ones(4, jnp.bfloat16)}
  tx = optax.inject_hyperparams(optax_extras.diffgrad)(learning_rate=1e-3)
  with pytest.raises(ValueError, match=r"b2 must be in \[0, 1\).*bfloat16.*"
                     r"hyperparam_dtype=jnp.float32"):
    tx.init(params)
  tx = optax.inject_hyperparams(
      optax_extras.diffgrad, hyperparam_dtype=jnp.float32)(learning_rate=1e-3)
  state = tx.init(params)
  _, state = tx.update(params, state, params)
  assert state.inner_state[1][0].mu["w"].dtype == jnp.bfloat16


@pytest.mark.parametrize("make", [
    lambda: optax_extras.diffgrad(0.1, b1=True),
    lambda: optax_extras.adam_hd(0.1, b2=True),
    lambda: optax_extras.expectigrad(0.1, beta=True),
    lambda: optax_extras.sgd_hd(True),
    lambda: optax_extras.diffgrad(1e-3 + 2j),
    lambda: gdtuo.Adam(0.1, beta1=True),
])
def test_bool_and_complex_hyperparameters_are_rejected(make):
  with pytest.raises(ValueError, match="must be a real number"):
    make()


def test_square_space_with_only_an_upper_bound_stays_within_it():
  # A stiff quadratic drives the stored value down through 0: x**2 must not
  # come back above the bound from the negative side.
  high = 0.05
  tx = hyperoptimize(
      optax.sgd, {"learning_rate": Learned(0.04, "square", bounds=(None, high))},
      optax.sgd(1e-3))
  params = jnp.array([3.0, -2.0])
  state = tx.init(params)
  for _ in range(8):
    updates, state = tx.update(30.0 * params, state, params)
    params = optax.apply_updates(params, updates)
    rate = float(hyperparameters(state)[0]["learning_rate"])
    assert 0.0 <= rate <= high
    assert float(state.raw_hyperparams["square(learning_rate)"]) >= 0.0
  assert bool(jnp.all(jnp.isfinite(params)))


def test_unit_interval_value_rounding_to_one_is_never_used():
  # gdtuo's Adam with a large hyper-rate drives stored beta1 up until
  # (tanh(x) + 1) / 2 is exactly 1.0 in float32; that hyper-update is skipped
  # (beta1 = 1 makes Adam's bias correction 0 and the parameters NaN).
  params = jnp.arange(1.0, 1000.0)
  tx = gdtuo.Adam(0.1, optimizer=gdtuo.SGD(0.01))
  state = tx.init(params)
  for _ in range(4):
    updates, state = tx.update(jnp.sin(params) + 0.1, state, params)
    params = optax.apply_updates(params, updates)
    beta1 = float(hyperparameters(state)[0]["beta1"])
    assert 0.0 < beta1 < 1.0
  assert bool(jnp.all(jnp.isfinite(params)))


def test_initial_unit_interval_value_that_rounds_to_one_is_rejected():
  with pytest.raises(ValueError, match=r"'b1'.*float32.*rounds to 1\.0"):
    hyperoptimize(optax.adam, {"b1": Learned(1 - 1e-8, "unit_interval")},
                  optax.sgd(0.0), fixed={"learning_rate": 0.1})


def _learned_rate_after(grads_scale):
  tx = hyperoptimize(
      optax.adam, {"learning_rate": Learned(0.1, "log"),
                   "b2": Learned(0.99, "unit_interval")},
      optax.sgd(0.05))
  params = jnp.array([1.0, -2.0, 0.5, 3.0])
  state = tx.init(params)
  for _ in range(6):
    updates, state = tx.update(grads_scale * params, state, params)
    params = optax.apply_updates(params, updates)
  return float(hyperparameters(state)[0]["learning_rate"])


def test_dead_unit_does_not_freeze_a_learned_b2():
  # The last element's gradient is always zero: the tangent of sqrt(v) in b2
  # there is 0 * inf. It must add nothing, not make every hypergradient NaN.
  dead = jnp.array([1.0, 1.0, 1.0, 0.0])
  alive = jnp.array([1.0, 1.0, 1.0, 1e-3])
  rate_dead, rate_alive = _learned_rate_after(dead), _learned_rate_after(alive)
  assert rate_dead != pytest.approx(0.1, rel=1e-6)  # it moved
  assert rate_dead == pytest.approx(rate_alive, rel=0.05)


@pytest.mark.parametrize("params", [jnp.ones(3), {"w": jnp.ones((2, 2))}, {}])
@pytest.mark.parametrize("bounds", [(None, None), (0.0, 1.0)])
def test_adam_hd_per_tensor_on_one_or_no_leaf(params, bounds):
  tx = optax_extras.adam_hd(0.1, hypergradient="per_tensor",
                            learning_rate_bounds=bounds)
  state = tx.init(params)
  for _ in range(2):
    updates, state = tx.update(params, state, params)
  assert jax.tree.structure(updates) == jax.tree.structure(params)
  assert np.isfinite(float(state[1].learning_rate))


@pytest.mark.parametrize("factory", [optax_extras.adam_hd, optax_extras.sgd_hd])
def test_injected_learning_rate_is_not_aliased_in_the_state(factory):
  params = {"w": jnp.ones(4)}
  tx = optax.inject_hyperparams(factory)(learning_rate=0.1, hypergrad_lr=0.01)
  state = tx.init(params)
  pointers = [x.unsafe_buffer_pointer() for x in jax.tree.leaves(state)]
  assert len(set(pointers)) == len(pointers)

  def step(p, s):
    updates, s = tx.update(jax.tree.map(jnp.ones_like, p), s, p)
    return optax.apply_updates(p, updates), s

  params, state = jax.jit(step, donate_argnums=(0, 1))(params, state)
  assert bool(jnp.all(jnp.isfinite(params["w"])))


def test_learning_rate_array_given_is_not_donated_with_the_state():
  rate = jnp.asarray(0.1, jnp.float32)
  tx = optax_extras.adam_hd(rate, hypergrad_lr=0.01)
  params = {"w": jnp.ones(4)}
  state = tx.init(params)
  jax.jit(lambda p, s: tx.update(p, s, p), donate_argnums=(1,))(params, state)
  assert float(rate) == pytest.approx(0.1)


def test_sgd_per_param_with_a_traced_scalar_rate():
  params = {"w": jnp.ones(3), "b": jnp.ones(())}
  grads = jax.tree.map(jnp.ones_like, params)
  tx = optax.inject_hyperparams(gdtuo.SGDPerParam)(alpha=0.1)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params))
  np.testing.assert_allclose(updates["w"], -0.1 * np.ones(3), rtol=1e-6)
  traced = jax.jit(
      lambda a, g: gdtuo.SGDPerParam(a).update(g, optax.EmptyState())[0])
  np.testing.assert_allclose(traced(jnp.float32(0.2), grads)["b"], -0.2,
                             rtol=1e-6)


@pytest.mark.parametrize("make", [
    lambda: optax.inject_hyperparams(gdtuo.SGD, hyperparam_dtype=jnp.float32)(
        alpha=0.1, mu=0.9),
    lambda: optax.inject_hyperparams(
        gdtuo.RMSProp, hyperparam_dtype=jnp.float32)(alpha=0.1),
    lambda: optax.inject_hyperparams(
        gdtuo.Adam, hyperparam_dtype=jnp.float32)(alpha=0.1),
    lambda: gdtuo.Adam(0.1, beta1=jnp.float32(0.9)),
])
def test_gdtuo_rule_with_float32_hyperparameters_keeps_bfloat16_state(make):
  tx = make()
  params = {"w": jnp.ones(3, jnp.bfloat16)}
  grads = {"w": jnp.full(3, 0.5, jnp.bfloat16)}

  def body(carry, _):
    p, s = carry
    updates, s = tx.update(grads, s, p)
    return (optax.apply_updates(p, updates), s), None

  (params, state), _ = jax.lax.scan(body, (params, tx.init(params)), None,
                                    length=2)
  assert {x.dtype for x in jax.tree.leaves(state) if x.ndim} == {
      jnp.dtype(jnp.bfloat16)}


@pytest.mark.parametrize("values, level, match", [
    ({"alpha": None}, 0, "alpha must be"),
    ({"alpha": "x"}, 0, "alpha must be"),
    ({"alpha": True}, 0, "alpha must be"),
    ({"beta1": 1 - 1e-9}, 0, r"beta1 must be in \(0, 1\).*precision"),
    ({"alpha": 0.1}, 1.5, "level must be an int"),
    ({"alpha": 0.1}, True, "level must be an int"),
])
def test_set_hyperparameters_rejects_bad_values_naming_them(values, level,
                                                            match):
  state = gdtuo.Adam(optimizer=gdtuo.SGD(1e-5)).init(jnp.zeros(3))
  with pytest.raises(ValueError, match=match):
    optax_extras.set_hyperparameters(state, values, level=level)


def test_factory_needing_params_names_needs_params():
  tx = hyperoptimize(optax_extras.diffgrad, {"learning_rate": 1e-3},
                     optax.sgd(1e-5), fixed={"weight_decay": 0.01})
  params = jnp.ones(3)
  with pytest.raises(ValueError, match="needs_params=True"):
    tx.update(params, tx.init(params), params)


def _loss_after_two_steps(initial_rate, make):
  loss = lambda p: jnp.sum(jnp.sin(p) ** 2)
  params = jnp.array([1.0, -2.0, 3.0])
  tx = make(initial_rate)
  state = tx.init(params)
  for _ in range(2):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    params = optax.apply_updates(params, updates)
  return loss(params)


@pytest.mark.parametrize("make", [
    lambda a: hyperoptimize(optax.sgd, {"learning_rate": a, "momentum": 0.5},
                            optax.sgd(1e-3)),
    lambda a: gdtuo.Adam(a, optimizer=gdtuo.SGD(1e-3)),
])
def test_stack_is_differentiable_in_its_initial_value(make):
  # Forward and reverse mode through the contraction of several tangents
  # (some of whose tangents are symbolic zeros), against central differences.
  f = lambda a: _loss_after_two_steps(a, make)
  step = 1e-3
  expected = (f(0.1 + step) - f(0.1 - step)) / (2 * step)
  np.testing.assert_allclose(jax.grad(f)(0.1), expected, rtol=2e-2)
  np.testing.assert_allclose(jax.jvp(f, (0.1,), (1.0,))[1], expected,
                             rtol=2e-2)


@pytest.mark.parametrize("level", [0, np.int64(0), jnp.int32(0)])
def test_set_hyperparameters_takes_integer_levels(level):
  state = gdtuo.Adam(optimizer=gdtuo.SGD(1e-5)).init(jnp.zeros(3))
  state = optax_extras.set_hyperparameters(state, {"alpha": 0.05}, level=level)
  assert float(hyperparameters(state)[0]["alpha"]) == pytest.approx(0.05)
