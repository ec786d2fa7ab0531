"""Why dJ/dX: an adversarial example, one step along sign(dJ/dX) that raises the loss.

    python -m refbp.examples.adversarial

The fast gradient sign method: X_adv = X + eps sign(dJ/dX). To first order it raises J by
eps ||dJ/dX||_1, the most any perturbation with entries in [-eps, eps] can; a random sign
pattern of the same size raises it far less. dJ/dX is eq. (9) of refbp's backward pass.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
from torch import Tensor

from ..nn.mlp import MLP
from .saliency import train

__all__ = ["EPSILON", "Attack", "fgsm", "main", "make_data"]

EPSILON = 0.2
"""Size of the perturbation per input entry; the inputs lie in [-2, 2]."""


def make_data(n: int = 64, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Two classes in the plane, y = 1 inside the circle of radius 1.2, else 0 (float64)."""
    generator = torch.Generator().manual_seed(seed)
    X = torch.empty(n, 2, dtype=torch.float64).uniform_(-2.0, 2.0, generator=generator)  # (N, 2)
    y = ((X * X).sum(dim=1, keepdim=True) < 1.44).to(torch.float64)  # (N, 1)
    return X, y


@dataclass(frozen=True)
class Attack:
    """J and accuracy at X, at X + eps sign(dJ/dX), and at X + eps times random signs."""

    J_clean: float
    J_adversarial: float
    J_random: float
    accuracy_clean: float
    accuracy_adversarial: float
    first_order_increase: float  # eps ||dJ/dX||_1


def _loss_and_accuracy(net: MLP, X: Tensor, y: Tensor) -> tuple[float, float]:
    cache = net.forward(X)
    accuracy = float(((cache.y_hat > 0.5).to(y.dtype) == y).to(torch.float64).mean())
    return float(net.loss(cache, y)), accuracy


def fgsm(net: MLP, X: Tensor, y: Tensor, eps: float = EPSILON, *, seed: int = 0) -> tuple[Tensor, Attack]:
    """X_adv = X + eps sign(dJ/dX), and what it does to J and to the accuracy."""
    if not eps > 0:
        raise ValueError(f"eps={eps!r} must be > 0")
    dJ_dX = net.backward(net.forward(X), y).dJ_dX  # (9)   (N, d_0)
    X_adv = X + eps * torch.sign(dJ_dX)  # (N, d_0)
    generator = torch.Generator().manual_seed(seed)
    random_signs = torch.randint(0, 2, X.shape, generator=generator).to(X.dtype) * 2 - 1  # (N, d_0)
    J_clean, acc_clean = _loss_and_accuracy(net, X, y)
    J_adv, acc_adv = _loss_and_accuracy(net, X_adv, y)
    J_random, _ = _loss_and_accuracy(net, X + eps * random_signs, y)
    increase = eps * float(dJ_dX.abs().sum())
    return X_adv, Attack(J_clean, J_adv, J_random, acc_clean, acc_adv, increase)


def main() -> int:
    X, y = make_data()
    net = train(X, y, steps=1500, lr=0.05)
    _, attack = fgsm(net, X, y)
    print(__doc__.split("\n\n")[2])
    print(f"\nJ at X:                        {attack.J_clean:.4f}   accuracy {attack.accuracy_clean:.0%}")
    adversarial = f"{attack.J_adversarial:.4f}   accuracy {attack.accuracy_adversarial:.0%}"
    print(f"J at X + {EPSILON} sign(dJ/dX):      {adversarial}")
    print(f"J at X + {EPSILON} x random signs:   {attack.J_random:.4f}")
    print(f"first-order prediction J + eps ||dJ/dX||_1 = {attack.J_clean + attack.first_order_increase:.4f}")
    return 0 if attack.J_adversarial > attack.J_random > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
