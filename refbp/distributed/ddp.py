"""The reference for data-parallel gradients: torch.nn.parallel.DistributedDataParallel on the
same shards, the network being its torch oracle (each layer's torch.nn.functional map).

DDP all-reduces every parameter gradient and **divides by the world size R**: after
``loss_r.backward()`` on every rank, each holds (1/R) sum_r dloss_r/dW. That is the gradient
of J only if each rank's loss is

    loss_r = R w_r J_r + lambda/2 ||W||^2

with J_r its own mean loss and w_r = m_r / M its share of the terms (refbp.distributed.
normalisation, eq. D1): the average over R then gives sum_r w_r dJ_r/dW + lambda W. The data
term is scaled by R, to undo DDP's average, and by w_r, so that uneven shards count by their
terms; the penalty is the same on every rank, so its average is itself and it is *not* scaled.
(The usual ``loss_r = J_r`` is right only when every shard holds as many terms.) DDP averages
the parameters' gradients only: the gradient of a rank's own rows, dJ/dX, comes out R times too
large under this loss, and is not asked for here.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.distributed as dist
from torch import Tensor

from ..nn.keys import Key
from ..nn.layer import Params
from ..nn.network import Network
from .recipe import World, check_shardable, decayed

__all__ = ["ddp_gradients"]


class _Oracle(torch.nn.Module):
    """The network's torch oracle as a module: the parameters, leaves DDP can hook, in the order
    of ``net.parameters()``; ``forward(X)`` is a(L)."""

    def __init__(self, net: Network, noise: Mapping[tuple[int, ...], Tensor]) -> None:
        super().__init__()
        self.net, self.noise = net, dict(noise)
        self.names = list(net.parameters())
        self.leaves = torch.nn.ParameterList(
            [torch.nn.Parameter(t.detach().clone()) for t in net.parameters().values()]
        )

    def forward(self, X: Tensor) -> Tensor:
        values = {Key.parse(name): leaf for name, leaf in zip(self.names, self.leaves, strict=True)}
        return self.net.torch_forward(X, Params(values, self.net.ties), self.noise)


def ddp_gradients(
    net: Network,
    X: Tensor,
    y: Tensor,
    *,
    world: World,
    noise: Mapping[tuple[int, ...], Tensor] | None = None,
    group: dist.ProcessGroup | None = None,
) -> dict[str, Tensor]:
    """dJ/d(every parameter) of the whole batch, by DDP on this rank's rows ``X``, ``y``.

    Every rank of ``group`` must call it with its rows. ``world`` gives every rank's rows and
    terms (``data_parallel_gradients(...).world``); ``noise``: this rank's rows of the batch's
    dropout masks."""
    check_shardable(net)
    rank = dist.get_rank(group)
    oracle = _Oracle(net, noise or {})
    model = torch.nn.parallel.DistributedDataParallel(oracle, process_group=group)
    with torch.enable_grad():
        y_hat = model(X)  # (n_r, ..., d_L)
        if world.terms[rank]:
            data = net.torch_loss(y_hat, y) * (world.size * world.share(rank))  # R w_r J_r
        else:  # no terms here: 0, but through the parameters, so that DDP hears from every one
            data = y_hat.sum() * 0.0
        weights = decayed(net)
        leaves = dict(zip(oracle.names, oracle.leaves, strict=True))
        penalty = sum((torch.sum(leaves[name] ** 2) for name in weights), y_hat.new_zeros(()))
        loss = data + 0.5 * net.weight_decay * penalty  # loss_r = R w_r J_r + lambda/2 ||W||^2
        loss.backward()
    return {
        name: (leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)).detach()
        for name, leaf in zip(oracle.names, oracle.leaves, strict=True)
    }
