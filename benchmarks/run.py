"""Run refbp's benchmarks (issues 6 and 11) and write reports/BENCHMARKS.md and reports/benchmarks.json.

    python benchmarks/run.py                 # everything (make bench), about 12 minutes on 2 cores
    python benchmarks/run.py --quick         # a smoke run on tiny sizes, under a minute
    python benchmarks/run.py --cuda-only     # item 5 alone, on a GPU machine (benchmarks/cuda.sh)
    python benchmarks/run.py --layers-only   # item 6 alone (about 4 minutes), merged into the
                                             # benchmarks.json already in --out; the report is rendered again
    python benchmarks/run.py --mlp-only      # item 1 alone (about 6 minutes), merged likewise
    python benchmarks/run.py --render-only   # BENCHMARKS.md again from the JSON in --out (with a GPU
                                             # machine's benchmarks_cuda.json as item 5)

Timings are medians of interleaved repeats taken in one process: the machines are shared
and noisy, so only ratios measured side by side are quoted.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import finite_differences, harness, layers, memory, startup, time_backprop
from benchmarks.common import environment, load_average
from benchmarks.report import render_markdown, with_cuda_run
from refbp.apps.io import write_atomic

__all__ = ["main", "run"]


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the items asked for; returns the JSON document."""
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    doc: dict[str, Any] = {"environment": environment(args.threads), "quick": args.quick, "command": args.command}
    cuda = torch.cuda.is_available()
    repeats = 3 if args.quick else args.repeats
    if not args.cuda_only:
        doc["time_cpu"] = run_mlp(args)
        print("item 2: peak memory, fresh process per configuration", flush=True)
        doc["memory"] = memory.measure_memory([64] if args.quick else [1024, 8192], 256 if args.quick else 2048,
                                              threads=args.threads)  # fmt: skip
        print("item 3: finite differences vs gradcheck", flush=True)
        widths = finite_differences.QUICK_WIDTHS if args.quick else finite_differences.FULL_WIDTHS
        doc["finite_differences"] = finite_differences.time_fd(widths)
        print("item 4: harness throughput", flush=True)
        doc["harness"] = harness.time_report_sweep(5 if args.quick else harness.DEFAULT_EXAMPLES)
        doc["test_suite"] = None if args.skip_suite else harness.time_test_suite()
        doc["layers"] = run_layers(args)
        print("item 7: cold start, fresh processes", flush=True)
        doc["startup"] = startup.measure_startup(1 if args.quick else 7)
    print("item 5: CUDA", flush=True)
    if cuda:
        grid = time_backprop.QUICK_GRID if args.quick else time_backprop.FULL_GRID
        doc["time_cuda"] = time_backprop.time_grid(grid, repeats=repeats, device="cuda")
    else:
        doc["time_cuda"] = None
        print("  skipped: no CUDA GPU visible", flush=True)
    doc["seconds"] = time.perf_counter() - start
    return doc


def run_layers(args: argparse.Namespace) -> dict[str, Any]:
    """Item 6 alone: the ``layers`` entry of the JSON document, with its own command and date."""
    torch.set_num_threads(args.threads)
    print("item 6: each layer, manual vs autograd, time and peak memory", flush=True)
    start = time.perf_counter()
    entry = layers.run_layers(quick=args.quick, threads=args.threads, repeats=3 if args.quick else layers.REPEATS)
    entry.update({"quick": args.quick, "command": args.command, "environment": environment(args.threads),
                  "seconds": time.perf_counter() - start})  # fmt: skip
    return entry


def run_mlp(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Item 1 alone: the MLP training step against autograd and the bare GEMMs, CPU."""
    torch.set_num_threads(args.threads)
    print("item 1: manual vs autograd vs bare GEMMs, CPU", flush=True)
    grid = time_backprop.QUICK_GRID if args.quick else time_backprop.FULL_GRID
    work = 3e6 if args.quick else time_backprop.WORK_PER_REPEAT
    return time_backprop.time_grid(grid, repeats=3 if args.quick else args.repeats, work_per_repeat=work)


def merge_item(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """--layers-only, --mlp-only: item 6 (or item 1) measured again and put into the document
    already in ``out``, so that the report keeps the other items as they were measured (a
    document with that item alone if none). Item 1 records the command and date it was measured
    with under "time_cpu_run"."""
    path = out / "benchmarks.json"
    doc: dict[str, Any]
    if path.exists():
        doc = json.loads(path.read_text())
    else:
        doc = {"environment": environment(args.threads), "quick": args.quick, "command": args.command,
               "time_cuda": None, "seconds": 0.0}  # fmt: skip
    if args.layers_only:
        doc["layers"] = run_layers(args)
    else:
        start, env = time.perf_counter(), environment(args.threads)  # the date, commit and load at the start
        doc["time_cpu"] = run_mlp(args)
        doc["time_cpu_run"] = {"command": args.command, "environment": env,
                               "seconds": time.perf_counter() - start,
                               "load_average_1min_after": load_average()}  # fmt: skip
    return doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="reports", help="folder for BENCHMARKS.md and benchmarks.json")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of every code path")
    parser.add_argument("--cuda-only", action="store_true", help="only item 5 (needs a CUDA GPU)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved repeats per timing (default 7)")
    parser.add_argument("--skip-suite", action="store_true", help="do not time the test suite")
    parser.add_argument("--layers-only", action="store_true",
                        help="only item 6, merged into the benchmarks.json already in --out")  # fmt: skip
    parser.add_argument("--mlp-only", action="store_true",
                        help="only item 1, merged into the benchmarks.json already in --out")  # fmt: skip
    parser.add_argument("--render-only", action="store_true",
                        help="only write BENCHMARKS.md again from the JSON documents in --out")  # fmt: skip
    args = parser.parse_args(argv)
    args.command = "python benchmarks/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if sum((args.cuda_only, args.layers_only, args.mlp_only)) > 1:
        print("--cuda-only, --layers-only and --mlp-only each run one item: choose one", file=sys.stderr)
        return 2
    if args.cuda_only and not torch.cuda.is_available():
        print("--cuda-only: torch sees no CUDA GPU on this machine", file=sys.stderr)
        return 2
    out = Path(args.out)
    if args.render_only:
        doc = json.loads((out / "benchmarks.json").read_text())
        write_atomic(out / "BENCHMARKS.md", render_markdown(with_cuda_run(doc, out)))
        print(f"wrote {out / 'BENCHMARKS.md'} from the JSON documents in {out}")
        return 0
    doc = merge_item(args, out) if args.layers_only or args.mlp_only else run(args)
    name = "BENCHMARKS_CUDA" if args.cuda_only else "BENCHMARKS"
    write_atomic(out / f"{name.lower()}.json", json.dumps(doc, indent=2, default=str) + "\n")
    write_atomic(out / f"{name}.md", render_markdown(doc if args.cuda_only else with_cuda_run(doc, out)))
    seconds = (
        doc["layers"]["seconds"]
        if args.layers_only
        else doc["time_cpu_run"]["seconds"]
        if args.mlp_only
        else doc["seconds"]
    )
    print(f"wrote {out / (name + '.md')} and {out / (name.lower() + '.json')} in {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
