"""Bad input gets a ValueError/TypeError that names the argument, shows what it got and
says what was expected: never a deep torch traceback."""

from __future__ import annotations

import itertools

import pytest
import torch

import refbp

F64 = torch.float64


def _params(dims: tuple[int, ...] = (3, 4, 2)) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    Ws = [torch.randn(o, i, generator=g, dtype=F64) for i, o in itertools.pairwise(dims)]
    bs = [torch.randn(o, generator=g, dtype=F64) for o in dims[1:]]
    return Ws, bs


def _net(loss: str = "mse", last: str = "identity") -> refbp.MLP:
    Ws, bs = _params()
    return refbp.MLP.from_params(weights=Ws, biases=bs, activations=["tanh", last], loss=loss)


# ---- parameters -------------------------------------------------------------------------
def test_weight_of_wrong_shape_names_it_and_the_expected_shape() -> None:
    Ws, bs = _params()
    Ws[1] = torch.randn(2, 5, dtype=F64)
    with pytest.raises(ValueError, match=r"weights\[1\] \(W2\) has shape \(2, 5\).*expected \(2, 4\)"):
        refbp.MLP.from_params(weights=Ws, biases=bs, activations=["tanh", "identity"], loss="mse")


def test_weight_of_wrong_rank() -> None:
    Ws, bs = _params()
    Ws[0] = torch.randn(4, 3, 1, dtype=F64)
    with pytest.raises(ValueError, match=r"weights\[0\] \(W1\) must be 2-dimensional, got shape \(4, 3, 1\)"):
        refbp.MLP.from_params(weights=Ws, biases=bs, activations=["tanh", "identity"], loss="mse")


def test_bias_of_wrong_shape() -> None:
    Ws, bs = _params()
    bs[0] = torch.randn(3, dtype=F64)
    with pytest.raises(ValueError, match=r"biases\[0\] \(b1\) has shape \(3,\).*expected \(4,\)"):
        refbp.MLP.from_params(weights=Ws, biases=bs, activations=["tanh", "identity"], loss="mse")


def test_bias_of_wrong_rank() -> None:
    Ws, bs = _params()
    bs[1] = torch.randn(2, 2, dtype=F64)  # (d,), (d, 1) and (1, d) are all fine; a matrix is not
    with pytest.raises(
        ValueError, match=r"biases\[1\] \(b2\) has shape \(2, 2\).*expected \(d,\), \(d, 1\) or \(1, d\)"
    ):
        refbp.MLP.from_params(weights=Ws, biases=bs, activations=["tanh", "identity"], loss="mse")


def test_activations_list_of_wrong_length() -> None:
    Ws, bs = _params()
    with pytest.raises(ValueError, match="activations has 1 entries but the network has 2 layers"):
        refbp.MLP.from_params(weights=Ws, biases=bs, activations=["tanh"], loss="mse")


def test_unknown_activation_and_loss_list_the_valid_names() -> None:
    Ws, bs = _params()
    with pytest.raises(ValueError, match=r"activations\[0\]='swish' is not a known activation; expected one of"):
        refbp.MLP.from_params(weights=Ws, biases=bs, activations=["swish", "identity"], loss="mse")
    with pytest.raises(ValueError, match=r"loss='l1' is not a known loss; expected one of \['bce'"):
        refbp.MLP.from_params(weights=Ws, biases=bs, activations=["tanh", "identity"], loss="l1")


@pytest.mark.parametrize(
    ("loss", "last", "needed"), [("bce", "identity", "sigmoid"), ("cross_entropy", "softplus", "identity")]
)
def test_nonsense_loss_activation_pairing_is_refused(loss: str, last: str, needed: str) -> None:
    with pytest.raises(ValueError, match=f"loss='{loss}' needs activations\\[-1\\]='{needed}'.*got '{last}'"):
        _net(loss, last)


def test_nan_or_inf_in_parameters_is_refused_with_its_index() -> None:
    Ws, bs = _params()
    Ws[1][1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"weights\[1\] \(W2\) has 1 non-finite entries .* at index \(1, 2\)"):
        refbp.MLP.from_params(weights=Ws, biases=bs, activations=["tanh", "identity"], loss="mse")
    Ws, bs = _params()
    bs[0][3] = float("inf")
    with pytest.raises(ValueError, match=r"biases\[0\] \(b1\) has 1 non-finite"):
        refbp.MLP.from_params(weights=Ws, biases=bs, activations=["tanh", "identity"], loss="mse")


def test_parameters_of_mixed_dtype_or_non_tensor() -> None:
    Ws, bs = _params()
    bs[1] = bs[1].float()
    with pytest.raises(ValueError, match=r"biases\[1\] \(b2\) has shape \(2,\), dtype float32.*dtype float64"):
        refbp.MLP.from_params(weights=Ws, biases=bs, activations=["tanh", "identity"], loss="mse")
    Ws, bs = _params()
    with pytest.raises(TypeError, match=r"weights\[0\] \(W1\) must be a torch.Tensor or a NumPy array, got list"):
        refbp.MLP.from_params(weights=[[[1.0]], *Ws[1:]], biases=bs, activations=["tanh", "identity"], loss="mse")  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"must have a floating dtype .* got shape \(4, 3\), dtype int64"):
        refbp.MLP.from_params(
            weights=[torch.ones(4, 3, dtype=torch.int64), Ws[1]],
            biases=bs,
            activations=["tanh", "identity"],
            loss="mse",
        )


def test_empty_parameter_lists_and_bad_weight_decay() -> None:
    with pytest.raises(ValueError, match="weights is empty"):
        refbp.MLP.from_params(weights=[], biases=[], activations=[], loss="mse")
    Ws, bs = _params()
    with pytest.raises(ValueError, match=r"weight_decay=-0.1 must be a finite number >= 0"):
        refbp.MLP.from_params(weights=Ws, biases=bs, activations=["tanh", "identity"], loss="mse", weight_decay=-0.1)


def test_random_refuses_bad_dims_and_devices() -> None:
    with pytest.raises(ValueError, match=r"dims\[1\]=0 must be a positive int"):
        refbp.MLP.random([3, 0, 2], activations=["tanh", "identity"], loss="mse")
    with pytest.raises(ValueError, match="must list at least two sizes"):
        refbp.MLP.random([3], activations=[], loss="mse")
    with pytest.raises(ValueError, match="device='tpu' is not a device"):
        refbp.MLP.random([3, 2], activations=["identity"], loss="mse", device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="torch sees no CUDA GPU here"):
            refbp.MLP.random([3, 2], activations=["identity"], loss="mse", device="cuda")


def test_auto_device_picks_cuda_only_when_present() -> None:
    net = refbp.MLP.random([3, 2], activations=["identity"], loss="mse", device="auto")
    assert net.device.type == ("cuda" if torch.cuda.is_available() else "cpu")


# ---- X and y ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("X", "message"),
    [
        (torch.randn(5, 4, dtype=F64), r"X must have shape \(N, 3\) = \(N, d_0\), got shape \(5, 4\)"),
        (torch.randn(3, dtype=F64), r"X must be 2-dimensional, got shape \(3,\)"),
        (torch.randn(0, 3, dtype=F64), r"X has an empty batch \(shape \(0, 3\).*expected N >= 1"),
        (torch.randn(5, 3, dtype=torch.float32), r"X has shape \(5, 3\), dtype float32.*dtype float64"),
        (torch.full((2, 3), float("nan"), dtype=F64), r"X has 6 non-finite entries"),
        ([[1.0, 2.0, 3.0]], r"X must be a torch.Tensor or a NumPy array, got list"),
    ],
)
def test_bad_X_is_refused_clearly(X: object, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        _net().forward(X)  # type: ignore[arg-type]


def test_bad_y_for_value_losses() -> None:
    net = _net()
    cache = net.forward(torch.randn(5, 3, dtype=F64))
    with pytest.raises(ValueError, match=r"y must have shape \(5, 2\) = \(N, d_L\) like y_hat, got shape \(5,\)") as e:
        net.backward(cache, torch.randn(5, dtype=F64))
    assert "Traceback" not in str(e.value)
    with pytest.raises(ValueError, match=r"y must have shape \(5, 2\).*got shape \(5, 2, 1\)"):
        net.loss(cache, torch.randn(5, 2, 1, dtype=F64))
    with pytest.raises(ValueError, match=r"y has shape \(5, 2\), dtype float32"):
        net.loss(cache, torch.randn(5, 2))
    bce = _net("bce", "sigmoid")
    with pytest.raises(ValueError, match=r"y must lie in \[0, 1\] for loss='bce'"):
        bce.loss(bce.forward(torch.randn(5, 3, dtype=F64)), torch.full((5, 2), 2.0, dtype=F64))


def test_bad_class_indices_for_cross_entropy() -> None:
    net = _net("cross_entropy")
    cache = net.forward(torch.randn(4, 3, dtype=F64))
    with pytest.raises(ValueError, match=r"y\[2\] = 2 is not a class index; expected 0 <= y < 2"):
        net.backward(cache, torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match=r"y\[0\] = -1 is not a class index"):
        net.loss(cache, torch.tensor([-1, 1, 1, 0]))
    with pytest.raises(
        TypeError, match=r"y must hold int64 class indices for loss='cross_entropy', got shape \(4,\), dtype float64"
    ):
        net.loss(cache, torch.zeros(4, dtype=F64))
    with pytest.raises(ValueError, match=r"y must have shape \(4,\) = \(N,\)"):
        net.loss(cache, torch.zeros(3, dtype=torch.int64))


def test_cache_from_another_network_is_refused() -> None:
    other = refbp.MLP.random([3, 5, 5, 2], activations=["tanh"] * 2 + ["identity"], loss="mse")
    cache = other.forward(torch.randn(2, 3, dtype=F64))
    with pytest.raises(ValueError, match="it does not come from this network"):
        _net().backward(cache, torch.randn(2, 2, dtype=F64))
