"""The classic bugs of data-parallel training, as catalogue entries (refbp.apps.bug_record.Bug).

Each entry is a recipe of refbp.distributed.recipe with one wrong line: how a rank weighs its
own loss, what the all-reduce sums, what is done to the sum, where the weight decay goes.

    dp_mean_of_rank_means         each rank's mean loss, the R means averaged (uneven shards)
    dp_divided_by_world_size      the summed gradients divided by R instead of M
    dp_biases_not_reduced         the weights all-reduced, the biases forgotten
    dp_dX_all_reduced             dJ/dX all-reduced like a parameter gradient
    dp_decay_on_every_rank        lambda W added on every rank, then summed: R lambda W

and two equivalent recipes (no checker can or should flag them): the local sums all-reduced and
divided once by M, and DistributedDataParallel's way (R w_r, then DDP's average over R).

``refbp bugs`` checks an entry in one process, so its ``backward`` (OnRanks) simulates the ranks
(refbp.distributed.recipe.simulate): the batch split into the spec's uneven shards, refbp's
manual backward pass on each, combined as the recipe says, with a sum where the ranks
all-reduce. It is the arithmetic the ranks do (refbp.distributed.data_parallel runs the same
recipe between real all-reduces; tests/test_distributed.py checks that the two agree), and the
result is checked against the references of the whole batch like any other entry's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from hypothesis import strategies as st
from torch import Tensor

from ..distributed.cases import data_parallel_specs
from ..distributed.recipe import Recipe, World, simulate
from ..nn.network import Network
from ..verify.cases import Case
from .bug_record import Bug, Noise

__all__ = ["DISTRIBUTED_BUGS", "RECIPES", "DataParallelBug", "OnRanks"]

DataParallelBug = Bug
"""The old name of a data-parallel entry's record: every catalogue entry is a refbp.apps.bug_record.Bug."""


@dataclass(frozen=True)
class OnRanks:
    """An entry's ``backward``: every gradient of the batch as the ranks would hold them after
    ``recipe`` (simulated in one process: the case's shards, a sum where the ranks all-reduce)."""

    recipe: Recipe

    def __call__(self, net: Network, case: Case[Any], noise: Noise) -> dict[str, Tensor]:
        _, grads = simulate(self.recipe, net, case.X, case.y, case.spec.shards, noise=noise)
        return grads


def _splits(**draw: Any) -> Callable[[], st.SearchStrategy[Any]]:
    """Small float64 networks with their batch split among 2 or 3 ranks (shrinkable), with
    ``draw``'s options of data_parallel_specs (even shards, decay, ...)."""
    return partial(data_parallel_specs, **draw)


# ---- the wrong lines -------------------------------------------------------------------------
def _own_mean(world: World, rank: int) -> float:
    return 1.0  # the shard's own mean loss, unweighted


def _own_sum(world: World, rank: int) -> float:
    return world.local_sum(rank)  # m_r x the shard's mean: the sum of its terms


def _over_ranks(world: World) -> float:
    return 1.0 / world.size  # divided by R


def _over_terms(world: World) -> float:
    return 1.0 / world.normaliser  # divided by M, once


def _scaled_for_ddp(world: World, rank: int) -> float:
    return world.size * world.share(rank)  # R w_r, which DDP's average then divides by R


_RIGHT_LINE = "dJ_r/da(L) = (m_r / M) * dloss_r/dy_hat;  dJ/dW = all_reduce(dJ_r/dW) + lam * W"

DISTRIBUTED_BUGS: tuple[Bug, ...] = (
    Bug(
        "dp_mean_of_rank_means", "each rank's mean loss, the ranks' means averaged", "data parallel (D2)",
        "dJ_r/da(L) = dloss_r/dy_hat;  dJ/dW = all_reduce(dJ_r/dW) / R", _RIGHT_LINE,
        "Each rank's mean divides by its own count m_r; averaging the R means then weighs every rank alike, "
        "so a row of a small shard counts more than a row of a large one. Right only when every shard holds "
        "as many terms, which is what DistributedDataParallel's average of per-rank mean losses assumes.",
        where="uneven shards (or as many rows but unequal counted targets)", specs=_splits(),
        backward=OnRanks(Recipe("mean_of_rank_means", weight=_own_mean, after=_over_ranks)),
    ),
    Bug(
        "dp_divided_by_world_size", "gradients summed over the ranks, divided by R instead of M",
        "data parallel (D4)",
        "dJ_r/da(L) = m_r * dloss_r/dy_hat;  dJ/dW = all_reduce(dJ_r/dW) / R", _RIGHT_LINE,
        "The batch's mean divides the sum of all M terms by M, the number of terms, not by R, the number of "
        "ranks: every gradient comes out M/R times too large (for half_sse, a sum, nothing is to be divided, "
        "and the division by R makes it R times too small).",
        where="any split", specs=_splits(),
        backward=OnRanks(Recipe("divided_by_world_size", weight=_own_sum, after=_over_ranks)),
    ),
    Bug(
        "dp_biases_not_reduced", "the weights' gradients all-reduced, the biases' forgotten", "data parallel (D4)",
        "dJ_dW = all_reduce(dJ_r/dW);  dJ_db = dJ_r/db", "dJ_dW = all_reduce(dJ_r/dW);  dJ_db = all_reduce(dJ_r/db)",
        "b(l) is added to every row of the batch, on every rank, just as W(l) multiplies every row: its gradient "
        "is a sum over all rows too. Left out of the all-reduce, each rank holds only its own shard's part "
        "(rank 0's is checked here), and the ranks' biases drift apart as they train.",
        where="a layer with a bias", specs=_splits(), backward=OnRanks(Recipe("biases_not_reduced", unreduced=("b",))),
    ),
    Bug(
        "dp_dX_all_reduced", "dJ/dX all-reduced like a parameter gradient", "data parallel (D5)",
        "dJ_dX = all_reduce(dJ_r/dX)", "dJ_dX[S_r] = dJ_r/dX   (each rank's own rows)",
        "X is data, not a parameter: row n of X reaches J only through its own terms, on its own rank. Summing "
        "the ranks' dJ/dX adds row 1 of rank 0 to row 1 of rank 1, two different observations. (Uneven shards "
        "do not even have one shape to sum; even ones mix rows without a word.)",
        where="float inputs, shards of equal size", specs=_splits(even=True, float_input=True),
        backward=OnRanks(Recipe("dX_all_reduced", reduced_rows=("X",))),
    ),
    Bug(
        "dp_decay_on_every_rank", "weight decay added on every rank, then summed", "data parallel (D4)",
        "dJ_r/dW = (backward of the shard) + lam * W;  dJ/dW = all_reduce(dJ_r/dW)", _RIGHT_LINE,
        "The penalty lam/2 sum(W * W) is in J once, not once per shard: added on every rank before the sum, its "
        "gradient lam W counts R times.",
        where="lambda > 0", specs=_splits(weight_decay=True),
        backward=OnRanks(Recipe("decay_on_every_rank", decay="every rank")),
    ),
    # ---- equivalent recipes: the same numbers by another route ------------------------------
    Bug(
        "dp_sum_then_divide_once", "local sums all-reduced, divided once by the global count", "data parallel (D4)",
        "dJ_r/da(L) = m_r * dloss_r/dy_hat;  dJ/dW = all_reduce(dJ_r/dW) / M + lam * W", _RIGHT_LINE,
        "Each rank sums its terms' gradients, the all-reduce sums the sums, and one division by the global "
        "count M makes the mean: the same numbers as each rank dividing by M before the sum, up to round-off.",
        where="any split", specs=_splits(),
        backward=OnRanks(Recipe("sum_then_divide_once", weight=_own_sum, after=_over_terms)), equivalent=True,
    ),
    Bug(
        "dp_scaled_for_ddp_average", "each rank's loss scaled by R m_r / M, the sum divided by R (DDP's way)",
        "data parallel (D4)",
        "dJ_r/da(L) = R * (m_r / M) * dloss_r/dy_hat;  dJ/dW = all_reduce(dJ_r/dW) / R + lam * W", _RIGHT_LINE,
        "What DistributedDataParallel needs, since it averages the ranks' gradients: the factor R on each rank "
        "and the division by R in the average cancel, leaving the weights m_r / M. (DDP's average reaches the "
        "parameters only: a rank that also wants dJ/dX of its rows divides it by R itself, as this recipe does.)",
        where="any split", specs=_splits(),
        backward=OnRanks(Recipe("scaled_for_ddp_average", weight=_scaled_for_ddp, after=_over_ranks)), equivalent=True,
    ),
)  # fmt: skip
"""The data-parallel entries of the catalogue: classic bugs first, then equivalent recipes."""

RECIPES: tuple[Recipe, ...] = tuple(
    bug.backward.recipe for bug in DISTRIBUTED_BUGS if isinstance(bug.backward, OnRanks)
)
"""Each entry's recipe, in catalogue order (tests run them between real all-reduces)."""
