"""Verify gradients, refbp's own or anyone's, against torch.autograd and finite differences.

    res = refbp.check(net, X, y)              # refbp's manual gradients
    res = refbp.check(net, X, y, grads=mine)  # a user's own: any subset of as_dict()'s keys
    res.raise_if_failed()                     # GradientMismatchError, message from the rows

    res = refbp.check_function(fn, params)    # fn(params) -> (loss, grads), NumPy or torch

**When a gradient passes.** Every entry must be verified by at least one reference and
contradicted by none (refbp.verify.compare says what each can say). A tensor fails as a
*mismatch* when some reference contradicts an entry, and as *unverified* when some entry was
verified by no reference: a NaN reference, a loss that is itself NaN or inf, finite
differences excluded at a piece boundary with no autograd row to cover them, an empty tensor.
"passed" therefore always means "verified".

Every comparison is a ``Comparison`` record; the verdicts, the failure message, the Markdown
table and the JSON all come from those records.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tabulate import tabulate
from torch import Tensor

from ..nn.network import Network
from ..nn.validation import check_int, check_seed, describe
from .compare import Comparison, compare
from .diagnose import explain_factor, kink_note, proportional
from .finite_diff import FDResult, function_finite_differences, network_finite_differences
from .reference import autograd_gradients
from .tolerances import (
    CONDITIONING_PROBES,
    CONDITIONING_SAFETY,
    FD_TOLERANCE,
    TOLERANCES,
    Tolerance,
    combine,
    least_precise,
    tolerance_for,
)

__all__ = [
    "FD_AUTO_MAX_ENTRIES",
    "REFERENCES",
    "CheckResult",
    "GradientMismatchError",
    "TensorVerdict",
    "check",
    "check_function",
    "tensor_verdicts",
]

REFERENCES = ("autograd", "fd")
"""What ``check`` compares against: torch.autograd, and central finite differences."""

FD_AUTO_MAX_ENTRIES = 20_000
"""fd_mode="auto" uses full finite differences up to this many entries in all, directional
above: full mode costs three batched evaluations per entry, directional a fixed few per tensor."""


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
    """

    name: str
    verdict: str
    n_elements: int
    n_unverified: int
    references: tuple[str, ...]
    note: str = ""

    @property
    def passed(self) -> bool:
        return self.verdict == "passed"

    def message(self) -> str:
        n = f"{self.n_unverified} of {self.n_elements}"
        return f"dJ/d{self.name}: UNVERIFIED, {n} entries verified by no reference ({self.note})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "verdict": self.verdict,
            "n_elements": self.n_elements,
            "n_unverified": self.n_unverified,
            "references": list(self.references),
            "note": self.note,
        }


def tensor_verdicts(rows: Sequence[Comparison]) -> list[TensorVerdict]:
    """One verdict per tensor: an entry must be verified by some row and contradicted by none.

    A full row (autograd, full finite differences) verifies entries one by one; a directional
    row that verified at least one direction and contradicted none verifies the whole tensor
    (a wrong gradient agrees with a random signed direction with probability 0)."""
    names = list(dict.fromkeys(row.name for row in rows))  # in the rows' order
    out = []
    for name in names:
        own = [row for row in rows if row.name == name]
        references = tuple(row.reference for row in own)
        n = max((row.n_elements for row in own if not row.directions), default=0)
        if not n:
            n = max((math.prod(row.shape) for row in own), default=0)
        if any(row.verdict == "mismatch" for row in own):
            out.append(TensorVerdict(name, "mismatch", n, 0, references))
            continue
        whole = any(row.directions and row.passed for row in own)
        covered: Tensor | None = None
        for row in own:
            if not row.directions and row.verified is not None:
                mask = row.verified.reshape(-1)
                covered = mask.clone() if covered is None else covered | mask
        n_unverified = 0 if whole else (n if covered is None else int((~covered).sum()))
        if n == 0 or n_unverified:
            reasons = "; ".join(f"{row.reference}: {_why_not(row)}" for row in own)
            out.append(TensorVerdict(name, "unverified", n, n_unverified or n, references, reasons or "empty tensor"))
        else:
            out.append(TensorVerdict(name, "passed", n, 0, references))
    return out


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
        fd_mode: "full", "directional" or None when finite differences were not used.
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
        """A one-line summary, then every contradicting row (worst first), then every
        unverified tensor with its reasons."""
        bad = [t for t in self.tensors if not t.passed]
        if not self.tensors:
            return "nothing was checked: no gradients were given"
        mismatches = sorted(  # the loss first: a different J explains every gradient after it
            (r for r in self.rows if r.verdict == "mismatch"), key=lambda r: (r.name != "J", -r.max_rel_error)
        )
        summary = ", ".join(f"{t.name} {t.verdict}" for t in bad)
        lines = [f"{len(bad)} of {len(self.tensors)} gradients failed ({summary}):"]
        lines += ["  " + row.message() for row in mismatches]
        lines += ["  " + t.message() for t in bad if t.verdict == "unverified"]
        lines += ["  note: " + hint for hint in self.meta.get("hints", [])]
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


def check(
    net: Network,
    X: Tensor | np.ndarray,
    y: Tensor | np.ndarray,
    grads: Mapping[str, Any] | None = None,
    *,
    references: Sequence[str] = REFERENCES,
    fd_mode: str = "auto",
    directions: int = 8,
    seed: int = 0,
    tolerance: Tolerance | None = None,
    noise: Mapping[tuple[int, ...], Tensor] | None = None,
    J: float | Tensor | np.ndarray | None = None,
) -> CheckResult:
    """Check gradients of ``net``'s J at (X, y) against autograd and finite differences.

    Args:
        net, X, y: the network and the point (tensors or NumPy arrays, in the network's
            layout: refbp.nn.layouts); validated as ``net.forward`` and ``net.loss`` do.
        grads: the gradients under test, a dict name -> tensor (or NumPy array), in the
            network's layout, with any subset of ``net.names()`` ("W1", "b1", "z1", "a1", ...,
            "X"). None checks refbp's own manual backward pass.
        references: any of "autograd" and "fd".
        fd_mode: "full", "directional" or "auto" (full up to FD_AUTO_MAX_ENTRIES entries).
        directions: number of random signed directions per tensor in directional mode.
        seed: seeds the directions.
        tolerance: overrides the per-dtype tolerance (refbp.verify.tolerances.TOLERANCES).
        noise: for a network with dropout in training mode, the keep-masks your gradients were
            computed with (``cache.noise``); None draws new ones (right for refbp's own).
        J: your loss at this point: compared with refbp's first, so that a forward pass or a
            loss convention that differs (a sum for a mean, another 1/2, another GELU) is
            reported as such, before any gradient row.

    Returns:
        A CheckResult; ``.passed``, ``.rows``, ``.tensors``, ``.raise_if_failed()``.
    """
    if not isinstance(net, Network):
        raise TypeError(f"net must be a refbp network (refbp.MLP, refbp.nn.Network), got {type(net).__name__}")
    _check_options(references, fd_mode, directions, seed, tolerance)

    cache = net.forward(X, update_stats=False, noise=noise)  # X, y, grads in the network's layout
    X_in, y_in = cache.X, net.targets_from_user(y, cache)  # refbp's layout from here on
    layout = net.layout
    sizes = {"N": int(X_in.shape[0]), "d_L": int(cache.y_hat.shape[-1])}  # what a wrong factor may be
    if grads is None:
        tested = {name: g.detach() for name, g in net.backward(cache, y).as_dict().items()}
    else:
        tested = _user_grads(grads, net.names())
    names = list(tested)
    dtype = least_precise({t.dtype for t in tested.values() if t.dtype in TOLERANCES}, net.dtype)
    tol = tolerance or tolerance_for(dtype)
    widened = _conditioning(net, X_in, y_in, cache.noise, dtype, names, seed) if tolerance is None else {}

    rows: list[Comparison] = []
    J_ref = math.nan
    kinks = {name: layout.to_user(name, mask) for name, mask in _on_kinks(net, cache).items()}
    if "autograd" in references:
        J_autograd, reference = autograd_gradients(net, X_in, y_in, dtype=torch.float64, noise=cache.noise)
        J_ref = float(J_autograd)
        for name in names:
            r = layout.to_user(name, reference[name])
            row = compare(name, "autograd", tested[name], r, tol, widened=widened.get(name, 0.0),
                          J_finite=math.isfinite(J_ref))  # fmt: skip
            row = _with_diagnosis(row, tested[name], r, sizes)
            rows.append(_with_kink_note(row, tested[name], r, kinks.get(name)))
    mode = None
    if "fd" in references:
        total = sum(t.numel() for t in tested.values())
        mode = fd_mode if fd_mode != "auto" else ("full" if total <= FD_AUTO_MAX_ENTRIES else "directional")
        fd = network_finite_differences(
            net, X_in, y_in, names, noise=cache.noise, mode=mode, directions=directions, seed=seed
        )
        J_ref = next(iter(fd.values())).J if fd else J_ref
        fd = {name: _fd_to_user(layout, name, result) for name, result in fd.items()}
        rows += [
            _fd_row(name, tested[name], fd[name], mode, tol, widened.get(name, 0.0), sizes=sizes) for name in names
        ]
    if J is not None:
        rows.insert(0, _loss_row(J, J_ref, tol, sizes))
    hints = [hint for hint in _kink_hints(net, cache) if any(row.verdict == "mismatch" for row in rows)]
    return CheckResult(
        rows=rows, J=J_ref, dtype=str(dtype).removeprefix("torch."), device=str(net.device), fd_mode=mode,
        meta={"hints": hints} if hints else {},
    )  # fmt: skip


def _fd_to_user(layout: Any, name: str, fd: FDResult) -> FDResult:
    """Finite differences of ``name`` in the user's layout (directions turned one by one)."""
    if fd.directions is None:
        values = layout.to_user(name, fd.values)
        return FDResult(values, layout.to_user(name, fd.error), layout.to_user(name, fd.excluded), None, fd.J)
    turned = torch.stack([layout.to_user(name, v) for v in fd.directions])
    return FDResult(fd.values, fd.error, fd.excluded, turned, fd.J)


def _with_diagnosis(row: Comparison, g: Tensor, r: Tensor, sizes: Mapping[str, int]) -> Comparison:
    """A mismatch row with what its pattern says (refbp.verify.diagnose), when it says something."""
    if row.verdict != "mismatch" or tuple(g.shape) != tuple(r.shape):
        return row
    c = proportional(g, r, row.allowed)
    if c is None:
        return row
    return dataclasses.replace(row, note=(row.note + " " + explain_factor(c, _sizes(sizes)) + ".").strip())


def _on_kinks(net: Network, cache: Any) -> dict[str, Tensor]:
    """ "z{l}" -> where layer l's pre-activation sits exactly on a relu-like kink, for Dense
    layers whose activation has one (relu, leaky_relu)."""
    out = {}
    for l, layer in enumerate(net.layers, start=1):
        activation = getattr(layer, "activation", None)
        z = cache.saved[l]
        if activation is not None and activation.kinked and isinstance(z, Tensor):
            out[f"z{l}"] = z == activation.pieces.boundaries[0]
    return out


def _with_kink_note(row: Comparison, g: Tensor, r: Tensor, on_kink: Tensor | None) -> Comparison:
    """A mismatch of dJ/dz(l) whose differing entries are exactly those on a kink, said so."""
    if on_kink is None or row.verdict != "mismatch" or tuple(g.shape) != tuple(r.shape):
        return row
    differs = (g.detach().double().cpu() - r.double().cpu()).abs() > row.allowed
    note = kink_note(differs, on_kink.cpu())
    return dataclasses.replace(row, note=(row.note + " " + note + ".").strip()) if note else row


def _kink_hints(net: Network, cache: Any) -> list[str]:
    """One line per layer with pre-activations exactly on a kink: where subgradient conventions differ."""
    hints = []
    for name, mask in _on_kinks(net, cache).items():
        count = int(mask.sum())
        if count:
            hints.append(
                f"layer {name[1:]} has {count} pre-activations exactly on its kink (z == 0), where torch takes "
                "f'(0) = 0 (leaky_relu: its slope); a gradient that takes the other side's slope differs there"
            )
    return hints


def _sizes(sizes: Mapping[str, int]) -> dict[str, int]:
    return {**sizes, "N d_L": sizes["N"] * sizes["d_L"]}


def _conditioning(
    net: Network,
    X: Tensor,
    y: Tensor,
    noise: Mapping[tuple[int, ...], Tensor],
    dtype: torch.dtype,
    names: list[str],
    seed: int,
) -> dict[str, float]:
    """name -> the allowance for this point's conditioning (tolerances.CONDITIONING_SAFETY):
    CONDITIONING_SAFETY x the largest change of the float64 gradient when every parameter, the
    input, and every intermediate and its gradient on the way back, moves by one rounding of
    ``dtype``; or (below float64) of torch's own autograd in ``dtype`` against float64,
    whichever is larger. Where a gradient is a sum of large terms that cancel (a bias feeding a
    BatchNorm, which ignores shifts), the rounding of the terms sets its attainable accuracy,
    not the size of the result."""
    eps = float(torch.finfo(dtype).eps)
    _, high = autograd_gradients(net, X, y, dtype=torch.float64, noise=noise)
    runs = []
    generator = torch.Generator().manual_seed(seed)

    def rounded(t: Tensor) -> Tensor:  # t o (1 + eps u), u ~ U(-1, 1): a rounding of dtype, or less
        if not t.is_floating_point():
            return t
        u = torch.rand(t.shape, dtype=torch.float64, generator=generator).mul_(2.0).sub_(1.0)
        return t.detach().to(torch.float64) * (1.0 + eps * u.to(t.device))

    for _ in range(CONDITIONING_PROBES):
        params = {key: rounded(t) for key, t in net.oracle_params(dtype=torch.float64).items()}
        probe = autograd_gradients(
            net, rounded(X), y, dtype=torch.float64, noise=noise, params=params, rounding=eps, generator=generator
        )
        runs.append(probe[1])
    if dtype != torch.float64 and net.dtype != torch.float64:
        runs.append(autograd_gradients(net, X, y, dtype=dtype, noise=noise)[1])
    out = {}
    for name in names:
        gaps = [(run[name].double() - high[name]).abs() for run in runs if name in run and name in high]
        finite = [gap[torch.isfinite(gap)] for gap in gaps]
        largest = max((float(gap.max()) for gap in finite if gap.numel()), default=0.0)
        out[name] = CONDITIONING_SAFETY * largest
    return out


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
            float64 arrays of the type it was given, and a last time with ``params``
            themselves, so a model that stores its parameters in fn is left as it started.
        params: dict name -> array (NumPy or torch), the point to check at.
        mode: "full" (3 calls of fn per entry), "directional" (3 per direction and array) or
            "auto" (full up to FD_AUTO_MAX_ENTRIES // 10 entries).
        tolerance: default: FD_TOLERANCE combined with the tolerance of the grads' dtype.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    if not isinstance(params, Mapping) or not params:
        raise ValueError("params must be a non-empty dict name -> array")
    for name, value in params.items():
        if not isinstance(value, (np.ndarray, Tensor, float, int)) or isinstance(value, bool):
            raise TypeError(f"params[{name!r}] must be a NumPy array or torch tensor, got {type(value).__name__}")
        if isinstance(value, Tensor) and value.device.type == "meta":
            raise ValueError(f"params[{name!r}] is on the meta device: it has no values to perturb")
    if mode not in ("full", "directional", "auto"):
        raise ValueError(f"mode={mode!r}; expected 'full', 'directional' or 'auto'")
    _check_options(REFERENCES, "auto", directions, seed, tolerance)
    try:
        loss, raw = _call(fn, dict(params))
        grads = {name: _as_tensor(value, f"grads[{name!r}]") for name, value in raw.items()}
        extra = [name for name in grads if name not in params]
        if extra:
            raise ValueError(f"fn returned gradients for {extra}, which are not in params ({list(params)})")
        missing = [name for name in params if name not in grads]
        total = sum(int(v.numel()) if isinstance(v, Tensor) else int(np.size(v)) for v in params.values())
        if mode == "auto":
            mode = "full" if total <= FD_AUTO_MAX_ENTRIES // 10 else "directional"

        def loss_only(p: dict[str, Any]) -> float:
            return _call(fn, p)[0]

        fd = function_finite_differences(loss_only, params, mode=mode, directions=directions, seed=seed)
    finally:
        fn(dict(params))  # leave a stateful model at the point it was checked at
    J = next(iter(fd.values())).J
    dtype = least_precise({t.dtype for t in grads.values() if t.dtype in TOLERANCES}, torch.float64)
    tol = tolerance or combine(tolerance_for(dtype), _fd_tolerance(J if math.isfinite(J) else 0.0))
    rows = [_fd_row(name, grads[name], fd[name], mode, tol, 0.0, scale_tol=False) for name in params if name in grads]
    for name in missing:
        rows.append(_missing_row(name, fd[name], mode, tol))
    meta = {"loss": loss}
    return CheckResult(rows=rows, J=J, dtype=str(dtype).removeprefix("torch."), device="cpu", fd_mode=mode, meta=meta)


# ---- helpers ---------------------------------------------------------------------------
def _check_options(references: object, fd_mode: object, directions: object, seed: object, tolerance: object) -> None:
    if isinstance(references, str) or not isinstance(references, Sequence):
        raise TypeError(f"references={references!r}; expected a list drawn from {list(REFERENCES)}")
    unknown = [r for r in references if r not in REFERENCES]
    if unknown or not references:
        raise ValueError(f"references={references!r}; expected a non-empty list drawn from {list(REFERENCES)}")
    if fd_mode not in ("full", "directional", "auto"):
        raise ValueError(f"fd_mode={fd_mode!r}; expected 'full', 'directional' or 'auto'")
    check_int(directions, "directions", minimum=1, maximum=10_000)
    check_seed(seed)
    if tolerance is not None and not isinstance(tolerance, Tolerance):
        raise TypeError(
            f"tolerance={tolerance!r} must be a refbp.verify.tolerances.Tolerance(rtol=..., atol=...), "
            f"got {type(tolerance).__name__}"
        )


def _call(fn: Callable[[dict[str, Any]], Any], params: dict[str, Any]) -> tuple[float, Mapping[str, Any]]:
    """fn(params) as (loss as a float, grads), or a TypeError/ValueError saying what is wrong."""
    out = fn(params)
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], Mapping)):
        raise TypeError("fn(params) must return (loss, grads) with grads a dict name -> array")
    loss = out[0]
    value = loss.detach().cpu().numpy() if isinstance(loss, Tensor) else np.asarray(loss)
    if value.size != 1 or value.ndim > 1 or not np.issubdtype(value.dtype, np.number):
        shape = tuple(value.shape)
        raise ValueError(f"fn must return a scalar loss; it returned {type(loss).__name__} of shape {shape}")
    return float(value.reshape(())), out[1]


def _fd_tolerance(J: float) -> Tolerance:
    """FD_TOLERANCE with its atol scaled by (1 + |J|) (see refbp.verify.tolerances.FD_TOLERANCE)."""
    return Tolerance(rtol=FD_TOLERANCE.rtol, atol=FD_TOLERANCE.atol * (1.0 + abs(J)))


def _fd_row(
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
    if scale_tol:
        tol = combine(tol, _fd_tolerance(fd.J if math.isfinite(fd.J) else 0.0))
    reference = f"fd-{mode}"
    J_finite = math.isfinite(fd.J)
    if fd.directions is None:
        row = compare(name, reference, g, fd.values, tol, excluded=fd.excluded, error=fd.error, widened=widened,
                      J_finite=J_finite)  # fmt: skip
        return row if sizes is None else _with_diagnosis(row, g, fd.values, sizes)
    k = fd.directions.shape[0]
    if tuple(g.shape) != tuple(fd.directions.shape[1:]):
        return compare(name, reference, g, fd.directions[0], tol, directions=k)  # a failing shape row
    g64 = g.detach().to(device="cpu", dtype=torch.float64)
    projected = torch.tensordot(fd.directions, g64, dims=g64.dim())  # (k,)  v_k . g
    row = compare(name, reference, projected, fd.values, tol, excluded=fd.excluded, error=fd.error,
                  widened=widened, J_finite=J_finite, directions=k, shape=tuple(g.shape))  # fmt: skip
    return row if sizes is None else _with_diagnosis(row, projected, fd.values, sizes)


def _loss_row(J: float | Tensor | np.ndarray, J_ref: float, tol: Tolerance, sizes: Mapping[str, int]) -> Comparison:
    """The user's loss against refbp's (float64, torch's functions), with what a mismatch means."""
    value = _as_tensor(J, "J").to(torch.float64).reshape(-1)
    if value.numel() != 1:
        raise ValueError(f"J must be your loss, one number; got an array of {value.numel()} entries")
    row = compare("J", "torch", value.reshape(()), torch.tensor(J_ref, dtype=torch.float64), tol)
    if row.verdict != "mismatch" or J_ref == 0 or not math.isfinite(J_ref):
        return row
    c = float(value[0]) / J_ref
    reasons = []
    for name, n in _sizes(sizes).items():
        if n > 1 and abs(c - n) <= 1e-3 * n:
            reasons.append(f"a sum where refbp (as torch) takes the mean over {name} = {n}?")
        if n > 1 and abs(c - 1.0 / n) <= 1e-3 / n:
            reasons.append(f"a mean over {name} = {n} where refbp (as torch) takes the sum?")
    if abs(c - 2.0) <= 2e-3 or abs(c - 0.5) <= 5e-4:
        reasons.append("the other 1/2 convention (1/2 ||y_hat - y||^2 or ||y_hat - y||^2)?")
    if reasons:
        note = f"your J is {c:.3g}x refbp's: " + " Or ".join(reasons)
    else:
        note = "your J differs: a different forward pass or loss (another activation, a GELU variant, another clamp)?"
    return dataclasses.replace(row, note=note)


def _missing_row(name: str, fd: FDResult, mode: str, tol: Tolerance) -> Comparison:
    shape = tuple(fd.values.shape) if fd.directions is None else tuple(fd.directions.shape[1:])
    return Comparison(
        name, f"fd-{mode}", (), shape, math.inf, math.inf, math.nan, None, None, None,
        0, 0, 0, tol.rtol, tol.atol, math.nan, "mismatch", note="fn returned no gradient for it",
    )  # fmt: skip


def _tensors(values: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {name: value.detach() for name, value in values.items()}


def _user_grads(grads: Mapping[str, Any], valid: list[str]) -> dict[str, Tensor]:
    if not isinstance(grads, Mapping):
        raise TypeError(f"grads must be a dict name -> tensor, got {type(grads).__name__}")
    unknown = [name for name in grads if name not in valid]
    if unknown:
        raise ValueError(f"grads has unknown keys {unknown}; expected a subset of {valid}")
    if not grads:
        raise ValueError(f"grads is empty; expected a subset of {valid}")
    return {name: _as_tensor(grads[name], f"grads[{name!r}]") for name in valid if name in grads}


def _as_tensor(value: Any, argument: str) -> Tensor:
    """A gradient as a tensor: torch tensors as they are, NumPy arrays (and numbers) converted."""
    if isinstance(value, Tensor):
        if value.device.type == "meta":
            raise ValueError(f"{argument} is on the meta device ({describe(value)}): it has no values to compare")
        return value.detach()
    if isinstance(value, np.ndarray) and value.dtype.kind in "fiu":
        return torch.as_tensor(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return torch.tensor(value, dtype=torch.float64)
    raise TypeError(f"{argument} must be a torch tensor or a numeric NumPy array, got {type(value).__name__}")
