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

**Lean mode** (a training step: ``forward(..., keep_intermediates=False)``). The cache is then
``NormStats``, mu and rstd per row (as llm.c and torch's kernel keep them) instead of a float64
xhat, and the arithmetic runs in the input's dtype (float32 for float16 and bfloat16,
``lean_dtype``), as torch's module computes. The backward pass rebuilds xhat = (x - mu) rstd
from x, which the network keeps anyway, and writes dJ/dx into dJ/dy's storage when the loop
owns it, in x rather than xhat, as torch's kernel does:

    dJ/dx = rstd (dJ/dxhat - mean_k(dJ/dxhat) + mu rstd m) - rstd^2 m x,   m = mean_k(dJ/dxhat o xhat)

The same numbers as the full mode's to the input dtype's rounding (tests/test_lean.py); the
full (teaching) mode is unchanged.

**Second order** (refbp.nn.second_order): R{.} = d/dr (.)(w + r v) along R{x}, V_gamma, V_beta,
applied line by line (product rule). With S(t) = sum_k t_k / n_var, the variance's divisor
(n_var = d here; BatchNorm's unbiased option: N - 1), and c = x - mu,

    R{c}      = R{x} - mean_k(R{x})                                  (R1)
    R{var}    = 2 S(c o R{c})
    R{rstd}   = -1/2 rstd^3 R{var}:  R{log rstd} = R{rstd} / rstd = -rstd S(xhat o R{c})   (R2)
    R{xhat}   = rstd R{c} + xhat R{log rstd}
              = rstd (R{x} - mean_k(R{x}) - xhat S(xhat o R{x}))    (R3)
    R{y}      = V_gamma o xhat + gamma o R{xhat} + V_beta            (R4)

and the R-operator of the backward, with h = dJ/dxhat and B(u) = rstd (u - mean_k(u) - xhat S(u o xhat))
(so that dJ/dx = B(h), linear in u for fixed xhat and rstd):

    R{h}        = R{dJ/dy} o gamma + dJ/dy o V_gamma                 (R5)
    R{dJ/dx}    = B(R{h}) + R{log rstd} dJ/dx - rstd (R{xhat} S(h o xhat) + xhat S(h o R{xhat}))   (R6)
    (H v)_gamma = sum_rows R{dJ/dy} o xhat + dJ/dy o R{xhat}         (R7)
    (H v)_beta  = sum_rows R{dJ/dy}                                  (R8)

(R6) differentiates each factor of B(h): rstd (the R{log rstd} term), h (B(R{h})), and xhat in
both places it appears. Every term that carries dJ/dy or h (dJ/dy o V_gamma in (R5), the last
three of (R6), dJ/dy o R{xhat} in (R7)) is a first derivative: Gauss-Newton's G v drops them.
BatchNorm and GroupNorm (refbp.nn.batchnorm, refbp.nn.norm2d) run the same functions,
``normalised_tangent`` and ``normalised_r_backward``, over their own axes. The tangent reads xhat
from the full cache, or rebuilds it from x, mu and rstd (lean mode, a transformer's row statistics).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeAlias

import torch
import torch.nn.functional as F
from torch import Tensor

from .cancellation import centred_size
from .keys import Key
from .layer import BackwardContext, ForwardContext, Layer, LayerGradients, LayerTangent, Params, SecondContext, Tap
from .pieces import Pieces
from .registry import register
from .validation import describe

__all__ = [
    "LayerNorm",
    "NormCache",
    "NormCacheOrStats",
    "NormStats",
    "NormTangent",
    "accumulation_dtype",
    "affine_r_backward",
    "affine_tangent",
    "fresh_like",
    "lean_dtype",
    "normalised",
    "normalised_r_backward",
    "normalised_tangent",
    "scale_shift",
]

LAYER_NORM_EPS = 1e-5
"""torch.nn.LayerNorm's default eps."""


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float32 and below (see the module docstring), the dtype itself otherwise."""
    return torch.float64 if dtype in (torch.float32, torch.float16, torch.bfloat16) else dtype


def lean_dtype(dtype: torch.dtype) -> torch.dtype:
    """What a lean (training-step) normalisation computes in: float32 for float16 and bfloat16
    (torch's accumulation type), the dtype itself otherwise."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def fresh_like(x: Tensor) -> Tensor:
    """An uninitialised contiguous tensor of x's shape and dtype: the ``out=`` of an elementwise
    operation between x and a statistic of shape (M, 1) or (1, C, 1, ...). Left to choose, torch
    lays such a result out after the statistic's strides (column-major for (M, 1)), and the
    operation runs about 7 times slower on this CPU."""
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def scale_shift(y: Tensor, scale: Tensor, shift: Tensor, out: Tensor) -> Tensor:
    """out = y o scale + shift, ``scale`` and ``shift`` broadcasting against y: one addcmul when
    they vary along y's last dimension only (LayerNorm's gamma and beta), else a product then a
    sum (per-channel factors of shape (1, C, 1, ...): addcmul with two operands broadcast over
    the outer dimensions runs 2-4 times slower on this CPU than the two operations). ``out`` may
    be ``y`` itself."""
    if all(n == 1 for t in (scale, shift) for n in t.shape[:-1]):  # (d,), (1, d), ...: along the last dimension
        return torch.addcmul(shift, y, scale, out=out)
    return torch.mul(y, scale, out=out).add_(shift)


@dataclass
class NormStats:
    """What a normalisation's backward needs in lean mode, besides x: the mean mu and
    rstd = 1 / sqrt(var + eps) of each normalised group, shaped to broadcast against x ((..., 1)
    per row for LayerNorm, (1, C, 1, ...) per channel for BatchNorm), in ``lean_dtype``."""

    mu: Tensor
    rstd: Tensor


NormCacheOrStats: TypeAlias = Any
"""A normalisation's cache: NormCache in the full mode, NormStats in lean mode. Typed loosely so
that a subclass may declare the one its own forward pass returns (the bug catalogue's twins,
refbp.apps.layer_bugs, and the transformer's RowLayerNorm) without breaking the override rules."""


@dataclass
class NormCache:
    """What a normalisation's backward needs: xhat (the input's shape) and rstd (one per row
    for LayerNorm, one per feature for BatchNorm), both in the accumulation dtype."""

    xhat: Tensor
    rstd: Tensor


# ---- second order: the normalisation's R-rules (the module docstring's (R1)-(R8)), for every norm ----
Dims = tuple[int, ...]
"""The dimensions a normalisation reduces over: (-1,) for LayerNorm's rows, (0,) for BatchNorm's batch."""


@dataclass
class NormTangent:
    """What a normalisation's tangent keeps for its R-backward, in the accumulation dtype:
    R{xhat} (x's shape) and R{log rstd} = R{rstd} / rstd (rstd's shape, kept dimensions)."""

    Rxhat: Tensor
    Rlog_rstd: Tensor


def normalised(x: Tensor, cache: NormCacheOrStats) -> tuple[Tensor, Tensor]:
    """(xhat, rstd) in the accumulation dtype: the full cache's, or (lean mode, a transformer's row
    statistics: anything with mu and rstd) xhat = (x - mu) rstd rebuilt from x, as the lean backward does."""
    if isinstance(cache, NormCache):
        return cache.xhat, cache.rstd
    acc = accumulation_dtype(x.dtype)
    rstd = cache.rstd.to(acc)
    return (x.to(acc) - cache.mu.to(acc)) * rstd, rstd  # xhat = (x - mu) rstd, rebuilt


def normalised_tangent(xhat: Tensor, rstd: Tensor, Rx: Tensor, dims: Dims, n_var: int) -> NormTangent:
    """R{xhat} and R{log rstd} of xhat = (x - mu) rstd, the statistics over ``dims`` (the variance
    divided by ``n_var``), from R{x}: the module docstring's (R1)-(R3)."""
    Rc = Rx.to(xhat.dtype)  # R{x} in the accumulation dtype (a copy when it converts)
    Rc = Rc - Rc.mean(dim=dims, keepdim=True)  # (R1) R{c} = R{x} - mean(R{x})
    Rlog_rstd = (xhat * Rc).sum(dim=dims, keepdim=True).mul_(rstd).div_(-n_var)  # (R2) -rstd S(xhat o R{c})
    Rxhat = Rc.mul_(rstd).addcmul_(xhat, Rlog_rstd)  # (R3) R{xhat} = rstd R{c} + xhat R{log rstd}
    return NormTangent(Rxhat, Rlog_rstd)


def normalised_r_backward(
    h: Tensor, Rh: Tensor, xhat: Tensor, rstd: Tensor, t: NormTangent, dims: Dims, n_var: int, first: float
) -> tuple[Tensor, Tensor]:
    """(dJ/dx, R{dJ/dx}) from h = dJ/dxhat and R{h} (the accumulation dtype): dJ/dx = B(h) and the
    module docstring's (R6); the terms that carry h are left out when ``first`` is 0 (G v)."""

    def S(u: Tensor) -> Tensor:  # S(u) = sum(u) / n_var over the normalised dims, kept
        return u.sum(dim=dims, keepdim=True).div_(n_var)

    def B(u: Tensor) -> Tensor:  # B(u) = rstd (u - mean(u) - xhat S(u o xhat)), x's shape
        return (u - u.mean(dim=dims, keepdim=True)).addcmul_(xhat, S(u * xhat), value=-1.0).mul_(rstd)

    dJ_dx = B(h)  # dJ/dx = rstd (h - mean(h) - xhat S(h o xhat))
    R_dx = B(Rh)  # B(R{h}): the part linear in R{h}
    if first:
        R_dx.addcmul_(t.Rlog_rstd, dJ_dx)  # + R{log rstd} dJ/dx   (R{rstd} times the bracket)
        R_dx.addcmul_(t.Rxhat, S(h * xhat) * rstd, value=-1.0)  # - rstd R{xhat} S(h o xhat)
        R_dx.addcmul_(xhat, S(h * t.Rxhat) * rstd, value=-1.0)  # - rstd xhat S(h o R{xhat})
    return dJ_dx, R_dx


def affine_tangent(
    xhat: Tensor, Rxhat: Tensor, gamma: Tensor | None, V_gamma: Tensor | None, V_beta: Tensor | None
) -> Tensor:
    """(R4) R{y} = V_gamma o xhat + gamma o R{xhat} + V_beta of y = gamma o xhat + beta (gamma,
    V_gamma, V_beta shaped to broadcast against xhat; R{y} = R{xhat} without gamma)."""
    if gamma is None or V_gamma is None:
        return Rxhat
    Ry = torch.addcmul(Rxhat * gamma, xhat, V_gamma)  # gamma o R{xhat} + V_gamma o xhat
    return Ry if V_beta is None else Ry.add_(V_beta)  # + V_beta


def affine_r_backward(
    g: Tensor, Rg: Tensor, xhat: Tensor, Rxhat: Tensor, gamma: Tensor | None, V_gamma: Tensor | None, first: float
) -> tuple[Tensor, Tensor, Tensor | None]:
    """(h, R{h}, R{dJ/dy o xhat}) of y = gamma o xhat + beta, from g = dJ/dy and R{g}: h = g o gamma,
    (R5) R{h} = R{g} o gamma + g o V_gamma, and the summand of (R7) R{g} o xhat + g o R{xhat}
    (None without gamma: then h = g, R{h} = R{g}); terms that carry g only when ``first``."""
    if gamma is None or V_gamma is None:
        return g, Rg, None
    h = g * gamma  # dJ/dxhat = dJ/dy o gamma
    Rh = Rg * gamma  # (R5) R{h} = R{dJ/dy} o gamma + dJ/dy o V_gamma
    R_gx = Rg * xhat  # (R7) R{dJ/dy o xhat} = R{dJ/dy} o xhat + dJ/dy o R{xhat}
    if first:
        Rh.addcmul_(g, V_gamma)
        R_gx.addcmul_(g, Rxhat)
    return h, Rh, R_gx


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

    def cached_values(self, cache: NormCacheOrStats, path: tuple[int, ...]) -> dict[Key, Tensor]:
        return {Key("xhat", path): cache.xhat} if isinstance(cache, NormCache) else {}  # lean: xhat not kept

    def release(self, cache: NormCacheOrStats) -> None:
        if isinstance(cache, NormStats):
            cache.mu = cache.rstd = torch.empty(0)

    def forward(self, x: Tensor, ctx: ForwardContext, path: tuple[int, ...]) -> tuple[Tensor, NormCacheOrStats]:
        if not ctx.keep_intermediates:
            return self.lean_forward(x)
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

    def lean_forward(self, x: Tensor) -> tuple[Tensor, NormStats]:
        """The forward pass of a training step: y, and mu and rstd per row (lean mode, above)."""
        xa = x.to(lean_dtype(x.dtype))  # (..., d) x itself unless float16/bfloat16
        mu = xa.mean(dim=-1, keepdim=True)  # (..., 1)
        y = torch.sub(xa, mu, out=fresh_like(xa))  # x - mu   (..., d), made y in place
        var = torch.linalg.vector_norm(y, dim=-1, keepdim=True).square_().div_(self.d)  # (..., 1) biased
        rstd = var.add_(self.eps).rsqrt_()  # (..., 1)  rstd = 1 / sqrt(var + eps)
        y.mul_(rstd)  # xhat = (x - mu) rstd
        gamma, beta = self.params.get("gamma"), self.params.get("beta")
        if gamma is not None:
            y = y.mul_(gamma) if beta is None else torch.addcmul(beta, y, gamma, out=y)  # y = gamma o xhat + beta
        return y.to(x.dtype), NormStats(mu, rstd)

    def lean_backward(self, dJ_dy: Tensor, x: Tensor, cache: NormStats, ctx: BackwardContext) -> LayerGradients:
        """The backward pass from mu and rstd (lean mode, above): xhat rebuilt from x."""
        acc, d, dtype = cache.rstd.dtype, self.d, dJ_dy.dtype
        own = ctx.overwrite and not ctx.keep_intermediates and dJ_dy.dtype == acc and dJ_dy.is_contiguous()
        g = (dJ_dy if own else dJ_dy.to(acc, copy=True)).view(-1, d)  # dJ/dy (M, d), then dJ/dx in place
        rows_x = x.to(acc).reshape(-1, d)  # (M, d)
        mu, rstd = cache.mu.reshape(-1, 1), cache.rstd.reshape(-1, 1)  # (M, 1) each
        gamma = self.params["gamma"].to(acc) if "gamma" in self.params else None
        params: dict[str, Tensor] = {}
        kept: dict[Key, Tensor] = {}
        if ctx.keep_intermediates:
            dJ_dxhat = dJ_dy * self.params["gamma"] if gamma is not None else dJ_dy.clone()  # dJ/dy o gamma
            kept[Key("xhat", ctx.path)] = dJ_dxhat
        if "beta" in self.params:
            params["beta"] = g.sum(dim=0).to(dtype)  # dJ/dbeta = sum_rows dJ/dy   (d,)

        def mean_k_times_gamma(t: Tensor) -> Tensor:  # mean_k (t o gamma)   (M, 1): a matrix-vector product
            return (torch.mv(t, gamma) if gamma is not None else t.sum(dim=-1)).unsqueeze_(-1).div_(d)

        mean_g = mean_k_times_gamma(g) if ctx.need_dx else None  # mean_k dJ/dxhat   (M, 1)
        # xhat rebuilt from x (llm.c) but for the row's rstd, times dJ/dy; rstd enters the two sums below
        g_xm = torch.sub(rows_x, mu, out=fresh_like(rows_x)).mul_(g)  # dJ/dy o (x - mu)   (M, d)
        if gamma is not None:
            params["gamma"] = torch.mv(g_xm.T, rstd.view(-1)).to(dtype)  # dJ/dgamma = sum_rows dJ/dy o xhat   (d,)
        if mean_g is None:
            return LayerGradients(None, params, kept)
        m = mean_k_times_gamma(g_xm).mul_(rstd)  # m = mean_k dJ/dxhat o xhat   (M, 1)
        del g_xm
        # dJ/dx = rstd (dJ/dxhat - mean_g - xhat m) = rstd (dJ/dy o gamma - (mean_g - mu rstd m)) - rstd^2 m x
        if gamma is not None:
            g.mul_(gamma)  # dJ/dxhat = dJ/dy o gamma
        shift = mean_g.sub_(mu * rstd * m)  # (M, 1)
        dJ_dx = g.sub_(shift).mul_(rstd).addcmul_(rows_x, rstd * rstd * m, value=-1.0)  # (M, d)
        return LayerGradients(dJ_dx.view(x.shape).to(dtype), params, kept)

    def backward(
        self, dJ_dy: Tensor, x: Tensor, out: Tensor, cache: NormCacheOrStats, ctx: BackwardContext
    ) -> LayerGradients:
        if isinstance(cache, NormStats):
            return self.lean_backward(dJ_dy, x, cache, ctx)
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
            return LayerGradients(None, params, kept)
        g.copy_(dJ_dy)  # dJ/dy again, in the buffer
        # dJ/dx = rstd (dJ/dxhat - mean_k(dJ/dxhat) - xhat mean_k(dJ/dxhat o xhat)), rounded once
        # first dJ/dxhat - mean_k(dJ/dxhat) = dJ/dy o gamma - mean_g, then the xhat term, then rstd. The
        # product is rounded before the mean is subtracted, as mean_g's own terms were: a fused
        # multiply-add would leave the rounding of dJ/dy o gamma where the difference is exactly 0
        # (a row of one feature: dJ/dx = 0, which autograd gives exactly), amplified by rstd
        g = g.mul_(gamma).sub_(mean_g) if gamma is not None else g.sub_(mean_g)
        dJ_dx = g.addcmul_(xhat, mean_gx, value=-1.0).mul_(rstd).to(dtype)  # (..., d)
        return LayerGradients(dJ_dx, params, kept)

    # ---- second order: the module docstring's (R1)-(R8) over each row ---------------------------
    def _affine_directions(
        self, V: Params, path: tuple[int, ...], acc: torch.dtype
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """(gamma, V_gamma, V_beta) in the accumulation dtype, None where the layer has no such parameter."""
        gamma, beta = self.params.get("gamma"), self.params.get("beta")
        return (
            None if gamma is None else gamma.to(acc),
            None if gamma is None else V(path, "gamma").to(acc),
            None if beta is None else V(path, "beta").to(acc),
        )

    def tangent(
        self, x: Tensor, Rx: Tensor | None, out: Tensor, cache: NormCacheOrStats, V: Params, path: tuple[int, ...]
    ) -> LayerTangent:
        assert Rx is not None, "LayerNorm's input is never indices: it always has a tangent"
        xhat, rstd = normalised(x, cache)  # (..., d), (..., 1)
        t = normalised_tangent(xhat, rstd, Rx, (-1,), self.d)  # (R1)-(R3) over each row
        Ry = affine_tangent(xhat, t.Rxhat, *self._affine_directions(V, path, xhat.dtype))  # (R4)   (..., d)
        return LayerTangent(Ry.to(x.dtype), t, {Key("xhat", path): t.Rxhat.to(x.dtype)})

    def r_backward(
        self, g: Tensor, Rg: Tensor, x: Tensor, Rx: Tensor | None, out: Tensor, t: LayerTangent,
        cache: NormCacheOrStats, V: Params, ctx: SecondContext,
    ) -> tuple[Tensor | None, LayerGradients]:  # fmt: skip
        xhat, rstd = normalised(x, cache)  # (..., d), (..., 1) in the accumulation dtype
        tangent: NormTangent = t.cache
        dtype, acc, d = g.dtype, xhat.dtype, self.d
        gamma, V_gamma, _ = self._affine_directions(V, ctx.path, acc)
        g_a, Rg_a = g.to(acc), Rg.to(acc)  # dJ/dy, R{dJ/dy}   (..., d)
        h, Rh, R_gx = affine_r_backward(g_a, Rg_a, xhat, tangent.Rxhat, gamma, V_gamma, ctx.first)  # (R5)
        params: dict[str, Tensor] = {}
        if R_gx is not None:
            params["gamma"] = R_gx.reshape(-1, d).sum(dim=0).to(dtype)  # (R7) (H v)_gamma   (d,)
        if "beta" in self.params:
            params["beta"] = Rg_a.reshape(-1, d).sum(dim=0).to(dtype)  # (R8) (H v)_beta = sum_rows R{dJ/dy}   (d,)
        kept = {ctx.key("xhat"): Rh.to(dtype, copy=True)} if ctx.keep_intermediates else {}  # R{dJ/dxhat}
        if not ctx.need_dx:
            return None, LayerGradients(None, params, kept)
        dJ_dx, R_dx = normalised_r_backward(h, Rh, xhat, rstd, tangent, (-1,), d, ctx.first)  # (R6)
        return dJ_dx.to(dtype), LayerGradients(R_dx.to(dtype), params, kept)

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
            Key.at("xhat", path),
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
