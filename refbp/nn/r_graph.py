"""The R-operator's loops over a graph network: graph.py's two loops, differentiated along v.

For a direction v (V for the parameters, R{X} for the input), node l reading a[i] for i in
inputs_l (refbp.nn.graph):

    tangents:   R{a[0]} = R{X};  for l = 1 .. L:
                    R{a[l]} = node_l.tangent(a[i], R{a[i]} for i in inputs_l; a[l], cache[l], V)
    R-backward: g[L] = dJ/da[L], R{g[L]} = R{dJ/da[L]};  for l = L .. 1:
                    (dJ/da[i], R{dJ/da[i]}) for i in inputs_l, (H v)_node l
                        = node_l.r_backward(g[l], R{g[l]}, a[i], R{a[i]}, ...)
                    g[i]    += dJ/da[i]                   (G)     a tensor read by several nodes
                    R{g[i]} += R{dJ/da[i]}                R{(G)}  gets the sum of its readers'

Eq. (G) is a sum, so its R is the sum of the R's: a residual's x gets R{dJ/dx} from the skip
and from the branch. A node of one input runs the layer protocol's ``tangent`` and
``r_backward``; a join (refbp.nn.joins) its forms over every input, ``tangent_all`` and
``r_backward_all``. As refbp.nn.r_stack, the loops know nothing of any particular layer, name
every tensor with a Key at the node's path (l,), and *add* the parameters' parts of H v, so that
a parameter used by several nodes (a tied weight) gets the sum of its uses. Manual: no autograd.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from torch import Tensor

from .joins import Join
from .keys import Key
from .layer import Layer, LayerTangent, Params, SecondContext
from .r_stack import StackTangent
from .stack import StackCache, StackGradients

__all__ = ["GraphNode", "graph_r_backward", "graph_tangent"]


class GraphNode(Protocol):
    """What the loops read of a node (refbp.nn.graph.Node): its layer, the join when it reads
    several tensors, and which tensors it reads (0: X, i: node i's output)."""

    layer: Layer
    join: Join | None
    inputs: tuple[int, ...]


def graph_tangent(nodes: Sequence[GraphNode], cache: StackCache, RX: Tensor | None, V: Params) -> StackTangent:
    """Every node's tangent in turn, from R{X} (None when X holds indices); node l at path (l,)."""
    Ra: list[Tensor | None] = [RX]  # Ra[l] = R{a[l]}
    kept: list[LayerTangent | None] = [None]
    for l, node in enumerate(nodes, start=1):
        xs, Rxs = [cache.a[i] for i in node.inputs], [Ra[i] for i in node.inputs]
        if node.join is not None:
            t = node.join.tangent_all(xs, Rxs, cache.a[l], cache.saved[l], V, (l,))  # R{a[l]} from every input
        else:
            t = node.layer.tangent(xs[0], Rxs[0], cache.a[l], cache.saved[l], V, (l,))
        Ra.append(t.out)
        kept.append(t)
    return StackTangent(Ra, kept)


def graph_r_backward(
    nodes: Sequence[GraphNode],
    cache: StackCache,
    tangent: StackTangent,
    dJ_da_L: Tensor,
    R_dJ_da_L: Tensor,
    V: Params,
    ctx: SecondContext,
    *,
    takes_indices: bool,
) -> tuple[Tensor | None, StackGradients]:
    """Every node's R-backward, L down to 1, from dJ/da[L] and R{dJ/da[L]}; (G) and R{(G)} sum a
    tensor's readers.

    Returns (dJ/dX, R-gradients): R{dJ/dX} in ``dJ_dx`` (None when X holds indices), H v by
    parameter key (ties summed) in ``params``, R{dJ/d(intermediate)} by key in ``intermediates``.
    ``ctx`` gives the product and the options; ``takes_indices``: X holds indices."""
    out = StackGradients(None)
    ties = ctx.ties
    L = len(nodes)
    g: list[Tensor | None] = [None] * (L + 1)  # g[i] = dJ/da[i], summed as readers report   (G)
    Rg: list[Tensor | None] = [None] * (L + 1)  # Rg[i] = R{dJ/da[i]}, summed likewise       R{(G)}
    g[L], Rg[L] = dJ_da_L, R_dJ_da_L
    for l in range(L, 0, -1):
        node, path = nodes[l - 1], (l,)
        dJ_da, R_dJ_da = g[l], Rg[l]
        g[l] = Rg[l] = None
        if dJ_da is None or R_dJ_da is None:  # nothing above reads a[l]: J does not depend on it
            continue
        if ctx.keep_intermediates:
            out.intermediates[Key.at("a", path)] = R_dJ_da  # R{dJ/da[l]}
        t = tangent.layers[l]
        assert t is not None
        node_ctx = ctx.inner(path, need_dx=not (takes_indices and node.inputs == (0,)))
        xs, Rxs = [cache.a[i] for i in node.inputs], [tangent.Ra[i] for i in node.inputs]
        out_l, saved = cache.a[l], cache.saved[l]
        if node.join is not None:
            dJ_dxs, R_dJ_dxs = node.join.r_backward_all(dJ_da, R_dJ_da, xs, Rxs, out_l, t, saved, V, node_ctx)
        else:
            g_x, R = node.layer.r_backward(dJ_da, R_dJ_da, xs[0], Rxs[0], out_l, t, saved, V, node_ctx)
            for key, value in [*((Key.at(kind, path), v) for kind, v in R.params.items()), *R.sub_params.items()]:
                key = ties.get(key, key)  # a tied parameter's H v is the sum over its uses
                out.params[key] = out.params[key] + value if key in out.params else value
            out.intermediates.update(R.intermediates)
            dJ_dxs, R_dJ_dxs = [g_x], [R.dJ_dx]
        for i, dJ_dx, R_dJ_dx in zip(node.inputs, dJ_dxs, R_dJ_dxs, strict=True):
            if dJ_dx is None:  # an input J does not depend on through this node (a size, indices)
                continue
            assert R_dJ_dx is not None
            before, R_before = g[i], Rg[i]
            g[i] = dJ_dx if before is None else before + dJ_dx  # (G) g[i] += dJ/da[i] from this reader
            Rg[i] = R_dJ_dx if R_before is None else R_before + R_dJ_dx  # R{(G)}: R{g[i]} += R{dJ/da[i]}
    out.dJ_dx = Rg[0]
    return g[0], out
