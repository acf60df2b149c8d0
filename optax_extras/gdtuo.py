"""gdtuo's hyperoptimizers as optax transformations, for porting gdtuo code.

Chandra, Xie, Ragan-Kelley and Meijer, "Gradient Descent: The Ultimate
Optimizer", NeurIPS 2022, https://arxiv.org/abs/1909.13371. Reference code:
`gradient_descent_the_ultimate_optimizer.gdtuo` (gdtuo 1.0).

Each constructor has gdtuo's name, arguments and defaults and returns an
`optax.GradientTransformation`: the update rule alone when ``optimizer`` is
None (gdtuo's `NoOpOptimizer`), else the rule whose hyperparameters
``optimizer`` learns, through `optax_extras.hyperoptimize`::

  # torch:  gdtuo.ModuleWrapper(model, optimizer=gdtuo.Adam(optimizer=gdtuo.SGD(1e-5)))
  tx = optax_extras.gdtuo.Adam(optimizer=optax_extras.gdtuo.SGD(1e-5))

gives gdtuo's weights (float64: to ~1e-13 relative after 60 steps). Learned
values are stored as gdtuo stores them: ``alpha`` and ``mu`` as they are,
RMSProp's ``alpha`` as its square root, betas and ``gamma`` as
``atanh(2 beta - 1)`` (used through ``(tanh(x) + 1) / 2``), under the keys
``"identity(alpha)"``, ``"square(alpha)"``, ``"unit_interval(beta1)"``, ...
of the state's ``raw_hyperparams``. `hyperparameters` reads them back in
natural space, bottom level first; `set_hyperparameters` writes them.

Differences with gdtuo: ``SGDPerParam`` takes one float (the same start for
every leaf) or a params-shaped tree of floats instead of gdtuo's
``(name, alpha)`` pairs, and every leaf has its own alpha (gdtuo leaves a
tensor without an alpha unchanged). Arguments are validated (gdtuo does not).
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
from optax_extras._hyperoptimize import hyperoptimize
from optax_extras._hyperoptimize import hyperparameters
from optax_extras._hyperoptimize import Learned
from optax_extras._hyperoptimize import set_hyperparameters

__all__ = (
    "AdaGrad",
    "Adam",
    "AdamBaydin",
    "hyperparameters",
    "RMSProp",
    "RMSPropAlpha",
    "set_hyperparameters",
    "SGD",
    "SGDPerParam",
)


class SGDState(NamedTuple):
  """State of gdtuo's SGD: the momentum buffer (None without momentum)."""

  buf: optax.Updates | None


class AdaGradState(NamedTuple):
  """State of gdtuo's AdaGrad: the sum of squared gradients (starts at 0.1)."""

  G: optax.Updates  # pylint: disable=invalid-name


class RMSPropState(NamedTuple):
  """State of gdtuo's RMSProp: the EMA of squared gradients."""

  s: optax.Updates


class AdamState(NamedTuple):
  """State of gdtuo's Adam: own step count, first and second moments."""

  count: chex.Array
  m: optax.Updates
  v: optax.Updates


def _finite(name: str, value: Any) -> None:
  _checks.check_range(name, value, -math.inf, math.inf,
                      low_inclusive=False, high_inclusive=False)


def _hyperoptimize(factory, learned, optimizer, fixed=None):
  """`hyperoptimize` with gdtuo's argument name in the error message."""
  if not isinstance(optimizer, optax.GradientTransformation):
    raise ValueError(
        "optimizer must be None or an optax.GradientTransformation (e.g. "
        f"gdtuo.SGD(1e-5)), got optimizer={optimizer!r}.")
  return hyperoptimize(factory, learned, optimizer, fixed)


def _rule(init_fn, update_fn) -> optax.GradientTransformationExtraArgs:
  """A gdtuo rule whose updates keep the gradients' dtypes and whose state
  keeps its own (float32 array hyperparameters, e.g. injected, would
  otherwise promote bfloat16 state: no `jax.lax.scan` carry)."""

  def cast_update(updates, state, params=None, **extra_args):
    del params, extra_args
    new_updates, new_state = update_fn(updates, state)
    return (jax.tree.map(lambda u, g: u.astype(g.dtype), new_updates, updates),
            optax.tree.cast_like(new_state, state))
  return optax.GradientTransformationExtraArgs(init_fn, cast_update)


def _sgd(alpha, mu=0.0, *, momentum: bool = False):
  """``buf = g`` then ``buf * mu + g`` (with momentum); ``p - buf * alpha``."""

  def init_fn(params):
    return SGDState(optax.tree.zeros_like(params) if momentum else None)

  def update_fn(grads, state):
    if not momentum:
      return jax.tree.map(lambda g: -(g * alpha), grads), state
    # buf starts at 0: 0 * mu + g is gdtuo's first-step buf = g, exactly.
    buf = jax.tree.map(lambda b, g: b * mu + g, state.buf, grads)
    return jax.tree.map(lambda b: -(b * alpha), buf), SGDState(buf)

  return _rule(init_fn, update_fn)


def _adagrad(alpha, eps=1e-10):
  """``G += g^2`` (``G_0 = 0.1``); ``p - alpha g / sqrt(G + eps)``."""

  def init_fn(params):
    return AdaGradState(jax.tree.map(lambda p: jnp.zeros_like(p) + 1e-1,
                                     params))

  def leaf_step(g, big_g):
    big_g = big_g + jnp.square(g)
    return -(alpha * g / jnp.sqrt(big_g + eps)), big_g

  def update_fn(grads, state):
    updates, big_g = _common.map_leaves(leaf_step, (grads, state.G), 2)
    return updates, AdaGradState(big_g)

  return _rule(init_fn, update_fn)


def _rmsprop(alpha, gamma, eps=1e-8):
  """``s = gamma s + (1 - gamma) g^2``; ``p - alpha g / sqrt(s + eps)``."""

  def init_fn(params):
    return RMSPropState(optax.tree.zeros_like(params))

  def leaf_step(g, s):
    s = gamma * s + (1.0 - gamma) * jnp.square(g)
    return -(alpha * g / jnp.sqrt(s + eps)), s

  def update_fn(grads, state):
    updates, s = _common.map_leaves(leaf_step, (grads, state.s), 2)
    return updates, RMSPropState(s)

  return _rule(init_fn, update_fn)


def _adam(alpha, beta1, beta2, eps):
  r"""gdtuo's Adam: ``v_0 = eps``, ``p - alpha m_hat / (sqrt(v_hat) + eps)``."""

  def init_fn(params):
    return AdamState(
        count=jnp.zeros([], jnp.int32),
        m=optax.tree.zeros_like(params),
        v=jax.tree.map(lambda p: (jnp.zeros_like(p) + eps).astype(p.dtype),
                       params),
    )

  def update_fn(grads, state):
    count = optax.safe_increment(state.count)
    # Bias corrections as scalar reciprocals, computed once for all leaves: a
    # product per element instead of a division (also in the tangents
    # `hyperoptimize` takes), and no scalar work repeated per leaf.
    t = count.astype(jnp.result_type(beta1, beta2, float))
    m_scale = 1.0 / (1.0 - beta1**t)
    v_scale = 1.0 / (1.0 - beta2**t)

    def leaf_step(g, m, v):
      m = beta1 * m + (1.0 - beta1) * g
      v = beta2 * v + (1.0 - beta2) * g * g
      m_hat = m * m_scale.astype(m.dtype)
      v_hat = v * v_scale.astype(v.dtype)
      return -(alpha * (m_hat / (jnp.sqrt(v_hat) + eps))), m, v

    updates, m, v = _common.map_leaves(leaf_step, (grads, state.m, state.v),
                                       3)
    return updates, AdamState(count, m, v)

  return _rule(init_fn, update_fn)


def SGD(  # pylint: disable=invalid-name
    alpha: jax.typing.ArrayLike = 0.01,
    mu: jax.typing.ArrayLike = 0.0,
    optimizer: optax.GradientTransformation | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""gdtuo's SGD: ``p - alpha * buf``, learning ``alpha`` (and ``mu``).

  With the gradient :math:`g_t`, :math:`\alpha` = ``alpha`` and :math:`\mu`
  = ``mu`` (the learned values of the step when ``optimizer`` is given):

  .. math::

    b_t &= g_t \text{ at } t = 1, \text{ else } \mu b_{t-1} + g_t
      \quad (\text{without momentum: } b_t = g_t) \\
    \theta_t &= \theta_{t-1} - \alpha b_t

  Momentum is used, and ``mu`` learned, only when the constructor's
  ``mu != 0``, as in gdtuo (an array ``mu``, even a zero one, keeps the
  momentum buffer, so that `optax.inject_hyperparams` sees one state
  structure; with ``mu = 0`` the numbers are the same). ``alpha`` and ``mu``
  are stored and learned as they are (space ``"identity"``).

  Args:
    alpha: the learning rate, a finite number (default 0.01).
    mu: the momentum coefficient, a finite number (default 0.0: no momentum).
    optimizer: the level that learns ``alpha`` (and ``mu``), e.g.
      ``gdtuo.SGD(1e-5)`` or another stack; None (default, gdtuo's
      ``NoOpOptimizer``): both fixed.

  Returns:
    A `optax.GradientTransformationExtraArgs`: the rule alone without
    ``optimizer``, else a `optax_extras.hyperoptimize` transformation whose
    state is a `HyperoptimizeState` (`hyperparameters` reads the learned
    values).

  Raises:
    ValueError: when a concrete ``alpha`` or ``mu`` is not a finite number,
      or ``optimizer`` is neither None nor an `optax.GradientTransformation`.

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_extras import gdtuo
    >>> tx = gdtuo.SGD(0.1, optimizer=gdtuo.SGD(0.01))
    >>> params = jnp.array([1.0, -2.0])
    >>> state = tx.init(params)
    >>> for _ in range(3):
    ...   updates, state = tx.update(params, state)  # grad of |params|^2 / 2
    ...   params = params + updates
    >>> round(float(gdtuo.hyperparameters(state)[0]["alpha"]), 6)
    0.179627

  References:
    Chandra, Xie, Ragan-Kelley and Meijer, "Gradient Descent: The Ultimate
    Optimizer", NeurIPS 2022, https://arxiv.org/abs/1909.13371; upstream
    code (`gradient_descent_the_ultimate_optimizer.gdtuo.SGD`):
    https://github.com/kach/gradient-descent-the-ultimate-optimizer
  """
  _finite("alpha", alpha)
  _finite("mu", mu)
  # gdtuo: momentum (and a learned mu) only when mu != 0. An array mu, even
  # a zero one, keeps momentum, so that `optax.inject_hyperparams` (concrete
  # arrays in init, traced ones in update) builds one state structure; with
  # mu = 0 it gives the same numbers.
  momentum = not (isinstance(mu, (int, float)) and mu == 0)
  if optimizer is None:
    return _sgd(alpha, mu, momentum=momentum)
  learned = {"alpha": Learned(alpha)}
  if momentum:
    learned["mu"] = Learned(mu)
  return _hyperoptimize(_sgd, learned, optimizer, {"momentum": momentum})


def SGDPerParam(  # pylint: disable=invalid-name
    alpha: Any,
    optimizer: optax.GradientTransformation | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""gdtuo's SGDPerParam: ``p_i - alpha_i * g_i``, one alpha per leaf.

  With :math:`g_t^{(i)}` the gradient of parameter leaf :math:`i` and
  :math:`\alpha^{(i)}` its alpha (the learned value of the step when
  ``optimizer`` is given, stored as it is):

  .. math::

    \theta_t^{(i)} = \theta_{t-1}^{(i)} - \alpha^{(i)} g_t^{(i)}

  Unlike gdtuo, every leaf has its own alpha (gdtuo leaves a tensor without
  an alpha unchanged), and a single float gives every leaf the same start.

  Args:
    alpha: the initial alphas (no default, as in gdtuo): one finite float for
      every leaf, a params-shaped tree of finite floats, or gdtuo's own form,
      a list of ``(name, alpha)`` pairs (read as ``dict(pairs)``, the tree of
      params that are a flat dict).
    optimizer: the level that learns the alphas; None (default): fixed.

  Returns:
    A `optax.GradientTransformationExtraArgs`: the rule alone without
    ``optimizer``, else a `optax_extras.hyperoptimize` transformation whose
    state is a `HyperoptimizeState` (`hyperparameters` reads the alphas as a
    params-shaped tree).

  Raises:
    ValueError: when ``alpha`` is an empty tree or holds a value that is not
      a finite number, or ``optimizer`` is neither None nor an
      `optax.GradientTransformation`.

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_extras import gdtuo
    >>> tx = gdtuo.SGDPerParam({"w": 0.1, "b": 0.2}, optimizer=gdtuo.SGD(0.01))
    >>> params = {"w": jnp.array([1.0, -2.0]), "b": jnp.array(0.5)}
    >>> state = tx.init(params)
    >>> for _ in range(3):
    ...   updates, state = tx.update(params, state)  # grad of |params|^2 / 2
    ...   params = {k: params[k] + updates[k] for k in params}
    >>> alphas = gdtuo.hyperparameters(state)[0]["alpha"]
    >>> {k: round(float(v), 6) for k, v in alphas.items()}
    {'b': 0.203277, 'w': 0.179627}

  References:
    Chandra, Xie, Ragan-Kelley and Meijer, "Gradient Descent: The Ultimate
    Optimizer", NeurIPS 2022, https://arxiv.org/abs/1909.13371; upstream
    code (`gradient_descent_the_ultimate_optimizer.gdtuo.SGDPerParam`):
    https://github.com/kach/gradient-descent-the-ultimate-optimizer
  """
  if (isinstance(alpha, (list, tuple)) and alpha
      and all(isinstance(pair, tuple) and len(pair) == 2
              and isinstance(pair[0], str) for pair in alpha)):
    alpha = dict(alpha)
  if _checks.concrete_value(alpha) is not None:
    _finite("alpha", alpha)
  elif not jax.tree.leaves(alpha):
    raise ValueError(f"alpha must be a float or a non-empty tree of floats, "
                     f"got alpha={alpha!r}.")
  else:
    for value in jax.tree.leaves(alpha):
      _finite("alpha", value)
  if optimizer is not None:
    return _hyperoptimize(_sgd, {"alpha": Learned(alpha, per_leaf=True)},
                         optimizer)
  # A scalar, also a traced one (optax.inject_hyperparams): one rate for all.
  if not isinstance(alpha, (dict, list, tuple)) and jnp.ndim(alpha) == 0:
    return _sgd(alpha)

  def init_fn(tree):
    del tree
    return optax.EmptyState()

  def update_fn(grads, state):
    return jax.tree.map(lambda g, a: -(g * a), grads, alpha), state

  return _rule(init_fn, update_fn)


def AdaGrad(  # pylint: disable=invalid-name
    alpha: jax.typing.ArrayLike = 0.01,
    optimizer: optax.GradientTransformation | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""gdtuo's AdaGrad: ``G += g^2`` from ``G_0 = 0.1``, learning ``alpha``.

  With the gradient :math:`g_t` and :math:`\alpha` = ``alpha`` (the learned
  value of the step when ``optimizer`` is given, stored as it is):

  .. math::

    G_t &= G_{t-1} + g_t^2 \quad (G_0 = 0.1) \\
    \theta_t &= \theta_{t-1} - \alpha \frac{g_t}{\sqrt{G_t + 10^{-10}}}

  ``G_0 = 0.1`` and the ``1e-10`` inside the root are gdtuo's constants.

  Args:
    alpha: the learning rate, a finite number (default 0.01).
    optimizer: the level that learns ``alpha``; None (default): fixed.

  Returns:
    A `optax.GradientTransformationExtraArgs`: the rule alone without
    ``optimizer``, else a `optax_extras.hyperoptimize` transformation whose
    state is a `HyperoptimizeState`.

  Raises:
    ValueError: when a concrete ``alpha`` is not a finite number, or
      ``optimizer`` is neither None nor an `optax.GradientTransformation`.

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_extras import gdtuo
    >>> tx = gdtuo.AdaGrad(0.1)
    >>> grads = jnp.array([0.3, -0.4])
    >>> updates, state = tx.update(grads, tx.init(grads))
    >>> [round(float(u), 4) for u in updates]
    [-0.0688, 0.0784]

  References:
    Chandra, Xie, Ragan-Kelley and Meijer, "Gradient Descent: The Ultimate
    Optimizer", NeurIPS 2022, https://arxiv.org/abs/1909.13371; upstream
    code (`gradient_descent_the_ultimate_optimizer.gdtuo.AdaGrad`):
    https://github.com/kach/gradient-descent-the-ultimate-optimizer
  """
  _finite("alpha", alpha)
  if optimizer is None:
    return _adagrad(alpha)
  return _hyperoptimize(_adagrad, {"alpha": Learned(alpha)}, optimizer)


def RMSProp(  # pylint: disable=invalid-name
    alpha: jax.typing.ArrayLike = 0.01,
    gamma: jax.typing.ArrayLike = 0.99,
    optimizer: optax.GradientTransformation | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""gdtuo's RMSProp, learning ``alpha`` and ``gamma``.

  With the gradient :math:`g_t`, :math:`\alpha` = ``alpha`` and
  :math:`\gamma` = ``gamma`` (the learned values of the step when
  ``optimizer`` is given):

  .. math::

    s_t &= \gamma s_{t-1} + (1 - \gamma) g_t^2 \quad (s_0 = 0) \\
    \theta_t &= \theta_{t-1} - \alpha \frac{g_t}{\sqrt{s_t + 10^{-8}}}

  As in gdtuo, ``alpha`` is stored (and learned) as :math:`\sqrt{\alpha}`
  (space ``"square"``) and ``gamma`` as :math:`\mathrm{atanh}(2 \gamma - 1)`
  (space ``"unit_interval"``), which keep them >= 0 and in (0, 1).

  Args:
    alpha: the learning rate, finite and >= 0 (default 0.01).
    gamma: the decay of :math:`s`, in (0, 1) (default 0.99).
    optimizer: the level that learns ``alpha`` and ``gamma``; None
      (default): fixed.

  Returns:
    A `optax.GradientTransformationExtraArgs`: the rule alone without
    ``optimizer``, else a `optax_extras.hyperoptimize` transformation whose
    state is a `HyperoptimizeState`.

  Raises:
    ValueError: when a concrete ``alpha`` is negative or not finite,
      ``gamma`` is not in (0, 1), or ``optimizer`` is neither None nor an
      `optax.GradientTransformation`.

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_extras import gdtuo
    >>> tx = gdtuo.RMSProp(0.01, optimizer=gdtuo.SGD(1e-3))
    >>> params = jnp.array([1.0, -2.0])
    >>> state = tx.init(params)
    >>> for _ in range(3):
    ...   updates, state = tx.update(params, state)  # grad of |params|^2 / 2
    ...   params = params + updates
    >>> learned = gdtuo.hyperparameters(state)[0]
    >>> {k: round(float(v), 6) for k, v in sorted(learned.items())}
    {'alpha': 0.011975, 'gamma': 0.990007}

  References:
    Chandra, Xie, Ragan-Kelley and Meijer, "Gradient Descent: The Ultimate
    Optimizer", NeurIPS 2022, https://arxiv.org/abs/1909.13371; upstream
    code (`gradient_descent_the_ultimate_optimizer.gdtuo.RMSProp`):
    https://github.com/kach/gradient-descent-the-ultimate-optimizer
  """
  _checks.check_nonnegative("alpha", alpha)
  _checks.check_range("gamma", gamma, 0.0, 1.0, low_inclusive=False,
                      high_inclusive=False)
  if optimizer is None:
    return _rmsprop(alpha, gamma)
  return _hyperoptimize(
      _rmsprop,
      {"alpha": Learned(alpha, "square"),
       "gamma": Learned(gamma, "unit_interval")},
      optimizer)


def RMSPropAlpha(  # pylint: disable=invalid-name
    alpha: jax.typing.ArrayLike = 0.01,
    gamma: jax.typing.ArrayLike = 0.99,
    optimizer: optax.GradientTransformation | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""gdtuo's RMSPropAlpha: `RMSProp` learning ``alpha`` only (``gamma`` fixed).

  With the gradient :math:`g_t`, :math:`\alpha` = ``alpha`` (the learned
  value of the step when ``optimizer`` is given, stored as
  :math:`\sqrt{\alpha}`) and the fixed :math:`\gamma` = ``gamma``:

  .. math::

    s_t &= \gamma s_{t-1} + (1 - \gamma) g_t^2 \quad (s_0 = 0) \\
    \theta_t &= \theta_{t-1} - \alpha \frac{g_t}{\sqrt{s_t + 10^{-8}}}

  Args:
    alpha: the learning rate, finite and >= 0 (default 0.01).
    gamma: the decay of :math:`s`, in [0, 1) (default 0.99; not learned, so
      0 is allowed, unlike `RMSProp`).
    optimizer: the level that learns ``alpha``; None (default): fixed.

  Returns:
    A `optax.GradientTransformationExtraArgs`: the rule alone without
    ``optimizer``, else a `optax_extras.hyperoptimize` transformation whose
    state is a `HyperoptimizeState`.

  Raises:
    ValueError: when a concrete ``alpha`` is negative or not finite,
      ``gamma`` is not in [0, 1), or ``optimizer`` is neither None nor an
      `optax.GradientTransformation`.

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_extras import gdtuo
    >>> tx = gdtuo.RMSPropAlpha(0.01, gamma=0.0)
    >>> grads = jnp.array([0.3, -0.4])
    >>> updates, state = tx.update(grads, tx.init(grads))
    >>> [round(float(u), 4) for u in updates]
    [-0.01, 0.01]

  References:
    Chandra, Xie, Ragan-Kelley and Meijer, "Gradient Descent: The Ultimate
    Optimizer", NeurIPS 2022, https://arxiv.org/abs/1909.13371; upstream
    code (`gradient_descent_the_ultimate_optimizer.gdtuo.RMSPropAlpha`):
    https://github.com/kach/gradient-descent-the-ultimate-optimizer
  """
  _checks.check_nonnegative("alpha", alpha)
  _checks.check_decay("gamma", gamma)
  if optimizer is None:
    return _rmsprop(alpha, gamma)
  return _hyperoptimize(_rmsprop, {"alpha": Learned(alpha, "square")},
                       optimizer, {"gamma": gamma})


def Adam(  # pylint: disable=invalid-name
    alpha: jax.typing.ArrayLike = 0.001,
    beta1: jax.typing.ArrayLike = 0.9,
    beta2: jax.typing.ArrayLike = 0.999,
    log_eps: jax.typing.ArrayLike = -8.0,
    optimizer: optax.GradientTransformation | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""gdtuo's Adam, learning ``alpha``, ``beta1`` and ``beta2``.

  With the gradient :math:`g_t`, its own step count :math:`t` (from 1),
  :math:`\alpha` = ``alpha``, :math:`\beta_1` = ``beta1``, :math:`\beta_2` =
  ``beta2`` (the learned values of the step when ``optimizer`` is given):

  .. math::

    \epsilon &= 10^{\mathrm{log\_eps}} \\
    m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t \quad (m_0 = 0) \\
    v_t &= \beta_2 v_{t-1} + (1 - \beta_2) g_t^2
      \quad (v_0 = \epsilon, \text{ gdtuo's fudge factor}) \\
    \theta_t &= \theta_{t-1} - \alpha \,
      \frac{m_t / (1 - \beta_1^t)}{\sqrt{v_t / (1 - \beta_2^t)} + \epsilon}

  ``eps`` sits after bias correction (as in `optax.adam`) but ``v`` starts
  at ``eps``. ``alpha`` is stored as it is, the betas as
  :math:`\mathrm{atanh}(2 \beta - 1)` (space ``"unit_interval"``, which
  keeps them in (0, 1)); ``log_eps`` is fixed.

  Args:
    alpha: the learning rate, a finite number (default 0.001).
    beta1: decay of the first moment, in (0, 1) (default 0.9).
    beta2: decay of the second moment, in (0, 1) (default 0.999).
    log_eps: ``log10`` of eps, a finite number (default -8.0; fixed).
    optimizer: the level that learns the three; None (default): fixed.

  Returns:
    A `optax.GradientTransformationExtraArgs`: the rule alone without
    ``optimizer``, else a `optax_extras.hyperoptimize` transformation whose
    state is a `HyperoptimizeState`.

  Raises:
    ValueError: when a concrete ``alpha`` or ``log_eps`` is not a finite
      number, ``beta1`` or ``beta2`` is not in (0, 1), or ``optimizer`` is
      neither None nor an `optax.GradientTransformation`.

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_extras import gdtuo
    >>> tx = gdtuo.Adam(0.1, optimizer=gdtuo.SGD(1e-3))
    >>> params = jnp.array([1.0, -2.0])
    >>> state = tx.init(params)
    >>> for _ in range(3):
    ...   updates, state = tx.update(params, state)  # grad of |params|^2 / 2
    ...   params = params + updates
    >>> learned = gdtuo.hyperparameters(state)[0]
    >>> {k: round(float(v), 6) for k, v in sorted(learned.items())}
    {'alpha': 0.105389, 'beta1': 0.900043, 'beta2': 0.999}

  References:
    Chandra, Xie, Ragan-Kelley and Meijer, "Gradient Descent: The Ultimate
    Optimizer", NeurIPS 2022, https://arxiv.org/abs/1909.13371; upstream
    code (`gradient_descent_the_ultimate_optimizer.gdtuo.Adam`):
    https://github.com/kach/gradient-descent-the-ultimate-optimizer
  """
  _finite("alpha", alpha)
  _finite("log_eps", log_eps)
  for name, beta in (("beta1", beta1), ("beta2", beta2)):
    _checks.check_range(name, beta, 0.0, 1.0, low_inclusive=False,
                        high_inclusive=False)
  eps = 10.0**log_eps
  if optimizer is None:
    return _adam(alpha, beta1, beta2, eps)
  return _hyperoptimize(
      _adam,
      {"alpha": Learned(alpha),
       "beta1": Learned(beta1, "unit_interval"),
       "beta2": Learned(beta2, "unit_interval")},
      optimizer,
      {"eps": eps})


def AdamBaydin(  # pylint: disable=invalid-name
    alpha: jax.typing.ArrayLike = 0.001,
    beta1: jax.typing.ArrayLike = 0.9,
    beta2: jax.typing.ArrayLike = 0.999,
    log_eps: jax.typing.ArrayLike = -8.0,
    optimizer: optax.GradientTransformation | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""gdtuo's AdamBaydin: `Adam` learning ``alpha`` only (betas fixed).

  The rule of `Adam`, with :math:`\alpha` the learned value of the step when
  ``optimizer`` is given (stored as it is) and the betas fixed:

  .. math::

    \epsilon &= 10^{\mathrm{log\_eps}} \\
    m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t \quad (m_0 = 0) \\
    v_t &= \beta_2 v_{t-1} + (1 - \beta_2) g_t^2 \quad (v_0 = \epsilon) \\
    \theta_t &= \theta_{t-1} - \alpha \,
      \frac{m_t / (1 - \beta_1^t)}{\sqrt{v_t / (1 - \beta_2^t)} + \epsilon}

  Args:
    alpha: the learning rate, a finite number (default 0.001).
    beta1: decay of the first moment, in [0, 1) (default 0.9; not learned,
      so 0 is allowed, unlike `Adam`).
    beta2: decay of the second moment, in [0, 1) (default 0.999).
    log_eps: ``log10`` of eps, a finite number (default -8.0; fixed).
    optimizer: the level that learns ``alpha``; None (default): fixed.

  Returns:
    A `optax.GradientTransformationExtraArgs`: the rule alone without
    ``optimizer``, else a `optax_extras.hyperoptimize` transformation whose
    state is a `HyperoptimizeState`.

  Raises:
    ValueError: when a concrete ``alpha`` or ``log_eps`` is not a finite
      number, ``beta1`` or ``beta2`` is not in [0, 1), or ``optimizer`` is
      neither None nor an `optax.GradientTransformation`.

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_extras import gdtuo
    >>> tx = gdtuo.AdamBaydin(0.1, optimizer=gdtuo.SGD(1e-3))
    >>> params = jnp.array([1.0, -2.0])
    >>> state = tx.init(params)
    >>> for _ in range(3):
    ...   updates, state = tx.update(params, state)  # grad of |params|^2 / 2
    ...   params = params + updates
    >>> round(float(gdtuo.hyperparameters(state)[0]["alpha"]), 6)
    0.105389

  References:
    Chandra, Xie, Ragan-Kelley and Meijer, "Gradient Descent: The Ultimate
    Optimizer", NeurIPS 2022, https://arxiv.org/abs/1909.13371; upstream
    code (`gradient_descent_the_ultimate_optimizer.gdtuo.AdamBaydin`):
    https://github.com/kach/gradient-descent-the-ultimate-optimizer
  """
  _finite("alpha", alpha)
  _finite("log_eps", log_eps)
  _checks.check_decay("beta1", beta1)
  _checks.check_decay("beta2", beta2)
  eps = 10.0**log_eps
  if optimizer is None:
    return _adam(alpha, beta1, beta2, eps)
  return _hyperoptimize(_adam, {"alpha": Learned(alpha)}, optimizer,
                       {"beta1": beta1, "beta2": beta2, "eps": eps})
