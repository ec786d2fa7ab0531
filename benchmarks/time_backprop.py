"""Items 1 and 5: one forward + backward pass, refbp's manual path against torch.autograd and
against the bare matrix products that any backprop of the network must do."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

import refbp
from refbp.verify.reference import TORCH_ACTIVATIONS

from .common import benchmark_network, interleaved_medians

__all__ = ["FULL_GRID", "IN_PLACE_ACTIVATIONS", "QUICK_GRID", "WORK_PER_REPEAT", "floor_step", "time_grid"]

FULL_GRID: dict[str, list[Any]] = {
    "batch": [256, 1024],
    "width": [16, 128, 512, 2048],
    "dtype": [torch.float32, torch.float64],
    "activation": ["tanh", "relu"],
}
"""The issue's grid: depth 3, every combination of these."""

QUICK_GRID: dict[str, list[Any]] = {"batch": [64], "width": [16, 128], "dtype": [torch.float32], "activation": ["tanh"]}

WORK_PER_REPEAT = 3e8
"""Multiply-adds per timed repeat: small networks are called many times per repeat, so that a
repeat lasts milliseconds, not microseconds, and the timer's resolution does not matter."""


def manual_step(net: refbp.MLP, X: Tensor, y: Tensor) -> Callable[[], object]:
    """refbp's training step: lean cache (keep_intermediates=False, the seed's keep_z=False),
    only dJ/dW, dJ/db, dJ/dX kept."""
    return lambda: net.backward(
        net.forward(X, keep_intermediates=False), y, keep_intermediates=False, release_cache=True
    )


def manual_full(net: refbp.MLP, X: Tensor, y: Tensor) -> Callable[[], object]:
    """refbp's teaching API: every z(i) cached, every dJ/dz(i), dJ/da(i) returned."""
    return lambda: net.backward(net.forward(X), y)


def autograd_step(net: refbp.MLP, X: Tensor, y: Tensor) -> Callable[[], object]:
    """The same network in torch.nn.functional, differentiated by autograd; X requires grad,
    so autograd computes dJ/dX as refbp does."""
    Ws = [W.clone().requires_grad_(True) for W in net.weights]
    bs = [b.clone().requires_grad_(True) for b in net.biases]
    activations = [TORCH_ACTIVATIONS[name] for name in net.activations]

    def step() -> Tensor:
        X_leaf = X.detach().requires_grad_(True)
        for p in Ws + bs:
            p.grad = None
        a = X_leaf
        for W, b, f in zip(Ws, bs, activations, strict=True):
            a = f(F.linear(a, W, b))
        J = 0.5 * F.mse_loss(a, y, reduction="sum")  # half_sse
        J.backward()
        return J

    return step


IN_PLACE_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor] | None] = {
    "identity": None,
    "tanh": torch.tanh_,
    "relu": torch.relu_,
    "sigmoid": torch.sigmoid_,
}
"""The activations of the grid, applied in place: the cheapest way to compute a(i) from z(i)."""


def bare_gemms(net: refbp.MLP, X: Tensor, *, activations: bool = False) -> Callable[[], list[Tensor]]:
    """The 3L matrix products of backprop and nothing else, into preallocated outputs. Forward
    a(i-1) W(i)^T; backward dJ/dz(i)^T a(i-1) and dJ/dz(i) W(i) (down to dJ/dX). With
    ``activations``, the forward activations between them too, applied in place (``floor_step``).
    The step returns its z(i) (its a(i) with ``activations``)."""
    N = X.shape[0]
    Z = [torch.empty(N, W.shape[0], dtype=X.dtype, device=X.device) for W in net.weights]  # (N, d_i)
    G = [torch.empty_like(W) for W in net.weights]  # (d_i, d_{i-1})
    D = [torch.empty(N, W.shape[1], dtype=X.dtype, device=X.device) for W in net.weights]  # (N, d_{i-1})
    fs = [IN_PLACE_ACTIVATIONS[name] if activations else None for name in net.activations]

    def gemms() -> list[Tensor]:
        a = X
        for W, z, f in zip(net.weights, Z, fs, strict=True):
            torch.mm(a, W.T, out=z)  # (1) without bias
            if f is not None:
                f(z)  # (2) a(i) = f(z(i)), in place
            a = z
        for i in range(net.L - 1, -1, -1):
            a_prev = X if i == 0 else Z[i - 1]
            torch.mm(Z[i].T, a_prev, out=G[i])  # (6) (d_i, N) @ (N, d_{i-1})
            torch.mm(Z[i], net.weights[i], out=D[i])  # (8) (N, d_i) @ (d_i, d_{i-1})
        return Z

    return gemms


def floor_step(net: refbp.MLP, X: Tensor) -> Callable[[], list[Tensor]]:
    """A lower bound for any training step of ``net``: ``bare_gemms`` with the forward
    activations between the products, f(z(i)) into z(i). Every step, autograd's included,
    computes at least these: the products for dJ/dW and dJ/dX, and a(i) by the same torch
    function. What it leaves out (biases, f', dJ/db, the loss, any bookkeeping) only adds. Where
    0.9 x autograd's time is below this floor, no step that does the same products reaches 0.9 of
    autograd's time there. The step returns a(1) .. a(L)."""
    return bare_gemms(net, X, activations=True)


def time_grid(
    grid: dict[str, list[Any]], *, repeats: int, device: str = "cpu", work_per_repeat: float = WORK_PER_REPEAT
) -> list[dict[str, Any]]:
    """Median times (seconds) and ratios for every configuration of the grid, depth 3."""
    rows = []
    target = torch.device(device)
    for batch in grid["batch"]:
        for width in grid["width"]:
            for dtype in grid["dtype"]:
                for activation in grid["activation"]:
                    net, X, y = benchmark_network(width, batch=batch, activation=activation, dtype=dtype, device=device)
                    methods = {
                        "manual": manual_step(net, X, y),
                        "manual_full": manual_full(net, X, y),
                        "autograd": autograd_step(net, X, y),
                        "gemm": bare_gemms(net, X),
                        "floor": floor_step(net, X),
                    }
                    inner = max(1, int(work_per_repeat // (9 * batch * width * width)))
                    if target.type == "cuda":
                        inner = max(inner, 20)
                    t = interleaved_medians(methods, repeats=repeats, inner=inner, device=target)
                    rows.append({
                        "device": device, "batch": batch, "width": width,
                        "dtype": str(dtype).removeprefix("torch."), "activation": activation,
                        "inner": inner, "repeats": repeats,
                        **{f"t_{name}": value for name, value in t.items()},
                        "manual/autograd": t["manual"] / t["autograd"],
                        "manual_full/autograd": t["manual_full"] / t["autograd"],
                        "manual/gemm": t["manual"] / t["gemm"],
                        "autograd/gemm": t["autograd"] / t["gemm"],
                        "floor/autograd": t["floor"] / t["autograd"],
                    })  # fmt: skip
                    print(f"  time {device} N={batch} w={width} {rows[-1]['dtype']} {activation}: "
                          f"manual/autograd {rows[-1]['manual/autograd']:.2f}, "
                          f"manual/gemm {rows[-1]['manual/gemm']:.2f}", flush=True)  # fmt: skip
    return rows
