"""An independent GPT in plain torch.nn with nanoGPT's names and layout, for the tests.

Written from the model's description (token + position embeddings, pre-LayerNorm blocks with
causal self-attention and a GELU MLP, a final LayerNorm, an LM head tied to the token embedding,
cross-entropy with ignore_index=-1), not from refbp's code: refbp.models.GPT loads its state
dict and must reproduce its loss and every gradient autograd computes on it.

Attention runs torch's fused F.scaled_dot_product_attention when no dropout is active, and the
explicit masked softmax otherwise (where a dropout module can act on the probabilities), as
nanoGPT's two paths do. ``use_masks`` makes every dropout module apply refbp's masks instead of
torch's, so that both compute the same function in training mode.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class Config:
    vocab_size: int
    block_size: int
    n_layer: int
    n_head: int
    n_embd: int
    bias: bool = True
    dropout: float = 0.0


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (torch.nn.LayerNorm had none before 2.1)."""

    def __init__(self, ndim: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: Config) -> None:
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        hs = C // self.n_head
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)
        if self.training and self.dropout > 0:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))
            causal = torch.tril(torch.ones(T, T, dtype=torch.bool, device=x.device))
            att = F.softmax(att.masked_fill(~causal, float("-inf")), dim=-1)
            y = self.attn_dropout(att) @ v  # (B, nh, T, hs)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: Config) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: Config) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """nanoGPT's ``transformer`` ModuleDict as a module with typed attributes: the same names
    (``transformer.wte.weight``, ``transformer.h.0.ln_1.weight``, ...) in the state dict."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = LayerNorm(config.n_embd, bias=config.bias)

    def blocks(self) -> list[Block]:
        return [block for block in self.h if isinstance(block, Block)]


class GPT(nn.Module):
    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config
        self.transformer = Transformer(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying

    def forward(self, idx: Tensor, targets: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        _, T = idx.size()
        pos = torch.arange(0, T, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.blocks():
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return logits, loss


def dropout_modules(model: GPT) -> dict[tuple[int, ...], nn.Dropout]:
    """Each dropout module by the layer path of refbp's GPT that draws its mask: (3,) for the
    embeddings' dropout, then for block i (layer 4 + i) attention's (l, 2), attention's residual
    (l, 3) and the MLP's (l, 8)."""
    out: dict[tuple[int, ...], nn.Dropout] = {(3,): model.transformer.drop}
    for i, block in enumerate(model.transformer.blocks()):
        out[(4 + i, 2)] = block.attn.attn_dropout
        out[(4 + i, 3)] = block.attn.resid_dropout
        out[(4 + i, 8)] = block.mlp.dropout
    return out


@contextmanager
def use_masks(model: GPT, noise: Mapping[tuple[int, ...], Tensor]) -> Iterator[None]:
    """Within the block, every dropout module multiplies its input by refbp's keep-mask
    (``cache.noise``) and 1/(1 - p), instead of drawing its own (forward hooks)."""
    handles = []
    for path, module in dropout_modules(model).items():
        if path not in noise:
            continue
        mask = noise[path]

        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor, mask: Tensor = mask) -> Tensor:
            assert isinstance(module, nn.Dropout)
            p = module.p
            return inputs[0] * mask.to(inputs[0].dtype) / (1.0 - p)

        handles.append(module.register_forward_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
