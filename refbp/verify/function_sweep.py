"""Measurements of ``check_autograd_function`` over the hand-written Functions: how often a
correct one is flagged (should be never), and what each catalogued bug gets in each dtype.

    false_positive_sweep(n=300, seed=0)   # correct Functions at random points, all dtypes
    bug_sweep()                           # every catalogued bug in float32, float16, bfloat16
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..nn.validation import check_int, check_seed
from .autograd_function import check_autograd_function
from .function_bugs import FUNCTION_BUGS
from .hand_functions import CASES

__all__ = ["DTYPES", "BugVerdict", "FunctionSweep", "bug_sweep", "false_positive_sweep"]

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
"""The kernel dtypes swept: what custom kernels run in."""


@dataclass
class FunctionSweep:
    """The outcome of a false-positive sweep.

    Attributes:
        checked: checks made.
        flagged: (case, dtype, seed, failure message) of every correct Function not passed.
        worst_margin: the largest margin (refbp.verify.compare.Comparison.margin) of any row.
    """

    checked: int = 0
    flagged: list[tuple[str, str, int, str]] = field(default_factory=list)
    worst_margin: float = 0.0


def false_positive_sweep(n: int, seed: int = 0, *, device: str = "cpu") -> FunctionSweep:
    """Check ``n`` correct Functions (refbp.verify.hand_functions.CASES, in turn) at random
    points, cycling through float32, float16 and bfloat16; every one should pass."""
    check_int(n, "n", minimum=1)
    check_seed(seed)
    out = FunctionSweep()
    cases = list(CASES.values())
    for k in range(n):
        case = cases[k % len(cases)]
        dtype = DTYPES[(k // len(cases)) % len(DTYPES)]
        point_seed = seed + k
        inputs = tuple(t.to(device) for t in case.inputs(dtype, _point_generator(point_seed)))
        result = check_autograd_function(case.fn, *inputs, reference=case.reference, seed=point_seed)
        out.checked += 1
        out.worst_margin = max([out.worst_margin] + [row.margin for row in result.rows])
        if not result.passed:
            out.flagged.append((case.name, str(dtype), point_seed, result.failure_message()))
    return out


@dataclass(frozen=True)
class BugVerdict:
    """What the check said of one bug in one dtype.

    Attributes:
        bug, dtype: which.
        verdicts: tensor name -> "passed", "mismatch" or "unverified".
        message: the failure message ("" when it passed, which a bug must not).
    """

    bug: str
    dtype: str
    verdicts: dict[str, str]
    message: str

    @property
    def caught(self) -> bool:
        """Contradicted: some tensor is a mismatch."""
        return "mismatch" in self.verdicts.values()


def bug_sweep(seed: int = 0, *, device: str = "cpu") -> list[BugVerdict]:
    """Every catalogued bug (refbp.verify.function_bugs) checked in each of DTYPES."""
    check_seed(seed)
    out = []
    for bug in FUNCTION_BUGS.values():
        for dtype in DTYPES:
            inputs = tuple(t.to(device) for t in bug.point(dtype, _point_generator(seed)))
            result = check_autograd_function(bug.fn, *inputs, reference=CASES[bug.case].reference, seed=seed)
            verdicts = {t.name: t.verdict for t in result.tensors}
            message = "" if result.passed else result.failure_message()
            out.append(BugVerdict(bug.name, str(dtype).removeprefix("torch."), verdicts, message))
    return out


def _point_generator(seed: int) -> torch.Generator:
    """The points' own stream, never the check's: grad_outputs drawn from the same stream as
    an input of their shape equal it, and then g^T x = x^T x is symmetric, hiding a transpose."""
    return torch.Generator().manual_seed(2 * seed + 1)  # the check draws from seed itself
