"""Properties that pin down details of the manual backprop which the broad property tests leave
loose: found by mutation testing (scripts/mutation.py), each checked against torch itself."""

from __future__ import annotations

import pytest
import torch

from refbp.activations import SOFTPLUS_THRESHOLD, get_activation
from refbp.backward import backward
from refbp.network import MLP, ForwardCache


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
