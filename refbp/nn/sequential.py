"""Sequential: a stack of layers inside a network, y = F_n(... F_1(x)), as a nested torch.nn.Sequential.

    y        = F_n(F_{n-1}(... F_1(x)))                  the inner stack's forward loop
    dJ/dx    = the inner stack's backward loop from dJ/dy

Nothing new is computed: the layer exists so that a torch.nn.Sequential nested in another one
converts to one layer whose torch module is that nested Sequential again, and parameters keep
torch's names ("1.0.weight" is the first inner layer's weight of module 1). Inner layer j of
the Sequential at layer l has path (l, j): "W2.1", "a2.3", ...; the Sequential's own output is
"a2" (the same tensor as its last inner layer's output).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .keys import Key
from .layer import BackwardContext, ForwardContext, Layer, LayerGradients, LayerTangent, Params, SecondContext, Tap
from .r_stack import stack_has_second_order, stack_r_backward, stack_tangent
from .registry import convert_module, register
from .stack import StackCache, stack_backward, stack_forward, stack_keys, stack_torch_forward

__all__ = ["Sequential", "torch_modules_in_mode"]


def torch_modules_in_mode(layer: Layer) -> list[torch.nn.Module]:
    """``layer.torch_modules()``, each in the layer's own train/eval mode. A composite layer's
    ``to_torch`` sets its sub-modules' modes itself (each sub-layer's own), so only a plain
    layer's modules are switched here."""
    modules = layer.torch_modules()
    if not layer.sublayers():
        for module in modules:
            module.train(layer.training)
    return modules


class Sequential(Layer):
    """y = inner_n(... inner_1(x)) for a stack of inner layers (at least one)."""

    title = "Sequential"
    torch_prefix = "0."
    """Where the inner modules sit in ``to_torch()``'s module: "0.j" (a Residual's: "0.body.j")."""

    def __init__(self, *inner: Layer) -> None:
        if not inner or not all(isinstance(layer, Layer) for layer in inner):
            raise TypeError("Sequential(...) needs one or more refbp layers: Sequential(Linear(...), Elementwise(...))")
        if any(layer.takes_indices for layer in inner[1:]):
            raise ValueError("an Embedding can only be the first layer: its input is indices, its output vectors")
        self.inner: list[Layer] = list(inner)
        self.params = {}
        self.training = True

    @property
    def takes_indices(self) -> bool:  # type: ignore[override]  # a ClassVar elsewhere: here the first layer's
        return self.inner[0].takes_indices

    def sublayers(self) -> list[Layer]:
        return self.inner

    def keys(self, path: tuple[int, ...]) -> list[Key]:
        return [*stack_keys(self.inner, path), Key("a", path)]

    def describe(self) -> str:
        return "Sequential(" + ", ".join(layer.describe() for layer in self.inner) + ")"

    def equations(self) -> tuple[str, str]:
        return ("y = F_n(... F_1(x))", "dJ/dx = the inner layers' backward passes, last to first")

    def check_input(self, x: Tensor, path: tuple[int, ...]) -> None:
        self.inner[0].check_input(x, (*path, 1))

    def forward(self, x: Tensor, ctx: ForwardContext, path: tuple[int, ...]) -> tuple[Tensor, StackCache]:
        inner = stack_forward(self.inner, x, ctx, path)
        return inner.a[-1], inner  # y = F_n(... F_1(x))

    def backward(
        self, dJ_dy: Tensor, x: Tensor, out: Tensor, cache: StackCache, ctx: BackwardContext
    ) -> LayerGradients:
        # the inner loop may overwrite dJ/dy only where the caller gave it up (ctx.overwrite)
        grads = stack_backward(self.inner, cache, [dJ_dy], ctx, release=ctx.release)
        return LayerGradients(grads.dJ_dx, {}, grads.intermediates, grads.params)

    def cached_values(self, cache: StackCache, path: tuple[int, ...]) -> dict[Key, Tensor]:
        out: dict[Key, Tensor] = {}
        for j, layer in enumerate(self.inner, start=1):
            out.update(layer.cached_values(cache.saved[j], (*path, j)))
            out[Key("a", (*path, j))] = cache.a[j]
        return out

    def noise_of(self, cache: StackCache, path: tuple[int, ...]) -> dict[tuple[int, ...], Tensor]:
        out: dict[tuple[int, ...], Tensor] = {}
        for j, layer in enumerate(self.inner, start=1):
            out.update(layer.noise_of(cache.saved[j], (*path, j)))
        return out

    # ---- second order: the R-operator's loops over the inner stack (refbp.nn.r_stack) -----------
    @property
    def has_second_order(self) -> bool:
        return stack_has_second_order(self.inner)

    def tangent(
        self, x: Tensor, Rx: Tensor | None, out: Tensor, cache: Any, V: Params, path: tuple[int, ...]
    ) -> LayerTangent:
        inner = stack_tangent(self.inner, cache, Rx, V, path)
        return LayerTangent(inner.Ra[-1], inner, inner.intermediates(path))  # type: ignore[arg-type]

    def r_backward(
        self, g: Tensor, Rg: Tensor, x: Tensor, Rx: Tensor | None, out: Tensor, t: LayerTangent, cache: Any,
        V: Params, ctx: SecondContext,
    ) -> tuple[Tensor | None, LayerGradients]:  # fmt: skip
        g_x, R = stack_r_backward(self.inner, cache, t.cache, g, Rg, V, ctx)
        return g_x, LayerGradients(R.dJ_dx, {}, R.intermediates, R.params)

    def torch_forward(
        self, x: Tensor, p: Params, noise: Mapping[tuple[int, ...], Tensor], tap: Tap, path: tuple[int, ...]
    ) -> Tensor:
        return stack_torch_forward(self.inner, x, p, noise, tap, path)

    def to_torch(self) -> torch.nn.Module:
        module = torch.nn.Sequential(*[m for layer in self.inner for m in torch_modules_in_mode(layer)])
        module.training = self.training  # its own flag only: each inner module keeps its layer's mode
        return module

    def torch_param_names(self, path: tuple[int, ...]) -> dict[Key, str]:
        out: dict[Key, str] = {}
        offset = 0
        for j, layer in enumerate(self.inner, start=1):
            for key, relative in layer.torch_param_names((*path, j)).items():
                index, rest = relative.split(".", 1)
                out[key] = f"{self.torch_prefix}{offset + int(index)}.{rest}"
            offset += len(layer.torch_modules())
        return out


@register(torch.nn.Sequential)
def _from_sequential(module: torch.nn.Module) -> Layer:
    """A torch.nn.Sequential nested in another: its modules in order (a module used twice is
    converted twice, its parameters tied by ``from_torch``)."""
    assert isinstance(module, torch.nn.Sequential)
    if len(module) == 0:
        raise ValueError("an empty torch.nn.Sequential computes nothing; expected at least one module")
    return Sequential(*[convert_module(child, f"[{index}]") for index, child in enumerate(module)])
