"""Activation functions a = f(z) and their derivatives f'(z), each written by hand.

Every activation is a pair: ``f`` computes a(i) = f(z(i)) in the forward pass (eq. 2) and
``derivative`` computes f'(z(i)) for the backward pass (eq. 5). The derivative reads either
a or z from the forward cache, whichever gives the exact value most cheaply and stably
(``derivative_of``), so the backward pass never recomputes a forward quantity.

``Activation.chain`` is eq. (5) itself, dJ/dz = dJ/da o f'(z), written into dJ/da's own
storage. The common activations (identity, sigmoid, tanh, relu) do it in at most two passes
over the (N, d) tensor and no new one, gelu a few rows at a time; that is what keeps the
manual backward pass near autograd's fused kernels (see benchmarks/). The others multiply by
``derivative``.

Each record also carries its oracle, ``torch_fn`` (torch's own implementation, which
refbp.verify differentiates with autograd and perturbs with finite differences), the torch
module it corresponds to, and its ``pieces``: where a piecewise definition changes formula.

Conventions at the kinks follow torch, so that autograd can be the oracle:
relu'(0) = 0 and leaky_relu'(0) = slope.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .chunks import chunk_budget, chunks
from .pieces import Pieces

__all__ = [
    "ACTIVATIONS",
    "LEAKY_RELU_SLOPE",
    "SOFTPLUS_THRESHOLD",
    "Activation",
    "elu",
    "gelu",
    "get_activation",
    "leaky_relu",
    "softplus",
]

LEAKY_RELU_SLOPE = 0.01
"""Slope of leaky_relu for z < 0; torch.nn.functional.leaky_relu's default."""

SOFTPLUS_THRESHOLD = 20.0
"""torch.nn.functional.softplus returns z itself where beta z > 20; we do the same, so the
derivative there is exactly 1 (sigmoid(20) differs from 1 by 2e-9)."""

_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_CUBIC = 0.044715
"""The cubic coefficient of GELU's tanh approximation (Hendrycks and Gimpel; torch's value)."""


@dataclass(frozen=True)
class Activation:
    """One activation: its forward map, its derivative, the formula for both, and its oracle.

    Attributes:
        name: the name used in ``MLP(activations=[...])``.
        f: z (N, d) -> a (N, d).
        derivative: t -> f'(z), a new (N, d) tensor that the caller may overwrite, where t
            is a (the activation) or z (the pre-activation), as ``derivative_of`` says.
        derivative_of: "a" when f'(z) is exactly a function of a = f(z) (sigmoid, tanh,
            relu, ...), so the forward pass need not keep z; "z" otherwise.
        equation: f and f' in plain text, as printed by ``refbp explain``.
        torch_fn: torch's own implementation of f (the oracle; never used by the manual path).
        torch_module: a factory of the equivalent ``torch.nn`` module.
        pieces: where f changes formula (relu at 0, softplus at its threshold), or None for
            a function with one formula everywhere.
        chain_in_place: (t, dJ_da) -> dJ_da o f'(z), computed in dJ_da's storage; None to
            use ``derivative``. Always call it through :meth:`chain`.
    """

    name: str
    f: Callable[[Tensor], Tensor]
    derivative: Callable[[Tensor], Tensor]
    derivative_of: str
    equation: str
    torch_fn: Callable[[Tensor], Tensor]
    torch_module: Callable[[], torch.nn.Module]
    pieces: Pieces | None = None
    chain_in_place: Callable[[Tensor, Tensor], Tensor] | None = None

    def chain(self, t: Tensor, dJ_da: Tensor) -> Tensor:
        """Eq. (5), dJ/dz = dJ/da o f'(z), overwriting ``dJ_da`` (N, d), which the caller gives up.

        ``t`` is a or z from the cache, as ``derivative_of`` says. Returns dJ/dz (N, d): for
        most activations ``dJ_da`` itself, now holding dJ/dz."""
        if self.chain_in_place is not None:
            return self.chain_in_place(t, dJ_da)
        return dJ_da.mul_(self.derivative(t))  # dJ/da <- dJ/da o f'(z)

    @property
    def kinked(self) -> bool:
        """True when f' jumps somewhere (relu, leaky_relu): a kink, not just a seam."""
        return self.pieces is not None and self.name in ("relu", "leaky_relu")


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
    """dJ/dz = dJ/da o f'(z) in dJ/da's storage, a few rows at a time (one temporary per row:
    refbp.nn.chunks). a = max(z, 0) >= 0, so sign(a) is 1 where z > 0 and 0 elsewhere: exactly
    f'(z), and the fastest of torch's public ways to apply it here (multiplying by a float
    sign ran 2.5x faster than by a boolean mask, 6x faster than masked_fill_)."""
    if a.numel() * a.element_size() <= chunk_budget(a.device):  # one chunk: no bookkeeping for a small step
        return dJ_da.mul_(torch.sign(a))  # dJ/da o f'(z)
    g = dJ_da if dJ_da.is_contiguous() else dJ_da.contiguous()
    width = a.shape[-1]
    rows_a, rows_g = a.reshape(-1, width), g.view(-1, width)  # (M, h) each
    for part in chunks(rows_a.shape[0], width * a.element_size(), device=a.device):
        rows_g[part].mul_(torch.sign(rows_a[part]))  # dJ/da o f'(z)
    return g


_KINK_AT_0 = Pieces((0.0,), "z = 0")


# ---- leaky_relu (any slope > 0) ----------------------------------------------------------
def leaky_relu(slope: float = LEAKY_RELU_SLOPE) -> Activation:
    """leaky_relu with the given negative slope (torch.nn.LeakyReLU(negative_slope))."""
    _check_positive(slope, "slope")

    def f(z: Tensor) -> Tensor:
        return torch.where(z > 0, z, z * slope)  # z if z > 0 else slope z

    def derivative(a: Tensor) -> Tensor:
        # f'(z) = 1 if z > 0 else slope   (slope at z = 0, as torch); a > 0 exactly when z > 0
        return torch.full_like(a, slope).masked_fill_(a > 0, 1.0)

    return Activation(
        "leaky_relu", f, derivative, "a",
        f"a = z if z > 0 else {slope:g} z ;  f'(z) = 1 if z > 0 else {slope:g}",
        torch_fn=lambda z: F.leaky_relu(z, slope),
        torch_module=lambda: torch.nn.LeakyReLU(slope),
        pieces=_KINK_AT_0,
    )  # fmt: skip


# ---- softplus (beta > 0, threshold) ------------------------------------------------------
def softplus(beta: float = 1.0, threshold: float = SOFTPLUS_THRESHOLD) -> Activation:
    """softplus as torch.nn.Softplus(beta, threshold): log(1 + e^(beta z)) / beta, and z
    itself where beta z > threshold."""
    _check_positive(beta, "beta")

    def f(z: Tensor) -> Tensor:
        bz = z * beta
        # log(1 + exp(bz)) = max(bz, 0) + log1p(exp(-|bz|)): no overflow at any z
        a = torch.clamp_min(bz, 0.0).add_(torch.log1p(torch.exp(-torch.abs(bz)))).div_(beta)
        return torch.where(bz > threshold, z, a)

    def derivative(z: Tensor) -> Tensor:
        # f'(z) = sigmoid(beta z)   (exactly 1 above the threshold, where f(z) = z)
        bz = z * beta
        return torch.where(bz > threshold, 1.0, torch.sigmoid(bz)).to(z.dtype)

    b = "" if beta == 1.0 else f"{beta:g} "
    return Activation(
        "softplus", f, derivative, "z",
        f"a = log(1 + e^({b}z)){'' if beta == 1.0 else f' / {beta:g}'} ;  f'(z) = sigmoid({b}z)",
        torch_fn=lambda z: F.softplus(z, beta, threshold),
        torch_module=lambda: torch.nn.Softplus(beta, threshold),
        pieces=Pieces((threshold / beta,), f"z = {threshold / beta:g} (torch's threshold)"),
    )  # fmt: skip


# ---- gelu: exact (erf) or tanh approximation ----------------------------------------------
def _gelu(z: Tensor) -> Tensor:
    # a = z Phi(z), Phi the normal CDF: the value from torch's fused kernel, one pass over the
    # tensor, as sigmoid and tanh take theirs; the derivative below is refbp's own
    return F.gelu(z)


_LOG2_INV_SQRT_2PI = -0.5 * math.log2(2.0 * math.pi)
_HALF_LOG2_E = 0.5 * math.log2(math.e)
"""phi(z) = exp(-z^2 / 2) / sqrt(2 pi) = 2^(-z^2 log2(e) / 2 + log2(1 / sqrt(2 pi))): one fused
multiply-add and one exp2: torch's exp2 runs 3-5x faster than its exp on this project's CPUs,
float32 and float64 alike; the extra rounding of the exponent's scale is an ulp of it."""


def _normal_cdf(z: Tensor) -> Tensor:
    """Phi(z) = (1 + erf(z / sqrt 2)) / 2, the standard normal CDF, in a new tensor.

    float32: 1/2 + (gelu(z) - z / 2) / z, four passes that together take about half the time of
    erf alone, because torch's vectorised GELU kernel (z Phi(z)) runs 4-5x faster than its erf
    here (one thread). It carries Phi to within a few ulps: over one million normal z, gelu's
    dJ/dz lies within 4.0e-7 of the exact value (torch's own backward within 2.7e-7, the erf
    path within 1.4e-7). Subtracting z / 2 before dividing keeps the quotient exact where
    z / 2 is subnormal (gelu(z) is then z / 2 rounded as we round it); at z = 0 the 0/0 is set
    to 1/2, and so is a NaN z's: the caller's z phi(z) carries the NaN, as it carries the
    inf * 0 at z = +-inf. Other dtypes: from erf, three passes (in bfloat16 the GELU kernel
    rounds z Phi(z) once more than we round z / 2, so the subnormal case would not cancel)."""
    if z.dtype != torch.float32:
        Phi = torch.mul(z, _INV_SQRT_2).erf_()  # erf(z / sqrt 2)
        return torch.add(z.new_full((), 0.5), Phi, alpha=0.5, out=Phi)  # (1 + erf(z / sqrt 2)) / 2
    r = F.gelu(z).add_(z, alpha=-0.5)  # z Phi(z) - z / 2
    Phi = torch.addcdiv(z.new_full((), 0.5), r, z, out=r)  # 1/2 + (z Phi(z) - z / 2) / z
    return Phi.nan_to_num_(nan=0.5)  # z = 0: Phi(0) = 1/2 (no inf: |gelu(z) - z / 2| <= |z| / 2)


def _gelu_chain(z: Tensor, dJ_da: Tensor) -> Tensor:
    """dJ/dz = dJ/da o (Phi(z) + z phi(z)), phi(z) = exp(-z^2 / 2) / sqrt(2 pi), in dJ/da's
    storage, a few rows at a time (two temporaries per row: refbp.nn.chunks).

    Eight passes over each chunk in float32 (seven in other dtypes), of operations that torch
    vectorises; they take half the time of the seven of erf and exp (torch's fused
    gelu_backward is a backward kernel, not for the manual path): Phi (``_normal_cdf``),
    phi's exponent and exp2, Phi + z phi, and the product with dJ/da."""
    g = dJ_da if dJ_da.is_contiguous() else dJ_da.contiguous()
    width = z.shape[-1] if z.dim() else 1
    rows_z, rows_g = z.reshape(-1, width), g.view(-1, width)  # (M, h) each
    log2_c = torch.full((), _LOG2_INV_SQRT_2PI, dtype=z.dtype, device=z.device)
    for part in chunks(rows_z.shape[0], 2 * width * z.element_size(), device=z.device):
        zc = rows_z[part]
        Phi = _normal_cdf(zc)
        phi = torch.addcmul(log2_c, zc, zc, value=-_HALF_LOG2_E).exp2_()  # 2^(-z^2 log2(e) / 2 - log2(sqrt(2 pi)))
        rows_g[part].mul_(Phi.addcmul_(zc, phi))  # dJ/da o (Phi(z) + z phi(z))
        del Phi, phi  # before the next chunk's: two temporaries at a time, not three
    return g


def _gelu_derivative(z: Tensor) -> Tensor:
    return _gelu_chain(z, torch.ones_like(z))  # f'(z) = Phi(z) + z phi(z)


def _gelu_tanh(z: Tensor) -> Tensor:
    u = torch.mul(z, z).mul_(_GELU_CUBIC).add_(1.0).mul_(z).mul_(_SQRT_2_OVER_PI)  # u = c (z + k z^3)
    return torch.tanh(u).add_(1.0).mul_(z).mul_(0.5)  # 1/2 z (1 + tanh u)


def _gelu_tanh_derivative(z: Tensor) -> Tensor:
    # f'(z) = 1/2 (1 + t) + 1/2 z (1 - t^2) c (1 + 3 k z^2),   t = tanh(u), u = c (z + k z^3)
    z2 = torch.mul(z, z)
    u = (z2 * _GELU_CUBIC).add_(1.0).mul_(z).mul_(_SQRT_2_OVER_PI)
    t = torch.tanh(u)
    du_dz = z2.mul_(3.0 * _GELU_CUBIC).add_(1.0).mul_(_SQRT_2_OVER_PI)  # c (1 + 3 k z^2)
    slope = torch.mul(t, t).neg_().add_(1.0).mul_(du_dz).mul_(z).mul_(0.5)  # 1/2 z (1 - t^2) du/dz
    return t.add_(1.0).mul_(0.5).add_(slope)


def gelu(approximate: str = "none") -> Activation:
    """GELU as torch.nn.GELU(approximate): "none" is the exact z Phi(z), "tanh" the
    approximation 1/2 z (1 + tanh(sqrt(2/pi) (z + 0.044715 z^3)))."""
    if approximate == "none":
        return Activation(
            "gelu", _gelu, _gelu_derivative, "z", "a = z Phi(z) ;  f'(z) = Phi(z) + z phi(z)",
            torch_fn=F.gelu, torch_module=lambda: torch.nn.GELU(), chain_in_place=_gelu_chain,
        )  # fmt: skip
    if approximate == "tanh":
        return Activation(
            "gelu_tanh", _gelu_tanh, _gelu_tanh_derivative, "z",
            "a = 1/2 z (1 + tanh u), u = sqrt(2/pi) (z + 0.044715 z^3) ;  "
            "f'(z) = 1/2 (1 + tanh u) + 1/2 z (1 - tanh^2 u) du/dz",
            torch_fn=lambda z: F.gelu(z, approximate="tanh"), torch_module=lambda: torch.nn.GELU("tanh"),
        )  # fmt: skip
    raise ValueError(f"approximate={approximate!r}; expected 'none' (exact erf form) or 'tanh'")


# ---- silu -----------------------------------------------------------------------------
def _silu(z: Tensor) -> Tensor:
    return torch.sigmoid(z).mul_(z)  # z sigmoid(z)


def _silu_derivative(z: Tensor) -> Tensor:
    # f'(z) = s (1 + z (1 - s)),   s = sigmoid(z)
    s = torch.sigmoid(z)
    return (1.0 - s).mul_(z).add_(1.0).mul_(s)


# ---- elu (alpha > 0) ------------------------------------------------------------------
def elu(alpha: float = 1.0) -> Activation:
    """elu as torch.nn.ELU(alpha): z for z > 0, alpha (e^z - 1) otherwise."""
    _check_positive(alpha, "alpha")

    def f(z: Tensor) -> Tensor:
        return torch.where(z > 0, z, torch.expm1(torch.clamp_max(z, 0.0)) * alpha)  # alpha (e^z - 1) for z <= 0

    def derivative(z: Tensor) -> Tensor:
        # f'(z) = 1 if z > 0 else alpha e^z   (from z, not a + alpha, which loses digits as a -> -alpha)
        return torch.where(z > 0, 1.0, torch.exp(torch.clamp_max(z, 0.0)) * alpha).to(z.dtype)

    a = "" if alpha == 1.0 else f"{alpha:g} "
    return Activation(
        "elu", f, derivative, "z",
        f"a = z if z > 0 else {a}(e^z - 1) ;  f'(z) = 1 if z > 0 else {a}e^z",
        torch_fn=lambda z: F.elu(z, alpha), torch_module=lambda: torch.nn.ELU(alpha),
        # f' is continuous at 0 only for alpha = 1, and f'' jumps there for every alpha: a
        # central difference straddling 0 errs by about h/4, above the finite-difference tolerance
        pieces=Pieces((0.0,), "z = 0 (f'' jumps)"),
    )  # fmt: skip


def _check_positive(value: float, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}={value!r} must be a finite number > 0")


ACTIVATIONS: dict[str, Activation] = {
    act.name: act
    for act in (
        Activation(
            "identity", _identity, _identity_derivative, "a", "a = z ;  f'(z) = 1",
            torch_fn=lambda z: z, torch_module=torch.nn.Identity, chain_in_place=_identity_chain,
        ),
        Activation(
            "sigmoid", _sigmoid, _sigmoid_derivative, "a", "a = 1 / (1 + e^-z) ;  f'(z) = a (1 - a)",
            torch_fn=torch.sigmoid, torch_module=torch.nn.Sigmoid, chain_in_place=_sigmoid_chain,
        ),
        Activation(
            "tanh", torch.tanh, _tanh_derivative, "a", "a = tanh z ;  f'(z) = 1 - a^2",
            torch_fn=torch.tanh, torch_module=torch.nn.Tanh, chain_in_place=_tanh_chain,
        ),
        Activation(
            "relu", _relu, _relu_derivative, "a", "a = max(z, 0) ;  f'(z) = [z > 0]",
            torch_fn=F.relu, torch_module=torch.nn.ReLU, pieces=_KINK_AT_0, chain_in_place=_relu_chain,
        ),
        leaky_relu(),
        softplus(),
        gelu("none"),
        gelu("tanh"),
        Activation(
            "silu", _silu, _silu_derivative, "z", "a = z s, s = sigmoid(z) ;  f'(z) = s (1 + z (1 - s))",
            torch_fn=F.silu, torch_module=torch.nn.SiLU,
        ),
        elu(),
    )
}  # fmt: skip
"""Every activation refbp knows, by name, with torch's default parameters."""


def get_activation(name: object, *, argument: str = "activation") -> Activation:
    """Look up an activation by name; a clear ValueError lists the valid names otherwise."""
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise ValueError(f"{argument}={name!r} is not a known activation; expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]
