"""Finite differences of any network, through its oracle: P perturbed copies of J evaluated as
one ``torch.func.vmap`` over ``Network.torch_J``, so that layers that mix the batch (BatchNorm)
stay exact. Steps, moves, error estimates and pieces are refbp.verify.fd_core's.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from ..nn.keys import Key
from ..nn.layer import Params
from ..nn.network import Network
from .fd_core import (
    CHUNK_BYTES,
    FDResult,
    Fixed,
    PieceRecorder,
    PieceWatcher,
    directional_differences,
    full_differences,
    random_directions,
)

__all__ = ["oracle_finite_differences"]


def oracle_finite_differences(
    net: Network,
    X64: Tensor,
    y64: Tensor,
    noise64: Mapping[tuple[int, ...], Tensor],
    names: list[str],
    *,
    mode: str,
    directions: int,
    seed: int,
    sigma: Mapping[str, float],
    fixed: Mapping[str, Fixed],
) -> dict[str, FDResult]:
    """Finite differences of J for the tensors named, at the float64 CPU point (X64, y64, noise64).

    Args:
        mode: "full" or "directional"; directions, seed: as refbp.verify.finite_diff says.
        sigma: name -> rounding of one evaluation (fd_core.evaluation_noise).
        fixed: name -> the entries not to move (fd_core.Fixed).
    """
    cpu = torch.device("cpu")
    params = net.oracle_params(dtype=torch.float64, device=cpu)
    record = PieceRecorder()
    with torch.no_grad():
        J0 = float(net.torch_J(X64, y64, Params(params, net.ties), noise64, record))
    per_copy = 8 * 3 * sum(t.numel() for t in record.values.values()) + 8 * X64.numel()
    chunk = max(1, CHUNK_BYTES // max(1, per_copy))  # copies per batch

    out: dict[str, FDResult] = {}
    for offset, name in enumerate(names):
        key = Key.parse(name)
        if key.kind == "X":
            base = X64
        elif key in params:
            base = params[key]
        else:
            base = record.values[key]

        def J_of(delta: Tensor, key: Key = key) -> tuple[Tensor, Tensor]:
            watcher = PieceWatcher(record)
            p, X_in = params, X64
            if key.kind == "X":
                X_in = X64 + delta
            elif key in params:
                p = {**params, key: params[key] + delta}
            else:
                watcher = PieceWatcher(record, key, delta)
            J = net.torch_J(X_in, y64, Params(p, net.ties), noise64, watcher)
            return J, watcher.crossed

        if mode == "full":
            out[name] = full_differences(
                _batched(_moving_one_entry(J_of, base.shape)), base, J0, chunk, sigma[name], fixed.get(name)
            )
        else:
            V = random_directions(tuple(base.shape), directions, seed=seed + 1009 * offset)
            out[name] = directional_differences(_batched(J_of), base, V, J0, chunk, sigma[name], fixed.get(name))
    return out


def _moving_one_entry(
    J_of: Callable[[Tensor], tuple[Tensor, Tensor]], shape: torch.Size
) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """J with one entry moved, from J with the tensor moved by a delta: each copy's delta is
    built inside the vmapped function from (entry, move), so no (P, n) tensor of
    perturbations is ever stored."""
    positions = torch.arange(math.prod(shape))

    def J_of_entry(entry: Tensor, move: Tensor) -> tuple[Tensor, Tensor]:
        delta = (positions == entry).to(torch.float64) * move  # move e_entry
        return J_of(delta.reshape(shape))

    return J_of_entry


def _batched(fn: Callable[..., tuple[Tensor, Tensor]]) -> Callable[..., tuple[Tensor, Tensor]]:
    """fn over P copies by torch.func.vmap: arguments with a leading P dimension -> (J (P,),
    crossed (P,)). The caller (fd_core) hands over one chunk of copies at a time."""
    vmapped = torch.func.vmap(fn)

    def evaluate(*batched: Tensor) -> tuple[Tensor, Tensor]:
        with torch.no_grad(), warnings.catch_warnings():
            # an op without a batching rule falls back to a loop: slower, still exact
            warnings.filterwarnings("ignore", message=".*batching rule.*")
            J, crossed = vmapped(*batched)
        return J, crossed

    return evaluate
