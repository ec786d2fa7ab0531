"""The order-2 check in float32: rounding alone gets an allowance (refbp.verify.
second_order_conditioning), a real error still shows, and where torch has no forward mode
(multi_margin) the tangents are checked against differences instead."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import refbp
from refbp.nn import second_order
from refbp.nn.batchnorm import BatchNorm1d
from refbp.nn.curvature import loss_hessian_product
from refbp.nn.keys import Key
from refbp.nn.layers import Elementwise, Linear
from refbp.nn.losses import get_loss
from refbp.nn.mlp import MLP
from refbp.nn.network import Network
from refbp.verify import second_order as verify_second_order
from refbp.verify.second_order import check_second_order, random_direction
from refbp.verify.second_order_conditioning import Jitter
from refbp.verify.specs import spec_from_dict
from refbp.verify.tolerances import tolerance_for


def _bias_before_batchnorm(dtype: torch.dtype) -> tuple[Network, torch.Tensor, torch.Tensor]:
    """A bias feeding a training-mode BatchNorm: J ignores it, so H v[b1] = 0 exactly, a sum of
    O(1) terms that cancel; float32 keeps a rounding of their size."""
    g = torch.Generator().manual_seed(3)
    W1, b1, W2 = (torch.randn(*shape, generator=g, dtype=torch.float64) for shape in [(6, 4), (6,), (3, 6)])
    layers = [Linear(W1, b1), BatchNorm1d(C=6), Elementwise("tanh"), Linear(W2)]
    net = Network(layers, "cross_entropy").to(dtype=dtype)
    X = torch.randn(8, 4, generator=g, dtype=torch.float64).to(dtype)
    return net, X, torch.randint(0, 3, (8,), generator=g)


def test_the_cross_entropy_hessian_keeps_a_confident_rows_curvature_in_float32() -> None:
    """s o (r - s . r) with s_0 -> 1: r_0 - s . r cancels to 0 in float32 unless r is shifted."""
    loss = get_loss("cross_entropy")
    z = torch.tensor([[20.0, 0.0, -3.0]], dtype=torch.float64)
    r = torch.tensor([[1.0, 0.5, -2.0]], dtype=torch.float64)
    y = torch.tensor([0])
    exact = loss_hessian_product(loss, z, y, r)
    low = loss_hessian_product(loss, z.float(), y, r.float()).double()
    assert exact[0, 0] != 0.0
    torch.testing.assert_close(low, exact, rtol=1e-5, atol=0.0)


CONFIDENT: dict[str, Any] = {"activations": ["leaky_relu", "identity"], "batch": 1, "device": "cpu", "dims": [9, 1, 2],
             "dtype": "float32", "loss": "cross_entropy", "regime": "plain", "seed": 745366620,
             "weight_decay": 0.0, "weight_scale": 10.0}  # fmt: skip
"""A case the false-positive measurement flagged before the shift of r: one hidden unit, weights
x10, a softmax row sure of its class."""


def test_a_confident_cross_entropy_network_passes_in_float32() -> None:
    case = spec_from_dict(CONFIDENT).build()
    for product in ("hessian", "gauss_newton"):
        result = check_second_order(case.net, case.X, case.y, product=product, seed=CONFIDENT["seed"])
        assert result.passed, result.failure_message()


def test_a_bias_before_batchnorm_passes_in_float32_and_a_wrong_product_is_still_caught() -> None:
    net, X, y = _bias_before_batchnorm(torch.float32)
    v = random_direction(net, X, 0)
    manual = second_order.hvp(net, X, y, v).Hv
    assert manual["b1"].abs().max() > 0.0  # float32 leaves a rounding where float64 gives ~0
    result = check_second_order(net, X, y, v)
    assert result.passed, result.failure_message()
    widened = [row for row in result.rows if row.name == "Hv[b1]"]
    assert widened

    def wrong(v: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        Hv = dict(second_order.hvp(net, X, y, v).Hv)
        Hv["W1"] = Hv["W1"] * 1.002  # 0.2 %: far above float32's rounding of this product
        return Hv

    caught = check_second_order(net, X, y, v, hvp_fn=wrong)
    assert {t.name for t in caught.tensors if t.verdict == "mismatch"} == {"Hv[W1]"}


BIAS_BEFORE_BATCHNORM2D: dict[str, Any] = {
    "batch": 3, "device": "cpu", "dtype": "float32", "input": {"shape": [3, 1, 4]},
    "layers": [["conv2d", 1, {"bias": True, "dilation": [2, 2], "groups": 1, "kernel": [1, 1], "padding": [1, 1],
                              "stride": [2, 1]}],
               ["maxpool", {"dilation": [1, 1], "kernel": [1, 2], "padding": [0, 0], "stride": [2, 1]}],
               ["batchnorm2d", {"affine": False}], ["sigmoid"], ["flatten"], ["linear", 3]],
    "loss": "multi_margin", "seed": 403876825, "training": True, "weight_decay": 0.0,
}  # fmt: skip
"""A case the false-positive measurement flagged before the order-2 allowance: a convolution's
bias before a training-mode BatchNorm2d (H v[b1] = 0, float32 leaves 7.6e-6), and a loss torch
cannot differentiate twice, so that refbp's own product measures the rounding."""


def test_without_the_allowance_float32_rounding_of_a_cancelling_sum_would_be_a_mismatch() -> None:
    case = spec_from_dict(BIAS_BEFORE_BATCHNORM2D).build()
    seed = BIAS_BEFORE_BATCHNORM2D["seed"]
    result = check_second_order(case.net, case.X, case.y, seed=seed)
    assert result.passed, result.failure_message()
    bare = check_second_order(case.net, case.X, case.y, seed=seed, tolerance=tolerance_for(torch.float32))
    assert "Hv[b1]" in {t.name for t in bare.tensors if t.verdict == "mismatch"}


def _multi_margin_net() -> tuple[Network, torch.Tensor, torch.Tensor]:
    net = MLP.random([4, 5, 3], activations=["tanh", "identity"], loss="multi_margin", seed=5, dtype=torch.float64)
    g = torch.Generator().manual_seed(5)
    return net, torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (6,), generator=g)


def test_tangents_through_a_loss_without_forward_mode_are_checked_against_differences() -> None:
    net, X, y = _multi_margin_net()
    result = refbp.check(net, X, y, order=2, forward=True, seed=1)
    assert result.passed, result.failure_message()
    tangent_rows = [row for row in result.rows if row.name.startswith("R{") and not row.name.startswith("R{dJ")]
    assert {row.name for row in tangent_rows} >= {"R{J}", "R{a1}", "R{a2}"}
    assert {row.reference for row in tangent_rows} == {"fd-forward"}
    assert all(row.verdict == "ok" for row in tangent_rows)


def test_a_wrong_tangent_through_multi_margin_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    net, X, y = _multi_margin_net()

    def scaled(*args: object, **kwargs: object) -> second_order.Tangents:
        tangents = second_order.jvp(*args, **kwargs)  # type: ignore[arg-type]
        tangents.RJ = tangents.RJ * 1.01
        return tangents

    monkeypatch.setattr(verify_second_order, "jvp", scaled)
    result = check_second_order(net, X, y, forward=True, seed=1)
    assert {t.name for t in result.tensors if t.verdict == "mismatch"} == {"R{J}"}


def test_jitter_draws_one_factor_per_intermediate() -> None:
    """The Gauss-Newton route runs the oracle twice (jvp, then vjp): both must see one function."""
    tap = Jitter(1e-3, torch.Generator().manual_seed(0))
    t = torch.ones(4, dtype=torch.float64)
    first, again = tap.intermediate(Key.parse("z1"), t), tap.intermediate(Key.parse("z1"), t)
    assert torch.equal(first, again) and not torch.equal(first, t)
    assert (first - t).abs().max() <= 1e-3
