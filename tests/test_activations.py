"""Each activation's forward map equals torch's, and its hand-written derivative equals
autograd's derivative of torch's function, including at and around the kinks."""

from __future__ import annotations

import pytest
import torch

from refbp.nn.activations import ACTIVATIONS, get_activation
from refbp.verify.reference import TORCH_ACTIVATIONS

NAMES = sorted(ACTIVATIONS)


def _grid(dtype: torch.dtype) -> torch.Tensor:
    """z across the interesting range: 0 exactly, tiny, moderate, the softplus threshold, large."""
    core = torch.linspace(-8.0, 8.0, 161, dtype=torch.float64)
    special = torch.tensor([0.0, -0.0, 1e-8, -1e-8, 19.999, 20.0, 20.001, -30.0, 30.0, -700.0, 700.0])
    return torch.cat([core, special.to(torch.float64)]).to(dtype).reshape(-1, 4)


def _derivative(name: str, z: torch.Tensor) -> torch.Tensor:
    act = ACTIVATIONS[name]
    a = act.f(z)
    return act.derivative(a if act.derivative_of == "a" else z)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", NAMES)
def test_forward_matches_torch_function(name: str, dtype: torch.dtype) -> None:
    z = _grid(dtype)
    torch.testing.assert_close(ACTIVATIONS[name].f(z), TORCH_ACTIVATIONS[name](z))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", NAMES)
def test_derivative_matches_autograd_of_torch_function(name: str, dtype: torch.dtype) -> None:
    z = _grid(dtype)
    leaf = z.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(TORCH_ACTIVATIONS[name](leaf).sum(), leaf)
    got = _derivative(name, z)
    assert got.dtype == dtype and got.shape == z.shape
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("name", NAMES)
def test_derivative_is_finite_at_large_inputs(name: str) -> None:
    z = torch.tensor([[-1e3, -50.0, 50.0, 1e3]], dtype=torch.float32)
    assert torch.isfinite(ACTIVATIONS[name].f(z)).all()
    assert torch.isfinite(_derivative(name, z)).all()


@pytest.mark.parametrize("name", NAMES)
def test_derivative_returns_a_fresh_tensor_the_caller_may_overwrite(name: str) -> None:
    z = torch.randn(3, 5, dtype=torch.float64)
    a = ACTIVATIONS[name].f(z)
    z_before, a_before = z.clone(), a.clone()
    act = ACTIVATIONS[name]
    d = act.derivative(a if act.derivative_of == "a" else z)
    d.mul_(7.0)  # the backward pass multiplies in place
    assert torch.equal(z, z_before) and torch.equal(a, a_before)


def test_kinks_follow_torch_convention() -> None:
    zero = torch.zeros(1, 1, dtype=torch.float64)
    assert _derivative("relu", zero).item() == 0.0
    assert _derivative("leaky_relu", zero).item() == pytest.approx(0.01, rel=0, abs=0)


def test_only_relu_and_leaky_relu_are_kinked() -> None:
    assert {name for name, act in ACTIVATIONS.items() if act.kinked} == {"relu", "leaky_relu"}


@pytest.mark.parametrize("bad", ["Relu", "softmax", None, 3])
def test_unknown_activation_lists_the_valid_names(bad: object) -> None:
    with pytest.raises(ValueError, match=r"not a known activation; expected one of \['elu', 'gelu'"):
        get_activation(bad)
