"""Each loss equals the torch function it names, and its hand-written dJ/dy_hat equals
autograd's gradient of that torch function, including where the inputs saturate."""

from __future__ import annotations

import pytest
import torch

from refbp.nn.losses import LOSSES, get_loss
from refbp.verify.reference import TORCH_LOSSES


def _inputs(name: str, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if name in ("cross_entropy", "multi_margin", "nll"):
        z = torch.randn(6, 4, generator=g, dtype=torch.float64) * 3
        z = torch.log_softmax(z, dim=1) if name == "nll" else z
        return z.to(dtype), torch.randint(0, 4, (6,), generator=g)
    if name == "bce":
        p = torch.rand(6, 3, generator=g, dtype=torch.float64).to(dtype) * 0.98 + 0.01
        return p, torch.rand(6, 3, generator=g, dtype=torch.float64).to(dtype)
    return torch.randn(6, 3, generator=g, dtype=torch.float64).to(dtype), torch.randn(
        6, 3, generator=g, dtype=torch.float64
    ).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_value_and_gradient_match_torch(name: str, dtype: torch.dtype) -> None:
    y_hat, y = _inputs(name, dtype)
    leaf = y_hat.clone().requires_grad_(True)
    J_torch = TORCH_LOSSES[name](leaf, y)
    (dJ_dy_hat,) = torch.autograd.grad(J_torch, leaf)
    loss = LOSSES[name]
    torch.testing.assert_close(loss.value(y_hat, y), J_torch.detach())
    torch.testing.assert_close(loss.gradient(y_hat, y), dJ_dy_hat)


def test_half_sse_gradient_has_the_sign_of_y_hat_minus_y() -> None:
    """The seed writes dJ/dy_hat = y - y_hat; J = 1/2 ||y - y_hat||^2 grows as y_hat moves
    away from y, so the gradient points from y to y_hat."""
    y_hat = torch.tensor([[2.0]], dtype=torch.float64)
    y = torch.tensor([[0.0]], dtype=torch.float64)
    assert LOSSES["half_sse"].gradient(y_hat, y).item() > 0
    eps = 1e-6
    assert LOSSES["half_sse"].value(y_hat + eps, y) > LOSSES["half_sse"].value(y_hat, y)


def test_cross_entropy_is_finite_and_matches_torch_at_logits_of_1e3() -> None:
    z = torch.tensor([[1e3, -1e3, 0.0], [-1e3, 1e3, 5.0]], dtype=torch.float32)
    y = torch.tensor([1, 1])
    leaf = z.clone().requires_grad_(True)
    J = TORCH_LOSSES["cross_entropy"](leaf, y)
    (grad,) = torch.autograd.grad(J, leaf)
    assert torch.isfinite(LOSSES["cross_entropy"].value(z, y))
    torch.testing.assert_close(LOSSES["cross_entropy"].value(z, y), J.detach())
    torch.testing.assert_close(LOSSES["cross_entropy"].gradient(z, y), grad)


@pytest.mark.parametrize("p_value", [0.0, 1.0, 1e-30, 1 - 1e-16])
def test_bce_matches_torch_when_the_sigmoid_saturates(p_value: float) -> None:
    p = torch.full((2, 2), p_value, dtype=torch.float64)
    y = torch.tensor([[0.0, 1.0], [0.25, 1.0]], dtype=torch.float64)
    leaf = p.clone().requires_grad_(True)
    J = TORCH_LOSSES["bce"](leaf, y)
    (grad,) = torch.autograd.grad(J, leaf)
    assert torch.isfinite(LOSSES["bce"].value(p, y)) and torch.isfinite(LOSSES["bce"].gradient(p, y)).all()
    torch.testing.assert_close(LOSSES["bce"].value(p, y), J.detach())
    torch.testing.assert_close(LOSSES["bce"].gradient(p, y), grad)


def test_pairings_declared() -> None:
    assert LOSSES["bce"].output_activation == "sigmoid"
    assert LOSSES["cross_entropy"].output_activation == "identity"
    assert LOSSES["cross_entropy"].targets == "classes"


@pytest.mark.parametrize("bad", ["MSE", "svm", None])
def test_unknown_loss_lists_the_valid_names(bad: object) -> None:
    with pytest.raises(ValueError, match=r"not a known loss; expected one of \['bce', 'cross_entropy'"):
        get_loss(bad)
