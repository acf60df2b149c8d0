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


def check_layout(state_dict: Any, sizes: list[int]) -> None:
  """ValueError unless `state_dict` has the fields of an optimizer's
  state_dict whose groups have `sizes` parameters (other top-level keys, a
  hook's, are ignored as by torch)."""
  if not isinstance(state_dict, dict) or not {
      "state", "param_groups"} <= set(state_dict):
    raise ValueError(
        "Not an optimizer state_dict: expected the keys ['param_groups', "
        "'state'].")
  groups = state_dict["param_groups"]
  if not (isinstance(groups, (list, tuple)) and all(
      isinstance(g, dict) and isinstance(g.get("params"), (list, tuple))
      for g in groups)):
    raise ValueError(
        "state_dict['param_groups'] must be a list of dicts, each with a "
        f"list 'params', got {_described(groups)}.")
  if [len(g["params"]) for g in groups] != sizes:
    raise ValueError(
        "The state_dict's parameter groups have sizes "
        f"{[len(g['params']) for g in groups]}, this optimizer's {sizes}.")
  if not isinstance(state_dict["state"], dict):
    raise ValueError(
        "state_dict['state'] must be a dict from group index to the group's "
        f"state, got {_described(state_dict['state'])}.")


def _described(value: Any) -> str:
  return repr(value) if is_plain(value) and len(repr(value)) < 80 else (
      type(value).__name__)


def check_group_keys(index: int, saved: dict[str, Any],
                     group: dict[str, Any], takes: set[str],
                     held: dict[str, Any]) -> None:
  """ValueError for a saved option this group does not know, or a value a
  torch-named option may not have.

  Known: the group's own keys, and keys the transformation does not take
  (an LR scheduler's ``initial_lr`` ...), with plain values; never ``tx``.
  A value equal to the one the saved state holds (``held``) is not checked:
  the next step does not write it, and a learned rate may have left the
  range a user may set (a negative learning rate).
  """
  for key, value in saved.items():
    known = key != "tx" and (key in group or key not in takes)
    if not known or not is_plain(value):
      raise ValueError(
          f"state_dict['param_groups'][{index}] has the option {key!r} "
          f"({type(value).__name__}), which this optimizer's group does not "
          f"have; known options: {sorted(set(group) - {'params'})}.")
    if key in _options.TORCH_NAMES and not (key in held
                                             and held[key] == value):
      try:
        _options.check_value(key, value)
      except ValueError as error:
        raise ValueError(
            f"state_dict['param_groups'][{index}]: {error}") from error


def _is_position(value: Any, size: int) -> bool:
  return (isinstance(value, int) and not isinstance(value, bool)
          and 0 <= value < size)


def _cohort_state(where, index, entry, tx, params):
  """The optax state of one saved cohort, checked against `tx.init`."""
  fields = {"params", "paths", "optax_state"}
  if not isinstance(entry, dict) or set(entry) != fields:
    raise ValueError(
        f"{where} must be a dict with the keys {sorted(fields)}, got "
        f"{sorted(entry) if isinstance(entry, dict) else _described(entry)}.")
  indices = entry["params"]
  if not (isinstance(indices, (list, tuple)) and indices
          and all(_is_position(k, len(params)) for k in indices)):
    raise ValueError(
        f"{where}['params'] must be positions of parameters of group "
        f"{index} (ints in [0, {len(params)})), got {_described(indices)}.")
  indices = tuple(indices)
  shapes = jax.eval_shape(tx.init, [params[k] for k in indices])
  leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes)
  paths = [jax.tree_util.keystr(path) for path, _ in leaves]
  if (not isinstance(entry["paths"], (list, tuple))
      or list(entry["paths"]) != paths):
    raise ValueError(
        f"The optax state of group {index} has leaves {paths}, the "
        f"state_dict has {_described(entry['paths'])}.")
  tensors = entry["optax_state"]
  if not (isinstance(tensors, (list, tuple)) and len(tensors) == len(paths)
          and all(isinstance(t, torch.Tensor) for t in tensors)):
    got = (f"{len(tensors)} entries of the types "
           f"{sorted({type(t).__name__ for t in tensors})}"
           if isinstance(tensors, (list, tuple)) else _described(tensors))
    raise ValueError(
        f"{where}['optax_state'] must be a list of {len(paths)} tensors (one "
        f"per path), got {got}.")
  values = []
  for path, (_, leaf), tensor in zip(paths, leaves, tensors):
    saved = f"{str(tensor.dtype).removeprefix('torch.')}{list(tensor.shape)}"
    if saved != f"{leaf.dtype}{list(leaf.shape)}":
      raise ValueError(
          f"Leaf {path} of group {index} is {leaf.dtype}{list(leaf.shape)} "
          f"here but {saved} in the state_dict.")
    values.append(jnp.array(_convert.tensor_to_jax(tensor), copy=True))
  return indices, jax.tree.unflatten(treedef, values)


def loaded_cohorts(index: int, entry: Any, tx: Any,
                   params: list[jax.Array]) -> list[tuple[Any, Any]]:
  """(indices, state) of each saved cohort of group `index` (checked).

  The format before per-parameter states (``{"optax_state", "paths"}``: one
  state for the group) loads as one cohort.
  """
  if isinstance(entry, dict) and set(entry) == {"optax_state", "paths"}:
    entry = {"cohorts": [{"params": list(range(len(params))), **entry}]}
  if not (isinstance(entry, dict) and set(entry) == {"cohorts"}
          and isinstance(entry["cohorts"], (list, tuple))):
    keys = (sorted(entry) if isinstance(entry, dict) else
            "no entry" if entry is None else _described(entry))
    raise ValueError(
        f"state_dict['state'][{index}] is not the state of an "
        f"OptaxOptimizer group (a dict with a list 'cohorts', got {keys}); "
        "the state of a torch optimizer loads with load_torch_state or "
        "import_torch_state.")
  cohorts = [
      _cohort_state(f"state_dict['state'][{index}]['cohorts'][{number}]",
                    index, e, tx, params)
      for number, e in enumerate(entry["cohorts"])]
  covered = sorted(k for indices, _ in cohorts for k in indices)
  if covered != list(range(len(params))):
    raise ValueError(
        f"The cohorts of group {index} cover the parameters {covered}, not "
        f"each of its {len(params)} parameters once.")
  return cohorts
