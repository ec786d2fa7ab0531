"""The classic bugs of each layer beyond the MLP, as twins of the right layers.

Each entry is a subclass of a refbp layer whose backward (or forward) has the one wrong line
people write, beside the right one. The twin shares the right layer's parameters and state,
so swapping it into a network (the entry's ``rewire``, refbp.apps.bug_record.swap) changes
exactly that line; the harness then checks the twin's gradients against the right network's
references.

    LayerNorm / BatchNorm  drops the paths through the mean and the variance; the wrong axis;
                           normalises by the unbiased variance
    Dropout                a fresh mask in the backward pass; the mask without the 1/(1 - p)
    Embedding              dJ/dE[idx] = dJ/dy (assigned: a repeated token counts once)
    Residual               dJ/dx through F only (the skip connection's gradient forgotten)

and, as for the MLP, equivalent variants that compute the same numbers by another route: no
checker can or should flag them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from hypothesis import strategies as st
from torch import Tensor

from ..nn.batchnorm import BatchNorm1d
from ..nn.dropout import Dropout
from ..nn.embedding import Embedding
from ..nn.layer import BackwardContext, ForwardContext, Layer, LayerGradients
from ..nn.layernorm import LayerNorm, NormCache, accumulation_dtype
from ..nn.residual import Residual
from ..nn.stack import StackCache, stack_backward
from ..strategies import stack_specs
from .bug_record import Bug, Rewire, swap, twin_of

__all__ = ["LAYER_BUGS"]


def _stacks(*kinds: str, **draw: Any) -> Callable[[], st.SearchStrategy[Any]]:
    """Small float64 stacks that contain a layer of each kind (refbp.strategies.stack_specs
    ``include``), with ``draw``'s options (training mode, ...); shrinkable by hypothesis."""
    return partial(stack_specs, include=kinds, **{"max_depth": 3, "max_width": 4, "max_batch": 4,
                                                  "dtypes": ("float64",), **draw})  # fmt: skip


def _twins(target: type[Layer], twin: type[Layer]) -> Rewire:
    """Every layer of class ``target`` (inner ones included) swapped for its twin of class ``twin``."""
    return lambda net: swap(net, target, twin_of(twin))


# ---- the wrong lines -------------------------------------------------------------------
class _NormNoStatisticPaths(LayerNorm):
    def backward(self, dJ_dy: Tensor, x: Tensor, out: Tensor, cache: NormCache, ctx: BackwardContext) -> LayerGradients:
        right = super().backward(dJ_dy, x, out, cache, ctx)
        gamma = self.params.get("gamma")
        dJ_dxhat = dJ_dy * gamma if gamma is not None else dJ_dy
        right.dJ_dx = (dJ_dxhat * cache.rstd).to(dJ_dy.dtype)  # wrong: as if mu and rstd were constants
        return right


class _NormNoVariancePath(LayerNorm):
    def backward(self, dJ_dy: Tensor, x: Tensor, out: Tensor, cache: NormCache, ctx: BackwardContext) -> LayerGradients:
        right = super().backward(dJ_dy, x, out, cache, ctx)
        gamma = self.params.get("gamma")
        g = (dJ_dy * gamma if gamma is not None else dJ_dy).to(cache.xhat.dtype)
        right.dJ_dx = ((g - g.mean(dim=-1, keepdim=True)) * cache.rstd).to(dJ_dy.dtype)  # wrong: no xhat term
        return right


class _NormWrongAxis(LayerNorm):
    """LayerNorm over the batch axis (dim 0) instead of each row's features, forward and backward."""

    def forward(self, x: Tensor, ctx: ForwardContext, path: tuple[int, ...]) -> tuple[Tensor, NormCache]:
        xa = x.to(accumulation_dtype(x.dtype))
        mu = xa.mean(dim=0, keepdim=True)  # wrong axis: over the rows
        centred = xa - mu
        rstd = torch.rsqrt((centred * centred).mean(dim=0, keepdim=True) + self.eps)
        xhat = centred * rstd
        y = xhat.to(x.dtype)
        if "gamma" in self.params:
            y = y * self.params["gamma"] + self.params.get("beta", 0.0)
        return y, NormCache(xhat, rstd)

    def backward(self, dJ_dy: Tensor, x: Tensor, out: Tensor, cache: NormCache, ctx: BackwardContext) -> LayerGradients:
        right = super().backward(dJ_dy, x, out, cache, ctx)
        gamma = self.params.get("gamma")
        g = (dJ_dy * gamma if gamma is not None else dJ_dy).to(cache.xhat.dtype)
        xhat = cache.xhat
        dJ_dx = (g - g.mean(dim=0, keepdim=True) - xhat * (g * xhat).mean(dim=0, keepdim=True)) * cache.rstd
        right.dJ_dx = dJ_dx.to(dJ_dy.dtype)
        return right


class _NormAlternativeForm(LayerNorm):
    """Equivalent: dJ/dx = rstd / d (d g - sum_k g - xhat sum_k g xhat), the same formula multiplied out."""

    def backward(self, dJ_dy: Tensor, x: Tensor, out: Tensor, cache: NormCache, ctx: BackwardContext) -> LayerGradients:
        right = super().backward(dJ_dy, x, out, cache, ctx)
        gamma = self.params.get("gamma")
        g = (dJ_dy * gamma if gamma is not None else dJ_dy).to(cache.xhat.dtype)
        xhat, d = cache.xhat, self.d
        sums = g.sum(dim=-1, keepdim=True) + xhat * (g * xhat).sum(dim=-1, keepdim=True)
        right.dJ_dx = ((d * g - sums) * cache.rstd / d).to(dJ_dy.dtype)
        return right


class _BatchNormNoStatisticPaths(BatchNorm1d):
    def backward(self, dJ_dy: Tensor, x: Tensor, out: Tensor, cache: NormCache, ctx: BackwardContext) -> LayerGradients:
        right = super().backward(dJ_dy, x, out, cache, ctx)
        g = dJ_dy * self.params["gamma"] if self.params else dJ_dy
        right.dJ_dx = (g * cache.rstd).to(dJ_dy.dtype)  # wrong: the batch mean and variance taken as constants
        return right


class _BatchNormUnbiased(BatchNorm1d):
    """Normalises by the unbiased variance (N - 1), which torch keeps only for running_var."""

    def forward(self, x: Tensor, ctx: ForwardContext, path: tuple[int, ...]) -> tuple[Tensor, NormCache]:
        if not self.uses_batch_statistics:
            return super().forward(x, ctx, path)
        N = x.shape[0]
        xa = x.to(accumulation_dtype(x.dtype))
        centred = xa - xa.mean(dim=0)
        var = (centred * centred).sum(dim=0) / (N - 1)  # wrong: unbiased
        rstd = torch.rsqrt(var + self.eps)
        xhat = centred * rstd
        y = xhat.to(x.dtype)
        if self.params:
            y = y * self.params["gamma"] + self.params["beta"]
        return y, NormCache(xhat, rstd)

    def backward(self, dJ_dy: Tensor, x: Tensor, out: Tensor, cache: NormCache, ctx: BackwardContext) -> LayerGradients:
        right = super().backward(dJ_dy, x, out, cache, ctx)
        if self.uses_batch_statistics:  # the consistent derivative of the unbiased form
            N = x.shape[0]
            g = (dJ_dy * self.params["gamma"] if self.params else dJ_dy).to(cache.xhat.dtype)
            xhat = cache.xhat
            dJ_dx = (g - g.mean(dim=0) - xhat * (g * xhat).sum(dim=0) / (N - 1)) * cache.rstd
            right.dJ_dx = dJ_dx.to(dJ_dy.dtype)
        return right


class _BatchNormLongForm(BatchNorm1d):
    """Equivalent: the chain written step by step through dJ/dvar and dJ/dmu (CS231n's form)."""

    def backward(self, dJ_dy: Tensor, x: Tensor, out: Tensor, cache: NormCache, ctx: BackwardContext) -> LayerGradients:
        right = super().backward(dJ_dy, x, out, cache, ctx)
        if not self.uses_batch_statistics:
            return right
        N = x.shape[0]
        g = (dJ_dy * self.params["gamma"] if self.params else dJ_dy).to(cache.xhat.dtype)
        xa = x.to(cache.xhat.dtype)
        mu = xa.mean(dim=0)
        rstd = cache.rstd
        dJ_dvar = (g * (xa - mu) * (-0.5) * rstd**3).sum(dim=0)  # dJ/dvar
        dJ_dmu = (-g * rstd).sum(dim=0) + dJ_dvar * (-2.0 * (xa - mu)).mean(dim=0)  # dJ/dmu
        right.dJ_dx = (g * rstd + dJ_dvar * 2.0 * (xa - mu) / N + dJ_dmu / N).to(dJ_dy.dtype)
        return right


class _DropoutFreshMask(Dropout):
    def backward(
        self, dJ_dy: Tensor, x: Tensor, out: Tensor, mask: Tensor | None, ctx: BackwardContext
    ) -> LayerGradients:
        if mask is None:
            return super().backward(dJ_dy, x, out, mask, ctx)
        other = torch.Generator().manual_seed((self.seed + 1) % 2**32)  # another draw than the forward's
        fresh = (torch.rand(x.shape, dtype=torch.float64, generator=other) >= self.p).to(x.device)
        return LayerGradients(dJ_dy * fresh / (1.0 - self.p))  # wrong: a new mask, not the forward's


class _DropoutNotRescaled(Dropout):
    def backward(
        self, dJ_dy: Tensor, x: Tensor, out: Tensor, mask: Tensor | None, ctx: BackwardContext
    ) -> LayerGradients:
        if mask is None:
            return super().backward(dJ_dy, x, out, mask, ctx)
        return LayerGradients(dJ_dy * mask)  # wrong: the 1/(1 - p) of the forward is missing


class _EmbeddingAssigned(Embedding):
    def backward(self, dJ_dy: Tensor, x: Tensor, out: Tensor, cache: None, ctx: BackwardContext) -> LayerGradients:
        E = self.params["E"]
        dJ_dE = torch.zeros_like(E)
        dJ_dE[x.reshape(-1)] = dJ_dy.reshape(-1, E.shape[1])  # wrong: a repeated index keeps one row
        return LayerGradients(None, {"E": dJ_dE})


class _EmbeddingOneHot(Embedding):
    """Equivalent: dJ/dE = onehot(idx)^T dJ/dy, the accumulation written as a matrix product."""

    def backward(self, dJ_dy: Tensor, x: Tensor, out: Tensor, cache: None, ctx: BackwardContext) -> LayerGradients:
        E = self.params["E"]
        onehot = torch.nn.functional.one_hot(x.reshape(-1), E.shape[0]).to(E.dtype)  # (M, V)
        return LayerGradients(None, {"E": onehot.T @ dJ_dy.reshape(-1, E.shape[1])})


class _ResidualNoSkip(Residual):
    def backward(
        self, dJ_dy: Tensor, x: Tensor, out: Tensor, cache: StackCache, ctx: BackwardContext
    ) -> LayerGradients:
        grads = stack_backward(self.inner, cache, [dJ_dy], dataclasses.replace(ctx, overwrite=False))
        return LayerGradients(grads.dJ_dx, {}, grads.intermediates, grads.params)  # wrong: + dJ/dy forgotten


_ROWS = "any stack with a LayerNorm"
_BATCH = "a BatchNorm1d in training mode, batch N >= 2"
_DROP = "a Dropout in training mode"

LAYER_BUGS: tuple[Bug, ...] = (
    Bug(
        "layernorm_no_statistic_paths", "LayerNorm backward as if mean and variance were constants", "LayerNorm",
        "dJ_dx = dJ_dxhat * rstd", "dJ_dx = rstd * (dJ_dxhat - mean(dJ_dxhat) - xhat * mean(dJ_dxhat * xhat))",
        "mu and rstd are functions of every entry of the row: moving x_k moves them too. Their two paths "
        "are the two subtracted terms; without them dJ/dx is not even orthogonal to (1, ..., 1).",
        where=_ROWS, specs=_stacks("layernorm"), rewire=_twins(LayerNorm, _NormNoStatisticPaths),
    ),
    Bug(
        "layernorm_no_variance_path", "LayerNorm backward without the variance's path", "LayerNorm",
        "dJ_dx = rstd * (dJ_dxhat - mean(dJ_dxhat))",
        "dJ_dx = rstd * (dJ_dxhat - mean(dJ_dxhat) - xhat * mean(dJ_dxhat * xhat))",
        "The mean's path is there, the variance's is not: the part of dJ/dxhat along xhat, which a change "
        "of scale of the row would absorb, is wrongly passed on.",
        where=_ROWS, specs=_stacks("layernorm"), rewire=_twins(LayerNorm, _NormNoVariancePath),
    ),
    Bug(
        "layernorm_wrong_axis", "LayerNorm over the batch axis", "LayerNorm",
        "mu = x.mean(dim=0)", "mu = x.mean(dim=-1)",
        "LayerNorm normalises each row over its features; over dim 0 it normalises each feature over the "
        "batch, which is BatchNorm's statistic (and mixes the observations).",
        where="a LayerNorm, batch N >= 2", specs=_stacks("layernorm", max_batch=4),
        rewire=_twins(LayerNorm, _NormWrongAxis),
    ),
    Bug(
        "batchnorm_no_statistic_paths", "BatchNorm backward as if batch mean and variance were constants",
        "BatchNorm1d", "dJ_dx = dJ_dxhat * rstd",
        "dJ_dx = rstd * (dJ_dxhat - mean_n(dJ_dxhat) - xhat * mean_n(dJ_dxhat * xhat))",
        "In training mode the statistics come from the batch itself: each x_n moves mu and var, and with "
        "them every row's xhat. (In eval mode the short line is right: the running statistics are constants.)",
        where=_BATCH, specs=_stacks("batchnorm", training=True), rewire=_twins(BatchNorm1d, _BatchNormNoStatisticPaths),
    ),
    Bug(
        "batchnorm_unbiased_variance", "BatchNorm normalised by the unbiased variance", "BatchNorm1d",
        "var = ((x - mu) ** 2).sum(0) / (N - 1)", "var = ((x - mu) ** 2).mean(0)",
        "torch normalises by the biased variance (1/N) and keeps the unbiased one (1/(N - 1)) only for "
        "running_var. Normalising by the unbiased one is another function: its gradients are another's too.",
        where=_BATCH, specs=_stacks("batchnorm", training=True), rewire=_twins(BatchNorm1d, _BatchNormUnbiased),
    ),
    Bug(
        "dropout_fresh_mask", "dropout's backward draws a new mask", "Dropout",
        "dJ_dx = dJ_dy * new_mask / (1 - p)", "dJ_dx = dJ_dy * mask / (1 - p)",
        "The backward pass differentiates the function the forward pass computed, with the entries that "
        "forward pass kept: the mask must come from the cache.",
        where=_DROP, specs=_stacks("dropout", training=True), rewire=_twins(Dropout, _DropoutFreshMask),
    ),
    Bug(
        "dropout_not_rescaled", "dropout's backward without 1/(1 - p)", "Dropout",
        "dJ_dx = dJ_dy * mask", "dJ_dx = dJ_dy * mask / (1 - p)",
        "Inverted dropout scales the kept entries by 1/(1 - p) in the forward pass; the same factor "
        "multiplies their gradient.",
        where=_DROP, specs=_stacks("dropout", training=True), rewire=_twins(Dropout, _DropoutNotRescaled),
    ),
    Bug(
        "embedding_assigned", "embedding gradient assigned, not accumulated", "Embedding",
        "dJ_dE[idx] = dJ_dy", "dJ_dE.index_add_(0, idx, dJ_dy)",
        "A token that appears at several positions takes a gradient from each; indexed assignment keeps "
        "only one of them. Right only when no index repeats.",
        where="an Embedding, some index repeated", specs=_stacks("embedding"),
        rewire=_twins(Embedding, _EmbeddingAssigned),
    ),
    Bug(
        "residual_forgets_skip", "residual backward without the skip connection's gradient", "Residual",
        "dJ_dx = dJ_dx_through_F", "dJ_dx = dJ_dy + dJ_dx_through_F",
        "x reaches y = x + F(x) by two paths, and its gradient is the sum of both; the skip path "
        "contributes dJ/dy itself.",
        where="a Residual", specs=_stacks("residual"), rewire=_twins(Residual, _ResidualNoSkip),
    ),
    # ---- equivalent variants: the same numbers by another route --------------------------------
    Bug(
        "layernorm_multiplied_out", "LayerNorm backward multiplied out", "LayerNorm",
        "dJ_dx = rstd / d * (d * dJ_dxhat - dJ_dxhat.sum() - xhat * (dJ_dxhat * xhat).sum())",
        "dJ_dx = rstd * (dJ_dxhat - mean(dJ_dxhat) - xhat * mean(dJ_dxhat * xhat))",
        "The same expression with 1/d taken out of the means: the same numbers up to round-off.",
        where=_ROWS, specs=_stacks("layernorm"), rewire=_twins(LayerNorm, _NormAlternativeForm), equivalent=True,
    ),
    Bug(
        "batchnorm_long_form", "BatchNorm backward through dJ/dvar and dJ/dmu", "BatchNorm1d",
        "dJ_dvar = ...; dJ_dmu = ...; dJ_dx = dJ_dxhat * rstd + dJ_dvar * 2 (x - mu) / N + dJ_dmu / N",
        "dJ_dx = rstd * (dJ_dxhat - mean_n(dJ_dxhat) - xhat * mean_n(dJ_dxhat * xhat))",
        "The step-by-step chain rule through the variance and the mean (as course notes derive it) "
        "simplifies to the short form: the same numbers up to round-off.",
        where=_BATCH, specs=_stacks("batchnorm", training=True),
        rewire=_twins(BatchNorm1d, _BatchNormLongForm), equivalent=True,
    ),
    Bug(
        "embedding_one_hot", "embedding gradient as onehot(idx)^T dJ/dy", "Embedding",
        "dJ_dE = one_hot(idx).T @ dJ_dy", "dJ_dE.index_add_(0, idx, dJ_dy)",
        "The one-hot matrix product sums the rows of each token, which is what index_add_ does.",
        where="an Embedding", specs=_stacks("embedding"), rewire=_twins(Embedding, _EmbeddingOneHot), equivalent=True,
    ),
)  # fmt: skip
"""The layer entries of the catalogue: classic bugs first, then equivalent variants."""
