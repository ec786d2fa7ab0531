"""Properties of the layer modules (normalisations, attention, the transformer block) that the
broad property tests leave loose: found by mutation testing (scripts/mutation.py), each checked
against torch itself or against the error messages users read. Apart from tests/test_mutation_kills.py
(the MLP's modules); both are in setup.cfg's mutmut test selection, and mutmut re-collects the whole
selection (and forgets every result) when that list changes, so new layer kills go here."""

from __future__ import annotations

import copy
import re
import warnings
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from refbp.nn import chunks as refbp_chunks
from refbp.nn.attention import CausalSelfAttention, TorchCausalSelfAttention, softmax_backward
from refbp.nn.batchnorm import BatchNorm1d, channel_square_sum, channel_sum, unbiased_batch_norm
from refbp.nn.keys import Key
from refbp.nn.layer import BackwardContext, ForwardContext, Layer, Params, SecondContext, Tap
from refbp.nn.layernorm import LayerNorm, NormCache, NormStats, normalised
from refbp.nn.linear import Linear
from refbp.nn.network import Network
from refbp.nn.norm2d import BatchNorm2d, GroupNorm
from refbp.nn.registry import convert_module
from refbp.nn.transformer import Block, RowLayerNorm, RowStats, TorchBlock, TorchMLP, gelu_form
from refbp.nn.validation import MAX_SEED, describe

from . import nanogpt_reference


# ---- LayerNorm ------------------------------------------------------------------------------------
@pytest.mark.parametrize("d", [2, 3, 5])
def test_layernorm_row_scale_is_what_torch_divides_each_row_by(d: int) -> None:
    # The finite-difference verifier's scale of a LayerNorm row is sqrt(biased variance + eps): x - mean,
    # divided by it, is torch's layer_norm, row by row (so the scale follows the last dimension).
    gen = torch.Generator().manual_seed(d)
    x = torch.randn(3, 4, d, dtype=torch.float64, generator=gen) * torch.tensor([0.5, 2.0, 7.0, 0.1]).view(1, 4, 1)
    layer = LayerNorm(d=d, eps=0.1)
    scale = layer.pieces.scale
    assert scale is not None
    s = scale(x)
    assert s.shape == x.shape
    torch.testing.assert_close((x - x.mean(-1, keepdim=True)) / s, F.layer_norm(x, (d,), eps=0.1))


def test_single_feature_layernorm_row_scale_is_infinite_as_torch_output_is_constant() -> None:
    # One feature: torch normalises every value to 0, so nothing curves; the scale is infinite.
    x = torch.linspace(-5, 5, 11, dtype=torch.float64).view(11, 1)
    assert torch.equal(F.layer_norm(x, (1,)), torch.zeros_like(x))
    scale = LayerNorm(d=1).pieces.scale
    assert scale is not None
    assert torch.isinf(scale(x)).all()


def test_layernorm_without_gamma_names_what_it_needs() -> None:
    with pytest.raises(
        ValueError, match=r"^LayerNorm: beta without gamma is not a torch\.nn\.LayerNorm; give gamma too$"
    ):
        LayerNorm(None, torch.zeros(3))
    with pytest.raises(ValueError, match=r"^LayerNorm without gamma needs d, the normalised size$"):
        LayerNorm()


def test_a_new_layernorm_is_in_training_mode_as_torch_module_is() -> None:
    assert LayerNorm(d=3).training is torch.nn.LayerNorm(3).training is True
    assert Network([LayerNorm(d=3)], "mse").training is True


def _torch_layernorm(
    x: Tensor, G: Tensor, gamma: Tensor | None, beta: Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """torch's y, dJ/dx, dJ/dgamma and dJ/dbeta of F.layer_norm for dJ/dy = G."""
    leaves = [t.clone().requires_grad_() if t is not None else None for t in (x, gamma, beta)]
    y = F.layer_norm(leaves[0], (x.shape[-1],), leaves[1], leaves[2])  # type: ignore[arg-type]
    y.backward(G)
    grads = [t.grad if t is not None else None for t in leaves]
    assert grads[0] is not None
    return y.detach(), grads[0], grads[1], grads[2]


def test_float32_layernorm_of_nearly_constant_rows_is_float64_torch_rounded_once() -> None:
    # Rows of nearly equal numbers: x - mean cancels most of x's digits. The module promises the
    # statistics and dJ/dx are computed in float64 and rounded once, so the float32 output and dJ/dx
    # are torch's float64 values to a few float32 roundings (float32 arithmetic is off ~1e-5).
    gen = torch.Generator().manual_seed(0)
    for d in (2, 3, 8):
        x = (1 + 1e-3 * torch.randn(5, d, generator=gen, dtype=torch.float64)).float()
        G = torch.randn(5, d, generator=gen).float()
        gamma, beta = torch.rand(d, generator=gen).float() + 0.5, torch.randn(d, generator=gen).float()
        net = Network([LayerNorm(gamma, beta)], "mse")
        cache = net.forward(x)
        grads = net.backward_from(cache, G).as_dict()
        y64, dx64, _, _ = _torch_layernorm(x.double(), G.double(), gamma.double(), beta.double())
        ulp = 2.0**-23
        for got, want in ((cache.y_hat, y64), (grads["X"], dx64)):
            assert got.dtype == torch.float32
            torch.testing.assert_close(got.double(), want, rtol=0, atol=4 * ulp * float(want.abs().max()))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_lean_half_precision_layernorm_computes_in_float32_as_torch(dtype: torch.dtype) -> None:
    # Rows far from 0: half-precision arithmetic would lose x - mean; torch's CPU kernel computes in float32.
    gen = torch.Generator().manual_seed(1)
    d = 64
    x = (50 + torch.randn(4, d, generator=gen)).to(dtype)
    gamma, beta = (torch.rand(d, generator=gen) + 0.5).to(dtype), torch.randn(d, generator=gen).to(dtype)
    y, _ = LayerNorm(gamma, beta).forward(x, ForwardContext(keep_intermediates=False), (1,))
    assert y.dtype == dtype
    torch.testing.assert_close(y, F.layer_norm(x, (d,), gamma, beta))


@pytest.mark.parametrize("lean", [False, True], ids=["full", "lean"])
@pytest.mark.parametrize("affine", [(True, True), (True, False), (False, False)], ids=["affine", "no-bias", "none"])
def test_layernorm_parameter_gradients_without_dJ_dx_equal_torch(lean: bool, affine: tuple[bool, bool]) -> None:
    # need_dx=False (the input needs no gradient): the parameters' gradients are torch's all the same,
    # and with keep_intermediates=False the layer reports no intermediates (an empty dict).
    gen = torch.Generator().manual_seed(2)
    d = 4
    x, G = (
        torch.randn(3, 2, d, generator=gen, dtype=torch.float64),
        torch.randn(3, 2, d, generator=gen, dtype=torch.float64),
    )
    gamma = torch.rand(d, generator=gen, dtype=torch.float64) + 0.5 if affine[0] else None
    beta = torch.randn(d, generator=gen, dtype=torch.float64) if affine[1] else None
    layer = LayerNorm(gamma, beta, d=d)
    y, cache = layer.forward(x, ForwardContext(keep_intermediates=not lean), (1,))
    got = layer.backward(G, x, y, cache, BackwardContext((1,), keep_intermediates=False, need_dx=False))
    _, _, dgamma, dbeta = _torch_layernorm(x, G, gamma, beta)
    assert got.dJ_dx is None
    assert got.intermediates == {}
    expected = {k: v for k, v in (("gamma", dgamma), ("beta", dbeta)) if v is not None}
    assert set(got.params) == set(expected)
    for kind, value in expected.items():
        torch.testing.assert_close(got.params[kind], value)


def test_float32_layernorm_reports_dJ_dxhat_in_float32_as_torch() -> None:
    gen = torch.Generator().manual_seed(3)
    d = 3
    x, G = torch.randn(2, d, generator=gen), torch.randn(2, d, generator=gen)
    for gamma in (torch.rand(d, generator=gen) + 0.5, None):
        layer = LayerNorm(gamma, d=d)
        y, cache = layer.forward(x, ForwardContext(), (1,))
        got = layer.backward(G, x, y, cache, BackwardContext((1,)))
        xx = x.clone().requires_grad_()
        xhat = F.layer_norm(xx, (d,))
        xhat.retain_grad()
        (xhat * gamma if gamma is not None else xhat).backward(G)
        assert xhat.grad is not None
        dJ_dxhat = got.intermediates[Key("xhat", (1,))]
        assert dJ_dxhat.dtype == xhat.grad.dtype == torch.float32
        torch.testing.assert_close(dJ_dxhat, xhat.grad)


def test_layernorm_shows_torch_xhat_in_the_walk_through_and_nothing_in_lean_mode() -> None:
    # cached_values is what the walk-through (refbp explain) shows: xhat of the full cache, torch's
    # layer_norm without the affine map; a lean cache keeps no xhat, so it shows none.
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 5, generator=gen, dtype=torch.float64)
    layer = LayerNorm(torch.rand(5, generator=gen, dtype=torch.float64) + 0.5, eps=1e-3)
    _, cache = layer.forward(x, ForwardContext(), (2, 1))
    shown = layer.cached_values(cache, (2, 1))
    assert list(shown) == [Key("xhat", (2, 1))]
    torch.testing.assert_close(shown[Key("xhat", (2, 1))], F.layer_norm(x, (5,), eps=1e-3))
    _, lean = layer.forward(x, ForwardContext(keep_intermediates=False), (2, 1))
    assert layer.cached_values(lean, (2, 1)) == {}


def _layernorm_case(
    dtype: torch.dtype, affine: tuple[bool, bool] = (True, True), seed: int = 5, d: int = 6
) -> tuple[LayerNorm, Tensor, Tensor, Tensor | None, Tensor | None]:
    gen = torch.Generator().manual_seed(seed)
    x = (1.5 + torch.randn(3, 2, d, generator=gen, dtype=torch.float64)).to(dtype)
    G = torch.randn(3, 2, d, generator=gen, dtype=torch.float64).to(dtype)
    gamma = (torch.rand(d, generator=gen, dtype=torch.float64) + 0.5).to(dtype) if affine[0] else None
    beta = torch.randn(d, generator=gen, dtype=torch.float64).to(dtype) if affine[1] else None
    return LayerNorm(gamma, beta, d=d), x, G, gamma, beta


@pytest.mark.parametrize("lean", [False, True], ids=["full", "lean"])
@pytest.mark.parametrize("need_dx", [True, False], ids=["dx", "no-dx"])
@pytest.mark.parametrize("affine", [(True, True), (False, False)], ids=["affine", "none"])
def test_teaching_backward_reports_torch_dJ_dxhat_with_or_without_dJ_dx(
    affine: tuple[bool, bool], need_dx: bool, lean: bool
) -> None:
    # keep_intermediates=True in the backward, from the full cache or a lean one (mu, rstd): dJ/dxhat
    # is reported, torch's xhat.grad, whether or not dJ/dx is asked for.
    layer, x, G, gamma, beta = _layernorm_case(torch.float64, affine)
    y, cache = layer.forward(x, ForwardContext(keep_intermediates=not lean), (1,))
    got = layer.backward(G, x, y, cache, BackwardContext((1,), need_dx=need_dx))
    xx = x.clone().requires_grad_()
    xhat = F.layer_norm(xx, (x.shape[-1],))
    xhat.retain_grad()
    (xhat * gamma + beta if gamma is not None and beta is not None else xhat).backward(G)
    assert list(got.intermediates) == [Key("xhat", (1,))]
    torch.testing.assert_close(got.intermediates[Key("xhat", (1,))], xhat.grad)
    if need_dx:
        torch.testing.assert_close(got.dJ_dx, xx.grad)


@pytest.mark.parametrize("lean", [False, True], ids=["full", "lean"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_layernorm_backward_leaves_dJ_dy_alone_unless_allowed_to_overwrite_it(dtype: torch.dtype, lean: bool) -> None:
    # BackwardContext.overwrite=False: the caller keeps dJ/dy, so the layer must not write into it;
    # with overwrite=True (a training step) it may, and dJ/dx is torch's either way.
    for overwrite in (False, True):
        layer, x, G, gamma, beta = _layernorm_case(dtype)
        y, cache = layer.forward(x, ForwardContext(keep_intermediates=not lean), (1,))
        dJ_dy = G.clone()
        got = layer.backward(dJ_dy, x, y, cache, BackwardContext((1,), keep_intermediates=False, overwrite=overwrite))
        _, dx, dgamma, dbeta = _torch_layernorm(x, G, gamma, beta)
        if not overwrite:
            assert torch.equal(dJ_dy, G)
        assert got.dJ_dx is not None
        torch.testing.assert_close(got.dJ_dx, dx)
        torch.testing.assert_close(got.params["gamma"], dgamma)
        torch.testing.assert_close(got.params["beta"], dbeta)


@pytest.mark.parametrize("overwrite", [False, True], ids=["copy", "overwrite"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_lean_half_precision_layernorm_backward_is_torch_in_the_input_dtype(
    dtype: torch.dtype, overwrite: bool
) -> None:
    # A half-precision training step: the lean backward computes in float32 (the dtype of mu and
    # rstd) and returns every gradient in the input's dtype, as torch does, to a few of its roundings.
    layer, x, G, gamma, beta = _layernorm_case(dtype, seed=6, d=16)
    y, cache = layer.forward(x, ForwardContext(keep_intermediates=False), (1,))
    got = layer.backward(G.clone(), x, y, cache, BackwardContext((1,), keep_intermediates=False, overwrite=overwrite))
    _, dx, dgamma, dbeta = _torch_layernorm(x.float(), G.float(), gamma.float(), beta.float())  # type: ignore[union-attr]
    unit = torch.finfo(dtype).eps
    assert got.dJ_dx is not None
    for value, want in ((got.dJ_dx, dx), (got.params["gamma"], dgamma), (got.params["beta"], dbeta)):
        assert value.dtype == dtype
        assert want is not None
        torch.testing.assert_close(value.float(), want, rtol=0, atol=4 * unit * float(want.abs().max()))


@pytest.mark.parametrize("affine", [(True, True), (True, False), (False, False)], ids=["affine", "no-bias", "none"])
def test_layernorm_to_torch_is_the_same_torch_module(affine: tuple[bool, bool]) -> None:
    layer, x, _, gamma, beta = _layernorm_case(torch.float64, affine)
    layer = LayerNorm(gamma, beta, d=x.shape[-1], eps=0.25)
    module = layer.to_torch()
    assert isinstance(module, torch.nn.LayerNorm)
    reference = torch.nn.LayerNorm(x.shape[-1], eps=0.25, elementwise_affine=affine[0], bias=affine[1])
    assert module.eps == reference.eps and module.elementwise_affine == reference.elementwise_affine
    assert (module.weight is None) == (reference.weight is None) and (module.bias is None) == (reference.bias is None)
    y, _ = layer.forward(x, ForwardContext(), (1,))
    with torch.no_grad():
        torch.testing.assert_close(module(x), y)


def test_lean_forward_then_teaching_backward_from_a_loss_reports_torch_dJ_da() -> None:
    # The loss's dJ/da is the network's own (overwrite=True), but with keep_intermediates it is also
    # reported: LayerNorm's lean backward must then not compute dJ/dx in its storage.
    layer, x, _, gamma, beta = _layernorm_case(torch.float64, seed=7)
    target = torch.randn(x.shape, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    net = Network([layer], "mse")
    grads = net.backward(net.forward(x, keep_intermediates=False), target, keep_intermediates=True).as_dict()
    xx = x.clone().requires_grad_()
    y = F.layer_norm(xx, (x.shape[-1],), gamma, beta)
    y.retain_grad()
    F.mse_loss(y, target).backward()
    torch.testing.assert_close(grads["a1"], y.grad)
    torch.testing.assert_close(grads["X"], xx.grad)


# ---- LayerNorm's second order against torch.func: R{y} = jvp of y, R{dJ/dx} = jvp of the vjp --------
def _torch_layernorm_second(
    x: Tensor, g: Tensor, gamma: Tensor | None, beta: Tensor | None, Rx: Tensor, Rg: Tensor, V: dict[str, Tensor]
) -> tuple[Tensor, Tensor, Tensor, Tensor, dict[str, Tensor], Tensor]:
    """torch.func in float64: R{y}, R{xhat}, dJ/dx, R{dJ/dx}, R{dJ/d(each parameter)} (H v at the layer)
    and R{dJ/dxhat}, along R{x}, the parameters' directions V and R{dJ/dy}."""
    d = x.shape[-1]
    params = {k: v.double() for k, v in (("gamma", gamma), ("beta", beta)) if v is not None}
    directions = {k: V[k].double() for k in params}

    def y_of(x: Tensor, p: dict[str, Tensor]) -> Tensor:
        return F.layer_norm(x, (d,), p.get("gamma"), p.get("beta"))

    def grads_of(x: Tensor, p: dict[str, Tensor], g: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        vjp = torch.func.vjp(y_of, x, p)[1]  # (y, vjp): indexed, as the stubs allow an aux output
        dx, dp = vjp(g)
        return dx, dp

    x64, g64, Rx64, Rg64 = x.double(), g.double(), Rx.double(), Rg.double()
    Ry = torch.func.jvp(y_of, (x64, params), (Rx64, directions))[1]  # (primal, tangent)
    Rxhat = torch.func.jvp(lambda x: F.layer_norm(x, (d,)), (x64,), (Rx64,))[1]
    grads, R_grads = torch.func.jvp(grads_of, (x64, params, g64), (Rx64, directions, Rg64))[:2]
    dx, (R_dx, R_dp) = grads[0], R_grads
    if "gamma" in params:
        R_dxhat = torch.func.jvp(torch.mul, (g64, params["gamma"]), (Rg64, directions["gamma"]))[1]
    else:
        R_dxhat = Rg64
    return Ry, Rxhat, dx, R_dx, R_dp, R_dxhat


def _close_to_float64(got: Tensor, want: Tensor, dtype: torch.dtype) -> None:
    """got, in dtype, is want (float64) to a few dozen roundings of dtype, relative to its largest entry
    (float64: 1e-8, as rstd ~ 1e3 on the nearly constant rows amplifies float64's own round-off)."""
    assert got.dtype == dtype
    unit = 64 * torch.finfo(dtype).eps if dtype != torch.float64 else 1e-8
    torch.testing.assert_close(got.double(), want, rtol=0, atol=unit * max(float(want.abs().max()), 1e-30))


def _assert_norm_r_ops(
    layer: Layer, x: Tensor, g: Tensor, Rx: Tensor, Rg: Tensor, directions: Params, path: tuple[int, ...],
    forward: ForwardContext, dtype: torch.dtype,
    expected: tuple[Tensor, Tensor, Tensor, Tensor, dict[str, Tensor], Tensor],
) -> None:  # fmt: skip
    """A norm's tangent and r_backward (with and without dJ/dx, with and without intermediates)
    against torch's (R{y}, R{xhat}, dJ/dx, R{dJ/dx}, H v by parameter, R{dJ/dxhat}), each to the
    dtype's rounding of the float64 value."""
    Ry, Rxhat, dx, R_dx, R_dp, R_dxhat = expected
    y, cache = layer.forward(x, forward, path)
    t = layer.tangent(x, Rx, y, cache, directions, path)
    _close_to_float64(t.out, Ry, dtype)
    _close_to_float64(t.intermediates[Key("xhat", path)], Rxhat, dtype)
    for need_dx in (True, False):
        for keep in (True, False):
            ctx = SecondContext(path, need_dx=need_dx, keep_intermediates=keep)
            dJ_dx, got = layer.r_backward(g, Rg, x, Rx, y, t, cache, directions, ctx)
            assert (dJ_dx is None, got.dJ_dx is None) == (not need_dx, not need_dx)
            if dJ_dx is not None and got.dJ_dx is not None:
                _close_to_float64(dJ_dx, dx, dtype)
                _close_to_float64(got.dJ_dx, R_dx, dtype)
            assert set(got.params) == set(R_dp)
            for kind, want in R_dp.items():
                _close_to_float64(got.params[kind], want, dtype)
            assert list(got.intermediates) == ([Key("xhat", path)] if keep else [])
            if keep:
                _close_to_float64(got.intermediates[Key("xhat", path)], R_dxhat, dtype)


@pytest.mark.parametrize("along", ["all", "dJ/dy"], ids=["along-all", "along-dJ/dy"])
@pytest.mark.parametrize("lean", [False, True], ids=["full", "lean"])
@pytest.mark.parametrize("affine", [(True, True), (True, False), (False, False)], ids=["affine", "no-bias", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_layernorm_tangent_and_r_backward_equal_torch_func(
    dtype: torch.dtype, affine: tuple[bool, bool], lean: bool, along: str
) -> None:
    # Rows of x, R{x}, dJ/dy and R{dJ/dy} close to constant, each cancelling most of its digits in the
    # means subtracted, so float32 must accumulate in float64 (as the first order does) to stay at a few
    # roundings of torch's float64 values. Lean mode's statistics are in the input's dtype, as torch's
    # module computes them, which bounds its accuracy by that dtype's: ordinary rows there. Every result
    # comes back in the input's dtype.
    gen = torch.Generator().manual_seed(9)
    d = 5

    def near_constant() -> Tensor:
        spread = 1.0 if lean else 1e-3
        return (1 + spread * torch.randn(2, 3, d, generator=gen, dtype=torch.float64)).to(dtype)

    x, g, Rx, Rg = near_constant(), near_constant(), near_constant(), near_constant()
    gamma = (torch.rand(d, generator=gen, dtype=torch.float64) + 0.5).to(dtype) if affine[0] else None
    beta = torch.randn(d, generator=gen, dtype=torch.float64).to(dtype) if affine[1] else None
    V = {"gamma": torch.randn(d, generator=gen).to(dtype), "beta": torch.randn(d, generator=gen).to(dtype)}
    if along == "dJ/dy":  # R{x} = 0 and V = 0: R{dJ/dx} is the backward map of R{dJ/dy} alone, not buried
        Rx, V = torch.zeros_like(Rx), {k: torch.zeros_like(v) for k, v in V.items()}  # under the other terms
    layer, path = LayerNorm(gamma, beta, d=d), (2,)
    directions = Params({Key(k, path): V[k] for k in layer.params})
    expected = _torch_layernorm_second(x, g, gamma, beta, Rx, Rg, V)
    forward = ForwardContext(keep_intermediates=not lean)
    _assert_norm_r_ops(layer, x, g, Rx, Rg, directions, path, forward, dtype, expected)


def test_layernorm_tangent_of_indices_names_the_layer() -> None:
    layer = LayerNorm(d=3)
    x = torch.randn(2, 3, dtype=torch.float64)
    y, cache = layer.forward(x, ForwardContext(), (1,))
    with pytest.raises(AssertionError, match=r"^LayerNorm's input is never indices: it always has a tangent(\n|$)"):
        layer.tangent(x, None, y, cache, Params({}), (1,))


def test_layernorm_describes_itself_with_torch_options() -> None:
    gamma = torch.ones(3, dtype=torch.float64)
    assert LayerNorm(gamma, torch.zeros(3, dtype=torch.float64)).describe() == "LayerNorm(3)"
    assert LayerNorm(gamma).describe() == "LayerNorm(3, no bias)"
    assert LayerNorm(d=3).describe() == "LayerNorm(3, no affine)"


def test_layernorm_input_check_accepts_torch_shapes_and_names_the_layer_otherwise() -> None:
    # torch.nn.LayerNorm(3) takes (3,) and (..., 3); anything else is refused with the layer's place,
    # its description, the shape it needs and what it got.
    layer = LayerNorm(d=3)
    for shape in [(3,), (2, 3), (4, 2, 3)]:
        layer.check_input(torch.zeros(shape, dtype=torch.float64), (1,))
        torch.nn.LayerNorm(3)(torch.zeros(shape))
    message = (
        r"^layer 2\.1 \(LayerNorm\(3, no affine\)\) needs input \(\.\.\., 3\), got shape {}, dtype float64, device cpu$"
    )
    with pytest.raises(ValueError, match=message.format(r"\(2, 4\)")):
        layer.check_input(torch.zeros(2, 4, dtype=torch.float64), (2, 1))
    with pytest.raises(ValueError, match=message.format(r"\(\)")):
        layer.check_input(torch.zeros((), dtype=torch.float64), (2, 1))


def test_xhat_rebuilt_from_lean_statistics_is_torch_layer_norm_in_float64() -> None:
    # normalised() rebuilds xhat = (x - mu) rstd from a lean cache for the second order, in the
    # accumulation dtype (float64 for float32): torch's float64 layer_norm, but for the float32
    # rounding of mu and rstd.
    gen = torch.Generator().manual_seed(10)
    x = torch.randn(4, 6, generator=gen)
    layer = LayerNorm(d=6)
    _, stats = layer.forward(x, ForwardContext(keep_intermediates=False), (1,))
    xhat, rstd = normalised(x, stats)
    assert xhat.dtype == rstd.dtype == torch.float64
    torch.testing.assert_close(xhat, F.layer_norm(x.double(), (6,)), rtol=0, atol=16 * 2.0**-23)


class _SizeTap(Tap):
    """Records the cancellation size an oracle reports for each centred intermediate."""

    def __init__(self) -> None:
        self.sizes: dict[Key, Tensor] = {}

    def centred(self, key: Key, t: Tensor, size: Callable[[], Tensor]) -> Tensor:
        self.sizes[key] = size()
        return t


def test_layernorm_oracle_is_torch_layer_norm_with_its_eps_and_row_statistics() -> None:
    # The oracle refbp.verify differentiates: F.layer_norm with the layer's eps (not torch's default),
    # and the cancellation size of xhat = (x - mean) / sigma per row, (|x| + |mean|) / sigma, with the
    # mean and sigma of each row (the last dimension of a 3-D input, not another).
    gen = torch.Generator().manual_seed(11)
    x = 3 + torch.randn(2, 3, 4, generator=gen, dtype=torch.float64) * torch.tensor([0.5, 2.0, 5.0]).view(1, 3, 1)
    layer, tap = LayerNorm(d=4, eps=0.25), _SizeTap()
    out = layer.torch_forward(x, Params({}), {}, tap, (3,))
    expected = F.layer_norm(x, (4,), eps=0.25)
    torch.testing.assert_close(out, expected)
    mean = x.mean(-1, keepdim=True)
    sigma = (x - mean) / expected  # what torch divides each row by
    torch.testing.assert_close(tap.sizes[Key("xhat", (3,))], (x.abs() + mean.abs()) / sigma)


# ---- BatchNorm1d ----------------------------------------------------------------------------------
def _batchnorm_case(
    dtype: torch.dtype, affine: bool = True, seed: int = 20, N: int = 6, C: int = 4, centre: float = 1.5
) -> tuple[BatchNorm1d, torch.nn.BatchNorm1d, Tensor, Tensor]:
    """refbp's BatchNorm1d and torch's (eps 0.25, momentum 0.3, running statistics away from 0 and 1),
    an input x and a dJ/dy, all in dtype."""
    gen = torch.Generator().manual_seed(seed)
    module = torch.nn.BatchNorm1d(C, eps=0.25, momentum=0.3, affine=affine, dtype=torch.float64)
    assert module.running_mean is not None and module.running_var is not None
    with torch.no_grad():
        if affine:
            module.weight.uniform_(0.5, 1.5, generator=gen)
            module.bias.uniform_(-0.5, 0.5, generator=gen)
        module.running_mean.uniform_(-0.5, 0.5, generator=gen)
        module.running_var.uniform_(0.5, 1.5, generator=gen)
    module = module.to(dtype)
    gamma = module.weight.detach().clone() if affine else None
    beta = module.bias.detach().clone() if affine else None
    assert module.running_mean is not None and module.running_var is not None
    layer = BatchNorm1d(
        gamma, beta, C=C, eps=0.25, momentum=0.3,
        running_mean=module.running_mean.clone(), running_var=module.running_var.clone(),
    )  # fmt: skip
    x = (centre + torch.randn(N, C, generator=gen, dtype=torch.float64)).to(dtype)
    G = torch.randn(N, C, generator=gen, dtype=torch.float64).to(dtype)
    return layer, module, x, G


def _torch_grads(module: torch.nn.Module, x: Tensor, G: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """torch's y, dJ/dx and dJ/d(each parameter) of the module for dJ/dy = G (the module's own copy)."""
    module = copy.deepcopy(module)
    xx = x.clone().requires_grad_()
    y = module(xx)
    y.backward(G)
    assert xx.grad is not None
    params: dict[str, Tensor] = {}
    for kind, p in (("gamma", module.weight), ("beta", module.bias)):
        if p is not None:
            assert isinstance(p, Tensor) and p.grad is not None
            params[kind] = p.grad
    return y.detach(), xx.grad, params


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "none"])
def test_lean_batchnorm_equals_torch_module_with_or_without_affine(affine: bool, training: bool) -> None:
    # A training step's forward and backward (lean: mu and rstd kept) give torch's y and gradients in
    # training and in eval mode (y = s x + (beta - s running_mean)), also without gamma and beta.
    layer, module, x, G = _batchnorm_case(torch.float64, affine)
    layer.set_training(training)
    module.train(training)
    y, stats = layer.forward(x, ForwardContext(keep_intermediates=False), (1,))
    got = layer.backward(G.clone(), x, y, stats, BackwardContext((1,), keep_intermediates=False, overwrite=True))
    want_y, want_dx, want_params = _torch_grads(module, x, G)
    torch.testing.assert_close(y, want_y)
    torch.testing.assert_close(got.dJ_dx, want_dx)
    assert set(got.params) == set(want_params)
    for kind, want in want_params.items():
        torch.testing.assert_close(got.params[kind], want)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "none"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_lean_half_precision_batchnorm_is_torch_in_float32_returned_in_the_input_dtype(
    dtype: torch.dtype, affine: bool, training: bool
) -> None:
    # Features far from 0 (x - mu cancels most of x's digits), a dJ/dy far from 0 (dJ/dy - its mean
    # cancels most of its digits) and a batch of 32: a half-precision training step computes in float32,
    # as torch's CPU kernel, and returns y, every gradient and the reported dJ/dxhat in the input's dtype;
    # the statistics kept are float32 (lean_dtype), and the running statistics stay in the input's dtype.
    # Within a few roundings of dtype of torch in float32, whether dJ/dy's storage may be reused or not.
    layer, module, x, G = _batchnorm_case(dtype, affine, seed=21, N=32, C=3, centre=40.0)
    G = (30 + 0.3 * G.double()).to(dtype)  # dJ/dgamma ~ 30 * 40 * 32 in eval: below float16's 65504
    layer.set_training(training)
    module32 = copy.deepcopy(module).float().train(training)
    y, stats = layer.forward(x, ForwardContext(keep_intermediates=False), (1,))
    assert isinstance(stats, NormStats)
    assert y.dtype == dtype and stats.mu.dtype == stats.rstd.dtype == torch.float32
    assert layer.running_mean is not None and layer.running_var is not None
    assert layer.running_mean.dtype == layer.running_var.dtype == dtype
    want_y, want_dx, want_params = _torch_grads(module32, x.float(), G.float())
    xx = x.float().clone().requires_grad_()
    xhat = F.batch_norm(xx, module32.running_mean, module32.running_var, None, None, training, 0.0, 0.25)
    xhat.retain_grad()
    (xhat * module32.weight + module32.bias if affine else xhat).backward(G.float())
    assert xhat.grad is not None
    unit = torch.finfo(dtype).eps
    for overwrite in (False, True):
        for keep in (False, True):
            ctx = BackwardContext((1,), keep_intermediates=keep, overwrite=overwrite)
            got = layer.backward(G.clone(), x, y, stats, ctx)
            assert got.dJ_dx is not None and set(got.params) == set(want_params)
            pairs = [(y, want_y), (got.dJ_dx, want_dx)] + [(got.params[k], want_params[k]) for k in want_params]
            assert list(got.intermediates) == ([Key("xhat", (1,))] if keep else [])
            pairs += [(got.intermediates[Key("xhat", (1,))], xhat.grad)] if keep else []
            for value, want in pairs:
                assert value.dtype == dtype
                torch.testing.assert_close(value.float(), want, rtol=0, atol=4 * unit * float(want.abs().max()))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "none"])
@pytest.mark.parametrize("lean", [False, True], ids=["full", "lean"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_batchnorm_backward_with_or_without_dJ_dx_reports_torch_parameters_and_dJ_dxhat(
    dtype: torch.dtype, lean: bool, affine: bool, training: bool
) -> None:
    # keep_intermediates in the backward, from the full cache or a lean one: the parameters' gradients
    # and dJ/dxhat (torch's xhat.grad, in the input's dtype) whether or not dJ/dx is asked for.
    layer, module, x, G = _batchnorm_case(dtype, affine, seed=22)
    layer.set_training(training)
    module.train(training)
    y, stats = layer.forward(x, ForwardContext(keep_intermediates=not lean, update_stats=False), (1,))
    _, _, want_params = _torch_grads(module, x, G)
    xx = x.clone().requires_grad_()
    xhat = F.batch_norm(xx, module.running_mean, module.running_var, None, None, training, 0.0, 0.25)
    xhat.retain_grad()
    (xhat * module.weight + module.bias if affine else xhat).backward(G)
    for need_dx in (False, True):
        got = layer.backward(G.clone(), x, y, stats, BackwardContext((1,), need_dx=need_dx))
        assert (got.dJ_dx is None) == (not need_dx)
        if got.dJ_dx is not None:
            torch.testing.assert_close(got.dJ_dx, xx.grad)
        assert set(got.params) == set(want_params)
        for kind, want in want_params.items():
            torch.testing.assert_close(got.params[kind], want)
        assert list(got.intermediates) == [Key("xhat", (1,))]
        assert got.intermediates[Key("xhat", (1,))].dtype == dtype
        torch.testing.assert_close(got.intermediates[Key("xhat", (1,))], xhat.grad)


@pytest.mark.parametrize("lean", [False, True], ids=["full", "lean"])
def test_batchnorm_backward_leaves_dJ_dy_alone_unless_allowed_to_overwrite_it(lean: bool) -> None:
    for overwrite in (False, True):
        layer, module, x, G = _batchnorm_case(torch.float64, seed=23)
        y, cache = layer.forward(x, ForwardContext(keep_intermediates=not lean), (1,))
        dJ_dy = G.clone()
        got = layer.backward(dJ_dy, x, y, cache, BackwardContext((1,), keep_intermediates=False, overwrite=overwrite))
        _, dx, _ = _torch_grads(module, x, G)
        if not overwrite:
            assert torch.equal(dJ_dy, G)
        torch.testing.assert_close(got.dJ_dx, dx)


def test_lean_batchnorm_forward_then_teaching_backward_from_a_loss_reports_torch_dJ_da() -> None:
    # The loss's dJ/da is the network's own (overwrite=True) but also reported (keep_intermediates):
    # the lean backward must not compute dJ/dx in its storage.
    layer, module, x, _ = _batchnorm_case(torch.float64, seed=24)
    target = torch.randn(x.shape, generator=torch.Generator().manual_seed(25), dtype=torch.float64)
    net = Network([layer], "mse")
    grads = net.backward(net.forward(x, keep_intermediates=False), target, keep_intermediates=True).as_dict()
    xx = x.clone().requires_grad_()
    y = module(xx)
    y.retain_grad()
    F.mse_loss(y, target).backward()
    torch.testing.assert_close(grads["a1"], y.grad)
    torch.testing.assert_close(grads["X"], xx.grad)


@pytest.mark.parametrize("lean", [False, True], ids=["full", "lean"])
def test_batchnorm_forward_updates_running_statistics_only_when_torch_would(lean: bool) -> None:
    # update_stats=False (a check's extra forward passes) and track_running_stats=False (no running
    # statistics: batch statistics in eval too) update nothing, in training or eval mode.
    layer, _, x, _ = _batchnorm_case(torch.float64, seed=26)
    assert layer.running_mean is not None and layer.running_var is not None
    before = layer.running_mean.clone(), layer.running_var.clone()
    layer.forward(x, ForwardContext(keep_intermediates=not lean, update_stats=False), (1,))
    assert torch.equal(layer.running_mean, before[0]) and torch.equal(layer.running_var, before[1])
    assert layer.num_batches_tracked == 0
    for training in (True, False):
        module = torch.nn.BatchNorm1d(4, eps=0.25, affine=False, track_running_stats=False, dtype=torch.float64)
        untracked = BatchNorm1d(C=4, eps=0.25, track_running_stats=False)
        untracked.set_training(training)
        module.train(training)
        y, _ = untracked.forward(x, ForwardContext(keep_intermediates=not lean), (1,))
        with torch.no_grad():
            torch.testing.assert_close(y, module(x))
        assert untracked.running_mean is None and untracked.buffers() == {}


def test_batchnorm_buffers_are_torch_module_buffers() -> None:
    layer, module, _, _ = _batchnorm_case(torch.float64)
    buffers = layer.buffers()
    assert list(buffers) == ["running_mean", "running_var"]
    for name, value in buffers.items():
        assert torch.equal(value, getattr(module, name))
    assert BatchNorm1d(C=4, track_running_stats=False).buffers() == {}


def test_batchnorm_release_drops_the_lean_statistics() -> None:
    layer, _, x, _ = _batchnorm_case(torch.float64)
    _, stats = layer.forward(x, ForwardContext(keep_intermediates=False), (1,))
    assert isinstance(stats, NormStats)
    layer.release(stats)
    assert isinstance(stats.mu, Tensor) and isinstance(stats.rstd, Tensor)
    assert stats.mu.numel() == stats.rstd.numel() == 0


def test_batchnorm_shows_torch_xhat_in_the_walk_through_and_nothing_in_lean_mode() -> None:
    layer, _, x, _ = _batchnorm_case(torch.float64, seed=27)
    _, cache = layer.forward(x, ForwardContext(), (2, 1))
    shown = layer.cached_values(cache, (2, 1))
    assert list(shown) == [Key("xhat", (2, 1))]
    torch.testing.assert_close(shown[Key("xhat", (2, 1))], F.batch_norm(x, None, None, training=True, eps=0.25))
    _, lean = layer.forward(x, ForwardContext(keep_intermediates=False), (2, 1))
    assert layer.cached_values(lean, (2, 1)) == {}


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "none"])
@pytest.mark.parametrize("tracked", [True, False], ids=["tracked", "untracked"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("momentum", [0.3, None], ids=["m=0.3", "m=None"])
def test_batchnorm_to_torch_is_the_same_torch_module(
    momentum: float | None, dtype: torch.dtype, tracked: bool, affine: bool
) -> None:
    gen = torch.Generator().manual_seed(28)
    gamma = (torch.rand(4, generator=gen, dtype=torch.float64) + 0.5).to(dtype) if affine else None
    beta = torch.randn(4, generator=gen, dtype=torch.float64).to(dtype) if affine else None
    stats = (torch.randn(4, generator=gen).to(dtype), (torch.rand(4, generator=gen) + 0.5).to(dtype))
    layer = BatchNorm1d(
        gamma, beta, C=4, eps=0.25, momentum=momentum, track_running_stats=tracked, num_batches_tracked=5,
        running_mean=stats[0] if tracked else None, running_var=stats[1] if tracked else None,
    )  # fmt: skip
    module = layer.to_torch()
    assert isinstance(module, torch.nn.BatchNorm1d)
    assert (module.eps, module.momentum, module.affine, module.track_running_stats) == (0.25, momentum, affine, tracked)
    assert (module.weight is None) == (not affine) and (module.running_mean is None) == (not tracked)
    if affine or tracked:  # torch's default dtype otherwise
        assert next(module.parameters(), module.running_mean).dtype == dtype  # type: ignore[union-attr]
    if tracked:
        assert module.running_mean is not None and module.running_var is not None
        assert torch.equal(module.running_mean, stats[0]) and torch.equal(module.running_var, stats[1])
        assert int(module.num_batches_tracked) == 5  # type: ignore[arg-type]
    x = torch.randn(6, 4, generator=gen, dtype=torch.float64).to(dtype if affine or tracked else torch.float32)
    for training in (True, False):
        layer.set_training(training)
        module.train(training)
        y, _ = layer.forward(x, ForwardContext(update_stats=False), (1,))
        with torch.no_grad():
            torch.testing.assert_close(copy.deepcopy(module)(x), y)  # a copy: torch's training updates its buffers


class _BNSizeTap(Tap):
    """Records the cancellation size an oracle reports for each centred intermediate."""

    def __init__(self) -> None:
        self.sizes: dict[Key, Tensor] = {}

    def centred(self, key: Key, t: Tensor, size: Callable[[], Tensor]) -> Tensor:
        self.sizes[key] = size()
        return t


@pytest.mark.parametrize("mode", ["train", "unbiased", "eval"])
def test_batchnorm_oracle_is_torch_batch_norm_with_its_eps_and_the_statistics_it_used(mode: str) -> None:
    # The oracle refbp.verify differentiates: torch's batch norm with the layer's eps (unbiased: with the
    # Bessel-corrected variance), and the cancellation size (|x| + |mean|) / sqrt(var + eps) of xhat with
    # the per-feature mean and variance it normalised by (the running ones, in x's dtype, in eval).
    layer, module, x, _ = _batchnorm_case(torch.float64, affine=False, seed=29, C=3)
    if mode == "unbiased":
        layer = BatchNorm1d(C=3, eps=0.25, unbiased=True)
    layer.set_training(mode != "eval")
    assert module.running_mean is not None and module.running_var is not None
    assert layer.running_mean is not None and layer.running_var is not None
    stats32 = layer.running_mean.float(), layer.running_var.float()
    if mode == "eval":  # running statistics in float32, x in float64: the oracle converts them to x's dtype
        layer.running_mean, layer.running_var = stats32
    tap = _BNSizeTap()
    out = layer.torch_forward(x, Params({}), {}, tap, (3,))
    if mode == "eval":
        mean, var = stats32[0].double(), stats32[1].double()
        expected = F.batch_norm(x, mean, var, training=False, eps=0.25)
    else:
        mean, var = x.mean(0), x.var(0, unbiased=mode == "unbiased")
        expected = (x - mean) / (var + 0.25).sqrt()
        if mode == "train":
            torch.testing.assert_close(expected, F.batch_norm(x, None, None, training=True, eps=0.25))
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(tap.sizes[Key("xhat", (3,))], (x.abs() + mean.abs()) / (var + 0.25).sqrt())


@pytest.mark.parametrize("unbiased", [False, True], ids=["biased", "unbiased"])
def test_batchnorm_feature_scale_is_what_torch_divides_each_feature_by(unbiased: bool) -> None:
    gen = torch.Generator().manual_seed(30)
    x = torch.randn(5, 3, generator=gen, dtype=torch.float64) * torch.tensor([0.5, 2.0, 7.0])
    layer = BatchNorm1d(C=3, eps=0.1, unbiased=unbiased)
    pieces = layer.pieces
    assert pieces is not None and pieces.scale is not None
    s = pieces.scale(x)
    assert s.shape == x.shape
    want = unbiased_batch_norm(x, 0.1) if unbiased else F.batch_norm(x, None, None, training=True, eps=0.1)
    torch.testing.assert_close((x - x.mean(0)) / s, want)


def test_channel_sums_of_three_dimensional_inputs_reduce_all_but_the_channels() -> None:
    # channel_sum and channel_square_sum take (N, C, ...): for (N, C, L) too, a (C,) sum over N and L;
    # and small integers' squares sum exactly, (N, C) or not.
    t = torch.arange(24, dtype=torch.float64).view(2, 3, 4) - 11
    torch.testing.assert_close(channel_sum(t), t.sum(dim=(0, 2)))
    torch.testing.assert_close(channel_square_sum(t), (t * t).sum(dim=(0, 2)))
    ones = torch.ones(2, 3, dtype=torch.float64)
    assert torch.equal(channel_square_sum(ones), torch.full((3,), 2.0, dtype=torch.float64))
    assert torch.equal(channel_sum(ones), torch.full((3,), 2.0, dtype=torch.float64))


def test_unbiased_batchnorm_to_torch_names_what_to_do_instead() -> None:
    message = (
        r"^BatchNorm1d\(3, batch statistics, unbiased variance, no affine\) has no torch module: "
        r"torch\.nn\.BatchNorm1d normalises by the biased variance \(1/N\), unbiased=True by the "
        r"Bessel-corrected one \(1/\(N - 1\)\); check it with refbp\.check, whose oracle \(torch_forward\) "
        r"follows the option, or build the layer with unbiased=False$"
    )
    with pytest.raises(ValueError, match=message):
        BatchNorm1d(C=3, unbiased=True).to_torch()


def test_batchnorm_describes_its_mode_and_options() -> None:
    # describe() is in every error message about the layer: its statistics, the unbiased option, the affine.
    gamma, beta = torch.ones(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    layer = BatchNorm1d(gamma, beta)
    assert layer.describe() == "BatchNorm1d(3, batch statistics)"
    layer.set_training(False)
    assert layer.describe() == "BatchNorm1d(3, running statistics)"
    assert BatchNorm1d(C=3).describe() == "BatchNorm1d(3, batch statistics, no affine)"
    assert (
        BatchNorm1d(C=3, unbiased=True).describe() == "BatchNorm1d(3, batch statistics, unbiased variance, no affine)"
    )


def test_float32_batchnorm_of_nearly_constant_features_is_float64_torch_rounded_once() -> None:
    # Features and dJ/dy nearly constant over the batch: x - mean and dJ/dy - its mean cancel most of
    # their digits. The statistics and dJ/dx are computed in float64 and rounded once (the module
    # docstring), so float32 results are torch's float64 ones to a few float32 roundings.
    gen = torch.Generator().manual_seed(31)
    for C in (1, 3):
        x = (1 + 1e-3 * torch.randn(5, C, generator=gen, dtype=torch.float64)).float()
        G = (1 + 1e-3 * torch.randn(5, C, generator=gen, dtype=torch.float64)).float()
        gamma, beta = torch.rand(C, generator=gen).float() + 0.5, torch.randn(C, generator=gen).float()
        net = Network([BatchNorm1d(gamma, beta)], "mse")
        cache = net.forward(x)
        grads = net.backward_from(cache, G).as_dict()
        module = torch.nn.BatchNorm1d(C, dtype=torch.float64)
        with torch.no_grad():
            module.weight.copy_(gamma)
            module.bias.copy_(beta)
        y64, dx64, params64 = _torch_grads(module, x.double(), G.double())
        ulp = 2.0**-23
        pairs = [(cache.y_hat, y64), (grads["X"], dx64), (grads["gamma1"], params64["gamma"])]
        for got, want in [*pairs, (grads["beta1"], params64["beta"])]:
            assert got.dtype == torch.float32
            torch.testing.assert_close(got.double(), want, rtol=0, atol=4 * ulp * float(want.abs().max()))


def _torch_batchnorm_second(
    layer: BatchNorm1d, x: Tensor, g: Tensor, Rx: Tensor, Rg: Tensor, V: dict[str, Tensor]
) -> tuple[Tensor, Tensor, Tensor, Tensor, dict[str, Tensor], Tensor]:
    """torch.func in float64 on F.batch_norm (the layer's mode and eps): R{y}, R{xhat}, dJ/dx, R{dJ/dx},
    H v at the layer's parameters and R{dJ/dxhat}, along R{x}, V and R{dJ/dy}."""
    params = {k: v.double() for k, v in layer.params.items()}
    directions = {k: V[k].double() for k in params}
    training = layer.uses_batch_statistics
    stats = (None, None) if training else (layer.running_mean.double(), layer.running_var.double())  # type: ignore[union-attr]

    def xhat_of(x: Tensor) -> Tensor:
        if training and layer.unbiased:
            return unbiased_batch_norm(x, layer.eps)
        return F.batch_norm(x, stats[0], stats[1], None, None, training, 0.0, layer.eps)

    def y_of(x: Tensor, p: dict[str, Tensor]) -> Tensor:
        return xhat_of(x) * p["gamma"] + p["beta"] if p else xhat_of(x)

    def grads_of(x: Tensor, p: dict[str, Tensor], g: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        dx, dp = torch.func.vjp(y_of, x, p)[1](g)
        return dx, dp

    x64, g64, Rx64, Rg64 = x.double(), g.double(), Rx.double(), Rg.double()
    Ry = torch.func.jvp(y_of, (x64, params), (Rx64, directions))[1]
    Rxhat = torch.func.jvp(xhat_of, (x64,), (Rx64,))[1]
    grads, R_grads = torch.func.jvp(grads_of, (x64, params, g64), (Rx64, directions, Rg64))[:2]
    if params:
        R_dxhat = torch.func.jvp(torch.mul, (g64, params["gamma"]), (Rg64, directions["gamma"]))[1]
    else:
        R_dxhat = Rg64
    return Ry, Rxhat, grads[0], R_grads[0], R_grads[1], R_dxhat


@pytest.mark.parametrize("mode", ["train", "unbiased", "eval"])
@pytest.mark.parametrize("lean", [False, True], ids=["full", "lean"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_batchnorm_tangent_and_r_backward_equal_torch_func(
    dtype: torch.dtype, affine: bool, lean: bool, mode: str
) -> None:
    # Features of x, R{x}, dJ/dy and R{dJ/dy} close to constant over the batch (full mode; ordinary ones in
    # lean mode, whose statistics are in the input's dtype), so float32 must accumulate in float64 to stay
    # at a few roundings of torch's float64 values; every result comes back in the input's dtype.
    gen = torch.Generator().manual_seed(32)
    C = 3

    def near_constant() -> Tensor:
        return (1 + (1.0 if lean else 1e-3) * torch.randn(6, C, generator=gen, dtype=torch.float64)).to(dtype)

    x, g, Rx, Rg = near_constant(), near_constant(), near_constant(), near_constant()
    gamma = (torch.rand(C, generator=gen, dtype=torch.float64) + 0.5).to(dtype) if affine else None
    beta = torch.randn(C, generator=gen, dtype=torch.float64).to(dtype) if affine else None
    V = {"gamma": torch.randn(C, generator=gen).to(dtype), "beta": torch.randn(C, generator=gen).to(dtype)}
    running = (torch.rand(C, generator=gen) - 0.5).to(dtype), (torch.rand(C, generator=gen) + 0.5).to(dtype)
    layer = BatchNorm1d(
        gamma, beta, C=C, eps=0.25, running_mean=running[0], running_var=running[1], unbiased=mode == "unbiased"
    )
    layer.set_training(mode != "eval")
    path = (2,)
    directions = Params({Key(k, path): V[k] for k in layer.params})
    expected = _torch_batchnorm_second(layer, x, g, Rx, Rg, V)
    forward = ForwardContext(keep_intermediates=not lean, update_stats=False)
    _assert_norm_r_ops(layer, x, g, Rx, Rg, directions, path, forward, dtype, expected)


def test_float32_batchnorm_parameter_products_sum_in_float64() -> None:
    # (H v)_beta = sum_n R{dJ/dy} and (H v)_gamma = sum_n R{dJ/dy o xhat}: columns of R{dJ/dy} that cancel
    # to 1 in exact arithmetic (1e8 + 1 - 1e8) give torch's float64 sums rounded once, not float32's 0.
    gen = torch.Generator().manual_seed(33)
    x = torch.tensor([[0.0], [1.0], [2.0]])
    g = torch.randn(3, 1, generator=gen)
    Rg = torch.tensor([[1e8], [1.0], [-1e8]])
    layer = BatchNorm1d(torch.ones(1), torch.zeros(1))
    path = (1,)
    directions = Params({Key("gamma", path): torch.zeros(1), Key("beta", path): torch.zeros(1)})
    y, cache = layer.forward(x, ForwardContext(update_stats=False), path)
    t = layer.tangent(x, torch.zeros_like(x), y, cache, directions, path)
    _, got = layer.r_backward(g, Rg, x, torch.zeros_like(x), y, t, cache, directions, SecondContext(path))
    xhat = F.batch_norm(x.double(), None, None, training=True, eps=layer.eps)
    assert got.params["beta"].item() == 1.0
    assert got.params["gamma"].item() == float((Rg.double() * xhat).sum().float())


def test_batchnorm_input_check_accepts_torch_shapes_and_names_the_layer_otherwise() -> None:
    # torch.nn.BatchNorm1d(3) in this layer's reach takes (N, 3); anything else is refused with the layer's
    # place, its description, the shape it needs and what it got; training on one row says why not.
    layer = BatchNorm1d(C=3)
    layer.check_input(torch.zeros(2, 3, dtype=torch.float64), (1,))
    message = (
        r"^layer 2\.1 \(BatchNorm1d\(3, batch statistics, no affine\)\) needs input \(N, 3\), "
        r"got shape {}, dtype float64, device cpu$"
    )
    for shape, shown in [((2, 4), r"\(2, 4\)"), ((2, 3, 4), r"\(2, 3, 4\)")]:
        with pytest.raises(ValueError, match=message.format(shown)):
            layer.check_input(torch.zeros(shape, dtype=torch.float64), (2, 1))
    for unbiased, why in [
        (False, "the variance of one row is 0"),
        (True, "the unbiased variance divides by N - 1 = 0"),
    ]:
        one = BatchNorm1d(C=3, unbiased=unbiased)
        with pytest.raises(
            ValueError,
            match=rf"^layer 3 \({re.escape(one.describe())}\) needs a batch of N >= 2 rows in training mode "
            rf"\({why}\), got shape \(1, 3\), dtype float64, device cpu$",
        ):
            one.check_input(torch.zeros(1, 3, dtype=torch.float64), (3,))


def test_batchnorm_construction_refuses_what_torch_cannot_be_and_defaults_as_torch() -> None:
    with pytest.raises(ValueError, match=r"^BatchNorm1d: give both gamma and beta \(affine\) or neither$"):
        BatchNorm1d(torch.ones(3))
    with pytest.raises(ValueError, match=r"^BatchNorm1d: give both gamma and beta \(affine\) or neither$"):
        BatchNorm1d(None, torch.zeros(3))
    with pytest.raises(TypeError, match=r"^BatchNorm1d: unbiased=1 must be True or False$"):
        BatchNorm1d(C=3, unbiased=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^BatchNorm1d without gamma needs C, the number of features$"):
        BatchNorm1d()
    # torch.nn.BatchNorm1d(3)'s defaults: eps 1e-5, momentum 0.1, running statistics 0 and 1 in the
    # parameters' dtype (float64 without them), no batch tracked yet, training mode.
    module = torch.nn.BatchNorm1d(3, dtype=torch.float32)
    for layer, dtype in [
        (BatchNorm1d(torch.ones(3), torch.zeros(3)), torch.float32),
        (BatchNorm1d(C=3), torch.float64),
    ]:
        assert (layer.C, layer.eps, layer.momentum, layer.num_batches_tracked) == (3, module.eps, module.momentum, 0)
        assert layer.training is module.training is True and layer.track_running_stats and not layer.unbiased
        assert layer.running_mean is not None and layer.running_var is not None
        assert layer.running_mean.dtype == layer.running_var.dtype == dtype
        assert torch.equal(layer.running_mean, module.running_mean.to(dtype))  # type: ignore[union-attr]
        assert torch.equal(layer.running_var, module.running_var.to(dtype))  # type: ignore[union-attr]
    given = BatchNorm1d(C=2, eps=0.5, momentum=None, running_mean=torch.ones(2), num_batches_tracked=4, unbiased=True)
    assert (given.eps, given.momentum, given.num_batches_tracked, given.unbiased) == (0.5, None, 4, True)
    assert torch.equal(given.running_mean, torch.ones(2))  # type: ignore[arg-type]
    assert torch.equal(given.running_var, torch.ones(2, dtype=torch.float64))  # type: ignore[arg-type]
    untracked = BatchNorm1d(C=2, track_running_stats=False, running_mean=torch.ones(2))
    assert untracked.running_mean is None and untracked.running_var is None and not untracked.track_running_stats


def test_float32_batchnorm_eval_normalises_in_float64_by_the_running_statistics() -> None:
    # Eval mode in float32: xhat (shown in the walk-through) and rstd are kept in float64, computed from the
    # running statistics converted to float64: torch's float64 batch norm to float64's precision.
    layer, module, x, _ = _batchnorm_case(torch.float32, seed=34)
    layer.set_training(False)
    _, cache = layer.forward(x, ForwardContext(), (1,))
    assert isinstance(cache, NormCache)
    assert cache.xhat.dtype == cache.rstd.dtype == torch.float64
    rm, rv = module.running_mean.double(), module.running_var.double()  # type: ignore[union-attr]
    torch.testing.assert_close(cache.rstd, (rv + 0.25).rsqrt(), rtol=1e-14, atol=0)
    want = F.batch_norm(x.double(), rm, rv, training=False, eps=0.25)
    torch.testing.assert_close(cache.xhat, want, rtol=1e-14, atol=1e-14)


def test_batchnorm_tangent_of_indices_names_the_layer() -> None:
    layer = BatchNorm1d(C=3)
    x = torch.randn(2, 3, dtype=torch.float64)
    y, cache = layer.forward(x, ForwardContext(), (1,))
    with pytest.raises(AssertionError, match=r"^BatchNorm's input is never indices: it always has a tangent(\n|$)"):
        layer.tangent(x, None, y, cache, Params({}), (1,))


# ---- BatchNorm2d ----------------------------------------------------------------------------------
def _batchnorm2d_case(
    dtype: torch.dtype, affine: bool = True, seed: int = 40, shape: tuple[int, int, int, int] = (3, 4, 2, 3),
    centre: float = 1.5,
) -> tuple[BatchNorm2d, torch.nn.BatchNorm2d, Tensor, Tensor]:  # fmt: skip
    """refbp's BatchNorm2d and torch's (eps 0.25, momentum 0.3, running statistics away from 0 and 1),
    an input x (N, C, H, W) and a dJ/dy, all in dtype."""
    gen = torch.Generator().manual_seed(seed)
    C = shape[1]
    module = torch.nn.BatchNorm2d(C, eps=0.25, momentum=0.3, affine=affine, dtype=torch.float64)
    assert module.running_mean is not None and module.running_var is not None
    with torch.no_grad():
        if affine:
            module.weight.uniform_(0.5, 1.5, generator=gen)
            module.bias.uniform_(-0.5, 0.5, generator=gen)
        module.running_mean.uniform_(-0.5, 0.5, generator=gen)
        module.running_var.uniform_(0.5, 1.5, generator=gen)
    module = module.to(dtype)
    gamma = module.weight.detach().clone() if affine else None
    beta = module.bias.detach().clone() if affine else None
    assert module.running_mean is not None and module.running_var is not None
    layer = BatchNorm2d(
        gamma, beta, C=C, eps=0.25, momentum=0.3,
        running_mean=module.running_mean.clone(), running_var=module.running_var.clone(),
    )  # fmt: skip
    scales = torch.linspace(0.5, 3.0, C, dtype=torch.float64).view(1, C, 1, 1)
    x = (centre + scales * torch.randn(shape, generator=gen, dtype=torch.float64)).to(dtype)
    G = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    return layer, module, x, G


def _torch_xhat_grad(module: torch.nn.Module, x: Tensor, G: Tensor) -> tuple[Tensor, Tensor]:
    """torch's xhat (the module without its affine, in the module's mode) and dJ/dxhat for dJ/dy = G."""
    module = copy.deepcopy(module)
    xx = x.clone().requires_grad_()
    if isinstance(module, torch.nn.GroupNorm):
        xhat = F.group_norm(xx, module.num_groups, None, None, module.eps)
    else:
        assert isinstance(module, torch.nn.BatchNorm2d)
        xhat = F.batch_norm(xx, module.running_mean, module.running_var, None, None, module.training, 0.0, module.eps)
    xhat.retain_grad()
    per_channel = (-1, *([1] * (x.dim() - 2)))
    y = xhat * module.weight.view(per_channel) + module.bias.view(per_channel) if module.weight is not None else xhat
    y.backward(G)
    assert xhat.grad is not None
    return xhat.detach(), xhat.grad


def _assert_backward_equals_torch_module(
    layer: BatchNorm2d | GroupNorm,
    module: torch.nn.Module,
    x: Tensor,
    y: Tensor,
    cache: NormCache | NormStats,
    G: Tensor,
    lean: bool,
    dtype: torch.dtype,
    want_dx: Tensor,
    want_params: dict[str, Tensor],
) -> None:
    """A spatial norm's walk-through xhat and its backward in every context (with and without
    dJ/dx and the intermediates, dJ/dy kept or overwritten) against torch's module: dJ/dx, the
    parameters' gradients and dJ/dxhat, dJ/dy untouched unless allowed, dJ/dxhat its own tensor."""
    want_xhat, want_dxhat = _torch_xhat_grad(module, x, G)
    shown = layer.cached_values(cache, (1,))
    assert list(shown) == ([] if lean else [Key("xhat", (1,))])
    if not lean:
        torch.testing.assert_close(shown[Key("xhat", (1,))].to(dtype), want_xhat)
    for need_dx in (True, False):
        for keep in (True, False):
            for overwrite in (False, True):
                dJ_dy = G.clone()
                ctx = BackwardContext((1,), keep_intermediates=keep, overwrite=overwrite, need_dx=need_dx)
                got = layer.backward(dJ_dy, x, y, cache, ctx)
                if not overwrite:
                    assert torch.equal(dJ_dy, G)
                assert (got.dJ_dx is None) == (not need_dx)
                if got.dJ_dx is not None:
                    assert got.dJ_dx.dtype == dtype and got.dJ_dx.shape == x.shape
                    torch.testing.assert_close(got.dJ_dx, want_dx)
                assert set(got.params) == set(want_params)
                for kind, want in want_params.items():
                    assert got.params[kind].dtype == dtype
                    torch.testing.assert_close(got.params[kind], want)
                assert list(got.intermediates) == ([Key("xhat", (1,))] if keep else [])
                if keep:
                    dJ_dxhat = got.intermediates[Key("xhat", (1,))]
                    assert dJ_dxhat.dtype == dtype and dJ_dxhat.shape == x.shape
                    torch.testing.assert_close(dJ_dxhat, want_dxhat)
                    if overwrite:  # the reported dJ/dxhat is its own tensor: the caller's dJ/dy may change
                        dJ_dy.fill_(7.0)
                        torch.testing.assert_close(dJ_dxhat, want_dxhat)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "none"])
@pytest.mark.parametrize("lean", [False, True], ids=["full", "lean"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_batchnorm2d_forward_and_backward_equal_torch_module(
    dtype: torch.dtype, lean: bool, affine: bool, training: bool
) -> None:
    # Channels of different spreads over the batch and positions: y, the running statistics torch's
    # module updates (and its count of batches), xhat in the walk-through, and in the backward dJ/dx,
    # the parameters' gradients and dJ/dxhat, with and without dJ/dx, keeping dJ/dy unless allowed not to.
    layer, module, x, G = _batchnorm2d_case(dtype, affine)
    layer.set_training(training)
    module.train(training)
    y, cache = layer.forward(x, ForwardContext(keep_intermediates=not lean), (1,))
    want_y, want_dx, want_params = _torch_grads(module, x, G)
    with torch.no_grad():
        module(x)  # torch's update of its running statistics (training mode only)
    assert y.dtype == dtype
    torch.testing.assert_close(y, want_y)
    assert layer.running_mean is not None and layer.running_var is not None
    assert layer.running_mean.dtype == layer.running_var.dtype == dtype
    torch.testing.assert_close(layer.running_mean, module.running_mean)
    torch.testing.assert_close(layer.running_var, module.running_var)
    assert layer.num_batches_tracked == int(module.num_batches_tracked)  # type: ignore[arg-type]
    assert layer.buffers() == {"running_mean": layer.running_mean, "running_var": layer.running_var}
    _assert_backward_equals_torch_module(layer, module, x, y, cache, G, lean, dtype, want_dx, want_params)


@pytest.mark.parametrize("lean", [False, True], ids=["full", "lean"])
def test_batchnorm2d_running_statistics_follow_torch_momentum_none_update_stats_and_untracked(lean: bool) -> None:
    # momentum=None: torch's cumulative average over the batches seen; update_stats=False (a check's
    # extra passes) updates nothing; track_running_stats=False: batch statistics in eval mode too.
    gen = torch.Generator().manual_seed(41)
    xs = [1 + torch.randn(2, 3, 2, 2, generator=gen, dtype=torch.float64) for _ in range(3)]
    module = torch.nn.BatchNorm2d(3, momentum=None, affine=False, dtype=torch.float64)
    layer = BatchNorm2d(C=3, momentum=None, num_batches_tracked=0)
    ctx = ForwardContext(keep_intermediates=not lean)
    for x in xs:
        layer.forward(x, ctx, (1,))
        with torch.no_grad():
            module(x)
    assert layer.num_batches_tracked == int(module.num_batches_tracked) == 3  # type: ignore[arg-type]
    torch.testing.assert_close(layer.running_mean, module.running_mean)
    torch.testing.assert_close(layer.running_var, module.running_var)
    assert layer.running_mean is not None and layer.running_var is not None
    before = layer.running_mean.clone(), layer.running_var.clone()
    layer.forward(xs[0] * 3, ForwardContext(keep_intermediates=not lean, update_stats=False), (1,))
    assert torch.equal(layer.running_mean, before[0]) and torch.equal(layer.running_var, before[1])
    assert layer.num_batches_tracked == 3
    layer.set_training(False)
    y, _ = layer.forward(xs[0], ctx, (1,))
    assert torch.equal(layer.running_mean, before[0]) and layer.num_batches_tracked == 3
    module.eval()
    with torch.no_grad():
        torch.testing.assert_close(y, module(xs[0]))
    for training in (True, False):
        untracked_module = torch.nn.BatchNorm2d(3, eps=0.25, affine=False, track_running_stats=False)
        untracked = BatchNorm2d(C=3, eps=0.25, track_running_stats=False)
        untracked.set_training(training)
        untracked_module.train(training).double()
        assert untracked.uses_batch_statistics
        y, _ = untracked.forward(xs[1], ctx, (1,))
        with torch.no_grad():
            torch.testing.assert_close(y, untracked_module(xs[1]))
        assert untracked.running_mean is None and untracked.running_var is None and untracked.buffers() == {}


def test_batchnorm2d_construction_defaults_as_torch_and_keeps_every_option() -> None:
    module = torch.nn.BatchNorm2d(3, dtype=torch.float32)
    layer = BatchNorm2d(torch.ones(3), torch.zeros(3))
    assert (layer.C, layer.eps, layer.momentum, layer.num_batches_tracked) == (3, module.eps, module.momentum, 0)
    assert layer.training is module.training is True and layer.track_running_stats and not layer.unbiased
    assert layer.uses_batch_statistics
    assert set(layer.params) == {"gamma", "beta"}
    assert layer.running_mean is not None and layer.running_var is not None
    assert torch.equal(layer.running_mean, module.running_mean)  # type: ignore[arg-type]
    assert torch.equal(layer.running_var, module.running_var)  # type: ignore[arg-type]
    assert layer.running_mean.dtype == torch.float32
    mean, var = torch.full((2,), 0.5), torch.full((2,), 2.0)
    given = BatchNorm2d(
        C=2, eps=0.5, momentum=None, running_mean=mean, running_var=var, num_batches_tracked=4, unbiased=True
    )
    assert (given.C, given.eps, given.momentum, given.num_batches_tracked, given.unbiased) == (2, 0.5, None, 4, True)
    assert given.running_mean is mean and given.running_var is var and given.params == {}
    given.set_training(False)
    assert not given.uses_batch_statistics
    untracked = BatchNorm2d(C=2, track_running_stats=False, running_mean=mean)
    assert untracked.running_mean is None and untracked.running_var is None and not untracked.track_running_stats
    with pytest.raises(ValueError, match=r"^BatchNorm1d: give both gamma and beta \(affine\) or neither$"):
        BatchNorm2d(torch.ones(3))


def test_batchnorm2d_describes_its_mode_and_options() -> None:
    layer = BatchNorm2d(torch.ones(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64))
    assert layer.describe() == "BatchNorm2d(3, batch statistics)"
    assert layer.intermediates == ("xhat",)
    layer.set_training(False)
    assert layer.describe() == "BatchNorm2d(3, running statistics)"
    assert BatchNorm2d(C=3).describe() == "BatchNorm2d(3, batch statistics, no affine)"
    assert (
        BatchNorm2d(C=3, unbiased=True).describe() == "BatchNorm2d(3, batch statistics, unbiased variance, no affine)"
    )
    untracked = BatchNorm2d(C=3, track_running_stats=False)
    untracked.set_training(False)
    assert untracked.describe() == "BatchNorm2d(3, batch statistics, no affine)"


def test_batchnorm2d_input_check_accepts_torch_shapes_and_names_the_layer_otherwise() -> None:
    # torch.nn.BatchNorm2d(3) takes (N, 3, H, W) with N H W >= 2 values per channel in training mode
    # (one image of two positions will do); anything else is refused with the layer's place, description,
    # the shape it needs and what it got.
    layer = BatchNorm2d(C=3)
    for shape in [(1, 3, 1, 2), (1, 3, 2, 1), (2, 3, 1, 1), (2, 3, 4, 5)]:
        layer.check_input(torch.zeros(shape, dtype=torch.float64), (1,))
        torch.nn.BatchNorm2d(3)(torch.zeros(shape))
    message = (
        r"^layer 2\.1 \(BatchNorm2d\(3, batch statistics, no affine\)\) needs input \(N, 3, H, W\), "
        r"got shape {}, dtype float64, device cpu$"
    )
    for wrong, shown in [((2, 4, 2, 2), r"\(2, 4, 2, 2\)"), ((2, 3, 4), r"\(2, 3, 4\)"), ((2, 3), r"\(2, 3\)")]:
        with pytest.raises(ValueError, match=message.format(shown)):
            layer.check_input(torch.zeros(wrong, dtype=torch.float64), (2, 1))
    for unbiased, why in [
        (False, "the variance of one value is 0"),
        (True, "the unbiased variance divides by N H W - 1 = 0"),
    ]:
        one = BatchNorm2d(C=3, unbiased=unbiased)
        with pytest.raises(
            ValueError,
            match=rf"^layer 3 \({re.escape(one.describe())}\) needs N H W >= 2 values per channel in training mode "
            rf"\({why}\), got shape \(1, 3, 1, 1\), dtype float64, device cpu$",
        ):
            one.check_input(torch.zeros(1, 3, 1, 1, dtype=torch.float64), (3,))
        one.set_training(False)
        one.check_input(torch.zeros(1, 3, 1, 1, dtype=torch.float64), (3,))  # eval: one value is fine


def test_batchnorm2d_release_drops_the_lean_statistics_and_keeps_the_full_cache() -> None:
    layer, _, x, _ = _batchnorm2d_case(torch.float64)
    _, stats = layer.forward(x, ForwardContext(keep_intermediates=False), (1,))
    assert isinstance(stats, NormStats)
    layer.release(stats)
    assert stats.mu.numel() == stats.rstd.numel() == 0
    _, cache = layer.forward(x, ForwardContext(), (1,))
    assert isinstance(cache, NormCache)
    xhat = cache.xhat
    layer.release(cache)
    assert cache.xhat is xhat


def _torch_norm2d_second(
    y_of_x: Callable[[Tensor, dict[str, Tensor]], Tensor], xhat_of: Callable[[Tensor], Tensor],
    layer: Layer, x: Tensor, g: Tensor, Rx: Tensor, Rg: Tensor, V: dict[str, Tensor],
) -> tuple[Tensor, Tensor, Tensor, Tensor, dict[str, Tensor], Tensor]:  # fmt: skip
    """torch.func in float64 on y_of_x(x, {gamma, beta}) and xhat_of(x): R{y}, R{xhat}, dJ/dx, R{dJ/dx},
    H v at the layer's parameters and R{dJ/dxhat}, along R{x}, V and R{dJ/dy} (per-channel gamma)."""
    params = {k: v.double() for k, v in layer.params.items()}
    directions = {k: V[k].double() for k in params}

    def grads_of(x: Tensor, p: dict[str, Tensor], g: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        dx, dp = torch.func.vjp(y_of_x, x, p)[1](g)
        return dx, dp

    x64, g64, Rx64, Rg64 = x.double(), g.double(), Rx.double(), Rg.double()
    Ry = torch.func.jvp(y_of_x, (x64, params), (Rx64, directions))[1]
    Rxhat = torch.func.jvp(xhat_of, (x64,), (Rx64,))[1]
    grads, R_grads = torch.func.jvp(grads_of, (x64, params, g64), (Rx64, directions, Rg64))[:2]
    per_channel = (-1, *([1] * (x.dim() - 2)))
    if params:
        gamma, V_gamma = params["gamma"].view(per_channel), directions["gamma"].view(per_channel)
        R_dxhat = torch.func.jvp(torch.mul, (g64, gamma), (Rg64, V_gamma))[1]
    else:
        R_dxhat = Rg64
    return Ry, Rxhat, grads[0], R_grads[0], R_grads[1], R_dxhat


@pytest.mark.parametrize("mode", ["train", "unbiased", "eval"])
@pytest.mark.parametrize("lean", [False, True], ids=["full", "lean"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_batchnorm2d_tangent_and_r_backward_equal_torch_func(
    dtype: torch.dtype, affine: bool, lean: bool, mode: str
) -> None:
    # Channels of x, R{x}, dJ/dy and R{dJ/dy} close to constant over the batch and positions (full mode;
    # ordinary ones in lean mode, whose statistics are in the input's dtype), so float32 must accumulate in
    # float64 to stay at a few roundings of torch's float64 values; every result in the input's dtype.
    gen = torch.Generator().manual_seed(42)
    C, shape = 3, (2, 3, 2, 3)

    def near_constant() -> Tensor:
        return (1 + (1.0 if lean else 1e-3) * torch.randn(shape, generator=gen, dtype=torch.float64)).to(dtype)

    x, g, Rx, Rg = near_constant(), near_constant(), near_constant(), near_constant()
    gamma = (torch.rand(C, generator=gen, dtype=torch.float64) + 0.5).to(dtype) if affine else None
    beta = torch.randn(C, generator=gen, dtype=torch.float64).to(dtype) if affine else None
    V = {"gamma": torch.randn(C, generator=gen).to(dtype), "beta": torch.randn(C, generator=gen).to(dtype)}
    running = (torch.rand(C, generator=gen) - 0.5).to(dtype), (torch.rand(C, generator=gen) + 0.5).to(dtype)
    layer = BatchNorm2d(
        gamma, beta, C=C, eps=0.25, running_mean=running[0], running_var=running[1], unbiased=mode == "unbiased"
    )
    layer.set_training(mode != "eval")
    stats = (None, None) if mode != "eval" else (running[0].double(), running[1].double())

    def xhat_of(x: Tensor) -> Tensor:
        if mode == "unbiased":
            return unbiased_batch_norm(x, 0.25)
        return F.batch_norm(x, stats[0], stats[1], None, None, mode != "eval", 0.0, 0.25)

    def y_of(x: Tensor, p: dict[str, Tensor]) -> Tensor:
        return xhat_of(x) * p["gamma"].view(-1, 1, 1) + p["beta"].view(-1, 1, 1) if p else xhat_of(x)

    path = (2,)
    directions = Params({Key(k, path): V[k] for k in layer.params})
    expected = _torch_norm2d_second(y_of, xhat_of, layer, x, g, Rx, Rg, V)
    forward = ForwardContext(keep_intermediates=not lean, update_stats=False)
    _assert_norm_r_ops(layer, x, g, Rx, Rg, directions, path, forward, dtype, expected)


def test_batchnorm2d_tangent_of_indices_names_the_layer() -> None:
    layer = BatchNorm2d(C=3)
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64)
    y, cache = layer.forward(x, ForwardContext(), (1,))
    with pytest.raises(AssertionError, match=r"^BatchNorm's input is never indices: it always has a tangent(\n|$)"):
        layer.tangent(x, None, y, cache, Params({}), (1,))


@pytest.mark.parametrize("unbiased", [False, True], ids=["biased", "unbiased"])
def test_batchnorm2d_channel_scale_is_what_torch_divides_each_channel_by(unbiased: bool) -> None:
    gen = torch.Generator().manual_seed(43)
    x = torch.randn(3, 3, 2, 4, generator=gen, dtype=torch.float64) * torch.tensor([0.5, 2.0, 7.0]).view(1, 3, 1, 1)
    layer = BatchNorm2d(C=3, eps=0.1, unbiased=unbiased)
    pieces = layer.pieces
    assert pieces is not None and pieces.scale is not None
    s = pieces.scale(x)
    assert s.shape == x.shape
    want = unbiased_batch_norm(x, 0.1) if unbiased else F.batch_norm(x, None, None, training=True, eps=0.1)
    torch.testing.assert_close((x - x.mean((0, 2, 3), keepdim=True)) / s, want)
    layer.set_training(False)
    assert layer.pieces is None  # running statistics: affine in x


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "none"])
@pytest.mark.parametrize("mode", ["train", "unbiased", "eval"])
def test_batchnorm2d_oracle_is_torch_batch_norm_with_its_eps_and_the_statistics_it_used(
    mode: str, affine: bool
) -> None:
    # The oracle refbp.verify differentiates: torch's batch norm over the batch and positions with the
    # layer's eps (unbiased: the Bessel-corrected variance), the cancellation size (|x| + |mean|) /
    # sqrt(var + eps) of xhat with the per-channel statistics it normalised by (the running ones, in x's
    # dtype, in eval), and the per-channel affine: torch's module's output.
    layer, module, x, _ = _batchnorm2d_case(torch.float64, affine=affine, seed=44)
    if mode == "unbiased":
        layer = BatchNorm2d(layer.params.get("gamma"), layer.params.get("beta"), C=4, eps=0.25, unbiased=True)
    layer.set_training(mode != "eval")
    module.train(mode != "eval")
    assert layer.running_mean is not None and layer.running_var is not None
    stats32 = layer.running_mean.float(), layer.running_var.float()
    if mode == "eval":  # running statistics in float32, x in float64: the oracle converts them to x's dtype
        layer.running_mean, layer.running_var = stats32
    tap = _BNSizeTap()
    path = (3,)
    p = Params({Key(k, path): v for k, v in layer.params.items()})
    out = layer.torch_forward(x, p, {}, tap, path)
    over = (0, 2, 3)
    if mode == "eval":
        mean, var = stats32[0].double().view(1, -1, 1, 1), stats32[1].double().view(1, -1, 1, 1)
        xhat = F.batch_norm(x, mean.flatten(), var.flatten(), training=False, eps=0.25)
    else:
        mean, var = x.mean(over, keepdim=True), x.var(over, unbiased=mode == "unbiased", keepdim=True)
        xhat = (x - mean) / (var + 0.25).sqrt()
    assert out.dtype == torch.float64
    if mode == "train":
        torch.testing.assert_close(xhat, F.batch_norm(x, None, None, training=True, eps=0.25))
    if mode != "unbiased":
        with torch.no_grad():
            torch.testing.assert_close(out, copy.deepcopy(module)(x))
    want = xhat * layer.params["gamma"].view(-1, 1, 1) + layer.params["beta"].view(-1, 1, 1) if affine else xhat
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(tap.sizes[Key("xhat", path)], (x.abs() + mean.abs()) / (var + 0.25).sqrt())


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "none"])
@pytest.mark.parametrize("tracked", [True, False], ids=["tracked", "untracked"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("momentum", [0.3, None], ids=["m=0.3", "m=None"])
def test_batchnorm2d_to_torch_is_the_same_torch_module(
    momentum: float | None, dtype: torch.dtype, tracked: bool, affine: bool
) -> None:
    gen = torch.Generator().manual_seed(45)
    gamma = (torch.rand(4, generator=gen, dtype=torch.float64) + 0.5).to(dtype) if affine else None
    beta = torch.randn(4, generator=gen, dtype=torch.float64).to(dtype) if affine else None
    stats = (torch.randn(4, generator=gen).to(dtype), (torch.rand(4, generator=gen) + 0.5).to(dtype))
    layer = BatchNorm2d(
        gamma, beta, C=4, eps=0.25, momentum=momentum, track_running_stats=tracked, num_batches_tracked=5,
        running_mean=stats[0] if tracked else None, running_var=stats[1] if tracked else None,
    )  # fmt: skip
    x = torch.randn(3, 4, 2, 2, generator=gen, dtype=torch.float64).to(dtype if affine or tracked else torch.float32)
    for training in (True, False):
        layer.set_training(training)
        module = layer.to_torch()
        assert isinstance(module, torch.nn.BatchNorm2d) and module.training is training and module.num_features == 4
        assert (module.eps, module.momentum, module.affine, module.track_running_stats) == (
            0.25, momentum, affine, tracked,
        )  # fmt: skip
        assert (module.weight is None) == (not affine) and (module.running_mean is None) == (not tracked)
        if affine:
            assert torch.equal(module.weight, gamma) and torch.equal(module.bias, beta)  # type: ignore[arg-type]
        if affine or tracked:  # torch's default dtype otherwise
            assert next(module.parameters(), module.running_mean).dtype == dtype  # type: ignore[union-attr]
        if tracked:
            assert module.running_mean is not None and module.running_var is not None
            assert torch.equal(module.running_mean, stats[0]) and torch.equal(module.running_var, stats[1])
            assert int(module.num_batches_tracked) == 5  # type: ignore[arg-type]
        y, _ = layer.forward(x, ForwardContext(update_stats=False), (1,))
        with torch.no_grad():
            torch.testing.assert_close(module(x), y)


def test_unbiased_batchnorm2d_to_torch_names_what_to_do_instead() -> None:
    with pytest.raises(
        ValueError, match=r"^BatchNorm2d\(3, batch statistics, unbiased variance, no affine\) has no torch module: "
        r"torch\.nn\.BatchNorm2d normalises by the biased variance"
    ):  # fmt: skip
        BatchNorm2d(C=3, unbiased=True).to_torch()


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "none"])
@pytest.mark.parametrize("tracked", [True, False], ids=["tracked", "untracked"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batchnorm2d_from_torch_module_keeps_its_parameters_statistics_and_options(
    training: bool, tracked: bool, affine: bool
) -> None:
    gen = torch.Generator().manual_seed(46)
    module = torch.nn.BatchNorm2d(4, eps=0.25, momentum=0.3, affine=affine, track_running_stats=tracked)
    with torch.no_grad():
        if affine:
            module.weight.uniform_(0.5, 1.5, generator=gen)
            module.bias.uniform_(-0.5, 0.5, generator=gen)
        if tracked:
            module(torch.randn(3, 4, 2, 2, generator=gen))  # moves the running statistics, counts one batch
            module(torch.randn(3, 4, 2, 2, generator=gen))
    module.train(training)
    layer = convert_module(module, "module[0]")
    assert isinstance(layer, BatchNorm2d)
    assert (layer.C, layer.eps, layer.momentum, layer.track_running_stats, layer.training) == (
        4, 0.25, 0.3, tracked, training,
    )  # fmt: skip
    assert set(layer.params) == ({"gamma", "beta"} if affine else set())
    if affine:
        assert torch.equal(layer.params["gamma"], module.weight) and torch.equal(layer.params["beta"], module.bias)
        assert layer.params["gamma"] is not module.weight  # its own copy: refbp's training leaves torch's alone
    if tracked:
        assert layer.num_batches_tracked == 2
        assert torch.equal(layer.running_mean, module.running_mean)  # type: ignore[arg-type]
        assert torch.equal(layer.running_var, module.running_var)  # type: ignore[arg-type]
        assert layer.running_mean is not module.running_mean
    else:
        assert layer.running_mean is None and layer.running_var is None and layer.num_batches_tracked == 0
    x = torch.randn(3, 4, 2, 2, generator=gen)
    y, _ = layer.forward(x, ForwardContext(update_stats=False), (1,))
    with torch.no_grad():
        torch.testing.assert_close(copy.deepcopy(module)(x), y)


# ---- GroupNorm ------------------------------------------------------------------------------------
def _groupnorm_case(
    dtype: torch.dtype, affine: bool = True, G: int = 2, seed: int = 50, shape: tuple[int, ...] = (3, 4, 2, 3),
    centre: float = 1.5,
) -> tuple[GroupNorm, torch.nn.GroupNorm, Tensor, Tensor]:  # fmt: skip
    """refbp's GroupNorm(G) and torch's (eps 0.25), an input x (N, C, *) whose groups differ in spread,
    and a dJ/dy, all in dtype."""
    gen = torch.Generator().manual_seed(seed)
    C = shape[1]
    module = torch.nn.GroupNorm(G, C, eps=0.25, affine=affine, dtype=torch.float64)
    if affine:
        with torch.no_grad():
            module.weight.uniform_(0.5, 1.5, generator=gen)
            module.bias.uniform_(-0.5, 0.5, generator=gen)
    module = module.to(dtype)
    gamma = module.weight.detach().clone() if affine else None
    beta = module.bias.detach().clone() if affine else None
    layer = GroupNorm(G, gamma, beta, C=C, eps=0.25)
    scales = torch.linspace(0.5, 3.0, shape[0] * C, dtype=torch.float64).view(shape[0], C, *([1] * (len(shape) - 2)))
    x = (centre + scales * torch.randn(shape, generator=gen, dtype=torch.float64)).to(dtype)
    G_ = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    return layer, module, x, G_


@pytest.mark.parametrize("shape", [(3, 4, 2, 3), (2, 4, 5)], ids=["images", "sequences"])
@pytest.mark.parametrize("groups", [1, 2, 4])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "none"])
@pytest.mark.parametrize("lean", [False, True], ids=["full", "lean"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_groupnorm_forward_and_backward_equal_torch_module(
    dtype: torch.dtype, lean: bool, affine: bool, groups: int, shape: tuple[int, ...]
) -> None:
    # y, xhat in the walk-through, and in the backward dJ/dx, the parameters' gradients and dJ/dxhat,
    # with and without dJ/dx, keeping dJ/dy unless allowed not to: torch's module's, for (N, C, H, W)
    # and (N, C, L) inputs, one group, several, or one channel a group.
    layer, module, x, G = _groupnorm_case(dtype, affine, groups, shape=shape)
    y, cache = layer.forward(x, ForwardContext(keep_intermediates=not lean), (1,))
    want_y, want_dx, want_params = _torch_grads(module, x, G)
    assert y.dtype == dtype and y.shape == x.shape
    torch.testing.assert_close(y, want_y)
    _assert_backward_equals_torch_module(layer, module, x, y, cache, G, lean, dtype, want_dx, want_params)


@pytest.mark.parametrize("lean", [False, True], ids=["full", "lean"])
def test_groupnorm_of_a_single_image_equals_torch_module(lean: bool) -> None:
    # A batch of one image (torch normalises its groups all the same): y, dJ/dx and the parameters' gradients.
    layer, module, x, G = _groupnorm_case(torch.float64, seed=62, shape=(1, 4, 3, 2))
    y, cache = layer.forward(x, ForwardContext(keep_intermediates=not lean), (1,))
    got = layer.backward(G.clone(), x, y, cache, BackwardContext((1,)))
    want_y, want_dx, want_params = _torch_grads(module, x, G)
    torch.testing.assert_close(y, want_y)
    torch.testing.assert_close(got.dJ_dx, want_dx)
    for kind, want in want_params.items():
        torch.testing.assert_close(got.params[kind], want)


def test_float32_groupnorm_of_nearly_constant_groups_is_float64_torch_rounded_once() -> None:
    # Groups of nearly equal numbers and a dJ/dy nearly constant over each group: x - mean and dJ/dxhat -
    # its mean cancel most of their digits. The full pass computes in float64 (LayerNorm's) and rounds
    # once, so float32 results are torch's float64 ones to a few float32 roundings.
    gen = torch.Generator().manual_seed(51)
    for G in (1, 2):
        x = (1 + 1e-3 * torch.randn(2, 4, 3, 2, generator=gen, dtype=torch.float64)).float()
        dJ_dy = (1 + 1e-3 * torch.randn(2, 4, 3, 2, generator=gen, dtype=torch.float64)).float()
        gamma, beta = torch.rand(4, generator=gen).float() + 0.5, torch.randn(4, generator=gen).float()
        layer = GroupNorm(G, gamma, beta, eps=1e-5)
        y, cache = layer.forward(x, ForwardContext(), (1,))
        got = layer.backward(dJ_dy, x, y, cache, BackwardContext((1,)))
        module = torch.nn.GroupNorm(G, 4, dtype=torch.float64)
        with torch.no_grad():
            module.weight.copy_(gamma)
            module.bias.copy_(beta)
        y64, dx64, params64 = _torch_grads(module, x.double(), dJ_dy.double())
        ulp = 2.0**-23
        assert got.dJ_dx is not None
        pairs = [(y, y64), (got.dJ_dx, dx64), (got.params["gamma"], params64["gamma"])]
        for value, want in [*pairs, (got.params["beta"], params64["beta"])]:
            assert value.dtype == torch.float32
            torch.testing.assert_close(value.double(), want, rtol=0, atol=4 * ulp * float(want.abs().max()))


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "none"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_lean_half_precision_groupnorm_is_torch_in_float32_returned_in_the_input_dtype(
    dtype: torch.dtype, affine: bool
) -> None:
    # Groups far from 0 (x - mu cancels most of x's digits) and a dJ/dy far from 0 (dJ/dxhat - its mean
    # cancels most of its digits): a half-precision training step computes in float32, as torch's CPU
    # kernel, and returns y, every gradient and the reported dJ/dxhat in the input's dtype, to a few of its
    # roundings, whether dJ/dy's storage may be reused or not.
    layer, module, x, G = _groupnorm_case(dtype, affine, seed=52, shape=(2, 4, 4, 4), centre=40.0)
    G = (30 + 0.3 * G.double()).to(dtype)
    module32 = copy.deepcopy(module).float()
    y, stats = layer.forward(x, ForwardContext(keep_intermediates=False), (1,))
    assert isinstance(stats, NormStats) and stats.rstd.dtype == torch.float32
    want_y, want_dx, want_params = _torch_grads(module32, x.float(), G.float())
    _, want_dxhat = _torch_xhat_grad(module32, x.float(), G.float())
    unit = torch.finfo(dtype).eps
    for overwrite, keep in ((False, False), (True, False), (True, True)):
        ctx = BackwardContext((1,), keep_intermediates=keep, overwrite=overwrite)
        got = layer.backward(G.clone(), x, y, stats, ctx)
        assert got.dJ_dx is not None and set(got.params) == set(want_params)
        pairs = [(y, want_y), (got.dJ_dx, want_dx)] + [(got.params[k], want_params[k]) for k in want_params]
        assert list(got.intermediates) == ([Key("xhat", (1,))] if keep else [])
        pairs += [(got.intermediates[Key("xhat", (1,))], want_dxhat)] if keep else []
        for value, want in pairs:
            assert value.dtype == dtype
            torch.testing.assert_close(value.float(), want, rtol=0, atol=4 * unit * float(want.abs().max()))


def test_lean_groupnorm_forward_then_teaching_backward_from_a_loss_reports_torch_dJ_da() -> None:
    # The loss's dJ/da is the network's own (overwrite=True) but also reported (keep_intermediates):
    # the lean backward must not compute dJ/dxhat or dJ/dx in its storage.
    for affine in (True, False):
        layer, module, x, _ = _groupnorm_case(torch.float64, affine, seed=60)
        target = torch.randn(x.shape, generator=torch.Generator().manual_seed(61), dtype=torch.float64)
        net = Network([layer], "mse")
        grads = net.backward(net.forward(x, keep_intermediates=False), target, keep_intermediates=True).as_dict()
        xx = x.clone().requires_grad_()
        y = module(xx)
        y.retain_grad()
        F.mse_loss(y, target).backward()
        torch.testing.assert_close(grads["a1"], y.grad)
        torch.testing.assert_close(grads["X"], xx.grad)


def test_groupnorm_lean_backward_of_a_non_contiguous_dJ_dy_is_torch() -> None:
    # dJ/dy every other image of a larger batch (not contiguous) that the loop owns: the backward computes
    # in a contiguous copy, not in dJ/dy's storage, which no (N G, K) view of the groups can address.
    layer, module, x, G = _groupnorm_case(torch.float64, seed=53, shape=(2, 4, 3, 3))
    y, stats = layer.forward(x, ForwardContext(keep_intermediates=False), (1,))
    dJ_dy = torch.stack([G, torch.zeros_like(G)], dim=1).flatten(0, 1)[::2]
    assert not dJ_dy.is_contiguous() and torch.equal(dJ_dy, G)
    got = layer.backward(dJ_dy, x, y, stats, BackwardContext((1,), keep_intermediates=False, overwrite=True))
    _, want_dx, want_params = _torch_grads(module, x, G)
    torch.testing.assert_close(got.dJ_dx, want_dx)
    for kind, want in want_params.items():
        torch.testing.assert_close(got.params[kind], want)


def test_groupnorm_construction_refuses_what_torch_cannot_be_and_defaults_as_torch() -> None:
    with pytest.raises(ValueError, match=r"^GroupNorm: give both gamma and beta \(affine\) or neither$"):
        GroupNorm(2, torch.ones(4))
    with pytest.raises(ValueError, match=r"^GroupNorm: give both gamma and beta \(affine\) or neither$"):
        GroupNorm(2, None, torch.zeros(4))
    with pytest.raises(ValueError, match=r"^GroupNorm without gamma needs C, the number of channels$"):
        GroupNorm(2)
    for groups in (3, 0, -2, 2.0, 5):
        with pytest.raises(
            ValueError, match=rf"^GroupNorm: num_groups={re.escape(repr(groups))} must be an int >= 1 dividing C = 4$"
        ):
            GroupNorm(groups, C=4)  # type: ignore[arg-type]
    module = torch.nn.GroupNorm(2, 4)
    layer = GroupNorm(2, torch.ones(4), torch.zeros(4))
    assert (layer.G, layer.C, layer.eps, layer.training) == (module.num_groups, module.num_channels, module.eps, True)
    assert isinstance(layer.eps, float) and set(layer.params) == {"gamma", "beta"}
    bare = GroupNorm(4, C=4, eps=1)
    assert (bare.G, bare.C, bare.eps, bare.params) == (4, 4, 1.0, {}) and isinstance(bare.eps, float)
    assert GroupNorm(1, torch.ones(6), torch.zeros(6), C=3).C == 6  # gamma's length wins
    assert layer.intermediates == ("xhat",)


def test_groupnorm_describes_itself_and_checks_its_input_as_torch() -> None:
    assert GroupNorm(2, torch.ones(4), torch.zeros(4)).describe() == "GroupNorm(2 groups, 4 channels)"
    layer = GroupNorm(2, C=4)
    assert layer.describe() == "GroupNorm(2 groups, 4 channels, no affine)"
    for shape in [(1, 4), (2, 4, 1), (2, 4, 3), (1, 4, 2, 2), (2, 4, 1, 1, 1)]:
        layer.check_input(torch.zeros(shape, dtype=torch.float64), (1,))
        torch.nn.GroupNorm(2, 4)(torch.zeros(shape))
    message = (
        r"^layer 2\.1 \(GroupNorm\(2 groups, 4 channels, no affine\)\) needs input \(N, 4, \.\.\.\), "
        r"got shape {}, dtype float64, device cpu$"
    )
    for shape, shown in [((2, 3, 2), r"\(2, 3, 2\)"), ((4,), r"\(4,\)"), ((2, 5), r"\(2, 5\)")]:
        with pytest.raises(ValueError, match=message.format(shown)):
            layer.check_input(torch.zeros(shape, dtype=torch.float64), (2, 1))
    per_channel = GroupNorm(4, C=4)
    with pytest.raises(
        ValueError,
        match=r"^layer 3\.2 \(GroupNorm\(4 groups, 4 channels, no affine\)\) needs at least 2 values per group, "
        r"got shape \(2, 4, 1\), dtype float64, device cpu \(one value normalises to 0 whatever it is: torch "
        r"returns beta there, and no gradient reaches x\)$",
    ):
        per_channel.check_input(torch.zeros(2, 4, 1, dtype=torch.float64), (3, 2))
    per_channel.check_input(torch.zeros(2, 4, 2, dtype=torch.float64), (3,))


@pytest.mark.parametrize("lean", [False, True], ids=["full", "lean"])
def test_groupnorm_forward_checks_its_input_and_names_the_layer_place(lean: bool) -> None:
    layer = GroupNorm(2, C=4)
    with pytest.raises(
        ValueError,
        match=r"^layer 2\.1 \(GroupNorm\(2 groups, 4 channels, no affine\)\) needs input \(N, 4, \.\.\.\), "
        r"got shape \(2, 3, 2\), dtype float64, device cpu$",
    ):
        layer.forward(torch.zeros(2, 3, 2, dtype=torch.float64), ForwardContext(keep_intermediates=not lean), (2, 1))


def test_groupnorm_release_drops_the_lean_statistics_and_keeps_the_full_cache() -> None:
    layer, _, x, _ = _groupnorm_case(torch.float64)
    _, stats = layer.forward(x, ForwardContext(keep_intermediates=False), (1,))
    assert isinstance(stats, NormStats)
    layer.release(stats)
    assert stats.mu.numel() == stats.rstd.numel() == 0
    _, cache = layer.forward(x, ForwardContext(), (1,))
    assert isinstance(cache, NormCache)
    xhat = cache.xhat
    layer.release(cache)
    assert cache.xhat is xhat


@pytest.mark.parametrize("shape", [(2, 4, 2, 3), (2, 4, 3)], ids=["images", "sequences"])
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("lean", [False, True], ids=["full", "lean"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_groupnorm_tangent_and_r_backward_equal_torch_func(
    dtype: torch.dtype, affine: bool, lean: bool, groups: int, shape: tuple[int, ...]
) -> None:
    # Groups of x, R{x}, dJ/dy and R{dJ/dy} close to constant (full mode; ordinary ones in lean mode, whose
    # statistics are in the input's dtype), so float32 must accumulate in float64 to stay at a few roundings
    # of torch's float64 values; every result in the input's dtype.
    gen = torch.Generator().manual_seed(54)
    C = shape[1]

    def near_constant() -> Tensor:
        return (1 + (1.0 if lean else 1e-3) * torch.randn(shape, generator=gen, dtype=torch.float64)).to(dtype)

    x, g, Rx, Rg = near_constant(), near_constant(), near_constant(), near_constant()
    gamma = (torch.rand(C, generator=gen, dtype=torch.float64) + 0.5).to(dtype) if affine else None
    beta = torch.randn(C, generator=gen, dtype=torch.float64).to(dtype) if affine else None
    V = {"gamma": torch.randn(C, generator=gen).to(dtype), "beta": torch.randn(C, generator=gen).to(dtype)}
    layer = GroupNorm(groups, gamma, beta, C=C, eps=0.25)

    def xhat_of(x: Tensor) -> Tensor:
        return F.group_norm(x, groups, None, None, 0.25)

    def y_of(x: Tensor, p: dict[str, Tensor]) -> Tensor:
        return F.group_norm(x, groups, p.get("gamma"), p.get("beta"), 0.25)

    path = (2,)
    directions = Params({Key(k, path): V[k] for k in layer.params})
    expected = _torch_norm2d_second(y_of, xhat_of, layer, x, g, Rx, Rg, V)
    forward = ForwardContext(keep_intermediates=not lean)
    _assert_norm_r_ops(layer, x, g, Rx, Rg, directions, path, forward, dtype, expected)


def test_groupnorm_tangent_of_indices_names_the_layer() -> None:
    layer = GroupNorm(2, C=4)
    x = torch.randn(2, 4, 2, dtype=torch.float64)
    y, cache = layer.forward(x, ForwardContext(), (1,))
    with pytest.raises(AssertionError, match=r"^GroupNorm's input is never indices: it always has a tangent(\n|$)"):
        layer.tangent(x, None, y, cache, Params({}), (1,))


@pytest.mark.parametrize("shape", [(3, 4, 2, 3), (2, 4, 5)], ids=["images", "sequences"])
@pytest.mark.parametrize("groups", [1, 2, 4])
def test_groupnorm_group_scale_is_what_torch_divides_each_group_by(groups: int, shape: tuple[int, ...]) -> None:
    layer, _, x, _ = _groupnorm_case(torch.float64, affine=False, G=groups, seed=55, shape=shape)
    pieces = layer.pieces
    assert pieces.scale is not None
    s = pieces.scale(x)
    assert s.shape == x.shape
    mean = x.reshape(x.shape[0], groups, -1).mean(-1, keepdim=True).expand(x.shape[0], groups, x[0].numel() // groups)
    torch.testing.assert_close((x - mean.reshape(x.shape)) / s, F.group_norm(x, groups, eps=0.25))


def test_groupnorm_scale_of_single_entry_groups_is_infinite_as_torch_output_is_constant() -> None:
    # One entry a group (a channel of one position): torch normalises every value to 0, nothing curves.
    x = torch.linspace(-5, 5, 8, dtype=torch.float64).view(2, 4, 1)
    assert torch.equal(F.group_norm(x, 4), torch.zeros_like(x))
    scale = GroupNorm(4, C=4).pieces.scale
    assert scale is not None
    s = scale(x)
    assert s.shape == x.shape and torch.isinf(s).all()


class _MovingTap(_BNSizeTap):
    """Records the cancellation sizes, and moves every centred intermediate by ``delta``."""

    def __init__(self, delta: Tensor) -> None:
        super().__init__()
        self.delta = delta

    def centred(self, key: Key, t: Tensor, size: Callable[[], Tensor]) -> Tensor:
        super().centred(key, t, size)
        return t + self.delta


@pytest.mark.parametrize("shape", [(3, 4, 2, 3), (2, 4, 5)], ids=["images", "sequences"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "none"])
def test_groupnorm_oracle_is_torch_group_norm_and_carries_what_the_tap_did_to_xhat(
    affine: bool, shape: tuple[int, ...]
) -> None:
    # The oracle refbp.verify differentiates: torch's group norm with the layer's eps and groups; the
    # cancellation size (|x| + |mean|) / sqrt(var + eps) of xhat with each image's group statistics; and a
    # tap's move of xhat reaches y through the per-channel gamma, as y = gamma (xhat + delta) + beta.
    layer, module, x, _ = _groupnorm_case(torch.float64, affine, seed=56, shape=shape)
    path = (3,)
    p = Params({Key(k, path): v for k, v in layer.params.items()})
    tap = _BNSizeTap()
    out = layer.torch_forward(x, p, {}, tap, path)
    with torch.no_grad():
        torch.testing.assert_close(out, module(x))
    groups = x.reshape(x.shape[0], 2, -1)
    mean, var = groups.mean(-1, keepdim=True), groups.var(-1, unbiased=False, keepdim=True)
    size = ((groups.abs() + mean.abs()) / (var + 0.25).sqrt()).reshape(x.shape)
    torch.testing.assert_close(tap.sizes[Key("xhat", path)], size)
    delta = torch.randn(shape, generator=torch.Generator().manual_seed(57), dtype=torch.float64)
    moved = layer.torch_forward(x, p, {}, _MovingTap(delta), path)
    xhat = F.group_norm(x, 2, eps=0.25) + delta
    per_channel = (-1, *([1] * (x.dim() - 2)))
    want = xhat * module.weight.view(per_channel) + module.bias.view(per_channel) if affine else xhat
    with torch.no_grad():
        torch.testing.assert_close(moved, want)


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_groupnorm_to_torch_is_the_same_torch_module(dtype: torch.dtype, affine: bool) -> None:
    layer, _, x, _ = _groupnorm_case(dtype, affine, seed=58)
    layer = GroupNorm(2, layer.params.get("gamma"), layer.params.get("beta"), C=4, eps=0.125)
    module = layer.to_torch()
    assert isinstance(module, torch.nn.GroupNorm)
    assert (module.num_groups, module.num_channels, module.eps, module.affine) == (2, 4, 0.125, affine)
    if affine:
        assert module.weight.dtype == dtype
        assert torch.equal(module.weight, layer.params["gamma"]) and torch.equal(module.bias, layer.params["beta"])
        assert module.weight.data_ptr() != layer.params["gamma"].data_ptr()
    y, _ = layer.forward(x, ForwardContext(), (1,))
    with torch.no_grad():
        torch.testing.assert_close(module(x if affine else x.float()), y if affine else y.float())


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "none"])
def test_groupnorm_from_torch_module_keeps_its_groups_parameters_and_eps(affine: bool) -> None:
    gen = torch.Generator().manual_seed(59)
    module = torch.nn.GroupNorm(2, 6, eps=0.125, affine=affine)
    if affine:
        with torch.no_grad():
            module.weight.uniform_(0.5, 1.5, generator=gen)
            module.bias.uniform_(-0.5, 0.5, generator=gen)
    layer = convert_module(module, "module[0]")
    assert isinstance(layer, GroupNorm)
    assert (layer.G, layer.C, layer.eps) == (2, 6, 0.125)
    assert set(layer.params) == ({"gamma", "beta"} if affine else set())
    if affine:
        assert torch.equal(layer.params["gamma"], module.weight) and torch.equal(layer.params["beta"], module.bias)
        assert layer.params["gamma"] is not module.weight
    x = torch.randn(2, 6, 3, generator=gen)
    y, _ = layer.forward(x, ForwardContext(), (1,))
    with torch.no_grad():
        torch.testing.assert_close(module(x), y)


# ---- CausalSelfAttention --------------------------------------------------------------------------
def _attention_case(
    bias: bool = True, seed: int = 70, B: int = 2, T: int = 4, d: int = 6, n_head: int = 2, dropout: float = 0.0
) -> tuple[CausalSelfAttention, dict[str, Tensor], Tensor]:
    """refbp's attention (float64, random parameters), its parameters by name and an input x (B, T, d)."""
    gen = torch.Generator().manual_seed(seed)
    params = {
        "W_qkv": 0.5 * torch.randn(3 * d, d, generator=gen, dtype=torch.float64),
        "W_o": 0.5 * torch.randn(d, d, generator=gen, dtype=torch.float64),
    }
    if bias:
        params["b_qkv"] = torch.randn(3 * d, generator=gen, dtype=torch.float64)
        params["b_o"] = torch.randn(d, generator=gen, dtype=torch.float64)
    layer = CausalSelfAttention(
        params["W_qkv"], params["W_o"], params.get("b_qkv"), params.get("b_o"), n_head=n_head, dropout=dropout
    )
    return layer, params, torch.randn(B, T, d, generator=gen, dtype=torch.float64)


def _torch_attention(
    x: Tensor, p: dict[str, Tensor], n_head: int, keep: Tensor | None = None, dropout: float = 0.0
) -> dict[str, Tensor]:
    """torch's causal attention, step by step (F.linear, F.softmax of the masked scores, the dropout
    keep-mask ``keep`` applied to the probabilities as inverted dropout): q, k, v (B, nh, T, hs),
    att (B, nh, T, T), y (B, T, d) and out (B, T, d)."""
    B, T, d = x.shape
    hs = d // n_head
    q, k, v = (
        t.reshape(B, T, n_head, hs).transpose(1, 2) for t in F.linear(x, p["W_qkv"], p.get("b_qkv")).split(d, dim=2)
    )
    future = torch.ones(T, T, dtype=torch.bool).triu(diagonal=1)
    att = F.softmax((q @ k.transpose(-2, -1) / hs**0.5).masked_fill(future, float("-inf")), dim=-1)
    dropped = att if keep is None else att * keep / (1.0 - dropout)
    y = (dropped @ v).transpose(1, 2).reshape(B, T, d)
    return {"q": q, "k": k, "v": v, "att": att, "y": y, "out": F.linear(y, p["W_o"], p.get("b_o"))}


@pytest.mark.parametrize("lean", [False, True], ids=["teaching", "lean"])
def test_attention_walk_through_shows_torch_q_k_v_probabilities_and_y(lean: bool) -> None:
    # cached_values is what refbp explain shows: q, k, v and y as torch computes them, at the layer's place,
    # and the probabilities P only where the forward pass kept them (the teaching mode).
    layer, params, x = _attention_case()
    out, cache = layer.forward(x, ForwardContext(keep_intermediates=not lean), (2, 1))
    want = _torch_attention(x, params, 2)
    torch.testing.assert_close(out, want["out"])
    shown = layer.cached_values(cache, (2, 1))
    kinds = ["q", "k", "v", "y"] + ([] if lean else ["att"])
    assert set(shown) == {Key(kind, (2, 1)) for kind in kinds}
    for kind in kinds:
        torch.testing.assert_close(shown[Key(kind, (2, 1))], want[kind])


def _torch_attention_second(
    x: Tensor, params: dict[str, Tensor], n_head: int, g: Tensor, Rx: Tensor, V: dict[str, Tensor], Rg: Tensor,
    keep: Tensor | None, dropout: float,
) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:  # fmt: skip
    """torch.func on the step-by-step attention (the dropout keep-mask given): R{out}, dJ/dx, R{dJ/dx}
    and H v by parameter."""

    def out_of(x: Tensor, p: dict[str, Tensor]) -> Tensor:
        return _torch_attention(x, p, n_head, keep, dropout)["out"]

    def grads_of(x: Tensor, p: dict[str, Tensor], g: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        dx, dp = torch.func.vjp(out_of, x, p)[1](g)
        return dx, dp

    R_out = torch.func.jvp(out_of, (x, params), (Rx, V))[1]
    grads, R_grads = torch.func.jvp(grads_of, (x, params, g), (Rx, V, Rg))[:2]
    return R_out, grads[0], R_grads[0], R_grads[1]


@pytest.mark.parametrize("dropout", [0.0, 0.5], ids=["p=0", "p=0.5"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("lean", [False, True], ids=["teaching", "lean"])
def test_attention_second_order_from_either_cache_equals_torch_func(lean: bool, bias: bool, dropout: float) -> None:
    # The tangent and the R-backward read P from a teaching cache, or rebuild it from q and k (a training
    # step's cache keeps no P), with or without dropout on P (the forward pass's keep-mask): torch.func's
    # R{out}, dJ/dx, R{dJ/dx} and H v either way.
    layer, params, x = _attention_case(bias, seed=71, dropout=dropout)
    gen = torch.Generator().manual_seed(72)
    g, Rx, Rg = (torch.randn(x.shape, generator=gen, dtype=torch.float64) for _ in range(3))
    V = {k: torch.randn(v.shape, generator=gen, dtype=torch.float64) for k, v in params.items()}
    path = (1,)
    out, cache = layer.forward(x, ForwardContext(keep_intermediates=not lean), path)
    assert (cache.P is None) == lean
    directions = Params({Key(k, path): v for k, v in V.items()})
    assert (cache.mask is None) == (dropout == 0.0)
    R_out, dx, R_dx, R_dp = _torch_attention_second(x, params, 2, g, Rx, V, Rg, cache.mask, dropout)
    t = layer.tangent(x, Rx, out, cache, directions, path)
    torch.testing.assert_close(t.out, R_out)
    dJ_dx, got = layer.r_backward(g, Rg, x, Rx, out, t, cache, directions, SecondContext(path))
    torch.testing.assert_close(dJ_dx, dx)
    torch.testing.assert_close(got.dJ_dx, R_dx)
    assert set(got.params) == set(R_dp)
    for kind, want in R_dp.items():
        torch.testing.assert_close(got.params[kind], want)


def test_attention_release_drops_every_tensor_of_the_cache() -> None:
    layer, _, x = _attention_case(dropout=0.5)
    _, cache = layer.forward(x, ForwardContext(), (1,))
    assert cache.mask is not None and cache.P is not None
    layer.release(cache)
    assert isinstance(cache.qkv, Tensor) and isinstance(cache.y, Tensor)
    assert cache.qkv.numel() == cache.y.numel() == 0
    assert cache.mask is None and cache.P is None


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_attention_to_torch_keeps_its_dropout_and_mode(training: bool) -> None:
    layer, params, x = _attention_case(dropout=0.25)
    layer.set_training(training)
    module = layer.to_torch()
    assert module.training is training
    assert module.dropout == 0.25 and module.attn_dropout.p == 0.25  # type: ignore[union-attr]
    if not training:
        with torch.no_grad():
            torch.testing.assert_close(module(x), _torch_attention(x, params, 2)["out"])


def test_torch_causal_self_attention_is_nanogpt_by_scaled_dot_product_attention_without_dropout() -> None:
    # Without an active dropout (p = 0, or eval mode) the module computes exactly F.linear, then
    # F.scaled_dot_product_attention(is_causal=True), then F.linear, as its docstring says; its defaults are
    # nanoGPT's (bias, no dropout).
    gen = torch.Generator().manual_seed(73)
    x = torch.randn(2, 5, 8, generator=gen, dtype=torch.float64)
    for module in (
        TorchCausalSelfAttention(8, 2, dtype=torch.float64),
        TorchCausalSelfAttention(8, 2, dropout=0.5, dtype=torch.float64).eval(),
    ):
        assert module.c_attn.bias is not None and module.c_proj.bias is not None
        with torch.no_grad():
            for p in module.parameters():
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
            q, k, v = (
                t.view(2, 5, 2, 4).transpose(1, 2)
                for t in F.linear(x, module.c_attn.weight, module.c_attn.bias).split(8, dim=2)
            )
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(2, 5, 8)
            assert torch.equal(module(x), F.linear(y, module.c_proj.weight, module.c_proj.bias))
    assert TorchCausalSelfAttention(8, 2).attn_dropout.p == 0.0


@pytest.mark.parametrize("dropout", [0.0, 0.5], ids=["p=0", "p=0.5"])
def test_attention_second_order_intermediates_equal_torch_func(dropout: float) -> None:
    # What the teaching view shows of the second order: the tangent's R{q}, R{k}, R{v}, R{P} and R{y}, and
    # the R-backward's R{dJ/dq}, R{dJ/dk}, R{dJ/dv}, R{dJ/dP} and R{dJ/dy}, at the layer's place: torch.func's
    # jvp of torch's intermediates, and of their gradients (each the vjp of what follows it), along R{x},
    # the directions V and R{dJ/dout}.
    layer, params, x = _attention_case(seed=74, dropout=dropout)
    gen = torch.Generator().manual_seed(75)
    g, Rx, Rg = (torch.randn(x.shape, generator=gen, dtype=torch.float64) for _ in range(3))
    V = {k: torch.randn(v.shape, generator=gen, dtype=torch.float64) for k, v in params.items()}
    path = (3, 1)
    out, cache = layer.forward(x, ForwardContext(), path)
    B, T, d = x.shape
    keep = 1.0 if cache.mask is None else cache.mask / (1.0 - dropout)

    def qkv_of(x: Tensor, p: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v = (t.reshape(B, T, 2, 3).transpose(1, 2) for t in F.linear(x, p["W_qkv"], p["b_qkv"]).split(d, dim=2))
        return q, k, v

    def P_of(q: Tensor, k: Tensor) -> Tensor:
        future = torch.ones(T, T, dtype=torch.bool).triu(diagonal=1)
        return F.softmax((q @ k.transpose(-2, -1) / 3**0.5).masked_fill(future, float("-inf")), dim=-1)

    def y_of(P: Tensor, v: Tensor) -> Tensor:
        return ((P * keep) @ v).transpose(1, 2).reshape(B, T, d)

    def out_of(y: Tensor, p: dict[str, Tensor]) -> Tensor:
        return F.linear(y, p["W_o"], p["b_o"])

    def forward(x: Tensor, p: dict[str, Tensor]) -> dict[str, Tensor]:
        q, k, v = qkv_of(x, p)
        P = P_of(q, k)
        return {"q": q, "k": k, "v": v, "att": P, "y": y_of(P, v)}

    def gradients(x: Tensor, p: dict[str, Tensor], g: Tensor) -> dict[str, Tensor]:
        z = forward(x, p)
        dq, dk, dv = torch.func.vjp(lambda q, k, v: out_of(y_of(P_of(q, k), v), p), z["q"], z["k"], z["v"])[1](g)
        (dP,) = torch.func.vjp(lambda P: out_of(y_of(P, z["v"]), p), z["att"])[1](g)
        (dy,) = torch.func.vjp(lambda y: out_of(y, p), z["y"])[1](g)
        return {"q": dq, "k": dk, "v": dv, "att": dP, "y": dy}

    R_z = torch.func.jvp(forward, (x, params), (Rx, V))[1]
    R_dz = torch.func.jvp(gradients, (x, params, g), (Rx, V, Rg))[1]
    directions = Params({Key(k, path): v for k, v in V.items()})
    t = layer.tangent(x, Rx, out, cache, directions, path)
    assert set(t.intermediates) == {Key(kind, path) for kind in R_z}
    for kind, want in R_z.items():
        torch.testing.assert_close(t.intermediates[Key(kind, path)], want)
    _, got = layer.r_backward(g, Rg, x, Rx, out, t, cache, directions, SecondContext(path))
    assert set(got.intermediates) == {Key(kind, path) for kind in R_dz}
    for kind, want in R_dz.items():
        torch.testing.assert_close(got.intermediates[Key(kind, path)], want)
    _, bare = layer.r_backward(g, Rg, x, Rx, out, t, cache, directions, SecondContext(path, keep_intermediates=False))
    assert bare.intermediates == {}


@pytest.mark.parametrize("shape", [(2, 4, 6), (3, 5, 6)])
def test_attention_forward_size_is_what_its_docstring_lists_of_a_teaching_forward(shape: tuple[int, int, int]) -> None:
    # Network.forward checks forward_size against the free memory before it allocates: for a (B, T, d)
    # input, the output's shape and the entries its docstring lists, measured on a teaching forward pass:
    # the output, the cache (q k v, y, every P), the T x T mask bias, and S and P of one sequence.
    layer, _, _ = _attention_case()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(76), dtype=torch.float64)
    out, cache = layer.forward(x, ForwardContext(), (1,))
    assert cache.P is not None
    size, entries = layer.forward_size(shape)
    assert size == tuple(out.shape)
    T = shape[1]
    one_sequence = cache.P[0].numel()  # (nh, T, T)
    assert entries == out.numel() + cache.qkv.numel() + cache.y.numel() + cache.P.numel() + T * T + 2 * one_sequence


def test_attention_input_errors_name_the_layer_place_and_the_memory_estimate_takes_any_shape() -> None:
    # check_input names the layer's place, its description, the (B, T, d) it needs and what it got; the
    # memory estimate (Network.forward, before running anything) reads a later layer's input shape before
    # that layer sees its input, so it must take a shape attention refuses without failing itself.
    layer, _, _ = _attention_case()
    with pytest.raises(
        ValueError,
        match=r"^layer 2\.1 \(CausalSelfAttention\(6, 2 heads\)\) needs input \(B, T, 6\), "
        r"got shape \(4, 6\), dtype float64, device cpu$",
    ):
        layer.check_input(torch.zeros(4, 6, dtype=torch.float64), (2, 1))
    size, entries = layer.forward_size((4, 6))
    assert size == (4, 6) and entries >= 0


@pytest.mark.parametrize("need_dx", [True, False], ids=["dx", "no-dx"])
def test_attention_backward_with_weight_decay_and_without_dJ_dx_is_torch(need_dx: bool) -> None:
    # weight_decay lambda adds lambda W to the gradients of W_qkv and W_o (the decayed parameters, as a
    # training step's L2 term), not to the biases; need_dx=False returns no dJ/dx. Against autograd of
    # torch's attention plus lambda / 2 ||W||^2.
    layer, params, x = _attention_case(seed=77)
    G = torch.randn(x.shape, generator=torch.Generator().manual_seed(78), dtype=torch.float64)
    out, cache = layer.forward(x, ForwardContext(keep_intermediates=False), (1,))
    got = layer.backward(
        G, x, out, cache, BackwardContext((1,), keep_intermediates=False, need_dx=need_dx, weight_decay=0.25)
    )
    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    xx = x.clone().requires_grad_()
    J = (_torch_attention(xx, leaves, 2)["out"] * G).sum()
    J = J + 0.125 * (leaves["W_qkv"].square().sum() + leaves["W_o"].square().sum())
    J.backward()
    assert set(got.params) == set(leaves)
    for kind, leaf in leaves.items():
        torch.testing.assert_close(got.params[kind], leaf.grad)
    if need_dx:
        torch.testing.assert_close(got.dJ_dx, xx.grad)
    else:
        assert got.dJ_dx is None


def test_attention_construction_refuses_what_nanogpt_cannot_be_and_describes_itself() -> None:
    W, W_qkv = torch.zeros(6, 6, dtype=torch.float64), torch.zeros(18, 6, dtype=torch.float64)
    for bad, got in [
        (torch.zeros(6, 4, dtype=torch.float64), r"shape \(6, 4\), dtype float64, device cpu"),
        (torch.zeros(6, dtype=torch.float64), r"shape \(6,\), dtype float64, device cpu"),
        ([[0.0]], "list"),
    ]:
        with pytest.raises(ValueError, match=rf"^W_o must be a square \(d, d\) matrix, got {got}$"):
            CausalSelfAttention(W_qkv, bad, n_head=2)  # type: ignore[arg-type]
    for bad_qkv, got in [(torch.zeros(12, 6, dtype=torch.float64), r"shape \(12, 6\), dtype float64, device cpu"),
                         ("W", "str")]:  # fmt: skip
        with pytest.raises(
            ValueError, match=rf"^W_qkv must have shape \(3d, d\) = \(18, 6\) for W_o of shape \(6, 6\), got {got}$"
        ):
            CausalSelfAttention(bad_qkv, W, n_head=2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^b_qkv must have shape \(18,\) or be None, got float$"):
        CausalSelfAttention(W_qkv, W, 1.0, n_head=2)  # type: ignore[arg-type]
    with pytest.raises(
        ValueError, match=r"^b_o must have shape \(6,\) or be None, got shape \(5,\), dtype float64, device cpu$"
    ):
        CausalSelfAttention(W_qkv, W, None, torch.zeros(5, dtype=torch.float64), n_head=2)
    for n_head in (4, 0, True, 2.0):
        with pytest.raises(ValueError, match=rf"^n_head={n_head!r} must be an int >= 1 that divides n_embd = 6$"):
            CausalSelfAttention(W_qkv, W, n_head=n_head)  # type: ignore[arg-type]
    for p in (1.0, -0.1, True, "0.1"):
        with pytest.raises(ValueError, match=rf"^dropout={re.escape(repr(p))} must be a probability in \[0, 1\)$"):
            CausalSelfAttention(W_qkv, W, n_head=2, dropout=p)  # type: ignore[arg-type]
    layer = CausalSelfAttention(W_qkv, W, n_head=3)
    assert (layer.d, layer.n_head, layer.hs, layer.p, layer.seed, layer.training) == (6, 3, 2, 0.0, 0, True)
    assert layer.describe() == "CausalSelfAttention(6, 3 heads, no bias)"
    biased = CausalSelfAttention(W_qkv, W, torch.zeros(18, dtype=torch.float64), n_head=2, dropout=0.5)
    assert biased.describe() == "CausalSelfAttention(6, 2 heads, dropout 0.5)"
    biased.set_training(False)
    assert biased.describe() == "CausalSelfAttention(6, 2 heads)"


@pytest.mark.parametrize("seed", [None, 3])
def test_attention_dropout_masks_are_its_own_generator_draws_and_given_noise_is_checked(seed: int | None) -> None:
    # refbp draws attention's keep-masks on the CPU from its own generator, seeded with ``seed`` (0 by
    # default): keep where a float64 uniform draw is >= p, a bool (B, nh, T, T) mask, the one its backward and
    # noise_of use. Given noise is taken as a bool mask of the same shape, or refused naming both shapes.
    layer, params, x = _attention_case(dropout=0.5)
    if seed is not None:
        layer = CausalSelfAttention(
            params["W_qkv"], params["W_o"], params["b_qkv"], params["b_o"], n_head=2, dropout=0.5, seed=seed
        )
    draws = torch.rand((2, 2, 4, 4), dtype=torch.float64, generator=torch.Generator().manual_seed(seed or 0))
    out, cache = layer.forward(x, ForwardContext(), (1,))
    assert cache.mask is not None and cache.mask.dtype == torch.bool
    assert torch.equal(cache.mask, draws >= 0.5)
    assert torch.equal(layer.noise_of(cache, (1,))[(1,)], cache.mask)
    torch.testing.assert_close(out, _torch_attention(x, params, 2, cache.mask, 0.5)["out"])
    given = (torch.arange(64).view(2, 2, 4, 4) % 3 == 0).double()
    out, cache = layer.forward(x, ForwardContext(noise={(1,): given}), (1,))
    assert cache.mask is not None and cache.mask.dtype == torch.bool and torch.equal(cache.mask, given.bool())
    torch.testing.assert_close(out, _torch_attention(x, params, 2, given, 0.5)["out"])
    with pytest.raises(ValueError, match=r"^noise\[\(1,\)\] has shape \(2, 4\); layer \(1,\) needs \(2, 2, 4, 4\)$"):
        layer.forward(x, ForwardContext(noise={(1,): torch.ones(2, 4)}), (1,))


def test_softmax_backward_leaves_dJ_dP_alone_unless_told_to_overwrite_it() -> None:
    # dJ/dS = P o (dJ/dP - rowsum(dJ/dP o P)), autograd's gradient of torch.softmax; by default in a new
    # tensor, the caller's dJ/dP unchanged; overwrite=True computes it in dJ/dP's storage.
    gen = torch.Generator().manual_seed(79)
    S = torch.randn(2, 3, 4, generator=gen, dtype=torch.float64).requires_grad_()
    P = torch.softmax(S, dim=-1)
    dJ_dP = torch.randn(2, 3, 4, generator=gen, dtype=torch.float64)
    P.backward(dJ_dP)
    given = dJ_dP.clone()
    dJ_dS = softmax_backward(P.detach(), given)
    assert torch.equal(given, dJ_dP)
    torch.testing.assert_close(dJ_dS, S.grad)
    in_place = softmax_backward(P.detach(), given, overwrite=True)
    assert in_place.data_ptr() == given.data_ptr()
    torch.testing.assert_close(in_place, S.grad)


# ---- the transformer block ---------------------------------------------------------------------------
BlockParams = dict[tuple[str, int], Tensor]
"""A block's parameters by (refbp's kind, sub-layer j): ("gamma", 1) is ln_1's weight, ("W", 5) c_fc's."""


def _block_case(
    bias: bool = True, dropout: float = 0.0, gelu: str = "exact", seed: int = 80, d: int = 4
) -> tuple[Block, BlockParams, Tensor]:
    """refbp's block (float64, random parameters, 2 heads), its parameters and an input x (2, 3, d)."""
    gen = torch.Generator().manual_seed(seed)

    def draw(*shape: int) -> Tensor:
        return 0.5 * torch.randn(shape, generator=gen, dtype=torch.float64)

    p: BlockParams = {("gamma", 1): 1.0 + draw(d), ("W_qkv", 2): draw(3 * d, d), ("W_o", 2): draw(d, d),
                      ("gamma", 4): 1.0 + draw(d), ("W", 5): draw(4 * d, d), ("W", 7): draw(d, 4 * d)}  # fmt: skip
    if bias:
        p.update({("beta", 1): draw(d), ("b_qkv", 2): draw(3 * d), ("b_o", 2): draw(d), ("beta", 4): draw(d),
                  ("b", 5): draw(4 * d), ("b", 7): draw(d)})  # fmt: skip
    attn = CausalSelfAttention(
        p["W_qkv", 2], p["W_o", 2], p.get(("b_qkv", 2)), p.get(("b_o", 2)), n_head=2, dropout=dropout, seed=seed
    )
    block = Block(
        LayerNorm(p["gamma", 1], p.get(("beta", 1))), attn, LayerNorm(p["gamma", 4], p.get(("beta", 4))),
        Linear(p["W", 5], p.get(("b", 5))), Linear(p["W", 7], p.get(("b", 7))), dropout=dropout, seed=seed, gelu=gelu,
    )  # fmt: skip
    return block, p, torch.randn(2, 3, d, generator=gen, dtype=torch.float64)


def _torch_attention_half(
    x: Tensor, p: BlockParams, noise: dict[int, Tensor], dropout: float
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """x + dropout(attn(ln_1(x))) by torch's functions (refbp's keep-masks given by sub-layer j):
    a1, a2, a3 and resid, and attention's own q, k, v, y."""
    a1 = F.layer_norm(x, x.shape[-1:], p["gamma", 1], p.get(("beta", 1)))
    attn = {kind: p[kind, 2] for kind in ("W_qkv", "W_o", "b_qkv", "b_o") if (kind, 2) in p}
    inner = _torch_attention(a1, attn, 2, noise.get(2), dropout)
    a3 = inner["out"] if 3 not in noise else inner["out"] * noise[3] / (1.0 - dropout)
    return {"a1": a1, "a2": inner["out"], "a3": a3, "resid": x + a3}, inner


def _torch_mlp_half(
    r: Tensor, p: BlockParams, noise: dict[int, Tensor], dropout: float, gelu: str
) -> dict[str, Tensor]:
    """r + dropout(c_proj(GELU(c_fc(ln_2(r))))) by torch's functions: a4 .. a8 and y."""
    a4 = F.layer_norm(r, r.shape[-1:], p["gamma", 4], p.get(("beta", 4)))
    a5 = F.linear(a4, p["W", 5], p.get(("b", 5)))
    a6 = F.gelu(a5, approximate="tanh" if gelu == "tanh" else "none")
    a7 = F.linear(a6, p["W", 7], p.get(("b", 7)))
    a8 = a7 if 8 not in noise else a7 * noise[8] / (1.0 - dropout)
    return {"a4": a4, "a5": a5, "a6": a6, "a7": a7, "a8": a8, "y": r + a8}


def _torch_block(
    x: Tensor, p: BlockParams, noise: dict[int, Tensor] | None = None, dropout: float = 0.0, gelu: str = "exact"
) -> dict[str, Tensor]:
    """nanoGPT's block by torch's functions: every a(l,j), resid, y, and attention's q, k, v, y as "attn.*"."""
    first, inner = _torch_attention_half(x, p, noise or {}, dropout)
    return {**first, **_torch_mlp_half(first["resid"], p, noise or {}, dropout, gelu),
            **{f"attn.{kind}": inner[kind] for kind in ("q", "k", "v", "y", "att")}}  # fmt: skip


@pytest.mark.parametrize(("dropout", "gelu"), [(0.0, "exact"), (0.25, "tanh")], ids=["p=0-exact", "p=0.25-tanh"])
def test_block_second_order_and_what_it_shows_equal_torch_func(dropout: float, gelu: str) -> None:
    # The block's tangent and R-backward (its sub-layers' rules, the skip paths differentiated along v) are
    # torch.func's jvp of the block and of its vjp, with the forward pass's dropout masks: R{y}, R{r} and every
    # R{a(l,j)} shown, dJ/dx, R{dJ/dx}, H v of every parameter, and the R{dJ/dr} the teaching view shows.
    block, p, x = _block_case(dropout=dropout, gelu=gelu, seed=81)
    gen = torch.Generator().manual_seed(82)
    g, Rx, Rg = (torch.randn(x.shape, generator=gen, dtype=torch.float64) for _ in range(3))
    V = {k: torch.randn(v.shape, generator=gen, dtype=torch.float64) for k, v in p.items()}
    path = (1,)
    y, cache = block.forward(x, ForwardContext(), path)
    noise = {key[-1]: mask for key, mask in block.noise_of(cache, path).items()}
    assert set(noise) == ({2, 3, 8} if dropout else set())

    def outputs(x: Tensor, p: BlockParams) -> dict[str, Tensor]:
        return _torch_block(x, p, noise, dropout, gelu)

    def grads_of(x: Tensor, p: BlockParams, g: Tensor) -> tuple[Tensor, BlockParams, Tensor]:
        r = _torch_attention_half(x, p, noise, dropout)[0]["resid"]
        (dJ_dr,) = torch.func.vjp(lambda r: _torch_mlp_half(r, p, noise, dropout, gelu)["y"], r)[1](g)
        dx, dp = torch.func.vjp(lambda x, p: outputs(x, p)["y"], x, p)[1](g)
        return dx, dp, dJ_dr

    torch.testing.assert_close(y, outputs(x, p)["y"])
    R_out = torch.func.jvp(outputs, (x, p), (Rx, V))[1]
    want, R_want = torch.func.jvp(grads_of, (x, p, g), (Rx, V, Rg))[:2]
    directions = Params({Key(kind, (*path, j)): v for (kind, j), v in V.items()})
    t = block.tangent(x, Rx, y, cache, directions, path)
    torch.testing.assert_close(t.out, R_out["y"])
    torch.testing.assert_close(t.intermediates[Key("resid", path)], R_out["resid"])
    for j in range(1, 9):
        torch.testing.assert_close(t.intermediates[Key("a", (*path, j))], R_out[f"a{j}"])
    dJ_dx, got = block.r_backward(g, Rg, x, Rx, y, t, cache, directions, SecondContext(path))
    assert dJ_dx is not None
    torch.testing.assert_close(dJ_dx, want[0])
    torch.testing.assert_close(got.dJ_dx, R_want[0])
    assert set(got.sub_params) == {Key(kind, (*path, j)) for kind, j in p}
    for (kind, j), value in R_want[1].items():
        torch.testing.assert_close(got.sub_params[Key(kind, (*path, j))], value)
    # R{dJ/da(l,j)} of every sub-layer is shown; y = r + a(l,8) and r = x + a(l,3): dJ/da(l,8) = dJ/dy and
    # dJ/da(l,3) = dJ/dr, so R{.} of them is R{dJ/dy} and R{dJ/dr}
    torch.testing.assert_close(got.intermediates[Key("resid", path)], R_want[2])
    assert {Key("a", (*path, j)) for j in range(1, 9)} <= set(got.intermediates)
    torch.testing.assert_close(got.intermediates[Key("a", (*path, 8))], Rg)
    torch.testing.assert_close(got.intermediates[Key("a", (*path, 3))], R_want[2])
    # without dJ/dx (a first layer taking indices): no dJ/dx or R{dJ/dx}, the same H v
    none, lean = block.r_backward(g, Rg, x, Rx, y, t, cache, directions, SecondContext(path, need_dx=False))
    assert none is None and lean.dJ_dx is None
    assert set(lean.sub_params) == set(got.sub_params)
    for key, value in lean.sub_params.items():
        torch.testing.assert_close(value, got.sub_params[key])


def test_block_r_operator_without_a_teaching_cache_names_the_layer_and_what_to_do() -> None:
    # A training step's forward pass keeps only what the backward reads; the R-operator needs every a(l,j) and
    # says so, naming the block at its place (here sub-layer 2 of layer 3) as describe() shows it.
    block, p, x = _block_case(bias=False, seed=83)
    path = (3, 2)
    y, cache = block.forward(x, ForwardContext(keep_intermediates=False), path)
    directions = Params({Key(kind, (*path, j)): torch.zeros_like(v) for (kind, j), v in p.items()})
    message = (
        "layer 3.2 (Block(4, 2 heads, no bias)): the R-operator reads every a(l,j); "
        "run the forward pass with keep_intermediates=True"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        block.tangent(x, torch.zeros_like(x), y, cache, directions, path)


@pytest.mark.parametrize("lean", [False, True], ids=["teaching", "lean"])
def test_block_walk_through_shows_torch_intermediates_at_their_places(lean: bool) -> None:
    # cached_values is what refbp explain shows: every a(l,j) the forward pass kept (a training step keeps a1,
    # a4 and a5, the inputs a backward reads), the residual stream r and attention's own q, k, v, y (and P in
    # the teaching mode), each at its place and as torch computes it.
    block, p, x = _block_case(seed=84)
    path = (2,)
    _, cache = block.forward(x, ForwardContext(keep_intermediates=not lean), path)
    want = _torch_block(x, p)
    shown = block.cached_values(cache, path)
    kept = (1, 4, 5) if lean else tuple(range(1, 9))
    attention = ("q", "k", "v", "y") + (() if lean else ("att",))
    assert set(shown) == (
        {Key("a", (2, j)) for j in kept} | {Key("resid", path)} | {Key(kind, (2, 2)) for kind in attention}
    )
    for j in kept:
        torch.testing.assert_close(shown[Key("a", (2, j))], want[f"a{j}"])
    torch.testing.assert_close(shown[Key("resid", path)], want["resid"])
    for kind in attention:
        torch.testing.assert_close(shown[Key(kind, (2, 2))], want[f"attn.{kind}"])


def test_block_release_drops_every_sub_layer_cache_and_the_residual_stream() -> None:
    # As autograd frees its saved tensors after backward: the LayerNorms' row statistics, attention's q, k, v
    # and P, every kept a(l,j) and r.
    block, _, x = _block_case(dropout=0.25, seed=85)
    _, cache = block.forward(x, ForwardContext(), (1,))
    ln_1, attn, ln_2 = cache.saved[1], cache.saved[2], cache.saved[4]
    assert attn.P is not None and ln_1.mu.numel() > 0
    block.release(cache)
    assert all(a is None for a in cache.a) and all(saved is None for saved in cache.saved)
    assert isinstance(cache.resid, Tensor) and cache.resid.numel() == 0
    for stats in (ln_1, ln_2):
        assert isinstance(stats.mu, Tensor) and isinstance(stats.rstd, Tensor)
        assert stats.mu.numel() == stats.rstd.numel() == 0
    assert attn.qkv.numel() == 0 and attn.P is None


def test_block_parameters_take_nanogpt_names_in_its_torch_module() -> None:
    # Network.torch_parameter_names maps each of the block's parameters to nanoGPT's name for it in to_torch()'s
    # module (the names of tests/nanogpt_reference.py's Block, after the Sequential's index 0), holding its value.
    block, _, _ = _block_case(seed=86)
    net = Network([block], "mse")
    names, params = net.torch_parameter_names(), net.parameters()
    module = dict(net.to_torch().named_parameters())
    config = nanogpt_reference.Config(vocab_size=8, block_size=3, n_layer=1, n_head=2, n_embd=4)
    nanogpt = {f"0.{name}" for name, _ in nanogpt_reference.Block(config).named_parameters()}
    assert set(names) == set(params)
    assert sorted(name for (name,) in names.values()) == sorted(module) == sorted(nanogpt)
    for key, (name,) in names.items():
        torch.testing.assert_close(module[name], params[key])


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_block_to_torch_keeps_its_dropout_gelu_form_and_mode(training: bool) -> None:
    block, p, x = _block_case(dropout=0.25, gelu="tanh", seed=87)
    block.set_training(training)
    module = block.to_torch()
    assert isinstance(module, TorchBlock) and module.training is training
    assert module.resid_dropout.p == module.mlp.dropout.p == 0.25
    assert module.mlp.gelu.approximate == "tanh"
    if not training:
        with torch.no_grad():
            torch.testing.assert_close(module(x), _torch_block(x, p, gelu="tanh")["y"])


def test_torch_block_and_mlp_defaults_are_nanogpt_s_no_dropout_and_exact_gelu() -> None:
    # nanoGPT's Block (tests/nanogpt_reference.py: dropout 0, torch.nn.GELU()) computes the same function in
    # training mode as TorchBlock built with the defaults from the same modules.
    block, p, x = _block_case(seed=88)
    built = block.to_torch()
    assert isinstance(built, TorchBlock)
    bare = TorchBlock(built.ln_1, built.attn, built.ln_2, built.mlp.c_fc, built.mlp.c_proj).train()
    mlp = TorchMLP(built.mlp.c_fc, built.mlp.c_proj, 0.0)
    assert bare.mlp.gelu.approximate == mlp.gelu.approximate == torch.nn.GELU().approximate
    config = nanogpt_reference.Config(vocab_size=8, block_size=3, n_layer=1, n_head=2, n_embd=4)
    nanogpt = nanogpt_reference.Block(config).double().train()
    nanogpt.load_state_dict(bare.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(bare(x), nanogpt(x))
        torch.testing.assert_close(bare(x), _torch_block(x, p)["y"])
        h = built.ln_2(x)
        torch.testing.assert_close(mlp.train()(h), nanogpt.mlp(h))


def test_block_describes_itself_with_nanogpt_options_and_refuses_an_unknown_gelu() -> None:
    assert _block_case()[0].describe() == "Block(4, 2 heads)"
    assert _block_case(bias=False, dropout=0.25, gelu="tanh")[0].describe() == (
        "Block(4, 2 heads, no bias, dropout 0.25, tanh GELU)"
    )
    message = "gelu='relu'; expected 'exact' (z Phi(z), nanoGPT's) or 'tanh' (the tanh approximation, minGPT's NewGELU)"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        _block_case(gelu="relu")
    with pytest.raises(ValueError, match=r"^form=1; expected 'exact'"):
        gelu_form(1, argument="form")
    assert gelu_form("tanh") == "tanh"


@pytest.mark.parametrize("along", ["all", "dJ/dy"], ids=["along-all", "along-dJ/dy"])
@pytest.mark.parametrize("affine", [(True, True), (True, False), (False, False)], ids=["affine", "no-bias", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_row_layernorm_tangent_and_r_backward_equal_torch_func(
    dtype: torch.dtype, affine: tuple[bool, bool], along: str
) -> None:
    # The block's LayerNorm (RowLayerNorm: mu and rstd kept, xhat rebuilt) in the same near-constant rows as
    # LayerNorm's test above: its (N1)-(N6) accumulate in float64 (a float32 row mean of R{x}, dJ/dy or
    # R{dJ/dy} would keep only their first digits) and come back in the input's dtype, with and without dJ/dx.
    gen = torch.Generator().manual_seed(90)
    d = 5

    def near_constant() -> Tensor:
        return (1 + 1e-3 * torch.randn(2, 3, d, generator=gen, dtype=torch.float64)).to(dtype)

    x, g, Rx, Rg = near_constant(), near_constant(), near_constant(), near_constant()
    gamma = (torch.rand(d, generator=gen, dtype=torch.float64) + 0.5).to(dtype) if affine[0] else None
    beta = torch.randn(d, generator=gen, dtype=torch.float64).to(dtype) if affine[1] else None
    V = {"gamma": torch.randn(d, generator=gen).to(dtype), "beta": torch.randn(d, generator=gen).to(dtype)}
    if along == "dJ/dy":  # R{x} = 0 and V = 0: R{dJ/dx} is the backward map of R{dJ/dy} alone
        Rx, V = torch.zeros_like(Rx), {k: torch.zeros_like(v) for k, v in V.items()}
    layer, path = RowLayerNorm(gamma, beta, d=d), (1, 4)
    directions = Params({Key(k, path): V[k] for k in layer.params})
    expected = _torch_layernorm_second(x, g, gamma, beta, Rx, Rg, V)
    _assert_norm_r_ops(layer, x, g, Rx, Rg, directions, path, ForwardContext(), dtype, expected)


def test_block_input_check_names_its_attention_at_its_place() -> None:
    # The block checks its input as its attention would (B, T, d), naming attention at (path, 2).
    block, _, x = _block_case(seed=91)
    block.check_input(x, (3,))
    with pytest.raises(ValueError, match=r"^layer 3\.2 \(CausalSelfAttention\(4, 2 heads\)\) needs input \(B, T, 4\)"):
        block.check_input(x[0], (3,))


@pytest.mark.parametrize("lean", [False, True], ids=["teaching", "lean"])
def test_block_backward_with_dropout_and_weight_decay_is_autograd_and_leaves_dJ_dy_alone(lean: bool) -> None:
    # With the residual dropouts active (the forward pass's masks) and weight decay lambda on the linear maps'
    # weights (W_qkv, W_o, c_fc's and c_proj's W, as a training step's L2 term, not the LayerNorms or biases):
    # every gradient is autograd's of torch's block plus lambda / 2 ||W||^2; the caller's dJ/dy is read, never
    # overwritten (the skip path needs it), and a lean backward reports no intermediates, as autograd keeps none.
    block, p, x = _block_case(dropout=0.25, seed=92)
    path = (1,)
    y, cache = block.forward(x, ForwardContext(keep_intermediates=not lean), path)
    noise = {key[-1]: mask for key, mask in block.noise_of(cache, path).items()}
    dJ_dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(93), dtype=torch.float64)
    given = dJ_dy.clone()
    got = block.backward(given, x, y, cache, BackwardContext(path, keep_intermediates=not lean, weight_decay=0.25))
    assert torch.equal(given, dJ_dy)
    assert (got.intermediates == {}) == lean
    leaves = {k: v.clone().requires_grad_() for k, v in p.items()}
    xx = x.clone().requires_grad_()
    J = (_torch_block(xx, leaves, noise, 0.25)["y"] * dJ_dy).sum()
    J = J + 0.125 * sum(leaf.square().sum() for (kind, _), leaf in leaves.items() if kind in ("W_qkv", "W_o", "W"))
    J.backward()
    assert set(got.sub_params) == {Key(kind, (*path, j)) for kind, j in leaves}
    for (kind, j), leaf in leaves.items():
        torch.testing.assert_close(got.sub_params[Key(kind, (*path, j))], leaf.grad)
    torch.testing.assert_close(got.dJ_dx, xx.grad)


@pytest.mark.parametrize("lean", [False, True], ids=["teaching", "lean"])
def test_block_backward_that_releases_its_cache_gives_the_same_gradients_and_keeps_no_tensor(lean: bool) -> None:
    # backward(..., release_cache=True), as autograd frees saved tensors: the block drops each sub-layer's cache
    # and a(l,j) once read, then the network releases what is left; every gradient is the one a backward that
    # keeps the cache computes, and the block's cache holds no tensor afterwards.
    block, _, x = _block_case(dropout=0.25, seed=94)
    net = Network([block], "mse")
    y = torch.randn(x.shape, generator=torch.Generator().manual_seed(95), dtype=torch.float64)
    cache = net.forward(x, keep_intermediates=not lean)
    kept = net.backward(cache, y, keep_intermediates=False).as_dict()
    inner = cache.saved[1]
    ln_1, attn = inner.saved[1], inner.saved[2]
    released = net.backward(cache, y, keep_intermediates=False, release_cache=True).as_dict()
    assert list(released) == list(kept)
    for name, value in kept.items():
        torch.testing.assert_close(released[name], value, rtol=0, atol=0)
    assert all(a is None for a in inner.a) and all(saved is None for saved in inner.saved)
    assert inner.resid.numel() == 0
    assert ln_1.mu.numel() == ln_1.rstd.numel() == 0 and attn.qkv.numel() == 0
    # the block's own backward under release: r (ln_2's input) and each read a(l,j) dropped as it goes
    _, own = block.forward(x, ForwardContext(keep_intermediates=not lean), (1,))
    block.backward(y, x, own.resid, own, BackwardContext((1,), keep_intermediates=False, release=True))
    assert isinstance(own.resid, Tensor) and own.resid.numel() == 0
    assert all(saved is None for saved in own.saved) and all(a is None for a in own.a[1:])


def _block_parts(d: int = 4) -> tuple[LayerNorm, CausalSelfAttention, Linear, Linear]:
    """A LayerNorm, an attention layer, c_fc and c_proj for a block of width d (float64, 2 heads)."""
    gen = torch.Generator().manual_seed(96)
    W_qkv, W_o = (
        torch.randn(3 * d, d, generator=gen, dtype=torch.float64),
        torch.randn(d, d, generator=gen, dtype=torch.float64),
    )
    attn = CausalSelfAttention(W_qkv, W_o, n_head=2)
    fc = Linear(torch.randn(4 * d, d, generator=gen, dtype=torch.float64))
    proj = Linear(torch.randn(d, 4 * d, generator=gen, dtype=torch.float64))
    return LayerNorm(torch.ones(d, dtype=torch.float64)), attn, fc, proj


def test_block_construction_names_the_part_that_is_not_nanogpt_s() -> None:
    # Each of ln_1, ln_2, c_fc and c_proj is checked for its kind and its size against attention's n_embd, and
    # the error names the argument (as nanoGPT's Block names its modules).
    ln, attn, fc, proj = _block_parts()
    wide, other = LayerNorm(torch.ones(5, dtype=torch.float64)), Linear(torch.zeros(4, 8, dtype=torch.float64))
    for args, error, message in (
        ((proj, attn, ln, fc, proj), TypeError, "ln_1 must be a refbp LayerNorm, got Linear"),
        ((ln, attn, proj, fc, proj), TypeError, "ln_2 must be a refbp LayerNorm, got Linear"),
        ((ln, attn, ln, ln, proj), TypeError, "c_fc must be a refbp Linear, got LayerNorm"),
        ((ln, attn, ln, fc, ln), TypeError, "c_proj must be a refbp Linear, got LayerNorm"),
        ((wide, attn, ln, fc, proj), ValueError, "ln_1 normalises 5 features; attention has n_embd = 4"),
        ((ln, attn, wide, fc, proj), ValueError, "ln_2 normalises 5 features; attention has n_embd = 4"),
        ((ln, attn, ln, fc, other), ValueError,
         f"c_fc ({describe(fc.W)}) and c_proj ({describe(other.W)}) must map 4 -> h -> 4"),
        ((ln, attn, ln, other, proj), ValueError,
         f"c_fc ({describe(other.W)}) and c_proj ({describe(proj.W)}) must map 4 -> h -> 4"),
    ):  # fmt: skip
        with pytest.raises(error, match=f"^{re.escape(message)}$"):
            Block(*args)


def test_block_residual_dropout_masks_follow_its_seed_and_default_to_seed_0() -> None:
    # The two residual dropouts draw from the block's seed (the second from a stream derived from it): the same
    # seed the same masks, another seed other masks in both places; without a seed the block draws seed 0's.
    ln, attn, fc, proj = _block_parts()
    x = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(97), dtype=torch.float64)

    def masks(seed: int | None = None) -> dict[int, Tensor]:
        if seed is None:
            block = Block(ln, attn, ln, fc, proj, dropout=0.5)
        else:
            block = Block(ln, attn, ln, fc, proj, dropout=0.5, seed=seed)
        _, cache = block.forward(x, ForwardContext(), (1,))
        return {key[-1]: mask for key, mask in block.noise_of(cache, (1,)).items() if key[-1] != 2}

    five, again, six, default, zero = masks(seed=5), masks(seed=5), masks(seed=6), masks(), masks(seed=0)
    assert set(five) == {3, 8}
    assert not torch.equal(five[3], five[8])
    for j in (3, 8):
        assert torch.equal(five[j], again[j]) and not torch.equal(five[j], six[j])
        assert torch.equal(default[j], zero[j])


@pytest.mark.parametrize("need_dx", [True, False], ids=["dJ/dx", "no-dJ/dx"])
def test_row_layernorm_backward_in_one_row_chunks_is_autograd_with_or_without_dJ_dx(
    monkeypatch: pytest.MonkeyPatch, need_dx: bool
) -> None:
    # Rows are independent, so chunking changes no number: with a budget of one row per chunk, dJ/dgamma sums
    # every chunk's rows (as dJ/dbeta does), and need_dx=False returns no dJ/dx. Against autograd of F.layer_norm.
    monkeypatch.setattr(refbp_chunks, "CHUNK_BYTES", 1)
    gen = torch.Generator().manual_seed(98)
    x, G = (torch.randn(2, 3, 5, generator=gen, dtype=torch.float64) for _ in range(2))
    gamma, beta = (
        1.0 + 0.5 * torch.randn(5, generator=gen, dtype=torch.float64),
        torch.randn(5, generator=gen, dtype=torch.float64),
    )
    layer = RowLayerNorm(gamma, beta)
    y, cache = layer.forward(x, ForwardContext(keep_intermediates=False), (1,))
    got = layer.backward(G, x, y, cache, BackwardContext((1,), keep_intermediates=False, need_dx=need_dx))
    leaves = {"gamma": gamma.clone().requires_grad_(), "beta": beta.clone().requires_grad_()}
    xx = x.clone().requires_grad_()
    (F.layer_norm(xx, (5,), leaves["gamma"], leaves["beta"]) * G).sum().backward()
    assert set(got.params) == set(leaves)
    for kind, leaf in leaves.items():
        torch.testing.assert_close(got.params[kind], leaf.grad)
    if need_dx:
        torch.testing.assert_close(got.dJ_dx, xx.grad)
    else:
        assert got.dJ_dx is None


def test_block_seed_must_leave_room_for_its_second_dropout_stream_and_a_new_block_trains() -> None:
    # The second residual dropout draws from seed + 1 (seeds are never wrapped): MAX_SEED - 1 is the largest
    # seed a block takes, and a larger one is refused naming that stream. A new block is in training mode, as
    # a new torch module (nanoGPT's Block) is.
    ln, attn, fc, proj = _block_parts()
    Block(ln, attn, ln, fc, proj, dropout=0.5, seed=MAX_SEED - 1)
    message = (
        f"seed={MAX_SEED} is too large: the block's second dropout draws from seed + 1 = {MAX_SEED + 1} > "
        f"MAX_SEED = {MAX_SEED} (seeds are never wrapped); expected seed <= {MAX_SEED - 1}"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        Block(ln, attn, ln, fc, proj, dropout=0.5, seed=MAX_SEED)
    config = nanogpt_reference.Config(vocab_size=8, block_size=3, n_layer=1, n_head=2, n_embd=4)
    block = Block(ln, attn, ln, fc, proj)
    assert block.training is nanogpt_reference.Block(config).training is True
    assert block.to_torch().training is True


@pytest.mark.parametrize("affine", [(True, True), (False, False)], ids=["affine", "none"])
def test_float32_row_layernorm_backward_of_nearly_constant_rows_is_float64_torch_rounded_once(
    affine: tuple[bool, bool],
) -> None:
    # The block's LayerNorm, as the teaching view and the checks run it, accumulates its backward in float64
    # (float32 means of dJ/dxhat and dJ/dxhat o xhat would keep only the first digits of what cancels in a
    # near-constant row) and returns every gradient in the input's dtype: autograd of F.layer_norm in float64,
    # rounded once. (A training step's lean mode computes in float32, as torch does: tests/test_lean.py.)
    gen = torch.Generator().manual_seed(99)
    d = 5
    x, G = ((1 + 1e-3 * torch.randn(2, 3, d, generator=gen, dtype=torch.float64)).float() for _ in range(2))
    gamma = (torch.rand(d, generator=gen, dtype=torch.float64) + 0.5).float() if affine[0] else None
    beta = torch.randn(d, generator=gen, dtype=torch.float64).float() if affine[1] else None
    layer = RowLayerNorm(gamma, beta, d=d)
    y, cache = layer.forward(x, ForwardContext(keep_intermediates=True), (1,))
    assert isinstance(cache, RowStats)  # mu and rstd in float64
    got = layer.backward(G, x, y, cache, BackwardContext((1,), keep_intermediates=False))
    leaves = {k: v.double().requires_grad_() for k, v in (("gamma", gamma), ("beta", beta)) if v is not None}
    xx = x.double().requires_grad_()
    (F.layer_norm(xx, (d,), leaves.get("gamma"), leaves.get("beta")) * G.double()).sum().backward()
    assert got.dJ_dx is not None and xx.grad is not None and set(got.params) == set(leaves)
    _close_to_float64(got.dJ_dx, xx.grad, torch.float32)
    for kind, leaf in leaves.items():
        assert leaf.grad is not None
        _close_to_float64(got.params[kind], leaf.grad, torch.float32)


@pytest.mark.parametrize("lean", [False, True], ids=["teaching", "lean"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_row_layernorm_forward_warns_nothing_and_is_torch_layer_norm(dtype: torch.dtype, lean: bool) -> None:
    # Like F.layer_norm, the block's LayerNorm computes its row statistics without a warning (none of torch's
    # "an output ... was resized" on its out= tensors), and its y is F.layer_norm's, in either mode; the
    # statistics are float64 in the teaching mode, the input's dtype in a training step's lean mode.
    gen = torch.Generator().manual_seed(100)
    x = torch.randn(2, 3, 5, generator=gen, dtype=torch.float64).to(dtype)
    gamma, beta = (torch.randn(5, generator=gen, dtype=torch.float64).to(dtype) for _ in range(2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y, cache = RowLayerNorm(gamma, beta).forward(x, ForwardContext(keep_intermediates=not lean), (1,))
        want = F.layer_norm(x.double(), (5,), gamma.double(), beta.double())
    _close_to_float64(y, want, dtype)
    assert cache.mu.dtype == (dtype if lean else torch.float64)
    torch.testing.assert_close(cache.mu, x.double().mean(dim=-1, keepdim=True).to(cache.mu.dtype))
