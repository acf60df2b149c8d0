"""`OptaxOptimizer`: any optax transformation as a `torch.optim.Optimizer`."""

from __future__ import annotations

from typing import Any, Callable

import jax
import optax
import torch

from optax_extras.torch import _checkpoint
from optax_extras.torch import _convert
from optax_extras.torch import _group
from optax_extras.torch import _import
from optax_extras.torch import _options
from optax_extras.torch import _plan
from optax_extras.torch import _rate


class OptaxOptimizer(torch.optim.Optimizer):
  r"""Any optax transformation as a `torch.optim.Optimizer`.

  Each step runs, per parameter group, one jitted and donated JAX update

  .. math::

    (u_t, s_t) = \mathrm{tx.update}(g_t, s_{t-1}, p_{t-1}), \qquad
    p_t = p_{t-1} + u_t

  on the group's tensors, which cross to JAX by DLPack without copies where
  the device allows.

  **Transformation.** ``tx`` is either a `optax.GradientTransformation`, used
  as is for every group, or a factory such as ``optax.adam`` or
  ``optax_extras.diffgrad``, called per group with the group's options (the
  keyword arguments given here, overridden by the group's dict). A group may
  carry its own transformation or factory under the key ``"tx"``: it takes
  only those of the optimizer's options that its factory has (a transformation
  takes none). Options go by torch's names where torch has one: ``lr`` (optax
  ``learning_rate``; defaults to the factory's default), ``betas``
  (``(b1, b2)``; ``b1=``/``b2=`` are accepted and shown as ``betas``, a group
  giving one keeps the optimizer's other), ``momentum``, ``eps``,
  ``weight_decay``. The factory's numeric defaults for these show in
  ``param_groups``, and these values are injected with
  `optax.inject_hyperparams`, so torch schedulers (e.g. ``OneCycleLR``, which
  cycles ``betas`` or ``momentum``) change them without a recompile; the
  state keeps the params' dtypes (bfloat16 moments stay bfloat16 under the
  float32 injected values). Other options are static: changing one rebuilds
  the transformation (a recompile) and keeps the state.

  **Checked values.** ``lr``, ``momentum``, ``eps`` and ``weight_decay`` must
  be finite and >= 0, each beta in [0, 1): a ValueError naming the key, at
  construction and when a step uses a value written into ``param_groups``
  (that step then changes nothing).

  **Learned rates.** A learning rate that the transformation learns (the
  bottom level of a `optax_extras.hyperoptimize` / `optax_extras.gdtuo`
  stack, in natural units; a state field ``learning_rate``, e.g.
  `optax_extras.adam_hd`) is written to ``param_groups[i]["lr"]`` after every
  step; a value written there sets the learned rate (natural units) before
  the next step. It is not injected: ``optax.tree.get(state,
  "learning_rate")`` finds the one learned value.

  **Per-parameter steps.** Parameters whose ``grad`` is None are left alone,
  as torch does. Parameters that have always stepped together share one
  optax state; when only some of them have gradients, that state is split in
  two (`optax.tree_map_params`), so each part keeps its own step count: a
  layer frozen for 50 steps and then unfrozen gets the bias correction of
  its own first step, as with ``torch.optim.Adam``. Group-wide entries of the
  state (a learned rate, a global norm's statistics) are per part from then
  on; ``param_groups[i]["lr"]`` shows the rate of the part holding the
  group's first parameter, and a value written there sets every part's. A
  new pattern of present gradients compiles once. A transformation whose
  ``init`` does not map over the parameters (e.g. `optax.flatten`) cannot be
  split and needs every gradient.

  **Parameters.** After a step each parameter is the same `torch.nn.Parameter`
  (autograd and references to it stay valid) whose storage is the JAX output
  buffer, handed over by DLPack instead of copied (``p.data`` is replaced):
  a tensor taken from ``p.data`` or ``p.detach()`` before the step keeps the
  old values. During the step the parameters have empty storage, so that
  XLA writes the new values over the old buffer in place (no second copy of
  the parameters in memory); where something else still references that
  buffer (such a tensor), they are written to a new one. Complex parameters
  need ``allow_complex=True`` (most transformations written for real
  numbers, e.g. diffGrad's ``g*g``, are wrong on them; `optax.adam` is
  right); 64-bit parameters need 64-bit JAX.

  **Failures.** A step first checks and compiles every group (gradients,
  written values, options, the transformation); an error there changes
  nothing. A failure while the compiled steps run (e.g. out of memory) stops
  at that group: the groups before it have stepped (their parameters and
  states are updated), that group and the later ones have not, and the
  error names the group. Its state buffers may have been donated already:
  reload a checkpoint before stepping it again.

  **Checkpoints.** ``state_dict()`` holds each group's plain options and its
  optax states as tensors with their tree paths, and loads with
  ``torch.load(..., weights_only=True)``. ``load_state_dict`` checks the
  layout (every field, one tensor per path), paths, shapes, dtypes, option
  names (an unknown key such as ``tx`` is refused) and the values of the
  torch-named options: a ValueError names what is wrong, and nothing changes.
  The loaded ``param_groups`` are what the next step uses, as in torch: a
  value written there after the last step before saving (a scheduler's
  ``betas``, a learned rate's ``lr``) takes effect then, so a resumed run
  continues the uninterrupted one. The state of a torch optimizer loads with
  `load_torch_state`. ``copy.deepcopy``, `pickle` and ``torch.save(opt)``
  raise a TypeError: save ``state_dict()``.

  Args:
    params: tensors or dicts of parameter groups, as for any torch optimizer.
    tx: a `optax.GradientTransformation`, or a factory returning one.
    allow_complex: accept complex parameters (for transformations known to
      handle them).
    **defaults: group options for a factory ``tx``.

  Raises:
    TypeError: for options a factory does not take, options given with a
      transformation, complex parameters without ``allow_complex``, sparse
      gradients.
    ValueError: for values out of range, or ``lr`` on a transformation with
      no learning rate.

  Example:
    >>> import optax, torch
    >>> from optax_extras.torch import OptaxOptimizer
    >>> model = torch.nn.Linear(3, 1)
    >>> opt = OptaxOptimizer(model.parameters(), optax.adam, lr=1e-2)
    >>> loss = model(torch.ones(2, 3)).square().mean()
    >>> loss.backward()
    >>> opt.step()
    >>> opt.param_groups[0]["lr"], opt.param_groups[0]["betas"]
    (0.01, (0.9, 0.999))

  References:
    Paszke et al., "PyTorch: An Imperative Style, High-Performance Deep
    Learning Library", https://arxiv.org/abs/1912.01703 (the
    ``torch.optim.Optimizer`` protocol); DeepMind, "The DeepMind JAX
    Ecosystem" (optax), https://github.com/google-deepmind/optax.
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
      _options.rename_optax_options(tx, defaults, _options.default_options(tx))
      defaults = {**_options.default_options(tx), **defaults}
    else:
      raise TypeError(
          f"tx must be a GradientTransformation or a factory, got {tx!r}.")
    self._tx = tx
    self._allow_complex = allow_complex
    self._records: list[_group.Group] = []
    super().__init__(params, defaults)

  def __getstate__(self) -> Any:
    """Refused: copy.deepcopy, pickle and torch.save(opt) would lose the
    transformations and JAX states (torch's optimizers keep only their
    dicts); a checkpoint is ``state_dict()``."""
    raise TypeError(
        "An OptaxOptimizer cannot be copied or pickled (its optax "
        "transformations and JAX states are not plain data): save "
        "opt.state_dict() and load it into a new OptaxOptimizer with "
        "load_state_dict().")

  @property
  def opt_states(self) -> list[Any]:
    """The optax state of each parameter group.

    While the parameters of a group have stepped together, its optax state;
    after some stepped without the others, a dict from the tuple of their
    positions in the group to the state of each such set. Live JAX arrays,
    donated to the next step (then deleted): copy what you keep.
    ``torch.optim.Optimizer.state`` stays empty.
    """
    return [record.cohorts[0].state if len(record.cohorts) == 1 else
            {c.indices: c.state for c in record.cohorts}
            for record in self._records]

  def _factory(self, group: dict[str, Any]) -> Any:
    return group.get("tx", self._tx)

  def add_param_group(self, param_group: dict[str, Any]) -> None:
    """Adds a group; its options default to the optimizer's.

    A group with its own ``tx`` inherits only the optimizer's options that
    its ``tx`` has, a factory's own defaults filling the rest; a
    transformation inherits none.
    """
    factory = param_group.get("tx", self._tx)
    own = factory is not self._tx
    inherited = {key: value for key, value in self.defaults.items()
                 if not own or _options.takes(factory, key)}
    if not isinstance(factory, optax.GradientTransformation):
      if own:
        inherited = {**_options.default_options(factory), **inherited}
      _options.rename_optax_options(factory, param_group, inherited)
    for key, value in inherited.items():
      param_group.setdefault(key, value)
    given = set(param_group)
    super().add_param_group(param_group)
    for key in set(self.defaults) - given:  # torch copies every default
      del self.param_groups[-1][key]
    try:
      self._records.append(self._new_record(len(self._records)))
    except Exception:
      self.param_groups.pop()
      raise

  def _new_record(self, index: int) -> _group.Group:
    group = self.param_groups[index]
    for k, p in enumerate(group["params"]):
      if p.is_complex() and not self._allow_complex:
        raise TypeError(
            f"Parameter {k} of group {index} is {p.dtype}: pass "
            "allow_complex=True if the transformation handles complex "
            "numbers (optax.adam does; diffGrad and Expectigrad do not).")
    params = _convert.to_jax(list(group["params"]))
    factory = self._factory(group)
    if isinstance(factory, optax.GradientTransformation):
      tx, static, injected = factory, None, ()
      extra = sorted(set(group) - _options.NOT_OPTIONS - {"lr"})
      if extra:
        raise TypeError(
            f"Group options {extra} need tx to be a factory (e.g. optax.adam)"
            ", not a GradientTransformation.")
    elif callable(factory):
      _options.check_construction(factory, group)
      tx, static, injected = _options.build(factory, group, params)
    else:
      raise TypeError(
          f"tx must be a GradientTransformation or a factory, got {factory!r}.")
    try:
      state = jax.jit(tx.init)(params)
    except Exception as error:
      raise ValueError(
          f"tx.init failed on the parameters of group {index}: {error}"
      ) from error
    return self._record(index, tx, static, injected, state)

  def _record(self, index, tx, static, injected, state) -> _group.Group:
    """The group's record; ``lr`` read from the state or checked."""
    group = self.param_groups[index]
    rate = _rate.find_rate(state)
    if "lr" in group:
      _options.check_value("lr", group["lr"])
      if rate is None:
        raise ValueError(
            f"Group {index} sets lr={group['lr']!r} but the state of its "
            "transformation has no learning_rate: pass tx as a factory (e.g. "
            "optax.adam) to make lr a hyperparameter.")
    synced = {key: group[key] for key in injected}
    if rate is not None:
      synced["lr"] = rate.read(state)
      group.setdefault("lr", synced["lr"])
    indices = tuple(range(len(group["params"])))
    return _group.Group(tx, static, injected,
                        [_group.Cohort(indices, state, rate)], synced)

  @torch._disable_dynamo  # pylint: disable=protected-access
  def step(self, closure: Callable[[], Any] | None = None) -> Any:
    """Takes one optimizer step; returns the closure's loss (if any).

    Also inside `torch.inference_mode`, the new storage is made of normal
    tensors: the parameters stay usable for training, as with torch's
    in-place updates. Under `torch.compile` the step runs eagerly (Dynamo
    does not trace into JAX), as do ``state_dict`` and ``load_state_dict``.
    """
    loss = None
    if closure is not None:
      with torch.enable_grad():
        loss = closure()
    with torch.inference_mode(False), torch.no_grad():
      plans = [
          _plan.plan(self._factory(group), index, group, record)
          for index, (group, record) in enumerate(
              zip(self.param_groups, self._records))]
      for plan in plans:
        if plan is not None:
          self._run(plan)
    return loss

  def _run(self, plan: _plan.Plan) -> None:
    """Runs a planned group step and commits it."""
    group, record = self.param_groups[plan.index], plan.record
    cohorts = [record.cohorts[n].indices for n in plan.stepping]
    record.release_storage(group["params"], [k for c in cohorts for k in c])
    try:
      new_states, new_params = jax.block_until_ready(plan.step(*plan.args))
    except Exception as error:
      lost = []
      for indices, arrays in zip(cohorts, plan.args[2]):
        for k, array in zip(indices, arrays):
          if array.is_deleted():
            lost.append(k)
          else:
            record.swap_storage(group["params"], (k,), [array])
      raise RuntimeError(
          f"The step of group {plan.index} failed while running; the groups "
          f"before it have stepped, it and the later ones have not (its "
          f"state may be donated"
          + (f", and the parameters {lost} were" if lost else "")
          + f": reload a checkpoint): {error}") from error
    for n, values, state in zip(plan.stepping, new_params, new_states):
      record.swap_storage(group["params"], record.cohorts[n].indices, values)
      record.cohorts[n] = record.cohorts[n]._replace(state=state)
    if record.rate is not None and record.rate.learned:
      record.synced["lr"] = group["lr"] = record.rate.read(
          record.cohorts[0].state)
    self._records[plan.index] = record

  @torch._disable_dynamo  # pylint: disable=protected-access
  def state_dict(self) -> dict[str, Any]:
    """Plain group options and, per group, its optax states as tensors.

    Runs the hooks of ``register_state_dict_pre_hook`` and
    ``register_state_dict_post_hook`` as torch does.
    """
    for pre_hook in self._optimizer_state_dict_pre_hooks.values():
      pre_hook(self)
    state_dict = self._state_dict()
    for post_hook in self._optimizer_state_dict_post_hooks.values():
      result = post_hook(self, state_dict)
      if result is not None:
        state_dict = result
    return state_dict

  def _state_dict(self) -> dict[str, Any]:
    groups, first = [], 0
    for group in self.param_groups:
      groups.append(_checkpoint.saved_group(group, first))
      first += len(group["params"])
    state = {index: _checkpoint.saved_state(record)
             for index, record in enumerate(self._records)}
    return {"state": state, "param_groups": groups}

  @torch._disable_dynamo  # pylint: disable=protected-access
  def load_state_dict(self, state_dict: dict[str, Any]) -> None:
    """Loads a `state_dict` of an `OptaxOptimizer` with the same layout.

    Runs the hooks of ``register_load_state_dict_pre_hook`` (which may
    return a new state_dict) and ``register_load_state_dict_post_hook`` as
    torch does.
    """
    for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
      result = pre_hook(self, state_dict)
      if result is not None:
        state_dict = result
    self._load_state_dict(state_dict)
    for post_hook in self._optimizer_load_state_dict_post_hooks.values():
      post_hook(self)

  def _load_state_dict(self, state_dict: dict[str, Any]) -> None:
    """Checks everything, then loads (a mismatch changes nothing)."""
    _checkpoint.check_layout(
        state_dict, [len(g["params"]) for g in self.param_groups])
    saved_groups = state_dict["param_groups"]
    loaded = []
    for index, (group, record, saved) in enumerate(
        zip(self.param_groups, self._records, saved_groups)):
      cohorts = _checkpoint.loaded_cohorts(
          index, state_dict["state"].get(index), record.tx,
          _convert.to_jax(list(group["params"])))
      loaded.append(cohorts)
      held = (self._held_values(record, min(cohorts, key=lambda c: c[0][0])[1])
              if cohorts else {})
      _checkpoint.check_group_keys(
          index, {k: v for k, v in saved.items() if k != "params"}, group,
          _options.option_names(self._factory(group)), held)
    for group, record, saved, cohorts in zip(
        self.param_groups, self._records, saved_groups, loaded):
      group.update({k: v for k, v in saved.items() if k != "params"})
      self._set_cohorts(record, cohorts)

  def _set_cohorts(self, record, cohorts) -> None:
    """Replaces a group's states by (indices, state) pairs.

    The synced values are read from the states: a value of the group dict
    that differs from them (written after the last step, e.g. by a
    scheduler, or a learned rate written before the checkpoint) is written
    into the states at the next step, as the group dict is what torch steps
    with.
    """
    record.cohorts = [
        _group.Cohort(indices, state, _rate.find_rate(state))
        for indices, state in sorted(cohorts, key=lambda c: c[0][0])]
    record.compiled = {}
    record.synced = self._held_values(record, record.cohorts[0].state)

  @staticmethod
  def _held_values(record, state) -> dict[str, Any]:
    """The torch-named values an optax state of the group holds: its
    injected options and its rate (a learned one included)."""
    values = {key: _options.injected_value(state, key)
              for key in record.injected if key != "lr"}
    if record.rate is not None:
      values["lr"] = record.rate.read(state)
    return values

  def load_torch_state(self, state_dict: dict[str, Any]) -> None:
    """Starts from the `state_dict` of a torch optimizer over the same
    parameters in the same order (see `import_torch_state`).

    Parameters whose torch step counts differ (or that have no torch state)
    get separate optax states, each with its own count.
    """
    per_group = _import.split_by_group(
        state_dict, [len(g["params"]) for g in self.param_groups])
    loaded = []
    for group, record, parts in zip(self.param_groups, self._records,
                                    per_group):
      params = _convert.to_jax(list(group["params"]))
      loaded.append([
          (indices, jax.tree.map(jax.numpy.copy, _import.import_torch_state(
              sub_dict, record.tx, [params[k] for k in indices])))
          for indices, sub_dict in parts])
    for record, cohorts in zip(self._records, loaded):
      self._set_cohorts(record, cohorts)
