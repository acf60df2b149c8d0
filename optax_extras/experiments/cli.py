"""`optax-extras`: the seed experiments and the sensitivity study.

`compare` trains one model from the same initial weights on the same batches
with each optimizer and writes one CSV per optimizer (the hypergradient
repo's columns, then every learned hyperparameter), summary.csv, summary.json,
paper.png (plot.py's content) and log_loss.png (the notebook's curves).
`sweep` trains each optimizer from every value of a grid of one option, for
several seeds, and writes sweep.csv, summary.json and robustness.png. `plot`
redraws the figures of an earlier run from its CSVs.

Options, files and folders are checked before anything trains (exit 2 with a
message); parsing and ``--help`` import no flax and compile nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from typing import Sequence

from optax_extras.experiments import options

DEFAULT_EPOCHS = 50

_LISTS = """\
optimizer lists (--optimizers):
  comma-separated names, each optionally followed by :key=value,key=value
    --optimizers sgd,adam_hd:lr=0.001,hypergrad_lr=1e-7,adam
  stacks as in the gdtuo paper, the model's optimizer first; a stack option
  takes one value per level separated by '/', empty keeps the default
    --optimizers adam/sgd:lr=0.001/1e-5 sgd/sgd/sgd rmsprop/adam:gamma=0.9/
  weight_decay is coupled L2 (added to the gradient, as torch's). The Alpha
  column and the final lr are the learned rate for *_hd and stacks; columns
  L1.<name>, L2.<name>, ... hold every learned hyperparameter of every level.
  A run whose loss turns NaN or infinite stops and is marked diverged.
"""


def _epilog() -> str:
  return (_LISTS + "\n" + textwrap.fill(options.DEFAULTS_NOTE, 78)
          + "\n\noptimizers and their default options:\n" + options.describe())


def _positive_int(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
  if value < 1:
    raise argparse.ArgumentTypeError(f"{value} is not >= 1")
  return value


def _int_list(text: str) -> tuple[int, ...]:
  try:
    return tuple(int(c) for c in text.split(","))
  except ValueError:
    raise argparse.ArgumentTypeError(
        f"{text!r} is not a comma-separated list of integers") from None


def _channels(text: str) -> tuple[int, ...]:
  try:
    return tuple(_positive_int(c) for c in text.split(","))
  except argparse.ArgumentTypeError:
    raise argparse.ArgumentTypeError(
        f"{text!r} is not a comma-separated list of positive integers") from None


def _add_task(command: argparse.ArgumentParser, default_optimizers: str | None):
  from optax_extras.experiments.data import DATASETS
  add = command.add_argument
  add("--task", choices=options.TASKS, default="mlp", help="model (default: mlp)")
  add("--dataset", choices=DATASETS, default="digits",
      help="default: digits, embedded in scikit-learn")
  add("--data-dir", metavar="DIR",
      help="directory of the mnist IDX files or the cifar10 python batches")
  add("--optimizers", nargs="+", metavar="LIST", required=not default_optimizers,
      default=[default_optimizers] if default_optimizers else None,
      help="optimizers, see below" + (
          f" (default: the paper's six, {default_optimizers})"
          if default_optimizers else ""))
  add("--epochs", type=_positive_int, default=DEFAULT_EPOCHS, metavar="N",
      help="default: %(default)s")
  add("--batch-size", type=_positive_int, default=128, metavar="N",
      help="default: %(default)s")
  add("--init", choices=options.INITS, default="torch",
      help="initial weights of the linear layers: torch's nn.Linear (uniform "
      "+-1/sqrt(fan_in), weights and biases; the papers' train.py) or Flax's "
      "defaults (default: torch)")
  add("--out", metavar="DIR", help="a new or empty output folder (default: a "
      "fresh runs/COMMAND-TASK-DATASET/run-NNN; runs started together get "
      "distinct ones)")
  add("--overwrite", action="store_true",
      help="--out may hold an earlier run: its files are removed first")
  add("--devices", type=_positive_int, default=1, metavar="N",
      help="data-parallel over this many devices (default: 1)")
  add("--hidden-size", type=_positive_int, metavar="N",
      help="width of the MLP's layers and of the CNN's hidden layer "
      "(default: mlp 1000, cnn 512)")
  add("--hidden-layers", type=_positive_int, default=2, metavar="N",
      help="hidden layers of the MLP (default: 2)")
  add("--channels", type=_channels, default=(32, 64, 128), metavar="C1,C2,...",
      help="channels of the CNN's stages (default: 32,64,128)")
  add("--quiet", action="store_true", help="no progress bars")
  group = command.add_argument_group(
      "several hosts (JAX's multi-controller runtime, "
      "jax.distributed.initialize; every process loads the same data, "
      "--devices is the count of the devices of all processes, process 0 "
      "writes the files)")
  group.add_argument("--coordinator-address", metavar="HOST:PORT")
  group.add_argument("--num-processes", type=_positive_int, metavar="N")
  group.add_argument("--process-id", type=int, metavar="I")


def parser() -> argparse.ArgumentParser:
  from optax_extras import __version__
  top = argparse.ArgumentParser(
      prog="optax-extras", description="Experiments of optax-extras.")
  top.add_argument("--version", action="version",
                   version=f"optax-extras {__version__}")
  commands = top.add_subparsers(dest="command", required=True)
  formatter = argparse.RawDescriptionHelpFormatter
  compare = commands.add_parser(
      "compare", help="train one model with several optimizers",
      description=__doc__.split("\n\n")[1], epilog=_epilog(),
      formatter_class=formatter)
  _add_task(compare, ",".join(options.PAPER))
  compare.add_argument("--seed", type=int, default=1, metavar="N",
                       help="initial weights and batch order, in [0, 2**32) "
                       "(default: 1)")
  sweep = commands.add_parser(
      "sweep", help="final loss against an option's initial value",
      description=__doc__.split("\n\n")[1], epilog=_epilog(),
      formatter_class=formatter)
  _add_task(sweep, None)
  sweep.add_argument("--grid", required=True, metavar="NAME=LOW:HIGH:N",
                     help="N log-spaced values of option NAME (of the model's "
                     "level of a stack: lr is its rate), e.g. lr=1e-4:1e-1:7; "
                     "distinct after rounding to 6 significant digits; "
                     "--optimizers must leave NAME to the grid")
  sweep.add_argument("--seeds", type=_int_list, default=(1,), metavar="S1,...",
                     help="distinct seeds in [0, 2**32), each its own weights "
                     "and batches: mean and spread per point (default: 1)")
  sweep.add_argument("--no-vmap", action="store_true",
                     help="train the grid's values one at a time instead of "
                     "as one jax.vmap batch per optimizer (less memory, one "
                     "compilation per value)")
  plot = commands.add_parser("plot", help="redraw the figures of a run")
  plot.add_argument("run_dir", metavar="RUN_DIR")
  return top


class _UsageError(Exception):
  """Options that do not fit together."""


def check_distributed(address: str | None, count: int | None,
                      process: int | None) -> bool:
  """Whether the multi-controller options are given; _UsageError if they are
  given in part or out of range."""
  given = [v is not None for v in (address, count, process)]
  if not any(given):
    return False
  if not all(given):
    raise _UsageError("--coordinator-address, --num-processes and "
                      "--process-id go together: give all three or none")
  host, _, port = address.rpartition(":")
  if not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise _UsageError(f"--coordinator-address must be HOST:PORT with a port "
                      f"in 1..65535, got {address!r}")
  if not 0 <= process < count:
    raise _UsageError(f"--process-id must be in [0, {count}) for "
                      f"--num-processes {count}, got {process}")
  return True


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the command line `argv` (default: sys.argv); returns the exit code.

  Bad names, options, data files, folders or device counts print an error on
  stderr and return 2, as argparse does for bad arguments; Ctrl-C returns 130
  after writing what finished. A numbered folder the run claimed and left
  empty (an error, or Ctrl-C before the first optimizer finished) is
  removed.
  """
  args = parser().parse_args(argv)
  args.claimed = None  # the numbered folder _start creates: removed if empty
  from optax_extras.experiments import results, studies
  try:
    return {"compare": _compare, "sweep": _sweep, "plot": _plot}[
        args.command](args)
  except (options.OptimizerError, _UsageError, studies.StudyError,
          results.RunDirError) as error:
    print(f"optax-extras {args.command}: error: {error}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    out = getattr(args, "out", None) or args.claimed
    written = out and os.path.isfile(os.path.join(out, results.SUMMARY))
    print(f"optax-extras {args.command}: interrupted; " + (
        f"the finished results are written in {out}, summary.json says "
        "\"complete\": false" if written else
        "no optimizer had finished: nothing written"), file=sys.stderr)
    return 130
  finally:
    _remove_if_empty(args.claimed)


def _remove_if_empty(folder: str | None) -> None:
  """Removes the numbered folder a run claimed if it wrote nothing there (it
  stopped with an error or Ctrl-C before its first optimizer finished), and
  the folders above it that are left empty (``runs/compare-mlp-mnist``)."""
  if folder and os.path.isdir(folder) and not os.listdir(folder):
    os.removedirs(folder)


def _start(args: argparse.Namespace) -> tuple[str | None, dict]:
  """Checks the options, starts the runtime; the output folder (None on a
  process other than 0) and the Task options.

  Process 0 checks --out here (`results.check_out`), or without --out claims
  a fresh numbered folder (`results.claim_run_dir`: concurrent runs get
  distinct ones). With several processes, the others learn whether that
  failed and stop too, instead of waiting for process 0 forever.
  """
  from optax_extras.experiments import results
  distributed = check_distributed(args.coordinator_address, args.num_processes,
                                  args.process_id)
  if distributed:
    import jax
    # CPU devices of several processes talk through gloo (other platforms
    # use their own collectives).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(args.coordinator_address, args.num_processes,
                               args.process_id)
    if args.num_processes > 1 and args.devices != jax.device_count():
      raise _UsageError(
          f"--devices {args.devices}: with --num-processes "
          f"{args.num_processes} every device of every process takes part; "
          f"give --devices {jax.device_count()} (the devices of all "
          "processes)")
  task = {k: getattr(args, k) for k in (
      "task", "dataset", "data_dir", "epochs", "batch_size", "devices",
      "hidden_size", "hidden_layers", "channels", "init")}
  out, problem = None, None
  if not args.process_id:
    try:
      if args.out is None:
        args.claimed = out = results.claim_run_dir(os.path.join(
            "runs", f"{args.command}-{args.task}-{args.dataset}"))
      else:
        results.check_out(args.out, args.overwrite)
        out = args.out
    except results.RunDirError as error:
      problem = error
  if distributed:
    process_0_failed = _process_0_failed(problem is not None)
    if process_0_failed and problem is None:
      raise _UsageError("process 0 stopped: its output folder is not usable "
                        "(see its message)")
  if problem:
    raise problem
  return out, task


def _process_0_failed(failed: bool) -> bool:
  """Process 0's `failed`, on every process: all of them call this together
  (`multihost_utils.broadcast_one_to_all`)."""
  import numpy as np
  from jax.experimental import multihost_utils
  return bool(multihost_utils.broadcast_one_to_all(np.int32(failed)))


def _writes(out: str | None, args: argparse.Namespace) -> str:
  if out is None:
    return (f"process {args.process_id} of {args.num_processes}: process 0 "
            "writes the files")
  return f"writing {out}"


def _compare(args: argparse.Namespace) -> int:
  from optax_extras.experiments import results, studies
  options.parse(args.optimizers)
  studies.check_seeds([args.seed], "--seed")
  out, task = _start(args)
  import jax
  print(f"{args.task} on {args.dataset}, {args.epochs} epochs of batches of "
        f"{args.batch_size}, {args.init} initial weights, on {args.devices} "
        f"{jax.devices()[0].platform} device(s); {_writes(out, args)}",
        flush=True)
  run = studies.compare(args.optimizers, seed=args.seed, out=out,
                        overwrite=args.overwrite, progress=not args.quiet,
                        **task)
  print(results.table(run.results))
  if out is not None:
    print(f"wrote {out}: one CSV per optimizer, summary.csv, summary.json, "
          "paper.png, log_loss.png")
  return 0


def _sweep(args: argparse.Namespace) -> int:
  from optax_extras.experiments import results, studies
  choices = options.parse(args.optimizers)
  options.check_grid(choices, options.parse_grid(args.grid))
  studies.check_seeds(args.seeds, "--seeds")
  out, task = _start(args)
  print(f"sweep of {args.grid} over {len(choices)} optimizer(s) and seeds "
        f"{','.join(map(str, args.seeds))} on {args.task}/{args.dataset}, "
        f"{args.epochs} epochs; {_writes(out, args)}", flush=True)
  run = studies.sweep(args.optimizers, args.grid, seeds=args.seeds, out=out,
                      overwrite=args.overwrite, progress=not args.quiet,
                      batched=not args.no_vmap, **task)
  body = [(label, f"{s['spread']:.3g}", f"{s['spread_non_diverged']:.3g}",
           f"{s['non_diverged_points']}/{s['points']}")
          for label, s in run.spreads.items()]
  print(results.aligned(("optimizer", "spread max/min", "non-diverged",
                         "not diverged"), body))
  if out is not None:
    print(f"wrote {out}: sweep.csv, summary.csv, summary.json, "
          "robustness.png")
  return 0


def _plot(args: argparse.Namespace) -> int:
  from optax_extras.experiments import plots, results, studies
  config = results.read_summary(args.run_dir)["config"]
  title = f"{config.get('task')} on {config.get('dataset')}"
  if config.get("command") == "sweep":
    rows, option = studies.read_sweep(args.run_dir)
    plots.plot_sweep(rows, option, os.path.join(args.run_dir,
                                                "robustness.png"), title)
    print(f"redrew {args.run_dir}/robustness.png")
    return 0
  runs = results.read_run(args.run_dir)
  plots.plot_paper(runs, os.path.join(args.run_dir, "paper.png"), title)
  plots.plot_log_loss(runs, os.path.join(args.run_dir, "log_loss.png"), title)
  print(f"redrew {args.run_dir}/paper.png and log_loss.png")
  return 0
