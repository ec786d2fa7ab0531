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
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from .cancellation import centred_size
from .keys import Key
from .layer import BackwardContext, ForwardContext, Layer, LayerGrads, Params, Tap
from .layernorm import NormCache, accumulation_dtype
from .pieces import Pieces
from .registry import register
from .validation import describe

__all__ = ["BatchNorm1d"]

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
    ) -> None:
        if (gamma is None) != (beta is None):
            raise ValueError("BatchNorm1d: give both gamma and beta (affine) or neither")
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
        return f"BatchNorm1d({self.C}, {mode}{'' if self.params else ', no affine'})"

    def equations(self) -> tuple[str, str]:
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
            raise ValueError(
                f"layer {where} ({self.describe()}) needs a batch of N >= 2 rows in training mode "
                f"(the variance of one row is 0), got {describe(x)}"
            )

    def cached_values(self, cache: NormCache, path: tuple[int, ...]) -> dict[Key, Tensor]:
        return {Key("xhat", path): cache.xhat}

    def forward(self, x: Tensor, ctx: ForwardContext, path: tuple[int, ...]) -> tuple[Tensor, NormCache]:
        self.check_input(x, path)
        xhat = x.to(accumulation_dtype(x.dtype), copy=True)  # (N, C) a copy of x, made xhat in place
        if self.uses_batch_statistics:
            N = x.shape[0]
            mu = xhat.mean(dim=0)  # (C,)
            centred = xhat.sub_(mu)  # x - mu   (N, C)
            var = (centred * centred).mean(dim=0)  # (C,) biased
            rstd = torch.rsqrt(var + self.eps)  # (C,)
            xhat = centred.mul_(rstd)  # (N, C)  xhat = (x - mu) rstd
            if self.training and self.track_running_stats and ctx.update_stats:
                self._update_running(mu.to(x.dtype), (var * (N / (N - 1))).to(x.dtype))
        else:
            assert self.running_mean is not None and self.running_var is not None
            rstd = torch.rsqrt(self.running_var.to(xhat.dtype) + self.eps)  # (C,)
            xhat = xhat.sub_(self.running_mean.to(xhat.dtype)).mul_(rstd)  # (N, C)
        if not self.params:
            return xhat.to(x.dtype), NormCache(xhat, rstd)  # y = xhat
        y = xhat.to(x.dtype, copy=True)  # (N, C) storage of its own: the cache keeps xhat
        y = torch.addcmul(self.params["beta"], y, self.params["gamma"], out=y)  # y = gamma o xhat + beta
        return y, NormCache(xhat, rstd)

    def _update_running(self, mu: Tensor, var_unbiased: Tensor) -> None:
        """torch's update: an exponential average with momentum m, or (m = None) the
        cumulative average over the batches seen so far."""
        assert self.running_mean is not None and self.running_var is not None
        self.num_batches_tracked += 1
        m = self.momentum if self.momentum is not None else 1.0 / self.num_batches_tracked
        self.running_mean = (1.0 - m) * self.running_mean + m * mu
        self.running_var = (1.0 - m) * self.running_var + m * var_unbiased

    def backward(self, dJ_dy: Tensor, x: Tensor, out: Tensor, cache: NormCache, ctx: BackwardContext) -> LayerGrads:
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
            return LayerGrads(None, params, kept)
        scale = rstd * gamma if gamma is not None else rstd  # (C,)
        g.copy_(dJ_dy)  # dJ/dy again, in the buffer
        if self.uses_batch_statistics:
            # dJ/dx = rstd (dJ/dxhat - mean_n(dJ/dxhat) - xhat mean_n(dJ/dxhat o xhat))
            #       = rstd gamma (dJ/dy - sum_n(dJ/dy) / N - xhat sum_n(dJ/dy o xhat) / N), rounded once
            dJ_dx = g.sub_(sum_g / N).addcmul_(xhat, sum_gx / N, value=-1.0).mul_(scale).to(dtype)  # (N, C)
        else:
            dJ_dx = g.mul_(scale).to(dtype)  # dJ/dx = dJ/dxhat rstd: the running statistics do not depend on x
        return LayerGrads(dJ_dx, params, kept)

    @property
    def pieces(self) -> Pieces | None:
        """With batch statistics: one piece, curving on the scale of each feature's
        sqrt(variance + eps) (refbp.nn.pieces); with running statistics: affine, no limit."""
        if not self.uses_batch_statistics:
            return None
        return Pieces((), "a feature's sqrt(variance + eps) over the batch", scale=self._feature_scale)

    def _feature_scale(self, x: Tensor) -> Tensor:
        spread = x.var(dim=0, unbiased=False, keepdim=True).add(self.eps).sqrt()  # (1, C)
        return spread.expand_as(x)

    def torch_forward(
        self, x: Tensor, p: Params, noise: Mapping[tuple[int, ...], Tensor], tap: Tap, path: tuple[int, ...]
    ) -> Tensor:
        if self.pieces is not None:
            tap.piecewise(x, self.pieces)
        if self.uses_batch_statistics:
            xhat = F.batch_norm(x, None, None, None, None, True, 0.0, self.eps)
            mean, var = x.mean(0), x.var(0, unbiased=False)  # (C,): the statistics F.batch_norm used
        else:
            assert self.running_mean is not None and self.running_var is not None
            mean, var = (s.to(dtype=x.dtype, device=x.device) for s in (self.running_mean, self.running_var))
            xhat = F.batch_norm(x, mean, var, None, None, False, 0.0, self.eps)
        xhat = tap.centred(Key("xhat", path), xhat, lambda: centred_size(x, mean, var, self.eps))
        return xhat * p(path, "gamma") + p(path, "beta") if self.params else xhat

    def to_torch(self) -> torch.nn.Module:
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
