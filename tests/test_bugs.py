"""The bug catalogue against the harness: every classic bug is flagged wherever it matters, and
neither the right backward pass nor an equivalent mutant is ever flagged."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import refbp
from refbp.apps.bug_record import Bug
from refbp.apps.bugs_cli import backward_order, flags, matters, render_bugs_section, run_bug, smallest_exposing
from refbp.apps.catalogue import CATALOGUE, get_bug
from refbp.apps.cli import main
from refbp.apps.mlp_bugs import MLP_BUGS
from refbp.verify.cases import KINK_MARGIN, Case, CaseSpec, kink_distance
from refbp.verify.stacks import StackSpec

NON_EQUIVALENT = [bug for bug in MLP_BUGS if not bug.equivalent]
EQUIVALENT = [bug for bug in MLP_BUGS if bug.equivalent]
EXAMPLES = max(10, settings().max_examples // 3)  # per entry: 23 entries share the profile's budget


def _draw_case(data: st.DataObject, bug: Bug) -> Case:
    case = data.draw(bug.specs()).build()
    assume(kink_distance(case) > KINK_MARGIN)
    return case


def _buggy(bug: Bug, case: Case) -> dict[str, torch.Tensor]:
    grads, _ = bug.gradients(case)
    return grads


@pytest.mark.parametrize("bug", MLP_BUGS, ids=lambda b: b.name)
@settings(max_examples=max(5, EXAMPLES // 4))
@given(data=st.data())
def test_a_twin_changes_the_backward_pass_only_and_keeps_intermediates_or_not_as_asked(
    bug: Bug, data: st.DataObject
) -> None:
    case = _draw_case(data, bug)
    wrong = bug.rewire(copy.deepcopy(case.net))
    right_cache, wrong_cache = case.net.forward(case.X), wrong.forward(case.X)
    assert all(torch.equal(a, a_right) for a, a_right in zip(wrong_cache.a, right_cache.a, strict=True))  # same f
    assert torch.equal(wrong.loss(wrong_cache, case.y), case.net.loss(right_cache, case.y))
    kept = wrong.backward(wrong_cache, case.y).as_dict()
    assert list(kept) == case.net.names()  # the right network's names, every one
    lean = wrong.backward(wrong.forward(case.X), case.y, intermediates=False).as_dict()
    expected = case.net.backward(case.net.forward(case.X), case.y, intermediates=False).as_dict()
    assert list(lean) == list(expected)  # no intermediate kept that was not asked for
    for name, g in lean.items():  # the wrong line does not depend on what is kept
        assert g.shape == kept[name].shape and torch.allclose(g, kept[name], rtol=1e-12, atol=1e-15), name


@pytest.mark.parametrize("bug", NON_EQUIVALENT, ids=lambda b: b.name)
@settings(max_examples=EXAMPLES)
@given(data=st.data())
def test_every_bug_fails_check_wherever_it_matters(bug: Bug, data: st.DataObject) -> None:
    case = _draw_case(data, bug)
    assume(matters(bug, case))
    result = refbp.check(case.net, case.X, case.y, grads=_buggy(bug, case))
    assert not result.passed, f"{bug.name} passed the harness on {case.spec.to_json()}"


@pytest.mark.parametrize("bug", EQUIVALENT, ids=lambda b: b.name)
@settings(max_examples=EXAMPLES)
@given(data=st.data())
def test_equivalent_mutants_and_the_right_pass_are_never_flagged(bug: Bug, data: st.DataObject) -> None:
    case = _draw_case(data, bug)
    assert not matters(bug, case)
    result = refbp.check(case.net, case.X, case.y, grads=_buggy(bug, case))
    assert result.passed, result.failure_message()
    refbp.check(case.net, case.X, case.y).raise_if_failed()  # refbp's own pass on the same network


@pytest.mark.parametrize(
    ("name", "spec", "bites"),
    [
        ("db_batch_mean", CaseSpec((2, 3), ("tanh",), "mse", seed=1, batch=1), False),  # mean of one row
        ("db_batch_mean", CaseSpec((2, 3), ("tanh",), "mse", seed=1, batch=2), True),
        ("mse_not_divided_by_batch", CaseSpec((2, 3), ("tanh",), "mse", seed=1, batch=1), False),
        ("dW_missing_transpose", CaseSpec((1, 1), ("tanh",), "mse", seed=1), False),  # 1x1: W^T = W
        ("dW_missing_transpose", CaseSpec((2, 3), ("tanh",), "mse", seed=1), True),  # shape
        ("dW_missing_transpose", CaseSpec((3, 3), ("tanh",), "mse", seed=1), True),  # square: values
        ("dW_transpose_reshaped", CaseSpec((1, 4), ("tanh",), "mse", seed=1), False),  # a vector
        ("dW_transpose_reshaped", CaseSpec((2, 3), ("tanh",), "mse", seed=1), True),
    ],
)
def test_where_a_bug_hides_and_where_it_shows(name: str, spec: CaseSpec, bites: bool) -> None:
    bug, case = get_bug(name), spec.build()
    assert matters(bug, case) is bites
    assert refbp.check(case.net, case.X, case.y, grads=_buggy(bug, case)).passed is not bites


@pytest.mark.parametrize(
    ("name", "needs"),
    [
        ("db_batch_mean", lambda s: s.batch >= 2),
        ("mse_not_divided_by_batch", lambda s: s.batch >= 2),
        ("dW_missing_transpose", lambda s: any(a != b for a, b in zip(s.dims, s.dims[1:], strict=False))),
        ("dW_transpose_reshaped", lambda s: any(a > 1 and b > 1 for a, b in zip(s.dims, s.dims[1:], strict=False))),
    ],
)
def test_the_smallest_exposing_network_is_the_one_the_bug_needs(name: str, needs: object) -> None:
    minimal = smallest_exposing(get_bug(name))
    assert minimal is not None and callable(needs) and needs(minimal), minimal


def test_flags_are_reported_in_backward_order() -> None:
    case = CaseSpec((2, 3, 2), ("tanh", "tanh"), "mse", seed=3).build()
    assert backward_order(case.net) == ["a2", "z2", "W2", "b2", "a1", "z1", "W1", "b1", "X"]
    flagged = flags(get_bug("hidden_derivative_forgotten"), case)
    assert flagged["harness"][:4] == ["z1", "W1", "b1", "X"]  # dJ/da1 is right; dJ/dz1 is the first wrong one
    assert flagged["autograd"] == flagged["fd-full"] == flagged["harness"] and flagged["fd-directional"]


def test_catalogue_covers_the_classic_bugs_with_wrong_and_right_lines() -> None:
    names = [bug.name for bug in CATALOGUE]
    assert len(set(names)) == len(names) and len(NON_EQUIVALENT) >= 12 and len(EQUIVALENT) >= 2
    assert all(type(bug) is Bug and isinstance(bug.equation, str) for bug in CATALOGUE)  # one record type
    for required in ("seed_sign_slip", "dW_missing_transpose", "db_batch_mean", "sigmoid_derivative_of_z",
                     "hidden_derivative_forgotten", "dW_from_a_i", "half_sse_gradient_doubled",
                     "mse_not_divided_by_batch", "softmax_ce_extra_factor", "dX_without_W", "da_prev_without_W",
                     "weight_decay_overwrites_data", "first_layer_skipped", "last_layer_skipped",
                     "relu_derivative_from_z"):  # fmt: skip
        get_bug(required)
    for bug in MLP_BUGS:
        assert bug.wrong != bug.right and bug.why and bug.where and re.fullmatch(r"\([4-9]\)", bug.equation)
    with pytest.raises(ValueError, match="not in the catalogue"):
        get_bug("no_such_bug")


def test_bugs_command_writes_markdown_and_json_and_exits_0(tmp_path: Path) -> None:
    args = [
        "bugs",
        "--out",
        str(tmp_path),
        "--draws",
        "2",
        "--only",
        "db_batch_mean",
        "--only",
        "relu_derivative_from_z",
    ]
    assert main(args) == 0
    text = (tmp_path / "bugs.md").read_text(encoding="utf-8")
    assert "| `db_batch_mean`" in text and "Equivalent mutants" in text and "1/1 non-equivalent bugs caught" in text
    report = json.loads((tmp_path / "bugs.json").read_text(encoding="utf-8"))
    assert report["summary"]["caught"] == 1 and report["summary"]["false_flags"] == 0
    assert [b["name"] for b in report["bugs"]] == ["db_batch_mean", "relu_derivative_from_z"]
    assert report["bugs"][0]["minimal"]["batch"] == 2


@pytest.mark.parametrize(
    ("args", "message"), [(["--only", "nope"], "not in the catalogue"), (["--draws", "0"], ">= 1")]
)
def test_bugs_command_bad_usage_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["bugs", "--out", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_render_bugs_section_has_the_detection_table() -> None:
    section = render_bugs_section([run_bug(get_bug("first_layer_skipped"), draws=1)], heading="###")
    assert section.startswith("### Harness sensitivity") and "| bug" in section and "smallest network" in section


@pytest.mark.parametrize("name", ["dropout_fresh_mask", "dropout_not_rescaled"])
def test_the_smallest_network_found_exposes_the_bug_when_rebuilt_from_its_spec(name: str) -> None:
    # the search must judge the network as the report's JSON rebuilds it: with dropout, the same
    # first draw of masks (measuring the kink distance on the case itself used to draw them first)
    bug = get_bug(name)
    minimal = smallest_exposing(bug)
    assert minimal is not None
    rebuilt = minimal.build()
    assert matters(bug, rebuilt) and flags(bug, rebuilt)["harness"], minimal.to_json()


def test_the_bugs_command_runs_curriculum_entries_and_their_smallest_network_reproduces(tmp_path: Path) -> None:
    """The curriculum's entries ride in the same command and record: an integer image's tied
    maxima (only autograd can judge a tie: finite differences exclude it) and an equivalent variant."""
    args = ["bugs", "--out", str(tmp_path), "--draws", "3", "--only", "maxpool_ties_both_credited",
            "--only", "softmax_full_jacobian"]  # fmt: skip
    assert main(args) == 0
    report = json.loads((tmp_path / "bugs.json").read_text(encoding="utf-8"))
    ties, variant = report["bugs"]
    assert ties["ok"] and ties["minimal_caught"]["autograd"] and not ties["minimal_caught"]["fd-full"]
    assert ties["minimal"]["input"]["integers"] and variant["ok"] and variant["minimal"] is None
    minimal = StackSpec.from_dict(ties["minimal"])
    assert matters(get_bug("maxpool_ties_both_credited"), minimal.build())
    assert "| `maxpool_ties_both_credited`" in (tmp_path / "bugs.md").read_text(encoding="utf-8")
