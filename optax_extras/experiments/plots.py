"""Figures of a comparison, drawn with matplotlib's Agg canvas (no pyplot).

`plot_paper` is the layout of the hypergradient repo's plot.py: learning
rate, training loss and validation loss against epochs, stacked, each with an
inset against iterations on a log axis. `plot_log_loss` is the notebook's
"Evolution of Optimizers": the training loss of every step, log scale.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from optax_extras.experiments.train import COLUMNS, Result

# plot.py's colour-blind palette: dim for the baselines, bright for HD.
_DIM = [(213, 167, 103), (163, 85, 114), (104, 59, 130)]
_BRIGHT = [(252, 145, 100), (188, 56, 119), (114, 27, 166)]
_PAPER_COLORS = {
    name: tuple(c / 255 for c in rgb) for name, rgb in zip(
        ("sgd", "sgdn", "adam", "sgd_hd", "sgdn_hd", "adam_hd"), _DIM + _BRIGHT)}
_BASELINES = ("sgd", "sgdn", "adam")


def _columns(result: Result) -> dict[str, np.ndarray]:
  table = np.asarray(result.rows, dtype=np.float64)
  return dict(zip(COLUMNS, table.T))


def _styles(results: Sequence[Result]) -> list[dict]:
  names = [result.label.split(":")[0] for result in results]
  count = sum(name not in _PAPER_COLORS for name in names)
  others = itertools.cycle(colormaps["tab10" if count <= 10 else "tab20"].colors)
  return [dict(label=result.label,
               color=_PAPER_COLORS.get(name) or next(others),
               linestyle="--" if name in _BASELINES else "-")
          for result, name in zip(results, names)]


def plot_paper(results: Sequence[Result], path: str, title: str) -> None:
  """Learning rate, training and validation loss per epoch, with insets."""
  fig = Figure(figsize=(5, 12))
  panels = (("Learning rate", "AlphaEpoch", "Alpha", False),
            ("Training loss", "LossEpoch", "Loss", True),
            ("Validation loss", "ValidLossEpoch", "ValidLossEpoch", True))
  axes = fig.subplots(3, 1, sharex=True)
  data = [_columns(r) for r in results]
  styles = _styles(results)
  for ax, (ylabel, epoch_column, iteration_column, log) in zip(axes, panels):
    inset = ax.inset_axes([0.47, 0.58, 0.5, 0.38])
    for columns, style in zip(data, styles):
      at_epoch = ~np.isnan(columns["LossEpoch"])
      ax.plot(columns["Epoch"][at_epoch], columns[epoch_column][at_epoch],
              **style)
      shown = ~np.isnan(columns[iteration_column]) & (columns["Iteration"] > 0)
      inset.plot(columns["Iteration"][shown], columns[iteration_column][shown],
                 **style)
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True)
    inset.set_xscale("log")
    inset.set_xlabel("Iteration", fontsize="small")
    inset.tick_params(labelsize="x-small")
    inset.grid(True)
    if log:
      ax.set_yscale("log")
  axes[0].set_title(title)
  axes[-1].set_xlabel("Epoch")
  handles, labels = axes[-1].get_legend_handles_labels()
  order = sorted(range(len(labels)), key=labels.__getitem__)
  axes[-1].legend([handles[i] for i in order], [labels[i] for i in order],
                  loc="lower left", framealpha=1, edgecolor="black",
                  fancybox=False, fontsize="small")
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def plot_log_loss(results: Sequence[Result], path: str, title: str) -> None:
  """Training loss of every iteration on a log scale, one line each."""
  fig = Figure(figsize=(15, 7))
  ax = fig.subplots()
  for result, style in zip(results, _styles(results)):
    columns = _columns(result)
    steps = columns["Iteration"] > 0
    ax.plot(columns["Iteration"][steps], columns["Loss"][steps], linewidth=1,
            **style)
  ax.set_yscale("log")
  ax.set_xlabel("Iteration")
  ax.set_ylabel("Training loss (log scale)")
  ax.set_title(title)
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1))
  fig.tight_layout()
  fig.savefig(path, dpi=100)
