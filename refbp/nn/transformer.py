"""The pre-LayerNorm transformer block (nanoGPT's Block), forward and backward by hand.

For x of shape (B, T, d), with sub-layer j of the block at path (l, j):

    (B1) a(l,1) = ln_1(x)                        LayerNorm                 (B, T, d)
    (B2) a(l,2) = attn(a(l,1))                   CausalSelfAttention       (B, T, d)
    (B3) a(l,3) = dropout(a(l,2))                attention's residual dropout
    (B4) r      = x + a(l,3)                     the residual stream, "resid" (B, T, d)
    (B5) a(l,4) = ln_2(r)                        LayerNorm                 (B, T, d)
    (B6) a(l,5) = a(l,4) W_fc^T + b_fc           mlp.c_fc: the MLP hidden  (B, T, 4d)
    (B7) a(l,6) = GELU(a(l,5))                   z Phi(z), or its tanh form (B, T, 4d)
    (B8) a(l,7) = a(l,6) W_proj^T + b_proj       mlp.c_proj                (B, T, d)
    (B9) a(l,8) = dropout(a(l,7))                the MLP's dropout
    (B10) y     = r + a(l,8)                     the block's output a(l)   (B, T, d)

GELU is nanoGPT's exact z Phi(z) (``gelu="exact"``, torch.nn.GELU()) or minGPT's NewGELU,
1/2 z (1 + tanh(sqrt(2/pi) (z + 0.044715 z^3))) (``gelu="tanh"``, torch.nn.GELU("tanh")).

and back, each sub-layer's own backward in reverse order; the two residual connections add
their skip paths:

    dJ/dr = dJ/dy + (dJ/dr through the MLP: B9 .. B5)                           (B10)
    dJ/dx = dJ/dr + (dJ/dx through attention: B3 .. B1)                          (B4)

**What the block keeps.** In the teaching mode (``keep_intermediates``) every a(l,j). In a
training step only what a backward pass reads: the inputs of ln_1 (x itself, kept by the
caller), attn, ln_2, c_fc and GELU, and the sub-layers' own caches; c_proj's input GELU(a(l,5))
is rebuilt for its backward (REBUILT), and the outputs of attention, c_proj and the dropouts
are not kept. The LayerNorms keep their row statistics only (``RowLayerNorm``), attention no
T x T probabilities. With ``release_cache`` each sub-layer's cache is dropped once its backward
has run, as autograd frees its saved tensors.

**Second order** (refbp.nn.second_order). The block adds nothing but two skip paths, so its
rules are its sub-layers' own (``tangent``, ``r_backward``) run in the same order as its
passes, with the skips differentiated along v:

    R{r} = R{x} + R{a(l,3)} ;  R{y} = R{r} + R{a(l,8)}                           (B4, B10)
    R{dJ/dr} = R{dJ/dy} + (R{dJ/dr} through the MLP: B9 .. B5)                   (B10)
    R{dJ/dx} = R{dJ/dr} + (R{dJ/dx} through attention: B3 .. B1)                 (B4)

RowLayerNorm's own rules are in its docstring. The R-operator reads the teaching cache
(every a(l,j), ``keep_intermediates=True``), as refbp.nn.second_order's forward pass keeps it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .attention import CausalSelfAttention, TorchCausalSelfAttention
from .chunks import chunks
from .dropout import Dropout
from .elementwise import Elementwise
from .keys import Key
from .layer import BackwardContext, ForwardContext, Layer, LayerGradients, LayerTangent, Params, SecondContext, Tap
from .layernorm import LayerNorm, accumulation_dtype, lean_dtype
from .linear import Linear
from .validation import check_seed, derived_seed, describe

__all__ = [
    "GELU_FORMS",
    "Block",
    "BlockCache",
    "BlockTangent",
    "RowLayerNorm",
    "RowStats",
    "RowTangent",
    "TorchBlock",
    "TorchMLP",
    "gelu_form",
]

GELU_FORMS: dict[str, str] = {"exact": "gelu", "tanh": "gelu_tanh"}
"""A block's GELU -> the activation of refbp.nn.activations computing it: the exact z Phi(z)
(nanoGPT's torch.nn.GELU()) or the tanh approximation (minGPT's NewGELU, GPT-2's)."""

_TORCH_APPROXIMATE = {"exact": "none", "tanh": "tanh"}
"""A GELU form -> torch.nn.GELU's ``approximate`` for it."""


def gelu_form(value: object, *, argument: str = "gelu") -> str:
    """``value`` checked as a GELU form, "exact" or "tanh"; a ValueError naming it otherwise."""
    if not isinstance(value, str) or value not in GELU_FORMS:
        raise ValueError(
            f"{argument}={value!r}; expected 'exact' (z Phi(z), nanoGPT's) or 'tanh' (the tanh approximation, "
            "minGPT's NewGELU)"
        )
    return value


# ---- LayerNorm as a transformer keeps it ----------------------------------------------------
@dataclass
class RowStats:
    """What RowLayerNorm's backward needs besides x: mu and rstd, (..., 1) each, in the dtype the
    layer computes in (the accumulation dtype, or a training step's ``lean_dtype``)."""

    mu: Tensor
    rstd: Tensor


@dataclass
class RowTangent:
    """What RowLayerNorm's R-backward reads again from its tangent pass, in the accumulation
    dtype: xhat (M, d) rebuilt, R{xhat} (M, d) and rho = R{rstd} / rstd (M, 1)."""

    xhat: Tensor
    R_xhat: Tensor
    rho: Tensor


class RowLayerNorm(LayerNorm):
    """torch.nn.LayerNorm(d) keeping only the row statistics mu and rstd (one number each per
    row) for the backward pass, as torch's own kernel does.

        mu = mean_k x_k ;  rstd = 1 / sqrt(mean_k (x_k - mu)^2 + eps) ;  xhat = (x - mu) rstd
        y  = gamma o xhat + beta
        dJ/dgamma = sum_rows dJ/dy o xhat ;  dJ/dbeta = sum_rows dJ/dy ;  dJ/dxhat = dJ/dy o gamma
        dJ/dx = rstd (dJ/dxhat - mean_k(dJ/dxhat) - xhat mean_k(dJ/dxhat o xhat))

    The equations, and the float64 accumulation for float32 and below (``accumulation_dtype``),
    are refbp.nn.layernorm's: in a short row the three terms of dJ/dx cancel (in a row of two
    entries dJ/dx is a multiple of 1 - var rstd^2, a few 1e-5), and float32 statistics or
    arithmetic would keep only their first digits. What differs is the cache, for a training
    step's memory: mu and rstd, and xhat rebuilt from x in the backward pass. x is kept anyway
    (it is the residual stream); xhat would be one more (B, T, d) tensor per LayerNorm, in
    float64, where autograd keeps none.

    That is the teaching view's and the checks' precision (``keep_intermediates=True``). A
    training step (``keep_intermediates=False``) runs the same lines in x's dtype (``lean_dtype``:
    float32 for float32, as torch's kernel computes), as the standalone LayerNorm's lean mode does:
    equal to the float64 path to float32's rounding in ordinary rows (tests/test_lean.py), the
    cancellation of near-constant rows left to that rounding. It took the 4-layer GPT's step from
    1.32x to 1.19x autograd's time at n_embd 128, T 64 (1.11-1.22x to 1.09-1.20x at the other sizes
    of benchmarks/gpt.py, measured side by side).

    Second order, R{.} along V_gamma, V_beta and R{x}, per row (mean(xhat) = 0 shortens R{rstd}):

        (N1) R{rstd} = -rstd^3 mean_k((x_k - mu) R{x_k}) = rho rstd,   rho = -rstd mean_k(xhat o R{x})
        (N2) R{xhat} = rstd (R{x} - mean_k R{x}) + rho xhat
        (N3) R{y}    = gamma o R{xhat} + V_gamma o xhat + V_beta
        and back, with g = dJ/dy, gx = dJ/dxhat = g o gamma, m = mean_k(gx o xhat), [1] as in
        refbp.nn.attention (dropped for Gauss-Newton):
        (N4) R{gx}   = R{g} o gamma + [1] g o V_gamma
        (N5) (H v)_gamma = sum_rows R{g} o xhat + [1] g o R{xhat} ;  (H v)_beta = sum_rows R{g}
        (N6) R{dJ/dx} = rstd (R{gx} - mean_k R{gx} - xhat mean_k(R{gx} o xhat))
                        + [1] (rho dJ/dx - rstd (R{xhat} m + xhat mean_k(gx o R{xhat})))

    computed in the accumulation dtype, as the backward pass, and rounded once."""

    title = "LayerNorm"

    def cached_values(self, cache: RowStats, path: tuple[int, ...]) -> dict[Key, Tensor]:
        return {}  # xhat is not kept (it is rebuilt in the backward pass): the walk shows y only

    # the cache is RowStats, not the NormCache of LayerNorm: an override by design
    def forward(self, x: Tensor, ctx: ForwardContext, path: tuple[int, ...]) -> tuple[Tensor, RowStats]:
        # float64 for float32 and below in the teaching view and the checks; a training step's in x's dtype
        acc = accumulation_dtype(x.dtype) if ctx.keep_intermediates else lean_dtype(x.dtype)
        d = self.d
        rows = x.reshape(-1, d)  # (M, d)
        y = torch.empty_like(rows)  # (M, d)
        mu = torch.empty(rows.shape[0], 1, dtype=acc, device=x.device)  # (M, 1)
        rstd = torch.empty_like(mu)  # (M, 1)
        for part in chunks(rows.shape[0], d * mu.element_size(), device=x.device):
            torch.mean(rows[part], dim=-1, keepdim=True, dtype=acc, out=mu[part])  # mu   (m, 1)
            centred = torch.sub(rows[part], mu[part])  # x - mu, in the accumulation dtype   (m, d)
            norm = torch.linalg.vector_norm(centred, dim=-1, keepdim=True)  # sqrt(sum_k (x_k - mu)^2)
            rstd[part] = norm.square_().div_(d).add_(self.eps).rsqrt_()  # rstd = 1 / sqrt(var + eps)
            torch.mul(centred, rstd[part], out=y[part])  # xhat = (x - mu) rstd, rounded to x's dtype
        gamma, beta = self.params.get("gamma"), self.params.get("beta")
        if gamma is not None:
            y = y.mul_(gamma) if beta is None else torch.addcmul(beta, y, gamma, out=y)  # gamma o xhat + beta
        shape = (*x.shape[:-1], 1)
        return y.view(x.shape), RowStats(mu.view(shape), rstd.view(shape))

    def backward(self, dJ_dy: Tensor, x: Tensor, out: Tensor, cache: RowStats, ctx: BackwardContext) -> LayerGradients:
        d, acc = self.d, cache.rstd.dtype  # the accumulation dtype
        rows_x, rows_g = x.reshape(-1, d), dJ_dy.reshape(-1, d)  # (M, d) each
        mu, rstd = cache.mu.reshape(-1, 1), cache.rstd.reshape(-1, 1)  # (M, 1) each
        gamma = self.params.get("gamma")
        gamma_a = None if gamma is None else gamma.to(acc)
        dJ_dgamma = torch.zeros(d, dtype=acc, device=x.device)  # sum_rows dJ/dy o xhat, chunk by chunk
        dJ_dx = torch.empty_like(rows_x) if ctx.need_dx else None  # (M, d)
        # (float32 operands meet float64 ones: torch computes in float64, without a separate copy)
        for part in chunks(rows_x.shape[0], 3 * d * rstd.element_size(), device=rstd.device):
            xhat = torch.sub(rows_x[part], mu[part]).mul_(rstd[part])  # xhat rebuilt from x   (m, d)
            g_xhat = torch.mul(rows_g[part], xhat)  # dJ/dy o xhat   (m, d)
            dJ_dgamma += g_xhat.sum(dim=0)
            if dJ_dx is None:
                continue
            if gamma_a is None:  # dJ/dxhat = dJ/dy
                mean_gx = g_xhat.mean(dim=-1, keepdim=True)  # mean_k dJ/dxhat o xhat   (m, 1)
                dJ_dxhat = rows_g[part].to(acc, copy=True)  # (m, d)
            else:
                # mean_k dJ/dxhat o xhat = (dJ/dy o xhat) gamma / d: a matrix-vector product
                mean_gx = (g_xhat @ gamma_a).unsqueeze_(-1).div_(d)  # (m, 1)
                dJ_dxhat = torch.mul(rows_g[part], gamma_a)  # dJ/dxhat = dJ/dy o gamma   (m, d)
            del g_xhat
            mean_g = dJ_dxhat.mean(dim=-1, keepdim=True)  # mean_k dJ/dxhat   (m, 1)
            # dJ/dx = rstd (dJ/dxhat - mean_k(dJ/dxhat) - xhat mean_k(dJ/dxhat o xhat)), rounded to x's dtype
            torch.mul(dJ_dxhat.sub_(mean_g).sub_(xhat.mul_(mean_gx)), rstd[part], out=dJ_dx[part])
        params: dict[str, Tensor] = {}
        if gamma is not None:
            params["gamma"] = dJ_dgamma.to(dJ_dy.dtype)  # dJ/dgamma = sum_rows dJ/dy o xhat   (d,)
            if "beta" in self.params:
                params["beta"] = rows_g.sum(dim=0)  # dJ/dbeta = sum_rows dJ/dy   (d,)
        kept: dict[Key, Tensor] = {}
        if ctx.keep_intermediates:
            kept[Key("xhat", ctx.path)] = dJ_dy * gamma if gamma is not None else dJ_dy.clone()
        return LayerGradients(None if dJ_dx is None else dJ_dx.view(x.shape), params, kept)

    def release(self, cache: RowStats) -> None:
        cache.mu = cache.rstd = torch.empty(0)

    # ---- second order ---------------------------------------------------------------------------
    def tangent(
        self, x: Tensor, Rx: Tensor | None, out: Tensor, cache: RowStats, V: Params, path: tuple[int, ...]
    ) -> LayerTangent:
        assert Rx is not None
        d, acc = self.d, cache.rstd.dtype  # the accumulation dtype
        rows, R_rows = x.reshape(-1, d).to(acc), Rx.reshape(-1, d).to(acc)  # (M, d) each
        mu, rstd = cache.mu.reshape(-1, 1), cache.rstd.reshape(-1, 1)  # (M, 1) each
        xhat = (rows - mu).mul_(rstd)  # xhat rebuilt from x   (M, d)
        rho = _row_mean(xhat * R_rows).mul_(rstd).neg_()  # (N1) rho = R{rstd} / rstd   (M, 1)
        R_xhat = (R_rows - _row_mean(R_rows)).mul_(rstd).addcmul_(xhat, rho)  # (N2)   (M, d)
        Ry = R_xhat
        if "gamma" in self.params:
            # (N3) R{y} = gamma o R{xhat} + V_gamma o xhat + V_beta   (M, d)
            Ry = R_xhat * self.params["gamma"].to(acc) + xhat * V(path, "gamma").to(acc)
            if "beta" in self.params:
                Ry += V(path, "beta").to(acc)
        shown = {Key("xhat", path): R_xhat.to(x.dtype).view(x.shape)}
        return LayerTangent(Ry.to(x.dtype).view(x.shape), RowTangent(xhat, R_xhat, rho), shown)

    def r_backward(
        self, g: Tensor, Rg: Tensor, x: Tensor, Rx: Tensor | None, out: Tensor, t: LayerTangent, cache: RowStats,
        V: Params, ctx: SecondContext,
    ) -> tuple[Tensor | None, LayerGradients]:  # fmt: skip
        tangent: RowTangent = t.cache
        xhat, R_xhat, rho = tangent.xhat, tangent.R_xhat, tangent.rho  # (M, d), (M, d), (M, 1)
        d, acc, first = self.d, xhat.dtype, ctx.first
        rstd = cache.rstd.reshape(-1, 1)  # (M, 1)
        G, RG = g.reshape(-1, d).to(acc), Rg.reshape(-1, d).to(acc)  # dJ/dy, R{dJ/dy}   (M, d) each
        params: dict[str, Tensor] = {}
        gx, R_gx = G, RG  # dJ/dxhat = dJ/dy without gamma
        if "gamma" in self.params:
            gamma = self.params["gamma"].to(acc)  # (d,)
            gx, R_gx = G * gamma, RG * gamma  # (N4) dJ/dxhat = g o gamma,  R{g} o gamma   (M, d)
            if first:
                R_gx.addcmul_(G, V(ctx.path, "gamma").to(acc), value=first)  # + [1] g o V_gamma
            H_gamma = (RG * xhat).sum(dim=0)  # (N5) sum_rows R{g} o xhat   (d,)
            if first:
                H_gamma.add_((G * R_xhat).sum(dim=0), alpha=first)  # + [1] sum_rows g o R{xhat}
            params["gamma"] = H_gamma.to(g.dtype)
            if "beta" in self.params:
                params["beta"] = Rg.reshape(-1, d).sum(dim=0)  # (H v)_beta = sum_rows R{g}   (d,)
        kept: dict[Key, Tensor] = {}
        if ctx.keep_intermediates:
            kept[Key("xhat", ctx.path)] = R_gx.to(g.dtype).view(x.shape)  # R{dJ/dxhat}
        if not ctx.need_dx:
            return None, LayerGradients(None, params, kept)
        m = _row_mean(gx * xhat)  # m = mean_k(dJ/dxhat o xhat)   (M, 1)
        dJ_dx = (gx - _row_mean(gx)).addcmul_(xhat, m, value=-1.0).mul_(rstd)  # the backward's dJ/dx   (M, d)
        # (N6) the backward's line applied to R{gx} ...
        R_dx = (R_gx - _row_mean(R_gx)).addcmul_(xhat, _row_mean(R_gx * xhat), value=-1.0).mul_(rstd)
        if first:  # ... + [1] (rho dJ/dx - rstd (R{xhat} m + xhat mean_k(gx o R{xhat})))
            curve = (R_xhat * m).addcmul_(xhat, _row_mean(gx * R_xhat)).mul_(rstd)  # (M, d)
            R_dx.addcmul_(rho, dJ_dx, value=first).sub_(curve, alpha=first)
        return dJ_dx.to(g.dtype).view(x.shape), LayerGradients(R_dx.to(g.dtype).view(x.shape), params, kept)


def _row_mean(t: Tensor) -> Tensor:
    """mean_k t_k of each row, (M, d) -> (M, 1), as a sum times 1/d: torch's mean kernel takes
    about 4 times as long as its sum on rows of this size (CPU, 128 x 64 float64: 20 against 5 us),
    and the R-operator of a LayerNorm takes seven row means."""
    return t.sum(dim=-1, keepdim=True).mul_(1.0 / t.shape[-1])


# ---- the block ------------------------------------------------------------------------------
@dataclass
class BlockCache:
    """What a block's forward pass keeps.

    Attributes:
        a: a[j] = sub-layer j's output (a[0] unused: the block's input is the caller's); None
            where no backward reads it (a training step).
        saved: saved[j] = sub-layer j's own cache.
        resid: r = x + a(l,3), the residual stream between the two halves (B, T, d).
    """

    a: list[Tensor | None]
    saved: list[Any]
    resid: Tensor


_RELEASED = torch.empty(0)
"""What a released tensor of the cache holds: no data."""

ATTENTION_HALF = (1, 2, 3)
"""The sub-layers of the first residual branch: ln_1, attn, attention's dropout."""

MLP_HALF = (4, 5, 6, 7, 8)
"""The sub-layers of the second: ln_2, c_fc, GELU, c_proj, dropout."""

READ_BY_BACKWARD = {1, 4, 5}
"""The a(l,j) a training step keeps for some backward pass, which reads it as its input: attn
reads a(l,1), c_fc a(l,4), GELU a(l,5). ln_1 reads x and ln_2 r, kept apart; the dropouts read
their masks; c_proj's input a(l,6) is rebuilt (REBUILT)."""

REBUILT = {6: 5}
"""a(l,6) = GELU(a(l,5)), c_proj's input, is not kept in a training step: c_proj's backward gets
it from GELU's forward on a(l,5) again, one pass of torch's GELU kernel. Keeping it would make
the MLP keep 8 activations per position (4d each for a(l,5) and a(l,6)), as autograd does."""


@dataclass
class BlockTangent:
    """What a block's tangent pass keeps for its R-backward.

    Attributes:
        Ra: Ra[j] = R{a(l,j)}, sub-layer j's output tangent (Ra[0] unused: R{x} is the caller's).
        layers: layers[j] = sub-layer j's LayerTangent.
        Rresid: R{r} = R{x} + R{a(l,3)} (B4).
    """

    Ra: list[Tensor | None]
    layers: list[LayerTangent | None]
    Rresid: Tensor


class Block(Layer):
    """x + attn(ln_1(x)), then + mlp(ln_2(.)): nanoGPT's Block, with nanoGPT's names.

    Args:
        ln_1, ln_2: the LayerNorms (RowLayerNorm; a plain LayerNorm is converted).
        attn: the attention layer.
        c_fc: (4d <- d) Linear;  c_proj: (d <- 4d) Linear.
        dropout: p of the residual dropouts after attention and after the MLP (minGPT's
            resid_pdrop; the attention layer has its own, on the probabilities: attn_pdrop).
        seed: seeds the two dropouts' masks.
        gelu: the MLP's GELU, "exact" (z Phi(z)) or "tanh" (GELU_FORMS).
    """

    title = "Block"

    def __init__(
        self,
        ln_1: LayerNorm,
        attn: CausalSelfAttention,
        ln_2: LayerNorm,
        c_fc: Linear,
        c_proj: Linear,
        *,
        dropout: float = 0.0,
        seed: int = 0,
        gelu: str = "exact",
    ) -> None:
        d = attn.d
        self.gelu = gelu_form(gelu)
        for name, layer, kind in (("ln_1", ln_1, LayerNorm), ("ln_2", ln_2, LayerNorm), ("c_fc", c_fc, Linear),
                                  ("c_proj", c_proj, Linear)):  # fmt: skip
            if not isinstance(layer, kind):
                raise TypeError(f"{name} must be a refbp {kind.__name__}, got {type(layer).__name__}")
        for name, norm in (("ln_1", ln_1), ("ln_2", ln_2)):
            if norm.d != d:
                raise ValueError(f"{name} normalises {norm.d} features; attention has n_embd = {d}")
        if c_fc.W.shape[1] != d or c_proj.W.shape != (d, c_fc.W.shape[0]):
            raise ValueError(f"c_fc ({describe(c_fc.W)}) and c_proj ({describe(c_proj.W)}) must map {d} -> h -> {d}")
        seed = check_seed(seed)
        self.inner: list[Layer] = [
            _row_norm(ln_1), attn, Dropout(dropout, seed=seed), _row_norm(ln_2), c_fc,
            Elementwise(GELU_FORMS[self.gelu]), c_proj,
            Dropout(dropout, seed=derived_seed(seed, 1, "the block's second dropout")),
        ]  # fmt: skip
        self.params = {}
        self.training = True

    @property
    def d(self) -> int:
        return self.attn.d

    @property
    def attn(self) -> CausalSelfAttention:
        layer = self.inner[1]
        assert isinstance(layer, CausalSelfAttention)
        return layer

    def sublayers(self) -> list[Layer]:
        return self.inner

    @property
    def intermediates(self) -> tuple[str, ...]:
        return ("resid",)

    def keys(self, path: tuple[int, ...]) -> list[Key]:
        """Every sub-layer's keys at (l, j), the residual stream r, and the output a(l)."""
        sub = [key for j, layer in enumerate(self.inner, start=1) for key in layer.keys((*path, j))]
        return [*sub, Key("resid", path), Key("a", path)]

    def describe(self) -> str:
        attn = self.attn
        bias = "" if "b_qkv" in attn.params else ", no bias"
        p = self.inner[2]
        drop = f", dropout {p.p:g}" if isinstance(p, Dropout) and p.p > 0 else ""
        act = ", tanh GELU" if self.gelu == "tanh" else ""
        return f"Block({attn.d}, {attn.n_head} heads{bias}{drop}{act})"

    def equations(self) -> tuple[str, str]:
        return (
            "r = x + attn(ln_1(x)) ;  y = r + c_proj(GELU(c_fc(ln_2(r))))",
            "dJ/dr = dJ/dy + dJ/dr through the MLP ;  dJ/dx = dJ/dr + dJ/dx through attention",
        )

    def check_input(self, x: Tensor, path: tuple[int, ...]) -> None:
        self.attn.check_input(x, (*path, 2))

    # ---- the manual path ---------------------------------------------------------------------
    def _run(
        self, half: tuple[int, ...], x: Tensor, cache: BlockCache, ctx: ForwardContext, path: tuple[int, ...]
    ) -> Tensor:
        """The sub-layers of one half in turn from x; fills cache.a and cache.saved."""
        for j in half:
            x, cache.saved[j] = self.inner[j - 1].forward(x, ctx, (*path, j))
            cache.a[j] = x if ctx.keep_intermediates or j in READ_BY_BACKWARD else None
        return x

    def forward(self, x: Tensor, ctx: ForwardContext, path: tuple[int, ...]) -> tuple[Tensor, BlockCache]:
        n = len(self.inner)
        cache = BlockCache(a=[None] * (n + 1), saved=[None] * (n + 1), resid=x)
        attn_out = self._run(ATTENTION_HALF, x, cache, ctx, path)  # (B1-B3) a(l,3)   (B, T, d)
        cache.resid = r = x + attn_out  # (B4) r = x + a(l,3)   (B, T, d)
        del attn_out
        mlp_out = self._run(MLP_HALF, r, cache, ctx, path)  # (B5-B9) a(l,8)   (B, T, d)
        return r + mlp_out, cache  # (B10) y = r + a(l,8)   (B, T, d)

    def _back(
        self,
        half: tuple[int, ...],
        dJ_dout: Tensor,
        x: Tensor,
        cache: BlockCache,
        ctx: BackwardContext,
        out: LayerGradients,
    ) -> Tensor:
        """The sub-layers of one half, last first, from dJ/d(the half's output), which is read
        and never overwritten (the skip path needs it too); returns dJ/d(the half's input)."""
        g, owned = dJ_dout, False  # owned: g is a tensor of this loop's, free to overwrite
        for j in reversed(half):
            path, layer = (*ctx.path, j), self.inner[j - 1]
            if ctx.keep_intermediates:
                out.intermediates[Key("a", path)] = g
            if isinstance(layer, Dropout) and not layer.stochastic:
                continue  # the identity (eval mode, p = 0): dJ/dx = dJ/dy, handed on as it is
            sub_ctx = BackwardContext(
                path=path, keep_intermediates=ctx.keep_intermediates, overwrite=owned, need_dx=True,
                weight_decay=ctx.weight_decay,
            )  # fmt: skip
            layer_input = x if j == half[0] else cache.a[j - 1]
            if layer_input is None and j - 1 in REBUILT:  # a(l,j-1) rebuilt from a(l,REBUILT[j-1])
                source = cache.a[REBUILT[j - 1]]
                assert source is not None
                layer_input, _ = self.inner[j - 2].forward(source, ForwardContext(keep_intermediates=False), path)
            grads = layer.backward(g, layer_input, cache.a[j], cache.saved[j], sub_ctx)  # type: ignore[arg-type]
            out.sub_params.update({Key(kind, path): value for kind, value in grads.params.items()})
            out.sub_params.update(grads.sub_params)
            out.intermediates.update(grads.intermediates)
            assert grads.dJ_dx is not None
            g, owned = grads.dJ_dx, True
            del grads
            if ctx.release:  # as autograd frees saved tensors: sub-layer j's cache, output and input
                layer.release(cache.saved[j])  # are read by no later step (no sub-layer reads its output)
                cache.saved[j] = cache.a[j] = cache.a[j - 1] = None
                if j == half[0] and half[0] > 1:
                    cache.resid = _RELEASED  # ln_2's input r
        if not owned:  # every sub-layer was the identity: dJ/dx is dJ/dy itself, which is not ours
            g = g.clone()
        return g

    def backward(
        self, dJ_dy: Tensor, x: Tensor, out: Tensor, cache: BlockCache, ctx: BackwardContext
    ) -> LayerGradients:
        grads = LayerGradients(None)
        # (B10) y = r + a(l,8): dJ/da(l,8) = dJ/dy, and dJ/dr = dJ/dy + dJ/dr through the MLP
        dJ_dr = self._back(MLP_HALF, dJ_dy, cache.resid, cache, ctx, grads).add_(dJ_dy)  # (B, T, d)
        if ctx.keep_intermediates:
            grads.intermediates[Key("resid", ctx.path)] = dJ_dr
        # (B4) r = x + a(l,3): dJ/da(l,3) = dJ/dr, and dJ/dx = dJ/dr + dJ/dx through attention
        grads.dJ_dx = self._back(ATTENTION_HALF, dJ_dr, x, cache, ctx, grads).add_(dJ_dr)  # (B, T, d)
        return grads

    # ---- second order: the sub-layers' own rules, in the order of the passes -------------------
    @property
    def has_second_order(self) -> bool:
        return all(layer.has_second_order for layer in self.inner)

    def _tangent_half(
        self, half: tuple[int, ...], x: Tensor, Rx: Tensor, cache: BlockCache, V: Params, path: tuple[int, ...],
        record: BlockTangent,
    ) -> Tensor:  # fmt: skip
        """The sub-layers of one half in turn from (x, R{x}); returns R{the half's output}."""
        h, Rh = x, Rx
        for j in half:
            out = cache.a[j]
            if out is None:
                raise ValueError(
                    f"layer {'.'.join(map(str, path))} ({self.describe()}): the R-operator reads every a(l,j); "
                    "run the forward pass with keep_intermediates=True"
                )
            t = self.inner[j - 1].tangent(h, Rh, out, cache.saved[j], V, (*path, j))  # R{a(l,j)}
            record.layers[j], record.Ra[j] = t, t.out
            h, Rh = out, t.out
        return Rh

    def tangent(
        self, x: Tensor, Rx: Tensor | None, out: Tensor, cache: BlockCache, V: Params, path: tuple[int, ...]
    ) -> LayerTangent:
        assert Rx is not None
        n = len(self.inner)
        record = BlockTangent([None] * (n + 1), [None] * (n + 1), Rx)
        R3 = self._tangent_half(ATTENTION_HALF, x, Rx, cache, V, path, record)  # R{a(l,3)}   (B, T, d)
        record.Rresid = Rr = Rx + R3  # (B4) R{r} = R{x} + R{a(l,3)}
        R8 = self._tangent_half(MLP_HALF, cache.resid, Rr, cache, V, path, record)  # R{a(l,8)}   (B, T, d)
        shown: dict[Key, Tensor] = {Key("resid", path): Rr}
        for j, t in enumerate(record.layers[1:], start=1):
            assert t is not None
            shown.update(t.intermediates)
            shown[Key("a", (*path, j))] = t.out
        return LayerTangent(Rr + R8, record, shown)  # (B10) R{y} = R{r} + R{a(l,8)}

    def _r_back_half(
        self, half: tuple[int, ...], g: Tensor, Rg: Tensor, x: Tensor, Rx: Tensor, cache: BlockCache,
        record: BlockTangent, V: Params, ctx: SecondContext, out: LayerGradients,
    ) -> tuple[Tensor, Tensor]:  # fmt: skip
        """The sub-layers' R-backward of one half, last first, from (dJ/d(its output), R{...});
        returns (dJ/d(its input), R{dJ/d(its input)}). Neither g nor R{g} is written to."""
        for j in reversed(half):
            path, layer = (*ctx.path, j), self.inner[j - 1]
            if ctx.keep_intermediates:
                out.intermediates[Key("a", path)] = Rg  # R{dJ/da(l,j)}
            h, Rh = (x, Rx) if j == half[0] else (cache.a[j - 1], record.Ra[j - 1])
            t = record.layers[j]
            assert h is not None and t is not None
            g_in, R = layer.r_backward(g, Rg, h, Rh, cache.a[j], t, cache.saved[j], V, ctx.inner(path))  # type: ignore[arg-type]
            out.sub_params.update({Key(kind, path): value for kind, value in R.params.items()})
            out.sub_params.update(R.sub_params)
            out.intermediates.update(R.intermediates)
            assert g_in is not None and R.dJ_dx is not None
            g, Rg = g_in, R.dJ_dx
        return g, Rg

    def r_backward(
        self, g: Tensor, Rg: Tensor, x: Tensor, Rx: Tensor | None, out: Tensor, t: LayerTangent, cache: BlockCache,
        V: Params, ctx: SecondContext,
    ) -> tuple[Tensor | None, LayerGradients]:  # fmt: skip
        record: BlockTangent = t.cache
        assert Rx is not None
        grads = LayerGradients(None)
        # (B10) y = r + a(l,8): dJ/dr = dJ/dy + dJ/dr through the MLP, and R{.} of both alike
        g_mlp, R_mlp = self._r_back_half(MLP_HALF, g, Rg, cache.resid, record.Rresid, cache, record, V, ctx, grads)
        dJ_dr, R_dr = g + g_mlp, Rg + R_mlp  # (B, T, d) each
        if ctx.keep_intermediates:
            grads.intermediates[Key("resid", ctx.path)] = R_dr  # R{dJ/dr}
        # (B4) r = x + a(l,3): dJ/dx = dJ/dr + dJ/dx through attention, and R{.} alike
        g_attn, R_attn = self._r_back_half(ATTENTION_HALF, dJ_dr, R_dr, x, Rx, cache, record, V, ctx, grads)
        if not ctx.need_dx:
            return None, grads
        grads.dJ_dx = R_dr + R_attn  # R{dJ/dx}   (B, T, d)
        return dJ_dr + g_attn, grads

    def cached_values(self, cache: BlockCache, path: tuple[int, ...]) -> dict[Key, Tensor]:
        out: dict[Key, Tensor] = {}
        for j, layer in enumerate(self.inner, start=1):
            out.update(layer.cached_values(cache.saved[j], (*path, j)))
            a = cache.a[j]
            if a is not None:  # kept unless a training step left it out
                out[Key("a", (*path, j))] = a
        out[Key("resid", path)] = cache.resid
        return out

    def noise_of(self, cache: BlockCache, path: tuple[int, ...]) -> dict[tuple[int, ...], Tensor]:
        out: dict[tuple[int, ...], Tensor] = {}
        for j, layer in enumerate(self.inner, start=1):
            out.update(layer.noise_of(cache.saved[j], (*path, j)))
        return out

    def release(self, cache: BlockCache) -> None:
        for j, layer in enumerate(self.inner, start=1):
            if cache.saved[j] is not None:
                layer.release(cache.saved[j])
        cache.a = [None] * len(cache.a)
        cache.saved = [None] * len(cache.saved)
        cache.resid = _RELEASED

    # ---- the oracle ---------------------------------------------------------------------------
    def torch_forward(
        self, x: Tensor, p: Params, noise: Mapping[tuple[int, ...], Tensor], tap: Tap, path: tuple[int, ...]
    ) -> Tensor:
        def half(js: tuple[int, ...], h: Tensor) -> Tensor:
            for j in js:
                h = self.inner[j - 1].torch_forward(h, p, noise, tap, (*path, j))
                h = tap.intermediate(Key.at("a", (*path, j)), h)
            return h

        r = tap.intermediate(Key("resid", path), x + half(ATTENTION_HALF, x))  # (B4)
        return r + half(MLP_HALF, r)  # (B10)

    def to_torch(self) -> torch.nn.Module:
        ln_1, attn, _, ln_2, c_fc, _, c_proj, drop = self.inner
        assert isinstance(drop, Dropout)
        module = TorchBlock(ln_1.to_torch(), attn.to_torch(), ln_2.to_torch(), c_fc.to_torch(), c_proj.to_torch(),
                            dropout=drop.p, gelu=self.gelu)  # fmt: skip
        module.train(self.training)
        return module

    def torch_param_names(self, path: tuple[int, ...]) -> dict[Key, str]:
        names = {1: "ln_1", 2: "attn", 4: "ln_2", 5: "mlp.c_fc", 7: "mlp.c_proj"}
        out: dict[Key, str] = {}
        for j, prefix in names.items():
            for key, relative in self.inner[j - 1].torch_param_names((*path, j)).items():
                rest = relative.split(".", 1)[1]  # "0.weight" -> "weight"
                out[key] = f"0.{prefix}.{rest}"
        return out


def _row_norm(norm: LayerNorm) -> RowLayerNorm:
    """``norm`` as a RowLayerNorm sharing its parameters (itself if it is one)."""
    if isinstance(norm, RowLayerNorm):
        return norm
    row = object.__new__(RowLayerNorm)
    row.__dict__.update(norm.__dict__)
    row.params = dict(norm.params)
    return row


class TorchMLP(torch.nn.Module):
    """nanoGPT's MLP: c_fc, GELU (exact or its tanh form, GELU_FORMS), c_proj, dropout."""

    def __init__(self, c_fc: torch.nn.Module, c_proj: torch.nn.Module, dropout: float, *, gelu: str = "exact") -> None:
        super().__init__()
        self.c_fc, self.c_proj, self.dropout = c_fc, c_proj, torch.nn.Dropout(dropout)
        self.gelu = torch.nn.GELU(approximate=_TORCH_APPROXIMATE[gelu_form(gelu)])

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class TorchBlock(torch.nn.Module):
    """The block as a torch module with nanoGPT's names (ln_1, attn, ln_2, mlp.c_fc, mlp.c_proj):
    what ``Block.to_torch()`` gives. ``dropout``: the residual dropouts' p (after attention and
    after the MLP); ``gelu``: the MLP's GELU form. Its dropouts draw torch's own masks."""

    def __init__(
        self,
        ln_1: torch.nn.Module,
        attn: torch.nn.Module,
        ln_2: torch.nn.Module,
        c_fc: torch.nn.Module,
        c_proj: torch.nn.Module,
        *,
        dropout: float = 0.0,
        gelu: str = "exact",
    ) -> None:
        super().__init__()
        assert isinstance(attn, TorchCausalSelfAttention)
        self.ln_1, self.attn, self.ln_2 = ln_1, attn, ln_2
        self.resid_dropout = torch.nn.Dropout(dropout)
        self.mlp = TorchMLP(c_fc, c_proj, dropout, gelu=gelu)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.resid_dropout(self.attn(self.ln_1(x)))
        return x + self.mlp(self.ln_2(x))
