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

Each layer writes its own two rules beside its backward pass (the layer protocol's optional
``tangent`` and ``r_backward``, refbp.nn.layer); the network runs them with the R-operator's
loops (refbp.nn.r_stack; a graph network with its own). The activations' f'' and the losses'
Hessian products are refbp.nn.curvature. A layer that has no rule is refused by name
(NotImplementedError), never approximated. Everything here is manual: torch's forward
operations only, no autograd (tests/test_manual.py proves it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .curvature import LOSSES_WITH_HESSIAN, loss_hessian_product, second_derivative
from .keys import Key
from .layer import Layer, Params, SecondContext
from .network import Network
from .r_stack import StackTangent
from .stack import walk_layers
from .validation import describe

__all__ = [
    "LOSSES_WITH_HESSIAN",
    "SecondOrder",
    "Tangents",
    "gvp",
    "hvp",
    "jvp",
    "loss_hessian_product",
    "missing_rule",
    "second_derivative",
    "supported_layer",
]


def supported_layer(layer: Layer) -> bool:
    """True when ``layer`` (and every layer inside it) has tangent and R-backward rules."""
    return layer.has_second_order


def missing_rule(net: Network) -> str | None:
    """The first layer of ``net`` without second-order rules, as "layer 3.1 (LayerNorm(8))", or None."""
    for path, layer in walk_layers(net.layers):
        inside = layer.sublayers()
        if not layer.has_second_order and all(sub.has_second_order for sub in inside):
            return f"layer {'.'.join(map(str, path))} ({layer.describe()})"
    return None


def _check(net: Network) -> None:
    if not isinstance(net, Network):
        raise TypeError(f"net must be a refbp Network, got {type(net).__name__}")
    if not net.layout.identity:
        raise ValueError(
            f"second order works in torch's layout; this network uses layout {net.layout.name!r}: "
            "build it with layout='torch'"
        )
    missing = missing_rule(net)
    if missing is not None:
        raise NotImplementedError(f"{missing} has no second-order rule yet (Layer.tangent and Layer.r_backward)")
    if net.loss_fn.name not in LOSSES_WITH_HESSIAN:
        raise NotImplementedError(
            f"loss {net.loss_fn.name!r} has no Hessian product yet; refbp.nn.curvature covers {LOSSES_WITH_HESSIAN}"
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
        Ra: Ra[l] = R{a(l)} of each layer (or graph node) l, Ra[0] = R{X} (zeros unless v has
            "X"; None when X holds indices).
        R: R{every other intermediate} by name: "z1" (a Dense layer's z), "a3.1" (an inner
            layer's output), "xhat2", ...
    """

    J: Tensor
    RJ: Tensor
    Ra: list[Tensor | None]
    R: dict[str, Tensor] = field(default_factory=dict)
    stack: StackTangent | None = field(default=None, repr=False)
    """The loop's own record (each layer's LayerTangent): the R-backward reads it again."""
    noise: dict[tuple[int, ...], Tensor] = field(default_factory=dict, repr=False)
    """The dropout masks the forward pass used, by layer path (to run the same function again)."""

    @property
    def Rz(self) -> dict[str, Tensor]:
        """R{z(l)} of the Dense layers, by name ("z1", ...): the seed's z/a view."""
        return {name: t for name, t in self.R.items() if name.startswith("z")}

    def as_dict(self) -> dict[str, Tensor]:
        """Every tangent by the name of its tensor: "z1", "a1", ..., "J"."""
        out = {f"a{l}": t for l, t in enumerate(self.Ra) if l > 0 and t is not None}
        out.update(self.R)
        return {**out, "J": self.RJ}


@dataclass
class SecondOrder:
    """H v (or G v) and every R{dJ/d(intermediate)} of the R-backward.

    Attributes:
        product: "hessian" or "gauss_newton".
        Hv: parameter name -> (H v) restricted to that parameter, and "X" (the input's part).
        R_delta: intermediate name ("a1", "z1", "a3.1", ...) -> R{dJ/d(it)}.
        tangents: the forward pass's tangents along v.
    """

    product: str
    Hv: dict[str, Tensor]
    R_delta: dict[str, Tensor]
    tangents: Tangents


Noise = Mapping[tuple[int, ...], Tensor] | None


def jvp(net: Network, X: Tensor, y: object, v: Mapping[str, Any], *, noise: Noise = None) -> Tangents:
    """The tangents of every intermediate and of J along v (parameters, and "X" for the input).

    ``noise``: the dropout masks to use (a cache's ``noise``), or None to draw new ones; the
    masks used are in ``result.noise``."""
    _check(net)
    V = _directions(net, v)
    cache = net.forward(X, keep_intermediates=True, update_stats=False, noise=noise)
    targets = net.targets_from_user(y, cache)
    return _tangents(net, cache, targets, V, _input_direction(v, cache.a[0]))


def _input_direction(v: Mapping[str, Any], X: Tensor) -> Tensor | None:
    t = v.get("X")
    if not X.is_floating_point():
        if t is not None:
            raise ValueError("v['X']: the input is a tensor of indices; it has no tangent")
        return None
    if t is None:
        return torch.zeros_like(X)
    if not isinstance(t, Tensor) or tuple(t.shape) != tuple(X.shape):
        raise ValueError(f"v['X'] must be a tensor of X's shape {tuple(X.shape)}, got {_what(t)}")
    return t.to(dtype=X.dtype, device=X.device)


def _tangents(net: Network, cache: Any, y: Tensor, V: Mapping[Key, Tensor], RX: Tensor | None) -> Tangents:
    stack = net.tangent_pass(cache, RX, Params(V, net.ties))
    a_L, Ra_L = cache.a[-1], stack.Ra[-1]
    assert Ra_L is not None
    RJ = (net.loss_fn.gradient(a_L, y) * Ra_L).sum()  # R{J} = <dJ/da(L), R{a(L)}>
    J = net.loss_fn.value(a_L, y)
    if net.weight_decay:
        params = net.parameters()
        for key in net.decayed_keys():
            RJ = RJ + net.weight_decay * (params[str(key)] * V[key]).sum()  # + lambda <W, V_W>
            J = J + 0.5 * net.weight_decay * (params[str(key)] ** 2).sum()
    top = {Key("a", (l,)) for l in range(1, len(stack.Ra))}
    R = {str(key): t for key, t in stack.intermediates(()).items() if key not in top}
    return Tangents(J, RJ, stack.Ra, R, stack, dict(cache.noise))


def hvp(
    net: Network, X: Tensor, y: object, v: Mapping[str, Any], *, noise: Noise = None, keep_intermediates: bool = True
) -> SecondOrder:
    """H v: the Hessian of J (parameters and, when v has "X", the input) times v, by the R-operator.
    ``noise`` as for ``jvp``: a stochastic network is differentiated at its drawn masks.
    ``keep_intermediates=False``: only H v (``R_delta`` empty), as an optimiser needs it."""
    return _r_backward(net, X, y, v, noise, gauss_newton=False, keep_intermediates=keep_intermediates)


def gvp(
    net: Network, X: Tensor, y: object, v: Mapping[str, Any], *, noise: Noise = None, keep_intermediates: bool = True
) -> SecondOrder:
    """G v: the generalised Gauss-Newton matrix J_f^T H_loss J_f (+ lambda I on decayed weights)
    times v; ``noise`` and ``keep_intermediates`` as for ``hvp``."""
    return _r_backward(net, X, y, v, noise, gauss_newton=True, keep_intermediates=keep_intermediates)


def _r_backward(
    net: Network,
    X: Tensor,
    y: object,
    v: Mapping[str, Any],
    noise: Noise,
    *,
    gauss_newton: bool,
    keep_intermediates: bool,
) -> SecondOrder:
    _check(net)
    V = _directions(net, v)
    cache = net.forward(X, keep_intermediates=True, update_stats=False, noise=noise)
    targets = net.targets_from_user(y, cache)
    tangents = _tangents(net, cache, targets, V, _input_direction(v, cache.a[0]))
    assert tangents.stack is not None and tangents.Ra[-1] is not None
    a_L = cache.a[-1]
    g = net.loss_fn.gradient(a_L, targets)  # dJ/da(L)
    Rg = loss_hessian_product(net.loss_fn, a_L, targets, tangents.Ra[-1])  # R{dJ/da(L)} = H_loss R{a(L)}
    ctx = SecondContext((), gauss_newton, need_dx=not net.takes_indices, keep_intermediates=keep_intermediates,
                        ties=net.ties)  # fmt: skip
    _, R = net.r_backward_pass(cache, tangents.stack, g, Rg, Params(V, net.ties), ctx)
    Hv = dict(R.params)
    if net.weight_decay:
        for key in net.decayed_keys():
            Hv[key] = Hv[key] + net.weight_decay * V[key] if key in Hv else net.weight_decay * V[key]  # + lambda V_W
    out = {str(key): Hv.get(key, torch.zeros_like(direction)) for key, direction in V.items()}
    if R.dJ_dx is not None:
        out["X"] = R.dJ_dx  # (H v)_X = R{dJ/dX}
    R_delta = {str(key): t for key, t in R.intermediates.items()}
    return SecondOrder("gauss_newton" if gauss_newton else "hessian", out, R_delta, tangents)
