"""Second order by hand (refbp.nn.second_order): the manual H v, G v and tangents against
torch.func forward-over-reverse, double backward, and differences of the manual gradient."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import refbp
from refbp.nn import second_order
from refbp.nn.layer import Layer
from refbp.nn.layers import Elementwise, Embedding, Flatten, LayerNorm, Linear, LogSoftmax, Softmax
from refbp.nn.losses import get_loss
from refbp.nn.mlp import MLP
from refbp.nn.network import Network
from refbp.strategies import STACK_KINDS, cases, stacks
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
    assert {"R{J}", "Hv[X]"} <= {row.name for row in result.rows}
    if case.net.loss_fn.name == "multi_margin":  # torch cannot differentiate it twice: nothing verifies G v
        products = [row for row in result.rows if row.name.startswith("Hv[")]
        assert not result.passed and all(row.verdict == "unverified" for row in products), result.table()
        assert all("torch cannot differentiate multi_margin twice" in row.note for row in products)
        return
    assert result.passed, result.failure_message()


def test_a_gauss_newton_product_no_reference_takes_is_unverified_not_passed() -> None:
    """multi_margin's loss has no double backward in torch, and differences of the gradient give
    H v, not G v: the check said passed with no row for G v at all (found by the random profile)."""
    net = MLP.random([1, 2], activations=["identity"], loss="multi_margin", seed=0)
    X, y = torch.tensor([[-1.7558]], dtype=torch.float64), torch.tensor([0])
    result = check_second_order(net, X, y, product="gauss_newton", seed=2)
    assert {row.name for row in result.rows} == {"Hv[W1]", "Hv[b1]", "Hv[X]"}
    assert not result.passed and {row.verdict for row in result.rows} == {"unverified"}


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


def test_relu_exactly_on_its_kink_leaves_every_product_entry_unverified_never_failed() -> None:
    """z1 = b1 = 0: f'(0) and f''(0) are conventions, not derivatives; H v is undefined there."""
    net = MLP.random([2, 3, 1], activations=["relu", "identity"], loss="mse", seed=0)
    X = torch.zeros(2, 2, dtype=torch.float64)  # z1 = b1: move b1 to 0 to sit on the kink
    net.set_parameter("b1", torch.zeros(3, dtype=torch.float64))
    y = torch.randn(2, 1, dtype=torch.float64)
    result = check_second_order(net, X, y, seed=0, forward=True)
    product_rows = [row for row in result.rows if row.name.startswith(("Hv[", "R{dJ/d"))]
    assert {row.reference for row in product_rows} == {"forward-over-reverse", "reverse-over-reverse", "fd-gradient"}
    assert all(row.verdict == "unverified" and row.n_excluded == row.n_elements for row in product_rows)
    tangents = [row for row in result.rows if row.reference == "forward-mode"]
    assert tangents and all(row.verdict == "ok" for row in tangents)  # first order: torch's f'(0), as at order 1
    message = result.failure_message()
    assert not result.passed and "exactly on a kink (z = 0" in message and "second derivative is undefined" in message


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
    """benchmarks/hvp.py times four routes to one H v: they must agree, or the ratio means nothing."""
    from benchmarks.hvp import routes

    results = {name: fn() for name, fn in routes(4, 3, torch.float64).items()}
    manual = results["manual"]
    assert isinstance(manual, dict)
    names = [name for name in manual if name != "X"]  # the torch routes differentiate the parameters only
    for other in ("manual, H v only", "forward-over-reverse", "double backward"):
        theirs = results[other]
        if isinstance(theirs, dict):  # refbp's lean route names its tensors (X too), torch.func's the parameters
            values = [theirs[name] for name in names]
        else:
            values = list(theirs)  # type: ignore[call-overload]
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


def test_explain_order_2_marks_a_wrong_rule() -> None:
    """The catalogue's "f'' term dropped" twin in the seed's network: the walk marks it."""
    from refbp.apps.bug_record import twin_of
    from refbp.apps.explain_order2 import Order2Walk, order2_page
    from refbp.apps.second_order_bugs import _DenseNoSecondDerivative
    from refbp.apps.seed import seed_network

    net = seed_network(0)
    for l, layer in enumerate(net.layers):  # the twins in place: the MLP view the walk reads is kept
        twin = twin_of(_DenseNoSecondDerivative)(layer)
        assert isinstance(twin, _DenseNoSecondDerivative)
        net.layers[l] = twin
    walk = Order2Walk(order2_page(net, 0))
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


# ---- the verification is generic: pieces, kinks and masks from the oracle's own reports -------------
def _randn(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def _relu_in_a_residual(offset: float) -> tuple[Network, torch.Tensor, torch.Tensor]:
    """Residual(Linear, relu) then Linear, with z[0, 0] of the inner Linear moved to ``offset``."""
    from refbp.nn.residual import Residual

    g = torch.Generator().manual_seed(5)
    W, b, X = _randn(g, 3, 3), _randn(g, 3), _randn(g, 4, 3)
    X[0], b[0] = 0.0, offset  # z[0, 0] = b[0] = offset, exactly
    net = Network([Residual(Linear(W, b), Elementwise("relu")), Linear(_randn(g, 2, 3))], "mse")
    return net, X, _randn(g, 4, 2)


def test_a_difference_step_across_relu_inside_a_residual_leaves_only_the_differences_unverified() -> None:
    """The oracle reports relu's input wherever it sits: the differences of the gradient are
    not judged across its kink (they measure a jump there), the torch routes still are."""
    net, X, y = _relu_in_a_residual(1e-9)  # a step h v ~ 1e-5 moves it across 0
    result = check_second_order(net, X, y, seed=0)
    fd_rows = [row for row in result.rows if row.reference == "fd-gradient"]
    assert fd_rows and all(row.n_excluded == row.n_elements for row in fd_rows)
    assert not result.meta["kinks"] and result.passed, result.failure_message()


def test_relu_exactly_on_its_kink_inside_a_residual_is_found_by_the_oracle() -> None:
    net, X, y = _relu_in_a_residual(0.0)
    result = check_second_order(net, X, y, seed=0)
    assert result.meta["kinks"] == ["z = 0"] and not result.passed
    assert all(row.verdict == "unverified" for row in result.rows)


def test_a_max_pool_tie_leaves_the_product_unverified() -> None:
    """Integer pixels: windows hold their maximum twice, where the first maximum is a convention."""
    module = torch.nn.Sequential(torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(4, 2), torch.nn.Tanh())
    net = refbp.from_torch(module.double(), loss="mse")
    g = torch.Generator().manual_seed(2)
    y = _randn(g, 2, 2)
    rows = [[1.0, 1.0, 0.0, 2.0], [0.0, 0.0, 2.0, 1.0], [3.0, 0.0, 1.0, 1.0], [3.0, 1.0, 1.0, 0.0]]
    tied = torch.tensor([[rows]], dtype=torch.float64)  # (1, 1, 4, 4): a tie in every window
    result = check_second_order(net, tied.expand(2, 1, 4, 4).clone(), y, seed=0)
    assert result.meta["kinks"] and all(row.verdict == "unverified" for row in result.rows)
    untied = check_second_order(net, _randn(g, 2, 1, 4, 4), y, seed=0, forward=True)  # distinct pixels
    assert not untied.meta["kinks"] and untied.passed, untied.failure_message()


def _dropout_net(p: float) -> tuple[Network, torch.Tensor, torch.Tensor]:
    from refbp.nn.dropout import Dropout

    g = torch.Generator().manual_seed(9)
    layers = [Linear(_randn(g, 4, 3), _randn(g, 4)), Elementwise("tanh"), Dropout(p, seed=3), Linear(_randn(g, 2, 4))]
    return Network(layers, "mse"), _randn(g, 6, 3), _randn(g, 6, 2)


@pytest.mark.parametrize("product", ["hessian", "gauss_newton"])
def test_train_mode_dropout_is_differentiated_at_one_draw_of_its_masks(product: str) -> None:
    net, X, y = _dropout_net(0.5)
    result = check_second_order(net, X, y, product=product, forward=True, seed=1)
    assert result.passed, result.failure_message()
    expected = {f"Hv[{name}]" for name in [*net.parameters(), "X"]}
    assert expected <= {row.name for row in result.rows} and "R{a3}" in {row.name for row in result.rows}


def test_relu_of_dropped_entries_sits_on_its_kink_whatever_v_and_is_no_kink_along_it() -> None:
    """Dropout zeroes entries before relu: they stay at 0 for every weight, so J is smooth along v."""
    from refbp.nn.dropout import Dropout

    g = torch.Generator().manual_seed(9)
    layers = [Linear(_randn(g, 4, 3), _randn(g, 4)), Dropout(0.5, seed=3), Elementwise("relu"),
              Linear(_randn(g, 2, 4))]  # fmt: skip
    net, X, y = Network(layers, "mse"), _randn(g, 6, 3), _randn(g, 6, 2)
    result = check_second_order(net, X, y, forward=True, seed=1)
    assert result.meta["pinned_kinks"] == 1 and not result.meta["kinks"]
    assert result.passed, result.failure_message()


def test_check_order_2_uses_the_masks_it_is_given() -> None:
    """A user's H v computed at the masks ``noise`` passes with them and fails with another draw."""
    net, X, y = _dropout_net(0.5)
    noise = net.forward(X, update_stats=False).noise
    v = random_direction(net, X, 0)
    mine = second_order.hvp(net, X, y, v, noise=noise).Hv
    assert check_second_order(net, X, y, v, hvp_fn=lambda _: mine, noise=noise).passed
    other = {path: ~mask for path, mask in noise.items()}  # every kept entry dropped and back
    assert not check_second_order(net, X, y, v, hvp_fn=lambda _: mine, noise=other).passed
    assert refbp.check(net, X, y, order=2, noise=noise).passed


def test_torchs_bce_double_backward_bias_is_its_error_estimate_not_a_mismatch() -> None:
    """p = 0.0197 after a sigmoid: torch's second derivative of bce adds 1e-12 to p and 1 - p,
    and the f'' terms amplify it to 4e-9 relative in float64: the torch routes cannot confirm H v
    there (the differences of the gradient do), and must not contradict it."""
    from refbp.verify.stacks import StackSpec

    spec = StackSpec.from_dict({"batch": 1, "dtype": "float64", "input": 2, "layers": [
        ["residual", [["tanh"], ["tanh"]]], ["dropout", 0.25], ["dropout", 0.25], ["dropout", 0.25], ["linear", 1],
        ["sigmoid"]], "loss": "bce", "seed": 1, "training": True})  # fmt: skip
    case = spec.build()
    result = check_second_order(case.net, case.X, case.y, forward=True, seed=4)
    assert result.passed, result.failure_message()
    torch_rows = [row for row in result.rows if row.name == "Hv[b5]" and row.reference.endswith("reverse")]
    assert len(torch_rows) == 2 and all(row.n_imprecise == 1 for row in torch_rows)


def _torch_hvp(net: Network, X: torch.Tensor, y: torch.Tensor) -> Any:
    """A user's H v by torch.func forward-over-reverse of the oracle (a real route, not refbp's)."""
    from refbp.nn.keys import Key
    from refbp.nn.layer import Params

    params = {name: t.detach() for name, t in net.parameters().items()}

    def J(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return net.torch_J(X, y, Params({Key.parse(n): t for n, t in p.items()}, net.ties), {})

    def product(v: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        V = {name: v[name] for name in params}
        return dict(torch.func.jvp(torch.func.grad(J), (params,), (V,))[1])

    return product


def test_batchnorm_in_training_mode_is_checked_without_touching_its_running_statistics() -> None:
    from refbp.nn.batchnorm import BatchNorm1d

    g = torch.Generator().manual_seed(4)
    net = Network([Linear(_randn(g, 3, 2), _randn(g, 3)), BatchNorm1d(C=3), Elementwise("tanh"),
                   Linear(_randn(g, 2, 3))], "cross_entropy")  # fmt: skip
    X, y = _randn(g, 5, 2), torch.tensor([0, 1, 1, 0, 1])
    bn = net.layers[1]
    before = [t.clone() for t in bn.buffers().values()]
    v = {name: t for name, t in random_direction(net, X, 0).items() if name != "X"}
    result = check_second_order(net, X, y, v, hvp_fn=_torch_hvp(net, X, y))
    assert result.passed, result.failure_message()
    assert any(row.reference == "fd-gradient" and row.verdict == "ok" for row in result.rows)  # the manual gradient's
    assert all(torch.equal(a, b) for a, b in zip(before, bn.buffers().values(), strict=True))


def test_a_gpt_with_token_inputs_and_sequence_targets_is_checked() -> None:
    """Integer X (no "X" direction), (B, T) targets with ignored positions, dropout in training mode."""
    from refbp.models.gpt_cases import GPTSpec

    spec = GPTSpec(vocab_size=5, block_size=3, n_layer=1, n_head=1, n_embd=2, dropout=0.0, batch=2, length=3,
                   ignored=1, seed=3)  # fmt: skip
    case = spec.build()
    v = random_direction(case.net, case.X, 0)
    assert "X" not in v
    result = check_second_order(case.net, case.X, case.y, v, hvp_fn=_torch_hvp(case.net, case.X, case.y))
    assert result.passed, result.failure_message()
    assert {f"Hv[{name}]" for name in case.net.parameters()} == {row.name for row in result.rows}


# ---- the report's order-2 column ------------------------------------------------------------------
def test_the_report_checks_a_share_of_its_float64_cases_at_order_2() -> None:
    from refbp.apps.report import build_json, render_markdown
    from refbp.apps.sweep import run_report, sweep_specs
    from refbp.verify.sweep import ORDER2_EVERY, takes_order2

    outcomes, seconds = run_report(sweep_specs(2, 4), devices=["cpu"], dtypes=["float64"], progress=False)
    settings_ = {"examples": 2, "seed": 4, "devices": ["cpu"], "dtypes": ["float64"], "fd_mode": "auto"}
    doc = build_json(outcomes, settings_, seconds)
    chosen = [c for c in doc["cases"] if c["order2"] is not None]
    assert chosen and chosen[0]["label"].startswith("seed network")  # seed 4: ORDER2_EVERY divides it
    assert [o.order2 is not None for o in outcomes] == [takes_order2(o.spec) for o in outcomes]
    o = doc["summary"]["order2"]
    assert o["every"] == ORDER2_EVERY and o["checked"] + o["no_rule"] == len(chosen) and o["failed"] == 0
    assert o["passed"] == sum(c["order2"]["verdict"] == "passed" for c in chosen) >= 1
    assert {"order2_checked", "order2_passed", "order2_no_rule"} <= set(doc["coverage"][0])
    text = render_markdown(doc, "", [])
    assert "**Order 2** (one float64 case in 4)" in text and "| order 2 (H v)" in text


@pytest.mark.parametrize("seed", [2, 27])
def test_the_sweep_draws_batchnorm2d_on_one_pixel_in_eval_mode_too(seed: int) -> None:
    """``refbp report --seed 1 --examples 600`` stopped here: StackSpec checks every layer in
    training mode, where BatchNorm2d over (1, C, 1, 1) has one value per channel."""
    import random

    from refbp.verify.sweep import random_image_stack

    spec = random_image_stack(random.Random(seed), include="batchnorm2d")
    assert "batchnorm2d" in spec.describe() and spec.build().X.shape[0] >= 2


class _LinearWithoutRules(Linear):
    """A layer someone added without second-order rules (the protocol's default)."""

    @property
    def has_second_order(self) -> bool:
        return False


def test_an_order_2_failure_fails_the_report_and_no_rule_is_never_a_pass() -> None:
    from refbp.apps.report import build_json, render_markdown
    from refbp.apps.second_order_bugs import SECOND_ORDER_BUGS
    from refbp.apps.sweep import CaseOutcome, sweep_specs
    from refbp.verify.sweep import order2_outcome

    label, spec = sweep_specs(0, seed=0)[0]
    case = spec.build()
    wrong = SECOND_ORDER_BUGS[0].rewire(case.net)  # the f'' term dropped, in every layer
    failed = refbp.check(case.net, case.X, case.y)
    failed.meta["order2"] = order2_outcome(wrong, case.X, case.y)
    assert failed.meta["order2"].verdict == "failed" and "Hv[W1] mismatch" in failed.meta["order2"].note
    W = torch.randn(2, 2, dtype=torch.float64)
    norule = refbp.check(case.net, case.X, case.y)
    norule.meta["order2"] = order2_outcome(Network([_LinearWithoutRules(W), Linear(W[:1])], "mse"), case.X, case.y)
    assert norule.meta["order2"].verdict == "no rule" and norule.meta["order2"].note.startswith("layer 1 (Linear")
    outcomes = [CaseOutcome(1, label, spec, failed), CaseOutcome(2, label, spec, norule)]
    settings_ = {"examples": 1, "seed": 0, "devices": ["cpu"], "dtypes": ["float64"], "fd_mode": "auto"}
    doc = build_json(outcomes, settings_, 1.0)
    o = doc["summary"]["order2"]
    assert (o["checked"], o["passed"], o["failed"], o["no_rule"]) == (1, 0, 1, 1)
    assert o["no_rule_for"] == {"Linear": 1}
    text = render_markdown(doc, "", [])
    assert "### case 1 (seed network 2-3-1, sigmoid, half_sse), order 2" in text and "H v failed: Hv[W1]" in text


# ---- every network kind, through refbp.check(order=2) -----------------------------------------------
class _SkipModel(torch.nn.Module):
    """A user's module, traced by torch.fx into a GraphNetwork: a skip connection around relu."""

    def __init__(self) -> None:
        super().__init__()
        self.inner, self.head = torch.nn.Linear(3, 3), torch.nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x + torch.nn.functional.relu(self.inner(x)))


def _network_of_kind(kind: str) -> tuple[Network, torch.Tensor, torch.Tensor]:
    from refbp.nn.dropout import Dropout
    from refbp.nn.residual import Residual

    torch.manual_seed(11)
    g = torch.Generator().manual_seed(11)
    if kind == "mlp":
        net: Network = MLP.random([3, 4, 2], activations=["relu", "identity"], loss="mse", seed=2)
        return net, _randn(g, 5, 3), _randn(g, 5, 2)
    if kind == "stack":
        layers = [Embedding(_randn(g, 6, 2)), Flatten(), Residual(Linear(_randn(g, 4, 4)), Elementwise("gelu")),
                  Dropout(0.25, seed=1), Linear(_randn(g, 3, 4), _randn(g, 3))]  # fmt: skip
        return Network(layers, "cross_entropy"), torch.tensor([[1, 2], [3, 3], [0, 5]]), torch.tensor([0, 2, 1])
    if kind == "graph":
        return refbp.from_torch(_SkipModel().double(), loss="mse"), _randn(g, 4, 3), _randn(g, 4, 2)
    if kind == "batchnorm":  # training mode: the batch statistics depend on every row
        from refbp.nn.batchnorm import BatchNorm1d

        layers = [Linear(_randn(g, 4, 3), _randn(g, 4)), BatchNorm1d(C=4), Elementwise("relu"), Linear(_randn(g, 2, 4))]
        return Network(layers, "cross_entropy"), _randn(g, 6, 3), torch.tensor([0, 1, 1, 0, 1, 0])
    if kind == "gpt":  # tied embedding, attention, GELU, dropout in training mode
        from refbp.models.gpt_cases import GPTSpec

        case = GPTSpec(vocab_size=6, block_size=4, n_layer=2, n_head=2, n_embd=4, dropout=0.1, batch=2, length=4,
                       seed=3).build()  # fmt: skip
        return case.net, case.X, case.y
    module = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 2), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                                 torch.nn.Flatten(), torch.nn.Linear(8, 3))  # fmt: skip
    return refbp.from_torch(module.double(), loss="cross_entropy"), _randn(g, 2, 1, 5, 5), torch.tensor([0, 2])


@pytest.mark.parametrize("kind", ["mlp", "stack", "batchnorm", "graph", "cnn", "gpt"])
def test_check_order_2_works_for_every_network_kind(kind: str) -> None:
    """relu, max-pool and dropout in training mode included: their pieces and masks are the oracle's."""
    net, X, y = _network_of_kind(kind)
    result = refbp.check(net, X, y, order=2, forward=True, seed=1)
    assert result.passed, result.failure_message()
    expected = {f"Hv[{name}]" for name in net.parameters()} | ({"Hv[X]"} if X.is_floating_point() else set())
    names = {row.name for row in result.rows}
    assert expected <= names and "R{J}" in names
    assert {"forward-over-reverse", "reverse-over-reverse", "fd-gradient"} <= {row.reference for row in result.rows}


ORDER2_STACK_KINDS = STACK_KINDS
"""Every stack kind: each layer has its second-order rules (issue 21)."""


@settings(max_examples=6)
@given(case=stacks(kinds=ORDER2_STACK_KINDS, losses=TWICE_DIFFERENTIABLE_BY_TORCH, dtypes=("float64",), max_depth=3,
                   max_width=4, max_batch=4))  # fmt: skip
def test_random_stacks_with_relu_and_train_mode_dropout_agree_with_every_reference(case: Case) -> None:
    for product in ("hessian", "gauss_newton"):
        result = check_second_order(case.net, case.X, case.y, product=product, forward=product == "hessian", seed=4)
        assert result.passed, f"{product} on {case.spec.to_json()}: {result.failure_message()}"


@pytest.mark.parametrize("product", ["hvp", "gvp"])
def test_without_intermediates_the_product_is_the_same_and_nothing_else_is_kept(product: str) -> None:
    net, X, y = _network_of_kind("stack")
    v = random_direction(net, X, 3)
    fn = getattr(second_order, product)
    full = fn(net, X, y, v)
    lean = fn(net, X, y, v, noise=full.tangents.noise, keep_intermediates=False)  # the same dropout masks
    assert full.R_delta and not lean.R_delta
    for name, t in full.Hv.items():
        torch.testing.assert_close(lean.Hv[name], t, rtol=0.0, atol=0.0)
