"""GraphNetwork: layers wired as a graph (skip connections, a tensor read twice).

A node is a layer and the earlier tensors it reads: a[0] = X, a[l] = node l's output, nodes in
topological order (every input of node l is some a[i], i < l), the network's output a[L]. The
network runs the one loop every network runs (refbp.nn.stack), with the nodes' wiring as its
``reads``; a stack of layers is the special case in which node l reads a[l-1]:

    forward:   a[l], cache[l] = node_l.forward(a[i] for i in inputs_l)             l = 1 .. L
    backward:  g[L] = dJ/da[L];  for l = L .. 1:
                   dJ/da[i] for i in inputs_l, dJ/dparams_l = node_l.backward(g[l], ...)
                   g[i] += dJ/da[i]                  (G) a tensor read by several nodes gets
                                                         the sum of its readers' gradients

A node of several inputs is a join (refbp.nn.joins: the sum of a skip connection, a
concatenation). What this module adds to a Network is the graph's presentation: nodes are named
as the model's traced forward names them (refbp.nn.fx_convert): "conv1", "relu", "add"; node l's
tensors still have the keys of layer l ("W3", "a3"), and ``grads.torch_named()`` also gives
dJ/d(each node's output) under the node's name, beside the parameters under torch's names;
``to_torch()`` rebuilds the graph as a torch.fx.GraphModule.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx
from torch import Tensor

from .keys import Key
from .layer import Layer
from .losses import Loss
from .network import Cache, Network, NetworkGradients
from .sequential import torch_modules_in_mode

__all__ = ["GraphGradients", "GraphNetwork", "Node"]

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

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ValueError(f"Node name {self.name!r} must be an identifier (letters, digits, underscores)")
        if not isinstance(self.layer, Layer):
            raise TypeError(f"Node {self.name!r}: layer must be a refbp layer, got {type(self.layer).__name__}")
        self.inputs = tuple(self.inputs)
        if not self.inputs or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in self.inputs):
            raise ValueError(f"Node {self.name!r}: inputs {self.inputs!r} must be one or more ints >= 0")
        if not self.layer.reads_several and len(self.inputs) != 1:
            raise ValueError(
                f"Node {self.name!r}: {self.layer.describe()} reads one tensor, got inputs {self.inputs}; "
                "only a join (refbp.nn.joins: Add, Cat) reads several"
            )


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
        self.reads = tuple(node.inputs for node in self.nodes)  # the loops follow the graph's wiring
        self._torch_names = None if torch_names is None else dict(torch_names)

    def describe(self) -> str:
        return (
            "; ".join(f"{node.name} = {node.layer.describe()}({', '.join(self._source(i) for i in node.inputs)})"
                      for node in self.nodes)
            + f"; loss {self.loss_name}"
        )  # fmt: skip

    def _source(self, i: int) -> str:
        return "X" if i == 0 else self.nodes[i - 1].name

    def _gradients(self, values: dict[str, Tensor]) -> GraphGradients:
        return GraphGradients(values, self)

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
