"""Diagnoses: what a mismatch looks like, in words, when the numbers say so.

A failure message says how far a gradient is from its reference; often the pattern says why.
Each diagnosis here holds only when its pattern holds to the row's own tolerance, so it is a
finding, not a guess:

- every entry is c times the reference (one ratio for all): c = -1 is a flipped sign; c = N,
  d_L or N d_L (the batch size, the output width) is a missing 1/N or 1/d_L; c = 2 or 1/2 is a
  lost or extra factor 2 (the 1/2 of 1/2 ||r||^2, or the 2 of the square's derivative);
- every entry is 0 where the reference is not: a gradient never written (a layer skipped);
- the entries that differ are exactly those where a relu-like pre-activation sits on its kink
  (z == 0): torch takes f'(0) = 0 (leaky_relu: the slope); this code takes another subgradient;
- the loss differs by such a factor: a sum where torch takes the mean, or the other 1/2.

(A shape that is the transpose of the reference's is diagnosed by the comparison itself.)
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

__all__ = ["explain_factor", "kink_note", "proportional"]

FACTORS_RTOL = 1e-3
"""How close a fitted ratio must be to a named factor (N, 2, 1/2, ...) to be called that."""


def proportional(g: Tensor, r: Tensor, allowed: float) -> float | None:
    """The c with g = c r to within ``allowed`` at every entry (least squares, c != 1), or None."""
    g64, r64 = g.detach().double().reshape(-1).cpu(), r.detach().double().reshape(-1).cpu()
    if g64.numel() == 0 or not bool(torch.isfinite(g64).all() & torch.isfinite(r64).all()):
        return None
    rr = float(r64 @ r64)
    if rr == 0.0:
        return None
    c = float(g64 @ r64) / rr
    if not math.isfinite(c) or abs(c - 1.0) <= FACTORS_RTOL:
        return None
    if float((g64 - c * r64).abs().max()) > allowed * max(1.0, abs(c)):
        return None
    return c


def explain_factor(c: float, sizes: Mapping[str, int]) -> str:
    """ "every entry is 3x the reference (a missing 1/N? N = 3)" and its kin; ``sizes`` names
    the sizes a factor may be (N, d_L, N d_L). Every explanation that fits is given."""
    if c == 0:
        return "every entry is 0: the gradient was never written (a layer skipped?)"
    text = f"every entry is {c:.3g}x the reference"
    reasons = []
    if _near(c, -1.0):
        reasons.append("sign flipped?")
    for name, size in sizes.items():
        if size > 1 and _near(c, float(size)):
            reasons.append(f"a missing 1/{name}? {name} = {size}")
        if size > 1 and _near(c, 1.0 / size):
            reasons.append(f"an extra 1/{name}? {name} = {size}")
    if _near(c, 2.0):
        reasons.append("a lost 1/2, or the square's 2 counted twice?")
    if _near(c, 0.5):
        reasons.append("an extra 1/2, or the square's derivative without its 2?")
    return text + (f" ({'; or '.join(reasons)})" if reasons else "")


def _near(c: float, target: float) -> bool:
    return abs(c - target) <= FACTORS_RTOL * abs(target)


def kink_note(mismatched: Tensor, on_kink: Tensor) -> str:
    """A note when the mismatched entries are exactly the entries on a kink (both bool, one shape)."""
    if mismatched.shape != on_kink.shape or not bool(mismatched.any()):
        return ""
    if bool((mismatched == on_kink).all()):
        return (
            "the differing entries sit exactly on relu kinks (z == 0): torch takes f'(0) = 0 "
            "(leaky_relu: its slope), this code takes the other side's slope"
        )
    return ""
