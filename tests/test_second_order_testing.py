"""refbp.testing.assert_hvp_correct and refbp.strategies.directions: the order-2 check inside a
user's own property tests."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import refbp
from refbp.nn import second_order
from refbp.strategies import cases, directions
from refbp.testing import assert_hvp_correct
from refbp.verify.cases import Case


@settings(max_examples=8)
@given(case=cases(activations=("tanh", "sigmoid", "softplus", "identity"), losses=("mse", "cross_entropy"),
                  dtypes=("float64",), max_depth=2, max_width=4, max_batch=3), data=st.data())  # fmt: skip
def test_a_users_hvp_passes_along_every_drawn_direction(case: Case, data: st.DataObject) -> None:
    v = data.draw(directions(case.net, case.X))
    assert any(t.abs().max() > 0 for t in v.values())

    def mine(w: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return dict(second_order.hvp(case.net, case.X, case.y, w).Hv)

    result = assert_hvp_correct(case.net, case.X, case.y, v, hvp_fn=mine)
    assert {f"Hv[{name}]" for name in v} <= {row.name for row in result.rows}


def test_directions_cover_the_parameters_and_the_input_and_can_leave_some_out() -> None:
    net = refbp.MLP.random([3, 4, 2], activations=["tanh", "identity"], loss="mse", seed=0)
    X = torch.randn(5, 3, dtype=torch.float64)
    seen_zero: set[str] = set()

    @settings(max_examples=40, derandomize=True)
    @given(v=directions(net, X))
    def draw(v: dict[str, torch.Tensor]) -> None:
        assert set(v) == {*net.parameters(), "X"}
        assert any(t.abs().max() > 0 for t in v.values())
        seen_zero.update(name for name, t in v.items() if not t.any())

    draw()
    assert seen_zero  # some drawn directions leave a tensor out
    no_input = directions(net, X, input_too=False).example()
    assert "X" not in no_input


def test_assert_hvp_correct_raises_on_a_wrong_product_naming_the_tensor() -> None:
    net = refbp.MLP.random([3, 3, 2], activations=["sigmoid", "identity"], loss="half_sse", seed=4)
    X, y = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)

    def forgot_the_loss_curvature(v: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        Hv = dict(second_order.gvp(net, X, y, v).Hv)  # G v passed off as H v: the f'' terms missing
        return Hv

    with pytest.raises(refbp.GradientMismatchError, match=r"Hv\[W1\]"):
        assert_hvp_correct(net, X, y, hvp_fn=forgot_the_loss_curvature)
