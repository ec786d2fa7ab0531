"""Conv1d and Conv2d: cross-correlation of an image with a bank of kernels, by hand.

For Conv2d with input x (N, C_in, H, W), kernels W (C_out, C_in / G, k_h, k_w), bias b
(C_out,), stride s, zero padding p, dilation d and G groups (channel group g of the output
sees only channel group g of the input):

    z[n, o, i, j] = b[o] + sum_{c in group(o), u, v} W[o, c, u, v] x_pad[n, c, i s + u d, j s + v d]
                                                                             (N, C_out, H_out, W_out)
    H_out = floor((H + p_top + p_bottom - d (k_h - 1) - 1) / s) + 1

im2col turns it into a matrix product: unfold(x) gathers every window as a column,

    X_col = unfold(x)                         (N, G, C_in/G k_h k_w, L)    L = H_out W_out
    z     = W_g X_col + b                     (N, G, C_out/G, L)            one product per group

and the backward is three products with the same columns:

    (1) dJ/db  = sum over n and every position of dJ/dz                    (C_out,)
    (2) dJ/dW  = sum_n dJ/dz_g X_col^T  + lambda W                         (G, C_out/G, C_in/G k_h k_w)
    (3) dJ/dx  = fold(W_g^T dJ/dz_g)   (col2im: each column added back where its window was)
               = conv_transpose(dJ/dz, W; stride s, padding p, dilation d, groups G)

Line (2) never builds X_col (k_h k_w copies of x). Written out, entry (o, c, u, v) is
sum_{n, i, j} dJ/dz[n, o, i, j] x_pad[n, c, i s + u d, j s + v d]: for each kernel offset
(u, v), dJ/dz times the window of x that the offset reads, summed over the positions and the
images. refbp takes it so, offset by offset, each window a strided view of x (Conv1d) or of a
*phase plane* of x, the positions of one residue of the stride (Conv2d;
``_Conv._weight_gradient_2d``), and each sum a batched matrix product.

Line (3) is the transposed convolution: dJ/dz spread out by the stride, correlated with the
kernel flipped in both spatial directions, the padding cut off again. ``output_padding`` adds
the rows (columns) at the bottom (right) that no window reached when (H + 2p - d (k - 1) - 1)
is not a multiple of s: their gradient is 0. It is a forward operation (torch's
``conv_transpose2d``), not torch's backward kernel.

Second order (refbp.nn.second_order), R{.} = d/dr (.)(w + r v) along V_W, V_b and R{x}. The
convolution is bilinear in (x, W), line (2) in (dJ/dz, x) and line (3) in (dJ/dz, W), so the
product rule gives each R as the same lines with one argument replaced by its direction:

    R{z}      = W * R{x} + V_W * x + V_b                               the tangent (a JVP)
    R{dJ/dx}  = conv_transpose(R{dJ/dz}, W) + conv_transpose(dJ/dz, V_W)
    (H v)_W   = sum_n R{dJ/dz} X_col^T + dJ/dz R{X_col}^T,  R{X_col} = unfold(R{x})
    (H v)_b   = sum over n and every position of R{dJ/dz}

The second terms of R{dJ/dx} and (H v)_W carry dJ/dz: the Gauss-Newton product drops them.

The forward pass is torch's ``conv1d``/``conv2d`` (the same cross-correlation, fast). Conv1d is
Conv2d on (N, C_in, 1, L) with a (1, k) kernel. ``padding="same"`` pads d (k - 1) in all,
the odd one at the end, as torch does; ``"valid"`` pads nothing.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from .chunks import CHUNK_BYTES, chunks
from .layer import BackwardContext, ForwardContext, Layer, LayerGradients, LayerTangent, Params, SecondContext, Tap
from .registry import register
from .validation import describe

__all__ = ["Conv1d", "Conv2d", "as_tuple", "transposed_output_padding"]

Padding = tuple[int, ...] | str


def as_tuple(value: object, n: int, name: str, *, minimum: int) -> tuple[int, ...]:
    """An int or a sequence of n ints, each >= minimum, as an n-tuple; a ValueError naming
    ``name`` otherwise."""
    items: list[Any] = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value] * n
    ok = len(items) == n and all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in items)
    if not ok:
        raise ValueError(f"{name}={value!r}: expected an int >= {minimum} or {n} of them")
    return tuple(int(v) for v in items)


def transposed_output_padding(size: int, out: int, kernel: int, stride: int, dilation: int) -> int:
    """The rows a transposed convolution must add so that it gives back ``size`` rows from
    ``out``: size - ((out - 1) s + d (k - 1) + 1), always < s (the rows no window reached)."""
    return size - ((out - 1) * stride + dilation * (kernel - 1) + 1)


class _Conv(Layer):
    """The convolution of ``dims`` spatial dimensions; Conv1d and Conv2d set ``dims``."""

    dims: ClassVar[int] = 2
    decayed = ("W",)
    torch_names: ClassVar[dict[str, str]] = {"W": "0.weight", "b": "0.bias"}

    def __init__(
        self,
        W: Tensor,
        b: Tensor | None = None,
        *,
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] | str = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
    ) -> None:
        k = self.dims
        if not isinstance(W, Tensor) or W.dim() != k + 2:
            got = describe(W) if isinstance(W, Tensor) else type(W).__name__
            raise ValueError(f"{self.title}: W must be (C_out, C_in / groups, {', '.join('k' * k)}), got {got}")
        if b is not None and (not isinstance(b, Tensor) or tuple(b.shape) != (W.shape[0],)):
            got = describe(b) if isinstance(b, Tensor) else type(b).__name__
            raise ValueError(f"{self.title}: b must be ({W.shape[0]},), one per output channel, got {got}")
        if not isinstance(groups, int) or groups < 1 or W.shape[0] % groups:
            raise ValueError(f"{self.title}: groups={groups!r} must be an int >= 1 dividing C_out = {W.shape[0]}")
        self.params = {"W": W} if b is None else {"W": W, "b": b}
        self.stride = as_tuple(stride, k, "stride", minimum=1)
        self.dilation = as_tuple(dilation, k, "dilation", minimum=1)
        self.groups = groups
        self.padding: Padding
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"{self.title}: padding={padding!r}; expected an int, a tuple, 'same' or 'valid'")
            if padding == "same" and self.stride != (1,) * k:
                raise ValueError(f"{self.title}: padding='same' needs stride 1 (as torch), got stride={stride!r}")
            self.padding = padding
        else:
            self.padding = as_tuple(padding, k, "padding", minimum=0)
        self.training = True

    # ---- sizes ---------------------------------------------------------------------------------
    @property
    def W(self) -> Tensor:
        return self.params["W"]

    @property
    def kernel_size(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.W.shape[2:])

    @property
    def C_in(self) -> int:
        return int(self.W.shape[1]) * self.groups

    @property
    def C_out(self) -> int:
        return int(self.W.shape[0])

    def pads(self) -> tuple[tuple[int, int], ...]:
        """(before, after) zero padding per spatial dimension."""
        if not isinstance(self.padding, str):
            return tuple((p, p) for p in self.padding)
        if self.padding == "valid":
            return ((0, 0),) * self.dims
        # "same": d (k - 1) in all, the odd one at the end (torch's rule)
        totals = [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size, strict=True)]
        return tuple((t // 2, t - t // 2) for t in totals)

    def out_size(self, size: Sequence[int]) -> tuple[int, ...]:
        """The output's spatial size for an input of spatial size ``size``."""
        geometry = zip(size, self.pads(), self.kernel_size, self.stride, self.dilation, strict=True)
        return tuple((n + p0 + p1 - d * (k - 1) - 1) // s + 1 for n, (p0, p1), k, s, d in geometry)

    def describe(self) -> str:
        extras = f"kernel {self.kernel_size}, stride {self.stride}, padding {self.padding}"
        extras += f", dilation {self.dilation}" if any(d > 1 for d in self.dilation) else ""
        extras += f", groups {self.groups}" if self.groups > 1 else ""
        extras += "" if "b" in self.params else ", no bias"
        return f"{self.title}({self.C_in} -> {self.C_out}, {extras})"

    def equations(self) -> tuple[str, str]:
        bias = " + b" if "b" in self.params else ""
        return (
            f"z = W * x{bias}  (cross-correlation; im2col: z = W X_col{bias}, X_col = unfold(x))",
            ("dJ/db = sum_{n, positions} dJ/dz ;  " if bias else "")
            + "dJ/dW = sum_n dJ/dz X_col^T ;  dJ/dx = fold(W^T dJ/dz) = conv_transpose(dJ/dz, W)",
        )

    def check_input(self, x: Tensor, path: tuple[int, ...]) -> None:
        where = ".".join(map(str, path))
        spatial = "L" if self.dims == 1 else "H, W"
        if x.dim() != self.dims + 2 or x.shape[1] != self.C_in:
            raise ValueError(
                f"layer {where} ({self.describe()}) needs input (N, {self.C_in}, {spatial}), got {describe(x)}"
            )
        if any(n < 1 for n in self.out_size(x.shape[2:])):
            raise ValueError(
                f"layer {where} ({self.describe()}): input {describe(x)} is smaller than the dilated kernel "
                f"after padding {self.pads()}; the output would be empty"
            )

    # ---- the manual path -------------------------------------------------------------------------
    def correlate(self, x: Tensor, W: Tensor, b: Tensor | None) -> Tensor:
        """z = W * x + b with this layer's stride, padding, dilation and groups   (N, C_out, *out_size):
        the forward pass, and (bilinear in x and W) its tangent's two terms."""
        conv = F.conv1d if self.dims == 1 else F.conv2d
        pads = self.pads()
        padding: Padding = tuple(before for before, _ in pads)
        if any(before != after for before, after in pads):  # "same", even dilated kernel: one more zero at the end
            x = F.pad(x, [p for before, after in reversed(pads) for p in (before, after)])  # F.pad: last dim first
            padding = (0,) * self.dims
        return conv(x, W, b, self.stride, padding, self.dilation, self.groups)

    def forward(self, x: Tensor, ctx: ForwardContext, path: tuple[int, ...]) -> tuple[Tensor, None]:
        self.check_input(x, path)
        z = self.correlate(x, self.W, self.params.get("b"))  # z = W * x + b
        return z, None  # (N, C_out, *out_size); backward reads x itself, nothing else

    def _as_2d(self) -> tuple[tuple[int, int], tuple[int, int], tuple[tuple[int, int], tuple[int, int]]]:
        """stride, dilation and pads of the same convolution on (N, C, 1, L) for Conv1d."""
        if self.dims == 2:
            (sh, sw), (dh, dw) = self.stride, self.dilation
            ph, pw = self.pads()
            return (sh, sw), (dh, dw), (ph, pw)
        return (1, self.stride[0]), (1, self.dilation[0]), ((0, 0), self.pads()[0])

    @property
    def backward_reads_output(self) -> bool:
        return False  # dJ/dW reads x, dJ/dx reads W: z itself is never read

    def backward(self, dJ_dz: Tensor, x: Tensor, out: Tensor, cache: Any, ctx: BackwardContext) -> LayerGradients:
        params: dict[str, Tensor] = {}
        if "b" in self.params:
            params["b"] = dJ_dz.sum(dim=(0, *range(2, dJ_dz.dim())))  # (1) dJ/db = sum over n and positions   (C_out,)
        dJ_dW = self.weight_gradient(dJ_dz, x)  # (2) dJ/dW = sum_n dJ/dz X_col^T   (C_out, C_in/G, *k)
        if ctx.weight_decay:
            dJ_dW = dJ_dW.add_(self.W, alpha=ctx.weight_decay)  # + lambda W
        params["W"] = dJ_dW
        if not ctx.need_dx:
            return LayerGradients(None, params)
        return LayerGradients(
            self.input_gradient(dJ_dz, self.W, x.shape), params
        )  # (3) dJ/dx = conv_transpose(dJ/dz, W)

    def weight_gradient(self, dJ_dz: Tensor, x: Tensor) -> Tensor:
        """(2) sum_n dJ/dz X_col^T   (C_out, C_in/G, *k), X_col = unfold(x): bilinear in (dJ/dz, x).
        Conv1d: ``_weight_gradient_1d``; Conv2d: ``_weight_gradient_2d``."""
        if self.dims == 1:
            return self._weight_gradient_1d(dJ_dz, x)
        return self._weight_gradient_2d(dJ_dz, x)

    def _weight_gradient_2d(self, dJ_dz: Tensor, x: Tensor) -> Tensor:
        """(2) for a Conv2d, one kernel offset (u, v) at a time, as for a Conv1d:

            dJ/dW[o, c, u, v] = sum_n sum_{i, j} dJ/dz[n, o, i, j] x_pad[n, c, i s_h + u d_h, j s_w + v d_w]

        A 2-D window of x is not one strided matrix, but it becomes one on a *phase plane*. Write
        u d_h = s_h q_u + a_u (0 <= a_u < s_h), likewise v d_w = s_w q_v + b_v; the plane of
        phase (a, b) holds x_pad[s_h y + a, s_w x + b] at (y, x), H_out + max q rows of
        W' = W_out + max q_v entries each. Offset (u, v) then reads rows i + q_u, columns j + q_v
        of plane (a_u, b_v): flattened, the W' entries of each row in a row, one contiguous run
        of H_out W' entries starting at q_u W' + q_v. dJ/dz, padded with zeros to W' columns, is
        flattened the same way, and its zero columns cancel the entries the run reads past each
        row's end (an extra zero row at the bottom holds the last run's overrun). The sum over
        i, j is then a batched product, (C_out/G, H_out W') @ (H_out W', C_in/G), summed over n.

        The planes are one copy of the x that the windows read (stride 1: x_pad itself), made
        for a few images at a time (2 MiB of planes and padded dJ/dz), and nothing else is
        copied. (The convolution of x by dJ/dz that this replaced, with the images as channels,
        took 1.9x autograd's whole training step at item 6's sizes, benchmarks/.) A NaN or inf in
        x reaches, through a zero of the padded dJ/dz, the entries of dW whose windows lie beside
        it as well as those that read it (0 * inf is NaN): the forward pass is not finite there
        either."""
        G, (sh, sw), (dh, dw), ((ph, _), (pw, _)) = self.groups, self.stride, self.dilation, self.pads()
        N, C_in, H, Wd = x.shape
        C_out, H_out, W_out = self.C_out, dJ_dz.shape[2], dJ_dz.shape[3]
        kh, kw = self.kernel_size
        og, cg = C_out // G, C_in // G
        rows = [divmod(u * dh, sh) for u in range(kh)]  # (q_u, a_u) of each kernel row u
        cols = [divmod(v * dw, sw) for v in range(kw)]  # (q_v, b_v) of each kernel column v
        phases = sorted({(a, b) for _, a in rows for _, b in cols})  # the planes some offset reads
        plane_of = {phase: k for k, phase in enumerate(phases)}
        Wq = W_out + max(q for q, _ in cols)  # W': the entries of a plane's row
        Hq = H_out + max(q for q, _ in rows) + (1 if Wq > W_out else 0)  # + a zero row for the overrun
        L = H_out * Wq  # the run each offset reads
        per_image = (C_in * len(phases) * Hq * Wq + C_out * L) * x.element_size()
        dJ_dW = dJ_dz.new_zeros(C_out, cg, kh, kw)
        for part in chunks(N, per_image, budget=2 * CHUNK_BYTES, device=x.device):
            n = part.stop - part.start
            planes = x.new_zeros(n, C_in, len(phases), Hq, Wq)
            for k, (a, b) in enumerate(phases):
                # plane (a, b) at (y, x) is x[s_h y + a - p_h, s_w x + b - p_w] where that exists
                y0, x0 = -(-(ph - a) // sh), -(-(pw - b) // sw)  # the first y (x) inside x, >= 0 once clipped
                y0, x0 = max(0, y0), max(0, x0)
                y1 = min(Hq, (H - 1 + ph - a) // sh + 1)
                x1 = min(Wq, (Wd - 1 + pw - b) // sw + 1)
                if y1 > y0 and x1 > x0:
                    r0, c0 = y0 * sh + a - ph, x0 * sw + b - pw
                    source = x[part, :, r0 : r0 + (y1 - y0 - 1) * sh + 1 : sh, c0 : c0 + (x1 - x0 - 1) * sw + 1 : sw]
                    planes[:, :, k, y0:y1, x0:x1] = source
            flat = planes.view(n, C_in, len(phases), Hq * Wq)
            g = dJ_dz[part]  # (n, C_out, H_out, W_out)
            if Wq > W_out:
                g = F.pad(g, (0, Wq - W_out))  # zero columns   (n, C_out, H_out, W')
            g = g.reshape(n, C_out, L)
            for u, (qu, a) in enumerate(rows):
                for v, (qv, b) in enumerate(cols):
                    start = qu * Wq + qv
                    run = flat[:, :, plane_of[(a, b)], start : start + L]  # (n, C_in, L), a view
                    for group in range(G):
                        o, c = slice(group * og, (group + 1) * og), slice(group * cg, (group + 1) * cg)
                        # sum_n g[n, o] run[n, c]^T: (n, og, L) @ (n, L, cg), summed over n
                        dJ_dW[o, :, u, v] += torch.bmm(g[:, o], run[:, c].transpose(1, 2)).sum(dim=0)
        return dJ_dW

    def _weight_gradient_1d(self, dJ_dz: Tensor, x: Tensor) -> Tensor:
        """(2) for a Conv1d, one kernel offset u at a time:

            dJ/dW[o, c, u] = sum_n sum_i dJ/dz[n, o, i] x[n, c, i s + u d - p]

        For each u, the positions x[n, c, i s + u d - p] that exist form a strided view of x (the
        padding adds only zeros, so it is left out), and the sum over i is a batched product over
        n, (C_out/G, m) @ (m, C_in/G), then a sum over n: no copy of x and no padded copy. (A 1-D
        convolution of x by dJ/dz, the 2-D path, ran as a convolution whose kernel is as long as
        the sequence: 2.1x autograd's time at item 6's sizes.)"""
        G, (s,), (d,), ((p, _),) = self.groups, self.stride, self.dilation, self.pads()
        C_in, L = x.shape[1:]  # x: (N, C_in, L)
        C_out, L_out, k = self.C_out, dJ_dz.shape[2], self.kernel_size[0]
        og, cg = C_out // G, C_in // G
        dJ_dW = dJ_dz.new_zeros(C_out, cg, k)  # (C_out, C_in/G, k)
        for u in range(k):
            # output positions i whose input position j = i s + u d - p lies in 0 .. L - 1
            first = max(0, -(-(p - u * d) // s))  # the least i with j >= 0
            last = min(L_out - 1, (L - 1 + p - u * d) // s)  # the greatest i with j <= L - 1
            if last < first:
                continue  # this offset reads padding only
            j0 = first * s + u * d - p
            g_u = dJ_dz[:, :, first : last + 1]  # (N, C_out, m)
            x_u = x[:, :, j0 : j0 + (last - first) * s + 1 : s]  # (N, C_in, m), a view
            for group in range(G):
                o, c = slice(group * og, (group + 1) * og), slice(group * cg, (group + 1) * cg)
                # sum_n g_u[n, o] x_u[n, c]^T: (N, og, m) @ (N, m, cg), summed over n
                dJ_dW[o, :, u] = torch.matmul(g_u[:, o], x_u[:, c].transpose(1, 2)).sum(dim=0)
        return dJ_dW

    def input_gradient(self, dJ_dz: Tensor, W: Tensor, shape: torch.Size) -> Tensor:
        """(3) conv_transpose(dJ/dz, W)   ``shape`` (the input's): bilinear in (dJ/dz, W)."""
        G = self.groups
        stride, dilation, (ph, pw) = self._as_2d()
        g2 = dJ_dz if self.dims == 2 else dJ_dz.unsqueeze(2)  # (N, C_out, H_out, W_out)
        W2 = W if self.dims == 2 else W.unsqueeze(2)  # (C_out, C_in/G, k_h, k_w)
        H, Wd = (1, shape[2]) if self.dims == 1 else (shape[2], shape[3])
        kh, kw = W2.shape[2:]
        H_out, W_out = g2.shape[2:]
        symmetric = ph[0] == ph[1] and pw[0] == pw[1]
        # the output padding restores the rows no window reached
        Hp, Wp = H + ph[0] + ph[1], Wd + pw[0] + pw[1]
        extra = (
            transposed_output_padding(Hp, H_out, kh, stride[0], dilation[0]),
            transposed_output_padding(Wp, W_out, kw, stride[1], dilation[1]),
        )
        cut = (ph[0], pw[0]) if symmetric else (0, 0)  # conv_transpose cuts symmetric padding itself
        dJ_dx = F.conv_transpose2d(g2, W2, None, stride, cut, extra, G, dilation)  # (N, C_in, H, W) or padded
        if not symmetric:
            dJ_dx = dJ_dx[:, :, ph[0] : ph[0] + H, pw[0] : pw[0] + Wd]  # cut the padding: (N, C_in, H, W)
        return dJ_dx if self.dims == 2 else dJ_dx.squeeze(2)

    # ---- second order: z is bilinear in (x, W), and so are (2) in (dJ/dz, x) and (3) in (dJ/dz, W) ----
    def tangent(
        self, x: Tensor, Rx: Tensor | None, out: Tensor, cache: Any, V: Params, path: tuple[int, ...]
    ) -> LayerTangent:
        V_b = V(path, "b") if "b" in self.params else None
        Rz = self.correlate(x, V(path, "W"), V_b)  # V_W * x + V_b   (N, C_out, *out_size)
        if Rx is not None:
            Rz += self.correlate(Rx, self.W, None)  # R{z} = W * R{x} + V_W * x + V_b
        return LayerTangent(Rz)

    def r_backward(
        self, g: Tensor, Rg: Tensor, x: Tensor, Rx: Tensor | None, out: Tensor, t: LayerTangent, cache: Any,
        V: Params, ctx: SecondContext,
    ) -> tuple[Tensor | None, LayerGradients]:  # fmt: skip
        first = ctx.first
        HW = self.weight_gradient(Rg, x)  # (H v)_W = sum_n R{dJ/dz} X_col^T + dJ/dz R{X_col}^T
        if Rx is not None and first:
            HW += self.weight_gradient(g, Rx)
        params = {"W": HW}
        if "b" in self.params:
            params["b"] = Rg.sum(dim=(0, *range(2, Rg.dim())))  # (H v)_b = sum over n and positions of R{dJ/dz}
        if not ctx.need_dx:
            return None, LayerGradients(None, params)
        R_dx = self.input_gradient(Rg, self.W, x.shape)  # R{dJ/dx} = conv_transpose(R{dJ/dz}, W)
        if first:
            R_dx += self.input_gradient(g, V(ctx.path, "W"), x.shape)  # + conv_transpose(dJ/dz, V_W)
        return self.input_gradient(g, self.W, x.shape), LayerGradients(R_dx, params)

    # ---- the oracle ------------------------------------------------------------------------------
    def torch_forward(
        self, x: Tensor, p: Params, noise: Mapping[tuple[int, ...], Tensor], tap: Tap, path: tuple[int, ...]
    ) -> Tensor:
        conv = F.conv1d if self.dims == 1 else F.conv2d
        b = p(path, "b") if "b" in self.params else None
        if self.padding != "same":
            return conv(x, p(path, "W"), b, self.stride, self.padding, self.dilation, self.groups)
        with warnings.catch_warnings():  # torch's note that "same" with an even kernel pads a copy: expected
            warnings.filterwarnings("ignore", message="Using padding='same'", category=UserWarning)
            return conv(x, p(path, "W"), b, self.stride, self.padding, self.dilation, self.groups)

    def to_torch(self) -> torch.nn.Module:
        module_type: Any = torch.nn.Conv1d if self.dims == 1 else torch.nn.Conv2d  # sizes typed per module
        module = module_type(
            self.C_in, self.C_out, self.kernel_size, stride=self.stride, padding=self.padding,
            dilation=self.dilation, groups=self.groups, bias="b" in self.params,
            dtype=self.W.dtype, device=self.W.device,
        )  # fmt: skip
        with torch.no_grad():
            module.weight.copy_(self.W)
            if module.bias is not None:
                module.bias.copy_(self.params["b"])
        return module


class Conv1d(_Conv):
    """torch.nn.Conv1d on (N, C_in, L).

    Args:
        W: (C_out, C_in / groups, k), torch's layout.
        b: (C_out,), or None for no bias.
        stride, padding, dilation, groups: as torch.nn.Conv1d (padding: an int, "same", "valid").
    """

    title = "Conv1d"
    dims = 1


class Conv2d(_Conv):
    """torch.nn.Conv2d on (N, C_in, H, W).

    Args:
        W: (C_out, C_in / groups, k_h, k_w), torch's layout.
        b: (C_out,), or None for no bias.
        stride, padding, dilation: an int or a pair; padding also "same" or "valid".
        groups: G, dividing C_in and C_out.
    """

    title = "Conv2d"
    dims = 2


def _from_conv(module: torch.nn.Module, layer_type: type[_Conv]) -> Layer:
    assert isinstance(module, (torch.nn.Conv1d, torch.nn.Conv2d))
    if module.padding_mode != "zeros":
        raise ValueError(f"padding_mode={module.padding_mode!r} is not supported; refbp pads with zeros only")
    b = None if module.bias is None else module.bias.detach().clone()
    padding = module.padding if isinstance(module.padding, str) else tuple(module.padding)
    return layer_type(
        module.weight.detach().clone(), b, stride=tuple(module.stride), padding=padding,
        dilation=tuple(module.dilation), groups=module.groups,
    )  # fmt: skip


@register(torch.nn.Conv1d)
def _from_conv1d(module: torch.nn.Module) -> Layer:
    return _from_conv(module, Conv1d)


@register(torch.nn.Conv2d)
def _from_conv2d(module: torch.nn.Module) -> Layer:
    return _from_conv(module, Conv2d)
