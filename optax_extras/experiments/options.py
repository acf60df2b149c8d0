"""The optimizers the study commands know: names, options, defaults, ranges.

Plain Python (no jax, no flax), so that ``optax-extras --help`` and argument
checks run before anything heavy is imported; `optimizers` builds the
transformations.

A list names optimizers separated by commas; options follow a name after a
colon, also separated by commas::

  sgd,adam_hd:lr=0.001,hypergrad_lr=1e-7,adam

A comma-separated item with ``=`` and no colon is an option of the optimizer
before it. A hyperoptimizer stack is written as in the gdtuo paper, the
model's optimizer first: ``adam/sgd`` is Adam whose hyperparameters are
learned by SGD. A stack's option takes one value per level, separated by
``/`` in the same order; an empty value keeps that level's default::

  adam/sgd:lr=0.001/1e-5      rmsprop/adam:lr=/1e-4,gamma=0.9/

Every value is checked against its option's range (`RANGES`) by `parse`,
before anything trains.
"""

from __future__ import annotations

import dataclasses
import math
import textwrap
from typing import Mapping, Sequence

PAPER = ("sgd", "sgd_hd", "sgdn", "sgdn_hd", "adam", "adam_hd")
TASKS = ("logreg", "mlp", "cnn")
# Initial weights: "torch" is nn.Linear's (what the papers' code trains from),
# "flax" is Flax's defaults; see `models.make`.
INITS = ("torch", "flax")


class OptimizerError(ValueError):
  """A name, option or value on the command line that is not valid."""


@dataclasses.dataclass(frozen=True)
class Range:
  """The allowed values of an option: from `low` to `high`, each end open or
  closed; always finite."""

  low: float
  high: float = math.inf
  low_open: bool = False
  high_open: bool = True

  def __contains__(self, value: float) -> bool:
    above = value > self.low if self.low_open else value >= self.low
    below = value < self.high if self.high_open else value <= self.high
    return math.isfinite(value) and above and below

  def __str__(self) -> str:
    if self.low == -math.inf and self.high == math.inf:
      return "a finite number"
    if self.high == math.inf:
      return f"a finite number {'>' if self.low_open else '>='} {self.low:g}"
    return (f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}"
            f"{')' if self.high_open else ']'}")


_POSITIVE = Range(0.0, low_open=True)
_NONNEGATIVE = Range(0.0)
_DECAY = Range(0.0, 1.0)

# Allowed values by option name: the same name means the same thing everywhere.
RANGES = {
    "lr": _POSITIVE, "hypergrad_lr": _NONNEGATIVE, "weight_decay": _NONNEGATIVE,
    "eps": _NONNEGATIVE, "initial_accumulator_value": _NONNEGATIVE,
    "momentum": _DECAY, "mu": _DECAY, "b1": _DECAY, "b2": _DECAY,
    "beta": _DECAY, "beta1": _DECAY, "beta2": _DECAY, "decay": _DECAY,
    "rho": _DECAY, "gamma": _DECAY, "log_eps": Range(-math.inf),
}

_ADAM = dict(lr=1e-3, b1=0.9, b2=0.999, eps=1e-8)
_SGD_HD = dict(lr=1e-3, hypergrad_lr=1e-3, weight_decay=1e-4)

# The paper's six take run.sh's settings and train.py's weight decay; the
# notebook's take the notebook's settings (adadelta, absent there: torch's).
FLAT = {
    "sgd": dict(lr=1e-3, weight_decay=1e-4),
    "sgd_hd": _SGD_HD,
    "sgdn": dict(lr=1e-3, momentum=0.9, weight_decay=1e-4),
    "sgdn_hd": _SGD_HD | dict(momentum=0.9),
    "adam": _ADAM | dict(weight_decay=1e-4),
    "adam_hd": _ADAM | dict(hypergrad_lr=1e-7, weight_decay=1e-4),
    "momentum": dict(lr=1e-3, momentum=0.9, weight_decay=0.0),
    "nesterov": dict(lr=1e-3, momentum=0.9, weight_decay=0.0),
    "adagrad": dict(lr=1e-3, initial_accumulator_value=0.1, eps=1e-7,
                    weight_decay=0.0),
    "rmsprop": dict(lr=1e-3, decay=0.9, eps=1e-8, weight_decay=0.0),
    "adadelta": dict(lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0),
    "adamax": _ADAM | dict(weight_decay=0.0),
    "nadam": _ADAM | dict(weight_decay=0.0),
    "diffgrad": _ADAM | dict(weight_decay=0.0),
    "expectigrad": dict(lr=1e-3, beta=0.9, eps=1e-8),
}
LEARNED_RATE = ("sgd_hd", "sgdn_hd", "adam_hd")

# Levels of a stack: command-line option -> gdtuo constructor argument, with
# gdtuo's own defaults, except that a level above the model's defaults to
# lr=1e-5 (gdtuo's README stack Adam(optimizer=SGD(1e-5))).
LEVELS = {
    "sgd": ("SGD", dict(lr="alpha", mu="mu")),
    "adam": ("Adam", dict(lr="alpha", beta1="beta1", beta2="beta2",
                          log_eps="log_eps")),
    "rmsprop": ("RMSProp", dict(lr="alpha", gamma="gamma")),
    "adagrad": ("AdaGrad", dict(lr="alpha")),
}
HYPER_LEVEL_LR = 1e-5

DEFAULTS_NOTE = (
    "Defaults are the papers' settings (run.sh), not the library's: "
    "hypergrad_lr is 1e-3 for sgd_hd/sgdn_hd (optax_extras.sgd_hd: 1e-6, "
    "hypergrad.SGDHD's) and 1e-7 for adam_hd (optax_extras.adam_hd: 1e-8, "
    "hypergrad.AdamHD's); RMSProp's decay is optax's 'decay' in rmsprop and "
    "gdtuo's 'gamma' in a stack level.")


@dataclasses.dataclass(frozen=True)
class Choice:
  """One optimizer of a comparison, as picked on the command line.

  Attributes:
    label: the canonical text of the choice; it names the CSV file.
    name: the optimizer's name, or the stack's ``a/b/...``.
    options: the options the user gave; for a stack, one mapping per level,
      the model's level first.
  """

  label: str
  name: str
  options: Mapping[str, float] | tuple[Mapping[str, float], ...]

  @property
  def is_stack(self) -> bool:
    return "/" in self.name

  @property
  def levels(self) -> list[str]:
    return self.name.split("/")

  def with_option(self, key: str, value: float) -> Choice:
    """The same choice with `key` (the model's level of a stack) set."""
    if self.is_stack:
      options = (dict(self.options[0]) | {key: value}, *self.options[1:])
    else:
      options = dict(self.options) | {key: value}
    return Choice(self.label, self.name, options)

  def option_names(self) -> tuple[str, ...]:
    """The options of the optimizer (of the model's level for a stack)."""
    if self.is_stack:
      return tuple(LEVELS[self.levels[0]][1])
    return tuple(FLAT[self.name])


def valid_names() -> str:
  """The names a list may use, for help and error messages."""
  return (", ".join(FLAT) + "; stacks of " + ", ".join(LEVELS)
          + " joined by '/', e.g. adam/sgd")


def describe() -> str:
  """Every optimizer with its options and defaults, for --help."""
  lines = [f"  {name:12s} " + ",".join(f"{k}={v:g}" for k, v in
                                        defaults.items())
           for name, defaults in FLAT.items()]
  lines.append("  stacks       levels " + ", ".join(
      f"{name} ({','.join(options)})" for name, (_, options) in LEVELS.items())
               + f"; gdtuo's defaults, lr={HYPER_LEVEL_LR:g} above the model's"
               " level")
  lines.append(textwrap.fill(
      "ranges: " + "; ".join(f"{k} {r}" for k, r in RANGES.items()), 78,
      subsequent_indent="  "))
  return "\n".join(lines)


def check_value(where: str, key: str, value: float) -> float:
  """`value` if it is in `key`'s range, else OptimizerError naming all four.

  Example:
    >>> check_value("adam", "b1", 2.0)
    Traceback (most recent call last):
    ...
    optax_extras.experiments.options.OptimizerError: adam: b1 must be in [0, 1), got b1=2.0.
  """
  if value not in RANGES[key]:
    raise OptimizerError(
        f"{where}: {key} must be {RANGES[key]}, got {key}={value!r}.")
  return value


def _number(where: str, key: str, text: str) -> float:
  try:
    value = float(text)
  except ValueError:
    raise OptimizerError(
        f"option {key} of {where} must be a number, got {text!r}") from None
  return check_value(where, key, value)


def _parse_flat(name: str, pairs: Sequence[tuple[str, str]]) -> Choice:
  options = {}
  for key, text in pairs:
    if key not in FLAT[name]:
      raise OptimizerError(
          f"unknown option {key!r} for {name}; valid options: "
          + ", ".join(FLAT[name]))
    options[key] = _number(name, key, text)
  label = name + "".join(
      f"{',' if i else ':'}{k}={v:g}" for i, (k, v) in enumerate(options.items()))
  return Choice(label, name, options)


def _level_value(name: str, depth: int, level: str, key: str,
                 field: str) -> float:
  if key not in LEVELS[level][1]:
    raise OptimizerError(
        f"unknown option {key!r} for the {level} level of {name}; valid "
        "options: " + ", ".join(LEVELS[level][1]))
  return _number(f"{name} (level {depth + 1}, {level})", key, field)


def _parse_stack(name: str, pairs: Sequence[tuple[str, str]]) -> Choice:
  levels = name.split("/")
  for level in levels:
    if level not in LEVELS:
      raise OptimizerError(
          f"unknown level {level!r} in stack {name}; valid levels: "
          + ", ".join(LEVELS))
  options = [{} for _ in levels]
  texts = []
  for key, text in pairs:
    fields = text.split("/")
    if len(fields) != len(levels):
      raise OptimizerError(
          f"option {key} of {name} needs {len(levels)} values separated by "
          f"'/' (the model's level first, empty for the default), got {text!r}")
    for depth, (level, field) in enumerate(zip(levels, fields)):
      if field:
        options[depth][key] = _level_value(name, depth, level, key, field)
    texts.append(key + "=" + "/".join(
        f"{o[key]:g}" if key in o else "" for o in options))
  label = name + (":" + ",".join(texts) if texts else "")
  return Choice(label, name, tuple(options))


def _groups(texts: Sequence[str]) -> list[list[str]]:
  """Comma-separated items grouped per optimizer: name first, then options."""
  groups = []
  for text in texts:
    for item in text.split(","):
      item = item.strip()
      if not item:
        raise OptimizerError(f"empty item in the optimizer list {text!r}")
      if "=" in item and ":" not in item:
        if not groups:
          raise OptimizerError(
              f"option {item!r} comes before any optimizer name")
        groups[-1].append(item)
      else:
        groups.append([item])
  return groups


def parse(texts: Sequence[str]) -> list[Choice]:
  """Parses optimizer lists (see the module docstring) into checked choices.

  Raises:
    OptimizerError: naming the unknown name or option and the valid ones,
      the optimizer, option and value out of its range, an option or an
      optimizer listed twice, or no optimizer at all.

  Example:
    >>> [c.label for c in parse(["sgd,adam_hd:lr=0.01,hypergrad_lr=1e-7"])]
    ['sgd', 'adam_hd:lr=0.01,hypergrad_lr=1e-07']
  """
  choices = []
  for head, *rest in _groups(texts):
    name, _, first = head.partition(":")
    pairs = []
    for item in ([first] if first else []) + rest:
      key, equals, value = item.partition("=")
      if not equals or not key:
        raise OptimizerError(
            f"option {item!r} of {name} is not of the form key=value")
      if any(key.strip() == k for k, _ in pairs):
        raise OptimizerError(f"option {key.strip()} of {name} is given twice")
      pairs.append((key.strip(), value.strip()))
    if "/" in name:
      choice = _parse_stack(name, pairs)
    elif name in FLAT:
      choice = _parse_flat(name, pairs)
    else:
      raise OptimizerError(
          f"unknown optimizer {name!r}; valid names: {valid_names()}")
    if any(c.label == choice.label for c in choices):
      raise OptimizerError(f"optimizer {choice.label!r} is listed twice")
    choices.append(choice)
  if not choices:
    raise OptimizerError("the optimizer list is empty: name at least one "
                         f"optimizer; valid names: {valid_names()}")
  return choices


@dataclasses.dataclass(frozen=True)
class Grid:
  """A sweep's grid: option `name` over `values` (log-spaced, ascending)."""

  name: str
  values: tuple[float, ...]


def parse_grid(text: str) -> Grid:
  """``NAME=LOW:HIGH:N``: N log-spaced values from LOW to HIGH (N >= 2),
  rounded to 6 significant digits, which must leave them distinct.

  Example:
    >>> parse_grid("lr=1e-3:1e-1:3").values
    (0.001, 0.01, 0.1)
  """
  name, equals, spec = text.partition("=")
  parts = spec.split(":")
  if not equals or len(parts) != 3:
    raise OptimizerError(
        f"--grid must be NAME=LOW:HIGH:N (e.g. lr=1e-4:1e-1:7), got {text!r}")
  try:
    low, high, count = float(parts[0]), float(parts[1]), int(parts[2])
  except ValueError:
    raise OptimizerError(
        f"--grid {text!r}: LOW and HIGH must be numbers, N an integer") from None
  if not (0 < low < high < math.inf) or count < 2:
    raise OptimizerError(
        f"--grid {text!r}: needs 0 < LOW < HIGH (finite) and N >= 2 for a "
        f"log-spaced grid, got LOW={low!r}, HIGH={high!r}, N={count}")
  ratio = math.log(high / low) / (count - 1)
  values = tuple(float(f"{low * math.exp(ratio * i):.6g}") for i in range(count))
  repeated = sorted({v for v in values if values.count(v) > 1})
  if repeated:
    raise OptimizerError(
        f"--grid {text!r}: the value {repeated[0]:g} comes more than once "
        "(values are rounded to 6 significant digits): widen LOW:HIGH or "
        "lower N")
  return Grid(name.strip(), values)


def check_grid(choices: Sequence[Choice], grid: Grid) -> None:
  """Every choice has the grid's option, does not fix it itself (the grid
  sets it) and takes every grid value (in range)."""
  for choice in choices:
    if grid.name not in choice.option_names():
      raise OptimizerError(
          f"--grid option {grid.name!r} is not an option of {choice.name}"
          f"{' (model level)' if choice.is_stack else ''}; valid options: "
          + ", ".join(choice.option_names()))
    given = choice.options[0] if choice.is_stack else choice.options
    if grid.name in given:
      raise OptimizerError(
          f"--grid sets {grid.name} of every optimizer, but {choice.label} "
          f"fixes {grid.name}={given[grid.name]:g}"
          f"{' (model level)' if choice.is_stack else ''}: leave "
          f"{grid.name} out of --optimizers")
    for value in grid.values:
      check_value(f"{choice.label} (--grid)", grid.name, value)
