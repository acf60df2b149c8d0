"""`python -m optax_extras.experiments` is the `optax-extras` command."""

import sys

from optax_extras.experiments.cli import main

sys.exit(main())
