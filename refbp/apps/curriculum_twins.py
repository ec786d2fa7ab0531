"""The wrong lines of the curriculum's layers, as twins of the right ones (refbp.apps.bug_record).

Each class is a subclass of a refbp layer whose backward has the one wrong line people write
(or, for an equivalent twin, the same gradient by another route); it shares the right layer's
parameters and state when swapped in. The entries that use them are in
refbp.apps.curriculum_bugs.

    Conv2d       dJ/dW from the unpadded input; stride ignored in dJ/dx; the kernel not flipped
                 in the transposed convolution; output channels grouped the wrong way
                 (equivalent: dJ/dx by fold, col2im, instead of a transposed convolution)
    MaxPool2d    dJ/dx[argmax] = dJ/dy (assigned); every tied maximum credited
                 (equivalent: the first maximum one-hot, folded back)
    AvgPool2d    the other count_include_pad's divisor
    BatchNorm2d  the backward's means over N only; GroupNorm's over channels grouped the wrong way
    Softmax      the Jacobian's diagonal only (equivalent: the whole Jacobian, materialised)
    RNN/LSTM/GRU BPTT without dJ/dh from step t + 1; the LSTM without the cell-state path
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..nn.conv import Conv2d, transposed_output_padding
from ..nn.gru import GRULayer
from ..nn.layer import BackwardContext, LayerGradients
from ..nn.layernorm import NormCache
from ..nn.lstm import LSTMLayer
from ..nn.norm2d import BatchNorm2d, GroupNorm
from ..nn.pool import AvgPool2d, MaxPool2d, PoolCache
from ..nn.rnn import RNNLayer
from ..nn.softmax import Softmax

__all__ = [
    "AvgPoolOtherDivisor",
    "BatchNorm2dOverNOnly",
    "ConvDWFromUnpaddedInput",
    "ConvDXByFold",
    "ConvGroupsMixed",
    "ConvKernelNotFlipped",
    "ConvStrideIgnoredInDX",
    "GRUDropsNextStep",
    "GroupNormChannelsInterleaved",
    "LSTMDropsNextStep",
    "LSTMWithoutCellPath",
    "MaxPoolAssigned",
    "MaxPoolByFold",
    "MaxPoolTiesBothCredited",
    "RNNDropsNextStep",
    "SoftmaxDiagonalOnly",
    "SoftmaxFullJacobian",
]


# ---- Conv2d ------------------------------------------------------------------------------------
def _conv_dJ_dW(conv: Conv2d, padded: Tensor, dJ_dz: Tensor) -> Tensor:
    """(2) of refbp.nn.conv: dJ/dW[o, c, u, v] = sum_{n,i,j} dJ/dz[n, o, i, j] padded[n, c, i s + u d, j s + v d]
    within each group, from the input as given in ``padded``   (C_out, C_in/G, k_h, k_w)."""
    N, G = padded.shape[0], conv.groups
    C_out, C_g, kh, kw = conv.W.shape
    (sh, sw), (dh, dw) = conv.stride, conv.dilation
    H_out, W_out = dJ_dz.shape[2:]
    L = H_out * W_out
    dz = dJ_dz.reshape(N, G, C_out // G, L).permute(1, 2, 0, 3).reshape(G, C_out // G, N * L)  # (G, C_out/G, N L)
    dJ_dW = torch.empty(conv.W.shape, dtype=dJ_dz.dtype, device=dJ_dz.device)
    for u in range(kh):
        for v in range(kw):
            x_uv = padded[
                :, :, u * dh : u * dh + sh * (H_out - 1) + 1 : sh, v * dw : v * dw + sw * (W_out - 1) + 1 : sw
            ]
            x_uv = x_uv.reshape(N, G, C_g, L).permute(1, 0, 3, 2).reshape(G, N * L, C_g)  # (G, N L, C_in/G)
            dJ_dW[:, :, u, v] = torch.bmm(dz, x_uv).reshape(C_out, C_g)
    return dJ_dW


def _with_weight_decay(conv: Conv2d, dJ_dW: Tensor, ctx: BackwardContext) -> Tensor:
    return dJ_dW.add_(conv.W, alpha=ctx.weight_decay) if ctx.weight_decay else dJ_dW  # + lambda W


def _padded(conv: Conv2d, x: Tensor) -> Tensor:
    (ph0, ph1), (pw0, pw1) = conv.pads()
    return F.pad(x, (pw0, pw1, ph0, ph1))  # (N, C_in, H + p_h, W + p_w)


def _cut(conv: Conv2d, full: Tensor, x: Tensor) -> Tensor:
    """dJ/dx_pad (N, C_in, Hp, Wp) without the padding: (N, C_in, H, W)."""
    (ph0, _), (pw0, _) = conv.pads()
    return full[:, :, ph0 : ph0 + x.shape[2], pw0 : pw0 + x.shape[3]]


class ConvDWFromUnpaddedInput(Conv2d):
    def backward(self, dJ_dz: Tensor, x: Tensor, out: Tensor, cache: Any, ctx: BackwardContext) -> LayerGradients:
        right = super().backward(dJ_dz, x, out, cache, ctx)
        unshifted = F.pad(x, (0, sum(self.pads()[1]), 0, sum(self.pads()[0])))  # wrong: x where x_pad belongs
        right.params["W"] = _with_weight_decay(self, _conv_dJ_dW(self, unshifted, dJ_dz), ctx)
        return right


class ConvGroupsMixed(Conv2d):
    def backward(self, dJ_dz: Tensor, x: Tensor, out: Tensor, cache: Any, ctx: BackwardContext) -> LayerGradients:
        right = super().backward(dJ_dz, x, out, cache, ctx)
        N, C_out, H_out, W_out = dJ_dz.shape
        G = self.groups  # wrong: output channel o taken as group o % G, not o // (C_out / G)
        mixed = dJ_dz.reshape(N, C_out // G, G, H_out, W_out).transpose(1, 2).reshape(dJ_dz.shape)
        right.params["W"] = _with_weight_decay(self, _conv_dJ_dW(self, _padded(self, x), mixed), ctx)
        return right


class ConvStrideIgnoredInDX(Conv2d):
    def backward(self, dJ_dz: Tensor, x: Tensor, out: Tensor, cache: Any, ctx: BackwardContext) -> LayerGradients:
        right = super().backward(dJ_dz, x, out, cache, ctx)
        if right.dJ_dx is None:
            return right
        spread = F.conv_transpose2d(dJ_dz, self.W, None, 1, 0, 0, self.groups, self.dilation)  # wrong: stride 1
        full = torch.zeros_like(_padded(self, x))  # (N, C_in, Hp, Wp)
        full[:, :, : spread.shape[2], : spread.shape[3]] = spread  # as if the windows were s = 1 apart
        right.dJ_dx = _cut(self, full, x)
        return right


def _transposed(conv: Conv2d, dJ_dz: Tensor, x: Tensor, kernel: Tensor) -> Tensor:
    """(3) of refbp.nn.conv with ``kernel`` in W's place: conv_transpose(dJ/dz, kernel), the padding cut."""
    Hp, Wp = (n + sum(p) for n, p in zip(x.shape[2:], conv.pads(), strict=True))
    (kh, kw), (sh, sw), (dh, dw) = conv.kernel_size, conv.stride, conv.dilation
    H_out, W_out = dJ_dz.shape[2:]
    extra = (transposed_output_padding(Hp, H_out, kh, sh, dh), transposed_output_padding(Wp, W_out, kw, sw, dw))
    full = F.conv_transpose2d(dJ_dz, kernel, None, conv.stride, 0, extra, conv.groups, conv.dilation)
    return _cut(conv, full, x)  # (N, C_in, H, W)


class ConvKernelNotFlipped(Conv2d):
    def backward(self, dJ_dz: Tensor, x: Tensor, out: Tensor, cache: Any, ctx: BackwardContext) -> LayerGradients:
        right = super().backward(dJ_dz, x, out, cache, ctx)
        if right.dJ_dx is not None:  # conv_transpose flips the kernel itself: flipping it first undoes that
            right.dJ_dx = _transposed(self, dJ_dz, x, self.W.flip(2, 3))  # wrong: a correlation with W unflipped
        return right


class ConvDXByFold(Conv2d):
    """Equivalent: dJ/dx = fold(W_g^T dJ/dz_g), col2im of each window's share, as (3) says."""

    def backward(self, dJ_dz: Tensor, x: Tensor, out: Tensor, cache: Any, ctx: BackwardContext) -> LayerGradients:
        right = super().backward(dJ_dz, x, out, cache, ctx)
        if right.dJ_dx is None:
            return right
        N, G = x.shape[0], self.groups
        C_out, C_g, kh, kw = self.W.shape
        L = dJ_dz.shape[2] * dJ_dz.shape[3]
        W_g = self.W.reshape(G, C_out // G, C_g * kh * kw)  # (G, C_out/G, C_in/G k_h k_w)
        dz = dJ_dz.reshape(N, G, C_out // G, L)  # (N, G, C_out/G, L)
        cols = torch.einsum("gok,ngol->ngkl", W_g, dz).reshape(N, G * C_g * kh * kw, L)  # W_g^T dJ/dz_g
        size = tuple(n + sum(p) for n, p in zip(x.shape[2:], self.pads(), strict=True))
        full = F.fold(cols, size, (kh, kw), dilation=self.dilation, stride=self.stride)  # (N, C_in, Hp, Wp)
        right.dJ_dx = _cut(self, full, x)
        return right


# ---- pooling -----------------------------------------------------------------------------------
def _fold_windows(pool: MaxPool2d, share: Tensor, x: Tensor) -> Tensor:
    """Every window's share (N, C, k_h k_w, L) added back where its entries are, the padding cut."""
    N, C, H, W = x.shape
    ph, pw = pool.padding
    full = F.fold(share.reshape(N, C * share.shape[2], -1), (H + 2 * ph, W + 2 * pw), pool.kernel_size,
                  dilation=pool.dilation, stride=pool.stride)  # fmt: skip
    return full[:, :, ph : ph + H, pw : pw + W]  # (N, C, H, W)


class MaxPoolAssigned(MaxPool2d):
    def backward(self, dJ_dy: Tensor, x: Tensor, out: Tensor, cache: PoolCache, ctx: BackwardContext) -> LayerGradients:
        if not ctx.need_dx:
            return LayerGradients(None)
        N, C, H, W = x.shape
        dJ_dx = torch.zeros(N, C, H * W, dtype=dJ_dy.dtype, device=dJ_dy.device)
        dJ_dx.scatter_(2, cache.index, dJ_dy.reshape(N, C, -1))  # wrong: =, an entry two windows share keeps one's
        return LayerGradients(dJ_dx.view(N, C, H, W))


class MaxPoolTiesBothCredited(MaxPool2d):
    def backward(self, dJ_dy: Tensor, x: Tensor, out: Tensor, cache: PoolCache, ctx: BackwardContext) -> LayerGradients:
        if not ctx.need_dx:
            return LayerGradients(None)
        N, C = x.shape[:2]
        cols = self._windows(x)  # (N, C, k_h k_w, L), -inf in the padding
        tied = cols == out.reshape(N, C, 1, -1)  # wrong: every maximal entry of a window, not the first
        return LayerGradients(_fold_windows(self, tied.to(dJ_dy.dtype) * dJ_dy.reshape(N, C, 1, -1), x))


class MaxPoolByFold(MaxPool2d):
    """Equivalent: dJ/dx = fold(onehot(first argmax) o dJ/dy), col2im adding up the windows."""

    def backward(self, dJ_dy: Tensor, x: Tensor, out: Tensor, cache: PoolCache, ctx: BackwardContext) -> LayerGradients:
        if not ctx.need_dx:
            return LayerGradients(None)
        N, C = x.shape[:2]
        kk = self.kernel_size[0] * self.kernel_size[1]
        argmax = self.window_argmax(cache, x.shape)  # (N, C, L): which entry of each window is its maximum
        first = F.one_hot(argmax, kk).permute(0, 1, 3, 2).to(dJ_dy.dtype)  # (N, C, k_h k_w, L)
        return LayerGradients(_fold_windows(self, first * dJ_dy.reshape(N, C, 1, -1), x))


class AvgPoolOtherDivisor(AvgPool2d):
    def backward(self, dJ_dy: Tensor, x: Tensor, out: Tensor, cache: None, ctx: BackwardContext) -> LayerGradients:
        other = copy.copy(self)
        other.count_include_pad = not self.count_include_pad  # wrong: the other setting's D
        return AvgPool2d.backward(other, dJ_dy, x, out, cache, ctx)


# ---- spatial normalisations --------------------------------------------------------------------
class BatchNorm2dOverNOnly(BatchNorm2d):
    def backward(self, dJ_dy: Tensor, x: Tensor, out: Tensor, cache: NormCache, ctx: BackwardContext) -> LayerGradients:
        right = super().backward(dJ_dy, x, out, cache, ctx)
        if not self.uses_batch_statistics or right.dJ_dx is None:
            return right
        gamma = self.params.get("gamma")
        g = (dJ_dy * gamma.view(1, -1, 1, 1) if gamma is not None else dJ_dy).to(cache.xhat.dtype)
        xhat, rstd = cache.xhat, cache.rstd.reshape(1, -1, 1, 1)
        # wrong: the means over the batch only (dim 0), each position on its own, not over N, H and W
        dJ_dx = rstd * (g - g.mean(dim=0, keepdim=True) - xhat * (g * xhat).mean(dim=0, keepdim=True))
        right.dJ_dx = dJ_dx.to(dJ_dy.dtype)
        return right


class GroupNormChannelsInterleaved(GroupNorm):
    def backward(self, dJ_dy: Tensor, x: Tensor, out: Tensor, cache: NormCache, ctx: BackwardContext) -> LayerGradients:
        right = super().backward(dJ_dy, x, out, cache, ctx)
        if right.dJ_dx is None:
            return right
        N, C, G = x.shape[0], self.C, self.G
        gamma = self.params.get("gamma")
        g = (dJ_dy * gamma.view(1, -1, *[1] * (x.dim() - 2)) if gamma is not None else dJ_dy).to(cache.xhat.dtype)
        xhat = cache.xhat
        rstd = cache.rstd.view(N, G, 1).repeat_interleave(C // G, dim=1).view(N, C, *[1] * (x.dim() - 2))

        def group_mean(t: Tensor) -> Tensor:  # wrong: x.view(N, C // G, G, ...), channels c and c + G together
            grouped = t.reshape(N, C // G, G, -1)
            return grouped.mean(dim=(1, 3), keepdim=True).expand_as(grouped).reshape(t.shape)

        right.dJ_dx = (rstd * (g - group_mean(g) - xhat * group_mean(g * xhat))).to(dJ_dy.dtype)
        return right


# ---- softmax -----------------------------------------------------------------------------------
class SoftmaxDiagonalOnly(Softmax):
    def backward(self, dJ_ds: Tensor, x: Tensor, out: Tensor, cache: Any, ctx: BackwardContext) -> LayerGradients:
        if not ctx.need_dx:
            return LayerGradients(None)
        return LayerGradients(dJ_ds * out * (1.0 - out))  # wrong: diag(s (1 - s)) only, without - s s^T


class SoftmaxFullJacobian(Softmax):
    """Equivalent: J_s = diag(s) - s s^T built for every slice, and dJ/dx = J_s dJ/ds (J_s symmetric)."""

    def backward(self, dJ_ds: Tensor, x: Tensor, out: Tensor, cache: Any, ctx: BackwardContext) -> LayerGradients:
        if not ctx.need_dx:
            return LayerGradients(None)
        s, g = out.movedim(self.dim, -1), dJ_ds.movedim(self.dim, -1)  # (..., K)
        J = torch.diag_embed(s) - s.unsqueeze(-1) * s.unsqueeze(-2)  # (..., K, K)
        return LayerGradients((J @ g.unsqueeze(-1)).squeeze(-1).movedim(-1, self.dim))


# ---- recurrent layers --------------------------------------------------------------------------
class RNNDropsNextStep(RNNLayer):
    def total_dJ_dh(self, dJ_dout_t: Tensor, from_next: Tensor) -> Tensor:
        return dJ_dout_t.clone()  # wrong: dJ/dh_t = dJ/dout_t, what step t + 1 hands back dropped


class LSTMDropsNextStep(LSTMLayer):
    def total_dJ_dh(self, dJ_dout_t: Tensor, from_next: Tensor) -> Tensor:
        return dJ_dout_t.clone()  # wrong: as RNNDropsNextStep


class GRUDropsNextStep(GRULayer):
    def total_dJ_dh(self, dJ_dout_t: Tensor, from_next: Tensor) -> Tensor:
        return dJ_dout_t.clone()  # wrong: as RNNDropsNextStep


class LSTMWithoutCellPath(LSTMLayer):
    def total_dJ_dc(self, through_h: Tensor, from_next: Tensor) -> Tensor:
        return through_h  # wrong: dJ/dc_t through h_t only, dJ/dc_(t+1) o f_(t+1) dropped
