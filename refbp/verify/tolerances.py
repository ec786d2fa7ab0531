"""Named tolerances: how far a gradient may be from its reference and still count as right.

The rule (normwise, per tensor). A gradient g passes against a reference r when every
element satisfies

    |g_k - r_k| <= atol + rtol * ||r||_inf

Why normwise and not torch.testing's elementwise ``atol + rtol * |r_k|``: backprop's rounding
error in an entry is proportional to the magnitudes of the terms summed into it (a batch sum
in dJ/dW, a width sum in dJ/da), not to the entry itself, which cancellation may make
arbitrarily small. The tensor's largest entry is a cheap, honest stand-in for that scale. A
real bug moves entries by a sizeable fraction of ||r||_inf and is far above these tolerances
(the bug catalogue measures this).

Each constant was checked against the false-positive measurement in
``scripts/false_positive_rate.py`` (the README states its result).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch

__all__ = [
    "CONDITIONING_PROBES",
    "CONDITIONING_SAFETY",
    "FD_ERROR_SAFETY",
    "FD_STEP",
    "FD_TOLERANCE",
    "TOLERANCES",
    "Tolerance",
    "combine",
    "least_precise",
    "tolerance_for",
]


@dataclass(frozen=True)
class Tolerance:
    """|g - r| <= atol + rtol * ||r||_inf, elementwise; see the module docstring."""

    rtol: float
    atol: float

    def __post_init__(self) -> None:
        for name in ("rtol", "atol"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"Tolerance({name}={value!r}): expected a finite number >= 0")

    def allowed(self, scale: float) -> float:
        """The largest admissible |g_k - r_k| for a reference of inf-norm ``scale``."""
        return self.atol + self.rtol * scale


TOLERANCES: dict[torch.dtype, Tolerance] = {
    # float64 against a float64 reference: both sides round at eps = 2.2e-16; a depth-5,
    # width-16 network accumulates a few hundred roundings per entry at worst, ~1e-13
    # normwise. rtol 1e-9 leaves 4 orders of margin and still sees a float32 constant
    # (1e-8 relative, e.g. 0.01 rounded to float32) slipping into a float64 path.
    torch.float64: Tolerance(rtol=1e-9, atol=1e-12),
    # float32 against a float64 reference: eps = 1.2e-7; the same few hundred roundings
    # give ~1e-5 at worst. rtol 1e-4 is 1000 ulps: no correct case of the 10,000+ measured
    # exceeded it, while every catalogued bug errs by > 1e-2.
    torch.float32: Tolerance(rtol=1e-4, atol=1e-7),
    # float16 (eps 9.8e-4) and bfloat16 (eps 7.8e-3), meant for CUDA: about 10 ulps of
    # headroom over eps times depth. Not measured on this CPU-only machine.
    torch.float16: Tolerance(rtol=2e-2, atol=1e-4),
    torch.bfloat16: Tolerance(rtol=1e-1, atol=1e-3),
}
"""Tolerance for a gradient computed in a dtype, against a float64 autograd reference."""

FD_STEP = float(torch.finfo(torch.float64).eps) ** (1.0 / 3.0)
"""Relative step of central differences, eps^(1/3) = 6.06e-6 for float64.

(J(p + h) - J(p - h)) / 2h errs by h^2 J'''/6 (truncation) plus about eps |J| / h (rounding);
the sum is smallest at h ~ eps^(1/3), where both are ~eps^(2/3) = 4e-11 relative. The step for
an entry p is FD_STEP * max(1, |p|): relative to p's magnitude, so that p + h changes p's
float64 value by many ulps, and never below FD_STEP, so small entries still move."""

FD_TOLERANCE = Tolerance(rtol=1e-6, atol=1e-8)
"""Tolerance of a float64 finite-difference reference, itself accurate to about 1e-9 (see
FD_STEP): 1e-6 relative keeps a 1000x margin over that for smooth activations (gelu and silu
have J''' of order 1). ``atol`` is multiplied by (1 + |J|): the rounding part of the error
grows with the loss value, not with the gradient."""


FD_ERROR_SAFETY = 4.0
"""A finite difference counts as precise to FD_ERROR_SAFETY times its estimated truncation
error (refbp.verify.finite_diff: |third difference| / 6h). The estimate is the leading term of
the error, taken half a step off the point; where the third derivative of J changes fast (a
sigmoid near 1 under binary cross-entropy, where it grows like 1/(1 - p)^3) it can be off by a
factor of 1.3 at the steps used. 4 covers that with room to spare, and still lets a difference
confirm an entry wherever J is smooth on the scale of the step (there the estimate is ~1e-10
relative)."""

CONDITIONING_SAFETY = 4.0
"""A gradient is also allowed CONDITIONING_SAFETY times how far the float64 gradient moves when
every parameter, the input, and every intermediate and its gradient on the way back moves by
one rounding of the dtype under test (relative eps, random signs; CONDITIONING_PROBES times),
and, below float64, times the error torch's own autograd makes in that dtype. Where the problem
is ill-conditioned (dJ/dp of a confident bce output: relative condition 1/(1 - p), 1e13 at
p = 1 - 1e-13), or where a gradient is a sum of large terms that cancel (a bias feeding a
BatchNorm, which ignores shifts), no code computing in that dtype can do better: refbp's and
torch's results differ by rounding order only, and the factor absorbs it. Where the problem is
well conditioned both terms are negligible next to the normwise allowance."""

CONDITIONING_PROBES = 4
"""Random roundings per check, each one float64 autograd run (a few milliseconds on small
networks). The largest change over four probes seldom falls far below what rounding can do:
for a sum of two terms that cancel, the chance that all four jitters nearly cancel too (below a
sixth of the worst case, which CONDITIONING_SAFETY then still covers) is about 1e-4."""


def tolerance_for(dtype: torch.dtype) -> Tolerance:
    """The tolerance of gradients computed in ``dtype``; a clear error for other dtypes."""
    if dtype not in TOLERANCES:
        raise ValueError(f"no tolerance is defined for dtype {dtype}; expected one of {list(TOLERANCES)}")
    return TOLERANCES[dtype]


def least_precise(dtypes: Iterable[torch.dtype], default: torch.dtype) -> torch.dtype:
    """The dtype with the loosest tolerance among ``dtypes`` (``default`` if there is none):
    gradients of mixed dtypes are judged by their least precise one."""
    return max(dtypes, key=lambda d: tolerance_for(d).rtol, default=default)


def combine(a: Tolerance, b: Tolerance) -> Tolerance:
    """The looser of two tolerances, entry by entry: a float32 gradient checked against finite
    differences must allow both float32's rounding and the differences' own error."""
    return Tolerance(rtol=max(a.rtol, b.rtol), atol=max(a.atol, b.atol))
