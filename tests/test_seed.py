"""The seed's formulas as written fail the harness where they are wrong, and pass once
corrected; refbp/seed.py computes the verdicts that docs/seed_corrected.md shows."""

from __future__ import annotations

import math

import pytest
import torch

import refbp
from refbp.apps.seed import SEED_FORMULAS, ShapeMismatchError, dz_dW_tensor, evaluate, seed_network, seed_point

FORMULAS = {f.key: f for f in SEED_FORMULAS}


def test_seed_sign_of_dJ_dy_hat_fails_and_the_corrected_sign_passes() -> None:
    v = evaluate(FORMULAS["sign"])
    assert v.written.verdict == "fails" and v.corrected.verdict == "passes"
    assert v.written.result is not None
    # the seed's sign negates every gradient: |g - r| = 2 |r|, normwise relative error 2
    assert {row.name for row in v.written.result.failures} == {"W1", "b1", "z1", "a1", "W2", "b2", "z2", "a2", "X"}
    for row in v.written.result.rows:
        assert row.max_rel_error == pytest.approx(2.0, rel=1e-6), row.message()


def test_seed_forward_W_X_does_not_type_check_and_the_row_form_gives_every_gradient() -> None:
    v = evaluate(FORMULAS["forward"])
    assert v.written.verdict == "does not type-check" and "W_1 (3, 2)" in (v.written.error or "")
    assert v.corrected.verdict == "passes"
    assert v.corrected.result is not None
    assert {row.name for row in v.corrected.result.rows} == {"W1", "b1", "z1", "a1", "W2", "b2", "z2", "a2", "X"}
    assert {row.reference for row in v.corrected.result.rows} == {"autograd", "fd-full"}


@pytest.mark.parametrize("batch", [1, 4, 5])
def test_seed_chain_product_in_the_written_order_does_not_type_check(batch: int) -> None:
    net = seed_network()
    X = torch.rand(batch, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(batch))
    y = torch.rand(batch, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(batch + 1))
    formula = FORMULAS["chain"]
    with pytest.raises(ShapeMismatchError):
        formula.written(net, X, y)
    refbp.check(net, X, y, grads=formula.fixed(net, X, y), references=("autograd",)).raise_if_failed()


def test_seed_dz_dW_as_a_tensor_statement_contracts_to_eq_6() -> None:
    net = seed_network()
    X, _ = seed_point()
    W1, b1 = net.weights[0], net.biases[0]
    # the tensor statement: dz(1)[n, k] / dW(1)[p, q], by autograd's own Jacobian
    jacobian = torch.autograd.functional.jacobian(lambda W: X @ W.T + b1, W1)  # (N, d_1, d_1, d_0)
    torch.testing.assert_close(dz_dW_tensor(X, 3), jacobian, rtol=0, atol=0)
    v = evaluate(FORMULAS["dz/dW"])
    assert v.written.verdict == "does not type-check" and v.corrected.verdict == "passes"


def test_seed_order_reversed_to_type_check_is_a_transposed_failing_row() -> None:
    v = evaluate(FORMULAS["order"])
    assert v.written.verdict == "fails" and v.corrected.verdict == "passes"
    assert v.written.result is not None
    for row in v.written.result.rows:
        assert row.shape == row.expected_shape[::-1] and "transposed?" in row.note and math.isinf(row.max_rel_error)


@pytest.mark.parametrize("key", ["sigmoid", "W-factor"])
def test_seed_formulas_that_are_right_as_written_pass_unchanged(key: str) -> None:
    v = evaluate(FORMULAS[key])
    assert v.written.verdict == v.corrected.verdict == "passes"


def test_every_corrected_formula_passes_on_other_seeds_too() -> None:
    X, y = seed_point()
    for seed in (1, 2):
        net = seed_network(seed)
        for formula in SEED_FORMULAS:
            v = evaluate(formula, net, X, y, references=("autograd",))
            assert v.corrected.verdict == "passes", formula.key


def test_evaluate_refuses_what_is_not_a_seed_formula() -> None:
    with pytest.raises(TypeError, match="formula must be a SeedFormula"):
        evaluate("sign")  # type: ignore[arg-type]
