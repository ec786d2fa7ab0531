"""Data-parallel backprop by hand: each rank runs refbp's manual forward and backward pass on its
own rows, and all-reduces make every rank hold the gradient of the whole batch.

    # on every rank, in a torch.distributed process group (gloo)
    grads = data_parallel_gradients(net, X_r, y_r, noise=shard_noise(noise, rows))
    grads.params["W1"]      # dJ/dW(1) of the whole batch: the same on every rank
    grads.dJ_dX             # dJ/dX of this rank's rows only, (n_r, d_0)
    grads.J                 # J of the whole batch
    train_step(net, X_r, y_r, learning_rate=0.1)   # W <- W - lr dJ/dW, on every rank alike

Shards may be uneven, even empty: each rank weighs its own mean loss by its share of the loss's
terms, so the result equals the single-process gradient of the whole batch for every loss
(refbp.distributed.recipe, eqs. D1-D5). Two all-reduces per step:

    1. counts     every rank's rows n_r and terms m_r (and whether its shard passed its checks),
                  one int64 vector of 3R entries: now every rank knows M and every w_r
    2. gradients  every parameter gradient and J_r flattened into one vector: one message,
                  however many tensors

A shard that fails its checks (a wrong width, a bad target) raises a ValueError on every rank,
after the first all-reduce: no rank is left waiting for one that gave up.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from ..nn.network import Network
from .normalisation import is_mean
from .recipe import RIGHT, Recipe, ShardForward, World, check_shardable, finish, shard_backward, shard_forward

__all__ = ["DataParallelGradients", "data_parallel_gradients", "train_step"]


@dataclass
class DataParallelGradients:
    """What a rank holds after a data-parallel backward pass.

    Attributes:
        J: J of the whole batch (the same on every rank).
        params: name -> dJ/d(that parameter) for the whole batch (the same on every rank).
        dJ_dX: dJ/dX of this rank's rows, (n_r, ...); None when X holds token indices.
        world: every rank's rows and terms.
        rank: this rank.
    """

    J: Tensor
    params: dict[str, Tensor]
    dJ_dX: Tensor | None
    world: World
    rank: int

    @property
    def rows(self) -> slice:
        """This rank's rows of the batch (ranks hold consecutive blocks in rank order)."""
        return self.world.rows_of(self.rank)


def data_parallel_gradients(
    net: Network,
    X: Tensor,
    y: Tensor,
    *,
    noise: Mapping[tuple[int, ...], Tensor] | None = None,
    group: dist.ProcessGroup | None = None,
    recipe: Recipe = RIGHT,
) -> DataParallelGradients:
    """The gradient of J over the whole batch, from this rank's rows ``X``, ``y`` and everyone's.

    Every rank of ``group`` (default: the whole job) must call it, each with its own rows (any
    number, 0 included) of one batch, and the same network.

    Args:
        net: a refbp network (MLP or layer stack; no BatchNorm in training mode).
        X, y: this rank's rows of the batch and their targets.
        noise: this rank's rows of the batch's dropout masks (refbp.distributed.shard_noise),
            so that the ranks together run the network of one draw; None draws masks here.
        group: the process group (gloo); None for the default group.
        recipe: how ranks combine (refbp.distributed.recipe); the default is the right one, the
            catalogue's wrong ones (refbp.apps.distributed_bugs) show what the bugs do on ranks.
    """
    if not isinstance(net, Network):
        raise TypeError(f"net must be a refbp network (refbp.MLP, refbp.nn.Network), got {type(net).__name__}")
    check_shardable(net)
    rank, R = dist.get_rank(group), dist.get_world_size(group)
    forward: ShardForward | None = None
    refused = ""
    try:
        forward = shard_forward(net, X, y, noise=noise)
    except (ValueError, TypeError) as err:
        refused = f"rank {rank}'s shard: {err}"
    counts = torch.zeros(3, R, dtype=torch.int64)  # rows n_r, terms m_r, refused
    if forward is not None:
        counts[0, rank], counts[1, rank] = forward.rows, forward.terms
    counts[2, rank] = bool(refused)
    dist.all_reduce(counts, group=group)  # 1. counts
    failed = [r for r in range(R) if counts[2, r]]
    if refused:
        raise ValueError(refused)
    if failed:
        raise ValueError(f"rank(s) {', '.join(map(str, failed))} refused their shard (see their error)")
    assert forward is not None
    world = World(tuple(counts[0].tolist()), tuple(counts[1].tolist()), is_mean(net.loss_fn))
    local = shard_backward(net, forward, weight=recipe.weight(world, rank), decay=recipe.decay == "every rank",
                           keep_intermediates=False)  # fmt: skip
    parameters = net.parameters()
    reduced = [name for name in local.grads if recipe.reduces(name, parameters)]
    if any(name not in parameters for name in reduced) and len(set(world.rows)) > 1:
        raise ValueError(
            f"recipe {recipe.name!r} all-reduces per-row gradients ({reduced}), but the shards hold "
            f"{list(world.rows)} rows: an all-reduce needs one shape on every rank"
        )
    summed = _all_reduce([local.grads[name] for name in reduced] + [local.J], group)  # 2. gradients
    sums = dict(zip(reduced, summed[:-1], strict=True))
    held = {name: sums.get(name, g) for name, g in local.grads.items()}  # (D5) the rows: the rank's own
    J, held = finish(recipe, net, world, summed[-1], held)  # (D4)
    params = {name: held[name] for name in parameters}
    return DataParallelGradients(J, params, held.get("X"), world, rank)


def _all_reduce(tensors: list[Tensor], group: dist.ProcessGroup | None) -> list[Tensor]:
    """SUM-all-reduce the tensors as one flat vector (on the CPU, for gloo); the sums, shaped
    and placed like the tensors."""
    flat = torch.cat([t.reshape(-1) for t in tensors]).cpu()
    dist.all_reduce(flat, group=group)
    out, start = [], 0
    for t in tensors:
        out.append(flat[start : start + t.numel()].reshape(t.shape).to(t.device))
        start += t.numel()
    return out


def train_step(
    net: Network,
    X: Tensor,
    y: Tensor,
    *,
    learning_rate: float,
    noise: Mapping[tuple[int, ...], Tensor] | None = None,
    group: dist.ProcessGroup | None = None,
) -> DataParallelGradients:
    """One step of gradient descent on the whole batch, on every rank alike:
    W <- W - learning_rate dJ/dW for every parameter (``data_parallel_gradients``). Every rank
    holds the same parameters afterwards, as it did before."""
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float)):
        raise TypeError(f"learning_rate={learning_rate!r} must be a number, got {type(learning_rate).__name__}")
    if not (math.isfinite(learning_rate) and learning_rate > 0):
        raise ValueError(f"learning_rate={learning_rate!r} must be a finite number > 0")
    grads = data_parallel_gradients(net, X, y, noise=noise, group=group)
    for name, W in net.parameters().items():
        net.set_parameter(name, W - learning_rate * grads.params[name])  # W <- W - lr dJ/dW
    return grads
