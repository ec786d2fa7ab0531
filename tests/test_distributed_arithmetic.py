"""The arithmetic of data parallelism, in one process: how every loss splits over shards (D1), and
the ranks' recipe (D2-D5), simulated, against refbp's own backward pass over the whole batch."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import refbp
from refbp.distributed.cases import IGNORE_INDEX, DataParallelSpec, data_parallel_specs, draw_specs
from refbp.distributed.normalisation import REDUCTIONS, is_mean, share, terms
from refbp.distributed.recipe import RIGHT, World, check_shardable, simulate
from refbp.nn.losses import LOSSES, cross_entropy
from refbp.testing import assert_gradients_close
from refbp.verify.cases import Case, CaseSpec
from refbp.verify.stacks import StackSpec


def _one_process(case: Case) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[tuple[int, ...], torch.Tensor]]:
    noise = copy.deepcopy(case.net).forward(case.X, update_stats=False).noise
    cache = case.net.forward(case.X, update_stats=False, noise=noise)
    return case.net.loss(cache, case.y), case.net.backward(cache, case.y).as_dict(), noise


# ---- (D1): every loss is its shards' own losses, weighted by their share of the terms -----------
def test_reductions_name_every_loss_refbp_has() -> None:
    assert set(REDUCTIONS) == set(LOSSES)
    assert [name for name in LOSSES if not is_mean(LOSSES[name])] == ["half_sse"]


@settings(max_examples=40)
@given(
    loss=st.sampled_from([*LOSSES.values(), cross_entropy(IGNORE_INDEX)]),
    rows=st.lists(st.integers(1, 4), min_size=1, max_size=4),
    seed=st.integers(0, 2**16),
)
def test_the_batch_loss_is_the_shards_means_weighted_by_their_terms(loss: object, rows: list[int], seed: int) -> None:
    assert isinstance(loss, type(LOSSES["mse"]))
    generator = torch.Generator().manual_seed(seed)
    N, C = sum(rows), 3
    z = torch.randn(N, C, dtype=torch.float64, generator=generator)
    y_hat = torch.sigmoid(z) if loss.name == "bce" else z
    y = loss.sample_targets((N, C), generator)
    if loss.ignore_index is not None:
        y = torch.where(torch.rand(N, generator=generator) < 0.4, IGNORE_INDEX, y)
        y[0] = 1  # at least one counted target
    world = World(tuple(rows), (0,) * len(rows), is_mean(loss))
    parts = [(y_hat[world.rows_of(r)], y[world.rows_of(r)]) for r in range(len(rows))]
    M = sum(terms(loss, y_r) for _, y_r in parts)
    J = sum(share(loss, terms(loss, y_r), M) * loss.value(y_hat_r, y_r) for y_hat_r, y_r in parts if terms(loss, y_r))
    torch.testing.assert_close(J, loss.value(y_hat, y))  # (D1) J = sum_r w_r J_r


def test_a_loss_refbp_distributed_does_not_know_is_refused() -> None:
    strange = LOSSES["mse"].__class__(**{**LOSSES["mse"].__dict__, "name": "huber"})
    with pytest.raises(ValueError, match="does not know how it normalises"):
        is_mean(strange)


# ---- (D2)-(D5), simulated: the ranks' sums equal the whole batch's gradient ---------------------
@settings(max_examples=40)
@given(data_parallel_specs(world_sizes=(2, 3, 4), max_rows=3))
def test_simulated_ranks_give_every_gradient_of_the_whole_batch(spec: DataParallelSpec) -> None:
    case = spec.build()
    J, expected, noise = _one_process(case)
    J_ranks, held = simulate(RIGHT, case.net, case.X, case.y, spec.shards, noise=noise)
    assert list(held) == list(expected)  # parameters, every intermediate, X
    assert_gradients_close(held, expected)
    torch.testing.assert_close(J_ranks, J)


@pytest.mark.parametrize("rows", [(0, 3), (3, 0), (0, 1, 0, 2), (1, 1, 1)])
def test_ranks_without_rows_add_nothing_and_hold_nothing(rows: tuple[int, ...]) -> None:
    spec = CaseSpec((3, 4, 2), ("tanh", "identity"), "mse", seed=5, batch=sum(rows), weight_decay=0.1)
    case = spec.build()
    J, expected, noise = _one_process(case)
    J_ranks, held = simulate(RIGHT, case.net, case.X, case.y, rows, noise=noise)
    assert_gradients_close(held, expected)
    torch.testing.assert_close(J_ranks, J)


def test_a_rank_whose_every_target_is_ignored_adds_nothing() -> None:
    spec = DataParallelSpec(CaseSpec((3, 4, 3), ("relu", "identity"), "cross_entropy", seed=2, batch=5), (2, 3), True)
    case = spec.build()
    case.y[:2] = IGNORE_INDEX  # rank 0: no counted target
    case.y[2] = 1  # rank 1: some
    _, expected, noise = _one_process(case)
    _, held = simulate(RIGHT, case.net, case.X, case.y, spec.shards, noise=noise)
    assert_gradients_close(held, expected)
    assert float(held["X"][:2].abs().max()) == 0.0  # its rows reach J through no term
    refbp.check(case.net, case.X, case.y, grads=held).raise_if_failed()


def test_dropout_shards_are_rows_of_one_mask_of_the_whole_batch() -> None:
    layers = [["linear", 6], ["tanh"], ["dropout", 0.5], ["linear", 2]]
    spec = StackSpec.from_dict({"input": 3, "layers": layers, "loss": "mse", "seed": 3, "batch": 7})
    case = spec.build()
    _, expected, noise = _one_process(case)
    _, held = simulate(RIGHT, case.net, case.X, case.y, (4, 3), noise=noise)
    assert_gradients_close(held, expected)


def test_batchnorm_with_batch_statistics_is_refused_and_in_eval_mode_shards() -> None:
    layers = [["linear", 4], ["batchnorm"], ["linear", 2]]
    spec = StackSpec.from_dict({"input": 3, "layers": layers, "loss": "mse", "seed": 1, "batch": 6})
    case = spec.build()
    with pytest.raises(ValueError, match=r"layer 2 \(BatchNorm1d.*statistics of the whole batch.*SyncBatchNorm"):
        simulate(RIGHT, case.net, case.X, case.y, (3, 3))
    case.net.eval()
    check_shardable(case.net)
    _, expected, noise = _one_process(case)
    assert_gradients_close(simulate(RIGHT, case.net, case.X, case.y, (1, 5), noise=noise)[1], expected)


def test_a_network_reading_columns_is_refused() -> None:
    net = refbp.MLP.random([2, 3, 1], activations=["tanh", "identity"], loss="mse", layout="columns")
    with pytest.raises(ValueError, match="layout='torch'"):
        check_shardable(net)


def test_rows_must_add_up_to_the_batch() -> None:
    case = CaseSpec((2, 2), ("tanh",), "mse", seed=1, batch=4).build()
    with pytest.raises(ValueError, match=r"rows=\[1, 2\] must be sizes >= 0 adding up to X's 4 rows"):
        simulate(RIGHT, case.net, case.X, case.y, (1, 2))


# ---- the drawn cases ------------------------------------------------------------------------------
def test_drawn_specs_are_reproducible_uneven_and_cover_what_breaks_data_parallelism() -> None:
    specs = draw_specs(seed=4, examples=40, world_size=3)
    assert specs == draw_specs(seed=4, examples=40, world_size=3)
    assert all(len(s.shards) == 3 and len(set(s.shards)) > 1 for s in specs)
    assert {s.network.loss for s in specs} == set(LOSSES)
    assert any(0 in s.shards for s in specs) and any(s.ignore for s in specs)
    assert any(s.network.weight_decay for s in specs) and any(isinstance(s.network, StackSpec) for s in specs)
    for spec in specs:
        check_shardable(spec.build().net)


def test_a_spec_says_what_it_is_in_json_and_words() -> None:
    spec = DataParallelSpec(CaseSpec((3, 2), ("identity",), "cross_entropy", seed=1, batch=3), (1, 2), True)
    assert '"shards": [1, 2]' in spec.to_json() and '"ignore_index": -100' in spec.to_json()
    assert spec.describe().endswith("shards 1+2, targets = -100 ignored")
    with pytest.raises(ValueError, match="adding up to the batch 3"):
        DataParallelSpec(spec.network, (1, 1))
