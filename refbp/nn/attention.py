"""Causal multi-head self-attention (nanoGPT's CausalSelfAttention), forward and backward by hand.

x is (B, T, d): B sequences of T positions. n_head heads of size hs = d / n_head. In order:

    (A1) [q k v] = x W_qkv^T + b_qkv                  (B, T, 3d)    one packed projection
    (A2) q, k, v split into heads                     (B, nh, T, hs) each
    (A3) S = q k^T / sqrt(hs)                          (B, nh, T, T)  scores
    (A4) S[t, t'] = -inf for t' > t                    (B, nh, T, T)  the causal mask
    (A5) P = softmax(S), row by row                   (B, nh, T, T)  P[t, t'] = exp S[t, t'] / sum exp S[t, .]
    (A6) P~ = P o m / (1 - p)                          (B, nh, T, T)  attention dropout (training)
    (A7) Y = P~ v                                      (B, nh, T, hs) weighted values
    (A8) y = heads merged: y[b, t] = [Y[b, 1, t], ..., Y[b, nh, t]]     (B, T, d)
    (A9) out = y W_o^T + b_o                           (B, T, d)      output projection

and back, from dJ/dout:

    dJ/dW_o = sum_rows dJ/dout^T y ;  dJ/db_o = sum_rows dJ/dout ;  dJ/dy = dJ/dout W_o      (A9)
    dJ/dY   = dJ/dy split into heads                                                        (A8)
    dJ/dv   = P~^T dJ/dY ;  dJ/dP~ = dJ/dY v^T                                              (A7)
    dJ/dP   = dJ/dP~ o m / (1 - p)                                                          (A6)
    dJ/dS   = P o (dJ/dP - rowsum(dJ/dP o P))                                               (A5)
    dJ/dq   = dJ/dS k / sqrt(hs) ;  dJ/dk = dJ/dS^T q / sqrt(hs)                            (A3)
    dJ/d[q k v] = heads merged, side by side ;  dJ/dW_qkv = sum_rows dJ/d[qkv]^T x ;
    dJ/db_qkv = sum_rows dJ/d[qkv] ;  dJ/dx = dJ/d[qkv] W_qkv                                (A1)

The softmax's backward (A5) is the row-wise Jacobian-vector product: the Jacobian of one row,
diag(P) - P P^T, applied to dJ/dP without ever being formed (it would be T x T per row). The
mask (A4) needs no backward line of its own where P is read: P = 0 at a masked entry, so dJ/dS
is 0 there too.

**What the cache keeps.** The packed [q k v], the merged y and the dropout mask. The
T x T probabilities P are *rebuilt* in the backward pass from q and k by the forward pass's own
lines (A3-A5), so bit for bit the same P. P is the largest thing attention could keep (T x T
per head against 4d numbers per position), and keeping it would make a training step need more
memory than torch's fused attention, which does not keep it either (FlashAttention keeps one
log-sum-exp per row instead of a softmax's sum). Rebuilding P is where the causal mask does
need a backward line: forget it there and every masked score comes back to life
(refbp.apps.gpt_bugs). In the teaching mode (``keep_intermediates``) the cache also holds P, to
be read, never used.

Both passes work on a few sequences at a time (refbp.nn.chunks), so that only a few of the
T x T blocks of scores, probabilities and their gradients exist at once.

Intermediates reported (keys at the layer's path): q, k, v (B, nh, T, hs), att = P
(B, nh, T, T), y (B, T, d); the output a is ``out``.

**Second order** (refbp.nn.second_order), R{.} = d/dr (.)(w + r v) along V (V_qkv, V_bqkv, V_o,
V_bo) and R{x}, the product rule on each line. Tangents (forward mode):

    (R1) R{[q k v]} = R{x} W_qkv^T + x V_qkv^T + V_bqkv                          (B, T, 3d)
    (R3) R{S}  = (R{q} k^T + q R{k}^T) / sqrt(hs)         (masked entries: P = 0 below, so no matter)
    (R5) R{P}  = P o (R{S} - rowsum(P o R{S}))            diag(P) - P P^T applied to R{S}: (A5)'s
                                                           Jacobian again (it is symmetric)
    (R6) R{P~} = R{P} o m / (1 - p)
    (R7) R{Y}  = R{P~} v + P~ R{v}                                                (B, nh, T, hs)
    (R9) R{out} = R{y} W_o^T + y V_o^T + V_bo                                     (B, T, d)

and the R-operator of the backward, with g = dJ/dout; the terms marked [1] carry a first
derivative and are dropped for the Gauss-Newton product (``ctx.first`` = 0):

    (H v)_W_o = sum_rows R{g}^T y + [1] g^T R{y} ;  (H v)_b_o = sum_rows R{g}
    R{dJ/dy}  = R{g} W_o + [1] g V_o                                              (A9)
    R{dJ/dv}  = P~^T R{dJ/dY} + [1] R{P~}^T dJ/dY                                 (A7)
    R{dJ/dP~} = R{dJ/dY} v^T + [1] dJ/dY R{v}^T ;  R{dJ/dP} = R{dJ/dP~} o m / (1 - p)   (A7, A6)
    R{dJ/dS}  = P o (R{dJ/dP} - rowsum(R{dJ/dP} o P))
                + [1] R{P} o (dJ/dP - rowsum(dJ/dP o P)) - [1] P o rowsum(dJ/dP o R{P})   (A5)
    R{dJ/dq}  = (R{dJ/dS} k + [1] dJ/dS R{k}) / sqrt(hs)
    R{dJ/dk}  = (R{dJ/dS}^T q + [1] dJ/dS^T R{q}) / sqrt(hs)                       (A3)
    (H v)_W_qkv = sum_rows R{dJ/d[qkv]}^T x + [1] dJ/d[qkv]^T R{x} ;  (H v)_b_qkv = sum_rows R{dJ/d[qkv]}
    R{dJ/dx}  = R{dJ/d[qkv]} W_qkv + [1] dJ/d[qkv] V_qkv                           (A1)

The two projections are refbp.nn.linear's rules (linear_tangent, linear_r_backward). The
R-backward runs the first-order backward's lines beside its own in one loop over chunks of
sequences, so P, dJ/dP and dJ/dS are built once for both.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from .chunks import chunks
from .keys import Key
from .layer import BackwardContext, ForwardContext, Layer, LayerGradients, LayerTangent, Params, SecondContext, Tap
from .linear import linear_r_backward, linear_tangent
from .validation import check_seed, describe

__all__ = [
    "AttentionCache",
    "AttentionTangent",
    "CausalSelfAttention",
    "TorchCausalSelfAttention",
    "causal_mask",
    "softmax_backward",
]


def causal_mask(T: int, device: torch.device | str) -> Tensor:
    """(T, T) bool, True where t' > t: the future positions that position t may not see (A4)."""
    return torch.ones(T, T, dtype=torch.bool, device=device).triu_(diagonal=1)


def softmax_backward(P: Tensor, dJ_dP: Tensor, *, overwrite: bool = False) -> Tensor:
    """dJ/dS from dJ/dP for P = softmax(S) over the last dimension (A5):

        dJ/dS = P o (dJ/dP - rowsum(dJ/dP o P))         (..., T)

    the Jacobian of one row, diag(P) - P P^T, applied to that row of dJ/dP: the first term is
    the diagonal, the row sum the rank-one part. ``overwrite``: compute in dJ_dP's storage."""
    rowsum = (dJ_dP * P).sum(dim=-1, keepdim=True)  # rowsum(dJ/dP o P)   (..., 1)
    dJ_dS = dJ_dP.sub_(rowsum) if overwrite else dJ_dP - rowsum  # dJ/dP - rowsum(...)   (..., T)
    return dJ_dS.mul_(P)  # P o (dJ/dP - rowsum(dJ/dP o P))   (..., T)


@dataclass
class AttentionCache:
    """What attention's backward pass needs besides its input x.

    Attributes:
        qkv: (B, T, 3d) the packed projection: q, k and v side by side (A1).
        y: (B, T, d) the heads merged (A8), the input of the output projection.
        mask: (B, nh, T, T) bool keep-mask of attention dropout, or None (eval mode, p = 0).
        P: (B, nh, T, T) the probabilities, kept in the teaching mode only (never read back).
    """

    qkv: Tensor
    y: Tensor
    mask: Tensor | None
    P: Tensor | None = None


@dataclass
class AttentionTangent:
    """What attention's R-backward reads again from its tangent pass.

    Attributes:
        Rqkv: (B, T, 3d) R{[q k v]} (R1).
        RP: (B, nh, T, T) R{P} (R5), before dropout.
        Ry: (B, T, d) R{y}, the heads of R{Y} merged (R7).
    """

    Rqkv: Tensor
    RP: Tensor
    Ry: Tensor


class CausalSelfAttention(Layer):
    """nanoGPT's causal self-attention: c_attn (W_qkv, b_qkv), heads, softmax, c_proj (W_o, b_o).

    Args:
        W_qkv: (3d, d), torch.nn.Linear's layout: rows 0..d-1 make q, d..2d-1 k, 2d..3d-1 v.
        W_o: (d, d) the output projection.
        b_qkv: (3d,) or None.  b_o: (d,) or None.
        n_head: the number of heads; it must divide d.
        dropout: p of the dropout on the attention probabilities (A6), in training mode.
        seed: seeds refbp's own generator of dropout masks.
    """

    title = "CausalSelfAttention"
    decayed = ("W_qkv", "W_o")
    torch_names: ClassVar[dict[str, str]] = {
        "W_qkv": "0.c_attn.weight", "b_qkv": "0.c_attn.bias", "W_o": "0.c_proj.weight", "b_o": "0.c_proj.bias",
    }  # fmt: skip

    def __init__(
        self,
        W_qkv: Tensor,
        W_o: Tensor,
        b_qkv: Tensor | None = None,
        b_o: Tensor | None = None,
        *,
        n_head: int,
        dropout: float = 0.0,
        seed: int = 0,
    ) -> None:
        if not isinstance(W_o, Tensor) or W_o.dim() != 2 or W_o.shape[0] != W_o.shape[1]:
            got = describe(W_o) if isinstance(W_o, Tensor) else type(W_o).__name__
            raise ValueError(f"W_o must be a square (d, d) matrix, got {got}")
        d = W_o.shape[0]
        if not isinstance(W_qkv, Tensor) or tuple(W_qkv.shape) != (3 * d, d):
            got = describe(W_qkv) if isinstance(W_qkv, Tensor) else type(W_qkv).__name__
            raise ValueError(f"W_qkv must have shape (3d, d) = ({3 * d}, {d}) for W_o of shape ({d}, {d}), got {got}")
        for name, b, size in (("b_qkv", b_qkv, 3 * d), ("b_o", b_o, d)):
            if b is not None and (not isinstance(b, Tensor) or tuple(b.shape) != (size,)):
                got = describe(b) if isinstance(b, Tensor) else type(b).__name__
                raise ValueError(f"{name} must have shape ({size},) or be None, got {got}")
        if isinstance(n_head, bool) or not isinstance(n_head, int) or n_head < 1 or d % n_head:
            raise ValueError(f"n_head={n_head!r} must be an int >= 1 that divides n_embd = {d}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout={dropout!r} must be a probability in [0, 1)")
        self.params = {"W_qkv": W_qkv, "W_o": W_o}
        if b_qkv is not None:
            self.params["b_qkv"] = b_qkv
        if b_o is not None:
            self.params["b_o"] = b_o
        self.n_head = n_head
        self.d = d
        self.p = float(dropout)
        self.seed = check_seed(seed)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.training = True

    # ---- description -----------------------------------------------------------------------
    @property
    def hs(self) -> int:
        """The head size d / n_head."""
        return self.d // self.n_head

    @property
    def intermediates(self) -> tuple[str, ...]:
        return ("q", "k", "v", "att", "y")

    @property
    def stochastic(self) -> bool:
        return self.training and self.p > 0.0

    def describe(self) -> str:
        bias = "" if "b_qkv" in self.params else ", no bias"
        drop = f", dropout {self.p:g}" if self.stochastic else ""
        return f"CausalSelfAttention({self.d}, {self.n_head} heads{bias}{drop})"

    def equations(self) -> tuple[str, str]:
        return (
            "[q k v] = x W_qkv^T + b_qkv ;  P = softmax(q k^T / sqrt(hs), causal) ;  y = merge(P v) ;  "
            "out = y W_o^T + b_o",
            "dJ/dv = P^T dJ/dY ;  dJ/dP = dJ/dY v^T ;  dJ/dS = P o (dJ/dP - rowsum(dJ/dP o P)) ;  "
            "dJ/dq = dJ/dS k / sqrt(hs) ;  dJ/dk = dJ/dS^T q / sqrt(hs)",
        )

    def check_input(self, x: Tensor, path: tuple[int, ...]) -> None:
        if x.dim() != 3 or x.shape[-1] != self.d:
            where = ".".join(map(str, path))
            raise ValueError(f"layer {where} ({self.describe()}) needs input (B, T, {self.d}), got {describe(x)}")

    def forward_size(self, shape: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
        """qkv (B, T, 3d), y and the output (B, T, d) each, the T x T mask bias, S and P of one
        sequence at a time (the forward pass runs in chunks of sequences), and every P kept in
        the teaching mode or masked by dropout: (B, nh, T, T)."""
        if len(shape) != 3:
            return shape, 2 * math.prod(shape)  # check_input refuses it with its own message
        B, T, d = shape
        return shape, 5 * B * T * d + T * T + self.n_head * T * T * (B + 2)

    # ---- the steps, one method each (the bug catalogue replaces one of them) -----------------
    def cached_values(self, cache: AttentionCache, path: tuple[int, ...]) -> dict[Key, Tensor]:
        q, k, v = self.heads(cache.qkv)  # (B, nh, T, hs) each
        out = {Key("q", path): q, Key("k", path): k, Key("v", path): v, Key("y", path): cache.y}
        if cache.P is not None:  # kept in the teaching mode
            out[Key("att", path)] = cache.P  # (B, nh, T, T)
        return out

    def split_heads(self, t: Tensor) -> Tensor:
        """(B, T, d) -> (B, nh, T, hs): head h of position t is t[b, t, h hs : (h + 1) hs] (A2). A view."""
        B, T, _ = t.shape
        return t.view(B, T, self.n_head, self.hs).transpose(1, 2)  # (B, nh, T, hs)

    def heads(self, qkv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v from the packed (B, T, 3d) [q k v], each split into heads: (B, nh, T, hs) views (A2)."""
        q, k, v = qkv.split(self.d, dim=2)  # (B, T, d) each
        return self.split_heads(q), self.split_heads(k), self.split_heads(v)

    def merge_heads(self, Y: Tensor) -> Tensor:
        """(B, nh, T, hs) -> (B, T, d): the heads of each position side by side (A8). A copy."""
        B, nh, T, hs = Y.shape
        return Y.transpose(1, 2).reshape(B, T, nh * hs)  # (B, T, d)

    def scores(self, q: Tensor, k: Tensor) -> Tensor:
        """S = q k^T / sqrt(hs) with S[t, t'] = -inf for t' > t (A3, A4), as one fused product
        that adds the mask as a bias of 0 and -inf. A new (B, nh, T, T) tensor."""
        B, nh, T, hs = q.shape
        bias = torch.zeros(T, T, dtype=q.dtype, device=q.device).masked_fill_(causal_mask(T, q.device), float("-inf"))
        q3, k3 = q.reshape(B * nh, T, hs), k.reshape(B * nh, T, hs)  # (B nh, T, hs), views
        S = torch.baddbmm(bias, q3, k3.transpose(1, 2), alpha=1.0 / math.sqrt(hs))  # (A3, A4) (B nh, T, T)
        return S.view(B, nh, T, T)

    def probabilities(self, q: Tensor, k: Tensor) -> Tensor:
        """P = softmax(S), S = q k^T / sqrt(hs) masked (A3-A5): in the forward pass, and again in
        the backward pass, from the same q and k by the same lines, so the same numbers."""
        return torch.softmax(self.scores(q, k), dim=-1)  # (A5) (B, nh, T, T), softmax by torch's kernel

    def rebuilt_probabilities(self, q: Tensor, k: Tensor) -> Tensor:
        """P again, in the backward pass: the forward's lines, the causal mask (A4) included."""
        return self.probabilities(q, k)  # (B, nh, T, T)

    def scores_backward(self, dJ_dS: Tensor, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """(dJ/dq, dJ/dk) from dJ/dS (A3): dJ/dq = dJ/dS k / sqrt(hs), dJ/dk = dJ/dS^T q / sqrt(hs)."""
        scale = 1.0 / math.sqrt(self.hs)
        dJ_dq = (dJ_dS @ k).mul_(scale)  # (B, nh, T, T) @ (B, nh, T, hs) = (B, nh, T, hs)
        dJ_dk = (dJ_dS.transpose(-2, -1) @ q).mul_(scale)  # (B, nh, T, hs)
        return dJ_dq, dJ_dk

    def softmax_backward(self, P: Tensor, dJ_dP: Tensor, *, overwrite: bool) -> Tensor:
        """dJ/dS = P o (dJ/dP - rowsum(dJ/dP o P)) (A5); see :func:`softmax_backward`."""
        return softmax_backward(P, dJ_dP, overwrite=overwrite)

    # ---- the manual path ---------------------------------------------------------------------
    def _project(self, x: Tensor, W: Tensor, b: Tensor | None) -> Tensor:
        """x W^T + b over the last dimension (A1, A9), every leading dimension a row."""
        rows = x.reshape(-1, x.shape[-1])  # (M, d_in)
        out = rows @ W.T if b is None else torch.addmm(b, rows, W.T)  # (M, d_out), one fused op
        return out.view(*x.shape[:-1], W.shape[0])

    def forward(self, x: Tensor, ctx: ForwardContext, path: tuple[int, ...]) -> tuple[Tensor, AttentionCache]:
        B, T, _ = x.shape
        qkv = self._project(x, self.params["W_qkv"], self.params.get("b_qkv"))  # (A1) (B, T, 3d)
        mask = self._mask((B, self.n_head, T, T), ctx, path, x.device)
        y = torch.empty_like(x)  # (B, T, d)
        kept_P = torch.empty(B, self.n_head, T, T, dtype=x.dtype, device=x.device) if ctx.keep_intermediates else None
        # S and P of a few sequences
        for part in chunks(B, 2 * self.n_head * T * T * x.element_size(), device=x.device):
            q, k, v = self.heads(qkv[part])  # (A2) (b, nh, T, hs) each
            P = self.probabilities(q, k)  # (A3-A5) P = softmax(q k^T / sqrt(hs), masked)   (b, nh, T, T)
            if kept_P is not None:
                kept_P[part] = P
            if mask is not None:
                P = P.mul_(mask[part]).mul_(1.0 / (1.0 - self.p))  # (A6) P~ = P o m / (1 - p)
            y[part] = self.merge_heads(P @ v)  # (A7, A8) (b, nh, T, T) @ (b, nh, T, hs), merged: (b, T, d)
        out = self._project(y, self.params["W_o"], self.params.get("b_o"))  # (A9) (B, T, d)
        return out, AttentionCache(qkv, y, mask, kept_P)

    def _mask(
        self, shape: tuple[int, ...], ctx: ForwardContext, path: tuple[int, ...], device: torch.device
    ) -> Tensor | None:
        """The dropout keep-mask m (A6): given in ``ctx.noise``, or drawn on the CPU from refbp's generator."""
        if not self.stochastic:
            return None
        given = None if ctx.noise is None else ctx.noise.get(path)
        if given is not None:
            if tuple(given.shape) != tuple(shape):
                raise ValueError(f"noise[{path}] has shape {tuple(given.shape)}; layer {path} needs {tuple(shape)}")
            return given.to(device=device, dtype=torch.bool)
        keep = torch.rand(tuple(shape), dtype=torch.float64, generator=self.generator) >= self.p  # on the CPU
        return keep.to(device)

    def backward(
        self, dJ_dout: Tensor, x: Tensor, out: Tensor, cache: AttentionCache, ctx: BackwardContext
    ) -> LayerGradients:
        W_qkv, W_o = self.params["W_qkv"], self.params["W_o"]
        B, T, d = x.shape
        nh, keep, scale = self.n_head, ctx.keep_intermediates, 1.0 / (1.0 - self.p)
        # (A9) the output projection
        g = dJ_dout.reshape(-1, d)  # (M, d)   M = B T rows
        params = {"W_o": g.T @ cache.y.reshape(-1, d)}  # dJ/dW_o = sum_rows dJ/dout^T y   (d, d)
        if "b_o" in self.params:
            params["b_o"] = g.sum(dim=0)  # dJ/db_o = sum_rows dJ/dout   (d,)
        dJ_dy = dJ_dout @ W_o  # dJ/dy = dJ/dout W_o   (B, T, d)
        dJ_dqkv = torch.empty_like(cache.qkv)  # (B, T, 3d)
        kept = {kind: torch.empty(B, nh, T, T if kind == "att" else self.hs, dtype=x.dtype, device=x.device)
                for kind in ("att", "q", "k", "v")} if keep else {}  # fmt: skip
        # P, dJ/dP and a product of a few sequences
        for part in chunks(B, 3 * nh * T * T * x.element_size(), device=x.device):
            # contiguous once here, not copied again by each batched product below
            q, k, v = (t.contiguous() for t in self.heads(cache.qkv[part]))  # (b, nh, T, hs) each
            dJ_dY = self.split_heads(dJ_dy[part]).contiguous()  # (A8) (b, nh, T, hs)
            # (A7) Y = P~ v, with P rebuilt from q and k (A3-A5)
            P = self.rebuilt_probabilities(q, k)  # (b, nh, T, T)
            mask = None if cache.mask is None else cache.mask[part]
            P_tilde = P if mask is None else P * mask * scale  # (b, nh, T, T)
            dJ_dv = P_tilde.transpose(-2, -1) @ dJ_dY  # dJ/dv = P~^T dJ/dY   (b, nh, T, hs)
            del P_tilde
            dJ_dP = dJ_dY @ v.transpose(-2, -1)  # dJ/dP~ = dJ/dY v^T   (b, nh, T, T)
            if mask is not None:
                dJ_dP.mul_(mask).mul_(scale)  # (A6) dJ/dP = dJ/dP~ o m / (1 - p)
            if keep:
                kept["att"][part] = dJ_dP
            dJ_dS = self.softmax_backward(P, dJ_dP, overwrite=True)  # (A5) (b, nh, T, T)
            del P, dJ_dP
            dJ_dq, dJ_dk = self.scores_backward(dJ_dS, q, k)  # (A3) (b, nh, T, hs) each
            del dJ_dS
            # (A1, A2) the heads merged back, q's, k's and v's side by side
            torch.cat([self.merge_heads(t) for t in (dJ_dq, dJ_dk, dJ_dv)], dim=2, out=dJ_dqkv[part])
            if keep:
                kept["q"][part], kept["k"][part], kept["v"][part] = dJ_dq, dJ_dk, dJ_dv
        rows = dJ_dqkv.view(-1, 3 * d)  # (M, 3d)
        params["W_qkv"] = rows.T @ x.reshape(-1, d)  # dJ/dW_qkv = sum_rows dJ/d[qkv]^T x   (3d, d)
        if "b_qkv" in self.params:
            params["b_qkv"] = rows.sum(dim=0)  # dJ/db_qkv   (3d,)
        if ctx.weight_decay:
            for kind in self.decayed:
                params[kind].add_(self.params[kind], alpha=ctx.weight_decay)  # + lambda W
        dJ_dx = (rows @ W_qkv).view(x.shape) if ctx.need_dx else None  # dJ/dx = dJ/d[qkv] W_qkv   (B, T, d)
        intermediates = {Key(kind, ctx.path): t for kind, t in kept.items()}
        if keep:
            intermediates[Key("y", ctx.path)] = dJ_dy
        return LayerGradients(dJ_dx, params, intermediates)

    def noise_of(self, cache: AttentionCache, path: tuple[int, ...]) -> dict[tuple[int, ...], Tensor]:
        return {} if cache.mask is None else {path: cache.mask}

    # ---- second order ---------------------------------------------------------------------------
    def softmax_tangent(self, P: Tensor, RS: Tensor) -> Tensor:
        """R{P} = P o (R{S} - rowsum(P o R{S})) (R5): the softmax's Jacobian diag(P) - P P^T is
        symmetric, so its product with R{S} is (A5)'s line applied to R{S}. Overwrites RS."""
        return softmax_backward(P, RS, overwrite=True)  # (b, nh, T, T)

    def _probabilities_of(self, cache: AttentionCache, part: slice, q: Tensor, k: Tensor) -> Tensor:
        """P of the sequences ``part``: kept by a teaching forward pass, rebuilt otherwise (A3-A5)."""
        return cache.P[part] if cache.P is not None else self.rebuilt_probabilities(q, k)  # (b, nh, T, T)

    def tangent(
        self, x: Tensor, Rx: Tensor | None, out: Tensor, cache: AttentionCache, V: Params, path: tuple[int, ...]
    ) -> LayerTangent:
        B, T, _ = x.shape
        scale, keep = 1.0 / math.sqrt(self.hs), 1.0 / (1.0 - self.p)
        b_qkv, b_o = ("b_qkv" in self.params), ("b_o" in self.params)
        # (R1) R{[q k v]} = R{x} W_qkv^T + x V_qkv^T + V_bqkv   (B, T, 3d)
        Rqkv = linear_tangent(x, Rx, self.params["W_qkv"], V(path, "W_qkv"), V(path, "b_qkv") if b_qkv else None)
        RP = torch.empty(B, self.n_head, T, T, dtype=x.dtype, device=x.device)  # (B, nh, T, T)
        Ry = torch.empty_like(cache.y)  # (B, T, d)
        # R{S} and products of a few sequences
        for part in chunks(B, 3 * self.n_head * T * T * x.element_size(), device=x.device):
            q, k, v = self.heads(cache.qkv[part])  # (b, nh, T, hs) each
            Rq, Rk, Rv = self.heads(Rqkv[part])  # (b, nh, T, hs) each
            P = self._probabilities_of(cache, part, q, k)  # (b, nh, T, T)
            RS = (Rq @ k.transpose(-2, -1)).add_(q @ Rk.transpose(-2, -1)).mul_(scale)  # (R3) R{S}   (b, nh, T, T)
            RP[part] = self.softmax_tangent(P, RS)  # (R5) R{P} = P o (R{S} - rowsum(P o R{S}))
            del RS
            RP_tilde, P_tilde = RP[part], P
            if cache.mask is not None:
                mask = cache.mask[part]
                RP_tilde, P_tilde = RP_tilde * mask * keep, P * mask * keep  # (R6) R{P~} = R{P} o m / (1 - p)
            RY = (RP_tilde @ v).add_(P_tilde @ Rv)  # (R7) R{Y} = R{P~} v + P~ R{v}   (b, nh, T, hs)
            Ry[part] = self.merge_heads(RY)  # (b, T, d)
        # (R9) R{out} = R{y} W_o^T + y V_o^T + V_bo   (B, T, d)
        Rout = linear_tangent(cache.y, Ry, self.params["W_o"], V(path, "W_o"), V(path, "b_o") if b_o else None)
        Rq, Rk, Rv = self.heads(Rqkv)  # (B, nh, T, hs) each, views
        shown = {"q": Rq, "k": Rk, "v": Rv, "att": RP, "y": Ry}
        return LayerTangent(Rout, AttentionTangent(Rqkv, RP, Ry), {Key(kind, path): t for kind, t in shown.items()})

    def r_backward(
        self, g: Tensor, Rg: Tensor, x: Tensor, Rx: Tensor | None, out: Tensor, t: LayerTangent,
        cache: AttentionCache, V: Params, ctx: SecondContext,
    ) -> tuple[Tensor | None, LayerGradients]:  # fmt: skip
        tangent: AttentionTangent = t.cache
        first, keep_all = ctx.first, ctx.keep_intermediates
        B, T, _ = x.shape
        nh, scale, keep = self.n_head, 1.0 / math.sqrt(self.hs), 1.0 / (1.0 - self.p)
        # (A9) the output projection, its R by Linear's rules: dJ/dy = g W_o, R{dJ/dy} = R{g} W_o + [1] g V_o
        W_o, V_o = self.params["W_o"], V(ctx.path, "W_o")
        bias_o = "b_o" in self.params
        dJ_dy, R9 = linear_r_backward(g, Rg, cache.y, tangent.Ry, W_o, V_o, ctx.inner(ctx.path), bias=bias_o)
        assert dJ_dy is not None and R9.dJ_dx is not None
        R_dy = R9.dJ_dx  # (B, T, d)
        params = {"W_o": R9.params["W"], **({"b_o": R9.params["b"]} if bias_o else {})}
        dJ_dqkv, R_dqkv = torch.empty_like(cache.qkv), torch.empty_like(cache.qkv)  # (B, T, 3d) each
        kept = {kind: torch.empty(B, nh, T, T if kind == "att" else self.hs, dtype=x.dtype, device=x.device)
                for kind in ("att", "q", "k", "v")} if keep_all else {}  # fmt: skip
        # the T x T temporaries of a few sequences
        for part in chunks(B, 6 * nh * T * T * x.element_size(), device=x.device):
            q, k, v = (t.contiguous() for t in self.heads(cache.qkv[part]))  # (b, nh, T, hs) each
            Rq, Rk, Rv = (t.contiguous() for t in self.heads(tangent.Rqkv[part]))  # (b, nh, T, hs) each
            dJ_dY = self.split_heads(dJ_dy[part]).contiguous()  # (A8) (b, nh, T, hs)
            R_dY = self.split_heads(R_dy[part]).contiguous()  # R{dJ/dY}   (b, nh, T, hs)
            P, RP = self._probabilities_of(cache, part, q, k), tangent.RP[part]  # (b, nh, T, T) each
            mask = None if cache.mask is None else cache.mask[part]
            P_tilde = P if mask is None else P * mask * keep  # (b, nh, T, T)
            # (A7) dJ/dv = P~^T dJ/dY:  R{dJ/dv} = P~^T R{dJ/dY} + [1] R{P~}^T dJ/dY
            dJ_dv = P_tilde.transpose(-2, -1) @ dJ_dY  # (b, nh, T, hs)
            R_dv = P_tilde.transpose(-2, -1) @ R_dY  # (b, nh, T, hs)
            del P_tilde
            if first:
                RP_tilde = RP if mask is None else RP * mask * keep  # (R6)
                R_dv.add_(RP_tilde.transpose(-2, -1) @ dJ_dY, alpha=first)
                del RP_tilde
            # (A7) dJ/dP~ = dJ/dY v^T:  R{dJ/dP~} = R{dJ/dY} v^T + [1] dJ/dY R{v}^T
            dJ_dP = dJ_dY @ v.transpose(-2, -1)  # (b, nh, T, T)
            R_dP = R_dY @ v.transpose(-2, -1)  # (b, nh, T, T)
            if first:
                R_dP.add_(dJ_dY @ Rv.transpose(-2, -1), alpha=first)
            if mask is not None:  # (A6) dJ/dP = dJ/dP~ o m / (1 - p), and its R alike
                dJ_dP.mul_(mask).mul_(keep)
                R_dP.mul_(mask).mul_(keep)
            if keep_all:
                kept["att"][part] = R_dP
            # (A5) dJ/dS = P o c with c = dJ/dP - rowsum(dJ/dP o P):
            # R{dJ/dS} = P o (R{dJ/dP} - rowsum(R{dJ/dP} o P)) + [1] (R{P} o c - P o rowsum(dJ/dP o R{P}))
            c = dJ_dP - (dJ_dP * P).sum(dim=-1, keepdim=True)  # (b, nh, T, T)
            R_dS = self.softmax_backward(P, R_dP, overwrite=True)  # (b, nh, T, T)
            if first:
                R_dS.addcmul_(RP, c, value=first).addcmul_(P, (dJ_dP * RP).sum(dim=-1, keepdim=True), value=-first)
            dJ_dS = c.mul_(P)  # dJ/dS = P o c   (b, nh, T, T)
            del c, dJ_dP, R_dP, P, RP
            # (A3) dJ/dq = dJ/dS k s, dJ/dk = dJ/dS^T q s  (s = 1/sqrt(hs)):
            # R{dJ/dq} = (R{dJ/dS} k + [1] dJ/dS R{k}) s ;  R{dJ/dk} = (R{dJ/dS}^T q + [1] dJ/dS^T R{q}) s
            dJ_dq, dJ_dk = self.scores_backward(dJ_dS, q, k)  # (b, nh, T, hs) each
            R_dq, R_dk = self.scores_backward(R_dS, q, k)  # (b, nh, T, hs) each
            if first:
                R_dq.add_(dJ_dS @ Rk, alpha=first * scale)
                R_dk.add_(dJ_dS.transpose(-2, -1) @ Rq, alpha=first * scale)
            del dJ_dS, R_dS
            # (A1, A2) the heads merged back, q's, k's and v's side by side
            torch.cat([self.merge_heads(t) for t in (dJ_dq, dJ_dk, dJ_dv)], dim=2, out=dJ_dqkv[part])
            torch.cat([self.merge_heads(t) for t in (R_dq, R_dk, R_dv)], dim=2, out=R_dqkv[part])
            if keep_all:
                kept["q"][part], kept["k"][part], kept["v"][part] = R_dq, R_dk, R_dv
        # (A1) the packed projection, by Linear's rules: (H v)_W_qkv = sum_rows R{dJ/d[qkv]}^T x
        # + [1] dJ/d[qkv]^T R{x} ;  R{dJ/dx} = R{dJ/d[qkv]} W_qkv + [1] dJ/d[qkv] V_qkv
        bias, W_qkv, V_qkv = "b_qkv" in self.params, self.params["W_qkv"], V(ctx.path, "W_qkv")
        dJ_dx, R1 = linear_r_backward(dJ_dqkv, R_dqkv, x, Rx, W_qkv, V_qkv, ctx, bias=bias)
        params["W_qkv"] = R1.params["W"]
        if bias:
            params["b_qkv"] = R1.params["b"]
        intermediates = {Key(kind, ctx.path): t for kind, t in kept.items()}
        if keep_all:
            intermediates[Key("y", ctx.path)] = R_dy
        return dJ_dx, LayerGradients(R1.dJ_dx, params, intermediates)

    def release(self, cache: AttentionCache) -> None:
        cache.qkv = cache.y = torch.empty(0)
        cache.mask = cache.P = None

    # ---- the oracle ---------------------------------------------------------------------------
    def torch_forward(
        self, x: Tensor, p: Params, noise: Mapping[tuple[int, ...], Tensor], tap: Tap, path: tuple[int, ...]
    ) -> Tensor:
        """The same map from torch.nn.functional: F.linear, F.softmax on masked scores (explicit,
        so that the probabilities can be reported and dropped with refbp's own mask)."""
        d, nh, hs = self.d, self.n_head, self.hs
        B, T, _ = x.shape
        b_qkv = p(path, "b_qkv") if "b_qkv" in self.params else None
        q, k, v = F.linear(x, p(path, "W_qkv"), b_qkv).split(d, dim=2)  # (B, T, d) each
        q, k, v = (t.reshape(B, T, nh, hs).permute(0, 2, 1, 3) for t in (q, k, v))  # (B, nh, T, hs)
        q = tap.intermediate(Key.at("q", path), q)
        k = tap.intermediate(Key.at("k", path), k)
        v = tap.intermediate(Key.at("v", path), v)
        future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(diagonal=1)
        S = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(hs)  # (B, nh, T, T)
        P = tap.intermediate(Key.at("att", path), F.softmax(S.masked_fill(future, float("-inf")), dim=-1))
        if self.stochastic:
            P = P * noise[path].to(P.dtype) / (1.0 - self.p)
        y = torch.matmul(P, v).permute(0, 2, 1, 3).reshape(B, T, d)  # (B, T, d)
        y = tap.intermediate(Key.at("y", path), y)
        return F.linear(y, p(path, "W_o"), p(path, "b_o") if "b_o" in self.params else None)

    def to_torch(self) -> torch.nn.Module:
        W_o = self.params["W_o"]
        module = TorchCausalSelfAttention(
            self.d, self.n_head, bias="b_qkv" in self.params, dropout=self.p, dtype=W_o.dtype, device=W_o.device
        )
        with torch.no_grad():
            module.c_attn.weight.copy_(self.params["W_qkv"])
            module.c_proj.weight.copy_(W_o)
            if "b_qkv" in self.params:
                module.c_attn.bias.copy_(self.params["b_qkv"])
            if "b_o" in self.params:
                module.c_proj.bias.copy_(self.params["b_o"])
        module.train(self.training)
        return module


class TorchCausalSelfAttention(torch.nn.Module):
    """The same layer as a torch module with nanoGPT's names (c_attn, c_proj): what
    ``CausalSelfAttention.to_torch()`` gives. Without an active dropout it is computed by
    F.scaled_dot_product_attention (is_causal=True); in training mode with p > 0 by the explicit
    masked softmax, whose probabilities go through the module ``attn_dropout`` (nanoGPT's
    non-flash path), so that a forward hook there can apply refbp's masks (tests do). Its dropout
    draws torch's own masks, not refbp's."""

    def __init__(
        self,
        n_embd: int,
        n_head: int,
        *,
        bias: bool = True,
        dropout: float = 0.0,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.c_attn = torch.nn.Linear(n_embd, 3 * n_embd, bias=bias, dtype=dtype, device=device)
        self.c_proj = torch.nn.Linear(n_embd, n_embd, bias=bias, dtype=dtype, device=device)
        self.attn_dropout = torch.nn.Dropout(dropout)  # (A6) on the probabilities; no parameters
        self.n_head, self.n_embd, self.dropout = n_head, n_embd, dropout

    def forward(self, x: Tensor) -> Tensor:
        B, T, d = x.shape
        q, k, v = self.c_attn(x).split(d, dim=2)
        q, k, v = (t.view(B, T, self.n_head, d // self.n_head).transpose(1, 2) for t in (q, k, v))
        if self.training and self.dropout > 0:
            S = (q @ k.transpose(-2, -1)) / math.sqrt(d // self.n_head)  # (B, nh, T, T)
            future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(diagonal=1)
            P = F.softmax(S.masked_fill(future, float("-inf")), dim=-1)  # (B, nh, T, T)
            y = self.attn_dropout(P) @ v  # (B, nh, T, hs)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, d))
