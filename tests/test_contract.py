"""optax's contract, for every public transform of optax_extras.

Modelled on optax's own `optax/contrib/_common_test.py` (it ships in the
optax wheel): extra args, no recompilation, convergence on a parabola and on
Rosenbrock, `inject_hyperparams`, dtypes, `lax.cond`, `MultiSteps`,
schedules, optax's wrappers; and the places users put optimizers: donated
buffers, eight sharded devices, orbax checkpoints, a Flax NNX training step.
Every test runs over `TRANSFORMS` (or, for the expensive integration tests,
over `REPRESENTATIVE`, one of each kind).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import re
from collections.abc import Callable
from typing import Any

import chex
from flax import nnx
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import optax_extras
from optax_extras import gdtuo


@dataclasses.dataclass(frozen=True)
class Case:
  """One public transform: ``factory(**kwargs)``.

  ``converge`` overrides kwargs for the convergence targets (a step size that
  converges within `CONVERGENCE_STEPS`); ``learning_rate`` says whether the
  factory takes a ``learning_rate`` (a float or a schedule);
  ``weight_decay`` whether it takes a coupled ``weight_decay``.
  """

  factory: Callable[..., optax.GradientTransformation]
  kwargs: dict[str, Any]
  converge: dict[str, Any] = dataclasses.field(default_factory=dict)
  learning_rate: bool = True
  weight_decay: bool = False

  def make(self, **overrides):
    return self.factory(**{**self.kwargs, **overrides})


def _hyperoptimize_adam(learning_rate=0.01, b1=0.9, hyper_lr=1e-4):
  return optax_extras.hyperoptimize(
      optax.adam,
      {"learning_rate": optax_extras.Learned(learning_rate, "log"),
       "b1": optax_extras.Learned(b1, "unit_interval")},
      optax.sgd(hyper_lr))


def _stacked(constructor, **fixed):
  """``constructor(alpha, **fixed)`` learned by ``gdtuo.SGD(hyper)``."""

  def make(alpha, hyper=1e-5):
    return constructor(alpha, **fixed, optimizer=gdtuo.SGD(hyper))

  return make


def _three_levels(alpha=0.01):
  return gdtuo.Adam(alpha, optimizer=gdtuo.Adam(1e-4,
                                                optimizer=gdtuo.SGD(1e-6)))


TRANSFORMS = {
    "diffgrad": Case(optax_extras.diffgrad, dict(
        learning_rate=0.01, b1=0.8, b2=0.99, eps=1e-6, weight_decay=0.1),
                     converge=dict(learning_rate=0.05, weight_decay=0.0),
                     weight_decay=True),
    "diffgrad_no_weight_decay": Case(optax_extras.diffgrad, dict(
        learning_rate=0.01, b1=0.8, b2=0.99, eps=1e-6),
                                     converge=dict(learning_rate=0.05)),
    "expectigrad": Case(optax_extras.expectigrad, dict(
        learning_rate=0.01, beta=0.8, eps=1e-6), converge=dict(
            learning_rate=0.05)),
    "expectigrad_dense_counter": Case(optax_extras.expectigrad, dict(
        learning_rate=0.01, beta=0.8, eps=1e-6, sparse_counter=False),
                                      converge=dict(learning_rate=0.05)),
    "sgd_hd": Case(optax_extras.sgd_hd, dict(
        learning_rate=0.01, hypergrad_lr=1e-4), converge=dict(
            learning_rate=1e-3, hypergrad_lr=1e-7)),
    "sgd_hd_momentum": Case(optax_extras.sgd_hd, dict(
        learning_rate=0.01, hypergrad_lr=1e-3, momentum=0.5, dampening=0.1,
        weight_decay=0.1), converge=dict(
            learning_rate=1e-3, hypergrad_lr=1e-7, weight_decay=0.0),
                           weight_decay=True),
    "sgd_hd_nesterov": Case(optax_extras.sgd_hd, dict(
        learning_rate=0.01, hypergrad_lr=1e-3, momentum=0.5, nesterov=True,
        weight_decay=0.05), converge=dict(
            learning_rate=1e-3, hypergrad_lr=1e-7, weight_decay=0.0),
                           weight_decay=True),
    "adam_hd": Case(optax_extras.adam_hd, dict(
        learning_rate=0.01, hypergrad_lr=1e-4, b1=0.8, b2=0.99, eps=1e-6,
        weight_decay=0.1), converge=dict(
            learning_rate=0.05, hypergrad_lr=1e-6, weight_decay=0.0),
                    weight_decay=True),
    "hyperoptimize_adam": Case(_hyperoptimize_adam, {}, converge=dict(
        learning_rate=0.05), learning_rate=False),
    "gdtuo_sgd": Case(_stacked(gdtuo.SGD), dict(alpha=0.01),
                      converge=dict(alpha=1e-3, hyper=1e-8),
                      learning_rate=False),
    "gdtuo_sgd_momentum": Case(_stacked(gdtuo.SGD, mu=0.5), dict(alpha=0.01),
                               converge=dict(alpha=1e-3, hyper=1e-8),
                               learning_rate=False),
    "gdtuo_sgd_per_param": Case(_stacked(gdtuo.SGDPerParam), dict(alpha=0.05),
                                converge=dict(alpha=1e-3, hyper=1e-8),
                                learning_rate=False),
    "gdtuo_adagrad": Case(_stacked(gdtuo.AdaGrad), dict(alpha=0.1),
                          converge=dict(alpha=0.5), learning_rate=False),
    "gdtuo_rmsprop": Case(_stacked(gdtuo.RMSProp), dict(alpha=0.01),
                          converge=dict(alpha=0.01, hyper=1e-8),
                          learning_rate=False),
    "gdtuo_rmsprop_alpha": Case(_stacked(gdtuo.RMSPropAlpha), dict(alpha=0.01),
                                converge=dict(alpha=0.01, hyper=1e-8),
                                learning_rate=False),
    "gdtuo_adam": Case(_stacked(gdtuo.Adam), dict(alpha=0.01),
                       converge=dict(alpha=0.05), learning_rate=False),
    "gdtuo_adam_baydin": Case(_stacked(gdtuo.AdamBaydin), dict(alpha=0.01),
                              converge=dict(alpha=0.05),
                              learning_rate=False),
    "gdtuo_adam_bare": Case(gdtuo.Adam, dict(alpha=0.01),
                            converge=dict(alpha=0.05), learning_rate=False),
    "gdtuo_three_levels": Case(_three_levels, {}, converge=dict(alpha=0.05),
                               learning_rate=False),
}
# One of each kind, for the expensive integration tests.
REPRESENTATIVE = ("diffgrad", "expectigrad", "sgd_hd_nesterov", "adam_hd",
                  "hyperoptimize_adam", "gdtuo_adam", "gdtuo_sgd_per_param",
                  "gdtuo_three_levels")
WITH_LEARNING_RATE = [n for n, c in TRANSFORMS.items() if c.learning_rate]
WITH_WEIGHT_DECAY = [n for n, c in TRANSFORMS.items() if c.weight_decay]
CONVERGENCE_STEPS = 20_000


def _make(name, **overrides):
  return TRANSFORMS[name].make(**overrides)


def _params(dtype=jnp.float32):
  return {
      "w": jnp.linspace(-1.0, 1.5, 12).reshape(3, 4).astype(dtype),
      "b": jnp.array([0.5, -0.25, 1.0, 2.0], dtype),
      "s": jnp.array(0.75, dtype),
  }


def _grads(params, shift=0.0):
  """A gradient that depends on the params (and on `shift`)."""
  return jax.tree.map(
      lambda p: (jnp.sin(3.0 * p) + 0.5 * p + shift).astype(p.dtype), params)


def _run(tx, params, steps=3, jit=True):
  update = jax.jit(tx.update) if jit else tx.update
  state = tx.init(params)
  updates = None
  for _ in range(steps):
    updates, state = update(_grads(params), state, params)
    params = optax.apply_updates(params, updates)
  return params, state, updates


@functools.cache
def _run_named(name, dtype):
  """Three jitted steps of `TRANSFORMS[name]` on `_params(dtype)` (x64 off)."""
  return _run(_make(name), _params(jnp.dtype(dtype)))


def _assert_close(actual, expected, rtol, atol=0.0):
  jax.tree.map(
      lambda a, e: np.testing.assert_allclose(
          np.asarray(a, np.float64), np.asarray(e, np.float64), rtol=rtol,
          atol=atol),
      actual, expected)


# ----------------------------------------------------- optax's own contract

def _parabola(dtype):
  target = jnp.array([1.0, -1.0, 1.0], dtype)
  return (jnp.array([-1.0, 10.0, 1.0], dtype), target,
          lambda p: jnp.sum(jnp.square(p - target)))


def _rosenbrock(dtype):
  return (jnp.zeros(2, dtype), jnp.ones(2, dtype),
          lambda p: jnp.square(1.0 - p[0]) + 100.0 * jnp.square(
              p[1] - p[0] ** 2))


def _mixed_tensors(dtype):
  target = (jnp.array([1.0, -1.0, 2.0], dtype),
            jnp.array([[1.0, 0.0], [-1.0, 1.0]], dtype))
  return (jax.tree.map(jnp.zeros_like, target), target,
          lambda p: sum(jnp.sum(jnp.square(x - t)) for x, t in zip(p, target)))


@pytest.mark.parametrize("name", TRANSFORMS)
def test_returns_extra_args_transformation_and_accepts_extra_args(name):
  tx = _make(name)
  assert isinstance(tx, optax.GradientTransformationExtraArgs)
  params, _, objective = _rosenbrock(jnp.float32)

  @jax.jit
  def step(params, state):
    value, grads = jax.value_and_grad(objective)(params)
    updates, state = tx.update(grads, state, params, value=value,
                               unexpected_extra_arg=1)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  params, state = step(params, state)
  step(params, state)
  assert step._cache_size() == 1


@pytest.mark.parametrize("target", [_parabola, _rosenbrock, _mixed_tensors])
@pytest.mark.parametrize("name", TRANSFORMS)
def test_converges(name, target):
  case = TRANSFORMS[name]
  tx = case.make(**case.converge)
  params, expected, objective = target(jnp.float32)
  state = optax.tree.map_params(tx, lambda v: v, tx.init(params))

  def step(carry, _):
    params, state = carry
    grads = jax.grad(objective)(params)
    updates, state = tx.update(grads, state, params)
    return (optax.apply_updates(params, updates), state), None

  (params, _), _ = jax.jit(lambda c: jax.lax.scan(
      step, c, length=CONVERGENCE_STEPS))((params, state))
  _assert_close(params, expected, rtol=3e-2, atol=3e-2)


_WRAPPERS = {
    "schedule_free": lambda tx: optax.contrib.schedule_free(tx, 1e-2),
    "mechanize": lambda tx: optax.contrib.mechanize(tx, weight_decay=0.0),
    "reduce_on_plateau": lambda tx: optax.chain(
        tx, optax.contrib.reduce_on_plateau()),
}


@pytest.mark.parametrize("wrapper", _WRAPPERS)
@pytest.mark.parametrize("name", TRANSFORMS)
def test_works_inside_optax_wrappers(name, wrapper):
  tx = _WRAPPERS[wrapper](_make(name))
  params = _params()
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    loss, grads = jax.value_and_grad(
        lambda p: sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(p)))(
            params)
    updates, state = tx.update(grads, state, params, value=loss)
    return optax.apply_updates(params, updates), state

  for _ in range(3):
    params, state = step(params, state)
  chex.assert_trees_all_equal_shapes_and_dtypes(params, _params())
  chex.assert_tree_all_finite(params)
  assert step._cache_size() == 1


@pytest.mark.parametrize("name", TRANSFORMS)
def test_no_recompilation_on_second_jitted_call(name):
  tx = _make(name)
  chex.clear_trace_counter()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(params, state):
    updates, state = tx.update(_grads(params), state, params)
    return optax.apply_updates(params, updates), state

  params = _params()
  state = tx.init(params)
  for _ in range(3):
    params, state = step(params, state)
  chex.assert_tree_all_finite(params)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32",
                                   "float64"])
@pytest.mark.parametrize("name", TRANSFORMS)
def test_state_structure_is_stable_under_lax_cond(name, dtype):
  with jax.enable_x64(dtype == "float64"):
    tx = _make(name)
    params = _params(jnp.dtype(dtype))
    grads = _grads(params)
    _, state, _ = _run(tx, params, steps=1)

    @jax.jit
    def maybe_step(take_step, state):
      return jax.lax.cond(take_step,
                          lambda s: tx.update(grads, s, params)[1],
                          lambda s: s, state)

    stepped = maybe_step(True, state)
    skipped = maybe_step(False, state)
    chex.assert_trees_all_equal_shapes_and_dtypes(stepped, state)
    chex.assert_trees_all_equal(skipped, state)


# --------------------------------------------------------- dtypes and trees

@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
@pytest.mark.parametrize("name", TRANSFORMS)
def test_updates_keep_param_dtype_and_are_finite(name, dtype):
  _, state, updates = _run_named(name, dtype)
  chex.assert_trees_all_equal_shapes_and_dtypes(
      updates, _params(jnp.dtype(dtype)))
  for leaf in jax.tree.leaves(updates):
    assert np.all(np.isfinite(np.asarray(leaf, np.float32)))
  # Arrays of the params' shapes keep their dtype (float32 at least for sums);
  # scalars (learned rates, hyperparameters) may have the default float dtype
  # (float64 under JAX_ENABLE_X64).
  allowed = {jnp.dtype(dtype), jnp.dtype(jnp.float32)}
  for leaf in jax.tree.leaves(state):
    if jnp.issubdtype(leaf.dtype, jnp.floating):
      assert leaf.dtype in (allowed | {jnp.result_type(float)}
                            if leaf.ndim == 0 else allowed), leaf


@pytest.mark.parametrize("name", TRANSFORMS)
def test_updates_and_state_stay_float64_under_x64(name):
  with jax.enable_x64(True):
    params = _params(jnp.float64)
    _, state, updates = _run(_make(name), params)
    chex.assert_trees_all_equal_shapes_and_dtypes(updates, params)
    assert {leaf.dtype for leaf in jax.tree.leaves(state)} <= {
        jnp.dtype(jnp.float64), jnp.dtype(jnp.int32)}


@pytest.mark.parametrize("name", TRANSFORMS)
def test_tree_with_none_empty_zero_size_and_scalar_leaves(name):
  params = {
      "w": jnp.ones((2, 3)),
      "none": None,
      "empty": {},
      "zero_size": jnp.ones((0, 3)),
      "scalar": jnp.array(2.0),
  }
  new_params, _, updates = _run(_make(name), params, steps=2)
  chex.assert_trees_all_equal_shapes_and_dtypes(updates, params)
  chex.assert_trees_all_equal_shapes_and_dtypes(new_params, params)
  chex.assert_tree_all_finite(updates)


@pytest.mark.parametrize("name", TRANSFORMS)
@pytest.mark.parametrize("jit", [True, False])
def test_tree_without_leaves(name, jit):
  """As `optax.adam`: no parameters, no updates (jitted and eager)."""
  for params in ({}, [], {"a": None}):
    new_params, _, updates = _run(_make(name), params, steps=2, jit=jit)
    assert jax.tree.structure(updates) == jax.tree.structure(params)
    assert jax.tree.structure(new_params) == jax.tree.structure(params)


@pytest.mark.parametrize("name", TRANSFORMS)
def test_step_counts_are_int32(name):
  _, state, _ = _run_named(name, "float32")
  for _, value in optax.tree.get_all_with_path(state, "count"):
    assert value.dtype == jnp.int32


_SHAPES = st.lists(
    st.lists(st.integers(0, 3), min_size=0, max_size=3).map(tuple),
    min_size=1, max_size=4)


@pytest.mark.parametrize("name", REPRESENTATIVE)
@settings(max_examples=5, deadline=None)
@given(shapes=_SHAPES,
       dtype=st.sampled_from([jnp.float32, jnp.bfloat16, jnp.float16]))
def test_updates_match_param_shapes_and_dtypes(name, shapes, dtype):
  params = [jnp.full(shape, 0.5, dtype) for shape in shapes]
  _, state, updates = _run(_make(name), params, steps=2)
  chex.assert_trees_all_equal_shapes_and_dtypes(updates, params)
  chex.assert_trees_all_equal_shapes_and_dtypes(
      state, _make(name).init(params))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("name", TRANSFORMS)
def test_low_precision_steps_keep_dtypes_without_retracing(name, dtype):
  """Traced float32 hyperparameters (a hyper-level's) must not promote a
  bfloat16/float16 step or state, or the second jitted step would retrace."""
  tx = _make(name)
  params = _params(dtype)
  grads = jax.tree.map(lambda x: 0.5 * x, params)
  state = tx.init(params)
  update = jax.jit(tx.update)
  updates, new_state = update(grads, state, params)
  updates, new_state = update(grads, new_state, params)
  assert update._cache_size() == 1
  assert [x.dtype for x in jax.tree.leaves(new_state)] == [
      x.dtype for x in jax.tree.leaves(state)]


@pytest.mark.parametrize("grad_dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("name", TRANSFORMS)
def test_state_is_a_scan_carry_for_gradients_of_another_dtype(
    name, grad_dtype):
  tx = _make(name)
  params = _params()
  grads = jax.tree.map(lambda x: (0.5 * x).astype(grad_dtype), params)

  def step(state, _):
    updates, state = tx.update(grads, state, params)
    return state, updates

  state = tx.init(params)
  final, updates = jax.lax.scan(step, state, length=3)
  assert [x.dtype for x in jax.tree.leaves(final)] == [
      x.dtype for x in jax.tree.leaves(state)]
  assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))


# ---------------------------------------- inject_hyperparams, MultiSteps

def _injectable(name):
  """The factory and its keyword arguments, with every number bound."""
  case = TRANSFORMS[name]
  arguments = inspect.signature(case.factory).bind(**case.kwargs)
  arguments.apply_defaults()
  return case.factory, dict(arguments.arguments)


@pytest.mark.parametrize("name", TRANSFORMS)
def test_inject_hyperparams_injects_every_numeric_hyperparameter(name):
  factory, kwargs = _injectable(name)
  state = optax.inject_hyperparams(factory)(**kwargs).init(_params())
  numeric = {k for k, v in kwargs.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool)}
  assert set(state.hyperparams) == numeric


@pytest.mark.parametrize("name", TRANSFORMS)
def test_inject_hyperparams_gives_same_result_under_jit(name):
  factory, kwargs = _injectable(name)
  with jax.enable_x64(True):
    params = _params(jnp.float64)
    expected, expected_state, _ = _run(factory(**kwargs), params, steps=5)
    injected = optax.inject_hyperparams(factory)(**kwargs)
    actual, actual_state, _ = _run(injected, params, steps=5)
  _assert_close(actual, expected, rtol=1e-12)
  assert (jax.tree.structure(actual_state.inner_state)
          == jax.tree.structure(expected_state))


@pytest.mark.parametrize("name", WITH_WEIGHT_DECAY)
def test_state_structure_does_not_depend_on_weight_decay(name):
  zero, some = _make(name, weight_decay=0.0), _make(name, weight_decay=0.1)
  params = _params()
  assert (jax.tree.structure(zero.init(params))
          == jax.tree.structure(some.init(params)))
  # A concrete zero needs no params; an injected (traced) one does.
  zero.update(_grads(params), zero.init(params))
  injected = optax.inject_hyperparams(TRANSFORMS[name].factory)(
      **{**TRANSFORMS[name].kwargs, "weight_decay": 0.0})
  state = injected.init(params)
  _, new_state = jax.jit(injected.update)(_grads(params), state, params)
  assert jax.tree.structure(new_state) == jax.tree.structure(state)
  with pytest.raises(ValueError, match="weight_decay=.*needs the parameters"):
    jax.jit(injected.update)(_grads(params), state)


@pytest.mark.parametrize("name", WITH_WEIGHT_DECAY)
def test_weight_decay_without_params_raises(name):
  tx = _make(name, weight_decay=0.1)
  params = _params()
  with pytest.raises(ValueError,
                     match=r"weight_decay=0\.1 needs the parameters"):
    tx.update(_grads(params), tx.init(params))


@pytest.mark.parametrize("name", TRANSFORMS)
def test_multisteps_equals_one_step_on_the_mean_gradient(name):
  every = 3
  with jax.enable_x64(True):
    tx = _make(name)
    multi = optax.MultiSteps(_make(name), every_k_schedule=every,
                             accumulator_dtype=jnp.float64)
    multi_update = jax.jit(multi.update)
    params = expected = _params(jnp.float64)
    multi_state, state = multi.init(params), tx.init(expected)
    for _ in range(2):
      micro = [_grads(params, shift=0.1 * i) for i in range(every)]
      for grads in micro:
        updates, multi_state = multi_update(grads, multi_state, params)
        params = optax.apply_updates(params, updates)
      mean = jax.tree.map(lambda *g: sum(g) / every, *micro)
      updates, state = tx.update(mean, state, expected)
      expected = optax.apply_updates(expected, updates)
  _assert_close(params, expected, rtol=1e-12)


@pytest.mark.parametrize("name", WITH_LEARNING_RATE)
def test_constant_schedule_equals_float_learning_rate(name):
  learning_rate = TRANSFORMS[name].kwargs["learning_rate"]
  with jax.enable_x64(True):
    params = _params(jnp.float64)
    expected, _, _ = _run(_make(name), params, steps=5)
    actual, _, _ = _run(
        _make(name, learning_rate=optax.constant_schedule(learning_rate)),
        params, steps=5)
  _assert_close(actual, expected, rtol=1e-13)


@pytest.mark.parametrize("name", WITH_LEARNING_RATE)
def test_decaying_schedule_is_followed(name):
  # A learned rate is the schedule plus a learned correction: none here.
  fixed_rate = ({"hypergrad_lr": 0.0}
                if "hypergrad_lr" in TRANSFORMS[name].kwargs else {})
  schedule = optax.exponential_decay(0.01, transition_steps=1,
                                     decay_rate=0.5)
  _, _, updates = _run(_make(name, learning_rate=schedule, **fixed_rate),
                       _params(), steps=8)
  _, _, constant = _run(_make(name, **fixed_rate), _params(), steps=8)
  for small, large in zip(jax.tree.leaves(updates),
                          jax.tree.leaves(constant)):
    assert np.max(np.abs(small)) < 0.1 * np.max(np.abs(large))


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("value", [-0.1, float("nan"), float("inf")])
@pytest.mark.parametrize("name", WITH_LEARNING_RATE)
def test_bad_learning_rate_raises_naming_it(name, value):
  with pytest.raises(ValueError,
                     match=re.escape(f"learning_rate={value!r}")):
    _make(name, learning_rate=value)


@pytest.mark.parametrize("value", [np.array([float("nan")]),
                                   np.array([0.1, 0.2]), "0.1"])
@pytest.mark.parametrize("name", WITH_LEARNING_RATE)
def test_non_scalar_hyperparameters_raise_naming_them(name, value):
  with pytest.raises(ValueError, match="learning_rate must be a real number"):
    _make(name, learning_rate=value)


@pytest.mark.parametrize("name", WITH_LEARNING_RATE)
def test_zero_learning_rate_is_allowed_and_gives_zero_first_update(name):
  _, _, updates = _run(_make(name, learning_rate=0.0), _params(), steps=1)
  for leaf in jax.tree.leaves(updates):
    np.testing.assert_array_equal(leaf, np.zeros_like(leaf))


@pytest.mark.parametrize("value", [-0.1, float("nan")])
@pytest.mark.parametrize("name", WITH_WEIGHT_DECAY)
def test_bad_weight_decay_raises_naming_it(name, value):
  with pytest.raises(ValueError, match=re.escape(f"weight_decay={value!r}")):
    _make(name, weight_decay=value)


# ------------------------------------------- donation, devices, checkpoints

def _loss(params):
  return sum(jnp.sum(jnp.tanh(x) ** 2) + jnp.sum(jnp.cos(x))
             for x in jax.tree.leaves(params))


def _train(tx, params, state, steps, step_fn=None):
  def step(params, state):
    updates, state = tx.update(jax.grad(_loss)(params), state, params)
    return optax.apply_updates(params, updates), state

  step_fn = step_fn or jax.jit(step)
  for _ in range(steps):
    params, state = step_fn(params, state)
  return params, state


def _random_params():
  keys = jax.random.split(jax.random.key(0), 3)
  return {"w": jax.random.normal(keys[0], (16, 8)),
          "b": jax.random.normal(keys[1], (8,)),
          "s": jax.random.normal(keys[2], ())}


@pytest.mark.parametrize("name", TRANSFORMS)
def test_state_leaves_do_not_share_buffers(name):
  tx = _make(name)
  params = _random_params()

  def eager_step(params, state):
    updates, state = tx.update(jax.grad(_loss)(params), state, params)
    return optax.apply_updates(params, updates), state

  states = (tx.init(params), _train(tx, params, tx.init(params), 2)[1],
            _train(tx, params, tx.init(params), 2, eager_step)[1])
  for state in states:
    leaves = [x for x in jax.tree.leaves(state) if x.size]
    pointers = [x.unsafe_buffer_pointer() for x in leaves]
    assert len(set(pointers)) == len(pointers)


@pytest.mark.parametrize("name", REPRESENTATIVE)
def test_donated_step_matches_plain_step(name):
  tx = _make(name)

  def step(params, state):
    updates, state = tx.update(jax.grad(_loss)(params), state, params)
    return optax.apply_updates(params, updates), state

  expected, _ = _train(tx, _random_params(), tx.init(_random_params()), 5)
  params = jax.tree.map(jnp.copy, _random_params())
  got, _ = _train(tx, params, tx.init(params), 5,
                  jax.jit(step, donate_argnums=(0, 1)))
  jax.tree.map(np.testing.assert_array_equal, got, expected)
  assert all(x.is_deleted() for x in jax.tree.leaves(params))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("name", TRANSFORMS)
def test_donated_step_copies_no_state_buffer(name, dtype):
  """Steps that read the old state after computing the new one (the
  hypergradients) order the in-place writes after the reads: without that
  (`_common.ordered_after`), XLA copies every such donated buffer first."""
  tx = _make(name)
  params = {f"w{i}": jnp.ones((128, 64), dtype) for i in range(3)}
  params["b"] = jnp.ones((64,), dtype)

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  hlo = jax.jit(step, donate_argnums=(0, 1)).lower(
      params, tx.init(params), params).compile().as_text()
  copied = [line for line in hlo.splitlines()
            if " copy(" in line and re.search(r"\[(128,64|64)\]",
                                              line.split("copy(")[0])]
  assert not copied, copied


@pytest.mark.parametrize("name", REPRESENTATIVE)
def test_donated_step_keeps_no_params_sized_temporary(name):
  """XLA's temporaries of a donated step over 16 equal leaves (with the
  cases' weight decay) stay within a quarter of the params, whatever the
  transform holds between its kernels (diffgrad's update, a decayed
  gradient: see `_common.map_leaves` and `_common.decayed_gradient`); they
  were the size of the params."""
  tx = _make(name)
  params = [jax.ShapeDtypeStruct((256, 256), jnp.float32)] * 16

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  compiled = jax.jit(step, donate_argnums=(0, 1)).lower(
      params, jax.eval_shape(tx.init, params), params).compile()
  params_bytes = 16 * 256 * 256 * 4
  temp = compiled.memory_analysis().temp_size_in_bytes
  assert temp <= params_bytes / 4 + 2**16, temp / params_bytes


def _eight_device_mesh():
  if jax.device_count() < 8:
    pytest.skip("needs 8 devices (XLA_FLAGS set in conftest.py)")
  return Mesh(np.array(jax.devices()[:8]), ("d",))


@pytest.mark.parametrize("name", REPRESENTATIVE)
def test_sharded_over_eight_devices_matches_one_device(name):
  mesh = _eight_device_mesh()
  tx = _make(name)
  shardings = {"w": NamedSharding(mesh, PartitionSpec("d", None)),
               "b": NamedSharding(mesh, PartitionSpec()),
               "s": NamedSharding(mesh, PartitionSpec())}
  params = jax.device_put(_random_params(), shardings)
  sharded, sharded_state = _train(tx, params, jax.jit(tx.init)(params), 5)
  expected, _ = _train(tx, _random_params(), tx.init(_random_params()), 5)
  assert sharded["w"].sharding.is_equivalent_to(shardings["w"], 2)
  for leaf in jax.tree.leaves(sharded_state):
    if leaf.shape == (16, 8):
      assert leaf.sharding.is_equivalent_to(shardings["w"], 2)
  _assert_close(sharded, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", REPRESENTATIVE)
def test_sharded_step_gathers_no_leaf(name):
  """Leaves sharded by rows, by columns or (vectors) along their one axis
  stay where they lie: the compiled step gathers no leaf, nor any leaf-sized
  product (dot products are reduced per device, then combined as scalars: an
  all-reduce, or an all-gather of one partial sum per device and product)."""
  mesh = _eight_device_mesh()
  tx = _make(name)
  shardings = {"rows": NamedSharding(mesh, PartitionSpec("d", None)),
               "cols": NamedSharding(mesh, PartitionSpec(None, "d")),
               "bias": NamedSharding(mesh, PartitionSpec()),
               "vector": NamedSharding(mesh, PartitionSpec("d"))}
  keys = jax.random.split(jax.random.key(1), 4)
  params = jax.device_put(
      {"rows": jax.random.normal(keys[0], (64, 24)),
       "cols": jax.random.normal(keys[1], (12, 64)),
       "bias": jax.random.normal(keys[2], (24,)),
       "vector": jax.random.normal(keys[3], (8000,))}, shardings)

  def step(params, state):
    updates, state = tx.update(jax.grad(_loss)(params), state, params)
    return optax.apply_updates(params, updates), state

  hlo = jax.jit(step).lower(params, jax.jit(tx.init)(params)).compile(
  ).as_text()
  assert "all-to-all" not in hlo
  gathered = re.findall(r"= \w+\[([\d,]*)\][^=]* all-gather\(", hlo)
  sizes = [math.prod(int(d) for d in dims.split(",") if d)
           for dims in gathered]
  # At most a few scalars per device (8 devices), far below the smallest
  # sharded leaf (768 elements).
  assert all(size <= 8 * 8 for size in sizes), sizes


@pytest.mark.parametrize("name", REPRESENTATIVE)
def test_orbax_checkpoint_round_trip_continues_identically(name, tmp_path):
  tx = _make(name)
  params, state = _train(tx, _random_params(), tx.init(_random_params()), 3)
  expected, _ = _train(tx, params, state, 3)

  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / "ckpt", {"params": params, "opt_state": state})
  checkpointer.wait_until_finished()
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct,
                          {"params": params, "opt_state": state})
  restored = checkpointer.restore(tmp_path / "ckpt", abstract)
  assert jax.tree.structure(restored["opt_state"]) == jax.tree.structure(state)
  got, _ = _train(tx, restored["params"], restored["opt_state"], 3)
  jax.tree.map(np.testing.assert_array_equal, got, expected)


@pytest.mark.parametrize("name", REPRESENTATIVE)
def test_flax_nnx_training_step_lowers_loss(name):
  model = nnx.Sequential(nnx.Linear(4, 16, rngs=nnx.Rngs(0)), nnx.relu,
                         nnx.Linear(16, 1, rngs=nnx.Rngs(1)))
  optimizer = nnx.Optimizer(model, _make(name), wrt=nnx.Param)
  x = jax.random.normal(jax.random.key(2), (64, 4))
  y = jnp.sin(x.sum(axis=1, keepdims=True))

  @nnx.jit
  def train_step(model, optimizer):
    loss, grads = nnx.value_and_grad(
        lambda m: jnp.mean((m(x) - y) ** 2))(model)
    optimizer.update(model, grads)
    return loss

  losses = [float(train_step(model, optimizer)) for _ in range(60)]
  assert losses[-1] < 0.5 * losses[0]
