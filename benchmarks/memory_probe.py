"""Item 2, one configuration in a fresh process: the peak memory of one forward + backward.

    python benchmarks/memory_probe.py MODE BATCH WIDTH      MODE: autograd | manual | manual_full

Prints one JSON line. Method: glibc's mmap threshold is set to 4 KiB before Python starts
(MALLOC_MMAP_THRESHOLD_, by the parent), so every tensor larger than that is its own mmap,
returned to the OS the moment it is freed. The resident set then follows the live tensors,
and its high-water mark (VmHWM) minus the resident set just before the step is the step's
peak: the inputs, parameters and torch itself are in the baseline, the gradients in the peak.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import benchmark_network
from benchmarks.time_backprop import autograd_step, manual_full, manual_step


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def main() -> None:
    mode, batch, width = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    torch.set_num_threads(int(sys.argv[4]) if len(sys.argv) > 4 else 1)
    net, X, y = benchmark_network(width, batch=batch, activation="tanh", dtype=torch.float32)
    step = {"autograd": autograd_step, "manual": manual_step, "manual_full": manual_full}[mode](net, X, y)
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident set
    before = _status_kib("VmRSS")
    result = step()
    peak = _status_kib("VmHWM")
    del result
    print(json.dumps({"mode": mode, "batch": batch, "width": width, "peak_bytes": (peak - before) * 1024}))


if __name__ == "__main__":
    main()
