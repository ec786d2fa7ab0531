"""Item 3: refbp's finite-difference check against torch.autograd.gradcheck, float64, batch 32."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import gradcheck

import refbp
from refbp.verify.reference import TORCH_ACTIVATIONS

from .common import benchmark_network

__all__ = ["FULL_WIDTHS", "QUICK_WIDTHS", "time_fd"]

FULL_WIDTHS = {5: 5, 18: 5, 57: 3, 182: 1}
"""width -> repeats. Depth 3 of width w has 3 (w^2 + w) parameters: 90, 1026, 9918, 99918
(the issue's 1e2 .. 1e5). gradcheck's default mode takes minutes at 1e5: one repeat there."""

QUICK_WIDTHS = {5: 1}

BATCH = 32
DIRECTIONS = 8


def _gradcheck_inputs(net: refbp.MLP, X: Tensor, y: Tensor) -> tuple[Any, list[Tensor]]:
    """J(X, W1, b1, ..., WL, bL) in torch functions, and those inputs with requires_grad."""
    activations = [TORCH_ACTIVATIONS[name] for name in net.activations]

    def J(X: Tensor, *params: Tensor) -> Tensor:
        a = X
        for i, f in enumerate(activations):
            a = f(F.linear(a, params[2 * i], params[2 * i + 1]))
        return 0.5 * F.mse_loss(a, y, reduction="sum")

    inputs = [X.clone().requires_grad_(True)]
    for W, b in zip(net.weights, net.biases, strict=True):
        inputs += [W.clone().requires_grad_(True), b.clone().requires_grad_(True)]
    return J, inputs


def _timed(fn: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def time_fd(widths: dict[int, int]) -> list[dict[str, Any]]:
    """Seconds per check (median over the repeats, methods interleaved) at each size."""
    return [_time_one(width, repeats) for width, repeats in widths.items()]


def _time_one(width: int, repeats: int) -> dict[str, Any]:
    net, X, y = benchmark_network(width, batch=BATCH, activation="tanh", dtype=torch.float64)
    # the tensors gradcheck checks: W(i), b(i) and X (not the intermediates z(i), a(i))
    same = {k: v for k, v in net.backward(net.forward(X), y).as_dict().items() if k[0] in "WbX"}
    J, inputs = _gradcheck_inputs(net, X, y)
    methods = {
        "refbp_full": lambda: refbp.check(net, X, y, same, references=("fd",), fd_mode="full"),
        "refbp_full_all": lambda: refbp.check(net, X, y, references=("fd",), fd_mode="full"),
        "refbp_default": lambda: refbp.check(net, X, y),
        "gradcheck": lambda: gradcheck(J, inputs),
        "refbp_directional": lambda: refbp.check(
            net, X, y, same, references=("fd",), fd_mode="directional", directions=DIRECTIONS
        ),
        "gradcheck_fast": lambda: gradcheck(J, inputs, fast_mode=True),
        "refbp_directional_1": lambda: refbp.check(  # one direction per tensor, as fast_mode takes
            net, X, y, same, references=("fd",), fd_mode="directional", directions=1
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in methods}
    methods["refbp_directional"]()  # warm-up
    methods["gradcheck_fast"]()
    names = list(methods)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            seconds, out = _timed(methods[name])
            if out is not True and not getattr(out, "passed", False):
                raise RuntimeError(f"{name} failed at width {width}: the benchmark's network is wrong")
            times[name].append(seconds)
    t = {name: statistics.median(v) for name, v in times.items()}
    n_params = sum(W.numel() + b.numel() for W, b in zip(net.weights, net.biases, strict=True))
    row = {
        "width": width, "parameters": n_params, "entries_checked": n_params + X.numel(),
        "entries_all": sum(v.numel() for v in net.backward(net.forward(X), y).as_dict().values()),
        "repeats": repeats, **{f"t_{name}": value for name, value in t.items()},
        "gradcheck/refbp_full": t["gradcheck"] / t["refbp_full"],
        "refbp_directional/gradcheck_fast": t["refbp_directional"] / t["gradcheck_fast"],
    }  # fmt: skip
    print(f"  fd {n_params} params: gradcheck/refbp_full {row['gradcheck/refbp_full']:.1f}x, "
          f"directional/fast_mode {row['refbp_directional/gradcheck_fast']:.2f}", flush=True)  # fmt: skip
    return row
