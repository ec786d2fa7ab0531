"""Check a Hessian-vector product (or a Gauss-Newton product, or forward-mode tangents) in
refbp's verdict language.

    res = refbp.check_second_order(net, X, y)            # refbp's manual H v, random v
    res = refbp.check_second_order(net, X, y, hvp_fn=mine)  # a user's: mine(v) -> {name: (H v)_name}

The product under test is compared with three references, each in float64:

- "forward-over-reverse": torch.func.jvp of torch.func.grad of the oracle J (torch's functions);
- "reverse-over-reverse": autograd of <dJ/dw, v> (double backward);
- "fd-gradient": central differences of the MANUAL gradient along v,
  (g(w + h v) - g(w - h v)) / 2h, with the Richardson error estimate |D(h) - D(2h)| / 3 as
  the entries' slack. Where a difference step moves an input of a piecewise function (relu's
  kink, bce's clamps, elu's jump in f'', a max-pool window's maximum) into another piece, the
  second derivative is not what the differences measure: that reference leaves every entry
  unverified, never passed or failed on a guess.

Where the point itself sits exactly on a kink (relu's z == 0, a max-pool tie) that v moves it
off, H v is undefined and every route returns a convention: every H v entry is left
unverified, for every reference (refbp.verify.second_order_pieces says why all of them). Both
questions are answered by the oracle's own reports (each layer's torch_forward tells its Tap of
its piecewise inputs), so they hold for every layer, inside composites and graph networks too.

Every pass runs the same function: the dropout masks of one forward pass (``noise``, or drawn
once here) are used by the manual product, the torch routes and each gradient difference, and
no pass updates BatchNorm's running statistics. The torch routes live in
refbp.verify.second_order_torch, the pieces and kinks in refbp.verify.second_order_pieces.

For the Gauss-Newton product the torch route is J_f^T (H_loss (J_f v)) with torch.func (jvp
of the network's output, the loss Hessian as a jvp of its gradient, vjp back); differences
of a gradient measure H v, not G v, so they are not a reference for it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..nn.keys import Key
from ..nn.layer import NO_TAP, Params, Tap
from ..nn.network import Network
from ..nn.second_order import SecondOrder, gvp, hvp, jvp, missing_rule
from ..nn.stack import walk_layers
from .compare import Comparison, compare
from .conditioning import allowance
from .function_properties import unverified_row
from .inputs import as_tensor
from .result import CheckResult
from .second_order_conditioning import product_allowance
from .second_order_pieces import PieceReport, crossed_at, pieces_at
from .second_order_torch import References, intermediate_products, torch_bias, torch_products
from .tolerances import FD_TOLERANCE, Tolerance, combine, tolerance_for

__all__ = ["SECOND_ORDER_REFERENCES", "check_hvp_function", "check_second_order", "random_direction"]

SECOND_ORDER_REFERENCES = ("forward-over-reverse", "reverse-over-reverse", "fd-gradient")
"""The references a second-order product is checked against (see the module docstring)."""

FD_GRADIENT_STEP = 1e-5
"""h for the differences of the gradient, relative to max(1, ||w||_inf) / ||v||_inf: about
eps^(1/3) for float64, where a central difference's truncation and rounding errors balance."""


def random_direction(net: Network, X: Tensor, seed: int = 0, *, input_too: bool = True) -> dict[str, Tensor]:
    """A direction v of standard normal entries for every parameter (and X when it is floating)."""
    generator = torch.Generator().manual_seed(seed)

    def draw(t: Tensor) -> Tensor:
        return torch.randn(t.shape, dtype=torch.float64, generator=generator).to(dtype=t.dtype, device=t.device)

    v = {name: draw(p) for name, p in net.parameters().items()}
    if input_too and X.is_floating_point():
        v["X"] = draw(X)
    return v


def check_second_order(
    net: Network,
    X: Tensor,
    y: Tensor,
    v: Mapping[str, Tensor] | None = None,
    *,
    product: str = "hessian",
    hvp_fn: Callable[[dict[str, Tensor]], Mapping[str, Any]] | None = None,
    forward: bool = False,
    seed: int = 0,
    tolerance: Tolerance | None = None,
    noise: Mapping[tuple[int, ...], Tensor] | None = None,
) -> CheckResult:
    """Check H v (``product="hessian"``) or G v (``"gauss_newton"``) of ``net``'s J at (X, y).

    Args:
        v: the direction, name -> tensor ("W1", "b1", ..., and "X"); None draws one (``seed``).
        hvp_fn: a user's product, v -> {name: (H v)_name}; None checks refbp's own
            (refbp.nn.second_order), whose R{intermediates} are in ``result.meta["R"]``.
        forward: also check the tangents R{J} and R{a(l)} (forward mode) against torch.func.jvp.
        tolerance: default: the tolerance of the network's dtype (refbp.verify.tolerances).
        noise: the dropout masks to differentiate at (a cache's ``noise``), by layer path; None
            draws them once here (refbp's own product then uses them). A user's ``hvp_fn`` of a
            network with dropout in training mode must have used the masks passed here.
    """
    if product not in ("hessian", "gauss_newton"):
        raise ValueError(f"product={product!r}; expected 'hessian' or 'gauss_newton'")
    missing = missing_rule(net) if hvp_fn is None or forward else None
    if missing is not None:
        raise NotImplementedError(f"{missing} has no second-order rule yet (Layer.tangent and Layer.r_backward)")
    drawn = v is None
    v = dict(random_direction(net, X, seed) if v is None else v)
    tol = tolerance or tolerance_for(net.dtype)
    point = net.forward(X, update_stats=False, noise=noise)  # draws the masks once
    noise = dict(point.noise)
    manual: SecondOrder | None = None
    if hvp_fn is None:
        manual = (hvp if product == "hessian" else gvp)(net, X, y, v, noise=noise)
        under_test = manual.Hv
    else:
        under_test = {name: _as_tensor(t, name) for name, t in hvp_fn(v).items()}
    net64 = net.to(dtype=torch.float64)
    X64 = X.to(torch.float64) if X.is_floating_point() else X
    y64 = y.to(torch.float64) if y.is_floating_point() else y
    v64 = {name: t.to(torch.float64) for name, t in v.items()}
    params64 = {name: t.detach() for name, t in net64.parameters().items()}
    pieces = pieces_at(net64, X64, y64, params64, noise, v64, _difference_step(net64, v64), seed=seed)
    J, references = torch_products(net64, X64, y64, v64, product, noise)
    R_names = set(manual.R_delta) if manual is not None and product == "hessian" else set()
    bias = torch_bias(net64, X64, y64, v64, noise, R_names)
    if bias:  # torch's routes carry a known bias (bce's eps): it is their error estimate
        references = {ref: (values, {n: bias[n] for n in values if n in bias}, excluded)
                      for ref, (values, _, excluded) in references.items()}  # fmt: skip
    if any(layer.fixed_gradients(path) for path, layer in walk_layers(net.layers)):
        # a gradient zeroed by convention (an Embedding's padding row) is not the derivative of J:
        # its "Hessian" is not symmetric, and double backward gives H^T v, not the H v defined as
        # d/dr of the gradient (which forward-over-reverse and the differences measure)
        references.pop("reverse-over-reverse", None)
    # below float64, and at an ill-conditioned point in any dtype, rounding alone moves the product
    widened = _product_allowance(net, X, y, v, product, noise, references, seed) if tolerance is None else {}
    if product == "hessian":
        references["fd-gradient"] = _gradient_differences(net64, X64, y64, v64, noise, pieces)
    rows: list[Comparison] = []
    known = {*net.parameters(), *(["X"] if X.is_floating_point() else [])}
    for name in under_test:
        if name not in known:
            raise ValueError(f"the product names {name!r}, which is neither a parameter of the network nor 'X'")
    for reference, (values, errors, excluded) in references.items():
        for name, r in values.items():
            g = under_test.get(name)
            if g is None:
                continue
            row_tol = combine(tol, FD_TOLERANCE) if reference == "fd-gradient" else tol
            rows.append(
                _judged(compare(f"Hv[{name}]", reference, g, r, row_tol, error=errors.get(name),
                                excluded=_on_kink(pieces, r, excluded.get(name)), widened=widened.get(name, 0.0)),
                        pieces)
            )  # fmt: skip
    compared = {row.name for row in rows}
    unreferenced = {f"Hv[{name}]": g for name, g in under_test.items() if f"Hv[{name}]" not in compared}
    for row_name, g in unreferenced.items():  # a product no reference could take is unverified, never passed
        rows.append(unverified_row(row_name, g, tol, _no_reference(net, product)))
    if manual is not None and product == "hessian":  # R{dJ/d(intermediate)}: d/dr of dJ/dz, dJ/da, ...
        by_torch = intermediate_products(net64, X64, y64, v64, noise, R_names)
        widened_R = (
            allowance([intermediate_products(net, X, y, _in_dtype(v, net), noise, R_names)], by_torch)
            if tolerance is None and net.dtype != torch.float64
            else {}
        )
        values, errors, excluded = references["fd-gradient"]
        for name, R in manual.R_delta.items():
            if name in by_torch:
                r = by_torch[name]
                rows.append(_judged(compare(f"R{{dJ/d{name}}}", "forward-over-reverse", R, r, tol, error=bias.get(name),
                                            excluded=_on_kink(pieces, r, None), widened=widened_R.get(name, 0.0)),
                                    pieces))  # fmt: skip
            if name in values:
                rows.append(
                    _judged(compare(f"R{{dJ/d{name}}}", "fd-gradient", R, values[name], combine(tol, FD_TOLERANCE),
                                    error=errors[name], excluded=_on_kink(pieces, values[name], excluded[name]),
                                    widened=widened_R.get(name, 0.0)),
                            pieces)
                )  # fmt: skip
    if forward:
        rows += _tangent_rows(net, net64, X, X64, y, y64, v, v64, tol, noise, widen=tolerance is None)
    meta: dict[str, Any] = {"product": product, "direction_seed": seed if drawn else None, "kinks": pieces.kinks,
                            "pinned_kinks": pieces.pinned}  # fmt: skip
    if pieces.kinks:
        meta["hints"] = [pieces.note + ": every H v entry is left unverified, never passed or failed on a guess"]
    if unreferenced:  # unverified by design: no route to a reference exists for these (_no_reference)
        meta["no_reference"] = list(unreferenced)
    if manual is not None:
        meta["R"] = {name: t.detach() for name, t in manual.R_delta.items()}
    return CheckResult(rows=rows, J=J, dtype=str(net.dtype).removeprefix("torch."), device=str(net.device), meta=meta)


def _no_reference(net: Network, product: str) -> str:
    """Why no reference took the product: torch cannot differentiate the loss twice (multi_margin's)
    and, for the Gauss-Newton product, finite differences of the gradient measure the Hessian."""
    why = f"torch cannot differentiate {net.loss_fn.name} twice"
    if product == "gauss_newton":
        why += ", and finite differences of the gradient measure the Hessian, not the Gauss-Newton product"
    return f"no reference: {why}"


def _product_allowance(
    net: Network, X: Tensor, y: Tensor, v: Mapping[str, Tensor], product: str, noise: Noise,
    references: References, seed: int,
) -> dict[str, float]:  # fmt: skip
    """The conditioning allowance of the product by name (refbp.verify.second_order_conditioning),
    by the first torch route the check has. Where torch has none (multi_margin's loss, which torch
    differentiates once), refbp's own product stands in, as the rounding of an implementation
    that the float64 differences verify (a formula error would be the same in both dtypes, so the
    gap measures rounding alone); {} where neither exists."""
    route = next(iter(references), None)  # forward-over-reverse, or torch-gauss-newton
    if route is None:
        if missing_rule(net) is not None:
            return {}
        manual = hvp if product == "hessian" else gvp

        def own(n: Network, x: Tensor, w: Mapping[str, Tensor], tap: Tap) -> Mapping[str, Tensor]:
            return manual(n, x, y.to(n.dtype) if y.is_floating_point() else y, w, noise=noise).Hv

        net64, X64 = net.to(dtype=torch.float64), X.to(torch.float64) if X.is_floating_point() else X
        high = own(net64, X64, {name: t.to(torch.float64) for name, t in v.items()}, NO_TAP)
        return product_allowance(net, X, _in_dtype(v, net), own, high, seed)

    def products(n: Network, x: Tensor, w: Mapping[str, Tensor], tap: Tap) -> Mapping[str, Tensor]:
        t = y.to(n.dtype) if y.is_floating_point() else y
        return torch_products(n, x, t, w, product, noise, one=True, tap=tap)[1].get(route, ({}, {}, {}))[0]

    return product_allowance(net, X, _in_dtype(v, net), products, references[route][0], seed)


def _in_dtype(v: Mapping[str, Tensor], net: Network) -> dict[str, Tensor]:
    return {name: t.to(net.dtype) for name, t in v.items()}


def _on_kink(pieces: PieceReport, r: Tensor, excluded: Tensor | None) -> Tensor | None:
    """Every entry excluded when the point is on a kink; otherwise the reference's own exclusions."""
    return torch.ones(r.shape, dtype=torch.bool) if pieces.kinks else excluded


def _judged(row: Comparison, pieces: PieceReport) -> Comparison:
    """The row, with the kink named when that is why its entries went unverified."""
    return dataclasses.replace(row, note=(row.note + " " + pieces.note + ".").strip()) if pieces.kinks else row


def _as_tensor(t: Any, name: str) -> Tensor:
    if isinstance(t, Tensor):
        return t.detach()
    try:
        return torch.as_tensor(t)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"the product's {name!r} must be a tensor or array, got {type(t).__name__}") from err


Noise = Mapping[tuple[int, ...], Tensor]


def _difference_step(net: Network, v: Mapping[str, Tensor]) -> float:
    """h = FD_GRADIENT_STEP max(1, ||w||_inf) / ||v||_inf (0.0 for v = 0): the step along v."""
    norm_v = max((float(t.abs().max()) for t in v.values() if t.numel()), default=0.0)
    norm_w = max((float(t.abs().max()) for t in net.parameters().values() if t.numel()), default=1.0)
    return FD_GRADIENT_STEP * max(1.0, norm_w) / norm_v if norm_v else 0.0


def _gradient_differences(
    net: Network, X: Tensor, y: Tensor, v: Mapping[str, Tensor], noise: Noise, pieces: PieceReport
) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
    """(g(w + h v) - g(w - h v)) / 2h of the manual gradient, its Richardson estimate and error,
    and the entries to exclude (all of them, where a step crosses a piece boundary: the oracle at
    each moved point reports its pieces, refbp.verify.second_order_pieces). Every point runs the
    masks ``noise``, without updating running statistics."""
    params = net.parameters()
    h = _difference_step(net, v)
    if h == 0.0:
        zero = {name: torch.zeros_like(t) for name, t in (*params.items(), *([("X", X)] if "X" in v else []))}
        return zero, {}, {}

    def gradient_at(step: float) -> tuple[dict[str, Tensor], bool]:
        moved = net.to(dtype=torch.float64)
        for name, p in params.items():
            if name in v:
                moved.set_parameter(name, p + step * v[name])
        Xs = X + step * v["X"] if "X" in v and X.is_floating_point() else X
        cache = moved.forward(Xs, keep_intermediates=True, update_stats=False, noise=noise)
        grads = moved.backward(cache, y).as_dict()
        return grads, crossed_at(moved, Xs, y, moved.parameters(), noise, pieces)

    (g_p1, c_p1), (g_m1, c_m1), (g_p2, c_p2), (g_m2, c_m2) = (gradient_at(s) for s in (h, -h, 2 * h, -2 * h))
    crossed = c_p1 or c_m1 or c_p2 or c_m2
    values, errors, excluded = {}, {}, {}
    for name in g_p1:  # every gradient the backward pass gives: parameters, intermediates, X
        values[name], errors[name] = _richardson(g_p1[name], g_m1[name], g_p2[name], g_m2[name], h)
        excluded[name] = torch.full(values[name].shape, crossed, dtype=torch.bool)
    return values, errors, excluded


def _richardson(plus: Tensor, minus: Tensor, plus2: Tensor, minus2: Tensor, h: float) -> tuple[Tensor, Tensor]:
    """The derivative along v from a function's values at +h, -h, +2h, -2h: D(h) + (D(h) - D(2h)) / 3,
    the central difference with its h^2 term removed, and its error |D(h) - D(2h)| / 3 (+ 1e-12 |D(h)|)."""
    d1 = (plus - minus) / (2 * h)  # D(h)
    d2 = (plus2 - minus2) / (4 * h)  # D(2h)
    return d1 + (d1 - d2) / 3.0, (d1 - d2).abs() / 3.0 + 1e-12 * d1.abs()


def _tangent_rows(
    net: Network, net64: Network, X: Tensor, X64: Tensor, y: Tensor, y64: Tensor,
    v: Mapping[str, Tensor], v64: Mapping[str, Tensor], tol: Tolerance, noise: Noise, *, widen: bool,
) -> list[Comparison]:  # fmt: skip
    """The manual tangents R{a(l)} and R{J} against torch.func.jvp of the oracle ("forward-mode"),
    or, where torch has no forward-mode rule for an op (multi_margin_loss), against central
    differences of the oracle's J and intermediates along v ("fd-forward", with the Richardson
    error estimate; unverified where a step crosses a piece boundary). At a kink both follow the
    first-order convention (relu's f'(0) = 0, the first maximum), as a first-order check
    compares them: a tangent is a first derivative. ``widen``: add the conditioning allowance
    (torch's own jvp in the network's dtype against float64)."""
    tangents = jvp(net, X, y, v, noise=noise).as_dict()
    names = set(tangents)
    reference = _torch_tangents(net64, X64, y64, v64, noise, names)
    error: dict[str, Tensor] = {}
    excluded: dict[str, Tensor] = {}
    widened: dict[str, float] = {}
    if reference is None:
        kind, (reference, error, excluded) = "fd-forward", _tangent_differences(net64, X64, y64, v64, noise, names)
        tol = combine(tol, FD_TOLERANCE)
    else:
        kind = "forward-mode"
        if widen and net.dtype != torch.float64:
            low = _torch_tangents(net, X, y, _in_dtype(v, net), noise, names)
            widened = allowance([low], reference) if low is not None else {}
    return [
        compare(f"R{{{name}}}" if name != "J" else "R{J}", kind, tangents[name].reshape(r.shape), r, tol,
                error=error.get(name), excluded=excluded.get(name), widened=widened.get(name, 0.0))
        for name, r in reference.items()
    ]  # fmt: skip


def _oracle_outputs(
    net: Network, y: Tensor, noise: Noise, names: set[str]
) -> Callable[..., tuple[Tensor, dict[str, Tensor]]]:
    """(params by name, X) -> (J, the intermediates among ``names`` the oracle reports to its Tap)."""

    def J_and_outputs(p: dict[str, Tensor], x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        kept: dict[str, Tensor] = {}

        class Keep(Tap):
            def intermediate(self, key: Key, t: Tensor) -> Tensor:
                kept[str(key)] = t
                return t

        J = net.torch_J(x, y, Params({Key.parse(n): t for n, t in p.items()}, net.ties), noise, Keep())
        return J, {name: t for name, t in kept.items() if name in names}

    return J_and_outputs


def _torch_tangents(
    net: Network, X: Tensor, y: Tensor, v: Mapping[str, Tensor], noise: Noise, names: set[str]
) -> dict[str, Tensor] | None:
    """R{J} ("J") and R{intermediate} by torch.func.jvp of the oracle, in the network's dtype;
    None where torch has no forward-mode rule for an op of the network."""
    params = {name: t.detach() for name, t in net.parameters().items()}
    V = {name: v.get(name, torch.zeros_like(t)) for name, t in params.items()}
    f = _oracle_outputs(net, y, noise, names)
    try:
        if X.is_floating_point():
            RJ, Ra = torch.func.jvp(f, (params, X), (V, v.get("X", torch.zeros_like(X))))[1]
        else:
            RJ, Ra = torch.func.jvp(lambda p: f(p, X), (params,), (V,))[1]
    except NotImplementedError:  # an op without a forward-mode rule (multi_margin_loss)
        return None
    return {"J": RJ.detach().reshape(()), **{name: t.detach() for name, t in Ra.items()}}


def _tangent_differences(
    net: Network, X: Tensor, y: Tensor, v: Mapping[str, Tensor], noise: Noise, names: set[str]
) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
    """(f(w + h v) - f(w - h v)) / 2h of J and the intermediates, float64, with the Richardson
    estimate and error (as the gradient differences), and every entry excluded where a step
    crosses a piece boundary."""
    params = {name: t.detach() for name, t in net.parameters().items()}
    h = _difference_step(net, v)
    f = _oracle_outputs(net, y, noise, names)
    base = pieces_at(net, X, y, params, noise, v, h)

    def at(step: float) -> tuple[dict[str, Tensor], bool]:
        p = {name: t + step * v[name] if name in v else t for name, t in params.items()}
        x = X + step * v["X"] if "X" in v and X.is_floating_point() else X
        with torch.no_grad():
            J, outputs = f(p, x)
        return {"J": J.reshape(()), **outputs}, crossed_at(net, x, y, p, noise, base)

    values, errors, excluded = {}, {}, {}
    if h == 0.0:  # v = 0: every tangent is 0
        base_outputs, crossed = at(0.0)
        for name, t in base_outputs.items():
            values[name], errors[name] = torch.zeros_like(t), torch.zeros_like(t)
            excluded[name] = torch.full(t.shape, bool(crossed or base.kinks), dtype=torch.bool)
        return values, errors, excluded
    (p1, c1), (m1, d1), (p2, c2), (m2, d2) = (at(s) for s in (h, -h, 2 * h, -2 * h))
    crossed = bool(c1 or d1 or c2 or d2 or base.kinks)
    for name in p1:
        values[name], errors[name] = _richardson(p1[name], m1[name], p2[name], m2[name], h)
        excluded[name] = torch.full(values[name].shape, crossed, dtype=torch.bool)
    return values, errors, excluded


def check_hvp_function(
    gradient: Callable[[dict[str, Any]], Mapping[str, Any]],
    params: Mapping[str, Any],
    hvp_fn: Callable[[dict[str, Any], dict[str, Any]], Mapping[str, Any]],
    *,
    v: Mapping[str, Any] | None = None,
    seed: int = 0,
    tolerance: Tolerance | None = None,
) -> CheckResult:
    """A user's H v routine, ``hvp_fn(params, v) -> {name: (H v)_name}``, against central
    differences of their own gradient along v, (g(w + h v) - g(w - h v)) / 2h with the
    Richardson estimate and its error (refbp.check_function(..., order=2, hvp=...)).

    ``gradient(params) -> {name: dJ/d(name)}``; params and v are NumPy arrays or torch tensors,
    used in float64 of their own kind. A kink between the points makes the error estimate large:
    those entries are imprecise (unverified), never failed on a guess."""
    point = {name: _float64(value, f"params[{name!r}]") for name, value in params.items()}
    if v is None:
        generator = torch.Generator().manual_seed(seed)
        v = {
            name: _like(torch.randn(tuple(np.shape(value)), generator=generator, dtype=torch.float64), value)
            for name, value in point.items()
        }
    direction = {name: _float64(v.get(name, 0.0 * point[name]), f"v[{name!r}]") for name in point}
    product = {name: as_tensor(t, f"hvp[{name!r}]") for name, t in hvp_fn(dict(point), dict(direction)).items()}
    norm_v = max((float(np.max(np.abs(np.asarray(t)))) for t in map(_numpy, direction.values())), default=0.0)
    norm_w = max((float(np.max(np.abs(np.asarray(t)))) for t in map(_numpy, point.values())), default=1.0)
    h = FD_GRADIENT_STEP * max(1.0, norm_w) / max(norm_v, 1e-300)

    def gradient_at(step: float) -> dict[str, Tensor]:
        moved = {name: point[name] + step * direction[name] for name in point}
        return {name: as_tensor(g, f"grads[{name!r}]").to(torch.float64) for name, g in gradient(moved).items()}

    try:
        g_p1, g_m1, g_p2, g_m2 = (gradient_at(s) for s in (h, -h, 2 * h, -2 * h))
    finally:
        gradient(dict(params))  # leave a stateful model at the point it was checked at
    tol = tolerance or combine(tolerance_for(torch.float64), FD_TOLERANCE)
    rows = []
    for name in point:
        reference, error = _richardson(g_p1[name], g_m1[name], g_p2[name], g_m2[name], h)
        got = product.get(name)
        if got is None:
            raise ValueError(f"hvp returned no product for {name!r}; expected every name of params ({list(point)})")
        rows.append(compare(f"Hv[{name}]", "fd-gradient", got, reference, tol, error=error))
    return CheckResult(rows=rows, J=math.nan, dtype="float64", device="cpu", fd_mode="full", meta={"order": 2})


def _float64(value: Any, what: str) -> Any:
    if isinstance(value, Tensor):
        return value.detach().to(torch.float64)
    if isinstance(value, (np.ndarray, float, int)) and not isinstance(value, bool):
        return np.asarray(value, dtype=np.float64)
    raise TypeError(f"{what} must be a NumPy array or torch tensor, got {type(value).__name__}")


def _like(t: Tensor, value: Any) -> Any:
    return t if isinstance(value, Tensor) else t.numpy()


def _numpy(value: Any) -> Any:
    return value.cpu().numpy() if isinstance(value, Tensor) else value
