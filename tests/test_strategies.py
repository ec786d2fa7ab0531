"""The exported hypothesis strategies: they honour their bounds and the loss/output pairing,
refuse bad options up front, and shrink a failure to the smallest network that shows it."""

from __future__ import annotations

import json

import pytest
from hypothesis import find, given, settings
from hypothesis import strategies as st

import refbp
from refbp.nn.losses import LOSSES
from refbp.strategies import cases, specs
from refbp.verify.cases import KINK_MARGIN, Case, CaseSpec, kink_distance


@given(specs(max_depth=3, max_width=5, max_batch=4))
def test_specs_stay_within_their_bounds_and_pair_losses_with_outputs(spec: CaseSpec) -> None:
    assert 1 <= len(spec.activations) <= 3 and len(spec.dims) == len(spec.activations) + 1
    assert all(1 <= d <= 5 for d in spec.dims) and 1 <= spec.batch <= 4
    required = LOSSES[spec.loss].output_activation
    assert required is None or spec.activations[-1] == required
    if spec.loss == "cross_entropy":
        assert spec.dims[-1] >= 2


@given(cases(activations=["relu", "leaky_relu"], dtypes=["float64"]))
def test_cases_keep_relu_pre_activations_away_from_the_kink(case: Case) -> None:
    assert kink_distance(case) > KINK_MARGIN


@given(st.data())
def test_a_case_rebuilds_identically_from_its_json(data: st.DataObject) -> None:
    case = data.draw(cases(max_depth=2))
    again = CaseSpec.from_dict(json.loads(case.spec.to_json())).build()
    assert again.X.equal(case.X) and again.y.equal(case.y)
    assert all(a.equal(b) for a, b in zip(again.net.weights, case.net.weights, strict=True))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"activations": ["swish"]}, r"activations=\['swish'\]: expected a non-empty list drawn from"),
        ({"losses": []}, r"losses=\[\]: expected a non-empty list"),
        ({"dtypes": ["float8"]}, r"dtypes=\['float8'\]"),
        ({"max_depth": 0}, r"max_depth=0, max_width=16, max_batch=8: all must be >= 1"),
    ],
)
def test_bad_strategy_options_are_refused_with_the_values(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        find(specs(**options), lambda spec: True, settings=settings(database=None))  # type: ignore[arg-type]


def test_a_transposed_dJ_dW_shrinks_to_the_smallest_non_square_layer() -> None:
    """A transpose changes nothing until some W is non-square; hypothesis finds the smallest."""

    def transpose_is_caught(spec: CaseSpec) -> bool:
        case = spec.build()
        grads = case.net.backward(case.net.forward(case.X), case.y).as_dict()
        wrong = {k: (v.T if k.startswith("W") else v) for k, v in grads.items()}
        return not refbp.check(case.net, case.X, case.y, grads=wrong, references=("autograd",)).passed

    minimal = find(
        specs(losses=["half_sse"], dtypes=["float64"], weight_decay=False),
        transpose_is_caught,
        settings=settings(database=None, max_examples=200, derandomize=True),
    )
    assert len(minimal.dims) == 2 and sorted(minimal.dims) == [1, 2] and minimal.batch == 1
