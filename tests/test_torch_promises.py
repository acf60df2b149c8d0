"""optax_extras.torch keeps torch's promises: checked values, learned rates
in param_groups, safe checkpoints, per-parameter steps, schedulers."""

import contextlib
import copy
import io
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_extras
from optax_extras import gdtuo

torch = pytest.importorskip("torch")
from optax_extras.torch import import_torch_state
from optax_extras.torch import OptaxOptimizer


def _mlp(dtype=torch.float32):
  torch.manual_seed(0)
  return torch.nn.Sequential(
      torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)
  ).to(dtype)


def _step(model, opt, step):
  gen = torch.Generator().manual_seed(1000 + step)
  dtype = next(model.parameters()).dtype
  x = torch.randn(32, 6, generator=gen, dtype=dtype)
  opt.zero_grad()
  torch.nn.functional.mse_loss(model(x), torch.sin(x[:, :3] * 2)).backward()
  opt.step()


def _train(model, opt, steps, first=0, scheduler=None):
  for step in range(first, first + steps):
    _step(model, opt, step)
    if scheduler is not None:
      scheduler.step()


def _assert_close(actual, expected, rtol):
  """Each tensor within `rtol` of the reference, relative to its largest
  magnitude (elementwise relative error is unbounded near zero)."""
  for (name, a), b in zip(actual.named_parameters(), expected.parameters()):
    a, b = a.detach().numpy(), b.detach().numpy()
    error = np.max(np.abs(a - b)) / np.max(np.abs(b))
    assert error <= rtol, f"{name}: relative error {error:.2e} > {rtol:.0e}"


def _snapshot(opt):
  return ([p.detach().clone() for g in opt.param_groups for p in g["params"]],
          [np.asarray(x) for x in jax.tree.leaves(opt.opt_states)],
          [{k: v for k, v in g.items() if k != "params"}
           for g in opt.param_groups])


def _assert_unchanged(opt, snapshot, **written):
  params, states, options = _snapshot(opt)
  assert all(torch.equal(a, b) for a, b in zip(params, snapshot[0]))
  assert all(np.array_equal(a, b) for a, b in zip(states, snapshot[1]))
  assert options == [{**o, **written} for o in snapshot[2]]


@contextlib.contextmanager
def _compilations():
  """Collects the XLA compilations that happen in the block."""
  seen = []

  def listener(name, *args, **kwargs):
    del args, kwargs
    if name == "/jax/core/compile/backend_compile_duration":
      seen.append(name)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield seen
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


@pytest.mark.parametrize("factory", [optax_extras.diffgrad, optax.adam])
@pytest.mark.parametrize("lr", [-0.01, float("nan"), float("inf")])
def test_negative_or_non_finite_lr_is_refused_at_construction(factory, lr):
  with pytest.raises(ValueError, match=r"lr must be a finite number >= 0, "
                     r"got lr="):
    OptaxOptimizer(_mlp().parameters(), factory, lr=lr)


@pytest.mark.parametrize("key, value", [
    ("lr", -0.5), ("lr", float("nan")), ("betas", (1.5, 0.999)),
    ("eps", -1e-8)])
def test_bad_value_written_into_param_groups_fails_the_step_unchanged(
    key, value):
  model = _mlp()
  opt = OptaxOptimizer(model.parameters(), optax.adam, lr=1e-2)
  _train(model, opt, 2)
  good = opt.param_groups[0][key]
  opt.param_groups[0][key] = value
  snapshot = _snapshot(opt)
  with pytest.raises(ValueError, match=key):
    _step(model, opt, 2)
  _assert_unchanged(opt, snapshot)
  opt.param_groups[0][key] = good
  reference = _mlp()
  _train(reference, OptaxOptimizer(reference.parameters(), optax.adam,
                                   lr=1e-2), 3)
  _step(model, opt, 2)
  assert all(torch.equal(a, b) for a, b in zip(model.parameters(),
                                               reference.parameters()))


def _stacks():
  log_rate = optax_extras.Learned(1e-2, space="log")
  return {
      "hyperoptimize": (optax_extras.hyperoptimize(
          optax.adam, {"learning_rate": log_rate}, optax.sgd(1e-4)),
                        "learning_rate"),
      "gdtuo": (gdtuo.Adam(alpha=1e-2, optimizer=gdtuo.SGD(1e-5)), "alpha"),
  }


@pytest.mark.parametrize("kind", ["hyperoptimize", "gdtuo"])
def test_stack_learned_rate_shows_in_natural_units(kind):
  tx, name = _stacks()[kind]
  model = _mlp()
  opt = OptaxOptimizer(model.parameters(), tx)
  assert opt.param_groups[0]["lr"] == pytest.approx(1e-2, rel=1e-6)
  rates = []
  for step in range(5):
    _step(model, opt, step)
    natural = optax_extras.hyperparameters(opt.opt_states[0])[0][name]
    assert opt.param_groups[0]["lr"] == float(natural)
    rates.append(opt.param_groups[0]["lr"])
  assert len(set(rates)) > 1


@pytest.mark.skipif(not hasattr(optax_extras, "set_hyperparameters"),
                    reason="needs optax_extras.set_hyperparameters")
@pytest.mark.parametrize("kind", ["hyperoptimize", "gdtuo"])
def test_writing_lr_sets_the_natural_rate_of_a_stack(kind):
  tx, name = _stacks()[kind]
  model, twin = _mlp(), _mlp()
  opt = OptaxOptimizer(model.parameters(), tx)
  _train(model, opt, 3)
  opt.param_groups[0]["lr"] = 0.05
  _step(model, opt, 3)
  params = [jnp.asarray(p.detach().numpy()) for p in twin.parameters()]
  state = tx.init(params)
  for step in range(4):
    if step == 3:
      state = optax_extras.set_hyperparameters(state, {name: 0.05})
    twin_opt = torch.optim.SGD(twin.parameters(), lr=0.0)
    _step(twin, twin_opt, step)
    grads = [jnp.asarray(p.grad.numpy()) for p in twin.parameters()]
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    with torch.no_grad():
      for p, value in zip(twin.parameters(), params):
        p.copy_(torch.from_numpy(np.array(value)))
  _assert_close(model, twin, rtol=1e-5)
  learned = float(optax_extras.hyperparameters(state)[0][name])
  assert opt.param_groups[0]["lr"] == pytest.approx(learned, rel=1e-5)
  assert learned == pytest.approx(0.05, rel=1e-3)


def _make(kind, params):
  if kind == "adam_bf16_moments":
    return OptaxOptimizer(params, optax.adam, lr=1e-2, mu_dtype=jnp.bfloat16)
  if kind == "diffgrad_bf16_moments":
    return OptaxOptimizer(params, optax_extras.diffgrad, lr=1e-2,
                          mu_dtype=jnp.bfloat16)
  if kind == "adam_hd":
    return OptaxOptimizer(params, optax_extras.adam_hd, lr=1e-2,
                          hypergrad_lr=1e-4)
  return OptaxOptimizer(params, _stacks()["gdtuo"][0])


@pytest.mark.parametrize("kind", ["adam_bf16_moments", "diffgrad_bf16_moments",
                                  "adam_hd", "gdtuo"])
def test_state_dict_loads_with_weights_only_and_resumes_bitwise(kind):
  straight, first = _mlp(), _mlp()
  _train(straight, _make(kind, straight.parameters()), 8)
  opt = _make(kind, first.parameters())
  _train(first, opt, 4)
  buffer = io.BytesIO()
  torch.save({"model": first.state_dict(), "opt": opt.state_dict()}, buffer)
  buffer.seek(0)
  checkpoint = torch.load(buffer, weights_only=True)
  second = _mlp()
  second.load_state_dict(checkpoint["model"])
  resumed = _make(kind, second.parameters())
  resumed.load_state_dict(checkpoint["opt"])
  _train(second, resumed, 4, first=4)
  assert all(torch.equal(a, b) for a, b in zip(second.parameters(),
                                               straight.parameters()))


def test_state_dict_of_split_states_resumes_bitwise():
  def run(model, opt, first, steps):
    for step in range(first, first + steps):
      model[0].requires_grad_(step >= 3)
      _step(model, opt, step)

  straight, first = _mlp(), _mlp()
  run(straight, OptaxOptimizer(straight.parameters(), optax.adam, lr=1e-2),
      0, 8)
  opt = OptaxOptimizer(first.parameters(), optax.adam, lr=1e-2)
  run(first, opt, 0, 5)
  buffer = io.BytesIO()
  torch.save(opt.state_dict(), buffer)
  buffer.seek(0)
  second = _mlp()
  second.load_state_dict(first.state_dict())
  resumed = OptaxOptimizer(second.parameters(), optax.adam, lr=1e-2)
  resumed.load_state_dict(torch.load(buffer, weights_only=True))
  assert len(resumed.opt_states[0]) == 2
  run(second, resumed, 5, 3)
  assert all(torch.equal(a, b) for a, b in zip(second.parameters(),
                                               straight.parameters()))


def test_load_state_dict_reads_the_one_state_per_group_format():
  model = _mlp()
  opt = OptaxOptimizer(model.parameters(), optax.adam, lr=1e-2)
  _train(model, opt, 3)
  state_dict = opt.state_dict()
  (cohort,) = state_dict["state"][0]["cohorts"]
  state_dict["state"][0] = {"optax_state": cohort["optax_state"],
                            "paths": cohort["paths"]}
  fresh = OptaxOptimizer(_mlp().parameters(), optax.adam, lr=1e-2)
  fresh.load_state_dict(state_dict)
  for a, b in zip(jax.tree.leaves(fresh.opt_states),
                  jax.tree.leaves(opt.opt_states)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("key, value", [("tx", "optax.adam"),
                                        ("learning_rate", 0.1),
                                        ("mu_dtype", "bfloat16")])
def test_load_state_dict_refuses_unknown_keys_and_changes_nothing(key, value):
  model = _mlp()
  opt = OptaxOptimizer(model.parameters(), optax.adam, lr=1e-2)
  _train(model, opt, 2)
  state_dict = opt.state_dict()
  state_dict["param_groups"][0][key] = value
  snapshot = _snapshot(opt)
  with pytest.raises(ValueError, match=f"option '{key}'"):
    opt.load_state_dict(state_dict)
  _assert_unchanged(opt, snapshot)


def test_load_state_dict_accepts_scheduler_bookkeeping():
  model = _mlp()
  opt = OptaxOptimizer(model.parameters(), optax.adam, lr=1e-2)
  torch.optim.lr_scheduler.StepLR(opt, 5)
  fresh = OptaxOptimizer(_mlp().parameters(), optax.adam, lr=1e-2)
  fresh.load_state_dict(opt.state_dict())
  assert fresh.param_groups[0]["initial_lr"] == 1e-2


def _adam_state_dict(step):
  w = torch.nn.Parameter(torch.ones(3))
  opt = torch.optim.Adam([w])
  w.grad = torch.ones(3)
  opt.step()
  state_dict = opt.state_dict()
  state_dict["state"][0]["step"] = torch.tensor(step, dtype=torch.float64)
  return state_dict


def test_import_refuses_a_step_beyond_int32():
  state = import_torch_state(_adam_state_dict(2**31 - 1), optax.adam(0.1),
                             [jnp.ones(3)])
  assert int(state[0].count) == 2**31 - 1
  with pytest.raises(ValueError, match=r"step must be at most 2\^31 - 1"):
    import_torch_state(_adam_state_dict(2**31), optax.adam(0.1),
                       [jnp.ones(3)])


def test_import_refuses_an_expectigrad_counter_beyond_int32():
  pytest.importorskip("expectigrad.pytorch")
  from expectigrad.pytorch import Expectigrad  # pylint: disable=g-import-not-at-top
  w = torch.nn.Parameter(torch.ones(3))
  opt = Expectigrad([w], lr=1e-2)
  w.grad = torch.ones(3)
  opt.step()
  state_dict = opt.state_dict()
  state_dict["state"][0]["counter"] = torch.tensor([1.0, 2.0**31, 3.0])
  with pytest.raises(ValueError, match=r"counter of parameter 0 must be at "
                     r"most 2\^31 - 1"):
    import_torch_state(state_dict, optax_extras.expectigrad(1e-2),
                       [jnp.ones(3)])


def _freeze_first_layer(model, step, unfreeze_at):
  model[0].requires_grad_(step >= unfreeze_at)


def test_gradual_unfreezing_matches_torch_adam():
  """A layer frozen for 50 steps, then unfrozen, gets torch's per-parameter
  bias correction (its first update is that of step 1, not 51)."""
  reference, ours = _mlp(), _mlp()
  torch_opt = torch.optim.Adam(reference.parameters(), lr=1e-2)
  opt = OptaxOptimizer(ours.parameters(), optax.adam, lr=1e-2)
  for step in range(60):
    for model, optimizer in ((reference, torch_opt), (ours, opt)):
      _freeze_first_layer(model, step, 50)
      _step(model, optimizer, step)
  _assert_close(ours, reference, rtol=1e-5)
  assert sorted(opt.opt_states[0]) == [(0, 1), (2, 3)]


def test_load_torch_state_with_different_steps_continues_torch_adam():
  def run(model, optimizer, first, steps):
    for step in range(first, first + steps):
      _freeze_first_layer(model, step, 6)
      _step(model, optimizer, step)

  straight, half = _mlp(torch.float64), _mlp(torch.float64)
  run(straight, torch.optim.Adam(straight.parameters(), lr=1e-2), 0, 14)
  torch_opt = torch.optim.Adam(half.parameters(), lr=1e-2)
  run(half, torch_opt, 0, 10)
  with jax.enable_x64(True):
    opt = OptaxOptimizer(half.parameters(), optax.adam, lr=1e-2)
    opt.load_torch_state(torch_opt.state_dict())
    run(half, opt, 10, 4)
  for a, b in zip(half.parameters(), straight.parameters()):
    np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(),
                               rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", ["adam", "sgd_momentum"])
def test_one_cycle_lr_with_defaults_matches_torch_and_compiles_once(name):
  reference, ours = _mlp(), _mlp()
  if name == "adam":
    torch_opt = torch.optim.Adam(reference.parameters(), lr=1e-3)
    opt = OptaxOptimizer(ours.parameters(), optax.adam, lr=1e-3)
  else:
    torch_opt = torch.optim.SGD(reference.parameters(), lr=1e-3,
                                momentum=0.9)
    opt = OptaxOptimizer(ours.parameters(), optax.sgd, lr=1e-3, momentum=0.9)
  schedule = torch.optim.lr_scheduler.OneCycleLR
  _train(reference, torch_opt, 100,
         scheduler=schedule(torch_opt, max_lr=1e-2, total_steps=100))
  scheduler = schedule(opt, max_lr=1e-2, total_steps=100)
  _train(ours, opt, 1, scheduler=scheduler)
  with _compilations() as compiled:
    _train(ours, opt, 99, first=1, scheduler=scheduler)
  assert not compiled
  _assert_close(ours, reference, rtol=1e-5)
  key = "betas" if name == "adam" else "momentum"
  assert opt.param_groups[0][key] == torch_opt.param_groups[0][key]


def test_tree_get_finds_the_one_learned_rate_of_an_adam_hd_group():
  model = _mlp()
  opt = OptaxOptimizer(model.parameters(), optax_extras.adam_hd, lr=1e-2,
                       hypergrad_lr=1e-3)
  _train(model, opt, 3)
  learned = optax.tree.get(opt.opt_states[0], "learning_rate")
  assert float(learned) == opt.param_groups[0]["lr"]
  assert float(learned) != np.float32(1e-2)


def test_import_amsgrad_state_into_optax_amsgrad():
  w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64))
  torch_opt = torch.optim.Adam([w], lr=1e-2, betas=(0.9, 0.99), amsgrad=True)
  for step in range(6):
    w.grad = torch.tensor([1.0, 0.5, -2.0], dtype=torch.float64) / (
        1 + step) ** 2
    torch_opt.step()
  torch_state = torch_opt.state_dict()["state"][0]
  with jax.enable_x64(True):
    state = import_torch_state(torch_opt.state_dict(),
                               optax.amsgrad(1e-2, b1=0.9, b2=0.99),
                               [jnp.asarray(w.detach().numpy())])
    amsgrad = state[0]
    assert isinstance(amsgrad, optax.ScaleByAmsgradState)
    assert int(amsgrad.count) == 6
    np.testing.assert_array_equal(amsgrad.mu[0], torch_state["exp_avg"])
    np.testing.assert_array_equal(amsgrad.nu[0], torch_state["exp_avg_sq"])
    np.testing.assert_allclose(
        amsgrad.nu_max[0],
        torch_state["max_exp_avg_sq"].numpy() / (1 - 0.99**6), rtol=1e-15)


@pytest.mark.parametrize("dtype, jax_dtype", [
    (torch.bfloat16, jnp.bfloat16), (torch.float16, jnp.float16)])
@pytest.mark.parametrize("name", ["adam", "sgd_momentum"])
def test_injected_factory_steps_low_precision_params_in_their_dtype(
    dtype, jax_dtype, name):
  factory, instance, options = {
      "adam": (optax.adam, optax.adam(1e-2), {"lr": 1e-2}),
      "sgd_momentum": (optax.sgd, optax.sgd(1e-2, momentum=0.9),
                       {"lr": 1e-2, "momentum": 0.9}),
  }[name]
  ours, reference = _mlp(dtype), _mlp()
  opt = OptaxOptimizer(ours.parameters(), factory, **options)
  _train(ours, opt, 5)
  _train(reference, OptaxOptimizer(reference.parameters(), instance), 5)
  moments = [x for x in jax.tree.leaves(opt.opt_states[0].inner_state)
             if x.ndim]
  assert moments and all(x.dtype == jax_dtype for x in moments)
  assert all(p.dtype == dtype for p in ours.parameters())
  if (dtype, name) == (torch.float16, "adam"):
    return  # float16 second moments underflow (as in torch): not comparable
  for a, b in zip(ours.parameters(), reference.parameters()):
    np.testing.assert_allclose(a.detach().float().numpy(),
                               b.detach().float().numpy(), atol=2e-2)


def test_injected_factory_keeps_float32_and_float64_params_apart():
  with jax.enable_x64(True):
    a = torch.nn.Parameter(torch.linspace(-1, 1, 3))
    b = torch.nn.Parameter(torch.linspace(-1, 1, 3, dtype=torch.float64))
    opt = OptaxOptimizer([a, b], optax.adam, lr=1e-2)
    for _ in range(3):
      a.grad, b.grad = a.detach() ** 3, b.detach() ** 3
      opt.step()
    mu = opt.opt_states[0].inner_state[0].mu
    assert (mu[0].dtype, mu[1].dtype) == (jnp.float32, jnp.float64)
    assert (a.dtype, b.dtype) == (torch.float32, torch.float64)
    np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(),
                               rtol=1e-6)


def _checkpointed(model, opt, scheduler=None):
  buffer = io.BytesIO()
  torch.save({"model": model.state_dict(), "opt": opt.state_dict(),
              "scheduler": scheduler and scheduler.state_dict()}, buffer)
  buffer.seek(0)
  return torch.load(buffer, weights_only=True)


def _assert_same_run(actual, expected):
  for a, b in zip(actual.parameters(), expected.parameters()):
    np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(),
                               rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("factory, options, key, value", [
    (optax.adam, {"lr": 1e-2}, "betas", (0.5, 0.6)),
    (optax.adam, {"lr": 1e-2}, "eps", 0.5),
    (optax.adam, {"lr": 1e-2}, "lr", 0.05),
    (optax.sgd, {"lr": 1e-2, "momentum": 0.9}, "momentum", 0.1),
    (optax.adamw, {"lr": 1e-2}, "weight_decay", 0.5),
    (optax_extras.adam_hd, {"lr": 1e-2, "hypergrad_lr": 1e-6}, "lr", 0.05),
])
def test_value_written_before_a_checkpoint_takes_effect_after_loading(
    factory, options, key, value):
  straight, first, second = _mlp(), _mlp(), _mlp()
  opt = OptaxOptimizer(first.parameters(), factory, **options)
  straight_opt = OptaxOptimizer(straight.parameters(), factory, **options)
  for model, optimizer in ((straight, straight_opt), (first, opt)):
    _train(model, optimizer, 2)
    optimizer.param_groups[0][key] = value
  checkpoint = _checkpointed(first, opt)
  second.load_state_dict(checkpoint["model"])
  resumed = OptaxOptimizer(second.parameters(), factory, **options)
  resumed.load_state_dict(checkpoint["opt"])
  assert resumed.param_groups[0][key] == value
  _train(straight, straight_opt, 2, first=2)
  _train(second, resumed, 2, first=2)
  _assert_same_run(second, straight)
  assert resumed.param_groups[0]["lr"] == pytest.approx(
      straight_opt.param_groups[0]["lr"], rel=1e-6)


def test_checkpoint_with_a_learned_rate_gone_negative_loads():
  # Unbounded hypergradient descent may drive the rate below zero; the
  # checkpoint of that run must load (the value is the state's own, not one
  # a user wrote), and resume it.
  torch.manual_seed(0)
  first, second = torch.nn.Linear(4, 1), torch.nn.Linear(4, 1)
  second.load_state_dict(first.state_dict())
  x, y = torch.randn(16, 4), torch.randn(16, 1)
  opt = OptaxOptimizer(first.parameters(), optax_extras.sgd_hd, lr=0.1,
                       hypergrad_lr=10.0)
  for _ in range(20):
    opt.zero_grad()
    ((first(x) - y) ** 2).mean().backward()
    opt.step()
    if opt.param_groups[0]["lr"] < 0:
      break
  assert opt.param_groups[0]["lr"] < 0
  buffer = io.BytesIO()
  torch.save(opt.state_dict(), buffer)
  buffer.seek(0)
  resumed = OptaxOptimizer(second.parameters(), optax_extras.sgd_hd, lr=0.1,
                           hypergrad_lr=10.0)
  resumed.load_state_dict(torch.load(buffer, weights_only=True))
  assert resumed.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
  resumed.zero_grad()
  ((second(x) - y) ** 2).mean().backward()
  resumed.step()
  assert all(torch.isfinite(p).all() for p in second.parameters())


@pytest.mark.parametrize("name", ["adam", "sgd_momentum"])
def test_one_cycle_lr_resumes_like_the_uninterrupted_run(name):
  def make(model):
    if name == "adam":
      opt = OptaxOptimizer(model.parameters(), optax.adam, lr=1e-3)
    else:
      opt = OptaxOptimizer(model.parameters(), optax.sgd, lr=1e-3,
                           momentum=0.9)
    return opt, torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2,
                                                    total_steps=20)

  straight, first, second = _mlp(), _mlp(), _mlp()
  opt, scheduler = make(straight)
  _train(straight, opt, 12, scheduler=scheduler)
  opt, scheduler = make(first)
  _train(first, opt, 5, scheduler=scheduler)
  checkpoint = _checkpointed(first, opt, scheduler)
  second.load_state_dict(checkpoint["model"])
  opt, scheduler = make(second)
  opt.load_state_dict(checkpoint["opt"])
  scheduler.load_state_dict(checkpoint["scheduler"])
  _train(second, opt, 7, first=5, scheduler=scheduler)
  _assert_same_run(second, straight)


@pytest.mark.parametrize("given, expected", [
    ({"b1": 0.5}, (0.5, 0.95)), ({"b2": 0.5}, (0.8, 0.5))])
def test_a_group_giving_one_beta_keeps_the_optimizers_other(given, expected):
  model = _mlp()
  opt = OptaxOptimizer(
      [{"params": model[0].parameters(), **given},
       {"params": model[2].parameters()}], optax.adam, lr=1e-2,
      betas=(0.8, 0.95))
  assert opt.param_groups[0]["betas"] == expected
  assert opt.param_groups[1]["betas"] == (0.8, 0.95)
  _train(model, opt, 1)
  hyperparams = opt.opt_states[0].hyperparams
  np.testing.assert_allclose([hyperparams["b1"], hyperparams["b2"]],
                             expected, rtol=1e-6)


def test_a_groups_own_tx_next_to_a_factory_takes_only_its_options():
  reference, ours = _mlp(), _mlp()
  _train(reference, torch.optim.SGD(
      [{"params": reference[0].parameters(), "momentum": 0.9},
       {"params": reference[2].parameters(), "momentum": 0.5, "lr": 1e-2}],
      lr=5e-2), 10)
  opt = OptaxOptimizer(
      [{"params": ours[0].parameters(), "tx": optax.sgd(5e-2, momentum=0.9)},
       {"params": ours[2].parameters(), "tx": optax.sgd, "momentum": 0.5}],
      optax.adam, lr=1e-2)
  assert set(opt.param_groups[0]) == {"params", "tx"}
  assert {k: v for k, v in opt.param_groups[1].items()
          if k not in ("params", "tx")} == {"lr": 1e-2, "momentum": 0.5}
  _train(ours, opt, 10)
  _assert_close(ours, reference, rtol=1e-5)


def test_step_inside_inference_mode_keeps_the_params_trainable():
  reference, ours = _mlp(), _mlp()
  torch_opt = torch.optim.SGD(reference.parameters(), lr=5e-2)
  opt = OptaxOptimizer(ours.parameters(), optax.sgd, lr=5e-2)
  for step in range(3):
    for model, optimizer in ((reference, torch_opt), (ours, opt)):
      optimizer.zero_grad()
      gen = torch.Generator().manual_seed(step)
      model(torch.randn(8, 6, generator=gen)).square().mean().backward()
      with torch.inference_mode():
        optimizer.step()
  assert not any(p.is_inference() for p in ours.parameters())
  _assert_close(ours, reference, rtol=1e-5)


@pytest.mark.parametrize("copy_", ["deepcopy", "pickle", "torch.save"])
def test_copying_or_pickling_is_refused_with_a_pointer_to_state_dict(copy_):
  model = _mlp()
  opt = OptaxOptimizer(model.parameters(), optax.adam, lr=1e-2)
  _train(model, opt, 1)
  snapshot = _snapshot(opt)
  with pytest.raises(TypeError, match=r"state_dict\(\).*load_state_dict"):
    {"deepcopy": copy.deepcopy, "pickle": pickle.dumps,
     "torch.save": lambda o: torch.save(o, io.BytesIO())}[copy_](opt)
  _assert_unchanged(opt, snapshot)
  _train(model, opt, 1, first=1)


def test_state_dict_hooks_run_as_in_torch():
  model = _mlp()
  opt = OptaxOptimizer(model.parameters(), optax.adam, lr=1e-2)
  _train(model, opt, 1)
  calls = []

  def renamed_back(optimizer, state_dict):
    calls.append(("load_pre", optimizer))
    state_dict = dict(state_dict)
    state_dict["param_groups"] = state_dict.pop("groups")
    return state_dict

  def renamed(optimizer, state_dict):
    calls.append(("post", optimizer))
    state_dict["groups"] = state_dict.pop("param_groups")
    state_dict["epoch"] = 3
    return state_dict

  opt.register_state_dict_pre_hook(lambda o: calls.append(("pre", o)))
  opt.register_state_dict_post_hook(renamed)
  opt.register_load_state_dict_pre_hook(renamed_back)
  opt.register_load_state_dict_post_hook(
      lambda o: calls.append(("load_post", o)))
  state_dict = opt.state_dict()
  assert set(state_dict) == {"state", "groups", "epoch"}
  opt.load_state_dict(state_dict)
  assert calls == [(name, opt) for name in ("pre", "post", "load_pre",
                                            "load_post")]
  _train(model, opt, 1, first=1)


def test_step_inside_torch_compile_runs_eagerly():
  reference, ours = _mlp(), _mlp()
  opt = OptaxOptimizer(ours.parameters(), optax.adam, lr=1e-2)

  @torch.compile(backend="eager")
  def compiled_step():
    opt.step()

  for model, optimizer, step in (
      (reference, OptaxOptimizer(reference.parameters(), optax.adam,
                                 lr=1e-2), None),
      (ours, opt, compiled_step)):
    for n in range(3):
      optimizer.zero_grad()
      gen = torch.Generator().manual_seed(n)
      model(torch.randn(8, 6, generator=gen)).square().mean().backward()
      (step or optimizer.step)()
  torch._dynamo.reset()  # pylint: disable=protected-access
  _assert_close(ours, reference, rtol=1e-6)


def _cohort(state_dict):
  return state_dict["state"][0]["cohorts"][0]


@pytest.mark.parametrize("name, mutate, match", [
    ("no paths", lambda sd: _cohort(sd).pop("paths"), r"\['cohorts'\]\[0\]"),
    ("extra field", lambda sd: _cohort(sd).update(junk=1), "junk"),
    ("extra leaf", lambda sd: _cohort(sd)["optax_state"].append(
        torch.zeros(1)), r"list of 14 tensors \(one per path\), got 15"),
    ("missing leaf", lambda sd: _cohort(sd)["optax_state"].pop(),
     r"\['optax_state'\] must be a list of 14 tensors .*, got 13"),
    ("float leaf", lambda sd: _cohort(sd)["optax_state"].__setitem__(1, 0.9),
     "float"),
    ("float64 leaf", lambda sd: _cohort(sd)["optax_state"].__setitem__(
        6, _cohort(sd)["optax_state"][6].double()), r"float32\[16, 6\]"),
    ("bool position", lambda sd: _cohort(sd).__setitem__(
        "params", [False, True, 2, 3]), r"\['params'\] must be positions"),
    ("state list", lambda sd: sd.__setitem__("state", [sd["state"][0]]),
     r"state_dict\['state'\] must be a dict"),
    ("no group params", lambda sd: sd["param_groups"][0].pop("params"),
     r"state_dict\['param_groups'\] must be a list of dicts"),
    ("lr string", lambda sd: sd["param_groups"][0].__setitem__("lr", "0.1"),
     r"\['param_groups'\]\[0\]: lr must be a finite number"),
    ("betas", lambda sd: sd["param_groups"][0].__setitem__("betas", (2, .9)),
     r"\['param_groups'\]\[0\]: betas\[0\] must be in"),
])
def test_malformed_state_dict_is_refused_naming_the_field(name, mutate, match):
  del name
  model = _mlp()
  opt = OptaxOptimizer(model.parameters(), optax.adam, lr=1e-2)
  _train(model, opt, 1)
  state_dict = copy.deepcopy(opt.state_dict())
  mutate(state_dict)
  snapshot = _snapshot(opt)
  with pytest.raises(ValueError, match=match):
    opt.load_state_dict(state_dict)
  _assert_unchanged(opt, snapshot)
