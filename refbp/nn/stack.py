"""One loop over a stack of layers, forward and backward: used by every network and by the
Residual's inner layers. (A transformer Block, refbp.nn.transformer, runs its two residual
halves with its own short loop, because a training step there keeps only the activations some
backward pass reads and rebuilds GELU's output, which this loop, keeping every a(l), does not.)

    forward:   a[0] = x;  a[l], cache[l] = layer_l.forward(a[l-1])          l = 1 .. L
    backward:  g = dJ/da[L];  for l = L .. 1:  g, dJ/dparams_l = layer_l.backward(g, a[l-1], a[l], cache[l])

The loop knows nothing of any particular layer. It names every tensor with a Key at the layer's
path (prefix + (l,)), and it *adds* parameter gradients into the result, so that a parameter
two layers share (a tied weight) gets the sum of both uses.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .keys import Key
from .layer import BackwardContext, ForwardContext, Layer, Params, Tap

__all__ = [
    "MAX_DEPTH",
    "StackCache",
    "StackGradients",
    "check_depth",
    "stack_backward",
    "stack_forward",
    "stack_keys",
    "stack_torch_forward",
    "walk_layers",
]

_RELEASED = torch.empty(0)
"""What a released activation holds: no data (a real a(l) always has entries)."""

MAX_DEPTH = 64
"""The deepest nesting of composite layers refbp builds (a Residual inside a Residual inside
...; a plain layer has depth 1). The forward and backward passes of a composite layer run its
sub-layers through this module's loops, torch's modules call their children, and copy.deepcopy
(``Network.to``) descends the same way: each level costs a handful of Python frames (about six
in a torch module call), and Python stops at 1000. 64 levels keep every one of those walks far
inside that limit, and are far beyond real networks (a ResNet nests two or three)."""


@dataclass
class StackCache:
    """What a stack's forward pass keeps.

    Attributes:
        a: a[0] = the input, a[l] = layer l's output (l = 1 .. L).
        saved: saved[l] = layer l's own cache (saved[0] is None).
    """

    a: list[Tensor]
    saved: list[Any]


@dataclass
class StackGradients:
    """What a stack's backward pass returns.

    Attributes:
        dJ_dx: dJ/d(the stack's input), or None when not asked for.
        params: key -> dJ/d(parameter), tied parameters summed under one key.
        intermediates: key -> dJ/d(intermediate): every a(l) and the layers' own ones.
    """

    dJ_dx: Tensor | None
    params: dict[Key, Tensor] = field(default_factory=dict)
    intermediates: dict[Key, Tensor] = field(default_factory=dict)


def stack_forward(layers: Sequence[Layer], x: Tensor, ctx: ForwardContext, prefix: tuple[int, ...]) -> StackCache:
    """Run every layer in turn on ``x``; layer l sits at path prefix + (l,)."""
    a, saved = [x], [None]
    for l, layer in enumerate(layers, start=1):
        out, cache = layer.forward(a[l - 1], ctx, (*prefix, l))
        a.append(out)
        saved.append(cache)
    return StackCache(a, saved)


_CONTEXTS: dict[tuple[object, ...], BackwardContext] = {}
"""The per-layer contexts ``stack_backward`` has built, by what they hold: a training loop asks
for the same few again and again, and building a frozen dataclass costs about 4 us a layer,
a tenth of a small layer's whole step. Each entry holds its ``ties`` mapping, so the id in
its key cannot be reused by another mapping while the entry lives."""


def _layer_context(
    ctx: BackwardContext, path: tuple[int, ...], overwrite: bool, need_dx: bool, alias: bool, release: bool
) -> BackwardContext:
    """The BackwardContext of the layer at ``path`` inside a stack run with ``ctx``."""
    weight_decay = 0.0 if alias else ctx.weight_decay
    key = (path, ctx.keep_intermediates, overwrite, need_dx, weight_decay, id(ctx.ties), release)
    layer_ctx = _CONTEXTS.get(key)
    if layer_ctx is None or layer_ctx.ties is not ctx.ties:
        if len(_CONTEXTS) > 4096:  # a few networks' worth; anything else is not worth keeping
            _CONTEXTS.clear()
        layer_ctx = _CONTEXTS[key] = BackwardContext(
            path=path,
            keep_intermediates=ctx.keep_intermediates,
            overwrite=overwrite,
            need_dx=need_dx,
            weight_decay=weight_decay,
            ties=ctx.ties,
            release=release,
        )
    return layer_ctx


def stack_backward(
    layers: Sequence[Layer],
    cache: StackCache,
    dJ_dout: list[Tensor],
    ctx: BackwardContext,
    *,
    release: bool = False,
) -> StackGradients:
    """Every layer's backward, L down to 1, from ``dJ_dout.pop()`` = dJ/da(L).

    ``ctx.path`` is the stack's prefix; ``ctx.overwrite`` says the caller gave up dJ/da(L)
    (handed over in a list so that the loop holds the only reference and can free it).
    ``release`` drops a(l) and layer l's cache once layer l's backward has used them."""
    out = StackGradients(None)
    ties = ctx.ties
    g = dJ_dout.pop()  # dJ/da(L)
    L = len(layers)
    for l in range(L, 0, -1):
        layer, path = layers[l - 1], (*ctx.path, l)
        # lambda W belongs to a weight once: a tied weight's other uses add only their data term
        alias = bool(ties) and any(Key.at(kind, path) in ties for kind in layer.decayed if kind in layer.params)
        if ctx.keep_intermediates:
            out.intermediates[Key.at("a", path)] = g
        # every dJ/da(l) below the top is the loop's own (overwrite); dJ/dx is needed above layer 1
        layer_ctx = _layer_context(ctx, path, ctx.overwrite or l < L, ctx.need_dx or l > 1, alias, release)
        grads = layer.backward(g, cache.a[l - 1], cache.a[l], cache.saved[l], layer_ctx)
        for kind, value in grads.params.items():
            _add_gradient(out.params, Key.at(kind, path), value, ties)
        for key, value in grads.sub_params.items():
            _add_gradient(out.params, key, value, ties)
        if grads.intermediates:
            out.intermediates.update(grads.intermediates)
        g = grads.dJ_dx  # type: ignore[assignment]  # None only below layer 1
        del grads
        if release:  # a(l) and layer l's cache have been used for the last time
            layer.release(cache.saved[l])
            cache.a[l] = _RELEASED
            cache.saved[l] = None
    out.dJ_dx = g
    return out


def _add_gradient(params: dict[Key, Tensor], key: Key, value: Tensor, ties: Mapping[Key, Key]) -> None:
    """params[key] += value: a tied parameter's gradient is the sum of its uses, under its first key."""
    if ties:
        key = ties.get(key, key)
    previous = params.get(key)
    params[key] = value if previous is None else previous + value


def stack_torch_forward(
    layers: Sequence[Layer],
    x: Tensor,
    p: Params,
    noise: Mapping[tuple[int, ...], Tensor],
    tap: Tap,
    prefix: tuple[int, ...],
) -> Tensor:
    """The oracle of the stack: each layer's torch_forward in turn, every a(l) reported to the tap."""
    for l, layer in enumerate(layers, start=1):
        path = (*prefix, l)
        x = tap.intermediate(Key("a", path), layer.torch_forward(x, p, noise, tap, path))
    return x


def stack_keys(layers: Sequence[Layer], prefix: tuple[int, ...]) -> list[Key]:
    """Every key of the stack, layer by layer (parameters, intermediates, output)."""
    return [key for l, layer in enumerate(layers, start=1) for key in layer.keys((*prefix, l))]


def check_depth(layer: Layer) -> int:
    """The nesting depth of ``layer`` (1 for a plain layer), or a ValueError past MAX_DEPTH.

    Measured with ``walk_layers`` (iterative), so a layer tree of any depth is measured."""
    depth = max(len(path) for path, _ in walk_layers([layer]))
    if depth > MAX_DEPTH:
        raise ValueError(
            f"{layer.title} nests composite layers {depth} levels deep; refbp builds at most MAX_DEPTH = "
            f"{MAX_DEPTH} levels (refbp.nn.stack.MAX_DEPTH: deeper nesting would exhaust Python's recursion "
            "limit in the forward and backward passes and in torch's modules)"
        )
    return depth


def walk_layers(layers: Sequence[Layer], prefix: tuple[int, ...] = ()) -> Iterator[tuple[tuple[int, ...], Layer]]:
    """Every layer and sub-layer with its path, depth first, in order: (1,), (2,), (2, 1), ...

    Iterative (an explicit stack, not recursion), so any depth of nesting is walked."""
    todo: list[tuple[tuple[int, ...], Layer]] = [((*prefix, l), layer) for l, layer in enumerate(layers, start=1)]
    todo.reverse()
    while todo:
        path, layer = todo.pop()
        yield path, layer
        todo.extend(reversed([((*path, j), sub) for j, sub in enumerate(layer.sublayers(), start=1)]))
