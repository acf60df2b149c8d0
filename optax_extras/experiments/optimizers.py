"""The gradient transformations of the optimizers that `options` names.

Weight decay is coupled L2 as in torch (``weight_decay * params`` added to the
gradient): `optax.add_decayed_weights` chained before the rescaling for the
optax optimizers, the ``weight_decay`` argument of the optax_extras ones.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

import optax_extras
from optax_extras.experiments import options as options_lib
from optax_extras.experiments.options import Choice, OptimizerError


def _coupled(weight_decay, tx: optax.GradientTransformation):
  return optax.chain(optax.add_decayed_weights(weight_decay), tx)


def torch_parameter_order(tree: Any) -> list[int]:
  """Indices of the leaves of a Flax params tree in the order torch's
  `model.parameters()` lists the same layers: layer by layer, each layer's
  weight (``kernel``) before its ``bias`` (Flax's dicts sort bias first)."""
  paths = [path for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
  layers = list(dict.fromkeys(path[:-1] for path in paths))

  def position(i):
    name = getattr(paths[i][-1], "key", None) if paths[i] else None
    return layers.index(paths[i][:-1]), name != "kernel"

  return sorted(range(len(paths)), key=position)


def in_torch_parameter_order(
    tx: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
  """``tx`` applied to the leaves as a list in `torch_parameter_order`: for
  rules that depend on the order of the tensors (upstream AdamHD's
  per-tensor rate, `optax_extras.adam_hd(..., hypergradient="per_tensor")`).
  """

  def ordered(tree):
    leaves = jax.tree.leaves(tree)
    return [leaves[i] for i in torch_parameter_order(tree)]

  def update_fn(updates, state, params=None, **extra_args):
    order = torch_parameter_order(updates)
    new, state = tx.update(ordered(updates), state,
                           None if params is None else ordered(params),
                           **extra_args)
    leaves = [None] * len(order)
    for position, index in enumerate(order):
      leaves[index] = new[position]
    return jax.tree.structure(updates).unflatten(leaves), state

  return optax.GradientTransformationExtraArgs(
      lambda params: tx.init(ordered(params)), update_fn)


_BUILDERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "sgd": lambda lr, weight_decay: _coupled(weight_decay, optax.sgd(lr)),
    "sgd_hd": lambda lr, hypergrad_lr, weight_decay: optax_extras.sgd_hd(
        lr, hypergrad_lr, weight_decay=weight_decay),
    "sgdn": lambda lr, momentum, weight_decay: _coupled(
        weight_decay, optax.sgd(lr, momentum, nesterov=True)),
    "sgdn_hd": lambda lr, hypergrad_lr, momentum, weight_decay: (
        optax_extras.sgd_hd(lr, hypergrad_lr, momentum, nesterov=True,
                            weight_decay=weight_decay)),
    "adam": lambda lr, b1, b2, eps, weight_decay: _coupled(
        weight_decay, optax.adam(lr, b1, b2, eps)),
    # train.py's AdamHD: the rate moves inside the loop over the tensors.
    "adam_hd": lambda lr, hypergrad_lr, b1, b2, eps, weight_decay: (
        in_torch_parameter_order(optax_extras.adam_hd(
            lr, hypergrad_lr, b1, b2, eps, weight_decay,
            hypergradient="per_tensor"))),
    "momentum": lambda lr, momentum, weight_decay: _coupled(
        weight_decay, optax.sgd(lr, momentum)),
    "nesterov": lambda lr, momentum, weight_decay: _coupled(
        weight_decay, optax.sgd(lr, momentum, nesterov=True)),
    "adagrad": lambda lr, initial_accumulator_value, eps, weight_decay: (
        _coupled(weight_decay,
                 optax.adagrad(lr, initial_accumulator_value, eps))),
    "rmsprop": lambda lr, decay, eps, weight_decay: _coupled(
        weight_decay, optax.rmsprop(lr, decay, eps)),
    "adadelta": lambda lr, rho, eps, weight_decay: _coupled(
        weight_decay, optax.adadelta(lr, rho, eps)),
    "adamax": lambda lr, b1, b2, eps, weight_decay: _coupled(
        weight_decay, optax.adamax(lr, b1, b2, eps)),
    "nadam": lambda lr, b1, b2, eps, weight_decay: _coupled(
        weight_decay, optax.nadam(lr, b1, b2, eps)),
    "diffgrad": lambda lr, b1, b2, eps, weight_decay: optax_extras.diffgrad(
        lr, b1, b2, eps, weight_decay),
    "expectigrad": lambda lr, beta, eps: optax_extras.expectigrad(
        lr, beta, eps),
}


@dataclasses.dataclass(frozen=True)
class Built:
  """An optimizer ready to train, and what the logs read from it.

  Attributes:
    tx: the gradient transformation.
    rate: maps the optimizer state to the learning rate of the model's
      parameters (learned, or the configured one).
    learned: maps the optimizer state to every learned hyperparameter, one
      entry per level and name (``L1.learning_rate``, ``L2.alpha``, ...;
      level 1 is the model's); empty when nothing is learned.
    beta: the hypergradient learning rate (0 without one).
  """

  tx: optax.GradientTransformation
  rate: Callable[[Any], Any]
  learned: Callable[[Any], dict[str, Any]]
  beta: float


def stack_transformation(choice: Choice, gdtuo: Any):
  """The nested gdtuo constructor calls for a stack, the top level innermost.

  `gdtuo` is the module holding the constructors (`optax_extras.gdtuo`).
  """
  optimizer = None
  levels = choice.levels
  for depth in reversed(range(len(levels))):
    constructor, names = options_lib.LEVELS[levels[depth]]
    given = dict(choice.options[depth])
    if depth > 0:
      given.setdefault("lr", options_lib.HYPER_LEVEL_LR)
    kwargs = {names[key]: value for key, value in given.items()}
    if optimizer is not None:
      kwargs["optimizer"] = optimizer
    optimizer = getattr(gdtuo, constructor)(**kwargs)
  return optimizer


def _stack_levels(state) -> dict[str, Any]:
  return {f"L{depth + 1}.{name}": value
          for depth, level in enumerate(optax_extras.hyperparameters(state))
          for name, value in level.items()}


def flat_options(choice: Choice) -> dict[str, float]:
  """The options a flat optimizer is built with: defaults, then the given."""
  return dict(options_lib.FLAT[choice.name]) | dict(choice.options)


def build(choice: Choice) -> Built:
  """The transformation of a checked choice; constructor errors (which
  `options.parse` already rules out) become OptimizerError."""
  try:
    if choice.is_stack:
      tx = stack_transformation(choice, optax_extras.gdtuo)
    else:
      tx = _BUILDERS[choice.name](**flat_options(choice))
  except (ValueError, TypeError) as error:
    raise OptimizerError(f"{choice.label}: {error}") from None
  if choice.is_stack:
    beta = choice.options[1].get("lr", options_lib.HYPER_LEVEL_LR)
    return Built(tx, lambda state: _stack_levels(state)["L1.alpha"],
                 _stack_levels, beta)
  options = flat_options(choice)
  if choice.name in options_lib.LEARNED_RATE:
    rate = lambda state: optax.tree.get(state, "learning_rate")
    learned = lambda state: {"L1.learning_rate": rate(state)}
  else:
    rate = lambda state: jnp.asarray(options["lr"], jnp.float32)
    learned = lambda state: {}
  return Built(tx, rate, learned, options.get("hypergrad_lr", 0.0))


def build_traced(choice: Choice, key: str, value) -> optax.GradientTransformation:
  """A flat optimizer's transformation with option `key` set to `value`,
  which may be a tracer (a `jax.vmap` over a grid of values)."""
  return _BUILDERS[choice.name](**(flat_options(choice) | {key: value}))
