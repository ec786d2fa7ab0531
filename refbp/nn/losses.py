"""Loss functions J(y_hat, y) and their gradients dJ/dy_hat, each matching a torch function.

y_hat is the network output a(L), shape (N, d_L). Each loss gives its value (eq. 3) and the
gradient that starts the backward pass, dJ/da(L) (eq. 4). Each matches the torch function
named in its docstring to the last detail that changes a number (clamps included), so that
torch.autograd is an exact oracle.

=============== ============================================ ==========================
name            J                                            dJ/dy_hat
=============== ============================================ ==========================
half_sse        1/2 sum_{n,k} (y_hat - y)^2                  y_hat - y
mse             1/(N d) sum_{n,k} (y_hat - y)^2              2 (y_hat - y) / (N d)
bce             -1/(N d) sum y log p + (1 - y) log(1 - p)    (p - y) / (p (1 - p) N d)
cross_entropy   1/N sum_n (logsumexp(z_n) - z_n[y_n])        (softmax(z) - onehot(y)) / N
=============== ============================================ ==========================

(bce: p = y_hat, the sigmoid output. cross_entropy: y_hat = z(L), the logits, identity output.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["BCE_EPS", "BCE_LOG_FLOOR", "LOSSES", "Loss", "get_loss"]

BCE_LOG_FLOOR = -100.0
"""torch.nn.functional.binary_cross_entropy clamps log(p) and log(1 - p) at -100, so that a
saturated sigmoid (p exactly 0 or 1) gives a finite loss; we clamp identically."""

BCE_EPS = 1e-12
"""torch's binary_cross_entropy backward divides by max(p (1 - p), 1e-12); so do we, so a
saturated p gives a finite (and identical) gradient."""


@dataclass(frozen=True)
class Loss:
    """One loss: J, dJ/dy_hat, the torch function it matches and the output it needs.

    Attributes:
        name: the name used in ``MLP(loss=...)``.
        value: (y_hat (N, d_L), y) -> J, a 0-dim tensor.
        gradient: (y_hat (N, d_L), y) -> dJ/dy_hat, a new (N, d_L) tensor.
        torch_equivalent: the torch function this loss reproduces.
        equation: J and dJ/dy_hat in plain text.
        output_activation: the only activation allowed on the last layer, or None for any.
        targets: "values" (y is (N, d_L), same dtype as y_hat) or "classes" (y is (N,) int64).
    """

    name: str
    value: Callable[[Tensor, Tensor], Tensor]
    gradient: Callable[[Tensor, Tensor], Tensor]
    torch_equivalent: str
    equation: str
    output_activation: str | None
    targets: str


# ---- half_sse: the seed's loss --------------------------------------------------------
def _half_sse(y_hat: Tensor, y: Tensor) -> Tensor:
    r = y_hat - y  # (N, d_L)
    return 0.5 * torch.sum(r * r)  # J = 1/2 sum (y_hat - y)^2


def _half_sse_gradient(y_hat: Tensor, y: Tensor) -> Tensor:
    return y_hat - y  # dJ/dy_hat = y_hat - y   (the seed writes y - y_hat: wrong sign)


# ---- mse ------------------------------------------------------------------------------
def _mse(y_hat: Tensor, y: Tensor) -> Tensor:
    r = y_hat - y  # (N, d_L)
    return torch.mean(r * r)  # J = 1/(N d) sum (y_hat - y)^2


def _mse_gradient(y_hat: Tensor, y: Tensor) -> Tensor:
    return (y_hat - y).mul_(2.0 / y_hat.numel())  # dJ/dy_hat = 2 (y_hat - y) / (N d)


# ---- bce: binary cross-entropy on probabilities ---------------------------------------
def _bce(p: Tensor, y: Tensor) -> Tensor:
    log_p = torch.clamp_min(torch.log(p), BCE_LOG_FLOOR)  # (N, d_L)
    log_1mp = torch.clamp_min(torch.log(1.0 - p), BCE_LOG_FLOOR)  # (N, d_L)
    return -torch.mean(y * log_p + (1.0 - y) * log_1mp)  # J = -mean(y log p + (1-y) log(1-p))


def _bce_gradient(p: Tensor, y: Tensor) -> Tensor:
    # dJ/dp = (p - y) / (p (1 - p)) / (N d), the denominator floored at BCE_EPS as in torch
    denominator = torch.clamp_min((1.0 - p) * p, BCE_EPS).mul_(p.numel())
    return (p - y).div_(denominator)


# ---- cross_entropy: softmax + negative log-likelihood on the logits z(L) ---------------
def _cross_entropy(z: Tensor, y: Tensor) -> Tensor:
    N = z.shape[0]
    log_norm = torch.logsumexp(z, dim=1)  # (N,)  logsumexp is shifted by max: no overflow
    z_true = z.gather(1, y.unsqueeze(1)).squeeze(1)  # (N,)  z_n[y_n]
    return torch.sum(log_norm - z_true) / N  # J = 1/N sum_n (logsumexp(z_n) - z_n[y_n])


def _cross_entropy_gradient(z: Tensor, y: Tensor) -> Tensor:
    N = z.shape[0]
    dJ_dz = torch.softmax(z, dim=1)  # (N, C)  softmax(z), stable at any |z|
    dJ_dz[torch.arange(N, device=z.device), y] -= 1.0  # softmax(z) - onehot(y)
    return dJ_dz.div_(N)  # mean over the batch


LOSSES: dict[str, Loss] = {
    loss.name: loss
    for loss in (
        Loss(
            "half_sse",
            _half_sse,
            _half_sse_gradient,
            "0.5 * ((y_hat - y) ** 2).sum()",
            "J = 1/2 sum (y_hat - y)^2 ;  dJ/dy_hat = y_hat - y",
            output_activation=None,
            targets="values",
        ),
        Loss(
            "mse",
            _mse,
            _mse_gradient,
            "torch.nn.functional.mse_loss(y_hat, y)",
            "J = mean (y_hat - y)^2 ;  dJ/dy_hat = 2 (y_hat - y) / (N d)",
            output_activation=None,
            targets="values",
        ),
        Loss(
            "bce",
            _bce,
            _bce_gradient,
            "torch.nn.functional.binary_cross_entropy(y_hat, y)",
            "J = -mean(y log p + (1-y) log(1-p)) ;  dJ/dp = (p - y) / (p (1-p) N d)",
            output_activation="sigmoid",
            targets="values",
        ),
        Loss(
            "cross_entropy",
            _cross_entropy,
            _cross_entropy_gradient,
            "torch.nn.functional.cross_entropy(z, y)",
            "J = mean_n (logsumexp(z_n) - z_n[y_n]) ;  dJ/dz = (softmax(z) - onehot(y)) / N",
            output_activation="identity",
            targets="classes",
        ),
    )
}
"""Every loss refbp knows, by name."""


def get_loss(name: object) -> Loss:
    """Look up a loss by name; a clear ValueError lists the valid names otherwise."""
    if not isinstance(name, str) or name not in LOSSES:
        raise ValueError(f"loss={name!r} is not a known loss; expected one of {sorted(LOSSES)}")
    return LOSSES[name]
