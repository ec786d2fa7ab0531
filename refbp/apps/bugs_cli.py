"""``refbp bugs``: run every catalogue entry (refbp.apps.catalogue) through the harness and report what catches it.

    refbp bugs                       # every entry; writes reports/bugs.md and reports/bugs.json
    refbp bugs --only db_batch_mean  # one entry
    refbp bugs --draws 30 --seed 1   # more networks per entry, another draw

For each entry, ``--draws`` networks it applies to are drawn (refbp.strategies, float64) and
checked four ways: the default harness (``refbp.check``: autograd and finite differences), and
each reference alone: autograd, full finite differences, directional finite differences. A
bug "matters" on a network when its gradients differ from the right ones beyond the float64
tolerance (a missing transpose does not matter on a 1x1 layer). hypothesis then shrinks to the
smallest network on which the default harness flags the bug.

Exit code 0 when the default harness flags every non-equivalent entry on every drawn network
where it matters, and flags nothing else (the right backward pass, the equivalent mutants, and
bugs on networks where they do not matter); 1 otherwise.
"""

from __future__ import annotations

import argparse
import copy
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from random import Random
from typing import Any

import torch
from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from hypothesis.errors import NoSuchExample
from tabulate import tabulate

from ..nn.keys import Key
from ..nn.network import Network
from ..nn.validation import check_seed
from ..verify.cases import KINK_MARGIN, Case, CaseSpec, kink_distance
from ..verify.check import check
from ..verify.compare import compare, quantity
from ..verify.tolerances import tolerance_for
from .arguments import MAX_DRAWS, check_draws, check_out_folder
from .bug_record import Bug
from .catalogue import CATALOGUE, get_bug
from .disguises import DISGUISES, Disguise, unmask
from .io import write_set
from .second_order_bugs import second_order_flags, second_order_matters

__all__ = [
    "DEFAULT_DRAWS",
    "REFERENCE_MODES",
    "BugResult",
    "add_arguments",
    "flags",
    "matters",
    "render_bugs_section",
    "run",
    "run_bug",
    "smallest_exposing",
]

DEFAULT_DRAWS = 12
"""Networks drawn per entry: enough to show which sizes hide a bug (batch 1, 1x1 layers) and
which expose it, while every entry, shrinking included, runs in a few seconds."""

FIND_EXAMPLES = 300
"""Networks hypothesis may try before it gives up looking for one that exposes an entry."""

REFERENCE_MODES: dict[str, dict[str, Any]] = {
    "harness": {},  # refbp.check's defaults: autograd and finite differences ("auto": full here)
    "autograd": {"references": ("autograd",)},
    "fd-full": {"references": ("fd",), "fd_mode": "full"},
    "fd-directional": {"references": ("fd",), "fd_mode": "directional"},
}
"""The four ways each drawn network is checked, as keyword arguments of refbp.check."""


@dataclass
class BugResult:
    """What the harness made of one catalogue entry.

    Attributes:
        name, title, equation, wrong, right, why, equivalent, where: from the entry (refbp.apps.bug_record.Bug).
        draws: networks drawn (none on a relu kink); ``drawn`` lists them.
        matters: draws on which the wrong line changes some gradient beyond tolerance.
        caught: reference mode -> draws it flagged among those where the bug matters.
        false_flags: reference mode -> draws it flagged although the bug does not matter there.
        missed: CaseSpec JSON of every draw where the bug matters and the harness passed.
        minimal: the smallest network on which the harness flags the entry (None: none found,
            or an equivalent entry, for which none is looked for).
        minimal_flagged: the tensors the harness flags there, in backward order (dJ/da(L) first).
        minimal_caught: reference mode -> whether it flags the minimal network.
    """

    name: str
    title: str
    equation: str
    wrong: str
    right: str
    why: str
    equivalent: bool
    where: str
    draws: int = 0
    matters: int = 0
    caught: dict[str, int] = field(default_factory=dict)
    false_flags: dict[str, int] = field(default_factory=dict)
    missed: list[str] = field(default_factory=list)
    minimal: Any = None
    minimal_flagged: list[str] = field(default_factory=list)
    minimal_caught: dict[str, bool] = field(default_factory=dict)
    drawn: list[Any] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """A non-equivalent entry: found and flagged wherever it matters. Any entry: no false flag."""
        clean = self.false_flags.get("harness", 0) == 0
        if self.equivalent:
            return clean and self.matters == 0
        return clean and self.minimal is not None and self.matters > 0 and not self.missed

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["minimal"] = None if self.minimal is None else json.loads(self.minimal.to_json())
        out["drawn"] = [json.loads(spec.to_json()) for spec in self.drawn]
        out["ok"] = self.ok
        return out


# ---- running one entry -----------------------------------------------------------------
def matters(bug: Bug, case: Case) -> bool:
    """True when the entry's gradients differ from the right ones on ``case`` beyond the
    tolerance of its dtype (a wrong shape, a missing tensor always matters)."""
    if bug.order == 2:
        return second_order_matters(bug, case)
    wrong, noise = bug.gradients(case)
    right = case.net.backward(case.net.forward(case.X, update_stats=False, noise=noise), case.y).as_dict()
    tol = tolerance_for(case.net.dtype)
    return any(
        name not in wrong or compare(name, "right", wrong[name], right[name], tol).verdict != "ok" for name in right
    )


def flags(bug: Bug, case: Case, *, seed: int = 0) -> dict[str, list[str]]:
    """Reference mode -> the tensors it flags, in backward order. The default check already
    holds an autograd and a full finite-difference row per tensor (fd_mode "auto" is full at
    these sizes), so one default and one directional run give all four modes. A reference
    flags a tensor when it contradicts it; the harness flags a tensor when it fails. An order-2
    entry: its H v (refbp.apps.second_order_bugs)."""
    if bug.order == 2:
        return second_order_flags(bug, case, seed=seed)
    grads, noise = bug.gradients(case)
    default = check(case.net, case.X, case.y, grads=grads, seed=seed, noise=noise)
    rows = list(default.rows)
    modes = [mode for mode in ("fd-full", "fd-directional") if mode != f"fd-{default.fd_mode}"]
    for mode in modes:
        rows += check(case.net, case.X, case.y, grads=grads, seed=seed, noise=noise, **REFERENCE_MODES[mode]).rows
    failed = {
        mode: {row.name for row in rows if row.verdict == "mismatch" and row.reference == mode}
        for mode in REFERENCE_MODES
    }
    failed["harness"] = {t.name for t in default.tensors if not t.passed}
    order = backward_order(case.net)
    return {mode: [name for name in order if name in names] for mode, names in failed.items()}


def backward_order(net: Network) -> list[str]:
    """The names in the order a backward pass computes them: layer L's output gradient first,
    then its intermediates, then its parameters; down to layer 1; X last (a_L, z_L, W_L, b_L,
    ..., X for an MLP)."""
    by_layer: dict[int, list[str]] = {}
    for name in net.names():
        key = Key.parse(name)
        by_layer.setdefault(key.layer[0] if key.layer else 0, []).append(name)
    order: list[str] = []
    for layer in sorted(by_layer, reverse=True):
        names = by_layer[layer]
        outputs = [n for n in names if Key.parse(n).kind == "a"]
        params = [n for n in names if Key.parse(n) in {Key.parse(p) for p in net.parameters()}]
        others = [n for n in names if n not in outputs and n not in params]
        order += outputs[::-1] + others[::-1] + params
    return order


def _flagged_by_autograd(bug: Bug, case: Case) -> bool:
    if bug.order == 2:
        return bool(second_order_flags(bug, case)["autograd"])
    grads, noise = bug.gradients(case)
    return any(
        row.verdict == "mismatch"
        for row in check(case.net, case.X, case.y, grads=grads, references=("autograd",), noise=noise).rows
    )


def _usable(spec: Any) -> Case | None:
    """The case ``spec`` builds, or None when it sits on a relu kink. The distance is measured
    on a copy of the network: its forward pass draws dropout masks, and the case must go on to
    draw the masks a case rebuilt from ``spec`` draws (the smallest network is reported as its spec)."""
    case = spec.build()
    return case if kink_distance(replace(case, net=copy.deepcopy(case.net))) > KINK_MARGIN else None


def draw_specs(bug: Bug, n: int, seed: int) -> list[Any]:
    """``n`` networks the entry applies to, the same for the same seed; none on a relu kink."""
    drawn: list[Any] = []

    @hypothesis_seed(seed)
    @settings(max_examples=4 * n, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(st.data())
    def collect(data: st.DataObject) -> None:
        spec = data.draw(bug.specs())
        if len(drawn) < n and spec not in drawn and _usable(spec) is not None:
            drawn.append(spec)

    collect()
    return drawn


def smallest_exposing(bug: Bug, *, seed: int = 0, max_examples: int = FIND_EXAMPLES) -> Any:
    """The smallest network the entry applies to on which the default harness flags it,
    found and shrunk by hypothesis; None when none of ``max_examples`` networks exposes it.

    The search asks autograd alone (five times cheaper than finite differences): the harness
    runs the same autograd comparison, so it flags every network found."""

    def exposes(spec: Any) -> bool:
        case = _usable(spec)
        return case is not None and _flagged_by_autograd(bug, case)

    options = settings(max_examples=max_examples, database=None, deadline=None,
                       suppress_health_check=list(HealthCheck))  # fmt: skip
    try:
        return find(bug.specs(), exposes, settings=options, random=Random(seed))
    except NoSuchExample:
        return None


def run_bug(bug: Bug, *, draws: int = DEFAULT_DRAWS, seed: int = 0) -> BugResult:
    """Check one entry on ``draws`` drawn networks in every reference mode, and (for a
    non-equivalent entry) find the smallest network that exposes it."""
    result = BugResult(bug.name, bug.title, bug.equation, bug.wrong, bug.right, bug.why, bug.equivalent,
                       bug.where)  # fmt: skip
    result.caught = dict.fromkeys(REFERENCE_MODES, 0)
    result.false_flags = dict.fromkeys(REFERENCE_MODES, 0)
    result.drawn = draw_specs(bug, draws, seed)
    result.draws = len(result.drawn)
    for spec in result.drawn:
        case = spec.build()
        bites = matters(bug, case)
        result.matters += bites
        flagged = flags(bug, case, seed=seed)
        for mode in REFERENCE_MODES:
            (result.caught if bites else result.false_flags)[mode] += bool(flagged[mode])
        if bites and not flagged["harness"]:
            result.missed.append(spec.to_json())
    if not bug.equivalent:
        result.minimal = smallest_exposing(bug, seed=seed)
    if result.minimal is not None:
        flagged = flags(bug, result.minimal.build(), seed=seed)
        result.minimal_flagged = flagged["harness"]
        result.minimal_caught = {mode: bool(names) for mode, names in flagged.items()}
    return result


def _correct_false_flags(results: Sequence[BugResult], seed: int) -> tuple[int, int]:
    """(flags, checks): the right backward pass (Network.backward) on every network drawn for
    any entry, through the default harness."""
    specs = {spec.to_json(): spec for r in results for spec in r.drawn}
    flags = 0
    for spec in specs.values():
        case = spec.build()
        flags += not check(case.net, case.X, case.y, seed=seed).passed
    return flags, len(specs)


# ---- rendering -------------------------------------------------------------------------
def describe(spec: Any) -> str:
    """A network in one short line: dims, activations, loss, batch (and lambda if > 0)."""
    if not isinstance(spec, CaseSpec):
        return str(spec.describe())
    text = f"{'-'.join(map(str, spec.dims))} {'/'.join(spec.activations)}, {spec.loss}, N={spec.batch}"
    return text + (f", lambda={spec.weight_decay:g}" if spec.weight_decay else "")


def _ratio(result: BugResult, mode: str) -> str:
    return f"{result.caught.get(mode, 0)}/{result.matters}"


def render_bugs_section(results: Sequence[BugResult], *, heading: str = "##") -> str:
    """The report section: the detection table of the non-equivalent entries, a summary line,
    and the equivalent mutants with why nothing should flag them. Markdown (tabulate)."""
    bugs = [r for r in results if not r.equivalent]
    equivalents = [r for r in results if r.equivalent]
    caught = sum(r.ok for r in bugs)
    false_flags = sum(sum(r.false_flags.values()) for r in results)
    lines = [
        f"{heading} Harness sensitivity: the bug catalogue",
        "",
        f"**{caught}/{len(bugs)} non-equivalent bugs caught** by the default harness (autograd + finite "
        f"differences) on every drawn network where they matter; **{false_flags} false flags** on "
        f"equivalent mutants and on draws where a bug does not matter. Columns: drawn networks on which "
        f"each reference flags the bug / drawn networks where it matters; then the smallest network that "
        f"exposes it (hypothesis shrinking) and the tensors flagged there, in backward order.",
        "",
    ]
    rows = [
        [
            f"`{r.name}`", r.equation, _ratio(r, "harness"), _ratio(r, "autograd"), _ratio(r, "fd-full"),
            _ratio(r, "fd-directional"), "not found" if r.minimal is None else describe(r.minimal),
            _first(r.minimal_flagged), "yes" if r.ok else "**NO**",
        ]
        for r in bugs
    ]  # fmt: skip
    headers = ["bug", "eq.", "harness", "autograd", "full FD", "dir. FD", "smallest network", "flagged first", "ok"]
    lines.append(tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True))
    if equivalents:
        lines += [
            "",
            f"{heading}# Equivalent mutants (must not be flagged)",
            "",
            "The same gradients by another route. No checker can tell them from the right line, and none "
            "should: a checker that did would be flagging correct code.",
            "",
        ]
        rows = [
            [f"`{r.name}`", f"`{r.wrong}`", f"`{r.right}`", f"{r.false_flags.get('harness', 0)}/{r.draws}", r.why]
            for r in equivalents
        ]
        headers = ["mutant", "variant", "right line", "flagged", "why it is the same"]
        lines.append(tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True))
    return "\n".join(lines) + "\n"


def _first(names: Sequence[str], shown: int = 3) -> str:
    if not names:
        return ""
    text = ", ".join(quantity(name) for name in names[:shown])
    return text + (f" (+{len(names) - shown})" if len(names) > shown else "")


def render_disguises(unmasked: Sequence[tuple[Disguise, bool, str]], *, heading: str = "##") -> str:
    """The "harness must not be fooled" section: each hiding place, the verdict, caught or not."""
    caught = sum(found for _, found, _ in unmasked)
    lines = [
        f"{heading} The harness must not be fooled",
        "",
        f"**{caught}/{len(unmasked)} wrong gradients caught where a reference can say nothing**: a case passes "
        "only when every entry is verified by some reference and contradicted by none (refbp.apps.disguises).",
        "",
    ]
    rows = [[f"`{d.name}`", d.title, d.hidden, verdict, "yes" if found else "**NO**"] for d, found, verdict in unmasked]
    headers = ["disguise", "hidden behind", "what is wrong, and what would hide it", "verdict", "caught"]
    lines.append(tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True))
    return "\n".join(lines) + "\n"


def render_markdown(
    results: Sequence[BugResult],
    *,
    seed: int,
    draws: int,
    correct: tuple[int, int],
    unmasked: Sequence[tuple[Disguise, bool, str]] = (),
) -> str:
    """reports/bugs.md: the section, the right backward pass's own check, the disguises, and
    every entry's lines."""
    flags, checks = correct
    lines = [
        "# refbp bug catalogue",
        "",
        f"Generated by `refbp bugs --seed {seed} --draws {draws}`. Each entry of `refbp.apps.catalogue` is one wrong "
        "line of the manual backward pass, run on networks drawn from `refbp.strategies` (float64).",
        "",
        render_bugs_section(results),
        f"The right backward pass (`Network.backward`) on the {checks} distinct networks drawn above: "
        f"**{flags} flagged**.",
        "",
        *([render_disguises(unmasked)] if unmasked else []),
        "## The entries: wrong line, right line, why",
        "",
    ]
    rows = [
        [f"`{r.name}`", r.equation, f"`{r.wrong}`", f"`{r.right}`", r.why, r.where] for r in results if not r.equivalent
    ]
    headers = ["bug", "eq.", "wrong line", "right line", "why it is wrong", "applies to"]
    lines += [tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True), ""]
    lines += ["## Reproduce a smallest network", ""]
    lines += [f"- `{r.name}`: `{r.minimal.to_json()}`" for r in results if r.minimal is not None]
    missed = [(r.name, spec) for r in results for spec in r.missed]
    if missed:
        lines += ["", "## Missed (the bug matters, the harness passed)", ""]
        lines += [f"- `{name}`: `{spec}`" for name, spec in missed]
    return "\n".join(lines) + "\n"


# ---- the command -----------------------------------------------------------------------
@contextmanager
def _one_thread() -> Iterator[None]:
    """Tiny tensors: torch's thread pool costs far more than it saves (log_softmax on a 40x2
    tensor takes ~10 ms with 2 threads, ~10 us with one), so run on one and restore after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", default="reports", help="folder for bugs.md and bugs.json, replaced together (default: reports)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seeds the drawn networks and the search, 0 to 2**32 - 1 (default 0)"
    )
    parser.add_argument(
        "--draws", type=int, default=DEFAULT_DRAWS,
        help=f"networks per entry, 1 to {MAX_DRAWS:,} (default {DEFAULT_DRAWS})",
    )  # fmt: skip
    parser.add_argument("--only", action="append", metavar="NAME", help="run only this entry (repeatable)")


def run(args: argparse.Namespace) -> int:
    """Check every option before any work, run the entries, and replace bugs.md and bugs.json
    as one set (refbp.apps.io.write_set)."""
    out = check_out_folder(args.out)
    check_draws(args.draws)
    check_seed(args.seed, "--seed")
    entries = [get_bug(name) for name in args.only] if args.only else list(CATALOGUE)
    with _one_thread():
        results = [run_bug(bug, draws=args.draws, seed=args.seed) for bug in entries]
        correct = _correct_false_flags(results, args.seed)
        unmasked = [(d, *unmask(d)) for d in DISGUISES] if not args.only else []
    markdown = render_markdown(results, seed=args.seed, draws=args.draws, correct=correct, unmasked=unmasked)
    summary = {
        "non_equivalent": sum(not r.equivalent for r in results),
        "caught": sum(r.ok for r in results if not r.equivalent),
        "equivalent": sum(r.equivalent for r in results),
        "false_flags": sum(sum(r.false_flags.values()) for r in results) + correct[0],
        "correct_checks": correct[1],
        "correct_flagged": correct[0],
        "disguises": len(unmasked),
        "disguises_caught": sum(found for _, found, _ in unmasked),
    }
    report = {
        "seed": args.seed, "draws": args.draws, "summary": summary, "bugs": [r.to_dict() for r in results],
        "disguises": [{"name": d.name, "title": d.title, "caught": found, "verdict": v} for d, found, v in unmasked],
    }  # fmt: skip
    write_set(out, {"bugs.md": markdown, "bugs.json": json.dumps(report, indent=1) + "\n"})
    ok = all(r.ok for r in results) and correct[0] == 0 and all(found for _, found, _ in unmasked)
    print(
        f"refbp bugs: {summary['caught']}/{summary['non_equivalent']} bugs caught, "
        f"{summary['false_flags']} false flags ({summary['equivalent']} equivalent mutants, "
        f"{correct[1]} right backward passes); wrote {out / 'bugs.md'} and {out / 'bugs.json'}"
    )
    return 0 if ok else 1
