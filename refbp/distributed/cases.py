"""DataParallelSpec: a network, its batch, and how the batch is split among ranks; drawn by
hypothesis (for the bug catalogue) or from a seed (for ``refbp distributed``).

    {"network": {...CaseSpec or StackSpec JSON...}, "shards": [1, 3, 2], "ignore_index": -100}

The batch has sum(shards) rows; rank r holds ``shards[r]`` consecutive rows, in rank order.
Shards are uneven (that is where data-parallel bugs live), sometimes empty. For cross_entropy a
spec may ignore about a third of the targets (``ignore_index``), so that shards hold different
numbers of counted targets even with as many rows. No network has a BatchNorm in training
mode: its batch statistics do not shard (refbp.distributed.recipe).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, replace
from typing import Any

import torch
from hypothesis import strategies as st

from ..nn.activations import ACTIVATIONS
from ..nn.losses import LOSSES, cross_entropy, get_loss
from ..nn.network import Network
from ..nn.validation import derived_seed
from ..strategies import STACK_KINDS, specs, stack_specs
from ..verify.cases import Case, CaseSpec
from ..verify.stacks import StackSpec
from ..verify.sweep import random_stack

__all__ = ["IGNORED_FRACTION", "IGNORE_INDEX", "DataParallelSpec", "data_parallel_specs", "draw_specs"]

IGNORE_INDEX = -100
"""The target value the drawn cross_entropy cases ignore: torch's default ignore_index."""

IGNORED_FRACTION = 1 / 3
"""About this share of a spec's targets is ignored (never all of them): enough that shards of
equal rows hold unequal counts of targets, few enough that most shards hold some."""

WEIGHT_DECAY = 0.1
"""lambda of the drawn networks that have weight decay: large enough that lambda W is a sizeable
part of dJ/dW, so that adding it once per rank, not once, shows."""


@dataclass(frozen=True)
class DataParallelSpec:
    """A network (its spec's batch is the whole batch), the rows each rank holds, and whether
    some cross_entropy targets are ignored.

    Attributes:
        network: a CaseSpec (an MLP) or a StackSpec with batch = sum(shards).
        shards: n_r for each rank r.
        ignore: cross_entropy with ignore_index=IGNORE_INDEX, about IGNORED_FRACTION ignored.
    """

    network: CaseSpec | StackSpec
    shards: tuple[int, ...]
    ignore: bool = False

    def __post_init__(self) -> None:
        if sum(self.shards) != self.network.batch or any(n < 0 for n in self.shards):
            raise ValueError(
                f"shards={list(self.shards)} must be sizes >= 0 adding up to the batch {self.network.batch}"
            )
        if self.ignore and self.network.loss != "cross_entropy":
            raise ValueError(f"ignore=True needs loss cross_entropy, not {self.network.loss!r}")

    @property
    def world_size(self) -> int:
        return len(self.shards)

    def build(self) -> Case:
        """The network and the whole batch (X, y), as the network's spec draws them; with
        ``ignore``, some targets set to IGNORE_INDEX and the loss told to ignore them."""
        case = self.network.build()
        if not self.ignore:
            return Case(self, case.net, case.X, case.y)
        net = Network(case.net.layers, cross_entropy(IGNORE_INDEX), weight_decay=case.net.weight_decay)
        generator = torch.Generator().manual_seed(derived_seed(self.network.seed, 2, "the ignored targets"))
        ignored = torch.rand(case.y.shape, generator=generator) < IGNORED_FRACTION  # (N,) or (N, T)
        ignored.view(-1)[0] = False  # at least one target counts
        y = torch.where(ignored.to(case.y.device), IGNORE_INDEX, case.y)
        return Case(self, net, case.X, y)

    def to_json(self) -> str:
        data = {
            "network": json.loads(self.network.to_json()),
            "shards": list(self.shards),
            "ignore_index": IGNORE_INDEX if self.ignore else None,
        }
        return json.dumps(data, sort_keys=True)

    def describe(self) -> str:
        """The network in one line, then the shards (rows per rank) and ignored targets."""
        ignored = f", targets = {IGNORE_INDEX} ignored" if self.ignore else ""
        return f"{self.network.describe()}, shards {'+'.join(map(str, self.shards))}{ignored}"


def _uneven(sizes: list[int]) -> tuple[int, ...]:
    if len(set(sizes)) == 1:
        sizes[-1] += 1
    return tuple(sizes)


@st.composite
def data_parallel_specs(
    draw: st.DrawFn,
    *,
    world_sizes: tuple[int, ...] = (2, 3),
    max_rows: int = 3,
    even: bool = False,
    weight_decay: bool | None = None,
    float_input: bool = False,
    losses: tuple[str, ...] = tuple(LOSSES),
) -> DataParallelSpec:
    """Small float64 specs, shrinkable: R ranks from ``world_sizes``, 1 to ``max_rows`` rows each,
    uneven unless ``even``; an MLP or a layer stack (no BatchNorm) of depth <= 2 and width <= 4.

    ``weight_decay``: True for lambda = WEIGHT_DECAY, False for none, None for either.
    ``float_input``: no embedding (X a float tensor, so that dJ/dX exists)."""
    R = draw(st.sampled_from(world_sizes))
    if even:
        shards = (draw(st.integers(1, max_rows)),) * R
    else:
        shards = _uneven([draw(st.integers(1, max_rows)) for _ in range(R)])
    network: CaseSpec | StackSpec
    if draw(st.sampled_from(["mlp", "stack"])) == "mlp":
        network = draw(specs(max_depth=2, max_width=4, max_batch=1, losses=losses, dtypes=("float64",)))
    else:
        kinds = [k for k in STACK_KINDS if k != "batchnorm" and not (float_input and k in ("embedding", "flatten"))]
        network = draw(stack_specs(max_depth=2, max_width=4, max_batch=2, kinds=kinds, losses=losses,
                                   dtypes=("float64",)))  # fmt: skip
    lam = draw(st.sampled_from([0.0, WEIGHT_DECAY])) if weight_decay is None else WEIGHT_DECAY * weight_decay
    network = replace(network, batch=sum(shards), weight_decay=lam)
    ignore = network.loss == "cross_entropy" and draw(st.booleans())
    return DataParallelSpec(network, shards, ignore)


def draw_specs(seed: int, examples: int, world_size: int) -> list[DataParallelSpec]:
    """``examples`` specs for ``world_size`` ranks, the same for the same arguments: MLPs (every
    loss in turn) and layer stacks alternate; every third has weight decay, every fifth an empty
    shard, half the cross_entropy ones ignore some targets; shards hold 0 to 5 rows, unevenly."""
    rng = random.Random(seed)
    names, losses = sorted(ACTIVATIONS), sorted(LOSSES)
    out = []
    for k in range(examples):
        network: CaseSpec | StackSpec
        if k % 2 == 0:
            loss = losses[(k // 2) % len(losses)]
            depth = rng.randint(1, 3)
            classes = get_loss(loss).targets == "classes"
            dims = [rng.randint(1, 8) for _ in range(depth)] + [rng.randint(2 if classes else 1, 5)]
            acts = [rng.choice(names) for _ in range(depth)]
            acts[-1] = get_loss(loss).output_activation or acts[-1]
            network = CaseSpec(tuple(dims), tuple(acts), loss, seed=rng.randint(0, 2**31 - 1))
        else:
            network = random_stack(rng)
            while network.training and _has_batchnorm(network.layers):
                network = random_stack(rng)
        sizes = [rng.randint(1, 5) for _ in range(world_size)]
        if k % 5 == 3 and world_size > 1:  # one rank without rows (the others hold some)
            sizes[rng.randrange(world_size)] = 0
        shards = _uneven(sizes)
        lam = WEIGHT_DECAY if k % 3 == 0 else 0.0
        network = replace(network, batch=sum(shards), weight_decay=lam)
        out.append(DataParallelSpec(network, shards, network.loss == "cross_entropy" and rng.random() < 0.5))
    return out


def _has_batchnorm(layers: Any) -> bool:
    return any(layer[0] == "batchnorm" or (layer[0] == "residual" and _has_batchnorm(layer[1])) for layer in layers)
