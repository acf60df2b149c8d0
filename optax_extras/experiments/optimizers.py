"""The optimizers that `optax-extras compare` knows, and how to pick them.

A list names optimizers separated by commas; options follow a name after a
colon, also separated by commas::

  sgd,adam_hd:lr=0.001,hypergrad_lr=1e-7,adam

A comma-separated item with ``=`` and no colon is an option of the optimizer
before it. A hyperoptimizer stack is written as in the gdtuo paper, the
model's optimizer first: ``adam/sgd`` is Adam whose hyperparameters are
learned by SGD. A stack's option takes one value per level, separated by
``/`` in the same order; an empty value keeps that level's default::

  adam/sgd:lr=0.001/1e-5      rmsprop/adam:lr=/1e-4,gamma=0.9/
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import jax.numpy as jnp
import optax

import optax_extras

PAPER = ("sgd", "sgd_hd", "sgdn", "sgdn_hd", "adam", "adam_hd")


class OptimizerError(ValueError):
  """A name, option or value on the command line that is not valid."""


def _l2(weight_decay: float, tx: optax.GradientTransformation):
  """`tx` on the gradient plus `weight_decay * params` (torch's coupled L2)."""
  if weight_decay == 0:
    return tx
  return optax.chain(optax.add_decayed_weights(weight_decay), tx)


@dataclasses.dataclass(frozen=True)
class _Flat:
  build: Callable[..., optax.GradientTransformation]
  defaults: Mapping[str, float]
  learned_rate: bool = False


_ADAM = dict(lr=1e-3, b1=0.9, b2=0.999, eps=1e-8)

# The paper's six take run.sh's settings and train.py's weight decay; the
# notebook's take the notebook's settings (adadelta, absent there: torch's).
_FLAT = {
    "sgd": _Flat(
        lambda lr, weight_decay: _l2(weight_decay, optax.sgd(lr)),
        dict(lr=1e-3, weight_decay=1e-4)),
    "sgd_hd": _Flat(
        lambda lr, hypergrad_lr, weight_decay: optax_extras.sgd_hd(
            lr, hypergrad_lr, weight_decay=weight_decay),
        dict(lr=1e-3, hypergrad_lr=1e-3, weight_decay=1e-4), True),
    "sgdn": _Flat(
        lambda lr, momentum, weight_decay: _l2(
            weight_decay, optax.sgd(lr, momentum, nesterov=True)),
        dict(lr=1e-3, momentum=0.9, weight_decay=1e-4)),
    "sgdn_hd": _Flat(
        lambda lr, hypergrad_lr, momentum, weight_decay: optax_extras.sgd_hd(
            lr, hypergrad_lr, momentum, nesterov=True,
            weight_decay=weight_decay),
        dict(lr=1e-3, hypergrad_lr=1e-3, momentum=0.9, weight_decay=1e-4),
        True),
    "adam": _Flat(
        lambda lr, b1, b2, eps, weight_decay: _l2(
            weight_decay, optax.adam(lr, b1, b2, eps)),
        _ADAM | dict(weight_decay=1e-4)),
    "adam_hd": _Flat(
        lambda lr, hypergrad_lr, b1, b2, eps, weight_decay: optax_extras.adam_hd(
            lr, hypergrad_lr, b1, b2, eps, weight_decay),
        _ADAM | dict(hypergrad_lr=1e-7, weight_decay=1e-4), True),
    "momentum": _Flat(
        lambda lr, momentum, weight_decay: _l2(
            weight_decay, optax.sgd(lr, momentum)),
        dict(lr=1e-3, momentum=0.9, weight_decay=0.0)),
    "nesterov": _Flat(
        lambda lr, momentum, weight_decay: _l2(
            weight_decay, optax.sgd(lr, momentum, nesterov=True)),
        dict(lr=1e-3, momentum=0.9, weight_decay=0.0)),
    "adagrad": _Flat(
        lambda lr, initial_accumulator_value, eps, weight_decay: _l2(
            weight_decay, optax.adagrad(lr, initial_accumulator_value, eps)),
        dict(lr=1e-3, initial_accumulator_value=0.1, eps=1e-7,
             weight_decay=0.0)),
    "rmsprop": _Flat(
        lambda lr, decay, eps, weight_decay: _l2(
            weight_decay, optax.rmsprop(lr, decay, eps)),
        dict(lr=1e-3, decay=0.9, eps=1e-8, weight_decay=0.0)),
    "adadelta": _Flat(
        lambda lr, rho, eps, weight_decay: _l2(
            weight_decay, optax.adadelta(lr, rho, eps)),
        dict(lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0)),
    "adamax": _Flat(
        lambda lr, b1, b2, eps, weight_decay: _l2(
            weight_decay, optax.adamax(lr, b1, b2, eps)),
        _ADAM | dict(weight_decay=0.0)),
    "nadam": _Flat(
        lambda lr, b1, b2, eps, weight_decay: _l2(
            weight_decay, optax.nadam(lr, b1, b2, eps)),
        _ADAM | dict(weight_decay=0.0)),
    "diffgrad": _Flat(
        lambda lr, b1, b2, eps, weight_decay: optax_extras.diffgrad(
            lr, b1, b2, eps, weight_decay),
        _ADAM | dict(weight_decay=0.0)),
    "expectigrad": _Flat(
        lambda lr, beta, eps: optax_extras.expectigrad(lr, beta, eps),
        dict(lr=1e-3, beta=0.9, eps=1e-8)),
}


@dataclasses.dataclass(frozen=True)
class _Level:
  constructor: str
  options: Mapping[str, str]  # command-line name -> constructor argument


# Levels of a stack: gdtuo's constructors, with their own defaults, except
# that a level above the model's defaults to lr=1e-5 (gdtuo's README stack
# Adam(optimizer=SGD(1e-5))).
_LEVELS = {
    "sgd": _Level("SGD", dict(lr="alpha", mu="mu")),
    "adam": _Level("Adam", dict(lr="alpha", beta1="beta1", beta2="beta2",
                                log_eps="log_eps")),
    "rmsprop": _Level("RMSProp", dict(lr="alpha", gamma="gamma")),
    "adagrad": _Level("AdaGrad", dict(lr="alpha")),
}
HYPER_LEVEL_LR = 1e-5


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


@dataclasses.dataclass(frozen=True)
class Built:
  """An optimizer ready to train, and what the logs read from it.

  Attributes:
    tx: the gradient transformation.
    rate: maps the optimizer state to the learning rate of the model's
      parameters (learned, or the configured one).
    beta: the hypergradient learning rate (0 without one).
  """

  tx: optax.GradientTransformation
  rate: Callable[[Any], Any]
  beta: float


def valid_names() -> str:
  """The names a list may use, for help and error messages."""
  return (", ".join(_FLAT) + "; stacks of " + ", ".join(_LEVELS)
          + " joined by '/', e.g. adam/sgd")


def describe() -> str:
  """Every optimizer with its options and defaults, for --help."""
  lines = [f"  {name:12s} " + ",".join(f"{k}={v:g}" for k, v in
                                        spec.defaults.items())
           for name, spec in _FLAT.items()]
  lines.append("  stacks       levels " + ", ".join(
      f"{name} ({','.join(level.options)})" for name, level in _LEVELS.items())
               + f"; gdtuo's defaults, lr={HYPER_LEVEL_LR:g} above the model's"
               " level")
  return "\n".join(lines)


def _number(name: str, key: str, text: str) -> float:
  try:
    return float(text)
  except ValueError:
    raise OptimizerError(
        f"option {key} of {name} must be a number, got {text!r}") from None


def _parse_flat(name: str, pairs: Sequence[tuple[str, str]]) -> Choice:
  spec = _FLAT[name]
  options = {}
  for key, text in pairs:
    if key not in spec.defaults:
      raise OptimizerError(
          f"unknown option {key!r} for {name}; valid options: "
          + ", ".join(spec.defaults))
    options[key] = _number(name, key, text)
  label = name + "".join(
      f"{',' if i else ':'}{k}={v:g}" for i, (k, v) in enumerate(options.items()))
  return Choice(label, name, options)


def _parse_stack(name: str, pairs: Sequence[tuple[str, str]]) -> Choice:
  levels = name.split("/")
  for level in levels:
    if level not in _LEVELS:
      raise OptimizerError(
          f"unknown level {level!r} in stack {name}; valid levels: "
          + ", ".join(_LEVELS))
  options = [{} for _ in levels]
  texts = []
  for key, text in pairs:
    fields = text.split("/")
    if len(fields) != len(levels):
      raise OptimizerError(
          f"option {key} of {name} needs {len(levels)} values separated by "
          f"'/' (the model's level first, empty for the default), got {text!r}")
    for level, field, level_options in zip(levels, fields, options):
      if not field:
        continue
      if key not in _LEVELS[level].options:
        raise OptimizerError(
            f"unknown option {key!r} for the {level} level of {name}; valid "
            "options: " + ", ".join(_LEVELS[level].options))
      level_options[key] = _number(name, key, field)
    texts.append(key + "=" + "/".join(
        f"{o[key]:g}" if key in o else "" for o in options))
  label = name + (":" + ",".join(texts) if texts else "")
  return Choice(label, name, tuple(options))


def parse(texts: Sequence[str]) -> list[Choice]:
  """Parses optimizer lists (see the module docstring) into choices.

  Raises:
    OptimizerError: naming the unknown name or option and the valid ones.

  Example:
    >>> [c.label for c in parse(["sgd,adam_hd:lr=0.01,hypergrad_lr=1e-7"])]
    ['sgd', 'adam_hd:lr=0.01,hypergrad_lr=1e-07']
  """
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
  choices = []
  for head, *rest in groups:
    name, _, first = head.partition(":")
    pairs = []
    for item in ([first] if first else []) + rest:
      key, equals, value = item.partition("=")
      if not equals or not key:
        raise OptimizerError(
            f"option {item!r} of {name} is not of the form key=value")
      pairs.append((key.strip(), value.strip()))
    if "/" in name:
      choice = _parse_stack(name, pairs)
    elif name in _FLAT:
      choice = _parse_flat(name, pairs)
    else:
      raise OptimizerError(
          f"unknown optimizer {name!r}; valid names: {valid_names()}")
    if any(c.label == choice.label for c in choices):
      raise OptimizerError(f"optimizer {choice.label!r} is listed twice")
    choices.append(choice)
  return choices


def stack_transformation(choice: Choice, gdtuo: Any):
  """The nested gdtuo constructor calls for a stack, the top level innermost.

  `gdtuo` is the module holding the constructors (`optax_extras.gdtuo`).
  """
  optimizer = None
  levels = choice.name.split("/")
  for depth in reversed(range(len(levels))):
    level = _LEVELS[levels[depth]]
    given = dict(choice.options[depth])
    if depth > 0:
      given.setdefault("lr", HYPER_LEVEL_LR)
    kwargs = {level.options[key]: value for key, value in given.items()}
    if optimizer is not None:
      kwargs["optimizer"] = optimizer
    optimizer = getattr(gdtuo, level.constructor)(**kwargs)
  return optimizer


def build(choice: Choice) -> Built:
  """The transformation of a choice; constructor errors become OptimizerError."""
  if choice.is_stack:
    return _build_stack(choice)
  spec = _FLAT[choice.name]
  options = dict(spec.defaults) | dict(choice.options)
  try:
    tx = spec.build(**options)
  except (ValueError, TypeError) as error:
    raise OptimizerError(f"{choice.label}: {error}") from None
  if spec.learned_rate:
    rate = lambda state: optax.tree.get(state, "learning_rate")
  else:
    rate = lambda state: jnp.asarray(options["lr"], jnp.float32)
  return Built(tx, rate, options.get("hypergrad_lr", 0.0))


def _build_stack(choice: Choice) -> Built:
  try:
    tx = stack_transformation(choice, optax_extras.gdtuo)
  except (ValueError, TypeError) as error:
    raise OptimizerError(f"{choice.label}: {error}") from None
  beta = choice.options[1].get("lr", HYPER_LEVEL_LR)
  return Built(
      tx, lambda state: optax_extras.hyperparameters(state)[0]["alpha"], beta)
