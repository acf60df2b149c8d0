"""Optimizer step bandwidth on a GPU or TPU, as a fraction of the device's peak.

Runs in under 5 minutes on one accelerator; without one it prints that it
skipped (exit status 0) and, with --out, writes that into the report.

* JAX: the donated step (`update` + `apply_updates`, the gradient an input)
  of optax.adam, diffgrad, expectigrad, sgd_hd and adam_hd on 268M float32
  parameters in 8 leaves (--quick: 33M), timed round-robin with a donated
  in-place copy ``x <- a x`` of the params. Reported: the bytes one step must
  move (read params, grads, state; write params, state; for sgd_hd and
  adam_hd the hypergradient's reads of grads and state too) per second, as a
  fraction of the measured copy bandwidth and of the device's peak memory
  bandwidth (a table of known devices, or --peak-gbs), and per byte against
  optax.adam.
* torch (when torch sees a CUDA device and `optax_extras.torch` imports):
  ``OptaxOptimizer(params, optax.adam)`` against ``torch.optim.Adam(fused=
  True)`` on the same CUDA tensors, the shim's DLPack path.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import common
from bench_optimizers import BASELINE
from bench_optimizers import COPY
from bench_optimizers import HYPERGRADIENT_PASS
from bench_optimizers import jax_candidates
from bench_optimizers import make_copy_runner
from bench_optimizers import make_jax_runner
from timing import round_robin_medians

# Peak memory bandwidth in GB/s by device kind (vendor data sheets).
PEAK_GBS = {
    "H200": 4800, "H100 80GB HBM3": 3350, "H100 PCIe": 2000,
    "A100-SXM4-80GB": 2039, "A100-SXM4-40GB": 1555, "A100 80GB PCIe": 1935,
    "L4": 300, "T4": 320, "V100": 900, "TPU v4": 1200, "TPU v5 lite": 819,
    "TPU v5p": 2765, "TPU v6 lite": 1640,
}
LEAVES = 8
ELEMENTS = 1 << 25  # per leaf: 8 x 32M = 268M params
QUICK_ELEMENTS = 1 << 22


def accelerator():
  """The first GPU or TPU device, or None."""
  devices = [d for d in jax.devices() if d.platform in ("gpu", "cuda", "rocm",
                                                        "tpu")]
  return devices[0] if devices else None


def peak_gbs(device, override):
  if override:
    return override
  kind = device.device_kind
  return next((gbs for name, gbs in PEAK_GBS.items() if name in kind), None)


def jax_rows(device, elements, args):
  """Report lines for the JAX steps on ``device``."""
  with jax.default_device(device):
    rng = np.random.default_rng(0)
    params = [jnp.asarray(rng.standard_normal(elements, np.float32))
              for _ in range(LEAVES)]
    grads = [1e-2 * p for p in params]
    runners, moved = {}, {}
    runners[COPY], moved[COPY] = make_copy_runner(params)
    for name, tx in jax_candidates().items():
      runners[name], moved[name], _ = make_jax_runner(
          tx, params, grads, hypergradient_pass=name in HYPERGRADIENT_PASS)
    seconds = round_robin_medians(runners, args.steps, args.rounds)
  peak = peak_gbs(device, args.peak_gbs)
  adam_per_byte = seconds[BASELINE] / moved[BASELINE]
  lines = [
      f"Device: {device.device_kind}; peak memory bandwidth "
      f"{peak or 'unknown (pass --peak-gbs)'} GB/s; "
      f"{LEAVES * elements / 1e6:.0f}M float32 parameters in {LEAVES} "
      "leaves.",
      "",
      "| step | ms | GB/s | fraction of copy | fraction of peak | "
      "per byte / optax.adam's |",
      "| --- | --- | --- | --- | --- | --- |",
  ]
  copy_gbs = moved[COPY] / seconds[COPY] / 1e9
  for name in runners:
    gbs = moved[name] / seconds[name] / 1e9
    of_peak = f"{gbs / peak:.2f}" if peak else "-"
    lines.append(
        f"| {name} | {seconds[name] * 1e3:.2f} | {gbs:.0f} | "
        f"{gbs / copy_gbs:.2f} | {of_peak} | "
        f"{seconds[name] / moved[name] / adam_per_byte:.2f} |")
  return lines + [""]


def torch_rows(args):
  """Report lines for the torch shim on CUDA, or a line saying why not."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
    import optax  # pylint: disable=import-outside-toplevel
    from optax_extras.torch import OptaxOptimizer  # pylint: disable=import-outside-toplevel
  except ImportError as error:
    return [f"torch shim: not run ({error}).", ""]
  if not torch.cuda.is_available():
    return ["torch shim: not run (torch sees no CUDA device).", ""]
  torch.manual_seed(0)

  def make(factory):
    params = [torch.randn(4096, 2560, device="cuda", requires_grad=True)]
    params[0].grad = torch.randn_like(params[0]) * 1e-2
    optimizer = factory(params)

    def run(steps):
      for _ in range(steps):
        optimizer.step()
      torch.cuda.synchronize()

    return run

  runners = {
      "torch.optim.Adam(fused=True)": make(
          lambda ps: torch.optim.Adam(ps, 1e-3, fused=True)),
      "OptaxOptimizer(optax.adam)": make(
          lambda ps: OptaxOptimizer(ps, optax.adam(1e-3))),
  }
  seconds = round_robin_medians(runners, args.steps, args.rounds)
  base = seconds["torch.optim.Adam(fused=True)"]
  lines = ["| torch optimizer, 10.5M params on CUDA | ms / step | "
           "time / fused Adam |", "| --- | --- | --- |"]
  lines += [f"| {name} | {s * 1e3:.3f} | {s / base:.2f} |"
            for name, s in seconds.items()]
  return lines + [""]


def main(argv=None) -> None:
  parser = common.parser(__doc__)
  parser.add_argument("--peak-gbs", type=float, default=None,
                      help="the device's peak memory bandwidth, GB/s "
                      "(default: from a table of known devices)")
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--rounds", type=int, default=None,
                      help="round-robin rounds (default 9, --quick 3)")
  args = parser.parse_args(argv)
  args.rounds = args.rounds or (3 if args.quick else 9)
  print(common.machine_line())
  print(f"Command: {common.command_line()}", flush=True)
  lines = ["# Optimizer steps on an accelerator", "", common.machine_line(),
           f"Command: `{common.command_line()}`.", ""]
  device = accelerator()
  if device is None:
    lines.append("Skipped: JAX sees no GPU or TPU on this machine "
                 f"(devices: {', '.join(str(d) for d in jax.devices())}).")
  else:
    lines += jax_rows(device, QUICK_ELEMENTS if args.quick else ELEMENTS,
                      args)
    lines += torch_rows(args)
  common.emit("\n".join(lines) + "\n", args)


if __name__ == "__main__":
  main()
