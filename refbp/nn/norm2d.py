"""Spatial normalisations of (N, C, H, W): BatchNorm2d and GroupNorm, by the row normalisations.

BatchNorm2d normalises each channel over the batch *and* every position: it is BatchNorm1d on
the N H W rows of x's channels (every position of every image is one more observation),

    rows = x moved to (N, H, W, C), then (N H W, C)
    y    = BatchNorm1d(rows) moved back to (N, C, H, W)                   refbp.nn.batchnorm

so its mean, biased variance, running statistics (unbiased over N H W values, as torch keeps
them) and its backward

    dJ/dx = rstd (dJ/dxhat - mean_{n,h,w}(dJ/dxhat) - xhat mean_{n,h,w}(dJ/dxhat o xhat))

are BatchNorm1d's, reduced over N H W instead of N. Reducing over N only is a classic bug.

GroupNorm(G, C) normalises each image's channel group g (C / G channels, every position) on
its own and then scales each channel: a LayerNorm without affine on the N G rows of
(C / G) H W entries, then the per-channel affine,

    xhat  = LayerNorm(x as (N G, C/G H W)) as (N, C, H, W)                 refbp.nn.layernorm
    y     = gamma[c] xhat + beta[c]
    dJ/dgamma[c] = sum_{n,h,w} dJ/dy o xhat ;  dJ/dbeta[c] = sum_{n,h,w} dJ/dy
    dJ/dxhat     = dJ/dy o gamma[c] ;  dJ/dx = LayerNorm's dJ/dx of those rows

Both reuse those layers' code on a reshaped view (one copy of the layer per call, sharing the
parameter tensors), so the arithmetic and its float64 accumulation are exactly theirs.

Second order (refbp.nn.second_order) the same way: BatchNorm2d's tangent and R-backward are
BatchNorm1d's on the N H W rows (in training mode R{xhat} has the statistics' terms over N H W,
in eval mode R{xhat} = rstd R{x}); GroupNorm's are LayerNorm's (R1)-(R3) and (R6) on the N G rows
(refbp.nn.layernorm), with the per-channel affine's

    R{y} = V_gamma[c] xhat + gamma[c] R{xhat} + V_beta[c] ;  R{dJ/dxhat} = R{dJ/dy} gamma[c] + dJ/dy V_gamma[c]
    (H v)_gamma[c] = sum_{n,h,w} R{dJ/dy} o xhat + dJ/dy o R{xhat} ;  (H v)_beta[c] = sum_{n,h,w} R{dJ/dy}
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from .batchnorm import (
    BATCH_NORM_EPS,
    BATCH_NORM_MOMENTUM,
    BatchNorm1d,
    refuse_unbiased,
    unbiased_batch_norm,
)
from .cancellation import centred_size, grouped_centred_size
from .keys import Key
from .layer import BackwardContext, ForwardContext, Layer, LayerGradients, LayerTangent, Params, SecondContext, Tap
from .layernorm import (
    LAYER_NORM_EPS,
    LayerNorm,
    NormCache,
    NormCacheOrStats,
    NormStats,
    NormTangent,
    affine_r_backward,
    affine_tangent,
    fresh_like,
    normalised,
    normalised_r_backward,
    normalised_tangent,
    scale_shift,
)
from .pieces import Pieces
from .registry import register
from .validation import describe

__all__ = ["BatchNorm2d", "GroupNorm"]

GROUP_NORM_EPS = LAYER_NORM_EPS
"""torch.nn.GroupNorm's default eps, 1e-5 as LayerNorm's."""


def _channels_last_rows(t: Tensor) -> Tensor:
    """(N, C, H, W) -> (N H W, C): one row per position of each image."""
    return t.movedim(1, -1).reshape(-1, t.shape[1])


def _channels_first(rows: Tensor, shape: torch.Size) -> Tensor:
    """(N H W, C) -> (N, C, H, W), the inverse of ``_channels_last_rows`` (a view)."""
    N, C, H, W = shape
    return rows.view(N, H, W, C).movedim(-1, 1)


class BatchNorm2d(Layer):
    """torch.nn.BatchNorm2d(C) on (N, C, H, W): BatchNorm1d on the channels of every position.

    Args: as refbp.nn.batchnorm.BatchNorm1d (gamma, beta (C,) or None; C; eps; momentum;
    running_mean, running_var; track_running_stats; num_batches_tracked; unbiased, with
    N H W - 1 values' worth of Bessel correction).
    """

    title = "BatchNorm2d"
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
        rows = BatchNorm1d(
            gamma,
            beta,
            C=C,
            eps=eps,
            momentum=momentum,
            running_mean=running_mean,
            running_var=running_var,
            track_running_stats=track_running_stats,
            num_batches_tracked=num_batches_tracked,
            unbiased=unbiased,
        )  # fmt: skip   validates the arguments and fills the defaults once
        self.unbiased = rows.unbiased
        self.params = rows.params
        self.C, self.eps, self.momentum = rows.C, rows.eps, rows.momentum
        self.track_running_stats = rows.track_running_stats
        self.running_mean, self.running_var = rows.running_mean, rows.running_var
        self.num_batches_tracked = rows.num_batches_tracked
        self.training = True

    def _rows(self) -> BatchNorm1d:
        """BatchNorm1d with this layer's parameters, statistics and mode, for (N H W, C) rows."""
        rows = BatchNorm1d(
            self.params.get("gamma"), self.params.get("beta"), C=self.C, eps=self.eps, momentum=self.momentum,
            running_mean=self.running_mean, running_var=self.running_var,
            track_running_stats=self.track_running_stats, num_batches_tracked=self.num_batches_tracked,
            unbiased=self.unbiased,
        )  # fmt: skip
        rows.set_training(self.training)
        return rows

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
        return f"BatchNorm2d({self.C}, {mode}{unbiased}{'' if self.params else ', no affine'})"

    def equations(self) -> tuple[str, str]:
        forward, backward = self._rows().equations()
        over = "  [mean_n, var_n over the N H W positions of each channel]"
        return forward.replace("(over the batch)", "") + over, backward

    def check_input(self, x: Tensor, path: tuple[int, ...]) -> None:
        where = ".".join(map(str, path))
        if x.dim() != 4 or x.shape[1] != self.C:
            raise ValueError(f"layer {where} ({self.describe()}) needs input (N, {self.C}, H, W), got {describe(x)}")
        if self.uses_batch_statistics and x.shape[0] * x.shape[2] * x.shape[3] < 2:
            why = (
                "the unbiased variance divides by N H W - 1 = 0" if self.unbiased else "the variance of one value is 0"
            )
            raise ValueError(
                f"layer {where} ({self.describe()}) needs N H W >= 2 values per channel in training mode "
                f"({why}), got {describe(x)}"
            )

    def cached_values(self, cache: NormCacheOrStats, path: tuple[int, ...]) -> dict[Key, Tensor]:
        return {Key("xhat", path): cache.xhat} if isinstance(cache, NormCache) else {}  # lean: xhat not kept

    def release(self, cache: NormCacheOrStats) -> None:
        if isinstance(cache, NormStats):
            cache.mu = cache.rstd = torch.empty(0)

    def forward(self, x: Tensor, ctx: ForwardContext, path: tuple[int, ...]) -> tuple[Tensor, NormCacheOrStats]:
        self.check_input(x, path)
        rows = self._rows()
        stats: NormCacheOrStats
        if not ctx.keep_intermediates:  # lean: BatchNorm1d's lean pass on x itself, over N, H and W
            y, stats = rows.lean_forward(x, ctx)
        else:
            y_rows, cache = rows.forward(_channels_last_rows(x), ctx, path)  # (N H W, C)
            y, stats = _channels_first(y_rows, x.shape), NormCache(_channels_first(cache.xhat, x.shape), cache.rstd)
        self.running_mean, self.running_var = rows.running_mean, rows.running_var  # as torch, when updated
        self.num_batches_tracked = rows.num_batches_tracked
        return y, stats

    def backward(
        self, dJ_dy: Tensor, x: Tensor, out: Tensor, cache: NormCacheOrStats, ctx: BackwardContext
    ) -> LayerGradients:
        if isinstance(cache, NormStats):
            return self._rows().lean_backward(dJ_dy, x, cache, ctx)
        rows_cache = NormCache(_channels_last_rows(cache.xhat), cache.rstd)  # (N H W, C): a view when it was one
        grads = self._rows().backward(_channels_last_rows(dJ_dy), x, out, rows_cache, ctx)
        dJ_dx = None if grads.dJ_dx is None else _channels_first(grads.dJ_dx, x.shape)  # (N, C, H, W)
        kept = {key: _channels_first(t, x.shape) for key, t in grads.intermediates.items()}  # dJ/dxhat
        return LayerGradients(dJ_dx, grads.params, kept)

    # ---- second order: BatchNorm1d's rules on the N H W rows ------------------------------------
    @staticmethod
    def _rows_cache(cache: NormCacheOrStats) -> NormCacheOrStats:
        """The cache as BatchNorm1d's of the (N H W, C) rows: xhat moved, or mu and rstd as (C,)."""
        if isinstance(cache, NormCache):
            return NormCache(_channels_last_rows(cache.xhat), cache.rstd)  # (N H W, C), (C,)
        return NormStats(cache.mu.reshape(-1), cache.rstd.reshape(-1))  # lean: (1, C, 1, 1) -> (C,)

    def tangent(
        self, x: Tensor, Rx: Tensor | None, out: Tensor, cache: NormCacheOrStats, V: Params, path: tuple[int, ...]
    ) -> LayerTangent:
        assert Rx is not None, "BatchNorm's input is never indices: it always has a tangent"
        rows = self._rows().tangent(
            _channels_last_rows(x), _channels_last_rows(Rx), out, self._rows_cache(cache), V, path
        )  # BatchNorm1d's R{y} and R{xhat} of the (N H W, C) rows
        kept = {
            key: _channels_first(value, x.shape) for key, value in rows.intermediates.items()
        }  # R{xhat}   (N, C, H, W)
        return LayerTangent(_channels_first(rows.out, x.shape), rows, kept)

    def r_backward(
        self, g: Tensor, Rg: Tensor, x: Tensor, Rx: Tensor | None, out: Tensor, t: LayerTangent,
        cache: NormCacheOrStats, V: Params, ctx: SecondContext,
    ) -> tuple[Tensor | None, LayerGradients]:  # fmt: skip
        assert Rx is not None
        g_x, R = self._rows().r_backward(
            _channels_last_rows(g),
            _channels_last_rows(Rg),
            _channels_last_rows(x),
            _channels_last_rows(Rx),
            out,
            t.cache,
            self._rows_cache(cache),
            V,
            ctx,
        )  # fmt: skip   (N H W, C) rows: dJ/dx, R{dJ/dx}, (H v)_gamma, (H v)_beta, R{dJ/dxhat}
        kept = {key: _channels_first(value, x.shape) for key, value in R.intermediates.items()}  # R{dJ/dxhat}
        if g_x is None or R.dJ_dx is None:
            return None, LayerGradients(None, R.params, kept)
        return _channels_first(g_x, x.shape), LayerGradients(_channels_first(R.dJ_dx, x.shape), R.params, kept)

    @property
    def pieces(self) -> Pieces | None:
        """With batch statistics: one piece, curving on the scale of each channel's
        sqrt(variance + eps) over N H W (refbp.nn.pieces); with running statistics: affine."""
        if not self.uses_batch_statistics:
            return None
        return Pieces((), "a channel's sqrt(variance + eps) over the batch and positions", scale=self._channel_scale)

    def _channel_scale(self, x: Tensor) -> Tensor:
        spread = x.var(dim=(0, 2, 3), unbiased=self.unbiased, keepdim=True).add(self.eps).sqrt()  # (1, C, 1, 1)
        return spread.expand_as(x)

    def torch_forward(
        self, x: Tensor, p: Params, noise: Mapping[tuple[int, ...], Tensor], tap: Tap, path: tuple[int, ...]
    ) -> Tensor:
        if self.pieces is not None:
            tap.piecewise(x, self.pieces)
        if self.uses_batch_statistics and self.unbiased:
            xhat = unbiased_batch_norm(x, self.eps)  # torch ops: F.batch_norm normalises by the biased variance
            mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=True)  # (C,): the statistics it used
        elif self.uses_batch_statistics:
            xhat = F.batch_norm(x, None, None, None, None, True, 0.0, self.eps)
            mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)  # (C,): the statistics F.batch_norm used
        else:
            assert self.running_mean is not None and self.running_var is not None
            mean, var = (s.to(dtype=x.dtype, device=x.device) for s in (self.running_mean, self.running_var))
            xhat = F.batch_norm(x, mean, var, None, None, False, 0.0, self.eps)
        per_channel = (1, -1, 1, 1)
        xhat = tap.centred(
            Key("xhat", path), xhat, lambda: centred_size(x, mean.view(per_channel), var.view(per_channel), self.eps)
        )
        if not self.params:
            return xhat
        return xhat * p(path, "gamma").view(-1, 1, 1) + p(path, "beta").view(-1, 1, 1)  # per channel

    def to_torch(self) -> torch.nn.Module:
        refuse_unbiased(self.unbiased, self.describe(), self.title)
        like = self.params.get("gamma", self.running_mean)
        module = torch.nn.BatchNorm2d(
            self.C, eps=self.eps, momentum=self.momentum, affine=bool(self.params),
            track_running_stats=self.track_running_stats,
            dtype=None if like is None else like.dtype, device=None if like is None else like.device,
        )  # fmt: skip
        module.load_state_dict(self._rows().to_torch().state_dict())  # BatchNorm1d's: the same names and values
        module.train(self.training)
        return module


class GroupNorm(Layer):
    """torch.nn.GroupNorm(num_groups, C) on (N, C, *): each image's channel groups normalised.

    Args:
        num_groups: G, dividing C.
        gamma, beta: (C,) the per-channel affine, or both None (``affine=False``).
        C: the number of channels; needed only without gamma.
        eps: added to the variance.
    """

    title = "GroupNorm"
    torch_names: ClassVar[dict[str, str]] = {"gamma": "0.weight", "beta": "0.bias"}

    def __init__(
        self,
        num_groups: int,
        gamma: Tensor | None = None,
        beta: Tensor | None = None,
        *,
        C: int | None = None,
        eps: float = GROUP_NORM_EPS,
    ) -> None:
        if (gamma is None) != (beta is None):
            raise ValueError("GroupNorm: give both gamma and beta (affine) or neither")
        if gamma is None and C is None:
            raise ValueError("GroupNorm without gamma needs C, the number of channels")
        self.C = int(gamma.shape[0]) if gamma is not None else int(C)  # type: ignore[arg-type]
        if not isinstance(num_groups, int) or num_groups < 1 or self.C % num_groups:
            raise ValueError(f"GroupNorm: num_groups={num_groups!r} must be an int >= 1 dividing C = {self.C}")
        self.G = num_groups
        self.params = {} if gamma is None or beta is None else {"gamma": gamma, "beta": beta}
        self.eps = float(eps)
        self.training = True

    @property
    def intermediates(self) -> tuple[str, ...]:
        return ("xhat",)

    def describe(self) -> str:
        return f"GroupNorm({self.G} groups, {self.C} channels{'' if self.params else ', no affine'})"

    def equations(self) -> tuple[str, str]:
        return (
            "xhat = (x - mean_g(x)) / sqrt(var_g(x) + eps) per image and channel group ;  y = gamma[c] xhat + beta[c]",
            "dJ/dxhat = dJ/dy o gamma[c] ;  dJ/dx = rstd (dJ/dxhat - mean_g(dJ/dxhat) - xhat mean_g(dJ/dxhat o xhat))",
        )

    def check_input(self, x: Tensor, path: tuple[int, ...]) -> None:
        if x.dim() < 2 or x.shape[1] != self.C:
            where = ".".join(map(str, path))
            raise ValueError(f"layer {where} ({self.describe()}) needs input (N, {self.C}, ...), got {describe(x)}")
        if x[0].numel() // self.G < 2:
            where = ".".join(map(str, path))
            raise ValueError(
                f"layer {where} ({self.describe()}) needs at least 2 values per group, got {describe(x)} (one "
                "value normalises to 0 whatever it is: torch returns beta there, and no gradient reaches x)"
            )

    def _rows(self, x: Tensor) -> LayerNorm:
        """A LayerNorm without affine over one group's (C / G) H W entries."""
        return LayerNorm(d=x[0].numel() // self.G, eps=self.eps)

    def _per_channel(self, t: Tensor, ndim: int) -> Tensor:
        return t.view(-1, *([1] * (ndim - 2)))  # (C, 1, ..., 1): broadcasts over the positions

    def cached_values(self, cache: NormCacheOrStats, path: tuple[int, ...]) -> dict[Key, Tensor]:
        return {Key("xhat", path): cache.xhat} if isinstance(cache, NormCache) else {}  # lean: xhat not kept

    def release(self, cache: NormCacheOrStats) -> None:
        if isinstance(cache, NormStats):
            cache.mu = cache.rstd = torch.empty(0)

    def forward(self, x: Tensor, ctx: ForwardContext, path: tuple[int, ...]) -> tuple[Tensor, NormCacheOrStats]:
        self.check_input(x, path)
        N = x.shape[0]
        if not ctx.keep_intermediates:  # lean: LayerNorm's lean pass on the groups, mu and rstd (N G, 1) kept
            y_rows, stats = self._rows(x).lean_forward(x.reshape(N * self.G, -1))  # (N G, C/G H W)
            y = y_rows.view(x.shape)
            if self.params:
                gamma, beta = (self._per_channel(self.params[k], x.dim()) for k in ("gamma", "beta"))
                y = scale_shift(y, gamma, beta, out=y)  # y = gamma[c] xhat + beta[c]
            return y, stats
        xhat_rows, rows_cache = self._rows(x).forward(x.reshape(N * self.G, -1), ctx, path)  # (N G, C/G H W)
        xhat = rows_cache.xhat.view(x.shape)  # (N, C, *) in the accumulation dtype
        cache = NormCache(xhat, rows_cache.rstd)  # rstd: (N G, 1)
        if not self.params:
            return xhat_rows.view(x.shape), cache
        gamma, beta = (self._per_channel(self.params[k], x.dim()) for k in ("gamma", "beta"))
        return torch.addcmul(beta, xhat_rows.view(x.shape), gamma), cache  # y = gamma[c] xhat + beta[c]

    def _lean_backward(self, dJ_dy: Tensor, x: Tensor, stats: NormStats, ctx: BackwardContext) -> LayerGradients:
        """The backward pass from the groups' mu and rstd: each (image, channel)'s two sums over
        its positions, then dJ/dx in two passes, with h = dJ/dxhat = dJ/dy o gamma[c]:

            E[n, c] = sum_pos dJ/dy ;  S[n, c] = sum_pos dJ/dy o xhat = rstd sum_pos dJ/dy o (x - mu)
            dJ/dgamma = sum_n S ;  dJ/dbeta = sum_n E
            mean_h = sum_(c in group) gamma[c] E / K ;  m = mean_k h o xhat = sum_(c in group) gamma[c] S / K
            dJ/dx = rstd (h - mean_h - xhat m) = rstd gamma[c] dJ/dy + (rstd^2 m mu - rstd mean_h) - rstd^2 m x

        (K = C/G H W entries a group). Six passes over x's size: x - mu into one work buffer,
        the two sums (dJ/dy o (x - mu) made in that buffer first), and dJ/dx's two multiply-adds,
        written into the work buffer."""
        dtype, N, acc = dJ_dy.dtype, x.shape[0], stats.rstd.dtype
        G, C = self.G, self.C
        rows_x = x.to(acc).reshape(N * G, -1)  # (N G, K), K = C/G H W: default layout, a copy if x is not in it
        K = rows_x.shape[1]
        mu, rstd = stats.mu, stats.rstd  # (N G, 1) each
        params: dict[str, Tensor] = {}
        kept: dict[Key, Tensor] = {}
        # dJ/dy in the default layout, so that each (image, channel)'s positions are one contiguous row
        g = dJ_dy.to(acc).contiguous()  # dJ/dy itself when it is already so (then only read)
        per_channel = (N * C, -1)  # one row per (image, channel): its positions
        E = g.view(per_channel).sum(dim=-1).view(N, C)  # sum_pos dJ/dy   (N, C)
        work = torch.sub(rows_x, mu, out=fresh_like(rows_x))  # x - mu   (N G, K)
        S = work.view(per_channel).mul_(g.view(per_channel)).sum(dim=-1).view(N, G, -1)  # sum_pos dJ/dy o (x - mu)
        S = S.mul_(rstd.view(N, G, 1)).view(N, C)  # S = sum_pos dJ/dy o xhat   (N, C)
        gamma = self.params["gamma"].to(acc) if self.params else torch.ones(C, dtype=acc, device=x.device)  # (C,)
        if self.params:
            params["gamma"] = S.sum(dim=0).to(dtype)  # dJ/dgamma = sum_n S   (C,)
            params["beta"] = E.sum(dim=0).to(dtype)  # dJ/dbeta = sum_n E   (C,)
        if ctx.keep_intermediates:  # dJ/dxhat = dJ/dy o gamma[c], in storage of its own
            kept[Key("xhat", ctx.path)] = (g * self._per_channel(gamma, x.dim())).to(dtype)
        if not ctx.need_dx:
            return LayerGradients(None, params, kept)
        mean_h = (gamma * E).view(N, G, -1).sum(dim=-1).div_(K)  # mean_k h   (N, G)
        m = (gamma * S).view(N, G, -1).sum(dim=-1).div_(K)  # m = mean_k h o xhat   (N, G)
        r, mu_g = rstd.view(N, G), mu.view(N, G)
        k = r * r * m  # rstd^2 m   (N, G)
        shift = (k * mu_g).sub_(r * mean_h)  # rstd^2 m mu - rstd mean_h   (N, G)
        per_group = (N, G, 1)  # a group's factor for each of its channels
        a_c = (r.view(per_group) * gamma.view(1, G, -1)).view(N, C, 1)  # rstd gamma[c]   (N, C, 1)
        shift_c, minus_k_c = (t.view(per_group).expand(N, G, C // G).reshape(N, C, 1) for t in (shift, -k))
        dJ_dx = scale_shift(rows_x.view(N, C, -1), minus_k_c, shift_c, out=work.view(N, C, -1))  # - rstd^2 m x + ...
        dJ_dx.addcmul_(g.view(N, C, -1), a_c)  # + rstd gamma[c] dJ/dy
        return LayerGradients(dJ_dx.view(x.shape).to(dtype), params, kept)

    def backward(
        self, dJ_dy: Tensor, x: Tensor, out: Tensor, cache: NormCacheOrStats, ctx: BackwardContext
    ) -> LayerGradients:
        if isinstance(cache, NormStats):
            return self._lean_backward(dJ_dy, x, cache, ctx)
        dtype, N = dJ_dy.dtype, x.shape[0]
        over = [0, *range(2, x.dim())]  # the batch and every position: what a channel's parameters see
        params: dict[str, Tensor] = {}
        dJ_dxhat = dJ_dy
        if self.params:
            params["gamma"] = (dJ_dy * cache.xhat).sum(dim=over).to(dtype)  # dJ/dgamma = sum dJ/dy o xhat   (C,)
            params["beta"] = dJ_dy.sum(dim=over)  # dJ/dbeta = sum dJ/dy   (C,)
            dJ_dxhat = dJ_dy * self._per_channel(self.params["gamma"], x.dim())  # dJ/dy o gamma[c]   (N, C, *)
        kept: dict[Key, Tensor] = {}
        if ctx.keep_intermediates:  # dJ/dxhat, in storage of its own
            kept[Key("xhat", ctx.path)] = dJ_dxhat.clone() if dJ_dxhat is dJ_dy else dJ_dxhat
        if not ctx.need_dx:
            return LayerGradients(None, params, kept)
        rows = self._rows(x)
        rows_cache = NormCache(cache.xhat.reshape(N * self.G, -1), cache.rstd)  # (N G, C/G H W)
        inner = dataclasses.replace(ctx, keep_intermediates=False)
        g = rows.backward(dJ_dxhat.reshape(N * self.G, -1), x, out, rows_cache, inner)  # LayerNorm's dJ/dx
        assert g.dJ_dx is not None
        return LayerGradients(g.dJ_dx.view(x.shape), params, kept)

    # ---- second order: LayerNorm's rules on the N G rows, then the per-channel affine ----------
    def _groups(self, x: Tensor, cache: NormCacheOrStats) -> tuple[Tensor, Tensor]:
        """(xhat, rstd) of the N G rows, (N G, C/G H W) and (N G, 1), in the accumulation dtype."""
        rows_x = x.reshape(x.shape[0] * self.G, -1)  # (N G, C/G H W)
        if isinstance(cache, NormCache):
            return normalised(rows_x, NormCache(cache.xhat.reshape(rows_x.shape), cache.rstd))
        return normalised(rows_x, cache)  # lean: xhat rebuilt from the groups' mu and rstd

    def _affine(self, V: Params, path: tuple[int, ...], ndim: int, acc: torch.dtype) -> list[Tensor | None]:
        """[gamma, V_gamma, V_beta] per channel, (C, 1, ...), in the accumulation dtype; Nones without the affine."""
        if not self.params:
            return [None, None, None]
        kinds = [self.params["gamma"], V(path, "gamma"), V(path, "beta")]
        return [self._per_channel(t.to(acc), ndim) for t in kinds]

    def tangent(
        self, x: Tensor, Rx: Tensor | None, out: Tensor, cache: NormCacheOrStats, V: Params, path: tuple[int, ...]
    ) -> LayerTangent:
        assert Rx is not None, "GroupNorm's input is never indices: it always has a tangent"
        xhat, rstd = self._groups(x, cache)  # (N G, K), (N G, 1)
        t = normalised_tangent(xhat, rstd, Rx.reshape(xhat.shape), (-1,), xhat.shape[1])  # (R1)-(R3) per group
        gamma, V_gamma, V_beta = self._affine(V, path, x.dim(), xhat.dtype)
        Ry = affine_tangent(xhat.view(x.shape), t.Rxhat.view(x.shape), gamma, V_gamma, V_beta)  # R{y}   (N, C, *)
        return LayerTangent(Ry.to(x.dtype), t, {Key("xhat", path): t.Rxhat.view(x.shape).to(x.dtype)})

    def r_backward(
        self, g: Tensor, Rg: Tensor, x: Tensor, Rx: Tensor | None, out: Tensor, t: LayerTangent,
        cache: NormCacheOrStats, V: Params, ctx: SecondContext,
    ) -> tuple[Tensor | None, LayerGradients]:  # fmt: skip
        xhat, rstd = self._groups(x, cache)  # (N G, K), (N G, 1) in the accumulation dtype
        tangent: NormTangent = t.cache
        dtype, acc = g.dtype, xhat.dtype
        over = [0, *range(2, x.dim())]  # the batch and every position: what a channel's parameters see
        gamma, V_gamma, _ = self._affine(V, ctx.path, x.dim(), acc)
        g_a, Rg_a = g.to(acc), Rg.to(acc)  # dJ/dy, R{dJ/dy}   (N, C, *)
        h, Rh, R_gx = affine_r_backward(
            g_a, Rg_a, xhat.view(x.shape), tangent.Rxhat.view(x.shape), gamma, V_gamma, ctx.first
        )  # h = dJ/dxhat, R{h}   (N, C, *)
        params: dict[str, Tensor] = {}
        if R_gx is not None:
            params["gamma"] = R_gx.sum(dim=over).to(dtype)  # (H v)_gamma[c] = sum R{dJ/dy o xhat}   (C,)
            params["beta"] = Rg_a.sum(dim=over).to(dtype)  # (H v)_beta[c] = sum R{dJ/dy}   (C,)
        kept = {ctx.key("xhat"): Rh.to(dtype, copy=True)} if ctx.keep_intermediates else {}  # R{dJ/dxhat}
        if not ctx.need_dx:
            return None, LayerGradients(None, params, kept)
        dJ_dx, R_dx = normalised_r_backward(
            h.reshape(xhat.shape), Rh.reshape(xhat.shape), xhat, rstd, tangent, (-1,), xhat.shape[1], ctx.first
        )  # LayerNorm's (R6) on the groups   (N G, K)
        return dJ_dx.view(x.shape).to(dtype), LayerGradients(R_dx.view(x.shape).to(dtype), params, kept)

    @property
    def pieces(self) -> Pieces:
        """One piece, curving on the scale of each group's sqrt(variance + eps) (refbp.nn.pieces)."""
        return Pieces((), "a channel group's sqrt(variance + eps)", scale=self._group_scale)

    def _group_scale(self, x: Tensor) -> Tensor:
        groups = x.reshape(x.shape[0], self.G, -1)  # (N, G, C/G H W)
        if groups.shape[2] == 1:  # a single entry is normalised to exactly 0 wherever it is
            return torch.full_like(x, math.inf)
        spread = groups.var(dim=2, unbiased=False, keepdim=True).add(self.eps).sqrt()  # (N, G, 1)
        return spread.expand_as(groups).reshape(x.shape)

    def torch_forward(
        self, x: Tensor, p: Params, noise: Mapping[tuple[int, ...], Tensor], tap: Tap, path: tuple[int, ...]
    ) -> Tensor:
        tap.piecewise(x, self.pieces)
        xhat = F.group_norm(x, self.G, None, None, self.eps)
        heard = tap.centred(Key("xhat", path), xhat, lambda: grouped_centred_size(x, self.G, self.eps))
        if not self.params:
            return heard
        # y by torch's affine kernel, as nn.GroupNorm computes it: in float32 its backward, c2 x + c3
        # summed over a group, cancels in groups of a few entries, and that error is torch's own
        # (the conditioning allowance measures it). What the tap did to xhat rides on top, exactly:
        # gamma o (heard - xhat) is 0 unless a tap moved xhat, and dJ/dxhat flows through it
        y = F.group_norm(x, self.G, p(path, "gamma"), p(path, "beta"), self.eps)
        return y + (heard - xhat) * self._per_channel(p(path, "gamma"), x.dim())

    def to_torch(self) -> torch.nn.Module:
        gamma = self.params.get("gamma")
        module = torch.nn.GroupNorm(
            self.G, self.C, eps=self.eps, affine=gamma is not None,
            dtype=None if gamma is None else gamma.dtype, device=None if gamma is None else gamma.device,
        )  # fmt: skip
        with torch.no_grad():
            if gamma is not None:
                module.weight.copy_(gamma)
                module.bias.copy_(self.params["beta"])
        return module


@register(torch.nn.BatchNorm2d)
def _from_batch_norm_2d(module: torch.nn.Module) -> Layer:
    assert isinstance(module, torch.nn.BatchNorm2d)
    gamma = None if module.weight is None else module.weight.detach().clone()
    beta = None if module.bias is None else module.bias.detach().clone()
    mean, var, batches = module.running_mean, module.running_var, module.num_batches_tracked
    return BatchNorm2d(
        gamma, beta, C=module.num_features, eps=module.eps, momentum=module.momentum,
        running_mean=None if mean is None else mean.detach().clone(),
        running_var=None if var is None else var.detach().clone(),
        track_running_stats=mean is not None and var is not None,
        num_batches_tracked=0 if batches is None else int(batches),
    )  # fmt: skip


@register(torch.nn.GroupNorm)
def _from_group_norm(module: torch.nn.Module) -> Layer:
    assert isinstance(module, torch.nn.GroupNorm)
    gamma = None if module.weight is None else module.weight.detach().clone()
    beta = None if module.bias is None else module.bias.detach().clone()
    return GroupNorm(module.num_groups, gamma, beta, C=module.num_channels, eps=module.eps)
