"""Hessian-vector products: refbp's manual R-operator against torch's two routes, time and peak memory.

    python benchmarks/hvp.py --out reports            # writes reports/HVP_BENCHMARKS.md and hvp_benchmarks.json
    python benchmarks/hvp.py --quick                  # tiny sizes, a smoke run

Routes, each H v for every parameter of the benchmarks' MLP (benchmarks.common.benchmark_network)
at one point along one direction v:

    manual                refbp.hvp: one manual forward, its tangents, the R-backward
    forward-over-reverse  torch.func.jvp of torch.func.grad of the oracle J
    double backward       torch.autograd.grad of <dJ/dw, v>, with create_graph

Times are medians of interleaved rounds in one run (a ratio is what to quote on a shared
machine). Peak memory is each route's rise of the process's VmHWM over its baseline, each in a
fresh process (``--probe``), Linux only.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from tabulate import tabulate
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import refbp
from benchmarks.common import benchmark_network, environment, interleaved_medians
from refbp.apps.io import write_atomic
from refbp.nn.keys import Key
from refbp.nn.layer import Params

ROUTES = ("manual", "forward-over-reverse", "double backward")
FULL = [(16, 64), (64, 64), (256, 64), (64, 512)]
QUICK = [(8, 4)]


def routes(width: int, batch: int, dtype: torch.dtype) -> dict[str, Callable[[], object]]:
    """The three ways to H v on one network, point and direction."""
    net, X, y = benchmark_network(width, batch=batch, dtype=dtype)
    params = {name: t.detach() for name, t in net.parameters().items()}
    generator = torch.Generator().manual_seed(1)
    v = {name: torch.randn(t.shape, generator=generator, dtype=torch.float64).to(dtype) for name, t in params.items()}

    def J(p: dict[str, Tensor]) -> Tensor:
        return net.torch_J(X, y, Params({Key.parse(n): t for n, t in p.items()}, net.ties), {})

    def manual() -> object:
        return refbp.hvp(net, X, y, v).Hv

    def forward_over_reverse() -> object:
        return torch.func.jvp(torch.func.grad(J), (params,), (v,))[1]

    def double_backward() -> object:
        leaves = {n: t.clone().requires_grad_(True) for n, t in params.items()}
        grads = torch.autograd.grad(J(leaves), list(leaves.values()), create_graph=True)
        dot = torch.stack([(g * v[n]).sum() for g, n in zip(grads, leaves, strict=True)]).sum()  # <dJ/dw, v>
        return torch.autograd.grad(dot, list(leaves.values()))

    return {"manual": manual, "forward-over-reverse": forward_over_reverse, "double backward": double_backward}


def _vmhwm_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def probe(route: str, width: int, batch: int) -> None:
    """One route once, in this fresh process: print the rise of its peak resident memory."""
    fns = routes(width, batch, torch.float32)
    before = _vmhwm_kib()
    fns[route]()
    print(json.dumps({"peak_bytes": (_vmhwm_kib() - before) * 1024}))


def peak_bytes(route: str, width: int, batch: int) -> int | None:
    if not Path("/proc/self/status").exists():
        return None
    cmd = [sys.executable, __file__, "--probe", route, str(width), str(batch)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return int(json.loads(out.strip().splitlines()[-1])["peak_bytes"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="folder for HVP_BENCHMARKS.md and hvp_benchmarks.json")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 3 rounds: a smoke run")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 21, quick 3)")
    parser.add_argument("--probe", nargs=3, metavar=("ROUTE", "WIDTH", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.probe:
        probe(args.probe[0], int(args.probe[1]), int(args.probe[2]))
        return 0
    repeats = args.repeats or (3 if args.quick else 21)
    rows, records = [], []
    for width, batch in QUICK if args.quick else FULL:
        t = interleaved_medians(routes(width, batch, torch.float32), repeats=repeats)
        mem = {route: peak_bytes(route, width, batch) for route in ROUTES}
        faster = min(t["forward-over-reverse"], t["double backward"])
        lighter = min((m for r, m in mem.items() if r != "manual" and m), default=None)
        record = {"width": width, "batch": batch, "depth": 3, "seconds": t, "peak_bytes": mem}
        records.append(record)
        rows.append([
            f"{width} x 3, batch {batch}", *(f"{t[r] * 1e3:.3f}" for r in ROUTES), f"{t['manual'] / faster:.2f}x",
            "n/a" if not (lighter and mem["manual"]) else f"{mem['manual'] / lighter:.2f}x",
        ])  # fmt: skip
    headers = ["MLP (tanh), float32", *(f"{r} ms" for r in ROUTES), "manual / faster torch", "memory vs lighter"]
    table = tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)
    env = environment(1)
    text = "\n".join([
        "# Hessian-vector products: manual R-operator vs torch", "",
        f"`python benchmarks/hvp.py --out reports`: {env['cpu']}, torch {env['torch']}, 1 thread, "
        f"medians of {repeats} interleaved rounds; peak memory in a fresh process per route (VmHWM rise).", "",
        table, "",
        "Target (issue 21): the manual H v at most 1.0x the faster torch route, time and memory.", "",
    ])  # fmt: skip
    print(text)
    if args.out:
        out = Path(args.out)
        write_atomic(out / "HVP_BENCHMARKS.md", text)
        write_atomic(out / "hvp_benchmarks.json", json.dumps({"environment": env, "rows": records}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
