"""Group options: torch's names for optax hyperparameters, checks, builds.

A torch group dict speaks torch (``lr``, ``betas``, ``momentum``, ``eps``,
``weight_decay``); the factory speaks optax (``learning_rate``, ``b1``,
``b2`` ...). The numeric hyperparameters among them are injected with
`optax.inject_hyperparams` so that schedulers change them without a
recompile; every other option is static.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from optax_extras.torch import _rate

# torch group key -> the factory arguments it stands for.
TORCH_NAMES = {
    "lr": ("learning_rate",),
    "betas": ("b1", "b2"),
    "momentum": ("momentum",),
    "eps": ("eps",),
    "weight_decay": ("weight_decay",),
}
# Keys of a group that never reach the factory.
NOT_OPTIONS = frozenset({"params", "tx", "param_names"})


def _is_number(value: Any) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


@functools.lru_cache(maxsize=64)
def _parameters(factory: Callable[..., Any]) -> dict[str, inspect.Parameter]:
  """The factory's parameters (cached: a step reads them)."""
  return dict(inspect.signature(factory).parameters)


def factory_name(factory: Callable[..., Any]) -> str:
  return getattr(factory, "__name__", repr(factory))


def torch_keys(factory: Callable[..., Any]) -> list[str]:
  """The torch names whose factory arguments `factory` takes."""
  takes = _parameters(factory)
  return [key for key, names in TORCH_NAMES.items()
          if all(name in takes for name in names)]


def option_names(tx: Any) -> set[str]:
  """The names a group may use to configure `tx` (torch and optax ones)."""
  if isinstance(tx, optax.GradientTransformation):
    return set(TORCH_NAMES) | {"tx"}
  return set(TORCH_NAMES) | set(_parameters(tx)) | {"tx"}


def default_options(factory: Callable[..., Any]) -> dict[str, Any]:
  """The factory's numeric defaults under their torch names."""
  takes = _parameters(factory)
  options = {}
  for key in torch_keys(factory):
    defaults = tuple(takes[name].default for name in TORCH_NAMES[key])
    if all(_is_number(d) for d in defaults):
      options[key] = defaults if key == "betas" else defaults[0]
  return options


def rename_optax_options(factory: Callable[..., Any], group: dict[str, Any],
                         defaults: dict[str, Any]) -> None:
  """Moves optax names given for torch ones (``b1``, ``b2``) to ``betas``;
  a beta not given is the one of `defaults` (the optimizer's options)."""
  if "betas" not in torch_keys(factory) or not {"b1", "b2"} & set(group):
    return
  if "betas" in group:
    raise TypeError("Give betas or b1/b2, not both.")
  b1, b2 = defaults.get("betas", (None, None))
  group["betas"] = (group.pop("b1", b1), group.pop("b2", b2))


def takes(factory: Any, key: str) -> bool:
  """Whether a factory `factory` has the option `key` (torch or optax name);
  False for a transformation."""
  return (not isinstance(factory, optax.GradientTransformation)
          and (key in torch_keys(factory) or key in _parameters(factory)))


def check_value(key: str, value: Any) -> None:
  """ValueError unless a torch-named hyperparameter has an allowed value."""
  if key == "betas":
    if not (isinstance(value, (tuple, list)) and len(value) == 2):
      raise ValueError(f"betas must be a pair (b1, b2), got betas={value!r}.")
    for name, beta in zip(("betas[0]", "betas[1]"), value):
      if not (_is_number(beta) and 0 <= beta < 1):
        raise ValueError(f"{name} must be in [0, 1), got betas={value!r}.")
    return
  number = float(value) if _is_number(value) else math.nan
  if not (math.isfinite(number) and number >= 0):
    raise ValueError(
        f"{key} must be a finite number >= 0, got {key}={value!r}.")


def optax_arguments(factory: Callable[..., Any],
                    group: dict[str, Any]) -> dict[str, Any]:
  """The factory's keyword arguments from a group (torch names renamed).

  Keys the factory does not take (an LR scheduler's ``initial_lr`` ...) are
  left out, as torch optimizers ignore them.
  """
  takes = _parameters(factory)
  arguments = {}
  for key, value in group.items():
    names = TORCH_NAMES.get(key)
    if key in NOT_OPTIONS or (names is None and key not in takes):
      continue
    if names is None:
      arguments[key] = value
    elif key == "betas":
      arguments["b1"], arguments["b2"] = value
    elif names[0] in takes:
      arguments[names[0]] = value
  return arguments


def injected_value(state: Any, key: str) -> Any:
  """The value of the injected torch-named `key` in an injected `state`."""
  values = tuple(float(state.hyperparams[name]) for name in TORCH_NAMES[key])
  return values if key == "betas" else values[0]


def check_construction(factory: Callable[..., Any],
                       group: dict[str, Any]) -> None:
  """TypeError for keys the factory cannot take, ValueError for values."""
  name = factory_name(factory)
  if "learning_rate" in group:
    raise TypeError(f"{name} does not take the option learning_rate (its "
                    "learning rate is 'lr', as in torch).")
  takes = _parameters(factory)
  unknown = sorted(set(group) - NOT_OPTIONS - set(TORCH_NAMES) - set(takes))
  unknown += sorted(set(group) & set(TORCH_NAMES) - set(torch_keys(factory)))
  if unknown:
    raise TypeError(f"{name} does not take the options {unknown}.")
  for key in TORCH_NAMES:
    if key in group:
      check_value(key, group[key])
  try:
    inspect.signature(factory).bind(**optax_arguments(factory, group))
  except TypeError as error:
    raise TypeError(
        f"{name} cannot be called with the options "
        f"{sorted(set(group) - NOT_OPTIONS)}: {error}") from error


def static_arguments(factory: Callable[..., Any], group: dict[str, Any],
                     injected: tuple[str, ...]) -> dict[str, Any]:
  """The factory arguments that are not injected (nor the learning rate)."""
  dynamic = {name for key in injected + ("lr",) for name in TORCH_NAMES[key]}
  return {k: v for k, v in optax_arguments(factory, group).items()
          if k not in dynamic}


def build(factory: Callable[..., Any], group: dict[str, Any],
          params: list[jax.Array]) -> tuple[optax.GradientTransformation,
                                            dict[str, Any], tuple[str, ...]]:
  """(transformation, static arguments, injected torch keys) of a group.

  The torch-named numeric hyperparameters are injected, except a learning
  rate that the transformation learns: it is the initial value then.
  """
  arguments = optax_arguments(factory, group)
  injected = [key for key in torch_keys(factory) if key in group]
  if "lr" in injected:
    shapes = jax.eval_shape(factory(**arguments).init, params)
    rate = _rate.find_rate(shapes)
    if rate is not None and rate.learned:
      injected.remove("lr")
  injected = tuple(injected)
  static = static_arguments(factory, group, injected)
  dynamic = {name for key in injected for name in TORCH_NAMES[key]}
  if not dynamic:
    return factory(**arguments), static, injected
  wide = any(p.dtype in (jnp.float64, jnp.complex128) for p in params)
  not_injected = [name for name in _parameters(factory)
                  if name not in dynamic]
  tx = optax.inject_hyperparams(
      factory, static_args=not_injected,
      hyperparam_dtype=jnp.float64 if wide else jnp.float32)(**arguments)
  return _keeping_dtypes(tx), static, injected


def _keeping_dtypes(
    tx: optax.GradientTransformation) -> optax.GradientTransformation:
  """`tx` whose new state has the dtypes of the old one.

  Injected hyperparameters are float32 (float64 arrays with 64-bit params)
  where the factory's own are weakly typed Python floats, so they would
  promote bfloat16 or float16 moments (or float32 ones next to float64
  params); the state stays in the params' dtypes, as with the factory's
  transformation itself.
  """

  def update(updates, state, params=None):
    updates, new_state = tx.update(updates, state, params)
    return updates, optax.tree.cast_like(new_state, state)

  return optax.GradientTransformation(tx.init, update)
