"""The backward pass started from any upstream gradient dJ/da(L), not only from a loss.

``MLP.backward`` starts from eq. (4), dJ/da(L) = dloss/dy_hat. When the network's output
feeds something else (another network, a score), dJ/da(L) comes from above instead: the
dJ/dX of the network on top, or 1 for the gradient of a plain sum of outputs.
"""

from __future__ import annotations

from torch import Tensor

from ..activations import get_activation
from ..backward import Gradients
from ..network import MLP, ForwardCache

__all__ = ["backward_from"]


def backward_from(net: MLP, cache: ForwardCache, dJ_da_L: Tensor) -> Gradients:
    """Eqs. (5)-(9) for ``net`` from its ``cache``, starting at a given dJ/da(L) (N, d_L).

    Returns every gradient of the scalar J whose gradient with respect to a(L) is ``dJ_da_L``
    (weight decay, if the network has any, included in dJ/dW as in eq. 6)."""
    if not isinstance(dJ_da_L, Tensor) or tuple(dJ_da_L.shape) != tuple(cache.y_hat.shape):
        shape = tuple(dJ_da_L.shape) if isinstance(dJ_da_L, Tensor) else type(dJ_da_L).__name__
        raise ValueError(f"dJ_da_L must have a(L)'s shape {tuple(cache.y_hat.shape)} = (N, d_L), got {shape}")
    L = net.L
    dJ_dW: list[Tensor | None] = [None] * (L + 1)
    dJ_db: list[Tensor | None] = [None] * (L + 1)
    dJ_dz: list[Tensor | None] = [None] * (L + 1)
    dJ_da: list[Tensor | None] = [None] * (L + 1)
    dJ_da[L] = dJ_da_L  # given, in place of eq. (4)   (N, d_L)
    for i in range(L, 0, -1):
        W, a_prev = net.weights[i - 1], cache.a[i - 1]  # (d_i, d_{i-1}), (N, d_{i-1})
        act = get_activation(net.activations[i - 1])
        t = cache.a[i] if act.derivative_of == "a" else cache.z[i]
        if t is None:
            raise ValueError(f"cache.z[{i}] is None; run net.forward(X) with keep_z=True")
        dJ_da_i = dJ_da[i]
        assert dJ_da_i is not None
        dJ_dz_i = dJ_da_i * act.derivative(t)  # (5) dJ/dz(i) = dJ/da(i) o f'(z(i))   (N, d_i)
        dJ_dW_i = dJ_dz_i.T @ a_prev  # (6) dJ/dz(i)^T a(i-1)   (d_i, N) (N, d_{i-1})
        dJ_dW[i] = dJ_dW_i + net.weight_decay * W if net.weight_decay else dJ_dW_i  # (6) + lambda W(i)
        dJ_db[i] = dJ_dz_i.sum(dim=0)  # (7) column sums   (d_i,)
        dJ_dz[i] = dJ_dz_i
        dJ_da[i - 1] = dJ_dz_i @ W  # (8) dJ/da(i-1) = dJ/dz(i) W(i)   (N, d_{i-1}); at i = 1, (9) dJ/dX
    return Gradients(dJ_dW=dJ_dW, dJ_db=dJ_db, dJ_dz=dJ_dz, dJ_da=dJ_da)
