"""The comparison record: the normwise rule, where the worst element is, and what the
message says, all from one record."""

from __future__ import annotations

import json
import math

import pytest
import torch

from refbp.verify.compare import compare
from refbp.verify.tolerances import TOLERANCES, Tolerance, combine, tolerance_for

TOL = Tolerance(rtol=1e-3, atol=1e-6)


def test_elements_within_atol_plus_rtol_times_max_pass_and_beyond_fail() -> None:
    r = torch.tensor([[10.0, -2.0], [0.001, 4.0]], dtype=torch.float64)
    allowed = 1e-6 + 1e-3 * 10.0
    inside = r + torch.tensor([[0.0, 0.0], [0.99 * allowed, 0.0]], dtype=torch.float64)
    outside = r + torch.tensor([[0.0, 0.0], [1.01 * allowed, 0.0]], dtype=torch.float64)
    assert compare("W1", "autograd", inside, r, TOL).passed
    row = compare("W1", "autograd", outside, r, TOL)
    assert not row.passed and row.n_mismatched == 1 and row.worst_index == (1, 0)
    assert row.allowed == pytest.approx(allowed)
    assert row.worst_value == pytest.approx(0.001 + 1.01 * allowed) and row.worst_reference == 0.001
    assert row.max_rel_error == pytest.approx(1.01 * allowed / 10.0)


def test_message_counts_worst_and_allowed() -> None:
    r = torch.zeros(3, 4, dtype=torch.float64)
    r[0, 0] = 1.0
    g = r.clone()
    g[2, 1] = 0.25
    g[1, 3] = -0.125
    text = compare("z2", "fd-full", g, r, TOL).message()
    assert text.startswith("dJ/dz2 vs fd-full: MISMATCH, 2 / 12 elements differ by more than 0.001")
    assert "Greatest difference 0.25" in text and "at index (2, 1): got 0.25, reference 0" in text


def test_nan_in_the_gradient_always_fails() -> None:
    r = torch.ones(4, dtype=torch.float64)
    g = r.clone()
    g[2] = float("nan")
    row = compare("b1", "autograd", g, r, TOL)
    assert not row.passed and row.worst_index == (2,) and "NaN or inf" in row.message()


def test_excluded_entries_are_not_compared_but_counted_as_unverified() -> None:
    r = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    g = torch.tensor([1.0, 99.0, 3.0], dtype=torch.float64)
    row = compare("W1", "fd-full", g, r, TOL, excluded=torch.tensor([False, True, False]))
    assert row.verdict == "partial" and row.passed  # the row contradicts nothing and verifies 2 entries
    assert row.n_excluded == 1 and row.n_unverified == 1 and row.n_elements == 3
    assert row.verified is not None and row.verified.tolist() == [True, False, True]


def test_shape_mismatch_is_a_failing_record_not_an_exception() -> None:
    row = compare("W1", "autograd", torch.zeros(2, 3), torch.zeros(3, 2), TOL)
    assert not row.passed and "(transposed?)" in row.note
    row = compare("b1", "autograd", torch.zeros(1, 3), torch.zeros(3), TOL)
    assert not row.passed and "transposed" not in row.note
    json.dumps(row.to_dict())  # inf/NaN become strings


def test_all_zero_reference_uses_atol() -> None:
    r = torch.zeros(5, dtype=torch.float64)
    assert compare("z1", "autograd", r + 1e-7, r, TOL).passed
    row = compare("z1", "autograd", r + 1e-5, r, TOL)
    assert not row.passed and math.isinf(row.max_rel_error)


def test_tolerances_are_ordered_by_precision_and_combine_takes_the_looser() -> None:
    rtols = [TOLERANCES[d].rtol for d in (torch.float64, torch.float32, torch.float16, torch.bfloat16)]
    assert rtols == sorted(rtols)
    both = combine(tolerance_for(torch.float64), Tolerance(rtol=1e-6, atol=1e-13))
    assert both == Tolerance(rtol=1e-6, atol=1e-12)
    with pytest.raises(ValueError, match=r"no tolerance is defined for dtype torch\.int64"):
        tolerance_for(torch.int64)
