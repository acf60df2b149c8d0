"""Validation of concrete hyperparameter values, with one message format.

Every constructor validates the hyperparameters it is given *when they are
concrete* (Python numbers or concrete arrays). Traced values (inside
`optax.inject_hyperparams`, a hyperoptimizer or `jax.jit`) and schedules are
left alone: they cannot be inspected without a host round trip.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def concrete_value(value: Any) -> float | None:
  """`value` as a Python float when it is a concrete real scalar, else None."""
  if isinstance(value, bool) or callable(value):
    return None
  if isinstance(value, jax.core.Tracer):
    return None
  if isinstance(value, (int, float, np.number, np.ndarray, jax.Array)):
    array = np.asarray(value)
    # jnp.issubdtype knows bfloat16 and the other ml_dtypes (np's does not):
    # optax.inject_hyperparams stores hyperparameters in the params' dtype.
    if array.shape == () and jnp.issubdtype(array.dtype, jnp.number):
      if np.iscomplexobj(array):
        return None
      return float(array)
  return None


def _is_concrete_array(value: Any) -> bool:
  """A NumPy or concrete JAX array (not a tracer): one `concrete_value`
  rejected, being non-scalar, complex or not numeric."""
  return (isinstance(value, (np.ndarray, np.generic, jax.Array))
          and not isinstance(value, jax.core.Tracer))


def _fail(name: str, value: Any, allowed: str) -> None:
  hint = ""
  dtype = getattr(value, "dtype", None)
  if dtype is not None and jnp.issubdtype(dtype, jnp.floating) and (
      jnp.finfo(dtype).bits < 32):
    hint = (f" (a {jnp.dtype(dtype).name} value: optax.inject_hyperparams "
            "stores hyperparameters in the params' dtype unless given "
            "hyperparam_dtype=jnp.float32)")
  raise ValueError(f"{name} must be {allowed}, got {name}={value!r}{hint}.")


def check_range(
    name: str,
    value: Any,
    low: float,
    high: float,
    *,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> None:
  """Raises ValueError unless a concrete `value` lies in the stated interval.

  NaN is never in range. Schedules and traced values pass unchecked; strings,
  None, bools, complex numbers and containers are rejected.
  """
  number = concrete_value(value)
  if number is None:
    if (value is None
        or isinstance(value, (bool, complex, str, bytes, list, tuple, dict))
        or _is_concrete_array(value)):
      _fail(name, value, "a real number (a scalar)")
    return
  allowed = (
      ("[" if low_inclusive else "(")
      + f"{low:g}, {high:g}"
      + ("]" if high_inclusive else ")")
  )
  below = number < low or (number == low and not low_inclusive)
  above = number > high or (number == high and not high_inclusive)
  if math.isnan(number) or below or above:
    unbounded = math.isinf(low) and math.isinf(high)
    _fail(name, value, "a finite number" if unbounded else f"in {allowed}")


def check_nonnegative(name: str, value: Any) -> None:
  """Raises ValueError unless a concrete `value` is finite and >= 0."""
  check_range(name, value, 0.0, math.inf, high_inclusive=False)


def check_decay(name: str, value: Any) -> None:
  """Raises ValueError unless a concrete `value` is in [0, 1)."""
  check_range(name, value, 0.0, 1.0, high_inclusive=False)


def check_learning_rate(value: Any) -> None:
  """A float learning rate must be finite and >= 0; schedules pass."""
  check_nonnegative("learning_rate", value)


def check_bool(name: str, value: Any) -> None:
  """Raises ValueError unless `value` is a Python bool (a static option)."""
  if not isinstance(value, bool):
    _fail(name, value, "a Python bool (a static option, not a traced value)")
