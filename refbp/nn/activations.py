"""Activation functions a = f(z) and their derivatives f'(z), each written by hand.

Every activation is a pair: ``f`` computes a(i) = f(z(i)) in the forward pass (eq. 2) and
``derivative`` computes f'(z(i)) for the backward pass (eq. 5). The derivative reads either
a or z from the forward cache, whichever gives the exact value most cheaply and stably
(``derivative_of``), so the backward pass never recomputes a forward quantity.

``Activation.chain`` is eq. (5) itself, dJ/dz = dJ/da o f'(z), written into dJ/da's own
storage. The common activations (identity, sigmoid, tanh, relu) do it in at most two passes
over the (N, d) tensor and no new one; that is what keeps the manual backward pass as fast
as autograd's fused kernels (see benchmarks/). The others multiply by ``derivative``.

Conventions at the kinks follow torch, so that autograd can be the oracle:
relu'(0) = 0 and leaky_relu'(0) = 0.01.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["ACTIVATIONS", "LEAKY_RELU_SLOPE", "Activation", "get_activation"]

LEAKY_RELU_SLOPE = 0.01
"""Slope of leaky_relu for z < 0; torch.nn.functional.leaky_relu's default."""

_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@dataclass(frozen=True)
class Activation:
    """One activation: its forward map, its derivative and the formula for both.

    Attributes:
        name: the name used in ``MLP(activations=[...])``.
        f: z (N, d) -> a (N, d).
        derivative: t -> f'(z), a new (N, d) tensor that the caller may overwrite, where t
            is a (the activation) or z (the pre-activation), as ``derivative_of`` says.
        derivative_of: "a" when f'(z) is exactly a function of a = f(z) (sigmoid, tanh,
            relu, ...), so the forward pass need not keep z; "z" otherwise.
        equation: f and f' in plain text, as printed by ``refbp explain``.
        kinked: True when f' jumps at z = 0 (relu, leaky_relu); finite differences that
            straddle z = 0 there are meaningless.
        chain_in_place: (t, dJ_da) -> dJ_da o f'(z), computed in dJ_da's storage; None to
            use ``derivative``. Always call it through :meth:`chain`.
    """

    name: str
    f: Callable[[Tensor], Tensor]
    derivative: Callable[[Tensor], Tensor]
    derivative_of: str
    equation: str
    kinked: bool = False
    chain_in_place: Callable[[Tensor, Tensor], Tensor] | None = None

    def chain(self, t: Tensor, dJ_da: Tensor) -> Tensor:
        """Eq. (5), dJ/dz = dJ/da o f'(z), overwriting ``dJ_da`` (N, d), which the caller gives up.

        ``t`` is a or z from the cache, as ``derivative_of`` says. Returns dJ/dz (N, d): for
        most activations ``dJ_da`` itself, now holding dJ/dz."""
        if self.chain_in_place is not None:
            return self.chain_in_place(t, dJ_da)
        return dJ_da.mul_(self.derivative(t))  # dJ/da <- dJ/da o f'(z)


# ---- identity -------------------------------------------------------------------------
def _identity(z: Tensor) -> Tensor:
    return z  # a is z itself: no copy


def _identity_derivative(a: Tensor) -> Tensor:
    return torch.ones_like(a)  # f'(z) = 1


def _identity_chain(a: Tensor, dJ_da: Tensor) -> Tensor:
    return dJ_da  # dJ/dz = dJ/da o 1 = dJ/da: nothing to compute


# ---- sigmoid --------------------------------------------------------------------------
def _sigmoid(z: Tensor) -> Tensor:
    return torch.sigmoid(z)  # 1 / (1 + exp(-z)), evaluated without overflow by torch


def _sigmoid_derivative(a: Tensor) -> Tensor:
    return (1.0 - a).mul_(a)  # f'(z) = a (1 - a)


def _sigmoid_chain(a: Tensor, dJ_da: Tensor) -> Tensor:
    g = dJ_da.mul_(a)  # g = dJ/da o a
    return g.addcmul_(g, a, value=-1.0)  # g - g o a = dJ/da o a (1 - a)


# ---- tanh -----------------------------------------------------------------------------
def _tanh_derivative(a: Tensor) -> Tensor:
    return torch.mul(a, a).neg_().add_(1.0)  # f'(z) = 1 - a^2


def _tanh_chain(a: Tensor, dJ_da: Tensor) -> Tensor:
    # f'(z) = 1 - a^2 = (1 - a)(1 + a): two passes over dJ/da and no temporary tensor
    dJ_da.addcmul_(dJ_da, a, value=-1.0)  # g - g o a = dJ/da o (1 - a)
    return dJ_da.addcmul_(dJ_da, a)  # g + g o a = dJ/da o (1 - a)(1 + a)


# ---- relu -----------------------------------------------------------------------------
def _relu(z: Tensor) -> Tensor:
    return torch.clamp_min(z, 0.0)  # max(z, 0)


def _relu_derivative(a: Tensor) -> Tensor:
    # f'(z) = 1 if z > 0 else 0   (0 at z = 0, as torch); a > 0 exactly when z > 0
    return (a > 0).to(a.dtype)


def _relu_chain(a: Tensor, dJ_da: Tensor) -> Tensor:
    # a = max(z, 0) >= 0, so sign(a) is 1 where z > 0 and 0 elsewhere: exactly f'(z)
    return dJ_da.mul_(torch.sign(a))  # dJ/da o f'(z)


# ---- leaky_relu -----------------------------------------------------------------------
def _leaky_relu(z: Tensor) -> Tensor:
    return torch.where(z > 0, z, z * LEAKY_RELU_SLOPE)  # z if z > 0 else 0.01 z


def _leaky_relu_derivative(a: Tensor) -> Tensor:
    # f'(z) = 1 if z > 0 else 0.01   (0.01 at z = 0, as torch); a > 0 exactly when z > 0
    return torch.full_like(a, LEAKY_RELU_SLOPE).masked_fill_(a > 0, 1.0)


# ---- softplus -------------------------------------------------------------------------
SOFTPLUS_THRESHOLD = 20.0
"""torch.nn.functional.softplus returns z itself for z > 20 (beta = 1); we do the same, so the
derivative there is exactly 1 (sigmoid(20) differs from 1 by 2e-9)."""


def _softplus(z: Tensor) -> Tensor:
    # log(1 + exp(z)) = max(z, 0) + log1p(exp(-|z|)): no overflow at any z
    a = torch.clamp_min(z, 0.0).add_(torch.log1p(torch.exp(-torch.abs(z))))
    return torch.where(z > SOFTPLUS_THRESHOLD, z, a)


def _softplus_derivative(z: Tensor) -> Tensor:
    # f'(z) = sigmoid(z)   (exactly 1 above the threshold, where f(z) = z)
    return torch.where(z > SOFTPLUS_THRESHOLD, 1.0, torch.sigmoid(z)).to(z.dtype)


# ---- gelu (exact, erf form: torch's default approximate="none") ------------------------
def _gelu(z: Tensor) -> Tensor:
    Phi = torch.erf(z * _INV_SQRT_2).add_(1.0).mul_(0.5)  # Phi(z), the normal CDF
    return Phi.mul_(z)  # z Phi(z)


def _gelu_derivative(z: Tensor) -> Tensor:
    # f'(z) = Phi(z) + z phi(z),   phi(z) = exp(-z^2 / 2) / sqrt(2 pi)
    Phi = torch.erf(z * _INV_SQRT_2).add_(1.0).mul_(0.5)
    z_phi = torch.mul(z, z).mul_(-0.5).exp_().mul_(_INV_SQRT_2PI).mul_(z)
    return Phi.add_(z_phi)


# ---- silu -----------------------------------------------------------------------------
def _silu(z: Tensor) -> Tensor:
    return torch.sigmoid(z).mul_(z)  # z sigmoid(z)


def _silu_derivative(z: Tensor) -> Tensor:
    # f'(z) = s (1 + z (1 - s)),   s = sigmoid(z)
    s = torch.sigmoid(z)
    return (1.0 - s).mul_(z).add_(1.0).mul_(s)


# ---- elu (alpha = 1) ------------------------------------------------------------------
def _elu(z: Tensor) -> Tensor:
    return torch.where(z > 0, z, torch.expm1(torch.clamp_max(z, 0.0)))  # z if z > 0 else e^z - 1


def _elu_derivative(z: Tensor) -> Tensor:
    # f'(z) = 1 if z > 0 else e^z   (e^z from z, not a + 1, which loses digits as a -> -1)
    return torch.where(z > 0, 1.0, torch.exp(torch.clamp_max(z, 0.0))).to(z.dtype)


ACTIVATIONS: dict[str, Activation] = {
    act.name: act
    for act in (
        Activation(
            "identity", _identity, _identity_derivative, "a", "a = z ;  f'(z) = 1", chain_in_place=_identity_chain
        ),
        Activation(
            "sigmoid",
            _sigmoid,
            _sigmoid_derivative,
            "a",
            "a = 1 / (1 + e^-z) ;  f'(z) = a (1 - a)",
            chain_in_place=_sigmoid_chain,
        ),
        Activation(
            "tanh", torch.tanh, _tanh_derivative, "a", "a = tanh z ;  f'(z) = 1 - a^2", chain_in_place=_tanh_chain
        ),
        Activation(
            "relu",
            _relu,
            _relu_derivative,
            "a",
            "a = max(z, 0) ;  f'(z) = [z > 0]",
            kinked=True,
            chain_in_place=_relu_chain,
        ),
        Activation(
            "leaky_relu",
            _leaky_relu,
            _leaky_relu_derivative,
            "a",
            "a = z if z > 0 else 0.01 z ;  f'(z) = 1 if z > 0 else 0.01",
            kinked=True,
        ),
        Activation(
            "softplus",
            _softplus,
            _softplus_derivative,
            "z",
            "a = log(1 + e^z) ;  f'(z) = sigmoid(z)",
        ),
        Activation(
            "gelu",
            _gelu,
            _gelu_derivative,
            "z",
            "a = z Phi(z) ;  f'(z) = Phi(z) + z phi(z)",
        ),
        Activation(
            "silu",
            _silu,
            _silu_derivative,
            "z",
            "a = z s, s = sigmoid(z) ;  f'(z) = s (1 + z (1 - s))",
        ),
        Activation(
            "elu",
            _elu,
            _elu_derivative,
            "z",
            "a = z if z > 0 else e^z - 1 ;  f'(z) = 1 if z > 0 else e^z",
        ),
    )
}
"""Every activation refbp knows, by name."""


def get_activation(name: object, *, argument: str = "activation") -> Activation:
    """Look up an activation by name; a clear ValueError lists the valid names otherwise."""
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise ValueError(f"{argument}={name!r} is not a known activation; expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]
