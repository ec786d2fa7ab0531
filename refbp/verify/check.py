"""Verify gradients, refbp's own or anyone's, against torch.autograd and finite differences.

    res = refbp.check(net, X, y)              # refbp's manual gradients
    res = refbp.check(net, X, y, grads=mine)  # a user's own: any subset of as_dict()'s keys
    res.raise_if_failed()                     # GradientMismatchError, message from the rows

    res = refbp.check_function(fn, params)    # fn(params) -> (loss, grads), NumPy or torch

Every comparison is a ``Comparison`` record (refbp.compare); the verdict, the failure
message, the Markdown table and the JSON all come from those records.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tabulate import tabulate
from torch import Tensor

from ..nn.network import MLP
from .compare import Comparison, compare
from .finite_diff import FDResult, function_finite_differences, mlp_finite_differences
from .reference import autograd_gradients
from .tolerances import FD_TOLERANCE, TOLERANCES, Tolerance, combine, least_precise, tolerance_for

__all__ = [
    "FD_AUTO_MAX_ENTRIES",
    "REFERENCES",
    "CheckResult",
    "GradientMismatchError",
    "check",
    "check_function",
]

REFERENCES = ("autograd", "fd")
"""What ``check`` compares against: torch.autograd, and central finite differences."""

FD_AUTO_MAX_ENTRIES = 20_000
"""fd_mode="auto" uses full finite differences up to this many entries in all, directional
above: full mode costs one batched forward per entry, directional a fixed few per tensor."""


class GradientMismatchError(AssertionError):
    """Gradients disagree with their reference. Distinct from ValueError/TypeError, which mean
    the check itself was misused. Subclasses AssertionError so pytest shows it as a failure."""

    def __init__(self, result: CheckResult) -> None:
        self.result = result
        super().__init__(result.failure_message())


@dataclass
class CheckResult:
    """The outcome of one check: a Comparison row per tensor and reference.

    Attributes:
        rows: the comparisons, in key order, autograd rows before finite-difference rows.
        J: the loss at the point checked (float64 reference value).
        dtype, device: of the gradients under test.
        fd_mode: "full", "directional" or None when finite differences were not used.
    """

    rows: list[Comparison]
    J: float
    dtype: str
    device: str
    fd_mode: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """True when every row passed."""
        return all(row.passed for row in self.rows)

    @property
    def failures(self) -> list[Comparison]:
        return [row for row in self.rows if not row.passed]

    @property
    def n_excluded(self) -> int:
        """Finite-difference entries left out because their perturbation crossed a kink."""
        return sum(row.n_excluded for row in self.rows)

    def failure_message(self) -> str:
        """Every failing row's message, worst first, after a one-line summary."""
        failures = sorted(self.failures, key=lambda r: -r.max_rel_error)
        names = sorted({row.name for row in failures}, key=_key_order)
        lines = [f"{len(failures)} of {len(self.rows)} gradient comparisons failed ({', '.join(names)}):"]
        lines += ["  " + row.message() for row in failures]
        return "\n".join(lines)

    def raise_if_failed(self) -> None:
        """Raise GradientMismatchError (with the rows' message) if any row failed."""
        if not self.passed:
            raise GradientMismatchError(self)

    def table(self, *, tablefmt: str = "github") -> str:
        """The rows as a table (Markdown by default)."""
        headers = ["dJ/d", "reference", "shape", "max abs err", "max rel err", "worst at", "allowed", "excl", "ok"]
        body = [
            [
                row.name,
                row.reference,
                "x".join(str(s) for s in row.shape) or "()",
                f"{row.max_abs_error:.2e}",
                f"{row.max_rel_error:.2e}",
                "" if row.worst_index is None else str(row.worst_index),
                f"{row.allowed:.1e}",
                row.n_excluded,
                "yes" if row.passed else "NO",
            ]
            for row in self.rows
        ]
        return tabulate(body, headers=headers, tablefmt=tablefmt, disable_numparse=True)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "J": self.J,
            "dtype": self.dtype,
            "device": self.device,
            "fd_mode": self.fd_mode,
            "n_excluded": self.n_excluded,
            "rows": [row.to_dict() for row in self.rows],
            **self.meta,
        }

    def __str__(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        return f"refbp check {verdict} ({len(self.rows)} comparisons)\n{self.table(tablefmt='simple')}"


def check(
    net: MLP,
    X: Tensor,
    y: Tensor,
    grads: Mapping[str, Any] | None = None,
    *,
    references: Sequence[str] = REFERENCES,
    fd_mode: str = "auto",
    directions: int = 8,
    seed: int = 0,
    tolerance: Tolerance | None = None,
) -> CheckResult:
    """Check gradients of ``net``'s J at (X, y) against autograd and finite differences.

    Args:
        net, X, y: the network and the point; validated as ``net.forward`` and ``net.loss`` do.
        grads: the gradients under test, a dict name -> tensor (or NumPy array) with any
            subset of ``Gradients.as_dict()``'s keys ("W1", "b1", "z1", "a1", ..., "X").
            None checks refbp's own manual backward pass.
        references: any of "autograd" and "fd".
        fd_mode: "full", "directional" or "auto" (full up to FD_AUTO_MAX_ENTRIES entries).
        directions: number of random signed directions per tensor in directional mode.
        seed: seeds the directions.
        tolerance: overrides the per-dtype tolerance (refbp.tolerances.TOLERANCES).

    Returns:
        A CheckResult; ``.passed``, ``.rows``, ``.raise_if_failed()``.
    """
    if not isinstance(net, MLP):
        raise TypeError(f"net must be a refbp.MLP, got {type(net).__name__}")
    unknown = [r for r in references if r not in REFERENCES] if not isinstance(references, str) else [references]
    if unknown or not references:
        raise ValueError(f"references={references!r}; expected a non-empty list drawn from {list(REFERENCES)}")
    if fd_mode not in ("full", "directional", "auto"):
        raise ValueError(f"fd_mode={fd_mode!r}; expected 'full', 'directional' or 'auto'")
    if not isinstance(directions, int) or directions < 1:
        raise ValueError(f"directions={directions!r}; expected an int >= 1")

    cache = net.forward(X)
    y = net.check_targets(y, cache)
    if grads is None:
        tested = net.backward(cache, y).as_dict()
    else:
        tested = _user_grads(grads, net.backward(cache, y).as_dict().keys())
    names = list(tested)
    dtype = least_precise({t.dtype for t in tested.values() if t.dtype in TOLERANCES}, net.dtype)
    tol = tolerance or tolerance_for(dtype)

    rows: list[Comparison] = []
    J = float("nan")
    if "autograd" in references:
        J_ref, reference = autograd_gradients(net, X, y, dtype=torch.float64)
        J = float(J_ref)
        rows += [compare(name, "autograd", tested[name], reference[name], tol) for name in names]
    mode = None
    if "fd" in references:
        total = sum(t.numel() for t in tested.values())
        mode = fd_mode if fd_mode != "auto" else ("full" if total <= FD_AUTO_MAX_ENTRIES else "directional")
        fd = mlp_finite_differences(net, X, y, names, mode=mode, directions=directions, seed=seed)
        J = next(iter(fd.values())).J if fd else J
        rows += [_fd_row(name, tested[name], fd[name], mode, tol) for name in names]
    return CheckResult(rows=rows, J=J, dtype=str(dtype).removeprefix("torch."), device=str(net.device), fd_mode=mode)


def check_function(
    fn: Callable[[dict[str, Any]], tuple[Any, Mapping[str, Any]]],
    params: Mapping[str, Any],
    *,
    mode: str = "auto",
    directions: int = 8,
    seed: int = 0,
    tolerance: Tolerance | None = None,
) -> CheckResult:
    """Check any (loss, gradients) function against finite differences of its own loss.

    Args:
        fn: fn(params) -> (loss, grads): loss a scalar (float, 0-dim array or tensor), grads a
            dict with the same keys as params. NumPy and torch both work; fn is called with
            float64 arrays of the type it was given.
        params: dict name -> array (NumPy or torch), the point to check at.
        mode: "full" (2 calls of fn per entry), "directional" (2 per direction and array) or
            "auto" (full up to FD_AUTO_MAX_ENTRIES // 10 entries).
        tolerance: default: FD_TOLERANCE combined with the tolerance of the grads' dtype.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    if not isinstance(params, Mapping) or not params:
        raise ValueError("params must be a non-empty dict name -> array")
    for name, value in params.items():
        if not isinstance(value, (np.ndarray, Tensor, float, int)):
            raise TypeError(f"params[{name!r}] must be a NumPy array or torch tensor, got {type(value).__name__}")
    if mode not in ("full", "directional", "auto"):
        raise ValueError(f"mode={mode!r}; expected 'full', 'directional' or 'auto'")
    out = fn(dict(params))
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], Mapping)):
        raise TypeError("fn(params) must return (loss, grads) with grads a dict name -> array")
    grads = {name: _as_tensor(value, f"grads[{name!r}]") for name, value in out[1].items()}
    missing = [name for name in params if name not in grads]
    extra = [name for name in grads if name not in params]
    if extra:
        raise ValueError(f"fn returned gradients for {extra}, which are not in params ({list(params)})")
    total = sum(int(v.numel()) if isinstance(v, Tensor) else int(np.size(v)) for v in params.values())
    if mode == "auto":
        mode = "full" if total <= FD_AUTO_MAX_ENTRIES // 10 else "directional"

    def loss_only(p: dict[str, Any]) -> float:
        return float(np.asarray(_to_numpy(fn(p)[0])))

    fd = function_finite_differences(loss_only, params, mode=mode, directions=directions, seed=seed)
    J = next(iter(fd.values())).J
    dtype = least_precise({t.dtype for t in grads.values() if t.dtype in TOLERANCES}, torch.float64)
    tol = tolerance or combine(tolerance_for(dtype), _fd_tolerance(J))
    rows = [_fd_row(name, grads[name], fd[name], mode, tol, scale_tol=False) for name in params if name in grads]
    for name in missing:
        rows.append(_missing_row(name, fd[name], mode, tol))
    return CheckResult(rows=rows, J=J, dtype=str(dtype).removeprefix("torch."), device="cpu", fd_mode=mode)


# ---- helpers ---------------------------------------------------------------------------
def _fd_tolerance(J: float) -> Tolerance:
    """FD_TOLERANCE with its atol scaled by (1 + |J|) (see refbp.tolerances.FD_TOLERANCE)."""
    return Tolerance(rtol=FD_TOLERANCE.rtol, atol=FD_TOLERANCE.atol * (1.0 + abs(J)))


def _fd_row(name: str, g: Tensor, fd: FDResult, mode: str, tol: Tolerance, *, scale_tol: bool = True) -> Comparison:
    if scale_tol:
        tol = combine(tol, _fd_tolerance(fd.J))
    reference = f"fd-{mode}"
    if fd.directions is None:
        return compare(name, reference, g, fd.values, tol, excluded=fd.excluded)
    if tuple(g.shape) != tuple(fd.directions.shape[1:]):
        return compare(name, reference, g, fd.directions[0], tol)  # a failing shape row
    g64 = g.detach().to(device="cpu", dtype=torch.float64)
    projected = torch.tensordot(fd.directions, g64, dims=g64.dim())  # (k,)  v_k . g
    return compare(name, reference, projected, fd.values, tol, excluded=fd.excluded)


def _missing_row(name: str, fd: FDResult, mode: str, tol: Tolerance) -> Comparison:
    shape = tuple(fd.values.shape) if fd.directions is None else tuple(fd.directions.shape[1:])
    return Comparison(
        name, f"fd-{mode}", (), shape, float("inf"), float("inf"), float("nan"), None, None, None,
        0, 0, 0, tol.rtol, tol.atol, float("nan"), False, note="fn returned no gradient for it",
    )  # fmt: skip


def _user_grads(grads: Mapping[str, Any], valid: Any) -> dict[str, Tensor]:
    if not isinstance(grads, Mapping):
        raise TypeError(f"grads must be a dict name -> tensor, got {type(grads).__name__}")
    valid = list(valid)
    unknown = [name for name in grads if name not in valid]
    if unknown:
        raise ValueError(f"grads has unknown keys {unknown}; expected a subset of {valid}")
    if not grads:
        raise ValueError(f"grads is empty; expected a subset of {valid}")
    return {name: _as_tensor(grads[name], f"grads[{name!r}]") for name in valid if name in grads}


def _as_tensor(value: Any, argument: str) -> Tensor:
    if isinstance(value, Tensor):
        return value.detach()
    try:
        array = np.asarray(value, dtype=np.float64) if not isinstance(value, np.ndarray) else value
        return torch.as_tensor(array)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{argument} must be a tensor or NumPy array, got {type(value).__name__}") from err


def _to_numpy(value: Any) -> Any:
    return value.detach().cpu().numpy() if isinstance(value, Tensor) else value


def _key_order(name: str) -> tuple[int, str]:
    """W1, b1, z1, a1, W2, ..., X: layer order for MLP keys; other names after, as given."""
    if name == "X":
        return (10**8, name)
    return (int(name[1:]), name[0]) if name[1:].isdigit() else (10**9, name)
