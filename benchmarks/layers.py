"""Item 6 (issue 11): each layer's manual forward + backward against torch.autograd on the
layer's own torch module, one layer at a time: the time ratio and the peak-memory ratio.

    python benchmarks/run.py --layers-only        # this item alone, merged into reports/
    python benchmarks/layers.py --probe MODES N D V THREADS NAME [NAME ...]   # memory, in this process
    python benchmarks/layers.py --time REPEATS QUICK N D V THREADS NAME [NAME ...]   # time, in this process

*manual* is the lean training step of refbp.nn.stack, the loop Network.forward and
Network.backward run once their input checks are done: forward with keep_intermediates=False
(update_stats=True: BatchNorm updates its running statistics, as torch's module does), backward
with intermediates=False and release_cache=True. *autograd* is ``module(X).backward(G)`` on
``layer.to_torch()``, with X requiring grad, so that it computes dJ/dX and dJ/d(every parameter)
as refbp does. Both start from the same dJ/d(output) G, each from a fresh copy of it, as a
training step starts from a fresh loss gradient (refbp's loop owns it and may overwrite it).

The layers are timed one by one rather than through ``Network``, because a Network without
parameters (Elementwise, Dropout, Flatten alone) takes float64 inputs only. The timings run in a
process of their own whose allocator is held warm (WARM_ALLOCATOR), the memory probes in
processes whose allocator returns every large tensor at once (memory_probe.py's method).
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

if __package__ in (None, ""):  # run as a script (the memory probe): make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import recurrent
from benchmarks.common import interleaved_medians
from benchmarks.memory import MMAP_THRESHOLD
from benchmarks.memory_probe import _status_kib
from refbp.nn.layer import BackwardContext, ForwardContext, Layer
from refbp.nn.layers import (
    AdaptiveAvgPool2d,
    AvgPool2d,
    BatchNorm1d,
    BatchNorm2d,
    Conv1d,
    Conv2d,
    Dropout,
    Elementwise,
    Embedding,
    Flatten,
    GroupNorm,
    LayerNorm,
    Linear,
    LogSoftmax,
    MaxPool2d,
    Residual,
    Softmax,
)
from refbp.nn.stack import StackGradients, stack_backward, stack_forward

__all__ = [
    "FULL_SIZES",
    "IMAGE_CHANNELS",
    "LAYERS",
    "MEMORY_RESOLUTION",
    "QUICK_SIZES",
    "REPEATS",
    "TARGET",
    "LayerCase",
    "autograd_step",
    "image_shape",
    "make_case",
    "manual_gradients",
    "manual_step",
    "measure_layer_memory",
    "probe",
    "run_layers",
    "sequence_sizes",
    "time_layers",
]

LAYERS = (
    "Linear",
    "tanh",
    "relu",
    "gelu",
    "sigmoid",
    "LayerNorm",
    "BatchNorm1d train",
    "BatchNorm1d eval",
    "Dropout train",
    "Embedding",
    "Flatten",
    "Residual(Linear, relu)",
    "Conv1d",
    "Conv2d",
    "Conv2d stride 2",
    "MaxPool2d",
    "AvgPool2d",
    "AdaptiveAvgPool2d",
    "BatchNorm2d train",
    "BatchNorm2d eval",
    "GroupNorm",
    "Softmax",
    "LogSoftmax",
    "RNN",
    "LSTM",
    "GRU",
)
"""The layers benchmarked; each activation is an Elementwise layer. The convolutions, pools
and spatial norms run on images (IMAGE_CHANNELS channels, see ``image_shape``), the recurrent
layers on sequences (``sequence_sizes``, benchmarks/recurrent.py's cases)."""

IMAGE_CHANNELS = 16
"""Channels of the benchmarks' images and sequences: a small CNN's early layers."""


def image_shape(N: int, d: int) -> tuple[int, int, int, int]:
    """(N / 16 images, 16 channels, d / 16, d / 16): at the full sizes 64 images of 16 x 32 x 32,
    about as many numbers as the vector layers' N x d, in a CNN's proportions."""
    side = max(4, d // 16)
    return (max(2, N // 16), IMAGE_CHANNELS, side, side)


def sequence_sizes(N: int, d: int) -> dict[str, int]:
    """B sequences of T steps, inputs of d / 8 and a state of d / 4: at the full sizes
    benchmarks/recurrent.py's character model (B 32, T 32, d 64, H 128)."""
    return {"B": max(2, N // 32), "T": max(2, min(32, N // 4)), "d": max(2, d // 8), "H": max(2, d // 4)}


FULL_SIZES = {"N": 1024, "d": 512, "V": 8192}
"""The issue's realistic sizes: a batch of N = 1024 rows (tokens, for the embedding) of width
d = 512; an embedding table of V = 8192 rows."""

QUICK_SIZES = {"N": 64, "d": 32, "V": 128}
"""--quick: tiny sizes, every code path in seconds."""

TARGET = 1.0
"""The issue's target: manual at most 1.0x autograd's time and 1.0x its peak memory."""

DROPOUT_P = 0.1
FLATTEN_CHANNELS = 8
"""Flatten merges (N, 8, d / 8) into (N, d): a small feature map becoming a vector."""

REPEATS = 21
"""Interleaved repeats per layer in a full run (--quick: 3); each lasts REPEAT_SECONDS."""

REPEAT_SECONDS = {False: 0.05, True: 0.002}
"""How long one timed repeat lasts (full run, --quick): cheap layers are called several times
per repeat, so that the timer's resolution and Python's per-call noise do not decide a ratio."""

MODES = ("manual", "autograd")

MALLOC_TRIM = {"MALLOC_TRIM_THRESHOLD_": "0", "MALLOC_TOP_PAD_": "0"}
"""Besides memory_probe.py's mmap threshold: glibc also returns the top of its small-object heap
to the OS as soon as it is free, so that small transient allocations do not stay resident."""

WARM_ALLOCATOR = {
    "MALLOC_MMAP_THRESHOLD_": str(1 << 30),
    "MALLOC_TRIM_THRESHOLD_": str(1 << 30),
    "MALLOC_TOP_PAD_": str(256 << 20),
}
"""glibc's allocator for the timings (a process of their own): every tensor from the heap, and
freed memory kept for the next one, as a caching allocator (torch's on CUDA) keeps it. Left to
its defaults, glibc serves a fresh multi-MiB tensor by mmap or hands memory back to the OS
depending on the process's history; each such tensor then costs its page faults (about 0.25 ms
per 4 MiB here), paid by whichever side happened to allocate, and the ratio of an unchanged
layer moved by up to 0.5 between runs. Held warm, both sides compute only."""

MEMORY_RESOLUTION = 256 * 1024
"""Bytes: two probes of the same set of tensors differ by up to about 150 KiB (pages of glibc's
small-object heap that a step's history leaves resident), so a manual peak within this of
autograd's counts as equal when the target is judged."""

PROBE_STEPS = 3
"""Measured steps per memory probe, after one warm-up step; the least peak is reported."""

PROBE = Path(__file__).resolve()


@dataclass
class LayerCase:
    """One benchmarked layer with its input, its upstream gradient and its torch twin.

    Attributes:
        name: one of LAYERS.
        layer: the refbp layer, float32.
        module: ``layer.to_torch()``, with a copy of the parameters.
        X: the input: (N, d) float32, (N, 8, d / 8) for Flatten, (N,) int64 for Embedding,
            ``image_shape(N, d)`` for the convolutions, pools and spatial norms.
        G: dJ/d(output), the output's shape, float32, fixed.
        sizes: the sizes in words, for the table.
    """

    name: str
    layer: Layer
    module: torch.nn.Module
    X: Tensor
    G: Tensor
    sizes: str

    @property
    def takes_indices(self) -> bool:
        return bool(getattr(self.layer, "takes_indices", False))


def make_case(name: str, *, N: int, d: int, V: int, seed: int = 0) -> LayerCase:
    """The layer called ``name`` at sizes N, d (V for the embedding), float32, parameters and
    X, G ~ N(0, 1) (W scaled by 1/sqrt(d), running variances in [0.5, 1.5])."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=generator)

    def linear() -> Linear:
        return Linear(randn(d, d) / d**0.5, randn(d))  # W (d, d), b (d,)

    X = randn(N, d)
    sizes = f"N={N}, d={d}"
    layer: Layer
    if name == "Linear":
        layer = linear()
    elif name in ("tanh", "relu", "gelu", "sigmoid"):
        layer = Elementwise(name)
    elif name == "LayerNorm":
        layer = LayerNorm(randn(d), randn(d))
    elif name.startswith("BatchNorm1d"):
        running_var = torch.rand(d, generator=generator) + 0.5  # (d,) in [0.5, 1.5)
        layer = BatchNorm1d(randn(d), randn(d), running_mean=randn(d), running_var=running_var)
        layer.set_training(name.endswith("train"))
    elif name == "Dropout train":
        layer = Dropout(DROPOUT_P, seed=seed)
        sizes += f", p={DROPOUT_P:g}"
    elif name == "Embedding":
        layer = Embedding(randn(V, d))
        X = torch.randint(V, (N,), generator=generator)  # N token indices
        sizes = f"N={N} tokens, V={V}, d={d}"
    elif name == "Flatten":
        layer = Flatten()
        X = X.reshape(N, FLATTEN_CHANNELS, d // FLATTEN_CHANNELS)
        sizes = f"(N, {FLATTEN_CHANNELS}, {d // FLATTEN_CHANNELS}) -> (N, d), N={N}, d={d}"
    elif name == "Residual(Linear, relu)":
        layer = Residual(linear(), Elementwise("relu"))
    elif name in ("Softmax", "LogSoftmax"):
        layer = Softmax(-1) if name == "Softmax" else LogSoftmax(-1)
    elif name in recurrent.MODULES:
        seq = sequence_sizes(N, d)
        rnn = recurrent.make_case(seq, kind=name)  # batch_first, float32, X and G of its own
        layer, X, G = rnn.layer, rnn.X, rnn.G
        return LayerCase(name, layer, rnn.module, X, G, "B={B}, T={T}, d={d}, H={H}".format(**seq))
    else:
        layer, X, sizes = _spatial_case(name, N, d, randn)
    with torch.no_grad():
        G = randn(*layer.to_torch()(X).shape)  # dJ/d(output), the output's shape
    return LayerCase(name, layer, layer.to_torch(), X, G, sizes)


def _spatial_case(name: str, N: int, d: int, randn: Callable[..., Tensor]) -> tuple[Layer, Tensor, str]:
    """The convolution, pooling or spatial norm called ``name``, its image input and its sizes in words."""
    shape = image_shape(N, d)
    n, C, H, W = shape
    X = randn(*shape)
    kernel = f"{C} -> {C} channels, 3 x 3"
    layer: Layer
    if name == "Conv1d":
        X = randn(n, C, H * W)  # (n, C, L): each image as one sequence
        layer = Conv1d(randn(C, C, 3) / (3 * C) ** 0.5, randn(C), padding=1)
        return layer, X, f"({n}, {C}, {H * W}), {C} -> {C} channels, k = 3, padding 1"
    if name.startswith("Conv2d"):
        stride = 2 if name.endswith("stride 2") else 1
        layer = Conv2d(randn(C, C, 3, 3) / (9 * C) ** 0.5, randn(C), stride=stride, padding=1)
        return layer, X, f"{shape}, {kernel}, stride {stride}, padding 1"
    if name == "MaxPool2d":
        return MaxPool2d(3, 2, 1), X, f"{shape}, 3 x 3 windows, stride 2, padding 1 (overlapping)"
    if name == "AvgPool2d":
        return AvgPool2d(3, 2, 1, count_include_pad=False), X, f"{shape}, 3 x 3, stride 2, padding 1 not counted"
    if name == "AdaptiveAvgPool2d":
        return AdaptiveAvgPool2d((3, 5)), X, f"{shape} -> (3, 5)"
    if name.startswith("BatchNorm2d"):
        running_var = torch.rand(C) + 0.5  # (C,) in [0.5, 1.5)
        layer = BatchNorm2d(randn(C), randn(C), running_mean=randn(C), running_var=running_var)
        layer.set_training(name.endswith("train"))
        return layer, X, f"{shape}"
    if name == "GroupNorm":
        return GroupNorm(4, randn(C), randn(C)), X, f"{shape}, 4 groups"
    raise ValueError(f"layer {name!r} is not benchmarked; expected one of {LAYERS}")


def manual_step(case: LayerCase) -> Callable[[], StackGradients]:
    """refbp's lean training step for the one layer: forward keeping only what backward
    needs, backward keeping only dJ/dX and the parameters' gradients, the cache released."""
    layers = [case.layer]
    forward_ctx = ForwardContext(keep_intermediates=False, update_stats=True)
    backward_ctx = BackwardContext(path=(), keep_intermediates=False, overwrite=True, need_dx=not case.takes_indices)

    def step() -> StackGradients:
        cache = stack_forward(layers, case.X, forward_ctx, ())
        # a fresh dJ/da(1), handed over in a list: the loop owns it, as Network.backward owns the loss gradient
        return stack_backward(layers, cache, [case.G.clone()], backward_ctx, release=True)

    return step


def autograd_step(case: LayerCase) -> Callable[[], dict[str, Tensor]]:
    """torch.autograd on ``layer.to_torch()``: forward, then backward from a fresh copy of G,
    X requiring grad (not for the embedding's indices). Returns every gradient by torch name,
    and leaves no ``.grad`` behind: the caller holds the gradients, as it holds refbp's, so
    that both steps' gradients live equally long (and the next step starts with none)."""
    module = case.module
    params = [(f"0.{name}", p) for name, p in module.named_parameters()]  # the names of layer.torch_modules()

    def step() -> dict[str, Tensor]:
        X = case.X if case.takes_indices else case.X.detach().requires_grad_(True)
        module(X).backward(case.G.clone())
        grads = {name: p.grad for name, p in params if p.grad is not None}
        for _, p in params:
            p.grad = None
        if X.grad is not None:
            grads["input"] = X.grad
        return grads

    return step


def manual_gradients(case: LayerCase, grads: StackGradients) -> dict[str, Tensor]:
    """The manual step's gradients under the torch names ``autograd_step`` uses."""
    names = case.layer.torch_param_names((1,))
    out = {names[key]: value for key, value in grads.params.items()}
    if grads.dJ_dx is not None:
        out["input"] = grads.dJ_dx
    return out


def _inner(case: LayerCase, seconds: float) -> int:
    """Calls per timed repeat so that one repeat of autograd lasts about ``seconds``."""
    step = autograd_step(case)
    step()
    single = min(interleaved_medians({"autograd": step}, repeats=3).values())
    return max(1, min(1000, round(seconds / max(single, 1e-7))))


def measure_layer_times(
    names: Sequence[str], sizes: dict[str, int], *, repeats: int, quick: bool, threads: int
) -> list[dict[str, Any]]:
    """``time_layers`` in a fresh process whose allocator is held warm (WARM_ALLOCATOR)."""
    env = {**os.environ, **WARM_ALLOCATOR}
    args = [str(repeats), str(int(quick)), str(sizes["N"]), str(sizes["d"]), str(sizes["V"]), str(threads), *names]
    out = subprocess.run([sys.executable, str(PROBE), "--time", *args], env=env, stdout=subprocess.PIPE,
                         text=True, check=True)  # fmt: skip
    rows: list[dict[str, Any]] = json.loads(out.stdout.strip().splitlines()[-1])
    return rows


def time_layers(names: Sequence[str], sizes: dict[str, int], *, repeats: int, quick: bool) -> list[dict[str, Any]]:
    """Median seconds of the manual and the autograd step for each layer, timed in turns
    (progress on stderr)."""
    rows = []
    for name in names:
        case = make_case(name, **sizes)
        inner = _inner(case, REPEAT_SECONDS[quick])
        methods = {"manual": manual_step(case), "autograd": autograd_step(case)}
        if name in recurrent.MODULES:  # the products every BPTT must do: a floor the fused kernels need not respect
            methods["floor"] = recurrent.gemm_floor(case.module, case.X)
        t = interleaved_medians(methods, repeats=repeats, inner=inner)
        rows.append({
            "layer": name, "sizes": case.sizes, "repeats": repeats, "inner": inner,
            "t_manual": t["manual"], "t_autograd": t["autograd"], "time_ratio": t["manual"] / t["autograd"],
            **({"t_floor": t["floor"], "floor_ratio": t["floor"] / t["autograd"]} if "floor" in t else {}),
        })  # fmt: skip
        print(f"  time {name}: manual/autograd {rows[-1]['time_ratio']:.2f} "
              f"({1e3 * t['manual']:.3f} / {1e3 * t['autograd']:.3f} ms)", file=sys.stderr, flush=True)  # fmt: skip
    return rows


# ---- peak memory: a fresh process per measurement ------------------------------------------
def probe(modes: Sequence[str], names: Sequence[str], sizes: dict[str, int]) -> list[dict[str, Any]]:
    """In this process: the peak memory of one step of each layer in each mode, in turn, by
    memory_probe.py's method (VmHWM after the step minus VmRSS before it, with glibc's mmap
    threshold at MMAP_THRESHOLD, set by the parent). One warm-up step first, so that torch's lazy
    initialisation is not counted, then the least of PROBE_STEPS measured steps: a step's
    tensors give the same peak every time, and the allocator's small heaps can only add to it."""
    gc.collect()
    gc.freeze()  # what the imports made stays: each collection below scans only the steps' own objects
    out = []
    for name in names:
        for mode in modes:
            case = make_case(name, **sizes)
            step = {"manual": manual_step, "autograd": autograd_step}[mode](case)
            peaks = []
            for _ in range(1 + PROBE_STEPS):
                gc.collect()
                Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident set
                before = _status_kib("VmRSS")
                result = step()
                peaks.append((_status_kib("VmHWM") - before) * 1024)
                del result
            out.append({"layer": name, "mode": mode, "peak_bytes": min(peaks[1:])})  # peaks[0]: the warm-up
    return out


def measure_layer_memory(names: Sequence[str], sizes: dict[str, int], *, threads: int, fresh: bool) -> dict[str, Any]:
    """layer -> {"manual": bytes, "autograd": bytes}: with ``fresh`` each (layer, mode) in a
    process of its own; without (--quick), one process measures them all in turn."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD), **MALLOC_TRIM}
    runs = [([mode], [name]) for name in names for mode in MODES] if fresh else [(list(MODES), list(names))]
    peaks: dict[str, dict[str, int]] = {name: {} for name in names}
    for modes, group in runs:
        args = [",".join(modes), str(sizes["N"]), str(sizes["d"]), str(sizes["V"]), str(threads), *group]
        out = subprocess.run([sys.executable, str(PROBE), "--probe", *args], env=env,
                             capture_output=True, text=True, check=True)  # fmt: skip
        for record in json.loads(out.stdout.strip().splitlines()[-1]):
            peaks[record["layer"]][record["mode"]] = record["peak_bytes"]
    for name in names:
        p = peaks[name]
        print(f"  memory {name}: manual {p['manual'] / 2**20:.2f} MiB, autograd {p['autograd'] / 2**20:.2f} MiB")
    return peaks


def run_layers(*, quick: bool, threads: int, repeats: int) -> dict[str, Any]:
    """Time and memory of every layer; returns the ``layers`` entry of benchmarks.json."""
    sizes = QUICK_SIZES if quick else FULL_SIZES
    rows = measure_layer_times(LAYERS, sizes, repeats=repeats, quick=quick, threads=threads)
    peaks = measure_layer_memory(LAYERS, sizes, threads=threads, fresh=not quick)
    for row in rows:
        p = peaks[row["layer"]]
        ratio = p["manual"] / p["autograd"] if p["autograd"] > 0 else None  # tiny sizes may not move the resident set
        time_met = None if quick else row["time_ratio"] <= TARGET  # --quick: tiny sizes, nothing to judge
        memory_met = None if quick else p["manual"] <= TARGET * p["autograd"] + MEMORY_RESOLUTION
        row.update({
            "peak_manual_bytes": p["manual"], "peak_autograd_bytes": p["autograd"], "memory_ratio": ratio,
            "time_met": time_met, "memory_met": memory_met,
            "met": None if quick else bool(time_met and memory_met),
        })  # fmt: skip
    return {"sizes": sizes, "dtype": "float32", "threads": threads, "repeats": repeats, "fresh_process": not quick,
            "memory_resolution_bytes": MEMORY_RESOLUTION, "rows": rows}  # fmt: skip


def _probe_main(argv: list[str]) -> None:
    modes, N, d, V, threads, *names = argv
    torch.set_num_threads(int(threads))
    print(json.dumps(probe(modes.split(","), names, {"N": int(N), "d": int(d), "V": int(V)})))


def _time_main(argv: list[str]) -> None:
    repeats, quick, N, d, V, threads, *names = argv
    torch.set_num_threads(int(threads))
    sizes = {"N": int(N), "d": int(d), "V": int(V)}
    print(json.dumps(time_layers(names, sizes, repeats=int(repeats), quick=bool(int(quick)))))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--probe":
        _probe_main(sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "--time":
        _time_main(sys.argv[2:])
    else:
        print(__doc__)
