"""The models of `optax-extras compare`, in Flax NNX, on NHWC images."""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np
from flax import nnx

TASKS = ("logreg", "mlp", "cnn")


class LogReg(nnx.Module):
  """Logistic regression: one linear layer on the flattened image."""

  def __init__(self, in_features: int, num_classes: int, *, rngs: nnx.Rngs):
    self.linear = nnx.Linear(in_features, num_classes, rngs=rngs)

  def __call__(self, x):
    return self.linear(x.reshape(x.shape[0], -1))


class MLP(nnx.Module):
  """ReLU layers of `hidden_size` on the flattened image (train.py's MLP)."""

  def __init__(self, in_features: int, hidden_size: int, hidden_layers: int,
               num_classes: int, *, rngs: nnx.Rngs):
    sizes = [in_features] + [hidden_size] * hidden_layers
    self.hidden = nnx.List([nnx.Linear(a, b, rngs=rngs)
                            for a, b in zip(sizes, sizes[1:])])
    self.out = nnx.Linear(sizes[-1], num_classes, rngs=rngs)

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
               hidden_size: int, num_classes: int, *, rngs: nnx.Rngs):
    height, width, features = image_shape
    init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")
    self.convs = nnx.List()
    for out in channels:
      for _ in range(2):
        self.convs.append(nnx.Conv(features, out, (3, 3), kernel_init=init,
                                   rngs=rngs))
        features = out
      height, width = max(height // 2, 1), max(width // 2, 1)
    self.hidden = nnx.Linear(height * width * features, hidden_size, rngs=rngs)
    self.out = nnx.Linear(hidden_size, num_classes, rngs=rngs)

  def __call__(self, x):
    for i, conv in enumerate(self.convs):
      x = jax.nn.relu(conv(x))
      if i % 2 == 1 and min(x.shape[1:3]) >= 2:
        x = nnx.max_pool(x, (2, 2), (2, 2))
    x = jax.nn.relu(self.hidden(x.reshape(x.shape[0], -1)))
    return self.out(x)


def make(task: str, image_shape: Sequence[int], num_classes: int, *,
         hidden_size: int, hidden_layers: int, channels: Sequence[int],
         seed: int) -> nnx.Module:
  """The model of `task` (one of TASKS), initialized from `seed`."""
  rngs = nnx.Rngs(seed)
  if task == "logreg":
    return LogReg(int(np.prod(image_shape)), num_classes, rngs=rngs)
  if task == "mlp":
    return MLP(int(np.prod(image_shape)), hidden_size, hidden_layers,
               num_classes, rngs=rngs)
  if task == "cnn":
    return CNN(image_shape, channels, hidden_size, num_classes, rngs=rngs)
  raise ValueError(f"unknown task {task!r}; valid: {', '.join(TASKS)}")
