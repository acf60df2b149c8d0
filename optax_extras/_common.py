"""Numerical helpers shared by the transformations of this package."""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from optax_extras import _checks


def bias_correction(decay: Any, count: jax.Array) -> jax.Array:
  """`1 - decay**count`, accurate at the working precision.

  Computed as `-expm1(count * log(decay))` with `log(decay)` taken in Python
  double when `decay` is concrete. Evaluating `1 - decay**count` in float32
  with a traced count is off by ~1e-5 relative for decay=0.999 at small counts
  (float32(0.999) != 0.999); this form stays at float32 rounding. `decay=0`
  gives 1 for every count >= 1.

  Args:
    decay: a decay rate in [0, 1), a Python number or an array (maybe traced).
    count: the step count (>= 1), an integer array.

  Returns:
    A scalar in the default float dtype (float64 under `jax_enable_x64`).
  """
  float_dtype = jnp.result_type(float)
  number = _checks.concrete_value(decay)
  if number is not None:
    log_decay = math.log(number) if number > 0 else -math.inf
  else:
    log_decay = jnp.log(jnp.asarray(decay, float_dtype))
  return -jnp.expm1(count.astype(float_dtype) * log_decay)


def adam_moments(updates: Any, mu: Any, nu: Any, b1: Any, b2: Any):
  """Adam's moments ``b1 mu + (1 - b1) g`` and ``b2 nu + (1 - b2) g^2``.

  The new moments keep the dtypes of the old, also when ``b1``, ``b2`` are
  traced float32 arrays and the moments bfloat16 (in a hyperoptimizer).
  """
  new_mu = optax.tree.update_moment(updates, mu, b1, 1)
  new_nu = optax.tree.update_moment_per_elem_norm(updates, nu, b2, 2)
  return optax.tree.cast_like(new_mu, mu), optax.tree.cast_like(new_nu, nu)


def adam_step_scale(b1: Any, b2: Any, count: jax.Array) -> jax.Array:
  """``sqrt(1 - b2^t) / (1 - b1^t)``: the bias correction of an Adam step
  whose eps is added to ``sqrt(v)`` before it (old torch Adam)."""
  return jnp.sqrt(bias_correction(b2, count)) / bias_correction(b1, count)


def learned_rate_dtype(learning_rate: Any) -> jnp.dtype:
  """dtype of a learned learning rate: the rate's own, at least float32."""
  return jnp.promote_types(jnp.result_type(learning_rate), jnp.float32)


def leaf_vdot(a: jax.Array, b: jax.Array, dtype: Any) -> jax.Array:
  """``<a, b>`` of two arrays, summed in `dtype`.

  A plain `jnp.sum` of the product for float32/float64 leaves (XLA:CPU hands
  it to YNNPACK, which compiles quickly); for narrower floats, whose products
  would be materialised in `dtype` for YNNPACK (two params-sized float32
  copies and, for a donated operand, a copy of it), `partial_vdots`, which
  converts element by element inside its own loop.
  """
  if jnp.dtype(a.dtype).itemsize < 4 or jnp.dtype(b.dtype).itemsize < 4:
    return sum(partial_vdots(a, b, dtype=dtype)[0])
  return jnp.sum(a.astype(dtype) * b.astype(dtype), dtype=dtype)


@functools.partial(jax.jit, static_argnames="dtype")
def partial_vdots(a: jax.Array, *bs: jax.Array,
                  dtype: Any = None) -> list[tuple[jax.Array, ...]]:
  """``<a, b>`` for each ``b`` in ``bs``, in one pass over the leaf, as a
  tuple of scalars whose sum (`total`) is the product.

  The ``b`` are typically computed on the fly (tangents, a previous Adam
  direction), and XLA:CPU emits one loop per output array: k separate
  products would each recompute the subexpressions they share (sqrt,
  divisions), and a stacked (k, ...) array costs a write and a read of k
  buffers of the leaf's size. Instead one variadic reduction sums each product
  over blocks of 4 consecutive rows (leading-axis entries): one vectorised
  loop that evaluates every ``b`` of an element together and writes k arrays
  4 times smaller. (With 8 or more rows per block, or a longer reduced axis,
  XLA:CPU no longer vectorises that loop: 3x slower.) A single ``b`` is
  reduced as two interleaved halves (groups of 8 rows): a reduction of one
  array goes to YNNPACK together with the whole computation of ``b``, which
  it runs op by op (measured: a 1.6x slower hyperoptimizer step). Rows are
  padded with zeros to whole groups. A second variadic reduction, one
  kernel, sums those partial arrays; `total` adds the scalars of many leaves
  in one more kernel (finishing each product with its own `jnp.sum` and
  adding them took five small kernels per leaf, which dominated compile time
  on trees of many leaves). Vectors and scalars shorter than 2^18 elements
  (biases, norm scales) are reduced along their one axis in a single
  reduction (the halves for one ``b`` are alternate elements): not
  vectorised, but a vector sharded in whole pairs of elements per device is
  reduced where it lies. Longer vectors are first laid out as rows of up to
  128 (vectorised: 3-4x faster at 8M elements).
  Only the leading axis is split, so a leaf sharded along another axis, or
  along the leading one in whole groups of rows per device, is reduced where
  it lies (else XLA gathers the products of that leaf). Across devices the last
  reduction gathers one partial sum per device and product (XLA's
  partitioner has no all-reduce for a variadic reduction): k scalars per
  device, as an all-reduce would move. Jitted, so that a tree's many leaves
  of one shape and dtype are traced and lowered once (XLA inlines the calls).

  Where ``a`` is zero the product is zero, also where ``b`` is NaN or
  infinite.

  Args:
    a: an array.
    *bs: arrays of the shape of ``a``.
    dtype: the dtype of the products and sums; default the dtype of ``bs[0]``
      promoted to at least float32.

  Returns:
    A list of k tuples of scalars of dtype ``dtype``.
  """
  if dtype is None:
    dtype = jnp.promote_types(bs[0].dtype, jnp.float32)
  return _bilinear_partial_vdots(jnp.dtype(dtype), a, *bs)


# Vectors from this length on are reduced as rows (see `partial_vdots`).
_LONG_VECTOR = 2**18


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _bilinear_partial_vdots(dtype, a, *bs):
  """`partial_vdots` in ``dtype``, with its jvp written out: JAX's rule for
  a variadic reduction fails on an operand whose tangent is a symbolic zero
  (differentiating a stack with respect to its initial values)."""
  parts = 2 if len(bs) == 1 else 1
  blocks = 4
  group = parts * blocks

  vector = a.ndim < 2 and a.size < _LONG_VECTOR

  def grouped_rows(x):
    if vector:  # consecutive elements, as many as parts, side by side
      x = jnp.pad(x.ravel(), (0, -x.size % parts))
      return x.reshape(x.size // parts, parts)
    if x.ndim < 2:
      lanes = next((w for w in (128, 64, 32) if x.size % (group * w) == 0),
                   16)
      x = jnp.pad(x.ravel(), (0, -x.size % (group * lanes)))
      x = x.reshape(x.size // lanes, lanes)
    x = jnp.pad(x, [(0, -x.shape[0] % group)] + [(0, 0)] * (x.ndim - 1))
    return x.reshape(x.shape[0] // group, parts, blocks, *x.shape[1:])

  def add(xs, ys):
    return tuple(map(jnp.add, xs, ys))

  pieces = []
  a_wide = a.astype(dtype)
  for b in bs:
    # A zero of `a` contributes 0 whatever `b` is (a strong zero): the
    # tangent of sqrt(v) at v = 0, where a gradient has always been zero, is
    # 0 * inf = NaN, and would otherwise make the whole product NaN.
    product = jnp.where(a_wide == 0, jnp.zeros([], dtype),
                        a_wide * b.astype(dtype))
    rows = grouped_rows(product)
    pieces.extend(rows[:, part] for part in range(parts))
  zeros = tuple(jnp.zeros([], dtype) for _ in pieces)
  if vector:
    sums = jax.lax.reduce(tuple(pieces), zeros, add, (0,))
  else:
    partial_sums = jax.lax.reduce(tuple(pieces), zeros, add, (1,))
    sums = jax.lax.reduce(partial_sums, zeros, add,
                          tuple(range(partial_sums[0].ndim)))
  return [tuple(sums[j * parts:(j + 1) * parts]) for j in range(len(bs))]


@_bilinear_partial_vdots.defjvp
def _bilinear_partial_vdots_jvp(dtype, primals, tangents):
  """``<da, b> + <a, db>`` (zero where ``a`` is), as plain sums, which JAX
  can transpose (reverse mode), in the first scalar of each product."""
  a, *bs = primals
  a_dot, *bs_dot = tangents
  out = _bilinear_partial_vdots(dtype, a, *bs)
  zero = a == 0
  wide = lambda x: x.astype(dtype)
  tangent_out = []
  for product, b, b_dot in zip(out, bs, bs_dot):
    both = wide(a_dot) * wide(b) + wide(a) * wide(b_dot)
    total = jnp.sum(jnp.where(zero, jnp.zeros([], dtype), both))
    tangent_out.append((total,) + tuple(jnp.zeros_like(x)
                                        for x in product[1:]))
  return out, tangent_out


def total(scalars: Any, dtype: Any) -> jax.Array:
  """The sum of a tree of scalars, in ``dtype``, as one reduction.

  Added one by one, the scalars of many leaves become a chain of small XLA
  kernels; concatenated (kept apart from the kernels that computed them, so
  that XLA does not split the sum again) they are summed by one.
  """
  leaves = [x.astype(dtype).reshape(1) for x in jax.tree.leaves(scalars)]
  if not leaves:
    return jnp.zeros([], dtype)
  return jnp.sum(jax.lax.optimization_barrier(jnp.concatenate(leaves)))


def _staged(value: Any) -> bool:
  """Whether ``value`` is abstract, being traced for compilation (`jax.jit`,
  `jax.vmap`), not a concrete array (nor a tracer of one: an eager
  `jax.jvp`)."""
  if not isinstance(value, jax.core.Tracer):
    return False
  to_concrete = getattr(value, "to_concrete_value", None)
  return to_concrete is None or to_concrete() is None


def map_leaves(leaf_fn: Any, trees: tuple[Any, ...], outputs: int,
               ordered_groups: bool = False) -> tuple[Any, ...]:
  """``leaf_fn`` on the leaves of ``trees`` (zipped in the first tree's
  structure); its ``outputs`` results unzipped into as many trees.

  Being traced for compilation, ``leaf_fn`` runs as one nested jitted
  function, traced and lowered once per leaf shape and dtype instead of once
  per leaf; XLA inlines the calls, so the compiled step is the same (at 1000
  leaves, lowering a gdtuo stack took 7.4 s instead of 11.6 s, diffgrad and
  adam_hd 0.6 s instead of 2.4-2.5 s). On concrete values (eager calls,
  an eager `jax.jvp`) it runs op by op, as before: a jitted function made
  anew at every call would be compiled at every step. ``leaf_fn`` closes over
  the hyperparameters, so a Python number stays one (``1 - b1`` in double).

  With ``ordered_groups`` the leaves run in groups (`_in_ordered_groups`):
  ``leaf_fn`` takes a float32 scalar first, computed after the previous
  group's work, to order its own work after it (`ordered_after`), and returns
  one more result, a scalar computed after its own work.
  """
  leaves, treedef = jax.tree.flatten(trees[0])
  per_tree = [leaves] + [treedef.flatten_up_to(tree) for tree in trees[1:]]
  staged = any(_staged(x) for tree in per_tree for x in tree)
  fn = jax.jit(leaf_fn) if staged else leaf_fn
  if ordered_groups:
    results = _in_ordered_groups(fn, per_tree)
  else:
    results = [fn(*leaf) for leaf in zip(*per_tree)]
  return tuple(treedef.unflatten([r[i] for r in results])
               for i in range(outputs))


def _in_ordered_groups(leaf_fn: Any, per_tree: list[list[Any]]) -> list:
  """``leaf_fn(after, *leaf)`` on each leaf, in consecutive groups of at most
  an eighth of the first tree's bytes (and at most 256 MiB; a larger leaf is
  a group of its own). ``after`` is 0 for the first group, then the scalar
  the previous group's last leaf returned.

  A leaf whose work keeps a leaf-sized temporary (diffgrad's update) orders
  it after ``after``: about two groups' temporaries are then live (measured),
  instead of every leaf's at once (XLA's schedule computes them all before
  the first is consumed). Groups, not a chain of single leaves: each link of
  the chain is an ordering constraint for XLA to analyse, and one per leaf
  cost 25-40% more compile time at 1000 leaves (measured); at most about 8
  links plus one per large leaf cost nothing measurable.
  """
  sizes = [x.size * x.dtype.itemsize for x in per_tree[0]]
  budget = min(sum(sizes) / 8, 256 * 2**20)
  results, filled = [], 0
  after = jnp.zeros([], jnp.float32)
  for leaf, size in zip(zip(*per_tree), sizes):
    *result, done = leaf_fn(after, *leaf)
    results.append(result)
    filled += size
    if filled >= budget:
      after, filled = done, 0
  return results


def sum_leaves(tree: Any, dtype: Any) -> jax.Array:
  """The sum of a tree's scalar leaves, in `dtype` (0 for an empty tree)."""
  return sum(jax.tree.leaves(tree), jnp.zeros([], dtype)).astype(dtype)


def ordered_after(value: jax.Array, new: Any, old: Any) -> Any:
  """`new` unchanged, but computed after `value` in XLA's schedule.

  When one fusion reads a donated state buffer (say a reduction over the old
  moments) and another, not ordered after it, writes the new state into that
  buffer in place, XLA copies the whole buffer first. Selecting `new` on
  ``value * 0 > 1`` (False for every value, NaN and infinities included)
  makes the write depend on `value`, so no copy is needed. `old` is the tree
  `new` replaces (same structure); it is never selected, but read: with a
  constant in its place (measured) XLA no longer writes the new state over
  the old in place, and copies it.

  Use it per parameter leaf, with `value` computed from that leaf alone (its
  own partial dot product): a scalar computed from every leaf is cheap
  elementwise work that XLA fuses, duplicated, into each consumer, which
  makes the program, and its compile time, quadratic in the number of leaves.
  """
  never = value * 0 > 1
  return jax.tree.map(
      lambda n, o: jax.lax.select(jnp.broadcast_to(never, n.shape), o, n),
      new, old)


def decayed_gradient(grad: jax.Array, param: Any, weight_decay: Any, *,
                     own_for: jax.Array | None = None) -> jax.Array:
  """One leaf's gradient with coupled L2, ``grad + weight_decay * param``,
  in the gradient's dtype (also for a traced float32 ``weight_decay``);
  ``grad`` itself when ``weight_decay`` is a concrete zero.

  The transformations with a coupled ``weight_decay`` compute it inside each
  kernel that reads the gradient (cheap elementwise work that XLA fuses):
  added once, before them, the decayed gradient of every leaf was a
  params-sized XLA temporary. XLA still merges equal sums and then writes the
  result out, for a reduction it hands to a library kernel (YNNPACK) or a
  kernel that also reads another reader's output; ``own_for``, an array
  that kernel reads (a state leaf), makes the sum its own
  (``weight_decay`` as `own_constant`).
  """
  if _checks.concrete_value(weight_decay) == 0.0:
    return grad
  if own_for is not None:
    weight_decay = own_constant(weight_decay, param, own_for)
  return (grad + weight_decay * param).astype(grad.dtype)


def params_for_decay(params: Any, grads: Any) -> Any:
  """The params `decayed_gradient` reads; without params (a weight decay that
  is a concrete zero, as `with_coupled_weight_decay` checks) the gradient
  stands in, unread."""
  return grads if params is None else params


def own_constant(value: Any, like: jax.Array, tie: jax.Array) -> jax.Array:
  """``value`` as an array of ``like``'s dtype promoted with it (a Python
  number stays ``like``'s dtype), through an `jax.lax.optimization_barrier`
  tied to ``tie``: XLA can then merge it with no other constant, and the
  kernel that reads ``tie`` computes with it inside (see
  `decayed_gradient`)."""
  constant, _ = jax.lax.optimization_barrier(
      (jnp.asarray(value, jnp.result_type(like.dtype, value)), tie))
  return constant


def with_coupled_weight_decay(
    weight_decay: Any, transformation: optax.GradientTransformation
) -> optax.GradientTransformationExtraArgs:
  """``transformation``, which adds ``weight_decay * params`` to the gradient
  itself (coupled L2, as torch's ``weight_decay``: `decayed_gradient`), with
  its params checked.

  A ``weight_decay`` that is not a concrete zero needs ``params`` (a traced
  value may be nonzero); a concrete zero needs none. The state is
  ``(optax.EmptyState(), state of transformation)`` for every value (so
  `optax.inject_hyperparams` may turn ``weight_decay`` into an array): the
  layout of ``optax.chain(add_decayed_weights, transformation)``, which
  version 0.1.0 used, so its checkpoints still load. For decoupled decay
  (AdamW) chain `optax.add_decayed_weights` after the rescaling instead.
  """
  _checks.check_nonnegative("weight_decay", weight_decay)

  def init_fn(params):
    return optax.EmptyState(), transformation.init(params)

  def update_fn(updates, state, params=None, **extra_args):
    if params is None and _checks.concrete_value(weight_decay) != 0.0:
      raise ValueError(
          f"weight_decay={weight_decay!r} needs the parameters: call "
          "update(grads, state, params) with params (a weight decay that is "
          "a traced value may be nonzero).")
    updates, inner_state = transformation.update(updates, state[1], params,
                                                 **extra_args)
    return updates, (state[0], inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
