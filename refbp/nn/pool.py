"""Pooling on (N, C, H, W): MaxPool2d, AvgPool2d and AdaptiveAvgPool2d, backward by hand.

Each output entry summarises one window of its channel (k_h x k_w entries, every s-th
position, the input padded by p; MaxPool2d's windows may be dilated by d):

    MaxPool2d   y[n, c, i, j] = max over the window of x_pad      (padding: -inf, never the max)
                dJ/dx[argmax of window (i, j)] += dJ/dy[n, c, i, j]
    AvgPool2d   y[n, c, i, j] = 1/D sum over the window of x_pad  (zero padding)
                dJ/dx[every entry of window (i, j)] += dJ/dy[n, c, i, j] / D
                D = k_h k_w (count_include_pad), or the number of the window's entries inside x;
                separable: y = A_h x A_w^T, dJ/dx = A_h^T dJ/dy A_w, row i of A_h 1/D_h(i) on
                the rows window i covers (D = D_h(i) D_w(j) for either D)
    AdaptiveAvgPool2d(h_o, w_o): window i of a dimension of size n is [floor(i n / h_o), ceil((i + 1) n / h_o)),
                y = A_h x A_w^T,  dJ/dx = A_h^T dJ/dy A_w,  A the (h_o, n) matrices of 1 / (window length)

Windows overlap when the stride is smaller than the kernel: an input entry in two windows
gets both windows' gradients, so the backward *adds* (scatter_add_; the sums of the matrix
products); assigning keeps only one of them. MaxPool2d credits the first maximal entry of a
window in its scan order (row by row, left to right) when several are equal, as torch does:
only that entry gets the gradient.
At such a tie the maximum has no derivative (it is a kink, as relu's 0 is); finite differences
see it move to another entry and are excluded there (``pieces``).

Outputs are floor((H + 2p - d (k - 1) - 1) / s) + 1 rows (ceil_mode=False, torch's default).

Second order (refbp.nn.second_order): each pooling is linear in x (MaxPool2d once the argmax
of each window is fixed, which it is on each piece), so R{.} = d/dr (.)(x + r R{x}) is the same
map applied to the direction, and the R-backward is the same backward applied to R{dJ/dy}:

    MaxPool2d   R{y} = R{x_pad} at the argmax of each window   R{dJ/dx}[argmax] += R{dJ/dy}
    AvgPool2d   R{y} = avg_pool(R{x})                          R{dJ/dx} = fold(R{dJ/dy} / D)
    Adaptive    R{y} = A_h R{x} A_w^T                          R{dJ/dx} = A_h^T R{dJ/dy} A_w

No term carries dJ/dy (the second derivative is 0 on each piece), so H v and G v share the
rules. At a tie of max-pool the argmax is torch's (the first maximum), as in the backward.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .chunks import CHUNK_BYTES, chunks
from .conv import as_tuple
from .keys import Key
from .layer import BackwardContext, ForwardContext, Layer, LayerGradients, LayerTangent, Params, SecondContext, Tap
from .pieces import Pieces
from .registry import register
from .validation import describe

__all__ = ["AdaptiveAvgPool2d", "AvgPool2d", "MaxPool2d", "PoolCache", "adaptive_windows"]


@dataclass
class PoolCache:
    """What MaxPool2d's backward needs.

    Attributes:
        index: (N, C, H_out W_out) int64: where each window's first maximum (in scan order) sits
            in its channel of x, r W + c for row r and column c (``MaxPool2d.window_argmax``
            says which entry of the window that is).
        ties: (N, C, H_out, W_out) bool, True where a window's maximum is attained more than
            once (a kink), or None when the forward pass kept no intermediates.
    """

    index: Tensor
    ties: Tensor | None


class _Pool(Layer):
    """Kernel, stride and padding of a 2-d pooling window, and the checks they need."""

    def __init__(
        self,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] | None = None,
        padding: int | Sequence[int] = 0,
        dilation: int | Sequence[int] = 1,
    ) -> None:
        self.kernel_size = as_tuple(kernel_size, 2, "kernel_size", minimum=1)
        self.stride = self.kernel_size if stride is None else as_tuple(stride, 2, "stride", minimum=1)
        self.padding = as_tuple(padding, 2, "padding", minimum=0)
        self.dilation = as_tuple(dilation, 2, "dilation", minimum=1)
        if any(p > k // 2 for p, k in zip(self.padding, self.kernel_size, strict=True)):
            raise ValueError(
                f"{self.title}: padding={self.padding} must be at most half the kernel {self.kernel_size} (as torch)"
            )
        self.params = {}
        self.training = True

    def out_size(self, H: int, W: int) -> tuple[int, int]:
        """floor((n + 2p - d (k - 1) - 1) / s) + 1 per dimension (ceil_mode=False)."""
        geometry = zip((H, W), self.padding, self.kernel_size, self.stride, self.dilation, strict=True)
        h, w = ((n + 2 * p - d * (k - 1) - 1) // s + 1 for n, p, k, s, d in geometry)
        return h, w

    def describe(self) -> str:
        dilated = f", dilation {self.dilation}" if self.dilation != (1, 1) else ""
        return f"{self.title}(kernel {self.kernel_size}, stride {self.stride}, padding {self.padding}{dilated})"

    def check_input(self, x: Tensor, path: tuple[int, ...]) -> None:
        where = ".".join(map(str, path))
        if x.dim() != 4:
            raise ValueError(f"layer {where} ({self.describe()}) needs input (N, C, H, W), got {describe(x)}")
        if min(self.out_size(x.shape[2], x.shape[3])) < 1:
            raise ValueError(f"layer {where} ({self.describe()}): input {describe(x)} is smaller than one window")
        if not self._every_window_reaches_the_input(x.shape[2], x.shape[3]):
            raise ValueError(
                f"layer {where} ({self.describe()}): with input {describe(x)} some window lies entirely in the "
                "padding (its maximum would be -inf); expected less padding or a smaller dilation"
            )

    def _every_window_reaches_the_input(self, H: int, W: int) -> bool:
        """Whether each window holds at least one entry of x, not only padding."""
        sizes = ((H, W), self.out_size(H, W), self.padding, self.kernel_size, self.stride, self.dilation)
        geometry = zip(*sizes, strict=True)
        return all(
            any(0 <= i * s + u * d - p < n for u in range(k)) for n, out, p, k, s, d in geometry for i in range(out)
        )


class MaxPool2d(_Pool):
    """torch.nn.MaxPool2d(kernel_size, stride, padding, dilation), ceil_mode=False."""

    title = "MaxPool2d"

    def equations(self) -> tuple[str, str]:
        return (
            "y = max over each window of x (padding -inf)",
            "dJ/dx[first argmax of each window] += dJ/dy (windows that overlap add up)",
        )

    def _windows(self, x: Tensor) -> Tensor:
        """Every window of the input padded with -inf (never the maximum) as a column:
        (N, C, k_h k_w, H_out W_out)."""
        ph, pw = self.padding
        padded = F.pad(x, (pw, pw, ph, ph), value=-math.inf) if ph or pw else x
        cols = F.unfold(padded, self.kernel_size, dilation=self.dilation, stride=self.stride)  # (N, C k_h k_w, L)
        return cols.view(x.shape[0], x.shape[1], self.kernel_size[0] * self.kernel_size[1], -1)

    def forward(self, x: Tensor, ctx: ForwardContext, path: tuple[int, ...]) -> tuple[Tensor, PoolCache]:
        self.check_input(x, path)
        N, C, H_out, W_out = (*x.shape[:2], *self.out_size(x.shape[2], x.shape[3]))
        # y = the max of each window, and where in x it sits (r W + c): torch's forward kernel,
        # which keeps a window's first maximum in scan order and builds no window
        y, index = F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation, return_indices=True)
        ties = None
        if ctx.keep_intermediates:  # windows whose maximum is attained twice: the kinks
            cols = self._windows(x)  # (N, C, k_h k_w, L)
            ties = (cols == y.view(N, C, 1, -1)).sum(dim=2).gt(1).view(N, C, H_out, W_out)
        return y, PoolCache(index.view(N, C, H_out * W_out), ties)  # y: (N, C, H_out, W_out)

    def backward(self, dJ_dy: Tensor, x: Tensor, out: Tensor, cache: PoolCache, ctx: BackwardContext) -> LayerGradients:
        if not ctx.need_dx:
            return LayerGradients(None)
        N, C, H, W = x.shape
        # dJ/dx[argmax] += dJ/dy: windows that share their maximum add up, never overwrite
        dJ_dx = torch.zeros(N, C, H * W, dtype=dJ_dy.dtype, device=dJ_dy.device)
        dJ_dx.scatter_add_(2, cache.index, dJ_dy.reshape(N, C, -1))  # (N, C, H W)
        return LayerGradients(dJ_dx.view(N, C, H, W))

    @property
    def backward_reads_output(self) -> bool:
        return False  # the cache's index and x's shape only

    def window_argmax(self, cache: PoolCache, x_shape: Sequence[int]) -> Tensor:
        """(N, C, H_out W_out) int64: which entry of its window (0 .. k_h k_w - 1, row by row)
        each window's maximum is. Window (i, j) reads x_pad row i s_h + u d_h, column j s_w + v d_w,
        so the maximum at x's row r, column c is u = (r + p_h - i s_h) / d_h, v likewise."""
        N, C, H, W = x_shape
        H_out, W_out = self.out_size(H, W)
        (ph, pw), (sh, sw), (dh, dw) = self.padding, self.stride, self.dilation
        index = cache.index.view(N, C, H_out, W_out)
        i = torch.arange(H_out, device=index.device).view(H_out, 1)
        j = torch.arange(W_out, device=index.device)
        u = (index.div(W, rounding_mode="floor") + (ph - sh * i)).div_(dh, rounding_mode="floor")
        v = (index.remainder(W) + (pw - sw * j)).div_(dw, rounding_mode="floor")
        return u.mul_(self.kernel_size[1]).add_(v).view(N, C, H_out * W_out)

    # ---- second order: linear in x with the argmax fixed -------------------------------------
    def tangent(
        self, x: Tensor, Rx: Tensor | None, out: Tensor, cache: PoolCache, V: Params, path: tuple[int, ...]
    ) -> LayerTangent:
        assert Rx is not None
        Ry = Rx.flatten(2).gather(2, cache.index)  # R{y} = R{x} at each window's argmax   (N, C, L)
        return LayerTangent(Ry.view(out.shape))  # (N, C, H_out, W_out)

    def r_backward(
        self, g: Tensor, Rg: Tensor, x: Tensor, Rx: Tensor | None, out: Tensor, t: LayerTangent, cache: PoolCache,
        V: Params, ctx: SecondContext,
    ) -> tuple[Tensor | None, LayerGradients]:  # fmt: skip
        return self.fixed_map_r_backward(g, Rg, x, out, cache, ctx)  # R{dJ/dx}[argmax] += R{dJ/dy}: the same routing

    def kinks(self, cache: Any, path: tuple[int, ...]) -> dict[Key, Tensor]:
        """The outputs a(l) whose window holds its maximum twice (the tie rule decides there)."""
        if not isinstance(cache, PoolCache) or cache.ties is None:
            return {}
        return {Key("a", path): cache.ties}

    @property
    def pieces(self) -> Pieces:
        """The pieces of the max are which entry of each window is the (first) maximum: a
        perturbation that moves the maximum to another entry crosses a kink."""
        return Pieces((), "two entries of a pooling window equal (the maximum moves)", region=self._argmax)

    def _argmax(self, x: Tensor) -> Tensor:
        return self._windows(x).argmax(dim=2)  # (N, C, L): the piece of the max each window is in

    def torch_forward(
        self, x: Tensor, p: Params, noise: Mapping[tuple[int, ...], Tensor], tap: Tap, path: tuple[int, ...]
    ) -> Tensor:
        tap.piecewise(x, self.pieces)
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation)

    def to_torch(self) -> torch.nn.Module:
        return torch.nn.MaxPool2d(self.kernel_size, self.stride, self.padding, self.dilation)


class AvgPool2d(_Pool):
    """torch.nn.AvgPool2d(kernel_size, stride, padding, count_include_pad), ceil_mode=False.

    With ``count_include_pad=False`` a window that overlaps the padding divides by the number
    of its entries inside the input instead of k_h k_w."""

    title = "AvgPool2d"

    def __init__(
        self,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] | None = None,
        padding: int | Sequence[int] = 0,
        *,
        count_include_pad: bool = True,
    ) -> None:
        super().__init__(kernel_size, stride, padding)
        self.count_include_pad = bool(count_include_pad)

    def describe(self) -> str:
        counted = "" if self.count_include_pad else ", count_include_pad=False"
        return super().describe()[:-1] + counted + ")"

    def equations(self) -> tuple[str, str]:
        D = "k_h k_w" if self.count_include_pad else "the window's entries inside x"
        return (
            f"y = 1/D sum over each window of x (zero padding), D = {D}",
            "dJ/dx = fold(dJ/dy / D) = conv_transpose(dJ/dy / D, ones)",
        )

    def matrices(self, H: int, W: int, like: Tensor) -> tuple[Tensor, Tensor]:
        """(A_h (H_out, H), A_w (W_out, W)) with y = A_h x A_w^T: the pooling is separable. Row i
        of A_h holds 1 / D_h(i) on the rows of x that window i covers, D_h(i) = k_h, or
        (count_include_pad=False) how many of them lie inside x; D = D_h(i) D_w(j) either way."""
        H_out, W_out = self.out_size(H, W)
        geometry = zip((H, W), (H_out, W_out), self.kernel_size, self.stride, self.padding, strict=True)
        A_h, A_w = (self._windows_of(n, out, k, s, p, like) for n, out, k, s, p in geometry)
        return A_h, A_w

    def _windows_of(self, n: int, out: int, k: int, s: int, p: int, like: Tensor) -> Tensor:
        """A (out, n) of one dimension: window i covers rows [i s - p, i s - p + k) of the padded
        input, those inside [0, n) of x itself, each weighted 1 / D_i."""
        spans = [(max(0, i * s - p), min(n, i * s - p + k)) for i in range(out)]
        return window_matrix(n, [(a, b, 1.0 / (k if self.count_include_pad else b - a)) for a, b in spans], like)

    def forward(self, x: Tensor, ctx: ForwardContext, path: tuple[int, ...]) -> tuple[Tensor, None]:
        self.check_input(x, path)
        y = F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, False, self.count_include_pad)
        return y, None  # (N, C, H_out, W_out); the backward needs only the shapes

    def backward(self, dJ_dy: Tensor, x: Tensor, out: Tensor, cache: None, ctx: BackwardContext) -> LayerGradients:
        if not ctx.need_dx:
            return LayerGradients(None)
        A_h, A_w = self.matrices(x.shape[2], x.shape[3], dJ_dy)  # (H_out, H), (W_out, W)
        # every entry of a window gets dJ/dy / D, windows that overlap adding up: y = A_h x A_w^T, so
        return LayerGradients(separable_adjoint(A_h, A_w, dJ_dy))  # dJ/dx = A_h^T dJ/dy A_w   (N, C, H, W)

    # ---- second order: a linear map of x ----------------------------------------------------------
    def tangent(
        self, x: Tensor, Rx: Tensor | None, out: Tensor, cache: None, V: Params, path: tuple[int, ...]
    ) -> LayerTangent:
        assert Rx is not None
        Ry = F.avg_pool2d(Rx, self.kernel_size, self.stride, self.padding, False, self.count_include_pad)
        return LayerTangent(Ry)  # R{y} = 1/D sum over each window of R{x}   (N, C, H_out, W_out)

    def r_backward(
        self, g: Tensor, Rg: Tensor, x: Tensor, Rx: Tensor | None, out: Tensor, t: LayerTangent, cache: None,
        V: Params, ctx: SecondContext,
    ) -> tuple[Tensor | None, LayerGradients]:  # fmt: skip
        return self.fixed_map_r_backward(g, Rg, x, out, cache, ctx)  # R{dJ/dx} = fold(R{dJ/dy} / D)

    def torch_forward(
        self, x: Tensor, p: Params, noise: Mapping[tuple[int, ...], Tensor], tap: Tap, path: tuple[int, ...]
    ) -> Tensor:
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, False, self.count_include_pad)

    def to_torch(self) -> torch.nn.Module:
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        return torch.nn.AvgPool2d((kh, kw), (sh, sw), (ph, pw), count_include_pad=self.count_include_pad)


def separable_adjoint(A_h: Tensor, A_w: Tensor, g: Tensor) -> Tensor:
    """A_h^T g A_w   (N, C, H, W) for g (N, C, h_o, w_o), A_h (h_o, H), A_w (w_o, W): the adjoint of
    y = A_h x A_w^T, a few images at a time so that its temporaries stay small (refbp.nn.chunks):
    256 KiB of them, a quarter of the usual chunk, which keeps the step within autograd's peak
    at item 6's sizes (benchmarks/) and costs no time there (small products, one per chunk)."""
    N, C = g.shape[:2]
    (h_o, H), W = A_h.shape, A_w.shape[1]
    out = torch.empty(N, C, H, W, dtype=g.dtype, device=g.device)
    for part in chunks(N, C * (h_o * W + H * h_o) * g.element_size(), budget=CHUNK_BYTES // 4, device=g.device):
        torch.matmul(A_h.T, g[part] @ A_w, out=out[part])  # A_h^T (g A_w)   (n, C, H, W)
    return out


def window_matrix(n: int, windows: Sequence[tuple[int, int, float]], like: Tensor) -> Tensor:
    """A (len(windows), n) of one dimension: row i holds weight w_i on the entries [start_i, end_i)
    of window i, (start_i, end_i, w_i) = windows[i]; zeros elsewhere."""
    A = torch.zeros(len(windows), n, dtype=like.dtype, device=like.device)
    for i, (start, end, weight) in enumerate(windows):
        A[i, start:end] = weight
    return A


def adaptive_windows(n: int, out: int, like: Tensor) -> Tensor:
    """A (out, n): row i averages torch's window [floor(i n / out), ceil((i + 1) n / out))."""
    spans = [((i * n) // out, -((-(i + 1) * n) // out)) for i in range(out)]  # floor and ceil in integers
    return window_matrix(n, [(a, b, 1.0 / (b - a)) for a, b in spans], like)


class AdaptiveAvgPool2d(Layer):
    """torch.nn.AdaptiveAvgPool2d(output_size): any (h_o, w_o); None keeps that input size."""

    title = "AdaptiveAvgPool2d"

    def __init__(self, output_size: int | Sequence[int | None] | None) -> None:
        sizes = list(output_size) if isinstance(output_size, Sequence) else [output_size, output_size]
        if len(sizes) != 2 or not all(s is None or (isinstance(s, int) and s >= 1) for s in sizes):
            raise ValueError(f"AdaptiveAvgPool2d: output_size={output_size!r}; expected an int >= 1, None, or two")
        self.output_size: tuple[int | None, int | None] = (sizes[0], sizes[1])
        self.params = {}
        self.training = True

    def describe(self) -> str:
        return f"AdaptiveAvgPool2d({self.output_size})"

    def equations(self) -> tuple[str, str]:
        return ("y = A_h x A_w^T  (A: 1/window length on each window)", "dJ/dx = A_h^T dJ/dy A_w")

    def check_input(self, x: Tensor, path: tuple[int, ...]) -> None:
        if x.dim() != 4:
            where = ".".join(map(str, path))
            raise ValueError(f"layer {where} ({self.describe()}) needs input (N, C, H, W), got {describe(x)}")

    def _matrices(self, x: Tensor) -> tuple[Tensor, Tensor]:
        H, W = x.shape[2:]
        h_o, w_o = (n if o is None else o for o, n in zip(self.output_size, (H, W), strict=True))
        return adaptive_windows(H, h_o, x), adaptive_windows(W, w_o, x)  # (h_o, H), (w_o, W)

    def forward(self, x: Tensor, ctx: ForwardContext, path: tuple[int, ...]) -> tuple[Tensor, None]:
        self.check_input(x, path)
        A_h, A_w = self._matrices(x)
        return A_h @ x @ A_w.T, None  # y = A_h x A_w^T   (N, C, h_o, w_o)

    def backward(self, dJ_dy: Tensor, x: Tensor, out: Tensor, cache: None, ctx: BackwardContext) -> LayerGradients:
        if not ctx.need_dx:
            return LayerGradients(None)
        A_h, A_w = self._matrices(x)
        return LayerGradients(separable_adjoint(A_h, A_w, dJ_dy))  # dJ/dx = A_h^T dJ/dy A_w   (N, C, H, W)

    # ---- second order: a linear map of x ----------------------------------------------------------
    def tangent(
        self, x: Tensor, Rx: Tensor | None, out: Tensor, cache: None, V: Params, path: tuple[int, ...]
    ) -> LayerTangent:
        assert Rx is not None
        A_h, A_w = self._matrices(x)  # (h_o, H), (w_o, W)
        return LayerTangent(A_h @ Rx @ A_w.T, (A_h, A_w))  # R{y} = A_h R{x} A_w^T   (N, C, h_o, w_o)

    def r_backward(
        self, g: Tensor, Rg: Tensor, x: Tensor, Rx: Tensor | None, out: Tensor, t: LayerTangent, cache: None,
        V: Params, ctx: SecondContext,
    ) -> tuple[Tensor | None, LayerGradients]:  # fmt: skip
        if not ctx.need_dx:
            return None, LayerGradients(None)
        A_h, A_w = t.cache  # the windows' matrices, built once by the tangent
        return A_h.T @ g @ A_w, LayerGradients(A_h.T @ Rg @ A_w)  # R{dJ/dx} = A_h^T R{dJ/dy} A_w   (N, C, H, W)

    def torch_forward(
        self, x: Tensor, p: Params, noise: Mapping[tuple[int, ...], Tensor], tap: Tap, path: tuple[int, ...]
    ) -> Tensor:
        return F.adaptive_avg_pool2d(x, self.output_size)

    def to_torch(self) -> torch.nn.Module:
        return torch.nn.AdaptiveAvgPool2d(self.output_size)


@register(torch.nn.MaxPool2d)
def _from_max_pool(module: torch.nn.Module) -> Layer:
    assert isinstance(module, torch.nn.MaxPool2d)
    if module.ceil_mode:
        raise ValueError("ceil_mode=True is not supported; expected ceil_mode=False (torch's default)")
    if module.return_indices:
        raise ValueError("return_indices=True is not supported: a Sequential passes one tensor on")
    return MaxPool2d(module.kernel_size, module.stride, module.padding, module.dilation)


@register(torch.nn.AvgPool2d)
def _from_avg_pool(module: torch.nn.Module) -> Layer:
    assert isinstance(module, torch.nn.AvgPool2d)
    if module.ceil_mode:
        raise ValueError("ceil_mode=True is not supported; expected ceil_mode=False (torch's default)")
    if module.divisor_override is not None:
        raise ValueError(f"divisor_override={module.divisor_override} is not supported; expected None")
    return AvgPool2d(module.kernel_size, module.stride, module.padding, count_include_pad=module.count_include_pad)


@register(torch.nn.AdaptiveAvgPool2d)
def _from_adaptive_avg_pool(module: torch.nn.Module) -> Layer:
    assert isinstance(module, torch.nn.AdaptiveAvgPool2d)
    return AdaptiveAvgPool2d(module.output_size)
