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

``h_t`` is one dot product over *all* parameters, as in the paper and in the
reference SGDHD (which flattens all parameters into one vector). The
reference AdamHD updates the rate inside its per-tensor loop (tensor i sees
``alpha + hypergrad_lr * (h_1 + ... + h_i)``), an artifact of the code, not
of the paper; `adam_hd` agrees with it exactly for a model with a single
tensor.

The learned rate is the state field ``learning_rate``:
``optax.tree.get(state, "learning_rate")`` reads it, inside `optax.chain` too.

``learning_rate`` may be a float (the initial rate) or an optax schedule
``s``. A schedule is the *base* of the rate and hypergradient descent learns
an additive correction: ``alpha_t = s(t) + delta_t``, ``delta_0 = 0``,
``delta_t = delta_{t-1} + hypergrad_lr * h_t`` (so ``d alpha / d delta = 1``
and a constant schedule equals the float). The state stores ``alpha_t``.
Under `optax.inject_hyperparams` the injected ``learning_rate`` is a number
each step, so it only sets the initial rate.

A NaN or infinite gradient makes ``h_t`` and so the learned rate NaN for
every later step; wrap the optimizer in `optax.apply_if_finite` to skip such
steps.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from optax_extras import _checks
from optax_extras import _common


class SGDHDState(NamedTuple):
  """State of `sgd_hd`'s hypergradient step.

  Attributes:
    count: number of steps taken, int32 (saturating).
    learning_rate: the learned learning rate used in the last step (before
      the first step, the initial rate).
    prev_direction: the previous update direction ``u_{t-1}`` (for plain
      momentum, also the momentum buffer).
    momentum_buffer: the Nesterov momentum buffer (None without Nesterov).
  """

  count: chex.Array
  learning_rate: chex.Array
  prev_direction: optax.Updates
  momentum_buffer: optax.Updates | None


class AdamHDState(NamedTuple):
  """State of `adam_hd`'s hypergradient step.

  Attributes:
    count: number of steps taken, int32 (saturating).
    learning_rate: the learned learning rate used in the last step.
    mu: first moment, EMA of the gradient.
    nu: second moment, EMA of the squared gradient.
  """

  count: chex.Array
  learning_rate: chex.Array
  mu: optax.Updates
  nu: optax.Updates


def _initial_learning_rate(learning_rate: optax.ScalarOrSchedule) -> jax.Array:
  value = learning_rate(0) if callable(learning_rate) else learning_rate
  return jnp.asarray(value, _common.learned_rate_dtype(value))


def _next_learning_rate(
    learning_rate: optax.ScalarOrSchedule,
    state_rate: jax.Array,
    count: jax.Array,
    hypergradient: jax.Array,
    hypergrad_lr: Any,
) -> jax.Array:
  """alpha_t from alpha_{t-1}; `count` is the number of steps taken before."""
  correction = hypergrad_lr * hypergradient
  if callable(learning_rate):
    previous_base = learning_rate(jnp.maximum(count - 1, 0))
    rate = learning_rate(count) + (state_rate - previous_base) + correction
  else:
    rate = state_rate + correction
  return rate.astype(state_rate.dtype)


def _check_shared(learning_rate, hypergrad_lr, weight_decay):
  _checks.check_learning_rate(learning_rate)
  _checks.check_nonnegative("hypergrad_lr", hypergrad_lr)
  _checks.check_nonnegative("weight_decay", weight_decay)


def sgd_hd(
    learning_rate: optax.ScalarOrSchedule,
    hypergrad_lr: float = 1e-6,
    momentum: float = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
) -> optax.GradientTransformation:
  r"""SGD (SGD-HD), momentum or Nesterov (SGDN-HD) with a learned rate.

  Numerically `hypergrad.SGDHD`, for any number of tensors. With
  ``g_t = grad + weight_decay * params`` (coupled L2)::

    h_t     = <g_t, u_{t-1}>                      (u_0 = 0)
    alpha_t = alpha_{t-1} + hypergrad_lr * h_t
    b_t     = g_1 at t = 1, else momentum b_{t-1} + (1 - dampening) g_t
    u_t     = g_t (no momentum) | b_t | g_t + momentum b_t (nesterov)
    params <- params - alpha_t u_t

  The hypergradient uses the previous update *direction* ``u_{t-1}``, not the
  raw gradient, as in the reference.

  Args:
    learning_rate: the initial rate (a float >= 0), or a schedule that is the
      base of the rate (see the module docstring).
    hypergrad_lr: the hypergradient learning rate (``beta``), >= 0.
    momentum: momentum factor, >= 0 (0: plain SGD).
    dampening: dampening of the momentum, in [0, 1].
    nesterov: Nesterov momentum (needs momentum > 0 and dampening = 0).
    weight_decay: coupled L2 coefficient, >= 0 (needs ``params`` in update).

  Returns:
    A `optax.GradientTransformation` whose state holds ``learning_rate``.

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
  """
  _check_shared(learning_rate, hypergrad_lr, weight_decay)
  _checks.check_nonnegative("momentum", momentum)
  _checks.check_range("dampening", dampening, 0.0, 1.0)
  _checks.check_bool("nesterov", nesterov)
  if nesterov and (
      _checks.concrete_value(momentum) == 0.0
      or _checks.concrete_value(dampening) not in (0.0, None)):
    raise ValueError(
        "nesterov=True needs momentum > 0 and dampening = 0, got "
        f"momentum={momentum!r}, dampening={dampening!r}.")

  def init_fn(params):
    return SGDHDState(
        count=jnp.zeros([], jnp.int32),
        learning_rate=_initial_learning_rate(learning_rate),
        prev_direction=optax.tree.zeros_like(params),
        momentum_buffer=optax.tree.zeros_like(params) if nesterov else None,
    )

  def update_fn(updates, state, params=None):
    del params
    first_step = state.count == 0
    rate_dtype = state.learning_rate.dtype
    # Per-leaf partial products: each leaf's new state is ordered after its
    # own (see `_common.ordered_after`).
    partials = jax.tree.map(lambda g, u: _common.leaf_vdot(g, u, rate_dtype),
                            updates, state.prev_direction)
    hypergradient = _common.sum_leaves(partials, rate_dtype)
    rate = _next_learning_rate(learning_rate, state.learning_rate, state.count,
                               hypergradient, hypergrad_lr)

    def momentum_step(g, buffer):
      decayed = momentum * buffer + (1 - dampening) * g
      return jnp.where(first_step, g, decayed).astype(buffer.dtype)

    # The state (and so the update, as in optax.sgd with momentum) keeps the
    # dtype it was initialised with, that of params, whatever the gradients'.
    if nesterov:
      buffer = jax.tree.map(momentum_step, updates, state.momentum_buffer)
      buffer = jax.tree.map(_common.ordered_after, partials, buffer,
                            state.momentum_buffer)
      direction = jax.tree.map(
          lambda g, b: (g + momentum * b).astype(b.dtype), updates, buffer)
    else:
      buffer = None
      direction = jax.tree.map(
          lambda g, b: jnp.where(momentum == 0, g.astype(b.dtype),
                                 momentum_step(g, b)),
          updates, state.prev_direction)
    direction = jax.tree.map(_common.ordered_after, partials, direction,
                             state.prev_direction)
    new_updates = jax.tree.map(lambda u: (-rate * u).astype(u.dtype),
                               direction)
    return new_updates, SGDHDState(
        optax.safe_increment(state.count), rate, direction, buffer)

  return _common.with_coupled_weight_decay(
      weight_decay, optax.GradientTransformation(init_fn, update_fn))


def adam_hd(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    hypergrad_lr: float = 1e-8,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> optax.GradientTransformation:
  r"""Adam with a learning rate learned by hypergradient descent (Adam-HD).

  Numerically `hypergrad.AdamHD` (see the module docstring for the one
  difference with several tensors). With ``g_t = grad + weight_decay * params``
  (coupled L2) and ``c_t = sqrt(1 - b2^t) / (1 - b1^t)``::

    h_t     = c_{t-1} <g_t, m_{t-1} / (sqrt(v_{t-1}) + eps)>   (0 at t = 1)
    alpha_t = alpha_{t-1} + hypergrad_lr * h_t
    m_t = b1 m_{t-1} + (1 - b1) g_t ;  v_t = b2 v_{t-1} + (1 - b2) g_t^2
    params <- params - alpha_t c_t m_t / (sqrt(v_t) + eps)

  ``eps`` is added before bias correction (old torch Adam placement, as in the
  reference), unlike `optax.adam`.

  Args:
    learning_rate: the initial rate (a float >= 0), or a schedule that is the
      base of the rate (see the module docstring).
    hypergrad_lr: the hypergradient learning rate (``beta``), >= 0.
    b1: decay rate of the first moment, in [0, 1).
    b2: decay rate of the second moment, in [0, 1).
    eps: added to the root of the second moment, >= 0.
    weight_decay: coupled L2 coefficient, >= 0 (needs ``params`` in update).

  Returns:
    A `optax.GradientTransformation` whose state holds ``learning_rate``.

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
  """
  _check_shared(learning_rate, hypergrad_lr, weight_decay)
  _checks.check_decay("b1", b1)
  _checks.check_decay("b2", b2)
  _checks.check_nonnegative("eps", eps)

  def init_fn(params):
    return AdamHDState(
        count=jnp.zeros([], jnp.int32),
        learning_rate=_initial_learning_rate(learning_rate),
        mu=optax.tree.zeros_like(params),
        nu=optax.tree.zeros_like(params),
    )

  def update_fn(updates, state, params=None):
    del params
    rate_dtype = state.learning_rate.dtype
    prev_direction = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + eps),
                                  state.mu, state.nu)
    prev_scale = _common.adam_step_scale(
        b1, b2, jnp.maximum(state.count, 1)).astype(rate_dtype)
    # A select, not a product with 0: with eps = 0 the first direction is
    # 0 / 0, and the reference skips the hypergradient on the first step.
    partials = jax.tree.map(lambda g, u: _common.leaf_vdot(g, u, rate_dtype),
                            updates, prev_direction)
    hypergradient = jnp.where(
        state.count > 0, prev_scale * _common.sum_leaves(partials, rate_dtype),
        0.0)
    rate = _next_learning_rate(learning_rate, state.learning_rate, state.count,
                               hypergradient, hypergrad_lr)
    count = optax.safe_increment(state.count)
    mu, nu = _common.adam_moments(updates, state.mu, state.nu, b1, b2)
    # Each leaf's new moments are ordered after its own partial product.
    mu = jax.tree.map(_common.ordered_after, partials, mu, state.mu)
    nu = jax.tree.map(_common.ordered_after, partials, nu, state.nu)
    step_size = rate * _common.adam_step_scale(b1, b2, count).astype(
        rate_dtype)
    new_updates = jax.tree.map(
        lambda m, v: (-step_size * (m / (jnp.sqrt(v) + eps))).astype(m.dtype),
        mu, nu)
    return new_updates, AdamHDState(count, rate, mu, nu)

  return _common.with_coupled_weight_decay(
      weight_decay, optax.GradientTransformation(init_fn, update_fn))
