"""The training step reuses what it built at the last step (its contexts, the memory estimate,
the order of the gradients' names): whatever changed between steps must still count.

Each test runs a few lean training steps (``keep_intermediates=False``, ``release_cache=True``)
of a small float64 MLP, changes one thing between them, and compares every gradient with
autograd's on the same function written in torch.nn.functional.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

import refbp
from refbp.nn.network import NetworkGradients

N, WIDTHS = 5, [3, 4, 2]


def _net(weight_decay: float = 0.0) -> refbp.MLP:
    return refbp.MLP.random(
        WIDTHS, activations=["tanh", "identity"], loss="half_sse", seed=3, weight_decay=weight_decay
    )


def _data(seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(N, WIDTHS[0], generator=g, dtype=torch.float64),
        torch.randn(N, WIDTHS[-1], generator=g, dtype=torch.float64),
    )


def _step(net: refbp.MLP, X: Tensor, y: Tensor) -> NetworkGradients:
    return net.backward(net.forward(X, keep_intermediates=False), y, keep_intermediates=False, release_cache=True)


def _autograd(net: refbp.MLP, X: Tensor, y: Tensor) -> dict[str, Tensor]:
    """Every gradient of J = 1/2 sum (y_hat - y)^2 + lambda/2 sum ||W||^2 by torch.autograd."""
    leaves = {name: t.detach().clone().requires_grad_(True) for name, t in net.parameters().items()}
    leaves["X"] = X.clone().requires_grad_(True)
    a = leaves["X"]
    for i in range(1, net.L + 1):
        z = F.linear(a, leaves[f"W{i}"], leaves[f"b{i}"])
        a = torch.tanh(z) if net.activations[i - 1] == "tanh" else z
    J = 0.5 * F.mse_loss(a, y, reduction="sum")
    J = J + 0.5 * net.weight_decay * sum((leaves[f"W{i}"] ** 2).sum() for i in range(1, net.L + 1))
    J.backward()
    return {name: t.grad for name, t in leaves.items() if t.grad is not None}


def _assert_equal_to_autograd(grads: NetworkGradients, net: refbp.MLP, X: Tensor, y: Tensor) -> None:
    expected = _autograd(net, X, y)
    assert sorted(grads.as_dict()) == sorted(expected)
    for name, value in expected.items():
        torch.testing.assert_close(grads[name], value, rtol=1e-12, atol=1e-12, msg=name)


def test_weight_decay_changed_between_steps_is_applied_at_the_next_step() -> None:
    net = _net()
    X, y = _data(0)
    _assert_equal_to_autograd(_step(net, X, y), net, X, y)
    net.weight_decay = 0.25  # a schedule may change lambda between steps
    _assert_equal_to_autograd(_step(net, X, y), net, X, y)
    net.weight_decay = 0.0
    _assert_equal_to_autograd(_step(net, X, y), net, X, y)


def test_a_new_batch_size_and_an_input_requiring_grad_give_autograd_s_gradients() -> None:
    net = _net(weight_decay=0.1)
    for seed, rows in ((1, N), (2, 2 * N), (3, N)):
        X, y = _data(seed)
        X = torch.cat([X] * (rows // N)).requires_grad_(True)
        y = torch.cat([y] * (rows // N))
        cache = net.forward(X, keep_intermediates=False)
        assert not cache.X.requires_grad  # the manual path builds no graph
        grads = net.backward(cache, y, keep_intermediates=False, release_cache=True)
        _assert_equal_to_autograd(grads, net, X.detach(), y)
        assert list(grads.as_dict()) == [name for name in net.names() if name in grads]


def test_full_step_after_lean_steps_keeps_every_intermediate_in_order() -> None:
    net = _net()
    X, y = _data(4)
    _step(net, X, y)
    grads = net.backward(net.forward(X), y)
    assert list(grads.as_dict()) == net.names()
    _assert_equal_to_autograd(_step(net, X, y), net, X, y)
