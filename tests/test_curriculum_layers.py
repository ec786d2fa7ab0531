"""Convolution, pooling, spatial norms and softmax layers against torch itself.

Random torch.nn.Sequential CNNs (refbp.strategies.module_cases), in training and eval mode, are
converted with from_torch; the network's manual gradients must equal torch.autograd on *the
very module* (its named_parameters() and the input), and its running statistics after the step
the module's own. refbp.check (autograd on refbp's oracle and finite differences) must pass on
them and fail on a backward with a classic mistake in it."""

from __future__ import annotations

import unittest.mock
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import refbp
import refbp.nn.conv as conv_module
from refbp.nn.keys import Key
from refbp.nn.layer import BackwardContext, ForwardContext, LayerGradients
from refbp.nn.layers import AvgPool2d, Conv1d, Conv2d, GroupNorm, MaxPool2d, Softmax
from refbp.nn.network import Network
from refbp.nn.pool import PoolCache
from refbp.strategies import MODULE_KINDS, ModuleCase, module_cases

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths:UserWarning")
"""torch's modules (and refbp's oracle, which calls torch's functions) warn that "same" padding with an
even kernel copies the input: expected here, not a problem."""

FLOAT64_ROUNDING: dict[str, Any] = {"rtol": 1e-10, "atol": 1e-12}
"""refbp and torch compute the same float64 sums in different orders (im2col and a matrix
product against torch's convolution kernels, two-pass against Welford statistics): for these
networks of a few layers of at most a few hundred terms the results differ by a few hundred
roundings (2.2e-16) of the largest term. 1e-10 relative, and 1e-12 absolute per unit of the
largest gradient (entries that cancel to ~0 keep the rounding of their terms), is a wide margin
over that and still a million times tighter than any real gradient bug."""

EXAMPLES = max(10, settings().max_examples // 3)
"""Per layer kind and mode: a third of the profile's budget (tiny networks, but many kinds)."""

CHECK_EXAMPLES = 6
"""refbp.check with full finite differences costs about a second per tiny network."""

TORCH_LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "mse": F.mse_loss,
    "half_sse": lambda out, y: 0.5 * ((out - y) ** 2).sum(),
    "cross_entropy": F.cross_entropy,
}
"""Each loss module_cases draws, written with torch's own functions."""


def torch_step(case: ModuleCase) -> tuple[Tensor, dict[str, Tensor]]:
    """The module's output and torch.autograd's gradients of its loss: every parameter by its
    named_parameters() name, and dJ/dX as "input"."""
    module = case.module
    module.zero_grad()
    X = case.X.clone().requires_grad_(True)
    out = module(X)
    TORCH_LOSSES[case.loss](out, case.y).backward()
    grads = {name: p.grad for name, p in module.named_parameters() if p.grad is not None}
    assert X.grad is not None
    return out.detach(), {**grads, "input": X.grad}


def running_stats(module: nn.Module) -> dict[str, Tensor]:
    return {name: t for name, t in module.state_dict().items() if "running" in name or "num_batches" in name}


def assert_same(actual: dict[str, Tensor], expected: dict[str, Tensor], *, scale: float = 1.0) -> None:
    assert sorted(actual) == sorted(expected)
    tolerance = {"rtol": FLOAT64_ROUNDING["rtol"], "atol": FLOAT64_ROUNDING["atol"] * max(1.0, scale)}
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], **tolerance, msg=_named(name))


def _named(name: str) -> Callable[[str], str]:
    """assert_close's message, prefixed with the gradient's name."""
    return lambda message: f"{name}: {message}"


# ---- the independent check: autograd on the torch module itself -----------------------------------
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("kind", MODULE_KINDS)
@settings(max_examples=EXAMPLES)
@given(data=st.data())
def test_converted_gradients_equal_autograd_on_the_module_itself(
    kind: str, training: bool, data: st.DataObject
) -> None:
    case = data.draw(module_cases(include=[kind], training=training), label="case")
    net = refbp.from_torch(case.module, loss=case.loss)
    cache = net.forward(case.X)
    grads = net.backward(cache, case.y)
    out, expected = torch_step(case)  # the module's running statistics are updated by this step too

    torch.testing.assert_close(cache.y_hat, out, **FLOAT64_ROUNDING)
    largest = max(float(t.abs().max()) for t in grads.as_dict().values())
    assert_same(grads.torch_named(), expected, scale=largest)
    assert_same(running_stats(net.to_torch()), running_stats(case.module))  # both updated alike


def test_the_briefs_cnn_equals_autograd_and_passes_the_check() -> None:
    gen = torch.Generator().manual_seed(0)
    module = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(12, 3)
    ).double()
    X = torch.randn(2, 2, 4, 4, dtype=torch.float64, generator=gen)
    y = torch.tensor([0, 2])
    case = ModuleCase(module, X, y, "cross_entropy")
    net = refbp.from_torch(module, loss="cross_entropy")
    grads = net.backward(net.forward(X), y)
    _, expected = torch_step(case)
    assert_same(grads.torch_named(), expected)
    refbp.check(net, X, y).raise_if_failed()


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@settings(max_examples=CHECK_EXAMPLES)
@given(data=st.data())
def test_check_passes_on_drawn_cnns(training: bool, data: st.DataObject) -> None:
    case = data.draw(module_cases(training=training, max_layers=2, max_channels=2, max_size=4, max_batch=2))
    built = case.build()
    refbp.check(built.net, built.X, built.y).raise_if_failed()


@settings(max_examples=CHECK_EXAMPLES)
@given(case=module_cases(kinds=["maxpool"], include=["maxpool"], max_layers=1, integer_input=True))
def test_check_passes_with_tied_maxima_which_finite_differences_leave_out(case: ModuleCase) -> None:
    built = case.build()
    refbp.check(built.net, built.X, built.y).raise_if_failed()


def test_weight_decay_on_a_convolution_is_checked_too() -> None:
    gen = torch.Generator().manual_seed(1)
    module = nn.Sequential(nn.Conv1d(2, 2, 3, stride=2, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(6, 2)).double()
    X = torch.randn(3, 2, 5, dtype=torch.float64, generator=gen)
    net = refbp.from_torch(module, loss="mse", weight_decay=0.1)
    refbp.check(net, X, torch.randn(3, 2, dtype=torch.float64, generator=gen)).raise_if_failed()


# ---- max pooling: ties and overlapping windows ---------------------------------------------------
def pool_gradient(module: nn.Module, X: Tensor, G: Tensor) -> tuple[Tensor, Tensor]:
    """(refbp's dJ/dX, torch's dJ/dX) of the pooling module alone, from dJ/dy = G."""
    net = refbp.from_torch(nn.Sequential(module), loss="mse")
    ours = net.backward_from(net.forward(X), G).dJ_dX
    x = X.clone().requires_grad_(True)
    module(x).backward(G)
    assert x.grad is not None
    return ours, x.grad


def test_a_tied_window_credits_only_its_first_maximum_as_torch_does() -> None:
    X = torch.tensor([[[[3.0, 1.0, 3.0], [3.0, 0.0, 3.0], [2.0, 2.0, 2.0]]]], dtype=torch.float64)  # (1, 1, 3, 3)
    G = torch.tensor([[[[1.0, 10.0], [100.0, 1000.0]]]], dtype=torch.float64)  # four overlapping 2 x 2 windows
    ours, theirs = pool_gradient(nn.MaxPool2d(2, stride=1), X, G)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    # window (0, 0) holds 3 at (0, 0) and at (1, 0): the first in scan order takes its 1, and (1, 0)
    # only the 100 of window (1, 0), where it is the one maximum (crediting both would give it 101)
    assert (float(ours[0, 0, 0, 0]), float(ours[0, 0, 1, 0])) == (1.0, 100.0)


@settings(max_examples=EXAMPLES)
@given(case=module_cases(kinds=["maxpool"], include=["maxpool"], max_layers=1, integer_input=True, max_size=5))
def test_max_pool_gives_each_windows_gradient_to_one_entry_overlaps_adding_up(case: ModuleCase) -> None:
    pool = case.module[0]
    G = torch.randn(pool(case.X).shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    ours, theirs = pool_gradient(pool, case.X, G)
    torch.testing.assert_close(ours, theirs, **FLOAT64_ROUNDING)
    torch.testing.assert_close(
        ours.sum(dim=(2, 3)), G.sum(dim=(2, 3)), **FLOAT64_ROUNDING
    )  # nothing lost, nothing doubled


def test_max_pool_reports_the_tied_windows_as_kinks() -> None:
    X = torch.arange(16, dtype=torch.float64).reshape(1, 1, 4, 4)
    X[0, 0, 0, 0] = X[0, 0, 1, 1]  # window (0, 0) of the 2 x 2 pool now holds its maximum 5 twice
    layer = MaxPool2d(2)
    net = Network([layer], "mse")
    cache = net.forward(X)
    (key, mask), *rest = layer.kinks(cache.saved[1], (1,)).items()
    assert not rest and key == Key("a", (1,))
    assert mask.tolist() == [[[[True, False], [False, False]]]]


# ---- a wrong backward fails the check -------------------------------------------------------------
class StrideIgnoredInDx(Conv2d):
    """dJ/dx as a transposed convolution with stride 1, cut to x's shape: the stride forgotten."""

    def backward(self, dJ_dz: Tensor, x: Tensor, out: Tensor, cache: Any, ctx: BackwardContext) -> LayerGradients:
        right = super().backward(dJ_dz, x, out, cache, ctx)
        pad = self.pads()[0][0], self.pads()[1][0]
        wrong = F.conv_transpose2d(dJ_dz, self.W, None, 1, pad, 0, self.groups, self.dilation)
        dJ_dx = torch.zeros_like(x)
        h, w = min(x.shape[2], wrong.shape[2]), min(x.shape[3], wrong.shape[3])
        dJ_dx[:, :, :h, :w] = wrong[:, :, :h, :w]
        return LayerGradients(dJ_dx, right.params)


class MaxPoolAssigns(MaxPool2d):
    """dJ/dx[argmax] = dJ/dy instead of +=: a maximum shared by overlapping windows keeps one."""

    def backward(self, dJ_dy: Tensor, x: Tensor, out: Tensor, cache: PoolCache, ctx: BackwardContext) -> LayerGradients:
        N, C, H, W = x.shape
        dJ_dx = torch.zeros(N, C, H * W, dtype=dJ_dy.dtype).scatter_(2, cache.index, dJ_dy.reshape(N, C, -1))
        return LayerGradients(dJ_dx.view(N, C, H, W))


class SoftmaxDiagonal(Softmax):
    """dJ/dx = dJ/ds o s (1 - s): the softmax Jacobian's diagonal only."""

    def backward(self, dJ_ds: Tensor, x: Tensor, out: Tensor, cache: Any, ctx: BackwardContext) -> LayerGradients:
        return LayerGradients(dJ_ds * out * (1 - out))


class AvgPoolDividesByTheKernel(AvgPool2d):
    """count_include_pad=False, but the backward divides by k_h k_w everywhere."""

    def backward(self, dJ_dy: Tensor, x: Tensor, out: Tensor, cache: None, ctx: BackwardContext) -> LayerGradients:
        self.count_include_pad = True
        try:
            return super().backward(dJ_dy, x, out, cache, ctx)
        finally:
            self.count_include_pad = False


class GroupNormOverTheWholeImage(GroupNorm):
    """The backward of one group per image (LayerNorm over C H W) for a forward of G groups."""

    def backward(self, dJ_dy: Tensor, x: Tensor, out: Tensor, cache: Any, ctx: BackwardContext) -> LayerGradients:
        right = super().backward(dJ_dy, x, out, cache, ctx)
        whole = GroupNorm(1, C=self.C, eps=self.eps)
        xhat, whole_cache = whole.forward(x, ForwardContext(), ctx.path)
        wrong = whole.backward(dJ_dy * self.params["gamma"].view(-1, 1, 1), x, xhat, whole_cache, ctx)
        return LayerGradients(wrong.dJ_dx, right.params, right.intermediates)


def _with(layer_index: int, make: Callable[[Any], Any], net: Network) -> Network:
    layers = list(net.layers)
    layers[layer_index] = make(layers[layer_index])
    return Network(layers, net.loss_fn, weight_decay=net.weight_decay).train(net.training)


BUGS = {
    "stride ignored in dJ/dx": (
        nn.Sequential(nn.Conv2d(2, 2, 3, stride=2, padding=1), nn.Flatten(), nn.Linear(18, 2)), (2, 2, 5, 5), 0,
        lambda c: StrideIgnoredInDx(c.W, c.params.get("b"), stride=c.stride, padding=c.padding),
    ),
    "max-pool = instead of +=": (
        nn.Sequential(nn.Conv2d(1, 1, 1), nn.MaxPool2d(3, stride=1), nn.Flatten(), nn.Linear(9, 2)), (2, 1, 5, 5), 1,
        lambda p: MaxPoolAssigns(p.kernel_size, p.stride),
    ),
    "softmax's diagonal only": (
        nn.Sequential(nn.Linear(3, 4), nn.Softmax(dim=1), nn.Linear(4, 2)), (3, 3), 1, lambda s: SoftmaxDiagonal(s.dim),
    ),
    "average pool divisor ignoring padding": (
        nn.Sequential(nn.Conv2d(1, 1, 1), nn.AvgPool2d(3, 2, 1, count_include_pad=False), nn.Flatten(),
                      nn.Linear(9, 2)), (2, 1, 5, 5), 1,
        lambda p: AvgPoolDividesByTheKernel(p.kernel_size, p.stride, p.padding, count_include_pad=False),
    ),
    "group norm over the wrong axis": (
        nn.Sequential(nn.Conv2d(1, 4, 1), nn.GroupNorm(2, 4), nn.Flatten(), nn.Linear(16, 2)), (2, 1, 2, 2), 1,
        lambda g: GroupNormOverTheWholeImage(g.G, g.params["gamma"], g.params["beta"], eps=g.eps),
    ),
}  # fmt: skip
"""name -> (a torch model, its input shape, the layer to replace, the buggy layer from the right one)."""


@pytest.mark.parametrize("bug", list(BUGS))
def test_a_classic_mistake_in_a_backward_fails_the_check(bug: str) -> None:
    module, shape, index, make = BUGS[bug]
    gen = torch.Generator().manual_seed(4)
    module = module.double()
    X = torch.randn(shape, dtype=torch.float64, generator=gen)
    y = torch.randn(shape[0], 2, dtype=torch.float64, generator=gen)
    right = refbp.from_torch(module, loss="mse")
    refbp.check(right, X, y).raise_if_failed()  # the right layer passes at this very point
    wrong = _with(index, make, right)
    result = refbp.check(wrong, X, y)
    assert not result.passed
    assert {row.reference.split("-")[0] for row in result.rows if row.verdict == "mismatch"} == {"autograd", "fd"}


# ---- BatchNorm2d's running statistics, to_torch, conversions refused -------------------------------
@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum=0.1", "momentum=None"])
def test_batchnorm2d_running_stats_follow_torch_over_several_steps_then_eval_uses_them(momentum: float | None) -> None:
    gen = torch.Generator().manual_seed(3)
    module = nn.Sequential(nn.Conv2d(2, 3, 2), nn.BatchNorm2d(3, momentum=momentum), nn.Flatten(), nn.Linear(12, 2))
    module = module.double()
    net = refbp.from_torch(module, loss="mse")
    for _ in range(3):
        X = 2.0 + 3.0 * torch.randn(4, 2, 3, 3, dtype=torch.float64, generator=gen)  # far from the initial 0 and 1
        y = torch.randn(4, 2, dtype=torch.float64, generator=gen)
        net.forward(X)
        module(X)
        assert_same(running_stats(net.to_torch()), running_stats(module))
    module.eval()
    net.eval()
    case = ModuleCase(module, X, y, "mse")
    cache = net.forward(X)
    out, expected = torch_step(case)
    torch.testing.assert_close(cache.y_hat, out, **FLOAT64_ROUNDING)
    assert_same(net.backward(cache, y).torch_named(), expected)


@settings(max_examples=EXAMPLES)
@given(case=module_cases())
def test_to_torch_of_from_torch_is_the_same_module(case: ModuleCase) -> None:
    again = refbp.from_torch(case.module, loss=case.loss).to_torch()
    children = list(again.children())
    assert [type(m) for m in children] == [type(m) for m in case.module]
    assert again.training == case.module.training
    assert [repr(m) for m in children] == [repr(m) for m in case.module]  # every setting
    assert_same(dict(again.state_dict()), dict(case.module.state_dict()))
    with torch.no_grad():
        torch.testing.assert_close(again(case.X), case.module(case.X), **FLOAT64_ROUNDING)


@pytest.mark.parametrize(
    ("module", "message"),
    [
        (nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect"), "padding_mode='reflect'"),
        (nn.Conv1d(1, 1, 3, padding=1, padding_mode="circular"), "padding_mode='circular'"),
        (nn.MaxPool2d(2, ceil_mode=True), "ceil_mode=True"),
        (nn.MaxPool2d(2, return_indices=True), "return_indices=True"),
        (nn.AvgPool2d(2, ceil_mode=True), "ceil_mode=True"),
        (nn.AvgPool2d(2, divisor_override=3), "divisor_override=3"),
        (nn.Softmax(), "dim=None"),
        (nn.LogSoftmax(), "dim=None"),
    ],
    ids=lambda v: v if isinstance(v, str) else type(v).__name__,
)
def test_options_refbp_cannot_reproduce_are_refused_naming_the_module(module: nn.Module, message: str) -> None:
    with pytest.raises(ValueError, match=rf"module\[0\] \(0: {type(module).__name__}\): .*{message}"):
        refbp.from_torch(nn.Sequential(module, nn.Flatten()), loss="mse")


@pytest.mark.parametrize(
    ("layers", "X", "message"),
    [
        ([Conv2d(torch.zeros(2, 3, 3, 3, dtype=torch.float64))], torch.zeros(1, 2, 5, 5, dtype=torch.float64),
         r"layer 1 \(Conv2d\(3 -> 2, .*\) needs input \(N, 3, H, W\), got shape \(1, 2, 5, 5\)"),
        ([Conv2d(torch.zeros(2, 3, 3, 3, dtype=torch.float64))], torch.zeros(1, 3, 2, 5, dtype=torch.float64),
         r"smaller than the dilated kernel"),
        ([MaxPool2d((2, 3), (2, 3), 1, (2, 1))], torch.zeros(1, 1, 1, 4, dtype=torch.float64),
         r"entirely in the padding"),
        ([MaxPool2d(2)], torch.zeros(2, 4, dtype=torch.float64), r"needs input \(N, C, H, W\)"),
        ([GroupNorm(2, C=2)], torch.zeros(3, 2, dtype=torch.float64), r"at least 2 values per group"),
        ([Softmax(2)], torch.zeros(3, 2, dtype=torch.float64), r"dim 2 is not a dimension"),
    ],
    ids=["channels", "kernel", "padding only", "rank", "group of one", "dim"],
)  # fmt: skip
def test_an_input_a_layer_cannot_take_is_a_value_error_naming_the_layer(
    layers: list[Any], X: Tensor, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Network(layers, "mse").forward(X)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Conv2d(torch.zeros(2, 3, 3), None), r"W must be \(C_out, C_in / groups, k, k\)"),
        (lambda: Conv2d(torch.zeros(3, 1, 3, 3), None, groups=2), r"groups=2 must be an int >= 1 dividing C_out = 3"),
        (lambda: Conv2d(torch.zeros(2, 1, 3, 3), None, padding="same", stride=2), r"'same' needs stride 1"),
        (lambda: Conv2d(torch.zeros(2, 1, 3, 3), None, padding="full"), r"padding='full'"),
        (lambda: Conv2d(torch.zeros(2, 1, 3, 3), None, stride=0), r"stride=0: expected an int >= 1"),
        (lambda: MaxPool2d(2, padding=2), r"padding=\(2, 2\) must be at most half the kernel"),
        (lambda: GroupNorm(3, C=4), r"num_groups=3 must be an int >= 1 dividing C = 4"),
    ],
    ids=["W rank", "groups", "same with stride", "padding name", "stride", "pool padding", "groups of C"],
)
def test_a_layer_built_with_impossible_sizes_is_a_value_error(make: Callable[[], Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


# ---- the strategies ---------------------------------------------------------------------------------
KIND_MODULES = {
    "conv": (nn.Conv1d, nn.Conv2d), "maxpool": (nn.MaxPool2d,), "avgpool": (nn.AvgPool2d,),
    "adaptive": (nn.AdaptiveAvgPool2d,), "batchnorm2d": (nn.BatchNorm2d,), "groupnorm": (nn.GroupNorm, nn.Tanh),
    "softmax": (nn.Softmax,), "logsoftmax": (nn.LogSoftmax,), "activation": (nn.ReLU, nn.Tanh, nn.GELU),
}  # fmt: skip
"""The modules each kind of module_cases may become (a GroupNorm with no group of 2 values: Tanh)."""


@settings(max_examples=EXAMPLES)
@given(data=st.data())
def test_module_cases_draw_the_kinds_asked_for_within_their_bounds(data: st.DataObject) -> None:
    kinds = data.draw(st.lists(st.sampled_from(MODULE_KINDS), min_size=1, max_size=4, unique=True), label="kinds")
    include = data.draw(st.lists(st.sampled_from(kinds), max_size=2, unique=True), label="include")
    case = data.draw(module_cases(kinds=kinds, include=include, max_layers=2, max_channels=2, max_size=4))
    *body, flatten, head = case.module
    assert isinstance(flatten, nn.Flatten) and isinstance(head, nn.Linear)
    assert len(include) <= len(body) <= max(2, len(include))
    allowed = tuple(t for kind in kinds for t in KIND_MODULES[kind])
    assert all(isinstance(m, allowed) for m in body)
    for kind in include:
        assert any(isinstance(m, KIND_MODULES[kind]) for m in body), kind
    assert case.X.shape[1] <= 2 and max(case.X.shape[2:]) <= 4 and case.X.shape[0] <= 3
    with torch.no_grad():
        assert case.module(case.X).shape == (case.X.shape[0], head.out_features)  # every geometry fits


def test_module_cases_refuse_an_included_kind_that_is_not_among_the_kinds() -> None:
    @given(data=st.data())
    def draw(data: st.DataObject) -> None:
        data.draw(module_cases(kinds=["conv"], include=["maxpool"]))

    with pytest.raises(ValueError, match=r"include=\['maxpool'\]: \['maxpool'\] are not among kinds=\['conv'\]"):
        draw()


@settings(max_examples=3 * EXAMPLES)
@given(data=st.data())
def test_conv1d_weight_gradient_equals_autograd_on_every_geometry(data: st.DataObject) -> None:
    """Conv1d's dJ/dW, offset by offset over strided views of x (padding left out), against torch
    on drawn groups, stride, dilation, padding (numbers, "same", "valid") and lengths, down to
    offsets that read padding only."""
    G, cg, og = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    k, s, d = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    paddings: list[int | str] = [0, 1, 2, 3, "valid", *(["same"] if s == 1 else [])]
    padding = data.draw(st.sampled_from(paddings))
    reach = d * (k - 1) + 1  # the kernel's extent
    L = data.draw(
        st.integers(max(1, reach - 2 * padding) if isinstance(padding, int) else reach if padding == "valid" else 1, 12)
    )
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    W = torch.randn(G * og, cg, k, dtype=torch.float64, generator=gen, requires_grad=True)
    x = torch.randn(data.draw(st.integers(1, 3)), G * cg, L, dtype=torch.float64, generator=gen)
    z = F.conv1d(x, W, None, s, padding, d, G)
    g = torch.randn(z.shape, dtype=torch.float64, generator=gen)
    z.backward(g)
    layer = Conv1d(W.detach(), None, stride=s, padding=padding, dilation=d, groups=G)
    assert W.grad is not None
    torch.testing.assert_close(layer.weight_gradient(g, x), W.grad, **FLOAT64_ROUNDING)


@settings(max_examples=3 * EXAMPLES)
@given(data=st.data())
def test_conv2d_weight_gradient_equals_autograd_on_every_geometry(data: st.DataObject) -> None:
    """Conv2d's dJ/dW, offset by offset over the phase planes of x, against torch on drawn
    groups and, per axis, stride, dilation, padding (numbers, "same", "valid") and sizes, with
    the images in one chunk or one per chunk (each chunk's planes and padded dJ/dz are built
    apart): offsets that read padding only, planes no position of x reaches, strides above the
    kernel's extent."""
    G, cg, og = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2))
    k, s, d = (tuple(data.draw(st.integers(1, top)) for _ in range(2)) for top in (4, 4, 3))
    paddings: list[Any] = [0, 1, (0, 2), (3, 1), "valid", *(["same"] if s == (1, 1) else [])]
    padding = data.draw(st.sampled_from(paddings))
    pads = (padding, padding) if isinstance(padding, int) else padding if isinstance(padding, tuple) else None
    sizes = []
    for axis in range(2):
        reach = d[axis] * (k[axis] - 1) + 1  # the kernel's extent along the axis
        least = max(1, reach - 2 * pads[axis]) if pads is not None else reach if padding == "valid" else 1
        sizes.append(data.draw(st.integers(least, least + 9)))
    N = data.draw(st.integers(1, 4))
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    W = torch.randn(G * og, cg, *k, dtype=torch.float64, generator=gen, requires_grad=True)
    x = torch.randn(N, G * cg, *sizes, dtype=torch.float64, generator=gen)
    z = F.conv2d(x, W, None, s, padding, d, G)
    g = torch.randn(z.shape, dtype=torch.float64, generator=gen)
    z.backward(g)
    layer = Conv2d(W.detach(), None, stride=s, padding=padding, dilation=d, groups=G)
    budget = data.draw(st.sampled_from([conv_module.CHUNK_BYTES, 1]), label="budget")  # 1 byte: an image a chunk
    with unittest.mock.patch.object(conv_module, "CHUNK_BYTES", budget):
        got = layer.weight_gradient(g, x)
    assert W.grad is not None
    torch.testing.assert_close(got, W.grad, **FLOAT64_ROUNDING)
