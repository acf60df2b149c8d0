"""PyTorch interop: optax transformations as `torch.optim.Optimizer`.

* `OptaxOptimizer` runs any optax `GradientTransformation` as a torch
  optimizer: the update of each parameter group is one jitted JAX function,
  the tensors cross by DLPack and the new values become the parameters'
  storage without a copy.
* `to_jax` and `to_torch` convert trees of tensors and arrays by DLPack.
* `import_torch_state` turns the ``state_dict()`` of ``torch.optim.Adam``
  (also with ``amsgrad=True``), ``torch.optim.SGD``,
  ``torch_optimizer.DiffGrad`` or ``expectigrad.pytorch.Expectigrad`` into
  the optax state of the matching transformation, so that a run started in
  torch continues in JAX.

Modules: ``_optimizer`` (the optimizer), ``_plan`` (one group's checked
step), ``_group`` (a group's record and per-parameter states), ``_options``
(torch names of hyperparameters), ``_rate`` (the learning rate in a state),
``_checkpoint`` (state_dict), ``_import`` (torch states, one converter per
layout), ``_convert`` (DLPack).

This package imports torch; ``import optax_extras`` does not.
"""

from optax_extras.torch._convert import to_jax
from optax_extras.torch._convert import to_torch
from optax_extras.torch._import import import_torch_state
from optax_extras.torch._optimizer import OptaxOptimizer

__all__ = ("OptaxOptimizer", "import_torch_state", "to_jax", "to_torch")
