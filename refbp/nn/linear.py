"""Linear: y = x W^T + b over the last dimension, any leading dimensions ((N, d) or (B, T, d)).

With M = the number of rows once the leading dimensions are flattened (M = N, or B T):

    y        = x W^T + b                      (..., d_out)
    dJ/dW    = sum_rows dJ/dy^T x  + lambda W (d_out, d_in)     every row's outer product, summed
    dJ/db    = sum_rows dJ/dy                 (d_out,)
    dJ/dx    = dJ/dy W                        (..., d_in)

Second order (refbp.nn.second_order), R{.} = d/dr (.)(w + r v) along V_W, V_b and R{x}:

    R{y}      = R{x} W^T + x V_W^T + V_b                         the tangent (product rule)
    R{dJ/dx}  = R{dJ/dy} W + dJ/dy V_W
    (H v)_W   = sum_rows R{dJ/dy}^T x + dJ/dy^T R{x}
    (H v)_b   = sum_rows R{dJ/dy}

The bias is optional (``b=None``), as in ``torch.nn.Linear(bias=False)``. The four lines are
module functions, written once: Dense (refbp.nn.dense), the MLP's layer, is this map followed
by an activation and calls them for its eqs. (1), (6), (7) and (8).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from .layer import BackwardContext, ForwardContext, Layer, LayerGradients, LayerTangent, Params, SecondContext, Tap
from .registry import register
from .validation import describe

__all__ = [
    "Linear",
    "bias_gradient",
    "input_gradient",
    "linear_map",
    "linear_r_backward",
    "linear_tangent",
    "weight_gradient",
]


def linear_map(x: Tensor, W: Tensor, b: Tensor | None) -> Tensor:
    """y = x W^T + b   (..., d_out), from x (..., d_in), W (d_out, d_in), b (d_out,) or None."""
    if b is None:
        return x @ W.T  # y = x W^T   (..., d_out)
    if x.dim() == 2:
        return torch.addmm(b, x, W.T)  # y = x W^T + b   (N, d_out), one fused op
    rows = x.reshape(-1, x.shape[-1])  # (M, d_in): every leading dimension a row (a view of a contiguous x)
    return torch.addmm(b, rows, W.T).view(*x.shape[:-1], W.shape[0])  # the same op, viewed back   (..., d_out)


def weight_gradient(dJ_dy: Tensor, x: Tensor, W: Tensor, weight_decay: float = 0.0) -> Tensor:
    """dJ/dW = sum_rows dJ/dy^T x + lambda W   (d_out, d_in): every row's outer product, summed."""
    g = dJ_dy if dJ_dy.dim() == 2 else dJ_dy.reshape(-1, W.shape[0])  # (M, d_out)   every leading dim a row
    rows = x if x.dim() == 2 else x.reshape(-1, W.shape[1])  # (M, d_in)
    if weight_decay:
        return torch.addmm(W, g.T, rows, beta=weight_decay)  # dJ/dy^T x + lambda W
    return g.T @ rows  # (d_out, M) @ (M, d_in) = (d_out, d_in)


def bias_gradient(dJ_dy: Tensor) -> Tensor:
    """dJ/db = sum_rows dJ/dy   (d_out,)."""
    return (dJ_dy if dJ_dy.dim() == 2 else dJ_dy.reshape(-1, dJ_dy.shape[-1])).sum(dim=0)


def input_gradient(dJ_dy: Tensor, W: Tensor) -> Tensor:
    """dJ/dx = dJ/dy W   (..., d_in)."""
    return dJ_dy @ W


def linear_tangent(x: Tensor, Rx: Tensor | None, W: Tensor, V_W: Tensor, V_b: Tensor | None) -> Tensor:
    """R{y} = R{x} W^T + x V_W^T + V_b   (..., d_out): the product rule on y = x W^T + b."""
    Ry = linear_map(x, V_W, V_b)  # x V_W^T + V_b
    return Ry if Rx is None else Ry.add_(Rx @ W.T)  # + R{x} W^T


def linear_r_backward(
    g: Tensor, Rg: Tensor, x: Tensor, Rx: Tensor | None, W: Tensor, V_W: Tensor, ctx: SecondContext, *, bias: bool
) -> tuple[Tensor | None, LayerGradients]:
    """The R-operator of y = x W^T + b's backward, from g = dJ/dy and R{g} (the module docstring's
    four lines); the terms that carry g are dropped for Gauss-Newton (``ctx.first`` = 0)."""
    first = ctx.first
    g2, Rg2 = g.reshape(-1, W.shape[0]), Rg.reshape(-1, W.shape[0])  # (M, d_out): every row
    HW = Rg2.T @ x.reshape(-1, W.shape[1])  # sum_rows R{dJ/dy}^T x   (d_out, d_in)
    if Rx is not None and first:
        HW += g2.T @ Rx.reshape(-1, W.shape[1])  # + dJ/dy^T R{x}
    params = {"W": HW, "b": Rg2.sum(dim=0)} if bias else {"W": HW}  # (H v)_b = sum_rows R{dJ/dy}
    if not ctx.need_dx:
        return None, LayerGradients(None, params)
    R_dx = Rg @ W  # R{dJ/dx} = R{dJ/dy} W + dJ/dy V_W
    if first:
        R_dx += g @ V_W
    return g @ W, LayerGradients(R_dx, params)


class Linear(Layer):
    """torch.nn.Linear's map on the last dimension.

    Args:
        W: (d_out, d_in), torch.nn.Linear's layout.
        b: (d_out,), or None for no bias.
    """

    title = "Linear"
    decayed = ("W",)
    torch_names: ClassVar[dict[str, str]] = {"W": "0.weight", "b": "0.bias"}

    def __init__(self, W: Tensor, b: Tensor | None = None) -> None:
        self.params = {"W": W} if b is None else {"W": W, "b": b}
        self.training = True

    @property
    def W(self) -> Tensor:
        return self.params["W"]

    def describe(self) -> str:
        d_out, d_in = self.W.shape
        return f"Linear({d_in} -> {d_out}{'' if 'b' in self.params else ', no bias'})"

    def equations(self) -> tuple[str, str]:
        bias = " + b" if "b" in self.params else ""
        return (
            f"y = x W^T{bias}",
            "dJ/dW = sum_rows dJ/dy^T x ;  " + ("dJ/db = sum_rows dJ/dy ;  " if bias else "") + "dJ/dx = dJ/dy W",
        )

    def check_input(self, x: Tensor, path: tuple[int, ...]) -> None:
        d_in = self.W.shape[1]
        if x.dim() < 1 or x.shape[-1] != d_in:
            raise ValueError(f"layer {_at(path)} ({self.describe()}) needs input (..., {d_in}), got {describe(x)}")

    def forward_size(self, shape: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
        out = (*shape[:-1], self.W.shape[0])
        return out, math.prod(out)  # y; the backward pass reads x, kept by the caller

    def forward(self, x: Tensor, ctx: ForwardContext, path: tuple[int, ...]) -> tuple[Tensor, None]:
        return linear_map(x, self.W, self.params.get("b")), None  # y = x W^T + b   (..., d_out)

    @property
    def backward_reads_output(self) -> bool:
        return False  # dJ/dW reads x, dJ/dx reads W: y itself is never read

    def backward(self, dJ_dy: Tensor, x: Tensor, out: Tensor, cache: Any, ctx: BackwardContext) -> LayerGradients:
        W = self.W  # (d_out, d_in)
        params = {"W": weight_gradient(dJ_dy, x, W, ctx.weight_decay)}  # dJ/dW = sum_rows dJ/dy^T x + lambda W
        if "b" in self.params:
            params["b"] = bias_gradient(dJ_dy)  # dJ/db = sum over rows   (d_out,)
        dJ_dx = input_gradient(dJ_dy, W) if ctx.need_dx else None  # dJ/dx = dJ/dy W   (..., d_in)
        return LayerGradients(dJ_dx, params)

    def tangent(
        self, x: Tensor, Rx: Tensor | None, out: Tensor, cache: Any, V: Params, path: tuple[int, ...]
    ) -> LayerTangent:
        V_b = V(path, "b") if "b" in self.params else None
        return LayerTangent(linear_tangent(x, Rx, self.W, V(path, "W"), V_b))  # R{y} = R{x} W^T + x V_W^T + V_b

    def r_backward(
        self, g: Tensor, Rg: Tensor, x: Tensor, Rx: Tensor | None, out: Tensor, t: LayerTangent, cache: Any,
        V: Params, ctx: SecondContext,
    ) -> tuple[Tensor | None, LayerGradients]:  # fmt: skip
        return linear_r_backward(g, Rg, x, Rx, self.W, V(ctx.path, "W"), ctx, bias="b" in self.params)

    def torch_forward(
        self, x: Tensor, p: Params, noise: Mapping[tuple[int, ...], Tensor], tap: Tap, path: tuple[int, ...]
    ) -> Tensor:
        return F.linear(x, p(path, "W"), p(path, "b") if "b" in self.params else None)

    def to_torch(self) -> torch.nn.Module:
        d_out, d_in = self.W.shape
        module = torch.nn.Linear(d_in, d_out, bias="b" in self.params, dtype=self.W.dtype, device=self.W.device)
        with torch.no_grad():
            module.weight.copy_(self.W)
            if "b" in self.params:
                module.bias.copy_(self.params["b"])
        return module


def _at(path: tuple[int, ...]) -> str:
    return ".".join(str(i) for i in path)


@register(torch.nn.Linear)
def _from_linear(module: torch.nn.Module) -> Layer:
    assert isinstance(module, torch.nn.Linear)
    return Linear(module.weight.detach().clone(), None if module.bias is None else module.bias.detach().clone())
