"""Why dJ/dX: a saliency map, the gradient of the output with respect to the input.

    python -m refbp.examples.saliency

A network is trained on data where y depends on features 0 and 2 only. Afterwards the
backward pass is started from dJ/da(L) = 1 instead of from the loss (Network.backward_from):
what comes out at the bottom, eq. (9), is d(sum_n y_hat_n)/dX, and since row n of y_hat
depends only on row n of X, row n of it is d y_hat_n / dX_n. Averaged |.| per feature, it
says which inputs the trained network looks at: features 0 and 2.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
from torch import Tensor

from ..nn.mlp import MLP, backward_from
from .descent import gradient_descent_step

__all__ = ["RELEVANT_FEATURES", "Saliency", "main", "make_data", "output_gradient", "saliency", "train"]

RELEVANT_FEATURES = (0, 2)
"""y = sigmoid(3 x_0 - 3 x_2): the only features the target depends on."""


def make_data(n: int = 128, d: int = 6, seed: int = 0) -> tuple[Tensor, Tensor]:
    """X ~ U(-1, 1) (n, d) and y = sigmoid(3 x_0 - 3 x_2) (n, 1), float64."""
    generator = torch.Generator().manual_seed(seed)
    X = torch.empty(n, d, dtype=torch.float64).uniform_(-1.0, 1.0, generator=generator)  # (N, d_0)
    y = torch.sigmoid(3.0 * X[:, 0:1] - 3.0 * X[:, 2:3])  # (N, 1)
    return X, y


def train(X: Tensor, y: Tensor, *, steps: int = 400, lr: float = 0.05, seed: int = 0) -> MLP:
    """A d-8-1 tanh/sigmoid network, half_sse, plain gradient descent with refbp's gradients."""
    net = MLP.random([X.shape[1], 8, 1], activations=["tanh", "sigmoid"], loss="half_sse", seed=seed)
    for _ in range(steps):
        grads = net.backward(net.forward(X), y, keep_intermediates=False)
        gradient_descent_step(net, grads, lr)  # W(i) <- W(i) - lr dJ/dW(i), b(i) likewise
    return net


def output_gradient(net: MLP, X: Tensor) -> Tensor:
    """d(sum_n y_hat_n)/dX (N, d_0): the backward pass from dJ/da(L) = 1, ending at eq. (9)."""
    cache = net.forward(X)
    return backward_from(net, cache, torch.ones_like(cache.y_hat)).dJ_dX  # (N, d_0)


@dataclass(frozen=True)
class Saliency:
    """Mean |d y_hat / dX| per feature, and the features ranked by it."""

    per_feature: list[float]

    @property
    def ranking(self) -> list[int]:
        return sorted(range(len(self.per_feature)), key=lambda k: -self.per_feature[k])


def saliency(net: MLP, X: Tensor) -> Saliency:
    """Mean over the observations of |d y_hat_n / dX_n|, feature by feature."""
    return Saliency(per_feature=[float(v) for v in output_gradient(net, X).abs().mean(dim=0)])


def main() -> int:
    X, y = make_data()
    net = train(X, y)
    s = saliency(net, X)
    print(__doc__.split("\n\n")[2])
    print("\nmean |d y_hat / dX| per feature after training:")
    for k, value in enumerate(s.per_feature):
        mark = "  <- y depends on it" if k in RELEVANT_FEATURES else ""
        print(f"  x_{k}: {value:.4f} {'#' * round(40 * value / max(s.per_feature))}{mark}")
    return 0 if set(s.ranking[:2]) == set(RELEVANT_FEATURES) else 1


if __name__ == "__main__":
    sys.exit(main())
