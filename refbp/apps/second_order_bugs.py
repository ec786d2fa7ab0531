"""The classic bugs of second order by hand (issue 21), as twins of the right Dense layer.

Each entry is a Dense (refbp.nn.dense) whose tangent or R-backward has the one wrong line people
write, beside the right one; swapped into an MLP (refbp.apps.bug_record.swap) it changes exactly
that line. The entry's order is 2: ``refbp bugs`` checks the wrong network's H v
(``Bug.products``) with refbp.verify.second_order against the right network's references:
torch.func forward-over-reverse, double backward and differences of the gradient along v.

    R{(1)}  R{z} = R{a_prev} W^T + a_prev V_W^T + V_b           the a_prev V_W^T term missing
    R{(5)}  R{dJ/dz} = R{dJ/da} o f'(z) + dJ/da o f''(z) o R{z}  the f'' term dropped
    H v     every term of the R-backward that carries a dJ/d(.)  dropped: R applied to the loss
            gradient only, G v = J_f^T H_loss J_f v returned as H v
    R{(6)}  (H v)_W = R{dJ/dz}^T a_prev + dJ/dz^T R{a_prev}       transposed, as if the block of a
            square W were symmetric

and an equivalent variant (the block computed transposed and turned back) that no checker can
or should flag.
"""

from __future__ import annotations

from typing import Any

import torch
from hypothesis import strategies as st
from torch import Tensor

from ..nn.curvature import second_derivative
from ..nn.dense import Dense
from ..nn.keys import Key
from ..nn.layer import LayerGradients, LayerTangent, Params, SecondContext
from ..nn.linear import linear_r_backward
from ..nn.second_order import hvp
from ..verify.cases import Case
from ..verify.compare import compare
from ..verify.second_order import check_second_order, random_direction
from ..verify.tolerances import tolerance_for
from .bug_record import Bug, Rewire, swap, twin_of
from .mlp_bugs import Applies

__all__ = ["SECOND_ORDER_BUGS", "SECOND_ORDER_MODES", "second_order_flags", "second_order_matters"]

_TWICE = ("half_sse", "mse", "bce", "cross_entropy", "nll")
"""The losses torch differentiates twice (its routes are references for them)."""

_CURVED = ("tanh", "sigmoid", "softplus", "gelu", "silu", "elu")
"""Activations with f'' != 0: where the f'' term is there to drop."""


def _every(twin: type[Dense]) -> Rewire:
    """Every Dense layer swapped for its twin of class ``twin``."""
    return lambda net: swap(net, Dense, twin_of(twin))


def _mlps(**applies: Any) -> Any:
    """Small float64 MLPs (refbp.apps.mlp_bugs.Applies) with the losses torch differentiates twice."""

    def specs() -> st.SearchStrategy[Any]:
        return Applies(losses=_TWICE, **applies).specs()

    return specs


# ---- the wrong lines ---------------------------------------------------------------------
class _DenseNoSecondDerivative(Dense):
    def r_backward(
        self, g: Tensor, Rg: Tensor, x: Tensor, Rx: Tensor | None, out: Tensor, t: LayerTangent, cache: Tensor | None,
        V: Params, ctx: SecondContext,
    ) -> tuple[Tensor | None, LayerGradients]:  # fmt: skip
        _, slope = t.cache
        R_dz = Rg * slope  # wrong: R{dJ/dz} = R{dJ/da} o f'(z), without + dJ/da o f''(z) o R{z}
        g_x, R = linear_r_backward(g * slope, R_dz, x, Rx, self.W, V(ctx.path, "W"), ctx, bias=True)
        if ctx.keep_intermediates:
            R.intermediates[ctx.key("z")] = R_dz
        return g_x, R


class _DenseNoInputDirection(Dense):
    def tangent(
        self, x: Tensor, Rx: Tensor | None, out: Tensor, cache: Tensor | None, V: Params, path: tuple[int, ...]
    ) -> LayerTangent:
        right = super().tangent(x, Rx, out, cache, V, path)
        _, slope = right.cache
        Rz = V(path, "b") + (0.0 if Rx is None else Rx @ self.W.T)  # wrong: + a_prev V_W^T missing   (N, d_out)
        return LayerTangent(slope * Rz, (Rz, slope), {Key("z", path): Rz})


class _DenseLossCurvatureOnly(Dense):
    def r_backward(
        self, g: Tensor, Rg: Tensor, x: Tensor, Rx: Tensor | None, out: Tensor, t: LayerTangent, cache: Tensor | None,
        V: Params, ctx: SecondContext,
    ) -> tuple[Tensor | None, LayerGradients]:  # fmt: skip
        gauss_newton = SecondContext(ctx.path, True, ctx.need_dx, ctx.keep_intermediates, ctx.ties)
        return super().r_backward(g, Rg, x, Rx, out, t, cache, V, gauss_newton)  # wrong: every dJ/d(.) term dropped


class _DenseSymmetricBlock(Dense):
    def r_backward(
        self, g: Tensor, Rg: Tensor, x: Tensor, Rx: Tensor | None, out: Tensor, t: LayerTangent, cache: Tensor | None,
        V: Params, ctx: SecondContext,
    ) -> tuple[Tensor | None, LayerGradients]:  # fmt: skip
        g_x, R = super().r_backward(g, Rg, x, Rx, out, t, cache, V, ctx)
        R.params["W"] = R.params["W"].T  # wrong: (H v)_W transposed, as if the block were symmetric
        return g_x, R


class _DenseBlockTurnedBack(Dense):
    """Equivalent: (H v)_W^T = a_prev^T R{dJ/dz} + R{a_prev}^T dJ/dz, then transposed back."""

    def r_backward(
        self, g: Tensor, Rg: Tensor, x: Tensor, Rx: Tensor | None, out: Tensor, t: LayerTangent, cache: Tensor | None,
        V: Params, ctx: SecondContext,
    ) -> tuple[Tensor | None, LayerGradients]:  # fmt: skip
        g_x, R = super().r_backward(g, Rg, x, Rx, out, t, cache, V, ctx)
        assert cache is not None
        Rz, slope = t.cache
        R_dz = Rg * slope + ctx.first * g * second_derivative(self.activation, cache, out) * Rz  # R{dJ/dz}  (N, d_out)
        HW_T = x.T @ R_dz  # a_prev^T R{dJ/dz}   (d_in, d_out)
        if Rx is not None and ctx.first:
            HW_T += Rx.T @ (g * slope)  # + R{a_prev}^T dJ/dz
        R.params["W"] = HW_T.T  # (d_out, d_in)
        return g_x, R


_ANY = "an MLP with a loss torch differentiates twice"

SECOND_ORDER_BUGS: tuple[Bug, ...] = (
    Bug(
        "hv_f2_term_dropped", "R{dJ/dz} without the f'' term", "R{(5)}",
        "R_dz = R_da * f'(z)", "R_dz = R_da * f'(z) + dJ_da * f''(z) * R_z",
        "dJ/dz = dJ/da o f'(z) is a product of two factors that both move with the weights: R of it has "
        "two terms, and the curvature of the activation is in the second. Only G v omits it.",
        where=_ANY + ", some activation curved (f'' != 0)", specs=_mlps(activations=_CURVED),
        rewire=_every(_DenseNoSecondDerivative), order=2,
    ),
    Bug(
        "hv_a_prev_VW_missing", "R{z} without the a_prev V_W^T term", "R{(1)}",
        "R_z = R_a_prev @ W.T + V_b", "R_z = R_a_prev @ W.T + a_prev @ V_W.T + V_b",
        "z = a_prev W^T + b is bilinear in a_prev and W: moving the weights along V_W moves z by a_prev V_W^T "
        "even where the input does not move. Without it, the weights' own direction never enters H v.",
        where=_ANY, specs=_mlps(), rewire=_every(_DenseNoInputDirection), order=2,
    ),
    Bug(
        "hv_loss_curvature_only", "R applied to the loss gradient only (G v returned as H v)", "H v",
        "R_dz = R_da * f'(z); (H v)_W = R_dz.T @ a_prev; R_da_prev = R_dz @ W",
        "... + dJ_da * f''(z) * R_z; ... + dJ_dz.T @ R_a_prev; ... + dJ_dz @ V_W",
        "H_loss propagated through the network's linearisation is the Gauss-Newton product G v; H v adds "
        "every term where R meets a first derivative dJ/d(.) (f'', dJ/dz V_W, dJ/dz^T R{a_prev}). They "
        "agree only where the network is linear in its weights or the residual is 0.",
        where=_ANY + ", two layers or a curved activation", specs=_mlps(), rewire=_every(_DenseLossCurvatureOnly),
        order=2,
    ),
    Bug(
        "hv_block_transposed", "(H v)_W transposed (a symmetric-Hessian assumption)", "R{(6)}",
        "HW = (R_dz.T @ a_prev + dJ_dz.T @ R_a_prev).T", "HW = R_dz.T @ a_prev + dJ_dz.T @ R_a_prev",
        "H is symmetric as a matrix over all the weights, not block by block as a d_out x d_in matrix: "
        "(H v)_W has W's layout, entry (j, k) the curvature along W[j, k]. Square layers hide the shape.",
        where=_ANY + ", square layers (every d_i equal)", specs=_mlps(equal_widths=True),
        rewire=_every(_DenseSymmetricBlock), order=2,
    ),
    # ---- equivalent variants: the same numbers by another route --------------------------------
    Bug(
        "hv_block_turned_back", "(H v)_W computed transposed and turned back", "R{(6)}",
        "HW = (a_prev.T @ R_dz + R_a_prev.T @ dJ_dz).T", "HW = R_dz.T @ a_prev + dJ_dz.T @ R_a_prev",
        "(A^T B)^T = B^T A: the same products in the other order, the same numbers up to round-off.",
        where=_ANY, specs=_mlps(), rewire=_every(_DenseBlockTurnedBack), equivalent=True, order=2,
    ),
)  # fmt: skip
"""The second-order entries of the catalogue: classic bugs first, then an equivalent variant."""


# ---- judging an entry: its H v against the right network's references ------------------------
SECOND_ORDER_MODES: dict[str, tuple[str, ...]] = {
    "autograd": ("forward-over-reverse", "reverse-over-reverse"),
    "fd-full": ("fd-gradient",),
    "fd-directional": ("fd-gradient",),
}
"""``refbp bugs``' reference modes at order 2: torch's two routes stand in the autograd column,
the differences of the gradient along v (every entry, one direction) in both FD columns."""


def second_order_matters(bug: Bug, case: Case[Any], *, seed: int = 0) -> bool:
    """True when the entry's H v along the direction drawn from ``seed`` differs from the right
    one beyond the float64 tolerance (a wrong shape always matters)."""
    v = random_direction(case.net, case.X, seed)
    wrong, noise = bug.products(case, v)
    right = hvp(case.net, case.X, case.y, v, noise=noise).Hv
    tol = tolerance_for(case.net.dtype)
    return any(name not in wrong or compare(name, "right", wrong[name], r, tol).verdict != "ok"
               for name, r in right.items())  # fmt: skip


def second_order_flags(bug: Bug, case: Case[Any], *, seed: int = 0) -> dict[str, list[str]]:
    """Reference mode -> the products it flags ("Hv[W2]", ...), in the network's parameter order
    and "X" last: one check_second_order of the entry's H v (``hvp_fn``) along the direction
    drawn from ``seed``, at the right network's draws."""
    v = random_direction(case.net, case.X, seed)
    wrong, noise = bug.products(case, v)
    with torch.no_grad():
        result = check_second_order(case.net, case.X, case.y, v, hvp_fn=lambda _: wrong, seed=seed, noise=noise)
    order = [f"Hv[{name}]" for name in [*case.net.parameters(), "X"]]
    failed = {mode: {row.name for row in result.rows if row.verdict == "mismatch" and row.reference in references}
              for mode, references in SECOND_ORDER_MODES.items()}  # fmt: skip
    failed["harness"] = {t.name for t in result.tensors if not t.passed}
    return {mode: [name for name in order if name in names] for mode, names in failed.items()}
