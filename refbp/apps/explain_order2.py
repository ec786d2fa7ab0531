"""``refbp explain --order 2``: the R-operator walked through the seed's network, one line at a time.

For a direction v over the parameters, R{.} = d/dr (.)(w + r v) at r = 0. The walk shows the
tangents of the forward pass, R{z(l)} and R{a(l)}, then the R-backward, R{dJ/da(l)} and
R{dJ/dz(l)}, and the Hessian-vector product (H v)_W(l), (H v)_b(l): each equation with its
shapes and numbers (refbp.nn.second_order computes them), and torch's verdict on each
(refbp.verify.second_order: torch.func.jvp for the tangents, forward-over-reverse for H v, and
differences of the manual gradient along v for the R{dJ/d(.)}).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..nn.mlp import MLP
from ..nn.second_order import hvp, jvp
from ..nn.validation import check_seed
from ..verify.compare import Comparison
from ..verify.second_order import check_second_order, random_direction
from .render import Entry, Page, Quantity, render
from .seed import seed_network, seed_point
from .tensor_format import shape_text

__all__ = ["Order2Walk", "explain_order2", "order2_page"]


def order2_page(net: MLP, seed: int = 0) -> Page:
    """The walk-through of H v on ``net`` at the seed's point (XOR) along a random v (``seed``)."""
    X, y = seed_point()
    v = random_direction(net, X, seed, input_too=False)
    result = check_second_order(net, X, y, v, forward=True)
    verdicts: dict[str, Comparison] = {}
    for row in result.rows:  # the first reference of each quantity: torch.func's where there is one
        verdicts.setdefault(row.name, row)
    tangents, product = jvp(net, X, y, v), hvp(net, X, y, v)
    a, entries = [X], []
    cache = net.forward(X)
    a = list(cache.a)
    given = [Quantity("X", X), Quantity("y", y)]
    for l in range(1, net.L + 1):
        given += [Quantity(f"V_W{l}", v[f"W{l}"]), Quantity(f"V_b{l}", v[f"b{l}"])]
    entries.append(Entry("Given", "", "the point, and the direction v = (V_W, V_b)", "", tuple(given), code=False))
    for l in range(1, net.L + 1):
        W = net.W(l)
        Rz, Ra = tangents.Rz[f"z{l}"], tangents.Ra[l]
        assert Ra is not None  # the seed's input is real: every tangent exists
        entries.append(
            Entry(
                "Forward tangents",
                f"[R{l}.z]",
                f"R{{z({l})}} = R{{a({l - 1})}} W({l})^T + a({l - 1}) V_W{l}^T + V_b{l}",
                f"{shape_text(a[l - 1])} {shape_text(W.T)} -> {shape_text(Rz)}",
                (Quantity("", Rz, verdicts.get(f"R{{z{l}}}")),),
                purpose="how z moves as the weights move along v",
            )
        )
        entries.append(
            Entry(
                "Forward tangents",
                f"[R{l}.a]",
                f"R{{a({l})}} = f'(z({l})) o R{{z({l})}}",
                f"{shape_text(Rz)} o {shape_text(Rz)} -> {shape_text(Ra)}",
                (Quantity("", Ra, verdicts.get(f"R{{a{l}}}")),),
            )
        )
    entries.append(
        Entry(
            "Forward tangents",
            "[RJ]",
            f"R{{J}} = <dJ/da({net.L}), R{{a({net.L})}}>",
            "() ",
            (Quantity("", tangents.RJ.reshape(1), verdicts.get("R{J}")),),
            purpose="the directional derivative of J along v",
        )
    )
    for l in range(net.L, 0, -1):
        Rda, Rdz = product.R_delta[f"a{l}"], product.R_delta[f"z{l}"]
        head = "H_loss R{a(L)}" if l == net.L else f"R{{dJ/dz({l + 1})}} W({l + 1}) + dJ/dz({l + 1}) V_W{l + 1}"
        entries.append(
            Entry(
                "R-backward",
                f"[R{l}.da]",
                f"R{{dJ/da({l})}} = {head}",
                shape_text(Rda),
                (Quantity("", Rda, verdicts.get(f"R{{dJ/da{l}}}")),),
            )
        )
        entries.append(
            Entry(
                "R-backward",
                f"[R{l}.dz]",
                f"R{{dJ/dz({l})}} = R{{dJ/da({l})}} o f'(z({l})) + dJ/da({l}) o f''(z({l})) o R{{z({l})}}",
                shape_text(Rdz),
                (Quantity("", Rdz, verdicts.get(f"R{{dJ/dz{l}}}")),),
                purpose="the f'' term is what the Gauss-Newton product leaves out",
            )
        )
        HW, Hb = product.Hv[f"W{l}"], product.Hv[f"b{l}"]
        entries.append(
            Entry(
                "R-backward",
                f"[H{l}]",
                f"(H v)_W{l} = R{{dJ/dz({l})}}^T a({l - 1}) + dJ/dz({l})^T R{{a({l - 1})}} ;  "
                f"(H v)_b{l} = sum_rows R{{dJ/dz({l})}}",
                f"{shape_text(Rdz.T)} {shape_text(a[l - 1])} -> {shape_text(HW)}",
                (
                    Quantity(f"(H v)_W{l}", HW, verdicts.get(f"Hv[W{l}]")),
                    Quantity(f"(H v)_b{l}", Hb, verdicts.get(f"Hv[b{l}]")),
                ),
            )
        )
    intro = (
        f"The seed's network ({net.describe()}) at XOR, and a random direction v (seed {seed}). R{{.}} is the "
        "derivative along v: applied to the forward pass it gives the tangents, applied to the backward pass "
        "the Hessian-vector product H v, at about the cost of one more backward pass (Pearlmutter 1994). "
        "torch checks every line: torch.func.jvp the tangents, forward-over-reverse H v, and differences of "
        "the manual gradient along v the R{dJ/d(.)}."
    )
    return Page("the R-operator, one line at a time", intro, tuple(entries), noun="quantities")


@dataclass(frozen=True)
class Order2Walk:
    """The walk-through, ready to print: ``refbp explain --order 2``."""

    page: Page

    @property
    def passed(self) -> bool:
        return self.page.passed

    def render(self, *, markdown: bool = False, ascii_only: bool = False) -> str:
        return render(self.page, markdown=markdown, ascii_only=ascii_only)


def explain_order2(seed: int = 0) -> Order2Walk:
    """The R-operator walked through the seed's network (its parameters from ``seed``)."""
    check_seed(seed, "seed")
    return Order2Walk(order2_page(seed_network(seed), seed))
