"""Reference runs of gdtuo 1.0 (torch) for tests/test_gdtuo.py.

Each case trains the same small MLP (6-8-3, tanh, log-softmax, NLL; the
model of gdtuo's README, smaller) for `STEPS` steps in float64 with gdtuo's
`ModuleWrapper`, exactly as its README does, from weights and batches drawn
with numpy. A case is one expression over a gdtuo-like module ``g``, so the
same expression builds the torch stack and the `optax_extras.gdtuo` one.

Run ``python tests/golden/make_gdtuo_golden.py`` (needs torch and
gradient-descent-the-ultimate-optimizer==1.0) to rewrite
``gdtuo_inputs.npz`` (weights and batches) and ``gdtuo_<case>.npz`` (final
weights and learned hyperparameters): the tests read them when torch or gdtuo
cannot be imported, or when OPTAX_EXTRAS_USE_GOLDEN=1.
"""

from __future__ import annotations

import pathlib

import numpy as np

GOLDEN_DIR = pathlib.Path(__file__).parent
STEPS = 60
BATCH = 8
SIZES = (6, 8, 3)
NAMES = ("layer1.weight", "layer1.bias", "layer2.weight", "layer2.bias")


def _per_param(alpha):
  """SGDPerParam's initial alphas: gdtuo pairs for torch, a dict for JAX."""
  return [(name, alpha) for name in NAMES]


# case -> builder(g, per_param): g is gdtuo's module or optax_extras.gdtuo;
# per_param(alpha) gives SGDPerParam's first argument on that side.
CASES = {
    "sgd": lambda g, pp: g.SGD(0.1),
    "sgd_momentum": lambda g, pp: g.SGD(0.05, mu=0.9),
    "sgdperparam": lambda g, pp: g.SGDPerParam(pp(0.1)),
    "adagrad": lambda g, pp: g.AdaGrad(0.1),
    "rmsprop": lambda g, pp: g.RMSProp(0.01),
    "rmspropalpha": lambda g, pp: g.RMSPropAlpha(0.01, gamma=0.9),
    "adam": lambda g, pp: g.Adam(0.01),
    "adambaydin": lambda g, pp: g.AdamBaydin(0.01, beta1=0.8),
    "sgd_sgd": lambda g, pp: g.SGD(0.1, optimizer=g.SGD(0.01)),
    "sgd_momentum_sgd": lambda g, pp: g.SGD(
        0.05, mu=0.9, optimizer=g.SGD(0.01)),
    "sgdperparam_sgd": lambda g, pp: g.SGDPerParam(
        pp(0.1), optimizer=g.SGD(0.01)),
    "adagrad_sgd": lambda g, pp: g.AdaGrad(0.1, optimizer=g.SGD(0.01)),
    "rmsprop_sgd": lambda g, pp: g.RMSProp(0.01, optimizer=g.SGD(1e-3)),
    "rmspropalpha_sgd": lambda g, pp: g.RMSPropAlpha(
        0.01, optimizer=g.SGD(1e-3)),
    "adam_sgd": lambda g, pp: g.Adam(0.01, optimizer=g.SGD(1e-3)),
    "adambaydin_sgd": lambda g, pp: g.AdamBaydin(0.01, optimizer=g.SGD(1e-4)),
    "adam_sgd_momentum": lambda g, pp: g.Adam(
        0.01, optimizer=g.SGD(1e-4, mu=0.5)),
    "sgd_adam": lambda g, pp: g.SGD(0.1, optimizer=g.Adam(1e-3)),
    "adam_adam_sgd": lambda g, pp: g.Adam(
        0.01, optimizer=g.Adam(1e-3, optimizer=g.SGD(1e-5))),
}


def make_inputs() -> dict[str, np.ndarray]:
  """Initial weights (torch layout) and the batches of every step."""
  rng = np.random.default_rng(20220401)
  inputs = {}
  for layer, (fan_in, fan_out) in enumerate(zip(SIZES, SIZES[1:]), start=1):
    bound = 1.0 / np.sqrt(fan_in)
    inputs[f"layer{layer}.weight"] = rng.uniform(-bound, bound,
                                                 (fan_out, fan_in))
    inputs[f"layer{layer}.bias"] = rng.uniform(-bound, bound, (fan_out,))
  inputs["x"] = rng.standard_normal((STEPS, BATCH, SIZES[0]))
  inputs["y"] = rng.integers(0, SIZES[-1], (STEPS, BATCH))
  return inputs


def _natural_levels(optimizer, gdtuo) -> dict[str, np.ndarray]:
  """gdtuo's learned hyperparameters in natural space, as "hp<level>/..."."""
  out = {}
  level = 0
  while not isinstance(optimizer.optimizer, gdtuo.NoOpOptimizer):
    p = optimizer.parameters
    if isinstance(optimizer, gdtuo.SGDPerParam):
      values = {f"alpha/{k[:-len('_alpha')]}": v for k, v in p.items()}
    elif isinstance(optimizer, gdtuo.SGD):
      values = {"alpha": p["alpha"]}
      if optimizer.mu != 0.0:
        values["mu"] = p["mu"]
    elif isinstance(optimizer, gdtuo.AdaGrad):
      values = {"alpha": p["alpha"]}
    elif isinstance(optimizer, (gdtuo.RMSProp, gdtuo.RMSPropAlpha)):
      values = {"alpha": p["alpha"].square()}
      if "gamma" in p:
        values["gamma"] = gdtuo.RMSProp.clamp(p["gamma"])
    elif isinstance(optimizer, gdtuo.Adam):
      values = {"alpha": p["alpha"], "beta1": gdtuo.Adam.clamp(p["beta1"]),
                "beta2": gdtuo.Adam.clamp(p["beta2"])}
    else:
      values = {"alpha": p["alpha"]}
    for key, value in values.items():
      out[f"hp{level}/{key}"] = value.detach().numpy()
    optimizer = optimizer.optimizer
    level += 1
  return out


def run_gdtuo(case: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Trains with gdtuo's ModuleWrapper as its README does, in float64."""
  import torch  # pylint: disable=import-outside-toplevel
  import torch.nn.functional as F  # pylint: disable=import-outside-toplevel
  from gradient_descent_the_ultimate_optimizer import gdtuo  # pylint: disable=import-outside-toplevel

  previous_dtype = torch.get_default_dtype()
  # gdtuo makes its hyperparameters with torch.tensor(alpha): default dtype.
  torch.set_default_dtype(torch.float64)
  try:

    class MLP(torch.nn.Module):

      def __init__(self):
        super().__init__()
        self.layer1 = torch.nn.Linear(SIZES[0], SIZES[1])
        self.layer2 = torch.nn.Linear(SIZES[1], SIZES[2])

      def forward(self, x):
        x = torch.tanh(self.layer1(x))
        x = torch.tanh(self.layer2(x))
        return F.log_softmax(x, dim=1)

    model = MLP()
    with torch.no_grad():
      for name, param in model.named_parameters():
        param.copy_(torch.from_numpy(inputs[name]))
    optimizer = CASES[case](gdtuo, _per_param)
    mw = gdtuo.ModuleWrapper(model, optimizer=optimizer)
    mw.initialize()
    for step in range(STEPS):
      mw.begin()
      x = torch.from_numpy(inputs["x"][step])
      y = torch.from_numpy(inputs["y"][step])
      loss = F.nll_loss(mw.forward(x), y)
      mw.zero_grad()
      loss.backward(create_graph=True)
      mw.step()
    out = {name: mw.parameters[name].detach().numpy().copy()
           for name in NAMES}
    out.update(_natural_levels(optimizer, gdtuo))
    return out
  finally:
    torch.set_default_dtype(previous_dtype)


def main() -> None:
  inputs = make_inputs()
  np.savez(GOLDEN_DIR / "gdtuo_inputs.npz", **inputs)
  for case in CASES:
    np.savez(GOLDEN_DIR / f"gdtuo_{case}.npz", **run_gdtuo(case, inputs))
    print("wrote", GOLDEN_DIR / f"gdtuo_{case}.npz")


if __name__ == "__main__":
  main()
