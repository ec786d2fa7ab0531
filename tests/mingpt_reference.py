"""An independent minGPT-style GPT in plain torch.nn, for the tests.

Written from minGPT's description, not from its code nor refbp's: minGPT's state-dict names
(transformer.wte, .wpe, .h.N.ln_1, .attn.c_attn, .attn.c_proj, the causal-mask buffer
.attn.bias, .ln_2, .mlp.c_fc, .mlp.c_proj, .ln_f, and lm_head.weight, a weight of its own: not
tied to wte), the tanh form of GELU written out as a formula, the explicit masked softmax, and
three dropout rates: after the embeddings (embd_pdrop), on the attention probabilities
(attn_pdrop), after attention's projection and after the MLP (resid_pdrop). Cross-entropy with
ignore_index=-1. refbp.models.GPT loads its state dict with no adapter and must reproduce its
loss and every gradient autograd computes on it.
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
    embd_pdrop: float = 0.0
    attn_pdrop: float = 0.0
    resid_pdrop: float = 0.0


class TanhGELU(nn.Module):
    """1/2 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), term by term."""

    def forward(self, x: Tensor) -> Tensor:
        inner = math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)
        return 0.5 * x * (1.0 + torch.tanh(inner))


class SelfAttention(nn.Module):
    def __init__(self, c: Config) -> None:
        super().__init__()
        self.c_attn = nn.Linear(c.n_embd, 3 * c.n_embd)
        self.c_proj = nn.Linear(c.n_embd, c.n_embd)
        self.attn_dropout = nn.Dropout(c.attn_pdrop)
        self.resid_dropout = nn.Dropout(c.resid_pdrop)
        lower = torch.tril(torch.ones(c.block_size, c.block_size))
        self.register_buffer("bias", lower.view(1, 1, c.block_size, c.block_size))  # 1 where t' <= t
        self.n_head = c.n_head

    def forward(self, x: Tensor) -> Tensor:
        B, T, d = x.shape
        hs = d // self.n_head
        q, k, v = (t.reshape(B, T, self.n_head, hs).permute(0, 2, 1, 3) for t in self.c_attn(x).chunk(3, dim=-1))
        scores = torch.einsum("bhtc,bhsc->bhts", q, k) / math.sqrt(hs)  # (B, nh, T, T)
        mask = self.get_buffer("bias")[:, :, :T, :T]
        weights = torch.softmax(scores.masked_fill(mask == 0, float("-inf")), dim=-1)
        y = torch.einsum("bhts,bhsc->bhtc", self.attn_dropout(weights), v)  # (B, nh, T, hs)
        return self.resid_dropout(self.c_proj(y.permute(0, 2, 1, 3).reshape(B, T, d)))


class Block(nn.Module):
    def __init__(self, c: Config) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(c.n_embd)
        self.attn = SelfAttention(c)
        self.ln_2 = nn.LayerNorm(c.n_embd)
        self.mlp = nn.ModuleDict({
            "c_fc": nn.Linear(c.n_embd, 4 * c.n_embd), "c_proj": nn.Linear(4 * c.n_embd, c.n_embd),
            "act": TanhGELU(), "dropout": nn.Dropout(c.resid_pdrop),
        })  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        m = self.mlp
        return x + m["dropout"](m["c_proj"](m["act"](m["c_fc"](self.ln_2(x)))))


class GPT(nn.Module):
    def __init__(self, c: Config) -> None:
        super().__init__()
        self.transformer = nn.ModuleDict({
            "wte": nn.Embedding(c.vocab_size, c.n_embd), "wpe": nn.Embedding(c.block_size, c.n_embd),
            "drop": nn.Dropout(c.embd_pdrop), "h": nn.ModuleList([Block(c) for _ in range(c.n_layer)]),
            "ln_f": nn.LayerNorm(c.n_embd),
        })  # fmt: skip
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)  # its own weight: not tied

    def blocks(self) -> list[Block]:
        h = self.transformer["h"]
        assert isinstance(h, nn.ModuleList)
        return [block for block in h if isinstance(block, Block)]

    def forward(self, idx: Tensor, targets: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        t = self.transformer
        positions = torch.arange(idx.shape[1], device=idx.device).unsqueeze(0)  # (1, T)
        x = t["drop"](t["wte"](idx) + t["wpe"](positions))
        for block in self.blocks():
            x = block(x)
        logits = self.lm_head(t["ln_f"](x))
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1)


def dropout_modules(model: GPT) -> dict[tuple[int, ...], nn.Dropout]:
    """Each dropout module by the layer path of refbp's GPT that draws its mask: (3,) after the
    embeddings, then for block i (layer 4 + i) the attention probabilities' (l, 2), attention's
    residual (l, 3) and the MLP's (l, 8)."""
    drop = model.transformer["drop"]
    assert isinstance(drop, nn.Dropout)
    out: dict[tuple[int, ...], nn.Dropout] = {(3,): drop}
    for i, block in enumerate(model.blocks()):
        mlp_drop = block.mlp["dropout"]
        assert isinstance(mlp_drop, nn.Dropout)
        out[(4 + i, 2)], out[(4 + i, 3)], out[(4 + i, 8)] = block.attn.attn_dropout, block.attn.resid_dropout, mlp_drop
    return out


@contextmanager
def masks_applied(
    modules: Mapping[tuple[int, ...], nn.Module], noise: Mapping[tuple[int, ...], Tensor]
) -> Iterator[None]:
    """Within the block, each dropout module at a path of ``noise`` multiplies its input by that
    keep-mask and 1/(1 - its own p), instead of drawing its own (forward hooks)."""
    handles = []
    for path, module in modules.items():
        if path not in noise:
            continue

        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor, mask: Tensor = noise[path]) -> Tensor:
            assert isinstance(module, nn.Dropout)
            return inputs[0] * mask.to(inputs[0].dtype) / (1.0 - module.p)

        handles.append(module.register_forward_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def masks_recorded(modules: Mapping[tuple[int, ...], nn.Module]) -> Iterator[dict[tuple[int, ...], Tensor]]:
    """Within the block, the keep-mask each dropout module draws (torch's own) is recorded by
    path: an entry is kept where the output is not 0. Where the input is exactly 0 (attention's
    masked future) the mask cannot be read and does not matter: 0 either way, and no gradient
    flows there (dJ/dS = P o (...) = 0 where P = 0)."""
    recorded: dict[tuple[int, ...], Tensor] = {}
    handles = []
    for path, module in modules.items():

        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor, path: tuple[int, ...] = path) -> None:
            recorded[path] = output != 0

        handles.append(module.register_forward_hook(hook))
    try:
        yield recorded
    finally:
        for handle in handles:
            handle.remove()
