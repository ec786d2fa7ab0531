"""refbp.verify.check and refbp.check_function: they pass correct gradients, fail wrong ones with a
message built from the records, and treat a wrong shape as a failing row, not a crash."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given

import refbp
from refbp.strategies import cases
from refbp.testing import assert_gradients_close, assert_gradients_correct
from refbp.verify.cases import Case, CaseSpec


def _case(**overrides: object) -> Case:
    base = {"dims": (3, 5, 4, 2), "activations": ("tanh", "gelu", "identity"), "loss": "mse", "seed": 7, "batch": 6}
    return CaseSpec(**{**base, **overrides}).build()  # type: ignore[arg-type]


def _manual(case: Case) -> dict[str, torch.Tensor]:
    return case.net.backward(case.net.forward(case.X), case.y).as_dict()


def test_correct_gradients_pass_with_a_row_per_tensor_and_reference() -> None:
    case = _case()
    result = refbp.check(case.net, case.X, case.y)
    assert result.passed
    assert [(r.name, r.reference) for r in result.rows] == [
        (name, ref) for ref in ("autograd", "fd-full") for name in _manual(case)
    ]
    result.raise_if_failed()
    json.dumps(result.to_dict())  # JSON-ready


@given(cases(max_depth=3))
def test_any_subset_of_user_gradients_is_checked(case: Case) -> None:
    grads = _manual(case)
    subset = {name: grads[name] for name in list(grads)[::2]}
    result = refbp.check(case.net, case.X, case.y, grads=subset)
    assert result.passed and {r.name for r in result.rows} == set(subset)


@given(cases(max_depth=3, dtypes=["float64"]))
def test_a_gradient_scaled_by_two_fails_against_both_references(case: Case) -> None:
    grads = _manual(case)
    name = "W1"
    if float(grads[name].abs().max()) < 1e-6:  # a dead layer: scaling zero changes nothing
        return
    wrong = {**grads, name: 2 * grads[name]}
    result = refbp.check(case.net, case.X, case.y, grads=wrong)
    assert {(r.name, r.reference) for r in result.failures} >= {(name, "autograd")}
    assert any(r.name == name and r.reference.startswith("fd") for r in result.failures)
    assert all(r.passed for r in result.rows if r.name != name)


def test_failure_message_reads_like_torch_testing() -> None:
    case = _case()
    grads = _manual(case)
    grads["b2"] = grads["b2"].clone()
    grads["b2"][3] += 0.5
    result = refbp.check(case.net, case.X, case.y, grads=grads)
    with pytest.raises(refbp.GradientMismatchError) as info:
        result.raise_if_failed()
    message = str(info.value)
    assert message.startswith(f"1 of {len(grads)} gradients failed (b2 mismatch):")
    assert "dJ/db2 vs autograd: MISMATCH, 1 / 4 elements differ by more than" in message
    assert "at index (3,)" in message and "Greatest difference 0.5" in message
    assert isinstance(info.value, AssertionError) and not isinstance(info.value, ValueError)


def test_transposed_gradient_is_a_failing_row_that_says_so() -> None:
    case = _case()
    grads = _manual(case)
    grads["W2"] = grads["W2"].T
    result = refbp.check(case.net, case.X, case.y, grads=grads)
    rows = [r for r in result.failures if r.name == "W2"]
    assert len(rows) == 2 and all(
        "shape (5, 4) but the reference has shape (4, 5) (transposed?)" in r.message() for r in rows
    )


def test_square_layer_transpose_is_caught_by_value() -> None:
    case = _case(dims=(4, 4, 4, 2))
    grads = _manual(case)
    grads["W2"] = grads["W2"].T.contiguous()
    result = refbp.check(case.net, case.X, case.y, grads=grads)
    assert {r.name for r in result.failures} == {"W2"}


def test_nan_gradient_fails() -> None:
    case = _case()
    grads = _manual(case)
    grads["X"] = torch.full_like(grads["X"], float("nan"))
    result = refbp.check(case.net, case.X, case.y, grads=grads, references=("autograd",))
    (row,) = result.failures
    assert row.name == "X" and "NaN or inf" in row.message()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_directional_mode_catches_a_sign_error_with_signed_directions(dtype: str) -> None:
    case = _case(dtype=dtype)
    grads = _manual(case)
    wrong = {**grads, "W3": -grads["W3"]}
    result = refbp.check(case.net, case.X, case.y, grads=wrong, references=("fd",), fd_mode="directional", directions=4)
    assert {r.name for r in result.failures} == {"W3"}
    assert all(r.n_elements == 4 for r in result.rows)


def test_float32_gradients_are_checked_against_float64_references() -> None:
    case = _case(dtype="float32")
    result = refbp.check(case.net, case.X, case.y)
    assert result.passed and result.dtype == "float32"
    assert all(
        r.rtol == refbp.verify.tolerances.TOLERANCES[torch.float32].rtol
        for r in result.rows
        if r.reference == "autograd"
    )


def test_check_refuses_misuse_with_value_errors() -> None:
    case = _case()
    with pytest.raises(ValueError, match=r"grads has unknown keys \['W9'\]"):
        refbp.check(case.net, case.X, case.y, grads={"W9": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"references=\['jax'\]"):
        refbp.check(case.net, case.X, case.y, references=["jax"])
    with pytest.raises(ValueError, match="fd_mode='fast'"):
        refbp.check(case.net, case.X, case.y, fd_mode="fast")
    with pytest.raises(TypeError, match=r"net must be a refbp network \(refbp\.MLP"):
        refbp.check("net", case.X, case.y)  # type: ignore[arg-type]


# ---- check_function ---------------------------------------------------------------------
def _least_squares(A: np.ndarray, b: np.ndarray, *, sign: float = 1.0):  # type: ignore[no-untyped-def]
    def fn(p: dict[str, np.ndarray]) -> tuple[float, dict[str, np.ndarray]]:
        r = A @ p["w"] + p["c"] - b
        return 0.5 * float(r @ r), {"w": sign * (A.T @ r), "c": np.array(sign * r.sum())}

    return fn


def test_check_function_passes_a_correct_numpy_gradient_and_fails_a_wrong_sign() -> None:
    rng = np.random.default_rng(0)
    A, b = rng.normal(size=(7, 5)), rng.normal(size=7)
    params = {"w": rng.normal(size=5), "c": np.array(0.3)}
    good = refbp.check_function(_least_squares(A, b), params)
    assert good.passed and good.fd_mode == "full" and [r.name for r in good.rows] == ["w", "c"]
    bad = refbp.check_function(_least_squares(A, b, sign=-1.0), params)
    assert {r.name for r in bad.failures} == {"w", "c"}


def test_check_function_scales_to_tens_of_thousands_of_entries_in_directional_mode() -> None:
    rng = np.random.default_rng(1)
    n = 40_000
    d = rng.normal(size=n)

    def fn(p: dict[str, np.ndarray]) -> tuple[float, dict[str, np.ndarray]]:
        w = p["w"]
        return float(np.sum(d * np.tanh(w))), {"w": d * (1 - np.tanh(w) ** 2)}

    def wrong(p: dict[str, np.ndarray]) -> tuple[float, dict[str, np.ndarray]]:
        J, g = fn(p)
        g["w"] = g["w"].copy()
        g["w"][12345] += 1.0  # one wrong entry among 40,000
        return J, g

    params = {"w": rng.normal(size=n)}
    result = refbp.check_function(fn, params)
    assert result.fd_mode == "directional" and result.passed
    assert not refbp.check_function(wrong, params).passed


def test_check_function_accepts_torch_and_reports_missing_gradients() -> None:
    W = torch.randn(3, 4, dtype=torch.float64)

    def fn(p: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return (p["W"] ** 3).sum(), {"W": 3 * p["W"] ** 2}

    assert refbp.check_function(fn, {"W": W}).passed
    result = refbp.check_function(lambda p: (fn(p)[0], {}), {"W": W})
    assert not result.passed and "no gradient" in result.rows[0].message()
    with pytest.raises(TypeError, match=r"fn\(params\) must return \(loss, grads\)"):
        refbp.check_function(lambda p: 1.0, {"W": W})  # type: ignore[arg-type,return-value]


# ---- refbp.testing ----------------------------------------------------------------------
def test_assert_gradients_close_passes_and_fails_with_the_rows_message() -> None:
    case = _case()
    grads = _manual(case)
    _, reference = refbp.verify.reference.autograd_gradients(case.net, case.X, case.y)
    assert_gradients_close(grads, reference, reference="autograd")
    with pytest.raises(AssertionError, match=r"dJ/dz2 vs autograd: MISMATCH"):
        assert_gradients_close({**grads, "z2": grads["z2"] * 1.01}, reference, reference="autograd")
    assert_gradients_correct(case.net, case.X, case.y, grads)
