"""Comparison records: one gradient against one reference, entry by entry, with everything a
failure message, a Markdown table and a JSON report need. Messages are built from the record,
never from the raw tensors, so all three say the same thing.

**What an entry's comparison can say.** Each entry k of the gradient g under test is, against
one reference r (autograd, or finite differences with their error estimate e_k):

- *contradicted*: g_k is NaN or inf, or |g_k - r_k| > allowed + FD_ERROR_SAFETY e_k. The
  reference says g_k is wrong, even allowing for the reference's own error.
- *unverified*: the reference cannot say: r_k is NaN or inf (or J itself is), the finite
  difference was excluded (its perturbation crossed a piece boundary or left the loss's domain),
  or it is too imprecise (FD_ERROR_SAFETY e_k > allowed) to confirm g_k to the tolerance.
- *verified*: none of the above: |g_k - r_k| <= allowed.

A row's verdict: "mismatch" when any entry is contradicted; "unverified" when no entry is
verified (an empty tensor, every entry excluded, a NaN reference); "partial" when some are and
none is contradicted; "ok" when every entry is verified. Whether a tensor *passes* is decided
across its rows by refbp.verify.check: an entry must be verified by at least one reference and
contradicted by none.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from .tolerances import FD_ERROR_SAFETY, Tolerance

__all__ = ["VERDICTS", "Comparison", "compare", "quantity", "unravel"]

VERDICTS = ("ok", "partial", "unverified", "mismatch")
"""A row's possible verdicts, best first."""


@dataclass(frozen=True)
class Comparison:
    """One tensor checked against one reference.

    Attributes:
        name: the gradient's key, "W1", "b1", "z1", "a1", ..., "X" (dJ/d of that).
        reference: "autograd", "fd-full", "fd-directional" (or a caller's label).
        shape: the shape of the gradient under test.
        expected_shape: the reference's shape (a mismatch fails the row).
        max_abs_error: max_k |g_k - r_k| over the entries the reference could judge.
        max_rel_error: max_abs_error / ||r||_inf: normwise relative error (inf when r is all
            zero and g is not; 0 when both are).
        scale: ||r||_inf over the entries the reference could judge.
        worst_index: index of the entry with the largest |g_k - r_k| (None if none was judged).
        worst_value: g at worst_index.
        worst_reference: r at worst_index.
        n_mismatched: entries contradicted (NaN or inf in g counts).
        n_elements: entries (directions, for a directional row) in all.
        n_excluded: finite differences left out: their perturbation crossed a piece boundary.
        rtol, atol, allowed: the tolerance and the resulting bound atol + rtol * scale + widened.
        verdict: "ok", "partial", "unverified" or "mismatch" (see the module docstring).
        note: why it failed, when the numbers alone do not say (shape, NaN, missing).
        n_unverified: entries this reference could not verify, for whatever reason.
        n_nonfinite: entries whose reference value is NaN or inf.
        n_imprecise: finite differences too imprecise to confirm their entry.
        widened: extra allowance for the dtype's conditioning at this point (CONDITIONING_SAFETY
            x torch's own error in that dtype), included in ``allowed``.
        directions: for a directional row, the number of directions (``shape`` is the tensor's).
        ratio: max over the judged entries of |g_k - r_k| / (allowed + FD_ERROR_SAFETY e_k): an
            entry is contradicted above 1 (None: computed from max_abs_error and allowed).
        verified: bool mask of the entries verified (the reference's shape; (k,) for a
            directional row); not part of the JSON.
        evaluations: for a finite-difference row, the evaluations of J it cost (0 otherwise).
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
    verdict: str
    note: str = ""
    n_unverified: int = 0
    n_nonfinite: int = 0
    n_imprecise: int = 0
    widened: float = 0.0
    directions: int = 0
    ratio: float | None = None
    verified: Tensor | None = field(default=None, repr=False, compare=False)
    evaluations: int = 0

    @property
    def passed(self) -> bool:
        """The row contradicts nothing and verified something ("ok" or "partial")."""
        return self.verdict in ("ok", "partial")

    @property
    def margin(self) -> float:
        """How close the row came to a contradiction: max |g_k - r_k| / (allowed + the entry's
        finite-difference slack), contradicted above 1. inf for a shape mismatch (nothing was
        allowed) and for any error where nothing was allowed; 0 for no error."""
        if self.ratio is not None:
            return self.ratio
        if self.allowed != self.allowed or self.max_abs_error != self.max_abs_error:  # NaN
            return math.inf
        if self.allowed > 0:
            return self.max_abs_error / self.allowed
        return 0.0 if self.max_abs_error == 0 else math.inf

    def unverified_reasons(self) -> str:
        """Why entries went unverified, in words: "2 excluded (...), 1 non-finite reference"."""
        unit = "directions" if self.directions else "entries"
        parts = []
        if self.n_excluded:
            parts.append(f"{self.n_excluded} excluded (the perturbation crossed a piece boundary or left the domain)")
        if self.n_nonfinite:
            parts.append(f"{self.n_nonfinite} with a NaN or inf reference")
        if self.n_imprecise:
            parts.append(f"{self.n_imprecise} where finite differences are too imprecise to confirm them")
        other = self.n_unverified - self.n_excluded - self.n_nonfinite - self.n_imprecise
        if other > 0:
            parts.append(f"{other} not judged ({self.note.rstrip('.') or 'see note'})")
        return f"{self.n_unverified} {unit} unverified: " + "; ".join(parts) if parts else ""

    def message(self) -> str:
        """One paragraph in torch.testing's manner: what differs, by how much, where, what
        was allowed, and what could not be verified."""
        shape = "x".join(str(s) for s in self.shape) or "()"
        head = f"{quantity(self.name)} vs {self.reference}"
        if self.directions:  # the tensor's shape, then how many directions stand for it
            head = f"{quantity(self.name)} ({shape}, {self.directions} directions) vs {self.reference}"
        if self.note and self.worst_index is None and self.verdict == "mismatch":
            return f"{head}: MISMATCH, {self.note}"
        unit = "directional derivatives" if self.directions else "elements"
        if self.verdict == "unverified" and self.worst_index is None:
            reasons = self.unverified_reasons() or self.note
            return f"{head}: UNVERIFIED, none of {self.n_elements} {unit} could be verified. {reasons}."
        verdict = {"ok": "ok", "partial": "ok (partly)", "unverified": "UNVERIFIED", "mismatch": "MISMATCH"}
        text = (
            f"{head}: {verdict[self.verdict]}, {self.n_mismatched} / {self.n_elements} {unit} "
            f"differ by more than {self.allowed:.3g} (atol {self.atol:.3g} + rtol {self.rtol:.3g} x max|ref| "
            f"{self.scale:.3g}{self._widened_text()}). Greatest difference {self.max_abs_error:.3g} (normwise relative "
            f"{self.max_rel_error:.3g}) at index {self.worst_index}: got {self.worst_value:.10g}, "
            f"reference {self.worst_reference:.10g}."
        )
        if self.n_unverified:
            text += f" {self.unverified_reasons()}."
        if self.note:
            text += f" {self.note}"
        return text

    def _widened_text(self) -> str:
        """The conditioning allowance, when it is a tenth of the rest or more (else it is noise)."""
        rest = self.allowed - self.widened
        return f" + {self.widened:.3g} for the conditioning here" if self.widened > 0.1 * rest else ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (inf and NaN as strings, tuples as lists); no tensors."""
        out = asdict(self)
        del out["verified"]
        out["passed"] = self.passed
        for key, value in out.items():
            if isinstance(value, float) and not math.isfinite(value):
                out[key] = str(value)
            elif isinstance(value, tuple):
                out[key] = list(value)
        return out


def unravel(flat: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The index into ``shape`` of flat (row-major) position ``flat``."""
    index = []
    for size in reversed(shape):
        flat, k = divmod(flat, size)
        index.append(k)
    return tuple(reversed(index))


def quantity(name: str) -> str:
    """How a row's name reads: "dJ/dW1" for a gradient's key, the name itself for J and for a
    second-order row (its name says what it is: "Hv[W1]", "R{a2}", "R{dJ/dz1}")."""
    return name if name == "J" or name.startswith(("Hv[", "R{")) else f"dJ/d{name}"


def compare(
    name: str,
    reference: str,
    g: Tensor,
    r: Tensor,
    tolerance: Tolerance,
    *,
    excluded: Tensor | None = None,
    error: Tensor | None = None,
    widened: float = 0.0,
    J_finite: bool = True,
    directions: int = 0,
    shape: tuple[int, ...] | None = None,
) -> Comparison:
    """Compare gradient ``g`` with reference ``r`` under ``tolerance`` (normwise rule), entry by
    entry, as the module docstring says.

    Args:
        excluded: bool, r's shape: entries the reference cannot judge (a crossed piece boundary).
        error: r's estimated error per entry (finite differences), or None for an exact reference.
        widened: extra allowance added to atol + rtol * scale (the dtype's conditioning).
        J_finite: False when the loss at this point is NaN or inf: nothing can be verified.
        directions: for a directional row, the number of directions (g and r are then (k,)).
        shape: the shape to report for g (a directional row reports the tensor's).

    Both are compared in float64 on the CPU. A shape mismatch gives a failing record with a
    note, never an exception: a forgotten transpose is a result, not a crash.
    """
    tol = tolerance
    shown = tuple(g.shape) if shape is None else shape
    expected = tuple(r.shape)
    if tuple(g.shape) != expected:
        hint = " (transposed?)" if tuple(g.shape) == expected[::-1] and len(expected) == 2 else ""
        return Comparison(
            name, reference, shown, expected, math.inf, math.inf, math.nan, None, None, None,
            int(r.numel()), int(r.numel()), 0, tol.rtol, tol.atol, math.nan, "mismatch",
            note=f"shape {tuple(g.shape)} but the reference has shape {expected}{hint}",
            directions=directions, verified=torch.zeros(expected, dtype=torch.bool),
        )  # fmt: skip
    g64 = g.detach().to(device="cpu", dtype=torch.float64)
    r64 = r.detach().to(device="cpu", dtype=torch.float64)
    if excluded is not None and not bool(excluded.any()):
        excluded = None  # finite differences that crossed nothing (the common case): nothing to leave out
    if (
        r64.numel()
        and J_finite
        and excluded is None
        and bool(torch.isfinite(g64).all())
        and bool(torch.isfinite(r64).all())
    ):
        return _compare_finite(name, reference, g64, r64, tol, error, widened, directions, shown)
    return _compare_masked(name, reference, g64, r64, tol, excluded, error, widened, J_finite, directions, shown)


def _compare_masked(
    name: str,
    reference: str,
    g64: Tensor,
    r64: Tensor,
    tol: Tolerance,
    excluded: Tensor | None,
    error: Tensor | None,
    widened: float,
    J_finite: bool,
    directions: int,
    shown: tuple[int, ...],
) -> Comparison:
    """``compare``'s general path, for any g, r (float64, CPU, one shape), excluded entries, J:
    each entry judged through the masks of what the reference can judge (module docstring)."""
    n = int(r64.numel())
    expected = tuple(r64.shape)
    bad_g = ~torch.isfinite(g64)  # NaN or inf in the gradient under test: always wrong
    finite_r = torch.isfinite(r64)
    usable = finite_r.clone() if J_finite else torch.zeros_like(finite_r)
    if excluded is not None:
        usable &= ~excluded.cpu()
    scale = float(r64[usable].abs().max()) if bool(usable.any()) else 0.0
    allowed = tol.allowed(scale) + widened
    diff = torch.where(usable, (g64 - r64).abs(), 0.0)
    slack = FD_ERROR_SAFETY * error.cpu() if error is not None else torch.zeros_like(r64)
    contradicted = bad_g | (usable & (diff > allowed + slack))
    imprecise = usable & ~contradicted & (slack > allowed)
    verified = usable & ~contradicted & ~imprecise
    n_mismatched = int(contradicted.sum())
    n_excluded = 0 if excluded is None else int((excluded.cpu() & finite_r & ~bad_g).sum()) if J_finite else 0
    n_nonfinite = int((~finite_r & ~bad_g).sum()) if J_finite else 0
    notes = []
    if n == 0:
        notes.append("the tensor is empty: nothing was compared.")
    if not J_finite:
        notes.append("the loss J is NaN or inf at this point: its gradient is not defined.")
    if bool(bad_g.any()):
        notes.append(f"the gradient under test has {int(bad_g.sum())} NaN or inf entries.")
    judged = usable | bad_g
    max_abs, worst, ratio = 0.0, None, 0.0
    if bool(judged.any()):
        badness = torch.where(judged, torch.where(bad_g, math.inf, diff), -1.0)
        flat = int(torch.argmax(badness))
        worst = unravel(flat, expected)
        max_abs = float(badness.reshape(-1)[flat])
        bound = slack + allowed
        ratios = torch.where(bound > 0, badness / bound, torch.where(badness > 0, math.inf, 0.0))
        ratio = float(torch.where(judged, ratios, 0.0).max())
    return _record(
        name, reference, shown, g64, r64, tol, widened, directions, scale=scale, allowed=allowed, verified=verified,
        n_mismatched=n_mismatched, n_imprecise=int(imprecise.sum()), n_excluded=n_excluded, n_nonfinite=n_nonfinite,
        worst=worst, max_abs=max_abs, ratio=ratio, note=" ".join(notes),
    )  # fmt: skip


def _compare_finite(
    name: str,
    reference: str,
    g64: Tensor,
    r64: Tensor,
    tol: Tolerance,
    error: Tensor | None,
    widened: float,
    directions: int,
    shown: tuple[int, ...],
) -> Comparison:
    """``compare`` where it is the most common case: g and r finite and not empty, J finite,
    nothing excluded, so that every entry is judged. The same rules as the general path, written
    without the masks that are all true here (about a third of its tensor operations: a check
    of a small GPT compares 378 rows). tests/test_compare.py holds the two paths equal."""
    diff = (g64 - r64).abs()  # |g_k - r_k|
    scale = float(r64.abs().max())  # ||r||_inf
    allowed = tol.allowed(scale) + widened
    flat = int(torch.argmax(diff))
    worst = unravel(flat, tuple(r64.shape))
    max_abs = float(diff.reshape(-1)[flat])
    if error is None:  # an exact reference: contradicted above allowed, verified otherwise
        n_mismatched, n_imprecise = int((diff > allowed).sum()), 0
        verified = diff <= allowed
        ratio = max_abs / allowed if allowed > 0 else (math.inf if max_abs > 0 else 0.0)
    else:
        slack = FD_ERROR_SAFETY * error.cpu()
        bound = slack + allowed
        contradicted = diff > bound
        imprecise = ~contradicted & (slack > allowed)
        verified = ~contradicted & ~imprecise
        n_mismatched, n_imprecise = int(contradicted.sum()), int(imprecise.sum())
        ratios = torch.where(bound > 0, diff / bound, torch.where(diff > 0, math.inf, 0.0))
        ratio = float(ratios.max())
    return _record(
        name, reference, shown, g64, r64, tol, widened, directions, scale=scale, allowed=allowed, verified=verified,
        n_mismatched=n_mismatched, n_imprecise=n_imprecise, n_excluded=0, n_nonfinite=0,
        worst=worst, max_abs=max_abs, ratio=ratio, note="",
    )  # fmt: skip


def _record(
    name: str,
    reference: str,
    shown: tuple[int, ...],
    g64: Tensor,
    r64: Tensor,
    tol: Tolerance,
    widened: float,
    directions: int,
    *,
    scale: float,
    allowed: float,
    verified: Tensor,
    n_mismatched: int,
    n_imprecise: int,
    n_excluded: int,
    n_nonfinite: int,
    worst: tuple[int, ...] | None,
    max_abs: float,
    ratio: float,
    note: str,
) -> Comparison:
    """The Comparison both paths of ``compare`` end with: the verdict from the counts (module
    docstring), the worst entry's values, the normwise relative error."""
    n = int(r64.numel())
    n_verified = int(verified.sum())
    n_unverified = n - n_verified - n_mismatched
    if n_mismatched:
        verdict = "mismatch"
    elif n_verified == 0:
        verdict = "unverified"
    else:
        verdict = "partial" if n_unverified else "ok"
    return Comparison(
        name=name,
        reference=reference,
        shape=shown,
        expected_shape=tuple(r64.shape),
        max_abs_error=max_abs,
        max_rel_error=max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf),
        scale=scale,
        worst_index=worst,
        worst_value=None if worst is None else float(g64[worst]),
        worst_reference=None if worst is None else float(r64[worst]),
        n_mismatched=n_mismatched,
        n_elements=n,
        n_excluded=n_excluded,
        rtol=tol.rtol,
        atol=tol.atol,
        allowed=allowed,
        verdict=verdict,
        note=note,
        n_unverified=n_unverified,
        n_nonfinite=n_nonfinite,
        n_imprecise=n_imprecise,
        widened=widened,
        directions=directions,
        ratio=ratio,
        verified=verified,
    )
