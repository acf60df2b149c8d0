"""The learning rate of an optax state, as torch's ``param_groups[i]["lr"]``.

Three places hold it: the bottom level of a `hyperoptimize` / `gdtuo` stack
(learned, read and written in natural units through
`optax_extras.hyperparameters` / `optax_extras.set_hyperparameters`), a
state field called ``learning_rate`` (learned, e.g. `optax_extras.adam_hd`),
or the ``learning_rate`` that `optax.inject_hyperparams` injects.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

import optax_extras
from optax_extras import HyperoptimizeState

_STACK_RATE_NAMES = ("learning_rate", "alpha")


class Rate(NamedTuple):
  """How to read and write the learning rate of states of one structure."""

  learned: bool
  read: Callable[[Any], float]
  write: Callable[[Any, float], Any]


def _is_stack(x: Any) -> bool:
  return isinstance(x, HyperoptimizeState)


def _stack_rate(state: Any) -> Rate | None:
  if not any(_is_stack(x) for x in jax.tree.leaves(state, is_leaf=_is_stack)):
    return None
  bottom = optax_extras.hyperparameters(state)[0]
  names = [n for n in _STACK_RATE_NAMES
           if n in bottom and getattr(bottom[n], "shape", None) == ()]
  if not names:
    return None
  name = names[0]
  return Rate(
      learned=True,
      read=lambda s: float(optax_extras.hyperparameters(s)[0][name]),
      write=lambda s, v: optax_extras.set_hyperparameters(s, {name: v}))


def _field_rate(state: Any) -> Rate | None:
  """A scalar leaf named learning_rate: a learned field, else an injected
  one; None when there is none or several of the same kind."""
  leaves_with_paths = jax.tree_util.tree_leaves_with_path(state)
  learned, injected = [], []
  for index, (path, leaf) in enumerate(leaves_with_paths):
    key = path[-1] if path else None
    if getattr(leaf, "shape", None) != ():
      continue
    if getattr(key, "name", None) == "learning_rate":
      learned.append(index)
    elif getattr(key, "key", None) == "learning_rate":
      injected.append(index)
  found = learned if learned else injected
  if len(found) != 1:
    return None
  index = found[0]

  def read(s):
    return float(jax.tree.leaves(s)[index])

  def write(s, value):
    leaves, structure = jax.tree.flatten(s)
    leaves[index] = jnp.asarray(value, leaves[index].dtype)
    return jax.tree.unflatten(structure, leaves)

  return Rate(learned=bool(learned), read=read, write=write)


def find_rate(state: Any) -> Rate | None:
  """The learning rate of `state`, or None.

  The accessor holds for states of the same structure as `state` (a state
  over as many parameters).
  """
  return _stack_rate(state) or _field_rate(state)
