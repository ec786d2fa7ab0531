"""Tensors as text for the walk-throughs: in full when small, summarised when large, 80 columns."""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

__all__ = [
    "FULL_DISPLAY_MAX_COLUMNS",
    "FULL_DISPLAY_MAX_ELEMENTS",
    "FULL_DISPLAY_MAX_SLICES",
    "WIDTH",
    "format_tensor",
    "shape_text",
]

WIDTH = 80
"""Every line of the plain-text walk-through fits an 80-column terminal."""

FULL_DISPLAY_MAX_ELEMENTS = 24
"""Tensors with at most this many entries (and FULL_DISPLAY_MAX_COLUMNS columns) are shown in
full; larger ones are summarised (shape, min, max, mean, first entries)."""

FULL_DISPLAY_MAX_COLUMNS = 6
"""Six columns of 10-character numbers plus brackets and indent stay within WIDTH."""

FULL_DISPLAY_MAX_SLICES = 8
"""A tensor of 3 or more dimensions whose every matrix (its last two dimensions) is small is
shown in full, one matrix per leading index, when there are at most this many matrices: a
batch of small images (N, C, H, W) reads as images, and a walk stays a few screens long."""


def shape_text(t: Tensor) -> str:
    """``t``'s shape as Python writes a tuple: "(2, 3)", "(3,)", "()"."""
    return "(" + ", ".join(str(s) for s in t.shape) + ("," if t.dim() == 1 else "") + ")"


def _decimals(t: Tensor) -> int | None:
    """Decimals that give the largest entry of ``t`` four significant digits (at least 4, at
    most 8); None when scientific notation reads better (huge, tiny or non-finite)."""
    finite = t[torch.isfinite(t)]
    largest = float(finite.abs().max()) if finite.numel() else 0.0
    if finite.numel() < t.numel() or largest >= 1e5 or 0 < largest < 1e-5:
        return None
    return 4 if largest == 0 else min(8, max(4, 3 - math.floor(math.log10(largest))))


def _number(value: float, decimals: int | None) -> str:
    return f"{value:.3e}" if decimals is None else f"{value:.{decimals}f}"


def _matrix_lines(t: Tensor, decimals: int | None, width: int = 0) -> list[str]:
    """A 1- or 2-dimensional tensor as rows of numbers, right-aligned to ``width`` at least."""
    columns = t.shape[-1]
    rows = t.reshape(-1, columns) if t.dim() == 2 else t.reshape(1, columns)
    cells = [[_cell(v, decimals) for v in row] for row in rows]
    width = max(width, *(len(c) for row in cells for c in row))
    lines = ["[" + "  ".join(c.rjust(width) for c in row) + "]" for row in cells]
    if t.dim() == 1:
        return lines
    if len(lines) == 1:
        return ["[" + lines[0] + "]"]
    return ["[" + lines[0]] + [" " + line for line in lines[1:-1]] + [" " + lines[-1] + "]"]


def _cell(value: Tensor, decimals: int | None) -> str:
    """One entry: an integer as it is (an index), a float with ``decimals``."""
    return str(int(value)) if not value.is_floating_point() else _number(float(value), decimals)


def _sliced(t: Tensor) -> bool:
    """Whether a tensor of 3 or more dimensions is shown as one matrix per leading index: few
    matrices (FULL_DISPLAY_MAX_SLICES), each small enough to show in full."""
    return (
        t.dim() >= 3
        and math.prod(t.shape[-2:]) <= FULL_DISPLAY_MAX_ELEMENTS
        and math.prod(t.shape[:-2]) <= FULL_DISPLAY_MAX_SLICES
    )


def _slices(t: Tensor, decimals: int | None) -> list[str]:
    """(B, T, d), (N, C, H, W): one matrix per leading index, labelled as numpy prints slices."""
    width = max(len(_cell(v, decimals)) for v in t.reshape(-1))
    lines = []
    for lead in itertools.product(*(range(n) for n in t.shape[:-2])):
        lines.append("[" + ", ".join(map(str, lead)) + ", :, :]")
        lines += ["  " + line for line in _matrix_lines(t[lead], decimals, width)]
    return lines


def format_tensor(t: Tensor) -> list[str]:
    """``t`` as lines of text: in full when small, else a one-line summary plus first entries.

    Small means at most FULL_DISPLAY_MAX_ELEMENTS entries and FULL_DISPLAY_MAX_COLUMNS
    columns; a tensor of 3 or more dimensions is shown as one matrix per leading index, also
    when it is larger but holds at most FULL_DISPLAY_MAX_SLICES small matrices (a batch of
    images). The decimals are chosen per tensor so that its largest entry keeps four
    significant digits. Integer tensors (class indices, argmax positions) are shown as
    integers, flat unless they have matrices to show."""
    if not t.is_floating_point():  # class indices, positions
        if t.numel() > 0 and t.shape[-1] <= FULL_DISPLAY_MAX_COLUMNS and _sliced(t):
            return _slices(t.detach().cpu(), None)
        values = [str(int(v)) for v in t.reshape(-1)[:FULL_DISPLAY_MAX_ELEMENTS]]
        return ["[" + "  ".join(values) + (" ...]" if t.numel() > len(values) else "]")]
    t = t.detach().to(device="cpu", dtype=torch.float64)
    decimals = _decimals(t)
    if t.dim() == 0:
        return [_number(float(t), decimals)]
    columns = t.shape[-1]
    if t.numel() > 0 and columns <= FULL_DISPLAY_MAX_COLUMNS:
        if t.numel() <= FULL_DISPLAY_MAX_ELEMENTS and t.dim() <= 2:
            return _matrix_lines(t, decimals)
        if t.dim() >= 3 and (t.numel() <= FULL_DISPLAY_MAX_ELEMENTS or _sliced(t)):
            return _slices(t, decimals)
    flat = t.reshape(-1)
    head = "  ".join(_number(float(v), decimals) for v in flat[:4])
    return [
        f"{shape_text(t)} tensor: min {_number(float(flat.min()), decimals)}, "
        f"max {_number(float(flat.max()), decimals)}, mean {_number(float(flat.mean()), decimals)}",
        f"first entries: {head} ...",
    ]
