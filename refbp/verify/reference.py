"""The oracle: each network's function built from torch's own functions, differentiated by
torch.autograd. Every layer's ``torch_forward`` and every loss's ``torch_fn`` come from
torch.nn.functional (refbp.nn); none of refbp's manual formulas is used, so a slip in them
cannot hide in both.

    J, grads = autograd_gradients(net, X, y)      # grads: name -> dJ/d(that), like as_dict()
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from ..nn.activations import ACTIVATIONS
from ..nn.keys import Key
from ..nn.layer import Params, Tap
from ..nn.losses import LOSSES
from ..nn.network import Network

__all__ = ["TORCH_ACTIVATIONS", "TORCH_LOSSES", "autograd_gradients", "oracle_point", "torch_loss"]

TORCH_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {name: act.torch_fn for name, act in ACTIVATIONS.items()}
"""torch's own implementation of each activation refbp knows (the records' ``torch_fn``)."""

TORCH_LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {name: loss.torch_fn for name, loss in LOSSES.items()}
"""torch's own implementation of each loss refbp knows (the records' ``torch_fn``)."""


class _Retain(Tap):
    """Keeps every intermediate the oracle reports, with retain_grad, to read its gradient.

    With ``rounding`` > 0 it also imitates a lower precision: every intermediate, and the
    gradient that flows back into it, is multiplied by (1 + rounding u), u uniform in [-1, 1]
    per entry: a rounding of that precision at each step, as an estimate of how far rounding
    alone moves the gradients (refbp.verify.check's conditioning allowance). Uniform rather
    than +-1, so that two terms that cancel are not jittered alike half of the time."""

    def __init__(self, rounding: float = 0.0, generator: torch.Generator | None = None) -> None:
        self.kept: dict[str, Tensor] = {}
        self.rounding = rounding
        self.generator = generator

    def _jitter(self, t: Tensor) -> Tensor:
        u = torch.rand(t.shape, dtype=t.dtype, generator=self.generator).mul_(2.0).sub_(1.0)  # U(-1, 1)
        return t * (1.0 + self.rounding * u.to(t.device))

    def intermediate(self, key: Key, t: Tensor) -> Tensor:
        # a node of its own: an identity layer hands on its input itself, and two names for one
        # tensor would share one .grad (dJ/d(its input) instead of dJ/d(its output))
        t = self._jitter(t) if self.rounding and t.is_floating_point() else t.view_as(t)
        return self._keep(key, t)

    def centred(self, key: Key, t: Tensor, size: Callable[[], Tensor]) -> Tensor:
        if not (self.rounding and t.is_floating_point()):
            return self.intermediate(key, t)
        u = torch.rand(t.shape, dtype=t.dtype, generator=self.generator).mul_(2.0).sub_(1.0)  # U(-1, 1)
        # a rounding of the operands, eps (|x| + |mean|) / sigma, not of the difference: x_hat = 0
        # exactly in float64 is u-sized in float32 (refbp.nn.cancellation)
        return self._keep(key, t + self.rounding * u.to(t.device) * size().to(t.dtype))

    def _keep(self, key: Key, t: Tensor) -> Tensor:
        if t.requires_grad:
            t.retain_grad()
            if self.rounding:
                t.register_hook(self._jitter)
        self.kept[str(key)] = t
        return t

    def within(self, t: Tensor, domain: tuple[float, float]) -> Tensor:
        if not self.rounding:
            return t
        # a rounding must not push a probability past 0 or 1: keep the value inside, the gradient as is
        return t + (t.clamp(*domain) - t).detach()


def oracle_point(
    net: Network,
    X: Tensor,
    y: Tensor,
    noise: Mapping[tuple[int, ...], Tensor],
    *,
    dtype: torch.dtype,
    device: torch.device | str,
) -> tuple[Tensor, Tensor, dict[tuple[int, ...], Tensor]]:
    """X, y and the noise in ``dtype`` on ``device`` (integer tensors keep their dtype)."""

    def move(t: Tensor) -> Tensor:
        t = t.detach().to(device=device)
        return t.to(dtype) if t.is_floating_point() else t

    return move(X), move(y), {path: move(mask) for path, mask in noise.items()}


def torch_loss(net: Network, X: Tensor, y: Tensor, noise: Mapping[tuple[int, ...], Tensor] | None = None) -> Tensor:
    """J computed by torch's functions (no gradients): an independent check of the forward."""
    with torch.no_grad():
        params = net.oracle_params()
        return net.torch_J(X.detach(), y.detach(), Params(params, net.ties), noise or {})


def autograd_gradients(
    net: Network,
    X: Tensor,
    y: Tensor,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    noise: Mapping[tuple[int, ...], Tensor] | None = None,
    params: Mapping[Key, Tensor] | None = None,
    rounding: float = 0.0,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """J and every gradient of ``net`` at (X, y), by torch.autograd on the oracle.

    Args:
        dtype: evaluate in this dtype (default: the network's). Gradients in float32 and
            below are checked against a float64 reference, so that the reference's own
            rounding is negligible.
        device: evaluate on this device (default: the network's).
        noise: the dropout keep-masks the manual forward drew (``cache.noise``), by layer path.
        params: parameters to use instead of the network's own (``net.oracle_params()``'s keys).
        rounding, generator: imitate rounding at each intermediate (see _Retain); 0 for none.

    Returns:
        (J, grads), grads keyed like ``as_dict()``: "W1", "b1", "z1", "a1", ..., "X";
        intermediates come from ``retain_grad()``.
    """
    dtype = dtype or net.dtype
    device = device or net.device
    X_ref, y_ref, noise_ref = oracle_point(net, X, y, noise or {}, dtype=dtype, device=device)
    with torch.enable_grad():
        given = net.oracle_params(dtype=dtype, device=device) if params is None else params
        leaves = {key: t.detach().to(dtype=dtype, device=device).requires_grad_(True) for key, t in given.items()}
        if X_ref.is_floating_point():
            X_ref.requires_grad_(True)
        tap = _Retain(rounding, generator)
        J = net.torch_J(X_ref, y_ref, Params(leaves, net.ties), noise_ref, tap)
        J.backward()
    grads: dict[str, Tensor] = {str(key): _grad_of(t) for key, t in leaves.items()}
    grads.update({name: _grad_of(t) for name, t in tap.kept.items()})
    if X_ref.is_floating_point():
        grads["X"] = _grad_of(X_ref)
    return J.detach(), {name: grads[name] for name in net.names() if name in grads}


def _grad_of(t: Tensor) -> Tensor:
    # A tensor J does not depend on (a dead relu layer, say) has grad None: its gradient is 0.
    return t.grad.detach() if t.grad is not None else torch.zeros_like(t).detach()
