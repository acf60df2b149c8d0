"""Properties shared by diffgrad, expectigrad, sgd_hd and adam_hd.

The optax checks for contributed optimizers (dtypes, odd trees, no
recompilation, `inject_hyperparams`, `MultiSteps`, constant schedules,
`lax.cond`), hypothesis shape/dtype properties, and the soundness of the
parity problem and of the golden arrays.
"""

import functools
import inspect
import re

import chex
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax_extras
from optax_extras import _common
import pytest

import torch_reference

OPTIMIZERS = {
    "diffgrad": (optax_extras.diffgrad, dict(
        learning_rate=0.01, b1=0.8, b2=0.99, eps=1e-6, weight_decay=0.1)),
    "expectigrad": (optax_extras.expectigrad, dict(
        learning_rate=0.01, beta=0.8, eps=1e-6)),
    "expectigrad_dense_counter": (optax_extras.expectigrad, dict(
        learning_rate=0.01, beta=0.8, eps=1e-6, sparse_counter=False)),
    "sgd_hd": (optax_extras.sgd_hd, dict(
        learning_rate=0.01, hypergrad_lr=1e-3, momentum=0.5, dampening=0.1,
        weight_decay=0.1)),
    "sgd_hd_nesterov": (optax_extras.sgd_hd, dict(
        learning_rate=0.01, hypergrad_lr=1e-3, momentum=0.5, nesterov=True,
        weight_decay=0.05)),
    "adam_hd": (optax_extras.adam_hd, dict(
        learning_rate=0.01, hypergrad_lr=1e-4, b1=0.8, b2=0.99, eps=1e-6,
        weight_decay=0.1)),
}
WEIGHT_DECAYED = ("diffgrad", "sgd_hd", "adam_hd")


def _make(name, **overrides):
  factory, kwargs = OPTIMIZERS[name]
  return factory(**{**kwargs, **overrides})


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
  """Three jitted steps of `OPTIMIZERS[name]` on `_params(dtype)` (x64 off)."""
  return _run(_make(name), _params(jnp.dtype(dtype)))


def _assert_close(actual, expected, rtol):
  jax.tree.map(
      lambda a, e: np.testing.assert_allclose(
          np.asarray(a, np.float64), np.asarray(e, np.float64), rtol=rtol,
          atol=0),
      actual, expected)


# ------------------------------------------------------------ dtypes, trees

@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_updates_keep_low_precision_param_dtype(name, dtype):
  _, _, updates = _run_named(name, dtype)
  chex.assert_trees_all_equal_shapes_and_dtypes(
      updates, _params(jnp.dtype(dtype)))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_state_floats_are_param_dtype_or_float32(name, dtype):
  _, state, _ = _run_named(name, dtype)
  float_dtypes = {
      leaf.dtype for leaf in jax.tree.leaves(state)
      if jnp.issubdtype(leaf.dtype, jnp.floating)}
  assert float_dtypes <= {jnp.dtype(dtype), jnp.dtype(jnp.float32)}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_updates_and_state_stay_float64_under_x64(name):
  with jax.enable_x64(True):
    params = _params(jnp.float64)
    _, state, updates = _run(_make(name), params)
    chex.assert_trees_all_equal_shapes_and_dtypes(updates, params)
    assert {leaf.dtype for leaf in jax.tree.leaves(state)} <= {
        jnp.dtype(jnp.float64), jnp.dtype(jnp.int32)}


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_low_precision_updates_are_finite(name, dtype):
  _, _, updates = _run_named(name, dtype)
  for leaf in jax.tree.leaves(updates):
    assert np.all(np.isfinite(np.asarray(leaf, np.float32)))


@pytest.mark.parametrize("name", OPTIMIZERS)
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


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_state_count_is_int32(name):
  _, state, _ = _run_named(name, "float32")
  counts = optax.tree.get_all_with_path(state, "count")
  assert counts
  assert all(value.dtype == jnp.int32 for _, value in counts)


_DTYPES = st.sampled_from([jnp.float32, jnp.bfloat16, jnp.float16])
_SHAPES = st.lists(
    st.lists(st.integers(0, 3), min_size=0, max_size=3).map(tuple),
    min_size=1, max_size=4)


@pytest.mark.parametrize("name", ["diffgrad", "expectigrad", "sgd_hd",
                                  "adam_hd"])
@settings(max_examples=5, deadline=None)
@given(shapes=_SHAPES, dtype=_DTYPES)
def test_updates_match_param_shapes_and_dtypes(name, shapes, dtype):
  params = [jnp.full(shape, 0.5, dtype) for shape in shapes]
  _, state, updates = _run(_make(name), params, steps=2)
  chex.assert_trees_all_equal_shapes_and_dtypes(updates, params)
  chex.assert_trees_all_equal_shapes_and_dtypes(
      state, _make(name).init(params))


# --------------------------------------------------------------- jit, cond

@pytest.mark.parametrize("name", OPTIMIZERS)
def test_no_recompilation_on_second_jitted_call(name):
  tx = _make(name)
  chex.clear_trace_counter()  # the footprint is shared across parameters

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


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_state_structure_is_stable_under_lax_cond(name):
  tx = _make(name)
  params = _params()
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
  assert int(optax.tree.get_all_with_path(stepped, "count")[0][1]) == 2


# ------------------------------------------- wrappers: inject, MultiSteps

@pytest.mark.parametrize("name", OPTIMIZERS)
def test_inject_hyperparams_injects_every_numeric_hyperparameter(name):
  factory, kwargs = OPTIMIZERS[name]
  state = optax.inject_hyperparams(factory)(**kwargs).init(_params())
  arguments = inspect.signature(factory).bind(**kwargs)
  arguments.apply_defaults()
  numeric = {k for k, v in arguments.arguments.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool)}
  assert set(state.hyperparams) == numeric


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_inject_hyperparams_gives_same_result(name):
  factory, kwargs = OPTIMIZERS[name]
  with jax.enable_x64(True):
    params = _params(jnp.float64)
    expected, _, _ = _run(factory(**kwargs), params, steps=5, jit=True)
    actual, _, _ = _run(optax.inject_hyperparams(factory)(**kwargs), params,
                        steps=5, jit=True)
  _assert_close(actual, expected, rtol=1e-13)


@pytest.mark.parametrize("name", WEIGHT_DECAYED)
def test_inject_hyperparams_with_static_zero_weight_decay_needs_no_params(
    name):
  factory, kwargs = OPTIMIZERS[name]
  kwargs = {**kwargs, "weight_decay": 0.0}
  tx = optax.inject_hyperparams(factory, static_args=("weight_decay",))(
      **kwargs)
  params = _params()
  expected, _, _ = _run(factory(**kwargs), params)
  state = tx.init(params)
  for _ in range(3):
    updates, state = tx.update(_grads(params), state)
    params = optax.apply_updates(params, updates)
  _assert_close(params, expected, rtol=1e-6)


@pytest.mark.parametrize("name", WEIGHT_DECAYED)
def test_injected_zero_weight_decay_keeps_state_structure_under_jit(name):
  factory, kwargs = OPTIMIZERS[name]
  tx = optax.inject_hyperparams(factory)(**{**kwargs, "weight_decay": 0.0})
  params = _params()
  state = tx.init(params)
  _, new_state = jax.jit(tx.update)(_grads(params), state, params)
  assert jax.tree.structure(new_state) == jax.tree.structure(state)


@pytest.mark.parametrize("name", OPTIMIZERS)
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


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_constant_schedule_equals_float_learning_rate(name):
  factory, kwargs = OPTIMIZERS[name]
  schedule = optax.constant_schedule(kwargs["learning_rate"])
  with jax.enable_x64(True):
    params = _params(jnp.float64)
    expected, expected_state, _ = _run(factory(**kwargs), params, steps=5)
    actual, actual_state, _ = _run(
        factory(**{**kwargs, "learning_rate": schedule}), params, steps=5)
  _assert_close(actual, expected, rtol=1e-13)
  _assert_close(optax.tree.get(actual_state, "learning_rate"),
                optax.tree.get(expected_state, "learning_rate"), rtol=1e-13)


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("value", [-0.1, float("nan"), float("inf")])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_bad_learning_rate_raises_naming_it(name, value):
  with pytest.raises(ValueError,
                     match=re.escape(f"learning_rate={value!r}")):
    _make(name, learning_rate=value)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_zero_learning_rate_is_allowed_and_gives_zero_first_update(name):
  _, _, updates = _run(_make(name, learning_rate=0.0), _params(), steps=1)
  for leaf in jax.tree.leaves(updates):
    np.testing.assert_array_equal(leaf, np.zeros_like(leaf))


@pytest.mark.parametrize("name", WEIGHT_DECAYED)
def test_weight_decay_without_params_raises(name):
  tx = _make(name)
  params = _params()
  with pytest.raises(ValueError, match=r"weight_decay=0\.1 needs the parameters"):
    tx.update(_grads(params), tx.init(params))


@pytest.mark.parametrize("value", [-0.1, float("nan")])
@pytest.mark.parametrize("name", WEIGHT_DECAYED)
def test_bad_weight_decay_raises_naming_it(name, value):
  with pytest.raises(ValueError, match=re.escape(f"weight_decay={value!r}")):
    _make(name, weight_decay=value)


# ----------------------------------------------- soundness of parity setup

@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.integers(0, 9), max_size=3).map(tuple),
       count=st.integers(1, 4),
       dtype=st.sampled_from([jnp.float32, jnp.bfloat16]),
       seed=st.integers(0, 2**16))
def test_vdots_equals_the_dot_products(shape, count, dtype, seed):
  """The one-pass contraction behind the hypergradients (see `vdots`), on
  every shape: rows padded to whole blocks, vectors, scalars, empty leaves."""
  rng = np.random.default_rng(seed)
  a, *bs = (jnp.asarray(rng.normal(size=shape), dtype)
            for _ in range(count + 1))
  got = jax.jit(_common.vdots)(a, *bs)
  assert got.shape == (count,) and got.dtype == jnp.float32
  expected = [np.vdot(np.asarray(a, np.float64), np.asarray(b, np.float64))
              for b in bs]
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


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
