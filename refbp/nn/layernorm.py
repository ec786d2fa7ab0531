"""LayerNorm over the last dimension, with or without the affine gamma (and beta).

For each row x (d entries; every leading dimension is a row):

    mu      = 1/d sum_k x_k                                          ()
    rstd    = 1 / sqrt(1/d sum_k (x_k - mu)^2 + eps)                 ()   the biased variance, as torch
    xhat    = (x - mu) rstd                                          (d,)
    y       = gamma o xhat + beta                                    (d,)

    dJ/dgamma = sum_rows dJ/dy o xhat ;   dJ/dbeta = sum_rows dJ/dy
    dJ/dxhat  = dJ/dy o gamma
    dJ/dx     = rstd (dJ/dxhat - mean_k(dJ/dxhat) - xhat mean_k(dJ/dxhat o xhat))

The last line is the chain rule through mu and rstd, both functions of every x_k: the mean
term removes the part of dJ/dxhat along (1, ..., 1), the other the part along xhat. Leaving
either out is a classic bug (refbp.apps.layer_bugs). The cache keeps xhat and rstd (as llm.c does).

In float32 and below, the statistics and the dJ/dx line are computed in float64 and rounded
once (``accumulation_dtype``), as torch's CPU kernels accumulate in double: when the three
terms of dJ/dx nearly cancel (a row of two nearly equal numbers, a batch of two) float32
arithmetic would lose most of the result's digits.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from .cancellation import centred_size
from .keys import Key
from .layer import BackwardContext, ForwardContext, Layer, LayerGrads, Params, Tap
from .pieces import Pieces
from .registry import register
from .validation import describe

__all__ = ["LayerNorm", "NormCache", "accumulation_dtype"]

LAYER_NORM_EPS = 1e-5
"""torch.nn.LayerNorm's default eps."""


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float32 and below (see the module docstring), the dtype itself otherwise."""
    return torch.float64 if dtype in (torch.float32, torch.float16, torch.bfloat16) else dtype


@dataclass
class NormCache:
    """What a normalisation's backward needs: xhat (the input's shape) and rstd (one per row
    for LayerNorm, one per feature for BatchNorm), both in the accumulation dtype."""

    xhat: Tensor
    rstd: Tensor


class LayerNorm(Layer):
    """torch.nn.LayerNorm(d) on the last dimension.

    Args:
        gamma: (d,) the scale, or None for ``elementwise_affine=False``.
        beta: (d,) the shift, or None (no affine, or ``bias=False``).
        d: the normalised size; needed only when there is no gamma.
        eps: added to the variance.
    """

    title = "LayerNorm"
    torch_names: ClassVar[dict[str, str]] = {"gamma": "0.weight", "beta": "0.bias"}

    def __init__(
        self,
        gamma: Tensor | None = None,
        beta: Tensor | None = None,
        *,
        d: int | None = None,
        eps: float = LAYER_NORM_EPS,
    ) -> None:
        if gamma is None and beta is not None:
            raise ValueError("LayerNorm: beta without gamma is not a torch.nn.LayerNorm; give gamma too")
        if gamma is None and d is None:
            raise ValueError("LayerNorm without gamma needs d, the normalised size")
        self.params = {}
        if gamma is not None:
            self.params["gamma"] = gamma
        if beta is not None:
            self.params["beta"] = beta
        self.d = int(gamma.shape[0]) if gamma is not None else int(d)  # type: ignore[arg-type]
        self.eps = float(eps)
        self.training = True

    @property
    def intermediates(self) -> tuple[str, ...]:
        return ("xhat",)

    def describe(self) -> str:
        affine = "" if "gamma" in self.params else ", no affine"
        bias = "" if "beta" in self.params or "gamma" not in self.params else ", no bias"
        return f"LayerNorm({self.d}{affine}{bias})"

    def equations(self) -> tuple[str, str]:
        return (
            "xhat = (x - mean(x)) / sqrt(var(x) + eps) ;  y = gamma o xhat + beta   (over the last dimension)",
            "dJ/dxhat = dJ/dy o gamma ;  dJ/dx = rstd (dJ/dxhat - mean(dJ/dxhat) - xhat mean(dJ/dxhat o xhat))",
        )

    def check_input(self, x: Tensor, path: tuple[int, ...]) -> None:
        if x.dim() < 1 or x.shape[-1] != self.d:
            where = ".".join(map(str, path))
            raise ValueError(f"layer {where} ({self.describe()}) needs input (..., {self.d}), got {describe(x)}")

    def cached_values(self, cache: NormCache, path: tuple[int, ...]) -> dict[Key, Tensor]:
        return {Key("xhat", path): cache.xhat}

    def forward(self, x: Tensor, ctx: ForwardContext, path: tuple[int, ...]) -> tuple[Tensor, NormCache]:
        xhat = x.to(accumulation_dtype(x.dtype), copy=True)  # (..., d) a copy of x, made xhat in place
        mu = xhat.mean(dim=-1, keepdim=True)  # (..., 1)
        centred = xhat.sub_(mu)  # x - mu   (..., d)
        var = torch.linalg.vector_norm(centred, dim=-1, keepdim=True).square_().div_(self.d)  # (..., 1) biased
        rstd = torch.rsqrt(var.add_(self.eps))  # (..., 1)
        xhat = centred.mul_(rstd)  # (..., d)  xhat = (x - mu) rstd
        if "gamma" not in self.params:
            return xhat.to(x.dtype), NormCache(xhat, rstd)  # y = xhat
        y = xhat.to(x.dtype, copy=True)  # (..., d) storage of its own: the cache keeps xhat
        if "beta" in self.params:
            y = torch.addcmul(self.params["beta"], y, self.params["gamma"], out=y)  # y = gamma o xhat + beta
        else:
            y = y.mul_(self.params["gamma"])  # y = gamma o xhat
        return y, NormCache(xhat, rstd)

    def backward(self, dJ_dy: Tensor, x: Tensor, out: Tensor, cache: NormCache, ctx: BackwardContext) -> LayerGrads:
        xhat, rstd = cache.xhat, cache.rstd  # in the accumulation dtype
        dtype, d = dJ_dy.dtype, self.d
        gamma = self.params["gamma"].to(xhat.dtype) if "gamma" in self.params else None
        params: dict[str, Tensor] = {}

        def mean_k_times_gamma(t: Tensor) -> Tensor:  # mean_k (t o gamma)   (..., 1)
            return (t @ gamma if gamma is not None else t.sum(dim=-1)).unsqueeze(-1).div_(d)

        # One work buffer in the accumulation dtype holds dJ/dy, then dJ/dy o xhat, then dJ/dx
        # (dJ/dy itself is only read). With dJ/dxhat = dJ/dy o gamma, the two means of dJ/dx are
        # mean_k(dJ/dy o gamma) and mean_k(dJ/dy o xhat o gamma): one matrix-vector product each.
        g = dJ_dy.to(xhat.dtype, copy=True)  # (..., d)
        if "beta" in self.params:
            params["beta"] = g.reshape(-1, d).sum(dim=0).to(dtype)  # dJ/dbeta = sum_rows dJ/dy
        mean_g = mean_k_times_gamma(g) if ctx.need_dx else None  # mean_k dJ/dxhat
        g.mul_(xhat)  # dJ/dy o xhat   (..., d)
        if gamma is not None:
            params["gamma"] = g.reshape(-1, d).sum(dim=0).to(dtype)  # dJ/dgamma = sum_rows dJ/dy o xhat
        mean_gx = mean_k_times_gamma(g) if ctx.need_dx else None  # mean_k dJ/dxhat o xhat
        kept: dict[Key, Tensor] = {}
        if ctx.keep_intermediates:
            dJ_dxhat = dJ_dy.to(xhat.dtype) * gamma if gamma is not None else dJ_dy.to(xhat.dtype)  # dJ/dy o gamma
            kept = {Key("xhat", ctx.path): dJ_dxhat.to(dtype, copy=True)}
        if mean_g is None or mean_gx is None:
            return LayerGrads(None, params, kept)
        g.copy_(dJ_dy)  # dJ/dy again, in the buffer
        # dJ/dx = rstd (dJ/dxhat - mean_k(dJ/dxhat) - xhat mean_k(dJ/dxhat o xhat)), rounded once
        # first dJ/dxhat - mean_k(dJ/dxhat) = dJ/dy o gamma - mean_g (one fused pass), then the xhat term, then rstd
        g = torch.addcmul(mean_g.neg_(), g, gamma, out=g) if gamma is not None else g.sub_(mean_g)
        dJ_dx = g.addcmul_(xhat, mean_gx, value=-1.0).mul_(rstd).to(dtype)  # (..., d)
        return LayerGrads(dJ_dx, params, kept)

    @property
    def pieces(self) -> Pieces:
        """One piece, curving on the scale of each row's sqrt(variance + eps) (refbp.nn.pieces)."""
        return Pieces((), "a row's sqrt(variance + eps)", scale=self._row_scale)

    def _row_scale(self, x: Tensor) -> Tensor:
        if self.d == 1:  # a single entry is normalised to exactly 0 wherever it is: no curve at all
            return torch.full_like(x, math.inf)
        spread = x.var(dim=-1, unbiased=False, keepdim=True).add(self.eps).sqrt()  # (..., 1)
        return spread.expand_as(x)

    def torch_forward(
        self, x: Tensor, p: Params, noise: Mapping[tuple[int, ...], Tensor], tap: Tap, path: tuple[int, ...]
    ) -> Tensor:
        tap.piecewise(x, self.pieces)
        xhat = tap.centred(
            Key("xhat", path),
            F.layer_norm(x, (self.d,), None, None, self.eps),
            lambda: centred_size(x, x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True), self.eps),
        )
        if "gamma" not in self.params:
            return xhat
        y = xhat * p(path, "gamma")
        return y + p(path, "beta") if "beta" in self.params else y

    def to_torch(self) -> torch.nn.Module:
        gamma = self.params.get("gamma")
        module = torch.nn.LayerNorm(
            self.d, eps=self.eps, elementwise_affine=gamma is not None, bias="beta" in self.params,
            dtype=None if gamma is None else gamma.dtype, device=None if gamma is None else gamma.device,
        )  # fmt: skip
        with torch.no_grad():
            if gamma is not None:
                module.weight.copy_(gamma)
            if "beta" in self.params:
                module.bias.copy_(self.params["beta"])
        return module


@register(torch.nn.LayerNorm)
def _from_layer_norm(module: torch.nn.Module) -> Layer:
    assert isinstance(module, torch.nn.LayerNorm)
    if len(module.normalized_shape) != 1:
        raise ValueError(
            f"LayerNorm{tuple(module.normalized_shape)}: refbp normalises over the last dimension only; "
            "expected normalized_shape with one size"
        )
    gamma = None if module.weight is None else module.weight.detach().clone()
    beta = None if module.bias is None else module.bias.detach().clone()
    return LayerNorm(gamma, beta, d=module.normalized_shape[0], eps=module.eps)
