"""The finite-difference core: steps, moves, the Richardson error estimate, piece watching and
chunking, under every path that takes differences of a network's J (refbp.verify.finite_diff
dispatches between them).

    dJ/dp_k   ~  D_k = (J(p + h_k e_k) - J(p - h_k e_k)) / (2 h_k)       full mode, every entry k
    v . dJ/dp ~  D_v = (J(p + h v) - J(p - h v)) / (2 h)                  directional mode, k vectors v

Steps are FD_STEP * max(1, |p_k|) (refbp.verify.tolerances.FD_STEP says why). Whatever the dtype
under test, differences are taken in float64 on the CPU, by the network's torch oracle, never by
refbp's manual forward.

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

**Fixed entries.** An entry whose gradient a layer defines as zero (Embedding's padding row,
``Layer.fixed_gradients``) is never moved: its reference is exactly 0. For a directional
difference the moved part of v leaves those entries out, and v . g still includes them, so a
gradient that is not zero there disagrees.

A path supplies only how to evaluate J for a batch of perturbed copies; ``full_differences`` and
``directional_differences`` here do the rest, for every path alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from ..nn.graph import GraphNetwork
from ..nn.keys import Key
from ..nn.layer import Params, Tap
from ..nn.network import Network
from ..nn.pieces import SMOOTH_FRACTION, Pieces
from .tolerances import FD_STEP

__all__ = [
    "CHUNK_BYTES",
    "MOVES",
    "NOISE_PROBES",
    "EntryEvaluator",
    "FDResult",
    "Fixed",
    "MoveEvaluator",
    "PieceRecorder",
    "PieceWatcher",
    "Settle",
    "Sigma",
    "combine_evaluations",
    "directional_differences",
    "evaluation_noise",
    "first_layer",
    "full_differences",
    "moves",
    "oracle_J_from",
    "random_directions",
    "steps",
]

EntryEvaluator = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
"""(entries (P,) flat indices, moves (P,) signed steps) -> (J (P,), crossed (P,) bool): J with
entry ``entries[p]`` moved by ``moves[p]``, one copy per p."""

MoveEvaluator = Callable[[Tensor], tuple[Tensor, Tensor]]
"""deltas (P, *shape) -> (J (P,), crossed (P,) bool): J with the tensor moved by ``deltas[p]``."""


@dataclass(frozen=True)
class Fixed:
    """Entries of one tensor that finite differences must not move.

    Attributes:
        mask: bool, the tensor's shape: True where the entry is fixed.
        zero: True when the layer defines their gradient as zero (the reference is then exactly
            0); False when a tie makes that convention apply to one use only (an Embedding's
            padding row shared with an output layer): the entries are then excluded, left to
            autograd.
    """

    mask: Tensor
    zero: bool = True


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
        evaluations: the evaluations of J this tensor cost (moves, and the rounding probes when
            its differences needed ``sigma``).
    """

    values: Tensor
    error: Tensor
    excluded: Tensor
    directions: Tensor | None
    J: float
    evaluations: int = 0


def random_directions(shape: tuple[int, ...], k: int, *, seed: int) -> Tensor:
    """k signed random directions (k, *shape), float64, each scaled to max |v| = 1.

    Entries uniform on [-1, 1), so signs and sizes vary: unlike one fixed all-positive direction
    (or signs alone, +-1, to which a wrong gradient such as (e, -e) can be orthogonal half the
    time), a wrong gradient cannot stay orthogonal to all of them except on a set of probability
    0. Uniform rather than Gaussian: a quarter of the time to draw (a fifth of a directional
    check of 1e5 parameters went to torch.randn)."""
    generator = torch.Generator().manual_seed(seed)
    V = torch.empty((k, *shape), dtype=torch.float64).uniform_(-1.0, 1.0, generator=generator)  # 2 u - 1
    rows = V.reshape(k, -1)
    norms = torch.maximum(rows.amax(dim=1), rows.amin(dim=1).neg_()).clamp_min_(1e-300)  # max |v|   (k,), no |V| copy
    return V.div_(norms.reshape((k,) + (1,) * len(shape)))


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


def oracle_J_from(
    net: Network, first: int, x: Tensor, y: Tensor, p: Params, noise: Mapping[tuple[int, ...], Tensor], tap: Tap
) -> Tensor:
    """J by the oracle from top-level layer ``first`` on, given its input x = a(first - 1):
    ``Network.torch_J`` with the layers below ``first`` skipped. A copy that moves nothing below
    layer ``first`` has the base run's a(first - 1) there, so the layers below need not run
    again; with first = 1 and x = X it is torch_J itself (a test holds them equal)."""
    if first == 1:  # the whole oracle, whatever its shape (a graph network's nodes read several inputs)
        return net.torch_J(x, y, p, noise, tap)
    for l in range(first, len(net.layers) + 1):
        x = tap.intermediate(Key.at("a", (l,)), net.layers[l - 1].torch_forward(x, p, noise, tap, (l,)))
    J = net.torch_loss(x, y, tap)
    if net.weight_decay:
        decayed = [p(key.layer, key.kind) for key in net.decayed_keys()]
        J = J + 0.5 * net.weight_decay * sum((W * W).sum() for W in decayed)
    return J


def evaluation_noise(
    net: Network,
    X64: Tensor,
    y64: Tensor,
    noise64: Mapping[tuple[int, ...], Tensor],
    names: list[str],
    *,
    record: PieceRecorder | None = None,
) -> dict[str, float]:
    """name -> sigma: how far rounding alone may move an evaluation of J with that tensor moved.

    J+ and J- share every computation upstream of the tensor moved, and its rounding: that part
    cancels in J+ - J-. What differs is rounded differently: sigma is the largest |J' - J| over
    NOISE_PROBES evaluations J' in which that tensor (the input, for X) and every intermediate
    after it is multiplied by (1 + eps u), u ~ U(-1, 1), a float64 rounding at each step.
    Usually sigma ~ eps |J| and negligible; where the forward pass cancels (a LayerNorm of a row
    constant up to 1e-5 subtracts numbers that agree to 5 digits) it is orders larger, and the
    difference (J+ - J-) / 2h inherits sigma / h (``combine_evaluations``). Given the base run's
    ``record``, each probe starts at the tensor's first layer (``first_layer``)."""
    order = {name: i for i, name in enumerate(net.names())}
    params = Params(net.oracle_params(dtype=torch.float64, device=X64.device), net.ties)
    generator = torch.Generator().manual_seed(0)
    out: dict[str, float] = {}
    with torch.no_grad():
        J0 = float(net.torch_J(X64, y64, params, noise64))
        for name in names:
            start = order.get(name, 0)
            first = 1 if record is None or name == "X" else first_layer(net, name)
            x = X64 if first == 1 else record.values[Key("a", (first - 1,))]  # type: ignore[union-attr]
            spread = 0.0
            for _ in range(NOISE_PROBES):
                tap = _Rounding(generator, {key for key, i in order.items() if i >= start})
                x_in = tap.jitter(x) if name == "X" and x.is_floating_point() else x
                J = float(oracle_J_from(net, first, x_in, y64, params, noise64, tap))
                if math.isfinite(J):
                    spread = max(spread, abs(J - J0))
            out[name] = spread
    return out


def first_layer(net: Network, name: str) -> int:
    """The first top-level layer that moving tensor ``name`` changes: its own (a parameter tied
    to an earlier layer's: that layer's), 1 for X. Every copy that moves it runs from there on."""
    if name == "X" or isinstance(net, GraphNetwork):  # a graph's nodes are not a chain: run it whole
        return 1
    key = Key.parse(name)
    if not key.layer:
        return 1
    tied = {key, net.ties.get(key, key)}
    uses = [k for k, shared in net.ties.items() if shared in tied] + list(tied)
    return min(k.layer[0] for k in uses if k.layer)


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
    whether any of its entries is unresolvable; keeps intermediates, and ``marks``: after
    top-level layer l, how many pieces and domains had been recorded (where a run that starts
    at layer l + 1 takes up the count: ``PieceWatcher(start=marks[l])``)."""

    def __init__(self) -> None:
        self.regions: list[Tensor] = []
        self.unresolvable: list[bool] = []
        self.scales: list[tuple[Tensor, Tensor] | None] = []
        self.inside: list[Tensor] = []
        self.values: dict[Key, Tensor] = {}
        self.marks: dict[int, tuple[int, int]] = {0: (0, 0)}

    def intermediate(self, key: Key, t: Tensor) -> Tensor:
        self.values[key] = t
        if key.kind == "a" and len(key.layer) == 1:  # the output of top-level layer l
            self.marks[key.layer[0]] = (len(self.regions), len(self.inside))
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
    ``delta`` to the intermediate ``target``. A run that starts past the first layers gives
    ``start``, the base's counts of pieces and domains below it (``PieceRecorder.marks``)."""

    def __init__(
        self,
        base: PieceRecorder,
        target: Key | None = None,
        delta: Tensor | None = None,
        start: tuple[int, int] = (0, 0),
    ) -> None:
        self.base, self.target, self.delta = base, target, delta
        self.crossed = torch.zeros((), dtype=torch.bool)
        self._piece, self._domain = start

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


# ---- the two drivers, shared by every path --------------------------------------------------
Settle = Callable[[Tensor, Tensor, Tensor | None, float], Tensor]
"""(values, excluded, directions, J) -> bool like ``values``: the differences D(h) that decide their
entry (or direction) without an error estimate (refbp.verify.rows.fd_settled)."""

Sigma = float | Callable[[], float]
"""The rounding of one evaluation of J (``evaluation_noise``), or how to measure it: measured
only when some difference of the tensor needs its error estimate."""


def full_differences(
    evaluate: EntryEvaluator,
    base: Tensor,
    J0: float,
    chunk: int,
    sigma: Sigma,
    fixed: Fixed | None = None,
    settle: Settle | None = None,
) -> FDResult:
    """Full mode: every entry that is not fixed moved by +h and -h (D(h), the cheap pass), then
    by +2h and -2h (the error estimate) wherever ``settle`` does not decide the entry from D(h)
    alone; with no ``settle``, everywhere. ``chunk`` copies per call of ``evaluate``."""
    n = base.numel()
    h_up, h_down = steps(base.reshape(-1))  # (n,)
    values = torch.zeros(n, dtype=torch.float64)  # a fixed entry's reference: 0
    error = torch.zeros(n, dtype=torch.float64)  # 0 where D(h) decided the entry alone
    excluded = torch.zeros(n, dtype=torch.bool)
    free = torch.arange(n)
    if fixed is not None:
        flat = fixed.mask.reshape(-1).cpu()
        free = free[~flat]
        if not fixed.zero:
            excluded |= flat
    shape = base.shape
    values[free], crossed = _entry_pass(evaluate, free, h_up, h_down, 1.0, chunk)  # D(h)
    excluded[free] |= crossed
    evaluations = 2 * free.numel()
    cheap = torch.ones(n, dtype=torch.bool)  # entries without an error estimate
    pending = (
        free
        if settle is None
        else _unsettled(free, settle(values.reshape(shape), excluded.reshape(shape), None, J0), cheap, excluded)
    )
    noise: float | None = None
    while pending.numel():
        if noise is None:
            noise, cost = _measured(sigma)
            evaluations += cost
        D2, crossed = _entry_pass(evaluate, pending, h_up, h_down, 2.0, chunk)  # D(2h)
        h = h_up[pending] + h_down[pending]
        # D(2h) - D(h) = 3 c h^2, where D(h) - dJ/dp = c h^2; rounding: 2 sigma / (h+ + h-)
        error[pending] = (D2 - values[pending]).abs() / 3.0 + 2.0 * noise / h
        excluded[pending] |= crossed
        cheap[pending] = False
        evaluations += 2 * pending.numel()
        if settle is None:
            break
        # an entry excluded at +-2h can lower the scale, and with it the allowance: decide again
        pending = _unsettled(free, settle(values.reshape(shape), excluded.reshape(shape), None, J0), cheap, excluded)
    return FDResult(values.reshape(shape), error.reshape(shape), excluded.reshape(shape), None, J0, evaluations)


def directional_differences(
    evaluate: MoveEvaluator,
    base: Tensor,
    V: Tensor,
    J0: float,
    chunk: int,
    sigma: Sigma,
    fixed: Fixed | None = None,
    settle: Settle | None = None,
) -> FDResult:
    """Directional mode: each direction v moved by +h v and -h v (D(h)), then by +2h v and -2h v
    where ``settle`` does not decide the direction from D(h) alone (none given: everywhere),
    ``chunk`` copies per call of ``evaluate``. Fixed entries are not moved: the difference
    estimates v . r with r zero there (or, for excluded entries, v is zero there too)."""
    k = V.shape[0]
    h = FD_STEP * max(1.0, float(base.abs().max()) if base.numel() else 1.0)
    moved = V  # (k, *shape)
    if fixed is not None:
        moved = V * ~fixed.mask.cpu()
        V = V if fixed.zero else moved  # excluded entries: out of v . g as well
    every = torch.arange(k)
    values, excluded = _direction_pass(evaluate, moved, h, chunk)  # D(h)   (k,)
    error = torch.zeros(k, dtype=torch.float64)
    evaluations = 2 * k
    cheap = torch.ones(k, dtype=torch.bool)
    pending = every if settle is None else _unsettled(every, settle(values, excluded, V, J0), cheap, excluded)
    noise: float | None = None
    while pending.numel():
        if noise is None:
            noise, cost = _measured(sigma)
            evaluations += cost
        D2, crossed = _direction_pass(evaluate, moved[pending], 2.0 * h, chunk)  # D(2h)
        error[pending] = (D2 - values[pending]).abs() / 3.0 + noise / h
        excluded[pending] |= crossed
        cheap[pending] = False
        evaluations += 2 * pending.numel()
        if settle is None:
            break
        pending = _unsettled(every, settle(values, excluded, V, J0), cheap, excluded)
    return FDResult(values, error, excluded, V, J0, evaluations)


def _unsettled(candidates: Tensor, settled: Tensor, cheap: Tensor, excluded: Tensor) -> Tensor:
    """The candidates still without an error estimate that D(h) did not decide (and that no
    crossing excluded already)."""
    flat = settled.reshape(-1).cpu()
    keep = cheap[candidates] & ~flat[candidates] & ~excluded[candidates]
    return candidates[keep]


def _measured(sigma: Sigma) -> tuple[float, int]:
    """(sigma, the evaluations of J it cost): a number costs none, a measurement NOISE_PROBES."""
    if isinstance(sigma, (int, float)):
        return float(sigma), 0
    return float(sigma()), NOISE_PROBES


def _entry_pass(
    evaluate: EntryEvaluator, entries: Tensor, h_up: Tensor, h_down: Tensor, factor: float, chunk: int
) -> tuple[Tensor, Tensor]:
    """D(factor h) = (J(p + factor h+ e_k) - J(p - factor h- e_k)) / (factor (h+ + h-)) for each
    entry k listed (P,), and whether either move crossed a piece boundary: chunk // 2 entries
    (both moves of each) per call."""
    P = entries.numel()
    D = torch.empty(P, dtype=torch.float64)
    crossed = torch.zeros(P, dtype=torch.bool)
    per_call = max(1, chunk // 2)
    for start in range(0, P, per_call):
        part = slice(start, min(start + per_call, P))
        idx = entries[part]
        up, down = factor * h_up[idx], factor * h_down[idx]  # exact: a power of 2 times a step
        J, c = evaluate(idx.repeat(2), torch.cat([up, -down]))  # (2 p,)
        J_up, J_down = J.reshape(2, -1)
        D[part] = (J_up - J_down) / (up + down)
        crossed[part] = c.reshape(2, -1).any(dim=0)
    return D, crossed


def _direction_pass(evaluate: MoveEvaluator, moved: Tensor, h: float, chunk: int) -> tuple[Tensor, Tensor]:
    """D(h) = (J(p + h v) - J(p - h v)) / 2h for each direction v of ``moved`` (m, *shape), and
    whether either move crossed a piece boundary; ``chunk`` copies per call."""
    m = moved.shape[0]
    deltas = moved.new_empty((2 * m, *moved.shape[1:]))  # [+h v ; -h v]   (2m, *shape)
    torch.mul(moved, h, out=deltas[:m])
    torch.mul(moved, -h, out=deltas[m:])
    J = torch.empty(2 * m, dtype=torch.float64)
    crossed = torch.zeros(2 * m, dtype=torch.bool)
    step = max(1, chunk)
    for start in range(0, 2 * m, step):
        part = slice(start, min(start + step, 2 * m))
        J[part], crossed[part] = evaluate(deltas[part])
    J_up, J_down = J.reshape(2, m)
    return (J_up - J_down) / (2.0 * h), crossed.reshape(2, m).any(dim=0)
