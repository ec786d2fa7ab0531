"""Second order by hand (refbp.nn.second_order): the manual H v, G v and tangents against
torch.func forward-over-reverse, double backward, and differences of the manual gradient."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import refbp
from refbp.nn import dense, second_order
from refbp.nn.layer import Layer
from refbp.nn.layers import Elementwise, Embedding, Flatten, LayerNorm, Linear, LogSoftmax, Softmax
from refbp.nn.losses import get_loss
from refbp.nn.mlp import MLP
from refbp.nn.network import Network
from refbp.strategies import cases
from refbp.verify.cases import Case
from refbp.verify.second_order import check_second_order, random_direction

TWICE_DIFFERENTIABLE_BY_TORCH = ("half_sse", "mse", "bce", "cross_entropy", "nll")
"""The losses both torch routes can take (torch differentiates multi_margin_loss only once)."""

SMOOTH = ("identity", "sigmoid", "tanh", "softplus", "gelu", "gelu_tanh", "silu", "elu")


@settings(max_examples=12)
@given(
    case=cases(
        activations=SMOOTH,
        losses=TWICE_DIFFERENTIABLE_BY_TORCH,
        dtypes=("float64",),
        max_depth=3,
        max_width=6,
        max_batch=4,
    )
)
def test_manual_hessian_vector_product_agrees_with_both_torch_routes_and_differences(case: Case) -> None:
    result = check_second_order(case.net, case.X, case.y, seed=1)
    assert result.passed, result.failure_message()
    references = {row.reference for row in result.rows}
    assert references == {"forward-over-reverse", "reverse-over-reverse", "fd-gradient"}


@settings(max_examples=8)
@given(case=cases(dtypes=("float64",), max_depth=3, max_width=6, max_batch=4))
def test_gauss_newton_product_and_tangents_agree_with_torch_func(case: Case) -> None:
    result = check_second_order(case.net, case.X, case.y, product="gauss_newton", forward=True, seed=2)
    assert result.passed, result.failure_message()
    assert {"R{J}", "Hv[X]"} <= {row.name for row in result.rows}


@settings(max_examples=8)
@given(case=cases(activations=SMOOTH, dtypes=("float32",), max_depth=2, max_width=5, max_batch=4))
def test_float32_products_pass_against_float64_references(case: Case) -> None:
    result = check_second_order(case.net, case.X, case.y, seed=3)
    assert result.passed, result.failure_message()


def test_hessian_is_symmetric_in_the_manual_product() -> None:
    """u . (H v) = v . (H u): a wrong transpose in an R-rule breaks it."""
    net = MLP.random([3, 4, 2], activations=["tanh", "identity"], loss="cross_entropy", seed=0)
    X, y = torch.randn(5, 3, dtype=torch.float64), torch.tensor([0, 1, 1, 0, 1])
    u, v = random_direction(net, X, 1), random_direction(net, X, 2)
    Hu, Hv = second_order.hvp(net, X, y, u).Hv, second_order.hvp(net, X, y, v).Hv
    uHv = sum(float((u[n] * Hv[n]).sum()) for n in Hv)
    vHu = sum(float((v[n] * Hu[n]).sum()) for n in Hu)
    assert uHv == pytest.approx(vHu, rel=1e-12)


def test_a_layer_stack_with_a_tied_weight_gets_both_uses() -> None:
    W = torch.randn(3, 3, dtype=torch.float64)
    net = Network([Linear(W), Elementwise("tanh"), Linear(W, torch.randn(3, dtype=torch.float64)), Flatten()], "mse")
    X, y = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    result = check_second_order(net, X, y, forward=True)
    assert result.passed, result.failure_message()


def test_relu_kinks_leave_the_differences_unverified_never_failed() -> None:
    net = MLP.random([2, 3, 1], activations=["relu", "identity"], loss="mse", seed=0)
    X = torch.zeros(2, 2, dtype=torch.float64)  # z1 = b1: move b1 to 0 to sit on the kink
    net.set_parameter("b1", torch.zeros(3, dtype=torch.float64))
    y = torch.randn(2, 1, dtype=torch.float64)
    result = check_second_order(net, X, y, seed=0)
    fd_rows = [row for row in result.rows if row.reference == "fd-gradient"]
    assert fd_rows and all(row.verdict == "unverified" for row in fd_rows)
    assert all(row.verdict == "ok" for row in result.rows if row.reference != "fd-gradient")


@pytest.fixture
def dropped_second_derivative(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The classic slip: R{dJ/dz} = R{dJ/da} o f'(z), without dJ/da o f''(z) o R{z}."""
    monkeypatch.setattr(dense, "second_derivative", lambda act, z, a: torch.zeros_like(z))
    yield


def test_dropping_the_second_derivative_term_is_caught(dropped_second_derivative: None) -> None:
    net = MLP.random([3, 4, 2], activations=["tanh", "identity"], loss="mse", seed=0)
    X, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    result = check_second_order(net, X, y)
    assert not result.passed
    assert all(t.verdict == "mismatch" for t in result.tensors if t.name in ("Hv[W1]", "Hv[b1]"))


def test_users_product_with_a_transposed_weight_block_is_caught() -> None:
    net = MLP.random([3, 3, 2], activations=["sigmoid", "identity"], loss="half_sse", seed=4)
    X, y = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)

    def mine(v: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        Hv = dict(second_order.hvp(net, X, y, v).Hv)
        Hv["W1"] = Hv["W1"].T.contiguous()  # a square block transposed: shapes cannot tell
        return Hv

    result = check_second_order(net, X, y, hvp_fn=mine)
    failed = {t.name for t in result.tensors if not t.passed}
    assert failed == {"Hv[W1]"}


def test_users_product_that_is_right_passes() -> None:
    net = MLP.random([3, 3, 2], activations=["sigmoid", "identity"], loss="half_sse", seed=4)
    X, y = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    result = check_second_order(net, X, y, hvp_fn=lambda v: second_order.hvp(net, X, y, v).Hv)
    assert result.passed, result.failure_message()


class _LayerNormWithoutRules(LayerNorm):
    """A layer whose second-order rules are not written (LayerNorm has them since issue 21)."""

    @property
    def has_second_order(self) -> bool:
        return False


def test_layers_without_rules_are_refused_by_name() -> None:
    d = 3
    net = Network([Linear(torch.randn(d, d, dtype=torch.float64)), _LayerNormWithoutRules(None, None, d=d)], "mse")
    with pytest.raises(NotImplementedError, match=r"layer 2 \(LayerNorm"):
        check_second_order(net, torch.randn(4, d, dtype=torch.float64), torch.randn(4, d, dtype=torch.float64))


@given(st.sampled_from(["W1", "X"]))
def test_bad_directions_name_the_entry(name: str) -> None:
    net = MLP.random([2, 2, 1], activations=["tanh", "identity"], loss="mse", seed=0)
    X, y = torch.randn(3, 2, dtype=torch.float64), torch.randn(3, 1, dtype=torch.float64)
    with pytest.raises(ValueError, match=rf"v\['{name}'\]"):
        second_order.hvp(net, X, y, {name: torch.ones(7, dtype=torch.float64)})
    with pytest.raises(ValueError, match="not parameters"):
        second_order.hvp(net, X, y, {"W9": torch.ones(1)})


def test_the_manual_products_are_honestly_manual(monkeypatch: pytest.MonkeyPatch) -> None:
    """H v, G v and the tangents run under inference_mode and with every autograd entry point
    raising, and agree with the torch routes computed before the trap (refbp.nn.second_order's
    source is in tests/test_manual.py's proof that no nn module mentions autograd)."""
    net = MLP.random([3, 4, 2], activations=["gelu", "identity"], loss="cross_entropy", seed=0)
    X, y = torch.randn(5, 3, dtype=torch.float64), torch.tensor([0, 1, 1, 0, 1])
    v = random_direction(net, X, 0)
    assert check_second_order(net, X, y, v).passed  # the torch routes, before the trap
    before = second_order.hvp(net, X, y, v).Hv

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the manual path called into autograd")

    for owner, name in [(torch.autograd, "grad"), (torch.autograd, "backward"), (torch.Tensor, "backward"),
                        (torch.Tensor, "requires_grad_"), (torch.func, "jvp"), (torch.func, "grad"),
                        (torch.func, "vjp")]:  # fmt: skip
        monkeypatch.setattr(owner, name, refuse)
    with torch.inference_mode():
        products = [second_order.hvp(net, X, y, v), second_order.gvp(net, X, y, v)]
        tangents = second_order.jvp(net, X, y, v)
    for t in [*products[0].Hv.values(), *products[1].Hv.values(), *tangents.as_dict().values()]:
        assert not t.requires_grad
    for name, t in products[0].Hv.items():
        assert torch.equal(t, before[name])  # the verified product, computed with autograd unreachable


def test_the_benchmarked_routes_compute_the_same_product() -> None:
    """benchmarks/hvp.py times three routes to one H v: they must agree, or the ratio means nothing."""
    from benchmarks.hvp import routes

    results = {name: fn() for name, fn in routes(4, 3, torch.float64).items()}
    manual = results["manual"]
    assert isinstance(manual, dict)
    names = [name for name in manual if name != "X"]  # the torch routes differentiate the parameters only
    for other in ("forward-over-reverse", "double backward"):
        theirs = results[other]
        values = list(theirs.values()) if isinstance(theirs, dict) else list(theirs)  # type: ignore[call-overload]
        for name, t in zip(names, values, strict=True):
            torch.testing.assert_close(manual[name], t, rtol=1e-10, atol=1e-12)


def test_curvature_example_agrees_with_torch_and_writes_its_files(tmp_path: Path) -> None:
    from refbp.examples import curvature

    runs = curvature.curvature(iterations=6, newton_steps=2, seed=0)
    for kind in ("power", "newton"):
        torch.testing.assert_close(
            torch.tensor(runs[f"{kind}_manual"]), torch.tensor(runs[f"{kind}_torch"]), rtol=1e-10, atol=0
        )
    assert runs["newton_manual"][-1] < runs["newton_manual"][0]  # Newton-CG lowers J
    assert curvature.main(["--iterations", "3", "--newton-steps", "1", "--out", str(tmp_path)]) == 0
    assert set(json.loads((tmp_path / "curvature.json").read_text())) == set(runs)
    assert curvature.main(["--iterations", "0", "--out", str(tmp_path)]) == 2


def _quadratic_and_cubic(p: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """J = 1/2 w^T A w + sum(w^3) / 3 (NumPy): gradient A w + w^2, Hessian A + diag(2 w)."""
    w = p["w"]
    return 0.5 * w @ _A @ w + (w**3).sum() / 3.0, {"w": _A @ w + w**2}


_A = np.array([[2.0, 0.5, 0.0], [0.5, 1.0, -0.3], [0.0, -0.3, 3.0]])


def test_a_users_hessian_vector_product_is_checked_by_check_function() -> None:
    params = {"w": np.array([0.3, -1.2, 0.7])}
    right = refbp.check_function(
        _quadratic_and_cubic, params, order=2, hvp=lambda p, v: {"w": _A @ v["w"] + 2 * p["w"] * v["w"]}
    )
    assert right.passed, right.failure_message()
    dropped = refbp.check_function(_quadratic_and_cubic, params, order=2, hvp=lambda p, v: {"w": _A @ v["w"]})
    assert not dropped.passed  # the diag(2 w) term of the cubic forgotten
    with pytest.raises(ValueError, match="order=2"):
        refbp.check_function(_quadratic_and_cubic, params, order=2)


def test_explain_order_2_walks_the_seed_network_with_every_line_verified(capsys: pytest.CaptureFixture[str]) -> None:
    from refbp.apps.cli import main

    assert main(["explain", "--order", "2", "--seed", "1", "--ascii"]) == 0
    out = capsys.readouterr().out
    for line in ("R{z(1)} = R{a(0)} W(1)^T + a(0) V_W1^T + V_b1", "R{dJ/dz(2)}", "(H v)_W1", "f''(z(1))"):
        assert line in out
    assert "[FAIL]" not in out and "13 of 13 quantities agree with torch" in out
    assert main(["explain", "--order", "2", "--loss", "mse"]) == 2
    assert "--order 2 walks the seed's network; it takes no --loss" in capsys.readouterr().err


def test_explain_order_2_marks_a_wrong_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    from refbp.apps.explain_order2 import explain_order2

    monkeypatch.setattr(dense, "second_derivative", lambda act, z, a: torch.zeros_like(z))
    walk = explain_order2(0)
    assert not walk.passed and "[FAIL]" in walk.render(ascii_only=True)


def _stack(kind: str) -> tuple[Network, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(len(kind))

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    y = torch.tensor([0, 1, 1])
    if kind.startswith("embedding"):
        padding = 2 if kind.endswith("padding") else None
        layers = [Embedding(randn(7, 3), padding_idx=padding), Flatten(), Linear(randn(4, 6), randn(4))]
        return (
            Network([*layers, Elementwise("tanh"), Linear(randn(2, 4))], "cross_entropy"),
            torch.tensor([[1, 2], [3, 4], [2, 6]]),
            y,
        )
    last = Softmax(-1) if kind == "softmax" else LogSoftmax(-1)
    return Network([Linear(randn(3, 3), randn(3)), last, Linear(randn(2, 3))], "cross_entropy"), randn(3, 3), y


@pytest.mark.parametrize("kind", ["embedding", "embedding-padding", "softmax", "log_softmax"])
def test_embedding_and_softmax_layers_have_exact_second_order_rules(kind: str) -> None:
    net, X, y = _stack(kind)
    result = check_second_order(net, X, y, forward=True)
    assert result.passed, result.failure_message()
    references = {row.reference for row in result.rows if row.name.startswith("Hv[")}
    # a padding row's gradient is 0 by convention, not J's derivative: double backward gives H^T v there
    assert ("reverse-over-reverse" in references) == (kind != "embedding-padding")


LOSS_CASES = [
    *(
        (name, reduction)
        for name in ("mse", "bce", "cross_entropy", "nll", "multi_margin")
        for reduction in ("mean", "sum")
    ),
    ("half_sse", "sum"),
]
"""Every loss in each reduction it has (half_sse is a sum by definition)."""


@pytest.mark.parametrize(("name", "reduction"), LOSS_CASES)
def test_every_loss_and_reduction_has_its_hessian_product(name: str, reduction: str) -> None:
    g = torch.Generator().manual_seed(3)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    outputs: dict[str, list[Layer]] = {"bce": [Elementwise("sigmoid")], "nll": [LogSoftmax(-1)]}
    last = outputs.get(name, [])
    net = Network(
        [Linear(randn(4, 3), randn(4)), Elementwise("tanh"), Linear(randn(3, 4), randn(3)), *last],
        get_loss(name, reduction=reduction),
    )
    X = randn(5, 3)
    classes = name in ("cross_entropy", "nll", "multi_margin")
    y = torch.tensor([0, 2, 1, 1, 2]) if classes else torch.rand(5, 3, generator=g, dtype=torch.float64)
    # torch differentiates multi_margin_loss only once: its H v is judged by the differences alone,
    # and its G v (no difference measures it) has no reference: not passed, never a pass on nothing
    torch_routes = name != "multi_margin"
    result = check_second_order(net, X, y, product="hessian", forward=torch_routes)
    assert result.passed, result.failure_message()
    references = {row.reference for row in result.rows if row.name.startswith("Hv[")}
    assert references == {"fd-gradient"} | ({"forward-over-reverse", "reverse-over-reverse"} if torch_routes else set())
    assert check_second_order(net, X, y, product="gauss_newton").passed == torch_routes


def test_check_order_2_is_the_second_order_check() -> None:
    net = MLP.random([3, 4, 2], activations=["tanh", "identity"], loss="mse", seed=0)
    X, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    result = refbp.check(net, X, y, order=2, forward=True)
    assert result.passed and {"Hv[W1]", "R{J}"} <= {row.name for row in result.rows}
    with pytest.raises(ValueError, match="order=3"):
        refbp.check(net, X, y, order=3)
