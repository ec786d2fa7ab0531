"""GPTConfig: a GPT's sizes and variants (nanoGPT's and minGPT's), its state-dict names and
shapes, the refbp key of every name, and the check of a set of parameters against it.

    nanoGPT:  GPTConfig(V, T, n_layer, n_head, d, dropout=0.1)                   tied head, exact GELU
    minGPT:   GPTConfig(V, T, n_layer, n_head, d, tied=False, gelu="tanh",
                        embd_pdrop=0.1, attn_pdrop=0.1, resid_pdrop=0.1)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from ..nn.keys import Key
from ..nn.transformer import gelu_form
from ..nn.validation import FLOAT_DTYPES, check_int, describe

__all__ = ["FIRST_BLOCK", "HEAD_NAME", "IGNORE_INDEX", "GPTConfig", "check_probability", "checked_params",
           "nanogpt_names"]  # fmt: skip

IGNORE_INDEX = -1
"""A target equal to this is not counted in the mean, as nanoGPT's ``ignore_index=-1``."""

FIRST_BLOCK = 4
"""The layer number of nanoGPT's block 0: after the token embedding, the position embedding
and the embeddings' dropout."""

HEAD_NAME = "lm_head.weight"
"""The LM head's weight in nanoGPT's and minGPT's state dicts: the token embedding itself when
tied (nanoGPT), a tensor of its own when untied (minGPT)."""


def check_probability(p: object, name: str) -> float:
    """``p`` as a dropout probability in [0, 1); a ValueError naming ``name`` otherwise."""
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
        raise ValueError(f"{name}={p!r} must be a probability in [0, 1)")
    return float(p)


@dataclass(frozen=True)
class GPTConfig:
    """nanoGPT's GPTConfig, with minGPT's variants.

    Attributes:
        vocab_size: V, the number of tokens.
        block_size: the most positions a sequence may have.
        n_layer: the number of blocks.
        n_head: heads per attention layer; divides n_embd.
        n_embd: d, the width of the residual stream.
        bias: biases in every Linear and LayerNorm (nanoGPT's bias=True), or none.
        dropout: p of every dropout (nanoGPT's one rate), unless a rate of its own is given below.
        tied: the LM head is the token embedding (nanoGPT), or a (V, d) weight of its own (minGPT).
        gelu: the MLP's GELU, "exact" z Phi(z) (nanoGPT) or "tanh" (minGPT's NewGELU).
        embd_pdrop: p of the dropout after wte + wpe (None: ``dropout``).
        attn_pdrop: p of the dropout on the attention probabilities (None: ``dropout``).
        resid_pdrop: p of the dropouts after attention's and the MLP's projections (None: ``dropout``).
    """

    vocab_size: int
    block_size: int
    n_layer: int
    n_head: int
    n_embd: int
    bias: bool = True
    dropout: float = 0.0
    tied: bool = True
    gelu: str = "exact"
    embd_pdrop: float | None = None
    attn_pdrop: float | None = None
    resid_pdrop: float | None = None

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            check_int(getattr(self, name), name, minimum=1, maximum=1 << 24)
        if self.n_embd % self.n_head:
            raise ValueError(f"n_head={self.n_head} must divide n_embd={self.n_embd}")
        for name in ("bias", "tied"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name}={getattr(self, name)!r} must be True or False")
        gelu_form(self.gelu)
        check_probability(self.dropout, "dropout")
        for name in ("embd_pdrop", "attn_pdrop", "resid_pdrop"):
            if getattr(self, name) is not None:
                check_probability(getattr(self, name), name)

    @property
    def p_embd(self) -> float:
        """The embeddings' dropout rate: embd_pdrop, or dropout when it is None."""
        return float(self.dropout if self.embd_pdrop is None else self.embd_pdrop)

    @property
    def p_attn(self) -> float:
        """The attention probabilities' dropout rate: attn_pdrop, or dropout when it is None."""
        return float(self.dropout if self.attn_pdrop is None else self.attn_pdrop)

    @property
    def p_resid(self) -> float:
        """The residual branches' dropout rate: resid_pdrop, or dropout when it is None."""
        return float(self.dropout if self.resid_pdrop is None else self.resid_pdrop)

    def describe_dropout(self) -> str:
        """ ", dropout 0.1", ", dropout embd 0.1 attn 0 resid 0.2", or "" when every rate is 0."""
        rates = (self.p_embd, self.p_attn, self.p_resid)
        if not any(rates):
            return ""
        if len(set(rates)) == 1:
            return f", dropout {rates[0]:g}"
        named = zip(("embd", "attn", "resid"), rates, strict=True)
        return ", dropout " + " ".join(f"{name} {p:g}" for name, p in named)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """nanoGPT's (and minGPT's) state-dict names and shapes for this configuration, in that
        order; lm_head.weight is listed tied or not."""
        V, T, d = self.vocab_size, self.block_size, self.n_embd
        out: dict[str, tuple[int, ...]] = {"transformer.wte.weight": (V, d), "transformer.wpe.weight": (T, d)}
        for i in range(self.n_layer):
            h = f"transformer.h.{i}."
            parts = [
                ("ln_1", (d,), (d,)), ("attn.c_attn", (3 * d, d), (3 * d,)), ("attn.c_proj", (d, d), (d,)),
                ("ln_2", (d,), (d,)), ("mlp.c_fc", (4 * d, d), (4 * d,)), ("mlp.c_proj", (d, 4 * d), (d,)),
            ]  # fmt: skip
            for name, weight, bias in parts:
                out[f"{h}{name}.weight"] = weight
                if self.bias:
                    out[f"{h}{name}.bias"] = bias
        out["transformer.ln_f.weight"] = (d,)
        if self.bias:
            out["transformer.ln_f.bias"] = (d,)
        out[HEAD_NAME] = (V, d)
        return out


def nanogpt_names(n_layer: int, bias: bool, *, tied: bool = True) -> dict[str, Key]:
    """nanoGPT's parameter name -> the refbp key of the same tensor. lm_head.weight is E1 when
    tied (the token embedding itself), else the head Linear's own weight W{5 + n_layer}."""
    out = {"transformer.wte.weight": Key("E", (1,)), "transformer.wpe.weight": Key("P", (2,))}
    sub = {"ln_1": (1, "gamma", "beta"), "attn.c_attn": (2, "W_qkv", "b_qkv"), "attn.c_proj": (2, "W_o", "b_o"),
           "ln_2": (4, "gamma", "beta"), "mlp.c_fc": (5, "W", "b"), "mlp.c_proj": (7, "W", "b")}  # fmt: skip
    for i in range(n_layer):
        for name, (j, weight, b) in sub.items():
            out[f"transformer.h.{i}.{name}.weight"] = Key(weight, (FIRST_BLOCK + i, j))
            if bias:
                out[f"transformer.h.{i}.{name}.bias"] = Key(b, (FIRST_BLOCK + i, j))
    ln_f = FIRST_BLOCK + n_layer
    out["transformer.ln_f.weight"] = Key("gamma", (ln_f,))
    if bias:
        out["transformer.ln_f.bias"] = Key("beta", (ln_f,))
    out[HEAD_NAME] = Key("E", (1,)) if tied else Key("W", (ln_f + 1,))  # tied: the token embedding itself
    return out


def checked_params(config: GPTConfig, params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``params`` after checking them against ``config.shapes()``: every name there, nothing
    else, the shapes, one floating dtype and one device. lm_head.weight: required when untied;
    when tied optional, and then equal to transformer.wte.weight. Errors name the entry, what it
    has and what was expected."""
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a mapping name -> tensor, got {type(params).__name__}")
    shapes = config.shapes()
    missing = [name for name in shapes if name not in params and (name != HEAD_NAME or not config.tied)]
    extra = [name for name in params if name not in shapes]
    if missing or extra:
        raise ValueError(
            f"the parameters do not fit nanoGPT's GPT with n_layer={config.n_layer}, n_embd={config.n_embd}, "
            f"bias={config.bias}, tied={config.tied}: missing {missing}, unexpected {extra}"
        )
    reference = params["transformer.wte.weight"]
    for name, shape in shapes.items():
        if name not in params:
            continue
        t = params[name]
        if not isinstance(t, Tensor) or tuple(t.shape) != shape:
            got = describe(t) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(
                f"{name!r} has {got}; expected shape {shape} (vocab_size={config.vocab_size}, "
                f"block_size={config.block_size}, n_embd={config.n_embd})"
            )
        if t.dtype not in FLOAT_DTYPES or t.dtype != reference.dtype or t.device != reference.device:
            raise ValueError(
                f"{name!r} has {describe(t)}; expected every tensor floating, with "
                f"transformer.wte.weight's dtype {reference.dtype} and device {reference.device}"
            )
    if config.tied and HEAD_NAME in params and not torch.equal(params[HEAD_NAME], reference):
        raise ValueError(
            "lm_head.weight differs from transformer.wte.weight, but the GPT is tied (one tensor for both, "
            "nanoGPT's weight tying); for a head of its own (minGPT) use tied=False"
        )
    return dict(params)
