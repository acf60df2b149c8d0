"""Compile time and step time of a donated update step vs the number of leaves.

Params are a tree of N float32 64x64 leaves (N = 10, 100, 200, 500, 1000 by
default). For each transformation the step ``update + apply_updates`` is
jitted with params and state donated and compiled as
``jax.jit(step, donate_argnums=(0, 1)).lower(params, state, grads).compile()``
(wall time of lower + compile). The compiled step is then timed round-robin
against optax.adam at the same N (ratios, not absolute times, are
comparable). From the optimized HLO: the number of full copies of a
donated leaf (64x64 float32) in the entry computation (0 when every donated
buffer is updated in place) and XLA's temporary bytes
(``compiled.memory_analysis()``), and the XLA kernels per leaf (every
instruction of the entry computation that runs code: fusions, copies,
reductions; on XLA:CPU, with no multi-output fusion, each writes one array).
Compile time is split into tracing and lowering in Python (``lower``) and
XLA's compilation.

A transformation whose compile time, extrapolated along the growth measured
at the last two leaf counts, would exceed --max-compile seconds is skipped at
larger N.

Examples:
  python benchmarks/bench_compile.py --quick
  python benchmarks/bench_compile.py --leaves 100 200 --only adam_hd
  python benchmarks/bench_compile.py --out benchmarks/results/compile.md
"""

from __future__ import annotations

import math
import re
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import common  # first: this checkout's optax_extras, not an installed one
import optax_extras
from optax_extras import gdtuo

from timing import round_robin_medians

LEAF_SHAPE = (64, 64)
LEAVES = (10, 100, 200, 500, 1000)
QUICK_LEAVES = (10, 50)

CANDIDATES = {
    "optax.adam": lambda: optax.adam(1e-3),
    "diffgrad": lambda: optax_extras.diffgrad(1e-3),
    "expectigrad": lambda: optax_extras.expectigrad(1e-3),
    "sgd_hd (Nesterov)": lambda: optax_extras.sgd_hd(
        1e-3, momentum=0.9, nesterov=True),
    "adam_hd": lambda: optax_extras.adam_hd(1e-3),
    "hyperoptimize(optax.adam, lr + b1)": lambda: optax_extras.hyperoptimize(
        optax.adam,
        {"learning_rate": optax_extras.Learned(1e-3, "log"),
         "b1": optax_extras.Learned(0.9, "unit_interval")},
        optax.sgd(1e-5)),
    "gdtuo.Adam(optimizer=SGD(1e-5))": lambda: gdtuo.Adam(
        optimizer=gdtuo.SGD(1e-5)),
    "gdtuo.Adam(optimizer=Adam(optimizer=SGD(1e-5)))": lambda: gdtuo.Adam(
        optimizer=gdtuo.Adam(1e-5, optimizer=gdtuo.SGD(1e-5))),
}
BASELINE = "optax.adam"


def make_tree(leaves: int, seed: int, scale: float = 1.0):
  rng = np.random.default_rng(seed)
  return {f"w{i:04d}": jnp.asarray(
      scale * rng.standard_normal(LEAF_SHAPE), jnp.float32)
          for i in range(leaves)}


def donated_leaf_copies(hlo_text: str) -> int:
  """Full copies of a donated leaf (params or state) in the entry computation.

  XLA copies a donated input when a fusion that writes its new value in place
  is not ordered after every read of the old value; the copy is a
  params-sized temporary and an extra pass over memory. (A copy of the
  gradient, which is not donated, into the state is a store, not counted.)
  """
  entry = hlo_text[hlo_text.index("\nENTRY"):]
  shape = "f32[" + ",".join(map(str, LEAF_SHAPE)) + "]"
  donated = re.compile(r" copy\(%(params|state)")
  return sum(1 for line in entry.splitlines()
             if f"= {shape}" in line and donated.search(line))


def compile_step(tx, params, grads):
  """The compiled donated step, its compile and lowering seconds and its HLO
  facts."""
  state = tx.init(params)

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  start = time.perf_counter()
  lowered = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, grads)
  lowering = time.perf_counter() - start
  compiled = lowered.compile()
  seconds = time.perf_counter() - start
  memory = compiled.memory_analysis()
  temp = getattr(memory, "temp_size_in_bytes", float("nan"))
  hlo = compiled.as_text()
  return (compiled, state, seconds, lowering, donated_leaf_copies(hlo), temp,
          len(common.entry_kernels(hlo)))


def runner(compiled, params, state, grads):
  carry = [jax.tree.map(jnp.copy, params), state]

  def run(steps):
    for _ in range(steps):
      carry[:] = compiled(carry[0], carry[1], grads)
    jax.block_until_ready(carry)

  return run


def predicted_compile(history: list[tuple[int, float]], leaves: int) -> float:
  """Compile seconds at ``leaves``, extrapolated along the growth measured so
  far (log-log slope of the last two counts, at least 1; linear from one)."""
  if not history:
    return 0.0
  last_leaves, last_seconds = history[-1]
  exponent = 1.0
  if len(history) > 1:
    (n0, t0), (n1, t1) = history[-2:]
    exponent = max(1.0, math.log(t1 / t0) / math.log(n1 / n0))
  return last_seconds * (leaves / last_leaves) ** exponent


def measure_leaf_count(names, leaves, history, args):
  """Rows {name: [compile s, step s, copies, temp bytes, lowering s,
  kernels]} at one leaf count."""
  params = make_tree(leaves, seed=0)
  grads = make_tree(leaves, seed=1, scale=1e-2)
  rows, runners = {}, {}
  for name in names:
    if predicted_compile(history[name], leaves) > args.max_compile:
      print(f"  {name}: skipped (compile predicted > {args.max_compile} s)",
            flush=True)
      continue
    compiled, state, seconds, lowering, copies, temp, count = compile_step(
        CANDIDATES[name](), params, grads)
    history[name].append((leaves, seconds))
    print(f"  {name}: compile {seconds:.2f} s ({lowering:.2f} s lowering), "
          f"{copies} copies, temp {temp / 2**20:.2f} MiB, {count} kernels",
          flush=True)
    rows[name] = [seconds, math.nan, copies, temp, lowering, count]
    runners[name] = runner(compiled, params, state, grads)
  times = round_robin_medians(runners, args.steps, args.repeats)
  for name, seconds in times.items():
    rows[name][1] = seconds
  return rows


def growth_exponent(history: list[tuple[int, float]]) -> str:
  """Slope of log(compile time) vs log(leaves), first to last count."""
  if len(history) < 2:
    return "-"
  (n0, t0), (n1, t1) = history[0], history[-1]
  return f"{math.log(t1 / t0) / math.log(n1 / n0):.2f}"


def report(results, history, names, args) -> str:
  lines = [
      "# Compile time and step time vs number of leaves",
      "",
      common.machine_line(),
      f"Command: `{common.command_line()}`",
      f"Leaves of {LEAF_SHAPE[0]}x{LEAF_SHAPE[1]} float32; step = update + "
      "apply_updates, params and state donated; step time: median of "
      f"{args.repeats} round-robin rounds of {args.steps} steps. Ratios are "
      f"to {BASELINE} at the same leaf count, measured in the same run.",
      "",
      "| transform | leaves | compile s | of which lowering s | "
      "compile / adam | step ms | step / adam | XLA kernels / leaf | "
      "copies of a donated leaf | XLA temp MiB |",
      "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
  ]
  for name in names:
    for leaves, rows in results.items():
      if name not in rows:
        lines.append(f"| {name} | {leaves} | skipped | | | | | | | |")
        continue
      compile_s, step_s, copies, temp, lowering, count = rows[name]
      base = rows.get(BASELINE, [math.nan, math.nan])
      lines.append(
          f"| {name} | {leaves} | {compile_s:.2f} | {lowering:.2f} | "
          f"{compile_s / base[0]:.2f}x | {step_s * 1e3:.3f} | "
          f"{step_s / base[1]:.2f}x | {count / leaves:.1f} | {copies} | "
          f"{temp / 2**20:.2f} |")
  lines += [
      "",
      "Compile-time growth exponent (log-log slope, first to last leaf "
      "count; 1 = linear):",
      "",
      "| transform | exponent |",
      "| --- | --- |",
  ]
  lines += [f"| {name} | {growth_exponent(history[name])} |"
            for name in names]
  return "\n".join(lines) + "\n"


def main(argv=None) -> None:
  parser = common.parser(__doc__)
  parser.add_argument("--leaves", type=int, nargs="+", default=None,
                      help=f"leaf counts (default {' '.join(map(str, LEAVES))}"
                      f"; --quick: {' '.join(map(str, QUICK_LEAVES))})")
  parser.add_argument("--only", action="append", default=None,
                      metavar="NAME", choices=list(CANDIDATES),
                      help="measure only this transform (repeatable; "
                      f"{BASELINE} is always measured). Names: "
                      + ", ".join(CANDIDATES))
  parser.add_argument("--steps", type=int, default=None)
  parser.add_argument("--repeats", type=int, default=None)
  parser.add_argument("--max-compile", type=float, default=None,
                      help="skip a transform at leaf counts where its "
                      "compile time is predicted above this many seconds "
                      "(default 300; --quick: 60)")
  args = parser.parse_args(argv)
  leaves = args.leaves or (QUICK_LEAVES if args.quick else LEAVES)
  args.steps = args.steps or (3 if args.quick else 10)
  args.repeats = args.repeats or (3 if args.quick else 7)
  args.max_compile = args.max_compile or (60.0 if args.quick else 300.0)
  names = [BASELINE] + [n for n in CANDIDATES
                        if n != BASELINE and (not args.only or n in args.only)]
  print(common.machine_line())
  print(f"Command: {common.command_line()}", flush=True)

  history = {name: [] for name in names}
  results = {}
  for count in leaves:
    print(f"{count} leaves:", flush=True)
    results[count] = measure_leaf_count(names, count, history, args)
  common.emit(report(results, history, names, args), args)


if __name__ == "__main__":
  main()
