"""Expectigrad: arithmetic-mean RMS with a per-element counter, outer momentum.

Daley and Amato, "Expectigrad: Fast Stochastic Optimization with Robust
Convergence Properties", 2020, https://arxiv.org/abs/2010.01356. Reference
code: `expectigrad.pytorch.Expectigrad` (https://github.com/brett-daley/expectigrad).
"""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from optax_extras import _checks
from optax_extras import _common


class ScaleByExpectigradState(NamedTuple):
  """State of `scale_by_expectigrad`.

  Attributes:
    count: number of steps taken, int32 (saturating).
    sum_sq: running sum of squared gradients, at least float32.
    counter: per-element int32 count of nonzero gradients, saturating at
      ``2**31 - 1`` (None when ``sparse_counter=False``: the step count is
      used instead).
    momentum: the outer momentum of the normalized steps.
  """

  count: chex.Array
  sum_sq: optax.Updates
  counter: optax.Updates | None
  momentum: optax.Updates


def scale_by_expectigrad(
    beta: jax.typing.ArrayLike = 0.9,
    eps: jax.typing.ArrayLike = 1e-8,
    sparse_counter: bool = True,
) -> optax.GradientTransformationExtraArgs:
  r"""Rescales updates by Expectigrad's arithmetic RMS, then outer momentum.

  With the gradient :math:`g_t`, :math:`t` counted from 1, :math:`\beta` =
  ``beta``, :math:`\epsilon` = ``eps`` and :math:`[\cdot]` the indicator:

  .. math::

    s_t &= s_{t-1} + g_t^2 \\
    n_t &= n_{t-1} + [g_t^2 \neq 0] \quad
      (\texttt{sparse\_counter}; \text{ otherwise } n_t = t) \\
    a_t &= s_t / n_t, \quad 0 / 0 := 0 \\
    m_t &= \beta m_{t-1} + (1 - \beta) \frac{g_t}{\sqrt{a_t} + \epsilon} \\
    u_t &= \frac{m_t}{1 - \beta^t}

  Semantic choices:

  * Where an element has only seen zero gradients, its counter and sum are
    both 0 and its step is 0, as in the reference. (The 0/0 is computed as
    ``s_t / max(n_t, 1)``: a zero counter means every square added was 0,
    so the sum is 0. That is one select per element fewer than a ``where``
    on ``n_t > 0``, and the step is partly compute-bound on XLA:CPU:
    benchmarks/results/optimizers.md.)
  * The counter counts the squares added to the sum, as the reference's
    ``sign(g^2)``: a nonzero gradient whose square underflows to 0 counts as
    a zero gradient.
  * ``beta = 0`` gives ``u_t = g_t / (sqrt(a_t) + eps)`` (no momentum, no bias
    correction), as in the reference; the momentum buffer is kept in the state
    anyway so that ``beta`` may be traced.
  * A NaN gradient is *not* swallowed. The reference replaces every NaN of
    ``s/n`` by 0, which turns a past NaN gradient into steps of ``g/eps``
    forever after; here only the 0/0 of an untouched element maps to 0, and a
    NaN gradient propagates into the state and the update (loud, like
    `optax.adam`). Wrap in `optax.apply_if_finite` to skip such steps.
  * The sum of squares is kept in at least float32 and the counter in int32:
    a bfloat16 running sum or counter stops growing after a few hundred steps.
    The counter saturates at ``2**31 - 1`` (as `optax.safe_increment` does
    for the step count) instead of wrapping to a negative count.

  Args:
    beta: decay rate of the outer momentum, in [0, 1) (default 0.9).
    eps: added to the arithmetic RMS, finite and > 0 (default 1e-8).
    sparse_counter: a Python bool (default True): count, per element, only
      the steps with a nonzero gradient (the paper's sparse counter); if
      False, divide by the step count.

  Returns:
    A `optax.GradientTransformationExtraArgs` (extra arguments of ``update``,
    such as ``value``, are accepted and ignored) whose state is a
    `ScaleByExpectigradState`.

  Raises:
    ValueError: when a concrete ``beta`` is not in [0, 1), ``eps`` is not
      finite and > 0 (traced values are not checked), or ``sparse_counter``
      is not a Python bool.

  Example:
    >>> import jax.numpy as jnp, optax_extras
    >>> tx = optax_extras.scale_by_expectigrad()
    >>> grads = {"w": jnp.array([0.5, 0.0])}
    >>> state = tx.init(grads)
    >>> updates, state = tx.update(grads, state)
    >>> [round(float(u), 4) for u in updates["w"]]
    [1.0, 0.0]

  References:
    Daley and Amato, "Expectigrad: Fast Stochastic Optimization with Robust
    Convergence Properties", 2020, https://arxiv.org/abs/2010.01356;
    upstream code (`expectigrad.pytorch.Expectigrad`):
    https://github.com/brett-daley/expectigrad
  """
  _checks.check_decay("beta", beta)
  _checks.check_range("eps", eps, 0.0, float("inf"), low_inclusive=False,
                      high_inclusive=False)
  _checks.check_bool("sparse_counter", sparse_counter)

  def accumulator_dtype(x):
    return jnp.promote_types(x.dtype, jnp.float32)

  def init_fn(params):
    return ScaleByExpectigradState(
        count=jnp.zeros([], jnp.int32),
        sum_sq=jax.tree.map(
            lambda p: jnp.zeros(p.shape, accumulator_dtype(p)), params),
        counter=(jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.int32), params)
                 if sparse_counter else None),
        momentum=optax.tree.zeros_like(params),
    )

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    count = optax.safe_increment(state.count)
    squares = jax.tree.map(
        lambda s, g: jnp.square(g.astype(s.dtype)), state.sum_sq, updates)
    sum_sq = jax.tree.map(jnp.add, state.sum_sq, squares)

    def normalized_step(g, s, n):
      mean_sq = s / jnp.maximum(n, 1).astype(s.dtype)
      return (g / (jnp.sqrt(mean_sq) + eps)).astype(g.dtype)

    if sparse_counter:
      counter = jax.tree.map(
          lambda n, sq: jnp.where(sq != 0, optax.safe_increment(n), n),
          state.counter, squares)
      steps = jax.tree.map(normalized_step, updates, sum_sq, counter)
    else:
      counter = None
      steps = jax.tree.map(
          lambda g, s: normalized_step(g, s, count), updates, sum_sq)
    momentum = optax.tree.cast_like(
        optax.tree.update_moment(steps, state.momentum, beta, 1),
        state.momentum)
    inverse_correction = 1.0 / _common.bias_correction(beta, count)
    new_updates = jax.tree.map(
        lambda m: (inverse_correction * m).astype(m.dtype), momentum)
    return new_updates, ScaleByExpectigradState(count, sum_sq, counter,
                                                momentum)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def expectigrad(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    beta: jax.typing.ArrayLike = 0.9,
    eps: jax.typing.ArrayLike = 1e-8,
    sparse_counter: bool = True,
) -> optax.GradientTransformationExtraArgs:
  r"""Expectigrad optimizer, numerically `expectigrad.pytorch.Expectigrad`.

  With :math:`\alpha_t` = ``learning_rate`` (a schedule's value at step
  :math:`t - 1`) and :math:`u_t` the direction of `scale_by_expectigrad`:

  .. math::

    \theta_t = \theta_{t-1} - \alpha_t u_t

  See `scale_by_expectigrad` for the rule of :math:`u_t` and its semantic
  choices. Expectigrad has no weight decay; chain `optax.add_decayed_weights`
  before it for coupled L2 or after it for decoupled decay. Unlike the
  reference, ``learning_rate=0`` is allowed (as in optax) and may be an optax
  schedule.

  Args:
    learning_rate: a float >= 0 (default 1e-3) or an optax schedule.
    beta: decay rate of the outer momentum, in [0, 1) (default 0.9).
    eps: added to the arithmetic RMS, finite and > 0 (default 1e-8).
    sparse_counter: a Python bool (default True): count only nonzero
      gradients, per element.

  Returns:
    A `optax.GradientTransformationExtraArgs` (extra arguments of ``update``,
    such as ``value``, are accepted and ignored).

  Raises:
    ValueError: when a concrete ``learning_rate`` is negative or not finite,
      ``beta`` is not in [0, 1), ``eps`` is not finite and > 0 (schedules and
      traced values are not checked), or ``sparse_counter`` is not a Python
      bool.

  Example:
    >>> import jax.numpy as jnp, optax, optax_extras
    >>> tx = optax_extras.expectigrad(learning_rate=0.1)
    >>> params = {"w": jnp.array([1.0, -2.0])}
    >>> state = tx.init(params)
    >>> grads = {"w": jnp.array([0.5, 0.0])}
    >>> updates, state = tx.update(grads, state, params)
    >>> optax.apply_updates(params, updates)["w"]
    Array([ 0.9, -2. ], dtype=float32)

  References:
    Daley and Amato, "Expectigrad: Fast Stochastic Optimization with Robust
    Convergence Properties", 2020, https://arxiv.org/abs/2010.01356;
    upstream code (`expectigrad.pytorch.Expectigrad`):
    https://github.com/brett-daley/expectigrad
  """
  _checks.check_learning_rate(learning_rate)
  return optax.chain(
      scale_by_expectigrad(beta=beta, eps=eps, sparse_counter=sparse_counter),
      optax.scale_by_learning_rate(learning_rate),
  )
