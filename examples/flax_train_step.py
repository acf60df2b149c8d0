"""Train a small Flax MLP on scikit-learn's digits with each optax_extras optimizer.

Run: python examples/flax_train_step.py
"""

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from sklearn.datasets import load_digits

import optax_extras


class MLP(nnx.Module):

  def __init__(self, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(64, 128, rngs=rngs)
    self.out = nnx.Linear(128, 10, rngs=rngs)

  def __call__(self, x):
    return self.out(jax.nn.relu(self.hidden(x)))


def train(tx: optax.GradientTransformation, steps: int = 300) -> float:
  digits = load_digits()
  images = jnp.asarray(digits.data / 16.0, jnp.float32)
  labels = jnp.asarray(digits.target)
  model = MLP(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  @nnx.jit
  def train_step(model, optimizer, x, y):
    def loss_fn(model):
      logits = model(x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  key = jax.random.key(0)
  for _ in range(steps):
    key, batch_key = jax.random.split(key)
    batch = jax.random.choice(batch_key, len(labels), (128,), replace=False)
    loss = train_step(model, optimizer, images[batch], labels[batch])
  return float(loss)


if __name__ == "__main__":
  for name, tx in {
      "adam": optax.adam(1e-3),
      "diffgrad": optax_extras.diffgrad(1e-3),
      "expectigrad": optax_extras.expectigrad(1e-3),
      "sgd_hd": optax_extras.sgd_hd(1e-2, hypergrad_lr=1e-3),
      "adam_hd": optax_extras.adam_hd(1e-3, hypergrad_lr=1e-7),
  }.items():
    print(f"{name:12s} final training loss {train(tx):.4f}")
