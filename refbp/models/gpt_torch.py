"""TorchGPT: the GPT refbp computes, as a torch module with nanoGPT's (and minGPT's) names:
what ``GPT.to_torch()`` gives, built from refbp's torch modules."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..nn.attention import TorchCausalSelfAttention
from ..nn.transformer import TorchBlock
from .gpt_config import IGNORE_INDEX, GPTConfig

__all__ = ["TorchGPT"]


class TorchGPT(torch.nn.Module):
    """nanoGPT's module layout (transformer.wte, .wpe, .drop, .h, .ln_f, lm_head) for ``config``:
    the head tied to wte or a weight of its own (``config.tied``), each block's GELU exact or
    tanh (``config.gelu``), and each dropout rate in its place: transformer.drop (embd), each
    block's attn.attn_dropout (attn), resid_dropout and mlp.dropout (resid).
    ``forward(idx, targets)`` returns (logits, loss) as nanoGPT's."""

    def __init__(self, config: GPTConfig, *, dtype: torch.dtype | None = None, device: Any = None) -> None:
        super().__init__()
        c = config
        d = c.n_embd
        attention = [TorchCausalSelfAttention(d, c.n_head, bias=c.bias, dropout=c.p_attn) for _ in range(c.n_layer)]
        blocks = [
            TorchBlock(
                torch.nn.LayerNorm(d, bias=c.bias), attn, torch.nn.LayerNorm(d, bias=c.bias),
                torch.nn.Linear(d, 4 * d, bias=c.bias), torch.nn.Linear(4 * d, d, bias=c.bias), dropout=c.p_resid,
                gelu=c.gelu,
            )
            for attn in attention
        ]  # fmt: skip
        wte = torch.nn.Embedding(c.vocab_size, d)
        self.transformer = torch.nn.ModuleDict({
            "wte": wte, "wpe": torch.nn.Embedding(c.block_size, d), "drop": torch.nn.Dropout(c.p_embd),
            "h": torch.nn.ModuleList(blocks), "ln_f": torch.nn.LayerNorm(d, bias=c.bias),
        })  # fmt: skip
        self.lm_head = torch.nn.Linear(d, c.vocab_size, bias=False)
        if c.tied:
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
