"""`refbp explain`: every step of the walk-through is the right number (checked here against
torch independently of the walk-through's own marks), fits 80 columns, and covers every
quantity; --markdown is the same walk-through."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from refbp.apps.cli import main
from refbp.apps.equations import EQUATIONS
from refbp.apps.explain import explain, walkthrough
from refbp.apps.tensor_format import WIDTH, format_tensor
from refbp.verify.reference import TORCH_ACTIVATIONS, TORCH_LOSSES

SETTINGS = [
    {},  # the seed's 2-3-1 sigmoid network with J = 1/2 ||y - y_hat||^2
    {"dims": (3, 4, 5, 2), "activations": ("tanh", "gelu", "identity"), "loss": "mse", "seed": 3, "batch": 4},
    {"dims": (4, 6, 3), "activations": ("relu", "identity"), "loss": "cross_entropy", "seed": 1, "batch": 3},
    {"dims": (9, 12, 2), "activations": ("silu", "sigmoid"), "loss": "bce", "seed": 2, "batch": 7},
]


@pytest.mark.parametrize("options", SETTINGS, ids=lambda o: "-".join(map(str, o.get("dims", (2, 3, 1)))))
def test_forward_steps_equal_torch_functional(options: dict) -> None:
    w = walkthrough(**options)
    net = w.net
    a = w.X
    by_formula = {step.formula.split(" =")[0]: step.value for step in w.steps}
    for i in range(1, net.L + 1):
        z = F.linear(a, net.weights[i - 1], net.biases[i - 1])
        a = TORCH_ACTIVATIONS[net.activations[i - 1]](z)
        torch.testing.assert_close(by_formula[f"z({i})"], z, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(by_formula[f"a({i})"], a, rtol=1e-12, atol=1e-14)
    J = next(s.value for s in w.steps if s.equation == 3)
    torch.testing.assert_close(J, TORCH_LOSSES[net.loss_name](a, w.y), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("options", SETTINGS, ids=lambda o: "-".join(map(str, o.get("dims", (2, 3, 1)))))
def test_every_gradient_step_equals_autograd_and_is_marked(options: dict) -> None:
    w = walkthrough(**options)
    X = w.X.clone().requires_grad_(True)
    Ws = [W.clone().requires_grad_(True) for W in w.net.weights]
    bs = [b.clone().requires_grad_(True) for b in w.net.biases]
    a = X
    for W, b, name in zip(Ws, bs, w.net.activations, strict=True):
        a = TORCH_ACTIVATIONS[name](F.linear(a, W, b))
    J = TORCH_LOSSES[w.net.loss_name](a, w.y)
    dJ_dX, *dJ_dparams = torch.autograd.grad(J, [X, *Ws, *bs])
    L = w.net.L
    expected = {f"dJ/dW({i})": dJ_dparams[i - 1] for i in range(1, L + 1)}
    expected |= {f"dJ/db({i})": dJ_dparams[L + i - 1] for i in range(1, L + 1)}
    expected["dJ/dX"] = expected["dJ/da(0)"] = dJ_dX
    steps = {step.formula.split(" =")[0]: step for step in w.steps}
    for name, g in expected.items():
        torch.testing.assert_close(steps[name].value, g, rtol=1e-10, atol=1e-13)
        check = steps[name].check
        assert check is not None and check.passed, name
    assert w.passed


def test_walkthrough_covers_every_quantity_once_per_layer() -> None:
    w = walkthrough(dims=(2, 3, 4, 1))
    labels = [step.formula.split(" =")[0] for step in w.steps]
    for i in (1, 2, 3):
        for quantity in (f"z({i})", f"a({i})", f"dJ/dz({i})", f"dJ/dW({i})", f"dJ/db({i})", f"dJ/da({i - 1})"):
            assert labels.count(quantity) == 1, quantity
    assert labels.count("J") == labels.count("dJ/da(3)") == labels.count("dJ/dX") == 1
    assert {step.equation for step in w.steps} == set(range(10))
    assert all(step.purpose for step in w.steps)
    # forward steps in layer order, backward steps from layer L down to 1
    assert labels.index("z(1)") < labels.index("z(3)") < labels.index("J") < labels.index("dJ/dz(3)")
    assert labels.index("dJ/dz(3)") < labels.index("dJ/dz(1)") < labels.index("dJ/dX")


@pytest.mark.parametrize("options", SETTINGS, ids=lambda o: "-".join(map(str, o.get("dims", (2, 3, 1)))))
def test_text_fits_80_columns_and_marks_every_check(options: dict) -> None:
    text = explain(**options)
    assert max(len(line) for line in text.splitlines()) <= WIDTH
    w = walkthrough(**options)
    assert text.count("✓") == len(w.checks) and "✗" not in text
    for number in range(1, 10):
        assert f"({number}) " in text


def test_small_tensors_in_full_large_ones_summarised() -> None:
    small = torch.arange(6, dtype=torch.float64).reshape(2, 3) / 7
    lines = format_tensor(small)
    assert len(lines) == 2 and lines[0].startswith("[[") and lines[1].endswith("]]")
    assert "0.1429" in lines[0] and "0.7143" in lines[1]
    large = torch.linspace(-3.0, 5.0, 400, dtype=torch.float64).reshape(20, 20)
    summary = format_tensor(large)
    assert len(summary) == 2 and "(20, 20) tensor" in summary[0]
    assert "min -3.000" in summary[0] and "max 5.000" in summary[0] and "mean 1.000" in summary[0]
    assert "4.000e-07" in format_tensor(torch.tensor([4e-7, -1e-9], dtype=torch.float64))[0]
    assert format_tensor(torch.tensor([4e-5, -1e-6], dtype=torch.float64)) == ["[ 0.00004000  -0.00000100]"]


def test_markdown_is_the_same_walk_through() -> None:
    text, markdown = explain(), explain(markdown=True)
    w = walkthrough()
    for step in w.steps:
        assert f"`{step.formula}`" in markdown
        for line in format_tensor(step.value):
            assert line in text and line in markdown
    assert markdown.count("✓") == len(w.checks)


def test_cli_prints_the_walk_through_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "--dims", "3,5,2", "--activations", "tanh", "--loss", "mse", "--seed", "4"]) == 0
    out = capsys.readouterr().out
    assert "Network 3-5-2, activations tanh, tanh, loss mse, seed 4" in out
    assert main(["explain", "--markdown", "--ascii"]) == 0
    assert capsys.readouterr().out == explain(markdown=True)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["explain", "--dims", "2,x,1"], "comma-separated list of ints"),
        (["explain", "--activations", "sigmoid,tanh,relu"], "has 3 names but dims=[2, 3, 1] has 2 layers"),
        (["explain", "--activations", "swish"], "is not a known activation"),
        (["explain", "--loss", "hinge"], "is not a known loss"),
        (["explain", "--batch", "0"], "--batch=0 is out of range"),
        (["explain", "--batch", "-5"], "--batch=-5 is out of range"),
        (["explain", "--seed", "-1"], "--seed"),
        (["explain", "--loss", "cross_entropy"], "needs activations[-1]='identity'"),
    ],
)
def test_bad_options_exit_2_with_one_line(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_equations_are_numbered_1_to_9_with_a_purpose() -> None:
    assert [eq.number for eq in EQUATIONS] == list(range(1, 10))
    assert all(eq.purpose_for("i") and eq.tests for eq in EQUATIONS)


def test_columns_layout_is_the_row_walk_transposed_with_the_seeds_statements() -> None:
    rows, columns = walkthrough(dims=(3, 4, 2), batch=5), walkthrough(dims=(3, 4, 2), batch=5, layout="columns")
    assert [s.equation for s in rows.steps] == [s.equation for s in columns.steps]
    for row, column in zip(rows.steps, columns.steps, strict=True):
        if row.formula.startswith(("W(", "dJ/dW(")) or row.value.dim() == 0:
            torch.testing.assert_close(column.value, row.value, rtol=0, atol=0)
        elif row.value.dim() == 1 and row.formula.startswith(("b(", "dJ/db(")):
            torch.testing.assert_close(column.value, row.value.reshape(-1, 1), rtol=0, atol=0)
        elif row.value.dim() == 2:
            torch.testing.assert_close(column.value, row.value.T, rtol=0, atol=0)
        shape = "(" + ", ".join(map(str, column.value.shape)) + ("," if column.value.dim() == 1 else "") + ")"
        if "->" in column.shapes:  # the statement's result has the shape of the value shown
            assert column.shapes.split("->")[1].strip().startswith(shape), column.formula
    formulas = {s.formula for s in columns.steps}
    assert {"z(1) = W(1) a(0) + b(1)", "dJ/dW(2) = dJ/dz(2) a(1)^T", "dJ/da(1) = W(2)^T dJ/dz(2)"} <= formulas
    assert columns.passed and "one column per observation" in columns.render()
