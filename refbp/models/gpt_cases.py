"""GPTSpec: a tiny GPT and a point to check it at, in JSON, built from one seed; and the
hypothesis strategies that draw them and shrink a failure to the smallest GPT that shows it.

    {"model": "gpt", "vocab_size": 5, "block_size": 4, "n_layer": 1, "n_head": 2, "n_embd": 4,
     "bias": true, "dropout": 0.25, "training": true, "batch": 2, "length": 3, "ignored": 1,
     "seed": 0, "dtype": "float64", "device": "cpu"}

and minGPT's variants, written only when they differ from nanoGPT's (so a nanoGPT spec's JSON
stays as it was): "tied": false (an LM head of its own), "gelu": "tanh", and the dropout rates
"embd_pdrop", "attn_pdrop", "resid_pdrop" (each defaults to "dropout").

    from hypothesis import given
    from refbp.models.gpt_cases import gpts

    @given(gpts())
    def test_gpt_backprop(case):
        refbp.check(case.net, case.X, case.y).raise_if_failed()

The parameters are drawn in float64 on the CPU from ``seed`` and loaded through
``GPT.from_state_dict`` (so every case also runs the loader): linear maps as torch.nn.Linear
initialises them, embeddings (and an untied head, drawn last) N(0, 1), LayerNorm weights in
[0.5, 1.5] and biases in [-0.5, 0.5].
Not nanoGPT's initialisation: its LayerNorm weights 1, biases 0 and weights of 0.02 would hide
terms of the backward pass behind neutral values (a gamma of 1, near-uniform attention).
The point: idx (batch, length) tokens, targets (batch, length) tokens of which ``ignored``
positions are -1 (not counted).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from hypothesis import strategies as st

from ..nn.network import resolve_device
from ..nn.transformer import gelu_form
from ..nn.validation import check_int, check_seed, check_subset, derived_seed
from ..verify.cases import Case
from ..verify.specs import register_spec_kind
from .gpt import GPT, IGNORE_INDEX, GPTConfig
from .gpt_config import HEAD_NAME
from .gpt_memory import check_gpt_fits

__all__ = ["GPT_COMPONENTS", "VARIANT_SHARE", "GPTSpec", "gpt_specs", "gpts"]

DTYPES = ("float64", "float32", "float16", "bfloat16")
"""The dtypes a GPTSpec may ask for (float16 and bfloat16 are for CUDA)."""


GPT_COMPONENTS = ("embedding", "position embedding", "attention", "transformer block", "layernorm", "gelu")
"""What every GPT exercises, for the coverage table (dropout, by mode, when it has some; a tanh
GELU as "gelu_tanh", the activation's name; an untied head as "untied head")."""

VARIANT_SHARE = 4
"""gpt_specs, told to draw minGPT's variants (an untied head, the tanh GELU, three dropout rates
of their own: ``tied=None`` ...), draws each in one case of VARIANT_SHARE: a small share, so
that most drawn cases stay nanoGPT's."""

_VARIANTS: dict[str, Any] = {"tied": True, "gelu": "exact", "embd_pdrop": None, "attn_pdrop": None,
                             "resid_pdrop": None}  # fmt: skip
"""minGPT's variants with their nanoGPT values: left out of a spec's JSON when they have these."""


@dataclass(frozen=True)
class GPTSpec:
    """A GPT (GPTConfig's fields), its mode, and the point (batch, length, ignored targets).

    Attributes:
        vocab_size, block_size, n_layer, n_head, n_embd, bias, dropout: as GPTConfig.
        tied, gelu, embd_pdrop, attn_pdrop, resid_pdrop: minGPT's variants, as GPTConfig.
        training: training mode (dropout masks) or eval mode.
        batch: B, the number of sequences.  length: T <= block_size, positions per sequence.
        ignored: how many targets are -1 (not counted); fewer than batch * length.
        seed: draws the parameters, the dropout masks and the point.
        dtype, device: of the model and the point.

    The kind "gpt" of refbp.verify.specs, told apart by "model" (registered on import).
    """

    kind: ClassVar[str] = "gpt"
    vocab_size: int
    block_size: int
    n_layer: int
    n_head: int
    n_embd: int
    bias: bool = True
    dropout: float = 0.0
    training: bool = True
    batch: int = 2
    length: int = 2
    ignored: int = 0
    seed: int = 0
    dtype: str = "float64"
    device: str = "cpu"
    tied: bool = True
    gelu: str = "exact"
    embd_pdrop: float | None = None
    attn_pdrop: float | None = None
    resid_pdrop: float | None = None

    def __post_init__(self) -> None:
        _ = self.config  # building the GPTConfig checks the sizes, the variants and the rates
        check_int(self.batch, "batch", minimum=1, maximum=1 << 16)
        check_int(self.length, "length", minimum=1, maximum=self.block_size)
        check_int(self.ignored, "ignored", minimum=0, maximum=self.batch * self.length - 1)
        check_seed(self.seed)
        if not isinstance(self.training, bool):
            raise TypeError(f"training={self.training!r} must be true or false")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r}; expected one of {list(DTYPES)}")
        check_gpt_fits(
            vocab_size=self.vocab_size,
            block_size=self.block_size,
            n_layer=self.n_layer,
            n_head=self.n_head,
            n_embd=self.n_embd,
            bias=self.bias,
            tied=self.tied,
            dtype=torch.float64,
            parameter_copies=2,
            batch=self.batch,
            length=self.length,
            what="the GPT spec's model and its pass",
        )  # fmt: skip  (drawn in float64, then loaded as a copy: two copies of the parameters)

    @property
    def loss(self) -> str:
        """The loss, as the other specs name theirs: cross-entropy over the counted positions."""
        return "cross_entropy"

    @property
    def config(self) -> GPTConfig:
        return GPTConfig(
            self.vocab_size, self.block_size, self.n_layer, self.n_head, self.n_embd, self.bias, self.dropout,
            tied=self.tied, gelu=self.gelu, embd_pdrop=self.embd_pdrop, attn_pdrop=self.attn_pdrop,
            resid_pdrop=self.resid_pdrop,
        )  # fmt: skip

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The parameters, in nanoGPT's names, float64 on the CPU, drawn from ``seed``."""
        generator = torch.Generator().manual_seed(self.seed)

        def uniform(shape: tuple[int, ...], low: float, high: float) -> torch.Tensor:
            return torch.empty(shape, dtype=torch.float64).uniform_(low, high, generator=generator)

        shapes = self.config.shapes()
        out: dict[str, torch.Tensor] = {}
        for name, shape in shapes.items():
            if name == HEAD_NAME and self.tied:
                continue  # tied: the token embedding
            if name in ("transformer.wte.weight", "transformer.wpe.weight", HEAD_NAME):
                out[name] = torch.randn(shape, dtype=torch.float64, generator=generator)
            elif ".ln_" in name:
                out[name] = uniform(shape, 0.5, 1.5) if name.endswith("weight") else uniform(shape, -0.5, 0.5)
            else:  # a linear map: torch.nn.Linear's U(-1/sqrt(d_in), 1/sqrt(d_in)), its bias too
                d_in = shapes[name.rsplit(".", 1)[0] + ".weight"][1]
                bound = 1.0 / math.sqrt(d_in)
                out[name] = uniform(shape, -bound, bound)
        return out

    def build(self) -> Case:
        """The GPT and (idx, targets), drawn from ``seed``."""
        dtype, device = getattr(torch, self.dtype), resolve_device(self.device)
        c = self.config
        net = GPT.from_state_dict(
            self.state_dict(), n_head=self.n_head, tied=c.tied, gelu=c.gelu, dropout=c.dropout,
            embd_pdrop=c.embd_pdrop, attn_pdrop=c.attn_pdrop, resid_pdrop=c.resid_pdrop, seed=self.seed,
            dtype=dtype, device=device,
        )  # fmt: skip
        net.train(self.training)
        generator = torch.Generator().manual_seed(derived_seed(self.seed, 1, "the point (idx, targets)"))
        shape = (self.batch, self.length)
        idx = torch.randint(0, self.vocab_size, shape, generator=generator)  # (B, T) tokens
        targets = torch.randint(0, self.vocab_size, shape, generator=generator)  # (B, T) next tokens
        ignored = torch.randperm(self.batch * self.length, generator=generator)[: self.ignored]
        targets.view(-1)[ignored] = IGNORE_INDEX  # these positions are not counted
        assert isinstance(net, GPT)
        return Case(spec=self, net=net, X=idx.to(device), y=targets.to(device))

    def to_dict(self) -> dict[str, Any]:
        """The JSON object ``from_dict`` reads back; minGPT's variants only where they differ
        from nanoGPT's."""
        fields = {
            name: value for name, value in asdict(self).items() if name not in _VARIANTS or value != _VARIANTS[name]
        }
        return {"model": "gpt", **fields}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GPTSpec:
        """Build from a dict such as ``to_json`` writes; unknown keys are refused."""
        if not isinstance(data, dict):
            raise TypeError(f"a GPT spec must be a JSON object, got {type(data).__name__}")
        fields = dict(data)
        model = fields.pop("model", "gpt")
        if model != "gpt":
            raise ValueError(f"model={model!r}; a GPT spec has model 'gpt'")
        allowed = set(cls.__dataclass_fields__)
        unknown = sorted(set(fields) - allowed)
        if unknown:
            raise ValueError(f"unknown keys {unknown} in the GPT spec; expected some of {sorted(allowed)}")
        required = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")
        absent = [key for key in required if key not in fields]
        if absent:
            raise ValueError(f"the GPT spec needs {absent}; it has {sorted(fields)}")
        return cls(**fields)

    def components(self) -> list[str]:
        """What every GPT exercises, and dropout by mode when it has some, the tanh GELU, an untied head."""
        c, mode = self.config, "train" if self.training else "eval"
        found = {*GPT_COMPONENTS, *([f"dropout ({mode})"] if c.p_embd or c.p_attn or c.p_resid else [])}
        if c.gelu == "tanh":
            found = (found - {"gelu"}) | {"gelu_tanh"}
        return sorted(found | ({"untied head"} if not c.tied else set()))

    def describe(self) -> str:
        """The GPT and the point in one short line."""
        parts = [
            f"GPT V={self.vocab_size} block={self.block_size} L={self.n_layer} heads={self.n_head} d={self.n_embd}",
            "bias" if self.bias else "no bias",
        ]
        c = self.config
        parts += [*(["untied head"] if not c.tied else []), *(["tanh GELU"] if c.gelu == "tanh" else [])]
        if c.describe_dropout():
            parts.append(c.describe_dropout().removeprefix(", ") + ("" if self.training else " (eval)"))
        parts.append(f"B={self.batch} T={self.length}" + (f", {self.ignored} ignored" if self.ignored else ""))
        return ", ".join(parts) + ("" if self.dtype == "float64" else f", {self.dtype}")

    def command(self) -> str:
        """The shell command that checks exactly this case."""
        return f"refbp check --case '{self.to_json()}'"


register_spec_kind(GPTSpec, marker="model")


@st.composite
def gpt_specs(
    draw: st.DrawFn,
    *,
    max_layers: int = 2,
    max_heads: int = 2,
    max_head_size: int = 3,
    max_vocab: int = 6,
    max_block_size: int = 4,
    max_batch: int = 3,
    dtypes: Sequence[str] = ("float64", "float32"),
    bias: bool | None = None,
    dropout: Sequence[float] = (0.0, 0.25),
    training: bool | None = None,
    ignored: bool | None = None,
    device: str = "cpu",
    tied: bool | None = True,
    gelu: str | None = "exact",
    separate_dropouts: bool | None = False,
) -> GPTSpec:
    """A tiny GPTSpec: 1..max_layers blocks, 1..max_heads heads of 1..max_head_size (n_embd =
    heads x head size), a vocabulary of 2..max_vocab, T <= block_size <= max_block_size, a batch
    of 1..max_batch, biases or none, a dropout, a mode, ignored targets (with ``ignored`` None
    any number, True at least one, False none), a dtype and a seed; and minGPT's variants: an
    untied head (``tied=False``), the tanh GELU (``gelu="tanh"``), embd/attn/resid dropout
    rates of their own, each drawn from ``dropout`` (``separate_dropouts=True``); each of them
    None draws that variant in one case of VARIANT_SHARE. The defaults are nanoGPT's GPT and
    draw nothing, so that what the catalogue and the older tests draw stays as it was.

    Shrinks towards one layer, one head, the smallest sizes, biases, no dropout, training mode,
    no ignored target, float64 and nanoGPT's GPT (tied, exact GELU, one dropout rate)."""
    for name, value in (("max_layers", max_layers), ("max_heads", max_heads), ("max_head_size", max_head_size),
                        ("max_block_size", max_block_size), ("max_batch", max_batch)):  # fmt: skip
        check_int(value, name, minimum=1, maximum=64)
    check_int(max_vocab, "max_vocab", minimum=2, maximum=1 << 16)
    dtype_names = check_subset(dtypes, "dtypes", DTYPES)
    for name, flag in (("tied", tied), ("separate_dropouts", separate_dropouts)):
        if flag is not None and not isinstance(flag, bool):
            raise TypeError(f"{name}={flag!r} must be True, False or None (None: drawn)")
    if gelu is not None:
        gelu_form(gelu)
    ps = list(dropout)
    if not ps or any(not 0.0 <= p < 1.0 for p in ps):
        raise ValueError(f"dropout={ps!r}: expected a non-empty list of probabilities in [0, 1)")

    n_layer = draw(st.integers(1, max_layers))
    n_head = draw(st.integers(1, max_heads))
    head_size = draw(st.integers(1, max_head_size))
    vocab = draw(st.integers(2, max_vocab))
    block_size = draw(st.integers(1, max_block_size))
    length = draw(st.integers(1, block_size))
    batch = draw(st.integers(1, max_batch))
    if ignored and batch * length < 2:  # one target at least must be counted
        batch = 2
    has_bias = draw(st.booleans().map(lambda b: not b)) if bias is None else bias
    p = draw(st.sampled_from(ps))
    mode = draw(st.booleans().map(lambda b: not b)) if training is None else training
    positions = batch * length
    if ignored is None:
        n_ignored = draw(st.integers(0, positions - 1))
    elif ignored:
        n_ignored = draw(st.integers(1, positions - 1))
    else:
        n_ignored = 0
    seed, dtype = draw(st.integers(0, 2**31 - 1)), draw(st.sampled_from(dtype_names))

    def rarely() -> bool:  # True in one case of VARIANT_SHARE; shrinks to False
        return draw(st.integers(0, VARIANT_SHARE - 1)) == VARIANT_SHARE - 1

    # minGPT's variants, drawn after everything else: the draws above are as they were without them
    has_tie = not rarely() if tied is None else tied
    form = ("tanh" if rarely() else "exact") if gelu is None else gelu
    rates: dict[str, float] = {}
    if rarely() if separate_dropouts is None else separate_dropouts:
        rates = {name: draw(st.sampled_from(ps)) for name in ("embd_pdrop", "attn_pdrop", "resid_pdrop")}
    return GPTSpec(
        vocab_size=vocab, block_size=block_size, n_layer=n_layer, n_head=n_head, n_embd=n_head * head_size,
        bias=has_bias, dropout=p, training=mode, batch=batch, length=length, ignored=n_ignored, seed=seed,
        dtype=dtype, device=device, tied=has_tie, gelu=form, **rates,
    )  # fmt: skip


@st.composite
def gpts(draw: st.DrawFn, **spec_options: Any) -> Case:
    """A built Case (a GPT, idx, targets) from ``gpt_specs(**spec_options)``."""
    return draw(gpt_specs(**spec_options)).build()
