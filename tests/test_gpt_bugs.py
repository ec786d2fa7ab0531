"""The GPT entries of the bug catalogue against the harness: every bug is flagged by autograd
and by full and directional finite differences on a small GPT where it matters, and the
equivalent variants are never flagged."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import refbp
from refbp.apps.bugs_cli import REFERENCE_MODES, flags, matters, run_bug
from refbp.apps.catalogue import Entry
from refbp.apps.gpt_bugs import GPT_BUGS, GPTBug
from refbp.models.gpt_cases import GPTSpec

NON_EQUIVALENT = [bug for bug in GPT_BUGS if not bug.equivalent]
EQUIVALENT = [bug for bug in GPT_BUGS if bug.equivalent]

EXPOSING = GPTSpec(vocab_size=4, block_size=3, n_layer=1, n_head=2, n_embd=4, dropout=0.25, batch=2, length=3,
                   ignored=1, seed=5)  # fmt: skip
"""A GPT on which every bug of the catalogue matters: two heads of size 2, three positions, two
sequences, an ignored target, and dropout in training mode."""


def test_every_entry_offers_what_the_catalogue_needs() -> None:
    names = [bug.name for bug in GPT_BUGS]
    assert len(set(names)) == len(names) == 9 and len(NON_EQUIVALENT) == 7
    for bug in GPT_BUGS:
        entry: Entry = bug  # the Protocol refbp.apps.catalogue runs
        assert entry.title and entry.wrong and entry.right and entry.why and entry.where
        assert entry.wrong != entry.right


@pytest.mark.parametrize("bug", NON_EQUIVALENT, ids=lambda b: b.name)
def test_every_bug_is_flagged_by_every_reference(bug: GPTBug) -> None:
    case = EXPOSING.build()
    assert matters(bug, case)
    flagged = flags(bug, case)
    assert all(flagged[mode] for mode in REFERENCE_MODES), flagged


@pytest.mark.parametrize("bug", EQUIVALENT, ids=lambda b: b.name)
@settings(max_examples=6)
@given(data=st.data())
def test_equivalent_variants_are_never_flagged(bug: GPTBug, data: st.DataObject) -> None:
    case = data.draw(bug.specs()).build()
    assert not matters(bug, case)
    grads, noise = bug.gradients(case)
    refbp.check(case.net, case.X, case.y, grads=grads, noise=noise).raise_if_failed()


def test_a_bug_that_cannot_matter_is_not_flagged() -> None:
    scale = next(bug for bug in GPT_BUGS if bug.name == "scores_backward_no_scale")
    case = GPTSpec(vocab_size=3, block_size=3, n_layer=1, n_head=2, n_embd=2, batch=2, length=3).build()
    assert not matters(scale, case)  # heads of size 1: 1/sqrt(hs) = 1
    assert not any(flags(scale, case).values())


def test_run_bug_shrinks_to_the_smallest_gpt_that_shows_it() -> None:
    position = next(bug for bug in GPT_BUGS if bug.name == "position_gradient_assigned")
    result = run_bug(position, draws=3)
    assert result.ok and result.minimal is not None
    assert (result.minimal.batch, result.minimal.length, result.minimal.n_layer) == (2, 1, 1)
    assert result.minimal_flagged[0] == "P2"
