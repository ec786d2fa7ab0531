"""Curvature of refbp's elementwise pieces: every activation's f''(z), and the loss's Hessian
times a tangent, R{dJ/dy_hat} = H_loss R{y_hat}. The layers' R-backward rules
(``Layer.r_backward``, refbp.nn.second_order) read them; manual, no autograd.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .activations import Activation
from .losses import BCE_EPS, Loss

__all__ = ["LOSSES_WITH_HESSIAN", "first_derivative", "loss_hessian_product", "second_derivative"]

LOSSES_WITH_HESSIAN = ("half_sse", "mse", "bce", "cross_entropy", "nll", "multi_margin")
"""The losses whose Hessian product ``loss_hessian_product`` knows."""

_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_CUBIC = 0.044715


# ---- f''(z) of every activation -------------------------------------------------------------
def second_derivative(act: Activation, z: Tensor, a: Tensor) -> Tensor:
    """f''(z), entry by entry, from the pre-activation z and the activation a = f(z).

    Piecewise-linear activations (identity, relu, leaky_relu) have f'' = 0 wherever it exists
    (at their kink z = 0 it does not: the verifier leaves those entries unverified). The
    parameters of softplus and elu are read from the record's torch module."""
    name = act.name
    if name in ("identity", "relu", "leaky_relu"):
        return torch.zeros_like(z)  # f'' = 0 on each linear piece
    if name == "sigmoid":
        return a * (1.0 - a) * (1.0 - 2.0 * a)  # f'' = a (1 - a) (1 - 2a)
    if name == "tanh":
        return -2.0 * a * (1.0 - a * a)  # f'' = -2 a (1 - a^2)
    if name == "softplus":
        softplus = act.torch_module()
        assert isinstance(softplus, torch.nn.Softplus)
        beta, threshold = float(softplus.beta), float(softplus.threshold)
        s = torch.sigmoid(beta * z)
        return torch.where(beta * z > threshold, 0.0, beta * s * (1.0 - s))  # f'' = beta s (1 - s); 0 where f = z
    if name == "gelu":
        phi = torch.exp(-0.5 * z * z) * _INV_SQRT_2PI  # phi(z), the normal density
        return phi * (2.0 - z * z)  # f = z Phi(z): f'' = 2 phi(z) + z phi'(z) = phi(z) (2 - z^2)
    if name == "gelu_tanh":
        u = _SQRT_2_OVER_PI * (z + _GELU_CUBIC * z**3)  # u = c (z + k z^3)
        du = _SQRT_2_OVER_PI * (1.0 + 3.0 * _GELU_CUBIC * z * z)  # u' = c (1 + 3 k z^2)
        d2u = _SQRT_2_OVER_PI * 6.0 * _GELU_CUBIC * z  # u'' = 6 c k z
        t = torch.tanh(u)
        sech2 = 1.0 - t * t  # tanh' = 1 - t^2
        # f = 1/2 z (1 + t):  f'' = sech2 u' + 1/2 z (-2 t sech2 u'^2 + sech2 u'')
        return sech2 * du + 0.5 * z * sech2 * (d2u - 2.0 * t * du * du)
    if name == "silu":
        s = torch.sigmoid(z)
        return s * (1.0 - s) * (2.0 + z * (1.0 - 2.0 * s))  # f = z s: f'' = s (1 - s) (2 + z (1 - 2 s))
    if name == "elu":
        elu = act.torch_module()
        assert isinstance(elu, torch.nn.ELU)
        alpha = float(elu.alpha)
        return torch.where(z > 0, 0.0, alpha * torch.exp(torch.clamp_max(z, 0.0)))  # alpha e^z for z <= 0
    raise NotImplementedError(f"activation {name!r} has no second derivative in refbp.nn.second_order")


def first_derivative(act: Activation, z: Tensor, a: Tensor) -> Tensor:
    """f'(z), a new tensor, from z or a = f(z), whichever the activation's derivative reads."""
    return act.derivative(a if act.derivative_of == "a" else z)  # f'(z), a new tensor


# ---- the loss: its Hessian times a tangent ----------------------------------------------------
def loss_hessian_product(loss: Loss, y_hat: Tensor, y: Tensor, r: Tensor) -> Tensor:
    """R{dJ/dy_hat} = H_loss r: the derivative of the loss gradient along r = R{y_hat}.

    With n the mean's count (N d, or M counted targets; 1 for reduction="sum"):
    half_sse: r.  mse: 2 r / n.  bce: g'(p) r / n with g(p) = (p - y) / (p (1 - p)), so
    g'(p) = (p^2 - 2 p y + y) / (p (1 - p))^2, and 1 / eps where torch floors p (1 - p) at eps.
    cross_entropy, per counted row: s o (r - s . r) / n, s = softmax(z).  nll and
    multi_margin are linear in y_hat on each piece: H_loss = 0 (undefined on multi_margin's hinge)."""
    name, mean = loss.name, loss.reduction == "mean"
    if name == "half_sse":
        return r.clone()
    if name == "mse":
        return r * (2.0 / (y_hat.numel() if mean else 1))
    if name == "bce":
        p = y_hat
        q = (1.0 - p) * p
        curvature = torch.where(q < BCE_EPS, 1.0 / BCE_EPS, (p * p - 2.0 * p * y + y) / (q * q))
        return curvature * r / (y_hat.numel() if mean else 1)
    if name == "cross_entropy":
        C = y_hat.shape[-1]
        z2, r2, y2 = y_hat.reshape(-1, C), r.reshape(-1, C), y.reshape(-1)  # (M', C), (M', C), (M',)
        keep = torch.ones_like(y2, dtype=torch.bool) if loss.ignore_index is None else y2 != loss.ignore_index
        s = torch.softmax(z2, dim=1)  # (M', C)
        # d softmax(z) along r: s o (r - s . r) = s o (r' - s . r'), r' = r - r_k, since sum(s) = 1.
        # With k the most probable class, r' is 0 where s is largest: no difference of two nearly
        # equal terms (r_k - s . r when s_k -> 1) loses the result to rounding on a confident row
        k = s.argmax(dim=1, keepdim=True)  # (M', 1)
        r_k = r2 - r2.gather(1, k)  # (M', C)
        Rg = s * (r_k - (s * r_k).sum(dim=1, keepdim=True))
        return (Rg * keep.unsqueeze(1) / (keep.sum() if mean else 1)).reshape(y_hat.shape)
    if name in ("nll", "multi_margin"):
        return torch.zeros_like(r)  # J is linear in y_hat on each piece
    raise NotImplementedError(f"loss {name!r} has no Hessian product in refbp.nn.second_order")
