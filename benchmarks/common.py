"""What every benchmark shares: the machine's description, the timer, the test network."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import refbp

__all__ = ["benchmark_network", "commit", "environment", "interleaved_medians", "load_average", "sync"]


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what platform says."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def load_average() -> float | None:
    """The machine's 1-minute load average (None where the OS has none): on a shared machine
    it says how much other work ran beside a measurement."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def commit() -> str | None:
    """The repository's commit (short hash, "+dirty" when the work tree differs), or None
    outside a git checkout: which code a figure was measured on."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True)  # fmt: skip
    except OSError:
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def environment(threads: int) -> dict[str, Any]:
    """torch version, thread count, devices, the date, the commit and the machine's load:
    recorded with every figure."""
    cuda = torch.cuda.is_available()
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": threads,
        "cpu": cpu_name(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the kernels torch picked: AVX2, AVX512, ...
        "cpu_cores_visible": len(os.sched_getaffinity(0)),
        "cuda_device": torch.cuda.get_device_name(0) if cuda else None,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit(),
        "load_average_1min": load_average(),
    }


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so that a timer measures it (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_medians(
    methods: dict[str, Callable[[], object]],
    *,
    repeats: int,
    inner: int = 1,
    device: torch.device | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    """Median seconds per call of each method, timed in turns: repeat r runs every method
    once (``inner`` calls each), starting from a different method each round, so that a
    burst of load from another process on a shared machine hits all methods alike.
    ``clock``: wall time by default; ``time.process_time`` counts the process's own CPU
    time, what a loaded machine's waiting for a core does not inflate (one thread)."""
    device = device or torch.device("cpu")
    names = list(methods)
    for fn in methods.values():  # warm-up: allocator, kernels, lazy init
        fn()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            fn = methods[name]
            sync(device)
            start = clock()
            for _ in range(inner):
                fn()
            sync(device)
            times[name].append((clock() - start) / inner)
    return {name: statistics.median(values) for name, values in times.items()}


def benchmark_network(
    width: int,
    *,
    batch: int,
    depth: int = 3,
    activation: str = "tanh",
    loss: str = "half_sse",
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> tuple[refbp.MLP, Tensor, Tensor]:
    """The benchmarks' MLP: ``depth`` layers of ``width`` units, ``activation`` on the hidden
    layers, identity output, and a point (X, y) with X, y ~ N(0, 1), (batch, width)."""  # fmt: skip
    net = refbp.MLP.random(
        [width] * (depth + 1), activations=[activation] * (depth - 1) + ["identity"], loss=loss,
        seed=seed, dtype=dtype, device=device,
    )  # fmt: skip
    generator = torch.Generator().manual_seed(seed + 1)
    X = torch.randn(batch, width, generator=generator, dtype=torch.float64).to(dtype=dtype, device=device)
    y = torch.randn(batch, width, generator=generator, dtype=torch.float64).to(dtype=dtype, device=device)
    return net, X, y
