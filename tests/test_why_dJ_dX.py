# ruff: noqa: N999  (the module name is the question it answers: why dJ/dX?)
"""Why dJ/dX: the upper network's dJ/dX trains the lower one (checked against autograd on
the composed model), a saliency map, and a step along sign(dJ/dX) that raises the loss."""

from __future__ import annotations

import pytest
import torch

from refbp.apps.seed import seed_point
from refbp.examples.adversarial import fgsm
from refbp.examples.adversarial import make_data as circle_data
from refbp.examples.saliency import RELEVANT_FEATURES, make_data, output_gradient, saliency, train
from refbp.examples.stacked import (
    check_against_autograd,
    composed_autograd_gradients,
    make_stack,
    stacked_gradients,
    train_stack,
)
from refbp.nn.mlp import MLP, backward_from
from refbp.verify.reference import TORCH_ACTIVATIONS


@pytest.mark.parametrize("seed", [0, 2, 5])
def test_upper_dJ_dX_trains_the_lower_network_as_autograd_does(seed: int) -> None:
    stack = make_stack(seed)
    X, y = seed_point()
    rows = check_against_autograd(stack, X, y)
    assert {row.name for row in rows} >= {"lower.W1", "lower.b1", "lower.W2", "lower.b2", "H", "X"}
    assert all(row.passed for row in rows), [row.message() for row in rows if not row.passed]
    # dJ/dH is literally the upper network's dJ/dX, and it is where the lower pass starts
    grads = stacked_gradients(stack, X, y)
    assert grads.lower.dJ_da[stack.lower.L] is grads.upper.dJ_dX
    J_ref, _ = composed_autograd_gradients(stack, X, y)
    assert abs(grads.J - J_ref) <= 1e-14 * J_ref


def test_end_to_end_training_curve_equals_torch_sgd_on_the_composed_model() -> None:
    X, y = seed_point()
    manual, reference = train_stack(make_stack(), X, y, steps=300)
    assert max(abs(m - r) / r for m, r in zip(manual, reference, strict=True)) < 1e-12
    assert manual[-1] < 0.05 * manual[0]  # XOR is learnt, lower network included


def test_backward_from_the_loss_gradient_is_the_ordinary_backward_pass() -> None:
    net = MLP.random([3, 5, 2], activations=["gelu", "tanh"], loss="mse", seed=7, weight_decay=0.1)
    X = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    cache = net.forward(X)
    expected = net.backward(cache, y).as_dict()
    got = backward_from(net, cache, net.loss_fn.gradient(cache.y_hat, y)).as_dict()
    for name, g in expected.items():
        torch.testing.assert_close(got[name], g, rtol=1e-13, atol=1e-15)
    with pytest.raises(ValueError, match="dJ_da_L must have a\\(L\\)'s shape"):
        backward_from(net, cache, torch.ones(4, 3, dtype=torch.float64))


def test_saliency_is_d_y_hat_dX_and_finds_the_relevant_features() -> None:
    X, y = make_data()
    net = train(X, y)
    X_leaf = X.clone().requires_grad_(True)
    a = X_leaf
    for W, b, name in zip(net.weights, net.biases, net.activations, strict=True):
        a = TORCH_ACTIVATIONS[name](a @ W.T + b)
    (expected,) = torch.autograd.grad(a.sum(), X_leaf)
    torch.testing.assert_close(output_gradient(net, X), expected, rtol=1e-12, atol=1e-14)
    assert set(saliency(net, X).ranking[: len(RELEVANT_FEATURES)]) == set(RELEVANT_FEATURES)


def test_fgsm_raises_the_loss_by_eps_times_the_l1_norm_of_dJ_dX_to_first_order() -> None:
    X, y = circle_data()
    net = train(X, y, steps=200)
    for eps in (1e-4, 1e-5):
        _, attack = fgsm(net, X, y, eps)
        assert attack.J_adversarial - attack.J_clean == pytest.approx(attack.first_order_increase, rel=1e-2)
    _, attack = fgsm(net, X, y, 0.2)
    assert attack.J_adversarial > attack.J_random > attack.J_clean * 0.5
    assert attack.accuracy_adversarial < attack.accuracy_clean
