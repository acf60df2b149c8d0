"""The models of `optax-extras compare`, in Flax NNX, on NHWC images.

Two initialisations of the linear layers (``init``): "torch", torch
``nn.Linear``'s default, uniform in +-1/sqrt(fan_in) for weights and biases,
which the papers' train.py trains from; "flax", Flax's default (LeCun normal
weights, zero biases). The CNN's convolutions start as vgg.py's either way.
"""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np
from flax import nnx

from optax_extras.experiments.options import INITS, TASKS


def _torch_bias_init(fan_in: int):
  bound = 1.0 / np.sqrt(fan_in)
  return lambda key, shape, dtype=jax.numpy.float32: jax.random.uniform(
      key, shape, dtype, -bound, bound)


def linear(in_features: int, out_features: int, init: str, *,
           rngs: nnx.Rngs) -> nnx.Linear:
  """A linear layer initialised as torch's nn.Linear ("torch") or Flax's."""
  if init == "flax":
    return nnx.Linear(in_features, out_features, rngs=rngs)
  return nnx.Linear(
      in_features, out_features, rngs=rngs,
      kernel_init=nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
      bias_init=_torch_bias_init(in_features))


class LogReg(nnx.Module):
  """Logistic regression: one linear layer on the flattened image."""

  def __init__(self, in_features: int, num_classes: int, *, init: str,
               rngs: nnx.Rngs):
    self.linear = linear(in_features, num_classes, init, rngs=rngs)

  def __call__(self, x):
    return self.linear(x.reshape(x.shape[0], -1))


class MLP(nnx.Module):
  """ReLU layers of `hidden_size` on the flattened image (train.py's MLP)."""

  def __init__(self, in_features: int, hidden_size: int, hidden_layers: int,
               num_classes: int, *, init: str, rngs: nnx.Rngs):
    sizes = [in_features] + [hidden_size] * hidden_layers
    self.hidden = nnx.List([linear(a, b, init, rngs=rngs)
                            for a, b in zip(sizes, sizes[1:])])
    self.out = linear(sizes[-1], num_classes, init, rngs=rngs)

  def __call__(self, x):
    x = x.reshape(x.shape[0], -1)
    for layer in self.hidden:
      x = jax.nn.relu(layer(x))
    return self.out(x)


class CNN(nnx.Module):
  """A small VGG: per stage two 3x3 conv-ReLU and a 2x2 max pool, then a
  ReLU hidden layer of `hidden_size` and the classifier.

  Convolutions start as vgg.py's (normal, std sqrt(2 / fan_out), zero bias).
  """

  def __init__(self, image_shape: Sequence[int], channels: Sequence[int],
               hidden_size: int, num_classes: int, *, init: str,
               rngs: nnx.Rngs):
    height, width, features = image_shape
    conv_init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")
    self.convs = nnx.List()
    for out in channels:
      for _ in range(2):
        self.convs.append(nnx.Conv(features, out, (3, 3),
                                   kernel_init=conv_init, rngs=rngs))
        features = out
      height, width = max(height // 2, 1), max(width // 2, 1)
    self.hidden = linear(height * width * features, hidden_size, init,
                         rngs=rngs)
    self.out = linear(hidden_size, num_classes, init, rngs=rngs)

  def __call__(self, x):
    for i, conv in enumerate(self.convs):
      x = jax.nn.relu(conv(x))
      if i % 2 == 1 and min(x.shape[1:3]) >= 2:
        x = nnx.max_pool(x, (2, 2), (2, 2))
    x = jax.nn.relu(self.hidden(x.reshape(x.shape[0], -1)))
    return self.out(x)


def make(task: str, image_shape: Sequence[int], num_classes: int, *,
         hidden_size: int, hidden_layers: int, channels: Sequence[int],
         seed: int, init: str = "torch") -> nnx.Module:
  """The model of `task` (one of TASKS), initialised from `seed` as `init`
  (one of INITS) says."""
  if init not in INITS:
    raise ValueError(f"init must be one of {', '.join(INITS)}, got "
                     f"init={init!r}.")
  rngs = nnx.Rngs(seed)
  if task == "logreg":
    return LogReg(int(np.prod(image_shape)), num_classes, init=init, rngs=rngs)
  if task == "mlp":
    return MLP(int(np.prod(image_shape)), hidden_size, hidden_layers,
               num_classes, init=init, rngs=rngs)
  if task == "cnn":
    return CNN(image_shape, channels, hidden_size, num_classes, init=init,
               rngs=rngs)
  raise ValueError(f"task must be one of {', '.join(TASKS)}, got "
                   f"task={task!r}.")
