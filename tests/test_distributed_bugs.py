"""The data-parallel bug catalogue (refbp.apps.distributed_bugs) against the harness: each bug is
flagged wherever it matters, the equivalent recipes never, and ``refbp bugs``'s machinery
(refbp.apps.bugs_cli.run_bug) finds each bug's smallest network, which shows what it needs."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import refbp
from refbp.apps.bugs_cli import matters, run_bug
from refbp.apps.catalogue import Entry
from refbp.apps.distributed_bugs import DISTRIBUTED_BUGS, DataParallelBug
from refbp.distributed.cases import DataParallelSpec
from refbp.verify.cases import KINK_MARGIN, Case, kink_distance

NON_EQUIVALENT = [bug for bug in DISTRIBUTED_BUGS if not bug.equivalent]
EQUIVALENT = [bug for bug in DISTRIBUTED_BUGS if bug.equivalent]
EXAMPLES = max(8, settings().max_examples // 4)


def _draw_case(data: st.DataObject, bug: DataParallelBug) -> Case:
    case = data.draw(bug.specs()).build()
    assume(kink_distance(case) > KINK_MARGIN)
    return case


def test_the_entries_are_catalogue_entries_with_the_classic_bugs() -> None:
    names = [bug.name for bug in DISTRIBUTED_BUGS]
    assert len(set(names)) == len(names) and all(name.startswith("dp_") for name in names)
    assert {"dp_mean_of_rank_means", "dp_divided_by_world_size", "dp_biases_not_reduced", "dp_dX_all_reduced",
            "dp_decay_on_every_rank"} <= {bug.name for bug in NON_EQUIVALENT}  # fmt: skip
    assert len(EQUIVALENT) >= 2
    for bug in DISTRIBUTED_BUGS:
        entry: Entry = bug  # the protocol refbp bugs runs
        assert entry.wrong != entry.right and entry.why and entry.where and "data parallel" in str(entry.equation)


@pytest.mark.parametrize("bug", NON_EQUIVALENT, ids=lambda b: b.name)
@settings(max_examples=EXAMPLES)
@given(data=st.data())
def test_every_data_parallel_bug_fails_check_wherever_it_matters(bug: DataParallelBug, data: st.DataObject) -> None:
    case = _draw_case(data, bug)
    assume(matters(bug, case))
    grads, noise = bug.gradients(case)
    result = refbp.check(case.net, case.X, case.y, grads=grads, noise=noise)
    assert not result.passed, f"{bug.name} passed the harness on {case.spec.to_json()}"


@pytest.mark.parametrize("bug", EQUIVALENT, ids=lambda b: b.name)
@settings(max_examples=EXAMPLES)
@given(data=st.data())
def test_equivalent_recipes_are_never_flagged(bug: DataParallelBug, data: st.DataObject) -> None:
    case = _draw_case(data, bug)
    assert not matters(bug, case)
    grads, noise = bug.gradients(case)
    result = refbp.check(case.net, case.X, case.y, grads=grads, noise=noise)
    assert result.passed, result.failure_message()


SHRUNK = [bug for bug in DISTRIBUTED_BUGS if bug.name in ("dp_mean_of_rank_means", "dp_dX_all_reduced")]
"""Entries whose smallest network says something about the bug (uneven shards; even ones): the
search costs seconds per entry, and every entry's detection is the property above."""


@pytest.mark.parametrize("bug", SHRUNK + EQUIVALENT, ids=lambda b: b.name)
def test_refbp_bugs_catches_the_entries_and_shrinks_them_to_what_they_need(bug: DataParallelBug) -> None:
    result = run_bug(bug, draws=2)
    assert result.ok, result.to_dict()
    if bug.equivalent:
        return
    minimal = result.minimal
    assert isinstance(minimal, DataParallelSpec) and result.minimal_flagged
    needs = {
        "dp_mean_of_rank_means": len(set(minimal.shards)) > 1,  # uneven shards
        "dp_dX_all_reduced": len(set(minimal.shards)) == 1 and result.minimal_flagged == ["X"],
    }
    assert needs[bug.name], minimal.to_json()
