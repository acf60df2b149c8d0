"""``state_dict`` and ``load_state_dict`` of `OptaxOptimizer`.

A state_dict holds only what ``torch.load(..., weights_only=True)`` reads:
tensors, numbers, strings, and lists, tuples and dicts of them. Options
that are not plain data (a dtype such as ``mu_dtype=jnp.bfloat16``, a
schedule, a factory) are left out: the optimizer that loads keeps its own.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import torch

from optax_extras.torch import _convert
from optax_extras.torch import _group
from optax_extras.torch import _options

_PLAIN = (bool, int, float, str, type(None), torch.Tensor)


def is_plain(value: Any) -> bool:
  """Whether `value` loads with ``torch.load(..., weights_only=True)``."""
  if isinstance(value, (list, tuple)):
    return all(is_plain(v) for v in value)
  if isinstance(value, dict):
    return all(isinstance(k, (str, int)) and is_plain(v)
               for k, v in value.items())
  return isinstance(value, _PLAIN)


def saved_group(group: dict[str, Any], first: int) -> dict[str, Any]:
  """A group's plain options, its parameters numbered from `first`."""
  saved = {k: v for k, v in group.items()
           if k not in _options.NOT_OPTIONS and is_plain(v)}
  saved["params"] = list(range(first, first + len(group["params"])))
  return saved


def saved_state(record: _group.Group) -> dict[str, Any]:
  """A group's cohorts: parameter positions, state leaves and their paths."""
  cohorts = []
  for cohort in record.cohorts:
    leaves = jax.tree_util.tree_leaves_with_path(cohort.state)
    cohorts.append({
        "params": list(cohort.indices),
        "paths": [jax.tree_util.keystr(path) for path, _ in leaves],
        "optax_state": [_convert.to_torch(leaf).clone() for _, leaf in leaves],
    })
  return {"cohorts": cohorts}


def check_group_keys(index: int, saved: dict[str, Any],
                     group: dict[str, Any], takes: set[str]) -> None:
  """ValueError for a saved option this group does not know.

  Known: the group's own keys, and keys the transformation does not take
  (an LR scheduler's ``initial_lr`` ...), with plain values; never ``tx``.
  """
  for key, value in saved.items():
    known = key != "tx" and (key in group or key not in takes)
    if not known or not is_plain(value):
      raise ValueError(
          f"state_dict['param_groups'][{index}] has the option {key!r} "
          f"({type(value).__name__}), which this optimizer's group does not "
          f"have; known options: {sorted(set(group) - {'params'})}.")


def _cohort_state(index, entry, tx, params):
  """The optax state of one saved cohort, checked against `tx.init`."""
  indices = tuple(entry["params"])
  if not indices or any(not 0 <= k < len(params) for k in indices):
    raise ValueError(f"Group {index} has no parameters {list(indices)}.")
  shapes = jax.eval_shape(tx.init, [params[k] for k in indices])
  leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes)
  paths = [jax.tree_util.keystr(path) for path, _ in leaves]
  if list(entry["paths"]) != paths:
    raise ValueError(
        f"The optax state of group {index} has leaves {paths}, the "
        f"state_dict has {list(entry['paths'])}.")
  values = []
  for path, (_, leaf), tensor in zip(paths, leaves, entry["optax_state"]):
    value = _convert.tensor_to_jax(tensor)
    if value.shape != leaf.shape or value.dtype != leaf.dtype:
      raise ValueError(
          f"Leaf {path} of group {index} is {leaf.dtype}{list(leaf.shape)} "
          f"here but {value.dtype}{list(value.shape)} in the state_dict.")
    values.append(jnp.array(value, copy=True))
  return indices, jax.tree.unflatten(treedef, values)


def loaded_cohorts(index: int, entry: Any, tx: Any,
                   params: list[jax.Array]) -> list[tuple[Any, Any]]:
  """(indices, state) of each saved cohort of group `index` (checked).

  The format before per-parameter states (``{"optax_state", "paths"}``: one
  state for the group) loads as one cohort.
  """
  if isinstance(entry, dict) and set(entry) == {"optax_state", "paths"}:
    entry = {"cohorts": [{"params": list(range(len(params))), **entry}]}
  if not isinstance(entry, dict) or set(entry) != {"cohorts"}:
    keys = sorted(entry) if isinstance(entry, dict) else entry
    raise ValueError(
        f"state_dict['state'][{index}] is not the state of an "
        f"OptaxOptimizer group (got {keys}); the state of a torch "
        "optimizer loads with load_torch_state or import_torch_state.")
  cohorts = [_cohort_state(index, e, tx, params) for e in entry["cohorts"]]
  covered = sorted(k for indices, _ in cohorts for k in indices)
  if covered != list(range(len(params))):
    raise ValueError(
        f"The cohorts of group {index} cover the parameters {covered}, not "
        f"each of its {len(params)} parameters once.")
  return cohorts
