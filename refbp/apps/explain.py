"""``refbp explain``: the seed's network walked forward and backward, one equation at a time.

    refbp explain                          # 2-3-1, sigmoid, J = 1/2 ||y - y_hat||^2, seed 0
    refbp explain --dims 3,4,2 --activations tanh,identity --loss mse --seed 1
    refbp explain --markdown > docs/explain.md

Every step prints its numbered equation (the numbers of refbp.network and refbp.backward),
the shapes that make it type-check, the numbers, one line on what the quantity is used for,
and a check mark from comparing it with torch (forward: torch.nn.functional; backward:
torch.autograd). ``EQUATIONS`` is the one table of equations that the walk-through, the
README and docs/equations.md all share.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import itertools
import math
import re
import sys
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..nn.activations import get_activation
from ..nn.layouts import LAYOUTS, check_layout
from ..nn.losses import get_loss
from ..nn.mlp import MLP
from ..nn.validation import check_seed
from ..verify.cases import check_dims, check_network_fits
from ..verify.compare import Comparison, compare
from ..verify.reference import TORCH_ACTIVATIONS, autograd_gradients, torch_loss
from ..verify.tolerances import tolerance_for

__all__ = [
    "EQUATIONS",
    "FULL_DISPLAY_MAX_COLUMNS",
    "FULL_DISPLAY_MAX_ELEMENTS",
    "WIDTH",
    "Equation",
    "Step",
    "Walkthrough",
    "add_arguments",
    "code_line",
    "explain",
    "format_tensor",
    "render_equation_map",
    "run",
    "walkthrough",
]

WIDTH = 80
"""Every line of the plain-text walk-through fits an 80-column terminal."""

FULL_DISPLAY_MAX_ELEMENTS = 24
"""Tensors with at most this many entries (and FULL_DISPLAY_MAX_COLUMNS columns) are shown in
full; larger ones are summarised (shape, min, max, mean, first entries)."""

FULL_DISPLAY_MAX_COLUMNS = 6
"""Six columns of 10-character numbers plus brackets and indent stay within WIDTH."""


@dataclass(frozen=True)
class Equation:
    """One numbered equation: the statement, its shape, and where the code and the proof live.

    Attributes:
        number: 1 .. 9, as in the docstrings of refbp.network and refbp.backward.
        statement: the formula in plain text, layer index i.
        shape: the result's shape.
        purpose: one line on what the quantity is used for; {i}, {next}, {prev} stand for the
            layer index i, i+1 and i-1 (see ``purpose_for``).
        module: the refbp module that computes it.
        function: the function (qualified name in ``module``) whose source carries the
            equation's number next to the line that computes it.
        tests: "tests/file.py::test_name" entries that prove it against torch.
    """

    number: int
    statement: str
    shape: str
    purpose: str
    module: str
    function: str
    tests: tuple[str, ...]

    def purpose_for(self, i: int | str) -> str:
        """The purpose line for layer ``i`` (an int, or "i" for the generic statement)."""
        if isinstance(i, int):
            return self.purpose.format(i=i, next=i + 1, prev=i - 1)
        return self.purpose.format(i=i, next=f"{i}+1", prev=f"{i}-1")


EQUATIONS: tuple[Equation, ...] = (
    Equation(
        1, "z(i) = a(i-1) W(i)^T + b(i),  a(0) = X", "(N, d_i)",
        "the pre-activation: what f_{i} acts on, kept for f_{i}'(z({i})) in (5)",
        "refbp.nn.dense", "Dense.forward",
        ("tests/test_explain.py::test_forward_steps_equal_torch_functional",),
    ),
    Equation(
        2, "a(i) = f_i(z(i)),  y_hat = a(L)", "(N, d_i)",
        "layer {i}'s output: the input of layer {next} and, in (6), of dJ/dW({next})",
        "refbp.nn.dense", "Dense.forward",
        ("tests/test_activations.py::test_forward_matches_torch_function",
         "tests/test_explain.py::test_forward_steps_equal_torch_functional"),
    ),
    Equation(
        3, "J = loss(a(L), y) + lambda/2 sum_i ||W(i)||^2", "()",
        "the one number that training makes small",
        "refbp.nn.network", "Network.loss",
        ("tests/test_losses.py::test_value_and_gradient_match_torch",
         "tests/test_backward.py::test_weight_decay_adds_lambda_W_to_dJ_dW"),
    ),
    Equation(
        4, "dJ/da(L) = dloss/dy_hat", "(N, d_L)",
        "where the backward pass starts: how J moves with each output",
        "refbp.nn.network", "Network._backward_loss",
        ("tests/test_losses.py::test_value_and_gradient_match_torch",
         "tests/test_losses.py::test_half_sse_gradient_has_the_sign_of_y_hat_minus_y",
         "tests/test_seed.py::test_seed_sign_of_dJ_dy_hat_fails_and_the_corrected_sign_passes"),
    ),
    Equation(
        5, "dJ/dz(i) = dJ/da(i) o f_i'(z(i))", "(N, d_i)",
        "layer {i}'s error signal: (6), (7) and (8) all start from it",
        "refbp.nn.dense", "Dense.backward",
        ("tests/test_activations.py::test_derivative_matches_autograd_of_torch_function",
         "tests/test_backward.py::test_every_gradient_matches_autograd"),
    ),
    Equation(
        6, "dJ/dW(i) = dJ/dz(i)^T a(i-1) + lambda W(i)", "(d_i, d_{i-1})",
        "what gradient descent subtracts, times a step size, from W({i})",
        "refbp.nn.dense", "Dense.backward",
        ("tests/test_backward.py::test_every_gradient_matches_autograd",
         "tests/test_backward.py::test_every_gradient_matches_finite_differences",
         "tests/test_backward.py::test_weight_decay_adds_lambda_W_to_dJ_dW",
         "tests/test_seed.py::test_seed_dz_dW_as_a_tensor_statement_contracts_to_eq_6"),
    ),
    Equation(
        7, "dJ/db(i) = dJ/dz(i)^T 1  (sum over the batch)", "(d_i,)",
        "what gradient descent subtracts, times a step size, from b({i})",
        "refbp.nn.dense", "Dense.backward",
        ("tests/test_backward.py::test_every_gradient_matches_autograd",
         "tests/test_backward.py::test_every_gradient_matches_finite_differences"),
    ),
    Equation(
        8, "dJ/da(i-1) = dJ/dz(i) W(i)", "(N, d_{i-1})",
        "handed down to layer {prev}, where (5) turns it into dJ/dz({prev})",
        "refbp.nn.dense", "Dense.backward",
        ("tests/test_backward.py::test_every_gradient_matches_autograd",
         "tests/test_backward.py::test_seed_network_every_gradient_including_dJ_dX"),
    ),
    Equation(
        9, "dJ/dX = dJ/da(0)", "(N, d_0)",
        "trains whatever produced X: an embedding, a lower network (why_dJ_dX)",
        "refbp.nn.network", "Network._backward",
        ("tests/test_backward.py::test_seed_network_every_gradient_including_dJ_dX",
         "tests/test_why_dJ_dX.py::test_upper_dJ_dX_trains_the_lower_network_as_autograd_does"),
    ),
)  # fmt: skip
"""The numbered equations, shared by the walk-through, the README and docs/equations.md."""


# ---- tensors as text -------------------------------------------------------------------
def _decimals(t: Tensor) -> int | None:
    """Decimals that give the largest entry of ``t`` four significant digits (at least 4, at
    most 8); None when scientific notation reads better (huge, tiny or non-finite)."""
    finite = t[torch.isfinite(t)]
    largest = float(finite.abs().max()) if finite.numel() else 0.0
    if finite.numel() < t.numel() or largest >= 1e5 or 0 < largest < 1e-5:
        return None
    return 4 if largest == 0 else min(8, max(4, 3 - math.floor(math.log10(largest))))


def _number(value: float, decimals: int | None) -> str:
    return f"{value:.3e}" if decimals is None else f"{value:.{decimals}f}"


def _matrix_lines(t: Tensor, decimals: int | None, width: int = 0) -> list[str]:
    """A 1- or 2-dimensional tensor as rows of numbers, right-aligned to ``width`` at least."""
    columns = t.shape[-1]
    rows = t.reshape(-1, columns) if t.dim() == 2 else t.reshape(1, columns)
    cells = [[_number(float(v), decimals) for v in row] for row in rows]
    width = max(width, *(len(c) for row in cells for c in row))
    lines = ["[" + "  ".join(c.rjust(width) for c in row) + "]" for row in cells]
    if t.dim() == 1:
        return lines
    if len(lines) == 1:
        return ["[" + lines[0] + "]"]
    return ["[" + lines[0]] + [" " + line for line in lines[1:-1]] + [" " + lines[-1] + "]"]


def format_tensor(t: Tensor) -> list[str]:
    """``t`` as lines of text: in full when small, else a one-line summary plus first entries.

    Small means at most FULL_DISPLAY_MAX_ELEMENTS entries and FULL_DISPLAY_MAX_COLUMNS
    columns; a tensor of 3 or more dimensions is shown as one matrix per leading index. The
    decimals are chosen per tensor so that its largest entry keeps four significant digits."""
    if not t.is_floating_point():  # class indices
        values = [str(int(v)) for v in t.reshape(-1)[:FULL_DISPLAY_MAX_ELEMENTS]]
        return ["[" + "  ".join(values) + (" ...]" if t.numel() > len(values) else "]")]
    t = t.detach().to(device="cpu", dtype=torch.float64)
    decimals = _decimals(t)
    if t.dim() == 0:
        return [_number(float(t), decimals)]
    columns = t.shape[-1]
    if t.numel() <= FULL_DISPLAY_MAX_ELEMENTS and columns <= FULL_DISPLAY_MAX_COLUMNS and t.numel() > 0:
        if t.dim() <= 2:
            return _matrix_lines(t, decimals)
        # (B, T, d) or (B, heads, T, T): one matrix per leading index, labelled as numpy prints slices
        width = max(len(_number(float(v), decimals)) for v in t.reshape(-1))
        lines = []
        for lead in itertools.product(*(range(n) for n in t.shape[:-2])):
            lines.append("[" + ", ".join(map(str, lead)) + ", :, :]")
            lines += ["  " + line for line in _matrix_lines(t[lead], decimals, width)]
        return lines
    flat = t.reshape(-1)
    head = "  ".join(_number(float(v), decimals) for v in flat[:4])
    return [
        f"{_shape(t)} tensor: min {_number(float(flat.min()), decimals)}, max {_number(float(flat.max()), decimals)}, "
        f"mean {_number(float(flat.mean()), decimals)}",
        f"first entries: {head} ...",
    ]


def _shape(t: Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ("," if t.dim() == 1 else "") + ")"


# ---- the walk-through ------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    """One line group of the walk-through.

    Attributes:
        equation: the equation number, 1 .. 9 (0 for the given quantities X, y, W, b).
        formula: the equation for this layer, e.g. "dJ/dW(2) = dJ/dz(2)^T a(1)".
        shapes: the shapes that make it type-check, e.g. "(1, 2) (2, 3) -> (1, 3)".
        purpose: what the quantity is used for, one line.
        value: the number(s) computed by refbp (forward pass or manual backward pass).
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
        return all(c.passed for c in self.checks)

    def render(self, *, markdown: bool = False, ascii_only: bool = False) -> str:
        """The walk-through as plain text (80 columns) or as Markdown."""
        return _render_markdown(self) if markdown else _render_text(self, ascii_only=ascii_only)


def _draw_point(net: MLP, batch: int, seed: int) -> tuple[Tensor, Tensor]:
    """X ~ U(-2, 2) and targets a sigmoid or the loss can reach, from seed + 1 (as refbp.cases)."""
    generator = torch.Generator().manual_seed(seed + 1)
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
        loss: a name from refbp.losses.LOSSES; default the seed's half_sse.
        seed: draws the parameters (as MLP.random) and, from seed + 1, the point (X, y).
        batch: N, the number of observations (rows of X).
        layout: "torch" (one observation per row, the default) or "columns", the seed's own
            notation: z(i) = W(i) a(i-1) + b(i), one observation per column (refbp.nn.layouts;
            the same numbers, transposed). "in_out" differs from "torch" in W's layout only.
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch={batch!r} must be an int >= 1 (the number of rows of X)")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed={seed!r} must be an int >= 0")
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
    steps = _steps(net, X, y)
    if layout == "columns":
        steps = _in_columns(steps, net.dims, batch)
    return Walkthrough(net=net, X=X, y=y, seed=seed, steps=tuple(steps), layout=layout)


def _steps(net: MLP, X: Tensor, y: Tensor) -> list[Step]:
    tol = tolerance_for(torch.float64)
    cache = net.forward(X)
    J = net.loss(cache, y)
    grads = net.backward(cache, y)
    _, reference = autograd_gradients(net, X, y)
    L = net.L
    steps = [
        Step(0, "X = a(0)", _shape(X), "the input, one row per observation", X),
        Step(0, "y", _shape(y), "the targets the loss compares y_hat with", y),
    ]
    for i in range(1, L + 1):
        W, b = net.weights[i - 1], net.biases[i - 1]
        steps.append(Step(0, f"W({i})", _shape(W), f"layer {i}'s weights, torch.nn.Linear's (d_out, d_in)", W))
        steps.append(Step(0, f"b({i})", _shape(b), f"layer {i}'s bias", b))

    # ---- forward: (1), (2), (3), each checked against torch.nn.functional ----
    a_torch = X
    for i in range(1, L + 1):
        W, b = net.weights[i - 1], net.biases[i - 1]
        z_i, a_i, a_prev = cache.z[i], cache.a[i], cache.a[i - 1]
        assert z_i is not None  # forward() keeps every z by default
        z_torch = F.linear(a_torch, W, b)
        a_torch = TORCH_ACTIVATIONS[net.activations[i - 1]](z_torch)
        act = get_activation(net.activations[i - 1])
        steps.append(
            Step(
                1, f"z({i}) = a({i - 1}) W({i})^T + b({i})",
                f"{_shape(a_prev)} {_shape(W)}^T + {_shape(b)} -> {_shape(z_i)}",
                EQUATIONS[0].purpose_for(i), z_i, compare(f"z{i}", "torch", z_i, z_torch, tol),
            )
        )  # fmt: skip
        purpose = "y_hat, the network's output: the loss compares it with y" if i == L else EQUATIONS[1].purpose_for(i)
        steps.append(
            Step(
                2, f"a({i}) = {act.name}(z({i})):  {act.equation.split(';')[0].strip()}",
                f"{_shape(z_i)} -> {_shape(a_i)}, elementwise", purpose, a_i,
                compare(f"a{i}", "torch", a_i, a_torch, tol),
            )
        )  # fmt: skip
    loss_fn = get_loss(net.loss_name)
    steps.append(
        Step(
            3, loss_fn.equation.split(";")[0].strip(), f"{_shape(cache.y_hat)}, {_shape(y)} -> ()",
            EQUATIONS[2].purpose_for(L), J, compare("J", "torch", J, torch_loss(net, X, y), tol),
        )
    )  # fmt: skip

    # ---- backward: (4) .. (9), each checked against torch.autograd ----
    def check(key: str, g: Tensor) -> Comparison:
        return compare(key, "autograd", g, reference[key], tol)

    dJ_da_L = grads.dJ_da[L]
    assert dJ_da_L is not None  # backward() keeps every intermediate by default
    steps.append(
        Step(
            4, f"dJ/da({L}) = {loss_fn.equation.split(';')[1].strip()}", f"{_shape(dJ_da_L)}, like a({L})",
            EQUATIONS[3].purpose_for(L), dJ_da_L, check(f"a{L}", dJ_da_L),
        )
    )  # fmt: skip
    for i in range(L, 0, -1):
        W, a_prev = net.weights[i - 1], cache.a[i - 1]
        dJ_dz, dJ_dW, dJ_db, dJ_da_prev = grads.dJ_dz[i], grads.dJ_dW[i], grads.dJ_db[i], grads.dJ_da[i - 1]
        assert dJ_dz is not None and dJ_dW is not None and dJ_db is not None and dJ_da_prev is not None
        derivative = get_activation(net.activations[i - 1]).equation.split(";")[1].strip()
        decay = f" + lambda W({i})" if net.weight_decay else ""
        steps += [
            Step(
                5, f"dJ/dz({i}) = dJ/da({i}) o f'(z({i})),  {derivative}",
                f"{_shape(dJ_dz)} o {_shape(dJ_dz)} -> {_shape(dJ_dz)}", EQUATIONS[4].purpose_for(i),
                dJ_dz, check(f"z{i}", dJ_dz),
            ),
            Step(
                6, f"dJ/dW({i}) = dJ/dz({i})^T a({i - 1}){decay}",
                f"{_shape(dJ_dz)}^T {_shape(a_prev)} -> {_shape(dJ_dW)}, W({i})'s shape",
                EQUATIONS[5].purpose_for(i), dJ_dW, check(f"W{i}", dJ_dW),
            ),
            Step(
                7, f"dJ/db({i}) = dJ/dz({i})^T 1  (column sums)", f"{_shape(dJ_dz)} -> {_shape(dJ_db)}",
                EQUATIONS[6].purpose_for(i), dJ_db, check(f"b{i}", dJ_db),
            ),
            Step(
                8, f"dJ/da({i - 1}) = dJ/dz({i}) W({i})",
                f"{_shape(dJ_dz)} {_shape(W)} -> {_shape(dJ_da_prev)}",
                EQUATIONS[7].purpose_for(i) if i > 1 else "layer 1 hands it down too, to the input: that is (9)",
                dJ_da_prev, check(f"a{i - 1}" if i > 1 else "X", dJ_da_prev),
            ),
        ]  # fmt: skip
    steps.append(
        Step(
            9, "dJ/dX = dJ/da(0)", f"{_shape(grads.dJ_dX)}, X's shape", EQUATIONS[8].purpose_for(0),
            grads.dJ_dX, check("X", grads.dJ_dX),
        )
    )  # fmt: skip
    return steps


_COLUMN_FORMULAS = (
    (r"z\((\d+)\) = a\((\d+)\) W\((\d+)\)\^T \+ b\((\d+)\)", r"z(\1) = W(\3) a(\2) + b(\4)"),
    (r"dJ/dW\((\d+)\) = dJ/dz\((\d+)\)\^T a\((\d+)\)", r"dJ/dW(\1) = dJ/dz(\2) a(\3)^T"),
    (r"dJ/db\((\d+)\) = dJ/dz\((\d+)\)\^T 1  \(column sums\)", r"dJ/db(\1) = dJ/dz(\2) 1  (row sums)"),
    (r"dJ/da\((\d+)\) = dJ/dz\((\d+)\) W\((\d+)\)", r"dJ/da(\1) = W(\3)^T dJ/dz(\2)"),
    (r"one row per observation", r"one column per observation"),
)
"""The seed's column-vector form of each statement that a row layout writes otherwise."""


def _in_columns(steps: list[Step], dims: list[int], N: int) -> list[Step]:
    """The walk-through in the seed's notation: one observation per column. Every statement is
    the row form transposed; every value is shown transposed (W(i) and dJ/dW(i) keep their
    shape, b(i) and dJ/db(i) become columns). The checks are the row form's: the numbers are
    the same."""

    def dim(k: int) -> str:
        return str(dims[k])

    out = []
    for step in steps:
        formula = step.formula
        for pattern, replacement in _COLUMN_FORMULAS:
            formula = re.sub(pattern, replacement, formula)
        value = step.value
        if value.dim() == 2 and not formula.startswith(("W(", "dJ/dW(")):
            value = value.T
        elif value.dim() == 1 and formula.startswith(("b(", "dJ/db(")):
            value = value.reshape(-1, 1)
        numbers = [int(k) for k in re.findall(r"\((\d+)\)", formula)]
        i = numbers[0] if numbers else len(dims) - 1
        shapes = {
            1: f"({dim(i)}, {dim(i - 1)}) ({dim(i - 1)}, {N}) + ({dim(i)}, 1) -> ({dim(i)}, {N})",
            2: f"({dim(i)}, {N}) -> ({dim(i)}, {N}), elementwise",
            5: f"({dim(i)}, {N}) o ({dim(i)}, {N}) -> ({dim(i)}, {N})",
            6: f"({dim(i)}, {N}) ({N}, {dim(i - 1)}) -> ({dim(i)}, {dim(i - 1)}), W({i})'s shape",
            7: f"({dim(i)}, {N}) ({N}, 1) -> ({dim(i)}, 1)",
            8: f"({dim(i)}, {dim(i + 1)}) ({dim(i + 1)}, {N}) -> ({dim(i)}, {N})" if i + 1 < len(dims) else "",
        }.get(step.equation, _shape(value))
        if step.equation == 8:
            j = numbers[1]  # dJ/da(j-1) = W(j)^T dJ/dz(j)
            shapes = f"({dim(j - 1)}, {dim(j)}) ({dim(j)}, {N}) -> ({dim(j - 1)}, {N})"
        purpose = step.purpose.replace("one row per observation", "one column per observation")
        out.append(dataclasses.replace(step, formula=formula, shapes=shapes, value=value, purpose=purpose))
    return out


# ---- rendering -------------------------------------------------------------------------
_TITLES = {0: "Given", 1: "Forward pass", 4: "Backward pass"}


def _header(w: Walkthrough) -> str:
    net = w.net
    return (
        f"Network {'-'.join(str(d) for d in net.dims)}, activations {', '.join(net.activations)}, "
        f"loss {net.loss_name}, seed {w.seed}, N = {w.X.shape[0]} observations "
        f"({'columns' if w.layout == 'columns' else 'rows'} of X), float64. "
        "Forward numbers are checked against torch.nn.functional, gradients against torch.autograd."
    )


def _mark(c: Comparison | None, ascii_only: bool) -> str:
    if c is None:
        return ""
    if ascii_only:
        return "[ok]" if c.passed else "[FAIL]"
    return "✓" if c.passed else "✗"


def _label(step: Step) -> str:
    return f"({step.equation})" if step.equation else "   "


def _render_text(w: Walkthrough, *, ascii_only: bool) -> str:
    lines = ["refbp explain: backpropagation, one equation at a time", ""]
    lines += textwrap.wrap(_header(w), WIDTH)
    for step in w.steps:
        if step.equation in _TITLES and (not lines or lines[-1] != "") and _is_first(w, step):
            lines += ["", f"== {_TITLES[step.equation]} " + "=" * (WIDTH - len(_TITLES[step.equation]) - 4)]
        mark = _mark(step.check, ascii_only)
        head = f"{_label(step)} {step.formula}"
        if mark:
            head = head.ljust(WIDTH - len(mark) - 1) + " " + mark if len(head) + len(mark) < WIDTH else head
        lines += ["", *textwrap.wrap(head, WIDTH, subsequent_indent="    ")]
        if mark and not lines[-1].endswith(mark):
            lines.append(" " * (WIDTH - len(mark)) + mark)
        lines += textwrap.wrap(f"shape {step.shapes}", WIDTH, initial_indent="    ", subsequent_indent="      ")
        lines += textwrap.wrap(step.purpose, WIDTH, initial_indent="    ", subsequent_indent="    ")
        lines += ["    " + line for line in format_tensor(step.value)]
        if step.check is not None and not step.check.passed:
            lines += textwrap.wrap(step.check.message(), WIDTH, initial_indent="    ! ", subsequent_indent="      ")
    checks = w.checks
    n_ok = sum(c.passed for c in checks)
    lines += ["", "=" * WIDTH]
    lines += textwrap.wrap(f"{n_ok} of {len(checks)} steps agree with torch" + _verdict(w), WIDTH)
    return "\n".join(lines) + "\n"


def _is_first(w: Walkthrough, step: Step) -> bool:
    same = [s for s in w.steps if s.equation == step.equation]
    return same[0] is step


def _verdict(w: Walkthrough) -> str:
    if w.passed:
        return " (normwise, within refbp's float64 tolerance)."
    return "; the steps marked with a cross do not."


def _render_markdown(w: Walkthrough) -> str:
    lines = [
        "# `refbp explain`: backpropagation, one equation at a time",
        "",
        "<!-- Generated by `refbp explain --markdown` (scripts/make_docs.py); do not edit by hand. -->",
        "",
        _header(w),
        "Equation numbers are those of [equations.md](equations.md).",
    ]
    for step in w.steps:
        if step.equation in _TITLES and _is_first(w, step):
            lines += ["", f"## {_TITLES[step.equation]}"]
        mark = _mark(step.check, ascii_only=False)
        label = f"({step.equation}) " if step.equation else ""
        lines += ["", f"### {label}`{step.formula}` {mark}".rstrip(), ""]
        lines += [f"Shape `{step.shapes}`. {step.purpose[0].upper()}{step.purpose[1:]}."]
        if step.check is not None and not step.check.passed:
            lines += ["", f"**Mismatch:** {step.check.message()}"]
        lines += ["", "```text", *format_tensor(step.value), "```"]
    checks = w.checks
    lines += ["", f"**{sum(c.passed for c in checks)} of {len(checks)} steps agree with torch**{_verdict(w)}"]
    return "\n".join(lines) + "\n"


# ---- the equation-to-code map (docs/equations.md) -------------------------------------
def _resolve(equation: Equation) -> Callable[..., object]:
    obj: object = importlib.import_module(equation.module)
    for part in equation.function.split("."):
        obj = getattr(obj, part)
    assert callable(obj)
    return obj


def code_line(equation: Equation) -> str:
    """The lines of ``equation.function`` tagged "(number)" in a comment, each carried on to the
    statement it annotates (a comment block or an ``if ...:`` line continues to the next line);
    the docstring line citing the equation when no comment carries the number."""
    tag = f"({equation.number})"
    source = inspect.getsource(_resolve(equation)).splitlines()

    def code(line: str) -> str:
        return line.split("#", 1)[0].strip()

    tagged = [k for k, line in enumerate(source) if "#" in line and tag in line.split("#", 1)[1]]
    if not tagged:
        cited = [line for line in source if tag in line]
        if not cited:
            raise ValueError(f"{equation.module}.{equation.function} never mentions equation {tag}")
        return cited[0].strip()
    block: list[str] = []
    for k in tagged:
        j = k
        while j + 1 < len(source) and (not code(source[j]) or code(source[j]).endswith(":")):
            j += 1
        block += [line for line in source[k : j + 1] if line not in block]
    return textwrap.dedent("\n".join(block))


def render_equation_map() -> str:
    """docs/equations.md: each numbered equation, the code that computes it, the tests that prove it."""
    lines = [
        "# Equations, the code that computes them, the tests that prove them",
        "",
        "<!-- Generated by scripts/make_docs.py from refbp/apps/explain.py (EQUATIONS); do not edit by hand.",
        "     tests/test_docs.py checks that it is up to date and that every function and test exists. -->",
        "",
        "One row per observation: X is (N, d_0); W(i) has torch.nn.Linear's layout (d_i, d_{i-1});",
        '"o" is the elementwise product. The same numbers appear in the docstrings of',
        "refbp/nn/dense.py and refbp/nn/mlp.py, in the README and in `refbp explain`.",
        "",
        "| eq. | statement | shape | used for |",
        "|---:|---|---|---|",
    ]
    for eq in EQUATIONS:
        statement = eq.statement.replace("||", "\\|\\|")
        lines.append(f"| ({eq.number}) | `{statement}` | {eq.shape} | {eq.purpose_for('i')} |")
    for eq in EQUATIONS:
        lines += ["", f"## ({eq.number}) {eq.statement}", ""]
        lines += [f"Computed by `{eq.module}.{eq.function}`:", "", "```python", code_line(eq), "```", ""]
        lines += ["Proved by:", ""] + [f"- `{test}`" for test in eq.tests]
    return "\n".join(lines) + "\n"


# ---- the command line ------------------------------------------------------------------
def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of ints, e.g. 2,3,1") from None


def _name_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",")]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dims", type=_int_list, default=[2, 3, 1], help="layer sizes d_0,...,d_L (default 2,3,1)")
    parser.add_argument(
        "--activations", type=_name_list, default=None, help="one per layer, or one for all (default sigmoid)"
    )
    parser.add_argument("--loss", default="half_sse", help="half_sse (default), mse, bce or cross_entropy")
    parser.add_argument(
        "--seed", type=int, default=0, help="draws the parameters and the point, 0 to 2**32 - 1 (default 0)"
    )
    parser.add_argument("--batch", type=int, default=2, help="N, the number of observations (default 2)")
    parser.add_argument(
        "--layout", default="torch", choices=list(LAYOUTS),
        help="torch (one observation per row, default) or columns (the seed's z = W a + b); in_out is torch's walk",
    )  # fmt: skip
    parser.add_argument("--spec", help="walk the network a JSON file describes (as refbp check --spec reads)")
    parser.add_argument("--stack", help="the same JSON, inline (as refbp check --case takes)")
    parser.add_argument("--model", choices=sorted(BUILT_IN_MODELS), help="walk a built-in network: " + ", ".join(
        f"{name} ({text})" for name, text in sorted(BUILT_IN_MODELS.items())))  # fmt: skip
    parser.add_argument("--markdown", action="store_true", help="emit the same walk-through as Markdown")
    parser.add_argument("--ascii", action="store_true", help="[ok]/[FAIL] instead of check marks")


def run(args: argparse.Namespace) -> int:
    """Print the walk-through; 0 when every step agrees with torch, 1 otherwise. The numbers
    are checked first: a seed torch would alias, or a network too deep or too large for memory,
    is refused before anything is drawn."""
    check_seed(args.seed, "--seed")
    w: Walkthrough | Any
    if args.spec is not None or args.stack is not None or args.model is not None:
        w = _walk_other(args)
    else:
        dims = check_dims(args.dims, "--dims")
        if args.batch >= 1:  # walkthrough refuses the others, saying why
            check_network_fits(dims, args.batch, "the --dims network")
        w = walkthrough(
            dims=args.dims, activations=args.activations, loss=args.loss, seed=args.seed, batch=args.batch,
            layout=args.layout,
        )  # fmt: skip
    encoding = getattr(sys.stdout, "encoding", None) or "ascii"
    try:
        "✓✗".encode(encoding)
        ascii_only = bool(args.ascii)
    except (UnicodeEncodeError, LookupError):
        ascii_only = True
    sys.stdout.write(w.render(markdown=args.markdown, ascii_only=ascii_only))
    return 0 if w.passed else 1


BUILT_IN_MODELS = {
    "layers": "Linear, LayerNorm, tanh, Residual, BatchNorm1d, Dropout, Linear; mse",
    "gpt": "a GPT: token and position embeddings, one block of causal self-attention (2 heads) and a GELU MLP, "
    "final LayerNorm, tied LM head; cross-entropy",
}
"""Networks ``refbp explain --model`` walks (refbp.apps.walk.BUILT_IN)."""


def _walk_other(args: argparse.Namespace) -> Any:
    """The walk through a --spec file, a --stack spec or a --model (refbp.apps.walk), in float64."""
    from ..verify.specs import spec_from_dict
    from .check_cli import parse_spec_json, read_spec
    from .walk import BUILT_IN, walk_network

    given = [option for option in ("spec", "stack", "model") if getattr(args, option) is not None]
    if len(given) > 1:
        raise ValueError(f"--{given[0]} and --{given[1]}: give one network to walk, not two")
    if args.model is not None:
        spec: Any = BUILT_IN[args.model]
    else:
        text, where = (read_spec(args.spec), f"--spec {args.spec}") if args.spec else (args.stack, "--stack")
        try:
            spec = spec_from_dict({**parse_spec_json(text, where), "dtype": "float64"})
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
    case = spec.build()
    return walk_network(case.net, case.X, case.y, description=spec.describe())


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
