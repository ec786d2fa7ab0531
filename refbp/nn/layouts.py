"""Layouts: how a user's arrays are arranged, and the one place they are turned into refbp's.

refbp computes in torch.nn.Linear's layout ("torch"): W(i) is (d_i, d_{i-1}), b(i) is (d_i,),
X, z(i), a(i) hold one observation per row, (N, d). Code people write arranges the same
numbers otherwise, and an MLP built with ``layout=`` reads and hands back every array in it:

=========== ===================== =========== ==================== ============================
layout      W(i)                  b(i)        X, z(i), a(i), y      the forward pass reads
=========== ===================== =========== ==================== ============================
"torch"     (d_i, d_{i-1})        (d_i,)      (N, d) rows           z = a W^T + b
"in_out"    (d_{i-1}, d_i)        (d_i,)      (N, d) rows           h = x @ W + b   (course, NumPy)
"columns"   (d_i, d_{i-1})        (d_i, 1)    (d, N) columns        z = W a + b     (the seed's)
=========== ===================== =========== ==================== ============================

Biases may be given as (d,), (d, 1) or (1, d) in any layout; their gradients come back in the
shape they were given. Class indices (cross_entropy's y) are (N,) in every layout.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from torch import Tensor

from .keys import Key

__all__ = ["LAYOUTS", "TORCH", "Layout", "check_layout"]

LAYOUTS = ("torch", "in_out", "columns")
"""The layouts an MLP can be built in (see the module docstring)."""


def check_layout(layout: object) -> str:
    """``layout`` if it is one of LAYOUTS, else a ValueError listing them."""
    if not isinstance(layout, str) or layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} is not a layout; expected one of {list(LAYOUTS)}")
    return layout


@dataclass(frozen=True)
class Layout:
    """A layout and the bias shapes one network was given (by layer, from 1).

    ``to_user(name, t)`` turns refbp's tensor called ``name`` ("W2", "z1", "X", ...) into the
    user's arrangement, ``from_user`` the other way; both are transposes or reshapes, never
    copies of the numbers into new places.

    Attributes:
        name: one of LAYOUTS.
        bias_shapes: the shape each b(i) was given in, layer i at index i - 1.
        named_sizes: messages name the sizes beside their values, "(5, 2) = (N, d_L)", as the
            seed writes them: True for a network of numbered layers (an MLP).
    """

    name: str = "torch"
    bias_shapes: tuple[tuple[int, ...], ...] = ()
    named_sizes: bool = False

    @functools.cached_property
    def identity(self) -> bool:
        """True when nothing is turned: torch's layout, every bias given as (d,)."""
        return self.name == "torch" and all(len(shape) == 1 for shape in self.bias_shapes)

    @property
    def output_sizes(self) -> str:
        """How messages name the output's sizes after its shape: " = (N, d_L)", or nothing."""
        if not self.named_sizes:
            return ""
        return " = (N, d_L)" if self.rows else " = (d_L, N)"

    def named(self, name: str) -> Layout:
        """The layout ``name`` for the same network: this one, or ``name`` with its usual bias
        shapes for the same layer widths (``standard``)."""
        if name == self.name:
            return self
        return Layout.standard(name, [math.prod(shape) for shape in self.bias_shapes])

    @property
    def rows(self) -> bool:
        """True when observations are rows (N, d), as refbp keeps them."""
        return self.name != "columns"

    def _kind(self, name: str) -> tuple[str, int]:
        if not Key.is_valid(name):
            return name, 0
        key = Key.parse(name)
        return key.kind, key.layer[0] if key.layer else 0

    def to_user(self, name: str, t: Tensor) -> Tensor:
        """refbp's tensor ``name`` in the user's layout."""
        if self.identity:
            return t
        kind, layer = self._kind(name)
        if kind == "W" and self.name == "in_out":
            return t.T
        if kind == "b" and 0 < layer <= len(self.bias_shapes) and tuple(t.shape) != self.bias_shapes[layer - 1]:
            return t.reshape(self.bias_shapes[layer - 1])
        if kind in ("z", "a", "X") and not self.rows and t.dim() == 2:
            return t.T
        return t

    def from_user(self, name: str, t: Tensor) -> Tensor:
        """The user's tensor ``name`` in refbp's layout (a transpose or reshape of it)."""
        if self.name == "torch" and (t.dim() != 2 or not Key.is_valid(name) or Key.parse(name).kind != "b"):
            return t  # torch's layout: only a bias given as (d, 1) or (1, d) is reshaped
        kind, _ = self._kind(name)
        if kind == "W" and self.name == "in_out" and t.dim() == 2:
            return t.T
        if kind == "b" and t.dim() == 2 and 1 in t.shape:
            return t.reshape(-1)
        if kind in ("z", "a", "X") and not self.rows and t.dim() == 2:
            return t.T
        return t

    def targets_from_user(self, y: Tensor) -> Tensor:
        """y in refbp's layout: values are (d_L, N) in "columns", class indices (N,) in all."""
        return y.T if not self.rows and y.dim() == 2 else y

    @classmethod
    def standard(cls, name: str, widths: list[int]) -> Layout:
        """The layout ``name`` with its usual bias shapes for layers of widths d_1 .. d_L:
        (d, 1) columns in "columns", (d,) otherwise."""
        check_layout(name)
        return cls(name, tuple((d, 1) if name == "columns" else (d,) for d in widths), named_sizes=True)

    def describe_X(self, d_0: int) -> str:
        """The shape X must have, in words: "(N, 3) = (N, d_0)" or "(3, N) = (d_0, N)"."""
        return f"(N, {d_0}) = (N, d_0)" if self.rows else f"({d_0}, N) = (d_0, N)"


TORCH = Layout()
"""refbp's own layout: nothing to transpose."""
