"""hyperoptimize: sgd_hd equivalence, an oracle from the definition, readout,
bounds, non-finite hypergradients, donation and bad input.

gdtuo parity (torch) is in test_gdtuo.py. Here stacks over optimizers gdtuo
does not have are checked against `oracle_train`, the definition written out
directly: the hypergradient is ``d L(theta_{t-1} + u_{t-1}(h)) / dh``, taken
by differentiating the loss through the model (which the library never
does), with every previous state kept explicitly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_extras
from optax_extras import gdtuo
from optax_extras._hyperoptimize import hyperoptimize
from optax_extras._hyperoptimize import hyperparameters
from optax_extras._hyperoptimize import HyperoptimizeState
from optax_extras._hyperoptimize import Learned

STEPS = 40
_NATURAL = {
    "identity": lambda x: x,
    "unit_interval": lambda x: (jnp.tanh(x) + 1.0) / 2.0,
    "square": jnp.square,
    "log": jnp.exp,
}
_STORED = {
    "identity": lambda y: y,
    "unit_interval": np.arctanh,  # of 2y - 1
    "square": np.sqrt,
    "log": np.log,
}


def problem(seed=0):
  """A 5-7-3 tanh MLP with a softmax loss, and STEPS batches."""
  rng = np.random.default_rng(seed)
  params = {"w1": rng.normal(size=(5, 7)) / 2, "b1": rng.normal(size=7) / 4,
            "w2": rng.normal(size=(7, 3)) / 2, "b2": np.zeros(3)}
  xs = rng.normal(size=(STEPS, 16, 5))
  ys = rng.integers(0, 3, size=(STEPS, 16))
  return params, xs, ys


def loss_fn(params, x, y):
  h = jnp.tanh(x @ params["w1"] + params["b1"])
  logits = h @ params["w2"] + params["b2"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def train(tx, params, xs, ys, loss=loss_fn):
  params = jax.tree.map(jnp.asarray, params)
  state = tx.init(params)

  @jax.jit
  def step(params, state, x, y):
    updates, state = tx.update(jax.grad(loss)(params, x, y), state, params)
    return optax.apply_updates(params, updates), state

  for x, y in zip(xs, ys):
    params, state = step(params, state, x, y)
  return params, state


def oracle_train(factory, spaces, inits, hyper_tx, fixed, params, xs, ys,
                 loss=loss_fn):
  """The hyperoptimizer step by step from its definition (see module doc)."""
  params = jax.tree.map(jnp.asarray, params)

  def build(raw):
    return factory(**fixed, **{k: _NATURAL[spaces[k]](v) for k, v in
                               raw.items()})

  def stored(name):
    y = inits[name]
    return jnp.asarray(_STORED[spaces[name]](
        2 * y - 1 if spaces[name] == "unit_interval" else y))

  raw = {name: stored(name) for name in inits}
  hyper_state = hyper_tx.init(raw)
  inner_state = build(raw).init(params)

  @jax.jit
  def hypergradient(raw, prev_params, prev_grad, prev_state, x, y):
    def loss_of_hyperparameters(raw):
      updates, _ = build(raw).update(prev_grad, prev_state, prev_params)
      return loss(optax.apply_updates(prev_params, updates), x, y)
    return jax.grad(loss_of_hyperparameters)(raw)

  @jax.jit
  def step(params, raw, hyper_state, inner_state, hypergrad, x, y):
    hyper_updates, hyper_state = hyper_tx.update(hypergrad, hyper_state, raw)
    raw = optax.apply_updates(raw, hyper_updates)
    grads = jax.grad(loss)(params, x, y)
    updates, new_inner_state = build(raw).update(grads, inner_state, params)
    return (optax.apply_updates(params, updates), raw, hyper_state,
            new_inner_state, grads)

  previous = None
  for x, y in zip(xs, ys):
    if previous is None:
      hypergrad = jax.tree.map(jnp.zeros_like, raw)
    else:
      hypergrad = hypergradient(raw, *previous, x, y)
    state_before = inner_state
    new_params, raw, hyper_state, inner_state, grads = step(
        params, raw, hyper_state, inner_state, hypergrad, x, y)
    previous = (params, grads, state_before)
    params = new_params
  return params, {k: _NATURAL[spaces[k]](v) for k, v in raw.items()}


def assert_trees_close(actual, expected, rtol):
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=rtol,
                               atol=0)


@pytest.mark.parametrize(
    "fixed, reference",
    [
        ({}, {}),
        ({"momentum": 0.9}, {"momentum": 0.9}),
        ({"momentum": 0.5, "nesterov": True},
         {"momentum": 0.5, "nesterov": True}),
    ],
)
def test_sgd_stack_equals_sgd_hd(fixed, reference):
  params, xs, ys = problem()
  with jax.enable_x64(True):
    ours, state = train(
        hyperoptimize(optax.sgd, {"learning_rate": 0.1}, optax.sgd(0.01),
                      fixed),
        params, xs, ys)
    theirs, their_state = train(
        optax_extras.sgd_hd(0.1, hypergrad_lr=0.01, **reference),
        params, xs, ys)
    assert_trees_close(ours, theirs, rtol=1e-12)
    (level,) = hyperparameters(state)
    learned_rate = optax.tree.get(their_state, "learning_rate")
    np.testing.assert_allclose(float(level["learning_rate"]),
                               float(learned_rate), rtol=1e-12)
    assert abs(float(learned_rate) / 0.1 - 1) > 1e-2


_ORACLE_CASES = {
    "diffgrad": (
        optax_extras.diffgrad,
        {"learning_rate": ("log", 0.01), "b1": ("unit_interval", 0.9)},
        lambda: optax.sgd(1.0), {}),
    "adabelief": (
        optax.adabelief,
        {"learning_rate": ("identity", 0.01), "b1": ("unit_interval", 0.9),
         "b2": ("unit_interval", 0.99)},
        lambda: optax.adam(1e-3), {}),
    # Decoupled weight decay needs the params (passed with needs_params).
    "lion_weight_decay": (
        optax.lion,
        {"learning_rate": ("square", 1e-3), "weight_decay": ("log", 0.1)},
        lambda: optax.sgd(1e-1, momentum=0.5), {"b1": 0.9}),
}


@pytest.mark.parametrize("case", list(_ORACLE_CASES))
def test_stack_matches_oracle_from_definition(case):
  factory, learned, hyper, fixed = _ORACLE_CASES[case]
  spaces = {k: space for k, (space, _) in learned.items()}
  inits = {k: init for k, (_, init) in learned.items()}
  params, xs, ys = problem(1)
  with jax.enable_x64(True):
    tx = hyperoptimize(
        factory, {k: Learned(inits[k], spaces[k]) for k in learned}, hyper(),
        fixed, needs_params=case == "lion_weight_decay")
    ours, state = train(tx, params, xs, ys)
    theirs, natural = oracle_train(factory, spaces, inits, hyper(), fixed,
                                   params, xs, ys)
    assert_trees_close(ours, theirs, rtol=1e-9)
    (level,) = hyperparameters(state)
    assert sorted(level) == sorted(natural)
    for name, value in natural.items():
      np.testing.assert_allclose(float(level[name]), float(value), rtol=1e-9)
    moved = [abs(float(level[k]) / inits[k] - 1) for k in level]
    assert max(moved) > 1e-3, moved
    assert (state.prev_params is not None) == (case == "lion_weight_decay")


@pytest.mark.parametrize("learned", [1, 3])
def test_step_needs_no_params_sized_temporary(learned):
  """XLA's temporaries of a donated stack step are the partial sums of one
  leaf's contraction at a time (k/4 of a leaf for k learned names), not of
  every leaf at once."""
  leaf = jax.ShapeDtypeStruct((512, 256), jnp.float32)
  params = [leaf] * 8
  names = ("learning_rate", "b1", "b2")[:learned]
  spaces = {"learning_rate": "log", "b1": "unit_interval",
            "b2": "unit_interval"}
  inits = {"learning_rate": 1e-3, "b1": 0.9, "b2": 0.999}
  tx = hyperoptimize(optax.adam,
                     {k: Learned(inits[k], spaces[k]) for k in names},
                     optax.sgd(1e-5))
  state = jax.eval_shape(tx.init, params)

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  compiled = jax.jit(step, donate_argnums=(0, 1)).lower(
      params, state, params).compile()
  leaf_bytes = 512 * 256 * 4
  temp = compiled.memory_analysis().temp_size_in_bytes
  assert temp <= learned / 4 * leaf_bytes + 2**16, temp / leaf_bytes


def test_hypergradient_is_exact_on_leaves_of_every_size():
  """Leaves that fill whole blocks of the contraction, need padding, are
  scalars or are empty (see `_common.vdots`), against the oracle in float64."""
  shapes = {"blocks": (64, 32), "narrow": (48,), "odd": (5, 7, 9),
            "scalar": (), "empty": (0, 3), "empty_rows": (3, 0, 2)}
  rng = np.random.default_rng(6)
  params = {k: rng.normal(size=s) for k, s in shapes.items()}
  xs = [{k: rng.normal(size=s) for k, s in shapes.items()}
        for _ in range(12)]
  ys = [None] * len(xs)

  def loss(params, x, y):
    del y
    return sum(jnp.sum(jnp.cos(p) * t + p * p / 4)
               for p, t in zip(jax.tree.leaves(params), jax.tree.leaves(x)))

  spaces = {"learning_rate": "log", "b1": "unit_interval",
            "b2": "unit_interval"}
  inits = {"learning_rate": 0.05, "b1": 0.8, "b2": 0.9}
  with jax.enable_x64(True):
    tx = hyperoptimize(
        optax.adam, {k: Learned(inits[k], spaces[k]) for k in inits},
        optax.sgd(1e-4))
    ours, state = train(tx, params, xs, ys, loss)
    theirs, natural = oracle_train(optax.adam, spaces, inits,
                                   optax.sgd(1e-4), {}, params, xs, ys, loss)
    assert_trees_close(ours, theirs, rtol=1e-9)
    (level,) = hyperparameters(state)
    for name, value in natural.items():
      np.testing.assert_allclose(float(level[name]), float(value), rtol=1e-9)
      assert abs(float(value) / inits[name] - 1) > 2e-3, name


def test_three_level_stack_over_adabelief_learns_every_level():
  params, xs, ys = problem(2)
  top = hyperoptimize(optax.sgd, {"learning_rate": Learned(0.3, "log")},
                      optax.sgd(0.1))
  tx = hyperoptimize(
      optax.adabelief,
      {"learning_rate": Learned(0.01, "log"), "b1": Learned(0.9,
                                                            "unit_interval")},
      top)
  _, state = train(tx, params, xs, ys)
  levels = hyperparameters(state)
  assert [sorted(level) for level in levels] == [["b1", "learning_rate"],
                                                 ["learning_rate"]]
  assert abs(float(levels[0]["learning_rate"]) / 0.01 - 1) > 1e-3
  assert abs(float(levels[1]["learning_rate"]) / 0.3 - 1) > 1e-5  # >> f32 ulp


def test_readout_is_natural_space_and_works_inside_chain():
  tx = optax.chain(
      optax.clip_by_global_norm(1.0),
      hyperoptimize(optax.adam,
                    {"learning_rate": Learned(2e-3, "log"),
                     "b1": Learned(0.8, "unit_interval"),
                     "b2": Learned(0.99, "square")},
                    optax.sgd(0.1)))
  params = {"w": jnp.ones(3)}
  state = tx.init(params)
  (level,) = hyperparameters(state)
  np.testing.assert_allclose(
      [float(level[k]) for k in ("learning_rate", "b1", "b2")],
      [2e-3, 0.8, 0.99], rtol=1e-6)
  step = jax.jit(tx.update)
  for _ in range(3):
    _, state = step({"w": jnp.array([0.3, -1.0, 2.0])}, state, params)
  (level,) = hyperparameters(state)
  raw = state[1].raw_hyperparams
  np.testing.assert_allclose(float(level["b1"]),
                             (np.tanh(float(raw["unit_interval(b1)"])) + 1) / 2, rtol=1e-6)
  np.testing.assert_allclose(float(level["learning_rate"]),
                             np.exp(float(raw["log(learning_rate)"])), rtol=1e-6)
  assert float(level["learning_rate"]) != pytest.approx(2e-3, rel=1e-4)


def test_readout_needs_exactly_one_stack():
  stack = hyperoptimize(optax.sgd, {"learning_rate": 0.1}, optax.sgd(0.1))
  params = jnp.ones(2)
  with pytest.raises(ValueError, match="found 0"):
    hyperparameters(optax.adam(0.1).init(params))
  with pytest.raises(ValueError, match="found 2"):
    hyperparameters((stack.init(params), stack.init(params)))


def test_per_leaf_hyperparameter_has_one_value_per_leaf():
  params, xs, ys = problem(3)
  tx = hyperoptimize(optax.sgd,
                     {"learning_rate": Learned(0.1, "log", per_leaf=True)},
                     optax.sgd(0.01))
  _, state = train(tx, params, xs, ys)
  (level,) = hyperparameters(state)
  rates = {k: float(v) for k, v in level["learning_rate"].items()}
  assert sorted(rates) == sorted(params)
  assert len(set(rates.values())) == len(rates)


def learning_rates(tx, params, xs, ys):
  """The learned rate after every step."""
  params = jax.tree.map(jnp.asarray, params)
  state = tx.init(params)
  step = jax.jit(tx.update)
  rates = []
  for x, y in zip(xs, ys):
    updates, state = step(jax.grad(loss_fn)(params, x, y), state, params)
    params = optax.apply_updates(params, updates)
    rates.append(float(hyperparameters(state)[0]["learning_rate"]))
  return np.array(rates)


def test_bounds_clip_the_learned_value_in_natural_space():
  params, xs, ys = problem(4)
  free = learning_rates(
      hyperoptimize(optax.sgd, {"learning_rate": Learned(0.1, "log")},
                    optax.sgd(0.5)), params, xs, ys)
  assert free.max() > 0.102
  bounded = learning_rates(
      hyperoptimize(optax.sgd,
                    {"learning_rate": Learned(0.1, "log",
                                              bounds=(0.05, 0.102))},
                    optax.sgd(0.5)), params, xs, ys)
  np.testing.assert_allclose(bounded.max(), 0.102, rtol=1e-6)
  assert bounded.min() >= 0.05


def test_non_finite_hypergradient_skips_the_hyper_update():
  tx = hyperoptimize(optax.sgd, {"learning_rate": Learned(0.1, "log")},
                     optax.adam(0.1))
  params = jnp.ones(2, jnp.float32)
  state = tx.init(params)
  huge = jnp.full(2, 1e20, jnp.float32)  # <g_t, g_{t-1}> overflows float32
  _, state = tx.update(huge, state)
  before = state
  updates, state = tx.update(huge, state)
  assert np.all(np.isfinite(updates))
  np.testing.assert_array_equal(state.raw_hyperparams["log(learning_rate)"],
                                before.raw_hyperparams["log(learning_rate)"])
  for kept, old in zip(jax.tree.leaves(state.hyper_state),
                       jax.tree.leaves(before.hyper_state)):
    np.testing.assert_array_equal(kept, old)
  np.testing.assert_allclose(updates, -0.1 * huge, rtol=1e-6)
  _, state = tx.update(jnp.full(2, 1e-3, jnp.float32), state)
  assert float(state.raw_hyperparams["log(learning_rate)"]) != float(
      before.raw_hyperparams["log(learning_rate)"])


def test_donated_jit_step_and_distinct_state_buffers():
  params, xs, ys = problem(5)
  tx = gdtuo.Adam(
      0.01, optimizer=gdtuo.Adam(
          1e-3, optimizer=gdtuo.SGD(1e-5)))
  params = jax.tree.map(jnp.asarray, params)
  state = tx.init(params)

  def pointers(tree):
    return [leaf.unsafe_buffer_pointer() for leaf in jax.tree.leaves(tree)]

  def step(params, state, x, y):
    updates, state = tx.update(jax.grad(loss_fn)(params, x, y), state, params)
    return optax.apply_updates(params, updates), state

  step = jax.jit(step, donate_argnums=(0, 1))
  for x, y in zip(xs[:5], ys[:5]):
    leaves = pointers((params, state))
    assert len(set(leaves)) == len(leaves)
    params, state = step(params, state, x, y)
  leaves = pointers((params, state))
  assert len(set(leaves)) == len(leaves)
  assert step._cache_size() == 1  # pylint: disable=protected-access


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(learned={"bogus": 0.1}), "'bogus'.*not a keyword argument"),
        (dict(learned={"b1": Learned(1.0, "unit_interval")}),
         "'b1'.*in \\(0, 1\\).*b1=1.0"),
        (dict(learned={"b1": Learned(0.0, "unit_interval")}), "b1=0.0"),
        (dict(learned={"learning_rate": Learned(-0.1, "square")}),
         "'learning_rate'.*>= 0.*learning_rate=-0.1"),
        (dict(learned={"learning_rate": Learned(0.0, "log")}),
         "'learning_rate'.*> 0.*learning_rate=0.0"),
        (dict(learned={"learning_rate": Learned(0.1, "exp")}),
         "space.*'exp'"),
        (dict(learned={"learning_rate": Learned({"w": 0.1})}), "per_leaf"),
        (dict(learned={"learning_rate": Learned(0.1, bounds=(0.2, None))}),
         "within bounds.*learning_rate=0.1"),
        (dict(learned={"learning_rate": Learned(0.1, "log",
                                                bounds=(-1.0, None))}),
         "bounds.*> 0"),
        (dict(learned={"learning_rate": 0.1}, fixed={"learning_rate": 0.2}),
         "both learned and fixed"),
        (dict(learned={"learning_rate": 0.1}, fixed={"momentun": 0.9}),
         "'momentun'"),
        (dict(learned={}), "at least one"),
        (dict(learned={"learning_rate": 0.1}, hyper_optimizer=None),
         "hyper_optimizer"),
    ],
)
def test_bad_input_raises_value_error_naming_it(kwargs, match):
  kwargs = {"hyper_optimizer": optax.sgd(1e-3), **kwargs}
  factory = optax.adam if "b1" in kwargs["learned"] else optax.sgd
  with pytest.raises(ValueError, match=match):
    hyperoptimize(factory, **kwargs)


def test_factory_validation_runs_at_construction():
  with pytest.raises(ValueError, match="b1"):
    hyperoptimize(optax_extras.diffgrad, {"learning_rate": 0.1},
                  optax.sgd(1e-3), {"b1": 1.5})


def test_is_a_state_of_named_arrays():
  tx = hyperoptimize(optax.adam, {"learning_rate": 1e-3}, optax.sgd(1e-3))
  state = tx.init({"w": jnp.ones(2)})
  assert isinstance(state, HyperoptimizeState)
  assert state.prev_params is None
  assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(state))


def test_tree_get_finds_the_one_natural_value():
  tx = hyperoptimize(optax.adam, {"learning_rate": Learned(2e-3, "log")},
                     optax.adam(1e-2))
  params = {"w": jnp.ones(3)}
  state = tx.init(params)
  for _ in range(3):
    _, state = tx.update({"w": jnp.array([0.3, -1.0, 2.0])}, state, params)
  learned = optax.tree.get(state, "learning_rate")
  np.testing.assert_allclose(
      float(learned),
      float(jnp.exp(state.raw_hyperparams["log(learning_rate)"])), rtol=1e-6)
  assert float(learned) != pytest.approx(2e-3, rel=1e-4)


def test_set_hyperparameters_writes_natural_values_at_any_level():
  tx = gdtuo.Adam(optimizer=gdtuo.Adam(1e-3, optimizer=gdtuo.SGD(1e-5)))
  state = tx.init({"w": jnp.ones(3)})
  state = optax_extras.set_hyperparameters(state, {"alpha": 0.05,
                                                   "beta1": 0.5})
  state = optax_extras.set_hyperparameters(state, {"alpha": 2e-3}, level=1)
  levels = hyperparameters(state)
  np.testing.assert_allclose(float(levels[0]["alpha"]), 0.05, rtol=1e-7)
  np.testing.assert_allclose(float(levels[0]["beta1"]), 0.5, rtol=1e-6)
  np.testing.assert_allclose(float(levels[1]["alpha"]), 2e-3, rtol=1e-7)
  np.testing.assert_allclose(
      float(state.raw_hyperparams["unit_interval(beta1)"]), 0.0, atol=1e-7)
  updates, _ = tx.update({"w": jnp.ones(3)}, state)
  # Adam's first step is -alpha * sign(g) (up to eps), with the new alpha.
  np.testing.assert_allclose(updates["w"], -0.05, rtol=1e-4)
  with pytest.raises(ValueError, match="'gamma'"):
    optax_extras.set_hyperparameters(state, {"gamma": 0.5})
  with pytest.raises(ValueError, match="beta1.*in \\(0, 1\\).*beta1=1.5"):
    optax_extras.set_hyperparameters(state, {"beta1": 1.5})
  with pytest.raises(ValueError, match="level"):
    optax_extras.set_hyperparameters(state, {"alpha": 0.1}, level=2)


@pytest.mark.parametrize("hyper_optimizer", [
    optax.sgd(float("nan")),  # NaN * a zero first hypergradient
    optax.sgd(1e30),          # a finite stored log-rate whose exp is inf
], ids=["nan_step", "overflowing_value"])
def test_non_finite_new_value_never_reaches_the_params(hyper_optimizer):
  tx = hyperoptimize(optax.sgd, {"learning_rate": Learned(0.1, "log")},
                     hyper_optimizer)
  params = jnp.ones(2, jnp.float32)
  state = tx.init(params)
  for _ in range(3):
    updates, state = tx.update(jnp.full(2, 0.5, jnp.float32), state)
    np.testing.assert_allclose(updates, -0.05, rtol=1e-6)
  assert float(state.raw_hyperparams["log(learning_rate)"]) == pytest.approx(
      np.log(0.1), rel=1e-6)


def test_traced_initial_values_under_inject_hyperparams():
  tx = optax.inject_hyperparams(
      lambda alpha: gdtuo.Adam(alpha, optimizer=gdtuo.SGD(1e-5)))(alpha=1e-2)
  plain = gdtuo.Adam(1e-2, optimizer=gdtuo.SGD(1e-5))
  params = {"w": jnp.ones(3)}
  state, plain_state = tx.init(params), plain.init(params)
  step, plain_step = jax.jit(tx.update), jax.jit(plain.update)
  for _ in range(3):
    grads = {"w": jnp.array([0.3, -1.0, 2.0])}
    updates, state = step(grads, state)
    plain_updates, plain_state = plain_step(grads, plain_state)
    np.testing.assert_allclose(updates["w"], plain_updates["w"], rtol=1e-6)
  (level,) = hyperparameters(state)
  (plain_level,) = hyperparameters(plain_state)
  np.testing.assert_allclose(float(level["alpha"]),
                             float(plain_level["alpha"]), rtol=1e-6)
  assert float(level["alpha"]) != pytest.approx(1e-2, rel=1e-4)


def test_needs_params_is_stated_and_enforced():
  tx = hyperoptimize(optax.adamw, {"learning_rate": Learned(1e-3, "log")},
                     optax.sgd(1e-3), {"weight_decay": 0.1},
                     needs_params=True)
  params = {"w": jnp.ones(3)}
  state = tx.init(params)
  assert state.prev_params is not None
  with pytest.raises(ValueError, match="needs_params=True.*params"):
    tx.update({"w": jnp.ones(3)}, state)
  updates, _ = tx.update({"w": jnp.ones(3)}, state, params)
  assert np.all(np.isfinite(updates["w"]))


@pytest.mark.parametrize("bounds", [("a", None), (None, [1.0]), (1.0,)])
def test_malformed_bounds_raise_value_error_naming_them(bounds):
  with pytest.raises(ValueError, match="bounds of hyperparameter"):
    hyperoptimize(optax.sgd, {"learning_rate": Learned(0.1, bounds=bounds)},
                  optax.sgd(1e-3))


def test_update_accepts_extra_args():
  tx = hyperoptimize(optax.sgd, {"learning_rate": 0.1}, optax.sgd(1e-3))
  assert isinstance(tx, optax.GradientTransformationExtraArgs)
  state = tx.init(jnp.ones(2))
  updates, _ = tx.update(jnp.ones(2), state, value=jnp.float32(1.0))
  np.testing.assert_allclose(updates, -0.1, rtol=1e-6)
