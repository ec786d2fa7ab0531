"""Measure the harness's false-positive rate: check many random *correct* cases (refbp's own
manual gradients, verified independently to round-off) and count how many are flagged.

    python scripts/false_positive_rate.py --cases 10000 --seed 1 --out reports

Cases come from refbp.report.sweep_specs (every activation and loss, depths 1-4, widths 1-12,
batches 1-8, weight decay in 1 of 5, weights scaled x3 toward saturation in 1 of 4), each run
in float64 and float32, against autograd and full finite differences. Writes
reports/false_positives.md and .json with the count and the closest calls (error/allowed).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tabulate import tabulate

from refbp.apps.io import write_atomic
from refbp.apps.report import DEFAULT_THREADS, sweep_specs
from refbp.verify.cases import CaseSpec
from refbp.verify.check import check


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=10_000, help="cases in all (half per dtype)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default="reports")
    args = parser.parse_args()
    torch.set_num_threads(DEFAULT_THREADS)  # tiny networks: one thread is fastest

    specs = [spec for label, spec in sweep_specs(args.cases // 2, args.seed) if label.startswith("random")]
    start = time.perf_counter()
    margins: list[tuple[float, str, str, str]] = []  # (error/allowed, dtype, comparison, spec json)
    flagged = []
    n = 0
    for base in specs:
        for dtype in ("float64", "float32"):
            spec = CaseSpec(**{**asdict(base), "dtype": dtype})
            case = spec.build()
            result = check(case.net, case.X, case.y, fd_mode="full", seed=spec.seed)
            n += 1
            worst = max(result.rows, key=lambda r: r.margin)
            ratio = worst.margin
            margins.append((ratio, dtype, f"dJ/d{worst.name} vs {worst.reference}", spec.to_json()))
            if not result.passed:
                flagged.append({"spec": json.loads(spec.to_json()), "message": result.failure_message()})
        if len(margins) % 1000 == 0:
            print(f"{len(margins)} cases, {len(flagged)} flagged", file=sys.stderr)
    seconds = time.perf_counter() - start
    margins.sort(reverse=True)
    by_dtype = {dt: max(m for m, d, *_ in margins if d == dt) for dt in ("float64", "float32")}
    doc = {
        "cases": n,
        "flagged": len(flagged),
        "false_positive_rate": len(flagged) / n,
        "worst_ratio_by_dtype": by_dtype,
        "closest_calls": [
            {"ratio": m, "dtype": d, "comparison": c, "spec": json.loads(s)} for m, d, c, s in margins[:10]
        ],
        "flagged_cases": flagged,
        "seconds": round(seconds, 1),
        "command": f"python scripts/false_positive_rate.py --cases {args.cases} --seed {args.seed}",
    }
    out = Path(args.out)
    write_atomic(out / "false_positives.json", json.dumps(doc, indent=1) + "\n")
    rows = [[f"{m:.3g}", d, c, s] for m, d, c, s in margins[:10]]
    md = [
        "# False-positive rate of the harness",
        "",
        f"`{doc['command']}`: **{len(flagged)} of {n} correct cases flagged** "
        f"(rate {len(flagged) / n:.2g}), {seconds:.0f} s.",
        "",
        "Each case checks every gradient (W, b, z, a, X) against autograd and full finite differences.",
        f"Largest error/allowed seen: float64 {by_dtype['float64']:.3g}, float32 {by_dtype['float32']:.3g} "
        "(a comparison fails above 1).",
        "",
        "## Closest calls",
        "",
        tabulate(
            rows, headers=["error/allowed", "dtype", "comparison", "case"], tablefmt="github", disable_numparse=True
        ),
        "",
    ]
    write_atomic(out / "false_positives.md", "\n".join(md))
    print(f"{len(flagged)} of {n} correct cases flagged; worst ratios {by_dtype}; {seconds:.0f} s")
    return 0 if not flagged else 1


if __name__ == "__main__":
    sys.exit(main())
