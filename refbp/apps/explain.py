"""``refbp explain``: the seed's network walked forward and backward, one numbered equation at a time.

    refbp explain                          # 2-3-1, sigmoid, J = 1/2 ||y - y_hat||^2, seed 0
    refbp explain --dims 3,4,2 --activations tanh,identity --loss mse --seed 1
    refbp explain --markdown > docs/explain.md

The walk is the one every network gets (refbp.apps.walk.walk_network: each layer's values
checked against torch.nn.functional, each gradient against torch.autograd), presented here in
the seed's notation: z(i), a(i), W(i), b(i) and the numbered equations (1)-(9) of
refbp.apps.equations, each with the shapes that make it type-check, the numbers, and one line
on what the quantity is used for. ``layout="columns"`` writes every statement in the seed's
own form, one observation per column. The command line is refbp.apps.explain_cli.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..nn.activations import get_activation
from ..nn.layouts import check_layout
from ..nn.mlp import MLP
from ..nn.validation import check_int, check_seed
from ..verify.compare import Comparison
from .equations import EQUATIONS, Equation, code_line, render_equation_map
from .render import Entry, Page, Quantity, agrees, render
from .tensor_format import FULL_DISPLAY_MAX_COLUMNS, FULL_DISPLAY_MAX_ELEMENTS, WIDTH, format_tensor, shape_text
from .walk import NetworkWalk, walk_network

__all__ = [
    "EQUATIONS",
    "FULL_DISPLAY_MAX_COLUMNS",
    "FULL_DISPLAY_MAX_ELEMENTS",
    "WIDTH",
    "Equation",
    "Step",
    "Walkthrough",
    "code_line",
    "explain",
    "format_tensor",
    "render_equation_map",
    "walkthrough",
]

_SECTIONS = ("Given", "Forward pass", "Forward pass", "Forward pass", *["Backward pass"] * 6)
"""The part of the walk each equation number (0 for the given quantities) belongs to."""


@dataclass(frozen=True)
class Step:
    """One line group of the walk-through.

    Attributes:
        equation: the equation number, 1 .. 9 (0 for the given quantities X, y, W, b).
        formula: the equation for this layer, e.g. "dJ/dW(2) = dJ/dz(2)^T a(1)".
        shapes: the shapes that make it type-check, e.g. "(1, 2) (2, 3) -> (1, 3)".
        purpose: what the quantity is used for, one line.
        value: the number(s) computed by refbp (forward pass or manual backward pass), in the
            walk's layout.
        check: the comparison with torch, None for the given quantities.
    """

    equation: int
    formula: str
    shapes: str
    purpose: str
    value: Tensor
    check: Comparison | None = None


@dataclass(frozen=True)
class Walkthrough:
    """The whole walk-through: the network, the point, and the steps in order."""

    net: MLP
    X: Tensor  # (N, d_0)
    y: Tensor  # (N, d_L) values, or (N,) class indices
    seed: int
    steps: tuple[Step, ...]
    layout: str = "torch"

    @property
    def checks(self) -> list[Comparison]:
        return [s.check for s in self.steps if s.check is not None]

    @property
    def passed(self) -> bool:
        """True when every step agrees with torch."""
        return all(agrees(c) for c in self.checks)

    def page(self) -> Page:
        """The walk-through as the renderer's Page (refbp.apps.render)."""
        net = self.net
        intro = (
            f"Network {'-'.join(str(d) for d in net.dims)}, activations {', '.join(net.activations)}, "
            f"loss {net.loss_name}, seed {self.seed}, N = {self.X.shape[0]} observations "
            f"({'columns' if self.layout == 'columns' else 'rows'} of X), float64. "
            "Forward numbers are checked against torch.nn.functional, gradients against torch.autograd."
        )
        entries = tuple(
            Entry(
                _SECTIONS[s.equation], f"({s.equation})" if s.equation else "", s.formula, s.shapes,
                (Quantity("", s.value, s.check),), purpose=s.purpose,
            )
            for s in self.steps
        )  # fmt: skip
        links = ("Equation numbers are those of [equations.md](equations.md).",)
        return Page("backpropagation, one equation at a time", intro, entries, noun="steps", links=links)

    def render(self, *, markdown: bool = False, ascii_only: bool = False) -> str:
        """The walk-through as plain text (80 columns) or as Markdown."""
        return render(self.page(), markdown=markdown, ascii_only=ascii_only)


def _draw_point(net: MLP, batch: int, seed: int) -> tuple[Tensor, Tensor]:
    """X ~ U(-2, 2) and targets a sigmoid or the loss can reach, from seed + 1 (as
    refbp.verify.cases.CaseSpec draws them)."""
    generator = torch.Generator().manual_seed((seed + 1) % 2**32)
    N, d_0, d_L = batch, net.dims[0], net.dims[-1]
    X = torch.empty(N, d_0, dtype=torch.float64).uniform_(-2.0, 2.0, generator=generator)  # (N, d_0)
    if net.loss_fn.targets == "classes":
        return X, torch.randint(0, d_L, (N,), generator=generator)  # (N,)
    if net.activations[-1] == "sigmoid":
        return X, torch.rand(N, d_L, dtype=torch.float64, generator=generator)  # (N, d_L) in [0, 1)
    return X, torch.empty(N, d_L, dtype=torch.float64).uniform_(-1.0, 1.0, generator=generator)


def walkthrough(
    *,
    dims: Sequence[int] = (2, 3, 1),
    activations: Sequence[str] | None = None,
    loss: str = "half_sse",
    seed: int = 0,
    batch: int = 2,
    layout: str = "torch",
) -> Walkthrough:
    """Run the forward and backward pass of a float64 network, keeping every step.

    Args:
        dims: [d_0, ..., d_L]; the default is the seed's 2-3-1 network.
        activations: one name per layer, or one name for every layer; default sigmoid.
        loss: a name from refbp.nn.losses.LOSSES; default the seed's half_sse.
        seed: draws the parameters (as MLP.random) and, from seed + 1, the point (X, y).
        batch: N, the number of observations (rows of X).
        layout: "torch" (one observation per row, the default) or "columns", the seed's own
            notation: z(i) = W(i) a(i-1) + b(i), one observation per column (refbp.nn.layouts;
            the same numbers, transposed). "in_out" differs from "torch" in W's layout only.
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch={batch!r} must be an int >= 1 (the number of rows of X)")
    check_int(batch, "batch", minimum=1, maximum=1 << 20)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed={seed!r} must be an int >= 0")
    check_seed(seed)
    dims = list(dims)
    names = ["sigmoid"] * (len(dims) - 1) if activations is None else list(activations)
    if len(names) == 1 and len(dims) > 2:
        names = names * (len(dims) - 1)
    if len(names) != len(dims) - 1:
        raise ValueError(
            f"activations={names} has {len(names)} names but dims={dims} has {len(dims) - 1} layers; "
            "give one name per layer, or one name for all"
        )
    check_layout(layout)
    net = MLP.random(dims, activations=names, loss=loss, seed=seed, dtype=torch.float64)
    X, y = _draw_point(net, batch, seed)
    steps = _steps(net, walk_network(net, X, y), columns=layout == "columns")
    return Walkthrough(net=net, X=X, y=y, seed=seed, steps=tuple(steps), layout=layout)


def _steps(net: MLP, walk: NetworkWalk, *, columns: bool) -> list[Step]:
    """The network walk in the seed's notation: the given quantities, then (1)-(3) layer by
    layer, then (4)-(9) from layer L down to 1. With ``columns``, every statement is the row
    form transposed and every value is shown transposed (W(i) and dJ/dW(i) keep their shape,
    b(i) and dJ/db(i) become columns); the checks are the row form's, the numbers being the same."""
    X, y, L, d = walk.X, walk.y, net.L, net.dims
    N = X.shape[0]
    per = "column" if columns else "row"

    def shown(t: Tensor) -> Tensor:
        return t.T if columns and t.dim() == 2 else t

    def as_column(t: Tensor) -> Tensor:
        return t.reshape(-1, 1) if columns else t

    def rows(*dims: int | str) -> str:  # one observation per row: (N, d) ...; per column: (d, N)
        return ", ".join(f"({k}, {N})" if columns else f"({N}, {k})" for k in dims)

    def forward(label: str) -> tuple[Tensor, Comparison | None]:
        return walk.value("forward", label)

    def backward(name: str) -> tuple[Tensor, Comparison | None]:
        return walk.value("backward", f"dJ/d{name}")

    steps = [
        Step(0, "X = a(0)", shape_text(shown(X)), f"the input, one {per} per observation", shown(X)),
        Step(0, "y", shape_text(shown(y)), "the targets the loss compares y_hat with", shown(y)),
    ]
    for i in range(1, L + 1):
        W, b = net.weights[i - 1], net.biases[i - 1]
        steps.append(Step(0, f"W({i})", shape_text(W), f"layer {i}'s weights, torch.nn.Linear's (d_out, d_in)", W))
        steps.append(Step(0, f"b({i})", shape_text(as_column(b)), f"layer {i}'s bias", as_column(b)))

    # ---- forward: (1), (2), (3), each checked against torch.nn.functional ----
    for i in range(1, L + 1):
        z, z_check = forward(f"z({i})")
        a, a_check = forward(f"a({i})")
        act = get_activation(net.activations[i - 1])
        if columns:
            formula, shapes = (
                f"z({i}) = W({i}) a({i - 1}) + b({i})",
                f"({d[i]}, {d[i - 1]}) {rows(d[i - 1])} + ({d[i]}, 1)",
            )
        else:
            formula, shapes = (
                f"z({i}) = a({i - 1}) W({i})^T + b({i})",
                f"{rows(d[i - 1])} ({d[i]}, {d[i - 1]})^T + ({d[i]},)",
            )
        steps.append(Step(1, formula, f"{shapes} -> {rows(d[i])}", EQUATIONS[0].purpose_for(i), shown(z), z_check))
        purpose = "y_hat, the network's output: the loss compares it with y" if i == L else EQUATIONS[1].purpose_for(i)
        steps.append(
            Step(
                2, f"a({i}) = {act.name}(z({i})):  {act.equation.split(';')[0].strip()}",
                f"{rows(d[i])} -> {rows(d[i])}, elementwise", purpose, shown(a), a_check,
            )
        )  # fmt: skip
    J, J_check = forward("J")
    loss_equation = net.loss_fn.equation.split(";")
    steps.append(
        Step(3, loss_equation[0].strip(), f"{rows(d[L])}, {shape_text(shown(y))} -> ()", EQUATIONS[2].purpose_for(L),
             J, J_check)
    )  # fmt: skip

    # ---- backward: (4) .. (9), each checked against torch.autograd ----
    dJ_da_L, check = backward(f"a{L}")
    steps.append(
        Step(4, f"dJ/da({L}) = {loss_equation[1].strip()}", f"{rows(d[L])}, like a({L})", EQUATIONS[3].purpose_for(L),
             shown(dJ_da_L), check)
    )  # fmt: skip
    for i in range(L, 0, -1):
        derivative = get_activation(net.activations[i - 1]).equation.split(";")[1].strip()
        decay = f" + lambda W({i})" if net.weight_decay else ""
        (dJ_dz, z_check), (dJ_dW, W_check), (dJ_db, b_check) = backward(f"z{i}"), backward(f"W{i}"), backward(f"b{i}")
        dJ_da_prev, a_check = backward(f"a{i - 1}" if i > 1 else "X")
        handed_down = EQUATIONS[7].purpose_for(i) if i > 1 else "layer 1 hands it down too, to the input: that is (9)"
        if columns:
            dW = (f"dJ/dW({i}) = dJ/dz({i}) a({i - 1})^T{decay}", f"{rows(d[i])} ({N}, {d[i - 1]})")
            db = (f"dJ/db({i}) = dJ/dz({i}) 1  (row sums)", f"{rows(d[i])} ({N}, 1) -> ({d[i]}, 1)")
            da = (f"dJ/da({i - 1}) = W({i})^T dJ/dz({i})", f"({d[i - 1]}, {d[i]}) {rows(d[i])} -> {rows(d[i - 1])}")
        else:
            dW = (f"dJ/dW({i}) = dJ/dz({i})^T a({i - 1}){decay}", f"{rows(d[i])}^T {rows(d[i - 1])}")
            db = (f"dJ/db({i}) = dJ/dz({i})^T 1  (column sums)", f"{rows(d[i])} -> ({d[i]},)")
            da = (f"dJ/da({i - 1}) = dJ/dz({i}) W({i})", f"{rows(d[i])} ({d[i]}, {d[i - 1]}) -> {rows(d[i - 1])}")
        steps += [
            Step(
                5, f"dJ/dz({i}) = dJ/da({i}) o f'(z({i})),  {derivative}",
                f"{rows(d[i])} o {rows(d[i])} -> {rows(d[i])}", EQUATIONS[4].purpose_for(i), shown(dJ_dz), z_check,
            ),
            Step(6, dW[0], f"{dW[1]} -> ({d[i]}, {d[i - 1]}), W({i})'s shape", EQUATIONS[5].purpose_for(i), dJ_dW,
                 W_check),
            Step(7, db[0], db[1], EQUATIONS[6].purpose_for(i), as_column(dJ_db), b_check),
            Step(8, da[0], da[1], handed_down, shown(dJ_da_prev), a_check),
        ]  # fmt: skip
    dJ_dX, X_check = backward("X")
    steps.append(
        Step(9, "dJ/dX = dJ/da(0)", f"{rows(d[0])}, X's shape", EQUATIONS[8].purpose_for(0), shown(dJ_dX), X_check)
    )
    return steps


def explain(
    *,
    dims: Sequence[int] = (2, 3, 1),
    activations: Sequence[str] | None = None,
    loss: str = "half_sse",
    seed: int = 0,
    batch: int = 2,
    markdown: bool = False,
) -> str:
    """The walk-through as text (80 columns) or Markdown; see ``walkthrough`` for the options."""
    w = walkthrough(dims=dims, activations=activations, loss=loss, seed=seed, batch=batch)
    return w.render(markdown=markdown)
