"""Tensors to JAX arrays and back, by DLPack."""

from __future__ import annotations

import functools
from typing import Any

import jax
import torch

try:  # jax's own DLPack entries, under its public functions
  from jax._src.lib import _jax as _jaxlib
  from jax._src.lib import jaxlib_extension_version as _JAXLIB_VERSION
except ImportError:  # another jax: the public functions only
  _jaxlib, _JAXLIB_VERSION = None, 0
if _JAXLIB_VERSION < 467:  # entries of another signature
  _jaxlib = None

_X64_DTYPES = (torch.float64, torch.int64, torch.complex128)
# dtypes JAX keeps as they are (so the public function would not convert).
_DIRECT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.int32,
                  torch.int16, torch.int8, torch.uint8, torch.bool)
_DL_CPU = 1  # DLPack's device type of host memory


@functools.cache
def _cpu_device(hardware_id: int) -> jax.Device | None:
  return next((d for d in jax.local_devices(backend="cpu")
               if d.local_hardware_id == hardware_id), None)


def _direct_import(tensor: torch.Tensor) -> jax.Array | None:
  """A CPU tensor imported by jax's own DLPack entry, or None where that
  entry is not this jax's or the tensor is not a plain CPU one.

  The same call `jax.dlpack.from_dlpack` ends with (same sharing, and a copy
  only for a misaligned buffer), without its per-call device lookups, stream
  query (which raises and catches an exception on CPU) and dtype
  canonicalisation (a no-op for these dtypes): 7 us per tensor instead of
  48 us, most of the shim's overhead on small models.
  """
  if (_jaxlib is None or not tensor.is_cpu
      or not (tensor.dtype in _DIRECT_DTYPES
              or (tensor.dtype in _X64_DTYPES and jax.config.jax_enable_x64))):
    return None
  device = _cpu_device(0)  # a CPU tensor's DLPack device id
  if device is None:
    return None
  try:
    return _jaxlib.dlpack_managed_tensor_to_buffer(
        torch.utils.dlpack.to_dlpack(tensor), device, None, None, _DL_CPU)
  except (TypeError, AttributeError):  # a jax whose entry differs
    _disable_direct()
    return None


def _disable_direct() -> None:
  global _jaxlib  # pylint: disable=global-statement
  _jaxlib = None


def tensor_to_jax(tensor: torch.Tensor) -> jax.Array:
  """One dense tensor as a JAX array sharing its memory where possible."""
  if tensor.layout != torch.strided:
    raise TypeError(
        f"Only dense (strided) tensors cross to JAX, got layout "
        f"{tensor.layout} (sparse gradients are not supported).")
  if tensor.dtype in _X64_DTYPES and not jax.config.jax_enable_x64:
    raise TypeError(
        f"A {tensor.dtype} tensor needs 64-bit JAX: set "
        "jax.config.update('jax_enable_x64', True) or use "
        "`with jax.enable_x64(True):` (JAX would silently halve it).")
  if tensor.requires_grad:
    tensor = tensor.detach()
  if tensor.is_conj() or tensor.is_neg():
    tensor = tensor.resolve_conj().resolve_neg()
  if not tensor.is_contiguous():
    tensor = tensor.contiguous()
  array = _direct_import(tensor)
  return jax.dlpack.from_dlpack(tensor) if array is None else array


def array_to_tensor(array: jax.Array) -> torch.Tensor:
  """One JAX array as a tensor sharing its memory (by DLPack).

  A single-device CPU array goes by jax's own DLPack export (what
  ``torch.from_dlpack(array)`` ends with: 1.4 us per array instead of 7 us,
  without the lookups of jax's ``__dlpack__``); any other by
  `torch.from_dlpack`.
  """
  if _jaxlib is not None:
    devices = array.devices()
    if len(devices) == 1 and next(iter(devices)).platform == "cpu":
      try:
        return torch.utils.dlpack.from_dlpack(
            _jaxlib.buffer_to_dlpack_managed_tensor(array, stream=None))
      except (TypeError, AttributeError):  # a jax whose entry differs
        _disable_direct()
  return torch.from_dlpack(array)


def to_jax(tree: Any) -> Any:
  """Converts the `torch.Tensor` leaves of `tree` to JAX arrays by DLPack.

  No copy where the device and layout allow (a non-contiguous tensor is made
  contiguous first); the arrays share memory with the tensors. dtypes are
  kept (bfloat16, float16, float64 ...). Other leaves pass through unchanged.

  Args:
    tree: a tree whose leaves may be tensors.

  Returns:
    The same tree with JAX arrays in place of the tensors.

  Raises:
    TypeError: for a sparse tensor, or a 64-bit tensor without 64-bit JAX
      (``jax.config.update('jax_enable_x64', True)``).

  Example:
    >>> import torch
    >>> from optax_extras.torch import to_jax
    >>> to_jax({"w": torch.ones(2)})["w"].dtype
    dtype('float32')
  """
  return jax.tree.map(
      lambda x: tensor_to_jax(x) if isinstance(x, torch.Tensor) else x, tree)


def to_torch(tree: Any) -> Any:
  """Converts the `jax.Array` leaves of `tree` to tensors by DLPack.

  No copy where the device allows: the tensors share memory with the arrays
  (``.clone()`` them before writing). Other leaves pass through unchanged.

  Args:
    tree: a tree whose leaves may be JAX arrays.

  Returns:
    The same tree with tensors in place of the arrays.

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_extras.torch import to_torch
    >>> to_torch([jnp.zeros(3)])[0].shape
    torch.Size([3])
  """
  return jax.tree.map(
      lambda x: array_to_tensor(x) if isinstance(x, jax.Array) else x, tree)
