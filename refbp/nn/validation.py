"""Checks at the public boundary: every misuse becomes a ValueError or TypeError that names
the argument, shows what it got (shape, dtype, device, value) and says what was expected."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "FLOAT_DTYPES",
    "MAX_SEED",
    "as_tensor",
    "available_memory",
    "check_finite",
    "check_fits_in_memory",
    "check_int",
    "check_same_dtype_device",
    "check_seed",
    "check_subset",
    "check_tensor",
    "check_tensor_any",
    "derived_seed",
    "describe",
]

FLOAT_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
"""Floating dtypes the manual path accepts (float16/bfloat16 are meant for CUDA)."""


def describe(t: Tensor) -> str:
    """'shape (3, 2), dtype float32, device cpu': how errors show a tensor."""
    shape = "(" + ", ".join(str(s) for s in t.shape) + ("," if t.dim() == 1 else "") + ")"
    return f"shape {shape}, dtype {str(t.dtype).removeprefix('torch.')}, device {t.device}"


def as_tensor(value: object, name: str) -> object:
    """A numeric NumPy array as a tensor of the same dtype (sharing its memory); anything else
    unchanged, for ``check_tensor`` to accept or refuse."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "fiu":
            raise TypeError(f"{name} must be a numeric array, got a NumPy array of dtype {value.dtype}")
        return torch.from_numpy(np.ascontiguousarray(value))
    return value


def check_tensor(value: object, name: str, *, ndim: int | None = None, float_only: bool = True) -> Tensor:
    """Require a torch.Tensor (or a NumPy array, converted) with data (not on the meta device),
    of rank ``ndim`` when given, and of a floating dtype unless told otherwise."""
    value = as_tensor(value, name)
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or a NumPy array, got {type(value).__name__}")
    if value.device.type == "meta":
        raise ValueError(f"{name} is on the meta device ({describe(value)}): it has a shape but no values to check")
    if ndim is not None and value.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional, got {describe(value)}")
    if float_only and value.dtype not in FLOAT_DTYPES:
        allowed = ", ".join(str(d).removeprefix("torch.") for d in FLOAT_DTYPES)
        raise TypeError(f"{name} must have a floating dtype ({allowed}), got {describe(value)}")
    return value


def check_tensor_any(value: object, name: str) -> Tensor:
    """Require a torch.Tensor with data, of any rank and dtype."""
    return check_tensor(value, name, float_only=False)


def check_finite(t: Tensor, name: str) -> None:
    """Refuse NaN or inf, saying how many entries and where the first one is."""
    if math.isfinite(t.sum().item()):  # .item(), not torch.isfinite: a 0-dim isfinite costs 15 us on a CPU
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


# ---- seeds and sizes ----------------------------------------------------------------------
MAX_SEED = 2**32 - 1
"""torch's CPU generator keeps 32 bits of a seed (seeds 5 and 2**32 + 5 draw the same numbers),
so refbp accepts seeds in [0, 2**32 - 1], where each draws its own numbers."""


def check_seed(value: object, name: str = "seed") -> int:
    """A seed must be an int (not a bool, float or string) in [0, MAX_SEED]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}={value!r} must be an int in [0, {MAX_SEED}], got {type(value).__name__}")
    if not 0 <= value <= MAX_SEED:
        raise ValueError(
            f"{name}={value} is out of range; expected an int in [0, {MAX_SEED}] (torch's generator keeps 32 bits)"
        )
    return value


def derived_seed(seed: int, k: int, what: str, name: str = "seed") -> int:
    """seed + k, the seed of the k-th of several random streams drawn from one ``seed``: it must
    itself be <= MAX_SEED. It is never wrapped around 2**32: a wrapped seed would repeat the
    streams of small seeds (MAX_SEED + 1 would draw what 0 draws), so a seed too close to
    MAX_SEED for the streams it feeds is a ValueError naming ``name`` and the largest allowed."""
    seed = check_seed(seed, name)
    if seed + k > MAX_SEED:
        raise ValueError(
            f"{name}={seed} is too large: {what} draws from {name} + {k} = {seed + k} > MAX_SEED = {MAX_SEED} "
            f"(seeds are never wrapped); expected {name} <= {MAX_SEED - k}"
        )
    return seed + k


def check_subset(values: Sequence[str], name: str, known: Sequence[str]) -> list[str]:
    """``values`` as a list: non-empty, each one of ``known`` (a strategy's options)."""
    given = list(values)
    if not given or any(v not in known for v in given):
        raise ValueError(f"{name}={given!r}: expected a non-empty list drawn from {sorted(known)}")
    return given


def check_int(value: object, name: str, *, minimum: int, maximum: int | None = None) -> int:
    """An int (not a bool or float) in [minimum, maximum]."""
    expected = f"an int >= {minimum}" if maximum is None else f"an int in [{minimum}, {maximum}]"
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}={value!r} must be {expected}, got {type(value).__name__}")
    if value < minimum or (maximum is not None and value > maximum):
        raise ValueError(f"{name}={value} is out of range; expected {expected}")
    return value


def available_memory() -> int:
    """Bytes of memory this process may still use: MemAvailable from /proc/meminfo where there
    is one, else the machine's physical memory."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 2**63 - 1


_SMALL = 64 * 2**20
"""Sizes below this (64 MiB) are not checked against the free memory: reading /proc/meminfo
costs more than a small network's whole training step, and torch's own error says enough."""


def check_fits_in_memory(nbytes: int, what: str) -> None:
    """Refuse, before allocating, anything that cannot fit in the memory left on this machine."""
    if nbytes < _SMALL:
        return
    free = available_memory()
    if nbytes > free:
        raise ValueError(f"{what} needs {_gib(nbytes)} of memory, but only {_gib(free)} is available here")


def _gib(nbytes: int) -> str:
    return f"{nbytes / 2**30:.3g} GiB" if nbytes >= 2**20 else f"{nbytes} bytes"
