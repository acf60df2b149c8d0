"""The outputs of a study: its schema, run folders, writers and the reader.

A run writes into a folder of its own: by default a fresh numbered
``run-NNN`` under ``runs/<command>-<task>-<dataset>``; a given ``--out`` must
be new or empty, or hold an earlier run and come with ``--overwrite``, which
removes that run's files (those its ``summary.json`` lists) and nothing else.
Each optimizer's CSV and the updated summaries are written as soon as it
finishes; ``summary.json`` says ``"complete": false`` until the last one has.

Plain Python and numpy (no jax, no flax): `plots` and ``optax-extras plot``
read runs back with `read_run`.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import json
import math
import os
import re
from typing import Any, NamedTuple, Sequence

import numpy as np

# The hypergradient repo's CSV columns; learned hyperparameters follow them.
COLUMNS = ("Epoch", "Iteration", "Time", "Loss", "LossEpoch", "ValidLossEpoch",
           "Alpha", "AlphaEpoch", "Beta")
SUMMARY_COLUMNS = ("optimizer", "train_loss", "valid_loss", "valid_accuracy",
                   "wall_time_s", "compile_time_s", "steps_per_second",
                   "final_learning_rate", "diverged", "diverged_step")
SUMMARY = "summary.json"


class RunDirError(Exception):
  """An output folder that cannot take a run (a file, or another run's)."""


@dataclasses.dataclass
class Result:
  """What training with one optimizer produced.

  Attributes:
    label: the optimizer as written on the command line.
    columns: the CSV header: COLUMNS, then one ``L<level>.<name>`` column per
      learned hyperparameter (level 1 is the model's optimizer).
    rows: the CSV rows, in the order and meaning of `columns`.
    summary: final train loss (mean of the last epoch), valid loss and
      accuracy, wall time (training, evaluation and transfers after
      compilation), compile time, steps per second (of the compiled epochs
      alone), final learning rate, ``diverged`` and ``diverged_step`` (the
      first step whose loss is not finite; training stopped there, and the
      losses and accuracy are NaN).
    batch_digest: SHA-256 of the batch indices this run consumed.
    init_digest: SHA-256 of the initial parameters.
    init_params: the initial parameters (the same for every optimizer).
    final_params: the parameters after the last step.
    final_state: the optimizer state after the last step.
  """

  label: str
  columns: tuple[str, ...]
  rows: list[tuple[Any, ...]]
  summary: dict[str, Any]
  batch_digest: str = ""
  init_digest: str = ""
  init_params: Any = None
  final_params: Any = None
  final_state: Any = None

  def table(self) -> dict[str, np.ndarray]:
    """The rows as one float array per column."""
    values = np.asarray(self.rows, dtype=np.float64).reshape(
        len(self.rows), len(self.columns))
    return dict(zip(self.columns, values.T))


class Curves(NamedTuple):
  """What a figure draws of one optimizer: its label, CSV columns and the
  step it diverged at (None if it did not)."""

  label: str
  columns: dict[str, np.ndarray]
  diverged_step: int | None


def curves(result: Result) -> Curves:
  """What the figures draw of `result`."""
  return Curves(result.label, result.table(), result.summary["diverged_step"])


def file_stem(label: str) -> str:
  """A file name for an optimizer label: `adam/sgd:lr=1e-3/` -> `adam-sgd-lr=1e-3-`."""
  return re.sub(r"[^A-Za-z0-9_.=+-]+", "-", label)


def json_value(value: Any) -> Any:
  """NaN and infinities (a diverged run) as null: JSON has no NaN."""
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def next_run_dir(base: str) -> str:
  """`base`/run-NNN, numbered one past the highest there (not created)."""
  taken = [int(m.group(1)) for path in glob.glob(os.path.join(base, "run-*"))
           if (m := re.fullmatch(r"run-(\d+)", os.path.basename(path)))]
  return os.path.join(base, f"run-{max(taken, default=0) + 1:03d}")


def _clear_earlier_run(out: str) -> None:
  manifest = os.path.join(out, SUMMARY)
  if not os.path.isfile(manifest):
    raise RunDirError(
        f"--out {out} is not empty and holds no {SUMMARY} of an earlier run: "
        "refusing to write into it (--overwrite removes only an earlier "
        "run's files); choose another --out")
  with open(manifest) as f:
    files = json.load(f).get("files", [])
  for name in {os.path.basename(name) for name in files} | {SUMMARY}:
    path = os.path.join(out, name)
    if os.path.isfile(path):
      os.remove(path)


def prepare_out(out: str, overwrite: bool) -> str:
  """Creates the folder a run writes to: see the module docstring.

  Raises:
    RunDirError: `out` is a file, or a non-empty folder without
      `overwrite`, or a non-empty folder no earlier run wrote.
  """
  if os.path.exists(out) and not os.path.isdir(out):
    raise RunDirError(f"--out {out} is a file, not a folder")
  if os.path.isdir(out) and os.listdir(out):
    if not overwrite:
      raise RunDirError(
          f"--out {out} is not empty (an earlier run?): choose another "
          "--out, leave --out out for a fresh numbered folder, or add "
          "--overwrite to remove the earlier run's files first")
    _clear_earlier_run(out)
  os.makedirs(out, exist_ok=True)
  return out


def write_csv(path: str, columns: Sequence[str], rows) -> None:
  """A CSV with header `columns`, NaN for empty entries."""
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(columns)
    writer.writerows(rows)


def read_csv(path: str) -> tuple[list[str], np.ndarray]:
  """A numeric CSV: its header and a (rows, columns) float array."""
  with open(path, newline="") as f:
    reader = csv.reader(f)
    header = next(reader)
    rows = [[float(x) for x in row] for row in reader]
  return header, np.asarray(rows, np.float64).reshape(len(rows), len(header))


class RunWriter:
  """Writes a comparison into `out` as each optimizer finishes."""

  def __init__(self, out: str, config: dict[str, Any]):
    self.out, self.config = out, config
    self.entries: list[dict[str, Any]] = []
    self.files: list[str] = []

  def add(self, result: Result) -> None:
    """Writes `result`'s CSV and the summaries, marked incomplete."""
    name = file_stem(result.label) + ".csv"
    write_csv(os.path.join(self.out, name), result.columns, result.rows)
    self.files.append(name)
    self.entries.append({"optimizer": result.label, **result.summary,
                         "csv": name})
    self.write_summary(complete=False)

  def add_file(self, name: str) -> None:
    """Lists a file (a figure) the run wrote into `out`."""
    self.files.append(name)

  def write_summary(self, complete: bool) -> None:
    """summary.csv and summary.json: config, files, one entry per optimizer."""
    with open(os.path.join(self.out, "summary.csv"), "w", newline="") as f:
      writer = csv.DictWriter(f, SUMMARY_COLUMNS, extrasaction="ignore")
      writer.writeheader()
      writer.writerows(self.entries)
    write_json(self.out, {
        "config": self.config, "complete": complete,
        "files": self.files + ["summary.csv", SUMMARY],
        "results": [{k: json_value(v) for k, v in entry.items()}
                    for entry in self.entries]})


def write_json(out: str, document: dict[str, Any]) -> None:
  """`out`/summary.json; its "files" lists what the run wrote."""
  with open(os.path.join(out, SUMMARY), "w") as f:
    json.dump(document, f, indent=2)


def read_summary(run_dir: str) -> dict[str, Any]:
  """A run's summary.json; RunDirError if `run_dir` holds none."""
  path = os.path.join(run_dir, SUMMARY)
  if not os.path.isfile(path):
    raise RunDirError(f"{run_dir} holds no {SUMMARY}: not a run folder")
  with open(path) as f:
    return json.load(f)


def read_run(run_dir: str) -> list[Curves]:
  """The curves of every optimizer a comparison in `run_dir` finished."""
  runs = []
  for entry in read_summary(run_dir).get("results", []):
    path = os.path.join(run_dir, entry["csv"])
    if not os.path.isfile(path):
      raise RunDirError(f"{path}, listed in {SUMMARY}, is missing")
    header, values = read_csv(path)
    runs.append(Curves(entry["optimizer"], dict(zip(header, values.T)),
                       entry.get("diverged_step")))
  return runs


def _cell(summary: dict[str, Any], key: str, spec: str) -> str:
  if summary["diverged"] and key in ("train_loss", "valid_loss",
                                     "valid_accuracy"):
    return f"diverged@{summary['diverged_step']}" if key == "train_loss" else "-"
  return format(summary[key], spec)


def table(results: Sequence[Result]) -> str:
  """The summary as an aligned text table (a diverged run says its step)."""
  header = ("optimizer", "train loss", "valid loss", "valid acc", "time s",
            "steps/s", "final lr")
  keys = (("train_loss", ".4f"), ("valid_loss", ".4f"),
          ("valid_accuracy", ".4f"), ("wall_time_s", ".1f"),
          ("steps_per_second", ".0f"), ("final_learning_rate", ".4g"))
  body = [(r.label, *(_cell(r.summary, k, spec) for k, spec in keys))
          for r in results]
  return aligned(header, body)


def aligned(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
  """Rows of text cells as a table: first column left, the others right."""
  widths = [max(len(row[i]) for row in [header, *body])
            for i in range(len(header))]
  lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                     for i, (cell, w) in enumerate(zip(row, widths)))
           for row in [header, *body]]
  lines.insert(1, "  ".join("-" * w for w in widths))
  return "\n".join(lines)
