"""Item 3 again, with the GPT (issue 20): refbp.check's default on a small GPT against
torch.autograd.gradcheck(fast_mode=True) over the same parameters, and item 3's MLP table rerun.

    python benchmarks/check_gpt.py --out reports   # both; rewrites item 3 of reports/BENCHMARKS.md
    python benchmarks/check_gpt.py --quick         # a smoke run on tiny sizes, printed only

The GPT is the issue's: 4 layers, n_embd 64, heads of 32, T 32, B 4, a vocabulary of 65, float32,
about 206k parameters in 52 tensors (126 gradients with the intermediates). Methods, timed in
turns in one process after a warm-up each (benchmarks.common.interleaved_medians):

- *default*: ``refbp.check(net, idx, targets)``: autograd for every tensor, finite differences
  under fd_mode "auto" and its default budget (refbp.verify.finite_diff.FD_BUDGET_S);
- *autograd only*: the same with ``references=("autograd",)``: what the check costs without
  finite differences (the conditioning probes, the manual backward, the comparisons);
- *fd, parameters*: ``references=("fd",)``, ``fd_mode="directional"``, ``directions=1``, on the
  parameters' gradients alone: one direction per tensor, as gradcheck's fast mode takes;
- *gradcheck fast*: ``gradcheck(J, params, fast_mode=True)`` on the model as a float64 torch
  module (``GPT.to_torch()``), J its loss, every parameter tensor an input.

Item 3's MLP table (benchmarks/finite_differences.py) is rerun by ``--out`` and written into
reports/benchmarks.json; reports/BENCHMARKS.md is rendered again from that JSON
(benchmarks/report.py) with this GPT part added to item 3, so the other items stay as measured.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.autograd import gradcheck

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import refbp
from benchmarks import finite_differences
from benchmarks.common import interleaved_medians
from benchmarks.report import render_markdown, with_cuda_run
from refbp.apps.io import write_atomic
from refbp.models import GPT
from refbp.verify.finite_diff import FD_BUDGET_S

__all__ = ["GPT_CONFIG", "QUICK_CONFIG", "main", "time_check_gpt"]

GPT_CONFIG: dict[str, int] = {"vocab_size": 65, "block_size": 32, "n_layer": 4, "n_head": 2, "n_embd": 64, "batch": 4}
"""The issue's GPT: 4 layers, n_embd 64 (2 heads of 32), T 32, B 4, 65 tokens."""

QUICK_CONFIG: dict[str, int] = {"vocab_size": 11, "block_size": 4, "n_layer": 2, "n_head": 2, "n_embd": 8, "batch": 2}

REPEATS = 5


def time_check_gpt(config: dict[str, int], *, repeats: int = REPEATS) -> dict[str, Any]:
    """Median seconds of each method (module docstring) and what the default check covered."""
    c = config
    net = GPT.random(vocab_size=c["vocab_size"], block_size=c["block_size"], n_layer=c["n_layer"],
                     n_head=c["n_head"], n_embd=c["n_embd"], seed=0, dtype=torch.float32)  # fmt: skip
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, config["vocab_size"], (config["batch"], config["block_size"]), generator=g)
    targets = torch.randint(0, config["vocab_size"], (config["batch"], config["block_size"]), generator=g)
    grads = net.backward(net.forward(idx), targets).as_dict()
    parameters = {name: grads[name] for name in net.parameters()}
    module = net.to_torch().double()
    names = [name for name, _ in module.named_parameters()]
    inputs = tuple(p.detach().clone().requires_grad_(True) for _, p in module.named_parameters())

    def J(*params: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(module, dict(zip(names, params, strict=True)), (idx, targets))[1]

    methods = {
        "default": lambda: _passed(refbp.check(net, idx, targets)),
        "autograd_only": lambda: _passed(refbp.check(net, idx, targets, references=("autograd",))),
        "fd_parameters": lambda: _passed(
            refbp.check(net, idx, targets, parameters, references=("fd",), fd_mode="directional", directions=1)
        ),
        "gradcheck_fast": lambda: _passed(gradcheck(J, inputs, fast_mode=True)),
    }
    t = interleaved_medians(methods, repeats=repeats)
    result = refbp.check(net, idx, targets)  # what one default check covered
    fd_rows = [row for row in result.rows if row.reference.startswith("fd")]
    return {
        "config": config,
        "parameters": sum(p.numel() for p in inputs),
        "parameter_tensors": len(inputs),
        "gradients": len(grads),
        "repeats": repeats,
        "budget_s": FD_BUDGET_S,
        **{f"t_{name}": value for name, value in t.items()},
        "default/gradcheck_fast": t["default"] / t["gradcheck_fast"],
        "fd_parameters/gradcheck_fast": t["fd_parameters"] / t["gradcheck_fast"],
        "fd_tensors": len(fd_rows),
        "fd_parameter_tensors": sum(row.name in parameters for row in fd_rows),
        "fd_evaluations": sum(row.evaluations for row in fd_rows),
        "fd_directions": sorted({row.directions for row in fd_rows}),
        "autograd_only_tensors": sum(t.coverage.startswith("autograd only") for t in result.tensors),
        "passed": result.passed,
    }


def _passed(out: object) -> object:
    if out is not True and not getattr(out, "passed", False):
        raise RuntimeError("a check of the benchmark's correct GPT failed: the benchmark is wrong")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="folder of benchmarks.json and BENCHMARKS.md to update")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, printed only")
    parser.add_argument("--repeats", type=int, default=REPEATS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    load_before = os.getloadavg()[0]
    print("item 3: finite differences vs gradcheck, MLPs", flush=True)
    widths = finite_differences.QUICK_WIDTHS if args.quick else finite_differences.FULL_WIDTHS
    fd = finite_differences.time_fd(widths)
    print("item 3: the GPT's default check vs gradcheck fast_mode", flush=True)
    entry = time_check_gpt(QUICK_CONFIG if args.quick else GPT_CONFIG, repeats=2 if args.quick else args.repeats)
    entry["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    entry["seconds"] = time.perf_counter() - start
    load = (load_before, os.getloadavg()[0])
    if max(load) > 1.5 * (os.cpu_count() or 1):  # a shared machine busy with others: say so beside the figures
        entry["load_note"] = (
            f"the machine was busy with other work (1-minute load average {load[0]:.1f} at the start, "
            f"{load[1]:.1f} at the end, on {os.cpu_count()} cores): absolute times are inflated, and the "
            "wall-clock budget buys fewer differences than on a quiet machine. Quote the ratios."
        )
    print(json.dumps(entry, indent=1), flush=True)
    if args.out is None or args.quick:
        return 0
    folder = Path(args.out)
    doc = json.loads((folder / "benchmarks.json").read_text())
    doc["finite_differences"], doc["check_gpt"] = fd, entry
    write_atomic(folder / "benchmarks.json", json.dumps(doc, indent=2, default=str) + "\n")  # as run.py writes it
    write_atomic(folder / "BENCHMARKS.md", render_markdown(with_cuda_run(doc, folder)))  # item 3 with this GPT part
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
