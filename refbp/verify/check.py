"""Verify gradients, refbp's own or anyone's, against torch.autograd and finite differences.

    res = refbp.check(net, X, y)              # refbp's manual gradients
    res = refbp.check(net, X, y, grads=mine)  # a user's own: any subset of as_dict()'s keys
    res.raise_if_failed()                     # GradientMismatchError, message from the rows

    res = refbp.check_function(fn, params)    # fn(params) -> (loss, grads), NumPy or torch

What "passed" means, and the result record, are refbp.verify.result's; what each reference can
say about an entry, refbp.verify.compare's; what a failure's pattern suggests,
refbp.verify.diagnose's. Every comparison is a ``Comparison`` record; the verdicts, the failure
message, the Markdown table and the JSON all come from those records.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..nn.network import Network
from ..nn.noise import check_noise
from .check_function import check_function
from .compare import Comparison, compare
from .conditioning import conditioning_allowance
from .diagnose import all_fail_note, kink_hints, noise_note, on_kinks, with_diagnosis, with_kink_note
from .fd_core import FDResult
from .finite_diff import FD_BUDGET_S, network_finite_differences
from .inputs import FD_AUTO_MAX_ENTRIES, REFERENCES, check_options, user_grads
from .observers import notify
from .reference import autograd_gradients
from .result import CheckResult, GradientMismatchError, TensorVerdict, tensor_verdicts
from .rows import FDJudge, fd_row, loss_row
from .second_order import check_second_order
from .tolerances import TOLERANCES, Tolerance, least_precise, tolerance_for

__all__ = [
    "FD_AUTO_MAX_ENTRIES",
    "FD_BUDGET_S",
    "REFERENCES",
    "CheckResult",
    "GradientMismatchError",
    "TensorVerdict",
    "check",
    "check_function",
    "tensor_verdicts",
]


def check(
    net: Network,
    X: Tensor | np.ndarray,
    y: Tensor | np.ndarray,
    grads: Mapping[str, Any] | None = None,
    *,
    references: Sequence[str] = REFERENCES,
    fd_mode: str = "auto",
    directions: int = 8,
    seed: int = 0,
    tolerance: Tolerance | None = None,
    noise: Mapping[tuple[int, ...], Tensor] | None = None,
    J: float | Tensor | np.ndarray | None = None,
    budget_s: float | None = FD_BUDGET_S,
    order: int = 1,
    forward: bool = False,
) -> CheckResult:
    """Check gradients of ``net``'s J at (X, y) against autograd and finite differences.

    ``order=2`` checks the Hessian-vector product instead (refbp.verify.second_order,
    ``check_second_order(net, X, y, seed=seed, forward=forward, noise=...)``): refbp's manual H v
    along a random direction against torch's two routes and differences of the manual gradient,
    all at one draw of the dropout masks (``noise``, or drawn once); ``forward=True`` also checks
    the forward-mode tangents. Any network kind: MLPs, layer stacks, graph networks, GPTs.

    Args:
        net, X, y: the network and the point (tensors or NumPy arrays, in the network's
            layout: refbp.nn.layouts); validated as ``net.forward`` and ``net.loss`` do.
        grads: the gradients under test, a dict name -> tensor (or NumPy array), in the
            network's layout, with any subset of ``net.names()`` ("W1", "b1", "z1", "a1", ...,
            "X"). None checks refbp's own manual backward pass.
        references: any of "autograd" and "fd".
        fd_mode: "full", "directional" or "auto": full up to FD_AUTO_MAX_ENTRIES entries, else
            directional, parameters first: beside autograd one direction per tensor, more only
            where the first decides nothing; alone as many (up to ``directions``) as ``budget_s``
            allows (refbp.verify.finite_diff.plan_differences).
        directions: number of random signed directions per tensor in directional mode (in
            "auto", the most).
        seed: seeds the directions.
        tolerance: overrides the per-dtype tolerance (refbp.verify.tolerances.TOLERANCES).
        noise: for a network with dropout in training mode, the keep-masks your gradients were
            computed with (``cache.noise``, or ``refbp.capture_noise(module, *inputs)`` for a
            torch module's), by layer path; None draws new ones (right for refbp's own). An
            entry that names no dropout layer, or is not a bool mask, is refused
            (refbp.nn.noise.check_noise).
        J: your loss at this point: compared with refbp's first, so that a forward pass or a
            loss convention that differs (a sum for a mean, another 1/2, another GELU) is
            reported as such, before any gradient row.
        budget_s: seconds fd_mode "auto" may spend on directional finite differences (None:
            no limit; full mode, chosen by size, is not cut).
            With autograd among the references, tensors the budget does not reach are left
            to autograd, and each says so in its ``coverage`` ("autograd only: ..."); with
            finite differences alone, every tensor still gets at least one direction. Either
            way "passed" keeps its meaning: every entry verified by some reference.

    Returns:
        A CheckResult; ``.passed``, ``.rows``, ``.tensors``, ``.raise_if_failed()``.
    """
    if not isinstance(net, Network):
        raise TypeError(f"net must be a refbp network (refbp.MLP, refbp.nn.Network), got {type(net).__name__}")
    if isinstance(order, bool) or order not in (1, 2):
        raise ValueError(f"order={order!r}; expected 1 (gradients) or 2 (Hessian-vector products)")
    if order == 2:
        if grads is not None:
            raise ValueError("order=2 checks refbp's own H v; for yours use check_second_order(..., hvp_fn=...)")
        check_noise(net.layers, noise)
        point = net.forward(X, update_stats=False, noise=noise)  # X and y validated as for a gradient check
        X2, y2 = point.X, net.targets_from_user(y, point)
        result = check_second_order(net, X2, y2, seed=seed, forward=forward, tolerance=tolerance, noise=point.noise)
        return notify("check", result)
    check_options(references, fd_mode, directions, seed, tolerance)
    _check_budget(budget_s)
    check_noise(net.layers, noise)

    cache = net.forward(X, update_stats=False, noise=noise)  # X, y, grads in the network's layout
    X_in, y_in = cache.X, net.targets_from_user(y, cache)  # refbp's layout from here on
    layout = net.layout
    sizes = {"N": int(X_in.shape[0]), "d_L": int(cache.y_hat.shape[-1])}  # what a wrong factor may be
    if grads is None:
        tested = {name: g.detach() for name, g in net.backward(cache, y).as_dict().items()}
    else:
        tested = user_grads(grads, net.names())
    names = list(tested)
    dtype = least_precise({t.dtype for t in tested.values() if t.dtype in TOLERANCES}, net.dtype)
    tol = tolerance or tolerance_for(dtype)
    J_ref = math.nan
    kinks = {name: layout.to_user(name, mask) for name, mask in on_kinks(net, cache).items()}
    reference: dict[str, Tensor] = {}
    J_autograd = math.nan
    if "autograd" in references:
        J64, reference = autograd_gradients(net, X_in, y_in, dtype=torch.float64, noise=cache.noise)
        J_ref = J_autograd = float(J64)
    mode = None
    left_out: dict[str, str] = {}
    fd: dict[str, FDResult] = {}
    if "fd" in references:
        # judged without the conditioning allowance: a narrower tolerance, under which the
        # differences are taken at least as precisely (fd_core's error estimate where D(h) alone
        # does not decide) and more directions are taken where the first decide nothing
        fd = network_finite_differences(
            net, X_in, y_in, names, noise=cache.noise, mode=fd_mode, directions=directions, seed=seed,
            judges={name: FDJudge(layout.from_user(name, tested[name]), tol, 0.0) for name in names},
            budget_s=budget_s, optional="autograd" in references,
        )  # fmt: skip
        J_ref = next(iter(fd.values())).J if fd else J_ref
        modes = {"full" if result.directions is None else "directional" for result in fd.values()}
        mode = modes.pop() if len(modes) == 1 else ("mixed" if modes else fd_mode)
        fd = {name: _fd_to_user(layout, name, result) for name, result in fd.items()}
        left_out = {name: f"the finite-difference budget (budget_s={budget_s}) ran out" for name in names
                    if name not in fd}  # fmt: skip

    def compared(widened: Mapping[str, float]) -> list[Comparison]:
        out = []
        for name in names if reference else ():
            r = layout.to_user(name, reference[name])
            row = compare(name, "autograd", tested[name], r, tol, widened=widened.get(name, 0.0),
                          J_finite=math.isfinite(J_autograd))  # fmt: skip
            row = with_diagnosis(row, tested[name], r, sizes)
            out.append(with_kink_note(row, tested[name], r, kinks.get(name)))
        return out + [
            fd_row(name, tested[name], fd[name], "full" if fd[name].directions is None else "directional", tol,
                   widened.get(name, 0.0), sizes=sizes)
            for name in names if name in fd
        ]  # fmt: skip

    rows = compared({})
    if tolerance is None and not all(row.n_mismatched == 0 and row.n_imprecise == 0 for row in rows):
        # The conditioning allowance only widens the tolerance: where every entry is already
        # verified or excluded without it, it changes no verdict and no count, so its probes
        # (several autograd runs) are paid only where some entry needs them.
        rows = compared(conditioning_allowance(net, X_in, y_in, cache.noise, dtype, names, seed))
    if J is not None:
        rows.insert(0, loss_row(J, J_ref, tol, sizes))
    result = CheckResult(
        rows=rows, J=J_ref, dtype=str(dtype).removeprefix("torch."), device=str(net.device), fd_mode=mode,
        tensors=tensor_verdicts(rows, left_out=left_out),
    )  # fmt: skip
    if not result.passed:
        hints = [
            noise_note(net, noise) if grads is not None else "",  # the likelier cause, first
            all_fail_note(net, result.tensors, J_given=J is not None),
            *(kink_hints(net, cache) if any(row.verdict == "mismatch" for row in rows) else []),
        ]
        if any(hints):  # the JSON has "hints" only when there is one, as before
            result.meta["hints"] = [hint for hint in hints if hint]
    return notify("check", result)  # a pytest session collecting checks (refbp.pytest_plugin) hears of it


def _check_budget(budget_s: object) -> None:
    """budget_s must be None or a number of seconds > 0."""
    if budget_s is None:
        return
    if isinstance(budget_s, bool) or not isinstance(budget_s, (int, float)):
        raise TypeError(f"budget_s={budget_s!r} must be a number of seconds (or None: no limit)")
    if not math.isfinite(budget_s) or budget_s <= 0:
        raise ValueError(f"budget_s={budget_s!r} must be a finite number of seconds > 0 (or None: no limit)")


def _fd_to_user(layout: Any, name: str, fd: FDResult) -> FDResult:
    """Finite differences of ``name`` in the user's layout (directions turned one by one)."""
    if fd.directions is None:
        values = layout.to_user(name, fd.values)
        error, excluded = layout.to_user(name, fd.error), layout.to_user(name, fd.excluded)
        return FDResult(values, error, excluded, None, fd.J, fd.evaluations)
    turned = torch.stack([layout.to_user(name, v) for v in fd.directions])
    return FDResult(fd.values, fd.error, fd.excluded, turned, fd.J, fd.evaluations)
