"""The optimizers in the places users put them: donated buffers, eight
sharded devices, orbax checkpoints and a Flax NNX training step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import optax_extras

OPTIMIZERS = {
    "diffgrad": lambda: optax_extras.diffgrad(1e-2, weight_decay=1e-3),
    "expectigrad": lambda: optax_extras.expectigrad(1e-2),
    "sgd_hd": lambda: optax_extras.sgd_hd(
        1e-2, hypergrad_lr=1e-3, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adam_hd": lambda: optax_extras.adam_hd(1e-2, hypergrad_lr=1e-5),
    "gdtuo_adam_sgd": lambda: optax_extras.gdtuo.Adam(
        alpha=1e-2, optimizer=optax_extras.gdtuo.SGD(1e-5)),
    "hyperoptimize_diffgrad": lambda: optax_extras.hyperoptimize(
        optax_extras.diffgrad,
        learned={"learning_rate": optax_extras.Learned(1e-2, "log"),
                 "b1": optax_extras.Learned(0.9, "unit_interval")},
        hyper_optimizer=optax.adam(1e-3)),
}


def _params():
  keys = jax.random.split(jax.random.key(0), 3)
  return {
      "w": jax.random.normal(keys[0], (16, 8)),
      "b": jax.random.normal(keys[1], (8,)),
      "s": jax.random.normal(keys[2], ()),
  }


def _loss(params):
  return (jnp.sum(jnp.tanh(params["w"]) ** 2) + jnp.sum(params["b"] ** 4)
          + jnp.cos(params["s"]))


def _train(tx, params, state, steps, step_fn=None):
  def step(params, state):
    grads = jax.grad(_loss)(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  step_fn = step_fn or jax.jit(step)
  for _ in range(steps):
    params, state = step_fn(params, state)
  return params, state


def _copy(tree):
  return jax.tree.map(jnp.copy, tree)


def _assert_trees_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_state_leaves_do_not_share_buffers(name):
  tx = OPTIMIZERS[name]()
  params = _params()
  def eager_step(params, state):
    updates, state = tx.update(jax.grad(_loss)(params), state, params)
    return optax.apply_updates(params, updates), state

  states = (tx.init(params), _train(tx, params, tx.init(params), 2)[1],
            _train(tx, params, tx.init(params), 2, eager_step)[1])
  for state in states:
    leaves = [x for x in jax.tree.leaves(state) if x.size]
    pointers = [x.unsafe_buffer_pointer() for x in leaves]
    assert len(set(pointers)) == len(pointers)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_donated_step_matches_plain_step(name):
  tx = OPTIMIZERS[name]()

  def step(params, state):
    grads = jax.grad(_loss)(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  expected, _ = _train(tx, _params(), tx.init(_params()), 5)
  donated_step = jax.jit(step, donate_argnums=(0, 1))
  params = _copy(_params())
  state = tx.init(params)
  got, _ = _train(tx, params, state, 5, donated_step)
  _assert_trees_equal(got, expected)
  assert all(x.is_deleted() for x in jax.tree.leaves(params))


def _eight_device_mesh():
  if jax.device_count() < 8:
    pytest.skip("needs 8 devices (XLA_FLAGS set in conftest.py)")
  return Mesh(np.array(jax.devices()[:8]), ("d",))


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_sharded_over_eight_devices_matches_one_device(name):
  mesh = _eight_device_mesh()
  tx = OPTIMIZERS[name]()
  # Shard the matrix by rows and replicate the rest.
  shardings = {
      "w": NamedSharding(mesh, PartitionSpec("d", None)),
      "b": NamedSharding(mesh, PartitionSpec()),
      "s": NamedSharding(mesh, PartitionSpec()),
  }
  params = jax.device_put(_params(), shardings)
  state = jax.jit(tx.init)(params)
  sharded, sharded_state = _train(tx, params, state, 5)
  expected, _ = _train(tx, _params(), tx.init(_params()), 5)
  assert sharded["w"].sharding.is_equivalent_to(shardings["w"], 2)
  for leaf in jax.tree.leaves(sharded_state):
    if leaf.shape == (16, 8):
      assert leaf.sharding.is_equivalent_to(shardings["w"], 2)
  jax.tree.map(
      lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7),
      sharded, expected)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_sharded_step_gathers_no_leaf(name):
  """Leaves sharded by rows (8 per device) or by columns stay where they lie:
  the compiled step has no all-gather (the hypergradients' products are
  reduced per device, then all-reduced as scalars)."""
  mesh = _eight_device_mesh()
  tx = OPTIMIZERS[name]()
  shardings = {
      "rows": NamedSharding(mesh, PartitionSpec("d", None)),
      "cols": NamedSharding(mesh, PartitionSpec(None, "d")),
      "bias": NamedSharding(mesh, PartitionSpec()),
  }
  keys = jax.random.split(jax.random.key(1), 3)
  params = jax.device_put(
      {"rows": jax.random.normal(keys[0], (64, 24)),
       "cols": jax.random.normal(keys[1], (12, 64)),
       "bias": jax.random.normal(keys[2], (24,))}, shardings)
  state = jax.jit(tx.init)(params)

  def step(params, state):
    grads = jax.grad(lambda p: sum(jnp.sum(jnp.sin(x)) for x in
                                   jax.tree.leaves(p)))(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  hlo = jax.jit(step).lower(params, state).compile().as_text()
  assert "all-gather" not in hlo
  assert "all-to-all" not in hlo


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_orbax_checkpoint_round_trip_continues_identically(name, tmp_path):
  tx = OPTIMIZERS[name]()
  params, state = _train(tx, _params(), tx.init(_params()), 3)
  expected, _ = _train(tx, params, state, 3)

  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / "ckpt", {"params": params, "opt_state": state})
  checkpointer.wait_until_finished()
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct,
                          {"params": params, "opt_state": state})
  restored = checkpointer.restore(tmp_path / "ckpt", abstract)
  assert jax.tree.structure(restored["opt_state"]) == jax.tree.structure(state)

  got, _ = _train(tx, restored["params"], restored["opt_state"], 3)
  _assert_trees_equal(got, expected)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_flax_nnx_training_step_lowers_loss(name):
  model = nnx.Sequential(nnx.Linear(4, 16, rngs=nnx.Rngs(0)), nnx.relu,
                         nnx.Linear(16, 1, rngs=nnx.Rngs(1)))
  optimizer = nnx.Optimizer(model, OPTIMIZERS[name](), wrt=nnx.Param)
  x = jax.random.normal(jax.random.key(2), (64, 4))
  y = jnp.sin(x.sum(axis=1, keepdims=True))

  @nnx.jit
  def train_step(model, optimizer):
    loss, grads = nnx.value_and_grad(
        lambda m: jnp.mean((m(x) - y) ** 2))(model)
    optimizer.update(model, grads)
    return loss

  losses = [float(train_step(model, optimizer)) for _ in range(60)]
  assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("name", ["sgd_hd", "adam_hd"])
def test_hypergradient_step_copies_no_donated_state_buffer(name):
  """The hypergradient reads the old state that the step overwrites in place;
  without ordering, XLA would copy every such buffer first."""
  tx = OPTIMIZERS[name]()
  params = {"w": jnp.ones((256, 256)), "b": jnp.ones((256,))}

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  hlo = jax.jit(step, donate_argnums=(0, 1)).lower(
      params, tx.init(params), params).compile().as_text()
  copied = [line for line in hlo.splitlines()
            if " copy(" in line and "[256" in line.split("copy(")[0]]
  assert not copied, copied


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_low_precision_params_keep_update_and_state_dtypes(name, dtype):
  """Traced float32 hyperparameters (a hyper-level's) must not promote a
  bfloat16/float16 step or state, or the second jitted step would retrace."""
  tx = OPTIMIZERS[name]()
  params = jax.tree.map(lambda x: x.astype(dtype), _params())
  grads = jax.tree.map(lambda x: 0.5 * x, params)
  state = tx.init(params)
  update = jax.jit(tx.update)
  updates, new_state = update(grads, state, params)
  updates, new_state = update(grads, new_state, params)
  assert update._cache_size() == 1
  assert all(u.dtype == dtype for u in jax.tree.leaves(updates))
  assert [x.dtype for x in jax.tree.leaves(new_state)] == [
      x.dtype for x in jax.tree.leaves(state)]
  assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))


@pytest.mark.parametrize("grad_dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_state_structure_is_stable_for_gradients_of_another_dtype(
    name, grad_dtype):
  """float32 params with bfloat16 (or float16) gradients: the state keeps the
  dtypes of its init, so it can be a `lax.scan` carry."""
  tx = OPTIMIZERS[name]()
  params = _params()
  grads = jax.tree.map(lambda x: (0.5 * x).astype(grad_dtype), params)

  def step(state, _):
    updates, state = tx.update(grads, state, params)
    return state, updates

  state = tx.init(params)
  final, updates = jax.lax.scan(step, state, length=3)
  assert [x.dtype for x in jax.tree.leaves(final)] == [
      x.dtype for x in jax.tree.leaves(state)]
  assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))
