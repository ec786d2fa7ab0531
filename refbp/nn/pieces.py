"""Pieces: where a function changes formula, so that finite differences know where not to look.

A central difference (J(p + h) - J(p - h)) / 2h is only the derivative when J has one formula
on [p - h, p + h]. relu changes formula at 0, softplus at its threshold, elu's second
derivative jumps at 0, and binary cross-entropy clamps its logarithms: a difference whose step
straddles such a boundary measures a mixture of two slopes, not a derivative. Every activation
and loss that is defined piecewise says where its pieces meet; the finite-difference engine
records which piece each input entry is in at the base point and flags any perturbation that
moves an entry into another piece (refbp.verify.finite_diff). Those entries are *excluded*:
neither verified nor contradicted by finite differences.

Some functions also have inputs no finite difference can resolve (``unresolvable``): where
torch's derivative is a convention rather than a limit of difference quotients (binary
cross-entropy's backward divides by max(p (1 - p), 1e-12), not the derivative of its value
once p (1 - p) < 1e-12), or where J's own value has lost the digits a difference needs (log(1 - p)
of a p that float64 stores to 1e-16, within 1e-4 of 1). No difference quotient can verify a
gradient that flows through such an entry, so while any entry is there, every difference is
excluded.

Normalisations have no boundaries but a length over which they stay nearly linear: a row (or
a feature) of spread sigma is normalised by 1/sqrt(sigma^2 + eps), curving on the scale of
sqrt(sigma^2 + eps) (``scale``). A row of nearly equal numbers, or one an earlier
normalisation has already amplified, turns a finite-difference step into a move across that
curve; a difference whose perturbation moves such an input by more than SMOOTH_FRACTION of its
scale is excluded too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["SMOOTH_FRACTION", "Pieces"]

SMOOTH_FRACTION = 1e-2
"""A perturbation may move the input of a normalisation by at most this fraction of the scale
it curves on: the difference's truncation error then stays below about 1e-4 relative, where
its Richardson estimate (refbp.verify.finite_diff) is still a sound bound; beyond, excluded."""


@dataclass(frozen=True)
class Pieces:
    """Where an elementwise function of t changes formula.

    Attributes:
        boundaries: the values of t at which the formula changes, ascending (relu: (0,)).
        description: the boundaries in words, for messages ("z = 0", "z = 20").
        region: t -> an integer tensor numbering the piece each entry is in; by default the
            number of boundaries strictly below t. Give one when the pieces are not intervals
            of t (binary cross-entropy's clamps).
        unresolvable: t -> bool tensor, True where no finite difference can verify the
            derivative (see the module docstring); None when there is no such point.
        scale: t -> a tensor of t's shape: how far each entry may move before the function
            curves (a normalisation's sqrt(variance + eps)); None for no such limit.
    """

    boundaries: tuple[float, ...]
    description: str
    region: Callable[[Tensor], Tensor] | None = None
    unresolvable: Callable[[Tensor], Tensor] | None = None
    scale: Callable[[Tensor], Tensor] | None = None

    def region_of(self, t: Tensor) -> Tensor:
        """The piece each entry of ``t`` is in, an integer tensor of t's shape."""
        if self.region is not None:
            return self.region(t)
        out = torch.zeros(t.shape, dtype=torch.int8, device=t.device)
        for boundary in self.boundaries:
            out = out + (t > boundary).to(torch.int8)
        return out

    def distance(self, t: Tensor) -> float:
        """The smallest |t - boundary| over every entry and boundary (inf without boundaries)."""
        if not self.boundaries or t.numel() == 0:
            return float("inf")
        return min(float((t - boundary).abs().min()) for boundary in self.boundaries)
