"""Hyperoptimizer stacks: learn any optax optimizer's hyperparameters online.

Chandra, Xie, Ragan-Kelley and Meijer, "Gradient Descent: The Ultimate
Optimizer", NeurIPS 2022, https://arxiv.org/abs/1909.13371. Reference code:
`gradient_descent_the_ultimate_optimizer.gdtuo` (see `optax_extras.gdtuo` for
its constructors, built on this module).

With ``theta_t = theta_{t-1} + u_{t-1}(h)`` the update of the optimizer below
made with its hyperparameters ``h``, the hypergradient at step ``t`` is the
one-step product

.. math::

  \\frac{\\partial L(\\theta_t)}{\\partial h} =
  \\Big\\langle \\nabla L(\\theta_t),
  \\frac{\\partial u_{t-1}(h)}{\\partial h} \\Big\\rangle

(previous optimizer state and gradient held constant: nothing is
differentiated through the model, nor through more than one step). A second
`optax.GradientTransformation`, the *hyper-level*, receives that hypergradient
as its gradient and the stored hyperparameters as its params; it updates
them first, and the optimizer below then steps with the new values. A
hyper-level made by `hyperoptimize` learns its own hyperparameters the same
way, so a stack of any height is this construction applied again.

One step of `hyperoptimize`, each piece a function of this module:

1. `previous_update_tangents`: the tangents of the previous update with
   respect to each stored hyperparameter; the optimizer below is kept one
   step behind, and its state after the last step is their primal.
2. `hypergradient`: the tangents contracted with the new gradient;
   `advance_inner_state` takes the recomputed state.
3. `hyper_step`: the hyper-level's update of the stored hyperparameters,
   projected onto their bounds, rejected when not finite.
4. The optimizer below steps with the new hyperparameters.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import operator
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from optax_extras import _checks
from optax_extras import _common


class Space(NamedTuple):
  """How a hyperparameter is stored: what the hyper-level optimizes.

  Attributes:
    to_natural: stored -> natural value (jnp, differentiable).
    to_stored: natural -> stored value (jnp, for traced values).
    to_stored_exact: natural -> stored value in Python double (concrete
      values: keeps float32 stored values correctly rounded).
    in_domain: whether a concrete natural value is allowed.
    domain: the allowed natural values, in words.
    array_in_domain: the same test on an array of natural values (jnp):
      ``(tanh(x) + 1)/2`` rounds to exactly 0 or 1, and ``exp(x)`` to 0 or
      inf, for large stored values.
  """

  to_natural: Callable[[jax.Array], jax.Array]
  to_stored: Callable[[jax.Array], jax.Array]
  to_stored_exact: Callable[[float], float]
  in_domain: Callable[[float], bool]
  domain: str
  array_in_domain: Callable[[jax.Array], jax.Array]


def _atanh_exact(y: float) -> float:
  z = y * 2.0 - 1.0
  return math.log((1.0 + z) / (1.0 - z)) / 2.0


SPACES: dict[str, Space] = {
    "identity": Space(lambda x: x, lambda y: y, lambda y: y, math.isfinite,
                      "a finite number", jnp.isfinite),
    "unit_interval": Space(
        lambda x: (jnp.tanh(x) + 1.0) / 2.0,
        lambda y: jnp.arctanh(y * 2.0 - 1.0),
        _atanh_exact,
        lambda y: 0.0 < y < 1.0,
        "in (0, 1)",
        lambda y: (y > 0.0) & (y < 1.0)),
    "square": Space(jnp.square, jnp.sqrt, math.sqrt,
                    lambda y: 0.0 <= y < math.inf, "finite and >= 0",
                    lambda y: (y >= 0.0) & jnp.isfinite(y)),
    "log": Space(jnp.exp, jnp.log, math.log, lambda y: 0.0 < y < math.inf,
                 "finite and > 0", lambda y: (y > 0.0) & jnp.isfinite(y)),
}


def stored_key(name: str, space: str) -> str:
  """The key of a stored hyperparameter: ``"log(learning_rate)"``.

  Stored values live under these keys (in the state and in the hyper-level's
  state), so `optax.tree.get(state, name)` finds only the natural value.
  """
  return f"{space}({name})"


def _parse_stored_key(key: str) -> tuple[str, str]:
  """``"log(learning_rate)"`` -> ``("learning_rate", "log")``."""
  space, name = key[:-1].split("(", 1)
  return name, space


@dataclasses.dataclass(frozen=True)
class Learned:
  r"""How `hyperoptimize` learns one hyperparameter.

  The hyper-level optimizes a stored value :math:`x`; the optimizer below is
  called with the natural value :math:`h = \mathrm{space}(x)`, and after
  every hyper-update :math:`h` is clipped to ``bounds`` (:math:`[l, u]`):

  .. math::

    h = \mathrm{space}(x) =
    \begin{cases}
      x & \text{identity} \\
      (\tanh(x) + 1) / 2 & \text{unit\_interval} \\
      x^2 & \text{square} \\
      e^x & \text{log}
    \end{cases}
    \qquad l \le h \le u

  A plain number given to `hyperoptimize` in place of a `Learned` means
  ``Learned(number)``. The fields are validated by `hyperoptimize`, which
  names the hyperparameter in its error.

  Attributes:
    init: the initial value in natural space (the value the optimizer is
      called with): a real number (a traced value too, e.g. under
      `optax.inject_hyperparams`), or with ``per_leaf=True`` a number (the
      same start for every leaf) or a params-shaped tree of numbers. It must
      lie in the space's domain and within ``bounds``.
    space: how the value is stored, i.e. what the hyper-level optimizes
      (default ``"identity"``): ``"identity"`` (``h = x``, any finite
      number), ``"unit_interval"`` (``h = (tanh(x) + 1)/2``, in (0, 1),
      gdtuo's clamp for betas), ``"square"`` (``h = x^2``, >= 0, gdtuo's
      RMSProp alpha) or ``"log"`` (``h = exp(x)``, > 0).
    per_leaf: a Python bool (default False): one value per parameter leaf
      instead of one scalar.
    bounds: ``(low, high)`` in natural space, either may be None (default
      ``(None, None)``: no bounds); each a number in the space's domain,
      low < high. After every hyper-update the stored value is projected
      onto the stored-space image of the interval (clipping the natural
      value, exactly, since each space is monotone; for ``"square"`` the
      stored value is kept >= sqrt(low), or >= 0 without a low bound).

  Raises:
    ValueError: from `hyperoptimize`, for an unknown ``space``, a
      ``per_leaf`` that is not a bool, ``bounds`` that are not a
      ``(low, high)`` tuple of None or numbers in the space's domain with
      low < high, or an ``init`` that is not a number (a tree of numbers
      with ``per_leaf``), is outside the space's domain or outside
      ``bounds``.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from optax_extras import hyperoptimize, Learned
    >>> rate = Learned(0.1, "log", bounds=(1e-4, 1.0))
    >>> tx = hyperoptimize(optax.sgd, {"learning_rate": rate}, optax.sgd(0.1))
    >>> state = tx.init(jnp.zeros(2))
    >>> sorted(state.raw_hyperparams)
    ['log(learning_rate)']

  References:
    Chandra, Xie, Ragan-Kelley and Meijer, "Gradient Descent: The Ultimate
    Optimizer", NeurIPS 2022, https://arxiv.org/abs/1909.13371; upstream
    code (gdtuo's stored spaces of hyperparameters):
    https://github.com/kach/gradient-descent-the-ultimate-optimizer
  """

  init: Any
  space: str = "identity"
  per_leaf: bool = False
  bounds: tuple[float | None, float | None] = (None, None)


class HyperoptimizeState(NamedTuple):
  """State of `hyperoptimize`.

  The optimizer below is kept one step behind: its state before the last step
  and the last gradient (and params, only with ``needs_params``) are what
  re-evaluating the last update as a function of the hyperparameters needs,
  and its current state is a function of them.

  Attributes:
    count: number of steps taken, int32 (saturating).
    hyperparams: name -> the value the last step used, in natural space
      (before the first step, the initial value). `optax.tree.get(state,
      name)` reads it; `hyperparameters` reads a whole stack.
    raw_hyperparams: the same values in stored space, under the keys
      `stored_key` gives (``"log(learning_rate)"``): the params of the
      hyper-level.
    hyper_state: the state of the hyper-level.
    prev_inner_state: the state of the optimizer below before the last step.
    prev_grad: the gradient of the last step (zeros before the first).
    prev_params: the params of the last step, or None without
      ``needs_params``.
  """

  count: chex.Array
  hyperparams: dict[str, Any]
  raw_hyperparams: dict[str, Any]
  hyper_state: optax.OptState
  prev_inner_state: optax.OptState
  prev_grad: optax.Updates
  prev_params: optax.Params | None


def _accepts(factory: Callable[..., Any], name: str) -> bool:
  try:
    parameters = inspect.signature(factory).parameters.values()
  except (TypeError, ValueError):
    return True
  return any(
      p.kind is p.VAR_KEYWORD
      or (p.name == name and p.kind is not p.POSITIONAL_ONLY)
      for p in parameters
  )


def _is_traced(value: Any) -> bool:
  return isinstance(value, jax.core.Tracer)


def _check_bounds(name: str, spec: Learned, space: Space) -> None:
  bounds = spec.bounds
  if not isinstance(bounds, tuple) or len(bounds) != 2:
    raise ValueError(
        f"bounds of hyperparameter {name!r} must be a (low, high) tuple, got "
        f"bounds={bounds!r}.")
  for which, bound in zip(("low", "high"), bounds):
    if bound is None:
      continue
    value = _checks.concrete_value(bound)
    if value is None or not space.in_domain(value):
      raise ValueError(
          f"bounds of hyperparameter {name!r} must be None or numbers "
          f"{space.domain} (space={spec.space!r}), got bounds={bounds!r} "
          f"(the {which} bound).")
  low, high = bounds
  if low is not None and high is not None and not low < high:
    raise ValueError(
        f"bounds of hyperparameter {name!r} must satisfy low < high, got "
        f"bounds={bounds!r}.")


def _check_initial_value(name: str, spec: Learned, space: Space,
                         value: Any) -> None:
  if _is_traced(value):
    return
  number = _checks.concrete_value(value)
  if number is None:
    allowed = ("a real number or a tree of real numbers" if spec.per_leaf
               else "a real number (use per_leaf=True for a tree)")
    raise ValueError(
        f"initial value of hyperparameter {name!r} must be {allowed}, got "
        f"{name}={spec.init!r}.")
  if not space.in_domain(number):
    raise ValueError(
        f"initial value of hyperparameter {name!r} must be {space.domain} for "
        f"space={spec.space!r}, got {name}={number!r}.")
  with jax.ensure_compile_time_eval():  # concrete also inside a trace
    natural, stored = _initial_pair(value, space)
    rounded = float(space.to_natural(stored))
  if not (space.in_domain(float(natural)) and space.in_domain(rounded)):
    raise ValueError(
        f"initial value of hyperparameter {name!r} must be {space.domain} for "
        f"space={spec.space!r} also in {natural.dtype} (the precision it is "
        f"learned in), got {name}={number!r}, which rounds to {rounded!r} "
        "there.")
  low, high = spec.bounds
  if (low is not None and number < low) or (high is not None and
                                             number > high):
    raise ValueError(
        f"initial value of hyperparameter {name!r} must lie within "
        f"bounds={spec.bounds!r}, got {name}={number!r}.")


def _checked_spec(name: str, spec: Any) -> Learned:
  """`spec` as a validated `Learned`, with a ValueError naming `name`."""
  if not isinstance(spec, Learned):
    spec = Learned(spec)
  if spec.space not in SPACES:
    raise ValueError(
        f"space of hyperparameter {name!r} must be one of {sorted(SPACES)}, "
        f"got space={spec.space!r}.")
  _checks.check_bool(f"per_leaf of {name!r}", spec.per_leaf)
  space = SPACES[spec.space]
  _check_bounds(name, spec, space)
  values = jax.tree.leaves(spec.init) if spec.per_leaf else [spec.init]
  if not values:
    raise ValueError(
        f"initial value of hyperparameter {name!r} must be a real number or "
        f"a non-empty tree of real numbers, got {name}={spec.init!r}.")
  for value in values:
    _check_initial_value(name, spec, space, value)
  return spec


def _initial_pair(value: Any, space: Space) -> tuple[jax.Array, jax.Array]:
  """Natural and stored arrays of an initial value (concrete or traced)."""
  dtype = _common.learned_rate_dtype(value)
  number = _checks.concrete_value(value)
  natural = jnp.asarray(value, dtype)
  if number is None:
    return natural, space.to_stored(natural)
  return natural, jnp.asarray(space.to_stored_exact(number), dtype)


@dataclasses.dataclass(frozen=True)
class _Inner:
  """The optimizer below: ``factory(**fixed, **values)``, per leaf where a
  learned value is (``per_leaf`` names)."""

  factory: Callable[..., optax.GradientTransformation]
  fixed: Mapping[str, Any]
  per_leaf: tuple[str, ...]

  def _per_leaf_values(self, values, treedef):
    split = {name: treedef.flatten_up_to(values[name])
             for name in self.per_leaf}
    return [{**values, **{name: split[name][i] for name in self.per_leaf}}
            for i in range(treedef.num_leaves)]

  def init(self, values, params):
    if not self.per_leaf:
      return self.factory(**self.fixed, **values).init(params)
    leaves, treedef = jax.tree.flatten(params)
    return treedef.unflatten([
        self.factory(**self.fixed, **leaf_values).init(p)
        for leaf_values, p in zip(self._per_leaf_values(values, treedef),
                                  leaves)])

  def update(self, values, grads, state, params):
    """``(updates, new state)``, keeping the dtypes of grads and state."""
    try:
      updates, new_state = self._update(values, grads, state, params)
    except ValueError as error:
      if params is not None or "param" not in str(error):
        raise
      raise ValueError(
          f"{error} (hyperoptimize gives the optimizer below its params only "
          "with needs_params=True)") from error
    # Traced hyperparameters (float32 at least) must not promote low-precision
    # updates or state: both keep the dtypes they came with.
    return (optax.tree.cast_like(updates, grads),
            optax.tree.cast_like(new_state, state))

  def _update(self, values, grads, state, params):
    if not self.per_leaf:
      return self.factory(**self.fixed, **values).update(grads, state, params)
    treedef = jax.tree.structure(grads)
    leaf_params = ([None] * treedef.num_leaves if params is None
                   else treedef.flatten_up_to(params))
    results = [
        self.factory(**self.fixed, **leaf_values).update(g, s, p)
        for leaf_values, g, s, p in zip(
            self._per_leaf_values(values, treedef),
            treedef.flatten_up_to(grads), treedef.flatten_up_to(state),
            leaf_params)]
    return (treedef.unflatten([u for u, _ in results]),
            treedef.unflatten([s for _, s in results]))


def natural_values(raw: Mapping[str, Any]) -> dict[str, Any]:
  """Stored values (keyed by `stored_key`) -> natural values keyed by name."""
  values = {}
  for key, value in raw.items():
    name, space = _parse_stored_key(key)
    values[name] = jax.tree.map(SPACES[space].to_natural, value)
  return values


def previous_update_tangents(inner: _Inner, raw: Mapping[str, Any],
                             prev: HyperoptimizeState
                             ) -> tuple[dict[str, Any], optax.OptState]:
  """The tangents ``d u_{t-1} / d x`` of the previous update, one per stored
  value ``x`` (along ones: per leaf, each leaf's own), and the optimizer's
  state after that update (the jvp's primal, computed once).

  Traced, never materialized: `hypergradient` contracts them as they are
  computed.
  """

  def previous_update(key, value):
    return inner.update(natural_values({**raw, key: value}), prev.prev_grad,
                        prev.prev_inner_state, prev.prev_params)

  tangents, state = {}, None
  for key in raw:
    ones = jax.tree.map(jnp.ones_like, raw[key])
    _, tangents[key], state = jax.jvp(
        lambda value, key=key: previous_update(key, value), (raw[key],),
        (ones,), has_aux=True)
  return tangents, state


def hypergradient(inner: _Inner, raw: Mapping[str, Any],
                  tangents: Mapping[str, Any], grads: Any,
                  first_step: jax.Array) -> tuple[dict[str, Any], Any]:
  """``d <g_t, u_{t-1}(space(x))> / dx`` for each stored value ``x``.

  The k tangents of a leaf are contracted with ``g_t`` together by
  `_common.partial_vdots`, in one pass that shares their subexpressions and
  stores no tangent (a plain sum per tangent runs op by op on XLA:CPU: 2.3x
  slower MLP step). A ``per_leaf`` value needs one tangent for all its
  leaves, since each leaf's update depends only on its own value. Zero on the
  first step (there is no previous update).

  Returns:
    The hypergradient (keyed like ``raw``) and, per parameter leaf, a scalar
    computed by that leaf's contraction (what `order_inner_state` orders
    after).
  """
  keys = list(raw)
  grad_leaves, treedef = jax.tree.flatten(grads)
  tangent_leaves = [treedef.flatten_up_to(tangents[key]) for key in keys]
  # Per leaf, the k products <g, d u / d x_key>, as partial sums (see
  # `_common.partial_vdots`). Each leaf's contraction is ordered after the
  # previous leaf's: the arrays of partial sums (k/4 of the leaf) are then
  # live one leaf at a time, not all together (a temporary of 0.75x the
  # params for k = 3, measured; 30 MB instead of 150 MB at 50M parameters).
  dots, after = [], None
  for g, *leaf_tangents in zip(grad_leaves, *tangent_leaves):
    if after is not None:
      g = _common.ordered_after(after, g, jnp.zeros_like(g))
    dots.append(_common.partial_vdots(g, *leaf_tangents))
    after = dots[-1][0][0]
  result = {}
  for j, key in enumerate(keys):
    value = raw[key]
    per_leaf = treedef.unflatten([leaf[j] for leaf in dots])
    if _parse_stored_key(key)[0] in inner.per_leaf:
      total = jax.tree.map(lambda x, d: sum(d).astype(x.dtype), value,
                           per_leaf)
    else:
      total = _common.total(per_leaf, value.dtype)
    result[key] = jax.tree.map(
        lambda t: jnp.where(first_step, jnp.zeros_like(t), t), total)
  return result, treedef.unflatten([leaf[0][0] for leaf in dots])


def advance_inner_state(recomputed: optax.OptState,
                        prev: HyperoptimizeState) -> optax.OptState:
  """The optimizer below's state after the last step: ``recomputed`` (by
  `previous_update_tangents`), or as stored on the first step."""
  return jax.tree.map(
      lambda old, new: jnp.where(prev.count == 0, old, new),
      prev.prev_inner_state, recomputed)


def _state_per_param_leaf(inner: _Inner, state: Any, treedef: Any) -> list:
  """The part of the optimizer's state that belongs to each parameter leaf:
  for per-leaf optimizers the leaf's own state, else the leaf's entry in
  every params-shaped subtree (``mu``, ``nu``, ...)."""
  if inner.per_leaf:
    return treedef.flatten_up_to(state)
  parts = [[] for _ in range(treedef.num_leaves)]
  is_params_like = lambda x: jax.tree.structure(x) == treedef
  for subtree in jax.tree.leaves(state, is_leaf=is_params_like):
    if is_params_like(subtree):
      for part, leaf in zip(parts, treedef.flatten_up_to(subtree)):
        part.append(leaf)
  return parts


def order_inner_state(inner: _Inner, partials: Any, new_state: Any,
                      old_state: Any, treedef: Any) -> Any:
  """``new_state``, each parameter leaf's part ordered after that leaf's
  contractions (`_common.ordered_after`): the new state is then written in
  place of the donated old one, which the tangents read, with no copy."""
  partial_leaves = treedef.flatten_up_to(partials)
  if inner.per_leaf:
    return treedef.unflatten([
        _common.ordered_after(p, new, old) for p, new, old in zip(
            partial_leaves, treedef.flatten_up_to(new_state),
            treedef.flatten_up_to(old_state))])
  is_params_like = lambda x: jax.tree.structure(x) == treedef

  def order(new, old):
    if not is_params_like(new):
      return new
    return jax.tree.map(_common.ordered_after, partials, new, old)

  return jax.tree.map(order, new_state, old_state, is_leaf=is_params_like)


def store_gradient(inner: _Inner, grads: Any, partials: Any, new_state: Any,
                   prev_grad: Any, treedef: Any) -> Any:
  """The new gradient cast like the stored one, each leaf written once the
  tangents and the recomputed state have read the old one (no copy)."""
  parts = _state_per_param_leaf(inner, new_state, treedef)
  stored = []
  for g, old, p, part in zip(treedef.flatten_up_to(grads),
                             treedef.flatten_up_to(prev_grad),
                             treedef.flatten_up_to(partials), parts):
    after = p + sum(leaf[(0,) * leaf.ndim].astype(p.dtype)
                    for leaf in jax.tree.leaves(part)
                    if jnp.issubdtype(leaf.dtype, jnp.floating) and leaf.size)
    stored.append(_common.ordered_after(after, g.astype(old.dtype), old))
  return treedef.unflatten(stored)


def hyper_step(hyper_optimizer: optax.GradientTransformation,
               hypergrad: Mapping[str, Any], raw: Mapping[str, Any],
               hyper_state: optax.OptState,
               stored_bounds: Mapping[str, tuple[Any, Any]],
               ) -> tuple[dict[str, Any], optax.OptState]:
  """The hyper-level's step on the stored values, projected onto their
  bounds. Kept as it was (values and hyper-level state) unless the
  hypergradient and the new stored values are all finite and the new natural
  values lie in their spaces' domains at their precision (a float32
  ``unit_interval`` value that rounds to 1 is rejected)."""
  hyper_updates, new_hyper_state = hyper_optimizer.update(
      hypergrad, hyper_state, raw)
  new_raw = optax.apply_updates(raw, hyper_updates)
  for key, (low, high) in stored_bounds.items():
    new_raw[key] = jax.tree.map(lambda x, lo=low, hi=high: jnp.clip(x, lo, hi),
                                new_raw[key])
  finite = jnp.array(True)  # also with no values (per_leaf, no params)
  for x in jax.tree.leaves((hypergrad, new_raw)):
    finite &= jnp.all(jnp.isfinite(x))
  for key, value in new_raw.items():
    space = SPACES[_parse_stored_key(key)[1]]
    for x in jax.tree.leaves(value):
      finite &= jnp.all(space.array_in_domain(space.to_natural(x)))
  return jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                      (new_raw, new_hyper_state), (raw, hyper_state))


def _check_arguments(factory, learned, hyper_optimizer, fixed) -> dict:
  """The validated `Learned` specs, or a ValueError naming what is wrong."""
  if not isinstance(hyper_optimizer, optax.GradientTransformation):
    raise ValueError(
        "hyper_optimizer must be an optax.GradientTransformation, got "
        f"hyper_optimizer={hyper_optimizer!r}.")
  if not learned:
    raise ValueError("learned must name at least one hyperparameter, got "
                     f"learned={learned!r}.")
  for name in fixed:
    if not _accepts(factory, name):
      raise ValueError(
          f"fixed argument {name!r} is not a keyword argument of "
          f"factory={factory!r}.")
  specs = {}
  for name, spec in learned.items():
    if not _accepts(factory, name):
      raise ValueError(
          f"hyperparameter {name!r} is not a keyword argument of "
          f"factory={factory!r}.")
    if name in fixed:
      raise ValueError(
          f"hyperparameter {name!r} is both learned and fixed, got "
          f"fixed={fixed!r}.")
    specs[name] = _checked_spec(name, spec)
  return specs


def _check_factory_accepts_initial_values(factory, fixed, specs) -> None:
  """Builds the optimizer below once with the initial values (each leaf's,
  for ``per_leaf``), so that it rejects bad ones with its own message."""
  per_leaf = [name for name, spec in specs.items() if spec.per_leaf]
  scalars = {name: spec.init for name, spec in specs.items()
             if not spec.per_leaf}
  leaf_inits = [jax.tree.leaves(specs[name].init) for name in per_leaf]
  for leaf in zip(*leaf_inits) if per_leaf else [()]:
    factory(**fixed, **scalars, **dict(zip(per_leaf, leaf)))


def _initial_hyperparameters(specs, params):
  """Natural values keyed by name and stored values keyed by `stored_key`."""
  natural, stored = {}, {}
  for name, spec in specs.items():
    space = SPACES[spec.space]
    init = spec.init
    if spec.per_leaf and jax.tree_util.treedef_is_leaf(
        jax.tree.structure(init)):
      init = jax.tree.map(lambda _, v=init: v, params)
    natural[name] = jax.tree.map(lambda v: _initial_pair(v, space)[0], init)
    stored[stored_key(name, spec.space)] = jax.tree.map(
        lambda v: _initial_pair(v, space)[1], init)
  return natural, stored


def hyperoptimize(
    factory: Callable[..., optax.GradientTransformation],
    learned: Mapping[str, Learned | float],
    hyper_optimizer: optax.GradientTransformation,
    fixed: Mapping[str, Any] | None = None,
    *,
    needs_params: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""Learns hyperparameters of ``factory(...)`` online with ``hyper_optimizer``.

  Every step, with ``x`` the stored hyperparameters, ``h = space(x)`` their
  natural values and ``u_{t-1}(h)`` the previous update (previous state,
  gradient and params held constant):

  .. math::

    G_t &= \frac{\partial \langle g_t, u_{t-1}(\mathrm{space}(x))\rangle}
               {\partial x} \quad (G_1 = 0) \\
    x &\leftarrow x + \mathrm{hyper\_optimizer.update}(G_t, \cdot,
         \mathrm{params}=x) \\
    \mathrm{updates} &= \mathrm{factory}(\mathrm{fixed},
         \mathrm{space}(x)).\mathrm{update}(g_t, \dots)

  The hyper-level steps on every call, the first included (an Adam
  hyper-level advances its count on a zero hypergradient). It may itself be a
  `hyperoptimize` transformation: a stack of any height.

  Semantic choices:

  * The hypergradient is exact and first order: the previous update is
    re-evaluated from the stored previous state and gradient, and
    differentiated only with respect to the hyperparameters, never through
    the model (see `hypergradient`). An element whose new gradient is zero
    adds zero, also where the tangent is not finite: with `optax.adam`'s
    default ``eps_root=0`` the tangent of ``sqrt(v)`` with respect to
    ``b2`` is ``0 * inf`` where a gradient has always been zero (a dead
    unit), which would otherwise make the hypergradient NaN and skip every
    hyper-update.
  * Memory: the optimizer below is stored one step behind (its state before
    the last step and the last gradient), so the state is that optimizer's
    plus one params-sized tree (plus the previous params with
    ``needs_params``); XLA's temporaries are k/4 of the largest leaf for k
    learned names (partial sums of the contraction), not params-sized. Compute
    per step: one pass per leaf that evaluates the previous update and its
    tangents (one per learned name) and contracts them with the gradient, one
    recomputation of the optimizer's previous state, and its update; the
    model is never touched. The first step computes a hypergradient too and
    discards it (a select, not a `jax.lax.cond`).
  * A hyper-update whose hypergradient or new stored value is not finite,
    or whose new natural value leaves its space's domain at the precision
    it is learned in (``exp`` of a huge stored log-rate is inf, a float32
    ``unit_interval`` value rounds to exactly 1), is skipped: the stored
    hyperparameters and the hyper-level state are kept,
    and the optimizer below steps with them. A non-finite *gradient* still
    reaches the optimizer below (as in optax); wrap in
    `optax.apply_if_finite`.
  * With a ``per_leaf`` hyperparameter the optimizer runs separately on each
    leaf (its state is a params-shaped tree of per-leaf states): right for
    per-element rules, not for rules that couple leaves (global norms).
  * The factory is called with the learned values as arrays (traced under
    `jax.jit`; concrete when called eagerly, where a factory that checks its
    arguments may raise on a value a jitted step would use); it must give
    the same state structure for every value (as for
    `optax.inject_hyperparams`). Extra keyword arguments of ``update`` (e.g.
    `optax.polyak_sgd`'s ``value``) are not passed to it: the last step is
    re-evaluated from stored state, and they are not stored. Traced
    initial values (e.g. under `optax.inject_hyperparams`) are accepted
    unchecked, as everywhere in this package.
  * Stored values are kept under the keys ``"SPACE(NAME)"`` (e.g.
    ``"log(learning_rate)"``), so ``optax.tree.get(state, "learning_rate")``
    finds the one natural value.

  Args:
    factory: builds the optimizer from keyword hyperparameters, e.g.
      `optax.adam` or `optax_extras.diffgrad`.
    learned: hyperparameter name -> `Learned` (or a number: `Learned(number)`).
    hyper_optimizer: the level above, e.g. ``optax.sgd(1e-5)``.
    fixed: other keyword arguments of ``factory``, passed unchanged.
    needs_params: whether the optimizer below needs ``params`` in its update
      (e.g. `optax.adamw`, or coupled weight decay): then they are passed
      through and the last ones are stored for the hypergradient.

  Returns:
    A `optax.GradientTransformationExtraArgs` whose state is a
    `HyperoptimizeState`; `hyperparameters` reads the values of every level,
    `set_hyperparameters` writes them.

  Raises:
    ValueError: at construction, for an empty ``learned``, a name ``factory``
      does not accept, a name both learned and fixed, or an initial value
      outside its space's domain or bounds; in ``update``, when
      ``needs_params`` and no params are given.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from optax_extras import hyperoptimize, hyperparameters, Learned
    >>> tx = hyperoptimize(
    ...     optax.adam,
    ...     learned={"learning_rate": Learned(0.1, "log"),
    ...              "b1": Learned(0.9, "unit_interval")},
    ...     hyper_optimizer=optax.sgd(0.1))
    >>> params = jnp.array([1.0, -2.0])
    >>> state = tx.init(params)
    >>> for _ in range(3):
    ...   updates, state = tx.update(params, state)  # grad of |params|^2 / 2
    ...   params = optax.apply_updates(params, updates)
    >>> {k: round(float(v), 4) for k, v in hyperparameters(state)[0].items()}
    {'b1': 0.9042, 'learning_rate': 0.1056}

  References:
    Chandra, Xie, Ragan-Kelley and Meijer, "Gradient Descent: The Ultimate
    Optimizer", NeurIPS 2022, https://arxiv.org/abs/1909.13371; code:
    https://github.com/kach/gradient-descent-the-ultimate-optimizer.
  """
  fixed = dict(fixed or {})
  specs = _check_arguments(factory, learned, hyper_optimizer, fixed)
  _checks.check_bool("needs_params", needs_params)
  _check_factory_accepts_initial_values(factory, fixed, specs)
  inner = _Inner(factory, fixed, tuple(name for name, spec in specs.items()
                                       if spec.per_leaf))
  stored_bounds = {}
  for name, spec in specs.items():
    if spec.bounds != (None, None):
      to_stored = SPACES[spec.space].to_stored_exact
      low, high = (None if b is None else to_stored(b) for b in spec.bounds)
      if spec.space == "square" and low is None:
        low = 0.0  # x^2 is monotone only for x >= 0
      stored_bounds[stored_key(name, spec.space)] = (low, high)

  def init_fn(params):
    natural, raw = _initial_hyperparameters(specs, params)
    return HyperoptimizeState(
        count=jnp.zeros([], jnp.int32),
        hyperparams=natural,
        raw_hyperparams=raw,
        hyper_state=hyper_optimizer.init(raw),
        prev_inner_state=inner.init(natural, params),
        prev_grad=optax.tree.zeros_like(params),
        prev_params=jax.tree.map(jnp.copy, params) if needs_params else None,
    )

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    if needs_params and params is None:
      raise ValueError(
          "hyperoptimize(..., needs_params=True) needs the parameters: call "
          "update(grads, state, params) with params.")
    raw = state.raw_hyperparams
    treedef = jax.tree.structure(updates)
    tangents, recomputed = previous_update_tangents(inner, raw, state)
    hypergrad, partials = hypergradient(inner, raw, tangents, updates,
                                        state.count == 0)
    inner_state = order_inner_state(
        inner, partials, advance_inner_state(recomputed, state),
        state.prev_inner_state, treedef)
    # The new update reads that state as written (a barrier): XLA would
    # otherwise recompute it inside the update's kernel from the old state,
    # which it overwrites, and copy the old state first (measured with
    # bfloat16 state).
    inner_state = jax.lax.optimization_barrier(inner_state)
    raw, hyper_state = hyper_step(hyper_optimizer, hypergrad, raw,
                                  state.hyper_state, stored_bounds)
    natural = natural_values(raw)
    new_updates, _ = inner.update(natural, updates, inner_state,
                                  params if needs_params else None)
    return new_updates, HyperoptimizeState(
        count=optax.safe_increment(state.count),
        # A copy: in the identity space the natural value is the stored one,
        # and no two state leaves may share a buffer (donation).
        hyperparams=jax.tree.map(jnp.copy, natural),
        raw_hyperparams=raw,
        hyper_state=hyper_state,
        prev_inner_state=inner_state,
        prev_grad=store_gradient(inner, updates, partials, inner_state,
                                 state.prev_grad, treedef),
        prev_params=params if needs_params else None,
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _stacks(tree: Any) -> list[HyperoptimizeState]:
  is_state = lambda x: isinstance(x, HyperoptimizeState)
  return [s for s in jax.tree.leaves(tree, is_leaf=is_state) if is_state(s)]


def _the_stack(opt_state: optax.OptState) -> HyperoptimizeState:
  found = _stacks(opt_state)
  if len(found) != 1:
    raise ValueError(
        "opt_state must hold exactly one hyperoptimize stack, found "
        f"{len(found)}; pass the part of the state that holds one.")
  return found[0]


def hyperparameters(opt_state: optax.OptState) -> list[dict[str, Any]]:
  """The learned hyperparameters of a stack, in natural space, bottom first.

  Finds the `hyperoptimize` state in ``opt_state`` (also inside
  `optax.chain`) and returns one dict per learned level: the values its last
  step used (the initial values before the first step). A top level that is
  not itself hyperoptimized has fixed hyperparameters and no entry.

  Args:
    opt_state: a state holding exactly one `HyperoptimizeState` stack.

  Returns:
    A list of dicts name -> value (a scalar array, or a params-shaped tree of
    them for ``per_leaf``).

  Raises:
    ValueError: when ``opt_state`` holds no stack, or several side by side.

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_extras import gdtuo, hyperparameters
    >>> stack = gdtuo.SGD(1e-3, optimizer=gdtuo.SGD(1e-4))
    >>> tx = gdtuo.Adam(0.1, optimizer=stack)
    >>> levels = hyperparameters(tx.init(jnp.zeros(3)))
    >>> [sorted(level) for level in levels]
    [['alpha', 'beta1', 'beta2'], ['alpha']]

  References:
    Chandra, Xie, Ragan-Kelley and Meijer, "Gradient Descent: The Ultimate
    Optimizer", NeurIPS 2022, https://arxiv.org/abs/1909.13371; upstream
    code: https://github.com/kach/gradient-descent-the-ultimate-optimizer
  """
  levels = []
  found = [_the_stack(opt_state)]
  while found:
    levels.append(dict(found[0].hyperparams))
    found = _stacks(found[0].hyper_state)
  return levels


def _with_values(stack: HyperoptimizeState, values: Mapping[str, Any],
                 level: int) -> HyperoptimizeState:
  if level > 0:
    below = _stacks(stack.hyper_state)
    if not below:
      raise ValueError(f"level must be below the stack's height, got "
                       f"level={level!r} too high.")
    hyper_state = _replace_stack(stack.hyper_state, values, level - 1)
    return stack._replace(hyper_state=hyper_state)
  keys = {_parse_stored_key(key)[0]: key for key in stack.raw_hyperparams}
  natural, raw = dict(stack.hyperparams), dict(stack.raw_hyperparams)
  for name, value in values.items():
    if name not in keys:
      raise ValueError(
          f"values must name learned hyperparameters of level {level} "
          f"({sorted(keys)}), got {name!r}.")
    space_name = _parse_stored_key(keys[name])[1]
    space = SPACES[space_name]
    allowed = (f"{space.domain} (space={space_name!r}), a number or a tree "
               "of numbers")
    leaves = jax.tree.leaves(value)
    if not leaves or any(isinstance(v, (str, bytes, bool, complex))
                         for v in leaves):
      raise ValueError(f"{name} must be {allowed}, got {name}={value!r}.")
    for leaf in leaves:
      number = _checks.concrete_value(leaf)
      if number is not None and not space.in_domain(number):
        raise ValueError(f"{name} must be {allowed}, got {name}={value!r}.")
    old = natural[name]
    new = jax.tree.map(lambda o, v: jnp.broadcast_to(
        jnp.asarray(v, o.dtype), o.shape), old,
        value if jax.tree.structure(value) == jax.tree.structure(old)
        else jax.tree.map(lambda _: value, old))
    stored = jax.tree.map(lambda v: space.to_stored(v), new)
    if not any(_is_traced(x) for x in jax.tree.leaves(stored)) and not all(
        bool(jnp.all(space.array_in_domain(space.to_natural(x))))
        for x in jax.tree.leaves(stored)):
      raise ValueError(
          f"{name} must be {space.domain} (space={space_name!r}) also in "
          f"the precision it is learned in, got {name}={value!r}.")
    natural[name] = new
    raw[keys[name]] = stored
  return stack._replace(hyperparams=natural, raw_hyperparams=raw)


def _replace_stack(tree: Any, values: Mapping[str, Any], level: int) -> Any:
  _the_stack(tree)
  is_state = lambda x: isinstance(x, HyperoptimizeState)
  return jax.tree.map(
      lambda x: _with_values(x, values, level) if is_state(x) else x,
      tree, is_leaf=is_state)


def set_hyperparameters(opt_state: optax.OptState, values: Mapping[str, Any],
                        level: int = 0) -> optax.OptState:
  r"""``opt_state`` with learned hyperparameters set to natural values.

  The inverse of `hyperparameters` for one level: each natural value
  :math:`h` is converted to its stored space (``log``, ``atanh(2 h - 1)``,
  ...; see `Learned`),

  .. math::

    x = \mathrm{space}^{-1}(h),

  so the next step continues from them (the hyper-level's own state is
  kept). Bounds are applied at the next hyper-update. The optimizer below
  is kept one step behind, so the new values also apply to the last step
  already taken: its state after that step (e.g. Adam's moments, with a new
  ``b1``) is recomputed with them at the next update, where
  `optax.inject_hyperparams` would only change the steps to come.

  Args:
    opt_state: a state holding exactly one `HyperoptimizeState` stack (also
      inside `optax.chain`).
    values: name -> natural value (a number, or for a ``per_leaf`` name a
      number for every leaf or a params-shaped tree).
    level: 0 for the bottom level, 1 for the level above, ...

  Returns:
    The new state; ``opt_state`` is not modified.

  Raises:
    ValueError: for a name the level does not learn, a concrete value
      outside its space's domain, or a level above the stack.

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_extras import gdtuo, hyperparameters, set_hyperparameters
    >>> tx = gdtuo.Adam(optimizer=gdtuo.SGD(1e-5))
    >>> state = set_hyperparameters(tx.init(jnp.zeros(3)), {"alpha": 0.05})
    >>> float(hyperparameters(state)[0]["alpha"])
    0.05000000074505806

  References:
    Chandra, Xie, Ragan-Kelley and Meijer, "Gradient Descent: The Ultimate
    Optimizer", NeurIPS 2022, https://arxiv.org/abs/1909.13371; upstream
    code: https://github.com/kach/gradient-descent-the-ultimate-optimizer
  """
  try:
    index = None if isinstance(level, bool) else operator.index(level)
  except TypeError:
    index = None
  if index is None or index < 0:
    raise ValueError(f"level must be an int >= 0, got level={level!r}.")
  return _replace_stack(opt_state, values, index)
