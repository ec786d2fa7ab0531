"""A textbook network checked as it is written: column vectors, NumPy, a deliberate bug.

    python -m refbp.examples.textbook

Books and courses often write backpropagation for one observation per *column*: z = W a + b
with b a column (d, 1), a mini-batch X of shape (d_0, N), the quadratic cost
C = 1/2 sum ||a(L) - y||^2, and

    delta(L) = (a(L) - y) o s'(z(L))          the output layer's error
    delta(l) = (W(l+1)^T delta(l+1)) o s'(z(l))
    dC/dW(l) = delta(l) a(l-1)^T ,   dC/db(l) = delta(l) 1      (row sums: over the batch)

``TextbookNetwork`` below is such a network in plain NumPy, written for this example. refbp
checks its gradients without an adapter: ``MLP.from_params(..., layout="columns")`` reads its
arrays as they are, and ``refbp.check`` reports in the same layout. Two deliberate bugs show
what the messages say: the output error without s'(z(L)) (the cross-entropy shortcut used with
the quadratic cost), and gradients averaged over the batch while the cost is summed.
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass

import numpy as np

from ..nn.mlp import MLP
from ..verify.check import CheckResult, check

__all__ = ["BUGS", "TextbookNetwork", "check_textbook", "main"]

BUGS = ("none", "output_delta_without_derivative", "batch_mean")
"""The variants of the backward pass this example runs."""


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


@dataclass
class TextbookNetwork:
    """Sigmoid layers in column-vector form, quadratic cost: the textbook's network.

    Attributes:
        weights: W(l) of shape (d_l, d_{l-1}).
        biases: b(l) of shape (d_l, 1), columns.
    """

    weights: list[np.ndarray]
    biases: list[np.ndarray]

    @classmethod
    def random(cls, sizes: list[int], seed: int = 0) -> TextbookNetwork:
        rng = np.random.default_rng(seed)
        weights = [rng.standard_normal((d_out, d_in)) / np.sqrt(d_in) for d_in, d_out in itertools.pairwise(sizes)]
        biases = [rng.standard_normal((d_out, 1)) for d_out in sizes[1:]]
        return cls(weights, biases)

    def cost(self, X: np.ndarray, y: np.ndarray) -> float:
        """C = 1/2 sum over the batch of ||a(L) - y||^2; X (d_0, N), y (d_L, N)."""
        a = X
        for W, b in zip(self.weights, self.biases, strict=True):
            a = _sigmoid(W @ a + b)  # a(l) = s(W(l) a(l-1) + b(l))   (d_l, N)
        return float(0.5 * np.sum((a - y) ** 2))

    def backprop(self, X: np.ndarray, y: np.ndarray, bug: str = "none") -> tuple[list[np.ndarray], list[np.ndarray]]:
        """(dC/dW(l), dC/db(l)) for every layer, with the chosen bug ("none" for the right lines)."""
        activations, zs = [X], []
        for W, b in zip(self.weights, self.biases, strict=True):
            zs.append(W @ activations[-1] + b)  # z(l) = W(l) a(l-1) + b(l)   (d_l, N)
            activations.append(_sigmoid(zs[-1]))  # a(l) = s(z(l))
        s_prime = [_sigmoid(z) * (1 - _sigmoid(z)) for z in zs]  # s'(z) = s(z)(1 - s(z))
        delta = activations[-1] - y  # dC/da(L) = a(L) - y   (d_L, N)
        if bug != "output_delta_without_derivative":
            delta = delta * s_prime[-1]  # delta(L) = (a(L) - y) o s'(z(L))
        grads_W: list[np.ndarray] = [np.empty(0)] * len(self.weights)
        grads_b: list[np.ndarray] = [np.empty(0)] * len(self.weights)
        for l in range(len(self.weights) - 1, -1, -1):
            grads_W[l] = delta @ activations[l].T  # dC/dW(l) = delta(l) a(l-1)^T   (d_l, d_{l-1})
            grads_b[l] = delta.sum(axis=1, keepdims=True)  # dC/db(l) = delta(l) 1   (d_l, 1)
            if l > 0:
                delta = (self.weights[l].T @ delta) * s_prime[l - 1]  # delta(l-1)
        if bug == "batch_mean":
            N = X.shape[1]
            grads_W, grads_b = [g / N for g in grads_W], [g / N for g in grads_b]
        return grads_W, grads_b


def check_textbook(bug: str = "none", *, sizes: list[int] | None = None, N: int = 4, seed: int = 0) -> CheckResult:
    """Check the textbook network's gradients (with ``bug``) with refbp, in its own layout."""
    if bug not in BUGS:
        raise ValueError(f"bug={bug!r}; expected one of {list(BUGS)}")
    sizes = sizes or [3, 4, 2]
    book = TextbookNetwork.random(sizes, seed)
    rng = np.random.default_rng(seed + 1)
    X = rng.uniform(-2.0, 2.0, (sizes[0], N))  # (d_0, N): one observation per column
    y = rng.uniform(0.0, 1.0, (sizes[-1], N))  # (d_L, N)
    grads_W, grads_b = book.backprop(X, y, bug)
    net = MLP.from_params(
        weights=book.weights, biases=book.biases, activations=["sigmoid"] * (len(sizes) - 1),
        loss="half_sse", layout="columns",
    )  # fmt: skip
    grads = {f"W{l}": g for l, g in enumerate(grads_W, start=1)} | {f"b{l}": g for l, g in enumerate(grads_b, start=1)}
    return check(net, X, y, grads=grads, J=book.cost(X, y))


def main() -> int:
    """Check the right backward pass, then each bug; print what refbp says."""
    for bug in BUGS:
        result = check_textbook(bug)
        print(f"== backprop with bug={bug!r}: {'PASSED' if result.passed else 'FAILED'}")
        if not result.passed:
            print(result.failure_message())
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
