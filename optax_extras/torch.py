"""PyTorch interop: optax transformations as `torch.optim.Optimizer`.

* `OptaxOptimizer` runs any optax `GradientTransformation` as a torch
  optimizer: the update of each parameter group is one jitted JAX function,
  the tensors cross by DLPack and the parameters are updated in place.
* `to_jax` and `to_torch` convert trees of tensors and arrays by DLPack.
* `import_torch_state` turns the ``state_dict()`` of ``torch.optim.Adam``,
  ``torch.optim.SGD``, ``torch_optimizer.DiffGrad`` or
  ``expectigrad.pytorch.Expectigrad`` into the optax state of the matching
  transformation, so that a run started in torch continues in JAX.

This module imports torch; ``import optax_extras`` does not.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

from optax_extras._diffgrad import ScaleByDiffGradState
from optax_extras._expectigrad import ScaleByExpectigradState

_NOT_OPTIONS = ("params", "tx", "param_names", "lr")
_X64_DTYPES = (torch.float64, torch.int64, torch.complex128)


def _tensor_to_jax(tensor: torch.Tensor) -> jax.Array:
  if tensor.layout != torch.strided:
    raise TypeError(
        f"Only dense (strided) tensors cross to JAX, got layout "
        f"{tensor.layout} (sparse gradients are not supported).")
  if tensor.dtype in _X64_DTYPES and not jax.config.jax_enable_x64:
    raise TypeError(
        f"A {tensor.dtype} tensor needs 64-bit JAX: set "
        "jax.config.update('jax_enable_x64', True) or use "
        "`with jax.enable_x64(True):` (JAX would silently halve it).")
  tensor = tensor.detach().resolve_conj().resolve_neg()
  if not tensor.is_contiguous():
    tensor = tensor.contiguous()
  return jax.dlpack.from_dlpack(tensor)


def to_jax(tree: Any) -> Any:
  """Converts the `torch.Tensor` leaves of `tree` to JAX arrays by DLPack.

  No copy where the device and layout allow (a non-contiguous tensor is made
  contiguous first); the arrays share memory with the tensors. dtypes are
  kept (bfloat16, float16, float64 ...); a 64-bit tensor raises TypeError
  unless 64-bit JAX is enabled. Other leaves pass through unchanged.
  """
  return jax.tree.map(
      lambda x: _tensor_to_jax(x) if isinstance(x, torch.Tensor) else x, tree)


def to_torch(tree: Any) -> Any:
  """Converts the `jax.Array` leaves of `tree` to tensors by DLPack.

  No copy where the device allows: the tensors share memory with the arrays
  (``.clone()`` them before writing). Other leaves pass through unchanged.
  """
  return jax.tree.map(
      lambda x: torch.from_dlpack(x) if isinstance(x, jax.Array) else x, tree)


def _rate_leaves(state: Any) -> tuple[list[jax.Array], list[jax.Array]]:
  """Scalar leaves called learning_rate: (learned fields, injected hparams)."""
  learned, injected = [], []
  for path, leaf in jax.tree_util.tree_leaves_with_path(state):
    key = path[-1] if path else None
    if getattr(leaf, "shape", None) != ():
      continue
    if getattr(key, "name", None) == "learning_rate":
      learned.append(leaf)
    elif getattr(key, "key", None) == "learning_rate":
      injected.append(leaf)
  return learned, injected


def _set_rate(state: Any, value: float) -> Any:
  """`value` into the learned learning_rate fields of `state`, or where there
  are none into its injected ones (an injected rate is the base of a learned
  one: writing both would move the learned rate twice)."""
  learned, _ = _rate_leaves(state)
  field = "name" if learned else "key"

  def replace(path, leaf):
    key = path[-1] if path else None
    named = getattr(key, field, None) == "learning_rate"
    if named and getattr(leaf, "shape", None) == ():
      return jnp.asarray(value, leaf.dtype)
    return leaf
  return jax.tree_util.tree_map_with_path(replace, state)


def _same_arrays(tree_a: Any, tree_b: Any) -> bool:
  leaves_a, def_a = jax.tree.flatten(tree_a)
  leaves_b, def_b = jax.tree.flatten(tree_b)
  return def_a == def_b and all(
      a.shape == b.shape and a.dtype == b.dtype
      for a, b in zip(leaves_a, leaves_b))


def _group_update(tx, num_params, keep, grads, state, params, scratch):
  """One step on the parameters `keep` of a group of `num_params`.

  `scratch` holds the previous new parameters (already copied to torch),
  donated so that XLA writes the new ones into them instead of allocating.

  The state's lists of `num_params` entries (the per-parameter moments) are
  cut to `keep` for the update and merged back, so the entries of the other
  parameters stay untouched; the rest of the state (counts, learned rates)
  advances.
  """
  def mirrors_params(x):
    return isinstance(x, list) and len(x) == num_params

  del scratch
  partial = len(keep) < num_params
  sub_state = state
  if partial:
    sub_state = jax.tree.map(
        lambda x: [x[k] for k in keep] if mirrors_params(x) else x,
        state, is_leaf=mirrors_params)
  updates, new_sub_state = tx.update(grads, sub_state, params)
  if not _same_arrays(new_sub_state, sub_state):
    raise ValueError("tx.update changed the structure, shapes or dtypes of "
                     "its state.")

  def merge(old, new):
    if not mirrors_params(old):
      return new
    merged = list(old)
    for j, k in enumerate(keep):
      merged[k] = new[j]
    return merged

  new_state = new_sub_state
  if partial:
    new_state = jax.tree.map(merge, state, new_sub_state,
                             is_leaf=mirrors_params)
  return optax.apply_updates(params, updates), new_state


class _Runtime:
  """What a parameter group needs besides its torch dict."""

  def __init__(self, tx, options, state, synced_lr):
    self.tx = tx
    self.options = options
    self.state = state
    self.synced_lr = synced_lr
    self.compiled = {}
    self.scratch = None


class _Plan(NamedTuple):
  index: int
  keep: tuple[int, ...]
  tx: optax.GradientTransformation
  options: dict[str, Any]
  compiled: dict[Any, Any]
  step: Any
  args: tuple[Any, ...]


class OptaxOptimizer(torch.optim.Optimizer):
  """Any optax transformation as a `torch.optim.Optimizer`.

  ``tx`` is either

  * a `optax.GradientTransformation`, used as is for every group (a group may
    carry its own under the key ``"tx"``); no other options; or
  * a factory such as ``optax.adam`` or ``optax_extras.diffgrad``, called once
    per group with the group's options (the keyword arguments given here,
    overridden by the group's dict). The torch key ``"lr"`` is the factory's
    ``learning_rate``; it defaults to the factory's default. ``lr`` is
    injected with `optax.inject_hyperparams`, so torch LR schedulers change it
    without a recompile; the other options are static: changing one rebuilds
    the transformation (a recompile) and keeps the state.

  A learning rate learned in the state (a field ``learning_rate``, e.g.
  `optax_extras.adam_hd`) is written to ``param_groups[i]["lr"]`` after every
  step; a value written there by the user is written into the state (every
  ``learning_rate`` of it) before the next step.

  Each group has one optax state, made by ``tx.init`` on the list of its
  parameters at construction, and one jitted update
  ``(grads, state, params) -> (new params, new state)`` per pattern of
  present gradients. Parameters whose ``grad`` is None are left alone: the
  update runs on the others, and the per-parameter entries of the state (the
  lists that mirror the parameters, such as Adam's moments) of the absent
  ones are not touched; group-wide entries (the step count, a learned rate)
  advance with every step of the group. A group with no gradient does not
  step. A transformation whose state does not mirror the parameters (e.g.
  `optax.flatten`) needs every gradient.

  Tensors cross to JAX by DLPack without copies where the device allows; new
  values are copied into the parameters in place (``p.copy_``), so references
  to them stay valid. Complex parameters need ``allow_complex=True``: most
  transformations written for real numbers (diffGrad, Expectigrad: ``g*g``)
  silently compute the wrong thing on them, while `optax.adam` is right.
  64-bit parameters need 64-bit JAX.

  ``state_dict()`` holds, for each group, the leaves of its optax state as
  tensors (copies) with their tree paths; it goes through `torch.save`.
  ``load_state_dict`` checks paths, shapes and dtypes against the current
  state and changes nothing on a mismatch. To start from the state of a
  torch optimizer, use `import_torch_state` (or `load_torch_state`).

  Every step validates all groups before it changes anything: on an error
  (a sparse gradient, a wrong dtype, a transformation that fails), parameters,
  states and options are untouched.

  Args:
    params: tensors or dicts of parameter groups, as for any torch optimizer.
    tx: a `optax.GradientTransformation`, or a factory returning one.
    allow_complex: accept complex parameters (for transformations known to
      handle them).
    **defaults: group options for a factory ``tx``.

  Example:
    >>> import optax, torch
    >>> from optax_extras.torch import OptaxOptimizer
    >>> model = torch.nn.Linear(3, 1)
    >>> opt = OptaxOptimizer(model.parameters(), optax.adam, lr=1e-2)
    >>> loss = model(torch.ones(2, 3)).square().mean()
    >>> loss.backward()
    >>> opt.step()
    >>> opt.param_groups[0]["lr"]
    0.01
  """

  def __init__(
      self,
      params: Any,
      tx: optax.GradientTransformation | Callable[..., Any],
      *,
      allow_complex: bool = False,
      **defaults: Any,
  ):
    if isinstance(tx, optax.GradientTransformation):
      if defaults:
        raise TypeError(
            f"Options {sorted(defaults)} need tx to be a factory (e.g. "
            "optax.adam), not a GradientTransformation.")
    elif callable(tx):
      learning_rate = inspect.signature(tx).parameters.get("learning_rate")
      if (learning_rate is not None and "lr" not in defaults
          and isinstance(learning_rate.default, (int, float))):
        defaults = {"lr": learning_rate.default, **defaults}
    else:
      raise TypeError(
          f"tx must be a GradientTransformation or a factory, got {tx!r}.")
    self._tx = tx
    self._allow_complex = allow_complex
    self._runtimes: list[_Runtime] = []
    super().__init__(params, defaults)

  @property
  def opt_states(self) -> list[Any]:
    """The optax state of each parameter group.

    Live JAX arrays, donated to the next step (then deleted): copy what you
    keep. ``torch.optim.Optimizer.state`` stays empty.
    """
    return [runtime.state for runtime in self._runtimes]

  def _factory_options(self, group, strict=False):
    """(tx, static options): the group's keys that the factory takes.

    Other keys (an LR scheduler's "initial_lr" ...) are ignored, as torch
    optimizers do, except at construction (`strict`), where they are typos.
    """
    tx = group.get("tx", self._tx)
    if isinstance(tx, optax.GradientTransformation):
      extra = sorted(set(group) - set(_NOT_OPTIONS))
      if strict and extra:
        raise TypeError(
            f"Group options {extra} need tx to be a factory (e.g. optax.adam),"
            " not a GradientTransformation.")
      return tx, {}
    if not callable(tx):
      raise TypeError(
          f"tx must be a GradientTransformation or a factory, got {tx!r}.")
    takes = inspect.signature(tx).parameters
    extra = sorted(set(group) - set(_NOT_OPTIONS) - set(takes))
    if strict and (extra or "learning_rate" in group):
      raise TypeError(
          f"{getattr(tx, '__name__', tx)} does not take the options "
          f"{extra or ['learning_rate']} (its learning rate is 'lr').")
    options = {k: v for k, v in group.items()
               if k in takes and k not in _NOT_OPTIONS}
    return tx, options

  def _build(self, group, strict=False):
    """(transformation, static options) of a group."""
    tx, options = self._factory_options(group, strict)
    if isinstance(tx, optax.GradientTransformation):
      return tx, options
    signature = inspect.signature(tx)
    kwargs = dict(options)
    if "lr" in group:
      kwargs["learning_rate"] = group["lr"]
    try:
      signature.bind(**kwargs)
    except TypeError as error:
      raise TypeError(
          f"{getattr(tx, '__name__', tx)} cannot be called with the options "
          f"{sorted(kwargs)}: {error}") from error
    if "lr" not in group:
      return tx(**options), options
    wide = any(p.dtype in (torch.float64, torch.complex128)
               for p in group["params"])
    static = [name for name, parameter in signature.parameters.items()
              if name != "learning_rate" and parameter.kind in (
                  parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)]
    tx = optax.inject_hyperparams(
        tx, static_args=static,
        hyperparam_dtype=jnp.float64 if wide else jnp.float32)(**kwargs)
    return tx, options

  def add_param_group(self, param_group: dict[str, Any]) -> None:
    super().add_param_group(param_group)
    group = self.param_groups[-1]
    try:
      self._runtimes.append(self._new_runtime(group))
    except Exception:
      self.param_groups.pop()
      raise

  def _new_runtime(self, group):
    index = len(self.param_groups) - 1
    for k, p in enumerate(group["params"]):
      if p.is_complex() and not self._allow_complex:
        raise TypeError(
            f"Parameter {k} of group {index} is {p.dtype}: pass "
            "allow_complex=True if the transformation handles complex "
            "numbers (optax.adam does; diffGrad and Expectigrad do not).")
    tx, options = self._build(group, strict=True)
    params = to_jax(list(group["params"]))
    try:
      state = jax.jit(tx.init)(params)
    except Exception as error:
      raise ValueError(
          f"tx.init failed on the parameters of group {index}: {error}"
      ) from error
    learned, injected = _rate_leaves(state)
    if learned and "lr" not in group:
      group["lr"] = float(learned[0])
    if "lr" in group and not (learned or injected):
      raise ValueError(
          f"Group {index} sets lr={group['lr']!r} but the state of its "
          "transformation has no learning_rate: pass tx as a factory (e.g. "
          "optax.adam) to make lr a hyperparameter.")
    return _Runtime(tx, options, state, group.get("lr"))

  def _plan(self, index):
    """Validates and compiles the step of group `index`; changes nothing."""
    group, runtime = self.param_groups[index], self._runtimes[index]
    params = group["params"]
    keep = tuple(k for k, p in enumerate(params) if p.grad is not None)
    if not keep:
      return None
    for k in keep:
      p, grad = params[k], params[k].grad
      if grad.layout != torch.strided:
        raise TypeError(
            f"Parameter {k} of group {index} has a {grad.layout} gradient: "
            "sparse gradients are not supported.")
      if grad.dtype != p.dtype or grad.shape != p.shape:
        raise TypeError(
            f"Parameter {k} of group {index} is {p.dtype}{list(p.shape)} but "
            f"its gradient is {grad.dtype}{list(grad.shape)}.")
    tx, options, compiled = runtime.tx, runtime.options, runtime.compiled
    if options != self._factory_options(group)[1]:
      tx, options = self._build(group)
      compiled = {}
      if not _same_arrays(jax.eval_shape(tx.init, to_jax(list(params))),
                          runtime.state):
        raise ValueError(
            f"The options of group {index} changed to {options} and the new "
            "transformation's state does not match the current one.")
    state = runtime.state
    if "lr" in group and group["lr"] != runtime.synced_lr:
      if not any(_rate_leaves(state)):
        raise ValueError(
            f"param_groups[{index}]['lr'] was set to {group['lr']!r} but the "
            "transformation's state has no learning_rate: pass tx as a "
            "factory (e.g. optax.adam) to make lr a hyperparameter.")
      state = _set_rate(state, float(group["lr"]))
    jax_params = to_jax([params[k] for k in keep])
    scratch = runtime.scratch
    if scratch is None or scratch[0] != keep:
      scratch = (keep, [jnp.zeros_like(p) for p in jax_params])
    args = (to_jax([params[k].grad for k in keep]), state, jax_params,
            scratch[1])
    step = compiled.get(keep)
    if step is None:
      update = functools.partial(_group_update, tx, len(params), keep)
      try:
        step = jax.jit(update, donate_argnums=(1, 3),
                       keep_unused=True).lower(*args).compile()
      except Exception as error:
        raise ValueError(
            f"Cannot run the transformation of group {index} on its "
            f"parameters {list(keep)} (those with gradients): {error}"
        ) from error
    return _Plan(index, keep, tx, options, compiled, step, args)

  def step(self, closure: Callable[[], Any] | None = None) -> Any:
    """Takes one optimizer step; returns the closure's loss (if any)."""
    loss = None
    if closure is not None:
      with torch.enable_grad():
        loss = closure()
    with torch.no_grad():
      plans = [self._plan(i) for i in range(len(self.param_groups))]
      results = [plan and plan.step(*plan.args) for plan in plans]
      for plan, result in zip(plans, results):
        if plan is None:
          continue
        new_params, new_state = jax.block_until_ready(result)
        group, runtime = self.param_groups[plan.index], self._runtimes[
            plan.index]
        for k, value in zip(plan.keep, new_params):
          group["params"][k].copy_(to_torch(value))
        plan.compiled[plan.keep] = plan.step
        runtime.tx, runtime.options, runtime.compiled = (
            plan.tx, plan.options, plan.compiled)
        runtime.state, runtime.scratch = new_state, (plan.keep, new_params)
        learned, _ = _rate_leaves(new_state)
        if learned:
          group["lr"] = float(learned[0])
        runtime.synced_lr = group.get("lr")
    return loss

  def state_dict(self) -> dict[str, Any]:
    """Group options and, per group, the optax state leaves as tensors."""
    state, groups, start = {}, [], 0
    for index, (group, runtime) in enumerate(
        zip(self.param_groups, self._runtimes)):
      saved = {k: v for k, v in group.items() if k not in ("params", "tx")}
      saved["params"] = list(range(start, start + len(group["params"])))
      start += len(group["params"])
      groups.append(saved)
      leaves = jax.tree_util.tree_leaves_with_path(runtime.state)
      state[index] = {
          "optax_state": [to_torch(leaf).clone() for _, leaf in leaves],
          "paths": [jax.tree_util.keystr(path) for path, _ in leaves],
      }
    return {"state": state, "param_groups": groups}

  def load_state_dict(self, state_dict: dict[str, Any]) -> None:
    """Loads a `state_dict` of an `OptaxOptimizer` with the same layout."""
    if set(state_dict) != {"state", "param_groups"}:
      raise ValueError(
          "Not an optimizer state_dict: keys "
          f"{sorted(state_dict)}, expected ['param_groups', 'state'].")
    saved_groups = state_dict["param_groups"]
    if len(saved_groups) != len(self.param_groups) or any(
        len(saved["params"]) != len(group["params"])
        for saved, group in zip(saved_groups, self.param_groups)):
      raise ValueError(
          "The state_dict's parameter groups have sizes "
          f"{[len(g['params']) for g in saved_groups]}, this optimizer's "
          f"{[len(g['params']) for g in self.param_groups]}.")
    states = []
    for index, runtime in enumerate(self._runtimes):
      entry = state_dict["state"].get(index)
      if not isinstance(entry, dict) or set(entry) != {"optax_state",
                                                        "paths"}:
        keys = sorted(entry) if isinstance(entry, dict) else entry
        raise ValueError(
            f"state_dict['state'][{index}] is not the state of an "
            f"OptaxOptimizer group (got {keys}); the state of a torch "
            "optimizer loads with load_torch_state or import_torch_state.")
      leaves, treedef = jax.tree_util.tree_flatten_with_path(runtime.state)
      paths = [jax.tree_util.keystr(path) for path, _ in leaves]
      if list(entry["paths"]) != paths:
        raise ValueError(
            f"The optax state of group {index} has leaves {paths}, the "
            f"state_dict has {list(entry['paths'])}.")
      new_leaves = []
      for path, (_, leaf), tensor in zip(paths, leaves, entry["optax_state"]):
        value = _tensor_to_jax(tensor)
        if value.shape != leaf.shape or value.dtype != leaf.dtype:
          raise ValueError(
              f"Leaf {path} of group {index} is {leaf.dtype}{list(leaf.shape)}"
              f" here but {value.dtype}{list(value.shape)} in the state_dict.")
        new_leaves.append(jnp.array(value, copy=True))
      states.append(jax.tree.unflatten(treedef, new_leaves))
    for group, saved, runtime, state in zip(
        self.param_groups, saved_groups, self._runtimes, states):
      group.update({k: v for k, v in saved.items() if k != "params"})
      runtime.state = state
      runtime.synced_lr = group.get("lr")

  def load_torch_state(self, state_dict: dict[str, Any]) -> None:
    """Starts from the `state_dict` of a torch optimizer (see
    `import_torch_state`) over the same parameters in the same order."""
    _check_state_dict(state_dict)
    indices = [k for group in state_dict["param_groups"]
               for k in group["params"]]
    sizes = [len(group["params"]) for group in self.param_groups]
    if len(indices) != sum(sizes):
      raise ValueError(
          f"The state_dict has {len(indices)} parameters, this optimizer "
          f"{sum(sizes)}.")
    states, start = [], 0
    for group, runtime in zip(self.param_groups, self._runtimes):
      part = set(indices[start:start + len(group["params"])])
      start += len(group["params"])
      sub_dict = {
          "state": {k: v for k, v in state_dict["state"].items() if k in part},
          "param_groups": [
              {**torch_group, "params": [k for k in torch_group["params"]
                                         if k in part]}
              for torch_group in state_dict["param_groups"]],
      }
      states.append(import_torch_state(
          sub_dict, runtime.tx, to_jax(list(group["params"]))))
    for runtime, state in zip(self._runtimes, states):
      runtime.state = jax.tree.map(jnp.copy, state)


class _TorchLayout(NamedTuple):
  """How a torch optimizer's per-parameter state maps to an optax state."""

  name: str
  state_type: type
  required: frozenset[str]
  optional: frozenset[str]
  group_keys: frozenset[str]


_LAYOUTS = (
    _TorchLayout("torch_optimizer.DiffGrad", ScaleByDiffGradState,
                 frozenset({"step", "exp_avg", "exp_avg_sq", "previous_grad"}),
                 frozenset(), frozenset({"betas", "eps", "weight_decay"})),
    _TorchLayout("torch.optim.Adam", optax.ScaleByAdamState,
                 frozenset({"step", "exp_avg", "exp_avg_sq"}), frozenset(),
                 frozenset({"betas", "eps", "amsgrad"})),
    _TorchLayout("torch.optim.SGD", optax.TraceState,
                 frozenset({"momentum_buffer"}), frozenset(),
                 frozenset({"momentum", "dampening", "nesterov"})),
    _TorchLayout("expectigrad.pytorch.Expectigrad", ScaleByExpectigradState,
                 frozenset({"step", "sum"}), frozenset({"counter", "momentum"}),
                 frozenset({"beta", "eps", "sparse_counter"})),
)


def _check_state_dict(state_dict):
  if not isinstance(state_dict, dict) or set(state_dict) != {
      "state", "param_groups"}:
    raise ValueError("Not a torch optimizer state_dict: expected the keys "
                     "'state' and 'param_groups'.")


def _layout_of(keys: set[str], groups: list[dict[str, Any]]) -> _TorchLayout:
  """The layout of a state with per-parameter `keys` and these `groups`."""
  for layout in _LAYOUTS:
    if (layout.required <= keys <= layout.required | layout.optional
        and all(layout.group_keys <= set(group) for group in groups)):
      return layout
  known = "; ".join(
      f"{layout.name}: {sorted(layout.required | layout.optional)}"
      for layout in _LAYOUTS)
  raise ValueError(
      f"Unrecognised torch optimizer state with keys {sorted(keys)} and "
      f"group options {sorted(set().union(*groups))}. Known state keys: "
      f"{known}.")


def _check_torch_options(layout, groups):
  for group in groups:
    if group.get("maximize", False):
      raise ValueError(f"{layout.name} with maximize=True has no optax twin.")
    if layout.state_type is optax.TraceState and group.get("dampening", 0):
      raise ValueError(
          "torch.optim.SGD with dampening != 0 has no optax twin "
          f"(dampening={group['dampening']!r}).")


def import_torch_state(
    state_dict: dict[str, Any], tx: optax.GradientTransformation, params: Any
) -> Any:
  """The state of `tx` that continues a torch optimizer's run.

  ``state_dict`` is the ``state_dict()`` of one of

  ==================================  =====================================
  torch optimizer                     optax state that receives it
  ==================================  =====================================
  ``torch.optim.Adam`` (or AdamW)     ``optax.ScaleByAdamState`` (optax.adam)
  ``torch.optim.SGD`` (momentum)      ``optax.TraceState`` (optax.sgd)
  ``torch_optimizer.DiffGrad``        `optax_extras.ScaleByDiffGradState`
  ``expectigrad.pytorch.Expectigrad`` `optax_extras.ScaleByExpectigradState`
  ==================================  =====================================

  The state of `tx` (from ``tx.init(params)``) must hold exactly one state of
  that type, anywhere (inside `optax.chain`, `optax.inject_hyperparams` ...);
  everything else keeps its initial value (schedules restart: torch keeps
  them in its LR scheduler). The hyperparameters are not read: build `tx`
  with those of the torch optimizer (``optax.adam(lr, b1, b2, eps)`` matches
  ``torch.optim.Adam(lr, (b1, b2), eps)`` and ``optax.adamw`` ``AdamW``,
  whose state is Adam's; ``optax.sgd(lr, momentum,
  nesterov)`` matches ``torch.optim.SGD`` with ``dampening=0``, whose first
  buffer ``g`` is optax's ``g + momentum * 0``).

  Torch keeps a step count per parameter, optax one per transformation: the
  counts must agree. Parameters absent from the torch state (never stepped)
  start from zeros, which is exact for SGD only; for the others they must
  all be absent. Expectigrad's float counter becomes int32.

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
      shapes or step counts, or torch options without optax twin.
  """
  _check_state_dict(state_dict)
  leaves, treedef = jax.tree.flatten(params)
  indices = [k for group in state_dict["param_groups"]
             for k in group["params"]]
  if len(indices) != len(leaves):
    raise ValueError(
        f"The state_dict has {len(indices)} parameters, params has "
        f"{len(leaves)} leaves.")
  opt_state = tx.init(params)
  per_param = [state_dict["state"].get(k) for k in indices]
  present = [s for s in per_param if s]
  if not present:
    return opt_state
  keys = set().union(*(s.keys() for s in present))
  layout = _layout_of(keys, state_dict["param_groups"])
  _check_torch_options(layout, state_dict["param_groups"])

  def is_target(x):
    return isinstance(x, layout.state_type)

  targets = [x for x in jax.tree.leaves(opt_state, is_leaf=is_target)
             if is_target(x)]
  if len(targets) != 1:
    raise ValueError(
        f"The state of tx has {len(targets)} {layout.state_type.__name__}; "
        f"exactly one is needed to receive the state of {layout.name}.")
  target = targets[0]

  if "step" in layout.required:
    if len(present) != len(per_param):
      raise ValueError(
          f"Only {len(present)} of {len(per_param)} parameters have a "
          f"{layout.name} state: optax keeps one step count for all.")
    steps = {float(s["step"]) for s in present}
    if len(steps) != 1 or not float(next(iter(steps))).is_integer():
      raise ValueError(f"The parameters' step counts differ: {sorted(steps)}.")
    count = jnp.asarray(int(steps.pop()), jnp.int32)

  def field(key, like, integral=False):
    """The torch tensors `key` of every parameter, as a tree like `like`."""
    like_leaves = treedef.flatten_up_to(like)
    values = []
    for k, s, param, init in zip(indices, per_param, leaves, like_leaves):
      tensor = (s or {}).get(key)
      if tensor is None:
        values.append(jnp.zeros_like(init))
        continue
      if tuple(tensor.shape) != tuple(np.shape(param)):
        raise ValueError(
            f"{layout.name} state {key!r} of parameter {k} has shape "
            f"{list(tensor.shape)}, the parameter {list(np.shape(param))}.")
      array = tensor.detach().cpu()
      array = (array.double() if array.is_floating_point() else array).numpy()
      if integral and not (np.all(array == np.round(array))
                           and np.all(array >= 0)):
        raise ValueError(f"{layout.name} state {key!r} of parameter {k} is "
                         "not a count.")
      values.append(jnp.asarray(array, init.dtype))
    return jax.tree.unflatten(treedef, values)

  if layout.state_type is optax.TraceState:
    new = target._replace(trace=field("momentum_buffer", target.trace))
  elif layout.state_type is optax.ScaleByAdamState:
    new = target._replace(count=count, mu=field("exp_avg", target.mu),
                          nu=field("exp_avg_sq", target.nu))
  elif layout.state_type is ScaleByDiffGradState:
    new = target._replace(
        count=count, mu=field("exp_avg", target.mu),
        nu=field("exp_avg_sq", target.nu),
        prev_grad=field("previous_grad", target.prev_grad))
  else:
    if ("counter" in keys) != (target.counter is not None):
      raise ValueError(
          "sparse_counter differs: the torch Expectigrad state "
          f"{'has' if 'counter' in keys else 'has no'} counter, tx's "
          f"{'has' if target.counter is not None else 'has no'} counter.")
    new = target._replace(
        count=count, sum_sq=field("sum", target.sum_sq),
        counter=(None if target.counter is None
                 else field("counter", target.counter, integral=True)),
        momentum=field("momentum", target.momentum))
  return jax.tree.map(lambda x: new if is_target(x) else x, opt_state,
                      is_leaf=is_target)
