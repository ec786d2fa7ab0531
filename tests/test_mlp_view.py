"""The MLP is a view of the Network, not a second path (issue 17), and the nn floor's input
errors (issue 16): a cache that is not one, sizes refused before allocating, deep nesting."""

from __future__ import annotations

import inspect

import pytest
import torch

import refbp
from refbp.nn.attention import CausalSelfAttention
from refbp.nn.dense import Dense
from refbp.nn.layers import Linear, Residual
from refbp.nn.mlp import MAX_PARAMETERS, MLP, ForwardCache, Gradients
from refbp.nn.network import Cache, Network, NetworkGradients
from refbp.nn.stack import MAX_DEPTH

F64 = torch.float64


def _mlp(layout: str = "torch") -> tuple[MLP, torch.Tensor, torch.Tensor]:
    net = MLP.random([3, 4, 2], activations=["tanh", "identity"], loss="mse", seed=1, layout=layout)
    X = torch.randn(5, 3, dtype=F64, generator=torch.Generator().manual_seed(2))
    y = torch.randn(5, 2, dtype=F64, generator=torch.Generator().manual_seed(3))
    return net, X, y


# ---- issue 17: one path ---------------------------------------------------------------------
def test_mlp_runs_the_networks_own_forward_backward_and_loss_not_overrides() -> None:
    for name in ("forward", "backward", "backward_from", "loss", "to", "check_input", "check_targets"):
        assert getattr(MLP, name) is getattr(Network, name), f"MLP overrides Network.{name}"
    assert "type: ignore[override]" not in inspect.getsource(inspect.getmodule(MLP))  # type: ignore[arg-type]


def test_unbound_network_calls_equal_the_mlps_own_and_a_plain_network_of_dense_layers() -> None:
    net, X, y = _mlp()
    plain = Network(
        [Dense(W.clone(), b.clone(), f) for W, b, f in zip(net.weights, net.biases, net.activations, strict=True)],
        "mse",
    )
    mine = net.backward(net.forward(X), y)
    unbound = Network.backward(net, Network.forward(net, X), y)
    other = plain.backward(plain.forward(X), y)
    assert isinstance(mine, NetworkGradients) and isinstance(mine, Gradients)
    assert list(mine.as_dict()) == list(other.as_dict()) == ["W1", "b1", "z1", "a1", "W2", "b2", "z2", "a2", "X"]
    for name, value in other.as_dict().items():
        torch.testing.assert_close(mine[name], value, rtol=0, atol=0)
        torch.testing.assert_close(unbound[name], value, rtol=0, atol=0)
    torch.testing.assert_close(mine.dJ_dW[2], other["W2"], rtol=0, atol=0)  # the seed's list view of the same keys
    torch.testing.assert_close(mine.dJ_da[0], other["X"], rtol=0, atol=0)


def test_the_seed_view_is_on_the_results_of_the_network_path() -> None:
    net, X, y = _mlp()
    cache = net.forward(X, keep_z=False)
    assert isinstance(cache, ForwardCache) and isinstance(cache, Cache)
    assert cache.z[1] is None  # tanh's derivative reads a(1): z(1) is not kept in a training step
    full = net.forward(X)
    torch.testing.assert_close(full.z[1], X @ net.W(1).T + net.b(1))
    grads = net.backward(full, y)
    assert grads.W(1).shape == net.W(1).shape and grads.L == 2


def test_keep_intermediates_is_the_one_name_and_the_old_spellings_still_work() -> None:
    net, X, y = _mlp()
    lean = net.forward(X, keep_intermediates=False)
    old = net.forward(X, keep_z=False)
    assert [z is None for z in lean.z] == [z is None for z in old.z]
    assert set(net.backward(lean, y, keep_intermediates=False).as_dict()) == {"W1", "b1", "W2", "b2", "X"}
    assert set(net.backward(old, y, intermediates=False).as_dict()) == {"W1", "b1", "W2", "b2", "X"}
    with pytest.raises(TypeError, match=r"keep_z=True is the older spelling of keep_intermediates=False"):
        net.forward(X, keep_intermediates=False, keep_z=True)
    with pytest.raises(TypeError, match=r"keep_intermediates='no' must be True or False"):
        net.forward(X, keep_intermediates="no")  # type: ignore[arg-type]


@pytest.mark.parametrize("layout", ["in_out", "columns"])
def test_a_layout_reads_and_hands_back_the_users_arrays_through_the_network_path(layout: str) -> None:
    net, X, y = _mlp()
    shown, _, _ = _mlp(layout)
    user_X, user_y = (X.T, y.T) if layout == "columns" else (X, y)
    grads = shown.backward(shown.forward(user_X), user_y)
    reference = net.backward(net.forward(X), y).as_dict()
    for name, value in grads.as_dict().items():
        torch.testing.assert_close(value, shown.layout.to_user(name, reference[name]), rtol=0, atol=0)
    assert grads.as_dict(layout="torch").keys() == reference.keys()
    torch.testing.assert_close(grads.as_dict(layout="torch")["W1"], reference["W1"], rtol=0, atol=0)


def test_network_to_keeps_the_mlp_and_its_layout() -> None:
    net, X, _ = _mlp("columns")
    copy = net.to(dtype=torch.float32)
    assert isinstance(copy, MLP) and copy.layout == net.layout and copy.dtype == torch.float32
    torch.testing.assert_close(copy.forward(X.T.float()).y_hat, net.forward(X.T).y_hat.float())


def test_decayed_keys_are_one_list_for_the_loss_and_the_oracle() -> None:
    W = torch.randn(3, 3, dtype=F64)
    net = Network([Linear(W), Linear(torch.randn(3, 3, dtype=F64)), Linear(W)], "mse", weight_decay=0.5)
    assert [str(key) for key in net.decayed_keys()] == ["W1", "W2"]  # the tied W3 once, under W1
    X, y = torch.randn(4, 3, dtype=F64), torch.randn(4, 3, dtype=F64)
    from refbp.nn.layer import Params

    params = Params(net.oracle_params(), net.ties)
    torch.testing.assert_close(net.loss(net.forward(X), y), net.torch_J(X, y, params, {}))


# ---- issue 16: the nn floor's input errors ----------------------------------------------------
@pytest.mark.parametrize("cache", ["a cache", None, [torch.zeros(2, 3)]])
def test_loss_with_something_that_is_not_a_cache_is_a_type_error_naming_cache(cache: object) -> None:
    net, _, y = _mlp()
    with pytest.raises(TypeError, match=r"^cache must be what net.forward\(X\) returned"):
        net.loss(cache, y)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^cache must be"):
        net.loss(cache=cache, y=y)  # type: ignore[arg-type]


def test_a_billion_parameter_mlp_is_refused_before_anything_is_drawn() -> None:
    with pytest.raises(ValueError, match=r"dims 3-200000000-1 \(1000000001 parameters\) would need 19.4 GiB") as e:
        MLP.random([3, 2 * 10**8, 1], activations=["tanh", "identity"], loss="mse")
    assert f"MAX_PARAMETERS = {MAX_PARAMETERS}" in str(e.value)


def test_an_attention_stack_forward_is_refused_before_its_T_by_T_scores_are_allocated() -> None:
    d, T = 4, 400_000  # one sequence: the scores alone are T^2 = 1.6e11 entries, 1.2 TB in float64
    attn = CausalSelfAttention(torch.randn(3 * d, d, dtype=F64), torch.randn(d, d, dtype=F64), n_head=1)
    net = Network([attn], "mse")
    with pytest.raises(ValueError, match=r"forward and backward pass on X of shape \(1, 400000, 4\) .* needs"):
        net.forward(torch.zeros(1, T, d, dtype=F64))


def test_composite_layers_nested_past_max_depth_are_refused_at_construction() -> None:
    layer: Residual = Residual(Linear(torch.eye(2, dtype=F64)))
    with pytest.raises(
        ValueError, match=rf"nests composite layers {MAX_DEPTH + 1} levels deep.*MAX_DEPTH = {MAX_DEPTH}"
    ):
        for _ in range(300):
            layer = Residual(layer)
    assert max(len(path) for path, _ in refbp.nn.stack.walk_layers([layer])) == MAX_DEPTH


def test_nesting_at_max_depth_runs_forward_backward_copies_and_matches_torch() -> None:
    layer: Residual = Residual(Linear(0.01 * torch.randn(2, 2, dtype=F64)), Linear(0.01 * torch.randn(2, 2, dtype=F64)))
    while max(len(path) for path, _ in refbp.nn.stack.walk_layers([layer])) < MAX_DEPTH:
        layer = Residual(layer)
    net = Network([layer], "mse").to(dtype=F64)
    X, y = torch.randn(3, 2, dtype=F64), torch.randn(3, 2, dtype=F64)
    grads = net.backward(net.forward(X), y)
    module = net.to_torch()
    X_leaf = X.clone().requires_grad_(True)
    torch.nn.functional.mse_loss(module(X_leaf), y).backward()
    torch.testing.assert_close(grads["X"], X_leaf.grad)
    torch_grads = dict(module.named_parameters())
    for name, g in grads.torch_named().items():
        if name != "input":
            torch.testing.assert_close(g, torch_grads[name].grad)
