"""Second order of the normalisations (issue 21): LayerNorm, BatchNorm1d, BatchNorm2d and GroupNorm's
tangents, H v and G v (refbp.nn.layernorm's (R1)-(R8)) against torch.func forward-over-reverse,
double backward and differences of the manual gradient, each layer inside a small network with a
nonlinearity around it; and a wrong rule of each family caught on the tensor it corrupts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

from refbp.nn.batchnorm import BatchNorm1d
from refbp.nn.keys import Key
from refbp.nn.layer import BackwardContext, ForwardContext, Layer, LayerGradients, LayerTangent, Params, SecondContext
from refbp.nn.layernorm import LayerNorm, NormCacheOrStats, NormTangent, affine_tangent, normalised
from refbp.nn.layers import Elementwise, Flatten, Linear, Residual
from refbp.nn.network import Network
from refbp.nn.norm2d import BatchNorm2d, GroupNorm
from refbp.nn.transformer import RowLayerNorm
from refbp.verify.result import CheckResult
from refbp.verify.second_order import check_second_order

Built = tuple[Network, Tensor, Tensor]

HESSIAN_REFERENCES = {"forward-over-reverse", "reverse-over-reverse", "fd-gradient"}
"""Every route an H v row is compared with (refbp.verify.second_order)."""


def _randn(g: torch.Generator, dtype: torch.dtype) -> Callable[..., Tensor]:
    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)

    return randn


def _rows_net(norm: Callable[[Callable[..., Tensor]], Layer], lead: tuple[int, ...], dtype: torch.dtype,
              *, bias: bool = True, seed: int = 0) -> Built:  # fmt: skip
    """Linear -> norm -> tanh -> Linear on rows of 4 features, (*lead, 3) inputs, mse."""
    randn = _randn(torch.Generator().manual_seed(seed), dtype)
    layers = [Linear(randn(4, 3), randn(4) if bias else None), norm(randn), Elementwise("tanh"), Linear(randn(2, 4))]
    return Network(layers, "mse"), randn(*lead, 3), randn(*lead, 2)


def _image_net(norm: Callable[[Callable[..., Tensor]], Layer], dtype: torch.dtype, *, seed: int = 0) -> Built:
    """norm -> tanh -> Flatten -> Linear on (2, 4, 2, 3) images, cross-entropy over 3 classes."""
    randn = _randn(torch.Generator().manual_seed(seed), dtype)
    layers = [norm(randn), Elementwise("tanh"), Flatten(), Linear(randn(3, 4 * 2 * 3), randn(3))]
    return Network(layers, "cross_entropy"), randn(2, 4, 2, 3), torch.tensor([0, 2])


def _eval(layer: Layer) -> Layer:
    layer.set_training(False)
    return layer


def _running(randn: Callable[..., Tensor], C: int) -> dict[str, Any]:
    """Running statistics away from torch's defaults (0 and 1), so that eval mode is not xhat = x."""
    return {"running_mean": randn(C), "running_var": randn(C).abs() + 0.5}


CASES: dict[str, Callable[[torch.dtype], Built]] = {
    "layernorm (N, d)": lambda dt: _rows_net(lambda r: LayerNorm(r(4), r(4)), (5,), dt),
    "layernorm no bias (B, T, d)": lambda dt: _rows_net(lambda r: LayerNorm(r(4)), (2, 3), dt),
    "layernorm no affine (B, T, d)": lambda dt: _rows_net(lambda r: LayerNorm(d=4), (2, 3), dt),
    "transformer RowLayerNorm (B, T, d)": lambda dt: _rows_net(lambda r: RowLayerNorm(r(4), r(4)), (2, 3), dt),
    "batchnorm1d train": lambda dt: _rows_net(lambda r: BatchNorm1d(r(4), r(4)), (5,), dt),
    "batchnorm1d train no affine, unbiased": lambda dt: _rows_net(
        lambda r: BatchNorm1d(C=4, unbiased=True, **_running(r, 4)), (5,), dt
    ),
    "batchnorm1d eval": lambda dt: _rows_net(lambda r: _eval(BatchNorm1d(r(4), r(4), **_running(r, 4))), (5,), dt),
    "batchnorm1d eval without running statistics": lambda dt: _rows_net(
        lambda r: _eval(BatchNorm1d(r(4), r(4), track_running_stats=False)), (5,), dt
    ),
    "batchnorm2d train": lambda dt: _image_net(lambda r: BatchNorm2d(r(4), r(4)), dt),
    "batchnorm2d eval": lambda dt: _image_net(lambda r: _eval(BatchNorm2d(r(4), r(4), **_running(r, 4))), dt),
    "groupnorm 1 group": lambda dt: _image_net(lambda r: GroupNorm(1, r(4), r(4)), dt),
    "groupnorm 2 groups no affine": lambda dt: _image_net(lambda r: GroupNorm(2, C=4), dt),
    "groupnorm 4 groups (one per channel)": lambda dt: _image_net(lambda r: GroupNorm(4, r(4), r(4)), dt),
}
"""Every normalisation and option, in the network it is checked in."""


def _assert_complete(result: CheckResult, net: Network, product: str) -> None:
    """Every parameter's and X's H v row, and the tangents R{J}, R{a(l)}, R{xhat} (and for H v the
    R{dJ/dxhat} of the differences) are there, each against every reference of the product."""
    names = {row.name for row in result.rows}
    norm = next(l for l, layer in enumerate(net.layers, start=1) if "xhat" in layer.intermediates)
    expected = {f"Hv[{name}]" for name in [*net.parameters(), "X"]}
    expected |= {"R{J}", f"R{{xhat{norm}}}", *(f"R{{a{l}}}" for l in range(1, len(net.layers) + 1))}
    if product == "hessian":
        expected.add(f"R{{dJ/dxhat{norm}}}")
    assert expected <= names, expected - names
    references = HESSIAN_REFERENCES if product == "hessian" else {"torch-gauss-newton"}
    for name in expected - {f"R{{dJ/dxhat{norm}}}"}:
        if name.startswith("Hv["):
            assert {row.reference for row in result.rows if row.name == name} == references, name


@pytest.mark.parametrize("product", ["hessian", "gauss_newton"])
@pytest.mark.parametrize("case", list(CASES))
def test_manual_products_and_tangents_agree_with_torch_in_float64(case: str, product: str) -> None:
    net, X, y = CASES[case](torch.float64)
    result = check_second_order(net, X, y, product=product, forward=True, seed=1)
    assert result.passed, result.failure_message()
    _assert_complete(result, net, product)


def test_a_pre_norm_residual_block_gets_the_norms_rules_at_its_inner_path() -> None:
    """x + tanh(Linear(LayerNorm(x))) then a LayerNorm without bias, on (B, T, d): a transformer's
    shape, the norm inside a composite at path 2.1 (the R-operator's loops, refbp.nn.r_stack)."""
    randn = _randn(torch.Generator().manual_seed(4), torch.float64)
    block = Residual(LayerNorm(randn(4), randn(4)), Linear(randn(4, 4), randn(4)), Elementwise("tanh"))
    net = Network([Linear(randn(4, 3), randn(4)), block, LayerNorm(randn(4)), Linear(randn(2, 4))], "mse")
    result = check_second_order(net, randn(2, 3, 3), randn(2, 3, 2), forward=True)
    assert result.passed, result.failure_message()
    assert {"Hv[gamma2.1]", "Hv[beta2.1]", "R{xhat2.1}", "R{dJ/dxhat2.1}", "Hv[gamma3]"} <= {
        r.name for r in result.rows
    }


FLOAT32_CASES = {
    "transformer RowLayerNorm (B, T, d)": lambda: _rows_net(lambda r: RowLayerNorm(r(4), r(4)), (2, 3), torch.float32),
    "layernorm (B, T, d)": lambda: _rows_net(lambda r: LayerNorm(r(4), r(4)), (2, 3), torch.float32),
    # no bias before a batch-normalisation in training mode (as makemore, torch's recipes): the
    # batch mean removes it, so its exact H v is 0, and float32 rounding of a sum of R{dJ/dz}
    # over the batch is then all the product has (a conditioning matter, not the norm's rule)
    "batchnorm1d train": lambda: _rows_net(lambda r: BatchNorm1d(r(4), r(4)), (5,), torch.float32, bias=False),
    "batchnorm2d train": lambda: _image_net(lambda r: BatchNorm2d(r(4), r(4)), torch.float32),
    "groupnorm 2 groups": lambda: _image_net(lambda r: GroupNorm(2, r(4), r(4)), torch.float32),
}


@pytest.mark.parametrize("case", list(FLOAT32_CASES))
def test_float32_products_pass_against_float64_references(case: str) -> None:
    net, X, y = FLOAT32_CASES[case]()
    result = check_second_order(net, X, y, forward=True, seed=2)
    assert result.passed, result.failure_message()
    assert result.dtype == "float32"


# ---- a wrong rule in each family, caught where it does harm --------------------------------------
def _failed(result: CheckResult) -> set[str]:
    return {t.name for t in result.tensors if t.verdict == "mismatch"}


class _LayerNormConstantStatistics(LayerNorm):
    """R{xhat} = rstd R{x}: the statistics' terms of (R3) dropped, as if mu and rstd did not move."""

    def tangent(
        self, x: Tensor, Rx: Tensor | None, out: Tensor, cache: NormCacheOrStats, V: Params, path: tuple[int, ...]
    ) -> LayerTangent:
        assert Rx is not None
        xhat, rstd = normalised(x, cache)
        wrong = NormTangent(Rx.to(xhat.dtype) * rstd, torch.zeros_like(rstd))  # wrong: no mean, no variance term
        Ry = affine_tangent(xhat, wrong.Rxhat, self.params["gamma"], V(path, "gamma"), V(path, "beta"))
        return LayerTangent(Ry.to(x.dtype), wrong, {Key("xhat", path): wrong.Rxhat.to(x.dtype)})


def test_layernorm_tangent_without_the_statistics_terms_is_caught() -> None:
    net, X, y = _rows_net(lambda r: _LayerNormConstantStatistics(r(4), r(4)), (5,), torch.float64)
    result = check_second_order(net, X, y, forward=True)
    assert not result.passed
    assert {"R{xhat2}", "R{a2}", "Hv[W1]", "Hv[X]"} <= _failed(result)
    assert "R{a1}" not in _failed(result)  # below the wrong line, every tangent is right


class _BatchNormNoRstdTerm(BatchNorm1d):
    """(R6) without R{log rstd} dJ/dx: the variance's movement ignored in the R-backward."""

    def r_backward(
        self, g: Tensor, Rg: Tensor, x: Tensor, Rx: Tensor | None, out: Tensor, t: LayerTangent,
        cache: NormCacheOrStats, V: Params, ctx: SecondContext,
    ) -> tuple[Tensor | None, LayerGradients]:  # fmt: skip
        g_x, R = super().r_backward(g, Rg, x, Rx, out, t, cache, V, ctx)
        assert g_x is not None and R.dJ_dx is not None
        R.dJ_dx = R.dJ_dx - ctx.first * t.cache.Rlog_rstd * g_x  # wrong: the R{rstd} term dropped
        return g_x, R


@pytest.mark.parametrize("product", ["hessian", "gauss_newton"])
def test_batchnorm_r_backward_without_the_rstd_term_is_caught(product: str) -> None:
    net, X, y = _rows_net(lambda r: _BatchNormNoRstdTerm(r(4), r(4)), (5,), torch.float64)
    result = check_second_order(net, X, y, product=product)
    if product == "gauss_newton":  # the term carries dJ/dx: G v never had it
        assert result.passed, result.failure_message()
        return
    # the batch sums of R{dJ/dx} are 0 with or without it (sum_n dJ/dx = 0): H v of b1 stays right
    assert _failed(result) == {"Hv[W1]", "Hv[X]", "R{dJ/da1}"}


class _BatchNorm2dNoGammaDirection(BatchNorm2d):
    """(R5) R{h} = R{dJ/dy} o gamma, without dJ/dy o V_gamma (and so (R6) without it too)."""

    def r_backward(
        self, g: Tensor, Rg: Tensor, x: Tensor, Rx: Tensor | None, out: Tensor, t: LayerTangent,
        cache: NormCacheOrStats, V: Params, ctx: SecondContext,
    ) -> tuple[Tensor | None, LayerGradients]:  # fmt: skip
        g_x, R = super().r_backward(g, Rg, x, Rx, out, t, cache, V, ctx)
        assert R.dJ_dx is not None
        missing = g * V(ctx.path, "gamma").view(-1, 1, 1)  # dJ/dy o V_gamma   (N, C, H, W)
        through = BatchNorm2d(C=self.C)  # B(u): the normalisation's backward without the affine
        dropped = through.backward(missing, x, out, cache, BackwardContext(ctx.path, keep_intermediates=False))
        assert dropped.dJ_dx is not None
        R.dJ_dx = R.dJ_dx - dropped.dJ_dx  # wrong: R{dJ/dx} = B(R{h}) without B(dJ/dy o V_gamma)
        R.intermediates[ctx.key("xhat")] -= missing  # and R{dJ/dxhat} without it
        return g_x, R


def test_batchnorm2d_r_backward_without_the_gamma_direction_is_caught() -> None:
    net, X, y = _image_net(lambda r: _BatchNorm2dNoGammaDirection(r(4), r(4)), torch.float64)
    result = check_second_order(net, X, y)
    assert _failed(result) == {"Hv[X]", "R{dJ/dxhat1}"}


class _GroupNormGammaWithoutRxhat(GroupNorm):
    """(R7) (H v)_gamma = sum R{dJ/dy} o xhat, without dJ/dy o R{xhat}."""

    def r_backward(
        self, g: Tensor, Rg: Tensor, x: Tensor, Rx: Tensor | None, out: Tensor, t: LayerTangent,
        cache: NormCacheOrStats, V: Params, ctx: SecondContext,
    ) -> tuple[Tensor | None, LayerGradients]:  # fmt: skip
        g_x, R = super().r_backward(g, Rg, x, Rx, out, t, cache, V, ctx)
        dropped = (g * t.cache.Rxhat.view(x.shape)).sum(dim=(0, 2, 3))  # sum dJ/dy o R{xhat}   (C,)
        R.params["gamma"] = R.params["gamma"] - ctx.first * dropped  # wrong: the second term of (R7) left out
        return g_x, R


@pytest.mark.parametrize("product", ["hessian", "gauss_newton"])
def test_groupnorm_gamma_product_without_the_tangent_term_is_caught(product: str) -> None:
    net, X, y = _image_net(lambda r: _GroupNormGammaWithoutRxhat(2, r(4), r(4)), torch.float64)
    result = check_second_order(net, X, y, product=product)
    assert _failed(result) == ({"Hv[gamma1]"} if product == "hessian" else set())


# ---- the lean caches: xhat rebuilt from mu and rstd gives the same rules -------------------------
def _same_rules_from_both_caches(layer: Layer, x: Tensor) -> None:
    """tangent and r_backward from the lean cache (NormStats) equal those from the full one."""
    randn = _randn(torch.Generator().manual_seed(3), torch.float64)
    V = Params({Key(kind, (1,)): randn(*p.shape) for kind, p in layer.params.items()})
    Rx, g, Rg = randn(*x.shape), randn(*x.shape), randn(*x.shape)
    outputs = []
    for keep in (True, False):
        out, cache = layer.forward(x, ForwardContext(keep_intermediates=keep, update_stats=False), (1,))
        t = layer.tangent(x, Rx, out, cache, V, (1,))
        g_x, R = layer.r_backward(g, Rg, x, Rx, out, t, cache, V, SecondContext((1,)))
        outputs.append([t.out, *t.intermediates.values(), g_x, R.dJ_dx, *R.params.values(), *R.intermediates.values()])
    for full, lean in zip(*outputs, strict=True):
        torch.testing.assert_close(lean, full, rtol=1e-12, atol=1e-12)


LEAN_LAYERS: dict[str, Callable[[Callable[..., Tensor]], tuple[Layer, Tensor]]] = {
    "layernorm": lambda r: (LayerNorm(r(4), r(4)), r(2, 3, 4)),
    "batchnorm1d": lambda r: (BatchNorm1d(r(4), r(4), unbiased=True), r(5, 4)),
    "batchnorm2d": lambda r: (BatchNorm2d(r(4), r(4)), r(2, 4, 2, 3)),
    "batchnorm2d eval": lambda r: (_eval(BatchNorm2d(r(4), r(4), **_running(r, 4))), r(2, 4, 2, 3)),
    "groupnorm": lambda r: (GroupNorm(2, r(4), r(4)), r(2, 4, 2, 3)),
}


@given(kind=st.sampled_from(sorted(LEAN_LAYERS)), seed=st.integers(0, 2**16))
def test_lean_caches_give_the_rules_of_the_full_cache(kind: str, seed: int) -> None:
    layer, x = LEAN_LAYERS[kind](_randn(torch.Generator().manual_seed(seed), torch.float64))
    _same_rules_from_both_caches(layer, x)
