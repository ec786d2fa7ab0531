"""Comparison rows from what the references return: a finite-difference row (entry by entry, or
a directional row that projects the gradient on the directions), the user's loss against
refbp's, and a gradient a function did not return. Each is a refbp.verify.compare record, with
what its pattern says (refbp.verify.diagnose) in its note.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from .compare import Comparison, compare
from .diagnose import loss_note, with_diagnosis
from .fd_core import FDResult
from .inputs import as_tensor
from .tolerances import FD_TOLERANCE, Tolerance, combine

__all__ = ["fd_row", "fd_tolerance", "loss_row", "missing_row"]


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
        return row if sizes is None else with_diagnosis(row, g, fd.values, sizes)
    k = fd.directions.shape[0]
    if tuple(g.shape) != tuple(fd.directions.shape[1:]):
        return compare(name, reference, g, fd.directions[0], tol, directions=k)  # a failing shape row
    g64 = g.detach().to(device="cpu", dtype=torch.float64)
    projected = torch.tensordot(fd.directions, g64, dims=g64.dim())  # (k,)  v_k . g
    row = compare(name, reference, projected, fd.values, tol, excluded=fd.excluded, error=fd.error,
                  widened=widened, J_finite=J_finite, directions=k, shape=tuple(g.shape))  # fmt: skip
    return row if sizes is None else with_diagnosis(row, projected, fd.values, sizes)


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
