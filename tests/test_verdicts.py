"""Verdicts mean verified (issue 9): the rule "an entry passes only when at least one reference
verified it and no reference contradicts it", property-tested on the comparison itself, and
every false pass and false alarm the issue lists, as a test."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import refbp
from refbp.apps.disguises import DISGUISES, Disguise, unmask
from refbp.examples.descent import gradient_descent_step
from refbp.testing import assert_gradients_close
from refbp.verify.check import tensor_verdicts
from refbp.verify.compare import compare
from refbp.verify.tolerances import FD_ERROR_SAFETY, Tolerance

TOL = Tolerance(rtol=1e-6, atol=1e-9)
SPECIAL = [math.nan, math.inf, -math.inf]


@st.composite
def _pair(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(g, r, excluded, error): values around 1 with NaN/inf sprinkled into either side,
    some entries excluded, some with a large finite-difference error estimate."""
    n = draw(st.integers(0, 6))
    r = torch.tensor(draw(st.lists(st.floats(-2, 2), min_size=n, max_size=n)), dtype=torch.float64)
    noise = torch.tensor(draw(st.lists(st.sampled_from([0.0, 0.0, 1e-12, 1e-3, 1.0]), min_size=n, max_size=n)))
    g = (r + noise.to(torch.float64)).clone()
    for k in range(n):
        if draw(st.integers(0, 5)) == 0:
            g[k] = draw(st.sampled_from(SPECIAL))
        if draw(st.integers(0, 5)) == 0:
            r[k] = draw(st.sampled_from(SPECIAL))
    excluded = torch.tensor(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=torch.bool)
    error = torch.tensor(draw(st.lists(st.sampled_from([0.0, 1e-12, 1e-2]), min_size=n, max_size=n)))
    return g, r, excluded, error.to(torch.float64)


@given(_pair(), st.booleans())
def test_an_entry_is_verified_only_when_finite_judged_and_within_the_allowance(
    pair: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], J_finite: bool
) -> None:
    g, r, excluded, error = pair
    row = compare("W1", "fd-full", g, r, TOL, excluded=excluded, error=error, J_finite=J_finite)
    assert row.verified is not None
    usable = torch.isfinite(r) & ~excluded & J_finite
    for k in range(g.numel()):
        finite_g = math.isfinite(float(g[k]))
        if row.verified[k]:  # verified: everything about it is sound
            assert finite_g and bool(usable[k])
            assert abs(float(g[k] - r[k])) <= row.allowed
            assert FD_ERROR_SAFETY * float(error[k]) <= row.allowed
    # a NaN or inf in the gradient under test always fails the row
    assert row.verdict == "mismatch" or bool(torch.isfinite(g).all())
    # a row that verified nothing never passes, and neither does an empty one
    n_verified = int(row.verified.sum())
    assert row.passed == (row.verdict in ("ok", "partial"))
    if n_verified == 0:
        assert not row.passed
    if row.passed:
        assert row.n_mismatched == 0 and n_verified >= 1
    assert row.n_unverified + n_verified + row.n_mismatched == g.numel()


@given(_pair(), _pair())
def test_a_tensor_passes_only_when_every_entry_is_verified_by_some_row_and_contradicted_by_none(
    a: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    b: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
) -> None:
    n = min(a[0].numel(), b[0].numel())
    rows = [
        compare("W1", "autograd", a[0][:n], a[1][:n], TOL),
        compare("W1", "fd-full", b[0][:n], b[1][:n], TOL, excluded=b[2][:n], error=b[3][:n]),
    ]
    (verdict,) = tensor_verdicts(rows)
    covered = rows[0].verified | rows[1].verified  # type: ignore[operator]
    contradicted = any(row.verdict == "mismatch" for row in rows)
    assert verdict.passed == (n > 0 and bool(covered.all()) and not contradicted)
    if not verdict.passed and not contradicted:
        assert verdict.verdict == "unverified" and (verdict.n_unverified >= 1 or n == 0)


def test_a_directional_row_verifies_the_whole_tensor_only_when_it_verified_a_direction() -> None:
    ok = compare("W1", "fd-directional", torch.ones(3), torch.ones(3), TOL, directions=3, shape=(2, 2))
    none = compare(
        "W1", "fd-directional", torch.ones(3), torch.ones(3), TOL,
        excluded=torch.ones(3, dtype=torch.bool), directions=3, shape=(2, 2),
    )  # fmt: skip
    assert tensor_verdicts([ok])[0].passed
    assert tensor_verdicts([none])[0].verdict == "unverified"
    assert none.message().startswith("dJ/dW1 (2x2, 3 directions) vs fd-directional: UNVERIFIED")


# ---- false passes (issue 9, section 1) ------------------------------------------------------
def test_a_wrong_gradient_hidden_behind_a_nan_finite_difference_fails() -> None:
    def fn(p: dict[str, np.ndarray]) -> tuple[float, dict[str, np.ndarray]]:
        x = p["x"]
        with np.errstate(invalid="ignore"):
            J = float(np.sum(np.log(x)))
        return J, {"x": np.where(x < 1e-6, 999.0, 1.0 / x)}  # right everywhere but at 1e-9

    result = refbp.check_function(fn, {"x": np.array([1e-9, 2.0, 3.0])})
    assert not result.passed and result.tensors[0].verdict == "unverified"
    assert "NaN or inf reference" in result.failure_message()


def test_the_issue_s_log_example_fails_as_a_mismatch() -> None:
    result = refbp.check_function(
        lambda p: (float(np.sum(np.log(np.maximum(p["x"], 1e-300)))), {"x": 5.0 / p["x"]}),
        {"x": np.array([1e-9, 2.0, 3.0])},
    )
    assert not result.passed and result.tensors[0].verdict == "mismatch"


@pytest.mark.parametrize("loss", [math.nan, math.inf, -math.inf])
def test_a_non_finite_loss_verifies_nothing(loss: float) -> None:
    result = refbp.check_function(lambda p: (loss, {"w": p["w"] * 0.0 + 123.0}), {"w": np.ones(3)})
    assert not result.passed and result.tensors[0].verdict == "unverified"
    assert "NaN or inf at this point" in result.failure_message()


def test_nan_or_inf_parameters_of_a_function_verify_nothing() -> None:
    result = refbp.check_function(
        lambda p: (float(np.sum(p["w"] ** 2)), {"w": 2 * p["w"]}), {"w": np.array([1.0, np.nan])}
    )
    assert not result.passed


def test_an_overflowing_forward_fails_instead_of_passing() -> None:
    net = refbp.MLP.random([2, 3, 1], activations=["identity", "identity"], loss="mse", seed=0)
    X = torch.full((2, 2), 1e200, dtype=torch.float64)
    result = refbp.check(net, X, torch.zeros(2, 1, dtype=torch.float64))
    assert not result.passed and not any(t.passed for t in result.tensors)


@pytest.mark.parametrize("mode", ["full", "directional"])
def test_a_wrong_bias_gradient_hidden_behind_kinks_fails_as_unverified(mode: str) -> None:
    # zero biases and an all-zero input row put every relu pre-activation exactly on its kink
    W1 = torch.tensor([[1.0, -2.0], [0.5, 0.3], [-1.0, 1.0]], dtype=torch.float64)
    net = refbp.MLP.from_params(
        weights=[W1, torch.tensor([[0.3, -0.4, 0.9]], dtype=torch.float64)],
        biases=[torch.zeros(3, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)],
        activations=["relu", "identity"], loss="mse",
    )  # fmt: skip
    X, y = torch.zeros(2, 2, dtype=torch.float64), torch.ones(2, 1, dtype=torch.float64)
    wrong = net.backward(net.forward(X), y).dJ_db[1] + 1.0  # type: ignore[operator]
    result = refbp.check(net, X, y, grads={"b1": wrong}, references=("fd",), fd_mode=mode)
    assert not result.passed and result.tensors[0].verdict == "unverified"
    assert "excluded" in result.failure_message()


def test_assert_gradients_close_refuses_nothing_to_compare_and_fails_on_a_nan_reference() -> None:
    with pytest.raises(ValueError, match="expected is empty"):
        assert_gradients_close({"W1": torch.ones(2)}, {})
    with pytest.raises(refbp.GradientMismatchError, match="UNVERIFIED"):
        assert_gradients_close({"W1": torch.ones(2)}, {"W1": torch.tensor([1.0, math.nan])})
    with pytest.raises(refbp.GradientMismatchError, match="UNVERIFIED"):
        assert_gradients_close({"W1": torch.ones(0)}, {"W1": torch.ones(0)})


# ---- false alarms (issue 9, section 2) --------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("z", [6.0, 10.0, 13.0, 20.0, 30.0, 40.0, -13.0, -40.0])
def test_a_confident_sigmoid_under_bce_is_not_a_false_alarm(z: float, dtype: torch.dtype) -> None:
    net = refbp.MLP.from_params(
        weights=[torch.tensor([[1.0], [-0.5]], dtype=dtype).T], biases=[torch.tensor([z], dtype=dtype)],
        activations=["sigmoid"], loss="bce",
    )  # fmt: skip
    X = torch.tensor([[0.0, 0.0], [0.5, 1.0]], dtype=dtype)  # z and z + 0: two saturated outputs
    for target in (0.0, 1.0, 0.3):
        result = refbp.check(net, X, torch.full((2, 1), target, dtype=dtype))
        assert result.passed, result.failure_message()


@pytest.mark.parametrize("offset", [-1e-4, -1e-6, 0.0, 1e-6, 1e-5, 1e-4])
def test_softplus_at_its_threshold_is_not_a_false_alarm(offset: float) -> None:
    net = refbp.MLP.from_params(
        weights=[torch.tensor([[1.0], [0.5]], dtype=torch.float64), torch.tensor([[0.3, -0.7]], dtype=torch.float64)],
        biases=[torch.tensor([19.0 + offset, 0.1], dtype=torch.float64), torch.zeros(1, dtype=torch.float64)],
        activations=["softplus", "identity"], loss="mse",
    )  # fmt: skip
    X = torch.ones(1, 1, dtype=torch.float64)  # z(1)[0] = 20 + offset, at torch's threshold
    result = refbp.check(net, X, torch.zeros(1, 1, dtype=torch.float64))
    assert result.passed, result.failure_message()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_a_classifier_trained_to_confidence_with_refbp_s_own_gradients_is_not_a_false_alarm(dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(0)
    X = torch.randn(32, 2, dtype=torch.float64, generator=generator)
    y = (X[:, :1] * X[:, 1:] > 0).to(torch.float64)  # XOR of the signs
    net = refbp.MLP.random([2, 8, 1], activations=["tanh", "sigmoid"], loss="bce", seed=0)
    for _ in range(300):
        gradient_descent_step(net, net.backward(net.forward(X), y), lr=2.0)
    y_hat = net.forward(X).y_hat
    assert float(torch.minimum(y_hat, 1 - y_hat).min()) < 1e-4  # confident: some outputs within 1e-4 of 0 or 1
    result = refbp.check(net.to(dtype=dtype), X.to(dtype), y.to(dtype))
    assert result.passed, result.failure_message()


@pytest.mark.parametrize("disguise", DISGUISES, ids=lambda d: d.name)
def test_every_catalogued_hiding_place_is_seen_through(disguise: Disguise) -> None:
    caught, verdict = unmask(disguise)
    assert caught, f"{disguise.name}: {verdict}"
    assert "unverified" in verdict or "mismatch" in verdict
