"""The torch references of a second-order check (refbp.verify.second_order), each in float64 on
the network's torch oracle (torch.nn.functional), at the dropout masks ``noise``:

- forward-over-reverse: torch.func.jvp of torch.func.grad of J;
- reverse-over-reverse: autograd of <dJ/dw, v> (double backward);
- the Gauss-Newton product J_f^T (H_loss (J_f v)) (jvp of the output, the loss Hessian by
  double backward, vjp back);
- R{dJ/d(intermediate)}: the jvp along v of the gradient of J with respect to a zero shift
  added to each intermediate the oracle reports to its Tap;
- ``torch_bias``: where torch's own double backward of the loss is biased (bce's eps), how far
  that puts both routes from H v: their error estimate.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from ..nn.keys import Key
from ..nn.layer import NO_TAP, Params, Tap
from ..nn.network import Network

__all__ = ["TORCH_BCE_EPS", "References", "intermediate_products", "torch_bias", "torch_products"]

References = dict[str, tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]]
Noise = Mapping[tuple[int, ...], Tensor]


def _oracle_J(
    net: Network, y: Tensor, noise: Noise, tap: Tap = NO_TAP
) -> Callable[[dict[str, Tensor], Tensor], Tensor]:
    """(params by name, X) -> J by the network's torch oracle (torch.nn.functional), with the masks ``noise``."""

    def J(params: dict[str, Tensor], X: Tensor) -> Tensor:
        return net.torch_J(X, y, Params({Key.parse(n): t for n, t in params.items()}, net.ties), noise, tap)

    return J


def torch_products(
    net: Network, X: Tensor, y: Tensor, v: Mapping[str, Tensor], product: str, noise: Noise, *, one: bool = False,
    tap: Tap = NO_TAP,
) -> tuple[float, References]:  # fmt: skip
    """J and the torch routes' products, in the network's dtype (float64 for a reference);
    ``one``: only the first route torch can take, and ``tap`` hears the oracle (the conditioning
    probes, refbp.verify.second_order_conditioning)."""
    params = {name: t.detach() for name, t in net.parameters().items()}
    with_x, y_real = X.is_floating_point(), y.is_floating_point()
    V = {name: v.get(name, torch.zeros_like(t)) for name, t in params.items()}
    VX = v.get("X", torch.zeros_like(X)) if with_x else None
    J_fn = _oracle_J(net, y, noise, tap)
    J = float(J_fn(params, X))
    if product == "gauss_newton":
        route = _gauss_newton(net, X, y, params, V, VX, noise, tap)
        return J, {} if route is None else {"torch-gauss-newton": (route, {}, {})}

    # forward-over-reverse: the jvp of torch.func.grad. Real targets ride along with a
    # materialised zero tangent: F.mse_loss's double backward cannot take torch.func's ZeroTensor.
    primals: list[Any] = [params, *([X] if with_x else []), *([y] if y_real else [])]
    tangents: list[Any] = [V, *([VX] if with_x else []), *([torch.zeros_like(y)] if y_real else [])]

    def gradient(*args: Any) -> dict[str, Tensor]:
        x, t = (args[1] if with_x else X), (args[-1] if y_real else y)
        grads = torch.func.grad(_oracle_J(net, t, noise, tap), argnums=(0, 1) if with_x else 0)(args[0], x)
        return {**grads[0], "X": grads[1]} if with_x else dict(grads)

    try:
        forward_over_reverse: dict[str, Tensor] | None = torch.func.jvp(gradient, tuple(primals), tuple(tangents))[1]
    except NotImplementedError:  # torch has no forward-mode rule for an op (multi_margin_loss): no such reference
        forward_over_reverse = None
    if one and forward_over_reverse is not None:
        return J, {"forward-over-reverse": ({n: t.detach() for n, t in forward_over_reverse.items()}, {}, {})}
    leaves = {name: t.clone().requires_grad_(True) for name, t in params.items()}
    X_leaf = X.clone().requires_grad_(True) if with_x else X
    with torch.enable_grad():
        inputs = [*leaves.values(), *([X_leaf] if with_x else [])]
        grads: tuple[Tensor, ...] = torch.autograd.grad(J_fn(leaves, X_leaf), inputs, create_graph=True)
        directions = [*V.values(), *([VX] if VX is not None else [])]
        dot = torch.zeros((), dtype=torch.float64, device=X.device)
        for g, d in zip(grads, directions, strict=True):
            dot = dot + (g * d).sum()  # <dJ/dw, v>
        try:
            second: tuple[Tensor | None, ...] | None = torch.autograd.grad(dot, inputs, allow_unused=True)
        except RuntimeError:  # an op without a double backward (multi_margin_loss): no such reference
            second = None
    names = [*leaves, *(["X"] if with_x else [])]
    references: References = {}
    if forward_over_reverse is not None:
        references["forward-over-reverse"] = ({n: t.detach() for n, t in forward_over_reverse.items()}, {}, {})
    if second is not None:
        reverse_over_reverse = {
            n: (torch.zeros_like(t) if h is None else h.detach()) for n, t, h in zip(names, inputs, second, strict=True)
        }
        references["reverse-over-reverse"] = (reverse_over_reverse, {}, {})
    return J, references


TORCH_BCE_EPS = 1e-12
"""torch's double backward of binary_cross_entropy divides by (p + 1e-12)^2 (1 - p + 1e-12)^2, not
by p^2 (1 - p)^2 (FunctionsManual.cpp, binary_cross_entropy_double_backward): its second
derivative is off by a relative 2e-12 (1/p + 1/(1 - p)), which the network's f'' terms can
amplify past float64's tolerance when p nears 0 or 1 (1e-9 at p = 0.02 after a sigmoid). Both
torch routes carry that known bias; ``torch_bias`` gives it to them as their error estimate."""


class _Shift(Tap):
    """Adds ``shifts[name]`` to the intermediate of that name: gradients and products with
    respect to a zero shift are those with respect to the intermediate."""

    def __init__(self, shifts: Mapping[str, Tensor]) -> None:
        self.shifts = shifts

    def intermediate(self, key: Key, t: Tensor) -> Tensor:
        shift = self.shifts.get(str(key))
        return t if shift is None else t + shift


def _reported(net: Network, X: Tensor, y: Tensor, noise: Noise, names: set[str]) -> dict[str, Tensor]:
    """The intermediates among ``names`` the oracle reports to its Tap exactly once, by name."""
    params = net.parameters()
    seen: dict[str, Tensor] = {}
    twice: set[str] = set()

    class Record(Tap):
        def intermediate(self, key: Key, t: Tensor) -> Tensor:
            name = str(key)
            if name in seen:
                twice.add(name)  # a key reported twice: one shift would stand for two tensors
            elif name in names:
                seen[name] = t
            return t

    with torch.no_grad():
        net.torch_J(X, y, Params({Key.parse(n): w for n, w in params.items()}, net.ties), noise, Record())
    return {name: t for name, t in seen.items() if name not in twice}


def torch_bias(
    net: Network, X: Tensor, y: Tensor, v: Mapping[str, Tensor], noise: Noise, names: set[str]
) -> dict[str, Tensor]:
    """|J_f^T (delta o J_f v)| by name (parameters, "X", and the intermediates ``names``): how far
    both torch routes sit from H v (and G v) where torch's double backward of the loss is biased
    by delta, its second derivative minus the true one (bce: TORCH_BCE_EPS); {} for other losses."""
    loss = net.loss_fn
    if loss.name != "bce":
        return {}
    params = {name: t.detach() for name, t in net.parameters().items()}
    with_x = X.is_floating_point()
    zero = {name: torch.zeros_like(t) for name, t in _reported(net, X, y, noise, names).items()}

    def output(p: dict[str, Tensor], x: Tensor, shifts: dict[str, Tensor]) -> Tensor:
        return net.torch_forward(x, Params({Key.parse(n): w for n, w in p.items()}, net.ties), noise, _Shift(shifts))

    V = {name: v.get(name, torch.zeros_like(t)) for name, t in params.items()}
    VX = v.get("X", torch.zeros_like(X)) if with_x else torch.zeros(())
    f = (lambda p, x, sh: output(p, x, sh)) if with_x else (lambda p, sh: output(p, X, sh))
    primals = (params, X, zero) if with_x else (params, zero)
    tangents = (V, VX, {n: torch.zeros_like(t) for n, t in zero.items()}) if with_x else (V, dict(zero))
    forward = torch.func.jvp(f, primals, tangents)
    p_hat, u = forward[0].detach(), forward[1].detach()  # the output p and J_f v
    target = y.to(p_hat.dtype)
    numerator = p_hat * p_hat - 2 * p_hat * target + target  # torch's: (p^2 - 2 p y + y) / (p^2 (1 - p)^2), eps added
    true = numerator / (p_hat**2 * (1 - p_hat) ** 2)
    theirs = numerator / ((p_hat + TORCH_BCE_EPS) ** 2 * (1 - p_hat + TORCH_BCE_EPS) ** 2)
    delta = (theirs - true) / (p_hat.numel() if loss.reduction == "mean" else 1)
    pulled = torch.func.vjp(f, *primals)[1](delta * u)  # J_f^T (delta o J_f v)
    out = {name: t.abs() for name, t in pulled[0].items()}
    if with_x:
        out["X"] = pulled[1].abs()
    out.update({name: t.abs() for name, t in pulled[-1].items()})
    return out


def intermediate_products(
    net: Network, X: Tensor, y: Tensor, v: Mapping[str, Tensor], noise: Noise, names: set[str]
) -> dict[str, Tensor]:
    """R{dJ/d(intermediate)} by torch.func, for the intermediates ``names`` the oracle reports to
    its Tap (once each): the jvp along v of the gradient of J with respect to a zero shift added
    to each of them. {} where torch has no forward-mode rule for an op of the network."""
    params = {name: t.detach() for name, t in net.parameters().items()}
    zero = {name: torch.zeros_like(t) for name, t in _reported(net, X, y, noise, names).items()}
    if not zero:
        return {}

    def oracle(p: dict[str, Tensor], x: Tensor, shifts: dict[str, Tensor], t: Tensor) -> Tensor:
        return net.torch_J(x, t, Params({Key.parse(n): w for n, w in p.items()}, net.ties), noise, _Shift(shifts))

    with_x, y_real = X.is_floating_point(), y.is_floating_point()
    V = {name: v.get(name, torch.zeros_like(t)) for name, t in params.items()}
    primals: list[Any] = [params, zero, *([X] if with_x else []), *([y] if y_real else [])]
    tangents: list[Any] = [V, {name: torch.zeros_like(t) for name, t in zero.items()},
                           *([v.get("X", torch.zeros_like(X))] if with_x else []),
                           *([torch.zeros_like(y)] if y_real else [])]  # fmt: skip

    def gradient(*args: Any) -> dict[str, Tensor]:
        x, t = (args[2] if with_x else X), (args[-1] if y_real else y)
        return dict(torch.func.grad(lambda shifts: oracle(args[0], x, shifts, t))(args[1]))

    try:
        products: dict[str, Tensor] = torch.func.jvp(gradient, tuple(primals), tuple(tangents))[1]
    except NotImplementedError:  # an op without a forward-mode rule (multi_margin_loss): no such reference
        return {}
    return {name: t.detach() for name, t in products.items()}


def _gauss_newton(
    net: Network, X: Tensor, y: Tensor, params: dict[str, Tensor], V: dict[str, Tensor], VX: Tensor | None,
    noise: Noise, tap: Tap = NO_TAP,
) -> dict[str, Tensor] | None:  # fmt: skip
    """J_f^T H_loss J_f v by torch.func, plus the penalty's lambda V on decayed weights; None where
    torch cannot differentiate the loss twice."""

    def output(p: dict[str, Tensor], x: Tensor) -> Tensor:
        return net.torch_forward(x, Params({Key.parse(n): t for n, t in p.items()}, net.ties), noise, tap)

    with_x = VX is not None
    primals = (params, X) if with_x else (params,)
    tangents = (V, VX) if with_x else (V,)
    f = output if with_x else (lambda p: output(p, X))
    out, Jv = torch.func.jvp(f, primals, tangents)[:2]  # J_f v
    o = out.detach().requires_grad_(True)
    with torch.enable_grad():  # H_loss J_f v by double backward (more losses have it than forward mode)
        (dJ_do,) = torch.autograd.grad(net.torch_loss(o, y), o, create_graph=True)
        try:
            (HJv,) = torch.autograd.grad((dJ_do * Jv).sum(), o, allow_unused=True, materialize_grads=True)
        except RuntimeError:  # a loss without a double backward (multi_margin_loss): no torch route
            return None
    pullback = torch.func.vjp(f, *primals)[1]
    back = pullback(HJv)  # J_f^T H_loss J_f v
    result = dict(back[0])
    if with_x:
        result["X"] = back[1]
    if net.weight_decay:
        for key in net.decayed_keys():
            result[str(key)] = result[str(key)] + net.weight_decay * V[str(key)]
    return {n: t.detach() for n, t in result.items()}
