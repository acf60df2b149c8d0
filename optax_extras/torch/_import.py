"""Optax states from the ``state_dict()`` of torch optimizers.

One converter per upstream layout: the per-parameter state keys and group
options that identify it, the optax state that receives it, and the
function that fills that state from the torch tensors.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_extras import ScaleByDiffGradState
from optax_extras import ScaleByExpectigradState

_INT32_LIMIT = 2**31 - 1


class _Fields(NamedTuple):
  """The torch state of every parameter, read as optax trees."""

  tree: Callable[..., Any]  # (key, like, count=False) -> tree like `like`
  count: Any  # the common step count (int32), or None without "step"
  groups: list[dict[str, Any]]
  keys: set[str]  # the per-parameter keys present


class _Converter(NamedTuple):
  """How one torch optimizer's state maps to an optax state."""

  name: str
  state_type: type
  required: frozenset[str]
  optional: frozenset[str]
  group_options: dict[str, Any]  # option -> required value (None: any)
  convert: Callable[[Any, _Fields], Any]


def _adam(target, fields):
  return target._replace(count=fields.count,
                         mu=fields.tree("exp_avg", target.mu),
                         nu=fields.tree("exp_avg_sq", target.nu))


def _amsgrad(target, fields):
  """torch keeps the maximum of the raw second moment and divides it by the
  current bias correction; optax the maximum of the corrected one. nu_max
  is torch's maximum over (1 - b2^t), the value torch divides by at step t."""
  b2 = {group["betas"][1] for group in fields.groups}
  if len(b2) != 1:
    raise ValueError(f"The groups' betas[1] differ: {sorted(b2)}.")
  correction = 1.0 - b2.pop() ** int(fields.count)
  nu_max = jax.tree.map(lambda x: x / jnp.asarray(correction, x.dtype),
                        fields.tree("max_exp_avg_sq", target.nu_max))
  return _adam(target, fields)._replace(nu_max=nu_max)


def _sgd(target, fields):
  return target._replace(trace=fields.tree("momentum_buffer", target.trace))


def _diffgrad(target, fields):
  return _adam(target, fields)._replace(
      prev_grad=fields.tree("previous_grad", target.prev_grad))


def _expectigrad(target, fields):
  if ("counter" in fields.keys) != (target.counter is not None):
    raise ValueError(
        "sparse_counter differs: the torch Expectigrad state "
        f"{'has' if 'counter' in fields.keys else 'has no'} counter, tx's "
        f"{'has' if target.counter is not None else 'has no'} counter.")
  return target._replace(
      count=fields.count, sum_sq=fields.tree("sum", target.sum_sq),
      counter=(None if target.counter is None
               else fields.tree("counter", target.counter, count=True)),
      momentum=fields.tree("momentum", target.momentum))


_CONVERTERS = (
    _Converter("torch_optimizer.DiffGrad", ScaleByDiffGradState,
               frozenset({"step", "exp_avg", "exp_avg_sq", "previous_grad"}),
               frozenset(), {"betas": None, "eps": None,
                             "weight_decay": None}, _diffgrad),
    _Converter("torch.optim.Adam", optax.ScaleByAdamState,
               frozenset({"step", "exp_avg", "exp_avg_sq"}), frozenset(),
               {"betas": None, "eps": None, "amsgrad": False}, _adam),
    _Converter("torch.optim.Adam(amsgrad=True)", optax.ScaleByAmsgradState,
               frozenset({"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}),
               frozenset(), {"betas": None, "eps": None, "amsgrad": True},
               _amsgrad),
    _Converter("torch.optim.SGD", optax.TraceState,
               frozenset({"momentum_buffer"}), frozenset(),
               {"momentum": None, "dampening": None, "nesterov": None}, _sgd),
    _Converter("expectigrad.pytorch.Expectigrad", ScaleByExpectigradState,
               frozenset({"step", "sum"}), frozenset({"counter", "momentum"}),
               {"beta": None, "eps": None, "sparse_counter": None},
               _expectigrad),
)


def check_state_dict(state_dict: Any) -> None:
  if not isinstance(state_dict, dict) or set(state_dict) != {
      "state", "param_groups"}:
    raise ValueError("Not a torch optimizer state_dict: expected the keys "
                     "'state' and 'param_groups'.")


def _converter_of(keys: set[str], groups: list[dict[str, Any]]) -> _Converter:
  """The converter of a state with per-parameter `keys` and these groups."""
  def matches(converter):
    return (converter.required <= keys
            <= converter.required | converter.optional
            and all(option in group and value in (None, group[option])
                    for group in groups
                    for option, value in converter.group_options.items()))

  for converter in _CONVERTERS:
    if matches(converter):
      return converter
  known = "; ".join(
      f"{c.name}: {sorted(c.required | c.optional)}" for c in _CONVERTERS)
  raise ValueError(
      f"Unrecognised torch optimizer state with keys {sorted(keys)} and "
      f"group options {sorted(set().union(*groups))}. Known state keys: "
      f"{known}.")


def _check_options(converter, groups):
  for group in groups:
    if group.get("maximize", False):
      raise ValueError(f"{converter.name} with maximize=True has no optax "
                       "twin.")
    if converter.state_type is optax.TraceState and group.get("dampening", 0):
      raise ValueError(
          "torch.optim.SGD with dampening != 0 has no optax twin "
          f"(dampening={group['dampening']!r}).")


def _as_count(name: str, value: Any) -> np.ndarray:
  """`value` as int32 counts: ValueError unless whole, >= 0 and < 2^31."""
  array = np.asarray(value, dtype=np.float64)
  if not (np.all(array == np.round(array)) and np.all(array >= 0)):
    raise ValueError(f"{name} is not a count (whole and >= 0).")
  if np.any(array > _INT32_LIMIT):
    raise ValueError(
        f"{name} must be at most 2^31 - 1 = {_INT32_LIMIT} (optax counts "
        f"are int32), got {name}={array.max():.0f}.")
  return array.astype(np.int32)


def _common_count(converter, per_param):
  """The one step count of all parameters, as an int32 array."""
  present = [s for s in per_param if s]
  if len(present) != len(per_param):
    raise ValueError(
        f"Only {len(present)} of {len(per_param)} parameters have a "
        f"{converter.name} state: optax keeps one step count for all.")
  steps = sorted({float(s["step"]) for s in present})
  if len(steps) != 1:
    raise ValueError(f"The parameters' step counts differ: {steps}.")
  return jnp.asarray(_as_count("step", steps[0]))


def _tree_reader(converter, indices, per_param, leaves, treedef):
  """(key, like, count) -> the torch tensors `key`, as a tree like `like`."""
  def tree(key, like, count=False):
    values = []
    for k, s, param, init in zip(indices, per_param, leaves,
                                 treedef.flatten_up_to(like)):
      tensor = (s or {}).get(key)
      if tensor is None:
        values.append(jnp.zeros_like(init))
        continue
      if tuple(tensor.shape) != tuple(np.shape(param)):
        raise ValueError(
            f"{converter.name} state {key!r} of parameter {k} has shape "
            f"{list(tensor.shape)}, the parameter {list(np.shape(param))}.")
      array = tensor.detach().cpu()
      array = (array.double() if array.is_floating_point() else array).numpy()
      if count:
        array = _as_count(f"{key} of parameter {k}", array)
      values.append(jnp.asarray(array, init.dtype))
    return jax.tree.unflatten(treedef, values)
  return tree


def import_torch_state(
    state_dict: dict[str, Any], tx: optax.GradientTransformation, params: Any
) -> Any:
  r"""The state of `tx` that continues a torch optimizer's run.

  ``state_dict`` is the ``state_dict()`` of one of

  ===================================  =====================================
  torch optimizer                      optax state that receives it
  ===================================  =====================================
  ``torch.optim.Adam`` (or AdamW)      ``optax.ScaleByAdamState`` (optax.adam)
  ``torch.optim.Adam(amsgrad=True)``   ``optax.ScaleByAmsgradState``
                                       (optax.amsgrad)
  ``torch.optim.SGD`` (momentum)       ``optax.TraceState`` (optax.sgd)
  ``torch_optimizer.DiffGrad``         `optax_extras.ScaleByDiffGradState`
  ``expectigrad.pytorch.Expectigrad``  `optax_extras.ScaleByExpectigradState`
  ===================================  =====================================

  The state of `tx` (from ``tx.init(params)``) must hold exactly one state of
  that type, anywhere (inside `optax.chain`, `optax.inject_hyperparams` ...);
  everything else keeps its initial value (schedules restart: torch keeps
  them in its LR scheduler). The hyperparameters are not read: build `tx`
  with those of the torch optimizer (``optax.adam(lr, b1, b2, eps)`` matches
  ``torch.optim.Adam(lr, (b1, b2), eps)`` and ``optax.adamw`` ``AdamW``,
  whose state is Adam's; ``optax.sgd(lr, momentum, nesterov)`` matches
  ``torch.optim.SGD`` with ``dampening=0``, whose first buffer ``g`` is
  optax's ``g + momentum * 0``).

  Semantic choices:

  * Torch keeps a step count per parameter, optax one per transformation:
    the counts must agree (`OptaxOptimizer.load_torch_state` gives
    parameters with different counts separate states). Parameters absent
    from the torch state (never stepped) start from zeros, which is exact for
    SGD only; for the others they must all be absent.
  * Counts become int32: a step (or an Expectigrad counter) above
    2^31 - 1 is a ValueError, never a wrapped value.
  * AMSGrad: torch keeps the maximum of the raw second moment
    :math:`\hat v = \max_s v_s` and divides it by the current correction
    :math:`1 - \beta_2^t`; `optax.amsgrad` keeps the maximum of the corrected
    moments. ``nu_max`` is torch's maximum divided by
    :math:`1 - \beta_2^t` (the value torch divides by at step t); later
    steps follow optax's rule, which differs from torch's where an old
    maximum dominates, by a factor that tends to 1 as t grows.

  Args:
    state_dict: a torch optimizer's ``state_dict()``.
    tx: the transformation that continues the run.
    params: its parameters, a tree whose leaves, in order, are the torch
      optimizer's parameters (in ``param_groups`` order).

  Returns:
    An optax state for `tx`.

  Raises:
    ValueError: for an unknown state layout, a `tx` without (or with several)
      states of the matching type, a mismatch in number of parameters,
      shapes or step counts, counts beyond int32, or torch options without
      optax twin.

  Example:
    >>> import jax.numpy as jnp, optax, torch
    >>> from optax_extras.torch import import_torch_state
    >>> w = torch.nn.Parameter(torch.ones(3))
    >>> torch_opt = torch.optim.Adam([w], lr=0.1)
    >>> w.grad = torch.ones(3)
    >>> torch_opt.step()
    >>> state = import_torch_state(torch_opt.state_dict(), optax.adam(0.1),
    ...                            [jnp.ones(3)])
    >>> int(state[0].count)
    1
  """
  check_state_dict(state_dict)
  leaves, treedef = jax.tree.flatten(params)
  indices = [k for group in state_dict["param_groups"]
             for k in group["params"]]
  if len(indices) != len(leaves):
    raise ValueError(
        f"The state_dict has {len(indices)} parameters, params has "
        f"{len(leaves)} leaves.")
  opt_state = tx.init(params)
  per_param = [state_dict["state"].get(k) for k in indices]
  if not any(per_param):
    return opt_state
  keys = set().union(*(s.keys() for s in per_param if s))
  groups = state_dict["param_groups"]
  converter = _converter_of(keys, groups)
  _check_options(converter, groups)
  is_target = lambda x: isinstance(x, converter.state_type)
  targets = [x for x in jax.tree.leaves(opt_state, is_leaf=is_target)
             if is_target(x)]
  if len(targets) != 1:
    raise ValueError(
        f"The state of tx has {len(targets)} "
        f"{converter.state_type.__name__}; exactly one is needed to receive the state of {converter.name}.")
  count = (_common_count(converter, per_param)
           if "step" in converter.required else None)
  fields = _Fields(_tree_reader(converter, indices, per_param, leaves,
                                treedef), count, groups, keys)
  new = converter.convert(targets[0], fields)
  return jax.tree.map(lambda x: new if is_target(x) else x, opt_state,
                      is_leaf=is_target)


def _sub_state_dict(state_dict, members):
  """The part of a torch state_dict for the parameter numbers `members`."""
  return {
      "state": {k: v for k, v in state_dict["state"].items() if k in members},
      "param_groups": [
          {**group, "params": [k for k in group["params"] if k in members]}
          for group in state_dict["param_groups"]],
  }


def split_by_group(state_dict: dict[str, Any], sizes: list[int]
                   ) -> list[list[tuple[tuple[int, ...], dict[str, Any]]]]:
  """The torch state per optimizer group of `sizes` parameters, split into
  parameters with the same step count: (positions, sub-state_dict) pairs."""
  check_state_dict(state_dict)
  indices = [k for group in state_dict["param_groups"]
             for k in group["params"]]
  if len(indices) != sum(sizes):
    raise ValueError(
        f"The state_dict has {len(indices)} parameters, this optimizer "
        f"{sum(sizes)}.")
  result, first = [], 0
  for size in sizes:
    by_step = {}
    for position, k in enumerate(indices[first:first + size]):
      state = state_dict["state"].get(k) or {}
      step = float(state["step"]) if "step" in state else None
      by_step.setdefault(step, []).append((position, k))
    first += size
    result.append([
        (tuple(p for p, _ in members),
         _sub_state_dict(state_dict, {k for _, k in members}))
        for members in by_step.values()])
  return result
