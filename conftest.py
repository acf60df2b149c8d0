"""Doctest collection: the torch interop package needs torch (an optional extra)."""

import importlib.util

collect_ignore = []
if importlib.util.find_spec("torch") is None:
  collect_ignore.append("optax_extras/torch")
