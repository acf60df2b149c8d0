"""Optimizer step cost per byte moved, against optax.adam, a STREAM-like
copy and the upstream torch optimizers, measured side by side in one run.

Each JAX step is `update` + `apply_updates`, jitted, with params and state
donated, the gradient an input. "Bytes moved" is the least traffic a step
needs: read params, grads and state, write params and state; for the
hypergradient methods (sgd_hd, adam_hd) also a second read of the gradient
and of the state the hypergradient reads, since the learning rate must be
known before any parameter is written. Per-byte ratios
divide each transform's time per byte by optax.adam's, measured in the same
round-robin rounds, so they are comparable across machines; absolute times
are not. The copy bandwidth is that of a donated in-place scaling
``x <- a * x`` of a params-sized tree (read and write every byte once: the
STREAM "scale" kernel), timed in the same rounds; each transform's GB/s is
given as a fraction of it.

The roofline of what XLA:CPU allows: "kernel bytes" are the bytes the
compiled step's kernels read and write (`common.entry_kernels`: every
operand and output of every fusion, copy and reduction, whole). XLA:CPU
writes one array per kernel (no multi-output fusion), so a step usually moves
more than the least traffic (Adam itself: 10 params-sized arrays for 7); a
transform whose kernel bytes per second match Adam's runs as fast as its
program's traffic allows, and its gap to Adam is that extra traffic.

Sizes: 1.1M float32 parameters in 4 leaves, the same in bfloat16, and 18.9M
float32 parameters in 66 leaves (16 of 2048x512, 8 of 512x512, 42 vectors of
512). Peak memory: XLA's own accounting of the compiled step at 50M float32
parameters in 5 leaves (compiled from shapes alone, nothing allocated): the
state and XLA's temporaries, i.e. the extra memory over params and grads.
The upstream torch optimizers run on the 1.1M float32 set (--torch-threads),
in the same round-robin rounds.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import common  # first: this checkout's optax_extras, not an installed one
import optax_extras

from timing import round_robin_medians

SIZES = {
    "1.1M float32": (((1024, 1024), (1024,), (64, 64, 16), ()), jnp.float32),
    "1.1M bfloat16": (((1024, 1024), (1024,), (64, 64, 16), ()),
                      jnp.bfloat16),
    "18.9M float32": (((2048, 512),) * 16 + ((512, 512),) * 8
                      + ((512,),) * 42, jnp.float32),
}
QUICK_SIZES = ("1.1M float32",)
MEMORY_SHAPES = ((10_000_000,),) * 5
COPY = "copy (x <- a x)"
BASELINE = "optax.adam"


# Their hypergradient, a product over every leaf, is a pass of its own over
# the gradient and the state before the update's pass.
HYPERGRADIENT_PASS = ("sgd_hd (momentum)", "adam_hd")


def tree_bytes(tree) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def jax_candidates():
  return {
      BASELINE: optax.adam(1e-3),
      "diffgrad": optax_extras.diffgrad(1e-3),
      "expectigrad": optax_extras.expectigrad(1e-3),
      "sgd_hd (momentum)": optax_extras.sgd_hd(1e-3, momentum=0.9),
      "adam_hd": optax_extras.adam_hd(1e-3),
  }


def step_fn(tx):
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return jax.jit(step, donate_argnums=(0, 1))


def make_jax_runner(tx, params, grads, hypergradient_pass=False):
  """A runner of the donated step, the bytes one step must move and the
  bytes its compiled kernels move."""
  params = jax.tree.map(jnp.copy, params)
  state = tx.init(params)
  step = step_fn(tx).lower(params, state, grads).compile()
  kernel_bytes = sum(written + read for _, written, read
                     in common.entry_kernels(step.as_text()))
  moved = 2 * tree_bytes(params) + tree_bytes(grads) + 2 * tree_bytes(state)
  if hypergradient_pass:
    moved += tree_bytes(grads) + tree_bytes(state)
  carry = [params, state]

  def run(steps):
    for _ in range(steps):
      carry[:] = step(carry[0], carry[1], grads)
    jax.block_until_ready(carry)

  return run, moved, kernel_bytes


def make_copy_runner(params):
  """The STREAM-like copy: a donated in-place ``x <- a x`` of every leaf."""
  scale = jax.jit(lambda tree, a: jax.tree.map(lambda x: (a * x).astype(
      x.dtype), tree), donate_argnums=0)
  factor = jnp.asarray(1.0, jnp.float32)
  carry = [jax.tree.map(jnp.copy, params)]

  def run(steps):
    for _ in range(steps):
      carry[0] = scale(carry[0], factor)
    jax.block_until_ready(carry)

  return run, 2 * tree_bytes(params)


def make_tree(shapes, dtype, seed, scale=1.0):
  rng = np.random.default_rng(seed)
  return [jnp.asarray(scale * rng.standard_normal(s), dtype) for s in shapes]


def measure_size(shapes, dtype, args, extra_runners=None):
  """Rows {name: (seconds per step, bytes moved, state bytes, kernel bytes)}
  for one size, and {name: seconds per step} of ``extra_runners``, timed in
  the same round-robin rounds."""
  params = make_tree(shapes, dtype, seed=0)
  grads = make_tree(shapes, dtype, seed=1, scale=1e-2)
  runners, moved, state_bytes, kernel_bytes = {}, {}, {}, {}
  runners[COPY], moved[COPY] = make_copy_runner(params)
  state_bytes[COPY], kernel_bytes[COPY] = 0, moved[COPY]
  for name, tx in jax_candidates().items():
    runners[name], moved[name], kernel_bytes[name] = make_jax_runner(
        tx, params, grads, hypergradient_pass=name in HYPERGRADIENT_PASS)
    state_bytes[name] = tree_bytes(tx.init(params))
  steps = max(1, args.steps * 1_200_000 // sum(a.size for a in params))
  seconds = round_robin_medians({**runners, **(extra_runners or {})}, steps,
                                args.rounds)
  rows = {name: (seconds[name], moved[name], state_bytes[name],
                 kernel_bytes[name]) for name in runners}
  return rows, {name: seconds[name] for name in extra_runners or {}}


def size_table(label, rows) -> list[str]:
  adam_s, adam_moved, _, adam_kernel_bytes = rows[BASELINE]
  copy_s, copy_moved, _, _ = rows[COPY]
  copy_rate = copy_moved / copy_s
  lines = [
      f"### {label}",
      "",
      f"Copy bandwidth (in-place `x <- a x`, same rounds): "
      f"{copy_rate / 1e9:.1f} GB/s.",
      "",
      "| transform | state / params bytes | bytes moved / step | ms / step "
      "| time / optax.adam | per byte / optax.adam's | GB/s "
      "| fraction of copy bandwidth | kernel bytes / bytes moved "
      "| kernel bytes per second / optax.adam's |",
      "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
  ]
  params_bytes = (adam_moved - 2 * rows[BASELINE][2]) / 3
  adam_kernel_rate = adam_kernel_bytes / adam_s
  for name, (seconds, moved, state, kernel_bytes) in rows.items():
    if name == COPY:
      continue
    per_byte = (seconds / moved) / (adam_s / adam_moved)
    lines.append(
        f"| {name} | {state / params_bytes:.2f} | {moved:,} | "
        f"{seconds * 1e3:.2f} | {seconds / adam_s:.2f} | {per_byte:.2f} | "
        f"{moved / seconds / 1e9:.1f} | {moved / seconds / copy_rate:.2f} | "
        f"{kernel_bytes / moved:.2f} | "
        f"{kernel_bytes / seconds / adam_kernel_rate:.2f} |")
  return lines + [""]


def memory_table() -> list[str]:
  """State and XLA temporaries of the compiled step at 50M parameters."""
  params = [jax.ShapeDtypeStruct(s, jnp.float32) for s in MEMORY_SHAPES]
  params_mb = sum(np.prod(s) for s in MEMORY_SHAPES) * 4 / 1e6
  lines = [
      f"### Peak memory at {params_mb / 4:.0f}M float32 parameters "
      f"({len(MEMORY_SHAPES)} leaves)",
      "",
      "From `compiled.memory_analysis()` of the donated step (compiled from "
      "shapes, nothing run). Extra = state + XLA temporaries: the peak over "
      f"params and grads ({2 * params_mb:.0f} MB).",
      "",
      "| transform | state MB | XLA temporaries MB | extra over params and "
      "grads MB |",
      "| --- | --- | --- | --- |",
  ]
  for name, tx in jax_candidates().items():
    state = jax.eval_shape(tx.init, params)
    compiled = step_fn(tx).lower(params, state, params).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes / 1e6
    state_mb = sum(x.size * x.dtype.itemsize
                   for x in jax.tree.leaves(state)) / 1e6
    lines.append(f"| {name} | {state_mb:.0f} | {temp:.0f} | "
                 f"{state_mb + temp:.0f} |")
  return lines + [""]


def torch_candidates():
  try:
    import torch  # pylint: disable=import-outside-toplevel,unused-import
    import torch_optimizer  # pylint: disable=import-outside-toplevel
    from expectigrad.pytorch import Expectigrad  # pylint: disable=import-outside-toplevel
  except ImportError:
    return {}
  candidates = {
      "torch.optim.Adam": (BASELINE, lambda ps: torch.optim.Adam(ps, 1e-3)),
      "torch_optimizer.DiffGrad": (
          "diffgrad", lambda ps: torch_optimizer.DiffGrad(ps, 1e-3)),
      "expectigrad.Expectigrad": (
          "expectigrad", lambda ps: Expectigrad(ps, 1e-3)),
  }
  sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
  try:
    import torch_reference  # pylint: disable=import-outside-toplevel
  except ImportError:
    return candidates
  candidates["hypergrad.SGDHD"] = ("sgd_hd (momentum)", lambda ps: (
      torch_reference.SGDHD(ps, 1e-3, momentum=0.9)))
  candidates["hypergrad.AdamHD"] = ("adam_hd", lambda ps: (
      torch_reference.AdamHD(ps, 1e-3)))
  return candidates


def torch_runners(shapes, candidates, threads):
  """A runner of ``optimizer.step()`` per upstream torch optimizer."""
  import torch  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(threads)
  rng = np.random.default_rng(0)
  runners = {}
  for name, (_, factory) in candidates.items():
    params = [torch.tensor(rng.standard_normal(s).astype(np.float32),
                           requires_grad=True) for s in shapes]
    for p in params:
      p.grad = torch.randn_like(p) * 1e-2
    runners[name] = (lambda opt: lambda n: [opt.step() for _ in range(n)])(
        factory(params))
  return runners


def torch_table(candidates, seconds, jax_rows) -> list[str]:
  """Upstream torch optimizers against ours, timed in the same rounds."""
  if not candidates:
    return ["(torch or an upstream package is not installed: no torch "
            "rows.)", ""]
  lines = [
      "### Upstream torch optimizers, 1.1M float32 (timed in the rounds of "
      "the 1.1M float32 table)",
      "",
      "| upstream torch optimizer | ms / step | time / torch.optim.Adam | "
      "optax_extras time / upstream time |",
      "| --- | --- | --- | --- |",
  ]
  for name, (ours, _) in candidates.items():
    lines.append(
        f"| {name} | {seconds[name] * 1e3:.2f} | "
        f"{seconds[name] / seconds['torch.optim.Adam']:.2f} | "
        f"{jax_rows[ours][0] / seconds[name]:.2f} |")
  return lines + [""]


def main(argv=None):
  parser = common.parser(__doc__)
  parser.add_argument("--steps", type=int, default=None,
                      help="steps per round at 1.1M params (scaled down for "
                      "larger sizes; default 10, --quick 3)")
  parser.add_argument("--rounds", type=int, default=None,
                      help="round-robin rounds (default 9, --quick 3)")
  parser.add_argument("--torch-threads", type=int, default=os.cpu_count(),
                      help="torch's intra-op threads (default: one per core)")
  args = parser.parse_args(argv)
  args.steps = args.steps or (3 if args.quick else 10)
  args.rounds = args.rounds or (3 if args.quick else 9)
  print(common.machine_line())
  print(f"Command: {common.command_line()}", flush=True)
  lines = [
      "# Optimizer step cost per byte moved",
      "",
      common.machine_line(),
      f"Command: `{common.command_line()}`. Medians of {args.rounds} "
      "round-robin rounds.",
      "",
  ]
  candidates = torch_candidates()
  first = "1.1M float32"
  for label in QUICK_SIZES if args.quick else tuple(SIZES):
    print(f"{label} ...", flush=True)
    extra = (torch_runners(SIZES[label][0], candidates, args.torch_threads)
             if label == first else {})
    rows, extra_seconds = measure_size(*SIZES[label], args, extra)
    if label == first:
      first_rows, torch_seconds = rows, extra_seconds
    lines += size_table(label, rows)
  if not args.quick:
    lines += memory_table()
  lines += torch_table(candidates, torch_seconds, first_rows)
  common.emit("\n".join(lines), args)


if __name__ == "__main__":
  main()
