"""Step time of OptaxOptimizer(optax.adam) against torch.optim.Adam, on CPU.

Two models, gradients computed once and kept, so only `optimizer.step()` is
timed; the optimizers take turns within each repeat (round robin), and the
table reports the median over repeats of the mean time per step:

* a ~10M-parameter stack of nn.Linear layers (10 tensors): torch.optim.Adam
  with its defaults (on CPU: the single-tensor loop), foreach=True and
  fused=True; OptaxOptimizer(optax.adam); and the same jitted, donated
  optax.adam update on JAX arrays with no torch at all (what XLA's Adam
  costs without the interop);
* a 64-128-10 MLP (4 tensors): the per-step overhead against Adam().

  python benchmarks/bench_torch_interop.py [--quick] [--out FILE]

On a shared machine, compare on one core (no thread oversubscription):
``OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/bench_torch_interop.py``
(XLA sizes its thread pool to the usable cores).

Prints the machine, the command and the table; writes FILE only when --out
is given (the committed results are benchmarks/results/torch_interop.md).
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import sys

import jax
import jax.numpy as jnp
import optax
import torch

from optax_extras.torch import OptaxOptimizer
from timing import round_robin_medians

LARGE = (1024, 2048, 2048, 1024, 1024, 512)
TINY = (64, 128, 10)


def _model(widths):
  torch.manual_seed(0)
  model = torch.nn.Sequential(
      *[torch.nn.Linear(a, b) for a, b in zip(widths, widths[1:])])
  for p in model.parameters():
    p.grad = torch.randn_like(p) * 1e-2
  return model


def _stepper(step):
  def run(steps):
    for _ in range(steps):
      step()
  return run


def _jax_only(widths):
  """The jitted, donated optax.adam step on JAX arrays alone."""
  model = _model(widths)
  tx = optax.adam(1e-3)
  params = [jnp.asarray(p.detach().numpy()) for p in model.parameters()]
  grads = [jnp.asarray(p.grad.numpy()) for p in model.parameters()]
  carry = {"params": params, "state": tx.init(params)}

  @functools.partial(jax.jit, donate_argnums=(1, 2))
  def update(grads, params, state):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  def step():
    carry["params"], carry["state"] = jax.block_until_ready(
        update(grads, carry["params"], carry["state"]))
  return step


def _runners(widths, torch_variants, jax_only):
  runners = {
      f"torch.optim.Adam({name})": _stepper(torch.optim.Adam(
          _model(widths).parameters(), lr=1e-3, **kwargs).step)
      for name, kwargs in torch_variants}
  runners["OptaxOptimizer(optax.adam)"] = _stepper(OptaxOptimizer(
      _model(widths).parameters(), optax.adam, lr=1e-3).step)
  if jax_only:
    runners["jitted optax.adam, JAX arrays only"] = _stepper(
        _jax_only(widths))
  return runners


def _table(title, widths, medians, baselines):
  size = sum(a * b + b for a, b in zip(widths, widths[1:]))
  lines = [f"### {title}: widths {widths}, {size / 1e6:.3g}M float32 "
           f"parameters in {2 * (len(widths) - 1)} tensors", "",
           "| optimizer step | ms | " + " | ".join(
               f"ratio to {b}" for b in baselines) + " |",
           "|---|---:|" + "---:|" * len(baselines)]
  for name, seconds in medians.items():
    ratios = " | ".join(f"{seconds / medians[b]:.2f}" for b in baselines)
    lines.append(f"| {name} | {seconds * 1e3:.3f} | {ratios} |")
  return lines


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true",
                      help="fewer repeats (a smoke run, noisy numbers)")
  parser.add_argument("--out", help="also write the report to this file")
  args = parser.parse_args(argv)
  repeats = 3 if args.quick else 15
  threads = os.environ.get("OMP_NUM_THREADS")
  command = (f"OMP_NUM_THREADS={threads} " if threads else "") + (
      "python benchmarks/bench_torch_interop.py " + " ".join(
          sys.argv[1:] if argv is None else argv))
  machine = (
      f"{platform.platform()}, {platform.processor() or 'cpu'}, "
      f"{os.cpu_count()} CPUs, {len(os.sched_getaffinity(0))} usable "
      f"(torch threads: {torch.get_num_threads()}); "
      f"Python {platform.python_version()}, torch {torch.__version__}, "
      f"jax {jax.__version__}, optax {optax.__version__}")
  print(f"Command: `{command.strip()}`\nMachine: {machine}", flush=True)
  variants = (("", {}), ("foreach=True", {"foreach": True}),
              ("fused=True", {"fused": True}))
  large = round_robin_medians(_runners(LARGE, variants, True),
                              steps=5, repeats=repeats)
  tiny = round_robin_medians(_runners(TINY, variants[:1], False),
                             steps=200, repeats=repeats)
  lines = [
      "# OptaxOptimizer step time (CPU)", "",
      f"Command: `{command.strip()}`", "",
      f"Machine: {machine}; load average {os.getloadavg()[0]:.1f} at the "
      "end.", "",
      f"Gradients precomputed; median over {repeats} repeats of the mean "
      "time per step (5 steps per repeat on the large model, 200 on the "
      "tiny one), optimizers in turn within each repeat.", "",
      *_table("Large model", LARGE, large,
              ("torch.optim.Adam()", "torch.optim.Adam(fused=True)")), "",
      *_table("Tiny model (per-step overhead)", TINY, tiny,
              ("torch.optim.Adam()",)),
  ]
  text = "\n".join(lines) + "\n"
  print(text)
  if args.out:
    with open(args.out, "w", encoding="utf-8") as file:
      file.write(text)


if __name__ == "__main__":
  main()
