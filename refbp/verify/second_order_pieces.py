"""Where a second-order check cannot judge: kinks and piece crossings, as the oracle reports them.

Every layer's torch oracle tells its Tap about each input of a piecewise function (relu's z
inside a Dense, an Elementwise, a Residual or a recurrent cell; a max-pool's windows; the loss's
hinge or clamps), so these questions are answered the same way for every layer, never by its type:

- **on a kink**: an input sits exactly on a boundary of its pieces (relu's z == 0, the hinge's
  margin - z_y + z_j == 0) or, for pieces that are not intervals (a max-pool's windows), on a
  tie (two entries of a window equal to its maximum: the first maximum takes the gradient by
  convention). There J's gradient is not differentiable: H v is undefined, and what every
  route returns (f''(0) = 0, the first maximum's R{x}) is a convention, not a derivative. Each
  layer's ``Layer.kinks`` adds what its own forward pass saw (a max-pool's ``ties``).
  *Every* entry of H v is then left unverified, not only some: a kink at z(l)[n, j] makes
  f'(z(l)[n, j]) jump, which reaches every parameter's gradient through
  dJ/da(l-1)[n] = dJ/dz(l)[n] W(l) below and through a(l)[n, j] = f(z(l)[n, j]) above.
- **crossed**: a step +-h v, +-2h v of the gradient differences moves an input into another
  piece, out of the loss's domain, or too far along a normalisation's curve
  (refbp.verify.fd_core.PieceWatcher): the differences then measure a mixture of two pieces'
  curvatures, and that reference leaves its entries unverified.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..nn.keys import Key
from ..nn.layer import Params
from ..nn.network import Network
from ..nn.pieces import Pieces
from .fd_core import PieceRecorder, PieceWatcher

__all__ = ["KINK_NOTE", "KINK_NUDGE", "PieceReport", "crossed_at", "pieces_at"]

KINK_NUDGE = 8.0
"""A tie of pieces that are not intervals (a max-pool window's maximum held twice) shows as a
change of piece when every entry is nudged by up to KINK_NUDGE float64 ulps of (|t| + 1), one
way or the other: entries that far apart are a tie to any difference step as well. Eight ulps
keep two maxima that differ by a genuine rounding (one ulp or two) on the safe side."""

KINK_NOTE = "the point is exactly on a kink ({where}): the second derivative is undefined there"
"""The note a row gets when its entries are left unverified for a kink."""

Noise = Mapping[tuple[int, ...], Tensor]


class _KinkRecorder(PieceRecorder):
    """The base run's PieceRecorder that also notes every piecewise input exactly on a kink."""

    def __init__(self, generator: torch.Generator) -> None:
        super().__init__()
        self.generator = generator
        self.kinks: list[str] = []

    def piecewise(self, t: Tensor, pieces: Pieces) -> None:
        super().piecewise(t, pieces)
        if _on_kink(t.detach(), pieces, self.generator):
            self.kinks.append(pieces.description)


def _on_kink(t: Tensor, pieces: Pieces, generator: torch.Generator) -> bool:
    """True when some entry of ``t`` sits on a boundary, or (pieces that are not intervals) on a tie."""
    if t.numel() == 0:
        return False
    if pieces.boundaries:
        return any(bool((t == boundary).any()) for boundary in pieces.boundaries)
    if pieces.region is None:  # one piece (a normalisation's scale only): nowhere to change
        return False
    u = torch.rand(t.shape, dtype=torch.float64, generator=generator).to(t.device).mul_(2.0).sub_(1.0)
    nudge = (KINK_NUDGE * torch.finfo(torch.float64).eps) * (t.abs().to(torch.float64) + 1.0) * u  # +- a few ulps
    base = pieces.region_of(t)
    return any(not torch.equal(pieces.region_of((t + s * nudge).to(t.dtype)), base) for s in (1.0, -1.0))


@dataclass
class PieceReport:
    """What the oracle reported at the checked point.

    Attributes:
        recorder: the pieces of every piecewise input, in call order (a PieceWatcher's base).
        kinks: where an input sits exactly on a kink, in words ("z = 0", "layer 2: a2"), once each.
    """

    recorder: PieceRecorder
    kinks: list[str] = field(default_factory=list)

    @property
    def note(self) -> str:
        return KINK_NOTE.format(where=", ".join(self.kinks))


def pieces_at(
    net: Network, X: Tensor, y: Tensor, params: Mapping[str, Tensor], noise: Noise, cache: Any, *, seed: int = 0
) -> PieceReport:
    """The oracle's pieces at (params, X) with the dropout masks ``noise``, and the kinks it sits
    on, from the oracle's reports and from each layer's own ``kinks`` of the forward pass ``cache``."""
    recorder = _KinkRecorder(torch.Generator().manual_seed(seed))
    with torch.no_grad():
        net.torch_J(X, y, _params(net, params), noise, recorder)
    kinks = list(dict.fromkeys(recorder.kinks))
    for l, layer in enumerate(net.layers, start=1):
        for key, mask in layer.kinks(cache.saved[l], (l,)).items():
            if bool(mask.any()):
                kinks.append(f"{key}: {int(mask.sum())} entries")
    return PieceReport(recorder, kinks)


def crossed_at(
    net: Network, X: Tensor, y: Tensor, params: Mapping[str, Tensor], noise: Noise, base: PieceReport
) -> bool:
    """True when the oracle at (params, X) has some piecewise input in another piece than at the
    base point, out of the loss's domain, or too far along a normalisation's curve."""
    watcher = PieceWatcher(base.recorder)
    with torch.no_grad():
        net.torch_J(X, y, _params(net, params), noise, watcher)
    return bool(watcher.crossed)


def _params(net: Network, params: Mapping[str, Tensor]) -> Params:
    return Params({Key.parse(name): t for name, t in params.items()}, net.ties)
