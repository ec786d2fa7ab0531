"""The self-check of a conversion: a torch module's outputs and its refbp network's agree to rounding.

``from_torch`` runs both on one small input and refuses the conversion where they differ
(refbp.nn.convert for a torch.nn.Sequential, refbp.nn.fx_convert for any traced module); this
module holds what both compare with: the tolerance and the one comparison that says how two
outputs differ.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["EXAMPLE_BATCH", "SELF_CHECK_TOLERANCE", "difference"]

SELF_CHECK_TOLERANCE: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-7, 1e-9),
    torch.float32: (1e-4, 1e-5),
    torch.float16: (1e-2, 1e-3),
    torch.bfloat16: (5e-2, 1e-2),
}
"""dtype -> (rtol, atol per unit of the largest output entry) for ``from_torch``'s self-check.
refbp and torch sum in different orders, so equal functions differ by rounding: a few hundred
roundings of the largest term at most for the small networks and inputs the check runs
(float64 eps 2.2e-16, float32 1.2e-7, float16 9.8e-4, bfloat16 7.8e-3). The bounds leave a
wide margin over that; a converted network that computes another function (a layer dropped, a
variant of an activation, another eps) differs by far more."""

EXAMPLE_BATCH = 2
"""Rows of the input ``from_torch`` builds for its self-check: two, so that a BatchNorm in
training mode has a batch to normalise over."""


def difference(ours: Tensor, theirs: Tensor) -> str | None:
    """None when two outputs agree to rounding (SELF_CHECK_TOLERANCE of torch's dtype); else how they differ."""
    if ours.shape != theirs.shape:
        return f"refbp's output has shape {tuple(ours.shape)}, torch's {tuple(theirs.shape)}"
    rtol, atol = SELF_CHECK_TOLERANCE.get(theirs.dtype, SELF_CHECK_TOLERANCE[torch.float32])
    ours, theirs = ours.to(theirs.dtype), theirs.detach()
    scale = float(theirs.abs().max()) if theirs.numel() else 0.0
    allowed = atol * max(1.0, scale) + rtol * theirs.abs()
    gap = (ours - theirs).abs()
    bad = ~(gap <= allowed)  # NaN counts as bad
    if not bool(bad.any()):
        return None
    first = tuple(int(i) for i in bad.nonzero()[0])
    worst = float(gap[bad].max()) if bool(torch.isfinite(gap[bad]).any()) else math.nan
    return (
        f"{int(bad.sum())} of {bad.numel()} entries differ, the first at index {first} "
        f"(refbp {ours[first].item():.6g}, torch {theirs[first].item():.6g}), the largest by {worst:.3g} "
        f"(allowed {atol:g} x max(1, {scale:.3g}) + {rtol:g} |torch|)"
    )
