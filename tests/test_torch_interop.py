"""optax_extras.torch: OptaxOptimizer against the real torch optimizers."""

import contextlib
import io

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_extras

torch = pytest.importorskip("torch")
from optax_extras.torch import import_torch_state
from optax_extras.torch import OptaxOptimizer
from optax_extras.torch import to_jax
from optax_extras.torch import to_torch


def _diffgrad(params, lr):
  return pytest.importorskip("torch_optimizer").DiffGrad(
      params, lr=lr, weight_decay=1e-2)


def _expectigrad(params, lr):
  return pytest.importorskip("expectigrad.pytorch").Expectigrad(params, lr=lr)


# name: (torch optimizer, OptaxOptimizer arguments, optax transformation)
CASES = {
    "diffgrad": (
        _diffgrad,
        lambda lr: (optax_extras.diffgrad, {"lr": lr, "weight_decay": 1e-2}),
        lambda lr: optax_extras.diffgrad(lr, weight_decay=1e-2)),
    "expectigrad": (
        _expectigrad,
        lambda lr: (optax_extras.expectigrad(lr), {}),
        optax_extras.expectigrad),
    "adam": (
        lambda params, lr: torch.optim.Adam(params, lr=lr),
        lambda lr: (optax.adam, {"lr": lr}),
        optax.adam),
    "sgd_momentum": (
        lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9),
        lambda lr: (optax.sgd(lr, momentum=0.9), {}),
        lambda lr: optax.sgd(lr, momentum=0.9)),
    "sgd_nesterov": (
        lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9,
                                           nesterov=True),
        lambda lr: (optax.sgd, {"lr": lr, "momentum": 0.9, "nesterov": True}),
        lambda lr: optax.sgd(lr, momentum=0.9, nesterov=True)),
}
LR = {"diffgrad": 1e-2, "expectigrad": 1e-2, "adam": 1e-2,
      "sgd_momentum": 5e-2, "sgd_nesterov": 5e-2}


@contextlib.contextmanager
def _compilations():
  """Counts the XLA compilations in the block (the list grows)."""
  names = []

  def listener(name, *args, **kwargs):
    del args, kwargs
    if name == "/jax/core/compile/backend_compile_duration":
      names.append(name)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield names
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


def _mlp(dtype=torch.float32):
  torch.manual_seed(0)
  return torch.nn.Sequential(
      torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)
  ).to(dtype)


def _batch(step, dtype=torch.float32):
  gen = torch.Generator().manual_seed(1000 + step)
  x = torch.randn(32, 6, generator=gen, dtype=dtype)
  return x, torch.sin(x[:, :3] * 2.0)


def _train(model, opt, steps, first=0, scheduler=None):
  for step in range(first, first + steps):
    x, y = _batch(step, next(model.parameters()).dtype)
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    if scheduler is not None:
      scheduler.step()


def _assert_close(actual, expected, rtol):
  """Every weight tensor within `rtol` of the reference, relative to the
  tensor's largest magnitude (elementwise relative error is unbounded where
  a weight crosses zero)."""
  for (name, a), b in zip(actual.named_parameters(), expected.parameters()):
    a, b = a.detach().numpy(), b.detach().numpy()
    error = np.max(np.abs(a - b)) / np.max(np.abs(b))
    assert error <= rtol, f"{name}: relative error {error:.2e} > {rtol:.0e}"


def _assert_allclose(actual, expected, rtol):
  for (name, a), b in zip(actual.named_parameters(), expected.parameters()):
    np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(),
                               rtol=rtol, atol=0, err_msg=name)


def _assert_equal(actual, expected):
  for a, b in zip(actual.parameters(), expected.parameters()):
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_torch_optimizer_over_30_steps_float32(name):
  make_torch, make_ours, _ = CASES[name]
  reference, ours = _mlp(), _mlp()
  _train(reference, make_torch(reference.parameters(), LR[name]), 30)
  tx, options = make_ours(LR[name])
  _train(ours, OptaxOptimizer(ours.parameters(), tx, **options), 30)
  moved = [not torch.equal(p, q) for p, q in zip(ours.parameters(), _mlp()
                                                  .parameters())]
  assert all(moved)
  _assert_close(ours, reference, rtol=1e-5)


def test_param_groups_with_own_options_match_torch_adam():
  reference, ours = _mlp(), _mlp()

  def groups(model):
    return [{"params": model[0].parameters(), "lr": 3e-2, "betas": (0.8, 0.99)},
            {"params": model[2].parameters()}]

  _train(reference, torch.optim.Adam(groups(reference), lr=1e-2), 30)
  ours_groups = groups(ours)
  ours_groups[0]["b1"], ours_groups[0]["b2"] = ours_groups[0].pop("betas")
  opt = OptaxOptimizer(ours_groups, optax.adam, lr=1e-2)
  assert [g["lr"] for g in opt.param_groups] == [3e-2, 1e-2]
  _train(ours, opt, 30)
  _assert_close(ours, reference, rtol=1e-5)


def test_group_with_its_own_transformation():
  reference, ours = _mlp(), _mlp()
  _train(reference, torch.optim.SGD(
      [{"params": reference[0].parameters(), "momentum": 0.9},
       {"params": reference[2].parameters()}], lr=5e-2), 30)
  opt = OptaxOptimizer(
      [{"params": ours[0].parameters(), "tx": optax.sgd(5e-2, momentum=0.9)},
       {"params": ours[2].parameters()}], optax.sgd(5e-2))
  _train(ours, opt, 30)
  _assert_close(ours, reference, rtol=1e-5)
  assert "tx" not in opt.state_dict()["param_groups"][0]


def test_torch_lr_scheduler_drives_injected_lr_without_recompiling():
  reference, ours = _mlp(), _mlp()
  torch_opt = torch.optim.Adam(reference.parameters(), lr=1e-2)
  _train(reference, torch_opt, 20,
         scheduler=torch.optim.lr_scheduler.StepLR(torch_opt, 5, 0.5))
  opt = OptaxOptimizer(ours.parameters(), optax.adam, lr=1e-2)
  scheduler = torch.optim.lr_scheduler.StepLR(opt, 5, 0.5)
  _train(ours, opt, 1, scheduler=scheduler)
  with _compilations() as compiled:
    _train(ours, opt, 19, first=1, scheduler=scheduler)
  _assert_close(ours, reference, rtol=1e-5)
  hyperparams = opt.opt_states[0].hyperparams
  assert float(hyperparams["learning_rate"]) == np.float32(1e-2 * 0.5**3)
  assert not compiled


def test_learned_hd_rate_shows_in_param_groups():
  model = _mlp()
  tx = optax_extras.adam_hd(1e-2, hypergrad_lr=1e-3)
  opt = OptaxOptimizer(model.parameters(), tx)
  params = [jnp.asarray(p.detach().numpy()) for p in model.parameters()]
  state = tx.init(params)
  rates = []
  for step in range(10):
    x, y = _batch(step)
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    grads = [jnp.asarray(p.grad.numpy()) for p in model.parameters()]
    opt.step()
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    rates.append(opt.param_groups[0]["lr"])
    assert rates[-1] == float(optax.tree.get(opt.opt_states[0],
                                             "learning_rate"))
    np.testing.assert_allclose(
        rates[-1], float(optax.tree.get(state, "learning_rate")), rtol=1e-5)
  assert len(set(rates)) == 10 and rates[-1] != np.float32(1e-2)


def test_writing_lr_overrides_the_learned_rate():
  model = _mlp()
  opt = OptaxOptimizer(model.parameters(), optax_extras.sgd_hd,
                       lr=1e-2, hypergrad_lr=1e-3)
  _train(model, opt, 2)
  opt.param_groups[0]["lr"] = 0.5
  opt.zero_grad()
  x, y = _batch(2)
  torch.nn.functional.mse_loss(model(x), y).backward()
  grads = [p.grad.clone() for p in model.parameters()]
  before = [p.detach().clone() for p in model.parameters()]
  direction = [np.asarray(d) for d in
               optax.tree.get(opt.opt_states[0], "prev_direction")]
  opt.step()
  rate = opt.param_groups[0]["lr"]
  hypergradient = sum(float((g * torch.from_numpy(np.array(d))).sum())
                      for g, d in zip(grads, direction))
  np.testing.assert_allclose(rate, 0.5 + 1e-3 * hypergradient, rtol=1e-5)
  for p, b, g in zip(model.parameters(), before, grads):
    np.testing.assert_allclose(p.detach().numpy(), (b - rate * g).numpy(),
                               rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", ["adam_factory", "expectigrad", "adam_hd"])
def test_state_dict_round_trip_is_bitwise(kind):
  def make(model):
    if kind == "adam_factory":
      return OptaxOptimizer(model.parameters(), optax.adam, lr=1e-2)
    if kind == "expectigrad":
      return OptaxOptimizer(model.parameters(), optax_extras.expectigrad(1e-2))
    return OptaxOptimizer(model.parameters(),
                          optax_extras.adam_hd(1e-2, hypergrad_lr=1e-3))

  straight = _mlp()
  _train(straight, make(straight), 20)
  first = _mlp()
  opt = make(first)
  _train(first, opt, 10)
  buffer = io.BytesIO()
  torch.save({"model": first.state_dict(), "opt": opt.state_dict()}, buffer)
  buffer.seek(0)
  checkpoint = torch.load(buffer)
  second = _mlp()
  second.load_state_dict(checkpoint["model"])
  resumed = make(second)
  resumed.load_state_dict(checkpoint["opt"])
  assert resumed.param_groups[0].get("lr") == opt.param_groups[0].get("lr")
  _train(second, resumed, 10, first=10)
  _assert_equal(second, straight)


def _regression(lib, w, b, x, y):
  return ((lib.tanh(x @ w.T + b) - y) ** 2).mean()


def _regression_batch(step):
  gen = np.random.default_rng(step)
  x = gen.normal(size=(16, 5))
  x[:, step % 3] = 0.0  # exact zero gradients for Expectigrad's counter
  return x, gen.normal(size=(16, 3))


@pytest.mark.parametrize("name", sorted(CASES))
def test_import_torch_state_continues_the_torch_run_float64(name):
  make_torch, _, make_tx = CASES[name]
  lr = LR[name]
  gen = np.random.default_rng(0)
  w0, b0 = gen.normal(size=(3, 5)) * 0.5, gen.normal(size=(3,)) * 0.1

  def torch_run(steps):
    w = torch.tensor(w0, requires_grad=True)
    b = torch.tensor(b0, requires_grad=True)
    opt = make_torch([w, b], lr)
    for step in range(steps):
      x, y = map(torch.tensor, _regression_batch(step))
      opt.zero_grad()
      _regression(torch, w, b, x, y).backward()
      opt.step()
    return w.detach().numpy(), b.detach().numpy(), opt.state_dict()

  full_w, full_b, _ = torch_run(20)
  half_w, half_b, torch_state = torch_run(10)
  with jax.enable_x64(True):
    tx = make_tx(lr)
    params = [jnp.asarray(half_w), jnp.asarray(half_b)]
    state = import_torch_state(torch_state, tx, params)
    grad_fn = jax.jit(jax.grad(
        lambda p, x, y: _regression(jnp, p[0], p[1], x, y)))
    for step in range(10, 20):
      grads = grad_fn(params, *_regression_batch(step))
      updates, state = tx.update(grads, state, params)
      params = optax.apply_updates(params, updates)
    assert params[0].dtype == jnp.float64
    np.testing.assert_allclose(params[0], full_w, rtol=1e-12, atol=0)
    np.testing.assert_allclose(params[1], full_b, rtol=1e-12, atol=0)


def test_import_maps_every_expectigrad_field():
  pytest.importorskip("expectigrad.pytorch")
  w = torch.nn.Parameter(torch.zeros(2, 3))
  opt = _expectigrad([w], 1e-2)
  for step in range(4):
    w.grad = torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, -1.0]]) * (step % 2)
    opt.step()
  torch_state = opt.state_dict()["state"][0]
  state = import_torch_state(opt.state_dict(), optax_extras.expectigrad(1e-2),
                             {"w": jnp.zeros((2, 3))})
  inner = state[0]
  assert isinstance(inner, optax_extras.ScaleByExpectigradState)
  assert inner.count.dtype == jnp.int32 and int(inner.count) == 4
  assert inner.counter["w"].dtype == jnp.int32
  np.testing.assert_array_equal(inner.counter["w"], [[2, 0, 2], [0, 0, 2]])
  np.testing.assert_array_equal(inner.counter["w"],
                                torch_state["counter"].numpy())
  np.testing.assert_array_equal(inner.sum_sq["w"], torch_state["sum"].numpy())
  np.testing.assert_array_equal(inner.momentum["w"],
                                torch_state["momentum"].numpy())


def test_import_rejects_a_different_sparse_counter():
  pytest.importorskip("expectigrad.pytorch")
  w = torch.nn.Parameter(torch.ones(3))
  opt = _expectigrad([w], 1e-2)
  w.grad = torch.ones(3)
  opt.step()
  with pytest.raises(ValueError, match="sparse_counter differs"):
    import_torch_state(opt.state_dict(),
                       optax_extras.expectigrad(sparse_counter=False),
                       [jnp.ones(3)])


def test_load_torch_state_continues_in_optax_optimizer_with_groups():
  def groups(model):
    return [{"params": model[0].parameters()},
            {"params": model[2].parameters(), "lr": 3e-2}]

  straight = _mlp(torch.float64)
  _train(straight, torch.optim.Adam(groups(straight), lr=1e-2), 20)
  half = _mlp(torch.float64)
  torch_opt = torch.optim.Adam(groups(half), lr=1e-2)
  _train(half, torch_opt, 10)
  with jax.enable_x64(True):
    opt = OptaxOptimizer(groups(half), optax.adam, lr=1e-2)
    opt.load_torch_state(torch_opt.state_dict())
    _train(half, opt, 10, first=10)
  _assert_allclose(half, straight, rtol=1e-12)


def test_closure_is_run_with_grad_and_its_loss_returned():
  model, twin = _mlp(), _mlp()
  opt = OptaxOptimizer(model.parameters(), optax.adam, lr=1e-2)
  x, y = _batch(0)

  def closure():
    opt.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    return loss

  with torch.no_grad():
    loss = opt.step(closure)
  assert loss.requires_grad and float(loss.detach()) > 0
  _train(twin, OptaxOptimizer(twin.parameters(), optax.adam, lr=1e-2), 1)
  _assert_equal(model, twin)


def test_params_without_grad_are_left_alone():
  a = torch.nn.Parameter(torch.ones(3))
  b = torch.nn.Parameter(torch.full((2,), 2.0))
  alone = torch.nn.Parameter(torch.ones(3))
  opt = OptaxOptimizer([a, b], optax.adam, lr=0.1)
  opt_alone = OptaxOptimizer([alone], optax.adam, lr=0.1)
  for step in range(3):
    a.grad = torch.tensor([1.0, -2.0, 3.0]) * (step + 1)
    alone.grad = a.grad.clone()
    opt.step()
    opt_alone.step()
  assert torch.equal(b, torch.full((2,), 2.0))
  assert torch.equal(a, alone)
  states = opt.opt_states[0]
  assert sorted(states) == [(0,), (1,)]
  assert int(states[(0,)].inner_state[0].count) == 3
  b_state = states[(1,)].inner_state[0]
  assert int(b_state.count) == 0 and not np.any(b_state.mu[0])
  b.grad = torch.ones(2)
  opt.step()
  assert not torch.equal(b, torch.full((2,), 2.0))
  assert int(opt.opt_states[0][(1,)].inner_state[0].count) == 1


def test_group_without_any_grad_does_not_step():
  model = _mlp()
  opt = OptaxOptimizer(model.parameters(), optax.adam, lr=0.1)
  opt.step()
  assert int(opt.opt_states[0].count) == 0
  _assert_equal(model, _mlp())


def test_step_keeps_the_parameter_objects_and_autograd():
  model = _mlp()
  opt = OptaxOptimizer(model.parameters(), optax.adam, lr=0.1)
  before = [(p, p.detach().clone()) for p in model.parameters()]
  _train(model, opt, 1)
  for p, (same, old) in zip(model.parameters(), before):
    assert p is same and p.requires_grad and not torch.equal(p, old)
  assert all(p is q for p, q in zip(opt.param_groups[0]["params"],
                                    model.parameters()))
  x, y = _batch(1)
  torch.nn.functional.mse_loss(model(x), y).backward()
  assert all(p.grad is not None and torch.any(p.grad != 0)
             for p in model.parameters())


def test_new_values_become_the_storage_without_a_copy():
  """The JAX output buffer becomes the parameter's storage (by DLPack), and
  from then on each step writes the new values over it in place (torch lets
  go of it during the step, so JAX can donate it); while a user holds a view
  of a parameter the step writes elsewhere, and the view keeps the old
  values."""
  model = _mlp()
  opt = OptaxOptimizer(model.parameters(), optax.adam, lr=0.1)
  pointers = []
  for step in range(4):
    _train(model, opt, 1, first=step)
    pointers.append([p.data_ptr() for p in model.parameters()])
    arrays = opt._records[0].current  # pylint: disable=protected-access
    assert [arrays[k].unsafe_buffer_pointer()
            for k in range(len(pointers[-1]))] == pointers[-1]
  assert pointers[1] == pointers[2] == pointers[3]
  held = next(model.parameters()).data
  old = held.clone()
  _train(model, opt, 1, first=4)
  assert torch.equal(held, old)
  assert not torch.equal(next(model.parameters()), old)


def test_step_failing_while_running_restores_the_parameters():
  """The parameters' storage is emptied for the step (so that it can be
  donated); a step that fails before running gives it back, values intact,
  and says so."""
  model = _mlp()
  opt = OptaxOptimizer(model.parameters(), optax.adam, lr=0.1)
  _train(model, opt, 2)
  before = [p.detach().clone() for p in model.parameters()]
  record = opt._records[0]  # pylint: disable=protected-access

  def failing(*args):
    del args
    raise ValueError("no device")

  record.compiled = {key: failing for key in record.compiled}
  x, y = _batch(2)
  opt.zero_grad()
  torch.nn.functional.mse_loss(model(x), y).backward()
  with pytest.raises(RuntimeError, match="failed while running.*no device"):
    opt.step()
  for p, old in zip(model.parameters(), before):
    assert p.shape == old.shape and torch.equal(p, old)


def _snapshot(opt):
  return ([p.detach().clone() for g in opt.param_groups for p in g["params"]],
          [np.asarray(x) for x in jax.tree.leaves(opt.opt_states)],
          [dict((k, v) for k, v in g.items() if k != "params")
           for g in opt.param_groups])


def _assert_unchanged(opt, snapshot):
  params, states, options = _snapshot(opt)
  assert all(torch.equal(a, b) for a, b in zip(params, snapshot[0]))
  assert all(np.array_equal(a, b) for a, b in zip(states, snapshot[1]))
  assert options == snapshot[2]


def test_sparse_gradient_raises_and_changes_nothing():
  dense = torch.nn.Linear(4, 2)
  embedding = torch.nn.Embedding(10, 4, sparse=True)
  opt = OptaxOptimizer(
      [{"params": dense.parameters()}, {"params": embedding.parameters()}],
      optax.adam, lr=0.1)
  dense(embedding(torch.tensor([1, 2]))).sum().backward()
  snapshot = _snapshot(opt)
  with pytest.raises(TypeError, match="sparse"):
    opt.step()
  _assert_unchanged(opt, snapshot)


def test_complex_params_need_allow_complex():
  z = torch.nn.Parameter(torch.ones(3, dtype=torch.complex64))
  with pytest.raises(TypeError, match="complex64"):
    OptaxOptimizer([z], optax_extras.expectigrad(0.1))
  opt = OptaxOptimizer([z], optax.adam, lr=0.1, allow_complex=True)
  z.grad = torch.full((3,), 1 + 1j, dtype=torch.complex64)
  opt.step()
  assert z.dtype == torch.complex64 and not torch.equal(z, torch.ones(3) + 0j)


def test_float64_params_need_x64():
  w = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
  with pytest.raises(TypeError, match="64-bit JAX"):
    OptaxOptimizer([w], optax.adam, lr=0.1)


def test_state_not_mirroring_params_raises_when_a_grad_is_missing():
  a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
  opt = OptaxOptimizer([a, b], optax.flatten(optax.adam(0.1)))
  a.grad = torch.ones(3)
  snapshot = _snapshot(opt)
  with pytest.raises(ValueError, match="parameters \\[0\\]"):
    opt.step()
  _assert_unchanged(opt, snapshot)
  b.grad = torch.ones(2)
  opt.step()
  assert not torch.equal(b, torch.ones(2))


def test_bad_options_raise_type_errors():
  w = torch.nn.Parameter(torch.ones(3))
  with pytest.raises(TypeError, match="factory"):
    OptaxOptimizer([w], optax.adam(0.1), lr=0.1)
  with pytest.raises(TypeError, match=r"adam does not take .*\['momentum'\]"):
    OptaxOptimizer([w], optax.adam, lr=0.1, momentum=0.9)
  with pytest.raises(TypeError, match="betas or b1/b2"):
    OptaxOptimizer([w], optax.adam, lr=0.1, betas=(0.9, 0.99), b1=0.8)
  with pytest.raises(TypeError, match="missing a required argument"):
    OptaxOptimizer([w], optax.adam)
  with pytest.raises(TypeError, match="learning rate is 'lr'"):
    OptaxOptimizer([w], optax.adam, learning_rate=0.1)
  with pytest.raises(ValueError, match="no learning_rate"):
    OptaxOptimizer([{"params": [w], "lr": 0.1}], optax.adam(0.1))
  with pytest.raises(TypeError, match="GradientTransformation or a factory"):
    OptaxOptimizer([w], "adam")


def test_lr_on_a_transformation_without_rate_raises_and_changes_nothing():
  w = torch.nn.Parameter(torch.ones(3))
  opt = OptaxOptimizer([w], optax.adam(0.1))
  opt.param_groups[0]["lr"] = 0.5
  w.grad = torch.ones(3)
  params, states, _ = _snapshot(opt)
  with pytest.raises(ValueError, match="no learning_rate"):
    opt.step()
  assert torch.equal(w, params[0])
  assert all(np.array_equal(a, b) for a, b in
             zip(jax.tree.leaves(opt.opt_states), states))


def test_load_state_dict_rejects_other_optimizers_and_changes_nothing():
  model = _mlp()
  opt = OptaxOptimizer(model.parameters(), optax.adam, lr=1e-2)
  _train(model, opt, 2)
  torch_opt = torch.optim.Adam(model.parameters(), lr=1e-2)
  _train(model, torch_opt, 1)
  snapshot = _snapshot(opt)
  with pytest.raises(ValueError, match="load_torch_state"):
    opt.load_state_dict(torch_opt.state_dict())
  other = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(),
                              torch.nn.Linear(8, 3))
  other_opt = OptaxOptimizer(other.parameters(), optax.adam, lr=1e-2)
  with pytest.raises(ValueError, match="shape|\\[16, 6\\]"):
    opt.load_state_dict(other_opt.state_dict())
  sgd_opt = OptaxOptimizer(model.parameters(), optax.sgd(0.1, momentum=0.9))
  with pytest.raises(ValueError, match="has leaves"):
    opt.load_state_dict(sgd_opt.state_dict())
  _assert_unchanged(opt, snapshot)


def test_import_torch_state_rejects_mismatches():
  w = torch.nn.Parameter(torch.ones(2, 3))
  params = [jnp.ones((2, 3))]
  rmsprop = torch.optim.RMSprop([w])
  w.grad = torch.ones(2, 3)
  rmsprop.step()
  with pytest.raises(ValueError, match="square_avg"):
    import_torch_state(rmsprop.state_dict(), optax.rmsprop(0.1), params)
  adam = torch.optim.Adam([w])
  adam.step()
  with pytest.raises(ValueError, match="0 ScaleByAdamState"):
    import_torch_state(adam.state_dict(), optax_extras.diffgrad(), params)
  with pytest.raises(ValueError, match="shape \\[2, 3\\]"):
    import_torch_state(adam.state_dict(), optax.adam(0.1), [jnp.ones((3, 2))])
  with pytest.raises(ValueError, match="1 parameters, params has 2"):
    import_torch_state(adam.state_dict(), optax.adam(0.1), params * 2)
  adagrad = torch.optim.Adagrad([w])  # state {'step', 'sum'}, as Expectigrad
  adagrad.step()
  with pytest.raises(ValueError, match="Unrecognised"):
    import_torch_state(adagrad.state_dict(),
                       optax_extras.expectigrad(sparse_counter=False), params)
  sgd = torch.optim.SGD([w], lr=0.1, momentum=0.9, dampening=0.5)
  sgd.step()
  with pytest.raises(ValueError, match="dampening"):
    import_torch_state(sgd.state_dict(), optax.sgd(0.1, momentum=0.9), params)


def test_to_jax_and_back_share_memory_and_keep_dtypes():
  tree = {"bf16": torch.ones(3, dtype=torch.bfloat16),
          "f16": torch.ones(2, 2, dtype=torch.float16),
          "f32": torch.arange(4.0), "i32": torch.arange(3, dtype=torch.int32),
          "other": 1.5}
  arrays = to_jax(tree)
  assert arrays["other"] == 1.5
  expected = {"bf16": jnp.bfloat16, "f16": jnp.float16, "f32": jnp.float32,
              "i32": jnp.int32}
  for key, dtype in expected.items():
    assert arrays[key].dtype == dtype
    assert arrays[key].unsafe_buffer_pointer() == tree[key].data_ptr()
  back = to_torch(arrays)
  for key in ("bf16", "f16", "f32", "i32"):
    assert back[key].dtype == tree[key].dtype
    assert back[key].data_ptr() == tree[key].data_ptr()
  with jax.enable_x64(True):
    f64 = torch.linspace(0, 1, 5, dtype=torch.float64)
    array = to_jax(f64)
    assert array.dtype == jnp.float64
    assert torch.equal(to_torch(array), f64)


@pytest.mark.parametrize("direct", [True, False])
def test_to_jax_direct_import_equals_jax_dlpack(direct, monkeypatch):
  """The shim imports CPU tensors by jax's own DLPack entry (no per-call
  device lookup); on this jax that path is taken, and it gives what
  `jax.dlpack.from_dlpack` gives (values, dtype, device, shared memory, a
  copy of a misaligned view), as does the fallback to it."""
  from optax_extras.torch import _convert  # pylint: disable=import-outside-toplevel
  if not direct:
    monkeypatch.setattr(_convert, "_jaxlib", None)
  tensors = [torch.arange(12.0).reshape(3, 4), torch.tensor(2.5),
             torch.zeros(0, 3), torch.arange(10.0)[1:],
             torch.ones(5, dtype=torch.bfloat16),
             torch.tensor([True, False]), torch.arange(4, dtype=torch.uint8)]
  assert (_convert._direct_import(tensors[0]) is not None) == direct
  for tensor in tensors:
    ours, theirs = to_jax(tensor), jax.dlpack.from_dlpack(tensor)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    assert ours.devices() == theirs.devices()
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
    if tensor.numel():
      shares = ours.unsafe_buffer_pointer() == tensor.data_ptr()
      assert shares == (theirs.unsafe_buffer_pointer() == tensor.data_ptr())
  assert to_jax(tensors[0]).unsafe_buffer_pointer() == tensors[0].data_ptr()
  with jax.enable_x64(True):
    f64 = torch.linspace(0, 1, 5, dtype=torch.float64)
    np.testing.assert_array_equal(np.asarray(to_jax(f64)), f64.numpy())
    assert to_jax(f64).unsafe_buffer_pointer() == f64.data_ptr()


@pytest.mark.parametrize("direct", [True, False])
def test_to_torch_direct_export_equals_torch_dlpack(direct, monkeypatch):
  """JAX arrays go to torch by jax's own DLPack export where it is this
  jax's, and the result equals `torch.from_dlpack`'s (shared memory)."""
  from optax_extras.torch import _convert  # pylint: disable=import-outside-toplevel
  if not direct:
    monkeypatch.setattr(_convert, "_jaxlib", None)
  arrays = [jnp.arange(6.0).reshape(2, 3), jnp.array(3.0), jnp.zeros((0, 2)),
            jnp.ones(3, jnp.bfloat16), jnp.array([True, False])]
  for array in arrays:
    ours = to_torch(array)
    theirs = torch.from_dlpack(array)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    assert torch.equal(ours, theirs)
    if array.size:
      assert ours.data_ptr() == array.unsafe_buffer_pointer()


def test_conversions_fall_back_when_jax_entries_differ(monkeypatch):
  """A jax whose DLPack entries take other arguments: the first call falls
  back to the public functions, and so do the later ones."""
  from optax_extras.torch import _convert  # pylint: disable=import-outside-toplevel

  class OtherEntries:
    def dlpack_managed_tensor_to_buffer(self, *args):
      raise TypeError("takes 4 positional arguments")

    def buffer_to_dlpack_managed_tensor(self, *args, **kwargs):
      raise TypeError("unexpected keyword argument 'stream'")

  monkeypatch.setattr(_convert, "_jaxlib", OtherEntries())
  tensor = torch.arange(6.0)
  np.testing.assert_array_equal(np.asarray(to_jax(tensor)), tensor.numpy())
  assert _convert._jaxlib is None
  monkeypatch.setattr(_convert, "_jaxlib", OtherEntries())
  array = jnp.arange(4.0)
  assert torch.equal(to_torch(array), torch.arange(4.0))
  assert _convert._jaxlib is None


def test_adam_hd_per_tensor_through_the_shim_equals_upstream_adamhd():
  """A multi-tensor model: OptaxOptimizer(adam_hd, hypergradient="per_tensor")
  over model.parameters() gives upstream AdamHD's weights and learned rate."""
  import torch_reference  # pylint: disable=import-outside-toplevel
  steps, checkpoints = 60, (20, 60)
  hparams = dict(lr=3e-3, hypergrad_lr=1e-3, weight_decay=0.05)
  reference = torch_reference.run_torch_mlp(
      lambda params: torch_reference.AdamHD(params, **hparams), "float32",
      steps, checkpoints)
  ours = torch_reference.run_torch_mlp(
      lambda params: OptaxOptimizer(params, optax_extras.adam_hd,
                                    hypergradient="per_tensor", **hparams),
      "float32", steps, checkpoints)
  for key in reference:
    scale = np.max(np.abs(reference[key]))
    assert np.max(np.abs(ours[key] - reference[key])) <= 1e-5 * scale, key
  assert abs(reference["lr"][-1] / 3e-3 - 1) > 1e-3  # the rate was learned
