"""Cost of a hyperoptimizer stack: optax_extras vs optax.adam vs torch gdtuo.

One training step of a 784-1024-10 tanh MLP (gdtuo's README model, wider),
batch 256, float32, CPU: loss, gradient and optimizer update.

* JAX: plain ``optax.adam(1e-3)`` vs ``optax_extras.gdtuo.Adam(optimizer=
  optax_extras.gdtuo.SGD(1e-5))`` (alpha, beta1, beta2 learned), each one
  jitted step with donated params and state; optimizer state bytes too, and
  from the compiled step the number of XLA fusions and of full copies of a
  w1-sized (784x1024) buffer. ``gdtuo.Adam()`` (its rule, not learned) too.
* torch (same thread count): ``torch.optim.Adam`` vs gdtuo's
  ``Adam(optimizer=SGD(1e-5))`` through its ModuleWrapper, as its README does.

Run: ``python benchmarks/bench_hyperoptimize.py [--quick] [--out
benchmarks/results/hyperoptimize.md]``. Times are medians over repeats.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

import common  # first: this checkout's optax_extras, not an installed one
from optax_extras import gdtuo

from timing import round_robin_medians

SIZES = (784, 1024, 10)
BATCH = 256
WARMUP = 5
STEPS = 20
REPEATS = 11
QUICK_STEPS = 5
QUICK_REPEATS = 3


def jax_loss(params, x, y):
  h = jnp.tanh(x @ params["w1"] + params["b1"])
  logits = jnp.tanh(h @ params["w2"] + params["b2"])
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def bench_jax(tx, data):
  x, y, init = data
  params = {k: jnp.asarray(v) for k, v in init.items()}
  state = tx.init(params)
  state_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(state))

  def step(params, state):
    grads = jax.grad(jax_loss)(params, x, y)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  step = jax.jit(step, donate_argnums=(0, 1))
  hlo = step.lower(params, state).compile().as_text()
  hlo = hlo[hlo.index("ENTRY"):]
  big = f"f32[{SIZES[0]},{SIZES[1]}]"
  copies = sum(1 for line in hlo.splitlines()
               if f"{big}{{1,0}} copy(" in line)
  fusions = hlo.count(" fusion(")
  carry = [params, state]

  def run(n):
    for _ in range(n):
      carry[:] = step(*carry)
    jax.block_until_ready(carry)

  return run, state_bytes, f"{fusions} / {copies}"


def bench_torch(make_optimizer, data, threads):
  import torch  # pylint: disable=import-outside-toplevel
  import torch.nn.functional as F  # pylint: disable=import-outside-toplevel
  from gradient_descent_the_ultimate_optimizer import gdtuo as torch_gdtuo  # pylint: disable=import-outside-toplevel

  torch.set_num_threads(threads)
  x, y = (torch.from_numpy(np.asarray(a)) for a in data[:2])
  init = data[2]
  model = torch.nn.Sequential(torch.nn.Linear(*SIZES[:2]), torch.nn.Tanh(),
                              torch.nn.Linear(*SIZES[1:]), torch.nn.Tanh())
  with torch.no_grad():
    model[0].weight.copy_(torch.from_numpy(init["w1"].T))
    model[0].bias.copy_(torch.from_numpy(init["b1"]))
    model[2].weight.copy_(torch.from_numpy(init["w2"].T))
    model[2].bias.copy_(torch.from_numpy(init["b2"]))

  if make_optimizer is None:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def run(n):
      for _ in range(n):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
  else:
    mw = torch_gdtuo.ModuleWrapper(model, optimizer=make_optimizer(torch_gdtuo))
    mw.initialize()

    def run(n):
      for _ in range(n):
        mw.begin()
        loss = F.cross_entropy(mw.forward(x), y)
        mw.zero_grad()
        loss.backward(create_graph=True)
        mw.step()

  return run


def main(argv=None) -> None:
  args = common.parser(__doc__).parse_args(argv)
  steps, repeats = (QUICK_STEPS, QUICK_REPEATS) if args.quick else (
      STEPS, REPEATS)
  print(common.machine_line())
  print(f"Command: {common.command_line()}", flush=True)
  threads = os.cpu_count()
  rng = np.random.default_rng(0)
  init = {
      "w1": (rng.uniform(-1, 1, SIZES[:2]) / np.sqrt(SIZES[0])).astype(
          np.float32),
      "b1": np.zeros(SIZES[1], np.float32),
      "w2": (rng.uniform(-1, 1, SIZES[1:]) / np.sqrt(SIZES[1])).astype(
          np.float32),
      "b2": np.zeros(SIZES[2], np.float32),
  }
  data = (rng.standard_normal((BATCH, SIZES[0])).astype(np.float32),
          rng.integers(0, SIZES[2], BATCH), init)

  runners = {}
  runners["adam"], adam_bytes, adam_hlo = bench_jax(optax.adam(1e-3), data)
  runners["rule"], rule_bytes, rule_hlo = bench_jax(gdtuo.Adam(), data)
  runners["stack"], stack_bytes, stack_hlo = bench_jax(
      gdtuo.Adam(optimizer=gdtuo.SGD(1e-5)), data)
  runners["lr_stack"], lr_stack_bytes, lr_stack_hlo = bench_jax(
      gdtuo.AdamBaydin(optimizer=gdtuo.SGD(1e-5)), data)
  try:
    runners["torch_adam"] = bench_torch(None, data, threads)
    runners["torch_stack"] = bench_torch(
        lambda g: g.Adam(optimizer=g.SGD(1e-5)), data, threads)
  except ImportError:
    pass
  seconds = round_robin_medians(runners, steps, repeats, WARMUP)
  adam_s, stack_s = seconds["adam"], seconds["stack"]
  torch_adam_s = seconds.get("torch_adam", float("nan"))
  torch_stack_s = seconds.get("torch_stack", float("nan"))

  ms = lambda s: f"{s * 1e3:.2f} ms"
  lines = [
      "# Hyperoptimizer stack cost",
      "",
      f"{common.machine_line()} torch threads: {threads}.",
      f"Step of a {'-'.join(map(str, SIZES))} MLP, batch {BATCH}, float32, "
      f"CPU: median over {repeats} runs of {steps} steps. Command: "
      f"`{common.command_line()}`.",
      "",
      "| implementation | step | vs optax.adam | optimizer state | "
      "XLA fusions / copies of a w1-sized buffer |",
      "| --- | --- | --- | --- | --- |",
      f"| optax.adam | {ms(adam_s)} | 1.00x | {adam_bytes / 2**20:.2f} MiB "
      f"| {adam_hlo} |",
      f"| optax_extras.gdtuo.Adam() (the rule alone) | {ms(seconds['rule'])} "
      f"| {seconds['rule'] / adam_s:.2f}x | {rule_bytes / 2**20:.2f} MiB "
      f"| {rule_hlo} |",
      f"| optax_extras.gdtuo.Adam(optimizer=SGD(1e-5)) | {ms(stack_s)} | "
      f"{stack_s / adam_s:.2f}x | {stack_bytes / 2**20:.2f} MiB "
      f"({stack_bytes / adam_bytes:.2f}x) | {stack_hlo} |",
      f"| optax_extras.gdtuo.AdamBaydin(optimizer=SGD(1e-5)) (alpha only) | "
      f"{ms(seconds['lr_stack'])} | {seconds['lr_stack'] / adam_s:.2f}x | "
      f"{lr_stack_bytes / 2**20:.2f} MiB "
      f"({lr_stack_bytes / adam_bytes:.2f}x) | {lr_stack_hlo} |",
      f"| torch.optim.Adam | {ms(torch_adam_s)} | "
      f"{torch_adam_s / adam_s:.2f}x | | |",
      f"| torch gdtuo Adam(optimizer=SGD(1e-5)) | {ms(torch_stack_s)} | "
      f"{torch_stack_s / adam_s:.2f}x | | |",
      "",
      f"gdtuo stack / optax_extras stack: {torch_stack_s / stack_s:.2f}x.",
      "",
      "Where the stack's time goes (differences of the rows above): "
      "learning alpha (AdamBaydin) costs "
      f"{ms(seconds['lr_stack'] - seconds['rule'])} over the rule alone, "
      "and beta1 and beta2 together "
      f"{ms(stack_s - seconds['lr_stack'])} more. The extra work is memory "
      "traffic: one pass over each leaf reads the stored state, the last "
      "and the new gradient and evaluates every learned tangent together "
      "(a variadic reduction, so subexpressions the tangents share are "
      "computed once and no tangent is stored), and the new gradient is "
      "copied into the state; recomputing the state one step behind and "
      "the new update cost what optax.adam's update does.",
      "",
  ]
  common.emit("\n".join(lines), args)


if __name__ == "__main__":
  main()
