"""Finite differences: the batched, layer-structured evaluation equals the plain definition,
directions are signed and seeded, and perturbations that cross a kink are detected."""

from __future__ import annotations

import pytest
import torch

import refbp
from refbp.nn.layers import Elementwise, Linear
from refbp.nn.network import Network
from refbp.verify.cases import CaseSpec
from refbp.verify.fd_mlp import has_row_structure, mlp_finite_differences
from refbp.verify.fd_network import oracle_finite_differences
from refbp.verify.finite_diff import random_directions
from refbp.verify.reference import autograd_gradients, oracle_point, torch_loss
from refbp.verify.tolerances import FD_STEP


def _plain_fd(net: refbp.MLP, X: torch.Tensor, y: torch.Tensor, name: str) -> torch.Tensor:
    """The textbook loop for parameters and X: rebuild the network per entry, run it whole."""
    kind, layer = name[0], (0 if name == "X" else int(name[1:]))
    out = torch.empty_like(X if name == "X" else (net.weights if kind == "W" else net.biases)[layer - 1])
    for index in torch.cartesian_prod(*[torch.arange(s) for s in out.shape]).reshape(-1, out.dim()).tolist():
        values = []
        for sign in (1.0, -1.0):
            Ws = [W.clone() for W in net.weights]
            bs = [b.clone() for b in net.biases]
            X2 = X.clone()
            target = X2 if name == "X" else (Ws if kind == "W" else bs)[layer - 1]
            h = FD_STEP * max(1.0, abs(float(target[tuple(index)])))
            target[tuple(index)] += sign * h
            other = refbp.MLP(Ws, bs, net.activations, net.loss_name, net.weight_decay)
            values.append(float(torch_loss(other, X2, y)))
        out[tuple(index)] = (values[0] - values[1]) / (2 * h)
    return out


@pytest.mark.parametrize("loss", ["half_sse", "mse", "bce", "cross_entropy"])
def test_batched_structured_differences_equal_the_plain_loop(loss: str) -> None:
    last = {"bce": "sigmoid", "cross_entropy": "identity"}.get(loss, "tanh")
    case = CaseSpec(dims=(3, 4, 3), activations=("gelu", last), loss=loss, seed=5, batch=3, weight_decay=0.1).build()
    names = ["W1", "b1", "W2", "b2", "X"]
    fd = mlp_finite_differences(case.net, case.X, case.y, names)
    for name in names:
        torch.testing.assert_close(fd[name].values, _plain_fd(case.net, case.X, case.y, name), rtol=1e-7, atol=1e-9)


def test_directional_values_are_directional_derivatives_of_J() -> None:
    case = CaseSpec(dims=(4, 6, 2), activations=("silu", "identity"), loss="mse", seed=2, batch=5).build()
    _, reference = autograd_gradients(case.net, case.X, case.y)
    fd = mlp_finite_differences(case.net, case.X, case.y, ["W1", "z1", "a1", "X"], mode="directional", directions=5)
    for name, result in fd.items():
        assert result.directions is not None and result.directions.shape == (5, *reference[name].shape)
        expected = torch.tensordot(result.directions, reference[name], dims=reference[name].dim())
        torch.testing.assert_close(result.values, expected, rtol=1e-7, atol=1e-10)


def test_random_directions_are_signed_seeded_and_scaled() -> None:
    V = random_directions((3, 4), 6, seed=11)
    assert V.shape == (6, 3, 4)
    assert torch.equal(V, random_directions((3, 4), 6, seed=11)) and not torch.equal(
        V, random_directions((3, 4), 6, seed=12)
    )
    assert torch.allclose(V.reshape(6, -1).abs().amax(dim=1), torch.ones(6, dtype=torch.float64))
    assert all((v > 0).any() and (v < 0).any() for v in V)


def _relu_net_on_a_kink() -> tuple[refbp.MLP, torch.Tensor, torch.Tensor]:
    """z(1)[0, 0] = 1e-9: any step in W1[0, :], b1[0] or X[0, :] moves it across 0."""
    W1 = torch.tensor([[1.0, -1.0], [0.5, 0.25]], dtype=torch.float64)
    b1 = torch.tensor([1e-9, 0.1], dtype=torch.float64)
    W2 = torch.tensor([[1.5, -0.7]], dtype=torch.float64)
    b2 = torch.tensor([0.2], dtype=torch.float64)
    net = refbp.MLP.from_params(weights=[W1, W2], biases=[b1, b2], activations=["relu", "identity"], loss="half_sse")
    X = torch.tensor([[0.3, 0.3], [1.0, -1.0]], dtype=torch.float64)
    return net, X, torch.tensor([[0.0], [1.0]], dtype=torch.float64)


def test_perturbations_that_cross_a_kink_are_excluded_and_counted() -> None:
    net, X, y = _relu_net_on_a_kink()
    fd = mlp_finite_differences(net, X, y, ["W1", "b1", "z1", "X", "W2"])
    assert fd["b1"].excluded.tolist() == [True, False]
    assert fd["W1"].excluded[0].all() and not fd["W1"].excluded[1].any()
    assert fd["z1"].excluded.tolist() == [[True, False], [False, False]]
    assert fd["X"].excluded[0].all() and not fd["X"].excluded[1].any()
    assert not fd["W2"].excluded.any()  # layer 2 is above the kink: z(1) does not move
    # the excluded quotient mixes two slopes: wrong by half of row 0's term, far above FD's ~1e-9 error
    _, reference = autograd_gradients(net, X, y)
    assert abs(float(fd["b1"].values[0] - reference["b1"][0])) > 1e-3
    result = refbp.check(net, X, y, fd_mode="full")
    assert result.passed and result.n_excluded == 2 + 1 + 1 + 2  # W1 row 0, b1[0], z1[0, 0], X row 0


def test_directional_mode_excludes_directions_that_cross_a_kink() -> None:
    net, X, y = _relu_net_on_a_kink()
    fd = mlp_finite_differences(net, X, y, ["b1", "W2"], mode="directional", directions=4)
    assert fd["b1"].excluded.all() and not fd["W2"].excluded.any()


# ---- one core under two paths, dispatched by the layer protocol --------------------------------
def test_structured_and_general_paths_give_the_same_differences() -> None:
    case = CaseSpec(
        dims=(3, 4, 2), activations=("tanh", "identity"), loss="mse", seed=9, batch=4, weight_decay=0.1
    ).build()
    net, X, y = case.net, case.X, case.y
    assert has_row_structure(net)
    names = ["W1", "b1", "z1", "a1", "W2", "X"]
    X64, y64, noise64 = oracle_point(net, X, y, {}, dtype=torch.float64, device="cpu")
    for mode in ("full", "directional"):
        sigma = dict.fromkeys(names, 0.0)
        structured = mlp_finite_differences(net, X, y, names, mode=mode, directions=3, seed=1, sigma=sigma, fixed={})
        general = oracle_finite_differences(
            net, X64, y64, noise64, names, mode=mode, directions=3, seed=1, sigma=sigma, fixed={}
        )
        for name in names:
            torch.testing.assert_close(structured[name].values, general[name].values, rtol=1e-7, atol=1e-9)


def test_only_networks_whose_every_layer_has_row_structure_take_the_structured_path() -> None:
    net = refbp.MLP.random([3, 4, 2], activations=["tanh", "identity"], loss="mse", seed=0, dtype=torch.float64)
    assert all(layer.row_map() is not None for layer in net.layers) and has_row_structure(net)
    W = torch.ones(2, 3, dtype=torch.float64)
    assert not has_row_structure(Network([Linear(W, None), Elementwise("tanh")], "mse"))


def test_tied_mlp_weights_are_moved_together_not_by_the_structured_path() -> None:
    """W(2) is W(1): the structured path would move one use only (a false alarm before)."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(3, 3, dtype=torch.float64, generator=g)
    b1, b2 = torch.randn(3, dtype=torch.float64, generator=g), torch.randn(3, dtype=torch.float64, generator=g)
    net = refbp.MLP.from_params(weights=[W, W], biases=[b1, b2], activations=["tanh", "identity"], loss="mse")
    X, y = torch.randn(4, 3, dtype=torch.float64, generator=g), torch.randn(4, 3, dtype=torch.float64, generator=g)
    assert net.ties and not has_row_structure(net)
    result = refbp.check(net, X, y, references=("fd",))
    assert result.passed, result.failure_message()
    grads = net.backward(net.forward(X), y).as_dict()
    assert not refbp.check(net, X, y, grads={**grads, "W1": grads["W1"] * 1.01}, references=("fd",)).passed
