"""Residual: y = x + F(x), F a stack of inner layers; x reaches y by two paths, so its
gradient is the sum of both.

    y      = x + F(x)                                 x and F(x) of one shape
    dJ/dx  = dJ/dy  +  dJ/dx through F                the skip path, plus the inner stack's backward

Forgetting the first term (the gradient of the skip connection) is a classic bug
(refbp.apps.layer_bugs). Residuals nest (a Residual inside a Residual) up to refbp.nn.stack.MAX_DEPTH
levels, refused at construction beyond. Inner layer j of the residual at layer l has path (l, j): its tensors are
"W3.1", "a3.2", ...; the residual's own output is "a3".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from .layer import BackwardContext, ForwardContext, Layer, LayerGradients, LayerTangent, Params, SecondContext, Tap
from .registry import convert_module as convert_child
from .registry import register
from .sequential import Sequential
from .stack import StackCache, check_depth, stack_backward
from .validation import describe

__all__ = ["Residual", "TorchResidual"]


class TorchResidual(torch.nn.Module):
    """x + body(x) as a torch module: what ``Residual.to_torch()`` gives back (torch has no
    residual module of its own). ``from_torch`` turns it into a Residual again."""

    def __init__(self, body: torch.nn.Sequential) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class Residual(Sequential):
    """y = x + inner(x) for a stack of inner layers (at least one), shapes preserved: a
    Sequential (its inner stack, keys, caches and walk) with the skip path added."""

    title = "Residual"
    torch_prefix = "0.body."

    def __init__(self, *inner: Layer) -> None:
        if not inner or not all(isinstance(layer, Layer) for layer in inner):
            raise TypeError(
                "Residual(...) needs one or more refbp layers: Residual(Linear(...), Elementwise('relu'), ...)"
            )
        if any(layer.takes_indices for layer in inner):
            raise ValueError("an Embedding cannot sit inside a Residual: its input is indices, its output vectors")
        super().__init__(*inner)
        check_depth(self)  # nesting past MAX_DEPTH is refused here, before any pass recurses

    def describe(self) -> str:
        return "Residual(" + ", ".join(layer.describe() for layer in self.inner) + ")"

    def equations(self) -> tuple[str, str]:
        return ("y = x + F(x)", "dJ/dx = dJ/dy + dJ/dx through F")

    def forward(self, x: Tensor, ctx: ForwardContext, path: tuple[int, ...]) -> tuple[Tensor, StackCache]:
        Fx, inner = super().forward(x, ctx, path)
        if Fx.shape != x.shape:
            where = ".".join(map(str, path))
            raise ValueError(f"layer {where} ({self.describe()}): F(x) has {describe(Fx)} but x has {describe(x)}")
        return x + Fx, inner  # y = x + F(x)

    def backward(
        self, dJ_dy: Tensor, x: Tensor, out: Tensor, cache: StackCache, ctx: BackwardContext
    ) -> LayerGradients:
        # the inner stack reads dJ/dy (= dJ/dF(x)) and never overwrites it: the skip path needs it too
        inner_ctx = dataclasses.replace(ctx, overwrite=False)
        grads = stack_backward(self.inner, cache, [dJ_dy], inner_ctx, release=ctx.release)  # frees as it goes
        dJ_dx = None
        if ctx.need_dx:
            assert grads.dJ_dx is not None
            dJ_dx = grads.dJ_dx.add_(dJ_dy) if grads.dJ_dx is not dJ_dy else dJ_dy + grads.dJ_dx  # skip + through F
        return LayerGradients(dJ_dx, {}, grads.intermediates, grads.params)

    # ---- second order: y = x + F(x), so R{y} = R{x} + R{F(x)} and both paths add up again ----
    def tangent(
        self, x: Tensor, Rx: Tensor | None, out: Tensor, cache: Any, V: Params, path: tuple[int, ...]
    ) -> LayerTangent:
        inner = super().tangent(x, Rx, out, cache, V, path)
        assert Rx is not None
        return LayerTangent(Rx + inner.out, inner.cache, inner.intermediates)  # R{y} = R{x} + R{F(x)}

    def r_backward(
        self, g: Tensor, Rg: Tensor, x: Tensor, Rx: Tensor | None, out: Tensor, t: LayerTangent, cache: Any,
        V: Params, ctx: SecondContext,
    ) -> tuple[Tensor | None, LayerGradients]:  # fmt: skip
        inner_ctx = ctx.inner(ctx.path)  # F's first layer needs dJ/dx: the skip path adds to it
        g_x, R = super().r_backward(g, Rg, x, Rx, out, t, cache, V, inner_ctx)
        assert g_x is not None and R.dJ_dx is not None
        return g + g_x, LayerGradients(Rg + R.dJ_dx, {}, R.intermediates, R.sub_params)  # skip + through F, and its R

    def torch_forward(
        self, x: Tensor, p: Params, noise: Mapping[tuple[int, ...], Tensor], tap: Tap, path: tuple[int, ...]
    ) -> Tensor:
        return x + super().torch_forward(x, p, noise, tap, path)

    def to_torch(self) -> torch.nn.Module:
        body = super().to_torch()  # the inner modules, each in its own mode
        assert isinstance(body, torch.nn.Sequential)
        module = TorchResidual(body)
        module.training = self.training
        return module


def residual_from_sequence(children: Sequence[torch.nn.Module]) -> list[Layer]:
    """The inner layers of a TorchResidual's body, each converted."""
    return [convert_child(child, f"body[{index}]") for index, child in enumerate(children)]


@register(TorchResidual)
def _from_residual(module: torch.nn.Module) -> Layer:
    assert isinstance(module, TorchResidual)
    return Residual(*residual_from_sequence(list(module.body)))
