"""Loss functions J(y_hat, y) and their gradients dJ/dy_hat, each matching a torch function.

y_hat is the network output a(L): (N, d_L) for an MLP, (..., d_L) in general. Each loss gives
its value (eq. 3) and the gradient that starts the backward pass, dJ/da(L) (eq. 4). Each
matches the torch function named in its docstring to the last detail that changes a number
(clamps included), so that torch.autograd is an exact oracle.

=============== ============================================ ===================================
name            J (reduction="mean", the default)            dJ/dy_hat
=============== ============================================ ===================================
half_sse        1/2 sum_{n,k} (y_hat - y)^2                  y_hat - y
mse             1/(N d) sum_{n,k} (y_hat - y)^2              2 (y_hat - y) / (N d)
bce             -1/(N d) sum y log p + (1 - y) log(1 - p)    (p - y) / (p (1 - p) N d)
cross_entropy   1/M sum_n (logsumexp(z_n) - z_n[y_n])        (softmax(z) - onehot(y)) / M
nll             -1/M sum_n logp_n[y_n]                       -onehot(y) / M
multi_margin    1/(M C) sum_n sum_{j != y_n} max(0, t_nj)    [t_nj > 0] / (M C), j != y_n;
                t_nj = 1 - z_n[y_n] + z_nj                   -#{j: t_nj > 0} / (M C) at y_n
=============== ============================================ ===================================

(bce: p = y_hat, the sigmoid output. cross_entropy: y_hat = z(L), the logits, identity output.
nll: y_hat = logp, a LogSoftmax's output. Class losses take y_hat (..., C) and y (...,), any
number of leading dimensions, as torch does after flattening; M is the number of counted
targets: N (B T for a sequence), or fewer when some equal ``ignore_index``.)

``reduction="sum"`` drops the division by N d (or M): ``mse(reduction="sum")``,
``get_loss("cross_entropy", reduction="sum")``; any network takes the record as ``loss=``. A
name alone is the mean, as in torch; half_sse is a sum and has no mean.

A loss is a record (refbp.nn.loss_record): its value, its gradient, its torch oracle, how to
draw targets for it and how to check a user's targets. Everything that depends on which loss a
network has asks the record; an unknown name is an error everywhere (``get_loss``). The losses on
class targets are refbp.nn.class_losses'.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .class_losses import IGNORE_INDEX, MULTI_MARGIN, cross_entropy, multi_margin, nll
from .loss_record import REDUCTIONS, Loss, check_output_range, check_reduction
from .pieces import Pieces

__all__ = [
    "BCE_EPS",
    "BCE_LOG_FLOOR",
    "BCE_RESOLUTION",
    "FACTORIES",
    "IGNORE_INDEX",
    "LOSSES",
    "MULTI_MARGIN",
    "REDUCTIONS",
    "Loss",
    "bce",
    "check_output_range",
    "cross_entropy",
    "get_loss",
    "half_sse",
    "mse",
    "multi_margin",
    "nll",
]

BCE_LOG_FLOOR = -100.0
"""torch.nn.functional.binary_cross_entropy clamps log(p) and log(1 - p) at -100, so that a
saturated sigmoid (p exactly 0 or 1) gives a finite loss; we clamp identically."""

BCE_EPS = 9.999999960041972e-13
"""torch's binary_cross_entropy backward divides by max(p (1 - p), EPSILON) with EPSILON the
float32 constant 1e-12 (9.999999960041972e-13 exactly: at p = 1, y = 0 torch's float64
dJ/dp is 1000000003995.8029 = 1 / that); we floor with the same number, so a saturated p
gives a finite gradient identical to torch's to the last digit."""

BCE_RESOLUTION = 1e-4
"""Within this distance of 0 or 1, a float64 p (stored to about 1e-16) leaves log(p) or
log(1 - p) with fewer than 12 correct digits, and a finite difference of J through it errs by
more than the finite-difference tolerance (1e-6 relative): such entries are unresolvable."""


def _bce_region(p: Tensor) -> Tensor:
    """Which clamp is active: bit 0 for log(p) <= -100, bit 1 for log(1 - p) <= -100."""
    low = torch.log(p) <= BCE_LOG_FLOOR
    high = torch.log(1.0 - p) <= BCE_LOG_FLOOR
    return low.to(torch.int8) + 2 * high.to(torch.int8)


def _bce_unresolvable(p: Tensor) -> Tensor:
    """Where no finite difference can verify dJ/dp: torch's backward divides by BCE_EPS instead
    of p (1 - p) (not J's derivative), or p is within BCE_RESOLUTION of 0 or 1."""
    return ((1.0 - p) * p < BCE_EPS) | (torch.minimum(p, 1.0 - p) < BCE_RESOLUTION)


_BCE_PIECES = Pieces(
    (math.exp(BCE_LOG_FLOOR), 1.0 - math.exp(BCE_LOG_FLOOR)),
    "log(p) or log(1 - p) clamped at -100; p (1 - p) floored at 1e-12 in torch's backward",
    region=_bce_region,
    unresolvable=_bce_unresolvable,
)


# ---- half_sse: the seed's loss --------------------------------------------------------
def _half_sse(y_hat: Tensor, y: Tensor) -> Tensor:
    r = y_hat - y  # (N, d_L)
    return 0.5 * torch.sum(r * r)  # J = 1/2 sum (y_hat - y)^2


def _half_sse_gradient(y_hat: Tensor, y: Tensor) -> Tensor:
    return y_hat - y  # dJ/dy_hat = y_hat - y   (the seed writes y - y_hat: wrong sign)


def half_sse(*, reduction: str = "sum") -> Loss:
    """The seed's J = 1/2 sum (y_hat - y)^2, as ``0.5 * F.mse_loss(y_hat, y, reduction="sum")``: a
    sum by definition; its mean (without the 1/2) is ``mse``."""
    if reduction != "sum":
        raise ValueError(
            f"reduction={reduction!r} for loss='half_sse'; expected 'sum' (half_sse is 1/2 sum (y_hat - y)^2; "
            "for a mean use loss='mse')"
        )
    return Loss(
        "half_sse", _half_sse, _half_sse_gradient,
        lambda y_hat, y: 0.5 * F.mse_loss(y_hat, y, reduction="sum"),
        "0.5 * torch.nn.functional.mse_loss(y_hat, y, reduction='sum')",
        "J = 1/2 sum (y_hat - y)^2 ;  dJ/dy_hat = y_hat - y",
        output_activation=None, targets="values", reduction="sum",
    )  # fmt: skip


# ---- mse ------------------------------------------------------------------------------
def mse(*, reduction: str = "mean") -> Loss:
    """J = 1/(N d) sum (y_hat - y)^2 (``F.mse_loss(y_hat, y)``), or without the 1/(N d) for
    reduction="sum"."""
    mean = check_reduction(reduction, "mse") == "mean"

    def value(y_hat: Tensor, y: Tensor) -> Tensor:
        r = y_hat - y  # (N, d_L)
        return torch.mean(r * r) if mean else torch.sum(r * r)  # J = 1/(N d) sum (y_hat - y)^2

    def gradient(y_hat: Tensor, y: Tensor) -> Tensor:
        return (y_hat - y).mul_(2.0 / y_hat.numel() if mean else 2.0)  # dJ/dy_hat = 2 (y_hat - y) / (N d)

    J = "mean (y_hat - y)^2" if mean else "sum (y_hat - y)^2"
    return Loss(
        "mse", value, gradient, lambda y_hat, y: F.mse_loss(y_hat, y, reduction=reduction),
        "torch.nn.functional.mse_loss(y_hat, y" + ("" if mean else ", reduction='sum'") + ")",
        f"J = {J} ;  dJ/dy_hat = 2 (y_hat - y)" + (" / (N d)" if mean else ""),
        output_activation=None, targets="values", reduction=reduction,
    )  # fmt: skip


# ---- bce: binary cross-entropy on probabilities ---------------------------------------
def bce(*, reduction: str = "mean") -> Loss:
    """J = -1/(N d) sum y log p + (1 - y) log(1 - p) on probabilities p (a sigmoid's output),
    ``F.binary_cross_entropy(p, y)`` with its clamps, or without the 1/(N d) for reduction="sum"."""
    mean = check_reduction(reduction, "bce") == "mean"

    def value(p: Tensor, y: Tensor) -> Tensor:
        log_p = torch.clamp_min(torch.log(p), BCE_LOG_FLOOR)  # (N, d_L)
        log_1mp = torch.clamp_min(torch.log(1.0 - p), BCE_LOG_FLOOR)  # (N, d_L)
        terms = y * log_p + (1.0 - y) * log_1mp  # (N, d_L)
        return -torch.mean(terms) if mean else -torch.sum(terms)  # J = -mean(y log p + (1-y) log(1-p))

    def gradient(p: Tensor, y: Tensor) -> Tensor:
        # dJ/dp = (p - y) / (p (1 - p)) / (N d), the denominator floored at BCE_EPS as in torch
        denominator = torch.clamp_min((1.0 - p) * p, BCE_EPS).mul_(p.numel() if mean else 1)
        return (p - y).div_(denominator)

    J = "-mean" if mean else "-sum"
    return Loss(
        "bce", value, gradient, lambda p, y: F.binary_cross_entropy(p, y, reduction=reduction),
        "torch.nn.functional.binary_cross_entropy(y_hat, y" + ("" if mean else ", reduction='sum'") + ")",
        f"J = {J}(y log p + (1-y) log(1-p)) ;  dJ/dp = (p - y) / (p (1-p)" + (" N d)" if mean else ")"),
        output_activation="sigmoid", targets="values", pieces=_BCE_PIECES, domain=(0.0, 1.0), reduction=reduction,
    )  # fmt: skip


FACTORIES: dict[str, Callable[..., Loss]] = {
    "half_sse": half_sse,
    "mse": mse,
    "bce": bce,
    "cross_entropy": cross_entropy,
    "nll": nll,
    "multi_margin": multi_margin,
}
"""Each loss's factory, by name: ``FACTORIES[name](reduction=...)`` builds its record."""

LOSSES: dict[str, Loss] = {name: factory() for name, factory in FACTORIES.items()}
"""Every loss refbp knows, by name, with its defaults (reduction="mean", half_sse's sum)."""


def get_loss(name: object, *, reduction: str | None = None) -> Loss:
    """Look up a loss by name (a Loss record passes through); a clear ValueError lists the
    valid names otherwise. ``reduction`` ("mean" or "sum") builds the record with that reduction;
    None keeps the default (the record's own, for a record)."""
    if isinstance(name, Loss):
        if reduction is not None and reduction != name.reduction:
            raise ValueError(
                f"loss={name.name!r} is already a record with reduction={name.reduction!r}; got reduction="
                f"{reduction!r} too: pass the loss's name, or build the record with its factory "
                f"(refbp.nn.losses.{name.name}(reduction={reduction!r}))"
            )
        return name
    if not isinstance(name, str) or name not in LOSSES:
        raise ValueError(f"loss={name!r} is not a known loss; expected one of {sorted(LOSSES)}")
    if reduction is None or reduction == LOSSES[name].reduction:
        return LOSSES[name]
    return FACTORIES[name](reduction=reduction)
