"""Verdict integrity on the newer surfaces (issue 16): a gradient convention is part of the
reference (Embedding's padding row), a dropout network checked without its masks says why it
fails, bad ``noise=`` entries are refused, and a check where every gradient fails says what
that usually means."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import refbp
from refbp.nn.layers import BatchNorm1d, Dropout, Elementwise, Embedding, Flatten, Linear
from refbp.nn.network import Network
from refbp.verify.cases import CaseSpec
from refbp.verify.tolerances import tolerance_for

V, D, T, N, C = 7, 3, 4, 5, 3  # vocabulary, embedding width, tokens per row, rows, classes


def _tokens(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, T) int64 tokens in which the padding token 0 appears, and (N,) class targets."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, V, (N, T), generator=g)
    idx[:, 0] = 0  # every row starts with the padding token: its row of E is read
    return idx, torch.randint(0, C, (N,), generator=g)


def _embedding_net() -> Network:
    g = torch.Generator().manual_seed(1)
    E = torch.randn(V, D, dtype=torch.float64, generator=g)
    W = torch.randn(C, T * D, dtype=torch.float64, generator=g)
    return Network([Embedding(E, padding_idx=0), Flatten(), Linear(W, torch.zeros(C, dtype=torch.float64))],
                   "cross_entropy")  # fmt: skip


def _converted_embedding_net() -> Network:
    torch.manual_seed(2)
    module = nn.Sequential(nn.Embedding(V, D, padding_idx=0), nn.Flatten(), nn.Tanh(), nn.Linear(T * D, C))
    return refbp.from_torch(module.double(), loss="cross_entropy")


@pytest.mark.parametrize("build", [_embedding_net, _converted_embedding_net], ids=["direct", "from_torch"])
@pytest.mark.parametrize("fd_mode", ["full", "directional"])
def test_padding_row_gradient_zero_by_convention_passes_against_finite_differences(
    build: Callable[[], Network], fd_mode: str
) -> None:
    net = build()
    idx, y = _tokens()
    result = refbp.check(net, idx, y, fd_mode=fd_mode)
    assert result.passed, result.failure_message()
    E_rows = [row for row in result.rows if row.name == "E1"]
    assert {row.reference for row in E_rows} == {"autograd", f"fd-{fd_mode}"}


@pytest.mark.parametrize("build", [_embedding_net, _converted_embedding_net], ids=["direct", "from_torch"])
@pytest.mark.parametrize("fd_mode", ["full", "directional"])
def test_nonzero_padding_row_gradient_fails_against_finite_differences_alone(
    build: Callable[[], Network], fd_mode: str
) -> None:
    net = build()
    idx, y = _tokens()
    grads = net.backward(net.forward(idx), y).as_dict()
    true_derivative = refbp.check(net, idx, y, references=("fd",), fd_mode="full")  # sanity: it passes
    assert true_derivative.passed
    wrong = {**grads, "E1": grads["E1"].clone()}
    wrong["E1"][0] += 0.5  # the padding row gets a gradient torch defines as zero
    result = refbp.check(net, idx, y, grads=wrong, references=("fd",), fd_mode=fd_mode)
    assert not result.passed
    assert [row.name for row in result.failures] == ["E1"]
    assert not refbp.check(net, idx, y, grads=wrong).passed  # and with both references


# ---- dropout without its masks ---------------------------------------------------------------
def _dropout_net() -> Network:
    g = torch.Generator().manual_seed(3)
    W1, W2 = torch.randn(6, 4, dtype=torch.float64, generator=g), torch.randn(2, 6, dtype=torch.float64, generator=g)
    return Network([Linear(W1, None), Elementwise("tanh"), Dropout(0.5, seed=11), Linear(W2, None)], "mse")


def _point() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(4)
    return torch.randn(8, 4, dtype=torch.float64, generator=g), torch.randn(8, 2, dtype=torch.float64, generator=g)


NOISE_WORDS = "refbp drew its own dropout masks; pass the masks your gradients used as noise="


def test_dropout_network_checked_without_its_masks_says_why_it_fails() -> None:
    net, (X, y) = _dropout_net(), _point()
    cache = net.forward(X)
    grads = net.backward(cache, y).as_dict()  # computed with this forward's masks
    result = refbp.check(net, X, y, grads=grads)  # check draws others
    assert not result.passed
    assert NOISE_WORDS in result.failure_message()
    assert "capture_noise" in result.failure_message()
    assert refbp.check(net, X, y, grads=grads, noise=cache.noise).passed


def test_dropout_hint_is_absent_when_the_masks_were_given_or_there_is_no_dropout() -> None:
    net, (X, y) = _dropout_net(), _point()
    cache = net.forward(X)
    grads = net.backward(cache, y).as_dict()
    wrong = {**grads, "W1": 2 * grads["W1"]}
    message = refbp.check(net, X, y, grads=wrong, noise=cache.noise).failure_message()
    assert "W1" in message and NOISE_WORDS not in message
    net.eval()
    grads = net.backward(net.forward(X), y).as_dict()
    message = refbp.check(net, X, y, grads={**grads, "W1": 2 * grads["W1"]}).failure_message()
    assert NOISE_WORDS not in message


@pytest.mark.parametrize(
    ("noise", "error", "words"),
    [
        ({(1,): torch.ones(8, 6, dtype=torch.bool)}, ValueError, "noise[(1,)]"),  # a Linear: no dropout
        ({(9,): torch.ones(8, 6, dtype=torch.bool)}, ValueError, "noise[(9,)]"),  # no layer 9
        ({(3,): torch.ones(8, 6)}, TypeError, "torch.bool"),  # a float mask
        ({(3,): [[True] * 6] * 8}, TypeError, "noise[(3,)]"),  # not a tensor
        ({3: torch.ones(8, 6, dtype=torch.bool)}, TypeError, "layer path"),  # not a path
        ({(3,): torch.ones(8, 5, dtype=torch.bool)}, ValueError, "(8, 6)"),  # the wrong shape
        ([torch.ones(8, 6, dtype=torch.bool)], TypeError, "noise"),  # not a mapping
    ],
)
def test_bad_noise_entries_are_refused_naming_the_entry(noise: object, error: type, words: str) -> None:
    net, (X, y) = _dropout_net(), _point()
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        refbp.check(net, X, y, noise=noise)  # type: ignore[arg-type]
    with pytest.raises(error):
        net.forward(X, noise=noise)  # type: ignore[arg-type]


def test_noise_for_a_dropout_layer_in_eval_mode_is_refused() -> None:
    net, (X, y) = _dropout_net(), _point()
    noise = net.forward(X).noise
    net.eval()
    with pytest.raises(ValueError, match="draws no noise"):
        refbp.check(net, X, y, noise=noise)


# ---- when every gradient fails ----------------------------------------------------------------
ALL_FAIL = "gradients differ: the forward pass or the loss is probably not the same model"


def _mlp_point() -> tuple[refbp.MLP, torch.Tensor, torch.Tensor]:
    net = refbp.MLP.random([3, 5, 2], activations=["gelu", "identity"], loss="mse", seed=0, dtype=torch.float64)
    g = torch.Generator().manual_seed(5)
    return net, torch.randn(6, 3, dtype=torch.float64, generator=g), torch.randn(6, 2, dtype=torch.float64, generator=g)


def test_every_gradient_failing_is_read_as_a_different_model() -> None:
    net, X, y = _mlp_point()
    other = refbp.MLP(net.weights, net.biases, ["relu", "identity"], "mse")  # another activation
    grads = other.backward(other.forward(X), y).as_dict()
    result = refbp.check(net, X, y, grads=grads)
    n = len(result.tensors)
    assert all(not t.passed for t in result.tensors)
    message = result.failure_message()
    assert f"all {n} {ALL_FAIL}" in message and "pass J= to compare losses first" in message
    assert "BatchNorm" not in message


def test_some_gradients_failing_is_not_read_as_a_different_model() -> None:
    net, X, y = _mlp_point()
    grads = net.backward(net.forward(X), y).as_dict()
    message = refbp.check(net, X, y, grads={**grads, "W1": 2 * grads["W1"]}).failure_message()
    assert ALL_FAIL not in message


def test_every_gradient_failing_names_batchnorms_variance_convention_when_there_is_one() -> None:
    g = torch.Generator().manual_seed(6)
    W1, W2 = torch.randn(4, 3, dtype=torch.float64, generator=g), torch.randn(2, 4, dtype=torch.float64, generator=g)
    net = Network([Linear(W1, None), BatchNorm1d(C=4), Elementwise("tanh"), Linear(W2, None)], "mse")
    X, y = torch.randn(6, 3, dtype=torch.float64, generator=g), torch.randn(6, 2, dtype=torch.float64, generator=g)
    grads = net.backward(net.forward(X, update_stats=False), y).as_dict()
    wrong = {name: 1.5 * value for name, value in grads.items()}
    message = refbp.check(net, X, y, grads=wrong).failure_message()
    assert ALL_FAIL in message and "variance" in message and "BatchNorm1d" in message


def test_masks_given_for_some_dropout_layers_only_name_the_others() -> None:
    g = torch.Generator().manual_seed(7)
    W1, W2 = torch.randn(6, 4, dtype=torch.float64, generator=g), torch.randn(2, 6, dtype=torch.float64, generator=g)
    net = Network([Linear(W1, None), Dropout(0.5, seed=1), Elementwise("tanh"), Dropout(0.5, seed=2), Linear(W2, None)],
                  "mse")  # fmt: skip
    X, y = _point()
    cache = net.forward(X)
    grads = net.backward(cache, y).as_dict()
    assert refbp.check(net, X, y, grads=grads, noise=cache.noise).passed
    message = refbp.check(net, X, y, grads=grads, noise={(2,): cache.noise[(2,)]}).failure_message()
    assert NOISE_WORDS in message and "noise= has none for [(4,)]" in message


def test_a_failure_without_a_hint_adds_no_hints_key_to_the_json() -> None:
    net, X, y = _mlp_point()
    grads = net.backward(net.forward(X), y).as_dict()
    result = refbp.check(net, X, y, grads={"W1": 2 * grads["W1"]})
    assert not result.passed and "hints" not in result.to_dict()


def _torch_module_gradients(
    module: nn.Module, net: Network, X: torch.Tensor, y: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The gradients torch's own autograd gives ``module`` (its fused float32 kernels), by refbp name."""
    module.zero_grad()
    nn.functional.cross_entropy(module(X), y).backward()
    named = dict(module.named_parameters())
    grads = {name: named[names[0]].grad for name, names in net.torch_parameter_names().items()}
    assert all(g is not None for g in grads.values())
    return {name: g for name, g in grads.items() if g is not None}


NEAR_MEAN_MODULES: dict[str, Callable[[], nn.Sequential]] = {
    # x - mean cancels: exactly 0 in float64, rounding-sized in torch's float32 kernels
    "LayerNorm over one feature": lambda: nn.Sequential(
        nn.Linear(3, 1), nn.LayerNorm(1), nn.Linear(1, 9), nn.Tanh(), nn.Linear(9, 2)
    ),
    "BatchNorm1d of a feature constant over the batch": lambda: nn.Sequential(
        nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)
    ),
    "GroupNorm of a channel constant over its positions": lambda: nn.Sequential(
        nn.Conv2d(3, 2, 1), nn.GroupNorm(2, 2), nn.Flatten(), nn.Linear(4, 2)
    ),
}


@pytest.mark.parametrize("what", NEAR_MEAN_MODULES)
def test_torch_float32_normalisation_of_a_near_constant_input_is_not_a_false_alarm(what: str) -> None:
    """A normalised value that is exactly 0 in float64 (x equal to its mean) is u (|x| + |mean|) /
    sigma in float32: the allowance must see the operands' rounding, not x_hat's (found by the
    false-positive measurement: dJ/dgamma of a LayerNorm over one feature, 9x its allowance)."""
    flagged = []
    for seed in range(8):
        torch.manual_seed(seed)
        module = NEAR_MEAN_MODULES[what]().train()
        X, y = torch.randn(6, 3) * 3, torch.randint(0, 2, (6,))
        if "GroupNorm" in what:  # each image 2 x 1 pixels, both alike
            X = X[:, :, None, None].expand(6, 3, 2, 1)
        if "BatchNorm1d" in what:  # a unit that ignores its input: its feature is constant over the batch
            first = module[0]
            assert isinstance(first, nn.Linear)
            with torch.no_grad():
                first.weight[0] = 0.0
                first.bias[0] = 1.7
        net = refbp.from_torch(module, loss="cross_entropy")
        result = refbp.check(net, X, y, grads=_torch_module_gradients(module, net, X, y), fd_mode="full")
        if not result.passed:
            flagged.append((seed, result.failure_message()))
    assert not flagged


def test_a_wrong_gamma_gradient_of_a_single_feature_layer_norm_still_fails() -> None:
    torch.manual_seed(0)
    module = NEAR_MEAN_MODULES["LayerNorm over one feature"]().train()
    X, y = torch.randn(6, 3) * 3, torch.randint(0, 2, (6,))
    net = refbp.from_torch(module, loss="cross_entropy")
    grads = _torch_module_gradients(module, net, X, y)
    gamma = next(name for name in grads if name.startswith("gamma"))
    grads[gamma] = grads[gamma] + 1e-3  # the true dJ/dgamma is 0: x_hat = 0 on every row
    result = refbp.check(net, X, y, grads=grads, fd_mode="full")
    assert not result.passed and gamma in result.failure_message()


def _two_pixel_group_norm(seed: int) -> tuple[nn.Sequential, torch.Tensor, torch.Tensor]:
    """A depthwise convolution to 2 pixels per channel, then GroupNorm with one channel per group:
    every group holds two values, whose normalised pair is (-1, +1) whatever they are, so the
    bias gradient through a group whose relu passes both is a sum of terms of size rstd |dJ/dxhat|
    that cancel to ~0 (torch's float32 kernel keeps a rounding of their size)."""
    torch.manual_seed(seed)
    module = nn.Sequential(nn.Conv2d(3, 3, 3, stride=2, groups=3), nn.ReLU(), nn.GroupNorm(3, 3), nn.Flatten(),
                           nn.Linear(6, 4))  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    return module, torch.randn(2, 3, 5, 3, generator=g), torch.randint(0, 4, (2,), generator=g)


def test_torch_float32_group_norm_backward_over_two_value_groups_is_not_a_false_alarm() -> None:
    """Found by the false-positive measurement (a torch CNN, dJ/db1 15x its allowance): the
    oracle now runs GroupNorm's affine kernel as nn.GroupNorm does, so torch's own float32 error
    is part of the allowance."""
    flagged = []
    for seed in (12, 24, 37, 135, 172, 211, 222, 283):  # the seeds of 0..299 flagged before: 10 of 300
        module, X, y = _two_pixel_group_norm(seed)
        net = refbp.from_torch(module, loss="cross_entropy")
        result = refbp.check(net, X, y, grads=_torch_module_gradients(module, net, X, y), fd_mode="full")
        if not result.passed:
            flagged.append((seed, result.failure_message()))
    assert not flagged


def test_a_wrong_bias_gradient_before_a_two_value_group_norm_still_fails() -> None:
    module, X, y = _two_pixel_group_norm(0)
    net = refbp.from_torch(module, loss="cross_entropy")
    grads = _torch_module_gradients(module, net, X, y)
    # the true dJ/db1 is ~0 (each two-value group normalises to (-1, +1)); the allowance here is
    # a few 1e-7, what torch's float32 kernel leaves: an error of 1e-5 is far above it
    grads["b1"] = grads["b1"] + 1e-5
    result = refbp.check(net, X, y, grads=grads, fd_mode="full")
    assert not result.passed and "b1" in result.failure_message()


def test_a_layer_norm_over_one_feature_gives_an_exact_zero_gradient_as_autograd_does() -> None:
    """Found by the false-positive measurement (float64, dJ/da1 = 1.5e-11 against autograd's 0):
    over one feature dJ/dxhat - mean_k(dJ/dxhat) is exactly 0, and a fused multiply-add of
    dJ/dy o gamma with the rounded mean left that product's rounding, times rstd = 1/sqrt(eps)."""
    from refbp.verify.specs import spec_from_dict

    spec = {"batch": 3, "device": "cpu", "dtype": "float64", "input": {"length": 2, "vocab": 4},
            "layers": [["embedding", 1], ["layernorm", {"bias": False}], ["flatten"], ["batchnorm", {}],
                       ["linear", 7], ["batchnorm", {"affine": False}], ["linear", 3]],
            "loss": "cross_entropy", "seed": 1333660750, "training": True, "weight_decay": 0.0}  # fmt: skip
    case = spec_from_dict(spec).build()
    grads = case.net.backward(case.net.forward(case.X), case.y).as_dict()
    assert float(grads["a1"].abs().max()) == 0.0 and float(grads["E1"].abs().max()) == 0.0
    result = refbp.check(case.net, case.X, case.y, seed=case.spec.seed)
    assert result.passed, result.failure_message()


def test_the_conditioning_probes_run_only_where_some_entry_needs_the_allowance(monkeypatch: pytest.MonkeyPatch) -> None:
    """check widens its tolerance by the conditioning allowance only when some entry is not
    verified without it (the allowance only widens, so elsewhere it changes no verdict and no
    count): a well-conditioned point runs none of its probes (several autograd runs); a point
    that needs it is probed, and passes with the allowance in its rows."""
    check_module = importlib.import_module("refbp.verify.check")
    real = check_module.conditioning_allowance
    calls: list[int] = []

    def probed(*args: Any, **kwargs: Any) -> dict[str, float]:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(check_module, "conditioning_allowance", probed)
    case = CaseSpec(dims=(4, 6, 3), activations=("tanh", "identity"), loss="mse", seed=0).build()
    assert refbp.check(case.net, case.X, case.y).passed and calls == []

    torch.manual_seed(0)  # torch's float32 kernels on a LayerNorm over one feature: x - mean cancels
    module = NEAR_MEAN_MODULES["LayerNorm over one feature"]().train()
    X, y = torch.randn(6, 3) * 3, torch.randint(0, 2, (6,))
    net = refbp.from_torch(module, loss="cross_entropy")
    grads = _torch_module_gradients(module, net, X, y)
    assert not refbp.check(net, X, y, grads=grads, fd_mode="full", tolerance=tolerance_for(torch.float32)).passed
    assert calls == []  # an explicit tolerance: no allowance, no probes
    result = refbp.check(net, X, y, grads=grads, fd_mode="full")
    assert result.passed, result.failure_message()
    assert calls == [1] and any(row.widened > 0 for row in result.rows)
