"""`optax-extras compare`: the seed experiments, every optimizer on one task.

Trains one model from the same initial weights on the same batches with each
optimizer, shows a progress bar per optimizer, and writes to --out one CSV per
optimizer (the hypergradient repo's columns), summary.csv, summary.json,
paper.png (plot.py's layout) and log_loss.png (the notebook's curves), then
prints the summary.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from optax_extras.experiments import optimizers

DEFAULT_EPOCHS = 50
HIDDEN_SIZE = {"logreg": 0, "mlp": 1000, "cnn": 512}

_EPILOG = """\
optimizer lists (--optimizers):
  comma-separated names, each optionally followed by :key=value,key=value
    --optimizers sgd,adam_hd:lr=0.001,hypergrad_lr=1e-7,adam
  stacks as in the gdtuo paper, the model's optimizer first; a stack option
  takes one value per level separated by '/', empty keeps the default
    --optimizers adam/sgd:lr=0.001/1e-5 sgd/sgd/sgd rmsprop/adam:gamma=0.9/
  weight_decay is coupled L2 (added to the gradient, as torch's). The Alpha
  column and the final lr are the learned rate for *_hd and stacks.

optimizers and their default options:
"""


def _positive_int(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
  if value < 1:
    raise argparse.ArgumentTypeError(f"{value} is not >= 1")
  return value


def _channels(text: str) -> tuple[int, ...]:
  try:
    return tuple(_positive_int(c) for c in text.split(","))
  except argparse.ArgumentTypeError:
    raise argparse.ArgumentTypeError(
        f"{text!r} is not a comma-separated list of positive integers"
    ) from None


def parser() -> argparse.ArgumentParser:
  from optax_extras.experiments import data, models
  top = argparse.ArgumentParser(
      prog="optax-extras", description="Experiments of optax-extras.")
  commands = top.add_subparsers(dest="command", required=True)
  compare = commands.add_parser(
      "compare", help="train one model with several optimizers",
      description=__doc__.split("\n\n", 1)[1],
      epilog=_EPILOG + optimizers.describe(),
      formatter_class=argparse.RawDescriptionHelpFormatter)
  compare.add_argument("--task", choices=models.TASKS, default="mlp",
                       help="model (default: mlp)")
  compare.add_argument("--dataset", choices=data.DATASETS, default="digits",
                       help="default: digits, embedded in scikit-learn")
  compare.add_argument("--data-dir", metavar="DIR", help="directory of the mnist IDX files "
                       "or the cifar10 python batches")
  compare.add_argument(
      "--optimizers", nargs="+", metavar="LIST", default=[",".join(
          optimizers.PAPER)],
      help="optimizers to compare, see below (default: the paper's six, "
      + ",".join(optimizers.PAPER) + ")")
  compare.add_argument("--epochs", type=_positive_int, default=DEFAULT_EPOCHS,
                       metavar="N",
                       help="default: %(default)s")
  compare.add_argument("--batch-size", type=_positive_int, default=128,
                       metavar="N",
                       help="default: %(default)s")
  compare.add_argument("--seed", type=int, default=1, metavar="N",
                       help="initial weights and batch order (default: 1)")
  compare.add_argument("--out", metavar="DIR", help="output directory (default: "
                       "runs/compare-TASK-DATASET)")
  compare.add_argument("--devices", type=_positive_int, default=1, metavar="N",
                       help="data-parallel over this many devices (default: 1)")
  compare.add_argument("--hidden-size", type=_positive_int, metavar="N",
                       help="width of the MLP's layers and of the CNN's hidden "
                       "layer (default: mlp 1000, cnn 512)")
  compare.add_argument("--hidden-layers", type=_positive_int, default=2,
                       metavar="N",
                       help="hidden layers of the MLP (default: 2)")
  compare.add_argument("--channels", type=_channels, default=(32, 64, 128),
                       metavar="C1,C2,...",
                       help="channels of the CNN's stages (default: 32,64,128)")
  compare.add_argument("--quiet", action="store_true",
                       help="no progress bars")
  return top


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the command line `argv` (default: sys.argv); returns the exit code.

  Bad names, options, data files or device counts print an error on stderr
  and return 2, as argparse does for bad arguments.
  """
  args = parser().parse_args(argv)
  try:
    return _compare(args)
  except (optimizers.OptimizerError, _UsageError) as error:
    print(f"optax-extras {args.command}: error: {error}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print(f"optax-extras {args.command}: interrupted", file=sys.stderr)
    return 130


class _UsageError(Exception):
  """A bad dataset, data file or device/batch combination."""


def _compare(args: argparse.Namespace) -> int:
  from optax_extras.experiments import data, models, plots, results, train
  import jax
  choices = optimizers.parse(args.optimizers)
  built = [optimizers.build(c) for c in choices]
  try:
    dataset = data.load(args.dataset, args.data_dir)
  except data.DataError as error:
    raise _UsageError(str(error)) from None
  hidden_size = args.hidden_size or HIDDEN_SIZE[args.task]
  model = models.make(args.task, dataset.train_images.shape[1:],
                      dataset.num_classes, hidden_size=hidden_size,
                      hidden_layers=args.hidden_layers, channels=args.channels,
                      seed=args.seed)
  try:
    experiment = train.Experiment(model, dataset, batch_size=args.batch_size,
                                  epochs=args.epochs, seed=args.seed,
                                  devices=args.devices)
  except ValueError as error:
    raise _UsageError(str(error)) from None
  out = args.out or os.path.join("runs", f"compare-{args.task}-{args.dataset}")
  steps = experiment.order.shape[1]
  platform = jax.devices()[0].platform
  print(f"{args.task} on {args.dataset}: {len(dataset.train_labels)} training "
        f"and {len(dataset.valid_labels)} validation images; {args.epochs} "
        f"epochs of {steps} steps of {args.batch_size}; {len(choices)} "
        f"optimizers on {args.devices} {platform} device(s)", flush=True)
  runs = [experiment.train(c.label, b, progress=not args.quiet)
          for c, b in zip(choices, built)]
  config = {k: v for k, v in vars(args).items() if k != "command"} | dict(
      hidden_size=hidden_size, out=out, steps_per_epoch=steps,
      platform=platform, jax_version=jax.__version__)
  results.write_all(runs, out, config)
  title = f"{args.task} on {args.dataset}"
  plots.plot_paper(runs, os.path.join(out, "paper.png"), title)
  plots.plot_log_loss(runs, os.path.join(out, "log_loss.png"), title)
  print(results.table(runs))
  print(f"wrote {out}: one CSV per optimizer, summary.csv, summary.json, "
        "paper.png, log_loss.png")
  return 0
