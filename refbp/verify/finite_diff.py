"""Central finite differences in float64: the reference that assumes nothing but J itself.

    dJ/dp_k   ~  D_k = (J(p + h_k e_k) - J(p - h_k e_k)) / (2 h_k)       full mode, every entry k
    v . dJ/dp ~  D_v = (J(p + h v) - J(p - h v)) / (2 h)                  directional mode, k vectors v

Steps are FD_STEP * max(1, |p_k|) (refbp.verify.tolerances.FD_STEP says why). Whatever the dtype
under test, differences are taken on a float64 CPU copy of the network, evaluated by its torch
oracle (``Network.torch_J``), never by refbp's manual forward.

**How far to trust a difference.** D(h) errs by c h^2 + O(h^4), c a sixth of J's third derivative
(truncation), plus rounding. The same difference with twice the step, D(2h), from two more
evaluations at p + 2h and p - 2h, errs by 4 c h^2, so ``error`` = |D(2h) - D(h)| / 3 estimates
D(h)'s error (Richardson). Where J curves sharply on the scale of the step (a confident sigmoid
under binary cross-entropy, a normalisation of two nearly equal numbers) the two disagree, the
estimate is large, and the comparison can tell "finite differences cannot resolve this entry"
from "the gradient is wrong" (refbp.verify.compare).

**Pieces.** A perturbation that moves any input of a piecewise function (relu at 0, softplus at
its threshold, bce's clamps; refbp.nn.pieces) into another piece, or out of a loss's domain,
makes the difference meaningless: the entry (or direction) is *excluded*, neither verified nor
contradicted. So is every difference while some input is *unresolvable* (bce where
p (1 - p) < 1e-12, or p within 1e-4 of 0 or 1: refbp.nn.pieces).

Any network: P perturbed copies of J are evaluated as one ``torch.func.vmap`` over the oracle,
so layers that mix the batch (BatchNorm) stay exact. MLPs take a faster, layer- and
row-structured path (refbp.verify.fd_mlp). ``function_finite_differences`` handles any
function of named arrays (NumPy or torch), one call per evaluation.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..nn.keys import Key
from ..nn.layer import Params, Tap
from ..nn.network import Network
from ..nn.pieces import SMOOTH_FRACTION, Pieces
from .reference import oracle_point
from .tolerances import FD_STEP

__all__ = [
    "CHUNK_BYTES",
    "MOVES",
    "NOISE_PROBES",
    "FDResult",
    "PieceRecorder",
    "PieceWatcher",
    "evaluation_noise",
    "function_finite_differences",
    "moves",
    "network_finite_differences",
    "random_directions",
    "steps",
]

CHUNK_BYTES = 4 * 2**20
"""Memory for one batch of perturbed activations: 4 MiB, so a check needs little memory
whatever the network's size, and each batch stays in the CPU's cache (2 to 3 times faster than
64 MiB batches on a 1 MiB-L2 machine: benchmarks/, item 3)."""


@dataclass
class FDResult:
    """Finite differences for one tensor.

    Attributes:
        values: full mode: D, the tensor's shape. Directional: (k,) estimates of v_k . dJ/dp.
        error: like ``values``: the estimated truncation error of each difference, >= 0.
        excluded: bool, like ``values``: differences whose perturbation left a piece or the domain.
        directions: directional mode only: (k, *shape) float64, the v_k used.
        J: the loss at the unperturbed point, float64.
    """

    values: Tensor
    error: Tensor
    excluded: Tensor
    directions: Tensor | None
    J: float


def random_directions(shape: tuple[int, ...], k: int, *, seed: int) -> Tensor:
    """k signed random directions (k, *shape), float64, each scaled to max |v| = 1.

    Gaussian entries, so signs and sizes vary: unlike one fixed all-positive direction, a
    wrong gradient cannot stay orthogonal to all of them except on a set of probability 0."""
    generator = torch.Generator().manual_seed(seed)
    V = torch.randn((k, *shape), dtype=torch.float64, generator=generator)
    norms = V.reshape(k, -1).abs().amax(dim=1).clamp_min(1e-300)
    return V / norms.reshape((k,) + (1,) * len(shape))


def steps(p: Tensor) -> tuple[Tensor, Tensor]:
    """Exactly representable steps up and down for each entry: h+ = (p + h) - p, h- = p - (p - h)."""
    h = FD_STEP * p.abs().clamp_min(1.0)
    return (p + h) - p, p - (p - h)


MOVES = (1.0, -1.0, 2.0, -2.0)
"""The evaluations of one difference, in steps h: D(h) from +h and -h, D(2h) from +2h and -2h."""


def moves(h_up: Tensor, h_down: Tensor) -> Tensor:
    """The four perturbations of each of P entries, (4 P,): +h, -h, +2h, -2h, block by block."""
    return torch.cat([h_up, -h_down, 2.0 * h_up, -2.0 * h_down])


def combine_evaluations(J: Tensor, h_up: Tensor, h_down: Tensor, sigma: float = 0.0) -> tuple[Tensor, Tensor]:
    """(D(h), its error estimate) from J (4, P) at the MOVES, for P differences: truncation
    |D(2h) - D(h)| / 3, plus rounding 2 sigma / (h+ + h-) where each J is off by up to sigma."""
    J_up, J_down, J_up2, J_down2 = J
    D1 = (J_up - J_down) / (h_up + h_down)
    D2 = (J_up2 - J_down2) / (2.0 * (h_up + h_down))
    truncation = (D2 - D1).abs() / 3.0  # D(2h) - D(h) = 3 c h^2, where D(h) - dJ/dp = c h^2
    return D1, truncation + 2.0 * sigma / (h_up + h_down)


def evaluation_noise(
    net: Network, X64: Tensor, y64: Tensor, noise64: Mapping[tuple[int, ...], Tensor], names: list[str]
) -> dict[str, float]:
    """name -> sigma: how far rounding alone may move an evaluation of J with that tensor moved.

    J+ and J- share every computation upstream of the tensor moved, and its rounding: that part
    cancels in J+ - J-. What differs is rounded differently: sigma is the largest |J' - J| over
    NOISE_PROBES evaluations J' in which that tensor (the input, for X) and every intermediate
    after it is multiplied by (1 + eps u), u ~ U(-1, 1), a float64 rounding at each step.
    Usually sigma ~ eps |J| and negligible; where the forward pass cancels (a LayerNorm of a row
    constant up to 1e-5 subtracts numbers that agree to 5 digits) it is orders larger, and the
    difference (J+ - J-) / 2h inherits sigma / h (``combine_evaluations``)."""
    order = {name: i for i, name in enumerate(net.names())}
    params = Params(net.oracle_params(dtype=torch.float64, device=X64.device), net.ties)
    generator = torch.Generator().manual_seed(0)
    out: dict[str, float] = {}
    with torch.no_grad():
        J0 = float(net.torch_J(X64, y64, params, noise64))
        for name in names:
            start = order.get(name, 0)
            spread = 0.0
            for _ in range(NOISE_PROBES):
                tap = _Rounding(generator, {key for key, i in order.items() if i >= start})
                X_in = tap.jitter(X64) if name == "X" and X64.is_floating_point() else X64
                J = float(net.torch_J(X_in, y64, params, noise64, tap))
                if math.isfinite(J):
                    spread = max(spread, abs(J - J0))
            out[name] = spread
    return out


class _Rounding(Tap):
    """Multiplies the intermediates named in ``keys`` by (1 + eps u), u ~ U(-1, 1) per entry:
    a float64 rounding at each of those steps. A probability stays inside its loss's domain."""

    EPS = float(torch.finfo(torch.float64).eps)

    def __init__(self, generator: torch.Generator, keys: set[str]) -> None:
        self.generator = generator
        self.keys = keys

    def jitter(self, t: Tensor) -> Tensor:
        u = torch.rand(t.shape, dtype=torch.float64, generator=self.generator).mul_(2.0).sub_(1.0)
        return t * (1.0 + self.EPS * u.to(t.device))

    def intermediate(self, key: Key, t: Tensor) -> Tensor:
        return self.jitter(t) if str(key) in self.keys and t.is_floating_point() else t

    def within(self, t: Tensor, domain: tuple[float, float]) -> Tensor:
        return t.clamp(*domain)


NOISE_PROBES = 4
"""Jittered evaluations of J per check (refbp.verify.tolerances.CONDITIONING_PROBES says why 4)."""


# ---- pieces: noticing a perturbation that crosses a boundary -----------------------------
class PieceRecorder(Tap):
    """The base run: records, in call order, which piece every piecewise input is in and
    whether any of its entries is unresolvable; keeps intermediates."""

    def __init__(self) -> None:
        self.regions: list[Tensor] = []
        self.unresolvable: list[bool] = []
        self.scales: list[tuple[Tensor, Tensor] | None] = []
        self.inside: list[Tensor] = []
        self.values: dict[Key, Tensor] = {}

    def intermediate(self, key: Key, t: Tensor) -> Tensor:
        self.values[key] = t
        return t

    def piecewise(self, t: Tensor, pieces: Pieces) -> None:
        self.regions.append(pieces.region_of(t))
        self.unresolvable.append(pieces.unresolvable is not None and bool(pieces.unresolvable(t).any()))
        self.scales.append(None if pieces.scale is None else (t, pieces.scale(t)))

    def within(self, t: Tensor, domain: tuple[float, float]) -> Tensor:
        self.inside.append(t)
        return t


class PieceWatcher(Tap):
    """A perturbed run (under vmap): flags ``crossed`` when an input of a piecewise function is
    in another piece than at the base, leaves a domain, or was unresolvable at the base; adds
    ``delta`` to the intermediate ``target``."""

    def __init__(self, base: PieceRecorder, target: Key | None = None, delta: Tensor | None = None) -> None:
        self.base, self.target, self.delta = base, target, delta
        self.crossed = torch.zeros((), dtype=torch.bool)
        self._piece = 0
        self._domain = 0

    def intermediate(self, key: Key, t: Tensor) -> Tensor:
        if key == self.target:
            assert self.delta is not None
            return t + self.delta
        return t

    def piecewise(self, t: Tensor, pieces: Pieces) -> None:
        k = self._piece
        self._piece += 1
        self.crossed = self.crossed | (pieces.region_of(t) != self.base.regions[k]).any()
        if self.base.unresolvable[k]:  # no difference can resolve it, whatever this one moved
            self.crossed = self.crossed | torch.ones((), dtype=torch.bool)
        scaled = self.base.scales[k]
        if scaled is not None:  # moved too far along a normalisation's curve
            t0, scale = scaled
            self.crossed = self.crossed | ((t - t0).abs() > SMOOTH_FRACTION * scale).any()

    def within(self, t: Tensor, domain: tuple[float, float]) -> Tensor:
        t0 = self.base.inside[self._domain]
        self._domain += 1
        outside = (t < domain[0]) | (t > domain[1])
        self.crossed = self.crossed | outside.any()
        return torch.where(outside, t0, t)  # evaluate at the base value instead; flagged anyway


# ---- any network, through its oracle --------------------------------------------------------
def network_finite_differences(
    net: Network,
    X: Tensor,
    y: Tensor,
    names: list[str],
    *,
    noise: Mapping[tuple[int, ...], Tensor] | None = None,
    mode: str = "full",
    directions: int = 8,
    seed: int = 0,
) -> dict[str, FDResult]:
    """Finite differences of J for the tensors named (keys as in ``backward(...).as_dict()``).

    Args:
        noise: the dropout keep-masks of the forward pass being checked (``cache.noise``).
        mode: "full" (every entry) or "directional" (``directions`` random signed vectors).
        seed: seeds the directions; the same seed gives the same directions.
    """
    if mode not in ("full", "directional"):
        raise ValueError(f"mode={mode!r}; expected 'full' or 'directional'")
    from .fd_mlp import is_plain_mlp, mlp_finite_differences

    cpu = torch.device("cpu")
    X64, y64, noise64 = oracle_point(net, X, y, noise or {}, dtype=torch.float64, device=cpu)
    sigma = evaluation_noise(net, X64, y64, noise64, names)
    if is_plain_mlp(net):
        return mlp_finite_differences(net, X, y, names, mode=mode, directions=directions, seed=seed, sigma=sigma)
    params = net.oracle_params(dtype=torch.float64, device=cpu)
    record = PieceRecorder()
    with torch.no_grad():
        J0 = float(net.torch_J(X64, y64, Params(params, net.ties), noise64, record))
    per_copy = 8 * 3 * sum(t.numel() for t in record.values.values()) + 8 * X64.numel()
    chunk = max(1, CHUNK_BYTES // max(1, per_copy))

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
            out[name] = _full(J_of, base, J0, chunk, sigma[name])
        else:
            V = random_directions(tuple(base.shape), directions, seed=seed + 1009 * offset)
            out[name] = _directional(_batched(J_of, chunk), base, V, J0, sigma[name])
    return out


def _batched(fn: Callable[..., tuple[Tensor, Tensor]], chunk: int) -> Callable[..., tuple[Tensor, Tensor]]:
    """fn over P copies: arguments with a leading P dimension -> (J (P,), crossed (P,)), by
    torch.func.vmap over chunks of ``chunk`` copies."""
    vmapped = torch.func.vmap(fn)

    def evaluate(*batched: Tensor) -> tuple[Tensor, Tensor]:
        Js, crossed = [], []
        with torch.no_grad(), warnings.catch_warnings():
            # an op without a batching rule falls back to a loop: slower, still exact
            warnings.filterwarnings("ignore", message=".*batching rule.*")
            for start in range(0, batched[0].shape[0], chunk):
                J, c = vmapped(*(b[start : start + chunk] for b in batched))
                Js.append(J)
                crossed.append(c)
        return torch.cat(Js), torch.cat(crossed)

    return evaluate


def _full(
    J_of: Callable[[Tensor], tuple[Tensor, Tensor]], base: Tensor, J0: float, chunk: int, sigma: float
) -> FDResult:
    """Every entry moved by +h, -h, +2h and -2h: 4 evaluations per entry, batched. Each copy's
    perturbation is built inside the vmapped function from (entry, move), so no (P, n) tensor
    of perturbations is ever stored."""
    n = base.numel()
    positions = torch.arange(n)

    def J_of_entry(entry: Tensor, move: Tensor) -> tuple[Tensor, Tensor]:
        delta = (positions == entry).to(torch.float64) * move  # move e_entry
        return J_of(delta.reshape(base.shape))

    evaluate = _batched(J_of_entry, chunk)
    h_up, h_down = steps(base.reshape(-1))  # (n,)
    entries = positions.repeat(len(MOVES))  # (4n,)  +h, then -h, +2h, -2h
    J, crossed = evaluate(entries, moves(h_up, h_down))
    values, error = combine_evaluations(J.reshape(4, n), h_up, h_down, sigma)
    excluded = crossed.reshape(4, n).any(dim=0)
    shape = base.shape
    return FDResult(values.reshape(shape), error.reshape(shape), excluded.reshape(shape), None, J0)


def _directional(
    evaluate: Callable[..., tuple[Tensor, Tensor]], base: Tensor, V: Tensor, J0: float, sigma: float
) -> FDResult:
    """Each direction v moved by +h v, -h v, +2h v and -2h v."""
    k = V.shape[0]
    h = FD_STEP * max(1.0, float(base.abs().max()) if base.numel() else 1.0)
    J, crossed = evaluate(torch.cat([s * h * V for s in MOVES]))
    h_k = torch.full((k,), h, dtype=torch.float64)
    values, error = combine_evaluations(J.reshape(4, k), h_k, h_k, sigma)
    excluded = crossed.reshape(4, k).any(dim=0)
    return FDResult(values, error, excluded, V, J0)


# ---- any function of named arrays ------------------------------------------------------
def function_finite_differences(
    loss: Callable[[dict[str, Any]], float],
    params: Mapping[str, Any],
    *,
    mode: str = "full",
    directions: int = 8,
    seed: int = 0,
) -> dict[str, FDResult]:
    """Finite differences of a scalar function of named arrays (NumPy or torch).

    ``loss`` is called with a dict like ``params`` in which one array has been perturbed; the
    arrays passed are float64 and of the type given (NumPy stays NumPy, torch stays torch, on
    its device). Full mode makes 4 calls per entry, directional mode 4 per direction and
    array: use directional for parameter vectors of more than a few thousand entries. Nothing
    is known of the function's pieces, so no difference is excluded; a non-finite J makes
    the difference non-finite, and the comparison counts it as unverified.
    """
    if mode not in ("full", "directional"):
        raise ValueError(f"mode={mode!r}; expected 'full' or 'directional'")
    base = {name: _as_float64_tensor(value) for name, value in params.items()}

    def call(name: str, new_value: Tensor) -> float:
        args = {key: _like(params[key], new_value if key == name else base[key]) for key in params}
        return float(loss(args))

    J0 = float(loss({key: _like(params[key], base[key]) for key in params}))
    out: dict[str, FDResult] = {}
    for offset, (name, p) in enumerate(base.items()):
        if mode == "full":
            flat = p.reshape(-1)
            h_up, h_down = steps(flat)
            n = flat.numel()
            steps_k = moves(h_up, h_down).reshape(4, n)
            J = torch.empty(4, n, dtype=torch.float64)
            for k in range(n):
                for row in range(4):
                    moved = flat.clone()
                    moved[k] += steps_k[row, k]
                    J[row, k] = call(name, moved.reshape(p.shape))
            values, error = combine_evaluations(J, h_up, h_down)
            excluded = torch.zeros(n, dtype=torch.bool)
            out[name] = FDResult(values.reshape(p.shape), error.reshape(p.shape), excluded.reshape(p.shape), None, J0)
        else:
            V = random_directions(tuple(p.shape), directions, seed=seed + 1009 * offset)
            h = FD_STEP * max(1.0, float(p.abs().max()) if p.numel() else 1.0)
            J = torch.tensor(
                [[call(name, p + s * h * V[k]) for k in range(directions)] for s in MOVES], dtype=torch.float64
            )
            h_k = torch.full((directions,), h, dtype=torch.float64)
            values, error = combine_evaluations(J, h_k, h_k)
            out[name] = FDResult(values, error, torch.zeros(directions, dtype=torch.bool), V, J0)
    return out


def _as_float64_tensor(value: Any) -> Tensor:
    if isinstance(value, Tensor):
        return value.detach().to(device="cpu", dtype=torch.float64)
    return torch.as_tensor(np.asarray(value, dtype=np.float64))


def _like(original: Any, value: Tensor) -> Any:
    """``value`` as the caller's type: a float64 torch tensor on the original device, or NumPy."""
    if isinstance(original, Tensor):
        return value.to(original.device)
    return value.numpy().copy()
