"""Assertions for use inside any pytest suite, with refbp's tolerances and messages.

    from refbp.testing import assert_gradients_close, assert_gradients_correct

    assert_gradients_close(my_grads, reference_grads)          # two dicts name -> tensor
    assert_gradients_correct(net, X, y, grads=my_grads)         # against autograd and FD

Both raise refbp.GradientMismatchError (an AssertionError) whose message says, for each
tensor that disagrees, how many elements differ, by how much at worst, where, and what was
allowed. For property tests, the strategies are in refbp.strategies.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .nn.network import MLP
from .verify.check import CheckResult, check
from .verify.compare import compare
from .verify.tolerances import Tolerance, least_precise, tolerance_for

__all__ = ["assert_gradients_close", "assert_gradients_correct"]


def assert_gradients_close(
    actual: Mapping[str, Tensor],
    expected: Mapping[str, Tensor],
    *,
    tolerance: Tolerance | None = None,
    reference: str = "expected",
) -> CheckResult:
    """Assert that every tensor in ``expected`` has a close counterpart in ``actual``.

    Args:
        actual: name -> gradient under test.
        expected: name -> reference gradient; every key must be present in ``actual``.
        tolerance: default: refbp.tolerances.TOLERANCES for the least precise dtype of
            ``actual`` (the normwise rule |g - r| <= atol + rtol * max|r|).
        reference: how the reference is called in the message.

    Returns the CheckResult (all rows passed) so callers can inspect or print it.
    """
    if not isinstance(actual, Mapping) or not isinstance(expected, Mapping):
        raise TypeError("actual and expected must both be dicts name -> tensor")
    missing = [name for name in expected if name not in actual]
    if missing:
        raise KeyError(f"actual has no gradient for {missing}; it has {list(actual)}")
    if tolerance is None:
        dtypes = [t.dtype for t in actual.values() if isinstance(t, Tensor)]
        tolerance = tolerance_for(least_precise(dtypes, torch.float64))
    rows = [compare(name, reference, actual[name], expected[name], tolerance) for name in expected]
    result = CheckResult(rows=rows, J=float("nan"), dtype="", device="")
    result.raise_if_failed()
    return result


def assert_gradients_correct(
    net: MLP, X: Tensor, y: Tensor, grads: Mapping[str, Any] | None = None, **options: Any
) -> CheckResult:
    """``refbp.check(net, X, y, grads, **options).raise_if_failed()``, returning the result."""
    result = check(net, X, y, grads, **options)
    result.raise_if_failed()
    return result
