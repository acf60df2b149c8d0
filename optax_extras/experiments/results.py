"""The outputs of a study: its schema, run folders, writers and the reader.

A run writes into a folder of its own: by default a fresh numbered
``run-NNN`` under ``runs/<command>-<task>-<dataset>``, claimed atomically
(`claim_run_dir`); a given ``--out`` must be new or empty, or hold an earlier
run and come with ``--overwrite``, which removes that run's files (those its
``summary.json`` lists, each a plain file name inside the folder) and nothing
else. A summary.json or CSV that is not as a run writes it is a `RunDirError`.
Each optimizer's CSV and the updated summaries are written as soon as it
finishes; ``summary.json`` says ``"complete": false`` until the last one has.

Plain Python and numpy (no jax, no flax): `plots` and ``optax-extras plot``
read runs back with `read_run`.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
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
  """A file name for an optimizer label: `adam/sgd:lr=1e-3/` -> `adam-sgd-lr=1e-3-`.

  Several labels can give the same stem (runs of separators collapse);
  `RunWriter` adds a hash of the label to a stem already taken.
  """
  return re.sub(r"[^A-Za-z0-9_.=+-]+", "-", label)


def json_value(value: Any) -> Any:
  """NaN and infinities (a diverged run) as null: JSON has no NaN."""
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def claim_run_dir(base: str) -> str:
  """Creates and returns `base`/run-NNN, numbered one past the highest there.

  The folder is claimed with `os.mkdir`, which fails if it exists: a run
  started at the same time that took the number first makes this one try the
  next, so concurrent runs never share a folder.

  Raises:
    RunDirError: `base` cannot be created or written to.
  """
  try:
    os.makedirs(base, exist_ok=True)
    taken = [int(m.group(1)) for name in os.listdir(base)
             if (m := re.fullmatch(r"run-(\d+)", name))]
    number = max(taken, default=0) + 1
    while True:
      path = os.path.join(base, f"run-{number:03d}")
      try:
        os.mkdir(path)
        return path
      except FileExistsError:
        number += 1
  except OSError as error:
    raise RunDirError(f"cannot create a run folder in {base} "
                      f"({error.strerror or error}); give --out") from None


def _is_file_name(name: Any) -> bool:
  """Whether `name` is a plain file name (no folder part, not . or ..)."""
  return (isinstance(name, str) and name not in ("", ".", "..")
          and os.path.basename(name) == name
          and not (os.path.altsep and os.path.altsep in name))


def _member(run_dir: str, name: Any) -> str:
  """The path of file `name` that `run_dir`'s summary.json lists; RunDirError
  unless it is a plain file name whose path stays inside `run_dir` (a link
  pointing out of the folder is refused too)."""
  path = os.path.join(run_dir, name) if _is_file_name(name) else None
  if path is None or os.path.dirname(os.path.realpath(path)) != (
      os.path.realpath(run_dir)):
    raise RunDirError(f"{run_dir}/{SUMMARY} is damaged: it lists {name!r}, "
                      "which is not a file name inside the run folder")
  return path


def _earlier_run_files(out: str) -> list[str]:
  """The paths of the files the earlier run in `out` wrote (summary.json
  last), each checked to be a plain file name inside `out`."""
  if not os.path.isfile(os.path.join(out, SUMMARY)):
    raise RunDirError(
        f"--out {out} is not empty and holds no {SUMMARY} of an earlier run: "
        "refusing to write into it (--overwrite removes only an earlier "
        "run's files); choose another --out")
  paths = [_member(out, name) for name in read_summary(out)["files"]]
  return [p for p in paths if p != os.path.join(out, SUMMARY)] + [
      os.path.join(out, SUMMARY)]


def check_out(out: str, overwrite: bool) -> list[str]:
  """The checks of `prepare_out`, changing nothing; the paths it would
  remove (an earlier run's files, with `overwrite`).

  Whether the folder can be created is checked on the closest folder that
  exists (a folder, writable); `prepare_out` may still fail where creating
  it fails for another reason.

  Raises:
    RunDirError: as `prepare_out`.
  """
  if not out:
    raise RunDirError("--out is empty: give a folder, or leave --out out for "
                      "a fresh numbered one")
  try:
    if os.path.exists(out) and not os.path.isdir(out):
      raise RunDirError(f"--out {out} is a file, not a folder")
    if os.path.isdir(out) and os.listdir(out):
      if not overwrite:
        raise RunDirError(
            f"--out {out} is not empty (an earlier run?): choose another "
            "--out, leave --out out for a fresh numbered folder, or add "
            "--overwrite to remove the earlier run's files first")
      return _earlier_run_files(out)
    closest = os.path.abspath(out)
    while not os.path.lexists(closest):
      closest = os.path.dirname(closest)
    if not os.path.isdir(closest):
      raise RunDirError(f"--out {out}: cannot use it as the output folder "
                        f"({closest} is not a folder)")
    if not os.access(closest, os.W_OK | os.X_OK):
      raise RunDirError(f"--out {out}: cannot use it as the output folder "
                        f"(permission denied on {closest})")
  except OSError as error:
    raise RunDirError(f"--out {out}: cannot use it as the output folder "
                      f"({error.strerror or error})") from None
  return []


def prepare_out(out: str, overwrite: bool) -> str:
  """Creates the folder a run writes to: see the module docstring.

  Raises:
    RunDirError: `out` is empty text, a file, a folder that cannot be
      created or written to (the reason is said), a non-empty folder without
      `overwrite`, or a non-empty folder no earlier run wrote (or whose
      summary.json is damaged).
  """
  remove = check_out(out, overwrite)
  try:
    for path in remove:
      if os.path.isfile(path) or os.path.islink(path):
        os.remove(path)
    os.makedirs(out, exist_ok=True)
  except OSError as error:
    raise RunDirError(f"--out {out}: cannot use it as the output folder "
                      f"({error.strerror or error})") from None
  return out


def write_csv(path: str, columns: Sequence[str], rows) -> None:
  """A CSV with header `columns`, NaN for empty entries."""
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(columns)
    writer.writerows(rows)


def read_csv(path: str) -> tuple[list[str], np.ndarray]:
  """A numeric CSV: its header and a (rows, columns) float array.

  Raises:
    RunDirError: the file cannot be read, has no header, or a row that is
      not as long as the header or holds a non-number.
  """
  try:
    with open(path, newline="") as f:
      reader = csv.reader(f)
      header, rows = next(reader), []
      for row in reader:
        if len(row) != len(header):
          raise RunDirError(f"{path}: line {reader.line_num} has {len(row)} "
                            f"values, the header {len(header)}")
        rows.append([float(x) for x in row])
    return header, np.asarray(rows, np.float64).reshape(len(rows), len(header))
  except StopIteration:
    raise RunDirError(f"{path} is empty: expected a header row") from None
  except (OSError, UnicodeDecodeError, csv.Error, ValueError) as error:
    raise RunDirError(f"{path} is not a CSV of numbers under a header "
                      f"({error})") from None


class RunWriter:
  """Writes a comparison into `out` as each optimizer finishes."""

  def __init__(self, out: str, config: dict[str, Any]):
    self.out, self.config = out, config
    self.entries: list[dict[str, Any]] = []
    self.files: list[str] = []

  def add(self, result: Result) -> None:
    """Writes `result`'s CSV and the summaries, marked incomplete.

    The CSV is named by `file_stem`; if an earlier optimizer of the run took
    that name, the first 8 hex digits of the label's SHA-256 are added.
    """
    name = file_stem(result.label) + ".csv"
    if name in self.files:
      digest = hashlib.sha256(result.label.encode()).hexdigest()[:8]
      name = f"{file_stem(result.label)}-{digest}.csv"
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
  """A run's summary.json, checked: an object whose "config" is an object,
  "files" a list of file names and "results" (if there) a list of objects,
  each with text "optimizer" and "csv".

  Raises:
    RunDirError: `run_dir` holds no summary.json, or one that does not load
      or is not as above.
  """
  path = os.path.join(run_dir, SUMMARY)
  if not os.path.isfile(path):
    raise RunDirError(f"{run_dir} holds no {SUMMARY}: not a run folder")
  try:
    with open(path, encoding="utf-8") as f:
      summary = json.load(f)
  except (OSError, ValueError) as error:  # JSONDecodeError, UnicodeDecodeError
    raise RunDirError(f"{path} does not load as JSON ({error})") from None
  entries = summary.get("results", []) if isinstance(summary, dict) else None
  if not (isinstance(summary, dict)
          and isinstance(summary.get("config"), dict)
          and isinstance(summary.get("files"), list)
          and all(_is_file_name(name) for name in summary["files"])
          and isinstance(entries, list)
          and all(isinstance(e, dict) and isinstance(e.get("optimizer"), str)
                  and _is_file_name(e.get("csv")) for e in entries)):
    raise RunDirError(
        f"{path} is damaged: expected an object with \"config\" (an object), "
        "\"files\" (a list of file names) and \"results\" (a list of objects "
        "with \"optimizer\" and \"csv\"), as a run writes it")
  return summary


def read_run(run_dir: str) -> list[Curves]:
  """The curves of every optimizer a comparison in `run_dir` finished.

  Raises:
    RunDirError: a damaged summary.json, or a CSV it lists that is missing,
      outside `run_dir`, malformed or without the COLUMNS.
  """
  runs = []
  for entry in read_summary(run_dir).get("results", []):
    path = _member(run_dir, entry["csv"])
    if not os.path.isfile(path):
      raise RunDirError(f"{path}, listed in {SUMMARY}, is missing")
    header, values = read_csv(path)
    missing = [c for c in COLUMNS if c not in header]
    if missing:
      raise RunDirError(f"{path} lacks the column(s) {', '.join(missing)}")
    step = entry.get("diverged_step")
    runs.append(Curves(entry["optimizer"], dict(zip(header, values.T)),
                       step if isinstance(step, int) else None))
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
