"""Training one model with each optimizer of a study, in lockstep data.

Every optimizer starts from the same weights and sees the same batch-index
stream (`batch_indices`), so curves differ by the optimizer only. An epoch is
one compiled `jax.lax.scan` over its batches; with several devices the batch
axis is sharded over a one-axis mesh and the parameters are replicated.

A run whose loss turns non-finite stops at the end of that epoch's compiled
scan; its rows end at the first non-finite step and it is marked diverged.
`Experiment.train_grid` trains one optimizer from several values of one
option at once, `jax.vmap`-ed over the values (see its docstring).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from optax_extras.experiments import data as data_lib
from optax_extras.experiments import optimizers
from optax_extras.experiments import options
from optax_extras.experiments.options import Choice
from optax_extras.experiments.results import COLUMNS, Result

EVAL_CHUNK = 1000


def batch_indices(num_examples: int, batch_size: int, epochs: int,
                  seed: int) -> np.ndarray:
  """The batch-index stream, shape (epochs, steps, batch_size).

  One permutation of the training set per epoch from `seed`; the last
  incomplete batch of each epoch is dropped (train.py keeps it), so that every
  step has the same shape and the epoch compiles once.
  """
  if epochs < 1:
    raise ValueError(f"epochs must be >= 1, got epochs={epochs}.")
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


def _scalar(value) -> jax.Array:
  """A logged hyperparameter: a per-leaf tree is logged as its mean."""
  leaves = [jnp.mean(leaf) for leaf in jax.tree.leaves(value)]
  return jnp.mean(jnp.stack(leaves)) if len(leaves) > 1 else leaves[0]


def first_non_finite(losses: np.ndarray) -> int | None:
  """The index of the first loss that is NaN or infinite, or None."""
  bad = np.flatnonzero(~np.isfinite(losses))
  return int(bad[0]) if bad.size else None


@dataclasses.dataclass
class _Log:
  """Rows of one run, filled epoch by epoch (see `Experiment.train`)."""

  beta: float
  rows: list = dataclasses.field(default_factory=list)
  diverged_step: int | None = None

  def add_epoch(self, epoch: int, losses, rates, learned, valid_loss,
                times) -> None:
    steps = len(losses)
    stop = first_non_finite(losses)
    if stop is not None:
      self.diverged_step = epoch * steps + stop + 1
    for i in range(steps if stop is None else stop + 1):
      last = i == steps - 1
      self.rows.append((
          epoch + 1, epoch * steps + i + 1, float(times[i]), float(losses[i]),
          float(losses.mean()) if last else math.nan,
          valid_loss if last else math.nan, float(rates[i]),
          float(rates.mean()) if last else math.nan, self.beta,
          *(float(v[i]) for v in learned.values())))


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

  @property
  def steps(self) -> int:
    """Steps per epoch."""
    return self.order.shape[1]

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

  def _scan_epoch(self, tx, built: optimizers.Built, params, opt_state, images,
                  labels):
    def step(carry, batch):
      params, opt_state = carry
      loss, grads = jax.value_and_grad(
          lambda p: self._loss(p, *batch)[0].mean())(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      params = optax.apply_updates(params, updates)
      learned = {k: _scalar(v) for k, v in built.learned(opt_state).items()}
      return (params, opt_state), (loss, built.rate(opt_state), learned)

    (params, opt_state), logs = jax.lax.scan(
        step, (params, opt_state), (images, labels))
    return params, opt_state, logs

  def _epoch_fn(self, built: optimizers.Built):
    epoch = lambda *args: self._scan_epoch(built.tx, built, *args)
    return jax.jit(epoch, donate_argnums=(0, 1),
                   out_shardings=self.replicated)

  def _batches(self, epoch: int):
    indices = self.order[epoch]
    return jax.device_put((self.dataset.train_images[indices],
                           self.dataset.train_labels[indices]), self.batched)

  def _first_row(self, built: optimizers.Built, params, opt_state):
    """Epoch 0: the first batch's loss and the validation loss before
    training, the initial rate and learned hyperparameters."""
    images, labels = self._batches(0)
    loss0, _ = self._evaluate(params, images[:1], labels[:1],
                              jnp.ones(labels[:1].shape, jnp.float32))
    loss0 = float(loss0) / labels.shape[1]
    valid_loss, _ = self.evaluate(params)
    rate0 = float(built.rate(opt_state))
    learned0 = [float(_scalar(v)) for v in built.learned(opt_state).values()]
    return (0, 0, 0.0, loss0, loss0, valid_loss, rate0, rate0, built.beta,
            *learned0)

  def train(self, label: str, built: optimizers.Built,
            progress: bool = True) -> Result:
    """Trains from the shared initial weights with one optimizer.

    Rows follow train.py: epoch 0 holds the loss of the first batch and the
    validation loss before training; then one row per step (Loss, Alpha: the
    learning rate of that step) with LossEpoch, ValidLossEpoch and AlphaEpoch
    NaN except on an epoch's last step, where they hold the epoch's means and
    the validation loss. Iteration counts steps (train.py's counter is one
    ahead). Time within an epoch is interpolated linearly, since the epoch
    runs as one compiled call. The learned hyperparameters of every level
    follow, one column each.
    """
    params = jax.device_put(self.init_params, self.replicated)
    opt_state = jax.device_put(built.tx.init(params), self.replicated)
    log = _Log(built.beta, [self._first_row(built, params, opt_state)])
    images, labels = self._batches(0)
    compile_start = time.perf_counter()
    epoch_fn = self._epoch_fn(built).lower(
        params, opt_state, images, labels).compile()
    compile_time = time.perf_counter() - compile_start
    batch_sha = hashlib.sha256()
    step_time = elapsed = 0.0
    valid_loss = accuracy = math.nan
    start = time.perf_counter()
    with tqdm.tqdm(total=len(self.order), desc=label, unit="epoch",
                   disable=None if progress else True) as bar:
      for epoch in range(len(self.order)):
        if epoch:
          images, labels = self._batches(epoch)
        batch_sha.update(self.order[epoch].tobytes())
        step_start = time.perf_counter()
        params, opt_state, (losses, rates, learned) = jax.device_get(
            epoch_fn(params, opt_state, images, labels))
        step_time += time.perf_counter() - step_start
        valid_loss, accuracy = (
            self.evaluate(params) if first_non_finite(losses) is None
            else (math.nan, math.nan))
        previous, elapsed = elapsed, time.perf_counter() - start
        times = previous + (elapsed - previous) * np.arange(
            1, self.steps + 1) / self.steps
        log.add_epoch(epoch, losses, rates, learned, valid_loss, times)
        bar.set_postfix(dict(loss=f"{losses.mean():.4f}",
                             valid=f"{valid_loss:.4f}", lr=f"{rates[-1]:.4g}"),
                        refresh=False)
        bar.update()
        if log.diverged_step is not None:
          break
    summary = self._summary(log, valid_loss, accuracy, elapsed, compile_time,
                            (epoch + 1) * self.steps / step_time)
    return Result(label, COLUMNS + tuple(built.learned(opt_state)), log.rows,
                  summary, batch_sha.hexdigest(),
                  _digest(jax.tree.leaves(self.init_params)),
                  self.init_params, params, opt_state)

  @staticmethod
  def _summary(log: _Log, valid_loss, accuracy, elapsed, compile_time,
               steps_per_second) -> dict[str, Any]:
    diverged = log.diverged_step is not None
    return dict(
        train_loss=math.nan if diverged else log.rows[-1][4],
        valid_loss=math.nan if diverged else valid_loss,
        valid_accuracy=math.nan if diverged else accuracy,
        wall_time_s=elapsed, compile_time_s=compile_time,
        steps_per_second=steps_per_second, final_learning_rate=log.rows[-1][6],
        diverged=diverged, diverged_step=log.diverged_step)

  # --- a grid of values of one option ---------------------------------------

  def _grid_groups(self, choice: Choice, key: str, values: Sequence[float],
                   batched: bool = True):
    """How to train the grid: (values, tx of a value) groups, each one
    vmapped batch. Flat optimizers take the value traced, so the whole grid
    is one batch; a stack takes its learned hyperparameters' initial values
    from its state only, so one transformation serves the whole grid; any
    other option of a stack is closed over, so each value is its own batch
    (one compilation each), as every value is when not `batched`."""
    one_each = [((value,), lambda _, tx=optimizers.build(
        choice.with_option(key, value)).tx: tx) for value in values]
    if not batched:
      return one_each
    if not choice.is_stack:
      return [(tuple(values),
               lambda value: optimizers.build_traced(choice, key, value))]
    built = optimizers.build(choice.with_option(key, values[0]))
    names = options.LEVELS[choice.levels[0]][1]
    if f"L1.{names[key]}" in built.learned(built.tx.init(self.init_params)):
      return [(tuple(values), lambda value: built.tx)]
    return one_each

  def _grid_epoch_fn(self, tx_of: Callable[[Any], Any],
                     built: optimizers.Built):
    def one(value, params, opt_state, images, labels):
      return self._scan_epoch(tx_of(value), built, params, opt_state, images,
                              labels)

    return jax.jit(jax.vmap(one, in_axes=(0, 0, 0, None, None)),
                   donate_argnums=(1, 2), out_shardings=self.replicated)

  def train_grid(self, choice: Choice, key: str, values: Sequence[float],
                 bar: tqdm.tqdm | None = None,
                 batched: bool = True) -> list[dict[str, Any]]:
    """Trains `choice` from every value of option `key`, batched.

    Each batch of values (see `_grid_groups`) runs as one `jax.vmap`-ed,
    compiled epoch: params and optimizer states carry a leading axis of the
    batch size (memory: that many copies of params and state), the data is
    shared. A diverged value keeps computing NaN until its batch ends (the
    others go on); its result is marked diverged at its first non-finite
    step. With `batched` False every value is its own batch of one: one
    compilation per value, one copy of params and state in memory.

    Returns:
      One dict per value, in order: value, train_loss (mean of the last
      epoch; inf if diverged), valid_loss, valid_accuracy, diverged,
      diverged_step, losses (every step's), the final learned
      hyperparameters (``L1.learning_rate`` ...) and final_state.
    """
    points = []
    for group, tx_of in self._grid_groups(choice, key, values, batched):
      points += self._train_batch(choice, key, group, tx_of, bar)
    return points

  def _init_batch(self, choice: Choice, key: str, values):
    states = [optimizers.build(choice.with_option(key, v)).tx.init(
        self.init_params) for v in values]
    stack = lambda *leaves: jnp.stack(leaves)
    params = jax.tree.map(lambda x: jnp.stack([x] * len(values)),
                          self.init_params)
    return jax.device_put((params, jax.tree.map(stack, *states)),
                          self.replicated)

  def _train_batch(self, choice, key, values, tx_of, bar):
    built = optimizers.build(choice.with_option(key, values[0]))
    params, opt_state = self._init_batch(choice, key, values)
    epoch_fn = self._grid_epoch_fn(tx_of, built)
    value_array = jnp.asarray(values, jnp.float32)
    losses, learned = [], None
    for epoch in range(len(self.order)):
      params, opt_state, (epoch_losses, _, learned) = epoch_fn(
          value_array, params, opt_state, *self._batches(epoch))
      losses.append(np.asarray(epoch_losses))
      if bar is not None:
        bar.update(len(values))
      if all(first_non_finite(l) is not None for l in losses[-1]):
        break  # every value diverged: nothing left to learn
    if bar is not None:
      bar.update(len(values) * (len(self.order) - len(losses)))
    losses = np.concatenate(losses, axis=1)
    valid = [self.evaluate(jax.tree.map(lambda x: x[i], params))
             for i in range(len(values))]
    learned = {k: np.asarray(v)[:, -1] for k, v in learned.items()}
    return [self._point(values[i], losses[i], valid[i],
                        {k: float(v[i]) for k, v in learned.items()},
                        jax.tree.map(lambda x: x[i], opt_state))
            for i in range(len(values))]

  def _point(self, value, losses, valid, learned, state) -> dict[str, Any]:
    stop = first_non_finite(losses)
    diverged = stop is not None
    last_epoch = losses[-self.steps:]
    return dict(
        value=value,
        train_loss=math.inf if diverged else float(last_epoch.mean()),
        valid_loss=math.inf if diverged else valid[0],
        valid_accuracy=math.nan if diverged else valid[1],
        diverged=diverged, diverged_step=None if stop is None else stop + 1,
        losses=losses, final_state=state, **learned)
