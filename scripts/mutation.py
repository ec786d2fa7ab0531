"""Mutation testing of the MLP's manual backprop: mutmut over refbp/nn/{activations,losses,dense}.py.

    python scripts/mutation.py                 # run mutmut (fast "ci" profile), write reports/mutation.md
    python scripts/mutation.py --report-only   # rewrite the report from the last run in mutants/

The three modules hold the MLP's activations, its losses and its layer, Dense, whose forward and
backward are eqs. (1)-(8); the generic loop over layers (nn/stack.py) and the other layers are
not mutated, to keep a run near 10 minutes on 2 cores (1041 mutants). mutmut's configuration
is the [mutmut] section of setup.cfg. Each surviving mutant is matched against EXPLAINED below
(why it computes the same gradients, so no test can kill it); a survivor that matches nothing is
listed as UNEXPLAINED, and the script exits 1.
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

MODULES = ("activations", "losses", "dense")
"""The mutated modules, in refbp/nn/."""

STATUS = {1: "killed", 3: "killed", 0: "survived", 33: "no tests", 5: "no tests", 34: "skipped", None: "not checked"}
TIMEOUT_CODES = {24, -24, 36, 152, 255}

EXPLAINED: list[tuple[str, str, str]] = [
    # (text in the mutant's name, text in its "+" line, why it is equivalent)
    (
        "x_leaky_relu__",
        "torch.where(z >= 0, z, z * slope)",
        "At z = 0 both branches give 0 (and -0.0 * slope is -0.0): the same value for every z.",
    ),
    (
        "x_softplus__",
        "torch.sigmoid(bz)).to(None)",
        "torch.where(cond, 1.0, t) already has t's (z's) dtype: a Python scalar does not promote, so the "
        "trailing .to(z.dtype) is a no-op and .to(None) is the same no-op.",
    ),
    (
        "x_elu__",
        "* alpha).to(None)",
        "torch.where(cond, 1.0, t) already has t's (z's) dtype: a Python scalar does not promote, so the "
        "trailing .to(z.dtype) is a no-op and .to(None) is the same no-op.",
    ),
    (
        "x_elu__",
        "torch.where(z >= 0, z, torch.expm1",
        "At z = 0 the other branch is alpha expm1(0) = 0 = z (and -0.0 for z = -0.0): the same value for every z.",
    ),
    (
        "x_elu__",
        "torch.expm1(torch.clamp_max(z, 1.0))",
        "expm1 is selected only where z <= 0, where clamping at 1 instead of 0 leaves z as is; the clamp "
        "only keeps the unused branch (z > 0) from overflowing.",
    ),
    (
        "x_elu__",
        "torch.exp(torch.clamp_max(z, 1.0))",
        "The exp branch of f' is selected only where z <= 0, where clamping at 1 instead of 0 changes "
        "nothing; the clamp only keeps the unused branch (z > 0) from overflowing.",
    ),
    (
        "x_gelu__",
        "chain_in_place=None",
        "Memory, not numbers: Activation.chain then multiplies dJ/da by _gelu_derivative(z), which is "
        "_gelu_chain on ones, the same factor Phi(z) + z phi(z) with one (N, d) temporary more.",
    ),
    (
        "x_gelu__",
        "torch_module=lambda: torch.nn.GELU(), )",
        "Memory, not numbers: without chain_in_place, Activation.chain multiplies dJ/da by "
        "_gelu_derivative(z), the same factor Phi(z) + z phi(z) with one (N, d) temporary more.",
    ),
    (
        "x__gelu_chain__",
        "g = dJ_da if (dJ_da.is_contiguous()) and False else dJ_da.contiguous()",
        "Tensor.contiguous() returns the tensor itself when it is already contiguous: the same storage, "
        "the same result.",
    ),
    (
        "x__gelu_chain__",
        "width = z.shape[-1] if (z.dim()) and False else 1",
        "The chain is elementwise: viewing z and dJ/da as rows of width 1 instead of d gives every entry "
        "the same arithmetic, only in smaller chunks (speed, not numbers).",
    ),
    (
        "x__gelu_chain__",
        "chunks(rows_z.shape[0], 3 * width",
        "Memory, not numbers: the chunk of rows processed at once is 2/3 as large; every entry gets the "
        "same elementwise arithmetic.",
    ),
    (
        "x__bce_unresolvable__",
        ") | (torch.minimum(p, 1.0 - p) < BCE_RESOLUTION)",
        "The first term is redundant for p in [0, 1]: p (1 - p) < 1e-12 (or any of these variants of it) "
        "implies min(p, 1 - p) < 1e-4, which the second term already marks.",
    ),
    (
        "x__bce_region__",
        "low = torch.log(p) < BCE_LOG_FLOOR",
        "Differs only where log(p) is exactly -100 (p = e^-100), where the clamped and unclamped log(p) "
        "agree, so the point belongs to either piece: a measure-zero boundary with the same J and dJ/dp.",
    ),
    (
        "x__bce_region__",
        "high = torch.log(1.0 - p) < BCE_LOG_FLOOR",
        "log(1 - p) is never exactly -100 for a float p in [0, 1] (1 - p is 0 or at least 2^-53), so < "
        "and <= mark the same points.",
    ),
    (
        "x__bce_region__",
        "low.to(None) + 2 * high.to(torch.int8)",
        "bool + int8 is int8: the same region numbers in the same dtype.",
    ),
    (
        "x__bce_region__",
        "low.to(torch.int8) + 2 * high.to(None)",
        "The same region numbers in int64 instead of int8: regions are only compared for equality "
        "(refbp.verify.finite_diff, fd_mlp), so only the dtype differs.",
    ),
    (
        "x__bce_region__",
        "low.to(torch.int8) - 2 * high.to(torch.int8)",
        "Regions are labels, only compared for equality: {0, 1, -2} separates the same points as {0, 1, 2}.",
    ),
    (
        "x__bce_region__",
        "low.to(torch.int8) + 3 * high.to(torch.int8)",
        "Regions are labels, only compared for equality: {0, 1, 3} separates the same points as {0, 1, 2}.",
    ),
    (
        "x__bce_unresolvable__",
        "torch.minimum(p, 1.0 - p) <= BCE_RESOLUTION",
        "Differs only where min(p, 1 - p) is exactly 1e-4, refbp's own cut-off (no torch convention); it "
        "decides whether the verifier trusts a finite difference there and changes no J or gradient.",
    ),
    (
        "x_cross_entropy__",
        "torch.arange(z2.shape[0], device=None)",
        "device=None puts the row indices on the CPU, and a CPU index tensor indexes a CPU or CUDA "
        "tensor alike (torch moves it): the same numbers; device=z.device only saves that copy on a GPU.",
    ),
    (
        "x_cross_entropy__",
        "torch.arange(z2.shape[0], ",
        "Without device= the row indices are on the CPU, as with device=None: a CPU index tensor indexes "
        "a CPU or CUDA tensor alike (torch moves it), so the numbers are the same.",
    ),
    (
        "x_cross_entropy__",
        "index = -101 if ignore_index is None",
        "Without ignore_index the targets are class indices in [0, C) (check_targets refuses any other), "
        "and torch ignores no such target whether its ignore_index is -100 or -101.",
    ),
    (
        "xǁDenseǁbackward__mutmut",
        "in_place = None",
        "Memory, not numbers: with in_place falsy eq. (5) is computed on a copy of dJ/da(i) instead of "
        "in its storage, the same values with one more (N, d_i) tensor alive (benchmarks/, item 2).",
    ),
    (
        "xǁDenseǁbackward__mutmut",
        "dJ_da if (in_place) and False else dJ_da.clone()",
        "Memory, not numbers: always computing eq. (5) on a copy gives the same values; the in-place "
        "path exists only to keep the training step's peak memory at autograd's.",
    ),
    (
        "sample_targets",
        "torch.randint(C, tuple(lead), generator=generator)",
        "torch.randint(high, size) is torch.randint(0, high, size): the same call, the same draws.",
    ),
    (
        "sample_targets",
        "uniform_(-1.0, generator=generator)",
        "uniform_'s upper bound defaults to 1: uniform_(-1.0) is uniform_(-1.0, 1.0), the same draws.",
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
        meta = ROOT / "mutants" / "refbp" / "nn" / f"{module}.py.meta"
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
        "# Mutation testing: the MLP's manual backprop",
        "",
        f"mutmut over `refbp/nn/{{{','.join(MODULES)}}}.py` with the fast `ci` hypothesis profile "
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
