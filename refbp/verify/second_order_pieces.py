"""Where a second-order check cannot judge: kinks and piece crossings, as the oracle reports them.

Every layer's torch oracle tells its Tap about each input of a piecewise function (relu's z
inside a Dense, an Elementwise, a Residual or a recurrent cell; a max-pool's windows; the loss's
hinge or clamps), so these questions are answered the same way for every layer, never by its type:

- **on a kink**: an input sits exactly on a boundary of its pieces (relu's z == 0, the hinge's
  margin - z_y + z_j == 0) or, for pieces that are not intervals (a max-pool's windows), on a
  tie (two entries of a window equal to its maximum: the first maximum takes the gradient by
  convention), and some step along v moves it off. There J's gradient is not differentiable
  along v: H v is undefined, and what every route returns (f''(0) = 0, the first maximum's
  R{x}) is a convention, not a derivative. An entry that stays on its kink all along the steps
  (relu of a dropout-zeroed entry: 0 whatever the weights) is no kink along v. (The oracle sees
  every kink ``Layer.kinks`` reports, nested layers' too, and can tell whether v moves it.)
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

import torch
from torch import Tensor

from ..nn.keys import Key
from ..nn.layer import Params, Tap
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
    """The base run's PieceRecorder that also keeps, for each piecewise input, the mask of its
    entries exactly on a kink (None when there is none) and the nudge that found a tie."""

    def __init__(self, generator: torch.Generator) -> None:
        super().__init__()
        self.generator = generator
        self.masks: list[Tensor | None] = []
        self.nudges: list[Tensor | None] = []
        self.descriptions: list[str] = []

    def piecewise(self, t: Tensor, pieces: Pieces) -> None:
        super().piecewise(t, pieces)
        tie_test = not pieces.boundaries and pieces.region is not None
        u = torch.rand(t.shape, dtype=torch.float64, generator=self.generator) * 2.0 - 1.0 if tie_test else None
        mask = _kink_mask(t.detach(), pieces, u)
        self.masks.append(mask if mask is not None and bool(mask.any()) else None)
        self.nudges.append(u)
        self.descriptions.append(pieces.description)


class _KinkWatcher(Tap):
    """A run at a moved point w + s v: which of the base's kinked inputs have an entry that left its kink."""

    def __init__(self, base: _KinkRecorder) -> None:
        self.base = base
        self.k = 0
        self.moved: set[int] = set()

    def piecewise(self, t: Tensor, pieces: Pieces) -> None:
        k, self.k = self.k, self.k + 1
        on_kink = self.base.masks[k]
        if on_kink is None:
            return
        still = _kink_mask(t.detach(), pieces, self.base.nudges[k])
        if still is None or bool((on_kink & ~still.to(on_kink.device)).any()):
            self.moved.add(k)


def _kink_mask(t: Tensor, pieces: Pieces, u: Tensor | None) -> Tensor | None:
    """The entries of ``t`` on a boundary (t's shape) or, for pieces that are not intervals, the
    pieces that change under a nudge of +- a few ulps along ``u`` (region_of's shape): a tie."""
    if t.numel() == 0:
        return None
    if pieces.boundaries:
        mask = torch.zeros(t.shape, dtype=torch.bool, device=t.device)
        for boundary in pieces.boundaries:
            mask |= t == boundary
        return mask
    if pieces.region is None or u is None:  # one piece (a normalisation's scale only): nowhere to change
        return None
    nudge = (KINK_NUDGE * torch.finfo(torch.float64).eps) * (t.abs().to(torch.float64) + 1.0) * u.to(t.device)
    base = pieces.region_of(t)
    up, down = (pieces.region_of((t + s * nudge).to(t.dtype)) for s in (1.0, -1.0))
    return (up != base) | (down != base)


@dataclass
class PieceReport:
    """What the oracle reported at the checked point.

    Attributes:
        recorder: the pieces of every piecewise input, in call order (a PieceWatcher's base).
        kinks: the piecewise inputs with an entry exactly on a kink that moves off it along v,
            in words ("z = 0", ...), once each.
        pinned: how many piecewise inputs have entries on a kink that stay there all along the
            difference steps (a dropped entry, 0 whatever the weights): no kink along v.
    """

    recorder: PieceRecorder
    kinks: list[str] = field(default_factory=list)
    pinned: int = 0

    @property
    def note(self) -> str:
        return KINK_NOTE.format(where=", ".join(self.kinks))


def pieces_at(
    net: Network, X: Tensor, y: Tensor, params: Mapping[str, Tensor], noise: Noise,
    v: Mapping[str, Tensor], h: float, *, seed: int = 0,
) -> PieceReport:  # fmt: skip
    """The oracle's pieces at (params, X) with the dropout masks ``noise``, and the kinks it sits
    on along v: an entry on a kink counts when some step +-h v, +-2h v (the gradient differences'
    points) moves it off; one that stays (a dropout-zeroed input of relu) is no kink along v, its
    gradient the same on every side."""
    recorder = _KinkRecorder(torch.Generator().manual_seed(seed))
    with torch.no_grad():
        net.torch_J(X, y, _params(net, params), noise, recorder)
    on_kink = {k for k, mask in enumerate(recorder.masks) if mask is not None}
    if not on_kink or h == 0.0:
        return PieceReport(recorder, [], len(on_kink))
    moved: set[int] = set()
    for step in (h, -h, 2 * h, -2 * h):
        watcher = _KinkWatcher(recorder)
        moved_params = {name: p + step * v[name] if name in v else p for name, p in params.items()}
        Xs = X + step * v["X"] if "X" in v and X.is_floating_point() else X
        with torch.no_grad():
            net.torch_J(Xs, y, _params(net, moved_params), noise, watcher)
        moved |= watcher.moved
    kinks = list(dict.fromkeys(recorder.descriptions[k] for k in sorted(moved)))
    return PieceReport(recorder, kinks, len(on_kink - moved))


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
