"""What ``refbp distributed`` checks on each network: the ranks' all-reduced manual gradients
against one process, against autograd, and against DistributedDataParallel, on uneven shards.

For one DataParallelSpec every rank builds the same network and batch, draws the batch's dropout
masks the same way (so every rank's rows come from one draw), and runs
refbp.distributed.data_parallel_gradients and refbp.distributed.ddp_gradients on its rows;
rank 0 gathers what every rank holds and compares, entry by entry under the dtype's tolerance
(refbp.verify.compare), with:

    one process   refbp's manual backward pass over the whole batch, in one process
    autograd      torch.autograd on the network's oracle over the whole batch (float64)
    DDP           torch.nn.parallel.DistributedDataParallel on the same shards
    rank r        what rank r holds: every rank must hold the same parameter gradients

every parameter gradient, dJ/dX (each rank's rows, put together in rank order) and J.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..nn.network import Network
from ..verify.compare import Comparison, compare
from ..verify.reference import autograd_gradients
from ..verify.tolerances import tolerance_for
from .cases import DataParallelSpec
from .data_parallel import data_parallel_gradients
from .ddp import ddp_gradients
from .launch import Job
from .recipe import World, shard_noise

__all__ = ["REFERENCES", "ShardedCheck", "check_on_ranks"]

REFERENCES = ("one process", "autograd", "DDP", "ranks")
"""The references, in the order the report shows them ("ranks": every other rank's copy)."""


@dataclass
class ShardedCheck:
    """One network checked on the ranks.

    Attributes:
        id: its place among the checked networks, from 1.
        spec: the network, its batch and its shards.
        rows: every comparison; the gradient under test is rank 0's all-reduced one (the
            reference of a "rank r" row is rank r's copy).
    """

    id: int
    spec: DataParallelSpec
    rows: list[Comparison]

    @property
    def passed(self) -> bool:
        """Every entry of every comparison verified."""
        return all(row.verdict == "ok" for row in self.rows)

    def margin(self, reference: str) -> float:
        """The largest max|g - r| / allowed among the rows against ``reference`` ("ranks": any rank)."""
        rows = [row for row in self.rows if _kind(row.reference) == reference]
        return max((row.margin for row in rows), default=0.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "spec": _json(self.spec),
            "describe": self.spec.describe(),
            "network": self.spec.network.describe() + (" (some targets ignored)" if self.spec.ignore else ""),
            "shards": list(self.spec.shards),
            "loss": self.spec.network.loss,
            "passed": self.passed,
            "margin": {reference: _finite(self.margin(reference)) for reference in REFERENCES},
            "comparisons": len(self.rows),
            "failures": [row.to_dict() for row in self.rows if row.verdict != "ok"],
        }


def _kind(reference: str) -> str:
    return "ranks" if reference.startswith("rank ") else reference


def _finite(x: float) -> float | str:
    return x if math.isfinite(x) else str(x)


def _json(spec: DataParallelSpec) -> Any:
    return json.loads(spec.to_json())


def check_on_ranks(job: Job, spec: DataParallelSpec, *, id: int) -> ShardedCheck | None:
    """Run one spec on every rank of ``job`` (each calls this with the same spec); rank 0
    returns the comparisons, the others None."""
    if spec.world_size != job.world_size:
        raise ValueError(f"the spec splits the batch into {spec.world_size} shards for {job.world_size} ranks")
    case = spec.build()
    net, X, y = case.net, case.X, case.y
    noise = copy.deepcopy(net).forward(X, update_stats=False).noise  # the batch's one draw, the same on every rank
    rows = World(spec.shards, spec.shards, True).rows_of(job.rank)
    mine = shard_noise(noise, rows)
    with job.collective(f"network {id}"):  # a rank that stops: its line, not gloo's traceback
        dp = data_parallel_gradients(net, X[rows], y[rows], noise=mine)
        ddp = ddp_gradients(net, X[rows], y[rows], world=dp.world, noise=mine)
    held = {"params": dp.params, "dJ_dX": dp.dJ_dX, "J": dp.J, "ddp": ddp}
    gathered = job.gather(held, f"network {id}")
    if gathered is None:
        return None
    return ShardedCheck(id, spec, _compare(net, X, y, noise, gathered))


def _compare(
    net: Network, X: Tensor, y: Tensor, noise: dict[tuple[int, ...], Tensor], held: list[Any]
) -> list[Comparison]:
    tol = tolerance_for(net.dtype)
    cache = net.forward(X, update_stats=False, noise=noise)
    one = net.backward(cache, y, keep_intermediates=False).as_dict()
    J_one = net.loss(cache, y)
    J_auto, auto = autograd_gradients(net, X, y, dtype=torch.float64, noise=noise)
    rank0 = held[0]
    rows: list[Comparison] = []
    for name, g in rank0["params"].items():
        rows += [
            compare(name, "one process", g, one[name], tol),
            compare(name, "autograd", g, auto[name], tol),
            compare(name, "DDP", g, rank0["ddp"][name], tol),
        ]
        rows += [compare(name, f"rank {r}", g, other["params"][name], tol) for r, other in enumerate(held) if r]
    if rank0["dJ_dX"] is not None:
        dJ_dX = torch.cat([part["dJ_dX"] for part in held])  # every rank's rows, in rank order
        rows += [compare("X", "one process", dJ_dX, one["X"], tol), compare("X", "autograd", dJ_dX, auto["X"], tol)]
    rows += [compare("J", "one process", rank0["J"], J_one, tol), compare("J", "autograd", rank0["J"], J_auto, tol)]
    return rows
