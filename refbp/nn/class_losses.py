"""Losses on class targets: softmax cross-entropy, negative log-likelihood, the multi-class hinge.

Each takes scores z (..., C) and int64 classes y (...,), as F.cross_entropy, F.nll_loss and
F.multi_margin_loss do after flattening to (M', C) and (M',): a (B, T, C) output of any network
(a character model's Embedding -> LSTM -> Linear, the GPT's logits) with (B, T) targets is M' =
B T rows. With reduction="mean" (the default) J divides by M, the rows that count (those whose
target is not ``ignore_index``); with "sum" it does not.

    (CE)  cross_entropy  J = 1/M sum_n (logsumexp(z_n) - z_n[y_n])      dJ/dz = (softmax(z) - onehot(y)) / M
    (NLL) nll            J = -1/M sum_n logp_n[y_n]                      dJ/dlogp = -onehot(y) / M
    (MM)  multi_margin   t_nj = margin - z_n[y_n] + z_nj                 the hinge's argument, margin = 1
                         J = 1/(M C) sum_n sum_{j != y_n} max(0, t_nj)
                         dJ/dz_nj = [t_nj > 0] / (M C)                   j != y_n
                         dJ/dz_n[y_n] = -#{j != y_n : t_nj > 0} / (M C)  (z_n[y_n] is in every term of row n)

nll expects log-probabilities, the output of a LogSoftmax (refbp.nn.softmax): that pairing is
cross_entropy split in two. Like torch, it accepts any scores (it is then -z_n[y_n], linear in
z, and no longer a likelihood); refbp does not refuse it. multi_margin is the SVM loss of CS231n
(p=1, no class weights); its hinge is a kink at t_nj = 0, declared as ``pieces`` on t so that a
finite difference never judges across it, and, as torch, it takes the derivative 0 there.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

from .loss_record import Loss, check_reduction
from .pieces import Pieces

__all__ = ["IGNORE_INDEX", "MULTI_MARGIN", "cross_entropy", "multi_margin", "nll"]

IGNORE_INDEX = -100
"""F.cross_entropy's and F.nll_loss's default ignore_index: a target equal to it is not counted."""

MULTI_MARGIN = 1.0
"""F.multi_margin_loss's default margin (the SVM's 1, CS231n's Delta): a score must beat every
other class's by this much for the row's loss to be 0."""


def _check_ignore_index(ignore_index: object) -> None:
    if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
        raise TypeError(f"ignore_index={ignore_index!r} must be an int or None, got {type(ignore_index).__name__}")


def _counted(y: Tensor, ignore_index: int | None) -> Tensor:
    """(M',) bool: the targets that count (every one without an ignore_index)."""
    return torch.ones_like(y, dtype=torch.bool) if ignore_index is None else y != ignore_index


def _divisor(keep: Tensor, reduction: str) -> Tensor | float:
    """M for a mean (the counted targets), 1 for a sum."""
    return keep.sum() if reduction == "mean" else 1.0


def _options(ignore_index: int | None, reduction: str) -> str:
    """The torch call's options beyond its defaults, as text: ", ignore_index=-1, reduction='sum'"."""
    ignored = "" if ignore_index is None else f", ignore_index={ignore_index}"
    return ignored + ("" if reduction == "mean" else ", reduction='sum'")


# ---- cross_entropy: softmax + negative log-likelihood on the logits ---------------------------------
def cross_entropy(ignore_index: int | None = IGNORE_INDEX, *, reduction: str = "mean") -> Loss:
    """Softmax cross-entropy on logits (..., C) against int64 classes (...,), as
    ``F.cross_entropy(z.reshape(-1, C), y.reshape(-1), ignore_index=..., reduction=...)``: the mean
    (or the sum) over the targets that are counted. Targets equal to ``ignore_index`` (torch's
    default -100; -1 for nanoGPT) are not; None counts every target and refuses any that is not a class."""
    _check_ignore_index(ignore_index)
    check_reduction(reduction, "cross_entropy")

    def value(z: Tensor, y: Tensor) -> Tensor:
        C = z.shape[-1]
        z, y = z.reshape(-1, C), y.reshape(-1)  # (M', C), (M',)
        keep = _counted(y, ignore_index)
        log_norm = torch.logsumexp(z, dim=1)  # (M',)  logsumexp is shifted by max: no overflow
        z_true = z.gather(1, torch.where(keep, y, 0).unsqueeze(1)).squeeze(1)  # (M',)  z_n[y_n]
        # (CE) J = 1/M sum_n (logsumexp(z_n) - z_n[y_n])   (M = 1 for a sum)
        return torch.sum(torch.where(keep, log_norm - z_true, 0.0)) / _divisor(keep, reduction)

    def gradient(z: Tensor, y: Tensor) -> Tensor:
        C = z.shape[-1]
        z2, y2 = z.reshape(-1, C), y.reshape(-1)  # (M', C), (M',)
        keep = _counted(y2, ignore_index)
        dJ_dz = torch.softmax(z2, dim=1)  # (M', C)  softmax(z), stable at any |z|
        rows = torch.arange(z2.shape[0], device=z.device)
        dJ_dz[rows, torch.where(keep, y2, 0)] -= keep.to(z.dtype)  # softmax(z) - onehot(y)
        if ignore_index is not None:
            dJ_dz.mul_(keep.unsqueeze(1))  # ignored rows contribute nothing
        if reduction == "mean":
            dJ_dz.div_(keep.sum())  # (CE) / M, the counted targets
        return dJ_dz.reshape(z.shape)

    def torch_fn(z: Tensor, y: Tensor) -> Tensor:
        C = z.shape[-1]
        index = IGNORE_INDEX if ignore_index is None else ignore_index
        return F.cross_entropy(z.reshape(-1, C), y.reshape(-1), ignore_index=index, reduction=reduction)

    option = _options(ignore_index, reduction)
    return Loss(
        "cross_entropy", value, gradient, torch_fn,
        f"torch.nn.functional.cross_entropy(z, y{option})",
        f"J = {'mean' if reduction == 'mean' else 'sum'}_n (logsumexp(z_n) - z_n[y_n]) ;  "
        f"dJ/dz = (softmax(z) - onehot(y))" + (" / M" if reduction == "mean" else ""),
        output_activation="identity", targets="classes", ignore_index=ignore_index, reduction=reduction,
    )  # fmt: skip


# ---- nll: negative log-likelihood of log-probabilities ---------------------------------------------
def nll(ignore_index: int | None = IGNORE_INDEX, *, reduction: str = "mean") -> Loss:
    """Negative log-likelihood of log-probabilities logp (..., C) (a LogSoftmax's output) against
    int64 classes (...,), as ``F.nll_loss(logp.reshape(-1, C), y.reshape(-1), ignore_index=...,
    reduction=...)``. ``ignore_index`` as in ``cross_entropy``. Any last layer is accepted, as
    torch accepts it; only after a LogSoftmax is J a likelihood."""
    _check_ignore_index(ignore_index)
    check_reduction(reduction, "nll")

    def value(logp: Tensor, y: Tensor) -> Tensor:
        C = logp.shape[-1]
        logp, y = logp.reshape(-1, C), y.reshape(-1)  # (M', C), (M',)
        keep = _counted(y, ignore_index)
        picked = logp.gather(1, torch.where(keep, y, 0).unsqueeze(1)).squeeze(1)  # (M',)  logp_n[y_n]
        return -torch.sum(torch.where(keep, picked, 0.0)) / _divisor(keep, reduction)  # (NLL) J = -1/M sum logp_n[y_n]

    def gradient(logp: Tensor, y: Tensor) -> Tensor:
        C = logp.shape[-1]
        y2 = y.reshape(-1)  # (M',)
        keep = _counted(y2, ignore_index)
        dJ_dlogp = torch.zeros(y2.shape[0], C, dtype=logp.dtype, device=logp.device)  # (M', C)
        rows = torch.arange(y2.shape[0], device=logp.device)
        dJ_dlogp[rows, torch.where(keep, y2, 0)] = -keep.to(logp.dtype)  # -onehot(y), ignored rows 0
        if reduction == "mean":
            dJ_dlogp.div_(keep.sum())  # (NLL) / M, the counted targets
        return dJ_dlogp.reshape(logp.shape)

    def torch_fn(logp: Tensor, y: Tensor) -> Tensor:
        C = logp.shape[-1]
        index = IGNORE_INDEX if ignore_index is None else ignore_index
        return F.nll_loss(logp.reshape(-1, C), y.reshape(-1), ignore_index=index, reduction=reduction)

    option = _options(ignore_index, reduction)
    return Loss(
        "nll", value, gradient, torch_fn,
        f"torch.nn.functional.nll_loss(logp, y{option})",
        f"J = -{'mean' if reduction == 'mean' else 'sum'}_n logp_n[y_n] ;  "
        f"dJ/dlogp = -onehot(y)" + (" / M" if reduction == "mean" else ""),
        output_activation=None, targets="classes", ignore_index=ignore_index, reduction=reduction,
        bounded_below=False,
    )  # fmt: skip


# ---- multi_margin: the multi-class hinge (SVM) loss ------------------------------------------------
_HINGE = Pieces((0.0,), "the hinge, margin - z_y + z_j = 0")
"""max(0, t) changes formula at t = 0: a difference that moves some t_nj across 0 is excluded."""

_VMAP_FALLBACK = "There is a performance drop because we have not yet implemented the batching rule for aten::multi_m"
"""torch.func.vmap (the finite differences' batches) has no batching rule for multi_margin_loss
and loops over the batch instead, correctly, with this warning: it says nothing to a user."""


def _hinge_arguments(z: Tensor, y: Tensor) -> Tensor:
    """t_nj = margin - z_n[y_n] + z_nj for every row n and class j, (M', C); t_n[y_n] = margin."""
    C = z.shape[-1]
    z2, y2 = z.reshape(-1, C), y.reshape(-1)  # (M', C), (M',)
    z_true = z2.gather(1, y2.unsqueeze(1))  # (M', 1)  z_n[y_n]
    return MULTI_MARGIN - z_true + z2  # (M', C)  (MM) t_nj


def multi_margin(*, reduction: str = "mean") -> Loss:
    """The multi-class hinge loss on scores z (..., C) against int64 classes (...,), as
    ``F.multi_margin_loss(z.reshape(-1, C), y.reshape(-1), reduction=...)`` with p=1, margin=1
    and no class weights: each row's sum of hinges max(0, 1 - z_y + z_j) over the other classes,
    divided by C, then the mean (or the sum) over the rows."""
    check_reduction(reduction, "multi_margin")

    def value(z: Tensor, y: Tensor) -> Tensor:
        C = z.shape[-1]
        t = _hinge_arguments(z, y)  # (M', C)
        hinge = torch.clamp_min(t, 0.0)  # (M', C)  max(0, t_nj)
        others = torch.ones_like(t, dtype=torch.bool).scatter_(1, y.reshape(-1, 1), False)  # j != y_n
        rows = t.shape[0] if reduction == "mean" else 1
        return torch.sum(torch.where(others, hinge, 0.0)) / (rows * C)  # (MM) J = 1/(M C) sum max(0, t_nj)

    def gradient(z: Tensor, y: Tensor) -> Tensor:
        C = z.shape[-1]
        t = _hinge_arguments(z, y)  # (M', C)
        y2 = y.reshape(-1, 1)  # (M', 1)
        active = (t > 0).scatter_(1, y2, False).to(z.dtype)  # (M', C)  [t_nj > 0], j != y_n (torch: 0 at t = 0)
        dJ_dz = active  # (MM) dJ/dz_nj = [t_nj > 0] / (M C), j != y_n
        dJ_dz.scatter_(1, y2, -active.sum(dim=1, keepdim=True))  # dJ/dz_n[y_n] = -#{active j} / (M C)
        rows = t.shape[0] if reduction == "mean" else 1
        return dJ_dz.div_(rows * C).reshape(z.shape)

    def torch_fn(z: Tensor, y: Tensor) -> Tensor:
        C = z.shape[-1]
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_VMAP_FALLBACK)
            return F.multi_margin_loss(z.reshape(-1, C), y.reshape(-1), p=1, margin=MULTI_MARGIN, reduction=reduction)

    over = "M C" if reduction == "mean" else "C"
    return Loss(
        "multi_margin", value, gradient, torch_fn,
        "torch.nn.functional.multi_margin_loss(z, y" + ("" if reduction == "mean" else ", reduction='sum'") + ")",
        f"J = 1/({over}) sum_n sum_(j != y_n) max(0, 1 - z_n[y_n] + z_nj) ;  "
        f"dJ/dz_nj = [t_nj > 0] / ({over}), dJ/dz_n[y_n] = -#(t_nj > 0) / ({over})",
        output_activation=None, targets="classes", pieces=_HINGE, reduction=reduction, piece_input=_hinge_arguments,
    )  # fmt: skip
