"""Comparison records: one gradient against one reference, with everything a failure message,
a Markdown table and a JSON report need. Messages are built from the record, never from the
raw tensors, so all three say the same thing."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from .tolerances import Tolerance

__all__ = ["Comparison", "compare"]


@dataclass(frozen=True)
class Comparison:
    """One tensor checked against one reference.

    Attributes:
        name: the gradient's key, "W1", "b1", "z1", "a1", ..., "X" (dJ/d of that).
        reference: "autograd", "fd-full" or "fd-directional".
        shape: the shape of the gradient under test.
        expected_shape: the reference's shape (a mismatch fails the row).
        max_abs_error: max_k |g_k - r_k|.
        max_rel_error: max_k |g_k - r_k| / ||r||_inf: normwise relative error (inf when r is
            all zero and g is not; 0 when both are).
        scale: ||r||_inf, the reference's largest magnitude.
        worst_index: index of the element with the largest |g_k - r_k|.
        worst_value: g at worst_index.
        worst_reference: r at worst_index.
        n_mismatched: elements with |g_k - r_k| > allowed (NaN counts as mismatched).
        n_elements: elements compared.
        n_excluded: elements left out (finite differences that crossed a relu kink).
        rtol, atol, allowed: the tolerance and the resulting bound atol + rtol * scale.
        passed: the verdict.
        note: why it failed, when the numbers alone do not say (shape, NaN, missing).
    """

    name: str
    reference: str
    shape: tuple[int, ...]
    expected_shape: tuple[int, ...]
    max_abs_error: float
    max_rel_error: float
    scale: float
    worst_index: tuple[int, ...] | None
    worst_value: float | None
    worst_reference: float | None
    n_mismatched: int
    n_elements: int
    n_excluded: int
    rtol: float
    atol: float
    allowed: float
    passed: bool
    note: str = ""

    @property
    def margin(self) -> float:
        """max_abs_error / allowed: the row passes at <= 1. inf for a shape mismatch (nothing
        was allowed) and for any error where nothing was allowed; 0 for no error."""
        if self.allowed != self.allowed or self.max_abs_error != self.max_abs_error:  # NaN
            return math.inf
        if self.allowed > 0:
            return self.max_abs_error / self.allowed
        return 0.0 if self.max_abs_error == 0 else math.inf

    def message(self) -> str:
        """One paragraph in torch.testing's manner: what differs, by how much, where, what
        was allowed."""
        head = f"dJ/d{self.name} vs {self.reference}"
        if self.note and self.worst_index is None:
            return f"{head}: {self.note}"
        verdict = "ok" if self.passed else "MISMATCH"
        unit = "directional derivatives" if self.reference == "fd-directional" else "elements"
        text = (
            f"{head}: {verdict}, {self.n_mismatched} / {self.n_elements} {unit} differ by more than "
            f"{self.allowed:.3g} (atol {self.atol:.3g} + rtol {self.rtol:.3g} x max|ref| {self.scale:.3g}). "
            f"Greatest difference {self.max_abs_error:.3g} (normwise relative {self.max_rel_error:.3g}) "
            f"at index {self.worst_index}: got {self.worst_value:.10g}, reference {self.worst_reference:.10g}."
        )
        if self.n_excluded:
            text += f" {self.n_excluded} entries excluded (kink crossed)."
        if self.note:
            text += f" {self.note}"
        return text

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (inf and NaN as strings, tuples as lists)."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, float) and not math.isfinite(value):
                out[key] = str(value)
            elif isinstance(value, tuple):
                out[key] = list(value)
        return out


def compare(
    name: str,
    reference: str,
    g: Tensor,
    r: Tensor,
    tolerance: Tolerance,
    *,
    excluded: Tensor | None = None,
) -> Comparison:
    """Compare gradient ``g`` with reference ``r`` under ``tolerance`` (normwise rule).

    Both are compared in float64 on the CPU. ``excluded`` (bool, r's shape) marks entries to
    leave out, e.g. finite differences that crossed a kink. A shape mismatch gives a failing
    record with a note, never an exception: a forgotten transpose is a result, not a crash.
    """
    shape, expected = tuple(g.shape), tuple(r.shape)
    tol = tolerance
    if shape != expected:
        hint = " (transposed?)" if shape == expected[::-1] and len(shape) == 2 else ""
        return Comparison(
            name, reference, shape, expected, math.inf, math.inf, math.nan, None, None, None,
            int(r.numel()), int(r.numel()), 0, tol.rtol, tol.atol, math.nan, False,
            note=f"shape {shape} but the reference has shape {expected}{hint}",
        )  # fmt: skip
    g64 = g.detach().to(device="cpu", dtype=torch.float64)
    r64 = r.detach().to(device="cpu", dtype=torch.float64)
    keep = torch.ones_like(r64, dtype=torch.bool) if excluded is None else ~excluded.cpu()
    n_excluded = int((~keep).sum())
    diff = torch.where(keep, (g64 - r64).abs(), 0.0)
    diff = torch.where(torch.isnan(g64) & keep, math.inf, diff)  # NaN in g always fails
    r_kept = torch.where(keep, r64, 0.0)
    scale = float(r_kept.abs().max()) if r64.numel() else 0.0
    allowed = tol.allowed(scale)
    n_mismatched = int((diff > allowed).sum())
    n_elements = int(keep.sum())
    if r64.numel() == 0:
        return Comparison(name, reference, shape, expected, 0.0, 0.0, 0.0, None, None, None,
                          0, 0, 0, tol.rtol, tol.atol, allowed, True, note="empty tensor")  # fmt: skip
    flat = int(torch.argmax(diff))
    index = tuple(int(k) for k in torch.unravel_index(torch.tensor(flat), shape))
    max_abs = float(diff.reshape(-1)[flat])
    if scale > 0:
        max_rel = max_abs / scale
    else:
        max_rel = 0.0 if max_abs == 0 else math.inf
    note = ""
    if bool(torch.isnan(g64).any()) or bool(torch.isinf(g64).any()):
        note = "the gradient under test has NaN or inf entries."
    if n_elements == 0:
        note = "every entry was excluded: nothing was compared."
    return Comparison(
        name=name,
        reference=reference,
        shape=shape,
        expected_shape=expected,
        max_abs_error=max_abs,
        max_rel_error=max_rel,
        scale=scale,
        worst_index=index,
        worst_value=float(g64[index]),
        worst_reference=float(r64[index]),
        n_mismatched=n_mismatched,
        n_elements=n_elements,
        n_excluded=n_excluded,
        rtol=tol.rtol,
        atol=tol.atol,
        allowed=allowed,
        passed=n_mismatched == 0,
        note=note,
    )
