"""GraphNetwork: layers wired as a graph (skip connections, a tensor read twice), one loop each way.

A node is a layer and the earlier tensors it reads: a[0] = X, a[l] = node l's output, nodes in
topological order (every input of node l is some a[i], i < l), the network's output a[L]:

    forward:   a[l], cache[l] = node_l.forward(a[i] for i in inputs_l)             l = 1 .. L
    backward:  g[L] = dJ/da[L];  for l = L .. 1:
                   dJ/da[i] for i in inputs_l, dJ/dparams_l = node_l.backward(g[l], ...)
                   g[i] += dJ/da[i]                  (G) a tensor read by several nodes gets
                                                         the sum of its readers' gradients

Eq. (G) is the multivariable chain rule, written once: a residual block's x reaches its output
directly and through the branch, and its gradient is the sum of both. A chain of single-input
nodes is refbp.nn.stack's loop. A node of several inputs is a join (refbp.nn.joins: the sum
of a skip connection, a concatenation). Nodes are named as the model's traced forward names
them (refbp.nn.fx_convert): "conv1", "relu", "add"; node l's tensors still have the keys of
layer l ("W3", "a3"), and ``grads.torch_named()`` also gives dJ/d(each node's output) under
the node's name, beside the parameters under torch's names.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.fx
from torch import Tensor

from .joins import Join
from .keys import Key
from .layer import NO_TAP, BackwardContext, ForwardContext, Layer, Params, SecondContext, Tap
from .losses import Loss
from .network import Cache, Network, NetworkGradients, check_live_cache, keep_flag
from .noise import check_noise
from .r_graph import graph_r_backward, graph_tangent
from .r_stack import StackTangent
from .sequential import torch_modules_in_mode
from .stack import StackCache, StackGradients

__all__ = ["GraphGradients", "GraphNetwork", "Node", "graph_backward", "graph_forward", "graph_torch_forward"]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass
class Node:
    """One node of a graph network.

    Attributes:
        name: its name, an identifier ("conv1", "relu", "add_1"): the traced node's.
        layer: the layer it computes (a Join when it reads several tensors).
        inputs: what it reads: 0 for the input X, i for node i's output (i < its own number).
        module: the torch module's path in the model it came from ("layer1.0.conv1"), or None
            for a function call: where ``to_torch()`` puts its module.
    """

    name: str
    layer: Layer
    inputs: tuple[int, ...] = (0,)
    module: str | None = None
    join: Join | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ValueError(f"Node name {self.name!r} must be an identifier (letters, digits, underscores)")
        if not isinstance(self.layer, Layer):
            raise TypeError(f"Node {self.name!r}: layer must be a refbp layer, got {type(self.layer).__name__}")
        self.inputs = tuple(self.inputs)
        if not self.inputs or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in self.inputs):
            raise ValueError(f"Node {self.name!r}: inputs {self.inputs!r} must be one or more ints >= 0")
        self.join = self.layer if isinstance(self.layer, Join) else None
        if self.join is None and len(self.inputs) != 1:
            raise ValueError(
                f"Node {self.name!r}: {self.layer.describe()} reads one tensor, got inputs {self.inputs}; "
                "only a join (refbp.nn.joins: Add, Cat) reads several"
            )

    def forward(self, a: Sequence[Tensor], ctx: ForwardContext, path: tuple[int, ...]) -> tuple[Tensor, Any]:
        """(a[l], cache[l]) from the tensors it reads."""
        if self.join is not None:
            return self.join.forward_all([a[i] for i in self.inputs], ctx, path)
        return self.layer.forward(a[self.inputs[0]], ctx, path)

    def torch_forward(
        self, a: Sequence[Tensor], p: Params, noise: Mapping[tuple[int, ...], Tensor], tap: Tap, path: tuple[int, ...]
    ) -> Tensor:
        """The node's oracle on the oracle's tensors."""
        if self.join is not None:
            return self.join.torch_forward_all([a[i] for i in self.inputs])
        return self.layer.torch_forward(a[self.inputs[0]], p, noise, tap, path)

    def size(self, shapes: Sequence[tuple[int, ...]]) -> tuple[tuple[int, ...], int]:
        """(its output's shape, the entries its forward pass allocates), from its inputs' shapes."""
        if self.join is not None:
            out = self.join.size_all([shapes[i] for i in self.inputs])
            return out, math.prod(out)
        return self.layer.forward_size(shapes[self.inputs[0]])


# ---- the loops ------------------------------------------------------------------------------------
def graph_forward(nodes: Sequence[Node], X: Tensor, ctx: ForwardContext) -> StackCache:
    """a[0] = X, then a[l], cache[l] = node l's forward on the tensors it reads, l = 1 .. L."""
    a, saved = [X], [None]
    for l, node in enumerate(nodes, start=1):
        out, cache = node.forward(a, ctx, (l,))
        a.append(out)
        saved.append(cache)
    return StackCache(a, saved)


def graph_backward(
    nodes: Sequence[Node],
    cache: StackCache,
    dJ_da_L: Tensor,
    ctx: BackwardContext,
    *,
    takes_indices: bool,
    release: bool = False,
) -> StackGradients:
    """Every node's backward, L down to 1, from dJ/da[L]; eq. (G) sums a tensor's readers.

    ``ctx`` gives the options (its path is the graph's prefix, ()); ``takes_indices`` says X
    holds indices (no dJ/dX). No node may overwrite the gradient it is handed (the same
    tensor may also be a join's other input's or a kept intermediate). ``release`` drops a[l]
    and cache[l] once node l's backward has used them (its readers ran before it)."""
    out = StackGradients(None)
    ties = ctx.ties
    L = len(nodes)
    g: list[Tensor | None] = [None] * (L + 1)  # g[i] = dJ/da[i], summed as readers report
    g[L] = dJ_da_L
    for l in range(L, 0, -1):
        node, path = nodes[l - 1], (l,)
        dJ_da = g[l]
        g[l] = None
        if dJ_da is None:  # nothing above reads a[l]: J does not depend on it
            continue
        layer = node.layer
        alias = bool(ties) and any(Key.at(kind, path) in ties for kind in layer.decayed if kind in layer.params)
        if ctx.keep_intermediates:
            out.intermediates[Key.at("a", path)] = dJ_da
        need_dx = not (takes_indices and node.inputs == (0,))
        node_ctx = BackwardContext(
            path=path,
            keep_intermediates=ctx.keep_intermediates,
            overwrite=False,
            need_dx=need_dx,
            weight_decay=0.0 if alias else ctx.weight_decay,
            ties=ties,
            release=release,
        )
        if node.join is not None:
            xs = [cache.a[i] for i in node.inputs]
            dJ_dxs: list[Tensor | None] = list(node.join.backward_all(dJ_da, xs, cache.a[l], cache.saved[l], node_ctx))
        else:
            grads = layer.backward(dJ_da, cache.a[node.inputs[0]], cache.a[l], cache.saved[l], node_ctx)
            for key, value in [*((Key.at(k, path), v) for k, v in grads.params.items()), *grads.sub_params.items()]:
                key = ties.get(key, key)  # a tied parameter's gradient is the sum of its uses
                out.params[key] = out.params[key] + value if key in out.params else value
            out.intermediates.update(grads.intermediates)
            dJ_dxs = [grads.dJ_dx]
        for i, dJ_dx in zip(node.inputs, dJ_dxs, strict=True):
            if dJ_dx is not None:
                before = g[i]
                g[i] = dJ_dx if before is None else before + dJ_dx  # (G) g[i] += dJ/da[i] from this reader
        if release:  # every reader of a[l] has run: a[l] and node l's cache are used for the last time
            layer.release(cache.saved[l])
            cache.a[l] = torch.empty(0)
            cache.saved[l] = None
    out.dJ_dx = g[0]
    return out


def graph_torch_forward(
    nodes: Sequence[Node], X: Tensor, p: Params, noise: Mapping[tuple[int, ...], Tensor], tap: Tap
) -> Tensor:
    """The oracle of the graph: each node's torch_forward in turn, every a[l] reported to the tap."""
    a = [X]
    for l, node in enumerate(nodes, start=1):
        a.append(tap.intermediate(Key.at("a", (l,)), node.torch_forward(a, p, noise, tap, (l,))))
    return a[-1]


# ---- the network -------------------------------------------------------------------------------------
class GraphGradients(NetworkGradients):
    """NetworkGradients whose ``torch_named()`` also holds dJ/d(each node's output) under the
    node's name ("relu", "add"), between the parameters (torch's names) and "input"."""

    def torch_named(self) -> dict[str, Tensor]:
        named = super().torch_named()
        network = self.network
        assert isinstance(network, GraphNetwork)
        dJ_dX = named.pop("input", None)
        for l, node in enumerate(network.nodes, start=1):
            name = f"a{l}"
            if name in self and node.name not in named and node.name != "input":
                named[node.name] = self[name]
        if dJ_dX is not None:
            named["input"] = dJ_dX
        return named


class GraphNetwork(Network[Cache, GraphGradients, Layer]):
    """Nodes (refbp.nn.graph.Node) in topological order and a loss; node L's output is the network's.

    Args:
        nodes: node l (from 1) reads X (0) or earlier nodes' outputs; every node but the last
            is read by a later one. Node 1 reads X only.
        loss, weight_decay: as ``Network``.
        torch_names: parameter name ("W3") -> its names in the torch model it came from
            (``named_parameters()``'s; a tied one has several): what ``grads.torch_named()``
            uses. None: the names in ``to_torch()``.
    """

    def __init__(
        self,
        nodes: Sequence[Node],
        loss: str | Loss,
        *,
        weight_decay: float = 0.0,
        torch_names: Mapping[str, tuple[str, ...]] | None = None,
    ) -> None:
        if not isinstance(nodes, Sequence) or not nodes or not all(isinstance(n, Node) for n in nodes):
            raise TypeError(f"nodes must be a non-empty list of refbp.nn.graph.Node, got {type(nodes).__name__}")
        self.nodes: list[Node] = list(nodes)
        _check_wiring(self.nodes)
        super().__init__([node.layer for node in self.nodes], loss, weight_decay=weight_decay)
        self._torch_names = None if torch_names is None else dict(torch_names)

    @property
    def takes_indices(self) -> bool:
        return self.nodes[0].layer.takes_indices

    def describe(self) -> str:
        return (
            "; ".join(f"{node.name} = {node.layer.describe()}({', '.join(self._source(i) for i in node.inputs)})"
                      for node in self.nodes)
            + f"; loss {self.loss_name}"
        )  # fmt: skip

    def _source(self, i: int) -> str:
        return "X" if i == 0 else self.nodes[i - 1].name

    # ---- the passes ---------------------------------------------------------------------------
    def check_input(self, X: object) -> Tensor:
        X = super().check_input(X)  # node 1 reads X; so may others:
        for l, node in enumerate(self.nodes[1:], start=2):
            if 0 in node.inputs:
                node.layer.check_input(X, (l,))
        return X

    def forward_entries(self, shape: tuple[int, ...]) -> int:
        shapes, entries = [shape], math.prod(shape)
        for node in self.nodes:
            out, kept = node.size(shapes)
            shapes.append(out)
            entries += kept
        return 2 * entries

    def forward(
        self,
        X: Tensor | np.ndarray,
        *,
        keep_intermediates: bool | None = None,
        update_stats: bool = True,
        noise: Mapping[tuple[int, ...], Tensor] | None = None,
        keep_z: bool | None = None,
    ) -> Cache:
        """Run every node on the tensors it reads; options as ``Network.forward``."""
        keep = keep_flag(keep_intermediates, keep_z, "keep_z")
        X = self.check_input(X)
        check_noise(self.layers, noise)
        ctx = ForwardContext(keep_intermediates=keep, update_stats=update_stats, noise=noise)
        stack = graph_forward(self.nodes, X, ctx)
        drawn: dict[tuple[int, ...], Tensor] = {}
        for l, layer in enumerate(self.layers, start=1):
            drawn.update(layer.noise_of(stack.saved[l], (l,)))
        return self._cache(stack.a, stack.saved, drawn)

    def _backward(
        self, cache: Cache, upstream: list[Tensor], *, keep: bool, release_cache: bool, owned: bool
    ) -> GraphGradients:
        ctx = BackwardContext(path=(), keep_intermediates=keep, weight_decay=self.weight_decay, ties=self.ties)
        grads = graph_backward(
            self.nodes, cache, upstream.pop(), ctx, takes_indices=self.takes_indices, release=release_cache
        )
        if release_cache:
            cache.released = True
        values = {str(key): value for key, value in grads.params.items()}
        values.update({str(key): value for key, value in grads.intermediates.items()})
        if grads.dJ_dx is not None:
            values["X"] = grads.dJ_dx  # dJ/dX = g[0], summed over X's readers
        return self._gradients(values)

    def _gradients(self, values: dict[str, Tensor]) -> GraphGradients:
        return GraphGradients(values, self)

    def _check_cache(self, cache: object) -> None:
        cache = check_live_cache(cache)
        if cache.L != self.L:
            raise ValueError(f"cache has {cache.L} nodes; it does not come from this network ({self.L} nodes)")
        for l, node in enumerate(self.nodes, start=1):
            if node.join is None:
                try:
                    node.layer.check_input(cache.a[node.inputs[0]], (l,))
                except ValueError as err:
                    raise ValueError(f"cache does not come from this network: {err}") from err

    def torch_forward(self, X: Tensor, p: Params, noise: Mapping[tuple[int, ...], Tensor], tap: Tap = NO_TAP) -> Tensor:
        return graph_torch_forward(self.nodes, X, p, noise, tap)

    # ---- second order: the R-operator's loops over the graph (refbp.nn.r_graph) ---------------------
    def tangent_pass(self, cache: Cache, RX: Tensor | None, V: Params) -> StackTangent:
        """Every node's tangent along (R{X}, V), each from the tangents of the tensors it reads."""
        return graph_tangent(self.nodes, cache, RX, V)

    def r_backward_pass(
        self, cache: Cache, tangent: StackTangent, g: Tensor, Rg: Tensor, V: Params, ctx: SecondContext
    ) -> tuple[Tensor | None, StackGradients]:
        """Every node's R-backward from dJ/da(L) and R{dJ/da(L)}, eq. (G) applied to R{g} as well."""
        return graph_r_backward(self.nodes, cache, tangent, g, Rg, V, ctx, takes_indices=self.takes_indices)

    # ---- torch ---------------------------------------------------------------------------------
    def _targets(self) -> list[str]:
        """Where each node's module sits in ``to_torch()``: its model's path, or its own name
        for a function call (made unique against every module path and its parents)."""
        taken = {node.module for node in self.nodes if node.module is not None}
        taken |= {path.rsplit(".", k)[0] for path in list(taken) for k in range(path.count(".") + 1)}
        targets = []
        for node in self.nodes:
            target = node.module
            if target is None:
                target = node.name
                while target in taken:
                    target += "_op"
                taken.add(target)
            targets.append(target)
        return targets

    def _to_torch_names(self) -> dict[str, tuple[str, ...]]:
        """Parameter name -> its names in ``to_torch()``, each use once."""
        names: dict[Key, list[str]] = {}
        with self._torch_random_state_kept():
            for l, (node, target) in enumerate(zip(self.nodes, self._targets(), strict=True), start=1):
                n_modules = len(node.layer.torch_modules())
                for key, relative in node.layer.torch_param_names((l,)).items():
                    index, rest = relative.split(".", 1)
                    name = f"{target}.{rest}" if n_modules == 1 else f"{target}.{index}.{rest}"
                    listed = names.setdefault(self.ties.get(key, key), [])
                    if name not in listed:
                        listed.append(name)
        return {str(key): tuple(value) for key, value in names.items()}

    def torch_parameter_names(self) -> dict[str, tuple[str, ...]]:
        """Parameter name -> its names in the torch model it came from (``named_parameters()``),
        or in ``to_torch()`` for a network built by hand."""
        return dict(self._torch_names) if self._torch_names is not None else self._to_torch_names()

    def to_torch(self) -> torch.fx.GraphModule:
        """A torch.fx.GraphModule computing the same function: each node's torch module, called
        on the tensors it reads, at the model's module paths (so named_parameters() are the
        model's), a tied parameter one nn.Parameter, each module in its layer's train/eval mode."""
        graph = torch.fx.Graph()
        values = [graph.placeholder("x")]
        root: dict[str, Any] = {}
        with self._torch_random_state_kept():
            for node, target in zip(self.nodes, self._targets(), strict=True):
                if target not in root:
                    modules = torch_modules_in_mode(node.layer)
                    root[target] = modules[0] if len(modules) == 1 else torch.nn.Sequential(*modules)
                values.append(graph.call_module(target, tuple(values[i] for i in node.inputs)))
        graph.output(values[-1])
        module = torch.fx.GraphModule(root, graph)
        module.training = self.training  # its own flag only: each module keeps its layer's mode
        for names in self._to_torch_names().values():
            shared = module.get_parameter(names[0])
            for name in names[1:]:
                owner, _, attribute = name.rpartition(".")
                setattr(module.get_submodule(owner), attribute, shared)
        return module


def _check_wiring(nodes: list[Node]) -> None:
    """Topological order, unique names, every node but the last read later, indices only from X."""
    seen: set[str] = set()
    read = [False] * (len(nodes) + 1)
    for l, node in enumerate(nodes, start=1):
        if node.name in seen:
            raise ValueError(f"two nodes are named {node.name!r}; expected unique names")
        seen.add(node.name)
        late = [i for i in node.inputs if i >= l]
        if late:
            raise ValueError(f"node {l} ({node.name}) reads {late}: a node reads X (0) or earlier nodes only")
        for i in node.inputs:
            read[i] = True
        if node.layer.takes_indices and node.inputs != (0,):
            raise ValueError(
                f"node {l} ({node.name}, {node.layer.describe()}) reads indices: only the input X holds them"
            )
    if nodes[0].inputs and set(nodes[0].inputs) != {0}:
        raise ValueError(f"node 1 ({nodes[0].name}) must read the input X (0)")
    unread = [nodes[l - 1].name for l in range(1, len(nodes)) if not read[l]]
    if unread:
        raise ValueError(f"nodes {unread} are read by no later node: the output is the last node's")
    indices = nodes[0].layer.takes_indices
    for l, node in enumerate(nodes, start=1):
        if 0 in node.inputs and node.layer.takes_indices != indices:
            what = "indices" if indices else "values"
            raise ValueError(
                f"node {l} ({node.name}, {node.layer.describe()}) and node 1 ({nodes[0].name}) both read X but "
                f"disagree on whether it holds {what}"
            )
