"""``refbp report``: the main job. Sweep the seed's network, random MLPs in every regime and
random layer stacks (refbp.apps.sweep) over every dtype and available device; check every
gradient against autograd and finite differences; write REPORT.md, report.json and a plot,
replaced as one set.

report.json schema "refbp.report/2" (every key always present):

    schema            "refbp.report/2"
    environment       {refbp, torch, python, devices: [..]}
    settings          {examples, seed, devices, dtypes, fd_mode}
    summary           {cases, passed, failed, by_kind: {mlp|stack|gpt: {cases, passed}}, comparisons,
                       excluded_entries, unverified_entries,
                       worst_margin: {dtype: {reference: max error/allowed}},
                       order2: {every, checked, passed, failed, unverified, no_rule, comparisons,
                                worst_margin, no_rule_for: {what has no rule: cases}}}
    coverage          [{kind, component, loss, dtype, device, cases, passed,
                        order2_checked, order2_passed, order2_no_rule}]   one per combination seen
    cases             [{id, label, kind, spec, describe, passed, margin, n_excluded, n_unverified,
                        worst: {name, reference, max_rel_error, allowed}, command,
                        failures: [rows], tensors: [failing tensor verdicts],
                        order2: null | {verdict, note, comparisons, margin}}]
    timing            {generated, seconds, cases_per_second, processes}   the only key that varies

``margin`` is max over the case's rows of max_abs_error / allowed: a verified entry passes when
it is <= 1. Rows (in ``failures``) are refbp.verify.compare.Comparison.to_dict() records; a
case passes when every tensor is verified (refbp.verify.check). ``timing.processes`` is how
many processes ran the sweep (torchrun: refbp.distributed); nothing else depends on it.

``order2``: one float64 case in ``every`` (refbp.verify.sweep.takes_order2) is also checked at
order 2, H v by check_second_order; its verdict is passed, failed (an entry contradicted: the
report then exits 1), unverified (exactly on a kink: H v undefined) or "no rule" (a layer or the
loss has no second-order rule yet: not checked, never counted as passed).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from tabulate import tabulate

from ..distributed.launch import DEFAULT_TIMEOUT, timeout_from_environment, torchrun_launch
from ..distributed.sharded_report import run_report_on_ranks
from ..nn.activations import ACTIVATIONS
from ..nn.validation import check_seed
from ..verify.compare import quantity
from ..verify.sweep import ORDER2_EVERY, ORDER2_VERDICTS
from ..version import __version__
from .arguments import MAX_EXAMPLES, check_examples, check_out_folder, check_threads
from .io import write_atomic, write_set
from .ranks import on_ranks
from .sweep import CaseOutcome, components, finite, run_report, sweep_specs

__all__ = [
    "SCHEMA",
    "CaseOutcome",
    "add_arguments",
    "build_json",
    "render_markdown",
    "run",
    "run_report",
    "sweep_specs",
    "versions",
]

SCHEMA = "refbp.report/2"
DEFAULT_THREADS = 1
"""torch threads for the sweep. Its tensors are tiny (width <= 12, batch <= 8): a second
thread only adds synchronisation, and on a shared 2-core machine one thread ran the default
sweep 3.5x faster than two."""

DEFAULT_EXAMPLES = 200
"""Random networks in the default sweep (each run in every dtype and device): enough that every
activation x loss pair appears several times, small enough to run in well under a minute."""


# ---- rendering ----------------------------------------------------------------------------
def _coverage(outcomes: list[CaseOutcome]) -> list[dict[str, Any]]:
    counts: dict[tuple[str, str, str, str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    for o in outcomes:
        order2 = o.order2
        for component in components(o.spec):
            cell = counts[(o.kind, component, o.spec.loss, o.spec.dtype, o.spec.device)]
            cell[0] += 1
            cell[1] += o.result.passed
            if order2 is not None:  # checked, passed, no rule
                cell[2] += order2.verdict != "no rule"
                cell[3] += order2.verdict == "passed"
                cell[4] += order2.verdict == "no rule"
    return [
        {"kind": k, "component": c, "loss": lo, "dtype": dt, "device": dev, "cases": n, "passed": p,
         "order2_checked": n2, "order2_passed": p2, "order2_no_rule": r2}
        for (k, c, lo, dt, dev), (n, p, n2, p2, r2) in sorted(counts.items())
    ]  # fmt: skip


def _order2_summary(outcomes: list[CaseOutcome]) -> dict[str, Any]:
    """The order-2 share of the sweep: how many cases each verdict, and what has no rule."""
    checked = [o.order2 for o in outcomes if o.order2 is not None]
    count = {verdict: sum(c.verdict == verdict for c in checked) for verdict in ORDER2_VERDICTS}
    missing: dict[str, int] = defaultdict(int)
    for c in checked:
        if c.verdict == "no rule":
            missing[_what_has_no_rule(c.note)] += 1
    return {
        "every": ORDER2_EVERY,
        "checked": len(checked) - count["no rule"],
        "passed": count["passed"],
        "failed": count["failed"],
        "unverified": count["unverified"],
        "no_rule": count["no rule"],
        "comparisons": sum(c.comparisons for c in checked),
        "worst_margin": finite(max((c.margin for c in checked), default=0.0)),
        "no_rule_for": dict(sorted(missing.items())),
    }


def _what_has_no_rule(note: str) -> str:
    """ "LayerNorm" from "layer 3.1 (LayerNorm(8)) has no second-order rule yet"; a loss's note as it is."""
    if note.startswith("layer ") and " (" in note:
        return note.split(" (", 1)[1].split("(", 1)[0].rstrip(")")
    return note.split(";")[0]


def _worst_margins(outcomes: list[CaseOutcome]) -> dict[str, dict[str, float | str]]:
    worst: dict[str, dict[str, float]] = defaultdict(dict)
    for o in outcomes:
        for row in o.result.rows:
            m = row.margin
            ref = row.reference
            worst[o.spec.dtype][ref] = max(worst[o.spec.dtype].get(ref, 0.0), m)
    return {dt: {ref: finite(v) for ref, v in sorted(refs.items())} for dt, refs in sorted(worst.items())}


def versions() -> dict[str, str]:
    """The versions a JSON report records: refbp's, torch's (without its build tag) and Python's."""
    return {"refbp": __version__, "torch": torch.__version__.split("+")[0], "python": platform.python_version()}


def build_json(
    outcomes: list[CaseOutcome], settings: dict[str, Any], seconds: float, *, processes: int = 1
) -> dict[str, Any]:
    """The report.json document (see the module docstring for the schema)."""
    failed = [o for o in outcomes if not o.result.passed]
    by_kind: dict[str, dict[str, int]] = {}
    for o in outcomes:
        counts = by_kind.setdefault(o.kind, {"cases": 0, "passed": 0})
        counts["cases"] += 1
        counts["passed"] += o.result.passed
    return {
        "schema": SCHEMA,
        "environment": {**versions(), "devices": settings["devices"]},
        "settings": settings,
        "summary": {
            "cases": len(outcomes),
            "passed": len(outcomes) - len(failed),
            "failed": len(failed),
            "by_kind": dict(sorted(by_kind.items())),
            "comparisons": sum(len(o.result.rows) for o in outcomes),
            "excluded_entries": sum(o.result.n_excluded for o in outcomes),
            "unverified_entries": sum(row.n_unverified for o in outcomes for row in o.result.rows),
            "worst_margin": _worst_margins(outcomes),
            "order2": _order2_summary(outcomes),
        },
        "coverage": _coverage(outcomes),
        "cases": [o.to_dict() for o in outcomes],
        "timing": {
            "generated": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "seconds": round(seconds, 3),
            "cases_per_second": round(len(outcomes) / seconds, 2) if seconds > 0 else None,
            "processes": processes,
        },
    }


def render_markdown(doc: dict[str, Any], plot_note: str, extra_sections: list[str]) -> str:
    """REPORT.md from the JSON document, so the two never disagree."""
    s, settings = doc["summary"], doc["settings"]
    verdict = "ALL PASSED" if s["failed"] == 0 else f"{s['failed']} FAILED"
    lines = [
        "# refbp validation report",
        "",
        f"**{verdict}**: {s['passed']} / {s['cases']} cases ({_kinds(s['by_kind'])}), {s['comparisons']} "
        f"gradient comparisons: every parameter, intermediate and input gradient against torch.autograd and "
        f"against float64 central finite differences. A case passes when every entry of every gradient is "
        f"verified by a reference and contradicted by none.",
        "",
        f"Command: `refbp report --examples {settings['examples']} --seed {settings['seed']}` "
        f"(devices: {', '.join(settings['devices'])}; dtypes: {', '.join(settings['dtypes'])}). "
        f"refbp {doc['environment']['refbp']}, torch {doc['environment']['torch']}, "
        f"{doc['timing']['seconds']:.1f} s ({doc['timing']['cases_per_second']} cases/s).",
        "",
        f"Finite-difference entries excluded because the perturbation crossed a piece boundary (relu's 0, "
        f"softplus's threshold, bce's clamps, a max-pool window's tie) or an unresolvable "
        f"point: {s['excluded_entries']}; entries some "
        f"reference could not verify (each verified by another): {s['unverified_entries']}.",
        "",
        _order2_line(s["order2"]),
        "",
        "## Worst error relative to the tolerance",
        "",
        "Largest max|g - r| / allowed over all cases (a comparison passes at <= 1; see refbp/verify/tolerances.py).",
        "",
    ]
    refs = sorted({ref for refs in s["worst_margin"].values() for ref in refs})
    rows = [[dt] + [_fmt(s["worst_margin"][dt].get(ref, "")) for ref in refs] for dt in s["worst_margin"]]
    lines += [tabulate(rows, headers=["dtype", *refs], tablefmt="github", disable_numparse=True), ""]
    lines += ["## Coverage: cases passed / run", "",
              "The last column, order 2: the float64 cases checked at order 2 that passed / were checked, "
              "and those not checked because some layer or the loss has no second-order rule yet.", "",
              "MLPs, by activation (any layer) and loss:", ""]  # fmt: skip
    lines += [_coverage_table([c for c in doc["coverage"] if c["kind"] == "mlp"]), ""]
    lines += ["Layer stacks (CNNs and recurrent networks among them) and GPTs, by layer (BatchNorm, BatchNorm2d "
              "and Dropout by mode) and activation:", ""]  # fmt: skip
    lines += [_layer_table([c for c in doc["coverage"] if c["kind"] != "mlp"]), ""]
    worst = sorted(doc["cases"], key=lambda c: -_num(c["margin"]))[:8]
    lines += ["## Worst cases", ""]
    table = [
        [c["id"], c["label"], c["describe"], c["spec"]["dtype"],
         f"{quantity(c['worst']['name'])} vs {c['worst']['reference']}", _fmt(c["margin"]),
         "yes" if c["passed"] else "NO"]
        for c in worst
    ]  # fmt: skip
    headers = ["id", "case", "network", "dtype", "worst comparison", "error/allowed", "ok"]
    lines += [tabulate(table, headers=headers, tablefmt="github", disable_numparse=True), ""]
    failures = [c for c in doc["cases"] if not c["passed"]]
    lines += ["## Failures", ""]
    if not failures and not _order2_failures(doc):
        lines += ["None.", ""]
    for c in _order2_failures(doc):
        lines += [f"### case {c['id']} ({c['label']}), order 2", "",
                  f"H v {c['order2']['verdict']}: {c['order2']['note']} (margin {_fmt(c['order2']['margin'])}). "
                  f"Reproduce with `refbp.check(net, X, y, order=2, seed={c['spec'].get('seed', 0)})` on:", "",
                  f"    {c['command']}", ""]  # fmt: skip
    for c in failures:
        lines += [f"### case {c['id']} ({c['label']})", "", "Reproduce with:", "", f"    {c['command']}", ""]
        for r in c["failures"]:
            row = f"- dJ/d{r['name']} vs {r['reference']}: {r['verdict']}, max rel error {r['max_rel_error']}."
            lines.append(f"{row} {r['note']}".rstrip())
        lines += [
            f"- dJ/d{v['name']}: {v['verdict']} ({v['note']})" for v in c["tensors"] if v["verdict"] == "unverified"
        ]
        lines.append("")
    lines += ["## Error distribution", "", plot_note, ""]
    lines += extra_sections
    return "\n".join(lines).rstrip() + "\n"


def _order2_line(o: dict[str, Any]) -> str:
    """REPORT.md's sentence on the order-2 share of the sweep."""
    missing = ", ".join(f"{what} ({n})" for what, n in o["no_rule_for"].items())
    return (
        f"**Order 2** (one float64 case in {o['every']}): Hessian-vector products H v by the R-operator against "
        f"torch.func forward-over-reverse, double backward and differences of the gradient: {o['passed']} passed, "
        f"{o['failed']} failed, {o['unverified']} unverified (exactly on a kink: H v undefined) of {o['checked']} "
        f"checked, {o['comparisons']} comparisons, worst error/allowed {_fmt(o['worst_margin'])}; "
        f"{o['no_rule']} not checked: no second-order rule yet" + (f" for {missing}." if missing else ".")
    )


def _order2_failures(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in doc["cases"] if (c.get("order2") or {}).get("verdict") == "failed"]


def _order2_cell(checked: int, passed: int, no_rule: int) -> str:
    """The order-2 column: passed/checked, and how many had no rule."""
    if not checked and not no_rule:
        return "-"
    return f"{passed}/{checked}" + (f" ({no_rule} no rule)" if no_rule else "")


def _kinds(by_kind: dict[str, dict[str, int]]) -> str:
    names = {"mlp": "MLPs", "stack": "layer stacks", "gpt": "GPTs"}
    return ", ".join(f"{v['passed']}/{v['cases']} {names.get(k, k)}" for k, v in by_kind.items())


def _coverage_table(coverage: list[dict[str, Any]]) -> str:
    columns = sorted({(c["loss"], c["dtype"], c["device"]) for c in coverage})
    cells = {(c["component"], c["loss"], c["dtype"], c["device"]): f"{c['passed']}/{c['cases']}" for c in coverage}
    order2 = _order2_totals(coverage)
    rows = [[act] + [cells.get((act, *col), "-") for col in columns] + [_order2_cell(*order2.get(act, (0, 0, 0)))]
            for act in sorted(ACTIVATIONS)]  # fmt: skip
    headers = ["activation"] + [f"{lo} {dt} {dev}" for lo, dt, dev in columns] + ["order 2 (H v)"]
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def _order2_totals(coverage: list[dict[str, Any]]) -> dict[str, tuple[int, int, int]]:
    """Component -> (order-2 checked, passed, no rule), summed over losses, dtypes and devices."""
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for c in coverage:
        cell = totals[c["component"]]
        cell[0] += c.get("order2_checked", 0)
        cell[1] += c.get("order2_passed", 0)
        cell[2] += c.get("order2_no_rule", 0)
    return {name: (n, p, r) for name, (n, p, r) in totals.items()}


def _layer_table(coverage: list[dict[str, Any]]) -> str:
    columns = sorted({(c["dtype"], c["device"]) for c in coverage})
    totals: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])
    for c in coverage:  # summed over losses
        cell = totals[(c["component"], c["dtype"], c["device"])]
        cell[0] += c["cases"]
        cell[1] += c["passed"]
    names = sorted({c["component"] for c in coverage}, key=lambda n: (n in ACTIVATIONS, n))
    order2 = _order2_totals(coverage)
    rows = [[name] + [f"{totals[(name, *col)][1]}/{totals[(name, *col)][0]}" if (name, *col) in totals else "-"
                      for col in columns] + [_order2_cell(*order2.get(name, (0, 0, 0)))] for name in names]  # fmt: skip
    headers = ["layer"] + [f"{dt} {dev}" for dt, dev in columns] + ["order 2 (H v)"]
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
    # a margin can be as small as 1e-300: float64 arithmetic (a float32 tensor would make it 0, log -inf)
    bins = [10 ** (k / 4) for k in range(math.floor(4 * math.log10(low)), 9)]
    for label in sorted(series):
        ax.hist(series[label], bins=bins, histtype="step", linewidth=1.5, label=f"{label} ({len(series[label])})")
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


@on_ranks
def run(args: argparse.Namespace) -> int:
    """Check every option before any work, run the sweep, and replace the report files as one
    set (refbp.apps.io.write_set): REPORT.md, report.json and errors.png always match.

    Under torchrun the ranks share the sweep and rank 0 writes the report
    (refbp.distributed.sharded_report)."""
    launch = torchrun_launch()  # None unless torchrun started this process
    timeout = timeout_from_environment() if launch is not None else DEFAULT_TIMEOUT
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
    options = {"devices": devices, "dtypes": dtypes, "fd_mode": args.fd_mode, "progress": not args.no_progress}
    if launch is None:
        outcomes, seconds = run_report(sweep_specs(args.examples, args.seed), **options)
    else:
        shared = run_report_on_ranks(launch, sweep_specs(args.examples, args.seed), timeout=timeout, **options)
        if shared is None:
            return 0  # rank 0 writes the report and tells how the checks went
        outcomes, seconds = shared
    doc = build_json(outcomes, settings, seconds, processes=1 if launch is None else launch.world_size)
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
    print(f"  order 2: {s['order2']['passed']}/{s['order2']['checked']} H v checks passed, "
          f"{s['order2']['failed']} failed, {s['order2']['no_rule']} cases with no rule yet")  # fmt: skip
    return 0 if s["failed"] == 0 and s["order2"]["failed"] == 0 else 1


def _bugs_section(out: Path) -> str:
    """The bug-catalogue section, from ``refbp bugs``'s own output when it has been run."""
    path = out / "bugs.md"
    if not path.exists():
        return "## Bug catalogue\n\nNot run yet: `refbp bugs` writes it.\n"
    body = path.read_text(encoding="utf-8").split("\n", 1)[-1]
    return "## Bug catalogue (from `refbp bugs`, reports/bugs.md)\n" + body.replace("\n## ", "\n### ")
