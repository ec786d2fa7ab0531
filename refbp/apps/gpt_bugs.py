"""The classic bugs of a GPT's manual backward pass, as catalogue entries (refbp.apps.catalogue).

Each entry is the wrong line people write in attention, the position embedding, the tied LM
head or the loss, beside the right one, and a way to build the GPT that has it: a twin of one
layer class with that line (the same parameters and state), or the network rewired (the head
untied, the loss replaced). The harness then checks the wrong gradients against the right GPT's
references, and refbp.apps.bugs_cli.run_bug shrinks to the smallest GPT that exposes each.

    softmax_no_rowsum            dJ/dS = P o dJ/dP: the softmax's rank-one term forgotten   (A5)
    causal_mask_not_rebuilt      P rebuilt in the backward pass without the causal mask      (A4)
    scores_backward_no_scale     dJ/dq = dJ/dS k: the 1/sqrt(hs) of the scores forgotten     (A3)
    tied_weight_overwritten      dJ/dE = the embedding's use only: the head's was overwritten
    position_gradient_assigned   dJ/dP[t] = dJ/dy[b, t] assigned in a loop over b: the last wins
    heads_merged_wrong_order     y = Y.reshape(B, T, d): heads and positions mixed up         (A8)
    ignored_targets_counted      the mean divided by every position, ignored ones too

and variants that compute the same numbers by another route, which nothing should flag.

    refbp bugs --only softmax_no_rowsum     # one entry; plain ``refbp bugs`` runs the whole catalogue
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from hypothesis import strategies as st
from torch import Tensor

from ..models.gpt import IGNORE_INDEX
from ..models.gpt_cases import GPTSpec, gpt_specs
from ..nn.attention import CausalSelfAttention, causal_mask
from ..nn.layer import BackwardContext, Layer, LayerGradients
from ..nn.losses import Loss
from ..nn.network import Network
from ..nn.position import PositionEmbedding
from ..nn.transformer import Block
from .bug_record import Bug, Rewire, loss_gradient, twin_of

__all__ = ["GPT_BUGS", "SMALL", "GPTBug"]

GPTBug = Bug
"""The old name of a GPT entry's record: every catalogue entry is a refbp.apps.bug_record.Bug."""

SMALL: dict[str, Any] = {
    "max_layers": 1, "max_heads": 2, "max_head_size": 2, "max_vocab": 4, "max_block_size": 3, "max_batch": 2,
    "dtypes": ("float64",),
}  # fmt: skip
"""The GPTs an entry is tried on: one block, up to 2 heads of up to 2, 4 tokens, 3 positions and
2 sequences: every entry's bug shows at these sizes (two heads, two positions, two sequences or a
head of size 2 at most), and a full check of one takes a fraction of a second."""


def _gpts(applies: Callable[[GPTSpec], bool] | None = None, **draw: Any) -> Callable[[], st.SearchStrategy[GPTSpec]]:
    """Small float64 GPTs (SMALL, with ``draw``'s options such as ignored targets) on which the
    bug can show at all (``applies``, the entry's ``where`` as a test on the spec): the entry
    draws, and shrinks within, those only."""

    def specs() -> st.SearchStrategy[GPTSpec]:
        drawn = gpt_specs(**{**SMALL, **draw})
        return drawn if applies is None else drawn.filter(applies)

    return specs


# ---- rewiring (each gets a deep copy of the right GPT, its own to change) ------------------------
def _attention_twin(cls: type[CausalSelfAttention]) -> Rewire:
    """Every block's attention replaced by a twin of class ``cls``."""

    def rewire(net: Network) -> Network:
        for layer in net.layers:
            if isinstance(layer, Block):
                layer.inner[1] = twin_of(cls)(layer.inner[1])
        return net

    return rewire


def _position_twin(cls: type[PositionEmbedding]) -> Rewire:
    def rewire(net: Network) -> Network:
        net.layers[1] = twin_of(cls)(net.layers[1])
        return net

    return rewire


def _untied(net: Network) -> Network:
    """The LM head with a weight of its own (equal values, another tensor): the network loop no
    longer sums the two uses, and the embedding's gradient is what dJ/dE ends up holding, as
    when the head's contribution is written first and then overwritten."""
    head: Layer = net.layers[-1]
    head.params["W"] = head.params["W"].clone()
    return Network(net.layers, net.loss_fn)


# ---- the wrong lines -----------------------------------------------------------------------------
class _SoftmaxNoRowSum(CausalSelfAttention):
    def softmax_backward(self, P: Tensor, dJ_dP: Tensor, *, overwrite: bool) -> Tensor:
        return dJ_dP * P  # wrong: only the Jacobian's diagonal, diag(P); the - P P^T term is gone


class _MaskNotRebuilt(CausalSelfAttention):
    def rebuilt_probabilities(self, q: Tensor, k: Tensor) -> Tensor:
        S = (q @ k.transpose(-2, -1)).mul_(1.0 / math.sqrt(self.hs))  # (B, nh, T, T)
        return torch.softmax(S, dim=-1)  # wrong: the causal mask of the forward pass is not applied


class _ScoresNoScale(CausalSelfAttention):
    def scores_backward(self, dJ_dS: Tensor, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        return dJ_dS @ k, dJ_dS.transpose(-2, -1) @ q  # wrong: the 1/sqrt(hs) of S = q k^T / sqrt(hs)


class _HeadsMergedWrongOrder(CausalSelfAttention):
    def merge_heads(self, Y: Tensor) -> Tensor:
        B, nh, T, hs = Y.shape
        return Y.reshape(B, T, nh * hs)  # wrong: (B, nh, T, hs) read as if it were (B, T, nh, hs)


class _PositionAssigned(PositionEmbedding):
    def backward(self, dJ_dy: Tensor, x: Tensor, out: Tensor, cache: Any, ctx: BackwardContext) -> LayerGradients:
        grads = super().backward(dJ_dy, x, out, cache, ctx)
        dJ_dP = torch.zeros_like(self.params["P"])
        T = dJ_dy.shape[1]
        for b in range(dJ_dy.shape[0]):
            dJ_dP[:T] = dJ_dy[b]  # wrong: assigned for each sequence in turn, so the last one wins
        grads.params["P"] = dJ_dP
        return grads


def _mean_over_every_position(loss: Loss, z: Tensor, y: Tensor) -> Tensor:
    C = z.shape[-1]
    z2, y2 = z.reshape(-1, C), y.reshape(-1)  # (M', C), (M',)
    keep = y2 != IGNORE_INDEX
    dJ_dz = torch.softmax(z2, dim=1)  # (M', C)
    rows = torch.arange(z2.shape[0], device=z.device)
    dJ_dz[rows, torch.where(keep, y2, 0)] -= keep.to(z.dtype)  # softmax(z) - onehot(y)
    dJ_dz.mul_(keep.unsqueeze(1))  # ignored positions contribute nothing...
    return dJ_dz.div_(y2.numel()).reshape(z.shape)  # wrong: ...but are counted in the mean's M


class _SoftmaxJacobianRows(CausalSelfAttention):
    """Equivalent: the Jacobian diag(P) - P P^T of every row formed and applied to dJ/dP."""

    def softmax_backward(self, P: Tensor, dJ_dP: Tensor, *, overwrite: bool) -> Tensor:
        jacobian = torch.diag_embed(P) - P.unsqueeze(-1) * P.unsqueeze(-2)  # (B, nh, T, T, T)
        return (jacobian @ dJ_dP.unsqueeze(-1)).squeeze(-1)  # (B, nh, T, T)


class _SoftmaxMaskedAgain(CausalSelfAttention):
    """Equivalent: dJ/dS set to 0 at the masked scores, which P = 0 has already done."""

    def softmax_backward(self, P: Tensor, dJ_dP: Tensor, *, overwrite: bool) -> Tensor:
        dJ_dS = super().softmax_backward(P, dJ_dP, overwrite=overwrite)
        return dJ_dS.masked_fill_(causal_mask(P.shape[-1], P.device), 0.0)


_ANY = "any GPT"

GPT_BUGS: tuple[Bug, ...] = (
    Bug(
        "softmax_no_rowsum", "softmax backward without the row-sum term", "attention (A5)",
        "dJ_dS = P * dJ_dP", "dJ_dS = P * (dJ_dP - (dJ_dP * P).sum(-1, keepdim=True))",
        "Each P[t, t'] depends on every score of row t through the normalising sum: the Jacobian of a row is "
        "diag(P) - P P^T, and its rank-one part is the row sum. Without it the gradient does not even sum to "
        "zero along a row, as the gradient of a softmax must.",
        where=_ANY, specs=_gpts(), rewire=_attention_twin(_SoftmaxNoRowSum),
    ),
    Bug(
        "causal_mask_not_rebuilt", "causal mask applied in forward but not in backward", "attention (A4)",
        "P = softmax(q @ k.T / sqrt(hs))", "P = softmax(q @ k.T / sqrt(hs) + causal_mask)",
        "The backward pass rebuilds P from q and k (the T x T probabilities are not kept); without the mask, "
        "every position gets weights on its future, which the forward pass never used: dJ/dv and dJ/dS "
        "are those of another function.",
        where="a GPT with T >= 2", specs=_gpts(lambda s: s.length >= 2), rewire=_attention_twin(_MaskNotRebuilt),
    ),
    Bug(
        "scores_backward_no_scale", "missing 1/sqrt(hs) in the scores' backward", "attention (A3)",
        "dJ_dq = dJ_dS @ k", "dJ_dq = dJ_dS @ k / sqrt(hs)",
        "S = q k^T / sqrt(hs): the scale multiplies both q's and k's gradients. It goes unnoticed with "
        "heads of size 1, where it is 1, and with one position, where the softmax is constant.",
        where="a GPT with heads of size >= 2, T >= 2",
        specs=_gpts(lambda s: s.n_embd >= 2 * s.n_head and s.length >= 2), rewire=_attention_twin(_ScoresNoScale),
    ),
    Bug(
        "tied_weight_overwritten", "tied weight's gradient overwritten, not summed", "tied head",
        "dJ_dE = dJ_dE_from_embedding", "dJ_dE = dJ_dE_from_embedding + dJ_dE_from_lm_head",
        "The LM head is the token embedding (weight tying): one tensor used twice, whose gradient is the "
        "sum of both uses. Writing each use's gradient in turn keeps only the last one written.",
        where=_ANY, specs=_gpts(), rewire=_untied,
    ),
    Bug(
        "position_gradient_assigned", "position-embedding gradient not summed over the batch",
        "position embedding", "for b in range(B): dJ_dP[:T] = dJ_dy[b]", "dJ_dP[:T] = dJ_dy.sum(dim=0)",
        "Every sequence of the batch adds the same row P[t]: its gradient is the sum over the batch. "
        "Assigned in a loop, the last sequence's overwrites the others'.",
        where="a GPT, batch B >= 2", specs=_gpts(lambda s: s.batch >= 2), rewire=_position_twin(_PositionAssigned),
    ),
    Bug(
        "heads_merged_wrong_order", "heads merged in the wrong order", "attention (A8)",
        "y = Y.reshape(B, T, d)", "y = Y.transpose(1, 2).reshape(B, T, d)",
        "Y is (B, nh, T, hs): position t's heads are not next to each other in memory. Reshaped without the "
        "transpose, each 'position' of y gets pieces of several positions of one head.",
        where="a GPT with n_head >= 2 and T >= 2", specs=_gpts(lambda s: s.n_head >= 2 and s.length >= 2),
        rewire=_attention_twin(_HeadsMergedWrongOrder),
    ),
    Bug(
        "ignored_targets_counted", "ignore_index counted in the mean", "cross_entropy",
        "dJ_dz = (softmax(z) - onehot(y)) * counted / y.numel()",
        "dJ_dz = (softmax(z) - onehot(y)) * counted / counted.sum()",
        "J is the mean over the targets that count (F.cross_entropy's ignore_index=-1); dividing by every "
        "position shrinks every gradient by the share of ignored targets.",
        where="a GPT with some targets -1", specs=_gpts(ignored=True), rewire=loss_gradient(_mean_over_every_position),
    ),
    # ---- equivalent variants: the same numbers by another route --------------------------------
    Bug(
        "softmax_jacobian_rows", "softmax backward through each row's Jacobian", "attention (A5)",
        "dJ_dS = (diag(P) - P P^T) @ dJ_dP, row by row", "dJ_dS = P * (dJ_dP - (dJ_dP * P).sum(-1, keepdim=True))",
        "The Jacobian of each row, formed (T x T per row) and applied: the same numbers as the Jacobian-vector "
        "product, at T times the memory.",
        where=_ANY, specs=_gpts(), rewire=_attention_twin(_SoftmaxJacobianRows), equivalent=True,
    ),
    Bug(
        "softmax_backward_masked_again", "causal mask applied to dJ/dS as well", "attention (A4)",
        "dJ_dS = P * (dJ_dP - rowsum(dJ_dP * P)); dJ_dS[future] = 0",
        "dJ_dS = P * (dJ_dP - rowsum(dJ_dP * P))",
        "Where the mask hides a score, P = 0, so dJ/dS = P o (...) is 0 there already: masking it again "
        "changes nothing.",
        where=_ANY, specs=_gpts(), rewire=_attention_twin(_SoftmaxMaskedAgain), equivalent=True,
    ),
)  # fmt: skip
"""The GPT entries of the catalogue: classic bugs first, then equivalent variants."""
