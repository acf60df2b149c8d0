"""Figures of a study, drawn with matplotlib's Agg canvas (no pyplot).

`plot_paper` is the content of the hypergradient repo's plot.py: learning
rate, training loss and validation loss against epochs (left column), and the
same against iterations on a log axis (right column: plot.py's insets, as
panels of their own so they hide no curve); the rate axis is logarithmic and
the legend sits below the panels. `plot_log_loss` is the notebook's
"Evolution of Optimizers": the training loss of every step, log scale.
`plot_sweep` is the gdtuo paper's robustness plot: final loss against the
initial value of the swept option. A diverged run says so in the legend
(and a diverged grid point is an x on the top edge).

They draw from `results.Curves` (read back from CSVs by `results.read_run`),
so ``optax-extras plot RUN_DIR`` redraws an earlier run.
"""

from __future__ import annotations

import itertools
from typing import Any, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from optax_extras.experiments.results import Curves

# plot.py's colour-blind palette: dim for the baselines, bright for HD.
_DIM = [(213, 167, 103), (163, 85, 114), (104, 59, 130)]
_BRIGHT = [(252, 145, 100), (188, 56, 119), (114, 27, 166)]
_PAPER_COLORS = {
    name: tuple(c / 255 for c in rgb) for name, rgb in zip(
        ("sgd", "sgdn", "adam", "sgd_hd", "sgdn_hd", "adam_hd"), _DIM + _BRIGHT)}
_BASELINES = ("sgd", "sgdn", "adam")


def legend_label(run: Curves) -> str:
  """The run's label, with the step it diverged at."""
  if run.diverged_step is None:
    return run.label
  return f"{run.label} (diverged at step {run.diverged_step})"


def _styles(labels: Sequence[str]) -> list[dict]:
  """plot.py's colour for the first run of each of the paper's six, a tab10
  (tab20 past ten) colour for every other run; dashed baselines."""
  names = [label.split(":")[0] for label in labels]
  paper = {name: i for i, name in reversed(list(enumerate(names)))
           if name in _PAPER_COLORS}
  count = len(names) - len(paper)
  others = itertools.cycle(colormaps["tab10" if count <= 10 else "tab20"].colors)
  return [dict(color=_PAPER_COLORS[name] if paper.get(name) == i
               else next(others),
               linestyle="--" if name in _BASELINES else "-")
          for i, name in enumerate(names)]


def _legend_below(fig: Figure, ax, columns: int = 2) -> None:
  handles, labels = ax.get_legend_handles_labels()
  order = sorted(range(len(labels)), key=labels.__getitem__)
  fig.legend([handles[i] for i in order], [labels[i] for i in order],
             loc="outside lower center", ncols=columns, fontsize="small",
             frameon=False)


_PANELS = (("Learning rate", "AlphaEpoch", "Alpha"),
           ("Training loss", "LossEpoch", "Loss"),
           ("Validation loss", "ValidLossEpoch", "ValidLossEpoch"))


def plot_paper(runs: Sequence[Curves], path: str, title: str) -> None:
  """Learning rate, training and validation loss per epoch and per iteration."""
  fig = Figure(figsize=(10, 11), layout="constrained")
  axes = fig.subplots(3, 2, sharex="col")
  styles = _styles([run.label for run in runs])
  for row, (ylabel, epoch_column, iteration_column) in zip(axes, _PANELS):
    for run, style in zip(runs, styles):
      columns = run.columns
      at_epoch = ~np.isnan(columns[epoch_column])
      row[0].plot(columns["Epoch"][at_epoch], columns[epoch_column][at_epoch],
                  label=legend_label(run), **style)
      shown = ~np.isnan(columns[iteration_column]) & (columns["Iteration"] > 0)
      row[1].plot(columns["Iteration"][shown], columns[iteration_column][shown],
                  **style)
    row[0].set_ylabel(ylabel)
    row[0].xaxis.set_major_locator(MaxNLocator(integer=True))
    row[1].set_xscale("log")
    for ax in row:
      ax.set_yscale("log")
      ax.grid(True, which="both", alpha=0.3)
  axes[0, 0].set_title(f"{title}: per epoch")
  axes[0, 1].set_title("per iteration")
  axes[-1, 0].set_xlabel("Epoch")
  axes[-1, 1].set_xlabel("Iteration")
  _legend_below(fig, axes[0, 0])
  fig.savefig(path, dpi=100)


def plot_log_loss(runs: Sequence[Curves], path: str, title: str) -> None:
  """Training loss of every iteration on a log scale, one line each."""
  fig = Figure(figsize=(15, 7), layout="constrained")
  ax = fig.subplots()
  for run, style in zip(runs, _styles([run.label for run in runs])):
    steps = run.columns["Iteration"] > 0
    ax.plot(run.columns["Iteration"][steps], run.columns["Loss"][steps],
            linewidth=1, label=legend_label(run), **style)
  ax.set_yscale("log")
  ax.set_xlabel("Iteration")
  ax.set_ylabel("Training loss (log scale)")
  ax.set_title(title)
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1))
  fig.savefig(path, dpi=100)


def plot_sweep(rows: Sequence[dict[str, Any]], option: str, path: str,
               title: str) -> None:
  """Final training loss against the initial value of `option` (log axes):
  the mean over seeds, shaded between the seeds' min and max; a point where
  a seed diverged is an x on the top edge."""
  fig = Figure(figsize=(9, 6), layout="constrained")
  ax = fig.subplots()
  labels = list(dict.fromkeys(row["optimizer"] for row in rows))
  for label, style in zip(labels, _styles(labels)):
    own = [row for row in rows if row["optimizer"] == label]
    values = np.array([row["value"] for row in own])
    ok = np.array([not row["diverged"] for row in own])
    mean = np.array([row["train_loss"] for row in own], np.float64)
    low = np.array([row["train_loss_min"] for row in own], np.float64)
    high = np.array([row["train_loss_max"] for row in own], np.float64)
    line, = ax.plot(values[ok], mean[ok], marker="o", label=label, **style)
    ax.fill_between(values[ok], low[ok], high[ok], color=line.get_color(),
                    alpha=0.15, linewidth=0)
    ax.plot(values[~ok], np.ones((~ok).sum()), "x", color=line.get_color(),
            transform=ax.get_xaxis_transform(), clip_on=False, markersize=9)
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel(f"initial {option} (log scale)")
  ax.set_ylabel("final training loss (log scale)")
  ax.set_title(f"{title}: x = diverged")
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1))
  fig.savefig(path, dpi=100)
