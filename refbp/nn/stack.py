"""The one loop of every network, forward and backward, over layers wired as a graph; a stack
of layers (every network built from a list, nn.Sequential, a Residual's inner layers) is the
special case in which layer l reads a[l-1]. (A transformer Block, refbp.nn.transformer, runs its
two residual halves with its own short loop, because a training step there rebuilds GELU's
output in the backward pass instead of keeping it; this loop keeps every a(l) some backward
reads, dropping only, in a lean pass, those none reads.)

Layer l reads the tensors a[i] for i in reads[l] (each i < l; a[0] = x): one tensor for a plain
layer, several for a join (refbp.nn.joins: the sum of a skip connection, a concatenation).

    forward:   a[0] = x;  a[l], cache[l] = layer_l.forward(a[i] for i in reads_l)       l = 1 .. L
    backward:  g[L] = dJ/da[L];  for l = L .. 1:
                   dJ/da[i] for i in reads_l, dJ/dparams_l = layer_l.backward(g[l], a[reads_l], a[l], cache[l])
                   g[i] += dJ/da[i]                  (G) a tensor read by several layers gets
                                                         the sum of its readers' gradients

Eq. (G) is the multivariable chain rule, written once: a residual block's x reaches its output
directly and through the branch, and its gradient is the sum of both. In a stack every a[i] has
one reader, and (G) is the plain chain rule g[l-1] = dJ/da[l-1].

The loop knows nothing of any particular layer. It names every tensor with a Key at the layer's
path (prefix + (l,)), and it *adds* parameter gradients into the result, so that a parameter
two layers share (a tied weight) gets the sum of both uses.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import Tensor

from .joins import Join
from .keys import Key
from .layer import BackwardContext, ForwardContext, Layer, Params, Tap

__all__ = [
    "MAX_DEPTH",
    "Reads",
    "StackCache",
    "StackGradients",
    "add_gradient",
    "add_input_gradient",
    "chain",
    "check_depth",
    "stack_backward",
    "stack_forward",
    "stack_keys",
    "stack_sizes",
    "stack_torch_forward",
    "walk_layers",
]

Reads = Sequence[tuple[int, ...]]
"""reads[l - 1] = the tensors layer l reads: 0 for the loop's input, i for layer i's output (i < l)."""

_RELEASED = torch.empty(0)
"""What a released activation holds: no data (a real a(l) always has entries)."""

MAX_DEPTH = 64
"""The deepest nesting of composite layers refbp builds (a Residual inside a Residual inside
...; a plain layer has depth 1). The forward and backward passes of a composite layer run its
sub-layers through this module's loops, torch's modules call their children, and copy.deepcopy
(``Network.to``) descends the same way: each level costs a handful of Python frames (about six
in a torch module call), and Python stops at 1000. 64 levels keep every one of those walks far
inside that limit, and are far beyond real networks (a ResNet nests two or three)."""


@functools.cache
def chain(L: int) -> tuple[tuple[int, ...], ...]:
    """The wiring of a stack of L layers: layer l reads a[l-1]."""
    return tuple((l - 1,) for l in range(1, L + 1))


@dataclass
class StackCache:
    """What the forward loop keeps.

    Attributes:
        a: a[0] = the input, a[l] = layer l's output (l = 1 .. L).
        saved: saved[l] = layer l's own cache (saved[0] is None).
    """

    a: list[Tensor]
    saved: list[Any]


@dataclass
class StackGradients:
    """What the backward loop returns.

    Attributes:
        dJ_dx: dJ/d(the loop's input), or None when not asked for.
        params: key -> dJ/d(parameter), tied parameters summed under one key.
        intermediates: key -> dJ/d(intermediate): every a(l) and the layers' own ones.
    """

    dJ_dx: Tensor | None
    params: dict[Key, Tensor] = field(default_factory=dict)
    intermediates: dict[Key, Tensor] = field(default_factory=dict)


def stack_forward(
    layers: Sequence[Layer], x: Tensor, ctx: ForwardContext, prefix: tuple[int, ...], reads: Reads | None = None
) -> StackCache:
    """a[0] = x, then a[l], cache[l] = layer l's forward on the tensors it reads (a stack when
    ``reads`` is None); layer l sits at path prefix + (l,)."""
    reads = chain(len(layers)) if reads is None else reads
    lean = not ctx.keep_intermediates
    if lean:  # keep only the a(i) some backward reads: drop the others once their last reader ran
        unread, last_reader = _unread(layers, reads)
    a, saved = [x], [None]
    for l, (layer, read) in enumerate(zip(layers, reads, strict=True), start=1):
        try:
            if layer.reads_several:
                out, cache = cast(Join, layer).forward_all([a[i] for i in read], ctx, (*prefix, l))
            else:
                out, cache = layer.forward(a[read[0]], ctx, (*prefix, l))
        except (RuntimeError, ValueError, IndexError, TypeError):
            # the network checks the input of the layers that read X before the pass; a later
            # layer handed a shape it cannot take says so here, in its own words, not torch's
            if not layer.reads_several:
                layer.check_input(a[read[0]], (*prefix, l))
            raise
        a.append(out)
        saved.append(cache)
        if lean:
            for i in read:
                if unread[i] and last_reader[i] == l:
                    a[i] = _RELEASED
    return StackCache(a, saved)


def _unread(layers: Sequence[Layer], reads: Reads) -> tuple[list[bool], list[int]]:
    """(unread, last_reader): unread[i] when no backward reads a(i) after a lean forward pass
    (neither its maker, ``backward_reads_output``, nor any reader, ``backward_reads_input``;
    a(0), the caller's input, is never dropped), and the last layer that reads a(i) (0: none)."""
    unread = [False] + [not layer.backward_reads_output for layer in layers]
    for layer, read in zip(layers, reads, strict=True):
        if layer.backward_reads_input:
            for i in read:
                unread[i] = False
    return unread, last_readers(reads)


def last_readers(reads: Reads) -> list[int]:
    """last[i] = the last layer that reads a(i) (0: none, the output): after it, a(i) is not read
    again by a forward loop."""
    last = [0] * (len(reads) + 1)
    for l, read in enumerate(reads, start=1):
        for i in read:
            last[i] = l
    return last


_CONTEXTS: dict[tuple[object, ...], BackwardContext] = {}
"""The per-layer contexts ``stack_backward`` has built, by what they hold: a training loop asks
for the same few again and again, and building a frozen dataclass costs about 4 us a layer,
a tenth of a small layer's whole step. Each entry holds its ``ties`` mapping, so the id in
its key cannot be reused by another mapping while the entry lives."""


def _layer_context(
    ctx: BackwardContext, path: tuple[int, ...], overwrite: bool, need_dx: bool, alias: bool, release: bool
) -> BackwardContext:
    """The BackwardContext of the layer at ``path`` inside a loop run with ``ctx``."""
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
    reads: Reads | None = None,
) -> StackGradients:
    """Every layer's backward, L down to 1, from ``dJ_dout.pop()`` = dJ/da(L); eq. (G) sums the
    gradients of a tensor several layers read (a stack when ``reads`` is None).

    ``ctx.path`` is the loop's prefix; ``ctx.overwrite`` says the caller gave up dJ/da(L)
    (handed over in a list so that the loop holds the only reference and can free it); every
    g[l] below it is the loop's own: a layer's dJ/dx never shares storage it was not given, and
    a sum (G) is a new tensor. ``ctx.need_dx`` asks for dJ/dx, which layers reading only x compute
    for nothing else. ``release`` drops a(l) and layer l's cache once layer l's backward has used
    them (every reader of a(l) ran before it)."""
    L = len(layers)
    reads = chain(L) if reads is None else reads
    out = StackGradients(None)
    ties = ctx.ties
    g: list[Tensor | None] = [None] * (L + 1)  # g[i] = dJ/da[i], summed as its readers report   (G)
    g[L] = dJ_dout.pop()
    for l in range(L, 0, -1):
        dJ_da = g[l]
        g[l] = None
        if dJ_da is None:  # nothing above reads a(l): J does not depend on it
            continue
        layer, read, path = layers[l - 1], reads[l - 1], (*ctx.path, l)
        # lambda W belongs to a weight once: a tied weight's other uses add only their data term
        alias = bool(ties) and any(Key.at(kind, path) in ties for kind in layer.decayed if kind in layer.params)
        if ctx.keep_intermediates:
            out.intermediates[Key.at("a", path)] = dJ_da
        # every dJ/da(l) below the top is the loop's own (overwrite); dJ/dx is needed above the input
        need_dx = ctx.need_dx or max(read) > 0
        layer_ctx = _layer_context(ctx, path, ctx.overwrite or l < L, need_dx, alias, release)
        if layer.reads_several:  # a join: no parameters, dJ/d(each input) when any is asked for
            if need_dx:
                xs = [cache.a[i] for i in read]
                dJ_dxs = cast(Join, layer).backward_all(dJ_da, xs, cache.a[l], cache.saved[l], layer_ctx)
                for i, dJ_dx in zip(read, dJ_dxs, strict=True):
                    add_input_gradient(g, i, dJ_dx)
                del dJ_dxs
        else:
            grads = layer.backward(dJ_da, cache.a[read[0]], cache.a[l], cache.saved[l], layer_ctx)
            for kind, value in grads.params.items():
                add_gradient(out.params, Key.at(kind, path), value, ties)
            for key, value in grads.sub_params.items():
                add_gradient(out.params, key, value, ties)
            if grads.intermediates:
                out.intermediates.update(grads.intermediates)
            add_input_gradient(g, read[0], grads.dJ_dx)
            del grads
        del dJ_da
        if release:  # a(l) and layer l's cache have been used for the last time
            layer.release(cache.saved[l])
            cache.a[l] = _RELEASED
            cache.saved[l] = None
    out.dJ_dx = g[0]
    return out


def add_input_gradient(g: list[Tensor | None], i: int, dJ_dx: Tensor | None) -> None:
    """(G) g[i] += dJ/da[i] from one reader of a[i] (nothing when the reader computed none: J
    does not reach a[i] through it, or it holds indices)."""
    if dJ_dx is not None:
        before = g[i]
        g[i] = dJ_dx if before is None else before + dJ_dx


def add_gradient(params: dict[Key, Tensor], key: Key, value: Tensor, ties: Mapping[Key, Key]) -> None:
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
    reads: Reads | None = None,
) -> Tensor:
    """The oracle of the loop: each layer's torch_forward on the oracle's tensors it reads,
    every a(l) reported to the tap (a stack when ``reads`` is None)."""
    reads = chain(len(layers)) if reads is None else reads
    last = last_readers(reads)
    a: list[Tensor | None] = [x]
    for l, (layer, read) in enumerate(zip(layers, reads, strict=True), start=1):
        path = (*prefix, l)
        xs = [a[i] for i in read]
        for i in read:  # each a(i) held no longer than its last reader needs it (autograd keeps what it saves)
            if last[i] == l:
                a[i] = None
        if layer.reads_several:
            y = cast(Join, layer).torch_forward_all(cast(list[Tensor], xs))
        else:
            y = layer.torch_forward(cast(Tensor, xs[0]), p, noise, tap, path)
        a.append(tap.intermediate(Key("a", path), y))
    out = a[-1]
    assert out is not None
    return out


def stack_sizes(layers: Sequence[Layer], shape: tuple[int, ...], reads: Reads | None = None) -> int:
    """The entries a forward pass on an input of ``shape`` allocates, layer by layer (its input,
    each ``Layer.forward_size``), found without running anything."""
    reads = chain(len(layers)) if reads is None else reads
    shapes, entries = [shape], math.prod(shape)
    for layer, read in zip(layers, reads, strict=True):
        if layer.reads_several:
            out = cast(Join, layer).size_all([shapes[i] for i in read])
            kept = math.prod(out)
        else:
            out, kept = layer.forward_size(shapes[read[0]])
        shapes.append(out)
        entries += kept
    return entries


def stack_keys(layers: Sequence[Layer], prefix: tuple[int, ...]) -> list[Key]:
    """Every key of the loop's layers, layer by layer (parameters, intermediates, output)."""
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
