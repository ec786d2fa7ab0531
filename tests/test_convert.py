"""from_torch / to_torch, checked independently: random torch.nn.Sequential models, in training
and eval mode, are converted, and the network's manual gradients must equal what torch.autograd
computes on *the very module* (its named_parameters() and the input), with BatchNorm's running
statistics after the step equal to the module's own. Nothing here goes through refbp's oracle."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from refbp.nn.convert import from_torch, supported
from refbp.nn.layers import BatchNorm1d, Dropout, Elementwise, Linear, TorchResidual
from refbp.nn.network import Cache, Network, NetworkGradients
from refbp.strategies import stacks
from refbp.verify.cases import Case

FLOAT64_ROUNDING: dict[str, Any] = {"rtol": 1e-10, "atol": 1e-12}
"""refbp and torch compute the same float64 sums in different orders (addmm against matmul,
two-pass against Welford statistics): the networks here have at most 8 layers of at most 6
units, so the results differ by a few hundred roundings (eps = 2.2e-16) of the largest term
at most, about 1e-13 of it. 1e-10 relative (and 1e-12 absolute, for entries that cancel to ~0)
leaves a 100x margin over that and is still 1e6 times tighter than any real gradient bug."""


def gradient_rounding(grads: NetworkGradients) -> dict[str, Any]:
    """FLOAT64_ROUNDING with the absolute part per unit of the largest gradient anywhere in the
    backward pass (intermediates included): a gradient that cancels to 0 (a shift before a
    training BatchNorm, whose output ignores the batch mean) keeps the rounding of its terms,
    and those terms can be hundreds (BatchNorm divides by sqrt(var + eps) >= 1/316)."""
    largest = max(float(t.abs().max()) for t in grads.as_dict().values())
    return {"rtol": FLOAT64_ROUNDING["rtol"], "atol": FLOAT64_ROUNDING["atol"] * max(1.0, largest)}


EXAMPLES = settings().max_examples
"""Conversions are cheap (one forward and backward each way): the profile's full budget."""

TORCH_LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "mse": F.mse_loss,
    "half_sse": lambda out, y: 0.5 * ((out - y) ** 2).sum(),
    "cross_entropy": lambda out, y: F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1)),
    "bce": F.binary_cross_entropy,
    "nll": lambda out, y: F.nll_loss(out.reshape(-1, out.shape[-1]), y.reshape(-1)),
    "multi_margin": lambda out, y: F.multi_margin_loss(out.reshape(-1, out.shape[-1]), y.reshape(-1)),
}
"""Each loss written with torch's own functions, independently of refbp.nn.losses."""

SEQUENTIAL_LOSSES = ("mse", "half_sse", "cross_entropy", "bce")
"""The losses ``sequentials`` draws a head and targets for."""


# ---- random torch.nn.Sequential models ---------------------------------------------------------
@dataclass
class Drawn:
    """A torch model in float64 and a point (X, y) for it, with the loss refbp is to use."""

    module: nn.Sequential
    X: Tensor
    y: Tensor
    loss: str

    def __repr__(self) -> str:  # what hypothesis prints for a failing example
        return f"Drawn(loss={self.loss!r}, X={tuple(self.X.shape)} {self.X.dtype}, module={self.module})"


ACTIVATION_MODULES: list[Callable[[st.DrawFn], nn.Module]] = [
    lambda draw: nn.Identity(),
    lambda draw: nn.Sigmoid(),
    lambda draw: nn.Tanh(),
    lambda draw: nn.ReLU(),
    lambda draw: nn.LeakyReLU(draw(st.floats(1e-3, 3.0))),
    lambda draw: nn.Softplus(draw(st.floats(0.25, 4.0)), draw(st.sampled_from([20.0, 1.0, 0.5]))),
    lambda draw: nn.GELU(draw(st.sampled_from(["none", "tanh"]))),
    lambda draw: nn.SiLU(),
    lambda draw: nn.ELU(draw(st.floats(0.1, 3.0))),
]
"""The activation modules from_torch converts (Softplus thresholds inside the input's range too)."""

MODULE_KINDS = ("linear", "activation", "activation", "layernorm", "batchnorm", "dropout", "flatten")
"""What follows the first module, activations twice as often (there are nine of them)."""


@st.composite
def sequentials(draw: st.DrawFn, *, training: bool | None = None) -> Drawn:
    """A random nn.Sequential (an nn.Embedding first or a float input; then Linear, LayerNorm,
    BatchNorm1d, Dropout, Flatten and activation modules), its parameters and buffers drawn
    away from neutral values (gamma = 1, beta = 0, running statistics 0 and 1), a mode, and a
    point. Everything numeric comes from one drawn seed."""
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    mode = draw(st.booleans()) if training is None else training
    loss = draw(st.sampled_from(SEQUENTIAL_LOSSES))
    modules: list[nn.Module] = []
    tokens = draw(st.booleans())
    if tokens:
        V, d = draw(st.integers(2, 6)), draw(st.integers(1, 5))
        T = draw(st.sampled_from([None, 1, 2, 3]))  # None: (N,) indices; else (N, T)
        modules.append(nn.Embedding(V, d, padding_idx=draw(st.sampled_from([None, 0, -1]))))
        shape: tuple[int, ...] = (d,) if T is None else (T, d)
    else:
        d_0 = draw(st.integers(1, 5))
        shape = (d_0,)
    batch_statistics = False
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(MODULE_KINDS))
        if kind == "linear":
            d_out = draw(st.integers(1, 5))
            modules.append(nn.Linear(shape[-1], d_out, bias=draw(st.booleans())))
            shape = (*shape[:-1], d_out)
        elif kind == "activation":
            modules.append(draw(st.sampled_from(ACTIVATION_MODULES))(draw))
        elif kind == "layernorm":
            affine, bias = draw(st.sampled_from([(True, True), (True, False), (False, False)]))
            eps = draw(st.sampled_from([1e-5, 1e-3]))
            modules.append(nn.LayerNorm(shape[-1], eps=eps, elementwise_affine=affine, bias=bias))
        elif kind == "batchnorm":
            if len(shape) > 1:
                modules.append(nn.Flatten())
                shape = (math.prod(shape),)
            track = draw(st.booleans())
            momentum = draw(st.sampled_from([0.1, 0.3, None]))
            modules.append(
                nn.BatchNorm1d(shape[0], momentum=momentum, affine=draw(st.booleans()), track_running_stats=track)
            )
            batch_statistics |= mode or not track
        elif kind == "dropout":
            modules.append(nn.Dropout(draw(st.sampled_from([0.5, 0.2, 0.8, 0.0]))))
        else:
            modules.append(nn.Flatten())
            shape = (math.prod(shape),)
    if loss == "cross_entropy":
        head = nn.Linear(shape[-1], draw(st.integers(2, 4)))
        modules.append(head)
        shape = (*shape[:-1], head.out_features)
    elif loss == "bce":
        modules.append(nn.Sigmoid())
    module = nn.Sequential(*modules).to(torch.float64)
    _draw_values(module, gen)
    module.train(mode)

    N = draw(st.integers(2 if batch_statistics else 1, 4))
    if tokens:
        first = modules[0]
        assert isinstance(first, nn.Embedding)
        X = torch.randint(0, first.num_embeddings, (N,) if T is None else (N, T), generator=gen)
    else:
        X = torch.empty(N, d_0, dtype=torch.float64).uniform_(-2.0, 2.0, generator=gen)
    out_shape = (N, *shape)  # shape: one row's, as the modules above were chosen
    if loss == "cross_entropy":
        y = torch.randint(0, out_shape[-1], tuple(out_shape[:-1]), generator=gen)
    elif loss == "bce":
        y = torch.rand(tuple(out_shape), dtype=torch.float64, generator=gen)
    else:
        y = torch.empty(tuple(out_shape), dtype=torch.float64).uniform_(-1.0, 1.0, generator=gen)
    return Drawn(module, X, y, loss)


def _draw_values(module: nn.Module, gen: torch.Generator) -> None:
    """Every parameter and buffer from ``gen``, away from the neutral values that would hide a
    term of a backward pass (gamma = 1, beta = 0, running_mean = 0, running_var = 1)."""
    with torch.no_grad():
        for child in module.modules():
            if isinstance(child, nn.Linear):
                bound = 1.0 / math.sqrt(child.in_features)
                child.weight.uniform_(-bound, bound, generator=gen)
                if child.bias is not None:
                    child.bias.uniform_(-bound, bound, generator=gen)
            elif isinstance(child, nn.Embedding):
                child.weight.normal_(generator=gen)
            elif isinstance(child, (nn.LayerNorm, nn.BatchNorm1d)):
                if child.weight is not None:
                    child.weight.uniform_(0.5, 1.5, generator=gen)
                if child.bias is not None:
                    child.bias.uniform_(-0.5, 0.5, generator=gen)
                if isinstance(child, nn.BatchNorm1d) and child.running_mean is not None:
                    assert child.running_var is not None and child.num_batches_tracked is not None
                    child.running_mean.uniform_(-0.5, 0.5, generator=gen)
                    child.running_var.uniform_(0.5, 1.5, generator=gen)
                    child.num_batches_tracked.fill_(int(torch.randint(0, 5, (), generator=gen)))


# ---- torch's side: autograd on the module itself ----------------------------------------------
@contextmanager
def dropout_masks(module: nn.Module, cache: Cache, index_to_path: dict[int, tuple[int, ...]]) -> Iterator[None]:
    """Make every nn.Dropout child of ``module`` use refbp's keep-mask for its layer (a forward
    hook replaces its output by x o m / (1 - p)); the hooks are removed on exit."""
    handles = []
    for index, child in enumerate(module.children()):
        path = index_to_path.get(index)
        if isinstance(child, nn.Dropout) and path in cache.noise:
            mask, p = cache.noise[path], child.p

            def hook(
                mod: nn.Module, inputs: tuple[Tensor, ...], output: Tensor, mask: Tensor = mask, p: float = p
            ) -> Tensor:
                return inputs[0] * mask.to(inputs[0].dtype) / (1.0 - p)

            handles.append(child.register_forward_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def torch_step(module: nn.Module, X: Tensor, y: Tensor, loss: str) -> tuple[Tensor, dict[str, Tensor]]:
    """The module's output and torch.autograd's gradients of the loss: every named parameter
    (torch's own names) and, for a float input, "input"."""
    module.zero_grad(set_to_none=True)
    inp = X.clone().requires_grad_() if X.is_floating_point() else X
    out = module(inp)
    TORCH_LOSSES[loss](out, y).backward()
    grads = {name: p.grad for name, p in module.named_parameters() if p.grad is not None}
    missing = [name for name, p in module.named_parameters() if p.grad is None]
    assert not missing, f"torch computed no gradient for {missing}"
    if X.is_floating_point():
        assert inp.grad is not None
        grads["input"] = inp.grad
    return out.detach(), grads


def top_level_paths(net: Network) -> dict[int, tuple[int, ...]]:
    """Index of each module in ``net.to_torch()`` -> the path of the layer it comes from (only
    layers that become one module each; that is every layer of the networks drawn here)."""
    out: dict[int, tuple[int, ...]] = {}
    offset = 0
    for l, layer in enumerate(net.layers, start=1):
        modules = layer.torch_modules()
        if len(modules) == 1:
            out[offset] = (l,)
        offset += len(modules)
    return out


def running_stats(module: nn.Module) -> dict[str, Tensor]:
    """Every BatchNorm buffer of a torch module by its state_dict name."""
    return {
        name: t.detach().clone()
        for name, t in module.state_dict().items()
        if name.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked")
    }


def refbp_running_stats(net: Network) -> dict[str, Tensor]:
    """The same, for the network's BatchNorm layers, under the names of ``net.to_torch()``."""
    out = {}
    for index, path in top_level_paths(net).items():
        layer = net.layers[path[0] - 1]
        if isinstance(layer, BatchNorm1d) and layer.running_mean is not None and layer.running_var is not None:
            out[f"{index}.running_mean"] = layer.running_mean
            out[f"{index}.running_var"] = layer.running_var
            out[f"{index}.num_batches_tracked"] = torch.tensor(layer.num_batches_tracked)
    return out


NEAR_CONSTANT = 1e-4
"""A feature whose batch standard deviation is below this fraction of its largest entry is
centred by cancelling nearly all its digits: x - mean(x) keeps 16 - 4 = 12 of them at best, and
a training BatchNorm (chained ones even more) then scales that error up to size 1. refbp and torch
cancel differently, so such points cannot be compared to float64 rounding (both are right)."""


def batch_statistics_well_conditioned(net: Network, cache: Cache) -> bool:
    """True when no BatchNorm that normalises by the batch sees a nearly constant, non-zero feature."""
    for l, layer in enumerate(net.layers, start=1):
        if isinstance(layer, BatchNorm1d) and layer.uses_batch_statistics:
            x = cache.a[l - 1]  # (N, C)
            if bool((x.std(dim=0, unbiased=False) < NEAR_CONSTANT * x.abs().amax(dim=0)).any()):
                return False
    return True


def assert_same(
    actual: dict[str, Tensor], expected: dict[str, Tensor], tolerance: dict[str, Any] = FLOAT64_ROUNDING
) -> None:
    """The same names, and the same values to float64 rounding (``tolerance``)."""
    assert sorted(actual) == sorted(expected)
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], **tolerance, msg=_named(name))


def _named(name: str) -> Callable[[str], str]:
    """assert_close's message, prefixed with the gradient's name."""
    return lambda message: f"{name}: {message}"


# ---- the independent check -----------------------------------------------------------------
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@settings(max_examples=EXAMPLES)
@given(data=st.data())
def test_from_torch_gradients_equal_autograd_on_the_module_itself(training: bool, data: st.DataObject) -> None:
    drawn = data.draw(sequentials(training=training), label="drawn")
    module = drawn.module
    net = from_torch(module, loss=drawn.loss)
    assert net.training == module.training
    cache = net.forward(drawn.X)
    assume(batch_statistics_well_conditioned(net, cache))
    grads = net.backward(cache, drawn.y)
    # refbp drew one boolean keep-mask, of the layer's input shape, per training Dropout with p > 0
    dropouts = [i for i, m in enumerate(module) if isinstance(m, nn.Dropout) and m.p > 0 and training]
    assert sorted(cache.noise) == [(i + 1,) for i in dropouts]
    assert all(cache.noise[(i + 1,)].dtype == torch.bool for i in dropouts)
    assert all(cache.noise[(i + 1,)].shape == cache.a[i].shape for i in dropouts)

    with dropout_masks(module, cache, {i: (i + 1,) for i in range(len(module))}):  # torch uses them too
        out, expected = torch_step(module, drawn.X, drawn.y, drawn.loss)

    torch.testing.assert_close(cache.y_hat, out, **FLOAT64_ROUNDING)
    assert_same(grads.torch_named(), expected, gradient_rounding(grads))
    assert_same(refbp_running_stats(net), running_stats(module))  # after the step: both updated alike


@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum=0.1", "momentum=None"])
def test_batchnorm_running_stats_follow_torch_over_several_steps(momentum: float | None) -> None:
    gen = torch.Generator().manual_seed(3)
    module = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, momentum=momentum), nn.Tanh()).to(torch.float64)
    _draw_values(module, gen)
    net = from_torch(module, loss="mse")
    for _ in range(4):
        X = torch.empty(5, 3, dtype=torch.float64).uniform_(-2, 2, generator=gen)
        y = torch.empty(5, 4, dtype=torch.float64).uniform_(-1, 1, generator=gen)
        grads = net.backward(net.forward(X), y)
        _, expected = torch_step(module, X, y, "mse")
        assert_same(grads.torch_named(), expected, gradient_rounding(grads))
        assert_same(refbp_running_stats(net), running_stats(module))  # after every step


@pytest.mark.parametrize(
    "activation",
    [nn.Identity(), nn.Sigmoid(), nn.Tanh(), nn.ReLU(), nn.LeakyReLU(0.2), nn.LeakyReLU(3.0), nn.Softplus(),
     nn.Softplus(2.0, 1.0), nn.GELU(), nn.GELU("tanh"), nn.SiLU(), nn.ELU(), nn.ELU(0.4)],
    ids=repr,
)  # fmt: skip
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_every_activation_module_converts_to_the_same_gradients(activation: nn.Module, training: bool) -> None:
    """Every activation module from_torch knows, with non-default parameters, between two Linear
    layers and a BatchNorm (whatever the random models above happened to draw)."""
    gen = torch.Generator().manual_seed(0)
    module = nn.Sequential(nn.Linear(3, 4), activation, nn.BatchNorm1d(4), nn.Linear(4, 2)).to(torch.float64)
    _draw_values(module, gen)
    module.train(training)
    X = torch.empty(5, 3, dtype=torch.float64).uniform_(-3, 3, generator=gen)
    y = torch.empty(5, 2, dtype=torch.float64).uniform_(-1, 1, generator=gen)
    net = from_torch(module, loss="mse")
    cache = net.forward(X)
    grads = net.backward(cache, y)
    out, expected = torch_step(module, X, y, "mse")
    torch.testing.assert_close(cache.y_hat, out, **FLOAT64_ROUNDING)
    assert_same(grads.torch_named(), expected, gradient_rounding(grads))
    assert_same(refbp_running_stats(net), running_stats(module))


# ---- to_torch ------------------------------------------------------------------------------
@settings(max_examples=EXAMPLES)
@given(sequentials())
def test_to_torch_of_from_torch_is_the_same_module(drawn: Drawn) -> None:
    """Round trip: the same modules (repr: sizes, eps, momentum, slopes, padding_idx, ...), the
    same parameters and buffers under the same names, the same mode."""
    net = from_torch(drawn.module, loss=drawn.loss)
    again = net.to_torch()
    assert repr(again) == repr(drawn.module)
    assert [m.training for m in again.modules()] == [m.training for m in drawn.module.modules()]
    expected = drawn.module.state_dict()
    actual = again.state_dict()
    assert list(actual) == list(expected)
    for name in expected:
        assert actual[name].dtype == expected[name].dtype, name
        assert torch.equal(actual[name], expected[name]), name
    assert sorted(n for names in net.torch_parameter_names().values() for n in names) == sorted(
        name for name, _ in again.named_parameters()
    )


@settings(max_examples=EXAMPLES)
@given(stacks(dtypes=["float64"], away_from_kinks=False))
def test_to_torch_computes_the_network_and_autograd_on_it_equals_torch_named(case: Case) -> None:
    """For refbp's own stacks (Residuals included): net.to_torch() is the same function, and
    torch.autograd on that module gives torch_named()'s gradients, name for name; converting
    it back gives the same network again."""
    net = case.net
    module = net.to_torch()  # before the forward pass: the same running statistics
    again = from_torch(module, loss=net.loss_name)
    cache = net.forward(case.X)
    assume(batch_statistics_well_conditioned(net, cache))
    grads = net.backward(cache, case.y)
    paths = top_level_paths(net)
    with dropout_masks(module, cache, paths):
        out, expected = torch_step(module, case.X, case.y, net.loss_name)
    torch.testing.assert_close(cache.y_hat, out, **FLOAT64_ROUNDING)
    assert_same(grads.torch_named(), expected, gradient_rounding(grads))
    assert_same(refbp_running_stats(net), running_stats(module))

    assert [layer.describe() for layer in again.layers] == [layer.describe() for layer in net.layers]
    same = again.forward(case.X, update_stats=False, noise=cache.noise)
    torch.testing.assert_close(same.y_hat, cache.y_hat, rtol=0, atol=0)


# ---- ties ------------------------------------------------------------------------------------
def test_from_torch_keeps_a_weight_tied_in_torch() -> None:
    gen = torch.Generator().manual_seed(0)
    module = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 3)).to(torch.float64)
    module[2].weight = module[0].weight  # one Parameter, used twice
    _draw_values(module, gen)
    X = torch.randn(4, 3, dtype=torch.float64, generator=gen)
    y = torch.randn(4, 3, dtype=torch.float64, generator=gen)
    net = from_torch(module, loss="mse")
    grads = net.backward(net.forward(X), y)
    _, expected = torch_step(module, X, y, "mse")
    assert_same(grads.torch_named(), expected, gradient_rounding(grads))


def test_to_torch_of_a_tied_network_ties_the_weight_in_torch() -> None:
    gen = torch.Generator().manual_seed(0)
    W = torch.randn(3, 3, dtype=torch.float64, generator=gen)
    b1, b3 = torch.randn(3, dtype=torch.float64, generator=gen), torch.randn(3, dtype=torch.float64, generator=gen)
    net = Network([Linear(W, b1), Elementwise("tanh"), Linear(W, b3)], "mse")
    X = torch.randn(4, 3, dtype=torch.float64, generator=gen)
    y = torch.randn(4, 3, dtype=torch.float64, generator=gen)
    module = net.to_torch()
    grads = net.backward(net.forward(X), y)
    _, expected = torch_step(module, X, y, "mse")
    assert_same(grads.torch_named(), expected, gradient_rounding(grads))


# ---- what from_torch refuses -------------------------------------------------------------------
@pytest.mark.parametrize("position", [0, 2])
def test_an_unsupported_module_is_a_value_error_naming_it_and_its_position(position: int) -> None:
    modules: list[nn.Module] = [nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4)]
    modules.insert(position, nn.PixelShuffle(2))
    with pytest.raises(ValueError, match=rf"module\[{position}\] \({position}: PixelShuffle\) is not supported") as err:
        from_torch(nn.Sequential(*modules))
    assert "Linear" in str(err.value) and "LayerNorm" in str(err.value)  # what is supported instead
    assert "PixelShuffle" not in supported()


def test_an_unsupported_module_inside_a_residual_names_the_residuals_position() -> None:
    inner = nn.Sequential(nn.Linear(4, 4), nn.PixelShuffle(2))
    with pytest.raises(ValueError, match=r"module\[1\].*PixelShuffle.*expected one of"):
        from_torch(nn.Sequential(nn.Linear(4, 4), TorchResidual(inner)))


@pytest.mark.parametrize(
    ("module", "error", "message"),
    [
        (nn.Linear(2, 2), TypeError, r"a single Linear; wrap it as torch.nn.Sequential\(module\)"),
        (TorchResidual(nn.Sequential(nn.Linear(2, 2))), TypeError, r"a single TorchResidual; wrap it"),
        (nn.ModuleList([nn.Linear(2, 2)]), ValueError, r"ModuleList's forward cannot be traced by torch.fx"),
        ([nn.Linear(2, 2)], TypeError, r"module must be a torch.nn.Module, got list"),
    ],
    ids=["Linear", "TorchResidual", "ModuleList", "list"],
)
def test_what_is_neither_a_sequential_nor_a_traceable_model_is_refused(
    module: object, error: type[Exception], message: str
) -> None:
    # any other nn.Module is traced by torch.fx (tests/test_fx_convert.py)
    with pytest.raises(error, match=message):
        from_torch(module)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("module", "message"),
    [
        (nn.Sequential(), r"empty torch.nn.Sequential"),
        (nn.Sequential(nn.Linear(2, 2), nn.Dropout(1.0)), r"Dropout\(p=1\)"),
        (nn.Sequential(nn.Embedding(4, 2, max_norm=1.0)), r"max_norm"),
        (nn.Sequential(nn.LayerNorm([2, 2])), r"normalized_shape with one size"),
        (nn.Sequential(nn.Linear(2, 2), nn.Sequential()), r"module\[1\] \(1: Sequential\): an empty"),
    ],
    ids=["empty", "dropout-p1", "embedding-max_norm", "layernorm-2d", "empty-nested-sequential"],
)
def test_modules_refbp_cannot_reproduce_are_refused_not_converted_wrongly(module: nn.Module, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        from_torch(module)


def test_two_dropouts_from_torch_draw_independent_masks() -> None:
    module = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5), nn.Linear(8, 8), nn.Dropout(0.5)).to(torch.float64)
    net = from_torch(module)
    X = torch.randn(16, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        noise = net.forward(X).noise
        assert not torch.equal(noise[(2,)], noise[(4,)])  # 128 fair coins: equal with probability 2^-128


def test_a_dropout_with_refbps_masks_is_the_layer_from_torch_builds() -> None:
    """from_torch(nn.Dropout(p)) is refbp's Dropout(p) in the module's mode."""
    net = from_torch(nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.3)).eval())
    layer = net.layers[1]
    assert isinstance(layer, Dropout) and layer.p == 0.3 and not layer.training
