"""Finite differences for MLPs, fast: the layer and row structure of eq. (1) does most of the work.

The same differences as every path (refbp.verify.fd_core: steps, moves, the +2h evaluation for
the error estimate, excluded pieces, chunks), for networks whose every layer is a = f(x W^T + b)
row by row (``Layer.row_map``: Dense), evaluated with the same oracle functions
(torch.nn.functional.linear, each activation's ``torch_fn``, the loss's ``torch_fn``), but
arranged so that no perturbed copy runs the whole network:

- perturbing W(l)[j, k] (or b(l)[j]) only adds delta * a(l-1)[:, k] (or delta) to column j of
  z(l), and changes nothing below layer l; by eq. (1) the changed column j of a(l) then moves
  z(l+1) by an outer product, with no matrix product at layer l+1 (``run_from_column``);
- perturbing entry (n, k) of X, z(l) or a(l) only changes row n of every later layer: the
  observations of a batch go through an MLP independently (``run_rows_from``).

P perturbed copies run as one batched pass (P, N, d); this module only says how to evaluate
them (an evaluator per tensor), fd_core moves the entries and chunks the copies.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F
from torch import Tensor

from ..nn.network import Network
from ..nn.pieces import Pieces
from .fd_core import (
    CHUNK_BYTES,
    MOVES,
    EntryEvaluator,
    FDResult,
    Fixed,
    MoveEvaluator,
    PieceRecorder,
    PieceWatcher,
    Settle,
    Sigma,
    directional_differences,
    full_differences,
    random_directions,
)

__all__ = ["MLPDifferences", "has_row_structure", "mlp_finite_differences"]


def has_row_structure(net: Network) -> bool:
    """True when every layer is a = f(x W^T + b) row by row (``Layer.row_map``) and no
    parameter is tied: observations independent, layers as eqs. (1)-(2), each W moved alone."""
    return bool(net.layers) and not net.ties and all(layer.row_map() is not None for layer in net.layers)


@dataclass
class _Evaluated:
    """J and whether a piece boundary was crossed, for P perturbed copies."""

    J: Tensor  # (P,)
    crossed: Tensor  # (P,) bool


class _Network64:
    """A float64 CPU copy of an MLP: its base forward pass, and batched evaluators of J."""

    def __init__(self, net: Network, X: Tensor, y: Tensor) -> None:
        # float64 on the CPU whatever the network's dtype and device: the reference is the same
        # everywhere, and float16/bfloat16/CUDA networks are checked against it as they are.
        maps = [layer.row_map() for layer in net.layers]
        parts = [m for m in maps if m is not None]
        self.Ws = [W.detach().to(device="cpu", dtype=torch.float64) for W, _, _, _ in parts]
        self.bs = [b.detach().to(device="cpu", dtype=torch.float64) for _, b, _, _ in parts]
        self.fs: list[Callable[[Tensor], Tensor]] = [f for _, _, f, _ in parts]
        self.pieces: list[Pieces | None] = [pieces for _, _, _, pieces in parts]
        self.net = net
        self.weight_decay = float(net.weight_decay)
        self.y = y.detach().to(device="cpu", dtype=torch.float64) if y.is_floating_point() else y.detach().cpu()
        self.L = len(self.Ws)
        # base forward, indexed as in the equations: a[0] = X, z[0] unused
        self.a: list[Tensor] = [X.detach().to(device="cpu", dtype=torch.float64)]
        self.z: list[Tensor] = [self.a[0]]
        self.regions: list[Tensor | None] = [None]
        for i in range(1, self.L + 1):
            pieces = self.pieces[i - 1]
            self.z.append(F.linear(self.a[i - 1], self.Ws[i - 1], self.bs[i - 1]))  # (1), torch.nn.Linear's op
            self.a.append(self.fs[i - 1](self.z[i]))  # (2) by torch's own function
            self.regions.append(pieces.region_of(self.z[i]) if pieces is not None else None)
        self.loss_base = PieceRecorder()
        J_data = float(net.torch_loss(self.a[-1], self.y, self.loss_base))
        self.wd_base = sum(float((W * W).sum()) for W in self.Ws)
        self.J = J_data + 0.5 * self.weight_decay * self.wd_base
        self._batched_loss = torch.func.vmap(self._loss_one)

    # The base point column by column, contiguous, made on first use: full mode moves one column
    # of z(l) per copy and gathers that column from each of these.
    @cached_property
    def z_cols(self) -> list[Tensor]:
        """z_cols[i][j]: column j of z(i)   (d_i, N)."""
        return [t.T.contiguous() for t in self.z]

    @cached_property
    def a_cols(self) -> list[Tensor]:
        """a_cols[i][j]: column j of a(i)   (d_i, N)."""
        return [t.T.contiguous() for t in self.a]

    @cached_property
    def W_cols(self) -> list[Tensor]:
        """W_cols[i][j]: column j of W(i+1)   (d_i, d_(i+1))."""
        return [W.T.contiguous() for W in self.Ws]

    @cached_property
    def region_cols(self) -> list[Tensor | None]:
        """region_cols[i][j]: the piece of f_i each entry of column j of z(i) sits in   (d_i, N)."""
        return [None if r is None else r.T.contiguous() for r in self.regions]

    def _loss_one(self, y_hat: Tensor) -> tuple[Tensor, Tensor]:
        watcher = PieceWatcher(self.loss_base)
        return self.net.torch_loss(y_hat, self.y, watcher), watcher.crossed

    def loss(self, y_hat: Tensor) -> _Evaluated:
        """The data term of J for P outputs (P, N, d_L), with the loss's own torch function."""
        J, crossed = self._batched_loss(y_hat)
        return _Evaluated(J, crossed)

    def crossed_at(self, i: int, z: Tensor, base: Tensor) -> Tensor:
        """(P,) True where a copy's z(i) sits in another piece of f_i than ``base`` (z(i) at the base point)."""
        pieces = self.pieces[i - 1]
        if pieces is None:
            return torch.zeros(z.shape[0], dtype=torch.bool)
        return (pieces.region_of(z) != base).reshape(z.shape[0], -1).any(dim=1)

    def run_from(self, layer: int, *, Z: Tensor | None = None, A: Tensor | None = None) -> _Evaluated:
        """J for P perturbed states: Z, a perturbed z(layer) (P, N, d_layer), or A, a perturbed
        a(layer); the rest of the network runs from there."""
        first, state = (layer, Z) if Z is not None else (layer + 1, A)
        assert state is not None
        crossed = torch.zeros(state.shape[0], dtype=torch.bool)
        for i in range(first, self.L + 1):
            if i > first or Z is None:
                state = F.linear(state, self.Ws[i - 1], self.bs[i - 1])  # (1) z(i) for all P copies   (P, N, d_i)
            region = self.regions[i]
            if region is not None:
                crossed |= self.crossed_at(i, state, region)
            state = self.fs[i - 1](state)  # (2) a(i)   (P, N, d_i)
        out = self.loss(state)
        return _Evaluated(out.J, out.crossed | crossed)

    def run_from_column(self, layer: int, j: Tensor, z_col: Tensor) -> _Evaluated:
        """J for P copies of the network that differ from the base only in column j[p] of
        z(layer), which holds z_col[p] (P, N).

        Only column j of a(layer) changes, so by eq. (1) z(layer+1) moves by the outer product
        (change of that column) W(layer+1)[:, j]^T: no matrix product is needed at layer+1."""
        P, N = z_col.shape
        crossed = torch.zeros(P, dtype=torch.bool)
        region = self.region_cols[layer]
        if region is not None:
            crossed = self.crossed_at(layer, z_col, region[j])
        a_col = self.fs[layer - 1](z_col)  # (P, N) column j of a(layer), one per copy
        if layer == self.L:  # the output itself: copy y_hat and replace column j
            y_hat = self.a[layer].expand(P, N, -1).clone()  # (P, N, d_L)
            y_hat[torch.arange(P), :, j] = a_col
            out = self.loss(y_hat)
            return _Evaluated(out.J, out.crossed | crossed)
        change = a_col - self.a_cols[layer][j]  # (P, N)
        W_col = self.W_cols[layer][j]  # (P, d_{layer+1}) column j of W(layer+1), one per copy
        Z = torch.addcmul(self.z[layer + 1], change.unsqueeze(2), W_col.unsqueeze(1))  # (P, N, d_{layer+1})
        above = self.run_from(layer + 1, Z=Z)
        return _Evaluated(above.J, above.crossed | crossed)

    def run_rows_from(self, layer: int, n: Tensor, *, Z: Tensor | None = None, A: Tensor | None = None) -> _Evaluated:
        """J for P copies of the network that differ from the base only in row n[p] of
        z(layer) (give Z, (P, d_layer)) or of a(layer) (give A).

        Each observation goes through eqs. (1)-(2) on its own, so only row n of every later
        z(i), a(i) changes: the P rows run alone, then replace row n of a copy of y_hat."""
        first, state = (layer, Z) if Z is not None else (layer + 1, A)
        assert state is not None
        P = state.shape[0]
        crossed = torch.zeros(P, dtype=torch.bool)
        for i in range(first, self.L + 1):
            if i > first or Z is None:
                state = F.linear(state, self.Ws[i - 1], self.bs[i - 1])  # (1) row n of z(i)   (P, d_i)
            region = self.regions[i]
            if region is not None:
                crossed |= self.crossed_at(i, state, region[n])
            state = self.fs[i - 1](state)  # (2) row n of a(i)   (P, d_i)
        y_hat = self.a[-1].expand(P, *self.a[-1].shape).clone()  # (P, N, d_L)
        y_hat[torch.arange(P), n] = state
        out = self.loss(y_hat)
        return _Evaluated(out.J, out.crossed | crossed)


class MLPDifferences:
    """An MLP at the float64 CPU point (X, y), ready to take finite differences of J tensor by
    tensor through its row and column structure: the base forward pass is done once."""

    def __init__(self, net: Network, X: Tensor, y: Tensor) -> None:
        self.net64 = _Network64(net, X, y)
        self.J0 = self.net64.J
        N = X.shape[0]
        width = max([X.shape[1], *(W.shape[0] for W in self.net64.Ws)])
        self.chunk = len(MOVES) * max(1, CHUNK_BYTES // (2 * 8 * N * width * len(MOVES)))  # copies per batch

    def base(self, name: str) -> Tensor:
        """The tensor called ``name`` at the base point, float64."""
        kind, layer = _parse(name)
        return _tensor_of(self.net64, kind, layer)

    def entry_evaluator(self, name: str) -> EntryEvaluator:
        """J for copies that each move one entry of ``name``."""
        kind, layer = _parse(name)
        return _entry_evaluator(self.net64, kind, layer, _tensor_of(self.net64, kind, layer))

    def full(self, name: str, sigma: Sigma, fixed: Fixed | None, settle: Settle | None = None) -> FDResult:
        """Every entry of ``name`` (fd_core.full_differences)."""
        return full_differences(self.entry_evaluator(name), self.base(name), self.J0, self.chunk, sigma, fixed, settle)

    def directional(
        self, name: str, V: Tensor, sigma: Sigma, fixed: Fixed | None, settle: Settle | None = None
    ) -> FDResult:
        """The directions V (k, *shape) of ``name`` (fd_core.directional_differences)."""
        kind, layer = _parse(name)
        base = _tensor_of(self.net64, kind, layer)
        move = _move_evaluator(self.net64, kind, layer, base)
        return directional_differences(move, base, V, self.J0, self.chunk, sigma, fixed, settle)


def mlp_finite_differences(
    net: Network,
    X: Tensor,
    y: Tensor,
    names: list[str],
    *,
    mode: str = "full",
    directions: int = 8,
    seed: int = 0,
    sigma: Mapping[str, float] | None = None,
    fixed: Mapping[str, Fixed] | None = None,
) -> dict[str, FDResult]:
    """Finite differences of J for the tensors named (keys as in ``as_dict()``), for a network
    with ``has_row_structure``, every difference with its error estimate.

    Args:
        mode: "full" (every entry) or "directional" (``directions`` random signed vectors).
        seed: seeds the directions; the same seed gives the same directions.
        sigma: name -> how far rounding may move one evaluation of J with that tensor moved
            (fd_core.evaluation_noise); none given, 0.
        fixed: name -> entries not to move (fd_core.Fixed); none given, none.
    """
    mlp = MLPDifferences(net, X, y)
    out: dict[str, FDResult] = {}
    for offset, name in enumerate(names):
        noise = (sigma or {}).get(name, 0.0)
        if mode == "full":
            out[name] = mlp.full(name, noise, (fixed or {}).get(name))
        else:
            V = random_directions(tuple(mlp.base(name).shape), directions, seed=seed + 1009 * offset)
            out[name] = mlp.directional(name, V, noise, (fixed or {}).get(name))
    return out


def _parse(name: str) -> tuple[str, int]:
    """("W", 2) for "W2"; ("X", 0) for "X"."""
    return name[0], (0 if name == "X" else int(name[1:]))


def _tensor_of(net64: _Network64, kind: str, layer: int) -> Tensor:
    if kind == "W":
        return net64.Ws[layer - 1]
    if kind == "b":
        return net64.bs[layer - 1]
    if kind == "z":
        return net64.z[layer]
    return net64.a[layer]  # "a" and "X" (= a(0))


def _decay(net64: _Network64, change: Tensor) -> Tensor:
    """lambda/2 ||W||^2 for copies whose squared norm changed by ``change`` (P,)."""
    return 0.5 * net64.weight_decay * (net64.wd_base + change)


def _entry_evaluator(net64: _Network64, kind: str, layer: int, base: Tensor) -> EntryEvaluator:
    """J for copies that each move one entry of the tensor (full mode).

    No copy runs the whole network: moving W(l)[j, k] or b(l)[j] changes only column j of
    z(l) (``run_from_column``), and moving entry (n, k) of X, z(l) or a(l) changes only row n
    of every later layer (``run_rows_from``)."""
    width = base.shape[-1]  # d_{l-1} for W(l), d_l for z(l), a(l); 1 entry per row for b(l)

    def evaluate(entries: Tensor, steps_p: Tensor) -> tuple[Tensor, Tensor]:  # (P,) flat indices, (P,) moves
        if kind == "W":  # W(l)[j, k]: by (1), column j of z(l) moves by step * a(l-1)[:, k]
            j, k = entries // width, entries % width
            z_col = torch.addcmul(net64.z_cols[layer][j], steps_p.unsqueeze(1), net64.a_cols[layer - 1][k])  # (P, N)
            ev = net64.run_from_column(layer, j, z_col)
            w = base.reshape(-1)[entries]  # ||W + delta||^2 - ||W||^2 = 2 w delta + delta^2
            return ev.J + _decay(net64, 2 * w * steps_p + steps_p * steps_p), ev.crossed
        if kind == "b":  # b(l)[j]: by (1), column j of z(l) moves by the step itself
            z_col = net64.z_cols[layer][entries] + steps_p.unsqueeze(1)  # (P, N)
            ev = net64.run_from_column(layer, entries, z_col)
            return ev.J + _decay(net64, torch.zeros_like(steps_p)), ev.crossed
        # entry (n, k) of X, z(l) or a(l): only row n of that tensor moves
        rows, k = entries // width, entries % width
        moved = base[rows].clone()  # (P, width) row n of the tensor, one per copy
        moved[torch.arange(entries.numel()), k] += steps_p
        ev = net64.run_rows_from(layer, rows, Z=moved) if kind == "z" else net64.run_rows_from(layer, rows, A=moved)
        return ev.J + _decay(net64, torch.zeros_like(steps_p)), ev.crossed

    return evaluate


def _move_evaluator(net64: _Network64, kind: str, layer: int, base: Tensor) -> MoveEvaluator:
    """J for copies that each move the whole tensor by a delta (directional mode): only layer
    l onwards runs."""

    def evaluate(delta: Tensor) -> tuple[Tensor, Tensor]:  # (P, *shape)
        change = torch.zeros(delta.shape[0], dtype=torch.float64)
        if kind == "W":  # z(l) + a(l-1) dW^T: only layer l onwards changes
            if net64.weight_decay:
                flat = delta.reshape(delta.shape[0], -1)
                change = 2 * flat @ base.reshape(-1) + (flat * flat).sum(dim=1)  # ||W + delta||^2 - ||W||^2
            ev = net64.run_from(layer, Z=net64.z[layer] + torch.matmul(net64.a[layer - 1], delta.transpose(1, 2)))
        elif kind == "b":
            ev = net64.run_from(layer, Z=net64.z[layer] + delta.unsqueeze(1))  # (P, N, d_l)
        elif kind == "z":
            ev = net64.run_from(layer, Z=net64.z[layer] + delta)
        else:  # "a" or "X"
            ev = net64.run_from(layer, A=net64.a[layer] + delta)
        return ev.J + _decay(net64, change), ev.crossed

    return evaluate
