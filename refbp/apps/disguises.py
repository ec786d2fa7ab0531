"""The harness must not be fooled: wrong gradients hidden where a weaker harness would pass them.

A reference can fail to say anything: a finite difference that is NaN, every difference
excluded at a kink, a loss that overflows. A harness that treats "nothing exceeded the
tolerance" as "passed" lets a wrong gradient through exactly there. Each entry below builds
such a situation with a gradient that is wrong, and ``refbp bugs`` shows that the harness
fails it (as unverified, or as a mismatch), with the verdict and the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..nn.mlp import MLP
from ..testing import assert_gradients_close
from ..verify.check import CheckResult, GradientMismatchError, check, check_function
from ..verify.compare import quantity

__all__ = ["DISGUISES", "Disguise", "unmask"]

F64 = torch.float64


@dataclass(frozen=True)
class Disguise:
    """One way to hide a wrong gradient from a harness.

    Attributes:
        name: a short identifier.
        title: the hiding place, in a few words.
        hidden: what is wrong, and what would hide it.
        run: builds the situation and checks the wrong gradient; returns the CheckResult.
    """

    name: str
    title: str
    hidden: str
    run: Callable[[], CheckResult]


def _behind_a_nan_difference() -> CheckResult:
    def fn(p: dict[str, np.ndarray]) -> tuple[float, dict[str, np.ndarray]]:
        x = p["x"]
        with np.errstate(invalid="ignore"):
            J = float(np.sum(np.log(x)))  # x - h < 0 at x = 1e-9: the difference there is NaN
        return J, {"x": np.where(x < 1e-6, 5.0 / x, 1.0 / x)}  # wrong (5x) exactly where it is NaN

    return check_function(fn, {"x": np.array([1e-9, 2.0, 3.0])})


def _behind_a_nan_reference() -> CheckResult:
    try:
        return assert_gradients_close({"W1": torch.tensor([7.0, 1.0])}, {"W1": torch.tensor([float("nan"), 1.0])})
    except GradientMismatchError as err:
        return err.result


def _behind_kinks() -> CheckResult:
    W1 = torch.tensor([[1.0, -2.0], [0.5, 0.3], [-1.0, 1.0]], dtype=F64)
    net = MLP.from_params(
        weights=[W1, torch.tensor([[0.3, -0.4, 0.9]], dtype=F64)],
        biases=[torch.zeros(3, dtype=F64), torch.zeros(1, dtype=F64)], activations=["relu", "identity"], loss="mse",
    )  # fmt: skip
    X, y = torch.zeros(2, 2, dtype=F64), torch.ones(2, 1, dtype=F64)  # every z(1) exactly on relu's kink
    wrong = net.backward(net.forward(X), y).b(1) + 1.0
    return check(net, X, y, grads={"b1": wrong}, references=("fd",))


def _behind_an_overflow() -> CheckResult:
    net = MLP.random([2, 3, 1], activations=["identity", "identity"], loss="mse", seed=0)
    X, y = torch.full((2, 2), 1e200, dtype=F64), torch.zeros(2, 1, dtype=F64)  # J = inf
    arbitrary = {name: torch.zeros_like(t) for name, t in net.parameters().items()}
    return check(net, X, y, grads=arbitrary)


def _behind_a_nan_loss() -> CheckResult:
    return check_function(lambda p: (float("nan"), {"w": p["w"] * 0.0 + 42.0}), {"w": np.ones(3)})


DISGUISES: tuple[Disguise, ...] = (
    Disguise(
        "behind_a_nan_difference", "a NaN finite difference",
        "log(x) at x = 1e-9 makes x - h negative: the difference is NaN, and NaN > tolerance is never true; "
        "the gradient is 5x wrong exactly there",
        _behind_a_nan_difference,
    ),
    Disguise(
        "behind_a_nan_reference", "a NaN in the expected values",
        "assert_gradients_close with a reference that holds NaN: the entry it should verify is compared with nothing",
        _behind_a_nan_reference,
    ),
    Disguise(
        "behind_kinks", "every difference excluded at a kink",
        "zero biases and an all-zero input put every relu pre-activation on its kink; finite differences alone "
        "(references=('fd',)) exclude every entry, so a wrong dJ/db1 is compared with nothing",
        _behind_kinks,
    ),
    Disguise(
        "behind_an_overflow", "an overflowing loss",
        "X = 1e200 makes J = inf: every reference is inf or NaN, and arbitrary gradients (zeros) meet no finite bound",
        _behind_an_overflow,
    ),
    Disguise(
        "behind_a_nan_loss", "a NaN loss",
        "a function that returns NaN as its loss: its differences are all NaN, its gradient arbitrary",
        _behind_a_nan_loss,
    ),
)  # fmt: skip
"""The hiding places the catalogue shows the harness sees through."""


def unmask(disguise: Disguise) -> tuple[bool, str]:
    """(caught, the verdict in one line): caught when the check did not pass."""
    result = disguise.run()
    failing = [t for t in result.tensors if not t.passed]
    verdicts = ", ".join(f"{quantity(t.name)} {t.verdict}" for t in failing) or "passed"
    return not result.passed, verdicts
