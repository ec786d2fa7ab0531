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
    recurrent_specs           torch.nn.RNN/LSTM/GRU modules and a sequence to run them on
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from hypothesis import assume
from hypothesis import strategies as st
from torch import Tensor

from .models.gpt_cases import gpt_specs, gpts
from .nn.activations import ACTIVATIONS
from .nn.losses import LOSSES, get_loss
from .nn.mlp import MLP
from .nn.network import Network
from .nn.validation import check_subset
from .verify.cases import KINK_MARGIN, Case, CaseSpec, kink_distance
from .verify.stacks import StackSpec

__all__ = [
    "RECURRENT_KINDS",
    "STACK_KINDS",
    "RecurrentSpec",
    "cases",
    "gpt_specs",
    "gpts",
    "recurrent_specs",
    "specs",
    "stack_specs",
    "stacks",
]


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
