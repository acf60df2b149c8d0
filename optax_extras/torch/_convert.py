"""Tensors to JAX arrays and back, by DLPack."""

from __future__ import annotations

from typing import Any

import jax
import torch

_X64_DTYPES = (torch.float64, torch.int64, torch.complex128)


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
  return jax.dlpack.from_dlpack(tensor)


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
      lambda x: torch.from_dlpack(x) if isinstance(x, jax.Array) else x, tree)
