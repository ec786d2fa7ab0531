"""NumPy and the three layouts (issue 10): an MLP built from a user's arrays reads and hands back
every array in the user's arrangement, and check reports in it; nothing else changes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import refbp
from refbp.examples.textbook import check_textbook

F64 = torch.float64


def _torch_net() -> tuple[refbp.MLP, torch.Tensor, torch.Tensor]:
    net = refbp.MLP.random([3, 4, 2], activations=["tanh", "sigmoid"], loss="half_sse", seed=2)
    g = torch.Generator().manual_seed(5)
    return net, torch.randn(5, 3, dtype=F64, generator=g), torch.rand(5, 2, dtype=F64, generator=g)


def test_numpy_parameters_and_data_give_the_same_gradients_as_tensors() -> None:
    net, X, y = _torch_net()
    numpy_net = refbp.MLP.from_params(
        weights=[W.numpy() for W in net.weights], biases=[b.numpy() for b in net.biases],
        activations=net.activations, loss="half_sse",
    )  # fmt: skip
    expected = net.backward(net.forward(X), y).as_dict()
    actual = numpy_net.backward(numpy_net.forward(X.numpy()), y.numpy()).as_dict()
    assert list(actual) == list(expected)
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=0)
    assert refbp.check(numpy_net, X.numpy(), y.numpy()).passed


def test_a_numpy_dtype_that_differs_from_the_parameters_is_a_clear_error() -> None:
    net, X, _ = _torch_net()
    with pytest.raises(
        ValueError, match=r"X has shape \(5, 3\), dtype float32.*network's parameters have dtype float64"
    ):
        net.forward(X.numpy().astype(np.float32))
    with pytest.raises(TypeError, match=r"X must be a numeric array, got a NumPy array of dtype <U1"):
        net.forward(np.array([["a", "b", "c"]]))


@pytest.mark.parametrize("shape", [(4,), (4, 1), (1, 4)])
def test_biases_may_be_vectors_columns_or_rows_and_come_back_in_their_shape(shape: tuple[int, ...]) -> None:
    net, X, y = _torch_net()
    biases = [net.biases[0].reshape(shape), net.biases[1]]
    built = refbp.MLP.from_params(
        weights=list(net.weights), biases=biases, activations=net.activations, loss="half_sse"
    )
    grads = built.backward(built.forward(X), y).as_dict()
    assert tuple(grads["b1"].shape) == shape and tuple(built.biases[0].shape) == shape
    torch.testing.assert_close(grads["b1"].reshape(-1), net.backward(net.forward(X), y).dJ_db[1])


def test_in_out_layout_reads_x_at_W_and_hands_back_W_shaped_gradients() -> None:
    net, X, y = _torch_net()
    course = refbp.MLP.from_params(
        weights=[W.T.clone() for W in net.weights], biases=list(net.biases), activations=net.activations,
        loss="half_sse", layout="in_out",
    )  # fmt: skip
    # h = x @ W + b with W (d_in, d_out): the same function
    torch.testing.assert_close(course.forward(X).y_hat, net.forward(X).y_hat)
    grads = course.backward(course.forward(X), y).as_dict()
    expected = net.backward(net.forward(X), y).as_dict()
    assert grads["W1"].shape == (3, 4) and course.weights[0].shape == (3, 4)
    torch.testing.assert_close(grads["W1"], expected["W1"].T)
    torch.testing.assert_close(grads["X"], expected["X"])
    mine = {"W1": expected["W1"].T, "W2": expected["W2"].T}  # a user's own, in the user's layout
    assert refbp.check(course, X, y, grads=mine).passed
    wrong = refbp.check(course, X, y, grads={"W1": expected["W1"].T.contiguous() * 1.5})
    assert not wrong.passed and wrong.rows[0].shape == (3, 4)  # reported in the user's layout


def test_columns_layout_is_the_seed_s_notation_end_to_end() -> None:
    net, X, y = _torch_net()
    seed = refbp.MLP.from_params(
        weights=list(net.weights), biases=[b.reshape(-1, 1) for b in net.biases], activations=net.activations,
        loss="half_sse", layout="columns",
    )  # fmt: skip
    grads = seed.backward(seed.forward(X.T), y.T).as_dict()  # X (d_0, N), y (d_L, N)
    expected = net.backward(net.forward(X), y).as_dict()
    assert grads["z1"].shape == (4, 5) and grads["b1"].shape == (4, 1) and grads["X"].shape == (3, 5)
    torch.testing.assert_close(grads["z1"], expected["z1"].T)
    torch.testing.assert_close(grads["W2"], expected["W2"])
    assert refbp.check(seed, X.T, y.T).passed
    with pytest.raises(ValueError, match=r"X must have shape \(3, N\) = \(d_0, N\)"):
        seed.forward(X)
    with pytest.raises(ValueError, match=r"y must have shape \(2, 5\) = \(d_L, N\)"):
        seed.loss(seed.forward(X.T), y)


def test_as_dict_hands_back_any_layout_on_request() -> None:
    net, X, y = _torch_net()
    grads = net.backward(net.forward(X), y)
    columns = grads.as_dict(layout="columns")
    assert columns["b1"].shape == (4, 1) and columns["a1"].shape == (4, 5)
    assert grads.as_dict(layout="in_out")["W1"].shape == (3, 4)
    with pytest.raises(ValueError, match=r"layout='rows' is not a layout; expected one of"):
        grads.as_dict(layout="rows")


def test_layers_count_from_one_in_net_W_and_grads_W_as_in_the_equations() -> None:
    net, X, y = _torch_net()
    grads = net.backward(net.forward(X), y)
    assert net.W(1) is net.layers[0].W and torch.equal(grads.W(2), grads.dJ_dW[2])  # type: ignore[arg-type]
    assert torch.equal(grads.b(1), grads.dJ_db[1])  # type: ignore[arg-type]
    with pytest.raises(IndexError, match=r"layer 0 does not exist; this MLP has layers 1 \.\. 2"):
        net.W(0)


def test_the_textbook_example_passes_and_its_bugs_are_named() -> None:
    assert check_textbook("none").passed
    mean = check_textbook("batch_mean")
    assert not mean.passed and "every entry is 0.25x the reference (an extra 1/N? N = 4)" in mean.failure_message()
    assert not check_textbook("output_delta_without_derivative").passed
