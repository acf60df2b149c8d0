"""Hypergradient descent: SGD, SGD with (Nesterov) momentum and Adam whose
learning rate is learned online by gradient descent on the learning rate.

Baydin, Cornish, Martinez Rubio, Schmidt and Wood, "Online Learning Rate
Adaptation with Hypergradient Descent", ICLR 2018,
https://arxiv.org/abs/1703.04782. Reference code: `hypergrad.SGDHD` and
`hypergrad.AdamHD` of https://github.com/gbaydin/hypergradient-descent.

The learning rate is updated *before* it is used in the current step::

  h_t     = <g_t, u_{t-1}>           (u: the previous unscaled update direction)
  alpha_t = alpha_{t-1} + hypergrad_lr * h_t
  params <- params - alpha_t * u_t

Semantic choices shared by `sgd_hd` and `adam_hd`:

* **Where the learned rate is.** The state field ``learning_rate`` holds the
  rate of the last step: ``optax.tree.get(state, "learning_rate")`` reads it,
  inside `optax.chain` too, and ``optax.tree.set`` changes it (the next step
  continues from the value set).
* **The given learning rate is the base of the rate.** Hypergradient descent
  learns an additive correction to it: ``alpha_t = base_t + delta_t`` with
  ``delta_0 = 0`` and ``delta_t = delta_{t-1} + hypergrad_lr * h_t``. For a
  float the base is constant (so this is the reference's rule); for an optax
  schedule ``s`` it is ``s(t - 1)`` at step ``t``, so a constant schedule
  equals the float. The state stores the base of the last step as
  ``base_learning_rate``; a change of the base moves the learned rate by the
  same amount.
* **Injected learning rates drive the rate.** Under
  `optax.inject_hyperparams` the injected ``learning_rate`` is the base, as a
  schedule given directly would be: ``inject_hyperparams(adam_hd)(
  learning_rate=s)`` equals ``adam_hd(learning_rate=s)``, and setting
  ``state.hyperparams["learning_rate"] = x`` makes the next rate ``x`` plus
  the correction learned so far (0 right after ``init``). The injected base
  and the learned rate are then two values called ``learning_rate``:
  ``optax.tree.get`` needs ``state.inner_state`` to find the learned one, or
  pass ``static_args=("learning_rate",)`` to `optax.inject_hyperparams` (a
  float or a schedule, not injected) to keep one.
* **Optional bounds.** ``learning_rate_bounds=(low, high)`` (either end may be
  None) clips every learned rate to the interval before it is used; the
  default, no bounds, is the references' behaviour, where a too large
  ``hypergrad_lr`` can drive the rate to +-1e26 and the parameters to NaN
  within a few steps. (For a stack, `Learned` has ``bounds`` too.)
* **Non-finite gradients.** A NaN or infinite gradient makes ``h_t`` and so
  the learned rate NaN for every later step; wrap the optimizer in
  `optax.apply_if_finite` to skip such steps.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from optax_extras import _checks
from optax_extras import _common

_HYPERGRADIENT_MODES = ("global", "per_tensor")
_Bounds = tuple[float | None, float | None]


class SGDHDState(NamedTuple):
  """State of `sgd_hd`'s hypergradient step.

  Attributes:
    count: number of steps taken, int32 (saturating).
    learning_rate: the learned learning rate used in the last step (before
      the first step, the initial rate).
    base_learning_rate: the base of that rate (the float, the schedule's
      value or the injected value) that the learned correction was added to.
    prev_direction: the previous update direction ``u_{t-1}`` (for plain
      momentum, also the momentum buffer).
    momentum_buffer: the Nesterov momentum buffer (None without Nesterov).
  """

  count: chex.Array
  learning_rate: chex.Array
  base_learning_rate: chex.Array
  prev_direction: optax.Updates
  momentum_buffer: optax.Updates | None


class AdamHDState(NamedTuple):
  """State of `adam_hd`'s hypergradient step.

  Attributes:
    count: number of steps taken, int32 (saturating).
    learning_rate: the learned learning rate used in the last step (with
      ``hypergradient="per_tensor"``: by the last leaf).
    base_learning_rate: the base of that rate (the float, the schedule's
      value or the injected value) that the learned correction was added to.
    mu: first moment, EMA of the gradient.
    nu: second moment, EMA of the squared gradient.
  """

  count: chex.Array
  learning_rate: chex.Array
  base_learning_rate: chex.Array
  mu: optax.Updates
  nu: optax.Updates


def _base_rate(learning_rate: optax.ScalarOrSchedule, count: jax.Array,
               dtype: Any) -> jax.Array:
  """The base of the rate of the step taken after `count` steps."""
  value = learning_rate(count) if callable(learning_rate) else learning_rate
  return jnp.asarray(value).astype(dtype)


def _initial_rates(learning_rate: optax.ScalarOrSchedule):
  """(learning_rate, base_learning_rate) of a new state: both the base.

  The dtype is that of a float rate (of ``learning_rate(0)`` for a
  schedule), the value the schedule's at an int32 count, as in ``update``
  (optax schedules compute in float32 from an int32 count).
  """
  given = learning_rate(0) if callable(learning_rate) else learning_rate
  rate = _base_rate(learning_rate, jnp.zeros([], jnp.int32),
                    _common.learned_rate_dtype(given))
  # Copies: a rate given as an array (or injected by
  # optax.inject_hyperparams, which keeps its own) must not be a state leaf
  # too, or a donated step would donate one buffer twice.
  return jnp.copy(rate), jnp.copy(rate)


def _learned_rates(learning_rate: optax.ScalarOrSchedule, state: Any,
                   increments: list[jax.Array], bounds: _Bounds):
  """The rates of one step, as an array, and the base they were corrected
  from.

  The last step's rate moves by the change of the base, then by each
  hypergradient increment in turn (one per leaf with
  ``hypergradient="per_tensor"``), clipped to `bounds` after each; the
  result holds the rate after each increment (and may end with one more
  entry, equal to the last rate, see below).

  Several increments or a clip go through a `jax.lax.scan`, not a Python
  loop: XLA:CPU copies such a chain of scalar operations (with the sum of
  the per-leaf dot products before it) into every fusion that reads its
  result, which makes compile time quadratic in the number of leaves; the
  leaves read the loop's output instead. XLA inlines a loop of one
  iteration, so a single clipped increment is followed by a zero one
  (``x + 0 = x`` and the clip is idempotent: the rate is unchanged). One
  increment without bounds (the default) is one addition, which XLA computes
  once.
  """
  dtype = state.learning_rate.dtype
  base = _base_rate(learning_rate, state.count, dtype)
  # A constant base adds an exact 0: the reference's `lr += hypergrad_lr * h`.
  start = state.learning_rate + (base - state.base_learning_rate)
  if len(increments) == 1 and bounds == (None, None):
    return (start + increments[0].astype(dtype))[None], base
  if len(increments) == 1:
    increments = [increments[0], jnp.zeros([], dtype)]
  if not increments:  # per tensor, no leaves: the base's change alone
    increments = [jnp.zeros([], dtype)]

  def step(rate, increment):
    rate = jnp.clip(rate + increment, *bounds).astype(dtype)
    return rate, rate

  _, rates = jax.lax.scan(
      step, start, jnp.stack([i.astype(dtype) for i in increments]))
  return rates, base


def _check_hypergradient_mode(hypergradient: Any) -> None:
  if (not isinstance(hypergradient, str)
      or hypergradient not in _HYPERGRADIENT_MODES):
    raise ValueError(
        "hypergradient must be one of 'global', 'per_tensor', got "
        f"hypergradient={hypergradient!r}.")


def _checked_bounds(bounds: Any, learning_rate: Any) -> _Bounds:
  """`learning_rate_bounds` as (low, high) floats or None, validated."""
  pair = "a pair (low, high), each None or a finite real number"
  numbers = None
  if isinstance(bounds, (tuple, list)) and len(bounds) == 2:
    numbers = [None if b is None else _checks.concrete_value(b)
               for b in bounds]
    if any(b is not None and (n is None or not math.isfinite(n))
           for b, n in zip(bounds, numbers)):
      numbers = None
  if numbers is None:
    raise ValueError(
        f"learning_rate_bounds must be {pair}, got "
        f"learning_rate_bounds={bounds!r}.")
  low, high = numbers
  if low is not None and high is not None and not low < high:
    raise ValueError(
        "learning_rate_bounds must satisfy low < high, got "
        f"learning_rate_bounds={bounds!r}.")
  rate = _checks.concrete_value(learning_rate)
  below = rate is not None and low is not None and rate < low
  above = rate is not None and high is not None and rate > high
  if below or above:
    raise ValueError(
        f"learning_rate must lie within learning_rate_bounds={bounds!r}, "
        f"got learning_rate={learning_rate!r}.")
  return low, high


def _check_shared(learning_rate, hypergrad_lr, weight_decay,
                  learning_rate_bounds) -> _Bounds:
  _checks.check_learning_rate(learning_rate)
  _checks.check_nonnegative("hypergrad_lr", hypergrad_lr)
  _checks.check_nonnegative("weight_decay", weight_decay)
  return _checked_bounds(learning_rate_bounds, learning_rate)


def _check_nesterov(nesterov, momentum, dampening) -> None:
  _checks.check_bool("nesterov", nesterov)
  if nesterov and (
      _checks.concrete_value(momentum) == 0.0
      or _checks.concrete_value(dampening) not in (0.0, None)):
    raise ValueError(
        "nesterov=True needs momentum > 0 and dampening = 0, got "
        f"momentum={momentum!r}, dampening={dampening!r}.")


def sgd_hd(
    learning_rate: optax.ScalarOrSchedule,
    hypergrad_lr: float = 1e-6,
    momentum: float = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    *,
    learning_rate_bounds: _Bounds = (None, None),
) -> optax.GradientTransformationExtraArgs:
  r"""SGD (SGD-HD), momentum or Nesterov (SGDN-HD) with a learned rate.

  Numerically `hypergrad.SGDHD`, for any number of tensors. With the
  gradient :math:`g_t` plus coupled L2, :math:`\mu` = ``momentum``,
  :math:`d` = ``dampening``, :math:`\beta` = ``hypergrad_lr``:

  .. math::

    h_t &= \langle g_t, u_{t-1} \rangle \quad (u_0 = 0) \\
    \alpha_t &= \mathrm{clip}(\alpha_{t-1} + \beta h_t) \\
    b_t &= g_1 \text{ at } t = 1, \text{ else }
      \mu b_{t-1} + (1 - d) g_t \\
    u_t &= g_t \text{ (no momentum)}, \; b_t \text{ (momentum)}
      \text{ or } g_t + \mu b_t \text{ (Nesterov)} \\
    \theta_t &= \theta_{t-1} - \alpha_t u_t

  Semantic choices (see also the module docstring: the given rate is the
  base, injected rates, bounds, NaN gradients):

  * The hypergradient uses the previous update *direction* ``u_{t-1}``, not
    the raw gradient, as in the reference.
  * ``h_t`` is one dot product over all parameters, as in the paper and the
    reference (which flattens all parameters into one vector); there is no
    per-tensor mode (unlike `adam_hd`, whose reference loops over tensors).
  * ``weight_decay`` is coupled L2 (``g_t = grad + weight_decay * params``),
    as in the reference.

  Args:
    learning_rate: the initial rate, a float >= 0, or an optax schedule: the
      base that the learned correction is added to.
    hypergrad_lr: the hypergradient learning rate :math:`\beta`, >= 0
      (default 1e-6, the reference's).
    momentum: momentum factor, >= 0 (0: plain SGD).
    dampening: dampening of the momentum, in [0, 1].
    nesterov: Nesterov momentum (needs momentum > 0 and dampening = 0).
    weight_decay: coupled L2 coefficient, >= 0 (a nonzero value needs
      ``params`` in update).
    learning_rate_bounds: ``(low, high)``, each None (no bound, the default)
      or a finite number, low < high; every learned rate is clipped to it.

  Returns:
    A `optax.GradientTransformationExtraArgs` (extra arguments of ``update``,
    such as ``value``, are accepted and ignored) whose state holds the
    learned ``learning_rate``.

  Raises:
    ValueError: a hyperparameter out of its range, ``nesterov`` with zero
      momentum or nonzero dampening, bad ``learning_rate_bounds``, or a float
      ``learning_rate`` outside them.

  Example:
    >>> import jax.numpy as jnp, optax, optax_extras
    >>> tx = optax_extras.sgd_hd(learning_rate=0.1, hypergrad_lr=0.01)
    >>> params = jnp.array([1.0, -2.0])
    >>> state = tx.init(params)
    >>> for _ in range(2):
    ...   updates, state = tx.update(params, state)  # grad of |params|^2 / 2
    ...   params = optax.apply_updates(params, updates)
    >>> round(float(optax.tree.get(state, "learning_rate")), 6)
    0.145

  References:
    Baydin, Cornish, Martinez Rubio, Schmidt and Wood, "Online Learning Rate
    Adaptation with Hypergradient Descent", ICLR 2018,
    https://arxiv.org/abs/1703.04782; upstream code (`hypergrad.SGDHD`):
    https://github.com/gbaydin/hypergradient-descent
  """
  bounds = _check_shared(learning_rate, hypergrad_lr, weight_decay,
                         learning_rate_bounds)
  _checks.check_nonnegative("momentum", momentum)
  _checks.check_range("dampening", dampening, 0.0, 1.0)
  _check_nesterov(nesterov, momentum, dampening)

  def init_fn(params):
    rate, base = _initial_rates(learning_rate)
    return SGDHDState(
        count=jnp.zeros([], jnp.int32),
        learning_rate=rate,
        base_learning_rate=base,
        prev_direction=optax.tree.zeros_like(params),
        momentum_buffer=optax.tree.zeros_like(params) if nesterov else None,
    )

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    first_step = state.count == 0
    dtype = state.learning_rate.dtype
    # Per-leaf partial products: each leaf's new state is ordered after its
    # own (see `_common.ordered_after`). Each kernel that reads the decayed
    # gradient adds the decay itself (see `_common.decayed_gradient`).
    decay_params = _common.params_for_decay(params, updates)

    partials = jax.tree.map(
        lambda g, p, u: _common.leaf_vdot(
            _common.decayed_gradient(g, p, weight_decay, own_for=u), u, dtype),
        updates, decay_params, state.prev_direction)
    updates = jax.tree.map(
        lambda g, p: _common.decayed_gradient(g, p, weight_decay), updates,
        decay_params)
    hypergradient = _common.sum_leaves(partials, dtype)
    rates, base = _learned_rates(learning_rate, state,
                                 [hypergrad_lr * hypergradient], bounds)
    rate = rates[-1]

    def momentum_step(g, buffer):
      decayed = momentum * buffer + (1 - dampening) * g
      return jnp.where(first_step, g, decayed).astype(buffer.dtype)

    # The state (and so the update, as in optax.sgd with momentum) keeps the
    # dtype it was initialised with, that of params, whatever the gradients'.
    if nesterov:
      buffer = jax.tree.map(momentum_step, updates, state.momentum_buffer)
      buffer = jax.tree.map(_common.ordered_after, partials, buffer,
                            state.momentum_buffer)
      # The direction's gradient is ordered too: XLA then adds the decay
      # inside this kernel as well, not writing the decayed gradient out.
      direction = jax.tree.map(
          lambda g, b, partial: (
              _common.ordered_after(partial, g, jnp.zeros_like(g))
              + momentum * b).astype(b.dtype),
          updates, buffer, partials)
    else:
      buffer = None
      direction = jax.tree.map(
          lambda g, b: jnp.where(momentum == 0, g.astype(b.dtype),
                                 momentum_step(g, b)),
          updates, state.prev_direction)
    direction = jax.tree.map(_common.ordered_after, partials, direction,
                             state.prev_direction)
    # The update reads the new direction as written (a barrier): XLA would
    # otherwise recompute it inside `apply_updates` from the old buffer,
    # which the new direction overwrites, and copy that buffer first
    # (measured with bfloat16 momentum).
    direction = jax.lax.optimization_barrier(direction)
    new_updates = jax.tree.map(lambda u: (-rate * u).astype(u.dtype),
                               direction)
    return new_updates, SGDHDState(
        optax.safe_increment(state.count), rate, base, direction, buffer)

  return _common.with_coupled_weight_decay(
      weight_decay, optax.GradientTransformationExtraArgs(init_fn, update_fn))


def _adam_hypergradient_partials(updates, params, state, eps, weight_decay):
  r"""Per leaf ``<g_t, m_{t-1} / (\sqrt{v_{t-1}} + eps)>``, in the rate's
  dtype (`_common.map_leaves`), ``g_t`` with its coupled L2.

  The reduction's ``eps`` and decayed gradient are its own
  (`_common.own_constant`, `_common.decayed_gradient`): XLA would otherwise
  merge them with the update's, or with another leaf's of the same shape, and
  write them out as leaf-sized arrays for the reduction to read (measured: 8
  more bytes per parameter and a temporary of the largest leaf's size for
  ``eps``; every leaf's decayed gradient, a params-sized temporary, with a
  weight decay).
  """
  dtype = state.learning_rate.dtype

  def leaf_partial(g, p, m, v):
    g = _common.decayed_gradient(g, p, weight_decay, own_for=m)
    leaf_eps = _common.own_constant(eps, v, v)
    return (_common.leaf_vdot(g, m / (jnp.sqrt(v) + leaf_eps), dtype),)

  return _common.map_leaves(leaf_partial, (updates, params, state.mu,
                                           state.nu), 1)[0]


def _adam_hypergradient_increments(partials, state, b1, b2, hypergrad_lr,
                                   per_tensor):
  """``hypergrad_lr * h``: one for all leaves, or one per leaf in order.

  ``h = c_{t-1}`` times the sum of the `partials` (of one leaf with
  ``per_tensor``), 0 on the first step.
  """
  dtype = state.learning_rate.dtype
  prev_scale = _common.adam_step_scale(
      b1, b2, jnp.maximum(state.count, 1)).astype(dtype)
  if per_tensor:
    products = jax.tree.leaves(partials) or [jnp.zeros([], dtype)]
  else:
    products = [_common.sum_leaves(partials, dtype)]
  # A select, not a product with 0: with eps = 0 the first direction is
  # 0 / 0, and the reference skips the hypergradient on the first step.
  return [hypergrad_lr * jnp.where(state.count > 0, prev_scale * p, 0.0)
          for p in products]


def adam_hd(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    hypergrad_lr: float = 1e-8,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    *,
    hypergradient: str = "global",
    learning_rate_bounds: _Bounds = (None, None),
) -> optax.GradientTransformationExtraArgs:
  r"""Adam with a learning rate learned by hypergradient descent (Adam-HD).

  With the gradient :math:`g_t` plus coupled L2, :math:`\beta` =
  ``hypergrad_lr``, :math:`\hat d_{t} = m_t / (\sqrt{v_t} + \epsilon)` and
  :math:`c_t = \sqrt{1 - b_2^t} / (1 - b_1^t)`:

  .. math::

    h_t &= c_{t-1} \langle g_t, \hat d_{t-1} \rangle
      \quad (h_1 = 0) \\
    \alpha_t &= \mathrm{clip}(\alpha_{t-1} + \beta h_t) \\
    m_t &= b_1 m_{t-1} + (1 - b_1) g_t, \quad
      v_t = b_2 v_{t-1} + (1 - b_2) g_t^2 \\
    \theta_t &= \theta_{t-1} - \alpha_t c_t \hat d_t

  With ``hypergradient="per_tensor"`` leaf :math:`i` (of :math:`n`, in the
  order of ``jax.tree.leaves(params)``: for a list of a torch model's
  parameters, the order of ``model.parameters()``) steps with
  :math:`\alpha_t^{(i)} = \alpha_{t-1} + \beta (h_t^{(1)} + \dots +
  h_t^{(i)})`, :math:`h_t^{(j)}` the dot product over leaf :math:`j` alone,
  and the learned rate is :math:`\alpha_t = \alpha_t^{(n)}`.

  Semantic choices (see also the module docstring: the given rate is the
  base, injected rates, bounds, NaN gradients):

  * ``hypergradient="global"`` (default) is the paper's rule: one dot
    product over all parameters. `hypergrad.AdamHD` updates the rate inside
    its loop over tensors, which is ``"per_tensor"``: numerically the
    reference for any number of tensors. Both agree for a single tensor.
    With bounds, each :math:`\alpha_t^{(i)}` is clipped.
  * ``eps`` is added before bias correction (old torch Adam placement, as in
    the reference), unlike `optax.adam`.
  * ``weight_decay`` is coupled L2 (``g_t = grad + weight_decay * params``),
    as in the reference.

  Args:
    learning_rate: the initial rate, a float >= 0, or an optax schedule: the
      base that the learned correction is added to.
    hypergrad_lr: the hypergradient learning rate :math:`\beta`, >= 0
      (default 1e-8, the reference's).
    b1: decay rate of the first moment, in [0, 1).
    b2: decay rate of the second moment, in [0, 1).
    eps: added to the root of the second moment, >= 0.
    weight_decay: coupled L2 coefficient, >= 0 (a nonzero value needs
      ``params`` in update).
    hypergradient: ``"global"`` (the paper) or ``"per_tensor"`` (the
      reference code), see above.
    learning_rate_bounds: ``(low, high)``, each None (no bound, the default)
      or a finite number, low < high; every learned rate is clipped to it.

  Returns:
    A `optax.GradientTransformationExtraArgs` (extra arguments of ``update``,
    such as ``value``, are accepted and ignored) whose state holds the
    learned ``learning_rate``.

  Raises:
    ValueError: a hyperparameter out of its range, an unknown
      ``hypergradient``, bad ``learning_rate_bounds``, or a float
      ``learning_rate`` outside them.

  Example:
    >>> import jax.numpy as jnp, optax, optax_extras
    >>> tx = optax_extras.adam_hd(learning_rate=0.1, hypergrad_lr=0.01)
    >>> params = jnp.array([1.0, -2.0])
    >>> state = tx.init(params)
    >>> for _ in range(2):
    ...   updates, state = tx.update(params, state)  # grad of |params|^2 / 2
    ...   params = optax.apply_updates(params, updates)
    >>> round(float(optax.tree.get(state, "learning_rate")), 6)
    0.128

  References:
    Baydin, Cornish, Martinez Rubio, Schmidt and Wood, "Online Learning Rate
    Adaptation with Hypergradient Descent", ICLR 2018,
    https://arxiv.org/abs/1703.04782; upstream code (`hypergrad.AdamHD`):
    https://github.com/gbaydin/hypergradient-descent
  """
  bounds = _check_shared(learning_rate, hypergrad_lr, weight_decay,
                         learning_rate_bounds)
  _checks.check_decay("b1", b1)
  _checks.check_decay("b2", b2)
  _checks.check_nonnegative("eps", eps)
  _check_hypergradient_mode(hypergradient)
  per_tensor = hypergradient == "per_tensor"

  def init_fn(params):
    rate, base = _initial_rates(learning_rate)
    return AdamHDState(
        count=jnp.zeros([], jnp.int32),
        learning_rate=rate,
        base_learning_rate=base,
        mu=optax.tree.zeros_like(params),
        nu=optax.tree.zeros_like(params),
    )

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    params = _common.params_for_decay(params, updates)
    partials = _adam_hypergradient_partials(updates, params, state, eps,
                                            weight_decay)
    increments = _adam_hypergradient_increments(
        partials, state, b1, b2, hypergrad_lr, per_tensor)
    rates, base = _learned_rates(learning_rate, state, increments, bounds)
    count = optax.safe_increment(state.count)
    scale = _common.adam_step_scale(b1, b2, count).astype(rates[-1].dtype)

    def leaf_step(g, p, m, v, partial, rate):
      """One leaf's moments, ordered after its own partial product, and its
      update."""
      g = _common.decayed_gradient(g, p, weight_decay)
      new_m, new_v = _common.adam_moments(g, m, v, b1, b2)
      new_m = _common.ordered_after(partial, new_m, m)
      new_v = _common.ordered_after(partial, new_v, v)
      update = -(rate * scale) * (new_m / (jnp.sqrt(new_v) + eps))
      return update.astype(new_m.dtype), new_m, new_v

    treedef = jax.tree.structure(updates)
    leaf_rates = treedef.unflatten(
        list(rates)[:treedef.num_leaves] if per_tensor
        else [rates[-1]] * treedef.num_leaves)
    new_updates, mu, nu = _common.map_leaves(
        leaf_step, (updates, params, state.mu, state.nu, partials,
                    leaf_rates), 3)
    return new_updates, AdamHDState(count, rates[-1], base, mu, nu)

  return _common.with_coupled_weight_decay(
      weight_decay, optax.GradientTransformationExtraArgs(init_fn, update_fn))
