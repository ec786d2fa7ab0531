"""Finite differences of any network, through its oracle: P perturbed copies of J evaluated as
one ``torch.func.vmap`` over the oracle, so that layers that mix the batch (BatchNorm) stay
exact. Steps, moves, error estimates and pieces are refbp.verify.fd_core's.

A copy that moves a tensor of top-level layer l changes nothing below l: it starts at layer l
from the base run's a(l - 1) (``fd_core.oracle_J_from``, ``fd_core.first_layer``), so moving the
last block of a GPT costs a quarter of a forward pass, not a whole one.
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
    EntryEvaluator,
    FDResult,
    Fixed,
    PieceRecorder,
    PieceWatcher,
    Settle,
    Sigma,
    directional_differences,
    first_layer,
    full_differences,
    oracle_J_from,
    random_directions,
)

__all__ = ["MIN_COPIES", "ORACLE_BATCH_BYTES", "OracleDifferences", "oracle_finite_differences"]

MIN_COPIES = 16
"""Copies per vmapped batch at least, where memory allows (``ORACLE_BATCH_BYTES``): the oracle's
Python and dispatch work is paid once per batch, and one copy of a GPT outgrows CHUNK_BYTES on
its own. Measured on the 4-layer GPT of benchmarks/check_gpt.py (float64, 1 thread): 25-30 ms a
copy one at a time, 11-14 ms a copy 16 at a time."""

ORACLE_BATCH_BYTES = 512 * 2**20
"""The most memory one batch of perturbed activations may take when MIN_COPIES copies outgrow
CHUNK_BYTES: 512 MiB."""


class OracleDifferences:
    """A network's oracle at the float64 CPU point (X64, y64, noise64), ready to take finite
    differences of J tensor by tensor: the base run (pieces, intermediates, each top-level
    layer's input) is done once."""

    def __init__(self, net: Network, X64: Tensor, y64: Tensor, noise64: Mapping[tuple[int, ...], Tensor]) -> None:
        self.net, self.X64, self.y64, self.noise64 = net, X64, y64, noise64
        self.params = net.oracle_params(dtype=torch.float64, device=torch.device("cpu"))
        self.record = PieceRecorder()
        with torch.no_grad():
            self.J0 = float(net.torch_J(X64, y64, Params(self.params, net.ties), noise64, self.record))
        per_copy = 8 * 3 * sum(t.numel() for t in self.record.values.values()) + 8 * X64.numel()
        fits = CHUNK_BYTES // max(1, per_copy)
        self.chunk = max(1, fits if fits >= MIN_COPIES else min(MIN_COPIES, ORACLE_BATCH_BYTES // max(1, per_copy)))

    def base(self, name: str) -> Tensor:
        """The tensor called ``name`` at the base point, float64."""
        key = Key.parse(name)
        if key.kind == "X":
            return self.X64
        return self.params[key] if key in self.params else self.record.values[key]

    def entry_evaluator(self, name: str) -> EntryEvaluator:
        """J for copies that each move one entry of ``name``."""
        return _batched(_moving_one_entry(self._J_of(name), self.base(name).shape))

    def full(self, name: str, sigma: Sigma, fixed: Fixed | None, settle: Settle | None = None) -> FDResult:
        """Every entry of ``name`` (fd_core.full_differences)."""
        return full_differences(self.entry_evaluator(name), self.base(name), self.J0, self.chunk, sigma, fixed, settle)

    def directional(
        self, name: str, V: Tensor, sigma: Sigma, fixed: Fixed | None, settle: Settle | None = None
    ) -> FDResult:
        """The directions V (k, *shape) of ``name`` (fd_core.directional_differences)."""
        evaluate = _batched(self._J_of(name))
        return directional_differences(evaluate, self.base(name), V, self.J0, self.chunk, sigma, fixed, settle)

    def _J_of(self, name: str) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
        """J (and whether a piece boundary was crossed) with ``name`` moved by a delta, run from
        the first layer the move changes."""
        net, params, record = self.net, self.params, self.record
        key = Key.parse(name)
        first = first_layer(net, name)
        x = self.X64 if first == 1 else record.values[Key("a", (first - 1,))]  # a(first - 1)   (B, ...)
        start = record.marks[first - 1]

        def J_of(delta: Tensor) -> tuple[Tensor, Tensor]:
            watcher = PieceWatcher(record, start=start)
            p, x_in = params, x
            if key.kind == "X":
                x_in = x + delta
            elif key in params:
                p = {**params, key: params[key] + delta}
            else:
                watcher = PieceWatcher(record, key, delta, start=start)
            J = oracle_J_from(net, first, x_in, self.y64, Params(p, net.ties), self.noise64, watcher)
            return J, watcher.crossed

        return J_of


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
    """Finite differences of J for the tensors named, at the float64 CPU point (X64, y64, noise64),
    every difference with its error estimate.

    Args:
        mode: "full" or "directional"; directions, seed: as refbp.verify.finite_diff says.
        sigma: name -> rounding of one evaluation (fd_core.evaluation_noise).
        fixed: name -> the entries not to move (fd_core.Fixed).
    """
    oracle = OracleDifferences(net, X64, y64, noise64)
    out: dict[str, FDResult] = {}
    for offset, name in enumerate(names):
        if mode == "full":
            out[name] = oracle.full(name, sigma[name], fixed.get(name))
        else:
            V = random_directions(tuple(oracle.base(name).shape), directions, seed=seed + 1009 * offset)
            out[name] = oracle.directional(name, V, sigma[name], fixed.get(name))
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
