"""Running a user's differentiable function the ways ``check_autograd_function`` needs: its
backward (a vector-Jacobian product), its forward-mode jvp, a float64 copy of its point, and
float64 finite differences of its forward alone.

For a function f of inputs x_1..x_m with outputs y_1..y_k and output weights v_j (grad_output),
the backward returns

    g_i = dL/dx_i,   L(x) = sum_j <v_j, y_j(x)>                                   (VJP)

and the forward-mode derivative along tangents t_i is

    dy_j = sum_i (dy_j/dx_i) t_i  ~  (y_j(x + h t) - y_j(x - h t)) / 2h              (JVP)

This is the harness side: torch.autograd runs the user's backward (the code under test) and
differentiates plain-torch references; refbp's manual path is not involved.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor

from .fd_core import MOVES, FDResult, combine_evaluations
from .finite_diff import function_finite_differences
from .tolerances import FD_STEP

__all__ = ["FunctionPoint", "floating_outputs", "jvp", "jvp_differences", "to_float64", "vjp", "vjp_differences"]


@dataclass(frozen=True)
class FunctionPoint:
    """Where a function is checked.

    Attributes:
        call: the function (``Function.apply`` for an autograd.Function).
        inputs: its positional inputs as given (tensors of any dtype, or other values).
        names: one name per input ("x", "W", ... from the forward's signature).
        wrt: indices of the inputs differentiated: the floating-point tensors.
    """

    call: Callable[..., Any]
    inputs: tuple[Any, ...]
    names: tuple[str, ...]
    wrt: tuple[int, ...]

    def with_inputs(self, inputs: Sequence[Any], call: Callable[..., Any] | None = None) -> FunctionPoint:
        """The same point with other inputs (a float64 copy, a rounded copy) or another function."""
        return FunctionPoint(call or self.call, tuple(inputs), self.names, self.wrt)

    def differentiated(self) -> list[Tensor]:
        return [self.inputs[i] for i in self.wrt]


def floating_outputs(out: Any) -> tuple[Tensor, ...]:
    """A function's result as its floating-point tensor outputs (a tensor, or a tuple/list)."""
    items = out if isinstance(out, (tuple, list)) else (out,)
    found = tuple(t for t in items if isinstance(t, Tensor) and t.is_floating_point())
    if not found:
        raise TypeError(f"the function returned no floating-point tensor (got {type(out).__name__}): nothing to check")
    return found


def to_float64(point: FunctionPoint) -> FunctionPoint:
    """The point with every differentiated input cast to float64 (exactly: a float16, bfloat16
    or float32 value is a float64 value), on its own device."""
    inputs = list(point.inputs)
    for i in point.wrt:
        inputs[i] = inputs[i].detach().to(torch.float64)
    return point.with_inputs(inputs)


def vjp(point: FunctionPoint, v: Sequence[Tensor]) -> list[Tensor]:
    """g_i = sum_j v_j^T dy_j/dx_i for each differentiated input, as the function's backward
    computes it (eq. VJP). A gradient the backward returns as None is zero (torch's convention)."""
    leaves = list(point.inputs)
    for i in point.wrt:
        leaves[i] = leaves[i].detach().requires_grad_(True)
    with torch.enable_grad():
        y = floating_outputs(point.call(*leaves))
        used = [(yj, vj) for yj, vj in zip(y, v, strict=True) if yj.requires_grad]
        if not used:
            raise RuntimeError("no output of the function depends on its inputs through autograd")
        grads = torch.autograd.grad([yj for yj, _ in used], [leaves[i] for i in point.wrt],
                                    [vj for _, vj in used], allow_unused=True)  # fmt: skip
    return [torch.zeros_like(leaves[i]) if g is None else g.detach() for i, g in zip(point.wrt, grads, strict=True)]


def jvp(point: FunctionPoint, tangents: Sequence[Tensor]) -> tuple[Tensor, ...]:
    """dy_j = sum_i dy_j/dx_i t_i for each output (eq. JVP), by forward-mode autograd: the
    Function's own ``jvp`` for an autograd.Function, torch's rules for plain torch code."""
    with fwAD.dual_level():
        duals = list(point.inputs)
        for i, t in zip(point.wrt, tangents, strict=True):
            duals[i] = fwAD.make_dual(point.inputs[i].detach(), t)
        out = floating_outputs(point.call(*duals))
        tangents_out = [fwAD.unpack_dual(y).tangent for y in out]
        return tuple(
            torch.zeros_like(y.detach()) if t is None else t.detach().clone()
            for y, t in zip(out, tangents_out, strict=True)
        )


def vjp_differences(
    point: FunctionPoint, v: Sequence[Tensor], *, mode: str, directions: int, seed: int
) -> dict[str, FDResult]:
    """Finite differences of L(x) = sum_j <v_j, y_j(x)> (eq. VJP) for each differentiated
    input, by refbp.verify.finite_diff (float64 steps, Richardson error estimates). ``point``
    must be float64 and ``v`` float64: the forward alone is called, never the backward."""

    def L(params: dict[str, Any]) -> float:
        inputs = list(point.inputs)
        for i in point.wrt:
            inputs[i] = params[point.names[i]]
        with torch.no_grad():
            y = floating_outputs(point.call(*inputs))
        return float(sum((yj.to(torch.float64) * vj).sum() for yj, vj in zip(y, v, strict=True)))

    params = {point.names[i]: point.inputs[i] for i in point.wrt}
    return function_finite_differences(L, params, mode=mode, directions=directions, seed=seed)


def jvp_differences(point: FunctionPoint, tangents: Sequence[Tensor]) -> list[tuple[Tensor, Tensor]]:
    """Per output: (D, error) with D ~ dy_j along the tangents (eq. JVP), central differences at
    steps h and 2h (refbp.verify.fd_core.combine_evaluations), h = FD_STEP max(1, max|x|).
    ``point`` and ``tangents`` float64."""
    scale = max([1.0] + [float(x.abs().max()) for x in point.differentiated() if x.numel()])
    h = FD_STEP * scale
    runs = []
    for s in MOVES:  # +h, -h, +2h, -2h
        inputs = list(point.inputs)
        for i, t in zip(point.wrt, tangents, strict=True):
            inputs[i] = point.inputs[i] + s * h * t
        with torch.no_grad():
            runs.append(floating_outputs(point.call(*inputs)))
    out = []
    for j in range(len(runs[0])):
        Y = torch.stack([run[j].detach().to(torch.float64).reshape(-1).cpu() for run in runs])  # (4, P)
        h_k = torch.full((Y.shape[1],), h, dtype=torch.float64)
        D, error = combine_evaluations(Y, h_k, h_k)
        shape = runs[0][j].shape
        out.append((D.reshape(shape), error.reshape(shape)))
    return out
