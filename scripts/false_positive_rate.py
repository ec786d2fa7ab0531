"""Measure the harness's false-positive rate: check many random *correct* cases and count how
many are flagged, in three parts, each runnable on its own (``--only``):

    python scripts/false_positive_rate.py --cases 10000 --seed 1 --workers 2 --out reports
    python scripts/false_positive_rate.py --only order2 --order2-cases 1000 --workers 2 --out reports

- **first_order**: ``--cases`` checks of the report's own sweep (refbp.apps.sweep.sweep_specs,
  its random networks: half MLPs in every regime, layer stacks, CNNs with every image layer,
  recurrent networks, tiny GPTs with minGPT's variants; one stack in four with
  reduction="sum"), ``--torch-cases`` users' own torch models converted by ``refbp.from_torch``
  and checked with torch's own gradients, ``--makemore-cases`` makemore MLPs with
  ``BatchNorm1d(unbiased=True)`` (scripts/fp_cases.py); each network in float64 and float32,
  every gradient against autograd and full finite differences.
- **functions**: ``--function-cases`` checks of correct custom ``torch.autograd.Function``s by
  ``check_autograd_function`` in float32, float16 and bfloat16
  (refbp.verify.function_sweep.false_positive_sweep).
- **order2**: ``--order2-cases`` checks drawn from the same families, with
  ``--order2-torch-cases`` and ``--order2-makemore-cases`` (the first networks of the same
  draw): ``check_second_order`` of H v with the tangents and of G v; a network whose layer or
  loss has no second-order rule yet is counted as "no rule", never as a pass.

Writes reports/false_positives.md and .json: each part with the commit, command and time it ran
at; a part run on its own replaces that part of the existing report and keeps the others. Exit
status 1 when some case is flagged or the check raised on one.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fp_parts import DTYPES, FUNCTION_BLOCK, Ticket, first_order_chunk, function_chunk, order2_chunk, tickets
from fp_report import PARTS, markdown, merge, summarise_first_order, summarise_functions, summarise_order2

from refbp.apps.io import write_set

ROOT = Path(__file__).resolve().parent.parent

FUNCTION_CASES = 100 * FUNCTION_BLOCK
"""The default size of the function part: 100 points of every Function in every dtype (2100)."""

CHUNKS_PER_WORKER = 8
"""Chunks per worker process: small enough that the work stays balanced, and progress shows."""


def commit() -> str:
    """The checkout's commit, "+dirty" when tracked files differ from it."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def _run(
    name: str, work: Callable[[Any], Any], chunks: list[Any], workers: int, count: Callable[[list[Any]], str]
) -> tuple[list[Any], float]:
    """``work`` on every chunk in ``workers`` processes; the results in chunk order, and the seconds."""
    start = time.perf_counter()
    done: list[Any] = []
    with ProcessPoolExecutor(max_workers=workers) if workers > 1 else nullcontext() as pool:
        for result in pool.map(work, chunks) if pool is not None else map(work, chunks):  # one: in this process
            done.append(result)
            print(f"{name}: {count(done)}", file=sys.stderr, flush=True)
    return done, time.perf_counter() - start


def _split(items: list[Ticket], n: int) -> list[list[Ticket]]:
    return [chunk for chunk in (items[k::n] for k in range(n)) if chunk]


def _flat(chunks: Iterable[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [r for chunk in chunks for r in chunk]


def _progress(done: list[Any]) -> str:
    records = _flat(done)
    flagged = sum(not r["passed"] if "passed" in r else r["status"] == "flagged" for r in records)
    return f"{len(records)} cases, {flagged} flagged" + (
        "" if "passed" in records[0] else f", {sum(r['status'] == 'no rule' for r in records)} without a rule"
    )


def _function_progress(done: list[dict[str, Any]]) -> str:
    return f"{sum(c['n'] for c in done)} cases, {sum(len(c['flagged']) for c in done)} flagged"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--only", default=",".join(PARTS), help=f"comma-separated parts of {list(PARTS)} (default: all)"
    )
    parser.add_argument("--cases", type=int, default=10_000, help="first order: sweep checks (half per dtype)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1, help="processes (one torch thread each)")
    parser.add_argument("--torch-cases", type=int, default=None, help="users' torch models (default: cases / 10)")
    parser.add_argument("--makemore-cases", type=int, default=None, help="makemore MLPs (default: cases / 20)")
    parser.add_argument("--function-cases", type=int, default=FUNCTION_CASES, help="custom Function checks")
    parser.add_argument("--order2-cases", type=int, default=1000, help="order 2: sweep checks")
    parser.add_argument("--order2-torch-cases", type=int, default=None, help="order 2: torch models (default: / 10)")
    parser.add_argument("--order2-makemore-cases", type=int, default=None, help="order 2: makemore (default: / 20)")
    parser.add_argument("--out", default="reports")
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        parser.error(f"--only {args.only!r}: expected some of {list(PARTS)}, comma-separated")
    for flag in ("cases", "workers", "function_cases", "order2_cases"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} {getattr(args, flag)}: expected an int >= 1")

    base = f"python scripts/false_positive_rate.py --seed {args.seed} --workers {args.workers}"
    chunk_count = args.workers * CHUNKS_PER_WORKER
    summaries: dict[str, dict[str, Any]] = {}
    for part in parts:
        started, at = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"), commit()  # before any work
        if part == "functions":
            n = -(-args.function_cases // FUNCTION_BLOCK) * FUNCTION_BLOCK  # whole rounds
            size = -(-n // FUNCTION_BLOCK // chunk_count) * FUNCTION_BLOCK
            jobs = [(min(size, n - k), args.seed * 1_000_000 + k) for k in range(0, n, size)]

            done, seconds = _run(part, _call_function_chunk, jobs, args.workers, _function_progress)
            summary = summarise_functions(done)
            command = f"{base} --only functions --function-cases {args.function_cases}"
        else:
            prefix = "" if part == "first_order" else "order2_"
            cases = getattr(args, f"{prefix}cases")
            torch_cases = getattr(args, f"{prefix}torch_cases")
            torch_cases = cases // 10 if torch_cases is None else torch_cases
            makemore_cases = getattr(args, f"{prefix}makemore_cases")
            makemore_cases = cases // 20 if makemore_cases is None else makemore_cases
            drawn, refused = tickets(cases, args.seed, torch_cases, makemore_cases)
            work = first_order_chunk if part == "first_order" else order2_chunk
            done, seconds = _run(part, work, _split(drawn, chunk_count), args.workers, _progress)
            records = _flat(done)
            summary = summarise_first_order(records) if part == "first_order" else summarise_order2(records)
            summary["sweep_blocks_refused"] = refused
            flag = "--" + prefix.replace("_", "-")
            command = (
                f"{base} --only {part} {flag}cases {cases} {flag}torch-cases {torch_cases} "
                f"{flag}makemore-cases {makemore_cases}"
            )
        summaries[part] = {"commit": at, "command": command, "started": started, "seconds": round(seconds, 1),
                           "dtypes": list(DTYPES), **summary}  # fmt: skip
        s = summaries[part]
        print(f"{part}: {s['flagged']} of {s.get('checked', s['cases'])} flagged, {seconds:.0f} s", file=sys.stderr)

    out = Path(args.out)
    previous_path = out / "false_positives.json"
    previous = json.loads(previous_path.read_text()) if previous_path.exists() else None
    doc = merge(previous if previous and "parts" in previous else None, summaries)
    write_set(out, {"false_positives.json": json.dumps(doc, indent=1) + "\n", "false_positives.md": markdown(doc)})
    print(f"{doc['flagged']} of {doc['cases']} correct cases flagged; {doc['errors']} errors; "
          f"{doc['not_checked_no_rule']} order-2 cases without a rule")  # fmt: skip
    return 0 if not doc["flagged"] and not doc["errors"] else 1


def _call_function_chunk(job: tuple[int, int]) -> dict[str, Any]:
    """function_chunk(n, seed) for one (n, seed) job (a top-level function: a worker can unpickle it)."""
    return function_chunk(*job)


if __name__ == "__main__":
    sys.exit(main())
