"""The comparison record: the normwise rule, where the worst element is, and what the
message says, all from one record."""

from __future__ import annotations

import json
import math

import pytest
import torch

from refbp.verify.compare import _compare_masked, compare
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


def _record(c: object) -> dict[str, object]:
    """Every field of a Comparison, the verified mask as a list (NaN-free floats compare with ==)."""
    fields = dict(vars(c))
    fields["verified"] = fields["verified"].tolist()
    return fields


def _general(
    g: torch.Tensor, r: torch.Tensor, tol: Tolerance, *, error: torch.Tensor | None = None, widened: float = 0.0
) -> object:
    """compare()'s general path (the masks), for inputs that compare() would send down the short one."""
    g64, r64 = g.to(torch.float64), r.to(torch.float64)
    return _compare_masked("W1", "ref", g64, r64, tol, None, error, widened, True, 0, tuple(g.shape))


def test_an_all_false_excluded_mask_takes_the_short_path_and_says_the_same() -> None:
    # finite differences hand over their excluded mask even when nothing crossed a boundary (the
    # common case): that row must read as the one without a mask, which the short path computes
    tol = Tolerance(rtol=1e-6, atol=1e-9)
    r = torch.tensor([[1.0, -2.0], [3.0, 0.5]], dtype=torch.float64)
    g = r + torch.tensor([[0.0, 1e-6], [5e-6, 0.0]], dtype=torch.float64)
    error = torch.full_like(r, 1e-7)
    masked = compare("W1", "ref", g, r, tol, excluded=torch.zeros(2, 2, dtype=torch.bool), error=error)
    assert _record(masked) == _record(compare("W1", "ref", g, r, tol, error=error))
    assert _record(masked) == _record(_general(g, r, tol, error=error))
    one_out = compare("W1", "ref", g, r, tol, excluded=torch.tensor([[False, False], [True, False]]), error=error)
    assert one_out.n_excluded == 1 and one_out.n_unverified == 1  # a mask with a True still leaves it out


@pytest.mark.parametrize("seed", range(40))
def test_the_finite_fast_path_says_exactly_what_the_general_path_says(seed: int) -> None:
    # compare() takes a short path when g and r are finite, J is finite and nothing is excluded. The
    # same inputs down the general path must give every field equal, for exact and finite-difference
    # references, at, around and far beyond the tolerance.
    g = torch.Generator().manual_seed(seed)
    shape = [(1,), (7,), (3, 5), (2, 3, 4)][seed % 4]
    r = torch.randn(shape, generator=g, dtype=torch.float64) * 10.0 ** float(torch.randint(-3, 4, (), generator=g))
    if seed % 5 == 0:
        r.zero_()  # an all-zero reference: allowed = atol
    tol = Tolerance(rtol=1e-6, atol=1e-9)
    scale = float(r.abs().max())
    allowed = tol.allowed(scale)
    off = torch.randn(shape, generator=g, dtype=torch.float64) * allowed * [0.0, 0.5, 1.0, 3.0][seed % 4]
    if seed % 7 == 0:
        off.view(-1)[0] = allowed  # exactly at the bound: verified, not contradicted
    grad = (r + off).float() if seed % 3 == 0 else r + off
    error = None
    if seed % 2:
        error = torch.rand(shape, generator=g, dtype=torch.float64) * allowed * [0.1, 1.0, 10.0][seed % 3]
    fast = compare("W1", "ref", grad, r, tol, error=error, widened=1e-12 * (seed % 2))
    general = _general(grad, r, tol, error=error, widened=1e-12 * (seed % 2))
    assert _record(fast) == _record(general)


def test_the_fast_path_is_not_taken_for_nan_inf_empty_or_a_nan_loss() -> None:
    # the general path's notes say why nothing (or not everything) was verified: the short path has none
    tol = Tolerance(rtol=1e-6, atol=1e-9)
    r = torch.ones(3, dtype=torch.float64)
    assert "NaN or inf" in compare("W1", "ref", torch.tensor([1.0, math.nan, 1.0]), r, tol).note
    assert compare("W1", "ref", r, torch.tensor([1.0, math.inf, 1.0]), tol).n_nonfinite == 1
    assert "empty" in compare("W1", "ref", torch.ones(0), torch.ones(0, dtype=torch.float64), tol).note
    assert compare("W1", "ref", r, r, tol, J_finite=False).verdict == "unverified"


@pytest.mark.parametrize("finite_error", [False, True], ids=["exact reference", "with error estimates"])
def test_both_paths_agree_exactly_on_the_bounds(finite_error: bool) -> None:
    # Entries exactly at each bound, where a < for a <= (or the reverse) changes the verdict: r = 0 and
    # powers of two make every |g - r|, allowed and FD_ERROR_SAFETY e exact. allowed = atol = 2^-20.
    tol = Tolerance(rtol=2.0**-10, atol=2.0**-20)
    a = tol.allowed(0.0)
    r = torch.zeros(6, dtype=torch.float64)
    g = torch.tensor([a, a / 2, 2 * a, 3 * a, a, 0.0], dtype=torch.float64)
    # with estimates: slack = 4 e = 0, a, a, 2a, 2a, 2a, so the bounds a + slack are a, 2a, 2a, 3a, 3a, 3a
    error = torch.tensor([0.0, a / 4, a / 4, a / 2, a / 2, a / 2], dtype=torch.float64) if finite_error else None
    fast = compare("W1", "ref", g, r, tol, error=error)
    general = _general(g, r, tol, error=error)
    assert _record(fast) == _record(general)
    assert fast.verified is not None
    if finite_error:  # entries 0-2 within their bounds (2 at it), with slack <= a; 3 at its bound, slack 2a > a
        assert fast.verified.tolist() == [True, True, True, False, False, False]
        assert fast.n_imprecise == 3 and fast.n_mismatched == 0  # slack 2a > allowed a: too imprecise to confirm
    else:
        assert fast.verified.tolist() == [True, True, False, False, True, True]
        assert fast.n_mismatched == 2 and fast.ratio == 3.0
