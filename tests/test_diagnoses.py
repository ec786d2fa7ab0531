"""What failure messages say (issue 10, item 4-5, 3, 7): each diagnosis appears where its pattern
holds and nowhere else; the user's loss is checked first; check_function leaves a stateful
model where it started; directional rows show the tensor's shape and the number of directions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import refbp

F64 = torch.float64


def _case(activations: tuple[str, str] = ("tanh", "identity"), loss: str = "mse", N: int = 5):  # type: ignore[no-untyped-def]
    net = refbp.MLP.random([3, 4, 2], activations=list(activations), loss=loss, seed=1)
    g = torch.Generator().manual_seed(2)
    X, y = torch.randn(N, 3, dtype=F64, generator=g), torch.randn(N, 2, dtype=F64, generator=g)
    return net, X, y, net.backward(net.forward(X), y).as_dict()


@pytest.mark.parametrize(
    ("factor", "expected"),
    [
        (-1.0, "every entry is -1x the reference (sign flipped?)"),
        (5.0, "every entry is 5x the reference (a missing 1/N? N = 5)"),
        (0.5, "every entry is 0.5x the reference (an extra 1/d_L? d_L = 2; or an extra 1/2"),
        (10.0, "every entry is 10x the reference (a missing 1/N d_L? N d_L = 10)"),
        (0.0, "every entry is 0: the gradient was never written"),
    ],
)
def test_a_constant_factor_is_named_with_what_it_likely_is(factor: float, expected: str) -> None:
    net, X, y, grads = _case()
    result = refbp.check(net, X, y, grads={**grads, "W1": grads["W1"] * factor})
    assert expected in result.failure_message()


def test_no_factor_is_claimed_when_the_entries_are_not_proportional() -> None:
    net, X, y, grads = _case()
    wrong = grads["W1"].clone()
    wrong[0, 0] += 1.0  # one entry off: no single ratio explains it
    message = refbp.check(net, X, y, grads={**grads, "W1": wrong}).failure_message()
    assert "every entry" not in message and "sign flipped" not in message


def test_a_transposed_gradient_says_so_and_a_misshapen_one_does_not() -> None:
    net, X, y, grads = _case()
    message = refbp.check(net, X, y, grads={"W2": grads["W2"].T}).failure_message()
    assert "shape (4, 2) but the reference has shape (2, 4) (transposed?)" in message
    message = refbp.check(net, X, y, grads={"W2": grads["W2"].reshape(-1)}).failure_message()
    assert "shape (8,) but the reference has shape (2, 4)" in message and "transposed" not in message


def test_a_relu_gradient_that_takes_one_at_the_kink_is_told_so() -> None:
    W1 = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=F64)
    net = refbp.MLP.from_params(
        weights=[W1, torch.tensor([[1.0, -1.0]], dtype=F64)],
        biases=[torch.zeros(2, dtype=F64), torch.zeros(1, dtype=F64)], activations=["relu", "identity"], loss="mse",
    )  # fmt: skip
    X, y = torch.tensor([[0.0, 1.0, 2.0], [1.0, -1.0, 0.5]], dtype=F64), torch.zeros(2, 1, dtype=F64)
    cache = net.forward(X)
    grads = net.backward(cache, y).as_dict()
    z = cache.z[1]
    assert z is not None and int((z == 0).sum()) == 1  # X[0, 0] = 0 puts z(1)[0, 0] on the kink
    takes_one = grads["a1"] * (z >= 0).to(F64)  # relu'(0) = 1
    message = refbp.check(net, X, y, grads={"z1": takes_one}, references=("autograd",)).failure_message()
    assert "the differing entries sit exactly on relu kinks (z == 0)" in message
    assert "layer 1 has 1 pre-activations exactly on its kink" in message
    elsewhere = grads["z1"].clone()
    elsewhere[1, 0] += 1.0  # off the kink
    message = refbp.check(net, X, y, grads={"z1": elsewhere}, references=("autograd",)).failure_message()
    assert "sit exactly on relu kinks" not in message


@pytest.mark.parametrize(
    ("scale", "expected"),
    [
        (10.0, "a sum where refbp (as torch) takes the mean over N d_L = 10?"),
        (2.0, "the other 1/2 convention"),
        (None, "a different forward pass or loss"),
    ],
)
def test_the_user_s_loss_is_checked_first_and_its_convention_named(scale: float | None, expected: str) -> None:
    net, X, y, grads = _case()
    J = float(net.loss(net.forward(X), y))
    theirs = J + 0.3 if scale is None else J * scale
    result = refbp.check(net, X, y, grads=grads, J=theirs)
    assert not result.passed and result.rows[0].name == "J"
    lines = result.failure_message().splitlines()
    assert lines[1].startswith("  J vs torch: MISMATCH") and expected in lines[1]
    assert refbp.check(net, X, y, grads=grads, J=J).passed  # the right J passes


def test_check_function_leaves_a_stateful_model_at_the_point_it_checked() -> None:
    class Model:
        def __init__(self) -> None:
            self.params = {"w": np.array([1.0, -2.0, 0.5])}

        def loss_and_grads(self, params: dict[str, np.ndarray]) -> tuple[float, dict[str, np.ndarray]]:
            self.params = params  # the usual idiom: the model keeps what it was last called with
            w = self.params["w"]
            return float(np.sum(w**3)), {"w": 3 * w**2}

    model = Model()
    start = model.params["w"].copy()
    result = refbp.check_function(model.loss_and_grads, dict(model.params))
    assert result.passed
    np.testing.assert_array_equal(model.params["w"], start)  # not a perturbed copy


def test_check_function_refuses_a_non_scalar_loss_naming_its_shape() -> None:
    with pytest.raises(ValueError, match=r"fn must return a scalar loss; it returned ndarray of shape \(3,\)"):
        refbp.check_function(lambda p: (p["w"] ** 2, {"w": 2 * p["w"]}), {"w": np.ones(3)})


def test_check_function_keeps_the_user_s_order_of_keys_in_rows() -> None:
    params = {"w10": np.ones(2), "w2": np.ones(2), "fc1.weight": np.ones(2), "W1": np.ones(2)}
    result = refbp.check_function(
        lambda p: (float(sum(np.sum(v) for v in p.values())), {k: np.ones(2) for k in p}), params
    )
    assert result.passed and [row.name for row in result.rows] == list(params)


def test_a_directional_row_shows_the_tensor_s_shape_and_its_directions() -> None:
    net, X, y, grads = _case()
    result = refbp.check(net, X, y, grads={"W1": grads["W1"] * -1}, references=("fd",), fd_mode="directional")
    row = result.rows[0]
    assert row.shape == (4, 3) and row.directions == 8 and row.n_elements == 8
    assert "dJ/dW1 (4x3, 8 directions) vs fd-directional: MISMATCH" in result.failure_message()
    assert "fd-directional (8 dirs)" in result.table()
