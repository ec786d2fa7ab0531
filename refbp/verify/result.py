"""The outcome of a check: a verdict per tensor from the comparison rows, and the one result
record that the failure message, the Markdown table and the JSON are all built from.

**When a gradient passes.** Every entry must be verified by at least one reference and
contradicted by none (refbp.verify.compare says what each can say). A tensor fails as a
*mismatch* when some reference contradicts an entry, and as *unverified* when some entry was
verified by no reference: a NaN reference, a loss that is itself NaN or inf, finite
differences excluded at a piece boundary with no autograd row to cover them, an empty tensor.
"passed" therefore always means "verified".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tabulate import tabulate
from torch import Tensor

from .compare import Comparison, quantity

__all__ = ["CheckResult", "GradientMismatchError", "TensorVerdict", "tensor_verdicts"]


class GradientMismatchError(AssertionError):
    """Gradients disagree with their reference, or could not be verified. Distinct from
    ValueError/TypeError, which mean the check itself was misused. Subclasses AssertionError
    so pytest shows it as a failure."""

    def __init__(self, result: CheckResult) -> None:
        self.result = result
        super().__init__(result.failure_message())


@dataclass(frozen=True)
class TensorVerdict:
    """The verdict on one tensor, across all its rows.

    Attributes:
        name: the gradient's key.
        verdict: "passed" (every entry verified, none contradicted), "mismatch" or "unverified".
        n_elements: entries of the tensor.
        n_unverified: entries no reference verified (0 when passed).
        references: the references that judged it.
        note: for "unverified": why, reference by reference.
        coverage: what each reference covered, in words: "autograd; fd-directional, 2
            directions (4 evaluations of J)", or "autograd only: ..." where a finite-difference
            budget left the tensor out.
    """

    name: str
    verdict: str
    n_elements: int
    n_unverified: int
    references: tuple[str, ...]
    note: str = ""
    coverage: str = ""

    @property
    def passed(self) -> bool:
        return self.verdict == "passed"

    def message(self) -> str:
        n = f"{self.n_unverified} of {self.n_elements}"
        return f"{quantity(self.name)}: UNVERIFIED, {n} entries verified by no reference ({self.note})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "verdict": self.verdict,
            "n_elements": self.n_elements,
            "n_unverified": self.n_unverified,
            "references": list(self.references),
            "note": self.note,
            "coverage": self.coverage,
        }


def tensor_verdicts(rows: Sequence[Comparison], *, left_out: Mapping[str, str] | None = None) -> list[TensorVerdict]:
    """One verdict per tensor: an entry must be verified by some row and contradicted by none.

    A full row (autograd, full finite differences) verifies entries one by one; a directional
    row that verified at least one direction and contradicted none verifies the whole tensor
    (a wrong gradient agrees with a random signed direction with probability 0). ``left_out``:
    name -> why a reference asked for has no row for it (a finite-difference budget), in its
    ``coverage``; the verdict comes from the rows there are, by the same rule."""
    names = list(dict.fromkeys(row.name for row in rows))  # in the rows' order
    out = []
    for name in names:
        own = [row for row in rows if row.name == name]
        out.append(_verdict(name, own, _coverage(own, (left_out or {}).get(name, ""))))
    return out


def _coverage(own: Sequence[Comparison], left_out: str) -> str:
    """What the rows of one tensor covered, in words (TensorVerdict.coverage)."""
    parts = []
    for row in own:
        text = row.reference + (f", {row.directions} directions" if row.directions else "")
        parts.append(text + (f" ({row.evaluations} evaluations of J)" if row.evaluations else ""))
    if left_out:
        return f"{' and '.join(parts)} only: {left_out}"
    return "; ".join(parts)


def _verdict(name: str, own: Sequence[Comparison], coverage: str) -> TensorVerdict:
    """The verdict on tensor ``name`` from its rows ``own`` (at least one)."""
    references = tuple(row.reference for row in own)
    n = max((row.n_elements for row in own if not row.directions), default=0)
    if not n:
        n = max((math.prod(row.shape) for row in own), default=0)
    if any(row.verdict == "mismatch" for row in own):
        return TensorVerdict(name, "mismatch", n, 0, references, coverage=coverage)
    whole = any(row.directions and row.passed for row in own)
    covered: Tensor | None = None
    for row in own:
        if not row.directions and row.verified is not None:
            mask = row.verified.reshape(-1)
            covered = mask.clone() if covered is None else covered | mask
    n_unverified = 0 if whole else (n if covered is None else int((~covered).sum()))
    if n == 0 or n_unverified:
        reasons = "; ".join(f"{row.reference}: {_why_not(row)}" for row in own)
        return TensorVerdict(name, "unverified", n, n_unverified or n, references, reasons or "empty tensor", coverage)
    return TensorVerdict(name, "passed", n, 0, references, coverage=coverage)


def _why_not(row: Comparison) -> str:
    """What a row could not verify, in words."""
    return row.unverified_reasons() or row.note or f"verified {row.n_elements - row.n_unverified}"


@dataclass
class CheckResult:
    """The outcome of one check: a Comparison row per tensor and reference, and a verdict per tensor.

    Attributes:
        rows: the comparisons, in key order, autograd rows before finite-difference rows.
        J: the loss at the point checked (float64 reference value).
        dtype, device: of the gradients under test.
        fd_mode: "full", "directional", "mixed" (fd_mode "auto" ran out of time partway and went
            on directionally) or None when finite differences were not used.
        tensors: one TensorVerdict per tensor (computed from the rows when not given).
    """

    rows: list[Comparison]
    J: float
    dtype: str
    device: str
    fd_mode: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    tensors: list[TensorVerdict] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.tensors:
            self.tensors = tensor_verdicts(self.rows)

    @property
    def passed(self) -> bool:
        """True when every tensor was verified (and there was at least one)."""
        return bool(self.tensors) and all(t.passed for t in self.tensors)

    @property
    def failures(self) -> list[Comparison]:
        """The rows that contradict their tensor, or verified nothing of a failing tensor."""
        failing = {t.name for t in self.tensors if not t.passed}
        return [row for row in self.rows if row.name in failing and row.verdict != "ok"]

    @property
    def n_excluded(self) -> int:
        """Finite-difference entries left out because their perturbation crossed a piece boundary."""
        return sum(row.n_excluded for row in self.rows)

    def failure_message(self) -> str:
        """A one-line summary, then what the failures' pattern suggests (refbp.verify.diagnose:
        kinks, dropout masks, a different model), every contradicting row (the loss first, then
        worst first), and every unverified tensor with its reasons."""
        bad = [t for t in self.tensors if not t.passed]
        if not self.tensors:
            return "nothing was checked: no gradients were given"
        mismatches = sorted(  # the loss first: a different J explains every gradient after it
            (r for r in self.rows if r.verdict == "mismatch"), key=lambda r: (r.name != "J", -r.max_rel_error)
        )
        summary = ", ".join(f"{t.name} {t.verdict}" for t in bad)
        lines = [f"{len(bad)} of {len(self.tensors)} gradients failed ({summary}):"]
        lines += ["  note: " + hint for hint in self.meta.get("hints", [])]  # what the pattern says, first
        lines += ["  " + row.message() for row in mismatches]
        lines += ["  " + t.message() for t in bad if t.verdict == "unverified"]
        return "\n".join(lines)

    def raise_if_failed(self) -> None:
        """Raise GradientMismatchError (with the rows' message) if any tensor failed."""
        if not self.passed:
            raise GradientMismatchError(self)

    def table(self, *, tablefmt: str = "github") -> str:
        """The rows as a table (Markdown by default)."""
        headers = [
            "dJ/d",
            "reference",
            "shape",
            "max abs err",
            "max rel err",
            "worst at",
            "allowed",
            "unverified",
            "verdict",
        ]
        body = [
            [
                row.name,
                row.reference + (f" ({row.directions} dirs)" if row.directions else ""),
                "x".join(str(s) for s in row.shape) or "()",
                f"{row.max_abs_error:.2e}",
                f"{row.max_rel_error:.2e}",
                "" if row.worst_index is None else str(row.worst_index),
                f"{row.allowed:.1e}",
                row.n_unverified,
                row.verdict,
            ]
            for row in self.rows
        ]
        return tabulate(body, headers=headers, tablefmt=tablefmt, disable_numparse=True)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "J": self.J if math.isfinite(self.J) else str(self.J),
            "dtype": self.dtype,
            "device": self.device,
            "fd_mode": self.fd_mode,
            "n_excluded": self.n_excluded,
            "tensors": [t.to_dict() for t in self.tensors],
            "rows": [row.to_dict() for row in self.rows],
            **self.meta,
        }

    def __str__(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        return f"refbp check {verdict} ({len(self.rows)} comparisons)\n{self.table(tablefmt='simple')}"
