"""The arithmetic of data-parallel backprop, rank by rank, and the same arithmetic in one process.

Rank r holds rows S_r of the batch: n_r rows and m_r of the loss's terms, w_r = m_r / M its
share of J (refbp.distributed.normalisation, eq. D1). With W any parameter (W(l), b(l), gamma,
E, ...) and lambda the weight decay:

    (D2)  dJ_r/da(L)  = w_r dloss_r/dy_hat        (n_r, d_L)   the loss record's own gradient on
                                                              the shard (its mean), weighted
    (D3)  dJ_r/dW     = refbp's manual backward pass from (D2), without the decay
    (D4)  dJ/dW       = sum_r dJ_r/dW + lambda W  (W's shape)  one all-reduce (SUM) of the
                                                              parameter gradients; the decay is
                                                              added once, after it
    (D5)  dJ/dX[S_r]  = dJ_r/dX                   (n_r, d_0)   each rank's own rows: never
                                                              all-reduced
          M           = sum_r m_r                              one all-reduce of the counts first

(D4) is right because J = sum_r w_r J_r + lambda/2 ||W||^2 and the ranks share W: its gradient
is the sum of every rank's part, and the penalty's, lambda W, exactly once. X is not shared: row
n of X reaches J only through row n's own terms, on its own rank.

A ``Recipe`` is one way of doing it: the weight of (D2), what the all-reduce sums, what is done
to the sum, where the decay goes. ``RIGHT`` is the above; refbp.apps.distributed_bugs holds the
classic wrong recipes and two equivalent ones. ``shard_forward``/``shard_backward`` are what one
rank computes (refbp.distributed.data_parallel runs them between real all-reduces), and
``simulate`` runs every rank's share in one process, summing where the ranks all-reduce: the
same arithmetic, without processes.

BatchNorm in training mode cannot be split this way: its statistics are means over the whole
batch, so a shard's own mean and variance give another function (``check_shardable`` refuses
it; torch's answer is SyncBatchNorm). Dropout in training mode shards when each rank uses its
rows of one mask of the whole batch (``shard_noise``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..nn.keys import Key
from ..nn.network import Cache, Network
from ..nn.stack import walk_layers
from .normalisation import is_mean, terms

__all__ = [
    "RIGHT",
    "Local",
    "Recipe",
    "ShardForward",
    "World",
    "check_shardable",
    "decayed",
    "finish",
    "shard_backward",
    "shard_forward",
    "shard_noise",
    "simulate",
]


@dataclass(frozen=True)
class World:
    """What every rank knows after the first all-reduce: every shard's rows and terms.

    Attributes:
        rows: n_r, rank by rank.
        terms: m_r, the loss's terms in each shard.
        mean: the loss divides by its number of terms (M); False for a sum.
    """

    rows: tuple[int, ...]
    terms: tuple[int, ...]
    mean: bool

    @property
    def size(self) -> int:
        """R, the number of ranks."""
        return len(self.rows)

    @property
    def normaliser(self) -> int:
        """M: the terms of the whole batch for a mean, 1 for a sum."""
        return sum(self.terms) if self.mean else 1

    def share(self, rank: int) -> float:
        """w_r = m_r / M (1 for a sum): eq. (D1)."""
        return 1.0 if not self.mean else self.terms[rank] / _positive(sum(self.terms))

    def local_sum(self, rank: int) -> float:
        """The factor that turns rank r's own mean into its sum of terms: m_r (1 for a sum)."""
        return float(self.terms[rank]) if self.mean else 1.0

    def rows_of(self, rank: int) -> slice:
        """Rank r's rows of the batch: ranks hold consecutive blocks, in rank order."""
        start = sum(self.rows[:rank])
        return slice(start, start + self.rows[rank])


def _positive(total: int) -> int:
    if total <= 0:
        raise ValueError("no rank holds a term of the loss (every target ignored?): its mean is undefined")
    return total


# ---- recipes --------------------------------------------------------------------------------
def _share(world: World, rank: int) -> float:
    return world.share(rank)  # (D2) w_r = m_r / M


def _one(world: World) -> float:
    return 1.0


@dataclass(frozen=True)
class Recipe:
    """One way for the ranks to turn their shards into the batch's gradients.

    Attributes:
        name: a short identifier.
        weight: (world, r) -> the factor on rank r's own mean gradient dloss_r/dy_hat (D2).
        after: world -> the factor on every gradient at the end: the parameters' after their
            all-reduce (D4), the rows' as the rank holds them (D5).
        decay: "once" (lambda W added after the sum, D4) or "every rank" (in each rank's backward).
        unreduced: parameter kinds ("b", ...) left out of the all-reduce: each rank keeps its own.
        reduced_rows: gradients of the rows ("X", ...) all-reduced as if they were parameters.
    """

    name: str
    weight: Callable[[World, int], float] = _share
    after: Callable[[World], float] = _one
    decay: str = "once"
    unreduced: tuple[str, ...] = ()
    reduced_rows: tuple[str, ...] = ()

    def reduces(self, name: str, parameters: Mapping[str, Tensor]) -> bool:
        """True when the all-reduce sums the gradient ``name``."""
        if name in parameters:
            return Key.parse(name).kind not in self.unreduced
        return name in self.reduced_rows


RIGHT = Recipe("right")
"""Eqs. (D2)-(D5): weight w_r, sum the parameter gradients, add lambda W once."""


# ---- one rank -------------------------------------------------------------------------------
@dataclass
class ShardForward:
    """One rank's forward pass over its rows.

    Attributes:
        cache: the forward cache, or None for a shard without rows.
        X, y: the rank's rows and targets.
        terms: m_r, the loss's terms among them.
    """

    cache: Cache | None
    X: Tensor
    y: Tensor
    terms: int

    @property
    def rows(self) -> int:
        return int(self.X.shape[0])


@dataclass
class Local:
    """What one rank computed, before any all-reduce.

    Attributes:
        J: its part of J: w J_r (plus lambda/2 ||W||^2 when its backward adds the decay).
        grads: dJ_r/d(every parameter) and the gradients of its own rows (intermediates, X).
    """

    J: Tensor
    grads: dict[str, Tensor]


def check_shardable(net: Network) -> None:
    """Refuse a network whose function is not the same when the batch is split: a BatchNorm that
    normalises with batch statistics (training mode)."""
    for path, layer in walk_layers(net.layers):
        if layer.uses_batch_statistics and not any(sub.uses_batch_statistics for sub in layer.sublayers()):
            at = ".".join(map(str, path))
            raise ValueError(
                f"layer {at} ({layer.describe()}) normalises with statistics of the whole batch: each rank's "
                "shard has other means and variances, so data parallelism would change the function "
                "(torch's remedy is SyncBatchNorm); put the network in eval mode or leave BatchNorm out"
            )
    if net.layout.name != "torch":
        raise ValueError(
            f"the network reads {net.layout.name!r} arrays; data parallelism splits rows, so build it with "
            "layout='torch' (one observation per row)"
        )


def shard_noise(noise: Mapping[tuple[int, ...], Tensor] | None, rows: slice) -> dict[tuple[int, ...], Tensor]:
    """Each dropout mask of the whole batch, cut to the rows ``rows``: the rank's part of one draw."""
    return {path: mask[rows] for path, mask in (noise or {}).items()}


def shard_forward(
    net: Network, X: Tensor, y: Tensor, *, noise: Mapping[tuple[int, ...], Tensor] | None = None
) -> ShardForward:
    """The forward pass over one rank's rows (none is fine: nothing to run) and its count of terms.

    ``noise``: the rank's rows of the batch's dropout masks (``shard_noise``); None draws its own."""
    loss = net.loss_fn
    if X.dim() == 0:
        raise ValueError(f"X has no batch dimension (shape {tuple(X.shape)}); expected (n_r, ...) rows")
    if y.dim() == 0 or y.shape[0] != X.shape[0]:
        raise ValueError(f"y has shape {tuple(y.shape)} but X has {X.shape[0]} rows; expected one target row per row")
    if X.shape[0] == 0:
        return ShardForward(None, X, y, 0)
    cache = net.forward(X, update_stats=False, noise=noise)
    m = terms(loss, y)
    if m:
        y = loss.check_targets(y, cache.y_hat)
    return ShardForward(cache, X, y, m)


def shard_backward(
    net: Network, forward: ShardForward, *, weight: float, decay: bool = False, keep_intermediates: bool = True
) -> Local:
    """Eqs. (D2)-(D3) on one rank: the backward pass from ``weight`` x the loss's gradient on the
    shard (its mean), with the decay in it only if ``decay``."""
    bare = net if decay else _without_decay(net)
    zero = torch.zeros((), dtype=net.dtype, device=net.device)
    penalty = decay_value(net) if decay else zero
    if forward.cache is None:  # no rows: no terms, and no rows to hand gradients to
        grads = {name: torch.zeros_like(t) for name, t in net.parameters().items()}
        if not net.takes_indices:
            grads["X"] = torch.zeros_like(forward.X)  # (0, d_0)
        if decay:
            grads.update({name: grads[name] + net.weight_decay * W for name, W in decayed(net).items()})
        return Local(penalty, grads)
    y_hat = forward.cache.y_hat
    if forward.terms:
        dJ_da_L = net.loss_fn.gradient(y_hat, forward.y).mul_(weight)  # (D2) w_r dloss_r/dy_hat
        J = weight * net.loss_fn.value(y_hat, forward.y)
    else:  # every target of the shard ignored: it adds nothing to J
        dJ_da_L, J = torch.zeros_like(y_hat), zero
    grads = bare.backward_from(forward.cache, dJ_da_L, keep_intermediates=keep_intermediates).as_dict()  # (D3)
    return Local(J + penalty, grads)


def _without_decay(net: Network) -> Network:
    """The same network (the same layers and parameters, shared) with lambda = 0."""
    if not net.weight_decay:
        return net
    bare = copy.copy(net)
    bare.weight_decay = 0.0
    return bare


def decayed(net: Network) -> dict[str, Tensor]:
    """name -> parameter, for the parameters weight decay applies to (the weights of linear maps,
    each once: a tied weight under its first name)."""
    parameters = net.parameters()
    return {str(key): parameters[str(key)] for key in net.decayed_keys()}


def decay_value(net: Network) -> Tensor:
    """lambda/2 sum ||W||^2 over ``decayed(net)``: the penalty of eq. (3)."""
    total = torch.zeros((), dtype=net.dtype, device=net.device)
    for W in decayed(net).values():
        total = total + torch.sum(W * W)
    return 0.5 * net.weight_decay * total


# ---- after the all-reduce -------------------------------------------------------------------
def finish(
    recipe: Recipe, net: Network, world: World, J: Tensor, grads: Mapping[str, Tensor]
) -> tuple[Tensor, dict[str, Tensor]]:
    """The end of eq. (D4): every gradient a rank holds (the parameters' all-reduced, the rows'
    its own) times the recipe's factor, then lambda W added once to the decayed parameters
    (when the recipe adds the decay here)."""
    factor = recipe.after(world)
    once = recipe.decay == "once" and net.weight_decay
    weights = decayed(net) if once else {}
    out = {}
    for name, g in grads.items():
        g = g * factor if factor != 1.0 else g
        out[name] = g + net.weight_decay * weights[name] if name in weights else g  # (D4) + lambda W
    J = J * factor if factor != 1.0 else J
    return (J + decay_value(net) if once else J), out


# ---- every rank, in one process ---------------------------------------------------------------
def simulate(
    recipe: Recipe,
    net: Network,
    X: Tensor,
    y: Tensor,
    rows: Sequence[int],
    *,
    noise: Mapping[tuple[int, ...], Tensor] | None = None,
    keep_intermediates: bool = True,
) -> tuple[Tensor, dict[str, Tensor]]:
    """J and every gradient of the batch as ``len(rows)`` ranks holding ``rows[r]`` consecutive
    rows each would compute them with ``recipe``: the parameters' gradients as rank 0 holds them
    after the all-reduce (a sum in rank order here), and the gradients of the rows (every
    intermediate, X) from the rank that holds each row, in rank order.

    ``noise``: the batch's dropout masks (``cache.noise`` of a forward pass over X); each rank
    gets its rows of them."""
    check_shardable(net)
    if sum(rows) != X.shape[0] or any(n < 0 for n in rows):
        raise ValueError(f"rows={list(rows)} must be sizes >= 0 adding up to X's {X.shape[0]} rows")
    world = World(tuple(rows), (0,) * len(rows), is_mean(net.loss_fn))
    forwards = []
    for r in range(len(rows)):
        part = world.rows_of(r)
        forwards.append(shard_forward(net, X[part], y[part], noise=shard_noise(noise, part)))
    world = World(tuple(rows), tuple(f.terms for f in forwards), world.mean)
    ranks = [
        shard_backward(net, f, weight=recipe.weight(world, r), decay=recipe.decay == "every rank",
                       keep_intermediates=keep_intermediates)
        for r, f in enumerate(forwards)
    ]  # fmt: skip
    parameters = net.parameters()
    held: dict[str, Tensor] = {}
    for name in net.names():
        parts = [rank.grads[name] for rank in ranks if name in rank.grads]
        if not parts:  # an intermediate not asked for
            continue
        if not recipe.reduces(name, parameters):  # a rank's own: a parameter's on rank 0, a row's on its rank
            held[name] = parts[0] if name in parameters else torch.cat(parts)
            continue
        shapes = {tuple(p.shape) for p in parts}
        if len(shapes) > 1 or len(parts) != len(ranks):
            raise ValueError(
                f"recipe {recipe.name!r} all-reduces dJ/d{name}, but the ranks hold it in shapes "
                f"{sorted(shapes)}: an all-reduce needs one shape on every rank (even shards)"
            )
        total = sum(parts[1:], parts[0])  # what the all-reduce leaves on every rank
        held[name] = total if name in parameters else torch.cat([total] * len(ranks))
    J = sum((rank.J for rank in ranks[1:]), ranks[0].J)
    J, held = finish(recipe, net, world, J, held)
    return J, {name: held[name] for name in net.in_order(held)}  # in as_dict()'s order
