"""The LSTM's training step by hand against torch.autograd: time per step and the ratio.

    python benchmarks/recurrent.py              # B=32, T=32, d=64, H=128, 1 and 2 layers, float32
    python benchmarks/recurrent.py --quick      # tiny sizes, a few repeats: a smoke run

*manual* is refbp's lean training step (as in benchmarks/layers.py): forward with
keep_intermediates=False, backward with intermediates=False and release_cache=True, dJ/dX and
every parameter's gradient. Two autograd references from the same dJ/d(output) G:

*torch LSTM*: ``module(X).backward(G)`` on ``layer.to_torch()``, torch.nn.LSTM, whose CPU
kernel runs the steps in C++ (at::lstm), a step being a few fused operations;
*autograd, same ops*: refbp's oracle (``torch_forward``, the steps one by one from torch
functions in Python) differentiated by autograd: the same arithmetic as the manual path,
so the ratio shows what writing BPTT by hand costs or saves against autograd's bookkeeping.

All three are timed in turns (benchmarks.common.interleaved_medians) in one run, so that load
from other processes hits them alike; the ratios are manual / reference (below 1: faster).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tabulate import tabulate
from torch import Tensor

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import interleaved_medians
from refbp.nn.keys import Key
from refbp.nn.layer import NO_TAP, BackwardContext, ForwardContext, Params
from refbp.nn.layers import recurrent_from_torch
from refbp.nn.recurrent import Recurrent
from refbp.nn.stack import StackGradients, stack_backward, stack_forward

__all__ = [
    "FULL_SIZES",
    "MODULES",
    "QUICK_SIZES",
    "LSTMCase",
    "autograd_step",
    "gemm_floor",
    "main",
    "make_case",
    "manual_step",
    "oracle_step",
]

FULL_SIZES = {"B": 32, "T": 32, "d": 64, "H": 128}
"""A character-model-sized LSTM: 32 sequences of 32 steps, inputs of 64, a state of 128."""

QUICK_SIZES = {"B": 2, "T": 3, "d": 4, "H": 5}
"""Tiny sizes for the smoke run and the tests."""


@dataclass
class LSTMCase:
    """An LSTM layer, its torch module, an input X (B, T, d) and a dJ/d(output) G (B, T, H)."""

    layer: Recurrent
    module: torch.nn.Module
    X: Tensor
    G: Tensor


MODULES: dict[str, Callable[..., torch.nn.Module]] = {"RNN": torch.nn.RNN, "LSTM": torch.nn.LSTM, "GRU": torch.nn.GRU}
"""The recurrent layers benchmarked, by name (benchmarks/layers.py times each; this script the LSTM)."""


def make_case(
    sizes: Mapping[str, int], *, num_layers: int = 1, dtype: torch.dtype = torch.float32, kind: str = "LSTM"
) -> LSTMCase:
    """A recurrent layer (``kind``: RNN, LSTM or GRU, default the LSTM) of ``num_layers`` layers for
    sizes {"B", "T", "d", "H"} (FULL_SIZES), batch_first."""
    B, T, d, H = (sizes[name] for name in ("B", "T", "d", "H"))
    torch.manual_seed(0)
    module = MODULES[kind](d, H, num_layers=num_layers, batch_first=True, dtype=dtype)
    layer = recurrent_from_torch(module)
    generator = torch.Generator().manual_seed(1)
    X = torch.randn(B, T, d, generator=generator).to(dtype)
    G = torch.randn(B, T, H, generator=generator).to(dtype)
    return LSTMCase(layer, layer.to_torch(), X, G)


def manual_step(case: LSTMCase) -> Callable[[], StackGradients]:
    """refbp's lean training step: forward keeping what backward needs, backward to dJ/dX and
    every parameter's gradient, the cache released."""
    layers = [case.layer]
    forward_ctx = ForwardContext(keep_intermediates=False)
    backward_ctx = BackwardContext(path=(), keep_intermediates=False, overwrite=True)

    def step() -> StackGradients:
        cache = stack_forward(layers, case.X, forward_ctx, ())
        return stack_backward(layers, cache, [case.G.clone()], backward_ctx, release=True)

    return step


def autograd_step(case: LSTMCase) -> Callable[[], dict[str, Tensor]]:
    """torch.autograd on torch.nn.LSTM (``layer.to_torch()``): dJ/dX and every parameter's gradient."""
    module = case.module

    def step() -> dict[str, Tensor]:
        module.zero_grad(set_to_none=True)
        X = case.X.clone().requires_grad_(True)
        module(X).backward(case.G.clone())
        grads = {name: p.grad for name, p in module.named_parameters() if p.grad is not None}
        assert X.grad is not None
        return {**grads, "input": X.grad}

    return step


def gemm_floor(module: torch.nn.Module, X: Tensor) -> Callable[[], Tensor]:
    """A lower bound for any eager training step of a one-layer ``module`` (RNN, LSTM or GRU,
    batch_first) on X (B, T, d): the matrix products backpropagation through time must do,
    through torch.mm into preallocated outputs, and nothing else. With g gates (1, 4, 3) of
    H units each:

        x_t W_ih^T for every step at once     (B T, d) @ (d, g H)
        h_(t-1) W_hh^T, step by step          T x (B, H) @ (H, g H)      each step needs h_(t-1)
        da_t W_hh, step by step               T x (B, g H) @ (g H, H)    each step needs da_(t+1)
        dJ/dW_hh = sum_t da_t^T h_(t-1)       (g H, B T) @ (B T, H)
        dJ/dW_ih = sum_t da_t^T x_t           (g H, B T) @ (B T, d)
        dJ/dx = da W_ih                       (B T, g H) @ (g H, d)

    The products run on stand-in values (the shapes decide their cost). torch's fused CPU
    kernels for these modules (oneDNN's LSTM) run their own products and need not stay above it."""
    params = dict(module.named_parameters())
    W_ih, W_hh = params["weight_ih_l0"].detach(), params["weight_hh_l0"].detach()  # (g H, d), (g H, H)
    B, T, d = X.shape
    gH, H = W_hh.shape
    x = X.detach().reshape(B * T, d)  # (B T, d)
    gates = torch.empty(T, B, gH, dtype=X.dtype)  # a_t, then da_t: products only
    h = torch.randn(T + 1, B, H, dtype=X.dtype)  # h_t stand-ins   (T + 1, B, H)
    dh = torch.empty(B, H, dtype=X.dtype)
    dW_hh, dW_ih, dx = torch.empty_like(W_hh), torch.empty_like(W_ih), torch.empty(B * T, d, dtype=X.dtype)

    def step() -> Tensor:
        torch.mm(x, W_ih.T, out=gates.view(T * B, gH))  # x_t W_ih^T, every step
        for t in range(T):
            gates[t].addmm_(h[t], W_hh.T)  # + h_(t-1) W_hh^T
        for t in range(T - 1, -1, -1):
            torch.mm(gates[t], W_hh, out=dh)  # da_t W_hh
        da = gates.view(T * B, gH)
        torch.mm(da.T, h[:-1].reshape(T * B, H), out=dW_hh)
        torch.mm(da.T, x, out=dW_ih)
        return torch.mm(da, W_ih, out=dx)

    return step


def oracle_step(case: LSTMCase) -> Callable[[], dict[str, Tensor]]:
    """torch.autograd on refbp's oracle: the same steps from torch functions, in Python."""
    path = (1,)
    values = {
        Key(kind, (*path, k)): t for k, sub in enumerate(case.layer.layers, start=1) for kind, t in sub.params.items()
    }

    def step() -> dict[str, Tensor]:
        leaves = {key: t.detach().requires_grad_(True) for key, t in values.items()}
        X = case.X.clone().requires_grad_(True)
        case.layer.torch_forward(X, Params(leaves), {}, NO_TAP, path).backward(case.G.clone())
        assert X.grad is not None
        return {**{str(key): t.grad for key, t in leaves.items() if t.grad is not None}, "input": X.grad}

    return step


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and a few repeats (a smoke run)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default: 21, quick: 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = QUICK_SIZES if args.quick else FULL_SIZES
    repeats = args.repeats or (3 if args.quick else 21)
    rows = []
    for num_layers in (1, 2):
        case = make_case(sizes, num_layers=num_layers)
        t = interleaved_medians(
            {"manual": manual_step(case), "torch": autograd_step(case), "oracle": oracle_step(case)}, repeats=repeats
        )
        size = f"B={sizes['B']} T={sizes['T']} d={sizes['d']} H={sizes['H']} L={num_layers}"
        rows.append([
            size, f"{t['manual'] * 1e3:.2f}", f"{t['torch'] * 1e3:.2f}", f"{t['oracle'] * 1e3:.2f}",
            f"{t['manual'] / t['torch']:.2f}x", f"{t['manual'] / t['oracle']:.2f}x",
        ])  # fmt: skip
    headers = ["LSTM, float32", "manual ms", "torch LSTM ms", "autograd same ops ms", "vs torch", "vs same ops"]
    print(f"LSTM training step (forward + backward), {args.threads} thread(s), median of {repeats} rounds")
    print(tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
