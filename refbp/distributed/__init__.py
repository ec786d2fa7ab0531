"""refbp.distributed: backprop by hand on several processes, and the report's sweep shared among them.

    # every rank, in a gloo process group: the gradient of the whole batch from its own rows
    from refbp.distributed import data_parallel_gradients, train_step, shard_noise
    grads = data_parallel_gradients(net, X_r, y_r)     # grads.params: all-reduced; grads.dJ_dX: own rows
    train_step(net, X_r, y_r, learning_rate=0.1)       # W <- W - lr dJ/dW on every rank alike

    torchrun --standalone --nproc-per-node=2 -m refbp report        # the sweep, sharded (sharded_report)
    torchrun --standalone --nproc-per-node=3 -m refbp distributed   # the check below, on 3 ranks

=================  ===================================================================
module             concept
=================  ===================================================================
normalisation      how each loss's mean splits over shards (eq. D1)
recipe             what each rank computes and how the ranks combine (D2-D5), and the
                   same arithmetic in one process (``simulate``, for the bug catalogue)
data_parallel      the same recipe between real all-reduces; ``train_step``
ddp                the reference: DistributedDataParallel on the same shards
environment        torchrun's environment: is this process a rank, and which (no torch)
launch             the process group, timeouts, a lost rank
sharded_report     ``refbp report``'s sweep shared among ranks through one queue
cases              networks with their batch split among ranks (DataParallelSpec)
verify             ``refbp distributed``'s comparisons
=================  ===================================================================

Networks with a BatchNorm in training mode are refused: its statistics are over the whole
batch, which no rank sees (torch's answer is SyncBatchNorm). Dropout shards when each rank uses
its rows of one mask of the whole batch (``shard_noise``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .data_parallel import DataParallelGradients, data_parallel_gradients, train_step
    from .ddp import ddp_gradients
    from .launch import RankFailedError, joined, torchrun_launch
    from .recipe import RIGHT, Recipe, World, shard_noise, simulate

__all__ = [
    "RIGHT",
    "DataParallelGradients",
    "RankFailedError",
    "Recipe",
    "World",
    "data_parallel_gradients",
    "ddp_gradients",
    "joined",
    "shard_noise",
    "simulate",
    "torchrun_launch",
    "train_step",
]

_LAZY = {
    "DataParallelGradients": "data_parallel",
    "data_parallel_gradients": "data_parallel",
    "train_step": "data_parallel",
    "ddp_gradients": "ddp",
    "RankFailedError": "launch",
    "joined": "launch",
    "torchrun_launch": "launch",
    "RIGHT": "recipe",
    "Recipe": "recipe",
    "World": "recipe",
    "shard_noise": "recipe",
    "simulate": "recipe",
}
"""Public name -> the module of this package that defines it (loaded on first use, so that
``refbp report`` importing ``launch`` loads neither DDP nor hypothesis)."""


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
