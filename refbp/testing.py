"""Assertions for use inside any pytest suite, with refbp's tolerances and messages.

    from refbp.testing import assert_gradients_close, assert_gradients_correct

    assert_gradients_close(my_grads, reference_grads)          # two dicts name -> tensor
    assert_gradients_correct(net, X, y, grads=my_grads)         # against autograd and FD
    assert_hvp_correct(net, X, y, v, hvp_fn=my_hvp)             # H v against torch and FD

Both raise refbp.GradientMismatchError (an AssertionError) whose message says, for each
tensor that disagrees, how many elements differ, by how much at worst, where, and what was
allowed; and, for each tensor that could not be verified (a NaN or inf reference), why. For
property tests, the strategies are in refbp.strategies.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .nn.network import Network
from .verify.check import CheckResult, check
from .verify.compare import compare
from .verify.inputs import as_tensor
from .verify.second_order import check_second_order
from .verify.tolerances import Tolerance, least_precise, tolerance_for

__all__ = ["assert_gradients_close", "assert_gradients_correct", "assert_hvp_correct"]


def assert_gradients_close(
    actual: Mapping[str, Tensor],
    expected: Mapping[str, Tensor],
    *,
    tolerance: Tolerance | None = None,
    reference: str = "expected",
) -> CheckResult:
    """Assert that every tensor in ``expected`` has a close counterpart in ``actual``.

    Args:
        actual: name -> gradient under test (torch tensors or NumPy arrays).
        expected: name -> reference gradient (torch or NumPy), at least one; every key must be
            present in ``actual``. A NaN or inf in it verifies nothing: that tensor fails as
            unverified.
        tolerance: default: refbp.verify.tolerances.TOLERANCES for the least precise dtype of
            ``actual`` (the normwise rule |g - r| <= atol + rtol * max|r|).
        reference: how the reference is called in the message.

    Returns the CheckResult (every tensor verified) so callers can inspect or print it.
    """
    for argument, value in (("actual", actual), ("expected", expected)):
        if not isinstance(value, Mapping):
            raise TypeError(f"{argument} must be a dict name -> tensor, got {type(value).__name__}")
    if not expected:
        raise ValueError("expected is empty: there is nothing to compare against (give at least one tensor)")
    missing = [name for name in expected if name not in actual]
    if missing:
        raise ValueError(f"actual has no gradient for {missing}; it has {list(actual)}")
    if tolerance is not None and not isinstance(tolerance, Tolerance):
        raise TypeError(
            f"tolerance={tolerance!r} must be a Tolerance(rtol=..., atol=...), got {type(tolerance).__name__}"
        )
    got = {name: as_tensor(actual[name], f"actual[{name!r}]") for name in expected}
    want = {name: as_tensor(expected[name], f"expected[{name!r}]") for name in expected}
    if tolerance is None:
        tolerance = tolerance_for(
            least_precise([t.dtype for t in got.values() if t.is_floating_point()], torch.float64)
        )
    rows = [compare(name, reference, got[name], want[name], tolerance) for name in expected]
    result = CheckResult(rows=rows, J=float("nan"), dtype="", device="")
    result.raise_if_failed()
    return result


def assert_gradients_correct(
    net: Network, X: Tensor | np.ndarray, y: Tensor | np.ndarray, grads: Mapping[str, Any] | None = None, **options: Any
) -> CheckResult:
    """``refbp.check(net, X, y, grads, **options).raise_if_failed()``, returning the result."""
    result = check(net, X, y, grads, **options)
    result.raise_if_failed()
    return result


def assert_hvp_correct(
    net: Network, X: Tensor, y: Tensor, v: Mapping[str, Tensor] | None = None, **options: Any
) -> CheckResult:
    """``refbp.check_second_order(net, X, y, v, **options).raise_if_failed()``, returning the
    result: a user's product (``hvp_fn=``, v -> {name: (H v)_name}; ``product="gauss_newton"``
    for G v) or refbp's own, against forward-over-reverse, double backward and differences of
    the gradient along v (``forward=True``: the tangents too)."""
    result = check_second_order(net, X, y, v, **options)
    result.raise_if_failed()
    return result
