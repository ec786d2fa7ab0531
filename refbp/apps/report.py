"""``refbp report``: the main job. Sweep the seed's network and a seeded set of random networks
over every activation, loss, dtype and available device; check every gradient against
autograd and finite differences; write REPORT.md, report.json and a plot.

report.json schema "refbp.report/1" (every key always present):

    schema            "refbp.report/1"
    environment       {refbp, torch, python, devices: [..]}
    settings          {examples, seed, devices, dtypes, fd_mode}
    summary           {cases, passed, failed, comparisons, excluded_entries,
                       worst_margin: {dtype: {reference: max error/allowed}}}
    coverage          [{activation, loss, dtype, device, cases, passed}]   one per combination seen
    cases             [{id, label, spec: CaseSpec fields, passed, margin, n_excluded,
                        worst: {name, reference, max_rel_error, allowed}, command, failures: [rows]}]
    timing            {generated, seconds, cases_per_second}     the only key that varies run to run

``margin`` is max over the case's rows of max_abs_error / allowed: a row passes when it is
<= 1. Rows (in ``failures``) are refbp.compare.Comparison.to_dict() records.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tabulate import tabulate

from .. import __version__
from ..nn.activations import ACTIVATIONS
from ..nn.losses import LOSSES
from ..nn.validation import check_seed
from ..verify.cases import CaseSpec
from ..verify.check import CheckResult, check
from .arguments import MAX_EXAMPLES, check_examples, check_out_folder, check_threads
from .io import write_atomic, write_set
from .progress import Progress as _Progress

__all__ = ["SCHEMA", "CaseOutcome", "add_arguments", "run", "run_report", "sweep_specs"]

SCHEMA = "refbp.report/1"
DEFAULT_THREADS = 1
"""torch threads for the sweep. Its tensors are tiny (width <= 12, batch <= 8): a second
thread only adds synchronisation, and on a shared 2-core machine one thread ran the default
sweep 3.5x faster than two."""

DEFAULT_EXAMPLES = 200
"""Random networks in the default sweep (each run in every dtype and device): enough that every
activation x loss pair appears several times, small enough to run in well under a minute."""


@dataclass
class CaseOutcome:
    """One case of the sweep and its CheckResult, reduced to what the report shows."""

    id: int
    label: str
    spec: CaseSpec
    result: CheckResult

    @property
    def margin(self) -> float:
        """max over rows of max_abs_error / allowed (a row passes at <= 1)."""
        return max((row.margin for row in self.result.rows), default=0.0)

    def to_dict(self) -> dict[str, Any]:
        worst = max(self.result.rows, key=lambda r: r.margin)
        return {
            "id": self.id,
            "label": self.label,
            "spec": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self.spec).items()},
            "passed": self.result.passed,
            "margin": _finite(self.margin),
            "n_excluded": self.result.n_excluded,
            "worst": {
                "name": worst.name,
                "reference": worst.reference,
                "max_rel_error": _finite(worst.max_rel_error),
                "allowed": _finite(worst.allowed),
            },
            "command": self.spec.command(),
            "failures": [row.to_dict() for row in self.result.failures],
        }


def _finite(x: float) -> float | str:
    return x if x == x and abs(x) != float("inf") else str(x)


# ---- the sweep ----------------------------------------------------------------------------
def sweep_specs(examples: int, seed: int) -> list[tuple[str, CaseSpec]]:
    """The seed's network, then ``examples`` random networks drawn from ``seed`` (float64, cpu;
    the caller sets dtype and device). Losses cycle, and every activation is placed in turn in
    the first layer, so the coverage matrix fills evenly."""
    rng = random.Random(seed)
    names = sorted(ACTIVATIONS)
    losses = sorted(LOSSES)
    out = [
        (
            "seed network 2-3-1, sigmoid, half_sse",
            CaseSpec((2, 3, 1), ("sigmoid", "sigmoid"), "half_sse", seed, batch=4),
        )
    ]
    for k in range(examples):
        loss = losses[k % len(losses)]
        depth = rng.randint(1, 4)
        dims = [rng.randint(1, 12) for _ in range(depth)] + [rng.randint(2 if loss == "cross_entropy" else 1, 6)]
        acts = [names[(k // len(losses) + layer) % len(names)] for layer in range(depth)]
        required = LOSSES[loss].output_activation
        if required is not None:
            acts[-1] = required
        elif depth > 1:
            acts[-1] = rng.choice(names)
        spec = CaseSpec(
            dims=tuple(dims),
            activations=tuple(acts),
            loss=loss,
            seed=rng.randint(0, 2**31 - 1),
            batch=rng.randint(1, 8),
            weight_decay=0.1 if k % 5 == 4 else 0.0,
            weight_scale=3.0 if k % 4 == 3 else 1.0,
        )
        out.append((f"random #{k + 1}", spec))
    return out


def run_report(
    *,
    examples: int = DEFAULT_EXAMPLES,
    seed: int = 0,
    devices: list[str],
    dtypes: list[str],
    fd_mode: str = "auto",
    progress: bool = True,
) -> tuple[list[CaseOutcome], float]:
    """Check every case of the sweep in every dtype and device; returns (outcomes, seconds)."""
    specs = sweep_specs(examples, seed)
    total = len(specs) * len(devices) * len(dtypes)
    bar = _Progress(total, progress)
    outcomes: list[CaseOutcome] = []
    failed = 0
    start = time.perf_counter()
    for label, base in specs:
        for device in devices:
            for dtype in dtypes:
                spec = CaseSpec(**{**asdict(base), "dtype": dtype, "device": device})
                case = spec.build()
                result = check(case.net, case.X, case.y, fd_mode=fd_mode, seed=spec.seed)
                outcomes.append(CaseOutcome(len(outcomes) + 1, label, spec, result))
                failed += not result.passed
                bar.advance(failed)
    return outcomes, time.perf_counter() - start


# ---- rendering ----------------------------------------------------------------------------
def _coverage(outcomes: list[CaseOutcome]) -> list[dict[str, Any]]:
    counts: dict[tuple[str, str, str, str], list[int]] = defaultdict(lambda: [0, 0])
    for o in outcomes:
        for act in sorted(set(o.spec.activations)):
            cell = counts[(act, o.spec.loss, o.spec.dtype, o.spec.device)]
            cell[0] += 1
            cell[1] += o.result.passed
    return [
        {"activation": a, "loss": lo, "dtype": dt, "device": dev, "cases": n, "passed": p}
        for (a, lo, dt, dev), (n, p) in sorted(counts.items())
    ]


def _worst_margins(outcomes: list[CaseOutcome]) -> dict[str, dict[str, float | str]]:
    worst: dict[str, dict[str, float]] = defaultdict(dict)
    for o in outcomes:
        for row in o.result.rows:
            m = row.margin
            ref = row.reference
            worst[o.spec.dtype][ref] = max(worst[o.spec.dtype].get(ref, 0.0), m)
    return {dt: {ref: _finite(v) for ref, v in sorted(refs.items())} for dt, refs in sorted(worst.items())}


def build_json(outcomes: list[CaseOutcome], settings: dict[str, Any], seconds: float) -> dict[str, Any]:
    """The report.json document (see the module docstring for the schema)."""
    failed = [o for o in outcomes if not o.result.passed]
    return {
        "schema": SCHEMA,
        "environment": {
            "refbp": __version__,
            "torch": torch.__version__.split("+")[0],
            "python": platform.python_version(),
            "devices": settings["devices"],
        },
        "settings": settings,
        "summary": {
            "cases": len(outcomes),
            "passed": len(outcomes) - len(failed),
            "failed": len(failed),
            "comparisons": sum(len(o.result.rows) for o in outcomes),
            "excluded_entries": sum(o.result.n_excluded for o in outcomes),
            "worst_margin": _worst_margins(outcomes),
        },
        "coverage": _coverage(outcomes),
        "cases": [o.to_dict() for o in outcomes],
        "timing": {
            "generated": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "seconds": round(seconds, 3),
            "cases_per_second": round(len(outcomes) / seconds, 2) if seconds > 0 else None,
        },
    }


def render_markdown(doc: dict[str, Any], plot_note: str, extra_sections: list[str]) -> str:
    """REPORT.md from the JSON document, so the two never disagree."""
    s, settings = doc["summary"], doc["settings"]
    verdict = "ALL PASSED" if s["failed"] == 0 else f"{s['failed']} FAILED"
    lines = [
        "# refbp validation report",
        "",
        f"**{verdict}**: {s['passed']} / {s['cases']} cases, {s['comparisons']} gradient comparisons "
        f"(every dJ/dW, dJ/db, dJ/dz, dJ/da and dJ/dX against torch.autograd and against float64 central "
        f"finite differences).",
        "",
        f"Command: `refbp report --examples {settings['examples']} --seed {settings['seed']}` "
        f"(devices: {', '.join(settings['devices'])}; dtypes: {', '.join(settings['dtypes'])}). "
        f"refbp {doc['environment']['refbp']}, torch {doc['environment']['torch']}, "
        f"{doc['timing']['seconds']:.1f} s ({doc['timing']['cases_per_second']} cases/s).",
        "",
        f"Finite-difference entries excluded because the perturbation crossed a relu/leaky_relu kink: "
        f"{s['excluded_entries']}.",
        "",
        "## Worst error relative to the tolerance",
        "",
        "Largest max|g - r| / allowed over all cases (a comparison passes at <= 1; see refbp/tolerances.py).",
        "",
    ]
    refs = sorted({ref for refs in s["worst_margin"].values() for ref in refs})
    rows = [[dt] + [_fmt(s["worst_margin"][dt].get(ref, "")) for ref in refs] for dt in s["worst_margin"]]
    lines += [tabulate(rows, headers=["dtype", *refs], tablefmt="github", disable_numparse=True), ""]
    lines += ["## Coverage: cases passed / run", "", _coverage_table(doc["coverage"]), ""]
    worst = sorted(doc["cases"], key=lambda c: -_num(c["margin"]))[:8]
    lines += ["## Worst cases", ""]
    table = [
        [c["id"], c["label"], "-".join(map(str, c["spec"]["dims"])), ",".join(c["spec"]["activations"]),
         c["spec"]["loss"], c["spec"]["dtype"], f"dJ/d{c['worst']['name']} vs {c['worst']['reference']}",
         _fmt(c["margin"]), "yes" if c["passed"] else "NO"]
        for c in worst
    ]  # fmt: skip
    headers = ["id", "case", "dims", "activations", "loss", "dtype", "worst comparison", "error/allowed", "ok"]
    lines += [tabulate(table, headers=headers, tablefmt="github", disable_numparse=True), ""]
    failures = [c for c in doc["cases"] if not c["passed"]]
    lines += ["## Failures", ""]
    if not failures:
        lines += ["None.", ""]
    for c in failures:
        lines += [f"### case {c['id']} ({c['label']})", "", "Reproduce with:", "", f"    {c['command']}", ""]
        lines += [
            f"- dJ/d{r['name']} vs {r['reference']}: max rel error {r['max_rel_error']}, {r['note']}"
            for r in c["failures"]
        ]
        lines.append("")
    lines += ["## Error distribution", "", plot_note, ""]
    lines += extra_sections
    return "\n".join(lines).rstrip() + "\n"


def _coverage_table(coverage: list[dict[str, Any]]) -> str:
    columns = sorted({(c["loss"], c["dtype"], c["device"]) for c in coverage})
    cells = {(c["activation"], c["loss"], c["dtype"], c["device"]): f"{c['passed']}/{c['cases']}" for c in coverage}
    rows = [[act] + [cells.get((act, *col), "-") for col in columns] for act in sorted(ACTIVATIONS)]
    headers = ["activation"] + [f"{lo} {dt} {dev}" for lo, dt, dev in columns]
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def _num(x: float | str) -> float:
    return float(x)


def _fmt(x: float | str) -> str:
    return x if isinstance(x, str) else f"{x:.2e}"


def write_plot(outcomes: list[CaseOutcome], path: Path) -> str:
    """Write ``render_plot``'s PNG to ``path`` (when matplotlib is there); returns its sentence."""
    png, note = render_plot(outcomes, path.name)
    if png is not None:
        write_atomic(path, png)
    return note


def render_plot(outcomes: list[CaseOutcome], name: str = "errors.png") -> tuple[bytes | None, str]:
    """A PNG of error/allowed per dtype and reference (log scale, tolerance at 1), and the
    sentence REPORT.md shows: the image ``name``, or why it was skipped (the PNG is then None)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None, "Plot skipped: matplotlib is not installed (`pip install refbp[plot]`)."
    import io as _io

    series: dict[str, list[float]] = defaultdict(list)
    for o in outcomes:
        for row in o.result.rows:
            m = row.margin
            if 0 < m < float("inf"):
                series[f"{o.spec.dtype} vs {row.reference.replace('fd-', 'FD ')}"].append(m)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    lows = [min(v) for v in series.values() if v]
    low = min(lows) if lows else 1e-6
    bins = [10 ** (k / 4) for k in range(int(4 * torch.log10(torch.tensor(low)).floor()), 9)]
    for name in sorted(series):
        ax.hist(series[name], bins=bins, histtype="step", linewidth=1.5, label=f"{name} ({len(series[name])})")
    ax.axvline(1.0, color="black", linestyle="--", label="tolerance")
    ax.set_xscale("log")
    ax.set_xlabel("max |g - r| / allowed, per tensor (passes at <= 1)")
    ax.set_ylabel("tensors (exact matches, error 0, not shown)")
    ax.set_title("refbp report: gradient error against tolerance")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = _io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue(), f"![error distribution]({name})"


# ---- command line -------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--examples", type=int, default=DEFAULT_EXAMPLES,
        help=f"random networks to sweep, 0 to {MAX_EXAMPLES:,} (default %(default)s)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed of the sweep, 0 to 2**32 - 1 (default %(default)s)")
    parser.add_argument("--device", default="auto", help="auto (every available device), cpu or cuda")
    parser.add_argument("--dtype", default="all", help="all (float64 and float32), float64 or float32")
    parser.add_argument("--fd-mode", default="auto", choices=["auto", "full", "directional"])
    parser.add_argument(
        "--out", default="reports", help="folder for REPORT.md, report.json, errors.png, replaced together"
    )
    parser.add_argument(
        "--threads", type=int, default=DEFAULT_THREADS, help="torch CPU threads, at most the CPUs (default %(default)s)"
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress on stderr (a bar on a terminal, else a line per 10%%)"
    )


def _devices(option: str) -> list[str]:
    available = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if option == "auto":
        return available
    if option not in ("cpu", "cuda"):
        raise ValueError(f"--device {option!r}: expected auto, cpu or cuda")
    if option not in available:
        raise ValueError(f"--device {option}: torch sees no CUDA GPU on this machine")
    return [option]


def _dtypes(option: str) -> list[str]:
    if option == "all":
        return ["float64", "float32"]
    if option not in ("float64", "float32", "float16", "bfloat16"):
        raise ValueError(f"--dtype {option!r}: expected all, float64, float32, float16 or bfloat16")
    return [option]


def run(args: argparse.Namespace) -> int:
    """Check every option before any work, run the sweep, and replace the report files as one
    set (refbp.apps.io.write_set): REPORT.md, report.json and errors.png always match."""
    out = check_out_folder(args.out)
    check_examples(args.examples)
    check_seed(args.seed, "--seed")
    check_threads(args.threads)
    devices, dtypes = _devices(args.device), _dtypes(args.dtype)
    torch.set_num_threads(args.threads)
    settings = {
        "examples": args.examples,
        "seed": args.seed,
        "devices": devices,
        "dtypes": dtypes,
        "fd_mode": args.fd_mode,
    }
    outcomes, seconds = run_report(
        examples=args.examples, seed=args.seed, devices=devices, dtypes=dtypes,
        fd_mode=args.fd_mode, progress=not args.no_progress,
    )  # fmt: skip
    doc = build_json(outcomes, settings, seconds)
    png, plot_note = render_plot(outcomes, "errors.png")
    extra = [_bugs_section(out)]
    write_set(out, {
        "report.json": json.dumps(doc, indent=1, sort_keys=False) + "\n",
        "REPORT.md": render_markdown(doc, plot_note, [e for e in extra if e]),
        "errors.png": png,  # None (no matplotlib) removes an old plot the new REPORT.md does not show
    })  # fmt: skip
    s = doc["summary"]
    print(f"refbp report: {s['passed']}/{s['cases']} cases passed, {s['comparisons']} comparisons, "
          f"{seconds:.1f} s; wrote {out / 'REPORT.md'}, {out / 'report.json'}")  # fmt: skip
    return 0 if s["failed"] == 0 else 1


def _bugs_section(out: Path) -> str:
    """The bug-catalogue section, from ``refbp bugs``'s own output when it has been run."""
    path = out / "bugs.md"
    if not path.exists():
        return "## Bug catalogue\n\nNot run yet: `refbp bugs` writes it.\n"
    body = path.read_text(encoding="utf-8").split("\n", 1)[-1]
    return "## Bug catalogue (from `refbp bugs`, reports/bugs.md)\n" + body.replace("\n## ", "\n### ")
