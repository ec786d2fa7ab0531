"""Lean mode (a training step) against the full, teaching mode, and BatchNorm's unbiased option.

A normalisation run with ``keep_intermediates=False`` keeps mu and rstd (NormStats) instead of
a float64 xhat, computes in the input's dtype, and rebuilds xhat in its backward pass: its
output, its gradients and its running statistics must equal the full mode's to that dtype's
rounding. GELU's derivative, rewritten in fewer passes, must still equal autograd's.

``BatchNorm1d(unbiased=True)`` / ``BatchNorm2d(unbiased=True)`` normalise by the Bessel-corrected
batch variance (makemore's BatchNorm): both modes must equal autograd on that function written
here from torch operations, refbp.check must pass it, and a batch of one is refused.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import refbp
from refbp.nn.chunks import CHUNK_BYTES, CUDA_SCALE, chunk_budget, chunks
from refbp.nn.layer import BackwardContext, ForwardContext, Layer, LayerGradients
from refbp.nn.layernorm import NormStats
from refbp.nn.layers import BatchNorm1d, BatchNorm2d, Elementwise, GroupNorm, LayerNorm, Linear
from refbp.nn.network import Network
from refbp.nn.transformer import RowLayerNorm, RowStats

DTYPE_ROUNDING = {torch.float32: 64 * 2.0**-23, torch.float64: 64 * 2.0**-52}
"""Lean and full mode compute the same formulas in different orders (and the full mode
accumulates float32 in float64): at these sizes (rows of at most 60 values) they differ by a
few dozen roundings of the largest term. 64 units in the last place of the largest entry of
each tensor, relative and absolute, is that margin; a missing term of any formula is
thousands of times larger."""

FLOAT64_ROUNDING = 1e-12
"""refbp against the same function written with torch operations, both float64, values of order
1: a few thousand roundings (2.2e-16) apart at most; a wrong coefficient is off by percents."""

C = 6
"""Channels (features) of the test layers: small, and divisible by the 3 groups of GroupNorm."""


def _params(dtype: torch.dtype, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """gamma, beta (C,) ~ N(0, 1); running mean ~ N(0, 1), running variance in [0.5, 1.5)."""
    g = torch.Generator().manual_seed(seed)
    gamma, beta, mean = (torch.randn(C, generator=g, dtype=torch.float64).to(dtype) for _ in range(3))
    var = (torch.rand(C, generator=g, dtype=torch.float64) + 0.5).to(dtype)
    return gamma, beta, mean, var


def _eval(cls: type[BatchNorm1d] | type[BatchNorm2d], dtype: torch.dtype, seed: int) -> Layer:
    """A BatchNorm in eval mode, with running statistics of its own."""
    gamma, beta, mean, var = _params(dtype, seed)
    layer = cls(gamma, beta, running_mean=mean, running_var=var)
    layer.set_training(False)
    return layer


LAYERS: dict[str, Callable[[torch.dtype], tuple[Layer, tuple[int, ...]]]] = {
    "LayerNorm": lambda dt: (LayerNorm(*_params(dt, 0)[:2]), (3, 4, C)),
    "LayerNorm gamma only": lambda dt: (LayerNorm(_params(dt, 0)[0]), (5, C)),
    "LayerNorm no affine": lambda dt: (LayerNorm(d=C), (5, C)),
    "RowLayerNorm (the GPT's)": lambda dt: (RowLayerNorm(*_params(dt, 0)[:2]), (3, 4, C)),
    "RowLayerNorm no affine": lambda dt: (RowLayerNorm(None, None, d=C), (5, C)),
    "BatchNorm1d train": lambda dt: (BatchNorm1d(*_params(dt, 1)[:2]), (7, C)),
    "BatchNorm1d eval": lambda dt: (_eval(BatchNorm1d, dt, 1), (7, C)),
    "BatchNorm1d no affine": lambda dt: (BatchNorm1d(C=C), (7, C)),
    "BatchNorm1d unbiased": lambda dt: (BatchNorm1d(*_params(dt, 2)[:2], unbiased=True), (4, C)),
    "BatchNorm2d train": lambda dt: (BatchNorm2d(*_params(dt, 3)[:2]), (2, C, 3, 5)),
    "BatchNorm2d eval": lambda dt: (_eval(BatchNorm2d, dt, 3), (2, C, 3, 5)),
    "BatchNorm2d unbiased": lambda dt: (BatchNorm2d(*_params(dt, 4)[:2], unbiased=True), (2, C, 2, 2)),
    "GroupNorm": lambda dt: (GroupNorm(3, *_params(dt, 5)[:2]), (2, C, 3, 4)),
    "GroupNorm no affine": lambda dt: (GroupNorm(2, C=C), (2, C, 5)),
}
"""Each normalisation whose lean mode changed, in each configuration of its parameters and mode."""


def _point(shape: tuple[int, ...], dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """x with a mean of 1 and a spread of 3 (the statistics matter), and dJ/dy ~ N(0, 1)."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(shape, generator=g, dtype=torch.float64).mul_(3.0).add_(1.0)
    return x.to(dtype), torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)


def _step(layer: Layer, x: Tensor, G: Tensor, *, lean: bool) -> tuple[Tensor, LayerGradients, object]:
    """One layer's forward and backward as the network loop runs them: the full mode, or a lean
    training step (the loop owns dJ/dy and releases the cache)."""
    y, cache = layer.forward(x, ForwardContext(keep_intermediates=not lean), (1,))
    ctx = BackwardContext((1,), keep_intermediates=not lean, overwrite=lean, release=lean)
    grads = layer.backward(G.clone(), x, y, cache, ctx)
    return y, grads, cache


def _assert_rounding_close(
    lean: Tensor, full: Tensor, name: str, computed_in: torch.dtype | None = None, *, layers: int = 1
) -> None:
    """Equal to the rounding of the dtype the values were computed in (default: their own),
    through ``layers`` layers: each may amplify the difference of the one above it a few times."""
    tol = DTYPE_ROUNDING[computed_in or full.dtype] * 4 ** (layers - 1)
    scale = max(float(full.abs().max()), 1.0)
    torch.testing.assert_close(lean, full, rtol=tol, atol=tol * scale, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", list(LAYERS))
def test_lean_step_equals_full_mode_to_rounding(name: str, dtype: torch.dtype) -> None:
    full_layer, shape = LAYERS[name](dtype)
    lean_layer, _ = LAYERS[name](dtype)
    x, G = _point(shape, dtype)
    y_full, full, _ = _step(full_layer, x, G, lean=False)
    y_lean, lean, cache = _step(lean_layer, x, G, lean=True)
    assert isinstance(cache, (NormStats, RowStats))  # mu and rstd, no xhat ...
    assert cache.rstd.dtype == dtype  # ... in the input's dtype
    _assert_rounding_close(y_lean, y_full, "y")
    assert lean.dJ_dx is not None and full.dJ_dx is not None
    assert lean.dJ_dx.dtype == dtype
    _assert_rounding_close(lean.dJ_dx, full.dJ_dx, "dJ/dx")
    assert set(lean.params) == set(full.params)
    for kind in full.params:
        assert lean.params[kind].dtype == dtype
        _assert_rounding_close(lean.params[kind], full.params[kind], f"dJ/d{kind}")
    for layer_state in ("running_mean", "running_var"):  # updated alike in both modes
        if hasattr(full_layer, layer_state) and getattr(full_layer, layer_state) is not None:
            lean_state, full_state = getattr(lean_layer, layer_state), getattr(full_layer, layer_state)
            _assert_rounding_close(lean_state, full_state, layer_state, dtype)  # (kept in float64 without gamma)


@pytest.mark.parametrize("name", ["LayerNorm", "BatchNorm2d train", "GroupNorm"])
def test_lean_cache_keeps_one_mean_and_rstd_per_normalised_group(name: str) -> None:
    layer, shape = LAYERS[name](torch.float32)
    x, _ = _point(shape, torch.float32)
    _, cache = layer.forward(x, ForwardContext(keep_intermediates=False), (1,))
    assert isinstance(cache, NormStats)
    groups = {"LayerNorm": x.numel() // C, "BatchNorm2d train": C, "GroupNorm": shape[0] * 3}[name]
    assert cache.mu.numel() == cache.rstd.numel() == groups
    assert cache.rstd.dtype == torch.float32  # the input's dtype, not a float64 accumulation
    layer.release(cache)
    assert cache.mu.numel() == cache.rstd.numel() == 0


def test_lean_forward_with_full_backward_reports_dJ_dxhat() -> None:
    full_layer, shape = LAYERS["BatchNorm1d train"](torch.float64)
    lean_layer, _ = LAYERS["BatchNorm1d train"](torch.float64)
    x, G = _point(shape, torch.float64)
    y, cache = lean_layer.forward(x, ForwardContext(keep_intermediates=False), (1,))
    mixed = lean_layer.backward(G, x, y, cache, BackwardContext((1,)))
    _, full, _ = _step(full_layer, x, G, lean=False)
    for key, value in full.intermediates.items():
        _assert_rounding_close(mixed.intermediates[key], value, str(key))
    assert mixed.dJ_dx is not None and full.dJ_dx is not None
    _assert_rounding_close(mixed.dJ_dx, full.dJ_dx, "dJ/dx")
    torch.testing.assert_close(G, _point(shape, torch.float64)[1], rtol=0, atol=0)  # dJ/dy, not its owner, untouched


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_network_training_step_gradients_equal_full_mode(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(3)
    W1, W2 = (torch.randn(C, C, generator=g, dtype=torch.float64).to(dtype) for _ in range(2))
    gamma, beta, _, _ = _params(dtype, 9)
    layers: list[Layer] = [Linear(W1), LayerNorm(gamma, beta), Elementwise("gelu"), BatchNorm1d(C=C), Linear(W2)]
    net = Network(layers, "mse")
    X, y = (torch.randn(8, C, generator=g, dtype=torch.float64).to(dtype) for _ in range(2))
    full = net.backward(net.forward(X, update_stats=False), y).as_dict()
    lean = net.backward(net.forward(X, keep_intermediates=False, update_stats=False), y,
                        keep_intermediates=False, release_cache=True).as_dict()  # fmt: skip
    assert set(lean) == {"W1", "gamma2", "beta2", "W5", "X"}
    for name, value in lean.items():
        _assert_rounding_close(value, full[name], name, layers=len(layers))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_gelu_derivative_matches_autograd(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(11)
    z = torch.linspace(-9.0, 9.0, 301, dtype=torch.float64).to(dtype).reshape(7, 43)
    G = torch.randn(z.shape, generator=g, dtype=torch.float64).to(dtype)
    leaf = z.clone().requires_grad_(True)
    F.gelu(leaf).backward(G)
    manual = refbp.nn.activations.get_activation("gelu").chain(z, G.clone())
    assert leaf.grad is not None
    _assert_rounding_close(manual, leaf.grad, "dJ/dz")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_gelu_derivative_is_exact_to_a_few_ulps_at_zero_and_subnormals_and_propagates_nan(dtype: torch.dtype) -> None:
    """float32 takes Phi(z) from torch's GELU kernel divided by z (refbp.nn.activations._normal_cdf):
    the 0/0 at z = 0 and the subnormal z Phi(z) of the tiniest z are where a quotient goes wrong."""
    info = torch.finfo(dtype)
    magnitudes = torch.logspace(math.log10(info.smallest_normal) - 8, 1, 2001, dtype=torch.float64).to(dtype)
    z = torch.cat([magnitudes, -magnitudes, torch.zeros(1, dtype=dtype), -torch.zeros(1, dtype=dtype)])
    z = z[(z != 0) | (torch.arange(z.numel()) >= 2 * magnitudes.numel())]  # the ones that underflowed to 0 go
    manual = refbp.nn.activations.get_activation("gelu").chain(z, torch.ones_like(z)).double()
    x = z.double()
    exact = torch.special.ndtr(x) + x * torch.exp(-x * x / 2) / math.sqrt(2 * math.pi)  # Phi(z) + z phi(z)
    assert (manual - exact).abs().max().item() <= 8 * info.eps, (manual - exact).abs().max().item()
    assert manual[z == 0].eq(0.5).all()
    special = torch.tensor([math.nan, math.inf, -math.inf, 1.0], dtype=dtype)
    leaf = special.clone().requires_grad_(True)
    F.gelu(leaf).backward(torch.ones_like(special))
    assert leaf.grad is not None
    ours = refbp.nn.activations.get_activation("gelu").chain(special, torch.ones_like(special))
    assert ours[0].isnan() and ours[1:].isnan().tolist() == leaf.grad[1:].isnan().tolist(), (ours, leaf.grad)


# ---- BatchNorm's unbiased option -------------------------------------------------------------
def _unbiased_reference(x: Tensor, gamma: Tensor, beta: Tensor, eps: float = 1e-5) -> Tensor:
    """makemore's BatchNorm from torch operations: (x - mean) / sqrt(var_unbiased + eps), per
    channel over every other dimension, then gamma and beta."""
    over = [0, *range(2, x.dim())]
    view = (1, -1, *([1] * (x.dim() - 2)))
    mean = x.mean(dim=over, keepdim=True)
    var = ((x - mean) ** 2).sum(dim=over, keepdim=True) / (x.numel() // x.shape[1] - 1)
    return (x - mean) / torch.sqrt(var + eps) * gamma.view(view) + beta.view(view)


@pytest.mark.parametrize("lean", [False, True], ids=["full", "lean"])
@pytest.mark.parametrize("name", ["BatchNorm1d unbiased", "BatchNorm2d unbiased"])
def test_unbiased_batchnorm_equals_autograd_on_torch_ops(name: str, lean: bool) -> None:
    layer, shape = LAYERS[name](torch.float64)
    gamma, beta = layer.params["gamma"], layer.params["beta"]
    x, G = _point(shape, torch.float64)
    leaves = [t.clone().requires_grad_(True) for t in (x, gamma, beta)]
    y_ref = _unbiased_reference(leaves[0], leaves[1], leaves[2])
    y_ref.backward(G)
    y, grads, _ = _step(layer, x, G, lean=lean)
    torch.testing.assert_close(y, y_ref.detach(), rtol=FLOAT64_ROUNDING, atol=FLOAT64_ROUNDING)
    for got, leaf in zip((grads.dJ_dx, grads.params["gamma"], grads.params["beta"]), leaves, strict=True):
        torch.testing.assert_close(got, leaf.grad, rtol=FLOAT64_ROUNDING, atol=FLOAT64_ROUNDING)
    n = x.numel() // C
    over = [0, *range(2, x.dim())]
    expected_var = 0.9 * torch.ones(C, dtype=torch.float64) + 0.1 * x.var(dim=over, unbiased=True)
    assert isinstance(layer, (BatchNorm1d, BatchNorm2d)) and layer.running_var is not None
    torch.testing.assert_close(
        layer.running_var, expected_var, rtol=FLOAT64_ROUNDING, atol=FLOAT64_ROUNDING
    )  # torch's update, unchanged
    assert n > 1


def test_unbiased_batchnorm_is_not_torch_batchnorm() -> None:
    layer, shape = LAYERS["BatchNorm1d unbiased"](torch.float64)
    x, _ = _point(shape, torch.float64)
    y, _ = layer.forward(x, ForwardContext(), (1,))
    biased = F.batch_norm(x, None, None, layer.params["gamma"], layer.params["beta"], True)
    assert float((y - biased).abs().max()) > 1e-3  # a batch of 4: the two variances differ by a third


@pytest.mark.parametrize("cls", [BatchNorm1d, BatchNorm2d])
def test_unbiased_batchnorm_passes_refbp_check(cls: type[BatchNorm1d] | type[BatchNorm2d]) -> None:
    g = torch.Generator().manual_seed(5)
    if cls is BatchNorm1d:
        net = Network(
            [Linear(torch.randn(3, 4, generator=g, dtype=torch.float64)), BatchNorm1d(C=3, unbiased=True)], "mse"
        )
        X = torch.randn(5, 4, generator=g, dtype=torch.float64)
    else:
        gamma, beta = torch.randn(3, generator=g, dtype=torch.float64), torch.randn(3, generator=g, dtype=torch.float64)
        net = Network([BatchNorm2d(gamma, beta, unbiased=True)], "mse")
        X = torch.randn(2, 3, 2, 2, generator=g, dtype=torch.float64)
    y = torch.randn(net.torch_forward(X, _oracle_params(net), {}).shape, generator=g, dtype=torch.float64)
    refbp.check(net, X, y).raise_if_failed()


def _oracle_params(net: Network) -> refbp.nn.layer.Params:
    return refbp.nn.layer.Params(net.oracle_params())


def test_unbiased_batchnorm_refuses_one_row_and_to_torch() -> None:
    layer = BatchNorm1d(C=3, unbiased=True)
    with pytest.raises(ValueError, match=r"needs a batch of N >= 2 rows in training mode \(the unbiased variance "
                                         r"divides by N - 1 = 0\), got shape \(1, 3\)"):  # fmt: skip
        layer.forward(torch.zeros(1, 3, dtype=torch.float64), ForwardContext(), (1,))
    refused = r"BatchNorm1d\(3, batch statistics, unbiased variance, no affine\) has no torch module: torch\.nn\."
    with pytest.raises(ValueError, match=refused + r"BatchNorm1d normalises by the biased variance"):
        layer.to_torch()
    with pytest.raises(ValueError, match=r"BatchNorm2d\(3, .*unbiased variance.*\) has no torch module"):
        BatchNorm2d(C=3, unbiased=True).to_torch()
    with pytest.raises(TypeError, match=r"unbiased=1 must be True or False"):
        BatchNorm1d(C=3, unbiased=1)  # type: ignore[arg-type]
    layer.set_training(False)  # eval mode: the running statistics, and one row is fine
    y, _ = layer.forward(torch.zeros(1, 3, dtype=torch.float64), ForwardContext(), (1,))
    assert y.shape == (1, 3)


@pytest.mark.parametrize("n, per_item", [(1, 1), (7, 3 << 20), (1000, 4096), (64, 1 << 18)])
def test_chunks_cover_every_item_once_within_the_devices_budget(n: int, per_item: int) -> None:
    """Chunks tile range(n) in order; each holds at most the device's budget (or one item); a
    CUDA device's budget is CUDA_SCALE times the CPU's (launch-bound steps, large memory)."""
    assert (
        chunk_budget(torch.device("cuda")) == CUDA_SCALE * chunk_budget(torch.device("cpu")) == CUDA_SCALE * CHUNK_BYTES
    )
    for device in (None, torch.device("cpu"), torch.device("cuda")):
        parts = chunks(n, per_item, device=device)
        assert [i for part in parts for i in range(n)[part]] == list(range(n))
        sizes = [part.stop - part.start for part in parts]
        assert all(s * per_item <= chunk_budget(device) or s == 1 for s in sizes)
        assert all(s == sizes[0] for s in sizes[:-1])  # every chunk but the last full


@pytest.mark.parametrize("name", ["GroupNorm", "BatchNorm2d train"])
@pytest.mark.parametrize("lean", [True, False], ids=["lean", "full"])
def test_spatial_norms_take_channels_last_tensors_as_torch_does(name: str, lean: bool) -> None:
    """A channels-last x and dJ/dy (a CNN trained in that memory format): the same gradients as
    torch's module, in the lean step (which works on the groups' rows) and in full mode."""
    torch.manual_seed(0)
    module = nn.GroupNorm(2, 4) if name == "GroupNorm" else nn.BatchNorm2d(4)
    module = module.double().train()
    with torch.no_grad():
        module.weight.uniform_(0.5, 1.5)
        module.bias.uniform_(-0.5, 0.5)
    x = torch.randn(3, 4, 5, 6, dtype=torch.float64).to(memory_format=torch.channels_last)
    G = torch.randn(3, 4, 5, 6, dtype=torch.float64).to(memory_format=torch.channels_last)
    net = refbp.from_torch(nn.Sequential(module), loss="mse")
    cache = net.forward(x, keep_intermediates=not lean, update_stats=False)
    grads = net.backward_from(cache, G, intermediates=not lean).torch_named()
    leaf = x.clone().requires_grad_(True)
    module(leaf).backward(G)
    torch.testing.assert_close(grads["input"], leaf.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grads["0.weight"], module.weight.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grads["0.bias"], module.bias.grad, rtol=1e-10, atol=1e-12)
