"""The false-positive report (reports/false_positives.md and .json) from the parts' records: each
part summarised on its own (``summarise_*``), with the commit, command and time it ran at, and
the parts merged into one report (``merge``), so that a part run later, at another commit
(``--only order2``), replaces that part and keeps the others.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from tabulate import tabulate

from refbp.nn.losses import LOSSES
from refbp.verify.stacks import LAYER_KINDS

__all__ = [
    "EXPECTED_COMPONENTS",
    "EXPECTED_LOSSES",
    "PARTS",
    "markdown",
    "merge",
    "summarise_first_order",
    "summarise_functions",
    "summarise_order2",
]

PARTS = ("first_order", "functions", "order2")
"""The parts, in the report's order."""

_MODED = ("batchnorm", "batchnorm2d", "dropout", "batchnorm unbiased")
EXPECTED_COMPONENTS = sorted(
    [k for k in LAYER_KINDS if k not in _MODED]
    + [f"{k} ({mode})" for k in _MODED for mode in ("train", "eval")]
    + ["Dense", "attention", "position embedding", "transformer block", "untied head"]
)
"""Every layer kind the coverage tables must show, drawn or not (a 0 there is a gap in the draw)."""

EXPECTED_LOSSES = sorted([*LOSSES, *(f"{name} (sum)" for name in LOSSES if name != "half_sse")])
"""Every loss and reduction the coverage tables must show."""

CLOSEST = 10
"""How many closest calls (largest error/allowed) a part keeps."""


def _closest(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    ranked = sorted(records, key=lambda r: -float(r["ratio"]))[:CLOSEST]
    return [{k: r[k] for k in ("ratio", "dtype", "group", "comparison", "spec")} for r in ranked]


def _counts(records: list[dict[str, Any]], key: str, columns: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Per value of ``key`` (a record's components, or its loss): how many records, and how many
    satisfy each of ``columns`` (name -> record -> bool)."""
    out: dict[str, dict[str, int]] = {}
    for r in records:
        for value in r[key] if isinstance(r[key], list) else [r[key]]:
            row = out.setdefault(value, {"cases": 0, **{name: 0 for name in columns}})
            row["cases"] += 1
            for name, test in columns.items():
                row[name] += bool(test(r))
    return dict(sorted(out.items()))


def _worst(records: Iterable[dict[str, Any]]) -> float:
    return max((float(r["ratio"]) for r in records), default=0.0)


def _worst_by_dtype(records: list[dict[str, Any]], among: list[dict[str, Any]]) -> dict[str, float]:
    """The largest error/allowed of ``among`` in each dtype of ``records``."""
    return {dt: _worst(r for r in among if r["dtype"] == dt) for dt in sorted({r["dtype"] for r in records})}


def summarise_first_order(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts, the breakdown by group, coverage by layer kind and loss, closest calls, flagged cases."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[r["group"]].append(r)
    flagged = [r for r in records if not r["passed"]]
    columns = {"flagged": lambda r: not r["passed"]}
    return {
        "cases": len(records), "flagged": len(flagged),
        "worst_ratio_by_dtype": _worst_by_dtype(records, records),
        "breakdown": {
            name: {"cases": len(rs), "flagged": sum(not r["passed"] for r in rs), "worst_ratio": _worst(rs)}
            for name, rs in sorted(groups.items())
        },
        "coverage": _counts(records, "components", columns), "losses": _counts(records, "loss", columns),
        "closest_calls": _closest(records),
        "flagged_cases": [{"spec": r["spec"], "comparison": r["comparison"], "message": r["message"]} for r in flagged],
    }  # fmt: skip


def summarise_functions(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """The function sweep's chunks: checks and flags by Function and dtype."""
    rows: dict[str, dict[str, int]] = {}
    for chunk in chunks:
        for key, n in chunk["counts"].items():
            rows.setdefault(key, {"cases": 0, "flagged": 0})["cases"] += n
        for f in chunk["flagged"]:
            rows[f"{f['function']} {f['dtype']}"]["flagged"] += 1
    flagged = [f for chunk in chunks for f in chunk["flagged"]]
    return {
        "cases": sum(r["cases"] for r in rows.values()), "flagged": len(flagged),
        "worst_ratio": max((c["worst_ratio"] for c in chunks), default=0.0),
        "by_function": dict(sorted(rows.items())), "flagged_cases": flagged,
        "sweeps": [f"false_positive_sweep({c['n']}, seed={c['seed']})" for c in chunks],
    }  # fmt: skip


def summarise_order2(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts by status, the breakdown by group and dtype, coverage, the missing rules, errors."""
    columns = {status.replace(" ", "_"): (lambda r, s=status: r["status"] == s) for status in
               ("passed", "flagged", "on a kink", "no reference", "no rule", "error")}  # fmt: skip
    checked = [r for r in records if r["status"] in ("passed", "flagged")]

    def count(status: str) -> int:
        return sum(r["status"] == status for r in records)

    missing: dict[str, int] = defaultdict(int)
    errors: dict[str, list[Any]] = {}
    for r in records:
        if r["status"] == "no rule":
            missing[r["missing"]] += 1
        for e in r.get("errors", []):
            errors.setdefault(e, [0, r["spec"]])[0] += 1
    return {
        "cases": len(records), "checked": len(checked), "flagged": count("flagged"), "no_rule": count("no rule"),
        "on_a_kink": count("on a kink"), "no_reference": count("no reference"), "errors": count("error"),
        "worst_ratio_by_dtype": _worst_by_dtype(records, checked),
        "breakdown": _counts(records, "group", columns), "by_dtype": _counts(records, "dtype", columns),
        "coverage": _counts(records, "components", columns), "losses": _counts(records, "loss", columns),
        "missing_rules": dict(sorted(missing.items(), key=lambda kv: -kv[1])),
        "error_messages": [{"message": m, "cases": n, "first": spec}
                           for m, (n, spec) in sorted(errors.items(), key=lambda kv: -int(kv[1][0]))],
        "closest_calls": _closest(checked),
        "flagged_cases": [{"spec": r["spec"], "flags": r["flags"], "message": r["message"]}
                          for r in records if r["status"] == "flagged"],
    }  # fmt: skip


def merge(previous: dict[str, Any] | None, parts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The report's JSON: ``parts`` run now, with the other parts of ``previous`` (a report this
    script wrote) kept as they were, and the totals over all of them."""
    kept = dict((previous or {}).get("parts", {}))
    kept.update(parts)
    ordered = {name: kept[name] for name in PARTS if name in kept}
    checked = {name: p["checked"] if name == "order2" else p["cases"] for name, p in ordered.items()}
    cases, flagged = sum(checked.values()), sum(p["flagged"] for p in ordered.values())
    order2 = ordered.get("order2", {})
    return {
        "cases": cases, "flagged": flagged, "false_positive_rate": flagged / cases if cases else 0.0,
        "not_checked_no_rule": order2.get("no_rule", 0), "errors": order2.get("errors", 0), "parts": ordered,
    }  # fmt: skip


def _table(rows: list[list[Any]], headers: list[str]) -> str:
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def _coverage(counts: dict[str, dict[str, int]], expected: list[str], columns: list[str]) -> str:
    names = sorted(set(counts) | set(expected))
    rows = [[name, *(counts.get(name, {}).get(c, 0) for c in ["cases", *columns])] for name in names]
    for row in rows:
        if row[1] == 0:
            row[0] = f"{row[0]} (NOT DRAWN)"
    return _table(rows, ["kind", "cases", *(c.replace("_", " ") for c in columns)])


def _closest_table(calls: list[dict[str, Any]]) -> str:
    rows = [[f"{float(c['ratio']):.3g}", c["dtype"], c["group"], c["comparison"], json.dumps(c["spec"])] for c in calls]
    return _table(rows, ["error/allowed", "dtype", "kind", "comparison", "case"])


def markdown(doc: dict[str, Any]) -> str:
    """The report's Markdown from its JSON (``merge``)."""
    parts = doc["parts"]
    commits = {p["commit"] for p in parts.values()}
    md = [
        "# False-positive rate of the harness",
        "",
        f"**{doc['flagged']} of {doc['cases']} correct cases flagged** (rate {doc['false_positive_rate']:.2g}) over "
        f"the parts below" + (f"; order 2: {doc['not_checked_no_rule']} cases not checked (a layer or loss without "
                              f"a second-order rule yet), {doc['errors']} errors" if "order2" in parts else "") + ".",
        "",
        "Each part records the commit, command and time it ran at; "
        + ("**the parts ran at different commits** (the table says which), each part rerun on its own with "
           "`--only PART` replacing that part only." if len(commits) > 1 else f"all ran at commit {commits.pop()}."),
        "",
        _table([[n, p["checked"] if n == "order2" else p["cases"], p["flagged"], p["commit"], p["started"],
                 f"{p['seconds']:.0f}", f"`{p['command']}`"] for n, p in parts.items()],
               ["part", "cases", "flagged", "commit", "started (UTC)", "seconds", "command"]),
        "",
    ]  # fmt: skip
    if "first_order" in parts:
        md += _first_order(parts["first_order"])
    if "functions" in parts:
        md += _functions(parts["functions"])
    if "order2" in parts:
        md += _order2(parts["order2"])
    return "\n".join(md)


def _first_order(p: dict[str, Any]) -> list[str]:
    worst = ", ".join(f"{dt} {r:.3g}" for dt, r in p["worst_ratio_by_dtype"].items())
    table = [[n, b["cases"], b["flagged"], f"{b['worst_ratio']:.3g}"] for n, b in p["breakdown"].items()]
    md = [
        "## First order",
        "",
        f"**{p['flagged']} of {p['cases']} flagged.** Each case checks every gradient (parameters, intermediates, "
        "input) of refbp's own backward pass, or of torch's autograd on a user's torch model, against autograd and "
        "full finite differences, in float64 and float32; a case is flagged when some entry is contradicted or "
        f"verified by no reference. Largest error/allowed seen: {worst} (a verified entry fails above 1).",
        "",
        *_drawing(p),
        "### By kind and regime",
        "",
        _table(table, ["cases", "n", "flagged", "worst error/allowed"]),
        "",
        "### Coverage: every layer kind and loss, how many cases contained it",
        "",
        _coverage(p["coverage"], EXPECTED_COMPONENTS, ["flagged"]),
        "",
        _coverage(p["losses"], EXPECTED_LOSSES, ["flagged"]).replace("| kind ", "| loss ", 1),
        "",
        "### Closest calls",
        "",
        _closest_table(p["closest_calls"]),
        "",
    ]  # fmt: skip
    return md + _flagged(p["flagged_cases"])


def _functions(p: dict[str, Any]) -> list[str]:
    rows = [[key.split()[0], key.split()[1], r["cases"], r["flagged"]] for key, r in p["by_function"].items()]
    md = [
        "## Custom autograd Functions (check_autograd_function)",
        "",
        f"**{p['flagged']} of {p['cases']} flagged.** refbp.verify.function_sweep.false_positive_sweep: the "
        "hand-written correct Functions (refbp.verify.hand_functions) at random points, their backward in the "
        "kernel's own dtype judged against float64 references under the conditioning allowance; also linearity in "
        f"grad_output, zero in zero out, and the run-to-run spread. Largest error/allowed: {p['worst_ratio']:.3g}. "
        f"Sweeps: {', '.join(p['sweeps'])}.",
        "",
        _table(rows, ["Function", "dtype", "cases", "flagged"]),
        "",
    ]  # fmt: skip
    return md + _flagged(p["flagged_cases"])


def _order2(p: dict[str, Any]) -> list[str]:
    worst = ", ".join(f"{dt} {r:.3g}" for dt, r in p["worst_ratio_by_dtype"].items())
    status = ["passed", "flagged", "on_a_kink", "no_reference", "no_rule", "error"]
    breakdown = [[n, *(b[c] for c in ["cases", *status])] for n, b in p["breakdown"].items()]
    by_dtype = [[n, *(b[c] for c in ["cases", *status])] for n, b in p["by_dtype"].items()]
    md = [
        "## Order 2 (check_second_order)",
        "",
        f"**{p['flagged']} of {p['checked']} checked cases flagged**; {p['no_rule']} of {p['cases']} drawn not "
        f"checked (no rule yet), {p.get('on_a_kink', 0)} exactly on a kink (H v undefined), "
        f"{p.get('no_reference', 0)} with a product no reference can take, {p['errors']} errors "
        "(the check raised on a correct network). Each case, in float64 "
        "and float32: refbp's manual H v (with `forward=True`: the tangents R{J}, R{a}) and G v, "
        "`check_second_order(net, X, y, product=..., seed=...)`, against forward-over-reverse, reverse-over-reverse "
        "and differences of the manual gradient. Flagged: some entry contradicted, or some H v entry verified by no "
        "reference. On a kink: the point sits exactly on a kink that v moves (a max-pool tie of integer inputs, "
        "relu's 0), where H v is undefined: the check leaves every entry unverified by design and names the kink; "
        "such a case is neither passed nor flagged (a contradicted entry there is flagged). No rule: a layer or loss "
        "without a second-order rule (NotImplementedError), never a pass. No reference: a product that no "
        "reference can take (G v through multi_margin: torch cannot differentiate it twice, and differences of the "
        "gradient measure H v, not G v); the check leaves it unverified and names it (never a pass), and the case "
        "is neither passed nor flagged. "
        f"Largest error/allowed of the checked: {worst}.",
        "",
        *_drawing(p),
        _table(by_dtype, ["dtype", "cases", "passed", "flagged", "on a kink", "no reference", "no rule", "error"]),
        "",
        _table(breakdown, ["cases", "n", "passed", "flagged", "on a kink", "no reference", "no rule", "error"]),
        "",
        "### Coverage (a case counts under every kind it contains; no rule: some layer of it has none)",
        "",
        _coverage(p["coverage"], EXPECTED_COMPONENTS, status),
        "",
        _coverage(p["losses"], EXPECTED_LOSSES, status).replace("| kind ", "| loss ", 1),
        "",
        "### No rule yet: the first layer (or the loss) without one",
        "",
        _table([[k, n] for k, n in p["missing_rules"].items()], ["layer or loss", "cases"]),
        "",
    ]  # fmt: skip
    if p["error_messages"]:
        rows = [[e["cases"], e["message"][:300], json.dumps(e["first"])] for e in p["error_messages"]]
        md += ["### Errors", "", _table(rows, ["cases", "error", "first case"]), ""]
    if p["closest_calls"]:
        md += ["### Closest calls", "", _closest_table(p["closest_calls"]), ""]
    return md + _flagged(p["flagged_cases"])


def _drawing(p: dict[str, Any]) -> list[str]:
    """How the sweep's networks were drawn, and the blocks skipped because their draw raised."""
    refused = p.get("sweep_blocks_refused", [])
    line = (
        "The sweep's networks: `sweep_specs(200, s)` (refbp.apps.sweep) for s = seed x 1000, seed x 1000 + 1, ... "
        "(the last block smaller)"
    )
    if not refused:
        return [line + ".", ""]
    seeds = ", ".join(str(r["seed"]) for r in refused)
    return [
        f"{line}; **{len(refused)} blocks skipped because the sweep's own draw raised** (seeds {seeds}): "
        f"`{refused[0]['error']}`",
        "",
    ]


def _flagged(cases: list[dict[str, Any]]) -> list[str]:
    if not cases:
        return []
    md = [f"### Flagged ({len(cases)})", ""]
    for c in cases[:20]:
        what = json.dumps(c.get("spec", {k: c[k] for k in ("function", "dtype", "seed") if k in c}))
        md += [f"- `{what}`", "", "  ```", *("  " + line for line in c["message"].splitlines()[:12]), "  ```", ""]
    return md
