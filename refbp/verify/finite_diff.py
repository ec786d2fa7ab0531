"""Finite differences in float64: the reference that assumes nothing but J itself, dispatched in
one place.

    network_finite_differences(net, X, y, names)   # any network: fd_mlp's structured path when
                                                   # every layer has row structure, else fd_network's
    function_finite_differences(loss, params)      # any function of named arrays

Both network paths take their steps, moves, error estimates, piece watching, chunks and fixed
entries from refbp.verify.fd_core (whose docstring gives the equations); they differ only in how
a batch of perturbed copies of J is evaluated: the structured path (refbp.verify.fd_mlp) uses
the row and column structure of eq. (1) so that no copy runs the whole network, the general path
(refbp.verify.fd_network) runs the oracle under ``torch.func.vmap``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..nn.network import Network
from ..nn.stack import walk_layers
from .fd_core import (
    CHUNK_BYTES,
    MOVES,
    NOISE_PROBES,
    FDResult,
    Fixed,
    PieceRecorder,
    PieceWatcher,
    combine_evaluations,
    evaluation_noise,
    moves,
    random_directions,
    steps,
)
from .fd_mlp import MLPDifferences, has_row_structure
from .fd_network import OracleDifferences
from .inputs import FD_AUTO_MAX_ENTRIES
from .reference import oracle_point
from .rows import FDJudge
from .tolerances import FD_STEP

__all__ = [
    "CHUNK_BYTES",
    "FD_BUDGET_S",
    "MOVES",
    "NOISE_PROBES",
    "FDResult",
    "PieceRecorder",
    "PieceWatcher",
    "evaluation_noise",
    "fixed_entries",
    "function_finite_differences",
    "more_directions",
    "moves",
    "network_finite_differences",
    "plan_differences",
    "random_directions",
    "steps",
]


FD_BUDGET_S = 2.0
"""Seconds fd_mode "auto" may spend on directional finite differences by default
(``refbp.check(budget_s=)``, ``refbp check --fd-budget``): beside autograd, one direction for
each of the 126 gradients of the 4-layer GPT of benchmarks/check_gpt.py fits in about a second on
a quiet 2-core machine, so that a test suite can check a few such models in seconds and keep the
second opinion (reports/BENCHMARKS.md, item 3). Networks small enough for full mode
(FD_AUTO_MAX_ENTRIES) are not cut by it."""


def fixed_entries(net: Network) -> dict[str, Fixed]:
    """name -> the entries whose gradient a layer defines as zero (``Layer.fixed_gradients``:
    Embedding's padding row), found by walking the layers. For a tied parameter the convention
    holds for one use only, so its entries are excluded instead (left to autograd)."""
    tied = set(net.ties) | set(net.ties.values())
    out: dict[str, Fixed] = {}
    for path, layer in walk_layers(net.layers):
        for key, mask in layer.fixed_gradients(path).items():
            name = str(net.ties.get(key, key))
            mask = mask.detach().cpu()
            if name in out:
                mask = mask | out[name].mask
            out[name] = Fixed(mask, zero=key not in tied)
    return out


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
    judges: Mapping[str, FDJudge] | None = None,
    budget_s: float | None = None,
    optional: bool = False,
) -> dict[str, FDResult]:
    """Finite differences of J for the tensors named (keys as in ``backward(...).as_dict()``).

    Args:
        noise: the dropout keep-masks of the forward pass being checked (``cache.noise``).
        mode: "full" (every entry), "directional" (``directions`` random signed vectors) or
            "auto" (``plan_differences``: by size and by ``budget_s``).
        seed: seeds the directions; the same seed gives the same directions.
        judges: name -> how its row will judge it (refbp.verify.rows.FDJudge): differences that
            D(h) decides alone skip their error estimate (fd_core), and a tensor whose
            directions decide nothing gets more (``more_directions``). A tensor not in it:
            every difference with its estimate, ``directions`` directions.
        budget_s: seconds "auto" may spend; None: no limit.
        optional: True when another reference covers every tensor (autograd): "auto" may then
            leave out the tensors its budget does not reach (absent from the result).
    """
    if mode not in ("full", "directional", "auto"):
        raise ValueError(f"mode={mode!r}; expected 'full', 'directional' or 'auto'")
    start = time.perf_counter()
    cpu = torch.device("cpu")
    X64, y64, noise64 = oracle_point(net, X, y, noise or {}, dtype=torch.float64, device=cpu)
    fixed = fixed_entries(net)
    path: MLPDifferences | OracleDifferences
    record = None
    if has_row_structure(net):
        path = MLPDifferences(net, X, y)
    else:
        path = OracleDifferences(net, X64, y64, noise64)
        record = path.record
    first_copy = time.perf_counter() - start  # one forward pass: what a copy costs at most, at first

    def sigma(name: str) -> Callable[[], float]:
        return lambda: evaluation_noise(net, X64, y64, noise64, [name], record=record)[name]

    offsets = {name: offset for offset, name in enumerate(names)}  # each tensor's directions' seed

    def differences(name: str, how: str, k: int) -> FDResult:
        judge = (judges or {}).get(name)
        settle = None if judge is None else judge.settled
        if how == "full":
            return path.full(name, sigma(name), fixed.get(name), settle)
        shape = tuple(path.base(name).shape)
        V = random_directions(shape, k, seed=seed + 1009 * offsets[name])
        fd = path.directional(name, V, sigma(name), fixed.get(name), settle)
        for more in more_directions(k, directions):
            if judge is None or judge.decides(fd):
                break
            V = random_directions(shape, more, seed=seed + 1009 * offsets[name] + 104_729 * fd.values.numel())
            fd = _joined(fd, path.directional(name, V, sigma(name), fixed.get(name), settle))
        return fd

    if mode != "auto":
        return {name: differences(name, mode, directions) for name in names}
    sizes = {name: _free(path.base(name), fixed.get(name)) for name in names}
    warm = [name for name in names if path.base(name).numel()]
    if warm and sum(sizes.values()) > FD_AUTO_MAX_ENTRIES:  # the budget will count: warm up first
        began = time.perf_counter()
        # torch.func.vmap imports its decompositions on first use in a process (about a second):
        # one unmoved copy pays for that before the clock starts, and stands in for a copy's cost
        path.entry_evaluator(warm[0])(torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.float64))
        first_copy = min(first_copy, time.perf_counter() - began)
        start = time.perf_counter()
    out: dict[str, FDResult] = {}
    copies, spent = 0, 0.0  # evaluations done and the seconds they took

    def per_copy() -> float | None:
        return spent / copies if copies else None

    for name, how, k in plan_differences(names, sizes, directions=directions, optional=optional, budget_s=budget_s,
                                         started=start, per_copy=per_copy, guess=first_copy,
                                         priority=_priority(net, names)):  # fmt: skip
        began = time.perf_counter()
        out[name] = differences(name, how, k)
        copies += out[name].evaluations
        spent += time.perf_counter() - began
    return out


def plan_differences(
    names: list[str],
    sizes: Mapping[str, int],
    *,
    directions: int,
    optional: bool,
    budget_s: float | None,
    started: float,
    per_copy: Callable[[], float | None],
    guess: float,
    priority: Sequence[str],
) -> Iterator[tuple[str, str, int]]:
    """fd_mode "auto": (name, "full" or "directional", directions) for each tensor, one at a
    time, so that each plan uses what the tensors before it cost (``per_copy()``: seconds per
    evaluation of J so far, None before any was measured; ``guess`` stands in until then).

    Full mode, by size alone as before the budget, when the tensors have FD_AUTO_MAX_ENTRIES
    entries or fewer in all: small networks are checked entry by entry whatever the machine's
    load, and the same check gives the same rows. Above that, directional, in ``priority`` order
    (parameters first: what training changes):

    - ``optional`` (autograd checks every entry too, and the differences are its second
      opinion): one direction each, more only where the first decides nothing
      (``more_directions``), while ``budget_s`` lasts; the tensors it does not reach are left
      out (to autograd), and say so;
    - finite differences alone: each tensor as many directions (1 to ``directions``) as the
      time left of ``budget_s`` allows when shared among the tensors still to come, and one
      at least, whatever the time.

    Without a budget, ``directions`` each."""
    if sum(sizes[name] for name in names) <= FD_AUTO_MAX_ENTRIES:
        yield from ((name, "full", 0) for name in priority)
        return
    if budget_s is None:
        yield from ((name, "directional", directions) for name in priority)
        return
    todo = list(priority)
    while todo:
        name = todo.pop(0)
        left = budget_s - (time.perf_counter() - started)
        measured = per_copy()
        cost = 2 * (guess if measured is None else measured)  # one direction: +h and -h
        if optional:
            if cost > left:
                return  # the budget is spent: the rest are autograd's alone
            yield name, "directional", 1
            continue
        share = left / (cost * (len(todo) + 1))  # directions each, if the time left is shared evenly
        yield name, "directional", directions if share >= directions else max(1, math.floor(share))


def more_directions(k: int, directions: int) -> Iterator[int]:
    """How many directions each further round adds to a tensor whose first ``k`` directions
    decided nothing (every one excluded at a piece boundary, or too imprecise to confirm):
    as many as it has, until it has max(directions, 2 k)."""
    have, cap = k, max(directions, 2 * k)
    while have < cap:
        more = min(have, cap - have)
        yield more
        have += more


def _joined(a: FDResult, b: FDResult) -> FDResult:
    """Two directional results for one tensor as one: a's directions, then b's."""
    assert a.directions is not None and b.directions is not None
    return FDResult(
        torch.cat([a.values, b.values]), torch.cat([a.error, b.error]), torch.cat([a.excluded, b.excluded]),
        torch.cat([a.directions, b.directions]), a.J, a.evaluations + b.evaluations,
    )  # fmt: skip


def _priority(net: Network, names: list[str]) -> list[str]:
    """The order a budget covers tensors in: parameters (what training changes), X, then the
    intermediates, each in the network's order."""
    params = set(net.parameters())
    return (
        [name for name in names if name in params]
        + [name for name in names if name == "X"]
        + [name for name in names if name not in params and name != "X"]
    )


def _free(base: Tensor, fixed: Fixed | None) -> int:
    """Entries finite differences move: all but the fixed ones."""
    return base.numel() - (0 if fixed is None else int(fixed.mask.sum()))


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
