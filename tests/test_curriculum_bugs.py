"""The curriculum's catalogue entries (refbp.apps.curriculum_bugs) against the harness: each
classic mistake of a convolution, a pooling layer, a spatial norm, a softmax or BPTT is flagged
wherever it changes a gradient, and the equivalent variants, and the right backward pass on the
same networks, never are."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import refbp
from refbp.apps.bug_record import Bug
from refbp.apps.bugs_cli import matters
from refbp.apps.catalogue import CATALOGUE, get_bug
from refbp.apps.curriculum_bugs import CURRICULUM_BUGS
from refbp.verify.cases import KINK_MARGIN, kink_distance
from refbp.verify.stacks import StackSpec

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths:UserWarning")

CLASSIC = [bug for bug in CURRICULUM_BUGS if not bug.equivalent]
EQUIVALENT = [bug for bug in CURRICULUM_BUGS if bug.equivalent]
EXAMPLES = 2
"""Networks per entry: tiny, but 15 entries share the suite's few seconds (``refbp bugs``, part of
``make report``, runs each on 12 networks with every reference and shrinks to the smallest)."""


def _wrong_gradients(bug: Bug, spec: StackSpec) -> tuple[refbp.CheckResult, bool]:
    case = spec.build()
    assume(kink_distance(case) > KINK_MARGIN)
    grads, noise = bug.gradients(case)
    return refbp.check(case.net, case.X, case.y, grads=grads, noise=noise, references=("autograd",)), matters(bug, case)


def test_the_catalogue_holds_every_classic_mistake_of_the_curriculum_and_its_variants() -> None:
    names = [bug.name for bug in CATALOGUE]
    assert len(names) == len(set(names)) and all(bug in CATALOGUE for bug in CURRICULUM_BUGS)
    for name in ("conv_dW_unpadded_input", "conv_stride_ignored_in_dx", "conv_kernel_not_flipped", "conv_groups_mixed",
                 "maxpool_assigned", "maxpool_ties_both_credited", "avgpool_divisor_ignores_padding",
                 "batchnorm2d_over_n_only", "groupnorm_wrong_axis", "bptt_drops_next_step", "lstm_no_cell_path",
                 "softmax_jacobian_diagonal"):  # fmt: skip
        assert not get_bug(name).equivalent
    assert len(EQUIVALENT) >= 3
    for bug in CURRICULUM_BUGS:
        assert bug.wrong != bug.right and bug.why and bug.where and bug.equation


@pytest.mark.parametrize("bug", CLASSIC, ids=lambda b: b.name)
@settings(max_examples=EXAMPLES)
@given(data=st.data())
def test_every_curriculum_bug_is_flagged_by_autograd_wherever_it_matters(bug: Bug, data: st.DataObject) -> None:
    spec = data.draw(bug.specs(), label="spec")
    result, bites = _wrong_gradients(bug, spec)
    assume(bites)
    assert not result.passed, f"{bug.name} passed on {spec.to_json()}"


@pytest.mark.parametrize("bug", EQUIVALENT, ids=lambda b: b.name)
@settings(max_examples=EXAMPLES)
@given(data=st.data())
def test_equivalent_variants_and_the_right_pass_are_never_flagged(bug: Bug, data: st.DataObject) -> None:
    spec = data.draw(bug.specs(), label="spec")
    case = spec.build()
    assert not matters(bug, case)
    grads, noise = bug.gradients(case)
    result = refbp.check(case.net, case.X, case.y, grads=grads, noise=noise)
    assert result.passed, result.failure_message()
    refbp.check(case.net, case.X, case.y).raise_if_failed()


TIE = (
    '{"batch": 2, "input": {"integers": true, "shape": [1, 3, 4]}, "layers": [["maxpool", {"kernel": [3, 3], '
    '"padding": [1, 0], "stride": [1, 1]}], ["flatten"], ["linear", 3]], "loss": "mse", "seed": 120929075}'
)
"""Integer images: the max-pool's windows hold their maximum twice (torch credits the first)."""


def test_a_gradient_credited_to_both_tied_maxima_is_caught_and_the_first_maximum_is_verified() -> None:
    # finite differences cannot judge a tie (it is a kink: the entries are excluded), so autograd
    # must; its conditioning allowance used to round tied entries apart, and took the kink's O(1)
    # jump for rounding (allowed 0.93 here), so the doubled gradient passed
    case = StackSpec.from_dict(json.loads(TIE)).build()
    assert bool(case.net.forward(case.X).saved[1].ties.any())
    result = refbp.check(case.net, case.X, case.y, grads=get_bug("maxpool_ties_both_credited").gradients(case)[0])
    failed = {t.name: t for t in result.tensors if not t.passed}
    assert list(failed) == ["X"]
    assert any(row.reference == "autograd" and row.verdict == "mismatch" and row.allowed < 1e-6 for row in result.rows)
    refbp.check(case.net, case.X, case.y).raise_if_failed()  # torch's rule, the first maximum: verified
    case32 = StackSpec.from_dict({**json.loads(TIE), "dtype": "float32"}).build()
    refbp.check(case32.net, case32.X, case32.y).raise_if_failed()


def test_a_recurrent_twin_changes_only_its_own_stacked_layers() -> None:
    spec = StackSpec.from_dict({"input": {"shape": [3, 2]}, "layers": [["lstm", 2, {"layers": 2}], ["linear", 2]],
                                "loss": "mse", "seed": 1})  # fmt: skip
    case = spec.build()
    wrong = get_bug("lstm_no_cell_path").rewire(case.net)
    stack, original = wrong.layers[0], case.net.layers[0]
    assert stack is not original and [type(c).__name__ for c in stack.sublayers()] == ["LSTMWithoutCellPath"] * 2
    assert [type(c).__name__ for c in original.sublayers()] == ["LSTMLayer"] * 2  # the right network is untouched
    same = case.net.forward(case.X).a[-1]
    assert torch.equal(wrong.forward(case.X).a[-1], same)  # the forward pass is the right one
