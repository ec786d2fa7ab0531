"""Comparison rows from what the references return: a finite-difference row (entry by entry, or
a directional row that projects the gradient on the directions), the user's loss against
refbp's, and a gradient a function did not return. Each is a refbp.verify.compare record, with
what its pattern says (refbp.verify.diagnose) in its note.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .compare import Comparison, compare
from .diagnose import loss_note, with_diagnosis
from .fd_core import FDResult
from .inputs import as_tensor
from .tolerances import FD_ERROR_SAFETY, FD_TOLERANCE, Tolerance, combine

__all__ = ["FDJudge", "fd_row", "fd_settled", "fd_tolerance", "loss_row", "missing_row"]


def fd_tolerance(J: float) -> Tolerance:
    """FD_TOLERANCE with its atol scaled by (1 + |J|) (see refbp.verify.tolerances.FD_TOLERANCE)."""
    return Tolerance(rtol=FD_TOLERANCE.rtol, atol=FD_TOLERANCE.atol * (1.0 + abs(J)))


def fd_row(
    name: str,
    g: Tensor,
    fd: FDResult,
    mode: str,
    tol: Tolerance,
    widened: float,
    *,
    scale_tol: bool = True,
    sizes: Mapping[str, int] | None = None,
) -> Comparison:
    """``g`` against finite differences ``fd``: entry by entry, or, for a directional result,
    v_k . g against each difference D_v. ``scale_tol`` widens ``tol`` by FD_TOLERANCE (the
    differences' own accuracy); ``sizes`` (N, d_L) lets a mismatch be diagnosed."""
    if scale_tol:
        tol = combine(tol, fd_tolerance(fd.J if math.isfinite(fd.J) else 0.0))
    reference = f"fd-{mode}"
    J_finite = math.isfinite(fd.J)
    if fd.directions is None:
        row = compare(name, reference, g, fd.values, tol, excluded=fd.excluded, error=fd.error, widened=widened,
                      J_finite=J_finite)  # fmt: skip
        row = row if sizes is None else with_diagnosis(row, g, fd.values, sizes)
        return dataclasses.replace(row, evaluations=fd.evaluations)
    k = fd.directions.shape[0]
    if tuple(g.shape) != tuple(fd.directions.shape[1:]):  # a failing shape row
        row = compare(name, reference, g, fd.directions[0], tol, directions=k)
        return dataclasses.replace(row, evaluations=fd.evaluations)
    g64 = g.detach().to(device="cpu", dtype=torch.float64)
    projected = torch.tensordot(fd.directions, g64, dims=g64.dim())  # (k,)  v_k . g
    row = compare(name, reference, projected, fd.values, tol, excluded=fd.excluded, error=fd.error,
                  widened=widened, J_finite=J_finite, directions=k, shape=tuple(g.shape))  # fmt: skip
    row = row if sizes is None else with_diagnosis(row, projected, fd.values, sizes)
    return dataclasses.replace(row, evaluations=fd.evaluations)


def fd_settled(
    g: Tensor, values: Tensor, excluded: Tensor, directions: Tensor | None, tol: Tolerance, widened: float, J: float
) -> Tensor:
    """bool, like ``values``: the differences D(h) that decide their entry (or direction) without
    an error estimate (refbp.verify.fd_core's cheap pass): D(h) and g agree to within
    allowed / FD_ERROR_SAFETY, the allowance ``fd_row`` will apply (its tolerance and scale).

    Why D(h) alone may confirm g there: if g is right, |g - D(h)| *is* the difference's error,
    so the error estimate would find it at most allowed / FD_ERROR_SAFETY, and the entry would be
    verified with it too; if g is wrong, D(h) agrees with it only when the difference's error
    cancels g's to within that fraction of the allowance. Nothing else is settled: an entry that
    may be contradicted, or that D(h) does not confirm, gets its error estimate (D(2h)), and so
    the rule that contradicts an entry is unchanged."""
    if not math.isfinite(J):
        return torch.zeros(values.shape, dtype=torch.bool)
    g64 = g.detach().to(device="cpu", dtype=torch.float64)
    if directions is not None:
        if tuple(g64.shape) != tuple(directions.shape[1:]):
            return torch.zeros(values.shape, dtype=torch.bool)
        g64 = torch.tensordot(directions, g64, dims=g64.dim())  # (k,)  v_k . g
    if tuple(g64.shape) != tuple(values.shape):
        return torch.zeros(values.shape, dtype=torch.bool)
    tol = combine(tol, fd_tolerance(J))
    usable = torch.isfinite(values) & ~excluded.cpu()
    scale = float(values[usable].abs().max()) if bool(usable.any()) else 0.0  # as compare's scale
    allowed = tol.allowed(scale) + widened
    return usable & torch.isfinite(g64) & ((g64 - values).abs() <= allowed / FD_ERROR_SAFETY)


@dataclass(frozen=True)
class FDJudge:
    """How ``fd_row`` will judge one tensor's finite differences, asked ahead of the row, while
    they are taken (refbp.verify.finite_diff): which differences D(h) decides alone, and whether
    a result decides the tensor at all.

    Attributes:
        g: the gradient under test, in refbp's layout (the differences' own).
        tol: its dtype's tolerance (fd_row widens it by FD_TOLERANCE).
        widened: the conditioning allowance.
    """

    g: Tensor
    tol: Tolerance
    widened: float

    def settled(self, values: Tensor, excluded: Tensor, directions: Tensor | None, J: float) -> Tensor:
        """``fd_settled`` for this tensor (fd_core.Settle)."""
        return fd_settled(self.g, values, excluded, directions, self.tol, self.widened, J)

    def decides(self, fd: FDResult) -> bool:
        """True when the row of ``fd`` will verify or contradict something: not "unverified"
        (every difference excluded or too imprecise), where more directions may still decide."""
        mode = "full" if fd.directions is None else "directional"
        return fd_row("", self.g, fd, mode, self.tol, self.widened).verdict != "unverified"


def loss_row(J: float | Tensor | np.ndarray, J_ref: float, tol: Tolerance, sizes: Mapping[str, int]) -> Comparison:
    """The user's loss against refbp's (float64, torch's functions), with what a mismatch means."""
    value = as_tensor(J, "J").to(torch.float64).reshape(-1)
    if value.numel() != 1:
        raise ValueError(f"J must be your loss, one number; got an array of {value.numel()} entries")
    row = compare("J", "torch", value.reshape(()), torch.tensor(J_ref, dtype=torch.float64), tol)
    if row.verdict != "mismatch" or J_ref == 0 or not math.isfinite(J_ref):
        return row
    note = loss_note(float(value[0]) / J_ref, sizes)
    return dataclasses.replace(row, note=note)


def missing_row(name: str, fd: FDResult, mode: str, tol: Tolerance) -> Comparison:
    """A failing row for a gradient ``fn`` did not return (check_function)."""
    shape = tuple(fd.values.shape) if fd.directions is None else tuple(fd.directions.shape[1:])
    return Comparison(
        name, f"fd-{mode}", (), shape, math.inf, math.inf, math.nan, None, None, None,
        0, 0, 0, tol.rtol, tol.atol, math.nan, "mismatch", note="fn returned no gradient for it",
    )  # fmt: skip
