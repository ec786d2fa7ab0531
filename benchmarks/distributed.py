"""How much faster ``refbp report`` runs sharded over several processes (torchrun), on this machine.

    python benchmarks/distributed.py                      # --examples 200 and 500, 1-4 processes, 3 rounds
    python benchmarks/distributed.py --procs 2 --rounds 1 --examples 10 --out /tmp/x   # a smoke run

Each configuration runs the whole command in a fresh process, as a user would: plain
``python -m refbp report`` (one process, no process group), then ``torchrun --standalone
--nproc-per-node=P -m refbp report`` for each P. The rounds are interleaved (round r runs every
configuration once, starting from a different one), so that load from other processes on a
shared machine hits all of them alike; medians are quoted. Two times per run: the sweep's own
(report.json's ``timing.seconds``: from the first case to the gathered results) and the whole
command's wall time (with Python's and torch's start, torchrun's rendezvous, the plot and the
files). Every sharded report.json is checked to be the plain one apart from ``timing``.

Writes DISTRIBUTED_BENCHMARK.md and distributed_benchmark.json to ``--out`` (one set).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tabulate import tabulate

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import environment
from refbp.apps.io import write_set

__all__ = ["main", "render_markdown", "run"]

ROOT = Path(__file__).resolve().parent.parent
TORCHRUN = Path(sys.executable).parent / "torchrun"


def _command(procs: int | None, examples: int, out: Path) -> list[str]:
    report = ["-m", "refbp", "report", "--examples", str(examples), "--no-progress", "--out", str(out)]
    if procs is None:
        return [sys.executable, *report]
    return [str(TORCHRUN), "--standalone", f"--nproc-per-node={procs}", *report]


def _label(procs: int | None) -> str:
    return "plain" if procs is None else f"torchrun x{procs}"


def _once(procs: int | None, examples: int, folder: Path) -> dict[str, Any]:
    """Run one configuration: its wall time, its sweep time, the CPU time of all its processes
    (torchrun's agent and ranks included), the load average it started under, its report.json."""
    out = folder / _label(procs).replace(" ", "_")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(folder), "OMP_NUM_THREADS": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = os.getloadavg()[0]
    start = time.perf_counter()
    done = subprocess.run(_command(procs, examples, out), cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode != 0:
        raise RuntimeError(f"{_label(procs)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    doc = json.loads((out / "report.json").read_text())
    timing = doc.pop("timing")
    return {"wall": wall, "sweep": timing["seconds"], "cpu": cpu, "load": load, "doc": doc}


def measure(examples: int, procs: list[int], rounds: int) -> dict[str, Any]:
    """Time plain and every torchrun configuration ``rounds`` times, interleaved, on the sweep of
    ``examples`` networks; the medians and the ratios to plain."""
    configurations: list[int | None] = [None, *procs]
    times: dict[str, dict[str, list[float]]] = {
        _label(p): {"wall": [], "sweep": [], "cpu": [], "load": []} for p in configurations
    }
    reference: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(prefix="refbp-distributed-bench.") as tmp:
        for r in range(rounds):
            turn = configurations[r % len(configurations) :] + configurations[: r % len(configurations)]
            for p in turn:
                result = _once(p, examples, Path(tmp))
                reference = reference or result["doc"]
                if result["doc"] != reference:
                    raise RuntimeError(f"{_label(p)}: report.json differs from the others apart from timing")
                for key in ("wall", "sweep", "cpu", "load"):
                    times[_label(p)][key].append(result[key])
                print(
                    f"  --examples {examples}, round {r + 1}: {_label(p):12s} sweep {result['sweep']:6.2f} s, "
                    f"command {result['wall']:6.2f} s, CPU {result['cpu']:6.2f} s, load {result['load']:.1f}",
                    flush=True,
                )
    assert reference is not None
    medians = {label: {k: statistics.median(v) for k, v in t.items()} for label, t in times.items()}
    plain = medians["plain"]
    rows = [
        {
            "configuration": label,
            "processes": 1 if label == "plain" else int(label.split("x")[1]),
            "sweep_seconds": m["sweep"],
            "command_seconds": m["wall"],
            "sweep_speedup": plain["sweep"] / m["sweep"],
            "command_speedup": plain["wall"] / m["wall"],
            "cpu_seconds": m["cpu"],
            "load_average": m["load"],
            "sweep_runs": times[label]["sweep"],
            "command_runs": times[label]["wall"],
            "cpu_runs": times[label]["cpu"],
        }
        for label, m in medians.items()
    ]
    loads = [x for t in times.values() for x in t["load"]]
    return {"examples": examples, "cases": reference["summary"]["cases"], "rows": rows,
            "load_average_1min": {"min": min(loads), "max": max(loads)}}  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every ``--examples`` value in turn; returns the JSON document."""
    return {
        "environment": environment(1),
        "command": args.command,
        "rounds": args.rounds,
        "identical_reports": True,
        "sweeps": [measure(examples, args.procs, args.rounds) for examples in args.examples],
    }


def render_markdown(doc: dict[str, Any]) -> str:
    """DISTRIBUTED_BENCHMARK.md from the JSON document."""
    env = doc["environment"]
    headers = ["configuration", "processes", "sweep s", "sweep speed-up", "command s", "command speed-up",
               "CPU s (all processes)", "load before"]  # fmt: skip
    lines = [
        "# refbp report on several processes: speed-up",
        "",
        f"`{doc['command']}`: `refbp report` plain and under `torchrun --standalone --nproc-per-node=P`, "
        f"{doc['rounds']} interleaved rounds, medians. {env['cpu']}, {env['cpu_cores_visible']} cores visible, "
        f"torch {env['torch']}, one torch thread per process, {env['date']}.",
        "",
    ]
    for sweep in doc["sweeps"]:
        table = [
            [r["configuration"], r["processes"], f"{r['sweep_seconds']:.2f}", f"{r['sweep_speedup']:.2f}x",
             f"{r['command_seconds']:.2f}", f"{r['command_speedup']:.2f}x", f"{r['cpu_seconds']:.1f}",
             f"{r['load_average']:.1f}"]
            for r in sweep["rows"]
        ]  # fmt: skip
        load = sweep["load_average_1min"]
        lines += [
            f"## `refbp report --examples {sweep['examples']}` ({sweep['cases']} cases: float64 and float32, CPU)",
            "",
            tabulate(table, headers=headers, tablefmt="github", disable_numparse=True),
            "",
            f"1-minute load average of the machine during these runs: {load['min']:.1f} to {load['max']:.1f}.",
            "",
        ]
    lines += [
        "*sweep*: report.json's `timing.seconds`, from the first case to the gathered results (rank 0). "
        "*command*: the whole command's wall time, Python's and torch's start, torchrun's rendezvous, the plot "
        "and the files included. Speed-ups are against the plain command. *CPU s*: user + system time of every "
        "process of the command (torchrun's agent and every rank, each importing torch): the work, which "
        "sharding does not shrink. *load before*: the machine's 1-minute load average as the run started "
        "(medians throughout). Every sharded report.json was the plain one apart from `timing`.",
        "",
        "How to read it. The ranks share the cases through one queue, so none idles while another has work "
        "left, and per case they compute as fast as one process does; what they cannot do is find free cores. "
        + (_BUSY if _busy(doc) else _QUIET)
        + " The whole command also pays a fixed price per process: torchrun's agent and each rank import torch "
        "(see the CPU column), a few seconds of wall time that a short sweep does not win back and a long one does.",
    ]
    return "\n".join(lines) + "\n"


_BUSY = (
    "This machine is shared, and while these runs took place other jobs kept its cores busy (a load average "
    "well above the number of cores): a process got what the scheduler left it, so a second rank gained a "
    "second share of a contended machine, not a second core, and three or four ranks more shares still "
    "(oversubscription pays here only because other jobs' processes are the ones that lose turns)."
)
_QUIET = (
    "The machine was otherwise quiet (a load average below its number of cores): as many ranks as cores "
    "run side by side, and more ranks than cores only take turns on them (oversubscription)."
)


def _busy(doc: dict[str, Any]) -> bool:
    """True when other jobs loaded the machine: the median load before a run exceeded its cores."""
    loads = [r["load_average"] for sweep in doc["sweeps"] for r in sweep["rows"]]
    return statistics.median(loads) > doc["environment"]["cpu_cores_visible"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="reports", help="folder for DISTRIBUTED_BENCHMARK.md and its JSON")
    parser.add_argument("--examples", default="200,500", help="refbp report --examples values, comma-separated")
    parser.add_argument("--procs", default="1,2,3,4", help="torchrun process counts, comma-separated")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default %(default)s)")
    args = parser.parse_args(argv)
    args.procs = [int(p) for p in args.procs.split(",")]
    args.examples = [int(e) for e in args.examples.split(",")]
    args.command = "python benchmarks/distributed.py " + " ".join(argv if argv is not None else sys.argv[1:])
    doc = run(args)
    write_set(args.out, {
        "distributed_benchmark.json": json.dumps(doc, indent=2) + "\n",
        "DISTRIBUTED_BENCHMARK.md": render_markdown(doc),
    })  # fmt: skip
    print(f"wrote {Path(args.out) / 'DISTRIBUTED_BENCHMARK.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
