"""GPT: nanoGPT's model (and minGPT's variants) as a refbp Network, every gradient by hand,
nanoGPT's and minGPT's state dicts in and out.

    net = GPT.from_state_dict(model.state_dict(), n_head=4)     # a nanoGPT checkpoint
    net = GPT.from_state_dict(mingpt.state_dict(), n_head=4, gelu="tanh",
                              embd_pdrop=0.1, attn_pdrop=0.1, resid_pdrop=0.1)  # minGPT: untied head, found
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
    layer 3        Dropout            (transformer.drop: embd_pdrop)
    layers 4..     Block              gamma{l}.1, beta{l}.1 = ln_1 ; W_qkv{l}.2, b_qkv{l}.2, W_o{l}.2,
                                      b_o{l}.2 = attn.c_attn, attn.c_proj ; gamma{l}.4, beta{l}.4 = ln_2 ;
                                      W{l}.5, b{l}.5 = mlp.c_fc ; W{l}.7, b{l}.7 = mlp.c_proj
                                      dropouts: (l, 2) attention's probabilities (attn_pdrop),
                                      (l, 3) and (l, 8) the residual branches (resid_pdrop)
    layer 4 + n    LayerNorm          gamma, beta = transformer.ln_f
    layer 5 + n    Linear, no bias    lm_head.weight: the same tensor as E1 (tied), or     (B, T, V)
                                      W{5 + n} of its own (untied, minGPT)

    J = mean over the counted targets of -log softmax(logits)[target]     (F.cross_entropy, ignore_index=-1)

A tied LM head's weight *is* the token embedding (one tensor object, as nanoGPT's weight tying),
so dJ/dE is the sum of both uses: refbp's network loop adds the gradients of a parameter used
twice. An untied head (minGPT's) has its own weight and gradient, and dJ/dE is the embedding's
use only. The MLP's GELU is the exact z Phi(z) (nanoGPT) or its tanh form (minGPT's NewGELU,
``gelu="tanh"``). Intermediates of block l: a{l}.1 (ln_1), q{l}.2, k{l}.2, v{l}.2, att{l}.2
(probabilities), y{l}.2 (heads merged), a{l}.2 (attention's output), resid{l} (the residual
stream), a{l}.4 (ln_2), a{l}.5 (the MLP hidden), a{l}.6 (GELU), a{l}.7, a{l} (the block's output).

The configuration and the state-dict names live in refbp.models.gpt_config, the reading of a
state dict (which head, which biases) in refbp.models.gpt_load, the torch module in
refbp.models.gpt_torch; their names are re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..nn.attention import CausalSelfAttention
from ..nn.dropout import Dropout
from ..nn.embedding import Embedding
from ..nn.keys import Key
from ..nn.layer import Layer
from ..nn.linear import Linear
from ..nn.losses import cross_entropy
from ..nn.network import Cache, Network, NetworkGradients, resolve_device
from ..nn.position import PositionEmbedding
from ..nn.transformer import Block, RowLayerNorm
from ..nn.validation import FLOAT_DTYPES, check_seed, derived_seed, describe
from .gpt_config import FIRST_BLOCK, HEAD_NAME, IGNORE_INDEX, GPTConfig, checked_params, nanogpt_names
from .gpt_load import read_state_dict
from .gpt_memory import check_gpt_fits
from .gpt_torch import TorchGPT

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

NANOGPT_INIT_STD = 0.02
"""nanoGPT's initial weights: N(0, 0.02^2) for embeddings and linear maps (an untied head too, as
minGPT), with the residual projections (attn.c_proj, mlp.c_proj) scaled down by 1/sqrt(2 n_layer);
biases 0, LayerNorm weights 1."""


class GPTGradients(NetworkGradients):
    """A GPT's gradients: by refbp key (``grads["W_qkv4.2"]``, ``as_dict()``) and by nanoGPT's
    names (``state_dict()``)."""

    def state_dict(self) -> dict[str, Tensor]:
        """dJ/d(each parameter) under nanoGPT's state-dict names, in that order. A tied weight
        appears as transformer.wte.weight and lm_head.weight, the same tensor: the sum of both
        uses; an untied head has its own."""
        network = self._network
        assert isinstance(network, GPT)
        return {name: self[str(key)] for name, key in network.names_of().items()}


class GPT(Network):
    """nanoGPT's GPT: token and position embeddings, n_layer pre-LayerNorm blocks, a final
    LayerNorm and an LM head, tied to the token embedding (nanoGPT) or not (minGPT);
    cross-entropy over every position.

    Args:
        config: the sizes and variants (GPTConfig: tied, gelu, the dropout rates).
        params: a tensor for every name of ``config.shapes()`` (nanoGPT's names). lm_head.weight:
            when tied it may be left out, and if given must equal transformer.wte.weight; when
            untied a tensor of its own. The tensors are used as they are (``from_state_dict``
            copies them first).
        seed: seeds refbp's own dropout masks, layer by layer.
    """

    def __init__(self, config: GPTConfig, params: Mapping[str, Tensor], *, seed: int = 0) -> None:
        if not isinstance(config, GPTConfig):
            raise TypeError(f"config must be a GPTConfig, got {type(config).__name__}")
        self.config = config
        seed = check_seed(seed)
        P = checked_params(config, params)
        if not config.tied and P[HEAD_NAME] is P["transformer.wte.weight"]:
            raise ValueError(
                "params['lm_head.weight'] is params['transformer.wte.weight'] (one tensor), but config.tied is "
                "False: give the head a tensor of its own, or tie it"
            )
        n_head = config.n_head
        E = P["transformer.wte.weight"]  # (V, d): the token embedding, and the LM head when tied

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
            Dropout(config.p_embd, seed=layer_seed(0)),  # after wte + wpe: embd_pdrop
        ]
        for i in range(config.n_layer):
            h = f"transformer.h.{i}."
            attn = CausalSelfAttention(
                P[h + "attn.c_attn.weight"], P[h + "attn.c_proj.weight"], get(h + "attn.c_attn.bias"),
                get(h + "attn.c_proj.bias"), n_head=n_head, dropout=config.p_attn,  # attn_pdrop, on the probabilities
                seed=layer_seed(3 * i + 1),
            )  # fmt: skip
            block = Block(norm(h + "ln_1"), attn, norm(h + "ln_2"), linear(h + "mlp.c_fc"), linear(h + "mlp.c_proj"),
                          dropout=config.p_resid, seed=layer_seed(3 * i + 2), gelu=config.gelu)  # fmt: skip
            layers.append(block)
        layers.append(norm("transformer.ln_f"))
        # logits = x W_head^T: the LM head, tied (E itself, the same tensor object) or its own weight
        layers.append(Linear(E if config.tied else P[HEAD_NAME]))
        super().__init__(layers, cross_entropy(ignore_index=IGNORE_INDEX))

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_state_dict(
        cls,
        state_dict: Mapping[str, Tensor],
        *,
        n_head: int,
        tied: bool | None = None,
        gelu: str = "exact",
        dropout: float = 0.0,
        embd_pdrop: float | None = None,
        attn_pdrop: float | None = None,
        resid_pdrop: float | None = None,
        seed: int = 0,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
    ) -> GPT:
        """A GPT from a state dict in nanoGPT's (or minGPT's) names and layout, its sizes inferred.

        Args:
            state_dict: ``model.state_dict()`` of a nanoGPT or minGPT model (or a checkpoint's
                "model"), with or without biases; torch.compile's "_orig_mod." prefix and the
                attention's mask buffers ("attn.bias") are accepted. The tensors are copied.
            n_head: the number of heads (a state dict does not say); it must divide n_embd.
            tied: None reads it from the state dict: no lm_head.weight (nanoGPT's convention) or
                one equal to transformer.wte.weight is tied, another is an untied head (minGPT);
                True or False states it (refbp.models.gpt_load's table).
            gelu: "exact" (nanoGPT's) or "tanh" (minGPT's NewGELU): a state dict does not say.
            dropout: p of every dropout (training mode), unless embd_pdrop, attn_pdrop or
                resid_pdrop gives that one its own (minGPT's three rates); seed: seeds the masks.
            dtype, device: convert to these (default: the state dict's own).

        Raises:
            ValueError: a missing, unexpected or misshapen entry, mixed dtypes or devices, biases in
                some places only, a ``tied`` the state dict contradicts, a GELU form or rate out
                of range; a model whose copy cannot fit in memory.
            TypeError: a key that is not a str, a ``dtype`` that is not a floating torch.dtype.
        """
        if dtype is not None and dtype not in FLOAT_DTYPES:
            raise TypeError(
                f"dtype={dtype!r} ({type(dtype).__name__}) must be a floating torch.dtype such as torch.float32, "
                "or None to keep the state dict's"
            )
        config, kept = read_state_dict(
            state_dict, n_head=n_head, tied=tied, gelu=gelu, dropout=dropout, embd_pdrop=embd_pdrop,
            attn_pdrop=attn_pdrop, resid_pdrop=resid_pdrop,
        )  # fmt: skip
        copy_dtype = kept["transformer.wte.weight"].dtype if dtype is None else dtype
        check_gpt_fits(**_sizes(config), dtype=copy_dtype, what="copying the state dict's GPT")
        target = None if device is None else resolve_device(device)
        params = {name: t.detach().to(dtype=dtype, device=target, copy=True) for name, t in kept.items()}
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
        tied: bool = True,
        gelu: str = "exact",
        embd_pdrop: float | None = None,
        attn_pdrop: float | None = None,
        resid_pdrop: float | None = None,
        seed: int = 0,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device = "cpu",
    ) -> GPT:
        """A GPT initialised as nanoGPT does (NANOGPT_INIT_STD), drawn in float64 on the CPU
        from ``seed`` and then converted, so the same seed gives the same model everywhere.
        ``tied=False`` draws the head last (the other tensors are a tied GPT's of the same seed);
        ``gelu`` and the dropout rates as GPTConfig."""
        config = GPTConfig(
            vocab_size, block_size, n_layer, n_head, n_embd, bias=bias, dropout=dropout, tied=tied, gelu=gelu,
            embd_pdrop=embd_pdrop, attn_pdrop=attn_pdrop, resid_pdrop=resid_pdrop,
        )  # fmt: skip
        if dtype not in FLOAT_DTYPES:
            raise TypeError(f"dtype={dtype!r} must be a floating torch dtype")
        # drawn in float64, then converted: both copies at once unless dtype is float64 (counted at 8 bytes)
        copies = 1 if dtype == torch.float64 else 2
        check_gpt_fits(**_sizes(config), dtype=torch.float64, parameter_copies=copies, what="GPT.random")
        generator = torch.Generator().manual_seed(check_seed(seed))
        residual_std = NANOGPT_INIT_STD / math.sqrt(2 * n_layer)
        params: dict[str, Tensor] = {}
        for name, shape in config.shapes().items():
            if name == HEAD_NAME and tied:
                continue  # the token embedding itself
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
    def names_of(self) -> dict[str, Key]:
        """nanoGPT's parameter name -> refbp key, for this GPT (tied or not): nanogpt_names."""
        return nanogpt_names(self.config.n_layer, self.config.bias, tied=self.config.tied)

    def state_dict(self) -> dict[str, Tensor]:
        """The parameters under nanoGPT's names and in its order; a tied lm_head.weight is the same
        tensor as transformer.wte.weight. The tensors are the GPT's own (not copies)."""
        params = self.parameters()
        return {name: params[str(key)] for name, key in self.names_of().items()}

    def key_of(self, name: str) -> str:
        """The refbp key of a nanoGPT parameter name: "transformer.h.0.attn.c_attn.weight" -> "W_qkv4.2"."""
        names = self.names_of()
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
        variants = f"{'' if c.tied else ', untied head'}{', tanh GELU' if c.gelu == 'tanh' else ''}"
        return (
            f"GPT(vocab {c.vocab_size}, block {c.block_size}, {c.n_layer} layers, {c.n_head} heads, "
            f"n_embd {c.n_embd}{'' if c.bias else ', no bias'}{variants}{c.describe_dropout()})"
        )

    def to_torch(self) -> TorchGPT:
        """The same model as a torch module with nanoGPT's names (TorchGPT): a copy of the
        parameters, the head tied or not, the same GELU, each dropout rate in its place, the same
        train/eval mode; its dropouts draw torch's own masks."""
        module = TorchGPT(self.config, dtype=self.dtype, device=self.device)
        module.load_state_dict(self.state_dict())
        module.train(self.training)
        return module


def _sizes(config: GPTConfig) -> dict[str, Any]:
    """The sizes check_gpt_fits reads, from ``config``."""
    c = config
    return {"vocab_size": c.vocab_size, "block_size": c.block_size, "n_layer": c.n_layer, "n_head": c.n_head,
            "n_embd": c.n_embd, "bias": c.bias, "tied": c.tied}  # fmt: skip
