"""The R-operator's loops over a stack of layers: stack.py's two loops, differentiated along v.

For a direction v (V for the parameters, R{x} for the stack's input),

    tangents:   R{a[0]} = R{x};  R{a[l]} = layer_l.tangent(a[l-1], R{a[l-1]}, a[l], cache[l], V)
    R-backward: g = dJ/da[L], R{g} = R{dJ/da[L]};  for l = L .. 1:
                    (g, R{g}), (H v)_layer l = layer_l.r_backward(g, R{g}, a[l-1], R{a[l-1]}, ...)

Each layer writes its own rules (refbp.nn.layer: ``tangent``, ``r_backward``); the loops know
nothing of any particular layer. Like ``stack_backward`` they name every tensor with a Key at the
layer's path and *add* the parameters' parts of H v, so that a tied parameter gets the sum of its
uses. Everything here is manual: no autograd.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

from .keys import Key
from .layer import Layer, LayerTangent, Params, SecondContext
from .stack import StackCache, StackGradients

__all__ = ["StackTangent", "stack_has_second_order", "stack_r_backward", "stack_tangent"]


@dataclass
class StackTangent:
    """What a stack's tangent pass keeps.

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
    """True when every layer of the stack has second-order rules."""
    return all(layer.has_second_order for layer in layers)


def stack_tangent(
    layers: Sequence[Layer], cache: StackCache, Rx: Tensor | None, V: Params, prefix: tuple[int, ...]
) -> StackTangent:
    """Every layer's tangent in turn, from R{x}; layer l sits at path prefix + (l,)."""
    Ra: list[Tensor | None] = [Rx]
    kept: list[LayerTangent | None] = [None]
    for l, layer in enumerate(layers, start=1):
        t = layer.tangent(cache.a[l - 1], Ra[l - 1], cache.a[l], cache.saved[l], V, (*prefix, l))
        Ra.append(t.out)
        kept.append(t)
    return StackTangent(Ra, kept)


def stack_r_backward(
    layers: Sequence[Layer],
    cache: StackCache,
    tangent: StackTangent,
    g: Tensor,
    Rg: Tensor,
    V: Params,
    ctx: SecondContext,
) -> tuple[Tensor | None, StackGradients]:
    """Every layer's R-backward, L down to 1, from g = dJ/da(L) and R{g}.

    Returns (dJ/dx, R-gradients): R{dJ/dx} in ``dJ_dx``, H v by parameter key (ties summed) in
    ``params``, R{dJ/d(intermediate)} by key in ``intermediates``. ``ctx.path`` is the prefix."""
    out = StackGradients(None)
    ties = ctx.ties
    for l in range(len(layers), 0, -1):
        layer, path = layers[l - 1], (*ctx.path, l)
        if ctx.keep_intermediates:
            out.intermediates[Key.at("a", path)] = Rg  # R{dJ/da(l)}
        t = tangent.layers[l]
        assert t is not None
        layer_ctx = ctx.inner(path, need_dx=ctx.need_dx or l > 1)
        g_x, R = layer.r_backward(g, Rg, cache.a[l - 1], tangent.Ra[l - 1], cache.a[l], t, cache.saved[l], V, layer_ctx)
        owned = [(Key.at(kind, path), value) for kind, value in R.params.items()]
        for key, value in [*owned, *R.sub_params.items()]:
            key = ties.get(key, key)  # a tied parameter's H v is the sum over its uses
            out.params[key] = out.params[key] + value if key in out.params else value
        out.intermediates.update(R.intermediates)
        g, Rg = g_x, R.dJ_dx  # type: ignore[assignment]  # None only below layer 1
    out.dJ_dx = Rg
    return g, out
