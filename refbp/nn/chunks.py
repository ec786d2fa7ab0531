"""Chunks: a step done on a few rows (or sequences) at a time, so that its temporaries stay small.

A training step holds its cache (what the backward pass reads) and, at any moment, the
temporaries of the step in progress. torch's fused kernels (its GELU backward, its attention)
have almost none; refbp writes each step as a few tensor operations, each with a temporary as
large as its input, and attention's are T x T per head. Done on CHUNK_BYTES of temporaries at a
time, a step's extra memory stays that small whatever the model's size. Rows are independent in
these steps (a LayerNorm's row, an attention's sequence), so chunking changes no number.

On a CUDA GPU the budget is CUDA_SCALE times larger: there each tensor operation costs the host
a kernel launch (5-10 us) whatever its size, small steps are bound by those launches, and the
device's memory is large. Measured on an H200 (torch 2.11), the GPT training step of
benchmarks/gpt.py at n_embd 128-256, T 64-256: with 1 MiB chunks 3.3-12x eager autograd's time,
with 16 MiB 2.3-3.7x and 0.89-0.94x its peak memory, with 64 MiB 2.3-3.0x but 1.09-1.12x its
memory.
"""

from __future__ import annotations

import torch

__all__ = ["CHUNK_BYTES", "CUDA_SCALE", "chunk_budget", "chunks"]

CHUNK_BYTES = 1 << 20
"""1 MiB of temporaries at a time: at most one (B, T, d) activation at the sizes benchmarked
(B 8, T 256, n_embd 128 is 1 MiB in float32), and enough work per tensor operation (a quarter
million float32 entries) that its fixed cost of a few microseconds is a few percent."""


CUDA_SCALE = 16
"""How many times more temporaries a chunk may hold on a CUDA device (16 MiB by default)."""


def chunk_budget(device: torch.device | None, budget: int | None = None) -> int:
    """Bytes of temporaries per chunk on ``device``: ``budget`` (default CHUNK_BYTES, read at each
    call), CUDA_SCALE times that on a CUDA device."""
    base = CHUNK_BYTES if budget is None else budget
    return base * CUDA_SCALE if device is not None and device.type == "cuda" else base


def chunks(
    n: int, bytes_per_item: int, *, budget: int | None = None, device: torch.device | None = None
) -> list[slice]:
    """Consecutive slices covering range(n), each of at most max(1, chunk_budget // bytes_per_item)
    items: item after item, so that the temporaries of one slice take about ``budget`` bytes
    (default CHUNK_BYTES, read at each call; larger on a CUDA ``device``: chunk_budget)."""
    size = max(1, chunk_budget(device, budget) // max(1, bytes_per_item))
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]
