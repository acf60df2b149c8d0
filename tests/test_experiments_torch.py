"""`compare --init torch` against upstream train.py's loop, re-stated in torch.

The torch side is train.py's MLP (lin1, lin2, lin3 with ReLU) and its step
(``zero_grad``, ``F.cross_entropy``, ``backward``, ``step``) with torch's SGD
and Adam and the upstream ``hypergrad.SGDHD`` / ``AdamHD`` (as re-stated in
`torch_reference`), each built with train.py's arguments from run.sh's
settings. Both sides start from the same weights (the ones `compare` drew
with torch's initialisation, copied into torch) and take the same batches.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch_reference  # noqa: E402  (needs torch)
from optax_extras import experiments  # noqa: E402
from optax_extras.experiments import data  # noqa: E402
from optax_extras.experiments import options  # noqa: E402
from optax_extras.experiments import train  # noqa: E402

EPOCHS = 3
HIDDEN = 32
SEED = 1
WEIGHT_DECAY = 1e-4  # train.py's --weightDecay default
ALPHA_0 = 1e-3  # run.sh's --alpha_0


class _TrainPyMLP(torch.nn.Module):
  """train.py's MLP, with the input size of digits."""

  def __init__(self, input_dim, hidden_dim, output_dim):
    super().__init__()
    self._input_dim = input_dim
    self.lin1 = torch.nn.Linear(input_dim, hidden_dim)
    self.lin2 = torch.nn.Linear(hidden_dim, hidden_dim)
    self.lin3 = torch.nn.Linear(hidden_dim, output_dim)

  def forward(self, x):
    x = x.view(-1, self._input_dim)
    x = torch.nn.functional.relu(self.lin1(x))
    x = torch.nn.functional.relu(self.lin2(x))
    return self.lin3(x)


def _train_py_optimizer(method, params):
  """train.py's optimizer for `method` with run.sh's MLP settings."""
  beta = 1e-7 if method.startswith("adam") else 1e-3
  return {
      "sgd": lambda: torch.optim.SGD(params, lr=ALPHA_0,
                                     weight_decay=WEIGHT_DECAY),
      "sgd_hd": lambda: torch_reference.SGDHD(
          params, lr=ALPHA_0, weight_decay=WEIGHT_DECAY, hypergrad_lr=beta),
      "sgdn": lambda: torch.optim.SGD(params, lr=ALPHA_0,
                                      weight_decay=WEIGHT_DECAY, momentum=0.9,
                                      nesterov=True),
      "sgdn_hd": lambda: torch_reference.SGDHD(
          params, lr=ALPHA_0, weight_decay=WEIGHT_DECAY, momentum=0.9,
          nesterov=True, hypergrad_lr=beta),
      "adam": lambda: torch.optim.Adam(params, lr=ALPHA_0,
                                       weight_decay=WEIGHT_DECAY),
      "adam_hd": lambda: torch_reference.AdamHD(
          params, lr=ALPHA_0, weight_decay=WEIGHT_DECAY, hypergrad_lr=beta),
  }[method]()


def _load_weights(model, params):
  """Our MLP's parameters (kernel (in, out)) into train.py's (weight (out, in))."""
  layers = [params["hidden"][0], params["hidden"][1], params["out"]]
  with torch.no_grad():
    for lin, layer in zip((model.lin1, model.lin2, model.lin3), layers):
      lin.weight.copy_(torch.from_numpy(np.asarray(layer["kernel"]).T.copy()))
      lin.bias.copy_(torch.from_numpy(np.array(layer["bias"])))


def _train_py_loop(method, init_params):
  """train.py's training loop on our batches; every step's loss and rate."""
  dataset = data.load_digits()
  images = dataset.train_images.reshape(len(dataset.train_images), -1)
  order = train.batch_indices(len(images), 128, EPOCHS, SEED)
  model = _TrainPyMLP(images.shape[1], HIDDEN, 10)
  _load_weights(model, init_params)
  optimizer = _train_py_optimizer(method, model.parameters())
  losses, alphas = [], []
  for batch in order.reshape(-1, order.shape[-1]):
    x = torch.from_numpy(images[batch])
    y = torch.from_numpy(dataset.train_labels[batch].astype(np.int64))
    optimizer.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    losses.append(loss.item())
    alphas.append(float(optimizer.param_groups[0]["lr"]))
  return np.array(losses), np.array(alphas)


@pytest.fixture(scope="module")
def paper_run():
  run = experiments.compare(",".join(options.PAPER), seed=SEED,
                            epochs=EPOCHS, hidden_size=HIDDEN, hidden_layers=2,
                            init="torch")
  return {r.label: r for r in run.results}


@pytest.mark.parametrize("method", [
    "sgd", "sgd_hd", "sgdn", "sgdn_hd", "adam", "adam_hd"])
def test_compare_init_torch_equals_train_py_loop(paper_run, method):
  result = paper_run[method]
  losses, alphas = _train_py_loop(method, result.init_params)
  table = result.table()
  # float32 on both sides, different kernels: rounding noise only.
  np.testing.assert_allclose(table["Loss"][1:], losses, rtol=2e-5)
  np.testing.assert_allclose(table["Alpha"][1:], alphas, rtol=2e-5)


def test_torch_init_is_nn_linear_default(paper_run):
  """Weights and biases uniform in +-1/sqrt(fan_in), as torch's nn.Linear
  draws them (compared with a real torch layer of the same shape)."""
  params = paper_run["sgd"].init_params
  reference = torch.nn.Linear(HIDDEN, HIDDEN)
  for name, torch_values in (("kernel", reference.weight), ("bias",
                                                           reference.bias)):
    ours = np.asarray(params["hidden"][1][name])
    bound = 1 / np.sqrt(HIDDEN)
    assert np.abs(ours).max() <= bound
    assert np.abs(ours).max() > 0.8 * bound  # the whole range is used
    np.testing.assert_allclose(ours.std(), torch_values.detach().numpy().std(),
                               rtol=0.35)


def test_flax_init_has_zero_biases():
  run = experiments.compare("sgd", epochs=1, hidden_size=8, hidden_layers=1,
                            init="flax")
  params = run.results[0].init_params
  assert not np.any(np.asarray(params["hidden"][0]["bias"]))
  torch_run = experiments.compare("sgd", epochs=1, hidden_size=8,
                                  hidden_layers=1, init="torch")
  assert np.any(np.asarray(torch_run.results[0].init_params["hidden"][0]
                           ["bias"]))
