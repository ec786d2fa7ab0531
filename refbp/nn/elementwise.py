"""Elementwise: an activation as a layer of its own, a = f(x), dJ/dx = dJ/da o f'(x).

The activation records of refbp.nn.activations (their f, f', pieces and torch functions) as
a layer, for networks that list activations as separate modules, as torch.nn.Sequential does:
``Linear, Tanh, Linear`` is the MLP's Dense layer split in two.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .activations import ACTIVATIONS, Activation, elu, gelu, get_activation, leaky_relu, softplus
from .curvature import first_derivative, second_derivative
from .layer import BackwardContext, ForwardContext, Layer, LayerGradients, LayerTangent, Params, SecondContext, Tap
from .pieces import Pieces
from .registry import register

__all__ = ["OUTPUT_RANGES", "Elementwise"]

OUTPUT_RANGES: dict[str, tuple[float, float]] = {"sigmoid": (0.0, 1.0), "tanh": (-1.0, 1.0)}
"""Activation name -> the closed range of its values in floating point (a saturated sigmoid
gives exactly 0 or 1); the others are unbounded on at least one side."""


class Elementwise(Layer):
    """a = f(x) entry by entry, for an activation record or name ("tanh", leaky_relu(0.2), ...)."""

    title = "Elementwise"

    def __init__(self, activation: Activation | str) -> None:
        self.activation = get_activation(activation) if isinstance(activation, str) else activation
        self.params = {}
        self.training = True

    @property
    def pieces(self) -> Pieces | None:
        return self.activation.pieces

    @property
    def output_range(self) -> tuple[float, float] | None:
        return OUTPUT_RANGES.get(self.activation.name)

    def describe(self) -> str:
        return self.activation.name

    def equations(self) -> tuple[str, str]:
        f, f_prime = (part.strip() for part in self.activation.equation.split(";"))
        return (f.replace("z", "x"), f"dJ/dx = dJ/da o f'(x),  {f_prime.replace('z', 'x')}")

    def forward(self, x: Tensor, ctx: ForwardContext, path: tuple[int, ...]) -> tuple[Tensor, Tensor | None]:
        a = self.activation.f(x)  # a = f(x)   (..., d)
        return a, (x if self.activation.derivative_of == "z" else None)  # f' reads x, or a itself

    @property
    def backward_reads_input(self) -> bool:
        return self.activation.derivative_of == "z"  # f'(x) from x

    @property
    def backward_reads_output(self) -> bool:
        return self.activation.derivative_of == "a"  # f'(x) from a = f(x): sigmoid, tanh, relu

    def backward(
        self, dJ_da: Tensor, x: Tensor, out: Tensor, cache: Tensor | None, ctx: BackwardContext
    ) -> LayerGradients:
        t = out if self.activation.derivative_of == "a" else x
        in_place = ctx.overwrite and not ctx.keep_intermediates
        dJ_dx = self.activation.chain(t, dJ_da if in_place else dJ_da.clone())  # dJ/dx = dJ/da o f'(x)
        return LayerGradients(dJ_dx)

    # ---- second order ---------------------------------------------------------------------------
    def tangent(
        self, x: Tensor, Rx: Tensor | None, out: Tensor, cache: Any, V: Params, path: tuple[int, ...]
    ) -> LayerTangent:
        assert Rx is not None
        slope = first_derivative(self.activation, x, out)  # f'(x)
        return LayerTangent(slope * Rx, slope)  # R{a} = f'(x) o R{x}

    def r_backward(
        self, g: Tensor, Rg: Tensor, x: Tensor, Rx: Tensor | None, out: Tensor, t: LayerTangent, cache: Any,
        V: Params, ctx: SecondContext,
    ) -> tuple[Tensor | None, LayerGradients]:  # fmt: skip
        assert Rx is not None
        slope = t.cache  # f'(x)
        # R{dJ/dx} = R{dJ/da} o f'(x) + dJ/da o f''(x) o R{x};   dJ/dx = dJ/da o f'(x)
        R_dx = Rg * slope
        if ctx.first:
            R_dx += g * second_derivative(self.activation, x, out) * Rx
        return g * slope, LayerGradients(R_dx)

    def torch_forward(
        self, x: Tensor, p: Params, noise: Mapping[tuple[int, ...], Tensor], tap: Tap, path: tuple[int, ...]
    ) -> Tensor:
        if self.activation.pieces is not None:
            tap.piecewise(x, self.activation.pieces)
        return self.activation.torch_fn(x)

    def to_torch(self) -> torch.nn.Module:
        return self.activation.torch_module()


def _simple(name: str) -> None:
    module_type = type(ACTIVATIONS[name].torch_module())
    register(module_type)(lambda module: Elementwise(name))


for _name in ("identity", "sigmoid", "tanh", "relu", "silu"):
    _simple(_name)


@register(torch.nn.LeakyReLU)
def _from_leaky_relu(module: torch.nn.Module) -> Layer:
    assert isinstance(module, torch.nn.LeakyReLU)
    return Elementwise(leaky_relu(module.negative_slope))


@register(torch.nn.Softplus)
def _from_softplus(module: torch.nn.Module) -> Layer:
    assert isinstance(module, torch.nn.Softplus)
    return Elementwise(softplus(float(module.beta), float(module.threshold)))


@register(torch.nn.GELU)
def _from_gelu(module: torch.nn.Module) -> Layer:
    assert isinstance(module, torch.nn.GELU)
    return Elementwise(gelu(module.approximate))


@register(torch.nn.ELU)
def _from_elu(module: torch.nn.Module) -> Layer:
    assert isinstance(module, torch.nn.ELU)
    return Elementwise(elu(float(module.alpha)))
