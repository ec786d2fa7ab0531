"""Properties that pin down details of the manual backprop which the broad property tests leave
loose: found by mutation testing (scripts/mutation.py), each checked against torch itself."""

from __future__ import annotations

import pytest
import torch

from refbp.nn.activations import SOFTPLUS_THRESHOLD, get_activation
from refbp.nn.mlp import MLP, ForwardCache, backward


def _torch_derivative(fn: object, z: torch.Tensor) -> torch.Tensor:
    z = z.clone().requires_grad_(True)
    assert callable(fn)
    (grad,) = torch.autograd.grad(fn(z).sum(), z)
    return grad


def test_softplus_derivative_matches_torch_at_its_threshold_to_round_off() -> None:
    # torch switches to f(z) = z strictly above the threshold; at z = 20 itself f'(z) = sigmoid(20),
    # which differs from 1 by 2e-9 (float64; float32 rounds it to 1): rtol 1e-12 sees which side
    # of the switch z = 20 is on, while allowing torch's own round-off elsewhere.
    t = SOFTPLUS_THRESHOLD
    z = torch.tensor([t - 1e-3, t, t + 1e-3, -t, 0.0], dtype=torch.float64)
    expected = _torch_derivative(torch.nn.functional.softplus, z)
    torch.testing.assert_close(get_activation("softplus").derivative(z), expected, rtol=1e-12, atol=0)


def test_softplus_matches_torch_at_its_threshold_to_round_off() -> None:
    # at z = 20 torch still returns log(1 + e^20) = 20 + 2.1e-9, not z: a 1e-10 relative step
    t = SOFTPLUS_THRESHOLD
    z = torch.tensor([t - 1e-3, t, t + 1e-3, -t, 0.0], dtype=torch.float64)
    a = get_activation("softplus").f(z)
    torch.testing.assert_close(a, torch.nn.functional.softplus(z), rtol=1e-12, atol=0)


def _net_and_cache(dims: list[int], activations: list[str]) -> tuple[MLP, ForwardCache, torch.Tensor]:
    net = MLP.random(dims, activations=activations, loss="mse", seed=2)
    X = torch.randn(3, dims[0], dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    y = torch.zeros(3, dims[-1], dtype=torch.float64)
    return net, net.forward(X), y


def test_backward_keeps_every_intermediate_by_default_in_lists_indexed_like_the_equations() -> None:
    net, cache, y = _net_and_cache([2, 3, 4], ["tanh", "identity"])
    grads = backward(net, cache, y)  # the module function itself, with its own default
    assert set(grads.as_dict()) == {"W1", "b1", "z1", "a1", "W2", "b2", "z2", "a2", "X"}
    for values in (grads.dJ_dW, grads.dJ_db, grads.dJ_dz, grads.dJ_da):
        assert len(values) == net.L + 1  # [index 0, layer 1, ..., layer L]
    assert grads.dJ_dW[0] is None and grads.dJ_db[0] is None and grads.dJ_dz[0] is None


def test_a_foreign_cache_is_refused_with_its_own_and_the_network_s_widths() -> None:
    net, _, y = _net_and_cache([2, 3, 4], ["tanh", "identity"])
    _, foreign, _ = _net_and_cache([5, 7, 4], ["tanh", "identity"])
    with pytest.raises(ValueError, match=r"input width 5; .*\(2 layers, d_0 = 2\)"):
        backward(net, foreign, y)


def test_a_cache_missing_a_needed_z_is_refused_naming_the_layer() -> None:
    net, cache, y = _net_and_cache([2, 3, 4], ["gelu", "identity"])  # gelu' reads z
    cache.z[1] = None
    with pytest.raises(ValueError, match=r"cache\.z\[1\] is None but gelu's derivative needs z\(1\)"):
        backward(net, cache, y)


def test_an_unknown_activation_is_named_as_the_activation_argument() -> None:
    with pytest.raises(ValueError, match=r"^activation='swish' is not a known activation"):
        get_activation("swish")


# ---- backward_from and release_cache ----------------------------------------------------
def _small() -> tuple[MLP, torch.Tensor, torch.Tensor]:
    net = MLP.random([3, 4, 2], activations=["tanh", "tanh"], loss="half_sse", seed=3)  # f_L in place: not identity
    X = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return net, X, torch.zeros(5, 2, dtype=torch.float64)


def test_backward_from_leaves_the_callers_gradient_untouched_in_every_mode() -> None:
    from refbp.nn.mlp import backward_from

    net, X, _ = _small()
    upstream = torch.randn(5, 2, dtype=torch.float64)
    before = upstream.clone()
    for intermediates in (True, False):
        backward_from(net, net.forward(X), upstream, intermediates=intermediates)
        assert torch.equal(upstream, before)


def test_backward_from_releases_the_cache_only_when_asked() -> None:
    from refbp.nn.mlp import backward_from

    net, X, _ = _small()
    upstream = torch.ones(5, 2, dtype=torch.float64)
    kept = net.forward(X)
    backward_from(net, kept, upstream)
    assert not kept.released and kept.a[1].shape == (5, 4)
    released = net.forward(X)
    backward_from(net, released, upstream, release_cache=True)
    assert released.released and released.a[1].numel() == 0


def test_backward_keeps_the_cache_by_default_and_gives_the_same_gradients_twice() -> None:
    net, X, y = _small()
    cache = net.forward(X)
    first, second = backward(net, cache, y).as_dict(), backward(net, cache, y).as_dict()
    assert not cache.released and all(torch.equal(first[k], second[k]) for k in first)


def test_backward_from_detaches_an_upstream_gradient_that_requires_grad() -> None:
    from refbp.nn.mlp import backward_from

    net, X, _ = _small()
    upstream = torch.ones(5, 2, dtype=torch.float64, requires_grad=True)
    grads = backward_from(net, net.forward(X), upstream).as_dict()
    assert not any(g.requires_grad for g in grads.values())


def test_backward_from_and_released_cache_errors_name_the_argument_and_what_it_got() -> None:
    from refbp.nn.mlp import backward_from

    net, X, y = _small()
    with pytest.raises(
        ValueError,
        match=r"^dJ_da_L must have a\(L\)'s shape \(5, 2\) = \(N, d_L\), got shape \(5, 3\), dtype float64, device cpu",
    ):
        backward_from(net, net.forward(X), torch.zeros(5, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"^dJ_da_L must have a\(L\)'s shape \(5, 2\) = \(N, d_L\), got list$"):
        backward_from(net, net.forward(X), [[0.0, 0.0]] * 5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^dJ_da_L has shape \(5, 2\), dtype float32, device cpu, but the network"):
        backward_from(net, net.forward(X), torch.zeros(5, 2))
    cache = net.forward(X)
    backward(net, cache, y, release_cache=True)
    with pytest.raises(
        ValueError,
        match=r"^cache was released by an earlier backward\(\.\.\., release_cache=True\); run net\.forward\(X\) again$",
    ):
        backward(net, cache, y)
