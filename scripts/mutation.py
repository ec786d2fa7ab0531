"""Mutation testing of the manual backprop: mutmut over activations.py, losses.py, backward.py.

    python scripts/mutation.py                 # run mutmut (fast "ci" profile), write reports/mutation.md
    python scripts/mutation.py --report-only   # rewrite the report from the last run in mutants/

mutmut's configuration is the [mutmut] section of setup.cfg. Each surviving mutant is matched
against EXPLAINED below (why it computes the same gradients, so no test can kill it); a
survivor that matches nothing is listed as UNEXPLAINED, and the script exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from tabulate import tabulate

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from refbp.apps.io import write_atomic  # noqa: E402

MODULES = ("activations", "losses", "backward")

STATUS = {1: "killed", 3: "killed", 0: "survived", 33: "no tests", 5: "no tests", 34: "skipped", None: "not checked"}
TIMEOUT_CODES = {24, -24, 36, 152, 255}

EXPLAINED: list[tuple[str, str, str]] = [
    # (text in the mutant's name, text in its "+" line, why it is equivalent)
    (
        "_derivative",
        ".to(None)",
        "torch.where(cond, 1.0, t) already has t's (z's) dtype: a Python scalar does not promote, so the "
        "trailing .to(z.dtype) is a no-op and .to(None) is the same no-op.",
    ),
    (
        "elu_derivative",
        "torch.where(z >= 0, 1.0",
        "At z = 0 the other branch is exp(min(0, 0)) = 1 as well: the same value for every z.",
    ),
    (
        "elu_derivative",
        "torch.where(z > 1, 1.0",
        "For 0 < z <= 1 the other branch is exp(min(z, 0)) = exp(0) = 1: the clamp makes the threshold "
        "moot anywhere in [0, inf).",
    ),
    (
        "elu_derivative",
        "torch.exp(torch.clamp_max(z, 1.0))",
        "The exp branch is selected only where z <= 0, where clamping at 1 instead of 0 changes nothing; "
        "the clamp only keeps the unused branch (z > 0) from overflowing.",
    ),
    (
        "x__elu__",
        "torch.expm1(torch.clamp_max(z, 1.0))",
        "As for elu's derivative: expm1 is selected only where z <= 0, where either clamp leaves z as is.",
    ),
    (
        "x__elu__",
        "torch.where(z >= 0, z, torch.expm1",
        "At z = 0 the other branch is expm1(0) = 0 = z: the same value for every z.",
    ),
    (
        "cross_entropy_gradient",
        "torch.arange(N, ",
        "Where the row indices live does not change the numbers: a CPU index tensor indexes a CPU or CUDA "
        "tensor alike (torch moves it); device=z.device only saves that copy on a GPU.",
    ),
    (
        "cross_entropy_gradient",
        "torch.arange(N, device=None)",
        "As above: device=None puts the indices on the CPU, which indexes z's device just as well.",
    ),
    (
        "x_backward",
        "if (intermediates) or True else",
        "Always cloning dJ/da(i) before the in-place chain rule only costs a copy when intermediates=False; "
        "the numbers are the same.",
    ),
    (
        "leaky_relu",
        "torch.where(z >= 0, z, z * LEAKY_RELU_SLOPE)",
        "At z = 0 both branches give 0 (and -0.0 * 0.01 is -0.0): the same value for every z.",
    ),
    (
        "_backward_layers",
        "in_place = None",
        "Memory, not numbers: with in_place falsy every dJ/dz(i) is computed on a copy of dJ/da(i) "
        "instead of in its storage, the same values with one more tensor alive (benchmarks/, item 2).",
    ),
    (
        "_backward_layers",
        "(i < L and owned)",
        "Memory, not numbers: the in-place update is skipped on some layers and a copy is used "
        "instead; the values are identical, only the peak memory (benchmarks/, item 2) grows.",
    ),
    (
        "_backward_layers",
        "if (in_place) and False else",
        "Memory, not numbers: always computing eq. (5) on a copy gives the same values; the "
        "in-place path exists only to keep the training step's peak memory at autograd's.",
    ),
    (
        "x_backward__mutmut",
        "owned=None",
        "Memory, not numbers: backward's own loss gradient is then copied before eq. (5) instead "
        "of overwritten; same values, one more (N, d_L) tensor alive.",
    ),
    (
        "x_backward__mutmut",
        "owned=False",
        "Memory, not numbers: backward's own loss gradient is then copied before eq. (5) instead "
        "of overwritten; same values, one more (N, d_L) tensor alive.",
    ),
    (
        "x_backward_from__mutmut",
        "owned=None",
        "None is falsy exactly like False: the caller's dJ/da(L) is still copied, never overwritten.",
    ),
]
"""Survivors that are equivalent to the original: the same numbers, so no test can kill them."""


def _mutmut() -> str:
    return str(Path(sys.executable).with_name("mutmut"))


def run_mutmut(max_children: int) -> float:
    """Run mutmut from a clean slate with the ci profile and one torch thread per worker."""
    subprocess.run(["rm", "-rf", "mutants"], cwd=ROOT, check=True)
    env = {**os.environ, "HYPOTHESIS_PROFILE": "ci", "OMP_NUM_THREADS": "1"}
    start = time.monotonic()
    subprocess.run([_mutmut(), "run", "--max-children", str(max_children)], cwd=ROOT, env=env, check=True)
    seconds = time.monotonic() - start
    (ROOT / "mutants" / "seconds.txt").write_text(f"{seconds:.0f}\n", encoding="utf-8")
    return seconds


def last_duration() -> float | None:
    """Seconds the last run took, if it recorded them."""
    path = ROOT / "mutants" / "seconds.txt"
    return float(path.read_text(encoding="utf-8")) if path.is_file() else None


def read_results() -> dict[str, int | None]:
    """Mutant name -> mutmut's exit code, for the three modules."""
    codes: dict[str, int | None] = {}
    for module in MODULES:
        meta = ROOT / "mutants" / "refbp" / f"{module}.py.meta"
        if not meta.is_file():
            raise FileNotFoundError(f"{meta} is missing: run this script without --report-only first")
        codes.update(json.loads(meta.read_text(encoding="utf-8"))["exit_code_by_key"])
    return codes


def status(code: int | None) -> str:
    return "timeout" if code in TIMEOUT_CODES else STATUS.get(code, "suspicious")


def diff_of(name: str) -> str:
    """The mutant's changed lines ("-" original, "+" mutant), from ``mutmut show``."""
    shown = subprocess.run([_mutmut(), "show", name], cwd=ROOT, capture_output=True, text=True, check=False)
    lines = shown.stdout.splitlines()
    return "\n".join(line for line in lines if line.startswith(("-", "+")) and line[:3] not in ("---", "+++"))


def explain(name: str, diff: str) -> str | None:
    added = "\n".join(line for line in diff.splitlines() if line.startswith("+"))
    for in_name, in_line, why in EXPLAINED:
        if in_name in name and in_line in added:
            return why
    return None


def render(codes: dict[str, int | None], seconds: float | None) -> tuple[str, int]:
    """reports/mutation.md and the number of unexplained survivors."""
    counts = Counter(status(code) for code in codes.values())
    checked = sum(n for s, n in counts.items() if s != "not checked")
    killed = counts["killed"] + counts["timeout"]
    survivors = sorted(name for name, code in codes.items() if status(code) in ("survived", "no tests", "suspicious"))
    rows, unexplained = [], 0
    for name in survivors:
        diff = diff_of(name)
        why = explain(name, diff)
        unexplained += why is None
        shown = " / ".join(line[1:].strip() for line in diff.splitlines())
        rows.append([f"`{name.removeprefix('refbp.')}`", status(codes[name]), f"`{shown}`", why or "**UNEXPLAINED**"])
    equivalent = len(survivors) - unexplained
    rate = killed / checked if checked else 0.0
    adjusted = (killed + equivalent) / checked if checked else 0.0
    lines = [
        "# Mutation testing: the manual backprop",
        "",
        f"mutmut over `refbp/{{{','.join(MODULES)}}}.py` with the fast `ci` hypothesis profile "
        "(`python scripts/mutation.py`; configuration in setup.cfg)"
        + (f", {seconds / 60:.0f} min on {os.cpu_count()} cores." if seconds else "."),
        "",
        f"- mutants: {len(codes)}, checked: {checked}",
        f"- killed: {counts['killed']} (+ {counts['timeout']} by timeout)",
        f"- **kill rate: {killed}/{checked} = {100 * rate:.1f}%**",
        f"- survivors: {len(survivors)}: {equivalent} equivalent (explained below), {unexplained} unexplained",
        f"- **killed or proven equivalent: {100 * adjusted:.1f}%**",
        "",
        "Killed means some test failed with the mutant in place. A survivor is either killed by a new "
        "test (tests/test_mutation_kills.py) or shown here to compute the same numbers as the original.",
        "",
        "## Survivors",
        "",
        tabulate(
            rows, headers=["mutant", "status", "original / mutant", "why it survives (equivalent)"], tablefmt="github"
        )
        if rows
        else "None.",
    ]
    return "\n".join(lines) + "\n", unexplained


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="reports", help="folder for mutation.md (default: reports)")
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 1, help="parallel mutmut workers")
    parser.add_argument("--report-only", action="store_true", help="report on the last run in mutants/")
    args = parser.parse_args(argv)
    seconds = last_duration() if args.report_only else run_mutmut(args.max_children)
    text, unexplained = render(read_results(), seconds)
    write_atomic(ROOT / args.out / "mutation.md", text)
    print(text)
    return 1 if unexplained else 0


if __name__ == "__main__":
    sys.exit(main())
