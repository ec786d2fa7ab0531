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

import copy
import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from hypothesis import strategies as st
from torch import Tensor

from ..models.gpt import GPT, IGNORE_INDEX
from ..models.gpt_cases import GPTSpec, gpt_specs
from ..nn.attention import CausalSelfAttention, causal_mask
from ..nn.layer import BackwardContext, Layer, LayerGrads
from ..nn.losses import cross_entropy
from ..nn.network import Network
from ..nn.position import PositionEmbedding
from ..nn.transformer import Block
from ..verify.cases import Case
from .layer_bugs import twin_of

__all__ = ["GPT_BUGS", "GPTBug"]

SMALL: dict[str, Any] = {
    "max_layers": 1, "max_heads": 2, "max_head_size": 2, "max_vocab": 4, "max_block_size": 3, "max_batch": 2,
    "dtypes": ("float64",),
}  # fmt: skip
"""The GPTs an entry is tried on: one block, up to 2 heads of up to 2, 4 tokens, 3 positions and
2 sequences: every entry's bug shows at these sizes (two heads, two positions, two sequences or a
head of size 2 at most), and a full check of one takes a fraction of a second."""


@dataclass(frozen=True)
class GPTBug:
    """One catalogue entry for a GPT: the wrong line, the right line, why, and the wrong GPT.

    Attributes:
        name, title, wrong, right, why, equivalent, where: as refbp.apps.bugs.Bug.
        equation: the part of the model it breaks, with its equation ("attention (A5)", ...).
        rewire: a deep copy of the right GPT -> the network with the wrong line (sharing nothing
            with the right one).
        draw: options for ``gpt_specs`` beyond SMALL (e.g. ignored targets).
        applies: the GPTs the bug can show on at all (``where``, as a test on the spec); the
            entry draws, and shrinks within, those only.
    """

    name: str
    title: str
    equation: str
    wrong: str
    right: str
    why: str
    where: str
    rewire: Callable[[GPT], Network]
    equivalent: bool = False
    draw: Mapping[str, Any] | None = None
    applies: Callable[[GPTSpec], bool] | None = None

    def specs(self) -> st.SearchStrategy[GPTSpec]:
        """Small float64 GPTs it applies to (shrinkable by hypothesis)."""
        specs = gpt_specs(**{**SMALL, **(self.draw or {})})
        return specs if self.applies is None else specs.filter(self.applies)

    def gradients(self, case: Case) -> tuple[dict[str, Tensor], dict[tuple[int, ...], Tensor]]:
        """The wrong GPT's gradients at the case's point, and the dropout masks they used (the
        right GPT's own draw, made on a copy so that the case is left as it was)."""
        noise = copy.deepcopy(case.net).forward(case.X, update_stats=False).noise
        assert isinstance(case.net, GPT)
        wrong = self.rewire(copy.deepcopy(case.net))
        cache = wrong.forward(case.X, update_stats=False, noise=noise)
        grads = wrong.backward(cache, case.y).as_dict()
        names = set(case.net.names())  # an untied head's own gradient has no name in the right GPT
        return {name: g for name, g in grads.items() if name in names}, noise


# ---- rewiring ------------------------------------------------------------------------------------
def _attention_twin(cls: type[CausalSelfAttention]) -> Callable[[GPT], Network]:
    """Every block's attention replaced by a twin of class ``cls``."""

    def rewire(net: GPT) -> Network:
        for layer in net.layers:
            if isinstance(layer, Block):
                layer.inner[1] = twin_of(cls)(layer.inner[1])
        return net

    return rewire


def _position_twin(cls: type[PositionEmbedding]) -> Callable[[GPT], Network]:
    def rewire(net: GPT) -> Network:
        net.layers[1] = twin_of(cls)(net.layers[1])
        return net

    return rewire


def _untied(net: GPT) -> Network:
    """The LM head with a weight of its own (equal values, another tensor): the network loop no
    longer sums the two uses, and the embedding's gradient is what dJ/dE ends up holding, as
    when the head's contribution is written first and then overwritten."""
    head: Layer = net.layers[-1]
    head.params["W"] = head.params["W"].clone()
    return Network(net.layers, net.loss_fn)


def _counting_ignored(net: GPT) -> Network:
    return Network(net.layers, dataclasses.replace(cross_entropy(IGNORE_INDEX), gradient=_mean_over_every_position))


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
    def backward(self, dJ_dy: Tensor, x: Tensor, out: Tensor, cache: Any, ctx: BackwardContext) -> LayerGrads:
        grads = super().backward(dJ_dy, x, out, cache, ctx)
        dJ_dP = torch.zeros_like(self.params["P"])
        T = dJ_dy.shape[1]
        for b in range(dJ_dy.shape[0]):
            dJ_dP[:T] = dJ_dy[b]  # wrong: assigned for each sequence in turn, so the last one wins
        grads.params["P"] = dJ_dP
        return grads


def _mean_over_every_position(z: Tensor, y: Tensor) -> Tensor:
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

GPT_BUGS: tuple[GPTBug, ...] = (
    GPTBug(
        "softmax_no_rowsum", "softmax backward without the row-sum term", "attention (A5)",
        "dJ_dS = P * dJ_dP", "dJ_dS = P * (dJ_dP - (dJ_dP * P).sum(-1, keepdim=True))",
        "Each P[t, t'] depends on every score of row t through the normalising sum: the Jacobian of a row is "
        "diag(P) - P P^T, and its rank-one part is the row sum. Without it the gradient does not even sum to "
        "zero along a row, as the gradient of a softmax must.",
        _ANY, _attention_twin(_SoftmaxNoRowSum),
    ),
    GPTBug(
        "causal_mask_not_rebuilt", "causal mask applied in forward but not in backward", "attention (A4)",
        "P = softmax(q @ k.T / sqrt(hs))", "P = softmax(q @ k.T / sqrt(hs) + causal_mask)",
        "The backward pass rebuilds P from q and k (the T x T probabilities are not kept); without the mask, "
        "every position gets weights on its future, which the forward pass never used: dJ/dv and dJ/dS "
        "are those of another function.",
        "a GPT with T >= 2", _attention_twin(_MaskNotRebuilt), applies=lambda s: s.length >= 2,
    ),
    GPTBug(
        "scores_backward_no_scale", "missing 1/sqrt(hs) in the scores' backward", "attention (A3)",
        "dJ_dq = dJ_dS @ k", "dJ_dq = dJ_dS @ k / sqrt(hs)",
        "S = q k^T / sqrt(hs): the scale multiplies both q's and k's gradients. It goes unnoticed with "
        "heads of size 1, where it is 1, and with one position, where the softmax is constant.",
        "a GPT with heads of size >= 2, T >= 2", _attention_twin(_ScoresNoScale),
        applies=lambda s: s.n_embd >= 2 * s.n_head and s.length >= 2,
    ),
    GPTBug(
        "tied_weight_overwritten", "tied weight's gradient overwritten, not summed", "tied head",
        "dJ_dE = dJ_dE_from_embedding", "dJ_dE = dJ_dE_from_embedding + dJ_dE_from_lm_head",
        "The LM head is the token embedding (weight tying): one tensor used twice, whose gradient is the "
        "sum of both uses. Writing each use's gradient in turn keeps only the last one written.",
        _ANY, _untied,
    ),
    GPTBug(
        "position_gradient_assigned", "position-embedding gradient not summed over the batch",
        "position embedding", "for b in range(B): dJ_dP[:T] = dJ_dy[b]", "dJ_dP[:T] = dJ_dy.sum(dim=0)",
        "Every sequence of the batch adds the same row P[t]: its gradient is the sum over the batch. "
        "Assigned in a loop, the last sequence's overwrites the others'.",
        "a GPT, batch B >= 2", _position_twin(_PositionAssigned), applies=lambda s: s.batch >= 2,
    ),
    GPTBug(
        "heads_merged_wrong_order", "heads merged in the wrong order", "attention (A8)",
        "y = Y.reshape(B, T, d)", "y = Y.transpose(1, 2).reshape(B, T, d)",
        "Y is (B, nh, T, hs): position t's heads are not next to each other in memory. Reshaped without the "
        "transpose, each 'position' of y gets pieces of several positions of one head.",
        "a GPT with n_head >= 2 and T >= 2", _attention_twin(_HeadsMergedWrongOrder),
        applies=lambda s: s.n_head >= 2 and s.length >= 2,
    ),
    GPTBug(
        "ignored_targets_counted", "ignore_index counted in the mean", "cross_entropy",
        "dJ_dz = (softmax(z) - onehot(y)) * counted / y.numel()",
        "dJ_dz = (softmax(z) - onehot(y)) * counted / counted.sum()",
        "J is the mean over the targets that count (F.cross_entropy's ignore_index=-1); dividing by every "
        "position shrinks every gradient by the share of ignored targets.",
        "a GPT with some targets -1", _counting_ignored, draw={"ignored": True},
    ),
    # ---- equivalent variants: the same numbers by another route --------------------------------
    GPTBug(
        "softmax_jacobian_rows", "softmax backward through each row's Jacobian", "attention (A5)",
        "dJ_dS = (diag(P) - P P^T) @ dJ_dP, row by row", "dJ_dS = P * (dJ_dP - (dJ_dP * P).sum(-1, keepdim=True))",
        "The Jacobian of each row, formed (T x T per row) and applied: the same numbers as the Jacobian-vector "
        "product, at T times the memory.",
        _ANY, _attention_twin(_SoftmaxJacobianRows), equivalent=True,
    ),
    GPTBug(
        "softmax_backward_masked_again", "causal mask applied to dJ/dS as well", "attention (A4)",
        "dJ_dS = P * (dJ_dP - rowsum(dJ_dP * P)); dJ_dS[future] = 0",
        "dJ_dS = P * (dJ_dP - rowsum(dJ_dP * P))",
        "Where the mask hides a score, P = 0, so dJ/dS = P o (...) is 0 there already: masking it again "
        "changes nothing.",
        _ANY, _attention_twin(_SoftmaxMaskedAgain), equivalent=True,
    ),
)  # fmt: skip
"""The GPT entries of the catalogue: classic bugs first, then equivalent variants."""
