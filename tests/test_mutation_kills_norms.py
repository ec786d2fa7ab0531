"""The normalisations' training step (lean mode: mu and rstd kept, xhat rebuilt) against torch's
modules, in the configurations mutation testing of the changed norm code (scripts/mutation.py) found
loose. Each test drives refbp's layer as the training loop does,

    y, stats = layer.forward(x, ForwardContext(keep_intermediates=False), path)
    grads    = layer.backward(dJ_dy, x, y, stats, BackwardContext(path, keep_intermediates=False,
                              overwrite=True, release=True))

with every warning an error, and holds y, dJ/dx and the parameters' gradients to torch.nn.BatchNorm1d,
BatchNorm2d and GroupNorm under autograd. Between them they reach both routes of
refbp.nn.layernorm.scale_shift: one addcmul for factors along the last dimension (BatchNorm1d on
(N, C), GroupNorm with one channel), a product then a sum for per-channel factors (BatchNorm2d,
GroupNorm); a step must not warn, as torch does when an out= tensor of the wrong shape is resized."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import Tensor

from refbp.nn.batchnorm import BatchNorm1d
from refbp.nn.layer import BackwardContext, ForwardContext, Layer
from refbp.nn.layernorm import NormStats
from refbp.nn.norm2d import BatchNorm2d, GroupNorm

from .test_mutation_kills_layers import _torch_grads


def _lean_step(layer: Layer, x: Tensor, G: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """refbp's training step: the lean forward, then the backward that may overwrite dJ/dy and releases.
    It must warn about nothing: a warning (torch's about an out= tensor of the wrong shape, resized)
    would reach the user at every step."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y, stats = layer.forward(x, ForwardContext(keep_intermediates=False), (1,))
        assert isinstance(stats, NormStats)
        ctx = BackwardContext((1,), keep_intermediates=False, overwrite=True, release=True)
        got = layer.backward(G.clone(), x, y, stats, ctx)
    assert got.dJ_dx is not None
    return y, got.dJ_dx, dict(got.params)


def _assert_step_is_torch(layer: Layer, module: torch.nn.Module, x: Tensor, G: Tensor) -> None:
    want_y, want_dx, want_params = _torch_grads(module, x, G)
    y, dJ_dx, params = _lean_step(layer, x, G)
    assert y.dtype == dJ_dx.dtype == x.dtype and y.shape == dJ_dx.shape == x.shape
    torch.testing.assert_close(y, want_y)
    torch.testing.assert_close(dJ_dx, want_dx)
    assert set(params) == set(want_params)
    for kind, want in want_params.items():
        torch.testing.assert_close(params[kind], want)


def _affine(module: torch.nn.Module, C: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """gamma in [0.5, 1.5) and beta in [-2, 2), set on the module; refbp's own copies."""
    weight, bias = module.weight, module.bias
    assert isinstance(weight, Tensor) and isinstance(bias, Tensor)
    with torch.no_grad():
        weight.copy_(torch.rand(C, generator=gen, dtype=torch.float64) + 0.5)
        bias.copy_(4 * torch.rand(C, generator=gen, dtype=torch.float64) - 2)
    return weight.detach().clone(), bias.detach().clone()


def _point(shape: tuple[int, ...], gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """x whose channels differ in centre and spread, and a dJ/dy with a non-zero mean."""
    C = shape[1]
    per_channel = (1, C, *([1] * (len(shape) - 2)))
    centre = torch.linspace(-2.0, 3.0, C, dtype=torch.float64).view(per_channel)
    spread = torch.linspace(0.5, 2.5, C, dtype=torch.float64).view(per_channel)
    x = centre + spread * torch.randn(shape, generator=gen, dtype=torch.float64)
    G = 0.7 + torch.randn(shape, generator=gen, dtype=torch.float64)
    return x, G


@pytest.mark.parametrize(
    ("layer_type", "module_type", "shape", "seed"),
    [(BatchNorm1d, torch.nn.BatchNorm1d, (5, 3), 71), (BatchNorm2d, torch.nn.BatchNorm2d, (2, 3, 3, 2), 72)],
    ids=["1d", "2d"],
)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_lean_batchnorm_step_with_affine_is_torch(
    layer_type: type[BatchNorm1d] | type[BatchNorm2d],
    module_type: type[torch.nn.BatchNorm1d] | type[torch.nn.BatchNorm2d],
    shape: tuple[int, ...],
    seed: int,
    training: bool,
) -> None:
    # y = s x + shift per feature (s = gamma rstd): on (N, C) the factors vary along the last dimension
    # only (one addcmul); BatchNorm2d's per-channel factors take the product and the sum.
    gen = torch.Generator().manual_seed(seed)
    C = 3
    module = module_type(C, eps=0.1, momentum=0.2, dtype=torch.float64)
    gamma, beta = _affine(module, C, gen)
    assert module.running_mean is not None and module.running_var is not None
    with torch.no_grad():
        module.running_mean.copy_(torch.linspace(-1.0, 1.0, C, dtype=torch.float64))
        module.running_var.copy_(torch.linspace(0.5, 2.0, C, dtype=torch.float64))
    layer = layer_type(
        gamma, beta, C=C, eps=0.1, momentum=0.2,
        running_mean=module.running_mean.clone(), running_var=module.running_var.clone(),
    )  # fmt: skip
    layer.set_training(training)
    module.train(training)
    x, G = _point(shape, gen)
    _assert_step_is_torch(layer, module, x, G)


@pytest.mark.parametrize(
    "groups, shape",
    [(1, (2, 4, 3, 2)), (2, (2, 4, 3, 2)), (4, (2, 4, 5)), (2, (1, 4, 3)), (1, (1, 1, 6)), (3, (2, 6, 2, 2))],
    ids=["one-group", "images", "channel-groups", "one-image", "one-channel", "three-groups"],
)
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "none"])
def test_lean_groupnorm_step_is_torch(groups: int, shape: tuple[int, ...], affine: bool) -> None:
    # Groups of several channels, one channel, one group, a single image and a single channel: each
    # (image, channel)'s sums and each group's factors must land on that group's channels, and dJ/dx,
    # written into the step's work buffer viewed as (N, C, positions), without torch's warning that an
    # out= tensor of another shape was resized.
    gen = torch.Generator().manual_seed(73)
    C = shape[1]
    module = torch.nn.GroupNorm(groups, C, eps=0.1, affine=affine, dtype=torch.float64)
    gamma, beta = _affine(module, C, gen) if affine else (None, None)
    layer = GroupNorm(groups, gamma, beta, C=C, eps=0.1)
    x, G = _point(shape, gen)
    _assert_step_is_torch(layer, module, x, G)
