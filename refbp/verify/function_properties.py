"""The rows of check_autograd_function that test properties of a backward rather than its
values, and the forward-mode jvp's rows (refbp.verify.autograd_function says what each means).

    backward(2 g) = 2 backward(g),  backward(g + w) = backward(g) + backward(w)   linear in g
    backward(0) = 0                                                                no part without g
    backward run k times: the same (to the dtype's tolerance)                      deterministic enough
    jvp(t) = J t   against the reference's float64 JVP and finite differences along t

A property row can contradict a gradient, never verify one: its ``verified`` mask is empty, so a
tensor passes only when a reference (autograd of the reference, finite differences) verified it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .compare import Comparison, compare
from .function_runs import FunctionPoint, jvp, jvp_differences, vjp
from .rows import fd_tolerance
from .tolerances import CONDITIONING_SAFETY, Tolerance, combine

__all__ = ["PROPERTY_NOTE", "failed_row", "jvp_rows", "never_verifies", "property_rows", "unverified_row"]

PROPERTY_NOTE = "a property of the backward: contradicts, never verifies"
"""The note of a property row that holds (what it says where a tensor goes unverified)."""


def property_rows(
    point: FunctionPoint,
    v: list[Tensor],
    g: list[Tensor],
    g_runs: list[list[Tensor]],
    names: list[str],
    tol: Tolerance,
    spread: list[float],
    generator: torch.Generator,
) -> list[Comparison]:
    """Linearity in grad_output, zero grad_output, run-to-run spread: rows that can contradict
    a gradient, never verify one."""
    g2 = vjp(point, [2.0 * t for t in v])
    w = [torch.randn(t.shape, dtype=torch.float64, generator=generator).to(t.dtype).to(t.device) for t in v]
    g_w, g_sum = vjp(point, w), vjp(point, [a + b for a, b in zip(v, w, strict=True)])
    g0 = vjp(point, [torch.zeros_like(t) for t in v])
    rows = []
    for k, name in enumerate(names):
        g64, gw64 = g[k].double(), g_w[k].double()
        sizes = float(g64.abs().max()) + float(gw64.abs().max()) if g64.numel() else 0.0
        additive = tol.rtol * sizes + 2.0 * spread[k]  # g + w rounds, then each part's rounding
        checks = [
            (compare(name, "backward(2g) = 2 backward(g)", g2[k], 2.0 * g64, tol, widened=2.0 * spread[k]),
             "backward(2 g) is not 2 backward(g): the backward is not linear in grad_output (is its result "
             "multiplied by grad_output?)"),
            (compare(name, "backward(g+w) = sum", g_sum[k], g64 + gw64, tol, widened=additive),
             "backward(g + w) is not backward(g) + backward(w): the backward is not additive in grad_output"),
            (compare(name, "backward(0) = 0", g0[k], torch.zeros_like(g64), tol),
             "backward(0) is not 0: part of the gradient does not scale with grad_output"),
        ]  # fmt: skip
        if len(g_runs) > 1:
            worst = max(g_runs[1:], key=lambda run: float((run[k].double() - g64).abs().max()) if g64.numel() else 0.0)
            checks.append((compare(name, f"run-to-run ({len(g_runs)} runs)", worst[k], g64, tol),
                           "the backward's runs differ by more than the dtype allows"))  # fmt: skip
        for row, message in checks:
            note = message if row.verdict == "mismatch" else (row.note or PROPERTY_NOTE)
            if row.reference.startswith("run-to-run") and row.verdict != "mismatch" and spread[k] > 0:
                note = f"nondeterministic: runs differ by up to {spread[k]:.3g} (within the allowance; added to it)"
            rows.append(never_verifies(dataclasses.replace(row, note=note)))
    return rows


def never_verifies(row: Comparison) -> Comparison:
    """A property row: its contradictions count, its agreement verifies nothing."""
    return dataclasses.replace(row, verified=None if row.verified is None else torch.zeros_like(row.verified))


def jvp_rows(
    point: FunctionPoint,
    point64: FunctionPoint,
    reference: Callable[..., Any] | None,
    out_names: tuple[str, ...],
    dtype: torch.dtype,
    tol: Tolerance,
    generator: torch.Generator,
) -> list[Comparison]:
    """The Function's jvp along random tangents, against the reference's float64 JVP and
    finite differences of the function along the same tangents."""
    tangents = [torch.randn(x.shape, dtype=torch.float64, generator=generator).to(x.dtype).to(x.device)
                for x in point.differentiated()]  # fmt: skip
    t64 = [t.double() for t in tangents]
    try:
        dy = jvp(point, tangents)
    except (RuntimeError, NotImplementedError, TypeError, ValueError) as error:
        return [failed_row(f"{name} (jvp)", torch.empty(0), f"jvp raised {type(error).__name__}: {error}", tol)
                for name in out_names]  # fmt: skip
    rows = []
    if reference is not None:
        expected = jvp(point64.with_inputs(point64.inputs, reference), t64)
        own_dtype: tuple[Tensor, ...] | None = None
        if dtype != torch.float64:
            try:
                own_dtype = jvp(point.with_inputs(point.inputs, reference), tangents)
            except (RuntimeError, NotImplementedError):
                own_dtype = None
        for j, name in enumerate(out_names):
            gap = 0.0 if own_dtype is None else float((own_dtype[j].double() - expected[j]).abs().max())
            rows.append(compare(f"{name} (jvp)", "reference jvp", dy[j], expected[j], tol,
                                widened=CONDITIONING_SAFETY * gap if math.isfinite(gap) else 0.0))  # fmt: skip
    try:
        differences = jvp_differences(point64, t64)
    except (RuntimeError, TypeError, ValueError, NotImplementedError) as error:
        why = f"fn does not run in float64 ({type(error).__name__}: {str(error).splitlines()[0]})"
        return rows or [unverified_row(f"{name} (jvp)", dy[j], tol, f"no reference: no reference= was given and {why}")
                        for j, name in enumerate(out_names)]  # fmt: skip
    for j, name in enumerate(out_names):
        D, D_error = differences[j]
        fd_tol = combine(tol, fd_tolerance(float(D.abs().max()) if D.numel() else 0.0))
        rows.append(compare(f"{name} (jvp)", "fd jvp", dy[j], D, fd_tol, error=D_error))
    return rows


def failed_row(name: str, x: Tensor, note: str, tol: Tolerance) -> Comparison:
    shape = tuple(x.shape)
    return Comparison(
        name, "backward", shape, shape, math.inf, math.inf, math.nan, None, None, None,
        x.numel(), x.numel(), 0, tol.rtol, tol.atol, math.nan, "mismatch", note=note,
    )  # fmt: skip


def unverified_row(name: str, x: Tensor, tol: Tolerance, note: str) -> Comparison:
    shape = tuple(x.shape)
    return Comparison(
        name, "none", shape, shape, 0.0, 0.0, 0.0, None, None, None, 0, x.numel(), 0, tol.rtol, tol.atol, 0.0,
        "unverified", note=note, n_unverified=x.numel(), verified=torch.zeros(shape, dtype=torch.bool),
    )  # fmt: skip
