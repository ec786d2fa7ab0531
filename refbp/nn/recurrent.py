"""RNN, LSTM and GRU as refbp layers: torch's recurrent modules, one or more layers stacked.

A recurrent module of num_layers layers is a stack: layer k reads the output sequence of
layer k - 1 (the first reads x), and the module's output is the last layer's sequence

    out = h^(L)_1 .. h^(L)_T          (T, B, H), or (B, T, H) with batch_first

so its forward and backward are the stack's loop (refbp.nn.stack) over the stacked layers,
each a RecurrentLayer (refbp.nn.rnn, lstm, gru) with its own BPTT. Stacked layer k of the
module at network layer l sits at path (l, k): "W_ih2.1" is torch's ``weight_ih_l0``, "a2.1"
is stacked layer 1's output sequence, "h2.1.3" its h_3 (refbp.nn.recurrent_layer).

**In a torch.nn.Sequential** (``refbp.from_torch``) an nn.RNN/nn.LSTM/nn.GRU passes on its
output sequence; its final states are not used downstream:

    Sequential(Embedding(V, d), LSTM(d, H, batch_first=True), Linear(H, V))     a character model

(torch itself would hand the next module the tuple (out, (h_T, c_T))). ``to_torch()`` therefore
gives a TorchRNN/TorchLSTM/TorchGRU (refbp.nn.recurrent_layer): the torch module with the
same parameter names, whose forward returns the output sequence only, from the initial state
stored with it. Not supported: dropout between stacked layers, bidirectional, proj_size
(each refused with a clear error). ``recurrent_from_torch(module, h0=..., c0=...)`` converts
a module together with the initial state you would pass it.

**Second order** is the R-operator's loops over the same stack (refbp.nn.r_stack): each stacked
layer's tangent and R-backward through time (refbp.nn.recurrent_layer), R{a(l, k)} handed up
and R{dJ/da(l, k)} down exactly as the first-order loop hands a(l, k) and dJ/da(l, k).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import Tensor

from .gru import GRULayer
from .keys import Key
from .layer import BackwardContext, ForwardContext, Layer, LayerGradients, LayerTangent, Params, SecondContext, Tap
from .lstm import LSTMLayer
from .r_stack import stack_has_second_order, stack_r_backward, stack_tangent
from .recurrent_layer import RecurrentLayer, TorchGRU, TorchLSTM, TorchRNN, torch_recurrent
from .registry import register
from .rnn import RNNLayer
from .stack import StackCache, stack_backward, stack_forward, stack_keys, stack_torch_forward
from .validation import describe

__all__ = ["GRU", "LSTM", "RNN", "Recurrent", "recurrent_from_torch"]


class Recurrent(Layer):
    """A stack of recurrent layers of one kind (at least one), torch.nn.RNN/LSTM/GRU's map.

    Args:
        layers: the stacked layers, first to last: layer k + 1 reads layer k's output, so its
            d_in is layer k's H; all with one batch_first.
    """

    title = "Recurrent"
    layer_class: ClassVar[type[RecurrentLayer]]
    """The kind of layer stacked (RNNLayer, LSTMLayer, GRULayer): set by RNN, LSTM and GRU."""

    def __init__(self, *layers: RecurrentLayer) -> None:
        name = self.layer_class.__name__
        if not layers or not all(isinstance(layer, self.layer_class) for layer in layers):
            got = [type(layer).__name__ for layer in layers]
            raise TypeError(f"{self.title}(...) needs one or more {name}s, got {got}")
        for k in range(1, len(layers)):
            below, above = layers[k - 1], layers[k]
            if above.d_in != below.H:
                raise ValueError(f"layers[{k}] reads d_in = {above.d_in} but layers[{k - 1}] gives H = {below.H}")
            if above.batch_first != below.batch_first:
                raise ValueError(f"layers[{k}] has batch_first={above.batch_first}, layers[0] {layers[0].batch_first}")
            if ("b_ih" in above.params) != ("b_ih" in below.params):
                raise ValueError(f"layers[{k}] and layers[{k - 1}]: all layers have biases, or none (torch's bias=)")
            if getattr(above, "mode", None) != getattr(below, "mode", None):
                raise ValueError(f"layers[{k}] is {above.mode} but layers[{k - 1}] is {below.mode}")
        self.layers: list[RecurrentLayer] = list(layers)
        for k, layer in enumerate(self.layers):
            layer.index = k
        self.params = {}
        self.training = True

    @property
    def batch_first(self) -> bool:
        return self.layers[0].batch_first

    def sublayers(self) -> list[Layer]:
        return list(self.layers)

    def keys(self, path: tuple[int, ...]) -> list[Key]:
        return [*stack_keys(self.layers, path), Key("a", path)]

    def describe(self) -> str:
        first = self.layers[0].describe()
        size = f", {len(self.layers)} layers" if len(self.layers) > 1 else ""
        order = ", batch_first" if self.batch_first else ""
        return first[:-1] + size + order + ")"

    def equations(self) -> tuple[str, str]:
        return self.layers[0].equations()

    def check_input(self, x: Tensor, path: tuple[int, ...]) -> None:
        self.layers[0].check_input(x, (*path, 1))

    # ---- the manual path: the stack's loop over the stacked layers --------------------------
    def forward(self, x: Tensor, ctx: ForwardContext, path: tuple[int, ...]) -> tuple[Tensor, StackCache]:
        inner = stack_forward(self.layers, x, ctx, path)
        return inner.a[-1], inner  # the last layer's output sequence

    def backward(
        self, dJ_dout: Tensor, x: Tensor, out: Tensor, cache: StackCache, ctx: BackwardContext
    ) -> LayerGradients:
        # dJ/da(l) is dJ/da(l, L) too: the last stacked layer may overwrite it only when the caller
        # gave it up and nobody reports it (with intermediates kept, it is reported under both keys)
        inner_ctx = dataclasses.replace(ctx, overwrite=ctx.overwrite and not ctx.keep_intermediates)
        grads = stack_backward(self.layers, cache, [dJ_dout], inner_ctx, release=ctx.release)
        return LayerGradients(grads.dJ_dx, {}, grads.intermediates, grads.params)

    def cached_values(self, cache: StackCache, path: tuple[int, ...]) -> dict[Key, Tensor]:
        out: dict[Key, Tensor] = {}
        for k, layer in enumerate(self.layers, start=1):
            out.update(layer.cached_values(cache.saved[k], (*path, k)))
            out[Key("a", (*path, k))] = cache.a[k]
        return out

    def kinks(self, cache: StackCache, path: tuple[int, ...]) -> dict[Key, Tensor]:
        out: dict[Key, Tensor] = {}
        for k, layer in enumerate(self.layers, start=1):
            out.update(layer.kinks(cache.saved[k], (*path, k)))
        return out

    # ---- second order: the R-operator's loops over the stacked layers (refbp.nn.r_stack) ---------
    @property
    def has_second_order(self) -> bool:
        return stack_has_second_order(self.layers)

    def tangent(
        self, x: Tensor, Rx: Tensor | None, out: Tensor, cache: StackCache, V: Params, path: tuple[int, ...]
    ) -> LayerTangent:
        inner = stack_tangent(self.layers, cache, Rx, V, path)
        return LayerTangent(inner.Ra[-1], inner, inner.intermediates(path))  # type: ignore[arg-type]  # R{the last layer's sequence}

    def r_backward(
        self, g: Tensor, Rg: Tensor, x: Tensor, Rx: Tensor | None, out: Tensor, t: LayerTangent, cache: StackCache,
        V: Params, ctx: SecondContext,
    ) -> tuple[Tensor | None, LayerGradients]:  # fmt: skip
        g_x, R = stack_r_backward(self.layers, cache, t.cache, g, Rg, V, ctx)
        return g_x, LayerGradients(R.dJ_dx, {}, R.intermediates, R.params)

    # ---- the oracle ---------------------------------------------------------------------------
    def torch_forward(
        self, x: Tensor, p: Params, noise: Mapping[tuple[int, ...], Tensor], tap: Tap, path: tuple[int, ...]
    ) -> Tensor:
        return stack_torch_forward(self.layers, x, p, noise, tap, path)

    def to_torch(self) -> torch.nn.Module:
        """A TorchRNN/TorchLSTM/TorchGRU: torch's module, returning the output sequence only."""
        return torch_recurrent(self.layers, training=self.training)

    def torch_param_names(self, path: tuple[int, ...]) -> dict[Key, str]:
        return {key: name for k, layer in enumerate(self.layers, start=1)
                for key, name in layer.torch_param_names((*path, k)).items()}  # fmt: skip


class RNN(Recurrent):
    """torch.nn.RNN (tanh or relu) as a stack of RNNLayers."""

    title = "RNN"
    layer_class = RNNLayer


class LSTM(Recurrent):
    """torch.nn.LSTM as a stack of LSTMLayers."""

    title = "LSTM"
    layer_class = LSTMLayer


class GRU(Recurrent):
    """torch.nn.GRU as a stack of GRULayers."""

    title = "GRU"
    layer_class = GRULayer


def recurrent_from_torch(module: torch.nn.Module, *, h0: Tensor | None = None, c0: Tensor | None = None) -> Recurrent:
    """``module`` (torch.nn.RNN, LSTM or GRU) as a refbp RNN, LSTM or GRU with copies of its
    parameters, starting from the initial states you would pass it: h0 (and c0 for an LSTM),
    (num_layers, B, H) each, or None for zeros."""
    if not isinstance(module, (torch.nn.RNN, torch.nn.LSTM, torch.nn.GRU)):
        raise TypeError(f"module must be a torch.nn.RNN, LSTM or GRU, got {type(module).__name__}")
    L, H = module.num_layers, module.hidden_size
    if module.bidirectional:
        raise ValueError("bidirectional=True is not supported; refbp runs recurrent layers forward in time only")
    if getattr(module, "proj_size", 0):
        raise ValueError(f"proj_size={module.proj_size} is not supported; expected proj_size=0 (no projection)")
    if module.dropout and L > 1:
        raise ValueError(
            f"dropout={module.dropout} between stacked layers is not supported; expected dropout=0 "
            "(or put refbp's Dropout between single-layer modules)"
        )
    is_lstm = isinstance(module, torch.nn.LSTM)
    if c0 is not None and not is_lstm:
        raise ValueError(f"c0 is an LSTM's initial cell state; a {type(module).__name__} has none")
    for name, s in (("h0", h0), ("c0", c0)):
        if s is not None and (not isinstance(s, Tensor) or s.dim() != 3 or s.shape[0] != L or s.shape[2] != H):
            got = describe(s) if isinstance(s, Tensor) else type(s).__name__
            raise ValueError(f"{name} must be (num_layers, B, H) = ({L}, B, {H}), or None for zeros, got {got}")
    layers: list[RecurrentLayer] = []
    for k in range(L):
        weights = [getattr(module, f"{name}_l{k}", None) for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        W_ih, W_hh, b_ih, b_hh = (None if w is None else w.detach().clone() for w in weights)
        assert W_ih is not None and W_hh is not None
        h0_k = None if h0 is None else h0[k].detach().clone()
        options = {"h0": h0_k, "batch_first": module.batch_first, "index": k}
        if is_lstm:
            c0_k = None if c0 is None else c0[k].detach().clone()
            layers.append(LSTMLayer(W_ih, W_hh, b_ih, b_hh, c0=c0_k, **options))  # type: ignore[arg-type]
        elif isinstance(module, torch.nn.GRU):
            layers.append(GRULayer(W_ih, W_hh, b_ih, b_hh, **options))  # type: ignore[arg-type]
        else:
            layers.append(RNNLayer(W_ih, W_hh, b_ih, b_hh, nonlinearity=module.nonlinearity, **options))  # type: ignore[arg-type]
    stack = LSTM(*layers) if is_lstm else GRU(*layers) if isinstance(module, torch.nn.GRU) else RNN(*layers)
    stack.set_training(module.training)
    return stack


def _stored_state(module: torch.nn.Module, name: str) -> Tensor | None:
    """The initial state a TorchRNN/TorchLSTM/TorchGRU stores (None for torch's own modules)."""
    s = getattr(module, name, None)
    return s if isinstance(s, Tensor) else None


@register(torch.nn.RNN)
@register(torch.nn.LSTM)
@register(torch.nn.GRU)
@register(TorchRNN)
@register(TorchLSTM)
@register(TorchGRU)
def _from_recurrent(module: torch.nn.Module) -> Layer:
    return recurrent_from_torch(module, h0=_stored_state(module, "h0"), c0=_stored_state(module, "c0"))
