"""Reference trajectories for the parity tests: live torch runs or golden arrays.

`SGDHD` and `AdamHD` re-state `hypergrad/sgd_hd.py` and `hypergrad/adam_hd.py`
of https://github.com/gbaydin/hypergradient-descent (seeds/002) with torch 2.x
call signatures (``add_(other, alpha=...)``), loops and all. DiffGrad and
Expectigrad come from their packages (`torch_optimizer`, `expectigrad`).

Every parity case runs the same problem on both sides: a fixed smooth
nonconvex function of the parameters whose gradient is evaluated with numpy
for torch and with jax.numpy for JAX. Without torch (or with
``OPTAX_EXTRAS_USE_GOLDEN=1``) the torch side is read from
``golden/torch_reference.npz``, written by ``golden/make_golden.py``.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import math
import os
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax_extras

try:
  import torch
except ImportError:
  torch = None

GOLDEN_PATH = pathlib.Path(__file__).parent / "golden" / "torch_reference.npz"
STEPS = 200
CHECKPOINTS = (1, 2, 10, 50, 200)
DTYPES = ("float64", "float32")
TOLERANCE = {"float64": 1e-12, "float32": 1e-5}

# The problem: per element f(x) = (x - c)^2 / 2 - (B / W) cos(W x), nonconvex
# where B W cos(W x) < -1, plus a coupling C * s * sum(x) with the scalar leaf
# s. Parameters start at |x| in [1, 1.5], targets sit at |c| in [3.5, 4] with
# the same sign. The Adam-like optimizers move each parameter by about
# learning_rate per step, so over 200 steps the gradient keeps its sign (no
# sign-sensitive, chaotic oscillation around a minimum); SGD-HD walks into a
# minimum, which gradient descent approaches without amplifying rounding. No
# parameter of any case comes within 0.9 of zero at any step, so the relative
# difference per element is meaningful.
_B = 0.9
_W = 3.0
_C = 0.1
# Normal numbers whose squares underflow to exactly 0 (no subnormal between).
_UNDERFLOWING_GRADIENT = {"float64": 1e-170, "float32": 1e-30}


def _leaf_values(shape, offset, phase):
  """Deterministic values of magnitude in [offset, offset + 0.5], mixed signs."""
  size = math.prod(shape)
  index = np.arange(size, dtype=np.float64)
  sign = np.where(index % 2 == 0, 1.0, -1.0)
  return (sign * (offset + 0.25 * (1.0 + np.sin(1.3 * index + phase)))
          ).reshape(shape)


_SHAPES = {
    "tree": ((3, 4), (5,), (2, 3, 2), ()),
    "single": ((4, 5),),
}


def problem_shapes(problem: str) -> tuple[tuple[int, ...], ...]:
  """Leaf shapes of `problem`: "tree" or "single", maybe with a suffix
  "_masked" (exact zeros in the gradient) or "_underflow" (gradients whose
  square underflows to 0 in place of those zeros)."""
  return _SHAPES[problem.split("_")[0]]


def initial_params(problem: str, dtype: str) -> list[np.ndarray]:
  return [_leaf_values(shape, 1.0, k).astype(dtype)
          for k, shape in enumerate(problem_shapes(problem))]


def _targets(problem: str, dtype: str) -> list[np.ndarray]:
  return [_leaf_values(shape, 3.5, 2.0 * k + 0.5).astype(dtype)
          for k, shape in enumerate(problem_shapes(problem))]


def _mask(xp, shape, step):
  """Zeros some elements on some steps, some for the first 20 steps, and one
  element (the last of a leaf with several) on every step."""
  size = math.prod(shape)
  index = xp.arange(size).reshape(shape)
  keep = ((index * 7 + step * 3) % 5 != 0) & ((index % 4 != 1) | (step > 20))
  if size > 1:
    keep = keep & (index != size - 1)
  return keep


def gradients(xp, problem: str, params, step):
  """Gradient of the problem at `params` for step `step` (counted from 1).

  `xp` is numpy (torch side) or jax.numpy (JAX side); `params` a list of
  arrays of one float dtype, in the order of `problem_shapes(problem)`.
  """
  dtype = params[0].dtype
  targets = [xp.asarray(c, dtype) for c in _targets(problem, str(dtype))]
  grads = [(x - c) + _B * xp.sin(_W * x) for x, c in zip(params, targets)]
  if len(params) > 1:
    scalar = params[-1]
    total = sum(xp.sum(x) for x in params[:-1])
    grads = [g + _C * scalar for g in grads[:-1]] + [grads[-1] + _C * total]
  if problem.endswith("_masked"):
    grads = [xp.where(_mask(xp, g.shape, step), g, 0) for g in grads]
  if problem.endswith("_underflow"):
    tiny = xp.asarray(_UNDERFLOWING_GRADIENT[str(dtype)], dtype)
    grads = [xp.where(_mask(xp, g.shape, step), g, tiny) for g in grads]
  return grads


@dataclasses.dataclass(frozen=True)
class Case:
  """One parity run: `algo` with the optax_extras keyword arguments `hparams`
  on `problem` for `STEPS` steps."""

  name: str
  algo: str
  problem: str
  hparams: dict[str, Any]
  reference: str = "upstream"  # or "global_dot": our torch AdamHD variant.


CASES = {case.name: case for case in (
    Case("diffgrad_defaults", "diffgrad", "tree", dict(learning_rate=2e-3)),
    Case("diffgrad_weight_decay", "diffgrad", "tree",
         dict(learning_rate=2e-3, b1=0.8, b2=0.99, eps=1e-6,
              weight_decay=0.1)),
    Case("diffgrad_b1_zero", "diffgrad", "tree",
         dict(learning_rate=2e-3, b1=0.0, b2=0.9)),
    Case("diffgrad_eps_zero", "diffgrad", "tree",
         dict(learning_rate=2e-3, eps=0.0)),
    Case("diffgrad_masked", "diffgrad", "tree_masked",
         dict(learning_rate=2e-3, weight_decay=0.05)),
    Case("expectigrad_defaults", "expectigrad", "tree_masked",
         dict(learning_rate=2e-3)),
    Case("expectigrad_beta_zero", "expectigrad", "tree_masked",
         dict(learning_rate=2e-3, beta=0.0)),
    Case("expectigrad_dense_counter", "expectigrad", "tree_masked",
         dict(learning_rate=2e-3, beta=0.8, sparse_counter=False)),
    Case("expectigrad_underflowing_squares", "expectigrad", "tree_underflow",
         dict(learning_rate=2e-3)),
    Case("expectigrad_large_eps", "expectigrad", "tree",
         dict(learning_rate=2e-3, beta=0.5, eps=1e-2)),
    Case("sgd_hd_plain", "sgd_hd", "tree",
         dict(learning_rate=0.02, hypergrad_lr=1e-4)),
    Case("sgd_hd_masked", "sgd_hd", "tree_masked",
         dict(learning_rate=0.02, hypergrad_lr=1e-4)),
    Case("sgd_hd_momentum", "sgd_hd", "tree",
         dict(learning_rate=0.01, hypergrad_lr=1e-5, momentum=0.5)),
    Case("sgd_hd_dampening", "sgd_hd", "tree",
         dict(learning_rate=0.01, hypergrad_lr=1e-5, momentum=0.5,
              dampening=0.3)),
    Case("sgd_hd_nesterov", "sgd_hd", "tree",
         dict(learning_rate=0.01, hypergrad_lr=1e-5, momentum=0.5,
              nesterov=True)),
    Case("sgd_hd_weight_decay", "sgd_hd", "tree",
         dict(learning_rate=0.02, hypergrad_lr=1e-4, weight_decay=0.1,
              momentum=0.3)),
    Case("adam_hd_defaults", "adam_hd", "single",
         dict(learning_rate=2e-3, hypergrad_lr=1e-6)),
    Case("adam_hd_weight_decay", "adam_hd", "single",
         dict(learning_rate=2e-3, hypergrad_lr=1e-6, b1=0.8, b2=0.99,
              eps=1e-6, weight_decay=0.1)),
    Case("adam_hd_b1_zero", "adam_hd", "single",
         dict(learning_rate=2e-3, hypergrad_lr=1e-6, b1=0.0)),
    Case("adam_hd_eps_zero", "adam_hd", "single",
         dict(learning_rate=2e-3, hypergrad_lr=1e-6, eps=0.0)),
    Case("adam_hd_global_dot_tree", "adam_hd", "tree",
         dict(learning_rate=2e-3, hypergrad_lr=1e-6, weight_decay=0.05),
         reference="global_dot"),
)}


def cases_for(algo: str) -> list[str]:
  return [name for name, case in CASES.items() if case.algo == algo]


# ---------------------------------------------------------------- torch side

if torch is not None:

  class SGDHD(torch.optim.Optimizer):
    """hypergrad.SGDHD (seeds/002), torch 2.x call signatures."""

    def __init__(self, params, lr, momentum=0, dampening=0,
                 weight_decay=0, nesterov=False, hypergrad_lr=1e-6):
      defaults = dict(lr=lr, momentum=momentum, dampening=dampening,
                      weight_decay=weight_decay, nesterov=nesterov,
                      hypergrad_lr=hypergrad_lr)
      if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError(
            "Nesterov momentum requires a momentum and zero dampening")
      super().__init__(params, defaults)
      if len(self.param_groups) != 1:
        raise ValueError(
            "SGDHD doesn't support per-parameter options (parameter groups)")
      self._params = self.param_groups[0]["params"]
      self._params_numel = sum(p.numel() for p in self._params)

    def _gather_flat_grad_with_weight_decay(self, weight_decay=0):
      views = []
      for p in self._params:
        if p.grad is None:
          view = torch.zeros_like(p.data)
        elif p.grad.data.is_sparse:
          view = p.grad.data.to_dense().view(-1)
        else:
          view = p.grad.data.view(-1)
        if weight_decay != 0:
          view.add_(p.data.view(-1), alpha=weight_decay)
        views.append(view)
      return torch.cat(views, 0)

    def _add_grad(self, step_size, update):
      offset = 0
      for p in self._params:
        numel = p.numel()
        p.data.add_(update[offset:offset + numel].view_as(p.data),
                    alpha=step_size)
        offset += numel
      assert offset == self._params_numel

    def step(self, closure=None):
      assert len(self.param_groups) == 1
      loss = None
      if closure is not None:
        loss = closure()
      group = self.param_groups[0]
      weight_decay = group["weight_decay"]
      momentum = group["momentum"]
      dampening = group["dampening"]
      nesterov = group["nesterov"]
      grad = self._gather_flat_grad_with_weight_decay(weight_decay)
      state = self.state[self._params[0]]
      if len(state) == 0:
        state["grad_prev"] = torch.zeros_like(grad)
      grad_prev = state["grad_prev"]
      h = torch.dot(grad, grad_prev)
      group["lr"] += group["hypergrad_lr"] * h
      if momentum != 0:
        if "momentum_buffer" not in state:
          buf = state["momentum_buffer"] = torch.zeros_like(grad)
          buf.mul_(momentum).add_(grad)
        else:
          buf = state["momentum_buffer"]
          buf.mul_(momentum).add_(grad, alpha=1 - dampening)
        if nesterov:
          grad.add_(buf, alpha=momentum)
        else:
          grad = buf
      state["grad_prev"] = grad
      self._add_grad(-group["lr"], grad)
      return loss

  class AdamHD(torch.optim.Optimizer):
    """hypergrad.AdamHD (seeds/002), torch 2.x call signatures.

    The rate is updated inside the per-tensor loop (the upstream code).
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                 weight_decay=0, hypergrad_lr=1e-8):
      defaults = dict(lr=lr, betas=betas, eps=eps,
                      weight_decay=weight_decay, hypergrad_lr=hypergrad_lr)
      super().__init__(params, defaults)

    def step(self, closure=None):
      loss = None
      if closure is not None:
        loss = closure()
      for group in self.param_groups:
        for p in group["params"]:
          if p.grad is None:
            continue
          grad = p.grad.data
          if grad.is_sparse:
            raise RuntimeError("Adam does not support sparse gradients")
          state = self.state[p]
          if len(state) == 0:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p.data)
            state["exp_avg_sq"] = torch.zeros_like(p.data)
          exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
          beta1, beta2 = group["betas"]
          state["step"] += 1
          if group["weight_decay"] != 0:
            grad = grad.add(p.data, alpha=group["weight_decay"])
          if state["step"] > 1:
            prev_bias_correction1 = 1 - beta1 ** (state["step"] - 1)
            prev_bias_correction2 = 1 - beta2 ** (state["step"] - 1)
            h = torch.dot(
                grad.view(-1),
                torch.div(exp_avg,
                          exp_avg_sq.sqrt().add_(group["eps"])).view(-1)
            ) * math.sqrt(prev_bias_correction2) / prev_bias_correction1
            group["lr"] += group["hypergrad_lr"] * h
          exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
          exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
          denom = exp_avg_sq.sqrt().add_(group["eps"])
          bias_correction1 = 1 - beta1 ** state["step"]
          bias_correction2 = 1 - beta2 ** state["step"]
          step_size = (group["lr"] * math.sqrt(bias_correction2)
                       / bias_correction1)
          p.data.addcdiv_(exp_avg, denom, value=-step_size)
      return loss

  class AdamHDGlobalDot(torch.optim.Optimizer):
    """NOT upstream: AdamHD with one dot product over all tensors (the paper),
    for multi-tensor checks of `adam_hd`. Otherwise as `AdamHD`."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                 weight_decay=0, hypergrad_lr=1e-8):
      defaults = dict(lr=lr, betas=betas, eps=eps,
                      weight_decay=weight_decay, hypergrad_lr=hypergrad_lr)
      super().__init__(params, defaults)
      self.t = 0

    def step(self, closure=None):
      group = self.param_groups[0]
      beta1, beta2 = group["betas"]
      eps = group["eps"]
      self.t += 1
      grads = []
      for p in group["params"]:
        state = self.state[p]
        if len(state) == 0:
          state["exp_avg"] = torch.zeros_like(p.data)
          state["exp_avg_sq"] = torch.zeros_like(p.data)
        grad = p.grad.data
        if group["weight_decay"] != 0:
          grad = grad.add(p.data, alpha=group["weight_decay"])
        grads.append(grad)
      if self.t > 1:
        h = sum(
            torch.dot(g.view(-1), torch.div(
                self.state[p]["exp_avg"],
                self.state[p]["exp_avg_sq"].sqrt().add_(eps)).view(-1))
            for p, g in zip(group["params"], grads))
        h = h * math.sqrt(1 - beta2 ** (self.t - 1)) / (1 - beta1 ** (self.t - 1))
        group["lr"] += group["hypergrad_lr"] * h
      step_size = (group["lr"] * math.sqrt(1 - beta2 ** self.t)
                   / (1 - beta1 ** self.t))
      for p, grad in zip(group["params"], grads):
        exp_avg = self.state[p]["exp_avg"]
        exp_avg_sq = self.state[p]["exp_avg_sq"]
        exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = exp_avg_sq.sqrt().add_(eps)
        p.data.addcdiv_(exp_avg, denom, value=-step_size)


def torch_optimizer_for(case: Case, params):
  """The torch optimizer of `case` (its hparams renamed to torch's)."""
  hp = dict(case.hparams)
  lr = hp.pop("learning_rate")
  if case.algo == "diffgrad":
    torch_optimizer = importlib.import_module("torch_optimizer")
    return torch_optimizer.DiffGrad(
        params, lr=lr, betas=(hp.get("b1", 0.9), hp.get("b2", 0.999)),
        eps=hp.get("eps", 1e-8), weight_decay=hp.get("weight_decay", 0.0))
  if case.algo == "expectigrad":
    expectigrad = importlib.import_module("expectigrad.pytorch")
    return expectigrad.Expectigrad(params, lr=lr, **hp)
  if case.algo == "sgd_hd":
    return SGDHD(params, lr=lr, **hp)
  if case.algo == "adam_hd":
    cls = AdamHDGlobalDot if case.reference == "global_dot" else AdamHD
    betas = (hp.pop("b1", 0.9), hp.pop("b2", 0.999))
    return cls(params, lr=lr, betas=betas, **hp)
  raise ValueError(f"unknown algo {case.algo!r}")


def run_torch(case: Case, dtype: str) -> dict[str, np.ndarray]:
  """Runs `case` in torch; returns params at `CHECKPOINTS` ("p0", "p1", ...,
  each of shape (len(CHECKPOINTS), *leaf_shape)) and the rate after every
  step ("lr", shape (STEPS,))."""
  torch_dtype = getattr(torch, dtype)
  params = [torch.tensor(x, dtype=torch_dtype)
            for x in initial_params(case.problem, dtype)]
  optimizer = torch_optimizer_for(case, params)
  saved = [[] for _ in params]
  rates = []
  for step in range(1, STEPS + 1):
    values = [p.detach().numpy().copy() for p in params]
    for p, g in zip(params, gradients(np, case.problem, values, step)):
      p.grad = torch.tensor(np.asarray(g, dtype), dtype=torch_dtype)
    optimizer.step()
    rates.append(float(optimizer.param_groups[0]["lr"]))
    if step in CHECKPOINTS:
      for k, p in enumerate(params):
        saved[k].append(p.detach().numpy().copy())
  result = {f"p{k}": np.stack(v) for k, v in enumerate(saved)}
  result["lr"] = np.asarray(rates, np.float64)
  return result


def _live_available(algo: str) -> bool:
  if torch is None or os.environ.get("OPTAX_EXTRAS_USE_GOLDEN") == "1":
    return False
  module = {"diffgrad": "torch_optimizer",
            "expectigrad": "expectigrad.pytorch"}.get(algo)
  if module is None:
    return True
  try:
    importlib.import_module(module)
  except ImportError:
    return False
  return True


@functools.cache
def _golden() -> dict[str, np.ndarray]:
  with np.load(GOLDEN_PATH) as data:
    return dict(data)


def golden_trajectory(name: str, dtype: str) -> dict[str, np.ndarray]:
  prefix = f"{name}/{dtype}/"
  return {key.removeprefix(prefix): value
          for key, value in _golden().items() if key.startswith(prefix)}


@functools.cache
def reference_trajectory(name: str, dtype: str) -> tuple[str, dict]:
  """("live", ...) from torch when it is importable, else ("golden", ...)."""
  case = CASES[name]
  if _live_available(case.algo):
    return "live", run_torch(case, dtype)
  return "golden", golden_trajectory(name, dtype)


def live_torch_available(algo: str) -> bool:
  return _live_available(algo)


# ------------------------------------------------------------------ JAX side

def run_jax(tx, case: Case, dtype: str) -> dict[str, np.ndarray]:
  """Runs `case` with the optax transformation `tx` (jitted `lax.scan`);
  returns the same record as `run_torch`. Call under the x64 setting that
  matches `dtype`."""
  params = [jnp.asarray(x) for x in initial_params(case.problem, dtype)]
  assert all(p.dtype == np.dtype(dtype) for p in params), "x64 mismatch"

  @jax.jit
  def run(params):
    def body(carry, step):
      params, state = carry
      grads = gradients(jnp, case.problem, params, step)
      updates, state = tx.update(grads, state, params)
      params = optax.apply_updates(params, updates)
      rate = optax.tree.get(state, "learning_rate", jnp.zeros([]))
      return (params, state), (params, rate)

    _, (trajectory, rates) = jax.lax.scan(
        body, (params, tx.init(params)), jnp.arange(1, STEPS + 1))
    return trajectory, rates

  trajectory, rates = run(params)
  index = np.asarray(CHECKPOINTS) - 1
  result = {f"p{k}": np.asarray(leaf)[index]
            for k, leaf in enumerate(trajectory)}
  result["lr"] = np.asarray(rates, np.float64)
  return result


@functools.cache
def parity_runs(name: str, dtype: str) -> tuple[str, dict, dict]:
  """(source, torch record, JAX record) of case `name`; the JAX side runs
  `optax_extras.<algo>(**hparams)` with x64 on for float64, off for float32."""
  case = CASES[name]
  source, reference = reference_trajectory(name, dtype)
  with jax.enable_x64(dtype == "float64"):
    actual = run_jax(getattr(optax_extras, case.algo)(**case.hparams), case,
                     dtype)
  return source, reference, actual


def assert_params_match(name: str, dtype: str) -> None:
  """Every parameter of case `name` within TOLERANCE of the torch reference."""
  source, reference, actual = parity_runs(name, dtype)
  for key in reference.keys() - {"lr"}:
    diff = max_relative_difference(actual[key], reference[key])
    assert diff <= TOLERANCE[dtype], f"{key} ({source}): {diff:.2e}"


def assert_rates_match(name: str, dtype: str) -> None:
  """The learned rate of case `name`, every step, within TOLERANCE."""
  source, reference, actual = parity_runs(name, dtype)
  diff = max_relative_difference(actual["lr"], reference["lr"])
  assert diff <= TOLERANCE[dtype], f"lr ({source}): {diff:.2e}"


def max_relative_difference(actual, reference) -> float:
  """max |a - b| / max(|b|, tiny) over all elements."""
  actual = np.asarray(actual, np.float64)
  reference = np.asarray(reference, np.float64)
  tiny = np.finfo(np.float64).tiny
  return float(np.max(np.abs(actual - reference)
                      / np.maximum(np.abs(reference), tiny)))


# ------------------------------------------------ a multi-tensor model (MLP)

# A 3-layer tanh MLP with biases on fixed regression batches, for optimizers
# whose result depends on the number and order of the tensors (AdamHD).
MLP_SIZES = (6, 16, 16, 3)
MLP_BATCH = 32


def mlp_initial_params(dtype: str) -> list[np.ndarray]:
  """torch.nn.Linear's initialisation (uniform in +-1/sqrt(fan_in)) from a
  fixed numpy generator, as [w1, b1, w2, b2, w3, b3] (the order of
  ``model.parameters()``), each weight of shape (out, in)."""
  rng = np.random.default_rng(0)
  params = []
  for fan_in, fan_out in zip(MLP_SIZES[:-1], MLP_SIZES[1:]):
    bound = 1.0 / math.sqrt(fan_in)
    params.append(rng.uniform(-bound, bound, (fan_out, fan_in)))
    params.append(rng.uniform(-bound, bound, (fan_out,)))
  return [p.astype(dtype) for p in params]


def mlp_batches(dtype: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
  """Inputs (steps, MLP_BATCH, 6) and targets (steps, MLP_BATCH, 3)."""
  rng = np.random.default_rng(1)
  inputs = rng.normal(size=(steps, MLP_BATCH, MLP_SIZES[0]))
  mixing = rng.normal(size=(MLP_SIZES[0], MLP_SIZES[-1]))
  targets = np.sin(inputs @ mixing)
  return inputs.astype(dtype), targets.astype(dtype)


def mlp_loss_jax(params, inputs, targets):
  """Mean squared error of the MLP; `params` as `mlp_initial_params`."""
  hidden = inputs
  for k in range(0, len(params) - 2, 2):
    hidden = jnp.tanh(hidden @ params[k].T + params[k + 1])
  outputs = hidden @ params[-2].T + params[-1]
  return jnp.mean((outputs - targets) ** 2)


def _record(params_by_step, rates, checkpoints):
  result = {f"p{k}": np.stack([params_by_step[s - 1][k] for s in checkpoints])
            for k in range(len(params_by_step[0]))}
  result["lr"] = np.asarray(rates, np.float64)
  return result


def run_torch_mlp(make_optimizer, dtype: str, steps: int,
                  checkpoints: tuple[int, ...]) -> dict[str, np.ndarray]:
  """Trains the MLP as an nn.Sequential with `make_optimizer(parameters)`;
  returns the params at `checkpoints` ("p0", ... in the order of
  ``model.parameters()``) and ``param_groups[0]["lr"]`` after every step."""
  torch_dtype = getattr(torch, dtype)
  layers = []
  for fan_in, fan_out in zip(MLP_SIZES[:-1], MLP_SIZES[1:]):
    layers += [torch.nn.Linear(fan_in, fan_out, dtype=torch_dtype),
               torch.nn.Tanh()]
  model = torch.nn.Sequential(*layers[:-1])
  with torch.no_grad():
    for p, value in zip(model.parameters(), mlp_initial_params(dtype)):
      p.copy_(torch.from_numpy(value))
  optimizer = make_optimizer(model.parameters())
  inputs, targets = mlp_batches(dtype, steps)
  params_by_step, rates = [], []
  for step in range(steps):
    optimizer.zero_grad()
    loss = torch.nn.functional.mse_loss(model(torch.from_numpy(inputs[step])),
                                        torch.from_numpy(targets[step]))
    loss.backward()
    optimizer.step()
    params_by_step.append([p.detach().numpy().copy()
                           for p in model.parameters()])
    rates.append(float(optimizer.param_groups[0]["lr"]))
  return _record(params_by_step, rates, checkpoints)


def run_jax_mlp(tx, dtype: str, steps: int,
                checkpoints: tuple[int, ...]) -> dict[str, np.ndarray]:
  """`run_torch_mlp` with the optax transformation `tx` on the params list
  (jitted `lax.scan`); call under the x64 setting that matches `dtype`."""
  params = [jnp.asarray(p) for p in mlp_initial_params(dtype)]
  assert all(p.dtype == np.dtype(dtype) for p in params), "x64 mismatch"
  inputs, targets = mlp_batches(dtype, steps)

  @jax.jit
  def run(params):
    def body(carry, batch):
      params, state = carry
      grads = jax.grad(mlp_loss_jax)(params, *batch)
      updates, state = tx.update(grads, state, params)
      params = optax.apply_updates(params, updates)
      return (params, state), (params, optax.tree.get(state, "learning_rate"))

    _, (trajectory, rates) = jax.lax.scan(
        body, (params, tx.init(params)), (inputs, targets))
    return trajectory, rates

  trajectory, rates = run(params)
  params_by_step = [[np.asarray(leaf[s]) for leaf in trajectory]
                    for s in range(steps)]
  return _record(params_by_step, rates, checkpoints)
