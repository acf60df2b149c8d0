"""Optimizer step cost per byte moved, against jitted optax.adam and the
upstream torch optimizers, measured side by side in one run.

Each JAX step is `update` + `apply_updates`, jitted, with params and state
donated. "Bytes moved" is the least traffic a step needs: read params, grads
and state, write params and state. The ratio columns divide by optax.adam's
(or torch.optim.Adam's) time measured in the same rounds, so they are
comparable across machines; absolute times are not.

Run: python benchmarks/bench_optimizers.py [--elements 4000000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_extras

from timing import round_robin_medians

SHAPES = ((1024, 1024), (1024,), (64, 64, 16), ())


def _tree_bytes(tree) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def jax_candidates():
  return {
      "optax.adam": optax.adam(1e-3),
      "diffgrad": optax_extras.diffgrad(1e-3),
      "expectigrad": optax_extras.expectigrad(1e-3),
      "sgd_hd": optax_extras.sgd_hd(1e-3, momentum=0.9, nesterov=True),
      "adam_hd": optax_extras.adam_hd(1e-3),
  }


def torch_candidates():
  try:
    import torch
    import torch_optimizer
    from expectigrad.pytorch import Expectigrad
  except ImportError:
    return {}
  candidates = {
      "torch.optim.Adam": lambda ps: torch.optim.Adam(ps, 1e-3),
      "torch_optimizer.DiffGrad": lambda ps: torch_optimizer.DiffGrad(ps, 1e-3),
      "expectigrad.Expectigrad": lambda ps: Expectigrad(ps, 1e-3),
  }
  sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
  try:
    import torch_reference
  except ImportError:
    return candidates
  candidates["hypergrad.SGDHD"] = lambda ps: torch_reference.SGDHD(
      ps, 1e-3, momentum=0.9, nesterov=True)
  candidates["hypergrad.AdamHD"] = lambda ps: torch_reference.AdamHD(ps, 1e-3)
  return candidates


def make_jax_step(tx, params, grads):
  def step(params, state):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  step = jax.jit(step, donate_argnums=(0, 1))
  params = jax.tree.map(jnp.copy, params)
  state = tx.init(params)
  moved = 2 * _tree_bytes(params) + _tree_bytes(grads) + 2 * _tree_bytes(state)
  carry = [params, state]

  def run(steps):
    for _ in range(steps):
      carry[0], carry[1] = step(carry[0], carry[1])
    jax.block_until_ready(carry)

  return run, moved


def make_torch_step(factory, arrays):
  import torch

  params = [torch.tensor(a).requires_grad_() for a in arrays]
  for p in params:
    p.grad = torch.randn_like(p) * 1e-2
  optimizer = factory(params)

  def run(steps):
    for _ in range(steps):
      optimizer.step()

  return run


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--out", default=str(
      Path(__file__).parent / "results" / "optimizers.md"))
  args = parser.parse_args(argv)

  rng = np.random.default_rng(0)
  arrays = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
  params = [jnp.asarray(a) for a in arrays]
  grads = [jnp.asarray(rng.standard_normal(s).astype(np.float32) * 1e-2)
           for s in SHAPES]

  jax_runs, moved = {}, {}
  for name, tx in jax_candidates().items():
    jax_runs[name], moved[name] = make_jax_step(tx, params, grads)
  jax_times = round_robin_medians(jax_runs, args.steps, args.rounds)

  torch_runs = {}
  try:
    import torch
    torch.set_num_threads(os.cpu_count() or 1)
  except ImportError:
    pass
  for name, factory in torch_candidates().items():
    torch_runs[name] = make_torch_step(factory, arrays)
  torch_times = round_robin_medians(torch_runs, args.steps, args.rounds)

  elements = sum(a.size for a in arrays)
  lines = [
      "# Optimizer step cost per byte moved",
      "",
      f"Machine: {platform.platform()}, {os.cpu_count()} CPU cores, "
      f"JAX {jax.__version__} ({jax.default_backend()}), "
      f"{elements:,} float32 parameters in {len(SHAPES)} leaves, "
      f"median of {args.rounds} rounds x {args.steps} steps, round-robin.",
      "Command: `python benchmarks/bench_optimizers.py`",
      "",
      "| JAX transformation | state bytes / params bytes | bytes moved / step "
      "| ms / step | GB/s | time / optax.adam |",
      "| --- | --- | --- | --- | --- | --- |",
  ]
  adam_time = jax_times["optax.adam"]
  params_bytes = _tree_bytes(params)
  for name, seconds in jax_times.items():
    state_bytes = (moved[name] - 2 * params_bytes - _tree_bytes(grads)) / 2
    lines.append(
        f"| {name} | {state_bytes / params_bytes:.2f} | {moved[name]:,} | "
        f"{seconds * 1e3:.2f} | {moved[name] / seconds / 1e9:.1f} | "
        f"{seconds / adam_time:.2f} |")
  if torch_times:
    pairs = {
        "torch.optim.Adam": "optax.adam",
        "torch_optimizer.DiffGrad": "diffgrad",
        "expectigrad.Expectigrad": "expectigrad",
        "hypergrad.SGDHD": "sgd_hd",
        "hypergrad.AdamHD": "adam_hd",
    }
    lines += [
        "",
        "| upstream torch optimizer | ms / step | time / torch.optim.Adam "
        "| optax_extras time / upstream time |",
        "| --- | --- | --- | --- |",
    ]
    torch_adam = torch_times["torch.optim.Adam"]
    for name, seconds in torch_times.items():
      ours = jax_times[pairs[name]]
      lines.append(f"| {name} | {seconds * 1e3:.2f} | "
                   f"{seconds / torch_adam:.2f} | {ours / seconds:.2f} |")
  report = "\n".join(lines) + "\n"
  print(report)
  Path(args.out).parent.mkdir(parents=True, exist_ok=True)
  Path(args.out).write_text(report)


if __name__ == "__main__":
  main()
