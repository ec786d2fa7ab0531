"""Chunks: a step done on a few rows (or sequences) at a time, so that its temporaries stay small.

A training step holds its cache (what the backward pass reads) and, at any moment, the
temporaries of the step in progress. torch's fused kernels (its GELU backward, its attention)
have almost none; refbp writes each step as a few tensor operations, each with a temporary as
large as its input, and attention's are T x T per head. Done on CHUNK_BYTES of temporaries at a
time, a step's extra memory stays that small whatever the model's size. Rows are independent in
these steps (a LayerNorm's row, an attention's sequence), so chunking changes no number.
"""

from __future__ import annotations

__all__ = ["CHUNK_BYTES", "chunks"]

CHUNK_BYTES = 1 << 20
"""1 MiB of temporaries at a time: at most one (B, T, d) activation at the sizes benchmarked
(B 8, T 256, n_embd 128 is 1 MiB in float32), and enough work per tensor operation (a quarter
million float32 entries) that its fixed cost of a few microseconds is a few percent."""


def chunks(n: int, bytes_per_item: int, *, budget: int | None = None) -> list[slice]:
    """Consecutive slices covering range(n), each of at most max(1, budget // bytes_per_item)
    items: item after item, so that the temporaries of one slice take about ``budget`` bytes
    (default CHUNK_BYTES, read at each call)."""
    size = max(1, (CHUNK_BYTES if budget is None else budget) // max(1, bytes_per_item))
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]
