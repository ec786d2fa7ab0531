"""The seed's network trained on XOR twice: refbp's manual gradients with plain gradient
descent, and torch.autograd with torch.optim.SGD, from the same initial parameters.

    python -m refbp.examples.train_xor            # writes reports/training.png
    python -m refbp.examples.train_xor --steps 5000 --lr 2 --out reports

Both runs take the step W(i) <- W(i) - lr dJ/dW(i), b(i) <- b(i) - lr dJ/db(i) in float64, so
the two loss curves coincide to round-off: what differs is only the order of a few sums.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..apps.seed import seed_network, seed_point
from ..nn.mlp import MLP
from .curves import TrainingCurves, plot_curves
from .descent import gradient_descent_step

__all__ = ["LEARNING_RATE", "STEPS", "TrainingCurves", "main", "plot", "train_autograd", "train_manual", "train_xor"]

LEARNING_RATE = 2.0
"""Step size for J = 1/2 sum of squares over 4 points: large enough that the 2-3-1 sigmoid
network leaves the plateau at J = 0.5 within a few thousand steps."""

STEPS = 4000
"""Gradient-descent steps; from seed 0 the network solves XOR (J < 0.01) well before this."""


def train_manual(net: MLP, X: torch.Tensor, y: torch.Tensor, *, steps: int, lr: float) -> list[float]:
    """Plain gradient descent with refbp's manual gradients; returns J before each step."""
    net = net.to()  # a copy: the caller's parameters stay as they were
    losses = []
    for _ in range(steps):
        cache = net.forward(X)
        losses.append(float(net.loss(cache, y)))  # (3)
        grads = net.backward(cache, y, keep_intermediates=False)  # (4)-(9)
        gradient_descent_step(net, grads, lr)  # W(i) <- W(i) - lr dJ/dW(i), b(i) likewise
    return losses


def train_autograd(net: MLP, X: torch.Tensor, y: torch.Tensor, *, steps: int, lr: float) -> list[float]:
    """The same network as torch.nn.Linear layers, trained with autograd and torch.optim.SGD."""
    layers = []
    for W, b in zip(net.weights, net.biases, strict=True):
        linear = torch.nn.Linear(W.shape[1], W.shape[0], dtype=W.dtype)
        with torch.no_grad():
            linear.weight.copy_(W)
            linear.bias.copy_(b)
        layers += [linear, torch.nn.Sigmoid()]
    model = torch.nn.Sequential(*layers)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        J = 0.5 * ((model(X) - y) ** 2).sum()  # J = 1/2 ||y - y_hat||^2
        losses.append(float(J.detach()))
        J.backward()
        optimizer.step()
    return losses


def train_xor(*, steps: int = STEPS, lr: float = LEARNING_RATE, seed: int = 0) -> TrainingCurves:
    """Both runs on XOR from ``refbp.seed.seed_network(seed)``."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r} must be an int >= 1")
    if not lr > 0:
        raise ValueError(f"lr={lr!r} must be a positive step size")
    net = seed_network(seed)
    X, y = seed_point()
    return TrainingCurves(
        manual=train_manual(net, X, y, steps=steps, lr=lr), autograd=train_autograd(net, X, y, steps=steps, lr=lr)
    )


def plot(curves: TrainingCurves, path: str | Path) -> Path | None:
    """Both loss curves and their difference as a PNG; None (and a message) without matplotlib."""
    return plot_curves(
        curves, path, title="The seed's 2-3-1 sigmoid network on XOR, float64", log_y=True,
        labels=("torch.autograd + torch.optim.SGD", "refbp manual gradients + plain GD"),
        ylabel="J = 1/2 ||y - y_hat||^2", xlabel="gradient-descent step",
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m refbp.examples.train_xor", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--lr", type=float, default=LEARNING_RATE)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="reports", help="folder for training.png (default reports)")
    args = parser.parse_args(argv)
    curves = train_xor(steps=args.steps, lr=args.lr, seed=args.seed)
    print(f"J at step 0: {curves.manual[0]:.6f}, after {args.steps} steps: {curves.manual[-1]:.3e} (manual)")
    print(f"largest difference between the curves: {curves.max_abs_difference:.3e} absolute, ")
    print(f"{curves.max_rel_difference:.3e} relative (float64 eps = {torch.finfo(torch.float64).eps:.3e})")
    written = plot(curves, Path(args.out) / "training.png")
    if written is not None:
        print(f"wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
