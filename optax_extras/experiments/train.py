"""Training one model with each optimizer of a comparison, in lockstep data.

Every optimizer starts from the same weights and sees the same batch-index
stream (`batch_indices`), so curves differ by the optimizer only. An epoch is
one compiled `jax.lax.scan` over its batches; with several devices the batch
axis is sharded over a one-axis mesh and the parameters are replicated.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from optax_extras.experiments import data as data_lib
from optax_extras.experiments import optimizers

COLUMNS = ("Epoch", "Iteration", "Time", "Loss", "LossEpoch", "ValidLossEpoch",
           "Alpha", "AlphaEpoch", "Beta")
EVAL_CHUNK = 1000


def batch_indices(num_examples: int, batch_size: int, epochs: int,
                  seed: int) -> np.ndarray:
  """The batch-index stream, shape (epochs, steps, batch_size).

  One permutation of the training set per epoch from `seed`; the last
  incomplete batch of each epoch is dropped (train.py keeps it), so that every
  step has the same shape and the epoch compiles once.
  """
  if epochs < 1:
    raise ValueError(f"epochs must be >= 1, got {epochs}")
  steps = num_examples // batch_size
  if steps == 0:
    raise ValueError(f"batch size {batch_size} is larger than the training "
                     f"set ({num_examples} examples)")
  rng = np.random.default_rng(seed)
  return np.stack([rng.permutation(num_examples)[:steps * batch_size]
                   .reshape(steps, batch_size) for _ in range(epochs)])


def make_mesh(devices: int) -> jax.sharding.Mesh:
  """A one-axis mesh ("batch") over the first `devices` devices."""
  available = jax.devices()
  if not 1 <= devices <= len(available):
    raise ValueError(
        f"--devices {devices}: {len(available)} {available[0].platform} "
        f"device(s) available (on CPU, XLA_FLAGS="
        f"--xla_force_host_platform_device_count={devices} makes more)")
  return jax.sharding.Mesh(np.array(available[:devices]), ("batch",))


def _digest(arrays) -> str:
  sha = hashlib.sha256()
  for array in arrays:
    sha.update(np.ascontiguousarray(array).tobytes())
  return sha.hexdigest()


@dataclasses.dataclass
class Result:
  """What training with one optimizer produced.

  Attributes:
    label: the optimizer as written on the command line.
    rows: the CSV rows, in the order and meaning of COLUMNS.
    summary: final train loss (mean of the last epoch), valid loss and
      accuracy, wall time (training, evaluation and transfers after
      compilation), compile time, steps per second (of the compiled epochs
      alone) and final learning rate.
    batch_digest: SHA-256 of the batch indices this run consumed.
    init_digest: SHA-256 of the initial parameters.
  """

  label: str
  rows: list[tuple[Any, ...]]
  summary: dict[str, float]
  batch_digest: str
  init_digest: str


class Experiment:
  """A model, a dataset, a batch order and a mesh, shared by the optimizers."""

  def __init__(self, model: nnx.Module, dataset: data_lib.Dataset, *,
               batch_size: int, epochs: int, seed: int, devices: int = 1):
    if batch_size % devices:
      raise ValueError(f"--batch-size {batch_size} is not divisible by "
                       f"--devices {devices}")
    self.mesh = make_mesh(devices)
    self.replicated = NamedSharding(self.mesh, P())
    self.batched = NamedSharding(self.mesh, P(None, "batch"))
    self.dataset = dataset
    self.order = batch_indices(len(dataset.train_labels), batch_size, epochs,
                               seed)
    self.graphdef, params = nnx.split(model)
    self.init_params = jax.device_get(params)
    self.valid = self._valid_chunks(devices)
    self._evaluate = jax.jit(self._eval_sums, out_shardings=self.replicated)

  def _valid_chunks(self, devices: int):
    images, labels = self.dataset.valid_images, self.dataset.valid_labels
    chunk = math.ceil(min(EVAL_CHUNK, len(labels)) / devices) * devices
    padded = math.ceil(len(labels) / chunk) * chunk
    weights = (np.arange(padded) < len(labels)).astype(np.float32)
    pad = padded - len(labels)
    images = np.concatenate([images, np.zeros((pad,) + images.shape[1:],
                                              images.dtype)])
    labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
    shape = (padded // chunk, chunk)
    return jax.device_put((images.reshape(shape + images.shape[1:]),
                           labels.reshape(shape), weights.reshape(shape)),
                          self.batched)

  def _loss(self, params, images, labels):
    logits = nnx.merge(self.graphdef, params)(images)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels), logits

  def _eval_sums(self, params, images, labels, weights):
    def chunk(sums, batch):
      x, y, w = batch
      loss, logits = self._loss(params, x, y)
      correct = (jnp.argmax(logits, -1) == y).astype(jnp.float32)
      return (sums[0] + jnp.sum(w * loss), sums[1] + jnp.sum(w * correct)), None
    zero = jnp.zeros([], jnp.float32)
    return jax.lax.scan(chunk, (zero, zero), (images, labels, weights))[0]

  def evaluate(self, params) -> tuple[float, float]:
    """Mean cross-entropy and accuracy on the validation set."""
    loss, correct = self._evaluate(params, *self.valid)
    count = len(self.dataset.valid_labels)
    return float(loss) / count, float(correct) / count

  def _epoch_fn(self, built: optimizers.Built):
    def step(carry, batch):
      params, opt_state = carry
      loss, grads = jax.value_and_grad(
          lambda p: self._loss(p, *batch)[0].mean())(params)
      updates, opt_state = built.tx.update(grads, opt_state, params)
      params = optax.apply_updates(params, updates)
      return (params, opt_state), (loss, built.rate(opt_state))

    def epoch(params, opt_state, images, labels):
      (params, opt_state), (losses, rates) = jax.lax.scan(
          step, (params, opt_state), (images, labels))
      return params, opt_state, losses, rates

    return jax.jit(epoch, donate_argnums=(0, 1),
                   out_shardings=self.replicated)

  def _batches(self, epoch: int):
    indices = self.order[epoch]
    return jax.device_put((self.dataset.train_images[indices],
                           self.dataset.train_labels[indices]), self.batched)

  def train(self, label: str, built: optimizers.Built,
            progress: bool = True) -> Result:
    """Trains from the shared initial weights with one optimizer.

    Rows follow train.py: epoch 0 holds the loss of the first batch and the
    validation loss before training; then one row per step (Loss, Alpha: the
    learning rate of that step) with LossEpoch, ValidLossEpoch and AlphaEpoch
    NaN except on an epoch's last step, where they hold the epoch's means and
    the validation loss. Iteration counts steps (train.py's counter is one
    ahead). Time within an epoch is interpolated linearly, since the epoch
    runs as one compiled call.
    """
    params = jax.device_put(self.init_params, self.replicated)
    opt_state = jax.device_put(built.tx.init(params), self.replicated)
    images, labels = self._batches(0)
    loss0, _ = self._evaluate(params, images[:1], labels[:1],
                              jnp.ones(labels[:1].shape, jnp.float32))
    loss0 = float(loss0) / labels.shape[1]
    valid_loss, _ = self.evaluate(params)
    rate0 = float(built.rate(opt_state))
    rows = [(0, 0, 0.0, loss0, loss0, valid_loss, rate0, rate0, built.beta)]

    compile_start = time.perf_counter()
    epoch_fn = self._epoch_fn(built).lower(
        params, opt_state, images, labels).compile()
    compile_time = time.perf_counter() - compile_start

    steps = self.order.shape[1]
    batch_sha = hashlib.sha256()
    step_time = elapsed = 0.0
    start = time.perf_counter()
    bar = tqdm.tqdm(total=len(self.order), desc=label, unit="epoch",
                    disable=None if progress else True)
    with bar:
      for epoch in range(len(self.order)):
        if epoch:
          images, labels = self._batches(epoch)
        batch_sha.update(self.order[epoch].tobytes())
        step_start = time.perf_counter()
        params, opt_state, losses, rates = epoch_fn(
            params, opt_state, images, labels)
        losses, rates = np.asarray(losses), np.asarray(rates)
        step_time += time.perf_counter() - step_start
        valid_loss, accuracy = self.evaluate(params)
        previous, elapsed = elapsed, time.perf_counter() - start
        times = previous + (elapsed - previous) * np.arange(1, steps + 1) / steps
        for i in range(steps):
          last = i == steps - 1
          rows.append((
              epoch + 1, epoch * steps + i + 1, float(times[i]),
              float(losses[i]), float(losses.mean()) if last else math.nan,
              valid_loss if last else math.nan, float(rates[i]),
              float(rates.mean()) if last else math.nan, built.beta))
        bar.set_postfix(dict(loss=f"{losses.mean():.4f}",
                             valid=f"{valid_loss:.4f}", lr=f"{rates[-1]:.4g}"),
                        refresh=False)
        bar.update()
    summary = dict(
        train_loss=rows[-1][4], valid_loss=valid_loss, valid_accuracy=accuracy,
        wall_time_s=elapsed, compile_time_s=compile_time,
        steps_per_second=len(self.order) * steps / step_time,
        final_learning_rate=rows[-1][6])
    return Result(label, rows, summary, batch_sha.hexdigest(),
                  _digest(jax.tree.leaves(self.init_params)))
