"""Check a custom backward (a ``torch.autograd.Function``, or any function whose backward is
hand-written) in the dtype and on the device it runs in, against float64 references.

    res = refbp.check_autograd_function(MyFusedCE, logits_bf16, target, reference=F.cross_entropy)
    res.raise_if_failed()

What is checked, each with its own rows (reference column) and message:

- the gradients, entry by entry, against float64 autograd of ``reference`` (a plain-torch forward
  you trust) and float64 central finite differences of the function itself (where it runs in
  float64). The allowance is the dtype's (refbp.verify.tolerances) plus the point's
  conditioning in that dtype: CONDITIONING_SAFETY x how far the float64 gradient moves when
  the inputs and grad_output move by one rounding of the dtype, and how far torch's own
  autograd of ``reference`` in that dtype is from float64. A correct bfloat16 kernel passes,
  a wrong one fails, without a hand-tuned atol.
- below float64, where the function also runs in float64: if its float64 backward is
  contradicted (at float32's tolerance, since kernels often accumulate in float32) while the
  dtype's result is within the dtype's allowance, the bug is below the dtype's resolution at
  this point: that tensor is *unverified*, never passed.
- linearity in grad_output: backward(2 g) = 2 backward(g) and backward(g1 + g2) =
  backward(g1) + backward(g2) (the "not multiplied by grad_output" bug); backward(0) = 0;
- the forward-mode ``jvp``, when the Function defines one, against the reference's JVP
  (float64 forward-mode autograd) and finite differences along the tangents;
- the run-to-run spread of the backward over ``runs`` runs: reported, added to the allowance,
  and a contradiction only when the runs differ by more than the dtype allows.

These property rows can contradict a gradient but never verify one. The result is the same
CheckResult as refbp.check's; J is L = sum_j <v_j, y_j> in float64, the scalar whose gradient the
backward computes (refbp.verify.function_runs).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.autograd import Function

from ..nn.validation import check_int, check_seed, describe
from .compare import Comparison, compare
from .diagnose import with_diagnosis
from .function_properties import failed_row, jvp_rows, property_rows, unverified_row
from .function_runs import FunctionPoint, floating_outputs, to_float64, vjp, vjp_differences
from .inputs import FD_AUTO_MAX_ENTRIES
from .observers import notify
from .result import CheckResult
from .rows import fd_row
from .tolerances import (
    CONDITIONING_PROBES,
    CONDITIONING_SAFETY,
    TOLERANCES,
    Tolerance,
    least_precise,
    tolerance_for,
)

__all__ = ["FLOAT64_RUN_DTYPE", "PRECISION_PROBE", "RUNS", "check_autograd_function"]

RUNS = 3
"""Backward runs per check, to measure the run-to-run spread of a nondeterministic kernel
(atomics, split reductions): enough to see one that varies at all, cheap for small points."""

PRECISION_PROBE = 1e-10
"""How far (relative) every input is moved to tell float64 arithmetic inside a function from
float32 or less: a million float64 ulps, a thousandth of a float32 ulp (eps 1.2e-7). A function
that computes in float64 moves its outputs; one that rounds its inputs to float32 first (a
kernel's accumulator) returns the very same outputs, and its finite differences would be noise."""

FLOAT64_RUN_DTYPE = torch.float32
"""The tolerance the function's own float64 backward is held to when it is run to tell a bug
below the dtype's resolution from none: float32's, not float64's, because kernels commonly
accumulate in float32 whatever their inputs, and every catalogued bug errs by far more."""


def check_autograd_function(
    fn: Any,
    *inputs: Any,
    reference: Callable[..., Any] | None = None,
    grad_outputs: Tensor | Sequence[Tensor] | None = None,
    seed: int = 0,
    names: Sequence[str] | None = None,
    runs: int = RUNS,
    fd_mode: str = "auto",
    directions: int = 8,
    tolerance: Tolerance | None = None,
) -> CheckResult:
    """Check ``fn``'s backward at ``inputs`` (their own dtype and device); the result is also
    reported to refbp.verify.observers (the pytest plugin's report hears of it there).

    Args:
        fn: a torch.autograd.Function subclass (called as ``fn.apply``) or any callable whose
            backward is custom. Its floating-point tensor outputs are the ones weighted by
            grad_outputs; its floating-point tensor inputs are the ones differentiated.
        inputs: its positional inputs: float32, float16, bfloat16 or float64 tensors (CPU or
            CUDA), and any others (integer targets, ...) passed as they are.
        reference: the same forward in plain torch ops, differentiated by torch in float64.
        grad_outputs: one tensor per floating output (its shape); None draws them, seeded.
        seed: seeds grad_outputs, tangents, rounding probes and finite-difference directions
            (torch.Generator().manual_seed(seed), float64 normal draws). Draw your inputs from
            another stream: a grad_output equal to an input of its shape (x @ W^T with
            grad_output x) makes dJ/dW = x^T x symmetric, so a transposed dJ/dW goes unseen.
        names: one per input; default: the forward's parameter names.
        runs: backward runs for the run-to-run spread (>= 1).
        fd_mode: "full", "directional" or "auto" (full up to FD_AUTO_MAX_ENTRIES // 10 entries).
        directions: random directions per input in directional mode.
        tolerance: overrides the dtype's tolerance (and drops the conditioning allowance).
    """
    result = _check(fn, inputs, reference, grad_outputs, seed, names, runs, fd_mode, directions, tolerance)
    return notify("check_autograd_function", result)


def _check(
    fn: Any,
    inputs: tuple[Any, ...],
    reference: Callable[..., Any] | None,
    grad_outputs: Tensor | Sequence[Tensor] | None,
    seed: int,
    names: Sequence[str] | None,
    runs: int,
    fd_mode: str,
    directions: int,
    tolerance: Tolerance | None,
) -> CheckResult:
    """check_autograd_function's work, before its result is reported."""
    call, defines_jvp = _function(fn)
    point = _point(call, fn, inputs, names)
    if reference is not None and not callable(reference):
        raise TypeError(f"reference must be a callable (a plain-torch forward), got {type(reference).__name__}")
    check_seed(seed)
    check_int(runs, "runs", minimum=1, maximum=100)
    check_int(directions, "directions", minimum=1, maximum=10_000)
    if fd_mode not in ("full", "directional", "auto"):
        raise ValueError(f"fd_mode={fd_mode!r}; expected 'full', 'directional' or 'auto'")
    if tolerance is not None and not isinstance(tolerance, Tolerance):
        raise TypeError(f"tolerance must be a refbp.verify.tolerances.Tolerance, got {type(tolerance).__name__}")

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        y = floating_outputs(call(*point.inputs))
    out_names = ("out",) if len(y) == 1 else tuple(f"out{j}" for j in range(len(y)))
    v = _grad_outputs(grad_outputs, y, generator)
    dtype = least_precise({x.dtype for x in point.differentiated() if x.dtype in TOLERANCES}, torch.float64)
    tol = tolerance or tolerance_for(dtype)
    wrt_names = [point.names[i] for i in point.wrt]
    device = str(point.differentiated()[0].device)
    meta: dict[str, Any] = {"function": getattr(fn, "__name__", type(fn).__name__), "outputs": list(out_names)}

    try:
        g_runs = [vjp(point, v) for _ in range(runs)]  # the backward under test
    except (RuntimeError, TypeError, ValueError) as error:
        failed = [failed_row(name, x, f"the backward raised {type(error).__name__}: {error}", tol)
                  for name, x in zip(wrt_names, point.differentiated(), strict=True)]  # fmt: skip
        return CheckResult(rows=failed, J=math.nan, dtype=_short(dtype), device=device, meta=meta)
    g = g_runs[0]
    spread = [max((float((run[k].double() - g[k].double()).abs().max()) for run in g_runs[1:] if g[k].numel()),
                  default=0.0) for k in range(len(g))]  # fmt: skip
    meta["spread"] = dict(zip(wrt_names, spread, strict=True))

    point64, v64 = to_float64(point), [t.detach().to(torch.float64) for t in v]
    r = _reference_gradients(point64, reference, v64) if reference is not None else None
    g64, why_not64 = _float64_run(point64, v64)
    meta["float64"] = "runs" if g64 is not None else why_not64
    fd, mode = None, None
    if g64 is not None:
        total = sum(x.numel() for x in point.differentiated())
        mode = fd_mode if fd_mode != "auto" else ("full" if total <= FD_AUTO_MAX_ENTRIES // 10 else "directional")
        fd = vjp_differences(point64, v64, mode=mode, directions=directions, seed=seed)
    J = _L(point64.with_inputs(point64.inputs, reference) if reference is not None else point64, v64)

    widened = [0.0] * len(g)
    if tolerance is None:
        widened = _conditioning(point, point64, v, v64, reference, r if r is not None else g64, dtype, generator)
    first = point.differentiated()[0]  # what a wrong factor may be: the batch, the output's width
    sizes = {"N": int(first.shape[0]) if first.dim() else 1, "d_L": int(y[0].shape[-1]) if y[0].dim() else 1}
    rows: list[Comparison] = []
    for k, name in enumerate(wrt_names):
        allowance = widened[k] + spread[k]
        own: list[Comparison] = []
        if r is not None:
            row = compare(name, "reference", g[k], r[k], tol, widened=allowance, J_finite=math.isfinite(J))
            own.append(with_diagnosis(row, g[k], r[k], sizes))
        if fd is not None:
            own.append(fd_row(name, g[k], fd[name], mode or "full", tol, allowance, sizes=sizes))
        if not own:
            own.append(unverified_row(name, g[k], tol, f"no reference: no reference= was given and {why_not64}"))
        if g64 is not None and dtype != torch.float64:
            own = _resolution(own, name, g64[k], r[k] if r is not None else None, fd, mode, dtype)
        rows += own
    rows += property_rows(point, v, g, g_runs, wrt_names, tol, spread, generator)
    if defines_jvp:
        rows += jvp_rows(point, point64, reference, out_names, dtype, tol, generator)
    return CheckResult(rows=rows, J=J, dtype=_short(dtype), device=device, fd_mode=mode, meta=meta)


def _function(fn: Any) -> tuple[Callable[..., Any], bool]:
    """(what to call, whether forward-mode jvp is defined by the user)."""
    if isinstance(fn, type) and issubclass(fn, Function):
        return fn.apply, fn.jvp is not Function.jvp
    if not callable(fn):
        raise TypeError(f"fn must be a torch.autograd.Function subclass or a callable, got {type(fn).__name__}")
    return fn, False


def _point(call: Callable[..., Any], fn: Any, inputs: tuple[Any, ...], names: Sequence[str] | None) -> FunctionPoint:
    if not inputs:
        raise ValueError("check_autograd_function needs the function's inputs: fn, *inputs")
    wrt = tuple(i for i, x in enumerate(inputs) if isinstance(x, Tensor) and x.is_floating_point())
    if not wrt:
        kinds = [type(x).__name__ if not isinstance(x, Tensor) else describe(x) for x in inputs]
        raise ValueError(f"inputs has no floating-point tensor to differentiate: got {kinds}")
    for i in wrt:
        if inputs[i].dtype not in TOLERANCES:
            raise ValueError(f"inputs[{i}] is {describe(inputs[i])}; expected one of {list(TOLERANCES)}")
        if inputs[i].device.type == "meta":
            raise ValueError(f"inputs[{i}] is on the meta device ({describe(inputs[i])}): it has no values")
    if names is None:
        names = _signature_names(fn, len(inputs))
    elif isinstance(names, str) or len(names) != len(inputs) or len(set(names)) != len(names):
        raise ValueError(f"names={names!r}; expected {len(inputs)} distinct names, one per input")
    return FunctionPoint(call, tuple(inputs), tuple(str(n) for n in names), wrt)


def _signature_names(fn: Any, n: int) -> tuple[str, ...]:
    """The forward's parameter names (after ctx for a Function), else input0, input1, ..."""
    target = fn.forward if isinstance(fn, type) and issubclass(fn, Function) else fn
    try:
        params = list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError):
        params = []
    if target is not fn:
        params = params[1:]  # ctx
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return tuple(positional[:n]) if len(positional) >= n else tuple(f"input{i}" for i in range(n))


def _grad_outputs(
    given: Tensor | Sequence[Tensor] | None, y: tuple[Tensor, ...], generator: torch.Generator
) -> list[Tensor]:
    """grad_outputs as given (validated), or standard normal draws in each output's dtype."""
    if given is None:
        return [torch.randn(yj.shape, dtype=torch.float64, generator=generator).to(yj.dtype).to(yj.device) for yj in y]
    listed = [given] if isinstance(given, Tensor) else list(given)
    if len(listed) != len(y):
        raise ValueError(f"grad_outputs has {len(listed)} tensors; the function has {len(y)} floating outputs")
    for j, (vj, yj) in enumerate(zip(listed, y, strict=True)):
        if not isinstance(vj, Tensor) or tuple(vj.shape) != tuple(yj.shape) or not vj.is_floating_point():
            got = describe(vj) if isinstance(vj, Tensor) else type(vj).__name__
            raise ValueError(f"grad_outputs[{j}] is {got}; expected a floating tensor of shape {tuple(yj.shape)}")
    return [vj.detach().to(device=yj.device, dtype=yj.dtype) for vj, yj in zip(listed, y, strict=True)]


def _reference_gradients(point64: FunctionPoint, reference: Callable[..., Any], v64: list[Tensor]) -> list[Tensor]:
    """float64 autograd of ``reference`` (eq. VJP), or a ValueError saying why it cannot be."""
    try:
        with torch.no_grad():
            y = floating_outputs(reference(*point64.inputs))
        fn_shapes = [tuple(t.shape) for t in v64]
        if [tuple(t.shape) for t in y] != fn_shapes:
            shapes = [tuple(t.shape) for t in y]
            raise ValueError(f"reference returned outputs of shapes {shapes}; fn returned {fn_shapes}")
        return vjp(point64.with_inputs(point64.inputs, reference), v64)
    except (RuntimeError, TypeError) as error:
        first = str(error).splitlines()[0] if str(error) else ""
        raise ValueError(
            f"reference cannot be differentiated at the float64 inputs ({type(error).__name__}: {first}); "
            "expected a plain-torch forward taking the same inputs as fn"
        ) from error


def _float64_run(point64: FunctionPoint, v64: list[Tensor]) -> tuple[list[Tensor] | None, str]:
    """The function's own backward in float64, or None and why it does not run in float64."""
    try:
        with torch.no_grad():
            y = floating_outputs(point64.call(*point64.inputs))
        other = sorted({str(t.dtype) for t in y if t.dtype != torch.float64})
        if other:
            return None, f"fn does not run in float64 (it returned {', '.join(other)} for float64 inputs)"
        g64 = vjp(point64, v64)
        moved = list(point64.inputs)
        for i in point64.wrt:  # x (1 + PRECISION_PROBE): invisible to float32 arithmetic
            moved[i] = point64.inputs[i] * (1.0 + PRECISION_PROBE)
        with torch.no_grad():
            y_moved = floating_outputs(point64.call(*moved))
        predicted = sum(float((g * x).abs().sum()) for g, x in zip(g64, point64.differentiated(), strict=True))
        if predicted > 0 and all(torch.equal(a, b) for a, b in zip(y, y_moved, strict=True)):
            return None, (
                f"fn does not run in float64 (its outputs do not move when its inputs move by {PRECISION_PROBE:g} "
                f"relative: it computes in float32 or less inside, too coarse for finite differences)"
            )
        return g64, ""
    except (RuntimeError, TypeError, ValueError, NotImplementedError) as error:
        return None, f"fn does not run in float64 ({type(error).__name__}: {str(error).splitlines()[0]})"


def _L(point64: FunctionPoint, v64: list[Tensor]) -> float:
    """L = sum_j <v_j, y_j> in float64 (eq. VJP of refbp.verify.function_runs)."""
    try:
        with torch.no_grad():
            y = floating_outputs(point64.call(*point64.inputs))
        return float(sum((yj.double() * vj).sum() for yj, vj in zip(y, v64, strict=True)))
    except (RuntimeError, TypeError, ValueError, NotImplementedError):
        return math.nan


def _conditioning(
    point: FunctionPoint,
    point64: FunctionPoint,
    v: list[Tensor],
    v64: list[Tensor],
    reference: Callable[..., Any] | None,
    base: list[Tensor] | None,
    dtype: torch.dtype,
    generator: torch.Generator,
) -> list[float]:
    """Per input: CONDITIONING_SAFETY x the largest change of the float64 gradient (the
    reference's, else the function's own) when the inputs and grad_output move by one rounding
    of ``dtype`` (CONDITIONING_PROBES random roundings), and, below float64, of torch's own
    autograd of ``reference`` in ``dtype`` against float64 (refbp.verify.tolerances)."""
    if base is None:
        return [0.0] * len(point.wrt)
    eps = float(torch.finfo(dtype).eps)
    grad64 = point64.with_inputs(point64.inputs, reference) if reference is not None else point64

    def rounded(t: Tensor) -> Tensor:  # t o (1 + eps u), u ~ U(-1, 1)
        u = torch.rand(t.shape, dtype=torch.float64, generator=generator).mul_(2.0).sub_(1.0)
        return t * (1.0 + eps * u.to(t.device))

    runs = []
    for _ in range(CONDITIONING_PROBES):
        inputs = list(grad64.inputs)
        for i in grad64.wrt:
            inputs[i] = rounded(inputs[i])
        runs.append(vjp(grad64.with_inputs(inputs), [rounded(t) for t in v64]))
    if reference is not None and dtype != torch.float64:
        with contextlib.suppress(RuntimeError, TypeError, NotImplementedError):  # else the probes alone
            runs.append(vjp(point.with_inputs(point.inputs, reference), v))  # torch's own in this dtype
    out = []
    for k in range(len(point.wrt)):
        gaps = [(run[k].double() - base[k].double()).abs() for run in runs]
        finite = [gap[torch.isfinite(gap)] for gap in gaps]
        out.append(CONDITIONING_SAFETY * max((float(gap.max()) for gap in finite if gap.numel()), default=0.0))
    return out


def _resolution(
    own: list[Comparison],
    name: str,
    g64: Tensor,
    r: Tensor | None,
    fd: Any,
    mode: str | None,
    dtype: torch.dtype,
) -> list[Comparison]:
    """The dtype's rows, made unverified where the function's own float64 backward is
    contradicted but the dtype's result is not: the bug is below the dtype's resolution here."""
    tol64 = tolerance_for(FLOAT64_RUN_DTYPE)
    checks = []
    if r is not None:
        checks.append(compare(name, "reference", g64, r, tol64))
    if fd is not None:
        checks.append(fd_row(name, g64, fd[name], mode or "full", tol64, 0.0))
    bad = [row for row in checks if row.verdict == "mismatch"]
    if not bad or any(row.verdict == "mismatch" for row in own):
        return own
    worst = max(bad, key=lambda row: row.margin)
    why = (
        f"the function's own float64 backward is contradicted by {worst.reference} (greatest difference "
        f"{worst.max_abs_error:.3g} where {worst.allowed:.3g} is allowed at {_short(FLOAT64_RUN_DTYPE)}'s "
        f"tolerance), but in {_short(dtype)} the difference is within the allowance: the contradiction is below "
        f"{_short(dtype)}'s resolution at this point"
    )
    short = f"below {_short(dtype)}'s resolution at this point (see the {own[0].reference} row)"
    return [_as_unverified(row, why if k == 0 else short) for k, row in enumerate(own)]


def _as_unverified(row: Comparison, why: str) -> Comparison:
    mask = torch.zeros_like(row.verified) if row.verified is not None else None
    note = f"{row.note} {why}".strip()
    return dataclasses.replace(row, verdict="unverified", n_unverified=row.n_elements, verified=mask, note=note)


def _short(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
