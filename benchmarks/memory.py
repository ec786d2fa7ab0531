"""Item 2: peak memory of one forward + backward, each configuration in a fresh process
(see memory_probe.py for the method)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["MMAP_THRESHOLD", "MODES", "measure_memory"]

MMAP_THRESHOLD = 64 * 1024
"""glibc serves every allocation above 64 KiB with its own mmap and unmaps it when freed, so
that the resident set follows the live tensors (see memory_probe.py)."""

MODES = ("autograd", "manual", "manual_full")

PROBE = Path(__file__).resolve().parent / "memory_probe.py"


def measure_memory(batches: list[int], width: int, *, threads: int) -> list[dict[str, Any]]:
    """Peak bytes above the pre-step baseline, per batch and mode, float32, tanh, depth 3."""
    rows = []
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}
    for batch in batches:
        unit = batch * width * 4  # one (N, d) float32 activation tensor
        peaks = {}
        for mode in MODES:
            out = subprocess.run(
                [sys.executable, str(PROBE), mode, str(batch), str(width), str(threads)],
                env=env, capture_output=True, text=True, check=True,
            )  # fmt: skip
            peaks[mode] = json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"]
        for mode in MODES:
            rows.append({
                "batch": batch, "width": width, "mode": mode, "peak_bytes": peaks[mode],
                "peak_MiB": peaks[mode] / 2**20, "activation_units": peaks[mode] / unit,
                "vs_autograd": peaks[mode] / peaks["autograd"],
            })  # fmt: skip
        print(f"  memory N={batch} w={width}: " + ", ".join(f"{m} {peaks[m] / 2**20:.0f} MiB" for m in MODES))
    return rows
