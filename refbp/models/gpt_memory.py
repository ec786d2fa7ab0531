"""What a GPT needs in memory, counted before anything is allocated, so that an absurd size is
refused with the size it would need (nn.validation.check_fits_in_memory) instead of exhausting
the machine: its parameters (vocab x n_embd, n_layer blocks of 12 n_embd^2) and a forward and
backward pass (attention's B x n_head x T x T scores in every block, the (B, T, V) logits). An
untied LM head (minGPT's) is one more vocab x n_embd table; the GELU's form and the dropout
rates change no count.

The counts are lower bounds: refbp keeps more than this, so a model refused here could never
have run, while one accepted may still be refused by torch itself."""

from __future__ import annotations

import torch

from ..nn.validation import check_fits_in_memory

__all__ = [
    "ATTENTION_COPIES",
    "BLOCK_COPIES",
    "LOGIT_COPIES",
    "check_gpt_fits",
    "gpt_parameter_count",
    "gpt_pass_elements",
]

ATTENTION_COPIES = 3
"""(B, n_head, T, T) tensors a block holds at once through a pass: the attention probabilities
kept for the backward pass, and their gradient and the scores' gradient while it runs."""

BLOCK_COPIES = 12
"""(B, T, n_embd) tensors a block keeps for the backward pass, at least: ln_1's output, q, k,
v, the merged heads, the residual stream, ln_2's output and the MLP's 4 n_embd hidden (4)."""

LOGIT_COPIES = 2
"""(B, T, vocab) tensors of the head: the logits kept in the cache and dJ/dlogits."""


def gpt_parameter_count(
    *, vocab_size: int, block_size: int, n_layer: int, n_embd: int, bias: bool, tied: bool = True
) -> int:
    """The number of parameters (a tied head counted once, an untied one as its own V x d), from the sizes alone.

    Per block: c_attn 3 d^2, c_proj d^2, c_fc 4 d^2, mlp.c_proj 4 d^2 (12 d^2), with biases
    3d + d + 4d + d and LayerNorm weights and biases 2 x 2d (13 d), without biases the two
    LayerNorm weights (2 d)."""
    d = n_embd
    per_block = 12 * d * d + (13 * d if bias else 2 * d)
    head = 0 if tied else vocab_size * d  # lm_head.weight of its own
    return vocab_size * d + block_size * d + n_layer * per_block + (2 * d if bias else d) + head


def gpt_pass_elements(*, batch: int, length: int, vocab_size: int, n_layer: int, n_head: int, n_embd: int) -> int:
    """Elements a forward and backward pass holds at once, at least (the COPIES constants)."""
    B, T = batch, length
    per_block = ATTENTION_COPIES * B * n_head * T * T + BLOCK_COPIES * B * T * n_embd
    return n_layer * per_block + LOGIT_COPIES * B * T * vocab_size


def check_gpt_fits(
    *,
    vocab_size: int,
    block_size: int,
    n_layer: int,
    n_head: int,
    n_embd: int,
    bias: bool = True,
    tied: bool = True,
    dtype: torch.dtype = torch.float64,
    parameter_copies: int = 1,
    batch: int = 0,
    length: int = 0,
    what: str = "the GPT",
) -> None:
    """A ValueError naming the size needed when ``parameter_copies`` copies of the parameters
    (in ``dtype``) and, for ``batch`` > 0, one pass over (batch, length) tokens cannot fit in
    the memory left on this machine; nothing is allocated."""
    itemsize = dtype.itemsize
    parameters = gpt_parameter_count(
        vocab_size=vocab_size, block_size=block_size, n_layer=n_layer, n_embd=n_embd, bias=bias, tied=tied
    )
    nbytes = parameter_copies * parameters * itemsize
    head = "" if tied else ", untied head"
    sizes = f"vocab_size={vocab_size}, n_embd={n_embd}, n_layer={n_layer}{head}: {parameters:,} parameters"
    if batch:
        elements = gpt_pass_elements(
            batch=batch, length=length, vocab_size=vocab_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd
        )
        nbytes += elements * itemsize
        sizes += f"; a pass over B={batch} x T={length} tokens with n_head={n_head}: {elements:,} activations"
    check_fits_in_memory(nbytes, f"{what} ({sizes}, {dtype})")
