"""Embedding: integer indices in, rows of a table out; the gradient accumulates over repeats.

With E the (V, d) table and idx any integer tensor (N,) or (B, T):

    y[...]     = E[idx[...]]                                  (..., d)
    dJ/dE[v]   = sum over every position where idx == v of dJ/dy at that position     (V, d)

A token that appears twice contributes twice: writing dJ/dE[idx] = dJ/dy (assignment instead
of accumulation) keeps only one of them, a classic bug (refbp.apps.layer_bugs). Rows at
``padding_idx`` get no gradient, as torch's. The input holds integers, so there is no dJ/dX.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from .keys import Key
from .layer import BackwardContext, ForwardContext, Layer, LayerGradients, LayerTangent, Params, SecondContext, Tap
from .registry import register
from .validation import describe

__all__ = ["Embedding"]


class Embedding(Layer):
    """torch.nn.Embedding(V, d): the first layer of a network whose input holds indices.

    Args:
        E: (V, d), the table.
        padding_idx: a row that gets no gradient (torch's ``padding_idx``), or None.
    """

    title = "Embedding"
    takes_indices = True
    torch_names: ClassVar[dict[str, str]] = {"E": "0.weight"}

    def __init__(self, E: Tensor, *, padding_idx: int | None = None) -> None:
        self.params = {"E": E}
        V = E.shape[0]
        if padding_idx is not None and not -V <= padding_idx < V:
            raise ValueError(f"padding_idx={padding_idx} is not a row of the ({V}, {E.shape[1]}) table")
        self.padding_idx = None if padding_idx is None else padding_idx % V
        self.training = True

    def fixed_gradients(self, path: tuple[int, ...]) -> dict[Key, Tensor]:
        """The padding row: torch defines its gradient as zero, and so does refbp."""
        if self.padding_idx is None:
            return {}
        E = self.params["E"]
        mask = torch.zeros(E.shape, dtype=torch.bool, device=E.device)
        mask[self.padding_idx] = True
        return {Key("E", path): mask}

    def forward_size(self, shape: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
        out = (*shape, self.params["E"].shape[1])  # (..., d): one row of E per index
        return out, math.prod(out)

    def describe(self) -> str:
        V, d = self.params["E"].shape
        return f"Embedding({V} x {d})"

    def equations(self) -> tuple[str, str]:
        return ("y = E[idx]", "dJ/dE[v] = sum_{positions with idx = v} dJ/dy   (accumulated over repeats)")

    def check_input(self, x: Tensor, path: tuple[int, ...]) -> None:
        V = self.params["E"].shape[0]
        where = ".".join(map(str, path))
        if x.dtype != torch.int64:
            raise TypeError(f"layer {where} ({self.describe()}) needs int64 indices, got {describe(x)}")
        if x.numel() and bool(((x < 0) | (x >= V)).any()):
            bad = x[(x < 0) | (x >= V)][0]
            raise ValueError(
                f"layer {where} ({self.describe()}): index {int(bad)} is not a row; expected 0 <= idx < {V}"
            )

    def forward(self, x: Tensor, ctx: ForwardContext, path: tuple[int, ...]) -> tuple[Tensor, None]:
        E = self.params["E"]
        return E.index_select(0, x.reshape(-1)).view(*x.shape, E.shape[1]), None  # y = E[idx]   (..., d)

    @property
    def backward_reads_output(self) -> bool:
        return False  # dJ/dE reads the indices x only

    def backward(self, dJ_dy: Tensor, x: Tensor, out: Tensor, cache: None, ctx: BackwardContext) -> LayerGradients:
        E = self.params["E"]
        d = E.shape[1]
        # dJ/dE[v] += dJ/dy[position] for every position holding v: index_add_ accumulates
        dJ_dE = torch.zeros_like(E).index_add_(0, x.reshape(-1), dJ_dy.reshape(-1, d))  # (V, d)
        if self.padding_idx is not None:
            dJ_dE[self.padding_idx] = 0.0  # torch gives the padding row no gradient
        return LayerGradients(None, {"E": dJ_dE})

    # ---- second order ---------------------------------------------------------------------------
    def tangent(
        self, x: Tensor, Rx: Tensor | None, out: Tensor, cache: Any, V: Params, path: tuple[int, ...]
    ) -> LayerTangent:
        V_E = V(path, "E")
        return LayerTangent(V_E.index_select(0, x.reshape(-1)).view(*x.shape, V_E.shape[1]))  # R{y} = V_E[idx]

    def r_backward(
        self, g: Tensor, Rg: Tensor, x: Tensor, Rx: Tensor | None, out: Tensor, t: LayerTangent, cache: Any,
        V: Params, ctx: SecondContext,
    ) -> tuple[Tensor | None, LayerGradients]:  # fmt: skip
        E = self.params["E"]
        # dJ/dE[v] = sum over positions with idx = v of dJ/dy: linear in dJ/dy, so (H v)_E is the same sum of R{dJ/dy}
        H_E = torch.zeros_like(E).index_add_(0, x.reshape(-1), Rg.reshape(-1, E.shape[1]))
        if self.padding_idx is not None:
            H_E[self.padding_idx] = 0.0  # the padding row's gradient is 0 by definition, and so is its R
        return None, LayerGradients(None, {"E": H_E})

    def torch_forward(
        self, x: Tensor, p: Params, noise: Mapping[tuple[int, ...], Tensor], tap: Tap, path: tuple[int, ...]
    ) -> Tensor:
        return F.embedding(x, p(path, "E"), padding_idx=self.padding_idx)

    def to_torch(self) -> torch.nn.Module:
        E = self.params["E"]
        V, d = E.shape
        module = torch.nn.Embedding(V, d, padding_idx=self.padding_idx, dtype=E.dtype, device=E.device)
        with torch.no_grad():
            module.weight.copy_(E)
        return module


@register(torch.nn.Embedding)
def _from_embedding(module: torch.nn.Module) -> Layer:
    assert isinstance(module, torch.nn.Embedding)
    if module.max_norm is not None or module.scale_grad_by_freq or module.sparse:
        raise ValueError("Embedding with max_norm, scale_grad_by_freq or sparse=True is not supported")
    return Embedding(module.weight.detach().clone(), padding_idx=module.padding_idx)
