"""Item 4: how fast the harness verifies random networks, and how long the test suite takes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from refbp.apps.report import DEFAULT_EXAMPLES
from refbp.apps.sweep import run_report, sweep_specs

__all__ = ["DEFAULT_EXAMPLES", "time_report_sweep", "time_test_suite"]

ROOT = Path(__file__).resolve().parent.parent


def time_report_sweep(examples: int = DEFAULT_EXAMPLES) -> dict[str, Any]:
    """The ``refbp report`` sweep at its default settings (float64 and float32, CPU, fd auto):
    every case checked against autograd and finite differences."""
    specs = sweep_specs(examples, 0)
    outcomes, seconds = run_report(specs, devices=["cpu"], dtypes=["float64", "float32"], progress=False)
    row = {
        "examples": examples, "checks": len(outcomes), "seconds": seconds,
        "checks_per_second": len(outcomes) / seconds, "all_passed": all(o.result.passed for o in outcomes),
    }  # fmt: skip
    print(f"  harness: {row['checks']} checks in {seconds:.1f} s = {row['checks_per_second']:.1f}/s", flush=True)
    return row


def time_test_suite() -> dict[str, Any]:
    """The whole test suite under HYPOTHESIS_PROFILE=ci, in a subprocess: serially, then across
    the machine's cores with pytest-xdist (``-n auto``, what ``make test`` runs), back to back."""
    env = {**os.environ, "HYPOTHESIS_PROFILE": "ci"}
    out: dict[str, Any] = {"cores": len(os.sched_getaffinity(0))}
    for label, extra in (("serial", []), ("parallel", ["-n", "auto"])):
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "tests", "-q", "-p", "no:cacheprovider", *extra],
            cwd=ROOT, env=env, capture_output=True, text=True,
        )  # fmt: skip
        seconds = time.perf_counter() - start
        summary = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
        print(f"  test suite (ci, {label}): {seconds:.1f} s, {summary}", flush=True)
        out[label] = {"seconds": seconds, "returncode": done.returncode, "summary": summary}
    out["speedup"] = out["serial"]["seconds"] / out["parallel"]["seconds"]
    return out
