"""BatchNorm1d on (N, C): each feature normalised over the batch (training) or by running
statistics (eval), as torch.nn.BatchNorm1d.

Training mode, feature by feature, over the N rows of the batch:

    mu      = 1/N sum_n x_n                         (C,)
    var     = 1/N sum_n (x_n - mu)^2                (C,)   biased: what normalises
    rstd    = 1 / sqrt(var + eps)                   (C,)
    xhat    = (x - mu) rstd ;   y = gamma o xhat + beta
    running_mean <- (1 - m) running_mean + m mu
    running_var  <- (1 - m) running_var  + m var N / (N - 1)          unbiased: what is remembered

    dJ/dgamma = sum_n dJ/dy o xhat ;   dJ/dbeta = sum_n dJ/dy ;   dJ/dxhat = dJ/dy o gamma
    dJ/dx     = rstd (dJ/dxhat - mean_n(dJ/dxhat) - xhat mean_n(dJ/dxhat o xhat))

Unlike LayerNorm the means run over the batch: every row's gradient depends on every other
row, which is why finite differences of a BatchNorm network must perturb the whole batch
(refbp.verify.finite_diff), and why dropping the mean and variance paths is a classic bug.

Eval mode: xhat = (x - running_mean) / sqrt(running_var + eps), constants as far as x is
concerned, so dJ/dx = dJ/dxhat rstd.

In float32 and below the statistics and the dJ/dx line are computed in float64 and rounded
once, as for LayerNorm (refbp.nn.layernorm.accumulation_dtype) and as torch's CPU kernels do.

**Lean mode** (a training step: ``forward(..., keep_intermediates=False)``), as LayerNorm's
(refbp.nn.layernorm): the cache is mu and rstd per feature (NormStats), the arithmetic runs in
the input's dtype (``lean_dtype``), the backward pass rebuilds xhat from x and writes dJ/dx
into dJ/dy's storage when the loop owns it, in x rather than xhat:

    dJ/dx = s (dJ/dy - sum_n(dJ/dy) / N + mu rstd S / N) - s rstd S / N x,
    s = gamma rstd,  S = sum_n dJ/dy o xhat = dJ/dgamma

(eval mode: dJ/dx = s dJ/dy, and y = s x + (beta - s running_mean) in one pass). The same
functions run BatchNorm2d (refbp.nn.norm2d), reducing over every dimension but the channels'.

**unbiased=True** (makemore's BatchNorm, refbp's own option; torch has no module for it):
training mode normalises by the Bessel-corrected variance, var_u = 1/(N - 1) sum_n (x_n - mu)^2,
so rstd = 1 / sqrt(var_u + eps). The variance's path then carries 1/(N - 1) instead of 1/N:
d var_u / dx_n = 2 (x_n - mu) / (N - 1), and with xhat = (x - mu) rstd

    dJ/dx = rstd (dJ/dxhat - mean_n(dJ/dxhat) - xhat sum_n(dJ/dxhat o xhat) / (N - 1))

(the mean's path keeps its 1/N). Eval mode and the running statistics are torch's, unchanged
(running_var remembers var_u either way). A batch of N = 1 has no unbiased variance: refused.

**Second order** (refbp.nn.second_order): LayerNorm's rules (R1)-(R8) (refbp.nn.layernorm), with
the means over the batch and S(t) = sum_n t_n / n_var, n_var = N (N - 1 when unbiased). In training
mode every row's tangent has the statistics' terms,

    R{xhat}  = rstd (R{x} - mean_n(R{x}) - xhat S(xhat o R{x}))
    R{dJ/dx} = B(R{h}) + R{log rstd} dJ/dx - rstd (R{xhat} S(h o xhat) + xhat S(h o R{xhat})),
    B(u) = rstd (u - mean_n(u) - xhat S(u o xhat)),  h = dJ/dxhat,  R{log rstd} = -rstd S(xhat o R{x});

in eval mode the running statistics are constants: R{xhat} = rstd R{x}, R{dJ/dx} = rstd R{h}.
R{y}, R{h}, (H v)_gamma and (H v)_beta are (R4), (R5), (R7), (R8), summed over the batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from .cancellation import centred_size
from .keys import Key
from .layer import BackwardContext, ForwardContext, Layer, LayerGradients, LayerTangent, Params, SecondContext, Tap
from .layernorm import (
    NormCache,
    NormCacheOrStats,
    NormStats,
    NormTangent,
    accumulation_dtype,
    affine_r_backward,
    affine_tangent,
    fresh_like,
    lean_dtype,
    normalised,
    normalised_r_backward,
    normalised_tangent,
    scale_shift,
)
from .pieces import Pieces
from .registry import register
from .validation import describe

__all__ = ["BatchNorm1d", "channel_square_sum", "channel_sum", "refuse_unbiased", "unbiased_batch_norm"]

BATCH_NORM_EPS = 1e-5
"""torch.nn.BatchNorm1d's default eps."""

BATCH_NORM_MOMENTUM = 0.1
"""torch.nn.BatchNorm1d's default momentum m."""


class BatchNorm1d(Layer):
    """torch.nn.BatchNorm1d(C) on (N, C) inputs.

    Args:
        gamma, beta: (C,) the affine scale and shift, or both None (``affine=False``).
        C: the number of features; needed only without gamma.
        eps: added to the variance.
        momentum: m of the running averages; None for torch's cumulative average.
        running_mean, running_var: (C,) running statistics (default 0 and 1, as torch's);
            None for both means ``track_running_stats=False`` (batch statistics in eval too).
        unbiased: normalise by the Bessel-corrected batch variance, 1/(N - 1), as makemore
            does (refbp's own option: torch normalises by the biased 1/N; see the module
            docstring). ``to_torch()`` refuses such a layer: no torch module computes it.
    """

    title = "BatchNorm1d"
    torch_names: ClassVar[dict[str, str]] = {"gamma": "0.weight", "beta": "0.bias"}

    def __init__(
        self,
        gamma: Tensor | None = None,
        beta: Tensor | None = None,
        *,
        C: int | None = None,
        eps: float = BATCH_NORM_EPS,
        momentum: float | None = BATCH_NORM_MOMENTUM,
        running_mean: Tensor | None = None,
        running_var: Tensor | None = None,
        track_running_stats: bool = True,
        num_batches_tracked: int = 0,
        unbiased: bool = False,
    ) -> None:
        if (gamma is None) != (beta is None):
            raise ValueError("BatchNorm1d: give both gamma and beta (affine) or neither")
        if not isinstance(unbiased, bool):
            raise TypeError(f"BatchNorm1d: unbiased={unbiased!r} must be True or False")
        self.unbiased = unbiased
        if gamma is None and C is None:
            raise ValueError("BatchNorm1d without gamma needs C, the number of features")
        self.params = {} if gamma is None or beta is None else {"gamma": gamma, "beta": beta}
        self.C = int(gamma.shape[0]) if gamma is not None else int(C)  # type: ignore[arg-type]
        like = gamma if gamma is not None else torch.empty(0, dtype=torch.float64)
        self.eps, self.momentum = float(eps), momentum
        self.track_running_stats = track_running_stats
        self.running_mean: Tensor | None = None
        self.running_var: Tensor | None = None
        if track_running_stats:
            self.running_mean = (
                running_mean if running_mean is not None else torch.zeros(self.C, dtype=like.dtype, device=like.device)
            )
            self.running_var = (
                running_var if running_var is not None else torch.ones(self.C, dtype=like.dtype, device=like.device)
            )
        self.num_batches_tracked = int(num_batches_tracked)
        self.training = True

    def buffers(self) -> dict[str, Tensor]:
        """The running statistics (converted with the parameters by ``Network.to``)."""
        if self.running_mean is None or self.running_var is None:
            return {}
        return {"running_mean": self.running_mean, "running_var": self.running_var}

    @property
    def uses_batch_statistics(self) -> bool:
        """True in training mode, and always without running statistics (as torch)."""
        return self.training or not self.track_running_stats

    @property
    def intermediates(self) -> tuple[str, ...]:
        return ("xhat",)

    def describe(self) -> str:
        mode = "batch statistics" if self.uses_batch_statistics else "running statistics"
        unbiased = ", unbiased variance" if self.unbiased else ""
        return f"{self.title}({self.C}, {mode}{unbiased}{'' if self.params else ', no affine'})"

    def equations(self) -> tuple[str, str]:
        if self.uses_batch_statistics and self.unbiased:
            return (
                "xhat = (x - mean_n(x)) / sqrt(sum_n (x - mean_n(x))^2 / (N - 1) + eps) ;  y = gamma o xhat + beta",
                "dJ/dxhat = dJ/dy o gamma ;  "
                "dJ/dx = rstd (dJ/dxhat - mean_n(dJ/dxhat) - xhat sum_n(dJ/dxhat o xhat) / (N - 1))",
            )
        if self.uses_batch_statistics:
            return (
                "xhat = (x - mean_n(x)) / sqrt(var_n(x) + eps) ;  y = gamma o xhat + beta   (over the batch)",
                "dJ/dxhat = dJ/dy o gamma ;  dJ/dx = rstd (dJ/dxhat - mean_n(dJ/dxhat) - xhat mean_n(dJ/dxhat o xhat))",
            )
        return (
            "xhat = (x - running_mean) / sqrt(running_var + eps) ;  y = gamma o xhat + beta",
            "dJ/dxhat = dJ/dy o gamma ;  dJ/dx = dJ/dxhat / sqrt(running_var + eps)",
        )

    def check_input(self, x: Tensor, path: tuple[int, ...]) -> None:
        where = ".".join(map(str, path))
        if x.dim() != 2 or x.shape[1] != self.C:
            raise ValueError(f"layer {where} ({self.describe()}) needs input (N, {self.C}), got {describe(x)}")
        if self.uses_batch_statistics and x.shape[0] < 2:
            why = "the unbiased variance divides by N - 1 = 0" if self.unbiased else "the variance of one row is 0"
            raise ValueError(
                f"layer {where} ({self.describe()}) needs a batch of N >= 2 rows in training mode "
                f"({why}), got {describe(x)}"
            )

    def cached_values(self, cache: NormCacheOrStats, path: tuple[int, ...]) -> dict[Key, Tensor]:
        return {Key("xhat", path): cache.xhat} if isinstance(cache, NormCache) else {}  # lean: xhat not kept

    def release(self, cache: NormCacheOrStats) -> None:
        if isinstance(cache, NormStats):
            cache.mu = cache.rstd = torch.empty(0)

    def forward(self, x: Tensor, ctx: ForwardContext, path: tuple[int, ...]) -> tuple[Tensor, NormCacheOrStats]:
        self.check_input(x, path)
        if not ctx.keep_intermediates:
            return self.lean_forward(x, ctx)
        xhat = x.to(accumulation_dtype(x.dtype), copy=True)  # (N, C) a copy of x, made xhat in place
        if self.uses_batch_statistics:
            N = x.shape[0]
            mu = xhat.mean(dim=0)  # (C,)
            centred = xhat.sub_(mu)  # x - mu   (N, C)
            squares = centred * centred  # (N, C)
            var = squares.sum(dim=0).div_(N - 1) if self.unbiased else squares.mean(dim=0)  # (C,) biased, or unbiased
            rstd = torch.rsqrt(var + self.eps)  # (C,)
            xhat = centred.mul_(rstd)  # (N, C)  xhat = (x - mu) rstd
            if self.training and self.track_running_stats and ctx.update_stats:
                var_unbiased = var if self.unbiased else var * (N / (N - 1))
                self._update_running(mu.to(x.dtype), var_unbiased.to(x.dtype))
        else:
            assert self.running_mean is not None and self.running_var is not None
            rstd = torch.rsqrt(self.running_var.to(xhat.dtype) + self.eps)  # (C,)
            xhat = xhat.sub_(self.running_mean.to(xhat.dtype)).mul_(rstd)  # (N, C)
        if not self.params:
            return xhat.to(x.dtype), NormCache(xhat, rstd)  # y = xhat
        y = xhat.to(x.dtype, copy=True)  # (N, C) storage of its own: the cache keeps xhat
        y = torch.addcmul(self.params["beta"], y, self.params["gamma"], out=y)  # y = gamma o xhat + beta
        return y, NormCache(xhat, rstd)

    # ---- lean mode: mu and rstd kept, xhat rebuilt (the module docstring); BatchNorm2d's too ----
    def lean_forward(self, x: Tensor, ctx: ForwardContext) -> tuple[Tensor, NormStats]:
        """A training step's forward pass on x (N, C, ...): y, and mu and rstd per channel,
        shaped (1, C, 1, ...), in ``lean_dtype``; the statistics over every dimension but 1."""
        xa = x.to(lean_dtype(x.dtype))  # x itself unless float16/bfloat16
        view = _channel_view(x)
        gamma, beta = (
            (None, None) if not self.params else (self.params["gamma"].view(view), self.params["beta"].view(view))
        )
        if self.uses_batch_statistics:
            n = x.numel() // self.C  # values per channel: N, or N H W
            mu = channel_sum(xa).div_(n).view(view)  # (1, C, 1, ...)
            y = torch.sub(xa, mu, out=fresh_like(xa))  # x - mu, made y in place
            var = channel_square_sum(y).div_(n - 1 if self.unbiased else n).view(view)  # biased (or unbiased) variance
            if self.training and self.track_running_stats and ctx.update_stats:
                var_unbiased = var if self.unbiased else var * (n / (n - 1))
                self._update_running(mu.view(-1).to(x.dtype), var_unbiased.view(-1).to(x.dtype))
            rstd = var.add(self.eps).rsqrt_()  # (1, C, 1, ...)
            if gamma is not None and beta is not None:
                y = scale_shift(y, rstd * gamma, beta, out=y)  # y = gamma o xhat + beta = (x - mu) (gamma rstd) + beta
            else:
                y.mul_(rstd)  # y = xhat = (x - mu) rstd
            return y.to(x.dtype), NormStats(mu, rstd)
        assert self.running_mean is not None and self.running_var is not None
        mu = self.running_mean.to(xa.dtype).view(view)
        rstd = self.running_var.to(xa.dtype).add(self.eps).rsqrt_().view(view)
        scale = rstd if gamma is None else rstd * gamma  # s = gamma rstd   (1, C, 1, ...)
        shift = -mu * scale if beta is None else beta - mu * scale  # beta - s running_mean
        y = scale_shift(xa, scale, shift, out=fresh_like(xa))  # y = s x + (beta - s running_mean)
        return y.to(x.dtype), NormStats(mu, rstd)

    def lean_backward(self, dJ_dy: Tensor, x: Tensor, cache: NormStats, ctx: BackwardContext) -> LayerGradients:
        """A training step's backward pass from mu and rstd (x of shape (N, C, ...)): xhat rebuilt
        from x, dJ/dx in dJ/dy's storage when the loop owns it (the module docstring)."""
        acc, dtype = cache.rstd.dtype, dJ_dy.dtype
        view = _channel_view(x)
        mu, rstd = cache.mu, cache.rstd  # (1, C, 1, ...)
        own = ctx.overwrite and not ctx.keep_intermediates and dJ_dy.dtype == acc
        g = dJ_dy if own else dJ_dy.to(acc, copy=True)  # dJ/dy, then dJ/dx in place
        xa = x.to(acc)
        gamma = self.params["gamma"].to(acc).view(view) if self.params else None
        kept: dict[Key, Tensor] = {}
        if ctx.keep_intermediates:
            kept[Key("xhat", ctx.path)] = dJ_dy * gamma.to(dtype) if gamma is not None else dJ_dy.clone()
        sum_g = channel_sum(g).view(view)  # sum_n dJ/dy   (1, C, 1, ...)
        g_xm = torch.sub(xa, mu, out=fresh_like(xa)).mul_(g)  # (x - mu) o dJ/dy: xhat rebuilt from x, but for rstd
        S = channel_sum(g_xm).view(view).mul_(rstd)  # S = sum_n dJ/dy o xhat = rstd sum_n dJ/dy o (x - mu)
        del g_xm
        params: dict[str, Tensor] = {}
        if gamma is not None:
            params["gamma"] = S.view(-1).to(dtype)  # dJ/dgamma = sum_n dJ/dy o xhat   (C,)
            params["beta"] = sum_g.view(-1).to(dtype)  # dJ/dbeta = sum_n dJ/dy   (C,)
        if not ctx.need_dx:
            return LayerGradients(None, params, kept)
        s = rstd * gamma if gamma is not None else rstd  # s = gamma rstd
        if not self.uses_batch_statistics:
            return LayerGradients(
                g.mul_(s).to(dtype), params, kept
            )  # dJ/dx = s dJ/dy: the running statistics are constants
        n = x.numel() // self.C  # N, or N H W
        S_n = S / (n - 1 if self.unbiased else n)  # the variance's path: S / N (unbiased: S / (N - 1))
        k = s * rstd * S_n  # (1, C, 1, ...)
        # dJ/dx = s (dJ/dy - sum_g / N - xhat S / N) = s (dJ/dy - (sum_g / N - mu rstd S / N)) - k x
        shift = (sum_g / n).sub_(mu * rstd * S_n)
        dJ_dx = scale_shift(g, s, -s * shift, out=g).addcmul_(xa, k, value=-1.0)  # s dJ/dy - s shift - k x
        return LayerGradients(dJ_dx.to(dtype), params, kept)

    def _update_running(self, mu: Tensor, var_unbiased: Tensor) -> None:
        """torch's update: an exponential average with momentum m, or (m = None) the
        cumulative average over the batches seen so far."""
        assert self.running_mean is not None and self.running_var is not None
        self.num_batches_tracked += 1
        m = self.momentum if self.momentum is not None else 1.0 / self.num_batches_tracked
        self.running_mean = (1.0 - m) * self.running_mean + m * mu
        self.running_var = (1.0 - m) * self.running_var + m * var_unbiased

    def backward(
        self, dJ_dy: Tensor, x: Tensor, out: Tensor, cache: NormCacheOrStats, ctx: BackwardContext
    ) -> LayerGradients:
        if isinstance(cache, NormStats):
            return self.lean_backward(dJ_dy, x, cache, ctx)
        xhat, rstd = cache.xhat, cache.rstd  # in the accumulation dtype
        dtype, N = dJ_dy.dtype, dJ_dy.shape[0]
        gamma = self.params["gamma"].to(xhat.dtype) if self.params else None
        params: dict[str, Tensor] = {}
        # One work buffer in the accumulation dtype holds dJ/dy, then dJ/dy o xhat, then dJ/dx
        # (dJ/dy itself is only read). Its two column sums give dJ/dbeta and dJ/dgamma, and with
        # dJ/dxhat = dJ/dy o gamma they give the two means of dJ/dx too:
        # mean_n(dJ/dxhat) = gamma sum_n(dJ/dy) / N,  mean_n(dJ/dxhat o xhat) = gamma sum_n(dJ/dy o xhat) / N.
        g = dJ_dy.to(xhat.dtype, copy=True)  # (N, C)
        sum_g = g.sum(dim=0)  # sum_n dJ/dy   (C,)
        sum_gx = g.mul_(xhat).sum(dim=0)  # sum_n dJ/dy o xhat   (C,)
        if gamma is not None:
            params["gamma"] = sum_gx.to(dtype)  # dJ/dgamma = sum_n dJ/dy o xhat   (C,)
            params["beta"] = sum_g.to(dtype)  # dJ/dbeta = sum_n dJ/dy   (C,)
        kept: dict[Key, Tensor] = {}
        if ctx.keep_intermediates:
            dJ_dxhat = dJ_dy.to(xhat.dtype) * gamma if gamma is not None else dJ_dy.to(xhat.dtype)  # dJ/dy o gamma
            kept = {Key("xhat", ctx.path): dJ_dxhat.to(dtype, copy=True)}
        if not ctx.need_dx:
            return LayerGradients(None, params, kept)
        scale = rstd * gamma if gamma is not None else rstd  # (C,)
        g.copy_(dJ_dy)  # dJ/dy again, in the buffer
        if self.uses_batch_statistics:
            # dJ/dx = rstd (dJ/dxhat - mean_n(dJ/dxhat) - xhat mean_n(dJ/dxhat o xhat))
            #       = rstd gamma (dJ/dy - sum_n(dJ/dy) / N - xhat sum_n(dJ/dy o xhat) / N), rounded once
            # (unbiased: the variance's path divides by N - 1, the mean's still by N)
            n_var = N - 1 if self.unbiased else N
            dJ_dx = g.sub_(sum_g / N).addcmul_(xhat, sum_gx / n_var, value=-1.0).mul_(scale).to(dtype)  # (N, C)
        else:
            dJ_dx = g.mul_(scale).to(dtype)  # dJ/dx = dJ/dxhat rstd: the running statistics do not depend on x
        return LayerGradients(dJ_dx, params, kept)

    # ---- second order: LayerNorm's (R1)-(R8) over the batch (the module docstring) ---------------
    def _affine(self, V: Params, path: tuple[int, ...], acc: torch.dtype) -> tuple[Tensor | None, Tensor | None]:
        """(gamma, V_gamma) in the accumulation dtype, or (None, None) without the affine."""
        if not self.params:
            return None, None
        return self.params["gamma"].to(acc), V(path, "gamma").to(acc)

    def tangent(
        self, x: Tensor, Rx: Tensor | None, out: Tensor, cache: NormCacheOrStats, V: Params, path: tuple[int, ...]
    ) -> LayerTangent:
        assert Rx is not None, "BatchNorm's input is never indices: it always has a tangent"
        xhat, rstd = normalised(x, cache)  # (N, C), (C,) in the accumulation dtype
        if self.uses_batch_statistics:
            n_var = x.shape[0] - 1 if self.unbiased else x.shape[0]  # the variance's divisor
            t = normalised_tangent(xhat, rstd, Rx, (0,), n_var)  # (R1)-(R3) over the batch
        else:  # R{xhat} = rstd R{x}: the running statistics are constants
            t = NormTangent(Rx.to(xhat.dtype) * rstd, torch.zeros_like(rstd))
        gamma, V_gamma = self._affine(V, path, xhat.dtype)
        V_beta = V(path, "beta").to(xhat.dtype) if self.params else None
        Ry = affine_tangent(xhat, t.Rxhat, gamma, V_gamma, V_beta)  # (R4) R{y}   (N, C)
        return LayerTangent(Ry.to(x.dtype), t, {Key("xhat", path): t.Rxhat.to(x.dtype)})

    def r_backward(
        self, g: Tensor, Rg: Tensor, x: Tensor, Rx: Tensor | None, out: Tensor, t: LayerTangent,
        cache: NormCacheOrStats, V: Params, ctx: SecondContext,
    ) -> tuple[Tensor | None, LayerGradients]:  # fmt: skip
        xhat, rstd = normalised(x, cache)  # (N, C), (C,) in the accumulation dtype
        tangent: NormTangent = t.cache
        dtype, acc = g.dtype, xhat.dtype
        g_a, Rg_a = g.to(acc), Rg.to(acc)  # dJ/dy, R{dJ/dy}   (N, C)
        gamma, V_gamma = self._affine(V, ctx.path, acc)
        h, Rh, R_gx = affine_r_backward(g_a, Rg_a, xhat, tangent.Rxhat, gamma, V_gamma, ctx.first)  # (R5)
        params: dict[str, Tensor] = {}
        if R_gx is not None:
            params["gamma"] = R_gx.sum(dim=0).to(dtype)  # (R7) (H v)_gamma = sum_n R{dJ/dy o xhat}   (C,)
            params["beta"] = Rg_a.sum(dim=0).to(dtype)  # (R8) (H v)_beta = sum_n R{dJ/dy}   (C,)
        kept = {ctx.key("xhat"): Rh.to(dtype, copy=True)} if ctx.keep_intermediates else {}  # R{dJ/dxhat}
        if not ctx.need_dx:
            return None, LayerGradients(None, params, kept)
        if self.uses_batch_statistics:
            n_var = x.shape[0] - 1 if self.unbiased else x.shape[0]
            dJ_dx, R_dx = normalised_r_backward(h, Rh, xhat, rstd, tangent, (0,), n_var, ctx.first)  # (R6)
        else:  # dJ/dx = rstd h, linear in h: R{dJ/dx} = rstd R{h}
            dJ_dx, R_dx = h * rstd, Rh * rstd
        return dJ_dx.to(dtype), LayerGradients(R_dx.to(dtype), params, kept)

    @property
    def pieces(self) -> Pieces | None:
        """With batch statistics: one piece, curving on the scale of each feature's
        sqrt(variance + eps) (refbp.nn.pieces); with running statistics: affine, no limit."""
        if not self.uses_batch_statistics:
            return None
        return Pieces((), "a feature's sqrt(variance + eps) over the batch", scale=self._feature_scale)

    def _feature_scale(self, x: Tensor) -> Tensor:
        spread = x.var(dim=0, unbiased=self.unbiased, keepdim=True).add(self.eps).sqrt()  # (1, C)
        return spread.expand_as(x)

    def torch_forward(
        self, x: Tensor, p: Params, noise: Mapping[tuple[int, ...], Tensor], tap: Tap, path: tuple[int, ...]
    ) -> Tensor:
        if self.pieces is not None:
            tap.piecewise(x, self.pieces)
        if self.uses_batch_statistics and self.unbiased:
            xhat = unbiased_batch_norm(x, self.eps)  # torch ops: F.batch_norm normalises by the biased variance
            mean, var = x.mean(0), x.var(0, unbiased=True)  # (C,): the statistics it used
        elif self.uses_batch_statistics:
            xhat = F.batch_norm(x, None, None, None, None, True, 0.0, self.eps)
            mean, var = x.mean(0), x.var(0, unbiased=False)  # (C,): the statistics F.batch_norm used
        else:
            assert self.running_mean is not None and self.running_var is not None
            mean, var = (s.to(dtype=x.dtype, device=x.device) for s in (self.running_mean, self.running_var))
            xhat = F.batch_norm(x, mean, var, None, None, False, 0.0, self.eps)
        xhat = tap.centred(Key("xhat", path), xhat, lambda: centred_size(x, mean, var, self.eps))
        return xhat * p(path, "gamma") + p(path, "beta") if self.params else xhat

    def to_torch(self) -> torch.nn.Module:
        refuse_unbiased(self.unbiased, self.describe(), self.title)
        like = self.params.get("gamma", self.running_mean)
        module = torch.nn.BatchNorm1d(
            self.C, eps=self.eps, momentum=self.momentum, affine=bool(self.params),
            track_running_stats=self.track_running_stats,
            dtype=None if like is None else like.dtype, device=None if like is None else like.device,
        )  # fmt: skip
        with torch.no_grad():
            if self.params:
                module.weight.copy_(self.params["gamma"])
                module.bias.copy_(self.params["beta"])
            stats = (module.running_mean, module.running_var, module.num_batches_tracked)
            if self.running_mean is not None and self.running_var is not None:
                running_mean, running_var, batches = stats
                assert running_mean is not None and running_var is not None and batches is not None
                running_mean.copy_(self.running_mean)
                running_var.copy_(self.running_var)
                batches.fill_(self.num_batches_tracked)
        module.train(self.training)
        return module


def _channel_view(x: Tensor) -> tuple[int, ...]:
    """(1, C, 1, ...): the shape that broadcasts a per-channel (C,) tensor against x (N, C, ...)."""
    return (1, x.shape[1], *([1] * (x.dim() - 2)))


def channel_sum(t: Tensor) -> Tensor:
    """sum over every dimension but 1 of t (N, C, ...), as (C,): each image's positions first
    (contiguous, a fast reduction), then the batch. One reduction over dims (0, 2, 3) of a
    contiguous tensor is several times slower in torch's CPU kernels."""
    if t.dim() == 2:
        return t.sum(dim=0)  # (C,)
    return t.reshape(t.shape[0], t.shape[1], -1).sum(dim=-1).sum(dim=0)  # (N, C) then (C,)


def channel_square_sum(t: Tensor) -> Tensor:
    """sum over every dimension but 1 of t o t (N, C, ...), as (C,), in the order of
    ``channel_sum``: each image's squared norm per channel (no temporary), then the batch. For
    (N, C) a column dot product (torch.linalg.vector_norm over dim 0 costs 40 times as much here)."""
    if t.dim() == 2:
        return torch.linalg.vecdot(t, t, dim=0)  # (C,)
    norms = torch.linalg.vector_norm(t.reshape(t.shape[0], t.shape[1], -1), dim=-1)  # (N, C)
    return norms.square_().sum(dim=0)  # (C,)


def unbiased_batch_norm(x: Tensor, eps: float) -> Tensor:
    """xhat with the unbiased batch variance, from torch operations (the oracle of
    ``unbiased=True``): (x - mean) / sqrt(var_u + eps) over every dimension but the channels'."""
    over = [0, *range(2, x.dim())]  # every dimension but the channels'
    mu = x.mean(dim=over, keepdim=True)
    var = x.var(dim=over, unbiased=True, keepdim=True)  # 1/(n - 1) sum (x - mu)^2
    return (x - mu) / torch.sqrt(var + eps)


def refuse_unbiased(unbiased: bool, described: str, title: str) -> None:
    """``to_torch`` of an ``unbiased=True`` layer (``described``, a torch.nn.``title`` otherwise):
    a ValueError, as no torch module computes it."""
    if unbiased:
        raise ValueError(
            f"{described} has no torch module: torch.nn.{title} normalises by the biased "
            "variance (1/N), unbiased=True by the Bessel-corrected one (1/(N - 1)); check it with "
            "refbp.check, whose oracle (torch_forward) follows the option, or build the layer with unbiased=False"
        )


@register(torch.nn.BatchNorm1d)
def _from_batch_norm(module: torch.nn.Module) -> Layer:
    assert isinstance(module, torch.nn.BatchNorm1d)
    gamma = None if module.weight is None else module.weight.detach().clone()
    beta = None if module.bias is None else module.bias.detach().clone()
    mean, var, batches = module.running_mean, module.running_var, module.num_batches_tracked
    tracked = mean is not None and var is not None
    return BatchNorm1d(
        gamma, beta, C=module.num_features, eps=module.eps, momentum=module.momentum,
        running_mean=None if mean is None else mean.detach().clone(),
        running_var=None if var is None else var.detach().clone(),
        track_running_stats=tracked, num_batches_tracked=0 if batches is None else int(batches),
    )  # fmt: skip
