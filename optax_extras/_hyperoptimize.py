"""Hyperoptimizer stacks: learn any optax optimizer's hyperparameters online.

Chandra, Xie, Ragan-Kelley and Meijer, "Gradient Descent: The Ultimate
Optimizer", NeurIPS 2022, https://arxiv.org/abs/1909.13371. Reference code:
`gradient_descent_the_ultimate_optimizer.gdtuo` (see `optax_extras.gdtuo` for
its constructors, built on this module).

With ``theta_t = theta_{t-1} + u_{t-1}(h)`` the update of the optimizer below
made with its hyperparameters ``h``, the hypergradient at step ``t`` is the
one-step product::

  dL(theta_t)/dh = <grad L(theta_t), d u_{t-1}(h) / dh>

(previous optimizer state and gradient held constant: nothing is
differentiated through the model, nor through more than one step). A second
`optax.GradientTransformation`, the *hyper-level*, receives that hypergradient
as its gradient and the stored hyperparameters as its params; it updates
them first, and the optimizer below then steps with the new values. A
hyper-level made by `hyperoptimize` learns its own hyperparameters the same
way, so a stack of any height is this construction applied again.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from optax_extras import _checks
from optax_extras import _common


def _unit_interval_inverse(y: float) -> float:
  z = y * 2.0 - 1.0
  return math.log((1.0 + z) / (1.0 - z)) / 2.0


# space: (stored -> natural, natural -> stored in Python double, domain test,
#         domain in words)
_SPACES = {
    "identity": (lambda x: x, lambda y: y, math.isfinite, "a finite number"),
    "unit_interval": (
        lambda x: (jnp.tanh(x) + 1.0) / 2.0,
        _unit_interval_inverse,
        lambda y: 0.0 < y < 1.0,
        "in (0, 1)",
    ),
    "square": (jnp.square, math.sqrt, lambda y: 0.0 <= y < math.inf,
               "finite and >= 0"),
    "log": (jnp.exp, math.log, lambda y: 0.0 < y < math.inf,
            "finite and > 0"),
}


@dataclasses.dataclass(frozen=True)
class Learned:
  """How `hyperoptimize` learns one hyperparameter.

  Attributes:
    init: the initial value in natural space (the value the optimizer is
      called with): a float, or with ``per_leaf=True`` a float (the same start
      for every leaf) or a params-shaped tree of floats.
    space: how the value is stored, i.e. what the hyper-level optimizes:
      ``"identity"`` (``h = x``), ``"unit_interval"`` (``h = (tanh(x) + 1)/2``,
      in (0, 1), gdtuo's clamp for betas), ``"square"`` (``h = x^2``, >= 0,
      gdtuo's RMSProp alpha) or ``"log"`` (``h = exp(x)``, > 0).
    per_leaf: one value per parameter leaf instead of one scalar.
    bounds: ``(low, high)`` in natural space, either may be None. After every
      hyper-update the stored value is projected onto the stored-space image
      of the interval (clipping the natural value, exactly, since each space
      is monotone; for ``"square"`` the stored value is kept >= sqrt(low) >= 0).
  """

  init: Any
  space: str = "identity"
  per_leaf: bool = False
  bounds: tuple[float | None, float | None] = (None, None)


class HyperoptimizeState(NamedTuple):
  """State of `hyperoptimize`.

  The optimizer below is kept one step behind: its state before the last step
  and the last gradient (and params, only when its update needs them) are
  what re-evaluating the last update as a function of the hyperparameters
  needs, and its current state is a function of them.

  Attributes:
    count: number of steps taken, int32 (saturating).
    hyperparams: the values the last step used, in natural space
      (before the first step, the initial values). Read a whole stack with
      `hyperparameters`.
    raw_hyperparams: the same values in stored space: the params of the
      hyper-level.
    hyper_state: the state of the hyper-level.
    prev_inner_state: the state of the optimizer below before the last step.
    prev_grad: the gradient of the last step (zeros before the first).
    prev_params: the params of the last step, or None when the optimizer below
      does not need params.
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


def _is_scalar(value: Any) -> bool:
  return _checks.concrete_value(value) is not None


def _checked_spec(name: str, spec: Any) -> Learned:
  """`spec` as a validated `Learned`, with a ValueError naming `name`."""
  if not isinstance(spec, Learned):
    spec = Learned(spec)
  if spec.space not in _SPACES:
    raise ValueError(
        f"space of hyperparameter {name!r} must be one of {sorted(_SPACES)}, "
        f"got space={spec.space!r}.")
  _checks.check_bool(f"per_leaf of {name!r}", spec.per_leaf)
  _, _, in_domain, domain = _SPACES[spec.space]
  values = jax.tree.leaves(spec.init) if spec.per_leaf else [spec.init]
  if not values or not all(_is_scalar(v) for v in values):
    allowed = ("a real number or a tree of real numbers" if spec.per_leaf
               else "a real number (use per_leaf=True for a tree)")
    raise ValueError(
        f"initial value of hyperparameter {name!r} must be {allowed}, got "
        f"{name}={spec.init!r}.")
  low, high = spec.bounds
  for bound in (low, high):
    if bound is not None and not in_domain(_checks.concrete_value(bound)):
      raise ValueError(
          f"bounds of hyperparameter {name!r} must be {domain} "
          f"(space={spec.space!r}), got bounds={spec.bounds!r}.")
  if low is not None and high is not None and not low < high:
    raise ValueError(
        f"bounds of hyperparameter {name!r} must satisfy low < high, got "
        f"bounds={spec.bounds!r}.")
  for value in map(_checks.concrete_value, values):
    if not in_domain(value):
      raise ValueError(
          f"initial value of hyperparameter {name!r} must be {domain} for "
          f"space={spec.space!r}, got {name}={value!r}.")
    if ((low is not None and value < low)
        or (high is not None and value > high)):
      raise ValueError(
          f"initial value of hyperparameter {name!r} must lie within "
          f"bounds={spec.bounds!r}, got {name}={value!r}.")
  return spec


def hyperoptimize(
    factory: Callable[..., optax.GradientTransformation],
    learned: Mapping[str, Learned | float],
    hyper_optimizer: optax.GradientTransformation,
    fixed: Mapping[str, Any] | None = None,
) -> optax.GradientTransformation:
  r"""Learns hyperparameters of ``factory(...)`` online with ``hyper_optimizer``.

  Every step, with ``x`` the stored hyperparameters, ``h = space(x)`` their
  natural values and ``u_{t-1}(h)`` the previous update (previous state,
  gradient and params held constant)::

    G_t = d <g_t, u_{t-1}(space(x))> / dx     (one-step VJP; G_1 = 0)
    x  <- x + hyper_optimizer.update(G_t, ., params=x)
    updates = factory(**fixed, **space(x)).update(g_t, ...)

  The hyper-level steps on every call, the first included (an Adam
  hyper-level advances its count on a zero hypergradient). It may itself be a
  `hyperoptimize` transformation: a stack of any height.

  Semantic choices:

  * The hypergradient is exact and first order: the previous update is
    re-evaluated from the stored previous state and gradient, and
    differentiated only with respect to the hyperparameters, never through
    the model. It is taken in forward mode: one ``jax.jvp`` per learned name
    (a ``per_leaf`` name needs one for all its leaves, since each leaf's
    update depends only on its own value), the k tangents contracted with
    the gradient in one pass over each leaf that evaluates them together (a
    variadic reduction: shared subexpressions are computed once per element,
    and no tangent is stored). Why not ``jax.vjp``: on XLA:CPU its transpose
    turns every use of a broadcast scalar into its own full reduction (seven
    for Adam's three hyperparameters), each a separate pass over the params
    that also materializes the shared intermediates. Cost measured in
    benchmarks/results/hyperoptimize.md.
  * Memory: the optimizer below is stored one step behind (its state before
    the last step and the last gradient), so the state is that optimizer's
    plus one params-sized tree (plus the previous params when its update
    needs them, e.g. decoupled weight decay: detected at ``init`` by trying
    the update without params). Storing the tangents ``d u_{t-1} / dh``
    instead would cost one params-sized tree per learned scalar. Compute per
    step: the tangents above, one recomputation of the optimizer's previous
    state, and its update; the model is never touched. The first step
    computes a hypergradient too and discards it (a select, not a
    `jax.lax.cond`, whose branches XLA cannot fuse with the rest).
  * A hypergradient that is not finite skips the hyper-update for that step:
    the stored hyperparameters and the hyper-level state are kept, and the
    optimizer below steps with them. A non-finite *gradient* still reaches
    the optimizer below (as in optax); wrap in `optax.apply_if_finite`.
  * With a ``per_leaf`` hyperparameter the optimizer runs separately on each
    leaf (its state is a params-shaped tree of per-leaf states): right for
    per-element rules, not for rules that couple leaves (global norms).
  * The factory is called with traced values; it must give the same state
    structure for every value (as for `optax.inject_hyperparams`).

  Args:
    factory: builds the optimizer from keyword hyperparameters, e.g.
      `optax.adam` or `optax_extras.diffgrad`.
    learned: hyperparameter name -> `Learned` (or a float: `Learned(float)`).
    hyper_optimizer: the level above, e.g. ``optax.sgd(1e-5)``.
    fixed: other keyword arguments of ``factory``, passed unchanged.

  Returns:
    A `optax.GradientTransformation` whose state is a `HyperoptimizeState`;
    `hyperparameters` reads the values of every level.

  Raises:
    ValueError: at construction, for an empty ``learned``, a name ``factory``
      does not accept, a name both learned and fixed, or an initial value
      outside its space's domain or bounds.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from optax_extras import (
    ...     hyperoptimize, hyperparameters, Learned)
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

  Reference:
    Chandra, Xie, Ragan-Kelley and Meijer, "Gradient Descent: The Ultimate
    Optimizer", NeurIPS 2022, https://arxiv.org/abs/1909.13371.
  """
  fixed = dict(fixed or {})
  if not isinstance(hyper_optimizer, optax.GradientTransformation):
    raise ValueError(
        "hyper_optimizer must be an optax.GradientTransformation, got "
        f"hyper_optimizer={hyper_optimizer!r}.")
  if not learned:
    raise ValueError("learned must name at least one hyperparameter, got "
                     f"learned={learned!r}.")
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
  for name in fixed:
    if not _accepts(factory, name):
      raise ValueError(
          f"fixed argument {name!r} is not a keyword argument of "
          f"factory={factory!r}.")
  names = list(specs)
  per_leaf = [name for name, spec in specs.items() if spec.per_leaf]

  def initial(value, space):
    """Natural and stored arrays of a concrete scalar initial value."""
    dtype = _common.learned_rate_dtype(value)
    stored = _SPACES[space][1](_checks.concrete_value(value))
    return jnp.asarray(value, dtype), jnp.asarray(stored, dtype)

  def stored_bounds(spec):
    to_stored = _SPACES[spec.space][1]
    low, high = spec.bounds
    return (None if low is None else to_stored(low),
            None if high is None else to_stored(high))

  raw_bounds = {name: stored_bounds(spec) for name, spec in specs.items()
                if spec.bounds != (None, None)}
  # Construction fails here, with the factory's own message, when it rejects
  # an initial value (per-leaf values: each leaf's).
  scalar_inits = {name: spec.init for name, spec in specs.items()
                  if not spec.per_leaf}
  leaf_inits = [jax.tree.leaves(specs[name].init) for name in per_leaf]
  for leaf in zip(*leaf_inits) if per_leaf else [()]:
    factory(**fixed, **scalar_inits, **dict(zip(per_leaf, leaf)))

  def natural(raw):
    return {name: jax.tree.map(_SPACES[specs[name].space][0], value)
            for name, value in raw.items()}

  def leaf_values(values, treedef):
    """One dict of values per leaf of `treedef` (per-leaf values split)."""
    split = {name: treedef.flatten_up_to(values[name]) for name in per_leaf}
    return [{**values, **{name: split[name][i] for name in per_leaf}}
            for i in range(treedef.num_leaves)]

  def inner_init(values, params):
    if not per_leaf:
      return factory(**fixed, **values).init(params)
    leaves, treedef = jax.tree.flatten(params)
    return treedef.unflatten([
        factory(**fixed, **leaf).init(p)
        for leaf, p in zip(leaf_values(values, treedef), leaves)])

  def inner_update(raw, grads, inner_state, params):
    values = natural(raw)
    if not per_leaf:
      updates, new_state = factory(**fixed, **values).update(
          grads, inner_state, params)
    else:
      treedef = jax.tree.structure(grads)
      leaf_params = ([None] * treedef.num_leaves if params is None
                     else treedef.flatten_up_to(params))
      results = [
          factory(**fixed, **leaf).update(g, s, p)
          for leaf, g, s, p in zip(
              leaf_values(values, treedef), treedef.flatten_up_to(grads),
              treedef.flatten_up_to(inner_state), leaf_params)]
      updates = treedef.unflatten([u for u, _ in results])
      new_state = treedef.unflatten([s for _, s in results])
    # Traced hyperparameters (float32 at least) must not promote low-precision
    # updates or state: both keep the dtypes they came with.
    updates = jax.tree.map(lambda u, g: u.astype(g.dtype), updates, grads)
    return updates, optax.tree.cast_like(new_state, inner_state)

  def init_fn(params):
    hyperparams, raw = {}, {}
    for name, spec in specs.items():
      if not spec.per_leaf:
        hyperparams[name], raw[name] = initial(spec.init, spec.space)
        continue
      start = (jax.tree.map(lambda _, v=spec.init: v, params)
               if _is_scalar(spec.init) else spec.init)
      pairs = jax.tree.map(lambda v, s=spec.space: initial(v, s), start)
      hyperparams[name] = jax.tree.map(lambda _, pair: pair[0], start, pairs)
      raw[name] = jax.tree.map(lambda _, pair: pair[1], start, pairs)
    inner_state = inner_init(hyperparams, params)
    grads = optax.tree.zeros_like(params)

    def without_params():
      return inner_update(raw, grads, inner_state, None)

    try:
      jax.eval_shape(without_params)
      needs_params = False
    except (ValueError, TypeError, AttributeError):
      needs_params = True
    return HyperoptimizeState(
        count=jnp.zeros([], jnp.int32),
        hyperparams=hyperparams,
        raw_hyperparams=raw,
        hyper_state=hyper_optimizer.init(raw),
        prev_inner_state=inner_state,
        prev_grad=grads,
        prev_params=jax.tree.map(jnp.copy, params) if needs_params else None,
    )

  def update_fn(updates, state, params=None):
    if state.prev_params is not None and params is None:
      raise ValueError(
          "the optimizer below needs the parameters: call "
          "update(grads, state, params) with params.")
    first_step = state.count == 0
    raw = state.raw_hyperparams

    def tangent(name):
      """d u_{t-1} / d raw[name] along ones (per leaf: each leaf's own)."""
      def previous_update(value):
        return inner_update({**raw, name: value}, state.prev_grad,
                            state.prev_inner_state, state.prev_params)[0]
      ones = jax.tree.map(jnp.ones_like, raw[name])
      return jax.jvp(previous_update, (raw[name],), (ones,))[1]

    # One (k,) vector of <g, d u / d x_j> per leaf: the k tangents are
    # evaluated together in one pass and never stored (see `_common.vdots`).
    contractions = jax.tree.map(_common.vdots, updates,
                                *[tangent(name) for name in names])
    hypergrad = {}
    for j, name in enumerate(names):
      if specs[name].per_leaf:
        hypergrad[name] = jax.tree.map(
            lambda x, c, j=j: jnp.where(first_step, 0.0, c[j]).astype(x.dtype),
            raw[name], contractions)
      else:
        total = sum(c[j] for c in jax.tree.leaves(contractions))
        hypergrad[name] = jnp.where(first_step, 0.0, total).astype(
            raw[name].dtype)

    # The optimizer below's state after the last step (kept as it is on the
    # first step). `late` is always False (x * 0 > 1 is False for inf and nan
    # too) but XLA cannot fold it; with the barrier (which keeps XLA from
    # sharing this recomputation with the tangents) it orders the in-place
    # writes of the new state into the donated buffers after every read of
    # the old one, so XLA no longer copies the state first (it did: two full
    # copies per Adam leaf).
    late = sum(jnp.sum(h) for h in jax.tree.leaves(hypergrad)) * 0.0 > 1.0
    prev_inner_state, prev_grad, prev_params = jax.lax.optimization_barrier(
        (state.prev_inner_state, state.prev_grad, state.prev_params))
    _, recomputed = inner_update(raw, prev_grad, prev_inner_state, prev_params)
    inner_state = jax.tree.map(
        lambda old, new: jax.lax.select(
            jnp.broadcast_to(first_step | late, jnp.shape(new)), old, new),
        prev_inner_state, recomputed)
    # Likewise the gradient is stored, in place of the last one, only once
    # the new state (which reads the last one) is computed: a select, never
    # taken, on one element of each state leaf. Two full copies fewer per leaf
    # (the old gradient saved, the new one copied in). Selecting against 0
    # rather than the old gradient reads one buffer fewer. The stored
    # gradient keeps the dtype it was initialised with (that of params), so
    # the state's structure is the same after every step.
    inner_state = jax.lax.optimization_barrier(inner_state)
    stored = late
    for leaf in jax.tree.leaves(inner_state):
      if jnp.issubdtype(leaf.dtype, jnp.floating) and leaf.size:
        stored = stored | (leaf[(0,) * leaf.ndim] * 0.0 > 1.0)
    new_prev_grad = jax.tree.map(
        lambda old, new: jnp.where(stored, jnp.zeros([], old.dtype),
                                   new.astype(old.dtype)),
        prev_grad, updates)

    hyper_updates, hyper_state = hyper_optimizer.update(
        hypergrad, state.hyper_state, state.raw_hyperparams)
    raw = optax.apply_updates(state.raw_hyperparams, hyper_updates)
    for name, (low, high) in raw_bounds.items():
      raw[name] = jax.tree.map(lambda x, lo=low, hi=high: jnp.clip(x, lo, hi),
                               raw[name])
    finite = jnp.all(jnp.asarray(
        [jnp.all(jnp.isfinite(h)) for h in jax.tree.leaves(hypergrad)]))
    raw, hyper_state = jax.tree.map(
        lambda new, old: jnp.where(finite, new, old),
        (raw, hyper_state), (state.raw_hyperparams, state.hyper_state))

    new_updates, _ = inner_update(raw, updates, inner_state, params)
    return new_updates, HyperoptimizeState(
        count=optax.safe_increment(state.count),
        # A copy: in the identity space natural(raw) is raw itself, and no
        # two state leaves may share a buffer (donation).
        hyperparams=jax.tree.map(jnp.copy, natural(raw)),
        raw_hyperparams=raw,
        hyper_state=hyper_state,
        prev_inner_state=inner_state,
        prev_grad=new_prev_grad,
        prev_params=None if state.prev_params is None else params,
    )

  return optax.GradientTransformation(init_fn, update_fn)


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
  """

  def stacks(tree):
    is_state = lambda x: isinstance(x, HyperoptimizeState)
    return [s for s in jax.tree.leaves(tree, is_leaf=is_state) if is_state(s)]

  found = stacks(opt_state)
  if len(found) != 1:
    raise ValueError(
        "opt_state must hold exactly one hyperoptimize stack, found "
        f"{len(found)}; pass the part of the state that holds one.")
  levels = []
  while found:
    levels.append(dict(found[0].hyperparams))
    found = stacks(found[0].hyper_state)
  return levels
