"""GPT: nanoGPT's model as a refbp Network, every gradient by hand, nanoGPT's state dict in and out.

    net = GPT.from_state_dict(model.state_dict(), n_head=4)     # a nanoGPT checkpoint
    net = GPT.random(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128, seed=0)
    cache = net.forward(idx)                  # idx: (B, T) int64, T <= block_size
    J = net.loss(cache, targets)              # targets: (B, T) int64, -1 = not counted
    grads = net.backward(cache, targets)
    grads.state_dict()                        # "transformer.h.0.attn.c_attn.weight" -> dJ/d(that), ...
    grads.as_dict()                           # by refbp key: parameters and every intermediate
    refbp.check(net, idx, targets)            # against autograd and finite differences

The layers, with the keys of their tensors (l = 4 + i for nanoGPT's block i):

    layer 1        Embedding          E1 = transformer.wte.weight            x = E[idx]      (B, T, d)
    layer 2        PositionEmbedding  P2 = transformer.wpe.weight            x + P[:T]
    layer 3        Dropout            (transformer.drop)
    layers 4..     Block              gamma{l}.1, beta{l}.1 = ln_1 ; W_qkv{l}.2, b_qkv{l}.2, W_o{l}.2,
                                      b_o{l}.2 = attn.c_attn, attn.c_proj ; gamma{l}.4, beta{l}.4 = ln_2 ;
                                      W{l}.5, b{l}.5 = mlp.c_fc ; W{l}.7, b{l}.7 = mlp.c_proj
    layer 4 + n    LayerNorm          gamma, beta = transformer.ln_f
    layer 5 + n    Linear, no bias    lm_head.weight: the same tensor as E1 (tied)    (B, T, V)

    J = mean over the counted targets of -log softmax(logits)[target]     (F.cross_entropy, ignore_index=-1)

The LM head's weight *is* the token embedding (one tensor object, as nanoGPT's weight tying),
so dJ/dE is the sum of both uses: refbp's network loop adds the gradients of a parameter used
twice. Intermediates of block l: a{l}.1 (ln_1), q{l}.2, k{l}.2, v{l}.2, att{l}.2 (probabilities),
y{l}.2 (heads merged), a{l}.2 (attention's output), resid{l} (the residual stream), a{l}.4
(ln_2), a{l}.5 (the MLP hidden), a{l}.6 (GELU), a{l}.7, a{l} (the block's output).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..nn.attention import CausalSelfAttention, TorchCausalSelfAttention
from ..nn.dropout import Dropout
from ..nn.embedding import Embedding
from ..nn.keys import Key
from ..nn.layer import Layer
from ..nn.linear import Linear
from ..nn.losses import cross_entropy
from ..nn.network import Cache, Network, NetworkGradients, resolve_device
from ..nn.position import PositionEmbedding
from ..nn.transformer import Block, RowLayerNorm, TorchBlock
from ..nn.validation import FLOAT_DTYPES, check_int, check_seed, derived_seed, describe
from .gpt_memory import check_gpt_fits

__all__ = [
    "FIRST_BLOCK",
    "GPT",
    "IGNORE_INDEX",
    "NANOGPT_INIT_STD",
    "GPTConfig",
    "GPTGradients",
    "TorchGPT",
    "nanogpt_names",
]

IGNORE_INDEX = -1
"""A target equal to this is not counted in the mean, as nanoGPT's ``ignore_index=-1``."""

FIRST_BLOCK = 4
"""The layer number of nanoGPT's block 0: after the token embedding, the position embedding
and the embeddings' dropout."""

NANOGPT_INIT_STD = 0.02
"""nanoGPT's initial weights: N(0, 0.02^2) for embeddings and linear maps, with the residual
projections (attn.c_proj, mlp.c_proj) scaled down by 1/sqrt(2 n_layer); biases 0, LayerNorm
weights 1."""

_COMPILED_PREFIX = "_orig_mod."
"""What torch.compile puts before every name of a compiled module's state dict (nanoGPT's
train.py strips it the same way)."""

_MASK_BUFFER = re.compile(r"transformer\.h\.\d+\.attn\.bias")
"""nanoGPT's attention keeps its causal mask as a buffer ``attn.bias`` when flash attention is
unavailable: not a parameter, and ignored on loading (as nanoGPT's own from_pretrained does)."""


@dataclass(frozen=True)
class GPTConfig:
    """nanoGPT's GPTConfig.

    Attributes:
        vocab_size: V, the number of tokens.
        block_size: the most positions a sequence may have.
        n_layer: the number of blocks.
        n_head: heads per attention layer; divides n_embd.
        n_embd: d, the width of the residual stream.
        bias: biases in every Linear and LayerNorm (nanoGPT's bias=True), or none.
        dropout: p of every dropout (embeddings, attention probabilities, residual branches).
    """

    vocab_size: int
    block_size: int
    n_layer: int
    n_head: int
    n_embd: int
    bias: bool = True
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            check_int(getattr(self, name), name, minimum=1, maximum=1 << 24)
        if self.n_embd % self.n_head:
            raise ValueError(f"n_head={self.n_head} must divide n_embd={self.n_embd}")
        if not isinstance(self.bias, bool):
            raise TypeError(f"bias={self.bias!r} must be True or False")
        p = self.dropout
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
            raise ValueError(f"dropout={p!r} must be a probability in [0, 1)")

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """nanoGPT's state-dict names and shapes for this configuration, in nanoGPT's order."""
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
        out["lm_head.weight"] = (V, d)
        return out


def nanogpt_names(n_layer: int, bias: bool) -> dict[str, Key]:
    """nanoGPT's parameter name -> the refbp key of the same tensor (lm_head.weight -> E1, tied)."""
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
    out["lm_head.weight"] = Key("E", (1,))  # tied: the token embedding itself
    return out


class GPTGradients(NetworkGradients):
    """A GPT's gradients: by refbp key (``grads["W_qkv4.2"]``, ``as_dict()``) and by nanoGPT's
    names (``state_dict()``)."""

    def state_dict(self) -> dict[str, Tensor]:
        """dJ/d(each parameter) under nanoGPT's state-dict names, in that order. The tied weight
        appears as transformer.wte.weight and lm_head.weight, the same tensor: the sum of both uses."""
        network = self._network
        assert isinstance(network, GPT)
        names = nanogpt_names(network.config.n_layer, network.config.bias)
        return {name: self[str(key)] for name, key in names.items()}


class GPT(Network):
    """nanoGPT's GPT: token and position embeddings, n_layer pre-LayerNorm blocks, a final
    LayerNorm and an LM head tied to the token embedding; cross-entropy over every position.

    Args:
        config: the sizes (GPTConfig).
        params: a tensor for every name of ``config.shapes()`` (nanoGPT's names); lm_head.weight
            may be left out, and if given must equal transformer.wte.weight (tied). The tensors
            are used as they are (``from_state_dict`` copies them first).
        seed: seeds refbp's own dropout masks, layer by layer.
    """

    def __init__(self, config: GPTConfig, params: Mapping[str, Tensor], *, seed: int = 0) -> None:
        if not isinstance(config, GPTConfig):
            raise TypeError(f"config must be a GPTConfig, got {type(config).__name__}")
        self.config = config
        seed = check_seed(seed)
        P = _checked(config, params)
        n_head, p = config.n_head, config.dropout
        E = P["transformer.wte.weight"]  # (V, d), used twice: the token embedding and the LM head

        def get(name: str) -> Tensor | None:
            return P.get(name) if config.bias else None

        def norm(prefix: str) -> RowLayerNorm:
            return RowLayerNorm(P[prefix + ".weight"], get(prefix + ".bias"))

        def linear(prefix: str) -> Linear:
            return Linear(P[prefix + ".weight"], get(prefix + ".bias"))

        def layer_seed(k: int) -> int:
            return derived_seed(seed, 7919 * k, "the GPT's dropouts")  # a stream of masks for every dropout

        layers: list[Layer] = [
            Embedding(E),
            PositionEmbedding(P["transformer.wpe.weight"]),
            Dropout(p, seed=layer_seed(0)),
        ]
        for i in range(config.n_layer):
            h = f"transformer.h.{i}."
            attn = CausalSelfAttention(
                P[h + "attn.c_attn.weight"], P[h + "attn.c_proj.weight"], get(h + "attn.c_attn.bias"),
                get(h + "attn.c_proj.bias"), n_head=n_head, dropout=p, seed=layer_seed(3 * i + 1),
            )  # fmt: skip
            block = Block(norm(h + "ln_1"), attn, norm(h + "ln_2"), linear(h + "mlp.c_fc"), linear(h + "mlp.c_proj"),
                          dropout=p, seed=layer_seed(3 * i + 2))  # fmt: skip
            layers.append(block)
        layers.append(norm("transformer.ln_f"))
        layers.append(Linear(E))  # logits = x E^T: the LM head, tied (the same tensor object)
        super().__init__(layers, cross_entropy(ignore_index=IGNORE_INDEX))

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_state_dict(
        cls,
        state_dict: Mapping[str, Tensor],
        *,
        n_head: int,
        dropout: float = 0.0,
        seed: int = 0,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
    ) -> GPT:
        """A GPT from a state dict in nanoGPT's names and layout, its sizes inferred.

        Args:
            state_dict: ``model.state_dict()`` of a nanoGPT model (or a checkpoint's "model"),
                with or without biases; torch.compile's "_orig_mod." prefix and the attention's
                mask buffers ("attn.bias") are accepted. The tensors are copied.
            n_head: the number of heads (a state dict does not say); it must divide n_embd.
            dropout: p of every dropout (training mode); seed: seeds their masks.
            dtype, device: convert to these (default: the state dict's own).

        Raises:
            ValueError: a missing, unexpected or misshapen entry, mixed dtypes or devices, biases in
                some places only, or an lm_head.weight that is not transformer.wte.weight (untied);
                a model whose copy cannot fit in memory.
            TypeError: a key that is not a str, a ``dtype`` that is not a floating torch.dtype.
        """
        if dtype is not None and dtype not in FLOAT_DTYPES:
            raise TypeError(
                f"dtype={dtype!r} ({type(dtype).__name__}) must be a floating torch.dtype such as torch.float32, "
                "or None to keep the state dict's"
            )
        sd = _strip_prefix(state_dict)
        for name in ("transformer.wte.weight", "transformer.wpe.weight"):
            if name not in sd:
                raise ValueError(f"state_dict has no {name!r}; expected nanoGPT's names (transformer.wte.weight, ...)")
            if not isinstance(sd[name], Tensor) or sd[name].dim() != 2:
                got = describe(sd[name]) if isinstance(sd[name], Tensor) else type(sd[name]).__name__
                raise ValueError(f"state_dict[{name!r}] must be a 2-d tensor, got {got}")
        (V, d), block_size = sd["transformer.wte.weight"].shape, sd["transformer.wpe.weight"].shape[0]
        blocks = {int(m.group(1)) for name in sd if (m := re.match(r"transformer\.h\.(\d+)\.", name))}
        n_layer = max(blocks) + 1 if blocks else 0
        if n_layer == 0:
            raise ValueError("state_dict has no block (transformer.h.0.*): a GPT needs n_layer >= 1")
        every = GPTConfig(V, block_size, n_layer, 1, d, bias=True).shapes()
        bias_names = [name for name in every if name.endswith(".bias")]
        present = [name for name in bias_names if name in sd]
        if present and len(present) != len(bias_names):
            absent = [name for name in bias_names if name not in sd]
            raise ValueError(
                f"state_dict has {len(present)} of the {len(bias_names)} biases (missing: {absent[:4]}"
                f"{' ...' if len(absent) > 4 else ''}); nanoGPT has all of them (bias=True) or none (bias=False)"
            )
        if isinstance(n_head, bool) or not isinstance(n_head, int) or n_head < 1 or d % n_head:
            raise ValueError(f"n_head={n_head!r} must be an int >= 1 dividing n_embd = {d} (transformer.wte.weight's)")
        config = GPTConfig(V, block_size, n_layer, n_head, d, bias=bool(present), dropout=dropout)
        kept = {name: t for name, t in sd.items() if not _MASK_BUFFER.fullmatch(name)}
        _checked(config, kept)  # names, shapes, dtypes and the tie, before anything is copied
        copy_dtype = sd["transformer.wte.weight"].dtype if dtype is None else dtype
        check_gpt_fits(**_sizes(config), dtype=copy_dtype, what="copying the state dict's GPT")
        target = None if device is None else resolve_device(device)
        params = {
            name: t.detach().to(dtype=dtype, device=target, copy=True)
            for name, t in kept.items()
            if name != "lm_head.weight"
        }
        return cls(config, params, seed=seed)

    @classmethod
    def random(
        cls,
        *,
        vocab_size: int,
        block_size: int,
        n_layer: int,
        n_head: int,
        n_embd: int,
        bias: bool = True,
        dropout: float = 0.0,
        seed: int = 0,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device = "cpu",
    ) -> GPT:
        """A GPT initialised as nanoGPT does (NANOGPT_INIT_STD), drawn in float64 on the CPU
        from ``seed`` and then converted, so the same seed gives the same model everywhere."""
        config = GPTConfig(vocab_size, block_size, n_layer, n_head, n_embd, bias=bias, dropout=dropout)
        if dtype not in FLOAT_DTYPES:
            raise TypeError(f"dtype={dtype!r} must be a floating torch dtype")
        # drawn in float64, then converted: both copies at once unless dtype is float64 (counted at 8 bytes)
        copies = 1 if dtype == torch.float64 else 2
        check_gpt_fits(**_sizes(config), dtype=torch.float64, parameter_copies=copies, what="GPT.random")
        generator = torch.Generator().manual_seed(check_seed(seed))
        residual_std = NANOGPT_INIT_STD / math.sqrt(2 * n_layer)
        params: dict[str, Tensor] = {}
        for name, shape in config.shapes().items():
            if name == "lm_head.weight":
                continue
            if name.endswith(".bias"):
                value = torch.zeros(shape, dtype=torch.float64)
            elif ".ln_" in name:
                value = torch.ones(shape, dtype=torch.float64)  # LayerNorm weights
            else:
                std = residual_std if name.endswith("c_proj.weight") else NANOGPT_INIT_STD
                value = torch.randn(shape, dtype=torch.float64, generator=generator).mul_(std)
            params[name] = value.to(dtype=dtype, device=resolve_device(device))
        return cls(config, params, seed=seed)

    # ---- nanoGPT's names ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Tensor]:
        """The parameters under nanoGPT's names and in its order; lm_head.weight is the same
        tensor as transformer.wte.weight. The tensors are the GPT's own (not copies)."""
        params = self.parameters()
        return {name: params[str(key)] for name, key in nanogpt_names(self.config.n_layer, self.config.bias).items()}

    def key_of(self, name: str) -> str:
        """The refbp key of a nanoGPT parameter name: "transformer.h.0.attn.c_attn.weight" -> "W_qkv4.2"."""
        names = nanogpt_names(self.config.n_layer, self.config.bias)
        if name not in names:
            raise KeyError(f"{name!r} is not a parameter of this GPT; expected one of {list(names)}")
        return str(names[name])

    # ---- checks with a GPT's words ---------------------------------------------------------------
    def check_input(self, X: object) -> Tensor:
        """idx must be an int64 (B, T) tensor of token indices, 1 <= T <= block_size."""
        if not isinstance(X, Tensor):
            raise TypeError(f"idx must be a torch.Tensor of int64 token indices (B, T), got {type(X).__name__}")
        if X.dtype != torch.int64 or X.dim() != 2 or X.shape[0] == 0 or X.shape[1] == 0:
            raise ValueError(f"idx must be an int64 (B, T) tensor with B, T >= 1, got {describe(X)}")
        if X.shape[1] > self.config.block_size:
            raise ValueError(
                f"idx has T = {X.shape[1]} positions; this GPT's block_size is {self.config.block_size}: expected "
                f"T <= {self.config.block_size}"
            )
        B, T = X.shape
        check_gpt_fits(**_sizes(self.config), dtype=self.dtype, parameter_copies=0, batch=B, length=T,
                       what="the GPT's forward and backward pass")  # fmt: skip
        return super().check_input(X)

    def check_targets(self, y: object, cache: Cache) -> Tensor:
        return self.loss_fn.check_targets(y, cache.y_hat, argument="targets")

    def backward(
        self,
        cache: Cache,
        y: object,
        *,
        keep_intermediates: bool | None = None,
        release_cache: bool = False,
        intermediates: bool | None = None,
    ) -> GPTGradients:
        """Every gradient of J, by hand, from the cache: Network.backward, whose result also
        speaks nanoGPT's names (``state_dict()``). ``y``: the targets, (B, T) int64, -1 ignored."""
        grads = super().backward(
            cache, y, keep_intermediates=keep_intermediates, release_cache=release_cache, intermediates=intermediates
        )
        assert isinstance(grads, GPTGradients)
        return grads

    def _gradients(self, values: dict[str, Tensor]) -> GPTGradients:
        return GPTGradients(values, self)

    def describe(self) -> str:
        c = self.config
        return (
            f"GPT(vocab {c.vocab_size}, block {c.block_size}, {c.n_layer} layers, {c.n_head} heads, "
            f"n_embd {c.n_embd}{'' if c.bias else ', no bias'}{f', dropout {c.dropout:g}' if c.dropout else ''})"
        )

    def to_torch(self) -> TorchGPT:
        """The same model as a torch module with nanoGPT's names (TorchGPT), a copy of the
        parameters, the same train/eval mode; its dropouts draw torch's own masks."""
        module = TorchGPT(self.config, dtype=self.dtype, device=self.device)
        module.load_state_dict(self.state_dict())
        module.train(self.training)
        return module


class TorchGPT(torch.nn.Module):
    """nanoGPT's module layout (transformer.wte, .wpe, .drop, .h, .ln_f, lm_head tied to wte)
    built from refbp's torch modules: ``GPT.to_torch()``; ``forward(idx, targets)`` returns
    (logits, loss) as nanoGPT's."""

    def __init__(self, config: GPTConfig, *, dtype: torch.dtype | None = None, device: Any = None) -> None:
        super().__init__()
        c = config
        d = c.n_embd
        attention = [TorchCausalSelfAttention(d, c.n_head, bias=c.bias, dropout=c.dropout) for _ in range(c.n_layer)]
        blocks = [
            TorchBlock(
                torch.nn.LayerNorm(d, bias=c.bias), attn, torch.nn.LayerNorm(d, bias=c.bias),
                torch.nn.Linear(d, 4 * d, bias=c.bias), torch.nn.Linear(4 * d, d, bias=c.bias), dropout=c.dropout,
            )
            for attn in attention
        ]  # fmt: skip
        wte = torch.nn.Embedding(c.vocab_size, d)
        self.transformer = torch.nn.ModuleDict({
            "wte": wte, "wpe": torch.nn.Embedding(c.block_size, d), "drop": torch.nn.Dropout(c.dropout),
            "h": torch.nn.ModuleList(blocks), "ln_f": torch.nn.LayerNorm(d, bias=c.bias),
        })  # fmt: skip
        self.lm_head = torch.nn.Linear(d, c.vocab_size, bias=False)
        self.lm_head.weight = wte.weight  # weight tying, as nanoGPT
        if dtype is not None or device is not None:
            self.to(dtype=dtype, device=device)

    def forward(self, idx: Tensor, targets: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        T = idx.shape[1]
        positions = torch.arange(T, device=idx.device)
        t = self.transformer
        x = t["drop"](t["wte"](idx) + t["wpe"](positions))  # (B, T, d)
        blocks = t["h"]
        assert isinstance(blocks, torch.nn.ModuleList)
        for block in blocks:
            x = block(x)
        logits = self.lm_head(t["ln_f"](x))  # (B, T, V)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX)
        return logits, loss


def _sizes(config: GPTConfig) -> dict[str, Any]:
    """The sizes check_gpt_fits reads, from ``config``."""
    c = config
    return {"vocab_size": c.vocab_size, "block_size": c.block_size, "n_layer": c.n_layer, "n_head": c.n_head,
            "n_embd": c.n_embd, "bias": c.bias}  # fmt: skip


def _strip_prefix(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The state dict with torch.compile's "_orig_mod." prefix taken off every name."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping name -> tensor, got {type(state_dict).__name__}")
    for name in state_dict:
        if not isinstance(name, str):
            raise TypeError(
                f"state_dict has the key {name!r} ({type(name).__name__}); expected str keys, nanoGPT's "
                "parameter names such as 'transformer.wte.weight'"
            )
    return {
        (name[len(_COMPILED_PREFIX) :] if isinstance(name, str) and name.startswith(_COMPILED_PREFIX) else name): t
        for name, t in state_dict.items()
    }


def _checked(config: GPTConfig, params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``params`` after checking them against ``config.shapes()``: every name there (lm_head.weight
    optional, and then equal to transformer.wte.weight), nothing else, the shapes, one floating
    dtype and one device. Errors name the entry, what it has and what was expected."""
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a mapping name -> tensor, got {type(params).__name__}")
    shapes = config.shapes()
    missing = [name for name in shapes if name not in params and name != "lm_head.weight"]
    extra = [name for name in params if name not in shapes]
    if missing or extra:
        raise ValueError(
            f"the parameters do not fit nanoGPT's GPT with n_layer={config.n_layer}, n_embd={config.n_embd}, "
            f"bias={config.bias}: missing {missing}, unexpected {extra}"
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
    if "lm_head.weight" in params and not torch.equal(params["lm_head.weight"], reference):
        raise ValueError(
            "lm_head.weight differs from transformer.wte.weight: refbp's GPT ties them (nanoGPT's weight "
            "tying, one tensor for both); an untied model is not supported"
        )
    return dict(params)
