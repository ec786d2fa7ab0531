"""Cold start: what a new process pays before its first verdict (issue 10, item 9).

Every pytest worker and every CLI call is a new process. Four figures, each the median over
``repeats`` fresh interpreters (cold) or over repeats in one process (warm):

- ``import refbp``: the package alone (it imports torch lazily, on first use);
- ``import torch``: what the first use of a network then costs, for comparison;
- the first ``refbp.check`` of a small MLP in a process that has imported torch, against the
  second (warm) one: what lazy imports inside the check (sympy, via torch.unravel_index, took
  0.65 s before refbp located the worst entry itself) would add;
- ``refbp check --case ...`` end to end, a whole CLI process.

    python benchmarks/startup.py [--repeats 7]      # prints the JSON
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

__all__ = ["measure_startup", "render_startup"]

PROBE = r"""
import json, sys, time
t0 = time.perf_counter()
import refbp
t1 = time.perf_counter()
import torch
t2 = time.perf_counter()
net = refbp.MLP.random([4, 8, 3], activations=["tanh", "identity"], loss="mse", seed=0, dtype=torch.float64)
gen = torch.Generator().manual_seed(0)
X = torch.randn(5, 4, dtype=torch.float64, generator=gen)
y = torch.randn(5, 3, dtype=torch.float64, generator=gen)
t3 = time.perf_counter()
first = refbp.check(net, X, y)
t4 = time.perf_counter()
warm = []
for _ in range(int(sys.argv[1])):
    s = time.perf_counter()
    again = refbp.check(net, X, y)
    warm.append(time.perf_counter() - s)
assert first.passed and again.passed
print(json.dumps({"import_refbp": t1 - t0, "import_torch": t2 - t1, "first_check": t4 - t3, "warm_checks": warm,
                  "sympy_loaded": "sympy" in sys.modules}))
"""

CASE = '{"dims": [4, 8, 3], "activations": ["tanh", "identity"], "loss": "mse", "seed": 0}'


def measure_startup(repeats: int = 7) -> dict[str, Any]:
    """Medians over ``repeats`` fresh processes (and repeats warm checks in each)."""
    runs = []
    cli = []
    for _ in range(repeats):
        done = subprocess.run(
            [sys.executable, "-c", PROBE, str(repeats)], cwd=ROOT, capture_output=True, text=True, check=True
        )
        runs.append(json.loads(done.stdout))
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "refbp", "check", "--case", CASE], cwd=ROOT, capture_output=True,
                       check=True)  # fmt: skip
        cli.append(time.perf_counter() - start)
    median = {
        key: statistics.median(run[key] for run in runs) for key in ("import_refbp", "import_torch", "first_check")
    }
    warm = statistics.median(t for run in runs for t in run["warm_checks"])
    out = {
        "repeats": repeats,
        "import_refbp_s": median["import_refbp"],
        "import_torch_s": median["import_torch"],
        "first_check_s": median["first_check"],
        "warm_check_s": warm,
        "first_over_warm": median["first_check"] / warm,
        "cli_check_process_s": statistics.median(cli),
        "sympy_loaded": any(run["sympy_loaded"] for run in runs),
    }
    print(
        f"  import refbp {1e3 * out['import_refbp_s']:.1f} ms, import torch {1e3 * out['import_torch_s']:.0f} ms, "
        f"first check {1e3 * out['first_check_s']:.0f} ms vs warm {1e3 * warm:.0f} ms "
        f"({out['first_over_warm']:.1f}x), refbp check process {out['cli_check_process_s']:.2f} s",
        flush=True,
    )
    return out


def render_startup(s: dict[str, Any]) -> list[str]:
    """The Markdown section of BENCHMARKS.md."""
    return [
        "## 7. Cold start: import and first check",
        "",
        f"Medians over {s['repeats']} fresh processes (warm: repeats within each). `import refbp` does not "
        "import torch; the first network does.",
        "",
        "| figure | time |",
        "|---|---:|",
        f"| `import refbp` (cold) | {1e3 * s['import_refbp_s']:.1f} ms |",
        f"| `import torch` (cold, for comparison) | {1e3 * s['import_torch_s']:.0f} ms |",
        f"| first `refbp.check` in the process (2-layer MLP, autograd + full FD) | {1e3 * s['first_check_s']:.0f} ms |",
        f"| a later `refbp.check` of the same network (warm) | {1e3 * s['warm_check_s']:.0f} ms |",
        f"| first / warm | {s['first_over_warm']:.1f}x |",
        f"| `refbp check --case ...`, a whole process | {s['cli_check_process_s']:.2f} s |",
        "",
        f"sympy imported by a check: {'yes' if s['sympy_loaded'] else 'no'} (torch.unravel_index imports it, "
        "0.65 s; refbp locates the worst entry itself).",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    print(json.dumps(measure_startup(args.repeats), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
