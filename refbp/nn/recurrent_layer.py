"""One layer of a recurrent network run over a sequence: what RNN, LSTM and GRU layers share.

A recurrent layer reads a sequence x_1 .. x_T (each (B, d_in)) and carries a state from step
to step; its output is the sequence of hidden states h_1 .. h_T (each (B, H)):

    h_t = cell(x_t, h_{t-1})          t = 1 .. T,  h_0 the initial state (given, or zeros)

Every step uses the same W_ih (G H, d_in), W_hh (G H, H), b_ih and b_hh (G H,): G = 1 for
the plain RNN, 4 for the LSTM (gates i, f, g, o) and 3 for the GRU (r, z, n), stacked as
torch stacks them. The cells (refbp.nn.rnn, lstm, gru) say what one step computes; this
module runs the steps and does what every cell shares.

**Backpropagation through time.** Unrolled, the layer is a deep network with one weight shared
by every step, so (as for any tied weight) its gradient is the sum over the steps:

    (R1) dJ/dh_t = dJ/dout_t + dJ/dh_t through step t + 1       the step's output, and what the
                                                                  next step hands back (0 at t = T)
    (R2) da_t    = dJ/d(step t's pre-activations), by the cell    (B, G H)
    (R3) dJ/dW_ih = sum_t da_t^T x_t ;  dJ/db_ih = sum_t sum_rows da_t
    (R4) dJ/dW_hh = sum_t da_t^T h_{t-1} ;  dJ/db_hh = sum_t sum_rows da_t
    (R5) dJ/dx_t = da_t W_ih ;  dJ/dh_{t-1} through step t = da_t W_hh (+ the cell's direct path)

(the GRU's n gate reads W_hn h + b_hn inside r o (...), so its hidden-side da differs from
the input side's; the cells hand back both). A BPTT that drops the second term of (R1) is a
classic bug: every gradient then sees one step of the past only (tests/test_recurrent.py catches it).

**Second order** (refbp.nn.second_order), R{.} = d/dr (.)(w + r v) along V (V_ih, V_hh, V_bih,
V_bhh) and R{x}. The tangents run forward in time, R{h_0} = 0 (the initial state is a constant):

    (T1) R{a_t} = R{x_t} W_ih^T + x_t V_ih^T + V_bih  +  R{h_{t-1}} W_hh^T + h_{t-1} V_hh^T + V_bhh
         then the cell's own lines, differentiated (refbp.nn.rnn, lstm, gru): R{h_t}, R{c_t}, R{gates}

and the R-operator of BPTT runs backward in time, carrying R{dJ/dh_t} (and R{dJ/dc_t}) beside
the first-order carry: (R1) is linear, R{dJ/dh_t} = R{dJ/dout_t} + R{what step t + 1 hands back},
and (R3)-(R5) are Linear's R-backward (refbp.nn.linear) on every step's rows at once:

    (RR3) (H v)_W_ih = sum_t R{da_t}^T x_t + da_t^T R{x_t} ;  (H v)_b_ih = sum_t sum_rows R{da_t}
    (RR4) (H v)_W_hh = sum_t R{da_t}^T h_{t-1} + da_t^T R{h_{t-1}} ;  (H v)_b_hh = sum_t sum_rows R{da_t}
    (RR5) R{dJ/dx_t} = R{da_t} W_ih + da_t V_ih ;  R{dJ/dh_{t-1} through step t} = R{da_t} W_hh + da_t V_hh

The terms that carry a first derivative (da_t, dJ/dh_t, ...) are known once the first-order BPTT
has run (``through_time``, every step kept): Gauss-Newton drops them (``ctx.first`` = 0).

**Names.** The layer's parameters are W_ih, W_hh, b_ih, b_hh at its path; in a stacked
RNN/LSTM/GRU (refbp.nn.recurrent) stacked layer k of network layer l has path (l, k):
"W_ih2.1" is torch's ``weight_ih_l0`` of the recurrent module at layer 2. Each step's
intermediates (h_t, the LSTM's c_t, the gates) are keys one level further down, at (l, k, t):
"h2.1.3" is h_3 of stacked layer 1 of layer 2, "c2.1.3" its cell state. Steps are counted
from 1, so that the paths parse and sort with refbp.nn.keys (step 10 after step 9); the
initial state is "h_init2.1" (and "c_init2.1"). A layer lists the step keys of the sequence
length of its last forward pass (``steps``): which keys exist depends on T.

**Layout.** ``batch_first`` reads and writes (B, T, d) as torch does; the steps run over a
time-major (T, B, d) view either way. The initial state is (B, H): the same batch size as x.
dJ/dout is read through that view, not copied; (R3) and (R5) take every step's rows in the
order x is stored when da_t is stored so too (then dJ/dx needs no transposed copy), and (R4)
runs step by step where one product over all steps would need a copy.

**A training step** (``keep_intermediates=False``, the cache released after the backward) keeps
and allocates less, as autograd frees saved tensors: the RNN drops z_t after the forward (its
f' reads h_t) and writes dJ/dz_t over the dJ/dout it was given; the GRU writes each step's da_t
over that step's gates and dJ/dh_n over its h_n as the steps consume them (``through_time``'s
``own`` and ``consume``). The numbers are the same as the full mode's.
"""

from __future__ import annotations

import dataclasses
from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from .keys import Key
from .layer import BackwardContext, ForwardContext, Layer, LayerGradients, LayerTangent, Params, SecondContext, Tap
from .linear import linear_map, linear_r_backward, linear_tangent
from .validation import describe

__all__ = [
    "TORCH_PARAM_NAMES",
    "BPTTGradients",
    "RecurrentCache",
    "RecurrentLayer",
    "TorchGRU",
    "TorchLSTM",
    "TorchRNN",
    "torch_recurrent",
]


TORCH_PARAM_NAMES = {"W_ih": "weight_ih", "W_hh": "weight_hh", "b_ih": "bias_ih", "b_hh": "bias_hh"}
"""refbp's kind -> torch's name of that parameter of stacked layer k, less its "_l{k}"."""


@dataclass
class RecurrentCache:
    """What a recurrent layer's forward pass keeps, every step's, time-major.

    Attributes:
        h: (T + 1, B, H) the hidden states: h[0] the initial state, h[t] = h_t.
        gates: (T, B, G H) each step's gates, as the cell keeps them (RNN: the pre-activation
            z; LSTM: i, f, g, o after their sigmoid/tanh; GRU: r, z, n after theirs).
        c: (T + 1, B, H) the LSTM's cell states, c[0] the initial one; None for the others.
        hn: (T, B, H) the GRU's W_hn h_{t-1} + b_hn (r multiplies it); None for the others.
    """

    h: Tensor
    gates: Tensor
    c: Tensor | None = None
    hn: Tensor | None = None


@dataclass
class BPTTGradients:
    """What a cell's backward through time hands back to the layer.

    Attributes:
        da_x: (T, B, G H) dJ/d(each step's input-side pre-activations x_t W_ih^T + b_ih).
        da_h: (T, B, G H) dJ/d(each step's hidden-side pre-activations h_{t-1} W_hh^T + b_hh);
            the same tensor as ``da_x`` except in the GRU.
        initial: state kind ("h", "c") -> dJ/d(its initial value)   (B, H).
        steps: intermediate kind -> dJ/d(it) at every step   (T, B, H), when kept.
        da_h_n: (T, B, H) the GRU's dJ/dh_n in a training step that consumed its cache: the
            hidden side is then not built whole, but is ``da_h`` (= da_x) with its last H columns
            (da_n) replaced by these. None otherwise.
    """

    da_x: Tensor
    da_h: Tensor
    initial: dict[str, Tensor]
    steps: dict[str, Tensor] = field(default_factory=dict)
    da_h_n: Tensor | None = None


class RecurrentLayer(Layer):
    """One (stacked) layer of an RNN, LSTM or GRU: parameters, initial state, the loop over steps.

    Args:
        W_ih: (G H, d_in), torch's ``weight_ih_l{k}``.  W_hh: (G H, H), ``weight_hh_l{k}``.
        b_ih, b_hh: (G H,) each, or both None (torch's ``bias=False``).
        h0: (B, H) the initial hidden state, or None for zeros.
        batch_first: x and the output are (B, T, d) (True) or (T, B, d) (False), as torch's.
        index: k, which layer of a stack this is (0 for the first): torch names its
            parameters ``weight_ih_l{k}``, ...
    """

    gate_count: ClassVar[int] = 1
    """G: how many gates the weight matrices stack (W_ih is (G H, d_in))."""
    state_kinds: ClassVar[tuple[str, ...]] = ("h",)
    """The states carried from step to step (the LSTM's are h and c)."""
    step_kinds: ClassVar[tuple[str, ...]] = ("h",)
    """Intermediates reported at every step, in the order a step computes them."""
    decayed = ("W_ih", "W_hh")

    def __init__(
        self,
        W_ih: Tensor,
        W_hh: Tensor,
        b_ih: Tensor | None = None,
        b_hh: Tensor | None = None,
        *,
        h0: Tensor | None = None,
        batch_first: bool = False,
        index: int = 0,
    ) -> None:
        G = self.gate_count
        if not isinstance(W_hh, Tensor) or W_hh.dim() != 2 or W_hh.shape[0] != G * W_hh.shape[1]:
            got = describe(W_hh) if isinstance(W_hh, Tensor) else type(W_hh).__name__
            raise ValueError(f"W_hh must be ({G} H, H), {G} gates stacked, got {got}")
        H = int(W_hh.shape[1])
        if not isinstance(W_ih, Tensor) or W_ih.dim() != 2 or W_ih.shape[0] != G * H:
            got = describe(W_ih) if isinstance(W_ih, Tensor) else type(W_ih).__name__
            raise ValueError(f"W_ih must be ({G * H}, d_in) for W_hh of shape {tuple(W_hh.shape)}, got {got}")
        if (b_ih is None) != (b_hh is None):
            raise ValueError("b_ih and b_hh must both be given or both be None (torch's bias=True or bias=False)")
        for name, b in (("b_ih", b_ih), ("b_hh", b_hh)):
            if b is not None and (not isinstance(b, Tensor) or tuple(b.shape) != (G * H,)):
                got = describe(b) if isinstance(b, Tensor) else type(b).__name__
                raise ValueError(f"{name} must have shape ({G * H},) or be None, got {got}")
        if not isinstance(batch_first, bool):
            raise TypeError(f"batch_first must be a bool, got {batch_first!r}")
        self.params = {"W_ih": W_ih, "W_hh": W_hh}
        if b_ih is not None and b_hh is not None:
            self.params |= {"b_ih": b_ih, "b_hh": b_hh}
        self.H, self.d_in = H, int(W_ih.shape[1])
        self.h0 = self._check_state(h0, "h0")
        self.batch_first = batch_first
        self.index = index
        self.steps = 0
        self.training = True

    def _check_state(self, s: Tensor | None, name: str) -> Tensor | None:
        if s is not None and (not isinstance(s, Tensor) or s.dim() != 2 or s.shape[1] != self.H):
            got = describe(s) if isinstance(s, Tensor) else type(s).__name__
            raise ValueError(f"{name} must be (B, H) = (B, {self.H}), or None for zeros, got {got}")
        return s

    # ---- description -----------------------------------------------------------------------
    @property
    @abstractmethod
    def mode(self) -> str:
        """torch's name of the cell: "RNN_TANH", "RNN_RELU", "LSTM" or "GRU"."""

    @property
    def intermediates(self) -> tuple[str, ...]:
        return tuple(f"{kind}_init" for kind in self.state_kinds)

    def keys(self, path: tuple[int, ...]) -> list[Key]:
        """Parameters, the initial states, every step's intermediates (step by step, in the
        order they are computed), the output a. The steps are those of the last forward pass."""
        out = [Key(kind, path) for kind in [*self.params, *self.intermediates]]
        out += [Key(kind, (*path, t)) for t in range(1, self.steps + 1) for kind in self.step_kinds]
        return [*out, Key("a", path)]

    def buffers(self) -> dict[str, Tensor]:
        return {f"{kind}0": s for kind in self.state_kinds if (s := getattr(self, f"{kind}0")) is not None}

    def describe(self) -> str:
        bias = "" if "b_ih" in self.params else ", no bias"
        return f"{self.title}({self.d_in} -> {self.H}{bias})"

    def check_input(self, x: Tensor, path: tuple[int, ...]) -> None:
        layout = "(B, T, d_in)" if self.batch_first else "(T, B, d_in)"
        where = ".".join(map(str, path))
        if x.dim() != 3 or x.shape[-1] != self.d_in:
            raise ValueError(
                f"layer {where} ({self.describe()}) needs input {layout}, d_in = {self.d_in}, got {describe(x)}"
            )
        B = x.shape[0 if self.batch_first else 1]
        for kind in self.state_kinds:
            s = getattr(self, f"{kind}0")
            if s is not None and s.shape[0] != B:
                raise ValueError(
                    f"layer {where} ({self.describe()}): its initial state {kind}0 has {describe(s)} "
                    f"for a batch of {s.shape[0]}, but the input {describe(x)} is a batch of {B}"
                )

    def time_major(self, t: Tensor) -> Tensor:
        """(T, B, d) whatever the layout: a view."""
        return t.transpose(0, 1) if self.batch_first else t

    def in_layout(self, t: Tensor) -> Tensor:
        """A (T, B, d) tensor in the layer's layout, contiguous."""
        return t.transpose(0, 1).contiguous() if self.batch_first else t.contiguous()

    def initial_state(self, kind: str, B: int, like: Tensor) -> Tensor:
        """The initial value of a state (B, H): the one given, or zeros."""
        s = getattr(self, f"{kind}0")
        return s.to(device=like.device, dtype=like.dtype) if s is not None else like.new_zeros(B, self.H)

    # ---- what each cell says -----------------------------------------------------------------
    @abstractmethod
    def run(self, xw: Tensor, state: dict[str, Tensor]) -> RecurrentCache:
        """Every step forward, from xw = x_t W_ih^T + b_ih for all t (T, B, G H) and the
        initial states by kind (B, H)."""

    @abstractmethod
    def through_time(
        self, dJ_dout: Tensor, cache: RecurrentCache, *, keep: bool, own: bool = False, consume: bool = False
    ) -> BPTTGradients:
        """Every step backward, t = T .. 1, from dJ/dout (T, B, H), a view in the layer's layout;
        ``keep``: report dJ/d(every step's intermediates); ``own``: dJ/dout's storage is the
        cell's to overwrite (step t reads only its own rows of it); ``consume``: so is the
        cache's (it is dropped after this call)."""

    @abstractmethod
    def torch_step(
        self, x_t: Tensor, state: dict[str, Tensor], w: Mapping[str, Tensor | None], tap: Tap, path: tuple[int, ...]
    ) -> dict[str, Tensor]:
        """The oracle of one step from x_t (B, d_in) and the states by kind (B, H): the new
        states, each intermediate told to ``tap`` at ``path`` (the step's path). ``w`` holds
        W_ih, W_hh, b_ih, b_hh (the biases None without bias)."""

    def step_values(self, cache: RecurrentCache) -> dict[str, Tensor]:
        """Intermediate kind -> its value at every step (T, B, H), from the cache."""
        return {"h": cache.h[1:]}

    def total_dJ_dh(self, dJ_dout_t: Tensor, from_next: Tensor) -> Tensor:
        """(R1) dJ/dh_t = dJ/dout_t + what step t + 1 hands back   (B, H)."""
        return dJ_dout_t + from_next

    def total_R_dJ_dh(self, R_dout_t: Tensor, R_from_next: Tensor) -> Tensor:
        """R{(R1)}: R{dJ/dh_t} = R{dJ/dout_t} + R{what step t + 1 hands back}   (B, H). (R1) is
        linear, so its R is the same line (a BPTT that drops the second term drops it in both)."""
        return self.total_dJ_dh(R_dout_t, R_from_next)

    # ---- what each cell says to second order ---------------------------------------------------
    @abstractmethod
    def tangent_through_time(self, Rxw: Tensor, Rhw: Tensor, cache: RecurrentCache, V_hh: Tensor) -> RecurrentCache:
        """Every step's tangents, t = 1 .. T, as a cache of R{.}s (R{h}, R{gates}, R{c}, R{h_n}),
        from (T1)'s parts known before the loop: Rxw = R{x_t W_ih^T + b_ih} and Rhw = h_{t-1}
        V_hh^T + V_bhh, both (T, B, G H); the cell adds R{h_{t-1}} W_hh^T step by step."""

    @abstractmethod
    def r_through_time(
        self,
        Rg: Tensor,
        cache: RecurrentCache,
        Rcache: RecurrentCache,
        grads: BPTTGradients,
        V_hh: Tensor,
        first: float,
    ) -> BPTTGradients:
        """Every step's R-backward, t = T .. 1, from R{dJ/dout} (T, B, H), the tangents ``Rcache``
        and the first-order BPTT ``grads`` (every step kept): the R{.} of each of ``grads``'s
        fields. ``first``: the factor of the terms that carry a first derivative (0 or 1)."""

    # ---- the manual path ---------------------------------------------------------------------
    def forward(self, x: Tensor, ctx: ForwardContext, path: tuple[int, ...]) -> tuple[Tensor, RecurrentCache]:
        xs = self.time_major(x)  # (T, B, d_in)
        T, B, _ = xs.shape
        self.steps = T
        W_ih, b_ih = self.params["W_ih"], self.params.get("b_ih")
        rows = xs.reshape(T * B, self.d_in)  # (T B, d_in)
        xw = rows @ W_ih.T if b_ih is None else torch.addmm(b_ih, rows, W_ih.T)  # every step's x_t W_ih^T + b_ih
        state = {kind: self.initial_state(kind, B, x) for kind in self.state_kinds}  # (B, H) each
        cache = self.run(xw.view(T, B, -1), state)
        if not ctx.keep_intermediates:
            self.drop_unread(cache)
        return self.in_layout(cache.h[1:]), cache  # h_1 .. h_T   (T, B, H) or (B, T, H)

    def drop_unread(self, cache: RecurrentCache) -> None:
        """Drop from a training step's cache what the first-order backward does not read (the
        teaching view and second order keep everything): nothing, unless the cell says."""

    def backward(
        self, dJ_dout: Tensor, x: Tensor, out: Tensor, cache: RecurrentCache, ctx: BackwardContext
    ) -> LayerGradients:
        xs = self.time_major(x)  # (T, B, d_in)
        T = xs.shape[0]
        g = self.time_major(dJ_dout)  # (T, B, H), a view in either layout: the steps read (B, H) rows of it
        lean = not ctx.keep_intermediates
        # the cell may write its da into dJ/dout's storage (given up by the loop) and into its
        # cache's (dropped after this call)
        grads = self.through_time(g, cache, keep=not lean, own=ctx.overwrite and lean, consume=ctx.release and lean)
        da_x, x_rows, batch_first = _rows_in_one_order(grads.da_x, xs)  # (T B, G H), (T B, d_in): views if they can
        h_prev = cache.h[:-1]  # (T, B, H)
        # the hidden side in column blocks: whole, or (the GRU's) da_x's r and z parts and dJ/dh_n
        hidden = [grads.da_h] if grads.da_h_n is None else [grads.da_h[..., : -self.H], grads.da_h_n]
        params = {
            "W_ih": da_x.T @ x_rows,  # (R3) sum_t da_t^T x_t   (G H, d_in)
            "W_hh": torch.cat([_sum_over_steps(block, h_prev) for block in hidden]),  # (R4) sum_t da_t^T h_{t-1}
        }
        if "b_ih" in self.params:
            params["b_ih"] = da_x.sum(dim=0)  # (R3) sum_t sum_rows da_t   (G H,)
            params["b_hh"] = torch.cat([block.sum(dim=(0, 1)) for block in hidden])  # (R4)
        if ctx.weight_decay:
            for kind in self.decayed:
                params[kind].add_(self.params[kind], alpha=ctx.weight_decay)  # + lambda W
        dJ_dx = None
        if ctx.need_dx:
            rows = da_x @ self.params["W_ih"]  # (R5) da_t W_ih, every step's rows in da_x's order   (T B, d_in)
            steps = rows.view(-1, T, self.d_in).transpose(0, 1) if batch_first else rows.view(T, -1, self.d_in)
            dJ_dx = self.in_layout(steps)  # no copy when the rows are already in the layer's layout
        kept: dict[Key, Tensor] = {}
        if ctx.keep_intermediates:
            kept = {Key(f"{kind}_init", ctx.path): g for kind, g in grads.initial.items()}
            for kind, g in grads.steps.items():
                kept |= {Key(kind, (*ctx.path, t)): g[t - 1] for t in range(1, T + 1)}
        return LayerGradients(dJ_dx, params, kept)

    # ---- second order ---------------------------------------------------------------------------
    def tangent(
        self, x: Tensor, Rx: Tensor | None, out: Tensor, cache: RecurrentCache, V: Params, path: tuple[int, ...]
    ) -> LayerTangent:
        """(T1) and the cell's tangents; LayerTangent.cache is the RecurrentCache of R{.}s, its
        intermediates R{h_t} (and R{c_t}, R{gates}) at every step's key."""
        xs = self.time_major(x)  # (T, B, d_in)
        Rxs = None if Rx is None else self.time_major(Rx)  # (T, B, d_in)
        V_bih, V_bhh = (V(path, "b_ih"), V(path, "b_hh")) if "b_ih" in self.params else (None, None)
        V_hh = V(path, "W_hh")
        Rxw = linear_tangent(xs, Rxs, self.params["W_ih"], V(path, "W_ih"), V_bih)  # R{x_t} W_ih^T + x_t V_ih^T + V_bih
        Rhw = linear_map(cache.h[:-1], V_hh, V_bhh)  # h_(t-1) V_hh^T + V_bhh   (T, B, G H)
        Rcache = self.tangent_through_time(Rxw, Rhw, cache, V_hh)
        return LayerTangent(self.in_layout(Rcache.h[1:]), Rcache, self.cached_values(Rcache, path))

    def r_backward(
        self, g: Tensor, Rg: Tensor, x: Tensor, Rx: Tensor | None, out: Tensor, t: LayerTangent,
        cache: RecurrentCache, V: Params, ctx: SecondContext,
    ) -> tuple[Tensor | None, LayerGradients]:  # fmt: skip
        """The first-order BPTT (every step kept), then its R backward in time, then (RR3)-(RR5)."""
        Rcache: RecurrentCache = t.cache
        xs = self.time_major(x)  # (T, B, d_in)
        Rxs = None if Rx is None else self.time_major(Rx)
        T = xs.shape[0]
        W_ih, W_hh, V_ih, V_hh = self.params["W_ih"], self.params["W_hh"], V(ctx.path, "W_ih"), V(ctx.path, "W_hh")
        grads = self.through_time(self.time_major(g).contiguous(), cache, keep=True)  # dJ/d(.) at every step
        R = self.r_through_time(self.time_major(Rg).contiguous(), cache, Rcache, grads, V_hh, ctx.first)
        bias = "b_ih" in self.params
        # (RR3), (RR5): the input side is Linear's R-backward over every step's rows
        g_x, R_in = linear_r_backward(grads.da_x, R.da_x, xs, Rxs, W_ih, V_ih, ctx, bias=bias)
        # (RR4): the hidden side's, from h_(t-1) and R{h_(t-1)} (its R{dJ/dh_(t-1)} ran inside the loop)
        hidden = dataclasses.replace(ctx, need_dx=False)
        _, R_hh = linear_r_backward(grads.da_h, R.da_h, cache.h[:-1], Rcache.h[:-1], W_hh, V_hh, hidden, bias=bias)
        params = {f"{kind}_ih": Hv for kind, Hv in R_in.params.items()}  # "W" -> "W_ih", "b" -> "b_ih"
        params |= {f"{kind}_hh": Hv for kind, Hv in R_hh.params.items()}
        kept: dict[Key, Tensor] = {}
        if ctx.keep_intermediates:
            kept = {Key(f"{kind}_init", ctx.path): Rs for kind, Rs in R.initial.items()}  # R{dJ/dh_0}, R{dJ/dc_0}
            for kind, Rs in R.steps.items():
                kept |= {Key(kind, (*ctx.path, s)): Rs[s - 1] for s in range(1, T + 1)}
        if g_x is None or R_in.dJ_dx is None:
            return None, LayerGradients(None, params, kept)
        return self.in_layout(g_x), LayerGradients(self.in_layout(R_in.dJ_dx), params, kept)

    def cached_values(self, cache: RecurrentCache, path: tuple[int, ...]) -> dict[Key, Tensor]:
        out = {Key("h_init", path): cache.h[0]}
        if cache.c is not None:
            out[Key("c_init", path)] = cache.c[0]
        for kind, values in self.step_values(cache).items():
            out |= {Key(kind, (*path, t)): values[t - 1] for t in range(1, values.shape[0] + 1)}
        return out

    def release(self, cache: RecurrentCache) -> None:
        cache.h = cache.gates = torch.empty(0)
        cache.c = cache.hn = None

    # ---- the oracle ---------------------------------------------------------------------------
    def torch_forward(
        self, x: Tensor, p: Params, noise: Mapping[tuple[int, ...], Tensor], tap: Tap, path: tuple[int, ...]
    ) -> Tensor:
        """The steps one by one from torch functions (the cell's ``torch_step``), every state
        told to ``tap``.

        The initial state is a constant, not a parameter: so that autograd has a node whose
        gradient is dJ/dh_0 (and a tap can report it), it enters the graph as h_0 + 0 x_1[:, :1],
        which adds exactly 0 to dJ/dx."""
        xs = self.time_major(x)  # (T, B, d_in)
        B = xs.shape[1]
        anchor = xs[0, :, :1] * 0.0  # (B, 1) zeros that autograd follows back to x
        state = {
            kind: tap.intermediate(Key(f"{kind}_init", path), self.initial_state(kind, B, x) + anchor)
            for kind in self.state_kinds
        }
        w = {kind: p(path, kind) if kind in self.params else None for kind in TORCH_PARAM_NAMES}
        hs = []
        for t in range(1, xs.shape[0] + 1):
            state = self.torch_step(xs[t - 1], state, w, tap, (*path, t))
            hs.append(state["h"])
        out = torch.stack(hs)  # (T, B, H)
        return out.transpose(0, 1) if self.batch_first else out

    def to_torch(self) -> torch.nn.Module:
        return torch_recurrent([self], training=self.training)

    def torch_param_names(self, path: tuple[int, ...]) -> dict[Key, str]:
        return {Key(kind, path): f"0.{TORCH_PARAM_NAMES[kind]}_l{self.index}" for kind in self.params}


class _SequenceOnly(torch.nn.Module):
    """What TorchRNN and TorchGRU add to torch's module: a stored initial state ``h0``
    (num_layers, B, H) or None for zeros, and a forward that returns the output sequence only
    (what a Sequential passes on). Listed before torch's class, so ``super()`` is torch's."""

    h0: Tensor | None

    def __init__(self, *args: Any, h0: Tensor | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("h0", h0)

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        return super().forward(input, self.h0 if hx is None else hx)[0]


class TorchRNN(_SequenceOnly, torch.nn.RNN):  # type: ignore[misc]  # forward returns the sequence only
    """torch.nn.RNN that returns its output sequence only, from its stored ``h0`` or zeros:
    what ``RNN.to_torch()`` gives."""


class TorchGRU(_SequenceOnly, torch.nn.GRU):  # type: ignore[misc]  # likewise
    """torch.nn.GRU that returns its output sequence only, from its stored ``h0`` or zeros."""


class TorchLSTM(torch.nn.LSTM):
    """torch.nn.LSTM that returns its output sequence only, from its stored initial states
    ``h0`` and ``c0`` (num_layers, B, H) each, or zeros."""

    h0: Tensor | None
    c0: Tensor | None

    def __init__(self, *args: Any, h0: Tensor | None = None, c0: Tensor | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("h0", h0)
        self.register_buffer("c0", c0)

    def forward(self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None) -> Tensor:  # type: ignore[override]
        if hx is None and self.h0 is not None and self.c0 is not None:
            hx = (self.h0, self.c0)
        return super().forward(input, hx)[0]


def torch_recurrent(layers: list[RecurrentLayer], *, training: bool = True) -> torch.nn.Module:
    """The stacked layers as one TorchRNN/TorchLSTM/TorchGRU (copied parameters and states)."""
    first = layers[0]
    W = first.params["W_ih"]
    options: dict[str, Any] = {
        "num_layers": len(layers), "bias": "b_ih" in first.params, "batch_first": first.batch_first,
        "dtype": W.dtype, "device": W.device,
    }  # fmt: skip
    states: dict[str, Tensor | None] = {}
    for kind in first.state_kinds:
        given = [getattr(layer, f"{kind}0") for layer in layers]
        if any(s is not None for s in given):
            B = next(s for s in given if s is not None).shape[0]
            states[f"{kind}0"] = torch.stack([s if s is not None else W.new_zeros(B, first.H) for s in given]).clone()
    if first.mode == "LSTM":
        if states:  # torch takes both states or neither: the one not given is zeros
            like = next(iter(states.values()))
            assert like is not None
            states = {name: states.get(name, torch.zeros_like(like)) for name in ("h0", "c0")}
        module: torch.nn.Module = TorchLSTM(first.d_in, first.H, **options, **states)
    elif first.mode == "GRU":
        module = TorchGRU(first.d_in, first.H, **options, **states)
    else:
        nonlinearity = "relu" if first.mode == "RNN_RELU" else "tanh"
        module = TorchRNN(first.d_in, first.H, nonlinearity=nonlinearity, **options, **states)
    with torch.no_grad():
        for k, layer in enumerate(layers):
            for kind, t in layer.params.items():
                module.get_parameter(f"{TORCH_PARAM_NAMES[kind]}_l{k}").copy_(t)
    module.train(training)
    return module


def _rows_in_one_order(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor, bool]:
    """a (T, B, m) and b (T, B, n), time-major views, as rows (T B, m) and (T B, n) in one order,
    so that a's row r and b's row r are the same (t, b), and whether that order is batch first:
    so when both are stored batch first (then both rows are views), else time major (a copy of
    whichever is not stored so)."""
    if not a.is_contiguous() and a.transpose(0, 1).is_contiguous() and b.transpose(0, 1).is_contiguous():
        a_bf, b_bf = a.transpose(0, 1), b.transpose(0, 1)  # (B, T, .) each, contiguous
        return a_bf.reshape(-1, a.shape[-1]), b_bf.reshape(-1, b.shape[-1]), True
    return a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1]), False


def _sum_over_steps(da: Tensor, h: Tensor) -> Tensor:
    """sum_t da_t^T h_t for da (T, B, m) and h (T, B, n), time-major: one product over every
    step's rows when both are stored time major (a block of columns counts), else step by step
    (no copy of either)."""
    rows_da, rows_h = _time_major_rows(da), _time_major_rows(h)
    if rows_da is not None and rows_h is not None:
        return rows_da.T @ rows_h  # (m, n)
    total = da.new_zeros(da.shape[-1], h.shape[-1])
    for t in range(da.shape[0]):
        total.addmm_(da[t].T, h[t])  # + da_t^T h_t   (m, B) @ (B, n)
    return total


def _time_major_rows(t: Tensor) -> Tensor | None:
    """t (T, B, m) as its rows (T B, m) in time-major order without a copy (a block of columns of
    a contiguous tensor qualifies); None when its storage does not allow it (stored batch first)."""
    try:
        return t.view(-1, t.shape[-1])
    except RuntimeError:
        return None
