"""sgd_hd and adam_hd: parity with hypergrad.SGDHD / AdamHD (seeds/002),
AdamHD's per-tensor mode on a multi-tensor model, the learned rate in the
state, schedules and injected rates as its base, bounds on the learned rate,
optax's extra-args contract and bad input."""

import functools
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


def _tree_get_rate(state):
  return optax.tree.get(state, "learning_rate")


def _run(tx, steps, params=None, read_rate=_tree_get_rate):
  params = _params() if params is None else params
  state = tx.init(params)
  rates, grads_seen, updates_seen = [], [], []
  for _ in range(steps):
    grads = _grads(params)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    rates.append(read_rate(state))
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


@pytest.mark.parametrize("hypergradient", ["", "tensor", "per-tensor", None,
                                           1])
def test_adam_hd_unknown_hypergradient_mode_raises_naming_it(hypergradient):
  with pytest.raises(ValueError,
                     match=re.escape(f"hypergradient={hypergradient!r}")):
    optax_extras.adam_hd(hypergradient=hypergradient)


# ----------------------------------------- AdamHD per tensor, on an MLP

MLP_STEPS = 150
MLP_CHECKPOINTS = (1, 2, 10, 50, 150)
MLP_CASES = {
    "defaults": dict(learning_rate=1e-2, hypergrad_lr=1e-4),
    "weight_decay": dict(learning_rate=3e-3, hypergrad_lr=1e-3, b1=0.8,
                         b2=0.99, eps=1e-6, weight_decay=0.05),
}


def _upstream_adam_hd(hparams):
  """torch_reference.AdamHD (hypergrad.AdamHD) with `hparams` in our names."""
  hparams = dict(hparams)
  lr = hparams.pop("learning_rate")
  betas = (hparams.pop("b1", 0.9), hparams.pop("b2", 0.999))
  return lambda params: torch_reference.AdamHD(params, lr=lr, betas=betas,
                                               **hparams)


@functools.cache
def _mlp_runs(case, dtype, hypergradient):
  """(upstream AdamHD record, adam_hd record) of the MLP."""
  pytest.importorskip("torch")
  hparams = MLP_CASES[case]
  reference = torch_reference.run_torch_mlp(
      _upstream_adam_hd(hparams), dtype, MLP_STEPS, MLP_CHECKPOINTS)
  with jax.enable_x64(dtype == "float64"):
    actual = torch_reference.run_jax_mlp(
        optax_extras.adam_hd(**hparams, hypergradient=hypergradient), dtype,
        MLP_STEPS, MLP_CHECKPOINTS)
  return reference, actual


def _max_tensor_relative_difference(actual, reference):
  """Over the tensors at every checkpoint: max |a - b| / max |b|.

  Relative to each tensor's scale: an MLP's biases and weights pass near
  zero, where a per-element relative difference measures nothing.
  """
  return max(
      float(np.max(np.abs(actual[key][c] - reference[key][c]))
            / np.max(np.abs(reference[key][c])))
      for key in reference.keys() - {"lr"}
      for c in range(len(MLP_CHECKPOINTS)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", MLP_CASES)
def test_adam_hd_per_tensor_mlp_params_match_upstream_adamhd(case, dtype):
  reference, actual = _mlp_runs(case, dtype, "per_tensor")
  assert len(reference) == 7  # three weights, three biases, the rates
  diff = _max_tensor_relative_difference(actual, reference)
  assert diff <= torch_reference.TOLERANCE[dtype], f"{diff:.2e}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", MLP_CASES)
def test_adam_hd_per_tensor_mlp_learned_rate_matches_upstream_adamhd(
    case, dtype):
  reference, actual = _mlp_runs(case, dtype, "per_tensor")
  assert reference["lr"].shape == (MLP_STEPS,)
  diff = torch_reference.max_relative_difference(actual["lr"],
                                                 reference["lr"])
  assert diff <= torch_reference.TOLERANCE[dtype], f"{diff:.2e}"


@pytest.mark.parametrize("case", MLP_CASES)
def test_adam_hd_global_default_is_not_upstream_adamhd_on_an_mlp(case):
  """The paper's global dot product differs from the reference's loop by far
  more than the parity tolerance: the per-tensor tests can tell them apart."""
  reference, actual = _mlp_runs(case, "float64", "global")
  assert _max_tensor_relative_difference(actual, reference) > 1e-4
  assert torch_reference.max_relative_difference(
      actual["lr"], reference["lr"]) > 1e-5


def test_adam_hd_per_tensor_equals_global_on_one_tensor():
  with jax.enable_x64(True):
    runs = {mode: _run(optax_extras.adam_hd(0.1, hypergrad_lr=1e-3,
                                            hypergradient=mode),
                       steps=5, params={"w": jnp.arange(1.0, 7.0)})
            for mode in ("global", "per_tensor")}
  for a, e in zip(runs["per_tensor"][0], runs["global"][0]):
    np.testing.assert_allclose(a, e, rtol=1e-14)


# ------------------------------------------ injected rates, tree.get / set

FACTORIES = {"sgd_hd": optax_extras.sgd_hd, "adam_hd": optax_extras.adam_hd}
HYPERGRAD_LR = {"sgd_hd": 1e-2, "adam_hd": 1e-3}


def _learned_rate(state):
  return optax.tree.get(state.inner_state, "learning_rate")


@pytest.mark.parametrize("name", HD)
def test_injected_learning_rate_set_to_zero_after_init_gives_zero_updates(
    name):
  tx = optax.inject_hyperparams(FACTORIES[name])(
      learning_rate=0.1, hypergrad_lr=HYPERGRAD_LR[name])
  params = _params()
  state = tx.init(params)
  state.hyperparams["learning_rate"] = jnp.zeros([])
  updates, state = tx.update(_grads(params), state, params)
  for leaf in jax.tree.leaves(updates):
    np.testing.assert_array_equal(leaf, 0.0)
  assert float(_learned_rate(state)) == 0.0


@pytest.mark.parametrize("name", HD)
def test_injected_schedule_equals_schedule_given_directly(name):
  """In float32: inject_hyperparams hands the schedule's float32 values on
  as they are, so the learned rate is float32 even under x64."""
  schedule = optax.linear_schedule(0.25, 0.0625, transition_steps=4)
  kwargs = dict(hypergrad_lr=HYPERGRAD_LR[name])
  expected, _, direct, _ = _run(FACTORIES[name](schedule, **kwargs), 6)
  injected = optax.inject_hyperparams(FACTORIES[name])(
      learning_rate=schedule, **kwargs)
  rates, _, actual, _ = _run(injected, 6, read_rate=_learned_rate)
  for a, e in zip(actual, direct):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6),
                 a, e)
  np.testing.assert_allclose(rates, expected, rtol=1e-6)
  constant, _, _, _ = _run(FACTORIES[name](0.25, **kwargs), 6)
  assert abs(float(expected[-1]) - float(schedule(5))) > 1e-3  # learned
  assert abs(float(expected[-1]) - float(constant[-1])) > 1e-3  # scheduled


@pytest.mark.parametrize("name", HD)
def test_injected_rate_written_mid_run_moves_learned_rate_by_the_change(
    name):
  """Writing hyperparams["learning_rate"] = 0.0625 after 3 steps at 0.125 is
  the schedule that steps from 0.125 to 0.0625 at step 4, given directly."""
  kwargs = dict(hypergrad_lr=HYPERGRAD_LR[name])
  schedule = optax.piecewise_constant_schedule(0.125, {3: 0.5})
  with jax.enable_x64(True):
    initial = jax.tree.map(lambda p: p.astype(jnp.float64), _params())
    expected, _, _, _ = _run(FACTORIES[name](schedule, **kwargs), 5, initial)
    unchanged, _, _, _ = _run(FACTORIES[name](0.125, **kwargs), 5, initial)
    params = initial
    tx = optax.inject_hyperparams(FACTORIES[name])(learning_rate=0.125,
                                                   **kwargs)
    state = tx.init(params)
    rates = []
    for step in range(5):
      if step == 3:
        state.hyperparams["learning_rate"] = jnp.asarray(0.0625)
      updates, state = tx.update(_grads(params), state, params)
      params = optax.apply_updates(params, updates)
      rates.append(_learned_rate(state))
  np.testing.assert_allclose(rates, expected, rtol=1e-13)
  assert abs(float(rates[3]) - float(unchanged[3])) > 0.03


@pytest.mark.parametrize("name", HD)
def test_tree_get_reads_one_learned_rate_with_static_injected_rate(name):
  tx = optax.inject_hyperparams(FACTORIES[name],
                                static_args=("learning_rate",))(
                                    learning_rate=0.1,
                                    hypergrad_lr=HYPERGRAD_LR[name])
  rates, _, _, state = _run(tx, steps=3)
  assert float(rates[-1]) == float(_learned_rate(state))
  assert float(rates[-1]) != pytest.approx(0.1)
  assert "learning_rate" not in state.hyperparams


@pytest.mark.parametrize("name", HD)
def test_tree_set_learning_rate_sets_the_rate_the_next_step_starts_from(
    name):
  tx = HD[name](learning_rate=0.1)
  params = _params()
  state = tx.init(params)
  for _ in range(2):
    _, state = tx.update(_grads(params), state, params)
  free = _tree_get_rate(tx.update(_grads(params), state, params)[1])
  state = optax.tree.set(state, learning_rate=_tree_get_rate(state) + 0.5)
  _, state = tx.update(_grads(params), state, params)
  np.testing.assert_allclose(_tree_get_rate(state), free + 0.5, rtol=1e-6)


# ------------------------------------------------------- learned-rate bounds

NOISY_QUADRATIC_STEPS = 100
SGD_HD_VARIANTS = {"plain": {}, "momentum": dict(momentum=0.9),
                   "nesterov": dict(momentum=0.9, nesterov=True)}


def _noisy_quadratic(tx):
  """|x|^2 / 2 with gradient noise of std 30: (rates, final params)."""
  noise = np.random.default_rng(0).normal(size=(NOISY_QUADRATIC_STEPS, 10))
  params = jnp.ones(10)
  state = tx.init(params)
  rates = []
  for step_noise in noise:
    updates, state = tx.update(params + 30.0 * step_noise, state, params)
    params = optax.apply_updates(params, updates)
    rates.append(float(optax.tree.get(state, "learning_rate")))
  return np.asarray(rates), params


@pytest.mark.parametrize("variant", SGD_HD_VARIANTS)
def test_sgd_hd_without_bounds_diverges_on_noisy_quadratic(variant):
  """The references' behaviour, kept as the default."""
  rates, params = _noisy_quadratic(optax_extras.sgd_hd(
      1e-2, hypergrad_lr=1e-3, **SGD_HD_VARIANTS[variant]))
  assert not np.all(np.isfinite(rates[:6]) & (np.abs(rates[:6]) < 1e6))
  assert not np.all(np.isfinite(params))


@pytest.mark.parametrize("variant", SGD_HD_VARIANTS)
def test_sgd_hd_bounds_keep_noisy_quadratic_finite(variant):
  rates, params = _noisy_quadratic(optax_extras.sgd_hd(
      1e-2, hypergrad_lr=1e-3, learning_rate_bounds=(0.0, 1.0),
      **SGD_HD_VARIANTS[variant]))
  assert np.all(np.isfinite(params))
  assert rates.min() >= 0.0 and rates.max() <= 1.0
  assert rates.min() == 0.0 or rates.max() == 1.0  # a bound was active


def _constant_gradient_rates(tx, sign_flips, steps=20):
  """Learned rates on gradients +-[1, 2, 3] (alternating with sign_flips)."""
  params = jnp.zeros(3)
  state = tx.init(params)
  rates = []
  for step in range(steps):
    sign = (-1.0) ** step if sign_flips else 1.0
    _, state = tx.update(sign * jnp.array([1.0, 2.0, 3.0]), state, params)
    rates.append(float(optax.tree.get(state, "learning_rate")))
  return np.asarray(rates)


@pytest.mark.parametrize("name", HD)
def test_upper_bound_caps_a_growing_learned_rate(name):
  """Gradients that keep their direction make every hypergradient > 0."""
  free = _constant_gradient_rates(HD[name](learning_rate=0.1), False)
  bounded = _constant_gradient_rates(
      HD[name](learning_rate=0.1, learning_rate_bounds=(None, 0.15)), False)
  assert free.max() > 0.2
  assert bounded.max() == np.float32(0.15)
  assert bounded.min() == np.float32(0.1)


@pytest.mark.parametrize("name", HD)
def test_lower_bound_stops_a_falling_learned_rate(name):
  """Gradients that flip sign every step make every hypergradient < 0."""
  free = _constant_gradient_rates(
      HD[name](learning_rate=0.1, b1=0.0) if name == "adam_hd"
      else HD[name](learning_rate=0.1), True)
  kwargs = dict(b1=0.0) if name == "adam_hd" else {}
  bounded = _constant_gradient_rates(
      HD[name](learning_rate=0.1, learning_rate_bounds=(0.05, None),
               **kwargs), True)
  assert free.min() < 0.0
  assert bounded.min() == np.float32(0.05)
  assert bounded.max() == np.float32(0.1)


def test_adam_hd_per_tensor_bounds_clip_the_rate_of_every_leaf():
  """Constant gradients: each leaf moves by its own rate (the step's scale
  is 1 up to eps), and none moves by more than the upper bound."""
  tx = optax_extras.adam_hd(0.1, hypergrad_lr=1e-3, hypergradient="per_tensor",
                            learning_rate_bounds=(None, 0.15))
  params = [jnp.zeros(4), jnp.zeros(3), jnp.zeros(2)]
  grads = [jnp.full(4, 2.0), jnp.full(3, 1.0), jnp.full(2, 3.0)]
  state = tx.init(params)
  steps = []
  for _ in range(8):
    updates, state = tx.update(grads, state, params)
    steps.append([float(jnp.max(jnp.abs(u))) for u in updates])
  assert steps[1][0] < steps[1][1] < steps[1][2]  # partial sums: rising
  assert max(max(s) for s in steps) <= 0.15 * (1 + 1e-6)
  assert steps[-1] == pytest.approx([0.15] * 3, rel=1e-6)


@pytest.mark.parametrize("name", HD)
@pytest.mark.parametrize("bounds", [
    (1.0, 0.5), (0.5, 0.5), ("a", None), (None, math.nan), (0.0, math.inf),
    (0.0,), [0.0, 1.0, 2.0], None, 1.0])
def test_bad_learning_rate_bounds_raise_naming_them(name, bounds):
  with pytest.raises(ValueError, match=re.escape(
      f"learning_rate_bounds={bounds!r}")):
    FACTORIES[name](0.1, learning_rate_bounds=bounds)


@pytest.mark.parametrize("name", HD)
@pytest.mark.parametrize("bounds", [(0.2, None), (None, 0.05)])
def test_learning_rate_outside_bounds_raises(name, bounds):
  with pytest.raises(ValueError, match=re.escape("learning_rate=0.1")):
    FACTORIES[name](0.1, learning_rate_bounds=bounds)


# ------------------------------------------------------ optax's contract

@pytest.mark.parametrize("name", HD)
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_update_accepts_extra_args_and_ignores_them(name, weight_decay):
  tx = HD[name](learning_rate=0.1, weight_decay=weight_decay)
  assert isinstance(tx, optax.GradientTransformationExtraArgs)
  params = _params()
  state = tx.init(params)
  plain = tx.update(_grads(params), state, params)
  with_value = tx.update(_grads(params), state, params, value=jnp.ones([]))
  jax.tree.map(np.testing.assert_array_equal, with_value, plain)


@pytest.mark.parametrize("name", HD)
def test_reduce_on_plateau_chains_after_hd(name):
  tx = optax.chain(HD[name](learning_rate=0.1),
                   optax.contrib.reduce_on_plateau(patience=1))
  params = _params()
  state = tx.init(params)
  for _ in range(3):
    updates, state = tx.update(_grads(params), state, params,
                               value=jnp.ones([]))
    params = optax.apply_updates(params, updates)
  assert all(np.all(np.isfinite(p)) for p in jax.tree.leaves(params))


# ------------------------------------------------------- compiled structure

def _fusions_reading_a_scalar_per_leaf(tx, num_leaves):
  """How many fusions of the compiled step take more scalar operands than
  half the number of leaves (e.g. one per-leaf partial sum each)."""
  params = [jnp.full((8, 8), 0.1 + k) for k in range(num_leaves)]

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  hlo = jax.jit(step).lower(params, tx.init(params), params).compile()
  return sum(1 for line in hlo.as_text().splitlines()
             if line.startswith("%fused_computation")
             and line.count("[]") > num_leaves // 2)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU fusion")
@pytest.mark.parametrize("kwargs", [
    dict(),
    dict(hypergradient="per_tensor"),
    dict(learning_rate_bounds=(0.0, 1.0)),
    dict(hypergradient="per_tensor", learning_rate_bounds=(0.0, 1.0))])
def test_adam_hd_leaf_updates_read_the_learned_rates_computed_once(kwargs):
  """The learned rates are computed once (at most one fusion sums the
  per-leaf hypergradients), not again in the update of every leaf: that
  made compile time quadratic in the number of leaves."""
  tx = optax_extras.adam_hd(1e-3, hypergrad_lr=1e-4, **kwargs)
  assert _fusions_reading_a_scalar_per_leaf(tx, num_leaves=40) <= 1


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU fusion")
@pytest.mark.parametrize("bounds", [(None, None), (0.0, 1.0)])
def test_sgd_hd_leaf_updates_read_the_learned_rate_computed_once(bounds):
  tx = optax_extras.sgd_hd(1e-3, hypergrad_lr=1e-4, momentum=0.9,
                           nesterov=True, learning_rate_bounds=bounds)
  assert _fusions_reading_a_scalar_per_leaf(tx, num_leaves=40) <= 1


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
@pytest.mark.parametrize("shape", [(64, 32), (5, 7, 9), (48,), ()])
def test_dot_products_of_low_precision_leaves_are_summed_in_float32(dtype,
                                                                    shape):
  """The hypergradient's dot product of a leaf (YNNPACK for float32, our own
  blocked loop for narrower floats) equals the float64 sum of the exactly
  upcast values within the bound of float32 summation in any order,
  (n + 1) u sum |a b| with u = 2^-24 (products of bfloat16 or float16 values
  are exact in float32). A sum in the leaf's own dtype misses it by far."""
  from optax_extras import _common  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(3)
  a = jnp.asarray(rng.normal(size=shape), dtype)
  b = jnp.asarray(rng.normal(size=shape), dtype)
  got = jax.jit(lambda a, b: _common.leaf_vdot(a, b, jnp.float32))(a, b)
  expected = np.sum(np.asarray(a, np.float64) * np.asarray(b, np.float64))
  assert got.dtype == jnp.float32
  scale = np.sum(np.abs(np.asarray(a, np.float64) * np.asarray(b, np.float64)))
  assert abs(float(got) - expected) <= (a.size + 1) * 2.0**-24 * scale
