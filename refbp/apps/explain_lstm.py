"""``refbp explain --model lstm``: backpropagation through time, one step and one gate at a time.

    refbp explain --model lstm                # LSTM(2 -> 2) over T = 3 steps + Linear head, seed 0
    refbp explain --model lstm --seed 4 --batch 2

The network reads B sequences of T = 3 vectors (batch_first), a 1-layer LSTM carries h_t and
c_t along them, and a Linear head classifies every step (cross-entropy over the (B, T)
positions). The forward pass is shown t = 1 .. T, gates first; the backward pass t = T .. 1,
with refbp.nn.lstm's equations:

    (R1) dJ/dh_t = dJ/dout_t (from the head) + dJ/dh_t through step t + 1
    (L4) dJ/do   = dJ/dh_t o tanh(c_t)
    (L5) dJ/dc_t = dJ/dh_t o o o (1 - tanh(c_t)^2) + dJ/dc_(t+1) o f_(t+1)     the cell path
    (L3) dJ/di = dJ/dc_t o g ;  dJ/df = dJ/dc_t o c_(t-1) ;  dJ/dg = dJ/dc_t o i

then the weights' gradients, summed over the steps (R3)-(R5). Keys are the recurrent layers'
own: "h1.1.3" is h_3 of stacked layer 1 of network layer 1 (refbp.nn.recurrent_layer). Every
number is the layer's own, checked against torch's step-by-step oracle and torch.autograd.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ..nn.layers import LSTM, Linear
from ..nn.lstm import LSTMLayer
from ..nn.network import Network
from ..nn.validation import check_int, check_seed
from .explain_guided import GuidedWalk, derived, drawn, forward, given, gradient
from .render import Entry, Page, Quantity
from .tensor_format import shape_text
from .walk import NetworkWalk, walk_network

__all__ = ["CLASSES", "HIDDEN", "INPUT", "STEPS", "lstm_network", "lstm_point", "lstm_walkthrough", "walk_lstm"]

STEPS = 3
"""T: long enough that a middle step receives gradient both from the head and from the step after."""

INPUT, HIDDEN, CLASSES = 2, 2, 3
"""d_in, H and the head's classes: every gate and state of a step is a (B, 2) matrix, printed in full."""


def lstm_network(seed: int = 0) -> Network:
    """LSTM(2 -> 2, batch_first) -> Linear(2 -> 3), cross-entropy; float64, drawn from ``seed``
    as torch.nn initialises (U(+-1/sqrt(H)) for the LSTM, U(+-1/sqrt(d_in)) for the head)."""
    generator = torch.Generator().manual_seed(seed)
    G_H, bound = 4 * HIDDEN, 1 / math.sqrt(HIDDEN)
    cell = LSTMLayer(
        drawn(generator, (G_H, INPUT), bound), drawn(generator, (G_H, HIDDEN), bound),
        drawn(generator, (G_H,), bound), drawn(generator, (G_H,), bound), batch_first=True,
    )  # fmt: skip
    head = Linear(drawn(generator, (CLASSES, HIDDEN), bound), drawn(generator, (CLASSES,), bound))
    return Network([LSTM(cell), head], "cross_entropy")


def lstm_point(batch: int = 1, seed: int = 0) -> tuple[Tensor, Tensor]:
    """B sequences X ~ U(-2, 2) (B, T, d_in) and a class per step y (B, T), from seed + 1."""
    generator = torch.Generator().manual_seed((seed + 1) % 2**32)
    X = drawn(generator, (batch, STEPS, INPUT), 2.0)  # (B, T, d_in)
    return X, torch.randint(0, CLASSES, (batch, STEPS), generator=generator)  # (B, T)


def lstm_walkthrough(*, seed: int = 0, batch: int = 1) -> GuidedWalk:
    """The walk through ``lstm_network(seed)`` at ``lstm_point(batch, seed)``."""
    check_seed(seed, "seed")
    check_int(batch, "batch", minimum=1, maximum=1 << 16)
    X, y = lstm_point(batch, seed)
    return walk_lstm(lstm_network(seed), X, y, seed=seed)


def _entry(section: str, tag: str, title: str, shapes: str, *quantities: Quantity, purpose: str = "") -> Entry:
    return Entry(section, tag, title, shapes, quantities, purpose=purpose)


def walk_lstm(net: Network, X: Tensor, y: Tensor, *, seed: int = 0) -> GuidedWalk:
    """``net`` (the layers of ``lstm_network``, possibly yours in their place) walked at (X, y)."""
    lstm, head = net.layers
    if not isinstance(lstm, LSTM) or len(lstm.layers) != 1 or not isinstance(head, Linear):
        raise TypeError(f"walk_lstm needs lstm_network's layers (a 1-layer LSTM, Linear), got {net.describe()}")
    walk = walk_network(net, X, y, description=net.describe())
    cell = lstm.layers[0]
    B, T, d_in = X.shape
    H, C = cell.H, head.W.shape[0]
    at = "1.1"  # stacked layer 1 of network layer 1: the keys' path
    bh, bH, b4H = f"({B}, {H})", f"({B}, {T}, {H})", f"({B}, {4 * H})"
    p = cell.params
    entries = [
        _entry("Given", "", "X = x_1 .. x_T", f"(B, T, d_in) = {shape_text(X)}", given("", X),
               purpose="the sequences, batch_first: row t of each matrix is x_t"),
        _entry("Given", "", "y", f"(B, T) = {shape_text(y)}", given("", y), purpose="a class for every step"),
        _entry("Given", "[1.1]", "W_ih, W_hh, b_ih, b_hh  (gates i, f, g, o stacked)",
               f"{shape_text(p['W_ih'])}, {shape_text(p['W_hh'])}, ({4 * H},) x 2",
               *(given(f"{kind}{at}", p[kind]) for kind in ("W_ih", "W_hh", "b_ih", "b_hh")),
               purpose="one set of weights, used at every step"),
        _entry("Given", "[2]", "W(2), b(2)", f"{shape_text(head.W)}, ({C},)", given("W2", head.W),
               given("b2", head.params["b"]), purpose="the head: logits for every step from h_t"),
        _entry("Forward pass", "[1.1]", "h_0 = c_0 = 0", bh, forward(walk, f"h_init({at})"),
               forward(walk, f"c_init({at})"), purpose="the initial states (torch's default: zeros)"),
    ]  # fmt: skip
    for t in range(1, T + 1):
        entries += [
            _entry("Forward pass", f"[t={t}]",
                   f"[i f g o] = [sig sig tanh sig](x_{t} W_ih^T + b_ih + h_{t - 1} W_hh^T + b_hh)",
                   f"({B}, {d_in}) ({d_in}, {4 * H}) + {bh} ({H}, {4 * H}) -> {b4H} -> 4 x {bh}",
                   *(forward(walk, f"{gate}({at}.{t})") for gate in "ifgo"),
                   purpose="(L1)-(L2): input, forget, candidate and output gates"),
            _entry("Forward pass", f"[t={t}]", f"c_{t} = f o c_{t - 1} + i o g ;  h_{t} = o o tanh(c_{t})",
                   f"{bh} each", forward(walk, f"c({at}.{t})"), forward(walk, f"h({at}.{t})"),
                   purpose="(L3)-(L4): the cell state carries on, h_t is the step's output"),
        ]  # fmt: skip
    a = walk.value("forward", "a(2)")[0]
    entries += [
        _entry("Forward pass", "[2]", "z = h_t W(2)^T + b(2), every step", f"{bH} ({C}, {H})^T -> {shape_text(a)}",
               forward(walk, "a(2)", "z = a(2), the logits")),
        _entry("Forward pass", "[J]", "J = mean over (b, t) of logsumexp(z_bt) - z_bt[y_bt]",
               f"{shape_text(a)}, {shape_text(y)} -> ()", forward(walk, "J")),
        _entry("Backward pass", "[J]", f"dJ/dz = (softmax(z) - onehot(y)) / {B * T}", f"{shape_text(a)}",
               gradient(walk, "a2")),
        _entry("Backward pass", "[2]", "dJ/dW(2) = sum_(b,t) dJ/dz^T h_t ;  dJ/db(2) ;  dJ/dout_t = dJ/dz_t W(2)",
               f"-> {shape_text(head.W)} ;  ({C},) ;  {bH}", gradient(walk, "W2"), gradient(walk, "b2"),
               gradient(walk, "a1", "dJ/dout = dJ/da1"),
               purpose="what the head hands the LSTM: dJ/dout_t, one (B, H) matrix per step"),
    ]  # fmt: skip
    for t in range(T, 0, -1):
        entries += _bptt_step(walk, t, T, at, bh)
    shared = "After the steps: the initial states and the shared weights"
    entries += [
        _entry(shared, "[1.1]", "dJ/dh_0, dJ/dc_0: what step 1 hands back", bh,
               gradient(walk, f"h_init{at}"), gradient(walk, f"c_init{at}"),
               purpose="dJ/dh_0 = da_1 W_hh and dJ/dc_0 = dJ/dc_1 o f_1: the end of the chain"),
        _entry(shared, "[1.1]", "dJ/dW_ih = sum_t da_t^T x_t ;  dJ/dW_hh = sum_t da_t^T h_(t-1) ;  "
               "dJ/db_ih = dJ/db_hh = sum_t sum_rows da_t",
               f"({4 * H}, {B * T}) ({B * T}, {d_in}) ;  ({4 * H}, {B * T}) ({B * T}, {H}) ;  ({4 * H},)",
               *(gradient(walk, f"{kind}{at}") for kind in ("W_ih", "W_hh", "b_ih", "b_hh")),
               purpose="(R3)-(R4): one weight at every step, so its gradient is the sum over the steps; da_t = "
               "dJ/d[a_i a_f a_g a_o] at step t, (L2) applied to the gates' gradients above"),
        _entry(shared, "[1.1]", "dJ/dx_t = da_t W_ih", f"{b4H} ({4 * H}, {d_in}) each step -> {shape_text(X)}",
               gradient(walk, "X"), purpose="(R5): what trains whatever produced X (an embedding)"),
    ]  # fmt: skip
    intro = (
        f"{net.describe()}, seed {seed}, B = {B} sequence{'s' if B > 1 else ''} of T = {T} steps, float64. "
        "Every number is the layers' own; forward values are checked against torch's step-by-step oracle, "
        "gradients against torch.autograd: a check mark says torch agrees, a cross that it differs (and where, by how "
        "much)."
    )
    links = (
        "The layers: refbp/nn/lstm.py, recurrent_layer.py; any network's walk: [explain_layers.md](explain_layers.md).",
    )
    page = Page("an LSTM, backpropagation through time step by step", intro, tuple(entries), links=links)
    return GuidedWalk(walk, page, seed)


def _bptt_step(walk: NetworkWalk, t: int, T: int, at: str, bh: str) -> list[Entry]:
    """Step t of backpropagation through time: dJ/dh_t from its two sources, the cell state's
    gradient with the cell path from step t + 1, and the four gates' gradients."""
    section = "Backpropagation through time, t = T .. 1"
    f_next = walk.value("forward", f"f({at}.{t + 1})")[0] if t < T else None

    def from_head(g: Callable[[str], Tensor]) -> Tensor:
        return g("a1")[:, t - 1]  # the head's dJ/dout_t: step t of dJ/da1 (B, T, H)   (B, H)

    def from_next_h(g: Callable[[str], Tensor]) -> Tensor:
        return g(f"h{at}.{t}") - from_head(g)  # (R1) read backwards: the total less the head's part   (B, H)

    def cell_path(g: Callable[[str], Tensor]) -> Tensor:
        if f_next is None:
            return torch.zeros_like(g(f"c{at}.{t}"))  # no step T + 1   (B, H)
        return g(f"c{at}.{t + 1}") * f_next  # dJ/dc_(t+1) o f_(t+1)   (B, H)

    nxt = f"step {t + 1}" if t < T else f"step {T + 1}, which does not exist: 0"
    return [
        _entry(section, f"[t={t}]", f"dJ/dh_{t} = dJ/dout_{t} + dJ/dh_{t} through step {t + 1}", f"{bh} each",
               derived(walk, f"dJ/dout_{t}, from the head", from_head),
               derived(walk, f"dJ/dh_{t} through {nxt}", from_next_h),
               gradient(walk, f"h{at}.{t}"),
               purpose="(R1): h_t feeds the head and the next step; a BPTT that drops the second term "
               "sees one step of the past only"),
        _entry(section, f"[t={t}]", f"dJ/dc_{t} = dJ/dh_{t} o o o (1 - tanh(c_{t})^2) + dJ/dc_{t + 1} o f_{t + 1}",
               f"{bh} each", derived(walk, f"dJ/dc_{t + 1} o f_{t + 1}, the cell path from {nxt}", cell_path),
               gradient(walk, f"c{at}.{t}"),
               purpose="(L5): through h_t, and along the cell state from step t + 1 (missing it is the LSTM's "
               "classic bug)"),
        _entry(section, f"[t={t}]", f"dJ/do = dJ/dh_{t} o tanh(c_{t}) ;  dJ/di = dJ/dc_{t} o g ;  "
               f"dJ/df = dJ/dc_{t} o c_{t - 1} ;  dJ/dg = dJ/dc_{t} o i", f"{bh} each",
               *(gradient(walk, f"{gate}{at}.{t}") for gate in "ifgo"),
               purpose=f"(L3)-(L4): the gates' gradients; through their sigmoid/tanh (L2) they give da_{t}, "
               f"which hands dJ/dh_{t - 1} = da_{t} W_hh and dJ/dc_{t - 1} = dJ/dc_{t} o f_{t} to "
               + (f"step {t - 1}" if t > 1 else "the initial states")),
    ]  # fmt: skip
