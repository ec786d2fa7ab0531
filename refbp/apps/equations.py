"""The numbered equations (1)-(9) of backpropagation through the seed's network, where the code
computes each and which tests prove it: one table for ``refbp explain``, the README and
docs/equations.md (``render_equation_map``)."""

from __future__ import annotations

import inspect
import textwrap
from collections.abc import Callable
from dataclasses import dataclass

from ..nn.dense import Dense
from ..nn.network import Network

__all__ = ["EQUATIONS", "Equation", "code_line", "render_equation_map"]


@dataclass(frozen=True)
class Equation:
    """One numbered equation: the statement, its shape, and where the code and the proof live.

    Attributes:
        number: 1 .. 9, as in the docstrings of refbp.nn.dense and refbp.nn.network.
        statement: the formula in plain text, layer index i.
        shape: the result's shape.
        purpose: one line on what the quantity is used for; {i}, {next}, {prev} stand for the
            layer index i, i+1 and i-1 (see ``purpose_for``).
        code: the function whose source carries the equation's number next to the line that
            computes it (``module`` and ``function`` name it).
        tests: "tests/file.py::test_name" entries that prove it against torch.
    """

    number: int
    statement: str
    shape: str
    purpose: str
    code: Callable[..., object]
    tests: tuple[str, ...]

    @property
    def module(self) -> str:
        """The module of the code that computes the equation, e.g. "refbp.nn.dense"."""
        return self.code.__module__

    @property
    def function(self) -> str:
        """The code's qualified name in ``module``, e.g. "Dense.backward"."""
        return self.code.__qualname__

    def purpose_for(self, i: int | str) -> str:
        """The purpose line for layer ``i`` (an int, or "i" for the generic statement)."""
        if isinstance(i, int):
            return self.purpose.format(i=i, next=i + 1, prev=i - 1)
        return self.purpose.format(i=i, next=f"{i}+1", prev=f"{i}-1")


EQUATIONS: tuple[Equation, ...] = (
    Equation(
        1, "z(i) = a(i-1) W(i)^T + b(i),  a(0) = X", "(N, d_i)",
        "the pre-activation: what f_{i} acts on, kept for f_{i}'(z({i})) in (5)",
        Dense.forward,
        ("tests/test_explain.py::test_forward_steps_equal_torch_functional",),
    ),
    Equation(
        2, "a(i) = f_i(z(i)),  y_hat = a(L)", "(N, d_i)",
        "layer {i}'s output: the input of layer {next} and, in (6), of dJ/dW({next})",
        Dense.forward,
        ("tests/test_activations.py::test_forward_matches_torch_function",
         "tests/test_explain.py::test_forward_steps_equal_torch_functional"),
    ),
    Equation(
        3, "J = loss(a(L), y) + lambda/2 sum_i ||W(i)||^2", "()",
        "the one number that training makes small",
        Network.loss,
        ("tests/test_losses.py::test_value_and_gradient_match_torch",
         "tests/test_backward.py::test_weight_decay_adds_lambda_W_to_dJ_dW"),
    ),
    Equation(
        4, "dJ/da(L) = dloss/dy_hat", "(N, d_L)",
        "where the backward pass starts: how J moves with each output",
        Network._backward_loss,
        ("tests/test_losses.py::test_value_and_gradient_match_torch",
         "tests/test_losses.py::test_half_sse_gradient_has_the_sign_of_y_hat_minus_y",
         "tests/test_seed.py::test_seed_sign_of_dJ_dy_hat_fails_and_the_corrected_sign_passes"),
    ),
    Equation(
        5, "dJ/dz(i) = dJ/da(i) o f_i'(z(i))", "(N, d_i)",
        "layer {i}'s error signal: (6), (7) and (8) all start from it",
        Dense.backward,
        ("tests/test_activations.py::test_derivative_matches_autograd_of_torch_function",
         "tests/test_backward.py::test_every_gradient_matches_autograd"),
    ),
    Equation(
        6, "dJ/dW(i) = dJ/dz(i)^T a(i-1) + lambda W(i)", "(d_i, d_{i-1})",
        "what gradient descent subtracts, times a step size, from W({i})",
        Dense.backward,
        ("tests/test_backward.py::test_every_gradient_matches_autograd",
         "tests/test_backward.py::test_every_gradient_matches_finite_differences",
         "tests/test_backward.py::test_weight_decay_adds_lambda_W_to_dJ_dW",
         "tests/test_seed.py::test_seed_dz_dW_as_a_tensor_statement_contracts_to_eq_6"),
    ),
    Equation(
        7, "dJ/db(i) = dJ/dz(i)^T 1  (sum over the batch)", "(d_i,)",
        "what gradient descent subtracts, times a step size, from b({i})",
        Dense.backward,
        ("tests/test_backward.py::test_every_gradient_matches_autograd",
         "tests/test_backward.py::test_every_gradient_matches_finite_differences"),
    ),
    Equation(
        8, "dJ/da(i-1) = dJ/dz(i) W(i)", "(N, d_{i-1})",
        "handed down to layer {prev}, where (5) turns it into dJ/dz({prev})",
        Dense.backward,
        ("tests/test_backward.py::test_every_gradient_matches_autograd",
         "tests/test_backward.py::test_seed_network_every_gradient_including_dJ_dX"),
    ),
    Equation(
        9, "dJ/dX = dJ/da(0)", "(N, d_0)",
        "trains whatever produced X: an embedding, a lower network (why_dJ_dX)",
        Network._backward,
        ("tests/test_backward.py::test_seed_network_every_gradient_including_dJ_dX",
         "tests/test_why_dJ_dX.py::test_upper_dJ_dX_trains_the_lower_network_as_autograd_does"),
    ),
)  # fmt: skip
"""The numbered equations, shared by the walk-through, the README and docs/equations.md."""


def code_line(equation: Equation) -> str:
    """The lines of ``equation.function`` tagged "(number)" in a comment, each carried on to the
    statement it annotates (a comment block or an ``if ...:`` line continues to the next line);
    the docstring line citing the equation when no comment carries the number."""
    tag = f"({equation.number})"
    source = inspect.getsource(equation.code).splitlines()

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
        "<!-- Generated by scripts/make_docs.py from refbp/apps/equations.py (EQUATIONS); do not edit by hand.",
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
