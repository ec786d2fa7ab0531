"""Checks at the public boundary: every misuse becomes a ValueError or TypeError that names
the argument, shows what it got (shape, dtype, device, value) and says what was expected."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "FLOAT_DTYPES",
    "check_finite",
    "check_same_dtype_device",
    "check_tensor",
    "describe",
]

FLOAT_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
"""Floating dtypes the manual path accepts (float16/bfloat16 are meant for CUDA)."""


def describe(t: Tensor) -> str:
    """'shape (3, 2), dtype float32, device cpu': how errors show a tensor."""
    shape = "(" + ", ".join(str(s) for s in t.shape) + ("," if t.dim() == 1 else "") + ")"
    return f"shape {shape}, dtype {str(t.dtype).removeprefix('torch.')}, device {t.device}"


def check_tensor(value: object, name: str, *, ndim: int, float_only: bool = True) -> Tensor:
    """Require a torch.Tensor of rank ``ndim`` (and a floating dtype, unless told otherwise)."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional, got {describe(value)}")
    if float_only and value.dtype not in FLOAT_DTYPES:
        allowed = ", ".join(str(d).removeprefix("torch.") for d in FLOAT_DTYPES)
        raise TypeError(f"{name} must have a floating dtype ({allowed}), got {describe(value)}")
    return value


def check_finite(t: Tensor, name: str) -> None:
    """Refuse NaN or inf, saying how many entries and where the first one is."""
    if bool(torch.isfinite(t.sum())):
        return  # one pass: NaN and inf always reach the sum, so a finite sum means all are finite
    bad = ~torch.isfinite(t)  # the sum may also overflow from finite entries: look closely
    if bool(bad.any()):
        first = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"{name} has {int(bad.sum())} non-finite entries (NaN or inf), the first at index "
            f"{first} = {t[first].item()}; expected only finite values"
        )


def check_same_dtype_device(t: Tensor, name: str, *, dtype: torch.dtype, device: torch.device) -> None:
    """All tensors of one call share the network's dtype and device."""
    if t.dtype != dtype or t.device != device:
        raise ValueError(
            f"{name} has {describe(t)}, but the network's parameters have dtype "
            f"{str(dtype).removeprefix('torch.')} on device {device}; convert it with "
            f"{name}.to(dtype=..., device=...)"
        )
