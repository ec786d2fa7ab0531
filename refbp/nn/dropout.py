"""Dropout: in training mode each entry is kept with probability 1 - p and scaled by 1/(1 - p)
(inverted dropout, as torch), in eval mode the identity.

    m        ~ Bernoulli(1 - p), entry by entry     (drawn from refbp's own seeded generator)
    y        = x o m / (1 - p)
    dJ/dx    = dJ/dy o m / (1 - p)                  the same mask, the same scale

The mask m is drawn once per forward pass, kept in the cache, and handed to the oracle and
to finite differences (``cache.noise``), so all three evaluate the same function of x.
Forgetting the mask, or the 1/(1 - p), in the backward pass is a classic bug (refbp.apps.layer_bugs).
Masks are drawn on the CPU, so every device sees the same ones for the same seed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .layer import BackwardContext, ForwardContext, Layer, LayerGradients, LayerTangent, Params, SecondContext, Tap
from .registry import register
from .validation import check_seed

__all__ = ["Dropout"]


class Dropout(Layer):
    """torch.nn.Dropout(p), with masks from refbp's own generator seeded with ``seed``."""

    title = "Dropout"

    def __init__(self, p: float = 0.5, *, seed: int = 0) -> None:
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p) or not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout p={p!r} must be a probability in [0, 1)")
        self.p = float(p)
        self.seed = check_seed(seed)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.params = {}
        self.training = True

    def reseed(self, seed: int) -> None:
        """Draw the masks from ``seed`` from now on (a fresh generator)."""
        self.seed = check_seed(seed)
        self.generator = torch.Generator().manual_seed(self.seed)

    @property
    def stochastic(self) -> bool:
        return self.training and self.p > 0.0

    def describe(self) -> str:
        return f"Dropout(p={self.p:g}{'' if self.training else ', eval: identity'})"

    def equations(self) -> tuple[str, str]:
        if not self.stochastic:
            return ("y = x   (eval mode, or p = 0)", "dJ/dx = dJ/dy")
        return (f"y = x o m / (1 - p),  m ~ Bernoulli(1 - p), p = {self.p:g}", "dJ/dx = dJ/dy o m / (1 - p)")

    def forward(self, x: Tensor, ctx: ForwardContext, path: tuple[int, ...]) -> tuple[Tensor, Tensor | None]:
        if not self.stochastic:
            return x, None
        given = None if ctx.noise is None else ctx.noise.get(path)
        if given is not None:
            if tuple(given.shape) != tuple(x.shape):
                raise ValueError(f"noise[{path}] has shape {tuple(given.shape)}; layer {path} needs {tuple(x.shape)}")
            mask = given.to(device=x.device, dtype=torch.bool)
        else:
            keep = torch.rand(x.shape, dtype=torch.float64, generator=self.generator) >= self.p  # on the CPU
            mask = keep.to(x.device)
        return torch.mul(x, mask).mul_(1.0 / (1.0 - self.p)), mask  # y = x o m / (1 - p)

    @property
    def backward_reads_input(self) -> bool:
        return False  # dJ/dx = dJ/dy o m / (1 - p): the mask (its cache) only

    @property
    def backward_reads_output(self) -> bool:
        return False

    def backward(
        self, dJ_dy: Tensor, x: Tensor, out: Tensor, mask: Tensor | None, ctx: BackwardContext
    ) -> LayerGradients:
        if not ctx.need_dx:
            return LayerGradients(None)
        if mask is None:  # the identity: hand dJ/dy down (a copy unless it may be overwritten)
            return LayerGradients(dJ_dy if ctx.overwrite and not ctx.keep_intermediates else dJ_dy.clone())
        in_place = ctx.overwrite and not ctx.keep_intermediates  # dJ/dy is ours to overwrite
        dJ_dx = dJ_dy.mul_(mask) if in_place else torch.mul(dJ_dy, mask)
        return LayerGradients(dJ_dx.mul_(1.0 / (1.0 - self.p)))  # dJ/dx = dJ/dy o m / (1 - p)

    def noise_of(self, cache: Tensor | None, path: tuple[int, ...]) -> dict[tuple[int, ...], Tensor]:
        return {} if cache is None else {path: cache}

    # ---- second order ---------------------------------------------------------------------------
    def tangent(
        self, x: Tensor, Rx: Tensor | None, out: Tensor, cache: Any, V: Params, path: tuple[int, ...]
    ) -> LayerTangent:
        assert Rx is not None
        return LayerTangent(Rx if cache is None else Rx * cache / (1.0 - self.p))  # R{y} = R{x} o m / (1 - p)

    def r_backward(
        self, g: Tensor, Rg: Tensor, x: Tensor, Rx: Tensor | None, out: Tensor, t: LayerTangent, cache: Any,
        V: Params, ctx: SecondContext,
    ) -> tuple[Tensor | None, LayerGradients]:  # fmt: skip
        if cache is None:  # eval mode, or p = 0: the identity
            return g, LayerGradients(Rg)
        scale = 1.0 / (1.0 - self.p)
        return g * cache * scale, LayerGradients(
            Rg * cache * scale
        )  # linear in dJ/dy: R{dJ/dx} = R{dJ/dy} o m / (1 - p)

    def torch_forward(
        self, x: Tensor, p: Params, noise: Mapping[tuple[int, ...], Tensor], tap: Tap, path: tuple[int, ...]
    ) -> Tensor:
        if not self.stochastic:
            return x
        return x * noise[path].to(x.dtype) * (1.0 / (1.0 - self.p))

    def to_torch(self) -> torch.nn.Module:
        module = torch.nn.Dropout(self.p)
        module.train(self.training)
        return module


@register(torch.nn.Dropout)
def _from_dropout(module: torch.nn.Module) -> Layer:
    assert isinstance(module, torch.nn.Dropout)
    if module.p >= 1.0:
        raise ValueError("Dropout(p=1) drops everything: J would not depend on the input; expected p < 1")
    return Dropout(module.p)
