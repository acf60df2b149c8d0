"""Data-parallel training with JAX's multi-controller runtime, on one machine.

Each process owns one CPU device and a shard of every batch; the train step
is jitted over the global mesh (params and optimizer state replicated, the
batch split along the "data" axis), so XLA all-reduces the gradient across
processes with CPU collectives (gloo). The same script runs on several hosts:
give every process the coordinator's address, the process count and its id.

Run on this machine (starts two processes on 127.0.0.1, then compares their
result with a single-process run of the same steps):

  python examples/multiprocess_train.py

One process of a multi-host run:

  python examples/multiprocess_train.py --coordinator HOST:PORT \
      --num-processes 2 --process-id 0 --out result.npz
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile

import numpy as np

FEATURES, CLASSES, BATCH, STEPS = 8, 4, 32, 3


def transforms():
  """name -> optimizer, each trained by every process."""
  import optax  # pylint: disable=import-outside-toplevel
  import optax_extras  # pylint: disable=import-outside-toplevel
  from optax_extras import gdtuo  # pylint: disable=import-outside-toplevel
  return {
      "optax.adam": optax.adam(1e-2),
      "diffgrad": optax_extras.diffgrad(1e-2),
      "expectigrad": optax_extras.expectigrad(1e-2),
      "sgd_hd": optax_extras.sgd_hd(1e-2, momentum=0.9, nesterov=True),
      "adam_hd": optax_extras.adam_hd(1e-2),
      "gdtuo.Adam(optimizer=SGD(1e-5))": gdtuo.Adam(
          1e-2, optimizer=gdtuo.SGD(1e-5)),
  }


def problem():
  """Initial params and STEPS global batches, the same in every process."""
  rng = np.random.default_rng(0)
  params = {
      "w": rng.standard_normal((FEATURES, CLASSES)).astype(np.float32) / 3,
      "b": np.zeros(CLASSES, np.float32),
  }
  inputs = rng.standard_normal((STEPS, BATCH, FEATURES)).astype(np.float32)
  labels = rng.integers(0, CLASSES, (STEPS, BATCH)).astype(np.int32)
  return params, inputs, labels


def loss_fn(params, x, y):
  import optax  # pylint: disable=import-outside-toplevel
  logits = x @ params["w"] + params["b"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def train(tx, params, batches, put_params, put_batch):
  """STEPS jitted steps; ``put_*`` place host arrays on the mesh."""
  import jax  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel

  @jax.jit
  def step(params, state, x, y):
    grads = jax.grad(loss_fn)(params, x, y)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  params = put_params(params)
  state = jax.jit(tx.init)(params)
  for x, y in zip(*batches):
    params, state = step(params, state, put_batch(x), put_batch(y))
  return params


def single_process_results() -> dict[str, np.ndarray]:
  """Final params of every transform on one device, as ``{name/leaf: array}``."""
  import jax  # pylint: disable=import-outside-toplevel
  params, inputs, labels = problem()
  device = jax.devices()[0]
  put = lambda tree: jax.device_put(tree, device)
  results = {}
  for name, tx in transforms().items():
    final = train(tx, params, (inputs, labels), put, put)
    results.update({f"{name}/{k}": np.asarray(v) for k, v in final.items()})
  return results


def distributed_results(coordinator: str, num_processes: int,
                        process_id: int) -> dict[str, np.ndarray]:
  """The same training, data-parallel over every process's devices."""
  import jax  # pylint: disable=import-outside-toplevel
  from jax.sharding import NamedSharding  # pylint: disable=import-outside-toplevel
  from jax.sharding import PartitionSpec  # pylint: disable=import-outside-toplevel

  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator, num_processes, process_id,
                             initialization_timeout=60)
  try:
    mesh = jax.make_mesh((jax.device_count(),), ("data",),
                         axis_types=(jax.sharding.AxisType.Auto,))
    replicated = NamedSharding(mesh, PartitionSpec())
    split = NamedSharding(mesh, PartitionSpec("data"))

    def put_params(tree):
      return jax.tree.map(
          lambda a: jax.make_array_from_callback(a.shape, replicated,
                                                 lambda index: a[index]),
          tree)

    def put_batch(global_batch):
      local = np.array_split(global_batch, jax.process_count())[
          jax.process_index()]
      return jax.make_array_from_process_local_data(split, local,
                                                    global_batch.shape)

    params, inputs, labels = problem()
    results = {"process_count": np.array(jax.process_count()),
               "device_count": np.array(jax.device_count())}
    for name, tx in transforms().items():
      final = train(tx, params, (inputs, labels), put_params, put_batch)
      results.update({f"{name}/{k}": np.asarray(v.addressable_data(0))
                      for k, v in final.items()})
    return results
  finally:
    jax.distributed.shutdown()


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
    probe.bind(("127.0.0.1", 0))
    return probe.getsockname()[1]


def start_workers(num_processes: int, out_dir: str) -> list[subprocess.Popen]:
  """Starts ``num_processes`` workers on 127.0.0.1, one CPU device each.

  Worker i writes its final params to ``out_dir/process{i}.npz``.
  """
  coordinator = f"127.0.0.1:{free_port()}"
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
             JAX_PLATFORMS="cpu")
  return [subprocess.Popen(
      [sys.executable, os.path.abspath(__file__), "--coordinator", coordinator,
       "--num-processes", str(num_processes), "--process-id", str(i),
       "--out", os.path.join(out_dir, f"process{i}.npz")],
      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
          for i in range(num_processes)]


def wait_for_workers(workers: list[subprocess.Popen], out_dir: str,
                     timeout: float) -> list[dict[str, np.ndarray]]:
  """The workers' results; raises on a failed or hung worker, after killing
  every worker still running."""
  try:
    logs = [worker.communicate(timeout=timeout)[0] for worker in workers]
  finally:
    for worker in workers:
      if worker.poll() is None:
        worker.kill()
        worker.wait()
  for i, (worker, log) in enumerate(zip(workers, logs)):
    if worker.returncode != 0:
      raise RuntimeError(f"process {i} exited with {worker.returncode}:\n{log}")
  return [dict(np.load(os.path.join(out_dir, f"process{i}.npz")))
          for i in range(len(workers))]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--coordinator", help="HOST:PORT of process 0")
  parser.add_argument("--num-processes", type=int, default=2)
  parser.add_argument("--process-id", type=int)
  parser.add_argument("--out", help="write this process's final params here")
  parser.add_argument("--timeout", type=float, default=120.0)
  args = parser.parse_args()
  # This checkout's optax_extras, also where another copy is installed.
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
      __file__))))
  if args.coordinator is not None:
    results = distributed_results(args.coordinator, args.num_processes,
                                  args.process_id)
    if args.out:
      np.savez(args.out, **results)
    return
  with tempfile.TemporaryDirectory() as out_dir:
    workers = start_workers(args.num_processes, out_dir)
    reference = single_process_results()
    distributed = wait_for_workers(workers, out_dir, args.timeout)
  print(f"{distributed[0]['process_count']} processes, "
        f"{distributed[0]['device_count']} devices in the global mesh")
  for name, expected in reference.items():
    worst = max(float(np.max(np.abs(r[name] - expected))) for r in distributed)
    print(f"{name}: max |multi-process - single-process| = {worst:.2e}")
    np.testing.assert_allclose([r[name] for r in distributed],
                               [expected] * len(distributed),
                               rtol=1e-5, atol=1e-6)
  print("multi-process training matches the single-process run")


if __name__ == "__main__":
  main()
