"""Check any (loss, gradients) function against finite differences of its own loss: NumPy or
torch, any parameters, no network needed.

    res = refbp.check_function(fn, params)    # fn(params) -> (loss, grads)
    res.raise_if_failed()
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .finite_diff import function_finite_differences
from .inputs import FD_AUTO_MAX_ENTRIES, REFERENCES, as_tensor, check_options
from .observers import notify
from .result import CheckResult
from .rows import fd_row, fd_tolerance, missing_row
from .second_order import check_hvp_function
from .tolerances import TOLERANCES, Tolerance, combine, least_precise, tolerance_for

__all__ = ["check_function"]


def check_function(
    fn: Callable[[dict[str, Any]], tuple[Any, Mapping[str, Any]]],
    params: Mapping[str, Any],
    *,
    mode: str = "auto",
    directions: int = 8,
    seed: int = 0,
    tolerance: Tolerance | None = None,
    order: int = 1,
    hvp: Callable[[dict[str, Any], dict[str, Any]], Mapping[str, Any]] | None = None,
) -> CheckResult:
    """Check any (loss, gradients) function against finite differences of its own loss.

    With ``order=2`` it checks your Hessian-vector product instead: ``hvp(params, v) ->
    {name: (H v)_name}`` against central differences of fn's own gradient along a random v
    (``seed``), with their error estimate (refbp.verify.second_order.check_hvp_function).

    Args:
        fn: fn(params) -> (loss, grads): loss a scalar (float, 0-dim array or tensor), grads a
            dict with the same keys as params. NumPy and torch both work; fn is called with
            float64 arrays of the type it was given, and a last time with ``params``
            themselves, so a model that stores its parameters in fn is left as it started.
        params: dict name -> array (NumPy or torch), the point to check at.
        mode: "full" (3 calls of fn per entry), "directional" (3 per direction and array) or
            "auto" (full up to FD_AUTO_MAX_ENTRIES // 10 entries).
        tolerance: default: FD_TOLERANCE combined with the tolerance of the grads' dtype.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    if order not in (1, 2) or isinstance(order, bool):
        raise ValueError(f"order={order!r}; expected 1 (gradients) or 2 (a Hessian-vector product, with hvp=)")
    if (order == 2) != (hvp is not None) or (hvp is not None and not callable(hvp)):
        raise ValueError("order=2 checks hvp(params, v), a callable, and needs it; order=1 takes no hvp")
    if order == 2 and hvp is not None:
        second = check_hvp_function(lambda p: _call(fn, p)[1], params, hvp, seed=seed, tolerance=tolerance)
        return notify("check_function", second)
    if not isinstance(params, Mapping) or not params:
        raise ValueError("params must be a non-empty dict name -> array")
    for name, value in params.items():
        if not isinstance(value, (np.ndarray, Tensor, float, int)) or isinstance(value, bool):
            raise TypeError(f"params[{name!r}] must be a NumPy array or torch tensor, got {type(value).__name__}")
        if isinstance(value, Tensor) and value.device.type == "meta":
            raise ValueError(f"params[{name!r}] is on the meta device: it has no values to perturb")
    if mode not in ("full", "directional", "auto"):
        raise ValueError(f"mode={mode!r}; expected 'full', 'directional' or 'auto'")
    check_options(REFERENCES, "auto", directions, seed, tolerance)
    try:
        loss, raw = _call(fn, dict(params))
        grads = {name: as_tensor(value, f"grads[{name!r}]") for name, value in raw.items()}
        extra = [name for name in grads if name not in params]
        if extra:
            raise ValueError(f"fn returned gradients for {extra}, which are not in params ({list(params)})")
        missing = [name for name in params if name not in grads]
        total = sum(int(v.numel()) if isinstance(v, Tensor) else int(np.size(v)) for v in params.values())
        if mode == "auto":
            mode = "full" if total <= FD_AUTO_MAX_ENTRIES // 10 else "directional"

        def loss_only(p: dict[str, Any]) -> float:
            return _call(fn, p)[0]

        fd = function_finite_differences(loss_only, params, mode=mode, directions=directions, seed=seed)
    finally:
        fn(dict(params))  # leave a stateful model at the point it was checked at
    J = next(iter(fd.values())).J
    dtype = least_precise({t.dtype for t in grads.values() if t.dtype in TOLERANCES}, torch.float64)
    tol = tolerance or combine(tolerance_for(dtype), fd_tolerance(J if math.isfinite(J) else 0.0))
    rows = [fd_row(name, grads[name], fd[name], mode, tol, 0.0, scale_tol=False) for name in params if name in grads]
    for name in missing:
        rows.append(missing_row(name, fd[name], mode, tol))
    meta = {"loss": loss}
    result = CheckResult(rows=rows, J=J, dtype=str(dtype).removeprefix("torch."), device="cpu", fd_mode=mode, meta=meta)
    return notify("check_function", result)


def _call(fn: Callable[[dict[str, Any]], Any], params: dict[str, Any]) -> tuple[float, Mapping[str, Any]]:
    """fn(params) as (loss as a float, grads), or a TypeError/ValueError saying what is wrong."""
    out = fn(params)
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], Mapping)):
        raise TypeError("fn(params) must return (loss, grads) with grads a dict name -> array")
    loss = out[0]
    value = loss.detach().cpu().numpy() if isinstance(loss, Tensor) else np.asarray(loss)
    if value.size != 1 or value.ndim > 1 or not np.issubdtype(value.dtype, np.number):
        shape = tuple(value.shape)
        raise ValueError(f"fn must return a scalar loss; it returned {type(loss).__name__} of shape {shape}")
    return float(value.reshape(())), out[1]
