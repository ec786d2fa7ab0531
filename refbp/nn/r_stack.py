"""The R-operator's loops: stack.py's two loops, differentiated along v.

For a direction v (V for the parameters, R{x} for the loop's input), layer l reading a[i] for
i in reads_l (refbp.nn.stack; a stack when layer l reads a[l-1]):

    tangents:   R{a[0]} = R{x};  for l = 1 .. L:
                    R{a[l]} = layer_l.tangent(a[i], R{a[i]} for i in reads_l; a[l], cache[l], V)
    R-backward: g[L] = dJ/da[L], R{g[L]} = R{dJ/da[L]};  for l = L .. 1:
                    (dJ/da[i], R{dJ/da[i]}) for i in reads_l, (H v)_layer l
                        = layer_l.r_backward(g[l], R{g[l]}, a[i], R{a[i]}, ...)
                    g[i]    += dJ/da[i]                   (G)     a tensor read by several layers
                    R{g[i]} += R{dJ/da[i]}                R{(G)}  gets the sum of its readers'

Eq. (G) is a sum, so its R is the sum of the R's: a residual's x gets R{dJ/dx} from the skip
and from the branch. A layer of one input runs the layer protocol's ``tangent`` and
``r_backward``; a join (refbp.nn.joins) its forms over every input, ``tangent_all`` and
``r_backward_all``. Each layer writes its own rules; the loops know nothing of any particular
layer. Like ``stack_backward`` they name every tensor with a Key at the layer's path and *add*
the parameters' parts of H v, so that a tied parameter gets the sum of its uses. Everything here
is manual: no autograd.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from torch import Tensor

from .joins import Join
from .keys import Key
from .layer import Layer, LayerTangent, Params, SecondContext
from .stack import Reads, StackCache, StackGradients, add_gradient, add_input_gradient, chain

__all__ = ["StackTangent", "stack_has_second_order", "stack_r_backward", "stack_tangent"]


@dataclass
class StackTangent:
    """What the tangent loop keeps.

    Attributes:
        Ra: Ra[0] = R{the input} (None when it holds indices), Ra[l] = R{a[l]}.
        layers: layers[l] = layer l's LayerTangent (layers[0] is None).
    """

    Ra: list[Tensor | None]
    layers: list[LayerTangent | None]

    def intermediates(self, prefix: tuple[int, ...]) -> dict[Key, Tensor]:
        """Every tangent by key: each R{a(l)} and the layers' own ones."""
        out: dict[Key, Tensor] = {}
        for l, t in enumerate(self.layers[1:], start=1):
            assert t is not None
            out.update(t.intermediates)
            out[Key.at("a", (*prefix, l))] = t.out
        return out


def stack_has_second_order(layers: Sequence[Layer]) -> bool:
    """True when every layer of the loop has second-order rules."""
    return all(layer.has_second_order for layer in layers)


def stack_tangent(
    layers: Sequence[Layer],
    cache: StackCache,
    Rx: Tensor | None,
    V: Params,
    prefix: tuple[int, ...],
    reads: Reads | None = None,
) -> StackTangent:
    """Every layer's tangent in turn, from R{x} (None when x holds indices); layer l sits at path
    prefix + (l,) (a stack when ``reads`` is None)."""
    reads = chain(len(layers)) if reads is None else reads
    Ra: list[Tensor | None] = [Rx]  # Ra[l] = R{a[l]}
    kept: list[LayerTangent | None] = [None]
    for l, (layer, read) in enumerate(zip(layers, reads, strict=True), start=1):
        path = (*prefix, l)
        if layer.reads_several:  # a join: R{a[l]} from every input
            xs, Rxs = [cache.a[i] for i in read], [Ra[i] for i in read]
            t = cast(Join, layer).tangent_all(xs, Rxs, cache.a[l], cache.saved[l], V, path)
        else:
            i = read[0]
            t = layer.tangent(cache.a[i], Ra[i], cache.a[l], cache.saved[l], V, path)
        Ra.append(t.out)
        kept.append(t)
    return StackTangent(Ra, kept)


def stack_r_backward(
    layers: Sequence[Layer],
    cache: StackCache,
    tangent: StackTangent,
    g_L: Tensor,
    Rg_L: Tensor,
    V: Params,
    ctx: SecondContext,
    reads: Reads | None = None,
) -> tuple[Tensor | None, StackGradients]:
    """Every layer's R-backward, L down to 1, from g = dJ/da(L) and R{g}; (G) and R{(G)} sum a
    tensor's readers (a stack when ``reads`` is None).

    Returns (dJ/dx, R-gradients): R{dJ/dx} in ``dJ_dx`` (None when not asked for, ``ctx.need_dx``),
    H v by parameter key (ties summed) in ``params``, R{dJ/d(intermediate)} by key in
    ``intermediates``. ``ctx.path`` is the prefix."""
    L = len(layers)
    reads = chain(L) if reads is None else reads
    out = StackGradients(None)
    ties = ctx.ties
    g: list[Tensor | None] = [None] * (L + 1)  # g[i] = dJ/da[i], summed as readers report   (G)
    Rg: list[Tensor | None] = [None] * (L + 1)  # Rg[i] = R{dJ/da[i]}, summed likewise       R{(G)}
    g[L], Rg[L] = g_L, Rg_L
    for l in range(L, 0, -1):
        dJ_da, R_dJ_da = g[l], Rg[l]
        g[l] = Rg[l] = None
        if dJ_da is None or R_dJ_da is None:  # nothing above reads a[l]: J does not depend on it
            continue
        layer, read, path = layers[l - 1], reads[l - 1], (*ctx.path, l)
        if ctx.keep_intermediates:
            out.intermediates[Key.at("a", path)] = R_dJ_da  # R{dJ/da(l)}
        t = tangent.layers[l]
        assert t is not None
        layer_ctx = ctx.inner(path, need_dx=ctx.need_dx or max(read) > 0)
        out_l, saved = cache.a[l], cache.saved[l]
        if layer.reads_several:  # a join: (dJ/dx_i, R{dJ/dx_i}) for every input
            xs, Rxs = [cache.a[i] for i in read], [tangent.Ra[i] for i in read]
            dJ_dxs, R_dJ_dxs = cast(Join, layer).r_backward_all(dJ_da, R_dJ_da, xs, Rxs, out_l, t, saved, V, layer_ctx)
        else:
            i = read[0]
            g_x, R = layer.r_backward(dJ_da, R_dJ_da, cache.a[i], tangent.Ra[i], out_l, t, saved, V, layer_ctx)
            for kind, value in R.params.items():  # a tied parameter's H v is the sum over its uses
                add_gradient(out.params, Key.at(kind, path), value, ties)
            for key, value in R.sub_params.items():
                add_gradient(out.params, key, value, ties)
            out.intermediates.update(R.intermediates)
            dJ_dxs, R_dJ_dxs = [g_x], [R.dJ_dx]
        for i, dJ_dx, R_dJ_dx in zip(read, dJ_dxs, R_dJ_dxs, strict=True):
            if dJ_dx is None:  # an input J does not depend on through this layer (a size, indices)
                continue
            assert R_dJ_dx is not None
            add_input_gradient(g, i, dJ_dx)  # (G) g[i] += dJ/da[i] from this reader
            add_input_gradient(Rg, i, R_dJ_dx)  # R{(G)}: R{g[i]} += R{dJ/da[i]}
    out.dJ_dx = Rg[0]
    return g[0], out
