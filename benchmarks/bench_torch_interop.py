"""Step time of OptaxOptimizer(optax.adam) against torch.optim.Adam, on CPU.

A ~10M-parameter stack of nn.Linear layers; the gradients are computed once
and kept, so only `optimizer.step()` is timed: the median over --steps steps
after --warmup steps, the optimizers interleaved in one run. torch.optim.Adam
runs with its defaults (on CPU: the single-tensor loop), foreach=True and
fused=True. The last row runs the same jitted optax.adam update (params and
state donated) on JAX arrays with no torch at all, to separate the cost of
the interop from that of XLA's Adam.

  python benchmarks/bench_torch_interop.py [--steps 50] [--warmup 5]

Writes benchmarks/results/torch_interop.md and prints it.
"""

import argparse
import functools
import os
import pathlib
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import optax
import torch

from optax_extras.torch import OptaxOptimizer

WIDTHS = (1024, 2048, 2048, 1024, 1024, 512)
RESULTS = pathlib.Path(__file__).parent / "results" / "torch_interop.md"


def _model():
  torch.manual_seed(0)
  layers = [torch.nn.Linear(a, b) for a, b in zip(WIDTHS, WIDTHS[1:])]
  model = torch.nn.Sequential(*layers)
  for p in model.parameters():
    p.grad = torch.randn_like(p) * 1e-2
  return model


def _timed(step):
  start = time.perf_counter()
  step()
  return time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=50)
  parser.add_argument("--warmup", type=int, default=5)
  args = parser.parse_args()

  optax_model = _model()
  size = sum(p.numel() for p in optax_model.parameters())
  torch_opts = {
      f"torch.optim.Adam({options})": torch.optim.Adam(
          _model().parameters(), lr=1e-3, **kwargs)
      for options, kwargs in (("", {}), ("foreach=True", {"foreach": True}),
                              ("fused=True", {"fused": True}))}
  optax_opt = OptaxOptimizer(optax_model.parameters(), optax.adam, lr=1e-3)

  tx = optax.adam(1e-3)
  params = [jnp.asarray(p.detach().numpy()) for p in optax_model.parameters()]
  grads = [jnp.asarray(p.grad.numpy()) for p in optax_model.parameters()]
  jax_state = {"params": params, "opt": tx.init(params)}

  @functools.partial(jax.jit, donate_argnums=(1, 2))
  def jax_update(grads, params, state):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  def jax_step():
    jax_state["params"], jax_state["opt"] = jax.block_until_ready(
        jax_update(grads, jax_state["params"], jax_state["opt"]))

  steps = {name: opt.step for name, opt in torch_opts.items()}
  steps.update({"OptaxOptimizer(optax.adam)": optax_opt.step,
                "jitted optax.adam, JAX arrays only": jax_step})
  times = {name: [] for name in steps}
  for i in range(args.warmup + args.steps):
    for name, step in steps.items():
      elapsed = _timed(step)
      if i >= args.warmup:
        times[name].append(elapsed)
  medians = {name: statistics.median(t) for name, t in times.items()}
  baseline = medians["torch.optim.Adam()"]

  lines = [
      "# OptaxOptimizer step overhead (CPU)",
      "",
      f"Command: `python benchmarks/bench_torch_interop.py --steps "
      f"{args.steps} --warmup {args.warmup}`",
      "",
      f"Machine: {platform.platform()}, {platform.processor() or 'cpu'}, "
      f"{os.cpu_count()} CPUs (torch threads: {torch.get_num_threads()}); "
      f"Python {platform.python_version()}, torch {torch.__version__}, "
      f"jax {jax.__version__}, optax {optax.__version__}; load average "
      f"{os.getloadavg()[0]:.1f} at the end.",
      "",
      f"Model: nn.Linear stack {WIDTHS}, {size / 1e6:.2f}M float32 parameters "
      f"in {len(params)} tensors. Median of {args.steps} steps after "
      f"{args.warmup} warm-up steps, gradients precomputed, optimizers "
      "interleaved.",
      "",
      "| optimizer step | median (ms) | ratio to torch.optim.Adam() |",
      "|---|---:|---:|",
  ]
  for name, median in medians.items():
    lines.append(f"| {name} | {median * 1e3:.2f} | {median / baseline:.2f} |")
  text = "\n".join(lines) + "\n"
  RESULTS.parent.mkdir(parents=True, exist_ok=True)
  RESULTS.write_text(text)
  print(text)


if __name__ == "__main__":
  main()
