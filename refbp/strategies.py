"""Hypothesis strategies for networks and points to check them at: the ones refbp's own tests
use, exported so that you can property-test your own backprop the same way.

    from hypothesis import given
    from refbp.strategies import cases

    @given(cases(losses=["mse"]))
    def test_my_backprop(case):
        refbp.check(case.net, case.X, case.y, grads=my_backprop(case)).raise_if_failed()

Shapes, activations, loss, dtype and an integer seed are drawn by hypothesis; the numbers are
drawn from the seed. A failure therefore shrinks to the shallowest, narrowest network with
the smallest batch that still shows it.

    cases, specs              MLPs (refbp.MLP) and their CaseSpecs
    stacks, stack_specs       layer stacks (refbp.Network): LayerNorm, BatchNorm1d, Dropout, ...
    gpts, gpt_specs           tiny GPTs (refbp.models.GPT) with token inputs and ignored targets
    module_cases              torch.nn.Sequential CNNs (convolutions, pooling, spatial norms,
                              softmax) with a point, for from_torch and autograd on the module
    conv_geometries, pool_geometries   kernel, stride, padding, dilation that fit a given size
    recurrent_specs           torch.nn.RNN/LSTM/GRU modules and a sequence to run them on
    directions                a direction v for a network's H v, G v or tangents (order 2)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from hypothesis import assume
from hypothesis import strategies as st
from torch import Tensor, nn

from .models.gpt_cases import gpt_specs, gpts
from .nn.activations import ACTIVATIONS
from .nn.convert import from_torch
from .nn.losses import LOSSES, get_loss
from .nn.mlp import MLP
from .nn.network import Network
from .nn.validation import check_subset
from .verify.cases import KINK_MARGIN, Case, CaseSpec, kink_distance
from .verify.second_order import random_direction
from .verify.stacks import StackSpec

__all__ = [
    "MODULE_KINDS",
    "RECURRENT_KINDS",
    "STACK_KINDS",
    "ModuleCase",
    "RecurrentSpec",
    "cases",
    "conv_geometries",
    "directions",
    "gpt_specs",
    "gpts",
    "module_cases",
    "pool_geometries",
    "recurrent_specs",
    "specs",
    "stack_specs",
    "stacks",
]


@st.composite
def directions(draw: st.DrawFn, net: Network, X: Tensor, *, input_too: bool = True) -> dict[str, Tensor]:
    """A direction v for ``refbp.hvp``/``gvp``/``jvp`` and ``check_second_order``: standard
    normal entries (from a drawn seed) for every parameter and, when ``input_too`` and X is
    floating, for "X"; each tensor scaled by a drawn 1e-2, 1 or 1e2, or set to zero (a direction
    along some tensors only), never all of them zero. A failure shrinks towards v = the seed-0
    draw, every tensor kept at scale 1."""
    v = random_direction(net, X, draw(st.integers(0, 2**31 - 1)), input_too=input_too)
    scales = {name: draw(st.sampled_from([1.0, 0.0, 1e-2, 1e2]), label=f"scale of v[{name!r}]") for name in v}
    if not any(scales.values()):
        scales[next(iter(v))] = 1.0
    return {name: t * scales[name] for name, t in v.items()}


@st.composite
def specs(
    draw: st.DrawFn,
    *,
    max_depth: int = 5,
    max_width: int = 16,
    max_batch: int = 8,
    activations: Sequence[str] = tuple(ACTIVATIONS),
    losses: Sequence[str] = tuple(LOSSES),
    dtypes: Sequence[str] = ("float64", "float32"),
    device: str = "cpu",
    weight_decay: bool = True,
) -> CaseSpec:
    """A CaseSpec: depth 1..max_depth, widths 1..max_width, batch 1..max_batch, an activation
    per layer, a loss (the output activation made to fit it), a dtype and a seed."""
    if not (max_depth >= 1 and max_width >= 1 and max_batch >= 1):
        raise ValueError(f"max_depth={max_depth}, max_width={max_width}, max_batch={max_batch}: all must be >= 1")
    activation_names = check_subset(activations, "activations", list(ACTIVATIONS))
    loss_names = check_subset(losses, "losses", list(LOSSES))
    dtype_names = check_subset(dtypes, "dtypes", ["float64", "float32", "float16", "bfloat16"])

    loss = draw(st.sampled_from(loss_names))
    depth = draw(st.integers(1, max_depth))
    min_out = 2 if get_loss(loss).targets == "classes" else 1
    dims = [draw(st.integers(1, max_width)) for _ in range(depth)]
    dims.append(draw(st.integers(min_out, max(min_out, max_width))))
    acts = [draw(st.sampled_from(activation_names)) for _ in range(depth)]
    required = get_loss(loss).output_activation
    if required is not None:
        acts[-1] = required
    return CaseSpec(
        dims=tuple(dims),
        activations=tuple(acts),
        loss=loss,
        seed=draw(st.integers(0, 2**31 - 1)),
        dtype=draw(st.sampled_from(dtype_names)),
        device=device,
        batch=draw(st.integers(1, max_batch)),
        weight_decay=draw(st.sampled_from([0.0, 0.1])) if weight_decay else 0.0,
    )


@st.composite
def cases(draw: st.DrawFn, *, away_from_kinks: bool = True, **spec_options: object) -> Case[MLP]:
    """A built Case (network, X, y) from ``specs(**spec_options)``.

    With ``away_from_kinks`` (the default) cases with a relu/leaky_relu pre-activation within
    KINK_MARGIN of 0 are rejected (``assume``), so finite differences never straddle a kink;
    about 1 draw in 20 is rejected at the default sizes."""
    spec = draw(specs(**spec_options))  # type: ignore[arg-type]
    case = spec.build()
    if away_from_kinks:
        assume(kink_distance(case) > KINK_MARGIN)
    return case


# ---- layer stacks ---------------------------------------------------------------------------
STACK_KINDS = ("linear", "activation", "layernorm", "batchnorm", "dropout", "residual", "embedding", "flatten")
"""What ``stacks`` can draw: a linear map, an activation (any of ACTIVATIONS), LayerNorm,
BatchNorm1d, Dropout, a Residual around a width-keeping stack, and an Embedding of token
indices followed (eventually) by a Flatten."""


@st.composite
def _inner(draw: st.DrawFn, width: int, activation_names: Sequence[str], kinds: Sequence[str]) -> list[Any]:
    """1-2 width-keeping layers for a Residual."""
    options: list[list[Any]] = [["linear", width]]
    if "activation" in kinds:
        options.append([draw(st.sampled_from(list(activation_names)))])
    if "layernorm" in kinds:
        options.append(["layernorm"])
    first = draw(st.sampled_from(options))
    second = draw(st.sampled_from([None, *options]))
    return [first] if second is None else [first, second]


@st.composite
def stack_specs(
    draw: st.DrawFn,
    *,
    max_depth: int = 4,
    max_width: int = 6,
    max_batch: int = 5,
    kinds: Sequence[str] = STACK_KINDS,
    include: Sequence[str] = (),
    activations: Sequence[str] = tuple(ACTIVATIONS),
    losses: Sequence[str] = tuple(LOSSES),
    dtypes: Sequence[str] = ("float64", "float32"),
    training: bool | None = None,
    device: str = "cpu",
) -> StackSpec:
    """A StackSpec: 1..max_depth layers of the given kinds (with every kind in ``include`` at
    least once), widths 1..max_width, a loss the output fits, a dtype, a mode and a seed.

    Shrinks towards fewer, narrower layers, a smaller batch, float64 and training mode."""
    kinds = check_subset(kinds, "kinds", list(STACK_KINDS))
    include = list(include)
    bad = [k for k in include if k not in kinds]
    if bad:
        raise ValueError(f"include={include!r}: {bad} are not among kinds={list(kinds)}")
    activation_names = check_subset(activations, "activations", list(ACTIVATIONS))
    loss = draw(st.sampled_from(check_subset(losses, "losses", list(LOSSES))))
    dtype = draw(st.sampled_from(check_subset(dtypes, "dtypes", ["float64", "float32", "float16", "bfloat16"])))
    mode = draw(st.booleans().map(lambda b: not b)) if training is None else training

    # a Flatten has something to flatten after an Embedding only: asking for one asks for tokens
    tokens = "embedding" in include or ("embedding" in kinds and ("flatten" in include or draw(st.booleans())))
    width = draw(st.integers(1, max_width))
    layers: list[Any] = []
    vocab = 0
    rows_of_vectors = True  # (N, d) rather than (N, T, d)
    if tokens:
        vocab, width = draw(st.integers(2, 6)), draw(st.integers(1, max_width))
        length = draw(st.integers(1, 3))
        layers.append(["embedding", width])
        rows_of_vectors = False
    else:
        length = width
    body_kinds = [k for k in kinds if k not in ("embedding", "flatten")]
    wanted = [k for k in include if k not in ("embedding", "flatten")]
    depth = max(draw(st.integers(1, max_depth)), len(wanted))
    chosen = [draw(st.sampled_from(body_kinds)) for _ in range(depth - len(wanted))]
    for kind in wanted:  # every required kind somewhere in the stack
        chosen.insert(draw(st.integers(0, len(chosen))), kind)
    for kind in chosen:
        if kind == "batchnorm" and not rows_of_vectors:
            layers.append(["flatten"])
            rows_of_vectors, width = True, width * length
        if kind == "linear":
            width = draw(st.integers(1, max_width))
            layers.append(["linear", width])
        elif kind == "activation":
            layers.append([draw(st.sampled_from(activation_names))])
        elif kind == "layernorm":
            layers.append(["layernorm", draw(st.sampled_from([{}, {"bias": False}, {"affine": False}]))])
        elif kind == "batchnorm":
            layers.append(["batchnorm", draw(st.sampled_from([{}, {"affine": False}]))])
        elif kind == "dropout":
            layers.append(["dropout", draw(st.sampled_from([0.25, 0.5]))])
        elif kind == "residual":
            layers.append(["residual", draw(_inner(width, activation_names, kinds))])
    flattened = any(layer[0] == "flatten" for layer in layers)
    if not rows_of_vectors and ("flatten" in include or draw(st.booleans())):
        layers.append(["flatten"])
        rows_of_vectors = flattened = True
    if "flatten" in include and not flattened:  # no Embedding among the kinds: flatten rows, a no-op
        layers.append(["flatten"])
    target = get_loss(loss)
    out = draw(st.integers(2 if target.targets == "classes" else 1, max(2, max_width)))
    layers.append(["linear", out])
    if target.output_activation is not None and target.output_activation != "identity":
        layers.append([target.output_activation])
    needs_two = mode and any(layer[0] == "batchnorm" for layer in layers)
    batch = draw(st.integers(2 if needs_two else 1, max(2, max_batch)))
    return StackSpec(
        input=length, layers=_frozen(layers), loss=loss, seed=draw(st.integers(0, 2**31 - 1)), vocab=vocab,
        dtype=dtype, device=device, batch=batch, training=mode,
    )  # fmt: skip


def _frozen(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value


@st.composite
def stacks(draw: st.DrawFn, *, away_from_kinks: bool = True, **spec_options: Any) -> Case[Network]:
    """A built Case (a layer stack, X, y) from ``stack_specs(**spec_options)``; cases with an
    input of a piecewise activation within KINK_MARGIN of a boundary are rejected by default."""
    case = draw(stack_specs(**spec_options)).build()
    if away_from_kinks:
        assume(kink_distance(case) > KINK_MARGIN)
    return case


# ---- torch modules: convolutions, pooling, spatial norms, softmax ------------------------------
MODULE_KINDS = ("conv", "maxpool", "avgpool", "adaptive", "batchnorm2d", "groupnorm", "softmax", "logsoftmax",
                "activation")  # fmt: skip
"""What ``module_cases`` can draw before its Flatten and Linear: Conv1d/Conv2d, MaxPool2d,
AvgPool2d, AdaptiveAvgPool2d, BatchNorm2d, GroupNorm, Softmax, LogSoftmax (over a drawn
dimension) and an activation module (ReLU, Tanh, GELU). Pooling and BatchNorm2d need images:
asking for them makes the input (N, C, H, W); otherwise it may be (N, C, L) for Conv1d."""

IMAGE_ONLY = ("maxpool", "avgpool", "adaptive", "batchnorm2d")


@dataclass
class ModuleCase:
    """A float64 torch.nn.Sequential in its mode, a point (X, y) for it and refbp's loss name.

    ``build()`` converts it (``refbp.from_torch``): the Case the harness checks; the module
    itself is the independent reference (autograd on its own parameters)."""

    module: nn.Sequential
    X: Tensor
    y: Tensor
    loss: str

    def build(self) -> Case[Network]:
        return Case(spec=self, net=from_torch(self.module, loss=self.loss), X=self.X, y=self.y)

    def describe(self) -> str:
        names = "-".join(type(m).__name__ for m in self.module)
        mode = "train" if self.module.training else "eval"
        return f"Sequential({names}) in {mode} mode, X {tuple(self.X.shape)}, loss {self.loss}"

    def __repr__(self) -> str:  # what hypothesis prints for a failing example
        return f"ModuleCase({self.describe()}: {self.module})"


def _fits(n: int, kernel: int, dilation: int, before: int, after: int) -> bool:
    return n + before + after >= dilation * (kernel - 1) + 1


@st.composite
def conv_geometries(draw: st.DrawFn, sizes: Sequence[int], *, max_kernel: int = 3) -> dict[str, Any]:
    """Keyword arguments of torch.nn.Conv1d/Conv2d (kernel_size, stride, padding, dilation)
    whose windows fit an input of spatial size ``sizes``: padding "same" (stride 1), "valid" or
    0..2 per side, stride 1..2, dilation 1..2, a kernel 1..max_kernel no larger than the
    padded input allows."""
    if not sizes or min(sizes) < 1 or max_kernel < 1:
        raise ValueError(f"sizes={list(sizes)}, max_kernel={max_kernel}: expected sizes >= 1 and max_kernel >= 1")
    padding: Any = draw(st.sampled_from(["ints", "same", "valid"]))
    stride = tuple(1 if padding == "same" else draw(st.integers(1, 2)) for _ in sizes)
    dilation = tuple(draw(st.integers(1, 2)) for _ in sizes)
    if padding == "ints":
        padding = tuple(draw(st.integers(0, 2)) for _ in sizes)
    kernel = []
    for i, n in enumerate(sizes):
        pad = 0 if padding == "valid" else (10**6 if padding == "same" else padding[i])  # "same" always fits
        largest = max(k for k in range(1, max_kernel + 1) if k == 1 or _fits(n, k, dilation[i], pad, pad))
        kernel.append(draw(st.integers(1, largest)))
    return {"kernel_size": tuple(kernel), "stride": stride, "padding": padding, "dilation": dilation}


@st.composite
def pool_geometries(
    draw: st.DrawFn, sizes: Sequence[int], *, max_kernel: int = 3, dilation: bool = True
) -> dict[str, Any]:
    """Keyword arguments of torch.nn.MaxPool2d/AvgPool2d (kernel_size, stride, padding, and
    dilation when asked) that fit an (H, W) input: padding at most half the kernel, as torch
    requires, stride 1..kernel + 1 (windows that overlap, touch or skip), dilation 2 only
    without padding (so that no window lies in the padding alone)."""
    if len(sizes) != 2 or min(sizes) < 1:
        raise ValueError(f"sizes={list(sizes)}: expected (H, W), both >= 1")
    kernel, stride, padding, dilated = [], [], [], []
    for n in sizes:
        k = draw(st.integers(1, max(1, min(max_kernel, n))))
        p = draw(st.integers(0, k // 2))
        d = draw(st.integers(1, 2)) if dilation and p == 0 and 2 * (k - 1) + 1 <= n else 1
        kernel.append(k)
        padding.append(p)
        dilated.append(d)
        stride.append(draw(st.integers(1, k + 1)))
    out = {"kernel_size": tuple(kernel), "stride": tuple(stride), "padding": tuple(padding)}
    return {**out, "dilation": tuple(dilated)} if dilation else out


@st.composite
def _spatial_module(draw: st.DrawFn, kind: str, shape: tuple[int, ...], max_channels: int, training: bool) -> nn.Module:
    """One module of ``kind`` for an input of shape (C, *spatial)."""
    C, sizes = shape[0], shape[1:]
    if kind == "conv":
        groups = draw(st.sampled_from([g for g in range(1, C + 1) if C % g == 0]))
        C_out = groups * draw(st.integers(1, max(1, max_channels // groups)))
        conv = nn.Conv1d if len(sizes) == 1 else nn.Conv2d
        return conv(C, C_out, groups=groups, bias=draw(st.booleans()), **draw(conv_geometries(sizes)))
    if kind == "maxpool":
        return nn.MaxPool2d(**draw(pool_geometries(sizes)))
    if kind == "avgpool":
        return nn.AvgPool2d(**draw(pool_geometries(sizes, dilation=False)), count_include_pad=draw(st.booleans()))
    if kind == "adaptive":
        return nn.AdaptiveAvgPool2d(tuple(draw(st.sampled_from([None, 1, 2, 3])) for _ in sizes))
    if kind == "batchnorm2d":
        return nn.BatchNorm2d(C, momentum=draw(st.sampled_from([0.1, None])), affine=draw(st.booleans()),
                              track_running_stats=draw(st.booleans()) or not training)  # fmt: skip
    if kind == "groupnorm":  # torch normalises groups of at least 2 values only
        positions = math.prod(sizes)
        group_counts = [g for g in range(1, C + 1) if C % g == 0 and (C // g) * positions > 1]
        if group_counts:
            return nn.GroupNorm(draw(st.sampled_from(group_counts)), C, affine=draw(st.booleans()))
        return nn.Tanh()
    if kind in ("softmax", "logsoftmax"):
        dim = draw(st.sampled_from([d for d in range(1, len(shape) + 1)] + [-1]))
        return nn.Softmax(dim) if kind == "softmax" else nn.LogSoftmax(dim)
    return draw(st.sampled_from([nn.ReLU(), nn.Tanh(), nn.GELU()]))


def _randomise(module: nn.Module, generator: torch.Generator) -> None:
    """Parameters and buffers from ``generator``, away from neutral values (gamma 1, beta 0,
    running statistics 0 and 1), so that no term of a backward pass hides behind them."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
                p.copy_((1.0 if name == "weight" else 0.0) + 0.3 * torch.randn(p.shape, generator=generator))
            else:
                fan_in = p[0].numel() if p.dim() > 1 else 1
                p.copy_(torch.randn(p.shape, generator=generator) / fan_in**0.5)
        if isinstance(module, nn.BatchNorm2d) and module.running_mean is not None and module.running_var is not None:
            module.running_mean.copy_(0.3 * torch.randn(module.num_features, generator=generator))
            module.running_var.copy_(0.5 + torch.rand(module.num_features, generator=generator))


@st.composite
def module_cases(
    draw: st.DrawFn,
    *,
    kinds: Sequence[str] = MODULE_KINDS,
    include: Sequence[str] = (),
    max_layers: int = 3,
    max_channels: int = 3,
    max_size: int = 6,
    max_batch: int = 3,
    losses: Sequence[str] = ("cross_entropy", "mse"),
    training: bool | None = None,
    integer_input: bool = False,
) -> ModuleCase:
    """A ModuleCase: 1..max_layers modules of ``kinds`` (every one of ``include`` at least
    once) on (N, C, H, W) images, or (N, C, L) sequences when no image-only kind is wanted,
    then Flatten and Linear to the loss's output; a mode; parameters and the point from one
    drawn seed. ``integer_input`` draws X from -2..2 so that pooling windows hold ties."""
    kinds = check_subset(kinds, "kinds", list(MODULE_KINDS))
    bad = [k for k in include if k not in kinds]
    if bad:
        raise ValueError(f"include={list(include)!r}: {bad} are not among kinds={list(kinds)}")
    if not (max_layers >= 1 and max_channels >= 1 and max_size >= 1 and max_batch >= 1):
        raise ValueError(f"max_layers={max_layers}, max_channels={max_channels}, max_size={max_size}, "
                         f"max_batch={max_batch}: all must be >= 1")  # fmt: skip
    loss = draw(st.sampled_from(check_subset(losses, "losses", ["cross_entropy", "mse", "half_sse"])))
    mode = draw(st.booleans()) if training is None else training
    depth = max(draw(st.integers(1, max_layers)), len(include))
    chosen = [draw(st.sampled_from(list(kinds))) for _ in range(depth - len(include))]
    for kind in include:
        chosen.insert(draw(st.integers(0, len(chosen))), kind)
    images = any(k in IMAGE_ONLY for k in chosen) or draw(st.booleans())
    sizes = tuple(draw(st.integers(1, max_size)) for _ in range(2 if images else 1))
    shape: tuple[int, ...] = (draw(st.integers(1, max_channels)), *sizes)
    input_shape = (draw(st.integers(1, max_batch)), *shape)  # (N, C, *sizes)
    if "batchnorm2d" in chosen and input_shape[0] < 2:  # batch statistics of one 1 x 1 image would be 0 / 0
        input_shape = (2, *shape)
    seed = draw(st.integers(0, 2**31 - 1))
    generator = torch.Generator().manual_seed(seed)
    modules: list[nn.Module] = []
    for kind in chosen:
        module = draw(_spatial_module(kind, shape, max_channels, mode)).double()
        _randomise(module, generator)
        with torch.no_grad():
            shape = tuple(module.eval()(torch.zeros(2, *shape, dtype=torch.float64)).shape[1:])
        modules.append(module)
    features = math.prod(shape)
    out = draw(st.integers(2, 3))
    head = nn.Linear(features, out).double()
    _randomise(head, generator)
    sequential = nn.Sequential(*modules, nn.Flatten(), head).train(mode)
    if integer_input:
        X = torch.randint(-2, 3, input_shape, generator=generator).double()
    else:
        X = torch.empty(input_shape, dtype=torch.float64).uniform_(-2.0, 2.0, generator=generator)
    y = get_loss(loss).sample_targets((input_shape[0], out), generator)
    return ModuleCase(sequential, X, y, loss)


# ---- recurrent modules (torch.nn.RNN, LSTM, GRU) ---------------------------------------------
RECURRENT_KINDS = ("RNN_TANH", "RNN_RELU", "LSTM", "GRU")
"""The recurrent modules ``recurrent_specs`` draws: torch.nn.RNN with tanh or relu, LSTM, GRU."""


@dataclass(frozen=True)
class RecurrentSpec:
    """A torch recurrent module and a point to run it at, all drawn from ``seed``.

    Attributes:
        kind: one of RECURRENT_KINDS.
        input_size, hidden_size, num_layers, bias, batch_first: torch's arguments.
        length: T, the sequence length.  batch: B.
        initial_state: pass a random h0 (and c0) instead of zeros.
        seed: seeds the parameters and the numbers.
    """

    kind: str
    input_size: int
    hidden_size: int
    num_layers: int
    bias: bool
    batch_first: bool
    length: int
    batch: int
    initial_state: bool
    seed: int

    def __post_init__(self) -> None:
        if self.kind not in RECURRENT_KINDS:
            raise ValueError(f"kind={self.kind!r} must be one of {list(RECURRENT_KINDS)}")

    def build(self) -> tuple[torch.nn.Module, Tensor, Tensor | None, Tensor | None]:
        """(module, x, h0, c0) in float64: x is (B, T, d_in) with batch_first, else (T, B, d_in);
        h0 and c0 (num_layers, B, H) or None (c0 for an LSTM only)."""
        generator = torch.Generator().manual_seed(self.seed)
        options: dict[str, Any] = {"num_layers": self.num_layers, "bias": self.bias, "batch_first": self.batch_first}
        if self.kind.startswith("RNN"):
            options["nonlinearity"] = self.kind.removeprefix("RNN_").lower()
        module_type = {"LSTM": torch.nn.LSTM, "GRU": torch.nn.GRU}.get(self.kind, torch.nn.RNN)
        module = module_type(self.input_size, self.hidden_size, dtype=torch.float64, **options)
        with torch.no_grad():
            for p in module.parameters():  # torch's U(-1/sqrt(H), 1/sqrt(H)), from our generator
                p.uniform_(-1.0, 1.0, generator=generator).div_(self.hidden_size**0.5)
        B, T = self.batch, self.length
        shape = (B, T, self.input_size) if self.batch_first else (T, B, self.input_size)
        x = torch.randn(shape, dtype=torch.float64, generator=generator)
        state = (self.num_layers, B, self.hidden_size)
        h0 = torch.randn(state, dtype=torch.float64, generator=generator) if self.initial_state else None
        c0 = None
        if self.initial_state and self.kind == "LSTM":
            c0 = torch.randn(state, dtype=torch.float64, generator=generator)
        return module, x, h0, c0


@st.composite
def recurrent_specs(
    draw: st.DrawFn,
    *,
    kinds: Sequence[str] = RECURRENT_KINDS,
    max_length: int = 5,
    max_layers: int = 2,
    max_size: int = 5,
    max_batch: int = 3,
) -> RecurrentSpec:
    """A RecurrentSpec: a kind, sizes 1..max_size, num_layers 1..max_layers, sequence length
    1..max_length, batch 1..max_batch, bias and batch_first either way, with or without an
    initial state, and a seed."""
    if not (max_length >= 1 and max_layers >= 1 and max_size >= 1 and max_batch >= 1):
        raise ValueError(
            f"max_length={max_length}, max_layers={max_layers}, max_size={max_size}, max_batch={max_batch}: "
            "all must be >= 1"
        )
    kind_names = check_subset(kinds, "kinds", list(RECURRENT_KINDS))
    return RecurrentSpec(
        kind=draw(st.sampled_from(kind_names)),
        input_size=draw(st.integers(1, max_size)),
        hidden_size=draw(st.integers(1, max_size)),
        num_layers=draw(st.integers(1, max_layers)),
        bias=draw(st.booleans()),
        batch_first=draw(st.booleans()),
        length=draw(st.integers(1, max_length)),
        batch=draw(st.integers(1, max_batch)),
        initial_state=draw(st.booleans()),
        seed=draw(st.integers(0, 2**31 - 1)),
    )
