"""Second order of convolution, pooling and the shape layers (refbp.nn.conv, pool, shape_ops,
joins): the manual H v, G v and tangents R{a(l)} against torch.func forward-over-reverse, double
backward and differences of the manual gradient (refbp.verify.second_order), and a wrong rule
of each family caught."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from torch import Tensor

from refbp.nn.conv import Conv1d, Conv2d
from refbp.nn.convert import from_torch
from refbp.nn.joins import Add, Cat
from refbp.nn.layer import ForwardContext, Layer, LayerGradients, LayerTangent, Params, SecondContext
from refbp.nn.layers import Elementwise, Flatten, Linear
from refbp.nn.network import Network
from refbp.nn.pool import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d, PoolCache
from refbp.nn.registry import SizeOf
from refbp.nn.shape_ops import Mean, Permute, Reshape, Scale, Sum, Transpose
from refbp.strategies import MODULE_KINDS, ModuleCase, module_cases
from refbp.verify.result import CheckResult
from refbp.verify.second_order import SECOND_ORDER_REFERENCES, check_second_order

PRODUCTS = ("hessian", "gauss_newton")

EXAMPLES = max(6, settings().max_examples // 4)
"""Random CNNs per run: a quarter of the profile's budget (each example checks two products)."""

CNN_KINDS = MODULE_KINDS
"""Every module kind a random CNN can draw: convolutions, max/average/adaptive pooling,
BatchNorm2d, GroupNorm, softmax and the activation modules (relu among them). Kinks need no
exclusion: each layer's oracle reports its pieces, so a point on a kink or a difference step
across one (a max-pool tie, relu's 0) leaves the entries it touches unverified, never failed."""


def _randn(g: torch.Generator, *shape: int, dtype: torch.dtype = torch.float64) -> Tensor:
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


def _head(layers: list[Layer], X: Tensor, g: torch.Generator) -> Network:
    """``layers``, then Flatten and Linear(-> 3) on what they give for X, with mse: a small CNN."""
    a = X
    for l, layer in enumerate(layers, start=1):
        a = layer.forward(a, ForwardContext(update_stats=False), (l,))[0]
    d = a[0].numel()
    return Network([*layers, Flatten(), Linear(_randn(g, 3, d, dtype=X.dtype), _randn(g, 3, dtype=X.dtype))], "mse")


def assert_every_row(result: CheckResult, net: Network, product: str) -> None:
    """Passed, with H v of every parameter and of X against every reference of the product, and
    every tangent R{a(l)}, R{J} (and, for H v, every R{dJ/da(l)}) checked."""
    assert result.passed, result.failure_message()
    names = {row.name for row in result.rows}
    Hv = {f"Hv[{name}]" for name in [*net.parameters(), "X"]}
    tangents = {"R{J}", *(f"R{{a{l}}}" for l in range(1, net.L + 1))}
    assert Hv | tangents <= names
    references = {row.reference for row in result.rows if row.name.startswith("Hv[")}
    if product == "hessian":
        assert references == set(SECOND_ORDER_REFERENCES)
        assert {f"R{{dJ/da{l}}}" for l in range(1, net.L + 1)} <= names
        for name in Hv:  # each product row confirmed by all three references
            assert {row.reference for row in result.rows if row.name == name} == set(SECOND_ORDER_REFERENCES)
    else:
        assert references == {"torch-gauss-newton"}


def assert_caught(result: CheckResult, expected: set[str]) -> None:
    """Failed, with each ``expected`` tensor a mismatch."""
    assert not result.passed
    verdicts = {t.name: t.verdict for t in result.tensors}
    assert {name: verdicts[name] for name in expected} == dict.fromkeys(expected, "mismatch")


# ---- convolution -------------------------------------------------------------------------------------
CONVS: dict[str, tuple[int, dict[str, Any]]] = {
    "plain, no bias": (2, {"bias": False}),
    "stride 2, padding 1": (2, {"stride": 2, "padding": 1}),
    "same, even kernel (one more zero at the end)": (2, {"padding": "same"}),
    "dilation 2, padding (2, 1)": (2, {"dilation": 2, "padding": (2, 1)}),
    "groups 2, stride (1, 2)": (2, {"groups": 2, "stride": (1, 2), "padding": (1, 0)}),
    "conv1d same, dilation 2": (1, {"padding": "same", "dilation": 2}),
    "conv1d stride 2, groups 2": (1, {"stride": 2, "groups": 2}),
}
"""Conv geometry by name: (spatial dims, options)."""


def _conv(kind: str, g: torch.Generator, dtype: torch.dtype = torch.float64) -> tuple[Network, Tensor, Tensor]:
    dims, options = CONVS[kind]
    options = dict(options)
    bias = options.pop("bias", True)
    groups = options.get("groups", 1)
    C_in, C_out = 2, 4
    kernel = (3, 2) if dims == 2 else (2,)
    W = _randn(g, C_out, C_in // groups, *kernel, dtype=dtype)
    layer = (Conv2d if dims == 2 else Conv1d)(W, _randn(g, C_out, dtype=dtype) if bias else None, **options)
    X = _randn(g, 2, C_in, *((5, 4) if dims == 2 else (6,)), dtype=dtype)
    net = _head([layer, Elementwise("tanh")], X, g)
    return net, X, _randn(g, 2, 3, dtype=dtype)


@pytest.mark.parametrize("product", PRODUCTS)
@pytest.mark.parametrize("kind", list(CONVS))
def test_convolution_products_and_tangents_agree_with_torch(kind: str, product: str) -> None:
    net, X, y = _conv(kind, torch.Generator().manual_seed(len(kind)))
    result = check_second_order(net, X, y, product=product, forward=True, seed=1)
    assert_every_row(result, net, product)


def test_weight_decay_reaches_the_convolution_kernels_hessian() -> None:
    """lambda/2 ||W||^2 on a kernel adds lambda V_W to its H v and G v, as on a Linear's W."""
    net, X, y = _conv("stride 2, padding 1", torch.Generator().manual_seed(4))
    decayed = Network(net.layers, "mse", weight_decay=0.3)
    assert "W1" in {str(key) for key in decayed.decayed_keys()}
    for product in PRODUCTS:
        assert_every_row(check_second_order(decayed, X, y, product=product, forward=True), decayed, product)


class ConvWithoutTheDirectionOfW(Conv2d):
    """The slip: R{dJ/dx} = conv_transpose(R{dJ/dz}, W), without conv_transpose(dJ/dz, V_W)."""

    def r_backward(
        self, g: Tensor, Rg: Tensor, x: Tensor, Rx: Tensor | None, out: Tensor, t: LayerTangent, cache: Any,
        V: Params, ctx: SecondContext,
    ) -> tuple[Tensor | None, LayerGradients]:  # fmt: skip
        g_x, R = super().r_backward(g, Rg, x, Rx, out, t, cache, V, ctx)
        R.dJ_dx = self.input_gradient(Rg, self.W, x.shape)  # the term of V_W dropped
        return g_x, R


class ConvWithoutTheDirectionOfX(Conv2d):
    """The slip: (H v)_W = sum_n R{dJ/dz} X_col^T, without dJ/dz R{X_col}^T."""

    def r_backward(
        self, g: Tensor, Rg: Tensor, x: Tensor, Rx: Tensor | None, out: Tensor, t: LayerTangent, cache: Any,
        V: Params, ctx: SecondContext,
    ) -> tuple[Tensor | None, LayerGradients]:  # fmt: skip
        g_x, R = super().r_backward(g, Rg, x, Rx, out, t, cache, V, ctx)
        R.params["W"] = self.weight_gradient(Rg, x)  # the term of R{x} dropped
        return g_x, R


@pytest.mark.parametrize(
    ("wrong", "expected"),
    [(ConvWithoutTheDirectionOfW, {"Hv[W1]", "Hv[b1]", "Hv[X]"}), (ConvWithoutTheDirectionOfX, {"Hv[W3]"})],
)
def test_a_convolution_rule_with_a_term_dropped_is_caught(wrong: type[Conv2d], expected: set[str]) -> None:
    """The wrong layer is the second convolution (layer 3): a dropped term of its R{dJ/dx} reaches
    the first one's H v and X's; one of its (H v)_W shows in its own."""
    g = torch.Generator().manual_seed(5)
    first = Conv2d(_randn(g, 3, 2, 2, 2), _randn(g, 3))
    X = _randn(g, 2, 2, 5, 5)
    net = _head([first, Elementwise("tanh"), wrong(_randn(g, 2, 3, 3, 3), None, padding=1)], X, g)
    result = check_second_order(net, X, _randn(g, 2, 3), seed=2)
    assert_caught(result, expected)


@settings(max_examples=EXAMPLES)
@given(case=module_cases(kinds=CNN_KINDS, include=("conv",), max_layers=3))
def test_random_cnns_products_and_tangents_agree_with_torch(case: ModuleCase) -> None:
    """Any geometry torch accepts (kernel, stride, padding ints/"same"/"valid", dilation, groups,
    bias, Conv1d or Conv2d), with every pooling, BatchNorm2d (train or eval), GroupNorm, softmax and
    relu/tanh/GELU between, converted from torch.nn.Sequential."""
    net = from_torch(case.module, loss=case.loss)
    for product in PRODUCTS:
        result = check_second_order(net, case.X, case.y, product=product, forward=True, seed=7)
        assert_every_row(result, net, product)


# ---- pooling ------------------------------------------------------------------------------------------
POOLS: dict[str, Layer] = {
    "max 2": MaxPool2d(2),
    "max 3, stride 2, padding 1 (overlapping)": MaxPool2d(3, 2, 1),
    "max 2, stride 1, padding 1, dilation 2": MaxPool2d(2, 1, 1, 2),
    "avg 3, stride 2, padding 1": AvgPool2d(3, 2, 1),
    "avg 3, stride 2, padding 1, count_include_pad=False": AvgPool2d(3, 2, 1, count_include_pad=False),
    "adaptive (2, 3)": AdaptiveAvgPool2d((2, 3)),
    "adaptive (None, 2)": AdaptiveAvgPool2d((None, 2)),
}


def _pool_net(pool: Layer, g: torch.Generator, dtype: torch.dtype = torch.float64) -> tuple[Network, Tensor, Tensor]:
    """Conv2d, tanh, the pooling, tanh: curvature on both sides of it (random data: no max-pool tie)."""
    X = _randn(g, 2, 2, 6, 7, dtype=dtype)
    conv = Conv2d(_randn(g, 3, 2, 2, 2, dtype=dtype), _randn(g, 3, dtype=dtype))
    net = _head([conv, Elementwise("tanh"), pool, Elementwise("tanh")], X, g)
    return net, X, _randn(g, 2, 3, dtype=dtype)


@pytest.mark.parametrize("product", PRODUCTS)
@pytest.mark.parametrize("kind", list(POOLS))
def test_pooling_products_and_tangents_agree_with_torch(kind: str, product: str) -> None:
    net, X, y = _pool_net(POOLS[kind], torch.Generator().manual_seed(len(kind)))
    result = check_second_order(net, X, y, product=product, forward=True, seed=3)
    assert_every_row(result, net, product)


class MaxPoolThatDropsRg(MaxPool2d):
    """The slip: the max is piecewise linear, so 'its R-backward vanishes': R{dJ/dx} = 0 instead of
    R{dJ/dy} routed to each window's argmax."""

    def r_backward(
        self, g: Tensor, Rg: Tensor, x: Tensor, Rx: Tensor | None, out: Tensor, t: LayerTangent, cache: PoolCache,
        V: Params, ctx: SecondContext,
    ) -> tuple[Tensor | None, LayerGradients]:  # fmt: skip
        g_x, _ = super().r_backward(g, Rg, x, Rx, out, t, cache, V, ctx)
        return g_x, LayerGradients(torch.zeros_like(x))


class AvgPoolCountingThePadding(AvgPool2d):
    """The slip: R{dJ/dx} divides by k_h k_w although count_include_pad=False."""

    def r_backward(
        self, g: Tensor, Rg: Tensor, x: Tensor, Rx: Tensor | None, out: Tensor, t: LayerTangent, cache: None,
        V: Params, ctx: SecondContext,
    ) -> tuple[Tensor | None, LayerGradients]:  # fmt: skip
        g_x, _ = super().r_backward(g, Rg, x, Rx, out, t, cache, V, ctx)
        counting = AvgPool2d(self.kernel_size, self.stride, self.padding, count_include_pad=True)
        return g_x, LayerGradients(counting.backward(Rg, x, out, None, ctx.backward_context()).dJ_dx)


@pytest.mark.parametrize(
    "wrong", [MaxPoolThatDropsRg(3, 2, 1), AvgPoolCountingThePadding(3, 2, 1, count_include_pad=False)]
)
def test_a_pooling_rule_that_routes_R_wrongly_is_caught(wrong: Layer) -> None:
    net, X, y = _pool_net(wrong, torch.Generator().manual_seed(6))
    assert_caught(check_second_order(net, X, y, seed=4), {"Hv[W1]", "Hv[b1]", "Hv[X]"})


# ---- shape layers and single-input joins -----------------------------------------------------------------
def _shape_net(scale: Layer, g: torch.Generator, dtype: torch.dtype = torch.float64) -> tuple[Network, Tensor, Tensor]:
    """Conv2d, tanh, then every shape layer (a Permute, Transpose, Scale, Sum, Mean, Reshape,
    and Add and Cat of one input), tanh, Flatten, Linear."""
    X = _randn(g, 2, 2, 4, 5, dtype=dtype)
    layers: list[Layer] = [
        Conv2d(_randn(g, 3, 2, 2, 2, dtype=dtype), _randn(g, 3, dtype=dtype)), Elementwise("tanh"),
        Permute((0, 2, 3, 1)), scale, Transpose(1, 3), Sum(dim=3, keepdim=True), Mean(dim=(-1,)),
        Reshape((SizeOf(0, 0), -1)), Add((1.0,)), Cat(dim=1), Elementwise("tanh"),
    ]  # fmt: skip
    return _head(layers, X, g), X, _randn(g, 2, 3, dtype=dtype)


@pytest.mark.parametrize("product", PRODUCTS)
def test_shape_layers_products_and_tangents_agree_with_torch(product: str) -> None:
    net, X, y = _shape_net(Scale(0.5), torch.Generator().manual_seed(7))
    result = check_second_order(net, X, y, product=product, forward=True, seed=5)
    assert_every_row(result, net, product)


class ScaleThatForgetsItsConstant(Scale):
    """The slip: R{dJ/dx} = R{dJ/dy}, the constant c left out."""

    def r_backward(
        self, g: Tensor, Rg: Tensor, x: Tensor, Rx: Tensor | None, out: Tensor, t: LayerTangent, cache: Any,
        V: Params, ctx: SecondContext,
    ) -> tuple[Tensor | None, LayerGradients]:  # fmt: skip
        g_x, _ = super().r_backward(g, Rg, x, Rx, out, t, cache, V, ctx)
        return g_x, LayerGradients(Rg.clone())


def test_a_shape_layer_rule_without_its_constant_is_caught() -> None:
    net, X, y = _shape_net(ScaleThatForgetsItsConstant(0.5), torch.Generator().manual_seed(7))
    assert_caught(check_second_order(net, X, y, seed=5), {"Hv[W1]", "Hv[b1]", "Hv[X]"})


# ---- float32 --------------------------------------------------------------------------------------------
def test_float32_cnn_passes_against_float64_references() -> None:
    """Every family at once in float32: convolutions, max and average pooling, shape layers."""
    g = torch.Generator().manual_seed(8)
    f32 = torch.float32
    X = _randn(g, 2, 2, 7, 7, dtype=f32)
    layers: list[Layer] = [
        Conv2d(_randn(g, 4, 1, 3, 3, dtype=f32), _randn(g, 4, dtype=f32), padding=1, groups=2), Elementwise("tanh"),
        MaxPool2d(2, 1), AvgPool2d(2, 2, 1, count_include_pad=False), Conv2d(_randn(g, 3, 4, 2, 2, dtype=f32)),
        Elementwise("tanh"), AdaptiveAvgPool2d(2), Permute((0, 2, 3, 1)), Scale(2.0, divide=True),
    ]  # fmt: skip
    net = _head(layers, X, g)
    y = _randn(g, 2, 3, dtype=f32)
    for product in PRODUCTS:
        result = check_second_order(net, X, y, product=product, forward=True, seed=6)
        assert result.passed, result.failure_message()
        assert result.dtype == "float32"


def test_max_pool_tangent_follows_the_argmax_not_the_largest_direction() -> None:
    """R{y} is R{x} where x is largest in each window, not the largest R{x}: on a window where
    they differ, the manual tangent is torch's jvp and not max_pool2d(R{x})."""
    x = torch.tensor([[[[3.0, 1.0], [0.0, 2.0]]]], dtype=torch.float64)  # the max sits at (0, 0)
    Rx = torch.tensor([[[[0.5, 4.0], [-1.0, 2.0]]]], dtype=torch.float64)  # R{x} largest at (0, 1)
    pool = MaxPool2d(2)
    out, cache = pool.forward(x, ForwardContext(), (1,))
    Ry = pool.tangent(x, Rx, out, cache, Params({}), (1,)).out
    expected = torch.func.jvp(lambda t: F.max_pool2d(t, 2), (x,), (Rx,))[1]
    torch.testing.assert_close(Ry, expected, rtol=0, atol=0)
    assert float(Ry) == 0.5 != float(F.max_pool2d(Rx, 2))
