"""The manual backward pass gives every gradient, W, b, z, a and X, equal to torch.autograd's
and to central finite differences, on every network hypothesis draws."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given

import refbp
from refbp.strategies import cases
from refbp.verify.cases import Case, CaseSpec
from refbp.verify.reference import autograd_gradients

from .conftest import devices, requires_cuda


def _expected_keys(L: int) -> list[str]:
    return [f"{k}{i}" for i in range(1, L + 1) for k in "Wbza"] + ["X"]


def _manual(case: Case) -> dict[str, torch.Tensor]:
    return case.net.backward(case.net.forward(case.X), case.y).as_dict()


@given(cases())
def test_every_gradient_matches_autograd(case: Case) -> None:
    grads = _manual(case)
    assert list(grads) == _expected_keys(case.net.L)
    result = refbp.check(case.net, case.X, case.y, references=("autograd",))
    result.raise_if_failed()
    assert len(result.rows) == len(grads)


@given(cases())
def test_every_gradient_matches_finite_differences(case: Case) -> None:
    result = refbp.check(case.net, case.X, case.y, references=("fd",), fd_mode="full")
    result.raise_if_failed()
    assert all(row.n_elements > 0 for row in result.rows)


@given(cases(dtypes=["float64"]))
def test_float64_gradients_equal_autograd_to_round_off(case: Case) -> None:
    """Same dtype on both sides: the manual pass and autograd do the same arithmetic up to
    the order of a few sums, so they agree to ~1e-13, far inside the tolerance."""
    _, reference = autograd_gradients(case.net, case.X, case.y)
    for name, g in _manual(case).items():
        r = reference[name]
        scale = max(1.0, float(r.abs().max()))
        assert float((g - r).abs().max()) <= 1e-12 * scale, name


def test_seed_network_every_gradient_including_dJ_dX() -> None:
    """The seed's network: one hidden layer, sigmoid on both layers, J = 1/2 ||y - y_hat||^2."""
    net = refbp.MLP.random([2, 3, 1], activations=["sigmoid", "sigmoid"], loss="half_sse", seed=0)
    X = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([[1.0], [1.0], [0.0], [0.0]], dtype=torch.float64)
    cache = net.forward(X)
    grads = net.backward(cache, y)
    J_ref, reference = autograd_gradients(net, X, y)
    torch.testing.assert_close(net.loss(cache, y), J_ref)
    for name in ["W1", "b1", "z1", "a1", "W2", "b2", "z2", "a2", "X"]:
        torch.testing.assert_close(grads.as_dict()[name], reference[name], rtol=1e-12, atol=1e-15)
    # dJ/dX is dJ/da(0): what eq. (8) hands down from layer 1
    torch.testing.assert_close(grads.dJ_dX, grads.dJ_dz[1] @ net.weights[0])  # type: ignore[operator]
    assert grads.dJ_dX.shape == X.shape
    refbp.check(net, X, y, fd_mode="full").raise_if_failed()


@given(cases(dtypes=["float64"], max_depth=3))
def test_lean_modes_give_the_same_parameter_gradients(case: Case) -> None:
    full = case.net.backward(case.net.forward(case.X), case.y)
    lean = case.net.backward(case.net.forward(case.X, keep_z=False), case.y, intermediates=False)
    lean_dict = lean.as_dict()
    assert set(lean_dict) == {k for k in full.as_dict() if k[0] in "Wb"} | {"X"}
    for name, value in lean_dict.items():
        assert torch.equal(value, full.as_dict()[name]), name


def test_lean_cache_drops_z_only_where_the_derivative_reads_a() -> None:
    acts = ["tanh", "gelu", "relu", "elu", "identity"]
    net = refbp.MLP.random([3, 4, 4, 4, 4, 2], activations=acts, loss="mse")
    cache = net.forward(torch.randn(5, 3, dtype=torch.float64), keep_z=False)
    assert [z is None for z in cache.z] == [True, True, False, True, False, True]


@pytest.mark.parametrize("loss", ["half_sse", "mse", "bce", "cross_entropy"])
def test_weight_decay_adds_lambda_W_to_dJ_dW(loss: str) -> None:
    spec = CaseSpec(dims=(3, 4, 2), activations=("tanh", "sigmoid" if loss == "bce" else "identity"), loss=loss, seed=3)
    plain = spec.build()
    decayed = CaseSpec(**{**spec.__dict__, "weight_decay": 0.5}).build()
    g0, g1 = _manual(plain), _manual(decayed)
    for i, W in enumerate(plain.net.weights, start=1):
        torch.testing.assert_close(g1[f"W{i}"], g0[f"W{i}"] + 0.5 * W)
        torch.testing.assert_close(g1[f"b{i}"], g0[f"b{i}"])
    refbp.check(decayed.net, decayed.X, decayed.y).raise_if_failed()


@pytest.mark.parametrize("activation", ["sigmoid", "softplus", "tanh", "elu", "gelu", "silu"])
@pytest.mark.parametrize("loss", ["half_sse", "bce", "cross_entropy"])
def test_finite_and_equal_to_autograd_at_pre_activations_of_1e3(activation: str, loss: str) -> None:
    """Saturated units: |z| up to 1e3. Where torch is finite, refbp is finite and agrees."""
    last = {"bce": "sigmoid", "cross_entropy": "identity"}.get(loss, "identity")
    W1 = torch.tensor([[1e3, -1e3], [5e2, 1.0], [-1e3, 1e3]], dtype=torch.float32)
    W2 = torch.tensor([[1e3, -1e3, 2.0], [-3.0, 1e3, 1e3]], dtype=torch.float32)
    net = refbp.MLP.from_params(
        weights=[W1, W2], biases=[torch.zeros(3), torch.zeros(2)], activations=[activation, last], loss=loss
    )
    X = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float32)
    y = torch.tensor([0, 1, 1]) if loss == "cross_entropy" else torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]])
    cache = net.forward(X)
    grads = net.backward(cache, y).as_dict()
    _, reference = autograd_gradients(net, X, y)
    assert torch.isfinite(net.loss(cache, y))
    for name, g in grads.items():
        r = reference[name]
        assert torch.isfinite(r).all() and torch.isfinite(g).all(), name
        torch.testing.assert_close(g, r.to(g.dtype), rtol=1e-4, atol=1e-4 * max(1.0, float(r.abs().max())))


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_gradients_match_autograd_on_each_available_device(device: str, dtype: str) -> None:
    for seed, (acts, loss) in enumerate(
        [
            (("tanh", "relu", "identity"), "mse"),
            (("gelu", "silu", "sigmoid"), "bce"),
            (("elu", "softplus", "identity"), "cross_entropy"),
        ]
    ):
        case = CaseSpec(
            dims=(5, 7, 6, 3), activations=acts, loss=loss, seed=seed, dtype=dtype, device=device, batch=6
        ).build()
        grads = _manual(case)
        assert all(g.device.type == device and g.dtype == case.X.dtype for g in grads.values())
        refbp.check(case.net, case.X, case.y).raise_if_failed()


@requires_cuda
@given(cases(device="cuda"))
def test_cuda_every_gradient_matches_autograd(case: Case) -> None:
    refbp.check(case.net, case.X, case.y).raise_if_failed()


@requires_cuda
def test_cuda_and_cpu_agree() -> None:
    spec = CaseSpec(dims=(4, 8, 3), activations=("tanh", "identity"), loss="half_sse", seed=1)
    cpu, gpu = spec.build(), CaseSpec(**{**spec.__dict__, "device": "cuda"}).build()
    for name, g in _manual(gpu).items():
        torch.testing.assert_close(g.cpu(), _manual(cpu)[name], rtol=1e-12, atol=1e-14)


@given(cases(dtypes=["float64"], max_depth=3))
def test_releasing_the_cache_changes_no_gradient_and_forbids_reuse(case: Case) -> None:
    kept = case.net.backward(case.net.forward(case.X, keep_z=False), case.y, intermediates=False).as_dict()
    cache = case.net.forward(case.X, keep_z=False)
    released = case.net.backward(cache, case.y, intermediates=False, release_cache=True).as_dict()
    assert released.keys() == kept.keys() and all(torch.equal(released[k], kept[k]) for k in kept)
    assert cache.released and cache.a[0] is not None and all(a.numel() == 0 for a in cache.a[1:])
    with pytest.raises(ValueError, match=r"cache was released by an earlier backward\(\.\.\., release_cache=True\)"):
        case.net.backward(cache, case.y)


def test_a_finite_sum_of_huge_entries_still_gets_the_exact_finiteness_check() -> None:
    """check_finite's one-pass shortcut must not hide NaN/inf, nor refuse finite entries whose
    sum overflows."""
    net = refbp.MLP.random([2, 1], activations=["identity"], loss="mse", dtype=torch.float32)
    huge = torch.full((3, 2), 3e38, dtype=torch.float32)  # finite entries, the sum is inf
    assert net.forward(huge).a[0] is not None
    with pytest.raises(ValueError, match="X has 1 non-finite entries"):
        net.forward(torch.tensor([[1.0, float("-inf")], [3.0, 2.0]]))
