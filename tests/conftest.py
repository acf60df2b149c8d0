"""Test configuration: eight host devices for the sharding tests.

The flag must be set before JAX initialises its backends, so it lives here.
"""

import os

os.environ.setdefault(
    "XLA_FLAGS", "--xla_force_host_platform_device_count=8")
