"""Flatten: dimensions start_dim .. end_dim merged into one, as torch.nn.Flatten; the gradient
is dJ/dy reshaped back to the input's shape (no numbers change, only the shape)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .layer import BackwardContext, ForwardContext, Layer, LayerGradients, LayerTangent, Params, SecondContext, Tap
from .registry import register

__all__ = ["Flatten"]


class Flatten(Layer):
    """torch.nn.Flatten(start_dim, end_dim); the defaults keep the batch dimension."""

    title = "Flatten"

    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        self.start_dim, self.end_dim = int(start_dim), int(end_dim)
        self.params = {}
        self.training = True

    def describe(self) -> str:
        return f"Flatten({self.start_dim}, {self.end_dim})"

    def equations(self) -> tuple[str, str]:
        return (f"y = x with dimensions {self.start_dim}..{self.end_dim} merged", "dJ/dx = dJ/dy reshaped to x's shape")

    def forward_size(self, shape: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
        if len(shape) < 2:
            return shape, math.prod(shape)  # torch refuses it in the forward pass
        start, end = self.start_dim % len(shape), self.end_dim % len(shape)
        out = (*shape[:start], math.prod(shape[start : end + 1]), *shape[end + 1 :])
        return out, math.prod(out)  # a view of x where torch can, else one copy

    def forward(self, x: Tensor, ctx: ForwardContext, path: tuple[int, ...]) -> tuple[Tensor, None]:
        return torch.flatten(x, self.start_dim, self.end_dim), None

    def backward(self, dJ_dy: Tensor, x: Tensor, out: Tensor, cache: None, ctx: BackwardContext) -> LayerGradients:
        if not ctx.need_dx:
            return LayerGradients(None)
        g = dJ_dy if ctx.overwrite and not ctx.keep_intermediates else dJ_dy.clone()  # never share the caller's
        return LayerGradients(g.reshape(x.shape))

    # ---- second order ---------------------------------------------------------------------------
    def tangent(
        self, x: Tensor, Rx: Tensor | None, out: Tensor, cache: Any, V: Params, path: tuple[int, ...]
    ) -> LayerTangent:
        assert Rx is not None
        return LayerTangent(torch.flatten(Rx, self.start_dim, self.end_dim))  # a reshape: R{y} = R{x} reshaped

    def r_backward(
        self, g: Tensor, Rg: Tensor, x: Tensor, Rx: Tensor | None, out: Tensor, t: LayerTangent, cache: Any,
        V: Params, ctx: SecondContext,
    ) -> tuple[Tensor | None, LayerGradients]:  # fmt: skip
        return g.reshape(x.shape), LayerGradients(Rg.reshape(x.shape))  # the backward is a reshape: so is its R

    def torch_forward(
        self, x: Tensor, p: Params, noise: Mapping[tuple[int, ...], Tensor], tap: Tap, path: tuple[int, ...]
    ) -> Tensor:
        return torch.flatten(x, self.start_dim, self.end_dim)

    def to_torch(self) -> torch.nn.Module:
        return torch.nn.Flatten(self.start_dim, self.end_dim)


@register(torch.nn.Flatten)
def _from_flatten(module: torch.nn.Module) -> Layer:
    assert isinstance(module, torch.nn.Flatten)
    return Flatten(module.start_dim, module.end_dim)
