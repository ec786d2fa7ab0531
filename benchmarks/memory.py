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

MMAP_THRESHOLD = 4 * 1024
"""glibc serves every allocation of 4 KiB or more with its own mmap and unmaps it when freed, so
that the resident set follows the live tensors (see memory_probe.py). Not 64 KiB, as before: a
recurrent layer's steps allocate tensors of 16-48 KiB each (one (B, H) or (B, 3H) per step),
which under a 64 KiB threshold came from glibc's heap, whose pages stayed resident from the
warm-up step and so were in the baseline, not in the peak: autograd's GRU step read 1.6-3.0 MiB
there and 5.6-5.7 MiB at 16 KiB and at 4 KiB, refbp's 4.4 MiB at all three."""

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
