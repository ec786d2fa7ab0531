"""PositionEmbedding: a learned vector per position added to each sequence (nanoGPT's wpe).

With P the (block_size, d) table and x the (B, T, d) token embeddings, T <= block_size:

    y[b, t]      = x[b, t] + P[t]                         (B, T, d)
    dJ/dP[t]     = sum_b dJ/dy[b, t]      for t < T       (block_size, d); rows t >= T get 0
    dJ/dx        = dJ/dy                                  (B, T, d)

The same row P[t] is added to every sequence of the batch, so its gradient is the sum over
the batch; keeping one sequence's gradient (an assignment in a loop over the batch) is a
classic bug (refbp.apps.gpt_bugs).

Second order (refbp.nn.second_order), R{.} = d/dr (.)(w + r v) along V_P and R{x}: the map is
linear in x and in P, so each rule is the first-order one with R{.} written in:

    R{y}[b, t]    = R{x}[b, t] + V_P[t]                   (B, T, d)
    R{dJ/dx}      = R{dJ/dy}                              (B, T, d)
    (H v)_P[t]    = sum_b R{dJ/dy}[b, t]   for t < T      (block_size, d); rows t >= T get 0
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from .layer import BackwardContext, ForwardContext, Layer, LayerGradients, LayerTangent, Params, SecondContext, Tap
from .validation import describe

__all__ = ["PositionEmbedding", "TorchPositionEmbedding"]


class PositionEmbedding(Layer):
    """y = x + P[:T] for x of shape (B, T, d).

    Args:
        P: (block_size, d), the table; a sequence may have at most block_size positions.
    """

    title = "PositionEmbedding"
    torch_names: ClassVar[dict[str, str]] = {"P": "0.weight"}

    def __init__(self, P: Tensor) -> None:
        if not isinstance(P, Tensor) or P.dim() != 2:
            got = describe(P) if isinstance(P, Tensor) else type(P).__name__
            raise ValueError(f"P must be a (block_size, d) table, got {got}")
        self.params = {"P": P}
        self.training = True

    @property
    def block_size(self) -> int:
        return int(self.params["P"].shape[0])

    def describe(self) -> str:
        block_size, d = self.params["P"].shape
        return f"PositionEmbedding({block_size} x {d})"

    def equations(self) -> tuple[str, str]:
        return ("y[b, t] = x[b, t] + P[t]", "dJ/dP[t] = sum_b dJ/dy[b, t] ;  dJ/dx = dJ/dy")

    def check_input(self, x: Tensor, path: tuple[int, ...]) -> None:
        block_size, d = self.params["P"].shape
        where = ".".join(map(str, path))
        if x.dim() != 3 or x.shape[-1] != d:
            raise ValueError(f"layer {where} ({self.describe()}) needs input (B, T, {d}), got {describe(x)}")
        if x.shape[1] > block_size:
            raise ValueError(
                f"layer {where} ({self.describe()}): a sequence of T = {x.shape[1]} positions; "
                f"expected T <= block_size = {block_size}"
            )

    def forward(self, x: Tensor, ctx: ForwardContext, path: tuple[int, ...]) -> tuple[Tensor, None]:
        T = x.shape[1]
        return x + self.params["P"][:T], None  # y[b, t] = x[b, t] + P[t]   (B, T, d)

    def backward(self, dJ_dy: Tensor, x: Tensor, out: Tensor, cache: Any, ctx: BackwardContext) -> LayerGradients:
        T = dJ_dy.shape[1]
        dJ_dP = torch.zeros_like(self.params["P"])  # (block_size, d): positions >= T are not used
        torch.sum(dJ_dy, dim=0, out=dJ_dP[:T])  # dJ/dP[t] = sum_b dJ/dy[b, t]   (T, d)
        if not ctx.need_dx:
            return LayerGradients(None, {"P": dJ_dP})
        # dJ/dx = dJ/dy: handed on as it is when the caller gave it up, copied otherwise
        dJ_dx = dJ_dy if ctx.overwrite and not ctx.keep_intermediates else dJ_dy.clone()
        return LayerGradients(dJ_dx, {"P": dJ_dP})

    # ---- second order ---------------------------------------------------------------------------
    def tangent(
        self, x: Tensor, Rx: Tensor | None, out: Tensor, cache: Any, V: Params, path: tuple[int, ...]
    ) -> LayerTangent:
        assert Rx is not None  # x holds vectors (token embeddings), never indices
        T = x.shape[1]
        return LayerTangent(Rx + V(path, "P")[:T])  # R{y}[b, t] = R{x}[b, t] + V_P[t]   (B, T, d)

    def r_backward(
        self, g: Tensor, Rg: Tensor, x: Tensor, Rx: Tensor | None, out: Tensor, t: LayerTangent, cache: Any,
        V: Params, ctx: SecondContext,
    ) -> tuple[Tensor | None, LayerGradients]:  # fmt: skip
        T = Rg.shape[1]
        H_P = torch.zeros_like(self.params["P"])  # (block_size, d): positions >= T are not used
        torch.sum(Rg, dim=0, out=H_P[:T])  # (H v)_P[t] = sum_b R{dJ/dy}[b, t]   (T, d)
        if not ctx.need_dx:
            return None, LayerGradients(None, {"P": H_P})
        return g, LayerGradients(Rg, {"P": H_P})  # dJ/dx = dJ/dy, R{dJ/dx} = R{dJ/dy}

    def torch_forward(
        self, x: Tensor, p: Params, noise: Mapping[tuple[int, ...], Tensor], tap: Tap, path: tuple[int, ...]
    ) -> Tensor:
        positions = torch.arange(x.shape[1], device=x.device)  # (T,) 0 .. T-1, as nanoGPT
        return x + F.embedding(positions, p(path, "P"))

    def to_torch(self) -> torch.nn.Module:
        module = TorchPositionEmbedding(self.params["P"].detach().clone())
        module.train(self.training)
        return module


class TorchPositionEmbedding(torch.nn.Module):
    """x + weight[:T] as a torch module (torch has none of its own)."""

    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(weight)

    def forward(self, x: Tensor) -> Tensor:
        return x + F.embedding(torch.arange(x.shape[1], device=x.device), self.weight)
