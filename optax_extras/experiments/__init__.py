"""Experiments of optax-extras: the `optax-extras` command and its studies.

`compare` and `sweep` (from `studies`) run the studies from Python and return
their results and final optimizer states::

  from optax_extras import experiments
  run = experiments.compare("sgd,adam_hd", epochs=5)
  run.results[1].summary["final_learning_rate"]

`options` names the optimizers and checks their options; `optimizers` builds
them; `data` loads digits, MNIST and CIFAR-10; `models` holds the Flax NNX
models; `train` trains; `results` and `plots` write and read the outputs;
`cli` is the command line. `compare` and `sweep` are imported on first use,
so that the command line starts without jax's heavy modules.
"""

__all__ = ("compare", "sweep")


def __getattr__(name):
  if name in __all__:
    from optax_extras.experiments import studies
    return getattr(studies, name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
