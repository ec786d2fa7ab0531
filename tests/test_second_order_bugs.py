"""The second-order entries of the bug catalogue (refbp.apps.second_order_bugs): each wrong
line of an R-rule is caught by check_second_order wherever it matters, on the tensor its
equation names, and the equivalent variant is never flagged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from refbp.apps.bug_record import Bug
from refbp.apps.bugs_cli import flags, matters
from refbp.apps.catalogue import CATALOGUE, get_bug
from refbp.apps.cli import main
from refbp.apps.second_order_bugs import SECOND_ORDER_BUGS
from refbp.verify.cases import KINK_MARGIN, CaseSpec, kink_distance

NON_EQUIVALENT = [bug for bug in SECOND_ORDER_BUGS if not bug.equivalent]
EQUIVALENT = [bug for bug in SECOND_ORDER_BUGS if bug.equivalent]


def test_the_issue_s_four_bugs_are_registered_as_order_2_entries_with_their_equation() -> None:
    names = {bug.name for bug in NON_EQUIVALENT}
    assert names == {"hv_f2_term_dropped", "hv_a_prev_VW_missing", "hv_loss_curvature_only", "hv_block_transposed"}
    for bug in SECOND_ORDER_BUGS:
        assert bug in CATALOGUE and get_bug(bug.name) is bug and bug.order == 2
        assert bug.equation.startswith(("R{(", "H v")) and bug.wrong != bug.right and bug.why


@pytest.mark.parametrize(
    ("name", "spec", "flagged"),
    [
        ("hv_f2_term_dropped", CaseSpec((2, 3), ("tanh",), "mse", seed=1, batch=3), {"Hv[W1]", "Hv[b1]", "Hv[X]"}),
        ("hv_f2_term_dropped", CaseSpec((2, 3), ("identity",), "mse", seed=1, batch=3), set()),  # f'' = 0
        ("hv_a_prev_VW_missing", CaseSpec((2, 3), ("identity",), "mse", seed=1, batch=3), {"Hv[W1]", "Hv[b1]"}),
        ("hv_loss_curvature_only", CaseSpec((2, 2, 1), ("tanh", "identity"), "half_sse", seed=1, batch=2),
         {"Hv[W1]", "Hv[b1]", "Hv[W2]", "Hv[X]"}),  # (H v)_b2 = sum R{dJ/dz2}: the same in G v
        ("hv_block_transposed", CaseSpec((3, 3), ("sigmoid",), "mse", seed=1, batch=2), {"Hv[W1]"}),
        ("hv_block_transposed", CaseSpec((1, 1), ("sigmoid",), "mse", seed=1, batch=2), set()),  # 1x1: W^T = W
    ],
)  # fmt: skip
def test_each_entry_is_caught_on_the_tensors_its_wrong_line_reaches(
    name: str, spec: CaseSpec, flagged: set[str]
) -> None:
    bug, case = get_bug(name), spec.build()
    assert matters(bug, case) is bool(flagged)
    found = flags(bug, case)
    assert flagged <= set(found["harness"]) and bool(found["harness"]) is bool(flagged)
    for mode in ("autograd", "fd-full"):  # torch's routes and the differences each see it
        assert bool(found[mode]) is bool(flagged), mode


@pytest.mark.parametrize("bug", NON_EQUIVALENT, ids=lambda b: b.name)
@settings(max_examples=4)
@given(data=st.data())
def test_every_second_order_bug_is_flagged_wherever_it_matters(bug: Bug, data: st.DataObject) -> None:
    case = data.draw(bug.specs()).build()
    assume(kink_distance(case) > KINK_MARGIN)
    assume(matters(bug, case))
    assert flags(bug, case)["harness"], f"{bug.name} passed on {case.spec.to_json()}"


@pytest.mark.parametrize("bug", EQUIVALENT, ids=lambda b: b.name)
@settings(max_examples=4)
@given(data=st.data())
def test_the_equivalent_variant_is_never_flagged(bug: Bug, data: st.DataObject) -> None:
    case = data.draw(bug.specs()).build()
    assume(kink_distance(case) > KINK_MARGIN)
    assert not matters(bug, case)
    assert not any(flags(bug, case).values())


def test_refbp_bugs_runs_an_order_2_entry_and_reports_it_caught(tmp_path: Path) -> None:
    assert main(["bugs", "--only", "hv_block_transposed", "--draws", "2", "--out", str(tmp_path)]) == 0
    entry = json.loads((tmp_path / "bugs.json").read_text())["bugs"][0]
    assert entry["ok"] and entry["equation"] == "R{(6)}" and entry["minimal_flagged"] == ["Hv[W1]"]
