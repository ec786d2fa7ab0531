"""One step of plain gradient descent with refbp's manual gradients, shared by the examples."""

from __future__ import annotations

from ..nn.mlp import MLP, Gradients

__all__ = ["gradient_descent_step"]


def gradient_descent_step(net: MLP, grads: Gradients, lr: float) -> None:
    """W(i) <- W(i) - lr dJ/dW(i) and b(i) <- b(i) - lr dJ/db(i) for every layer, in ``net``.

    New tensors replace the old ones (no in-place update), exactly as torch.optim.SGD's
    arithmetic: p - lr * g."""
    for i in range(1, net.L + 1):
        dJ_dW, dJ_db = grads.dJ_dW[i], grads.dJ_db[i]
        assert dJ_dW is not None and dJ_db is not None  # every layer's parameter gradients are kept
        net.weights[i - 1] = net.weights[i - 1] - lr * dJ_dW  # W(i) <- W(i) - lr dJ/dW(i)
        net.biases[i - 1] = net.biases[i - 1] - lr * dJ_db  # b(i) <- b(i) - lr dJ/db(i)
