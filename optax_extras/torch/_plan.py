"""The step of one parameter group, prepared without changing anything.

`plan` checks a group's gradients and options, rebuilds its transformation
if a static option changed, writes the torch-named values a user (or a
scheduler) changed into new states, splits the cohorts the present
gradients cut through, and compiles the step. Nothing of the optimizer
changes until `commit`, so a failing check leaves every group as it was.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import torch

from optax_extras.torch import _convert
from optax_extras.torch import _group
from optax_extras.torch import _options

Cohort = _group.Cohort


class Plan(NamedTuple):
  """A checked, compiled step of group `index`, ready to run.

  `record` is the group's record as it will be once the step ran (new
  transformation, split and written states); the optimizer swaps it in and
  puts the step's results into it.
  """

  index: int
  record: _group.Group
  stepping: tuple[int, ...]  # positions in record.cohorts that step
  step: Callable[..., Any]
  args: tuple[Any, ...]


def _check_grads(index: int, params: list[torch.Tensor]) -> tuple[int, ...]:
  """The positions of the parameters with a gradient (checked)."""
  stepping = []
  for k, p in enumerate(params):
    grad = p.grad
    if grad is None:
      continue
    if grad.layout != torch.strided:
      raise TypeError(
          f"Parameter {k} of group {index} has a {grad.layout} gradient: "
          "sparse gradients are not supported.")
    if grad.dtype != p.dtype or grad.shape != p.shape:
      raise TypeError(
          f"Parameter {k} of group {index} is {p.dtype}{list(p.shape)} but "
          f"its gradient is {grad.dtype}{list(grad.shape)}.")
    stepping.append(k)
  return tuple(stepping)


def _rebuilt(factory, index, group, record):
  """(tx, static, compiled): rebuilt when a static option changed."""
  if record.static is None or _options.static_arguments(
      factory, group, record.injected) == record.static:
    return record.tx, record.static, record.compiled
  params = record.param_arrays(group["params"], range(len(group["params"])))
  tx, static, _ = _options.build(factory, group, params)
  for cohort in record.cohorts:
    shapes = jax.eval_shape(tx.init, [params[k] for k in cohort.indices])
    if not _group.same_arrays(shapes, cohort.state):
      raise ValueError(
          f"The options of group {index} changed to {static} and the new "
          "transformation's state does not match the current one.")
  return tx, static, {}


def _changed_values(index, group, record) -> dict[str, Any]:
  """The torch-named values changed since the last step (checked)."""
  changed = {}
  for key in ("lr",) + tuple(k for k in record.injected if k != "lr"):
    if key in group and group[key] != record.synced.get(key):
      _options.check_value(key, group[key])
      changed[key] = group[key]
  if "lr" in changed and record.rate is None:
    raise ValueError(
        f"param_groups[{index}]['lr'] was set to {group['lr']!r} but the "
        "transformation's state has no learning_rate: pass tx as a factory "
        "(e.g. optax.adam) to make lr a hyperparameter.")
  return changed


def _write_injected(state: Any, key: str, value: Any) -> Any:
  names = _options.TORCH_NAMES[key]
  values = tuple(value) if key == "betas" else (value,)
  hyperparams = dict(state.hyperparams)
  for name, v in zip(names, values):
    hyperparams[name] = jnp.asarray(v, hyperparams[name].dtype)
  return state._replace(hyperparams=hyperparams)


def _unshared(state: Any) -> Any:
  """`state` with a copy of every leaf seen before (states are donated, and
  a writer may put one array in two places)."""
  seen = set()

  def once(leaf):
    if id(leaf) in seen:
      return jnp.copy(leaf)
    seen.add(id(leaf))
    return leaf

  return jax.tree.map(once, state)


def _written(cohorts: list[Cohort], changed: dict[str, Any]) -> list[Cohort]:
  """The cohorts with the changed values written into their states."""
  if not changed:
    return cohorts
  result = []
  for cohort in cohorts:
    state = cohort.state
    for key, value in changed.items():
      if key == "lr":
        state = cohort.rate.write(state, float(value))
      else:
        state = _write_injected(state, key, value)
    result.append(cohort._replace(state=_unshared(state)))
  return result


def plan(factory, index: int, group: dict[str, Any],
         record: _group.Group) -> Plan | None:
  """The step of group `index`, or None when no parameter has a gradient."""
  params = group["params"]
  present = _check_grads(index, params)
  if not present:
    return None
  tx, static, compiled = _rebuilt(factory, index, group, record)
  changed = _changed_values(index, group, record)
  cohorts = _group.split_for(tx, record.cohorts, set(present), index)
  cohorts = _written(cohorts, changed)
  stepping = tuple(n for n, c in enumerate(cohorts) if c.indices[0] in
                   present)
  param_arrays = [record.param_arrays(params, cohorts[n].indices)
                  for n in stepping]
  args = (
      [[_convert.tensor_to_jax(params[k].grad)
        for k in cohorts[n].indices] for n in stepping],
      [cohorts[n].state for n in stepping],
      param_arrays,
  )
  key = tuple(cohorts[n].indices for n in stepping)
  step = compiled.get(key)
  if step is None:
    try:
      step = _group.checked_step(tx, args)
    except Exception as error:
      raise ValueError(
          f"Cannot run the transformation of group {index} on its "
          f"parameters {list(present)} (those with gradients): {error}"
      ) from error
  next_record = dataclasses.replace(
      record, tx=tx, static=static, cohorts=cohorts,
      synced={**record.synced, **changed}, compiled={**compiled, key: step})
  return Plan(index, next_record, stepping, step, args)
