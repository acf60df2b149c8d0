"""The studies as Python functions: `compare` and `sweep`.

Both return what they trained (per-step rows or losses, final results and
the final optimizer states) and, given ``out``, write the same files as the
``optax-extras`` commands, as each optimizer finishes. Options are checked
before anything trains (`options.parse`).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from typing import Any, Sequence

from optax_extras.experiments import data as data_lib
from optax_extras.experiments import options as options_lib
from optax_extras.experiments import plots, results

HIDDEN_SIZE = {"logreg": 0, "mlp": 1000, "cnn": 512}


def _is_integer(value: Any) -> bool:
  """An int or numpy integer, not a bool."""
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


class StudyError(Exception):
  """A bad dataset, data file, output folder or device/batch combination."""


@dataclasses.dataclass(frozen=True)
class Task:
  """The model and data of a study (the command line's options)."""

  task: str = "mlp"
  dataset: str = "digits"
  data_dir: str | None = None
  epochs: int = 50
  batch_size: int = 128
  devices: int = 1
  hidden_size: int | None = None
  hidden_layers: int = 2
  channels: tuple[int, ...] = (32, 64, 128)
  init: str = "torch"

  def __post_init__(self):
    """The checks the command line's options make (StudyError naming the
    field and the value); numpy integers become ints (the config is JSON)."""
    def require(ok: bool, field: str, expected: str) -> None:
      if not ok:
        raise StudyError(f"{field} must be {expected}, got "
                         f"{field}={getattr(self, field)!r}")
    positive = lambda v: _is_integer(v) and v > 0
    require(self.task in options_lib.TASKS, "task",
            f"one of {', '.join(options_lib.TASKS)}")
    require(self.dataset in data_lib.DATASETS, "dataset",
            f"one of {', '.join(data_lib.DATASETS)}")
    require(self.init in options_lib.INITS, "init",
            f"one of {', '.join(options_lib.INITS)}")
    for field in ("epochs", "batch_size", "devices", "hidden_layers"):
      require(positive(getattr(self, field)), field, "an integer >= 1")
    # logreg has no hidden layer: its config says hidden_size 0.
    no_hidden = self.task == "logreg" and _is_integer(self.hidden_size) and (
        self.hidden_size == 0)
    require(self.hidden_size is None or positive(self.hidden_size)
            or no_hidden, "hidden_size",
            "None (the task's default) or an integer >= 1 (0 for logreg)")
    require(isinstance(self.channels, (tuple, list)) and self.channels
            and all(map(positive, self.channels)), "channels",
            "a non-empty sequence of integers >= 1")
    for field in ("epochs", "batch_size", "devices", "hidden_layers"):
      object.__setattr__(self, field, int(getattr(self, field)))
    if self.hidden_size is not None:
      object.__setattr__(self, "hidden_size", int(self.hidden_size))
    object.__setattr__(self, "channels", tuple(map(int, self.channels)))

  def config(self) -> dict[str, Any]:
    return dataclasses.asdict(self) | dict(
        hidden_size=self.hidden_size or HIDDEN_SIZE[self.task])


SEED_LIMIT = 2**32


def check_seeds(seeds: Sequence[int], option: str) -> None:
  """StudyError naming `option` unless `seeds` is a non-empty sequence of
  distinct integers in [0, 2**32): the initial weights take a 32-bit seed,
  so a larger one would repeat one below 2**32."""
  if len(seeds) == 0:
    raise StudyError(f"{option}: give at least one seed")
  for seed in seeds:
    if not (_is_integer(seed) and 0 <= seed < SEED_LIMIT):
      raise StudyError(f"{option}: a seed must be an integer in [0, 2**32), "
                       f"got {seed!r}")
  repeated = sorted({s for s in seeds if list(seeds).count(s) > 1})
  if repeated:
    raise StudyError(f"{option} lists seed {repeated[0]} more than once")


def _load(task: Task):
  try:
    return data_lib.load(task.dataset, task.data_dir)
  except data_lib.DataError as error:
    raise StudyError(str(error)) from None


def _experiment(task: Task, dataset, seed: int):
  from optax_extras.experiments import models, train
  model = models.make(task.task, dataset.train_images.shape[1:],
                      dataset.num_classes,
                      hidden_size=task.hidden_size or HIDDEN_SIZE[task.task],
                      hidden_layers=task.hidden_layers, channels=task.channels,
                      seed=seed, init=task.init)
  try:
    return train.Experiment(model, dataset, batch_size=task.batch_size,
                            epochs=task.epochs, seed=seed,
                            devices=task.devices)
  except ValueError as error:
    raise StudyError(str(error)) from None


def prepare_out(out: str, overwrite: bool) -> str:
  try:
    return results.prepare_out(out, overwrite)
  except results.RunDirError as error:
    raise StudyError(str(error)) from None


@dataclasses.dataclass
class Comparison:
  """What `compare` trained.

  Attributes:
    results: one `results.Result` per optimizer that finished, in order (its
      rows, summary, initial and final params, final optimizer state).
    out: the folder written, or None.
  """

  results: list[results.Result]
  out: str | None


def compare(optimizers: str | Sequence[str] = ",".join(options_lib.PAPER), *,
            seed: int = 1, out: str | None = None, overwrite: bool = False,
            progress: bool = False, **task_options) -> Comparison:
  """Trains one model from the same weights on the same batches with each
  optimizer (``optax-extras compare``).

  Args:
    optimizers: an optimizer list (``"sgd,adam_hd:hypergrad_lr=1e-7"``, see
      `options`), or several.
    seed: initial weights and batch order, in [0, 2**32).
    out: a new or empty folder to write CSVs, summaries and figures to (as
      they finish); None writes nothing.
    overwrite: if `out` holds an earlier run, remove its files first.
    progress: show a progress bar per optimizer.
    **task_options: the fields of `Task` (task, dataset, epochs, init, ...).

  Returns:
    A `Comparison`; on KeyboardInterrupt, the files of the finished
    optimizers are written (summary marked incomplete) and it propagates.

  Raises:
    options.OptimizerError: a bad name, option or value, or no optimizer
      (before training).
    StudyError: a bad seed or `Task` field (checked as the command line
      checks them), bad data, devices or output folder.

  Example:
    >>> run = compare("sgd,adam_hd", epochs=1, hidden_size=8, hidden_layers=1)
    >>> [r.label for r in run.results], run.results[1].columns[-1]
    (['sgd', 'adam_hd'], 'L1.learning_rate')
  """
  from optax_extras.experiments import optimizers as optimizers_lib
  texts = [optimizers] if isinstance(optimizers, str) else list(optimizers)
  choices = options_lib.parse(texts)
  check_seeds([seed], "seed")
  seed = int(seed)
  task = Task(**task_options)
  built = [optimizers_lib.build(c) for c in choices]
  experiment = _experiment(task, _load(task), seed)
  writer = None
  if out is not None:
    out = prepare_out(out, overwrite)
    writer = results.RunWriter(out, dict(command="compare", seed=seed,
                                         optimizers=texts) | task.config())
  finished = []
  try:
    for choice, b in zip(choices, built):
      finished.append(experiment.train(choice.label, b, progress=progress))
      if writer:
        writer.add(finished[-1])
  except KeyboardInterrupt:
    _finish_compare(writer, finished, task, complete=False)
    raise
  _finish_compare(writer, finished, task, complete=True)
  return Comparison(finished, out)


def _finish_compare(writer, finished, task: Task, complete: bool) -> None:
  if writer is None or not finished:
    return
  title = f"{task.task} on {task.dataset}"
  runs = [results.curves(r) for r in finished]
  for name, draw in (("paper.png", plots.plot_paper),
                     ("log_loss.png", plots.plot_log_loss)):
    draw(runs, os.path.join(writer.out, name), title)
    writer.add_file(name)
  writer.write_summary(complete)


# --- sweep -------------------------------------------------------------------

SWEEP_COLUMNS = ("optimizer", "option", "value", "seeds", "train_loss",
                 "train_loss_min", "train_loss_max", "valid_loss",
                 "valid_accuracy", "diverged", "diverged_seeds")


@dataclasses.dataclass
class Sweep:
  """What `sweep` trained.

  Attributes:
    rows: one dict per (optimizer, value), as SWEEP_COLUMNS plus the final
      learned hyperparameters (``L1.learning_rate``, ..., means over seeds).
    points: one dict per (optimizer, seed, value): `Experiment.train_grid`'s
      (every step's loss, final state ...) with "optimizer" and "seed".
    spreads: per optimizer, max/min final training loss over the grid
      (``spread``, inf when a point diverged) and over its non-diverged points
      (``spread_non_diverged``, NaN with fewer than one).
    out: the folder written, or None.
  """

  rows: list[dict[str, Any]]
  points: list[dict[str, Any]]
  spreads: dict[str, dict[str, float]]
  out: str | None


def _row(label: str, option: str, value: float,
         points: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """One sweep row: a grid value's results over its seeds."""
  ok = [p for p in points if not p["diverged"]]
  mean = lambda key: (math.fsum(p[key] for p in ok) / len(ok) if ok
                      else math.nan)
  learned = [k for k in points[0] if "." in k and k.startswith("L")]
  losses = [p["train_loss"] for p in ok]
  return dict(
      optimizer=label, option=option, value=value, seeds=len(points),
      train_loss=mean("train_loss") if len(ok) == len(points) else math.inf,
      train_loss_min=min(losses, default=math.nan),
      train_loss_max=max(losses, default=math.nan),
      valid_loss=mean("valid_loss"), valid_accuracy=mean("valid_accuracy"),
      diverged=len(ok) < len(points), diverged_seeds=len(points) - len(ok),
      **{k: mean(k) for k in learned})


def spread(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
  """max/min final loss over `rows`, and over the non-diverged ones."""
  losses = [r["train_loss"] for r in rows]
  finite = [r["train_loss"] for r in rows if not r["diverged"]]
  return dict(
      spread=max(losses) / min(losses) if min(losses) > 0 else math.inf,
      spread_non_diverged=(max(finite) / min(finite) if finite
                           else math.nan),
      non_diverged_points=len(finite), points=len(rows))


def sweep(optimizers: str | Sequence[str], grid: str = "lr=1e-4:1e-1:7", *,
          seeds: Sequence[int] = (1,), out: str | None = None,
          overwrite: bool = False, progress: bool = False,
          batched: bool = True, **task_options) -> Sweep:
  """Trains every optimizer from every value of a grid of one option, for
  several seeds (``optax-extras sweep``): the gdtuo paper's sensitivity study.

  Args:
    optimizers: an optimizer list (see `options`); the grid's option is set
      on each (on a stack, on the model's level: ``lr`` is its rate).
    grid: ``NAME=LOW:HIGH:N``, N log-spaced values (`options.parse_grid`).
    seeds: distinct seeds in [0, 2**32); each gives its own initial weights
      and batch order; every optimizer and value of a seed shares them.
    out: a new or empty folder for sweep.csv, summary.json and
      robustness.png (written as each optimizer finishes); None: none.
    overwrite: if `out` holds an earlier run, remove its files first.
    progress: one progress bar over the whole grid.
    batched: train the grid's values of one optimizer as one `jax.vmap`-ed
      batch where the transformation allows (`Experiment.train_grid`); False
      trains them one at a time (less memory, one compilation per value).
    **task_options: the fields of `Task`.

  Returns:
    A `Sweep`.

  Raises:
    options.OptimizerError: a bad name, option, grid or value, or no
      optimizer (before training; every grid value is checked against the
      option's range, see `options.parse_grid` and `options.check_grid`).
    StudyError: bad or repeated seeds, a bad `Task` field (checked as the
      command line checks them), bad data, devices or output folder.

  Example:
    >>> run = sweep("sgd", "lr=0.01:1:3", epochs=1, hidden_size=8,
    ...             hidden_layers=1)
    >>> [(row["value"], row["diverged"]) for row in run.rows]
    [(0.01, False), (0.1, False), (1.0, False)]
  """
  import tqdm
  texts = [optimizers] if isinstance(optimizers, str) else list(optimizers)
  choices, parsed = options_lib.parse(texts), options_lib.parse_grid(grid)
  options_lib.check_grid(choices, parsed)
  check_seeds(seeds, "seeds")
  seeds = [int(s) for s in seeds]
  task = Task(**task_options)
  dataset = _load(task)
  experiments = {seed: _experiment(task, dataset, seed) for seed in seeds}
  writer = None
  if out is not None:
    out = prepare_out(out, overwrite)
    writer = SweepWriter(out, parsed.name, dict(
        command="sweep", optimizers=texts, grid=grid, seeds=list(seeds),
        batched=batched)
                         | task.config())
  result = Sweep([], [], {}, out)
  total = len(choices) * len(seeds) * len(parsed.values) * task.epochs
  with tqdm.tqdm(total=total, desc="sweep", unit="run-epoch",
                 disable=None if progress else True) as bar:
    for choice in choices:
      _sweep_one(result, choice, parsed, experiments, bar, batched)
      if writer:
        writer.write(result, complete=False)
  if writer:
    writer.write(result, complete=True)
  return result


def _sweep_one(result: Sweep, choice, grid, experiments, bar, batched) -> None:
  points = []
  for seed, experiment in experiments.items():
    for point in experiment.train_grid(choice, grid.name, grid.values, bar,
                                       batched):
      points.append(dict(optimizer=choice.label, seed=seed) | point)
  rows = [_row(choice.label, grid.name, value,
               [p for p in points if p["value"] == value])
          for value in grid.values]
  result.points += points
  result.rows += rows
  result.spreads[choice.label] = spread(rows)


class SweepWriter:
  """Writes sweep.csv, summary.json and robustness.png into `out`."""

  FILES = ("sweep.csv", "robustness.png", "summary.csv", results.SUMMARY)

  def __init__(self, out: str, option: str, config: dict[str, Any]):
    self.out, self.option, self.config = out, option, config

  def write(self, sweep_result: Sweep, complete: bool) -> None:
    rows = sweep_result.rows
    columns = list(dict.fromkeys(k for row in rows for k in row))
    results.write_csv(os.path.join(self.out, "sweep.csv"), columns,
                      [[row.get(k, math.nan) for k in columns] for row in rows])
    results.write_csv(
        os.path.join(self.out, "summary.csv"),
        ["optimizer", "spread", "spread_non_diverged", "non_diverged_points",
         "points"],
        [[label, *s.values()] for label, s in sweep_result.spreads.items()])
    title = f"{self.config['task']} on {self.config['dataset']}"
    plots.plot_sweep(rows, self.option, os.path.join(self.out,
                                                      "robustness.png"), title)
    spreads = {label: {k: results.json_value(v) for k, v in s.items()}
               for label, s in sweep_result.spreads.items()}
    results.write_json(self.out, dict(
        config=self.config, complete=complete, files=list(self.FILES),
        spreads=spreads))


def read_sweep(run_dir: str) -> tuple[list[dict[str, Any]], str]:
  """A sweep's rows (from sweep.csv) and its option, for `plots.plot_sweep`.

  Raises:
    results.RunDirError: sweep.csv is missing, or not a CSV with the columns
      `plots.plot_sweep` draws (numbers where numbers belong).
  """
  import csv
  path = os.path.join(run_dir, "sweep.csv")
  needed = ("optimizer", "option", "value", "train_loss", "train_loss_min",
            "train_loss_max", "diverged")
  numeric = lambda k, v: v if k in ("optimizer", "option") else (
      v == "True" if k == "diverged" else float(v))
  try:
    with open(path, newline="") as f:
      reader = csv.DictReader(f)
      rows = list(reader)
      missing = [k for k in needed if k not in (reader.fieldnames or ())]
    if missing:
      raise results.RunDirError(
          f"{path} lacks the column(s) {', '.join(missing)}")
    rows = [{k: numeric(k, v) for k, v in row.items()} for row in rows]
  except FileNotFoundError:
    raise results.RunDirError(f"{run_dir} holds no sweep.csv") from None
  except (OSError, UnicodeDecodeError, csv.Error, ValueError,
          TypeError) as error:
    raise results.RunDirError(f"{path} is not a sweep's CSV ({error})") from None
  return rows, rows[0]["option"] if rows else ""
