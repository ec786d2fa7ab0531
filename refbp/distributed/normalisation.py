"""How a loss's normalisation splits over shards of the batch: what J divides by, and each
shard's share of J.

Every loss of refbp.nn.losses is a sum of terms, one term per target entry, each depending on
one row of the batch, divided by a normaliser M:

    loss            terms l_k                               M
    half_sse        1/2 (y_hat - y)^2, every entry          1           (a sum: no normaliser)
    mse             (y_hat - y)^2, every entry              N d_L       (every entry)
    bce             -(y log p + (1 - y) log(1 - p))         N d_L
    cross_entropy   logsumexp(z_n) - z_n[y_n], per target   M = the counted targets (those not
                                                                equal to ignore_index)
    nll             -logp_n[y_n], per target                M = the counted targets
    multi_margin    1/C sum_(j != y_n) max(0, 1 - z_n[y_n] + z_nj), per row   M = N

So when the batch is split into shards S_1, ..., S_R with m_r terms each (R ranks),

    (D1)  J = sum_k l_k / M = sum_r (m_r / M) J_r,   J_r = (1/m_r) sum_{k in S_r} l_k

the loss of the whole batch is the ranks' own mean losses J_r weighted by their share of the
terms, w_r = m_r / M, with M = sum_r m_r for a mean (w_r = 1 for a sum). Averaging the J_r
instead (w_r = 1/R) is right only when every shard holds as many terms: the classic bug of
data-parallel training with uneven shards (refbp.apps.distributed_bugs).
"""

from __future__ import annotations

from torch import Tensor

from ..nn.losses import Loss

__all__ = ["REDUCTIONS", "is_mean", "share", "terms"]

REDUCTIONS: dict[str, str] = {
    "half_sse": "sum", "mse": "mean", "bce": "mean", "cross_entropy": "mean", "nll": "mean", "multi_margin": "mean",
}  # fmt: skip
"""Every loss of refbp.nn.losses, and how it reduces its terms by default: "sum" (no normaliser)
or "mean" (divided by the number of terms, ``terms``); a record built with another reduction
(``mse(reduction="sum")``) says so itself, in ``Loss.reduction``. tests/test_distributed_arithmetic.py
checks it against the losses' own values, shard by shard."""


def is_mean(loss: Loss) -> bool:
    """True when J divides its sum of terms by their number (mse, bce, cross_entropy)."""
    if loss.name not in REDUCTIONS:
        raise ValueError(
            f"loss {loss.name!r}: refbp.distributed does not know how it normalises; expected one of "
            f"{sorted(REDUCTIONS)} (add it to REDUCTIONS)"
        )
    return loss.reduction == "mean"  # mse(reduction="sum") is a sum whatever its name


def terms(loss: Loss, y: Tensor) -> int:
    """The number of terms J sums over these targets: every entry of y for a loss on values,
    the targets not equal to ``ignore_index`` for a loss on classes."""
    if loss.targets == "classes" and loss.ignore_index is not None:
        return int((y != loss.ignore_index).sum())
    return int(y.numel())


def share(loss: Loss, local_terms: int, total_terms: int) -> float:
    """w_r of eq. (D1): the weight of a shard's own mean loss in the batch's J: its share of the
    terms, m_r / M, for a mean; 1 for a sum. 0 for a shard without terms."""
    if not is_mean(loss):  # a sum: every term counts as it is
        return 1.0
    if total_terms <= 0:
        raise ValueError(
            f"the batch has {total_terms} terms for loss {loss.name!r} (every target ignored?): its mean is undefined"
        )
    return local_terms / total_terms
