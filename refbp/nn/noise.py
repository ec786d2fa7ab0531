"""The random draws a forward pass may be given (``noise=``): one check, for every caller.

    noise = {(3,): keep_mask, (2, 1): keep_mask, ...}      # layer path -> bool keep-mask

``Network.forward(noise=...)`` and ``refbp.check(noise=...)`` both reuse a draw this way, as
``cache.noise`` hands it over. A layer draws noise when it is stochastic itself (Dropout, the
attention's dropout, in training mode with p > 0), not only through its sub-layers; an entry
for any other path would be silently ignored, and a mask of another type cannot be a keep-mask,
so both are refused here, naming the entry. The mask's shape depends on the input and is
checked by the layer that uses it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from .layer import Layer
from .stack import walk_layers
from .validation import describe

__all__ = ["check_noise", "noise_layers"]


def noise_layers(layers: Sequence[Layer]) -> dict[tuple[int, ...], Layer]:
    """Layer path -> layer, for every layer that draws noise itself in its present mode."""
    return {
        path: layer
        for path, layer in walk_layers(layers)
        if layer.stochastic and not any(sub.stochastic for sub in layer.sublayers())
    }


def check_noise(layers: Sequence[Layer], noise: object) -> None:
    """Raise a TypeError or ValueError naming the entry of ``noise`` (None, or a mapping layer
    path -> bool keep-mask) that cannot be a draw of one of ``layers``' noise layers."""
    if noise is None:
        return
    if not isinstance(noise, Mapping):
        raise TypeError(
            f"noise must be a dict layer path -> bool keep-mask (as cache.noise holds), got {type(noise).__name__}"
        )
    drawing = noise_layers(layers)
    expected = f"the layers that draw noise here are {sorted(drawing)}" if drawing else "no layer draws noise here"
    every = dict(walk_layers(layers))
    for path, mask in noise.items():
        if not (isinstance(path, tuple) and path and all(isinstance(i, int) and i >= 1 for i in path)):
            raise TypeError(
                f"noise has the key {path!r} ({type(path).__name__}); expected a layer path, a tuple of layer "
                f"numbers from 1 such as (3,) or (2, 1), as cache.noise holds; {expected}"
            )
        if path not in drawing:
            layer = every.get(path)
            what = f"there is no layer {path}" if layer is None else f"layer {path} ({layer.describe()}) draws no noise"
            raise ValueError(
                f"noise[{path}] names no dropout layer: {what} (only a dropout in training mode with p > 0 "
                f"does); {expected}"
            )
        if not isinstance(mask, Tensor):
            raise TypeError(f"noise[{path}] must be a torch tensor (a bool keep-mask), got {type(mask).__name__}")
        if mask.dtype != torch.bool:
            raise TypeError(
                f"noise[{path}] must be a keep-mask of dtype torch.bool (as cache.noise holds), got {describe(mask)}"
            )
