"""The backward pass by hand: every dJ/d(.) from the forward cache, no autograd anywhere.

For layers i = L .. 1, with "o" the elementwise product and 1 a column of N ones:

    (4)  dJ/da(L)   = dloss/dy_hat                              (N, d_L)    the loss's gradient
    (5)  dJ/dz(i)   = dJ/da(i) o f_i'(z(i))                     (N, d_i)
    (6)  dJ/dW(i)   = dJ/dz(i)^T a(i-1)  + lambda W(i)          (d_i, d_{i-1})
    (7)  dJ/db(i)   = dJ/dz(i)^T 1       (sum over the batch)   (d_i,)
    (8)  dJ/da(i-1) = dJ/dz(i) W(i)                             (N, d_{i-1})
    (9)  dJ/dX      = dJ/da(0)                                  (N, d_0)

Eq. (8) is how a layer hands its gradient to the one below; at i = 1 it yields dJ/dX, the
same quantity for the input. The seed's column-vector chain rule multiplies these factors
left to right; with one row per observation they are transposed and applied right to left.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .activations import get_activation
from .validation import check_same_dtype_device, describe

if TYPE_CHECKING:
    from .network import MLP, ForwardCache

__all__ = ["Gradients", "backward", "backward_from"]


@dataclass
class Gradients:
    """Every gradient of J, indexed as in the equations (index 0 unused for W, b, z).

    Attributes:
        dJ_dW: [None, dJ/dW(1), ..., dJ/dW(L)], dJ/dW(i) (d_i, d_{i-1}).
        dJ_db: [None, dJ/db(1), ..., dJ/db(L)], dJ/db(i) (d_i,).
        dJ_dz: [None, dJ/dz(1), ..., dJ/dz(L)], dJ/dz(i) (N, d_i); None where not kept.
        dJ_da: [dJ/dX, dJ/da(1), ..., dJ/da(L)], dJ/da(i) (N, d_i); None where not kept.
    """

    dJ_dW: list[Tensor | None]
    dJ_db: list[Tensor | None]
    dJ_dz: list[Tensor | None]
    dJ_da: list[Tensor | None]
    L: int = field(init=False)

    def __post_init__(self) -> None:
        self.L = len(self.dJ_dW) - 1

    @property
    def dJ_dX(self) -> Tensor:
        """dJ/dX = dJ/da(0), (N, d_0): eq. (9)."""
        dJ_dX = self.dJ_da[0]
        assert dJ_dX is not None  # always computed
        return dJ_dX

    def as_dict(self) -> dict[str, Tensor]:
        """{"W1", "b1", "z1", "a1", ..., "WL", "bL", "zL", "aL", "X"} -> dJ/d(that).

        Intermediates dropped by ``backward(..., intermediates=False)`` are left out."""
        out: dict[str, Tensor] = {}
        for i in range(1, self.L + 1):
            for key, values in (("W", self.dJ_dW), ("b", self.dJ_db), ("z", self.dJ_dz), ("a", self.dJ_da)):
                value = values[i]
                if value is not None:
                    out[f"{key}{i}"] = value
        out["X"] = self.dJ_dX
        return out


def backward(
    net: MLP, cache: ForwardCache, y: Tensor, *, intermediates: bool = True, release_cache: bool = False
) -> Gradients:
    """Compute eqs. (4)-(9) for ``net`` from its forward ``cache``, without autograd.

    Args:
        net: the network whose forward pass produced ``cache``.
        cache: the ForwardCache of ``net.forward(X)``; read, never modified (unless released).
        y: targets, as for ``net.loss``.
        intermediates: keep every dJ/dz(i) and dJ/da(i) (the default). With False only what a
            training step needs is kept (dJ/dW, dJ/db and dJ/dX); each dJ/dz(i), dJ/da(i) is
            freed as soon as the layer below has used it.
        release_cache: drop each a(i), z(i) from the cache as soon as it has been used for the
            last time, as autograd frees its saved tensors: with ``intermediates=False`` this
            is the leanest training step. The cache is only read otherwise, and cannot be used
            again after a release.

    Returns:
        Gradients with dJ/dW(i), dJ/db(i) for every layer, dJ/dX, and (by default) every
        dJ/dz(i) and dJ/da(i).
    """
    _check_cache(net, cache)
    y = net.check_targets(y, cache)
    # (4) dJ/da(L) = dloss/dy_hat   (N, d_L): a fresh tensor, handed over in a list so that the
    # loop owns the only reference and can overwrite and free it like every later dJ/da(i)
    upstream = [net.loss_fn.gradient(cache.y_hat, y)]
    return _backward_layers(net, cache, upstream, intermediates=intermediates, release_cache=release_cache, owned=True)


def backward_from(
    net: MLP, cache: ForwardCache, dJ_da_L: Tensor, *, intermediates: bool = True, release_cache: bool = False
) -> Gradients:
    """Eqs. (5)-(9) from a given dJ/da(L) (N, d_L) instead of a loss's eq. (4).

    This is how a gradient crosses from one network into another: when a(L) feeds something
    above it (a second network, a score), dJ/da(L) is what that something hands down, e.g. its
    own dJ/dX. ``backward`` is this function started from the loss. Options as for ``backward``;
    ``dJ_da_L`` itself is never modified."""
    _check_cache(net, cache)
    if not isinstance(dJ_da_L, Tensor) or dJ_da_L.shape != cache.y_hat.shape:
        got = describe(dJ_da_L) if isinstance(dJ_da_L, Tensor) else type(dJ_da_L).__name__
        raise ValueError(f"dJ_da_L must have a(L)'s shape {tuple(cache.y_hat.shape)} = (N, d_L), got {got}")
    check_same_dtype_device(dJ_da_L, "dJ_da_L", dtype=net.dtype, device=net.device)
    upstream = [dJ_da_L.detach() if dJ_da_L.requires_grad else dJ_da_L]
    return _backward_layers(net, cache, upstream, intermediates=intermediates, release_cache=release_cache, owned=False)


def _backward_layers(
    net: MLP, cache: ForwardCache, upstream: list[Tensor], *, intermediates: bool, release_cache: bool, owned: bool
) -> Gradients:
    """Eqs. (5)-(9), layer L down to 1, from ``upstream.pop()`` = dJ/da(L); ``owned``: the
    caller holds no other reference to it, so it may be overwritten (see ``backward``)."""
    L = net.L
    dJ_dW: list[Tensor | None] = [None] * (L + 1)
    dJ_db: list[Tensor | None] = [None] * (L + 1)
    dJ_dz: list[Tensor | None] = [None] * (L + 1)
    dJ_da: list[Tensor | None] = [None] * (L + 1)

    dJ_da_i = upstream.pop()  # dJ/da(L)   (N, d_L)
    for i in range(L, 0, -1):
        W = net.weights[i - 1]  # (d_i, d_{i-1})
        a_prev = cache.a[i - 1]  # a(i-1)          (N, d_{i-1})
        act = get_activation(net.activations[i - 1])
        t = cache.a[i] if act.derivative_of == "a" else cache.z[i]
        if t is None:
            raise ValueError(f"cache.z[{i}] is None but {act.name}'s derivative needs z({i})")

        # (5) dJ/dz(i) = dJ/da(i) o f'(z(i))   (N, d_i), computed in place by act.chain: on a
        # copy when dJ/da(i) is kept (or is the caller's dJ/da(L)), in place otherwise
        in_place = not intermediates and (i < L or owned)
        dJ_dz_i = act.chain(t, dJ_da_i if in_place else dJ_da_i.clone())

        if net.weight_decay:  # (6) dJ/dW(i) = dJ/dz(i)^T a(i-1) + lambda W(i)
            dJ_dW[i] = torch.addmm(W, dJ_dz_i.T, a_prev, beta=net.weight_decay)
        else:  # (6) dJ/dW(i) = dJ/dz(i)^T a(i-1)
            dJ_dW[i] = dJ_dz_i.T @ a_prev  # (d_i, N) @ (N, d_{i-1}) = (d_i, d_{i-1})
        dJ_db[i] = dJ_dz_i.sum(dim=0)  # (7) dJ/db(i) = sum over the batch    (d_i,)
        dJ_da_prev = dJ_dz_i @ W  # (8) dJ/da(i-1) = dJ/dz(i) W(i)   (N, d_i) @ (d_i, d_{i-1})

        if intermediates:
            dJ_dz[i], dJ_da[i] = dJ_dz_i, dJ_da_i
        dJ_da_i = dJ_da_prev  # the layer below starts from this; the old ones are freed
        del dJ_dz_i, dJ_da_prev, t
        if release_cache:  # a(i), z(i) have been used for the last time
            cache.release(i)

    dJ_da[0] = dJ_da_i  # (9) dJ/dX = dJ/da(0)   (N, d_0)
    return Gradients(dJ_dW=dJ_dW, dJ_db=dJ_db, dJ_dz=dJ_dz, dJ_da=dJ_da)


def _check_cache(net: MLP, cache: ForwardCache) -> None:
    if cache.released:
        raise ValueError("cache was released by an earlier backward(..., release_cache=True); run net.forward(X) again")
    if cache.L != net.L or tuple(cache.a[0].shape[1:]) != (net.dims[0],):
        raise ValueError(
            f"cache has {cache.L} layers and input width {cache.a[0].shape[1]}; it does not come from "
            f"this network ({net.L} layers, d_0 = {net.dims[0]}): pass the cache of net.forward(X)"
        )
