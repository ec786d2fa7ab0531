"""What a check takes from its caller, validated at the boundary: the options shared by
``check`` and ``check_function``, and gradients given as torch tensors or NumPy arrays.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..nn.validation import check_int, check_seed, describe
from .tolerances import Tolerance

__all__ = ["FD_AUTO_MAX_ENTRIES", "REFERENCES", "as_tensor", "check_options", "user_grads"]

REFERENCES = ("autograd", "fd")
"""What ``check`` compares against: torch.autograd, and central finite differences."""

FD_AUTO_MAX_ENTRIES = 20_000
"""fd_mode="auto" uses full finite differences up to this many entries in all, directional
above: full mode costs two batched evaluations per entry (two more, the error estimate, only
where the cheap pass cannot decide), directional a fixed few per tensor."""


def check_options(references: object, fd_mode: object, directions: object, seed: object, tolerance: object) -> None:
    """Raise a TypeError or ValueError naming the first option that is not what ``check`` takes."""
    if isinstance(references, str) or not isinstance(references, Sequence):
        raise TypeError(f"references={references!r}; expected a list drawn from {list(REFERENCES)}")
    unknown = [r for r in references if r not in REFERENCES]
    if unknown or not references:
        raise ValueError(f"references={references!r}; expected a non-empty list drawn from {list(REFERENCES)}")
    if fd_mode not in ("full", "directional", "auto"):
        raise ValueError(f"fd_mode={fd_mode!r}; expected 'full', 'directional' or 'auto'")
    check_int(directions, "directions", minimum=1, maximum=10_000)
    check_seed(seed)
    if tolerance is not None and not isinstance(tolerance, Tolerance):
        raise TypeError(
            f"tolerance={tolerance!r} must be a refbp.verify.tolerances.Tolerance(rtol=..., atol=...), "
            f"got {type(tolerance).__name__}"
        )


def user_grads(grads: Mapping[str, Any], valid: list[str]) -> dict[str, Tensor]:
    if not isinstance(grads, Mapping):
        raise TypeError(f"grads must be a dict name -> tensor, got {type(grads).__name__}")
    unknown = [name for name in grads if name not in valid]
    if unknown:
        raise ValueError(f"grads has unknown keys {unknown}; expected a subset of {valid}")
    if not grads:
        raise ValueError(f"grads is empty; expected a subset of {valid}")
    return {name: as_tensor(grads[name], f"grads[{name!r}]") for name in valid if name in grads}


def as_tensor(value: Any, argument: str) -> Tensor:
    """A gradient as a tensor: torch tensors as they are, NumPy arrays (and numbers) converted."""
    if isinstance(value, Tensor):
        if value.device.type == "meta":
            raise ValueError(f"{argument} is on the meta device ({describe(value)}): it has no values to compare")
        return value.detach()
    if isinstance(value, np.ndarray) and value.dtype.kind in "fiu":
        return torch.as_tensor(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return torch.tensor(value, dtype=torch.float64)
    raise TypeError(f"{argument} must be a torch tensor or a numeric NumPy array, got {type(value).__name__}")
