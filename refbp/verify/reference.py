"""The oracle: the same network and loss built from torch's own functions, differentiated by
torch.autograd. Nothing here is shared with the manual path (not even the activations), so a
slip in refbp's formulas cannot hide in both."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..nn.network import MLP

__all__ = ["TORCH_ACTIVATIONS", "TORCH_LOSSES", "autograd_gradients", "torch_loss"]

TORCH_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "identity": lambda z: z,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "relu": F.relu,
    "leaky_relu": F.leaky_relu,  # negative_slope=0.01
    "softplus": F.softplus,  # beta=1, threshold=20
    "gelu": F.gelu,  # approximate="none": the exact erf form
    "silu": F.silu,
    "elu": F.elu,  # alpha=1
}
"""torch's own implementation of each activation refbp knows."""

TORCH_LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "half_sse": lambda y_hat, y: 0.5 * F.mse_loss(y_hat, y, reduction="sum"),
    "mse": F.mse_loss,
    "bce": F.binary_cross_entropy,
    "cross_entropy": F.cross_entropy,
}
"""torch's own implementation of each loss refbp knows."""


def torch_loss(net: MLP, X: Tensor, y: Tensor) -> Tensor:
    """J computed by torch's functions (no gradients): an independent check of the forward."""
    with torch.no_grad():
        return _forward(net, X.detach(), [W.detach() for W in net.weights], [b.detach() for b in net.biases], y)[0]


def autograd_gradients(
    net: MLP, X: Tensor, y: Tensor, *, dtype: torch.dtype | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """J and every gradient of ``net`` at (X, y), by torch.autograd.

    Args:
        dtype: evaluate in this dtype (default: the network's). float32 results are checked
            against a float64 reference, so that the reference's own rounding is negligible.

    Returns:
        (J, grads) with grads keyed like ``Gradients.as_dict()``: "W1", "b1", "z1", "a1", ...,
        "X"; intermediates come from ``retain_grad()``.
    """
    dtype = dtype or net.dtype
    with torch.enable_grad():
        X_leaf = X.detach().to(dtype).requires_grad_(True)
        Ws = [W.detach().to(dtype).requires_grad_(True) for W in net.weights]
        bs = [b.detach().to(dtype).requires_grad_(True) for b in net.biases]
        y_ref = y.detach().to(dtype) if y.is_floating_point() else y
        J, zs, as_ = _forward(net, X_leaf, Ws, bs, y_ref)
        for t in zs + as_:
            t.retain_grad()
        J.backward()
    grads: dict[str, Tensor] = {}
    for i in range(1, net.L + 1):
        grads[f"W{i}"] = _grad_of(Ws[i - 1])
        grads[f"b{i}"] = _grad_of(bs[i - 1])
        grads[f"z{i}"] = _grad_of(zs[i - 1])
        grads[f"a{i}"] = _grad_of(as_[i - 1])
    grads["X"] = _grad_of(X_leaf)
    return J.detach(), grads


def _forward(
    net: MLP, X: Tensor, Ws: list[Tensor], bs: list[Tensor], y: Tensor
) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    zs, as_ = [], []
    a = X
    for W, b, name in zip(Ws, bs, net.activations, strict=True):
        z = F.linear(a, W, b)  # a W^T + b, torch.nn.Linear's own op
        a = TORCH_ACTIVATIONS[name](z)
        zs.append(z)
        as_.append(a)
    J = TORCH_LOSSES[net.loss_name](a, y)
    if net.weight_decay:
        J = J + 0.5 * net.weight_decay * sum((W**2).sum() for W in Ws)
    return J, zs, as_


def _grad_of(t: Tensor) -> Tensor:
    # A tensor J does not depend on (a dead relu layer, say) has grad None: its gradient is 0.
    return t.grad.detach() if t.grad is not None else torch.zeros_like(t).detach()
