"""Writing a comparison: one CSV per optimizer, summary.csv/json, a table."""

from __future__ import annotations

import csv
import json
import math
import os
import re
from typing import Any, Sequence

from optax_extras.experiments.train import COLUMNS, Result

SUMMARY_COLUMNS = ("optimizer", "train_loss", "valid_loss", "valid_accuracy",
                   "wall_time_s", "compile_time_s", "steps_per_second",
                   "final_learning_rate")


def file_stem(label: str) -> str:
  """A file name for an optimizer label: `adam/sgd:lr=1e-3/` -> `adam-sgd-lr=1e-3-`."""
  return re.sub(r"[^A-Za-z0-9_.=+-]+", "-", label)


def write_csv(result: Result, path: str) -> None:
  """The hypergradient repo's CSV: header COLUMNS, NaN for empty entries."""
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(COLUMNS)
    writer.writerows(result.rows)


def summary_rows(results: Sequence[Result]) -> list[dict[str, Any]]:
  """One dict per optimizer: its label and summary, as SUMMARY_COLUMNS."""
  return [{"optimizer": r.label, **r.summary} for r in results]


def _json_value(value: Any) -> Any:
  """NaN and infinities (a diverged run) as null: JSON has no NaN."""
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def write_all(results: Sequence[Result], out: str,
              config: dict[str, Any]) -> dict[str, str]:
  """Writes every CSV and the summaries into `out`; returns the CSV paths."""
  os.makedirs(out, exist_ok=True)
  paths = {}
  for result in results:
    paths[result.label] = os.path.join(out, file_stem(result.label) + ".csv")
    write_csv(result, paths[result.label])
  rows = summary_rows(results)
  with open(os.path.join(out, "summary.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, SUMMARY_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
  entries = [{k: _json_value(v) for k, v in row.items()}
             | {"csv": os.path.basename(paths[row["optimizer"]])}
             for row in rows]
  with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump({"config": config, "results": entries}, f, indent=2)
  return paths


def table(results: Sequence[Result]) -> str:
  """The summary as an aligned text table."""
  header = ("optimizer", "train loss", "valid loss", "valid acc", "time s",
            "steps/s", "final lr")
  body = [(r.label, f"{s['train_loss']:.4f}", f"{s['valid_loss']:.4f}",
           f"{s['valid_accuracy']:.4f}", f"{s['wall_time_s']:.1f}",
           f"{s['steps_per_second']:.0f}", f"{s['final_learning_rate']:.4g}")
          for r in results for s in [r.summary]]
  widths = [max(len(row[i]) for row in [header, *body])
            for i in range(len(header))]
  lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                     for i, (cell, w) in enumerate(zip(row, widths)))
           for row in [header, *body]]
  lines.insert(1, "  ".join("-" * w for w in widths))
  return "\n".join(lines)
