"""One entry of the bug catalogue: a wrong line of a backward pass beside the right one, and how
to build the backward pass that has it.

Every entry is the same record, whatever it breaks (a Dense layer of the MLP, a LayerNorm, a
GPT's attention, the all-reduce of data-parallel training): what is wrong and why, the networks
it applies to, and two steps that ``Bug.gradients`` runs on a copy of the right network:

    rewire:    the right network -> the network with the wrong line: a layer swapped for its
               twin (a subclass with that line), or the loss's gradient replaced; the one
               Network loop (refbp.nn.stack) runs it like any other network
    backward:  that network's gradients at the case's point: its own backward pass (the
               default), or the ranks of data-parallel training simulated in one process

The harness then checks those gradients against the right network's references.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from hypothesis import strategies as st
from torch import Tensor

from ..nn.layer import Layer
from ..nn.losses import Loss
from ..nn.network import Network
from ..nn.residual import Residual
from ..nn.second_order import hvp
from ..verify.cases import Case

__all__ = ["Backward", "Bug", "Noise", "Rewire", "loss_gradient", "network_backward", "swap", "twin_of", "unchanged"]

Noise = dict[tuple[int, ...], Tensor]
"""The random draws of a forward pass (dropout keep-masks), by layer path."""

Rewire = Callable[[Network], Network]
"""A copy of the right network (the rewire's own to change) -> the network with the wrong line."""

Backward = Callable[[Network, Case[Any], Noise], dict[str, Tensor]]
"""(the wrong network, the case, the right network's draws) -> name -> dJ/d(that)."""


def unchanged(net: Network) -> Network:
    """The network as it is: the wrong line is in how its gradients are combined (``backward``)."""
    return net


def network_backward(net: Network, case: Case[Any], noise: Noise) -> dict[str, Tensor]:
    """The network's own forward and backward pass at the case's point, with the given draws."""
    cache = net.forward(case.X, update_stats=False, noise=noise)
    return net.backward(cache, case.y).as_dict()


@dataclass(frozen=True)
class Bug:
    """One catalogue entry: the wrong line, the right line, why the first is wrong, where it
    applies, and how to build the backward pass that has it.

    Attributes:
        name: a short identifier (``refbp bugs --only NAME``).
        title: what the bug is, in a few words.
        equation: the equation the wrong line computes ("(6)", "attention (A5)", ...), or the
            layer it breaks ("LayerNorm"): the report's "eq." column.
        wrong: the wrong line, as people write it.
        right: the right line.
        why: one or two sentences on why the wrong line is wrong (or, for an equivalent entry,
            why it is not).
        where: the networks it applies to, in words.
        specs: () -> a hypothesis strategy of small float64 network specs it applies to (each
            with build(), to_json(), describe()), shrinkable to the smallest.
        rewire: a copy of the right network -> the network with the wrong line.
        backward: how the wrong network's gradients are computed (its own backward pass, or
            simulated ranks).
        equivalent: True when the "wrong" line computes the same gradients by another route
            (a mutant that no checker can or should flag).
        order: 1 when the wrong line is in a backward pass (its gradients are checked); 2 when
            it is in a second-order rule, a tangent or an R-backward (its H v is checked:
            ``products``, refbp.apps.second_order_bugs).
    """

    name: str
    title: str
    equation: str
    wrong: str
    right: str
    why: str
    where: str
    specs: Callable[[], st.SearchStrategy[Any]]
    rewire: Rewire = unchanged
    backward: Backward = network_backward
    equivalent: bool = False
    order: int = 1

    def products(self, case: Case[Any], v: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], Noise]:
        """The wrong network's H v along ``v`` at the case's point (an order-2 entry), and the
        random draws it used: the right network's own draw, made on a copy, as ``gradients``."""
        right = copy.deepcopy(case.net)
        noise = right.forward(case.X, update_stats=False).noise
        return hvp(self.rewire(right), case.X, case.y, v, noise=noise).Hv, noise

    def gradients(self, case: Case[Any]) -> tuple[dict[str, Tensor], Noise]:
        """The wrong gradients at the case's point, under the right network's names, and the
        random draws they used: the right network's own draw (made on a copy, so that the case
        is left as it was, and every call sees the same draw), so the references see the same
        function. A name the right network does not have (an untied head's own weight) is left out."""
        right = copy.deepcopy(case.net)
        noise = right.forward(case.X, update_stats=False).noise
        grads = self.backward(self.rewire(right), case, noise)
        names = set(case.net.names())
        return {name: g for name, g in grads.items() if name in names}, noise


# ---- rewiring ------------------------------------------------------------------------------------
def twin_of(cls: type[Layer]) -> Callable[[Layer], Layer]:
    """layer -> an instance of ``cls`` (a subclass of the layer's class, with the wrong line) that
    shares the layer's state: parameters, mode, running statistics, generator."""

    def make(layer: Layer) -> Layer:
        twin = object.__new__(cls)
        twin.__dict__.update(layer.__dict__)
        return twin

    return make


def swap(net: Network, target: type[Layer], twin: Callable[[Layer], Layer]) -> Network:
    """A network with every layer of class ``target`` (inner ones included) replaced by
    ``twin(layer)``, which shares that layer's parameters; the other layers are the same objects."""

    def replace_layer(layer: Layer) -> Layer:
        if isinstance(layer, Residual):  # the inner layers first: a twin residual holds twins too
            outer = twin_of(type(layer))(layer)
            assert isinstance(outer, Residual)
            outer.inner = [replace_layer(inner) for inner in layer.inner]
            layer = outer
        return twin(layer) if type(layer) is target else layer

    return Network([replace_layer(layer) for layer in net.layers], net.loss_fn, weight_decay=net.weight_decay)


def loss_gradient(wrong: Callable[[Loss, Tensor, Tensor], Tensor]) -> Rewire:
    """The network with eq. (4), dJ/da(L) = dloss/dy_hat, computed by ``wrong(loss, y_hat, y)``
    instead of the loss's own gradient (which ``wrong`` may call); J itself is unchanged."""

    def rewire(net: Network) -> Network:
        loss = net.loss_fn

        def gradient(y_hat: Tensor, y: Tensor) -> Tensor:
            return wrong(loss, y_hat, y)

        return Network(net.layers, replace(loss, gradient=gradient), weight_decay=net.weight_decay)

    return rewire
