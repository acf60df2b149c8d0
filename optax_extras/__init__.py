"""optax-extras: extra optax gradient transformations for JAX.

PyTorch interop lives in `optax_extras.torch` (it imports torch); the
`optax-extras compare` command in `optax_extras.experiments`.
"""

from optax_extras import gdtuo
from optax_extras._diffgrad import diffgrad
from optax_extras._diffgrad import scale_by_diffgrad
from optax_extras._diffgrad import ScaleByDiffGradState
from optax_extras._expectigrad import expectigrad
from optax_extras._expectigrad import scale_by_expectigrad
from optax_extras._expectigrad import ScaleByExpectigradState
from optax_extras._hypergradient import adam_hd
from optax_extras._hypergradient import AdamHDState
from optax_extras._hypergradient import sgd_hd
from optax_extras._hypergradient import SGDHDState
from optax_extras._hyperoptimize import hyperoptimize
from optax_extras._hyperoptimize import HyperoptimizeState
from optax_extras._hyperoptimize import hyperparameters
from optax_extras._hyperoptimize import Learned
from optax_extras._hyperoptimize import set_hyperparameters

__version__ = "0.1.0"

__all__ = (
    "set_hyperparameters",
    "adam_hd",
    "AdamHDState",
    "diffgrad",
    "expectigrad",
    "gdtuo",
    "hyperoptimize",
    "HyperoptimizeState",
    "hyperparameters",
    "Learned",
    "scale_by_diffgrad",
    "scale_by_expectigrad",
    "ScaleByDiffGradState",
    "ScaleByExpectigradState",
    "sgd_hd",
    "SGDHDState",
)
