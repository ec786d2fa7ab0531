"""Softmax and LogSoftmax as layers, over one dimension, backward without the Jacobian.

Along the dimension ``dim`` (each slice separately), with g = dJ/dy and "o" the elementwise product:

    Softmax     s = exp(x - max x) / sum exp(x - max x)
                dJ/dx = s o (g - sum(g o s))                   J_s = diag(s) - s s^T, applied to g
    LogSoftmax  y = x - max x - log sum exp(x - max x)
                dJ/dx = g - softmax(x) o sum(g),   softmax(x) = exp(y)

Subtracting max x changes neither function (the shift cancels) and keeps exp from overflowing.
The forward pass is torch's fused softmax (one pass over x); the backward is by hand.
The Jacobian of the softmax is a full matrix per slice: keeping only its diagonal, s o (1 - s) o g,
forgets that every output moves when one input does (the - s s^T part), a classic bug. The
backward reads the layer's output (s, or y for LogSoftmax), not x.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .layer import BackwardContext, ForwardContext, Layer, LayerGradients, LayerTangent, Params, SecondContext, Tap
from .registry import register
from .validation import describe

__all__ = ["LogSoftmax", "Softmax"]

_LOG2_E = math.log2(math.e)
"""exp(y) = 2^(y log2 e): torch's exp2 runs 3-5x faster than its exp on this project's CPUs
(float32 and float64), so a multiply and an exp2 cost less than one exp."""


class _AlongDim(Layer):
    """A map over the slices of one dimension."""

    def __init__(self, dim: int) -> None:
        if not isinstance(dim, int) or isinstance(dim, bool):
            raise ValueError(f"{self.title}: dim={dim!r}; expected an int (torch's implicit dim=None is not supported)")
        self.dim = dim
        self.params = {}
        self.training = True

    def describe(self) -> str:
        return f"{self.title}(dim={self.dim})"

    def check_input(self, x: Tensor, path: tuple[int, ...]) -> None:
        if not -x.dim() <= self.dim < max(x.dim(), 1):
            where = ".".join(map(str, path))
            raise ValueError(f"layer {where} ({self.describe()}): dim {self.dim} is not a dimension of {describe(x)}")


class Softmax(_AlongDim):
    """torch.nn.Softmax(dim): s = exp(x) / sum exp(x) along ``dim``."""

    title = "Softmax"

    def equations(self) -> tuple[str, str]:
        return ("s = exp(x) / sum exp(x)  (along dim)", "dJ/dx = s o (dJ/ds - sum(dJ/ds o s))")

    def forward(self, x: Tensor, ctx: ForwardContext, path: tuple[int, ...]) -> tuple[Tensor, None]:
        self.check_input(x, path)
        return torch.softmax(x, dim=self.dim), None  # s = exp(x - max x) / sum exp(x - max x), one fused pass

    @property
    def backward_reads_input(self) -> bool:
        return False  # dJ/dx = s o (g - sum(g o s)) reads s = out only

    def backward(self, dJ_ds: Tensor, x: Tensor, out: Tensor, cache: Any, ctx: BackwardContext) -> LayerGradients:
        if not ctx.need_dx:
            return LayerGradients(None)
        s = out
        g_s = dJ_ds * s  # g o s
        along = g_s.sum(dim=self.dim, keepdim=True)  # sum(g o s) per slice
        return LayerGradients(g_s.addcmul_(s, along, value=-1.0))  # dJ/dx = s o (g - sum(g o s)) = g o s - s sum(g o s)

    # ---- second order ---------------------------------------------------------------------------
    def tangent(
        self, x: Tensor, Rx: Tensor | None, out: Tensor, cache: Any, V: Params, path: tuple[int, ...]
    ) -> LayerTangent:
        assert Rx is not None
        s = out
        return LayerTangent(s * (Rx - (s * Rx).sum(self.dim, keepdim=True)))  # R{s} = s o (R{x} - sum(s o R{x}))

    def r_backward(
        self, g: Tensor, Rg: Tensor, x: Tensor, Rx: Tensor | None, out: Tensor, t: LayerTangent, cache: Any,
        V: Params, ctx: SecondContext,
    ) -> tuple[Tensor | None, LayerGradients]:  # fmt: skip
        # dJ/dx = s o (g - sum(g o s)):
        # R{dJ/dx} = s o (R{g} - sum(R{g} o s)) + R{s} o (g - sum(g o s)) - s o sum(g o R{s})
        s, Rs, d = out, t.out, self.dim
        R_dx = s * (Rg - (Rg * s).sum(d, keepdim=True))
        if ctx.first:
            R_dx += Rs * (g - (g * s).sum(d, keepdim=True)) - s * (g * Rs).sum(d, keepdim=True)
        return s * (g - (g * s).sum(d, keepdim=True)), LayerGradients(R_dx)

    def torch_forward(
        self, x: Tensor, p: Params, noise: Mapping[tuple[int, ...], Tensor], tap: Tap, path: tuple[int, ...]
    ) -> Tensor:
        return F.softmax(x, dim=self.dim)

    def to_torch(self) -> torch.nn.Module:
        return torch.nn.Softmax(dim=self.dim)


class LogSoftmax(_AlongDim):
    """torch.nn.LogSoftmax(dim): y = x - log sum exp(x) along ``dim``."""

    title = "LogSoftmax"

    def equations(self) -> tuple[str, str]:
        return ("y = x - log sum exp(x)  (along dim)", "dJ/dx = dJ/dy - exp(y) o sum(dJ/dy)")

    def forward(self, x: Tensor, ctx: ForwardContext, path: tuple[int, ...]) -> tuple[Tensor, None]:
        self.check_input(x, path)
        return torch.log_softmax(x, dim=self.dim), None  # y = x - max x - log sum exp(x - max x), fused

    @property
    def backward_reads_input(self) -> bool:
        return False  # dJ/dx = g - exp(out) sum(g) reads out only

    def backward(self, dJ_dy: Tensor, x: Tensor, out: Tensor, cache: Any, ctx: BackwardContext) -> LayerGradients:
        if not ctx.need_dx:
            return LayerGradients(None)
        total = dJ_dy.sum(dim=self.dim, keepdim=True)  # sum(g) per slice
        s = torch.mul(out, _LOG2_E).exp2_()  # softmax(x) = exp(y)
        # dJ/dx = g - softmax(x) o sum(g), in softmax's storage: one (N, d) tensor
        return LayerGradients(torch.addcmul(dJ_dy, s, total, value=-1.0, out=s))

    # ---- second order ---------------------------------------------------------------------------
    def tangent(
        self, x: Tensor, Rx: Tensor | None, out: Tensor, cache: Any, V: Params, path: tuple[int, ...]
    ) -> LayerTangent:
        assert Rx is not None
        s = out.exp()  # softmax(x)
        return LayerTangent(Rx - (s * Rx).sum(self.dim, keepdim=True), s)  # R{y} = R{x} - sum(s o R{x})

    def r_backward(
        self, g: Tensor, Rg: Tensor, x: Tensor, Rx: Tensor | None, out: Tensor, t: LayerTangent, cache: Any,
        V: Params, ctx: SecondContext,
    ) -> tuple[Tensor | None, LayerGradients]:  # fmt: skip
        # dJ/dx = g - s sum(g):  R{dJ/dx} = R{g} - s sum(R{g}) - R{s} sum(g),  R{s} = s o R{y}
        s, d = t.cache, self.dim
        R_dx = Rg - s * Rg.sum(d, keepdim=True)
        if ctx.first:
            R_dx -= s * t.out * g.sum(d, keepdim=True)
        return g - s * g.sum(d, keepdim=True), LayerGradients(R_dx)

    def torch_forward(
        self, x: Tensor, p: Params, noise: Mapping[tuple[int, ...], Tensor], tap: Tap, path: tuple[int, ...]
    ) -> Tensor:
        return F.log_softmax(x, dim=self.dim)

    def to_torch(self) -> torch.nn.Module:
        return torch.nn.LogSoftmax(dim=self.dim)


def _dim_of(module: torch.nn.Module) -> int:
    assert isinstance(module, (torch.nn.Softmax, torch.nn.LogSoftmax))
    dim = module.dim
    if dim is None:
        raise ValueError("dim=None (torch's implicit, deprecated choice of dimension) is not supported; give dim")
    return int(dim)


@register(torch.nn.Softmax)
def _from_softmax(module: torch.nn.Module) -> Layer:
    return Softmax(_dim_of(module))


@register(torch.nn.LogSoftmax)
def _from_log_softmax(module: torch.nn.Module) -> Layer:
    return LogSoftmax(_dim_of(module))
