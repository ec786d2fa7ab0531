"""Second order by hand: tangents of the forward pass, and Pearlmutter's R-operator of the backward pass.

For a direction v over the parameters (V_W, V_b for each layer; optionally V_X for the input),

    R{.} = d/dr (.)(w + r v) |_{r=0}

applied to every line of the forward pass gives the tangents (forward mode, a JVP), and applied
to every line of the backward pass gives the Hessian-vector product H v = R{dJ/dw} at about the
cost of one more backward pass (Pearlmutter, "Fast exact multiplication by the Hessian", 1994).
With a(0) = X, z(l) = a(l-1) W(l)^T + b(l), a(l) = f(z(l)), J = loss(a(L), y):

    forward (tangents)                          backward (the R-operator)
    R{z}     = R{a_prev} W^T + a_prev V_W^T + V_b     R{dJ/da(L)} = H_loss R{a(L)}             (loss Hessian)
    R{a}     = f'(z) o R{z}                          R{dJ/dz}    = R{dJ/da} o f'(z) + dJ/da o f''(z) o R{z}
    R{J}     = <dJ/da(L), R{a(L)}> + lambda <W, V_W>     R{dJ/da_prev} = R{dJ/dz} W + dJ/dz V_W
                                                     (H v)_W = R{dJ/dz}^T a_prev + dJ/dz^T R{a_prev} + lambda V_W
                                                     (H v)_b = sum_rows R{dJ/dz}

The Gauss-Newton product G v = J_f^T H_loss J_f v (J_f: the Jacobian of a(L) with respect to the
parameters) is the same machinery without the terms that carry a first derivative dJ/d(.) into
the R-backward (dJ/da o f''(z) o R{z}, dJ/dz V_W, dJ/dz^T R{a_prev}): it backpropagates
H_loss J_f v through the network's linearisation. The penalty lambda/2 ||W||^2 is quadratic,
its Hessian lambda I exact, and both products keep it.

The rules live here, beside each other, rather than in each layer's module: a layer that has
no rule yet is refused by name (NotImplementedError), never approximated. Layers with rules:
Linear, Dense, Elementwise (every activation refbp knows), Flatten, Embedding, Softmax,
LogSoftmax, Dropout in eval mode; losses: half_sse, mse, bce, cross_entropy, nll, multi_margin
(either reduction). Everything here is manual: torch's forward
operations only, no autograd (tests/test_manual.py proves it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .activations import Activation
from .dense import Dense
from .dropout import Dropout
from .elementwise import Elementwise
from .embedding import Embedding
from .flatten import Flatten
from .keys import Key
from .layer import Layer
from .linear import Linear
from .losses import BCE_EPS, Loss
from .network import Network
from .softmax import LogSoftmax, Softmax
from .validation import describe

__all__ = [
    "LOSSES_WITH_HESSIAN",
    "SecondOrder",
    "Tangents",
    "gvp",
    "hvp",
    "jvp",
    "loss_hessian_product",
    "second_derivative",
    "supported_layer",
]

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


def _first_derivative(act: Activation, z: Tensor, a: Tensor) -> Tensor:
    return act.derivative(a if act.derivative_of == "a" else z)  # f'(z), a new tensor


# ---- the loss: its Hessian times a tangent ----------------------------------------------------
def loss_hessian_product(loss: Loss, y_hat: Tensor, y: Tensor, r: Tensor) -> Tensor:
    """R{dJ/dy_hat} = H_loss r: the derivative of the loss gradient along r = R{y_hat}.

    With n the mean's count (N d, or M counted targets; 1 for reduction="sum"):
    half_sse: r.  mse: 2 r / n.  bce: g'(p) r / n with g(p) = (p - y) / (p (1 - p)), so
    g'(p) = (p^2 - 2 p y + y) / (p (1 - p))^2, and 1 / eps where torch floors p (1 - p) at eps.
    cross_entropy, per counted row: (s o r - s (s . r)) / n, s = softmax(z).  nll and
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
        Rg = s * r2 - s * (s * r2).sum(dim=1, keepdim=True)  # d softmax(z) along r: s o r - s (s . r)
        return (Rg * keep.unsqueeze(1) / (keep.sum() if mean else 1)).reshape(y_hat.shape)
    if name in ("nll", "multi_margin"):
        return torch.zeros_like(r)  # J is linear in y_hat on each piece
    raise NotImplementedError(f"loss {name!r} has no Hessian product in refbp.nn.second_order")


# ---- which layers have rules --------------------------------------------------------------------
def supported_layer(layer: Layer) -> bool:
    """True when ``layer`` has tangent and R-backward rules here."""
    if isinstance(layer, Dropout):
        return not layer.training or layer.p == 0.0
    return isinstance(layer, (Linear, Dense, Elementwise, Flatten, Embedding, Softmax, LogSoftmax))


def _check(net: Network) -> None:
    if not isinstance(net, Network):
        raise TypeError(f"net must be a refbp Network, got {type(net).__name__}")
    if not net.layout.identity:
        raise ValueError(
            f"second order works in torch's layout; this network uses layout {net.layout.name!r}: "
            "build it with layout='torch'"
        )
    for l, layer in enumerate(net.layers, start=1):
        if not supported_layer(layer):
            raise NotImplementedError(
                f"layer {l} ({layer.describe()}) has no second-order rule yet; refbp.nn.second_order covers "
                "Linear, Dense, Elementwise, Flatten, Embedding, Softmax, LogSoftmax and Dropout in eval mode"
            )
    if net.loss_fn.name not in LOSSES_WITH_HESSIAN:
        raise NotImplementedError(
            f"loss {net.loss_fn.name!r} has no Hessian product yet; refbp.nn.second_order covers {LOSSES_WITH_HESSIAN}"
        )


def _directions(net: Network, v: Mapping[str, Any]) -> dict[Key, Tensor]:
    """The direction by parameter key: v's tensors checked against the parameters; absent ones 0."""
    if not isinstance(v, Mapping):
        raise TypeError(f"v must be a dict parameter name -> tensor, got {type(v).__name__}")
    params = net.parameters()
    unknown = sorted(set(v) - set(params) - {"X"})
    if unknown:
        raise ValueError(f"v names {unknown}, which are not parameters of the network; expected some of {list(params)}")
    out: dict[Key, Tensor] = {}
    for name, p in params.items():
        t = v.get(name)
        if t is None:
            out[Key.parse(name)] = torch.zeros_like(p)
            continue
        if not isinstance(t, Tensor) or tuple(t.shape) != tuple(p.shape) or t.dtype != p.dtype:
            raise ValueError(f"v[{name!r}] must be a tensor like the parameter ({describe(p)}), got {_what(t)}")
        out[Key.parse(name)] = t.to(p.device)
    return out


def _what(t: object) -> str:
    return describe(t) if isinstance(t, Tensor) else type(t).__name__


@dataclass
class Tangents:
    """The forward pass's tangents along v (forward mode, one manual pass).

    Attributes:
        J: the loss at the point; RJ: its tangent R{J} = dJ . v (a JVP).
        Ra: Ra[l] = R{a(l)}, Ra[0] = R{X} (zeros unless v has "X").
        Rz: R{z(l)} of each Dense layer l, by key ("z1", ...).
    """

    J: Tensor
    RJ: Tensor
    Ra: list[Tensor]
    Rz: dict[str, Tensor] = field(default_factory=dict)
    slopes: dict[int, Tensor] = field(default_factory=dict, repr=False)
    """f'(z) of each activation, by layer: the R-backward reads it again."""

    def as_dict(self) -> dict[str, Tensor]:
        """Every tangent by the name of its tensor: "z1", "a1", ..., "J"."""
        out = {f"a{l}": t for l, t in enumerate(self.Ra) if l > 0}
        out.update(self.Rz)
        return {**out, "J": self.RJ}


@dataclass
class SecondOrder:
    """H v (or G v) and every R{dJ/d(intermediate)} of the R-backward.

    Attributes:
        product: "hessian" or "gauss_newton".
        Hv: parameter name -> (H v) restricted to that parameter, and "X" (the input's part).
        R_delta: intermediate name ("a1", "z1", ...) -> R{dJ/d(it)}.
        tangents: the forward pass's tangents along v.
    """

    product: str
    Hv: dict[str, Tensor]
    R_delta: dict[str, Tensor]
    tangents: Tangents


def _parameter(net: Network, kind: str, path: tuple[int, ...], V: Mapping[Key, Tensor]) -> Tensor:
    """V for the parameter ``kind`` of the layer at ``path`` (a tied one's shared direction)."""
    key = Key(kind, path)
    return V[net.ties.get(key, key)]


def jvp(net: Network, X: Tensor, y: object, v: Mapping[str, Any]) -> Tangents:
    """The tangents of every intermediate and of J along v (parameters, and "X" for the input)."""
    _check(net)
    V = _directions(net, v)
    cache = net.forward(X, keep_intermediates=True)
    targets = net.targets_from_user(y, cache)
    return _tangents(net, cache.a, cache.saved, targets, V, _input_direction(v, cache.a[0]))


def _input_direction(v: Mapping[str, Any], X: Tensor) -> Tensor:
    t = v.get("X")
    if t is None:
        return torch.zeros_like(X) if X.is_floating_point() else torch.zeros(X.shape)
    if not X.is_floating_point():
        raise ValueError("v['X']: the input is a tensor of indices; it has no tangent")
    if not isinstance(t, Tensor) or tuple(t.shape) != tuple(X.shape):
        raise ValueError(f"v['X'] must be a tensor of X's shape {tuple(X.shape)}, got {_what(t)}")
    return t.to(dtype=X.dtype, device=X.device)


def _tangents(
    net: Network, a: list[Tensor], saved: list[Any], y: Tensor, V: Mapping[Key, Tensor], RX: Tensor
) -> Tangents:
    Ra, Rz, slopes = [RX], {}, {}
    for l, layer in enumerate(net.layers, start=1):
        path, x, Rx = (l,), a[l - 1], Ra[l - 1]
        if isinstance(layer, (Linear, Dense)):
            W, VW = layer.params["W"], _parameter(net, "W", path, V)
            Rlin = Rx @ W.T + x @ VW.T  # R{z} = R{a_prev} W^T + a_prev V_W^T + V_b
            if "b" in layer.params:
                Rlin = Rlin + _parameter(net, "b", path, V)
            if isinstance(layer, Dense):
                Rz[f"z{l}"] = Rlin
                slopes[l] = _first_derivative(layer.activation, saved[l], a[l])
                Rlin = slopes[l] * Rlin  # R{a} = f'(z) o R{z}
            Ra.append(Rlin)
        elif isinstance(layer, Elementwise):
            slopes[l] = _first_derivative(layer.activation, x, a[l])
            Ra.append(slopes[l] * Rx)  # R{a} = f'(x) o R{x}
        elif isinstance(layer, Embedding):
            Ra.append(_parameter(net, "E", path, V)[x])  # out = E[idx]: R{out} = V_E[idx]
        elif isinstance(layer, Softmax):  # s = softmax(x): R{s} = s o (R{x} - sum(s o R{x}))
            s = a[l]
            Ra.append(s * (Rx - (s * Rx).sum(layer.dim, keepdim=True)))
        elif isinstance(layer, LogSoftmax):  # a = x - logsumexp(x): R{a} = R{x} - sum(s o R{x}), s = e^a
            s = a[l].exp()
            Ra.append(Rx - (s * Rx).sum(layer.dim, keepdim=True))
        else:  # Flatten, Dropout in eval: a reshape or the identity
            Ra.append(Rx.reshape(a[l].shape))
    g_L = net.loss_fn.gradient(a[-1], y)  # dJ/da(L)
    RJ = (g_L * Ra[-1]).sum()  # R{J} = <dJ/da(L), R{a(L)}>
    J = net.loss_fn.value(a[-1], y)
    if net.weight_decay:
        params = net.parameters()
        for key in net.decayed_keys():
            RJ = RJ + net.weight_decay * (params[str(key)] * V[key]).sum()  # + lambda <W, V_W>
            J = J + 0.5 * net.weight_decay * (params[str(key)] ** 2).sum()
    return Tangents(J, RJ, Ra, Rz, slopes)


def hvp(net: Network, X: Tensor, y: object, v: Mapping[str, Any]) -> SecondOrder:
    """H v: the Hessian of J (parameters and, when v has "X", the input) times v, by the R-operator."""
    return _r_backward(net, X, y, v, gauss_newton=False)


def gvp(net: Network, X: Tensor, y: object, v: Mapping[str, Any]) -> SecondOrder:
    """G v: the generalised Gauss-Newton matrix J_f^T H_loss J_f (+ lambda I on decayed weights) times v."""
    return _r_backward(net, X, y, v, gauss_newton=True)


def _r_backward(net: Network, X: Tensor, y: object, v: Mapping[str, Any], *, gauss_newton: bool) -> SecondOrder:
    _check(net)
    V = _directions(net, v)
    cache = net.forward(X, keep_intermediates=True)
    targets = net.targets_from_user(y, cache)
    a, saved = cache.a, cache.saved
    tangents = _tangents(net, a, saved, targets, V, _input_direction(v, a[0]))
    Ra = tangents.Ra
    first = 0.0 if gauss_newton else 1.0  # the terms that carry a first derivative dJ/d(.)
    g = net.loss_fn.gradient(a[-1], targets)  # dJ/da(L)
    Rg = loss_hessian_product(net.loss_fn, a[-1], targets, Ra[-1])  # R{dJ/da(L)} = H_loss R{a(L)}
    Hv: dict[Key, Tensor] = {}
    R_delta: dict[str, Tensor] = {}

    def add(key: Key, t: Tensor) -> None:  # a tied parameter gets the sum of its uses
        key = net.ties.get(key, key)
        Hv[key] = Hv[key] + t if key in Hv else t

    for l in range(net.L, 0, -1):
        layer, path, x, Rx = net.layers[l - 1], (l,), a[l - 1], Ra[l - 1]
        R_delta[f"a{l}"] = Rg
        if isinstance(layer, (Linear, Dense)):
            if isinstance(layer, Dense):
                z = saved[l]
                fp = tangents.slopes[l]  # f'(z)
                Rz = tangents.Rz[f"z{l}"]
                # R{dJ/dz} = R{dJ/da} o f'(z) + dJ/da o f''(z) o R{z};   dJ/dz = dJ/da o f'(z)
                Rg = Rg * fp + first * g * second_derivative(layer.activation, z, a[l]) * Rz
                g = g * fp
                R_delta[f"z{l}"] = Rg
            W, VW = layer.params["W"], _parameter(net, "W", path, V)
            g2, Rg2 = g.reshape(-1, W.shape[0]), Rg.reshape(-1, W.shape[0])  # (M, d_out): every row
            x2, Rx2 = x.reshape(-1, W.shape[1]), Rx.reshape(-1, W.shape[1])  # (M, d_in)
            HW = Rg2.T @ x2 + first * (g2.T @ Rx2)  # (H v)_W = R{dJ/dz}^T a_prev + dJ/dz^T R{a_prev}
            add(Key("W", path), HW)
            if "b" in layer.params:
                add(Key("b", path), Rg2.sum(dim=0))  # (H v)_b = sum_rows R{dJ/dz}
            Rg = Rg @ W + first * (g @ VW)  # R{dJ/da_prev} = R{dJ/dz} W + dJ/dz V_W
            g = g @ W  # dJ/da_prev = dJ/dz W
        elif isinstance(layer, Elementwise):
            act, t = layer.activation, x
            fp = tangents.slopes[l]  # f'(x)
            Rg = Rg * fp + first * g * second_derivative(act, t, a[l]) * Rx  # as Dense's f-part
            g = g * fp
        elif isinstance(layer, Embedding):  # dJ/dE[i] = sum over positions with idx = i of dJ/dout: linear in g
            E = layer.params["E"]
            HE = torch.zeros_like(E).index_add_(0, x.reshape(-1), Rg.reshape(-1, E.shape[1]))
            if layer.padding_idx is not None:
                HE[layer.padding_idx] = 0.0  # the padding row's gradient is 0 by definition, and so its R
            add(Key("E", path), HE)
        elif isinstance(layer, Softmax):
            # dJ/dx = s o (g - sum(g o s)):  R{dJ/dx} = R{s} o (g - sum(g o s)) + s o (R{g} - sum(R{g} o s + g o R{s}))
            s, Rs, d = a[l], Ra[l], layer.dim
            Rg_x = s * (Rg - (Rg * s).sum(d, keepdim=True)) + first * (
                Rs * (g - (g * s).sum(d, keepdim=True)) - s * (g * Rs).sum(d, keepdim=True)
            )
            g = s * (g - (g * s).sum(d, keepdim=True))
            Rg = Rg_x
        elif isinstance(layer, LogSoftmax):
            # dJ/dx = g - s sum(g):  R{dJ/dx} = R{g} - s sum(R{g}) - R{s} sum(g),  R{s} = s o R{a}
            s, d = a[l].exp(), layer.dim
            Rs = s * Ra[l]
            Rg = Rg - s * Rg.sum(d, keepdim=True) - first * Rs * g.sum(d, keepdim=True)
            g = g - s * g.sum(d, keepdim=True)
        else:  # Flatten, Dropout in eval
            Rg, g = Rg.reshape(x.shape), g.reshape(x.shape)
    if net.weight_decay:
        for key in net.decayed_keys():
            add(key, net.weight_decay * V[key])  # the penalty's Hessian: lambda V_W
    out = {str(key): Hv.get(key, torch.zeros_like(direction)) for key, direction in V.items()}
    if a[0].is_floating_point():
        out["X"] = Rg  # (H v)_X = R{dJ/dX}
    return SecondOrder("gauss_newton" if gauss_newton else "hessian", out, R_delta, tangents)
