"""The LSTM (torch.nn.LSTM): one step forward, and back through time along both states.

At each step t = 1 .. T, from x_t (B, d_in), h_{t-1} and c_{t-1} (B, H), with torch's gate
order i, f, g, o stacked in W_ih (4H, d_in), W_hh (4H, H), b_ih, b_hh (4H,):

    (L1) [a_i a_f a_g a_o] = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh      (B, 4H)
    (L2) i = sigmoid(a_i) ;  f = sigmoid(a_f) ;  g = tanh(a_g) ;  o = sigmoid(a_o)   (B, H) each
    (L3) c_t = f o c_{t-1} + i o g                                           (B, H)
    (L4) h_t = o o tanh(c_t)                                                 (B, H)

and back, t = T .. 1, with refbp.nn.recurrent_layer's (R1)-(R5). Two states carry gradient
backwards, h and c:

    (R1) dJ/dh_t = dJ/dout_t + dJ/dh_t through step t + 1
    (L4) dJ/do   = dJ/dh_t o tanh(c_t)
    (L5) dJ/dc_t = dJ/dh_t o o o (1 - tanh(c_t)^2)  +  dJ/dc_{t+1} o f_{t+1}     through h_t, and the
                                                                                cell path from step t + 1
    (L3) dJ/di = dJ/dc_t o g ;  dJ/dg = dJ/dc_t o i ;  dJ/df = dJ/dc_t o c_{t-1}
    (L2) da_i = dJ/di o i (1 - i) ;  da_f = dJ/df o f (1 - f) ;  da_g = dJ/dg o (1 - g^2) ;
         da_o = dJ/do o o (1 - o)
    (L1) dJ/dh_{t-1} through step t = da_t W_hh

Second order, R{.} along V and R{x} (refbp.nn.recurrent_layer's (T1), (RR3)-(RR5)), with
s' the gates' slopes (i (1 - i), f (1 - f), 1 - g^2, o (1 - o)) and R{s'} = s'' o R{gate},
s'' = 1 - 2 i (sigmoid's) or -2 g (tanh's):

    (L1') R{a_t} = (T1) ;  (L2') R{i} = i (1 - i) o R{a_i}, ...  R{g} = (1 - g^2) o R{a_g}
    (L3') R{c_t} = R{f} o c_{t-1} + f o R{c_{t-1}} + R{i} o g + i o R{g}          R{c_0} = R{h_0} = 0
    (L4') R{h_t} = R{o} o tanh(c_t) + o o (1 - tanh(c_t)^2) o R{c_t}
    back, t = T .. 1, with both carries and their R:
    (RL4) R{dJ/do} = R{dJ/dh_t} o tanh(c_t) + dJ/dh_t o (1 - tanh^2) o R{c_t}
    (RL5) R{dJ/dc_t} = R{dJ/dh_t} o o o (1 - tanh^2) + dJ/dh_t o (R{o} - 2 o tanh(c_t) R{c_t}) o (1 - tanh^2)
                       + R{dJ/dc_{t+1} o f_{t+1}}                                     (the cell path's R)
    (RL3) R{dJ/di} = R{dJ/dc_t} o g + dJ/dc_t o R{g} ;  R{dJ/dg} = R{dJ/dc_t} o i + dJ/dc_t o R{i} ;
          R{dJ/df} = R{dJ/dc_t} o c_{t-1} + dJ/dc_t o R{c_{t-1}} ;
          R{dJ/dc_{t-1} through step t} = R{dJ/dc_t} o f + dJ/dc_t o R{f}
    (RL2) R{da} = R{dJ/d gate} o s' + dJ/d gate o s'' o R{gate}    (each of i, f, g, o)
    (RL1) R{dJ/dh_{t-1} through step t} = R{da_t} W_hh + da_t V_hh

Missing the second term of (L5), the cell-state path, is the LSTM's classic bug: the cell
state is what lets the gradient reach far back, and without it the network learns no long
dependency (tests/test_recurrent.py catches it). Intermediates at each step (keys at (l, k, t)): the gates i, f,
g, o (after their sigmoid/tanh), c_t and h_t.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from .keys import Key
from .layer import Tap
from .recurrent_layer import BPTTGradients, RecurrentCache, RecurrentLayer
from .validation import describe

__all__ = ["LSTMLayer"]


class LSTMLayer(RecurrentLayer):
    """One layer of torch.nn.LSTM (see RecurrentLayer for the arguments).

    Args:
        c0: (B, H) the initial cell state, or None for zeros (h0 is RecurrentLayer's).
    """

    title = "LSTM"
    gate_count = 4
    state_kinds = ("h", "c")
    step_kinds = ("i", "f", "g", "o", "c", "h")

    def __init__(
        self,
        W_ih: Tensor,
        W_hh: Tensor,
        b_ih: Tensor | None = None,
        b_hh: Tensor | None = None,
        *,
        h0: Tensor | None = None,
        c0: Tensor | None = None,
        batch_first: bool = False,
        index: int = 0,
    ) -> None:
        super().__init__(W_ih, W_hh, b_ih, b_hh, h0=h0, batch_first=batch_first, index=index)
        self.c0 = self._check_state(c0, "c0")
        if h0 is not None and c0 is not None and h0.shape != c0.shape:
            raise ValueError(f"h0 {describe(h0)} and c0 {describe(c0)} must have one shape (B, H)")

    @property
    def mode(self) -> str:
        return "LSTM"

    def equations(self) -> tuple[str, str]:
        return (
            "[i f g o] = [sig sig tanh sig](x_t W_ih^T + b_ih + h_(t-1) W_hh^T + b_hh) ;  "
            "c_t = f o c_(t-1) + i o g ;  h_t = o o tanh(c_t)",
            "dJ/dh_t = dJ/dout_t + da_(t+1) W_hh ;  "
            "dJ/dc_t = dJ/dh_t o o o (1 - tanh(c_t)^2) + dJ/dc_(t+1) o f_(t+1) ;  "
            "dJ/di = dJ/dc_t o g ;  dJ/df = dJ/dc_t o c_(t-1) ;  dJ/dg = dJ/dc_t o i ;  dJ/do = dJ/dh_t o tanh(c_t)",
        )

    def total_dJ_dc(self, through_h: Tensor, from_next: Tensor) -> Tensor:
        """(L5) dJ/dc_t = (through h_t) + dJ/dc_{t+1} o f_{t+1} (the cell path)   (B, H)."""
        return through_h.add_(from_next)

    def total_R_dJ_dc(self, R_through_h: Tensor, R_from_next: Tensor) -> Tensor:
        """(RL5) R{dJ/dc_t} = R{through h_t} + R{dJ/dc_{t+1} o f_{t+1}}: (L5) is linear, so its R is
        the same line (an LSTM without the cell path loses it in both)."""
        return self.total_dJ_dc(R_through_h, R_from_next)

    def gate_slope(self, gates: Tensor) -> Tensor:
        """s' = d gate / d a of every gate (..., 4H), a new tensor: sigmoid's s (1 - s) for i, f,
        o; tanh's 1 - g^2 for g."""
        H = self.H
        slope = gates * (1.0 - gates)  # s (1 - s)
        g = gates[..., 2 * H : 3 * H]
        torch.mul(g, g, out=slope[..., 2 * H : 3 * H]).neg_().add_(1.0)  # tanh' = 1 - g^2
        return slope

    def gate_slopes(self, gates: Tensor) -> tuple[Tensor, Tensor]:
        """(s', s'') of every gate (..., 4H): s' as ``gate_slope``, and s'' with R{s'} = s'' o R{gate}:
        1 - 2 s for i, f, o; -2 g for g."""
        H = self.H
        bend = 1.0 - 2.0 * gates  # d/ds [s (1 - s)] = 1 - 2 s
        bend[..., 2 * H : 3 * H] = -2.0 * gates[..., 2 * H : 3 * H]  # d/dg [1 - g^2] = -2 g
        return self.gate_slope(gates), bend

    def step_values(self, cache: RecurrentCache) -> dict[str, Tensor]:
        assert cache.c is not None
        i, f, g, o = cache.gates.split(self.H, dim=2)  # (T, B, H) each
        return {"i": i, "f": f, "g": g, "o": o, "c": cache.c[1:], "h": cache.h[1:]}

    def run(self, xw: Tensor, state: dict[str, Tensor]) -> RecurrentCache:
        W_hh, b_hh, H = self.params["W_hh"], self.params.get("b_hh"), self.H
        T, B, _ = xw.shape
        gates = xw if b_hh is None else xw.add_(b_hh)  # x_t W_ih^T + b_ih + b_hh, every step   (T, B, 4H)
        h = xw.new_empty(T + 1, B, H)  # h[0] = h_0, h[t] = h_t
        c = xw.new_empty(T + 1, B, H)  # c[0] = c_0, c[t] = c_t
        h[0], c[0] = state["h"], state["c"]
        for t in range(1, T + 1):
            a = gates[t - 1].addmm_(h[t - 1], W_hh.T)  # (L1) [a_i a_f a_g a_o]   (B, 4H), made the gates in place
            a[:, : 2 * H].sigmoid_()  # (L2) i, f
            a[:, 2 * H : 3 * H].tanh_()  # (L2) g
            a[:, 3 * H :].sigmoid_()  # (L2) o
            i, f, g, o = a.split(H, dim=1)  # (B, H) each
            torch.mul(f, c[t - 1], out=c[t]).addcmul_(i, g)  # (L3) c_t = f o c_(t-1) + i o g
            torch.tanh(c[t], out=h[t]).mul_(o)  # (L4) h_t = o o tanh(c_t)
        return RecurrentCache(h, gates, c=c)

    def through_time(
        self, dJ_dout: Tensor, cache: RecurrentCache, *, keep: bool, own: bool = False, consume: bool = False
    ) -> BPTTGradients:
        W_hh, H, c = self.params["W_hh"], self.H, cache.c
        assert c is not None
        T, B, _ = dJ_dout.shape
        i, f, g, o = cache.gates.split(H, dim=2)  # (T, B, H) each
        # What does not depend on the carries, for every step at once (a few passes over (T, B, .)
        # instead of T small operations each): the factors that turn dJ/dc_t and dJ/dh_t into da_t,
        #   da_i = dJ/dc_t o g i (1 - i) ;  da_f = dJ/dc_t o c_(t-1) f (1 - f) ;
        #   da_g = dJ/dc_t o i (1 - g^2) ;  da_o = dJ/dh_t o tanh(c_t) o (1 - o)      (L2)-(L4)
        # and dJ/dh_t's factor on its way to dJ/dc_t, o (1 - tanh(c_t)^2)             (L5)
        da = self.gate_slope(cache.gates)  # (T, B, 4H) i (1 - i), f (1 - f), 1 - g^2, o (1 - o): made da in place
        factors = da.view(T, B, 4, H)
        tanh_c = torch.tanh(c[1:])  # rebuilt from c_t: T B H numbers less to keep   (T, B, H)
        factors[:, :, 0].mul_(g)
        factors[:, :, 1].mul_(c[:-1])
        factors[:, :, 2].mul_(i)
        factors[:, :, 3].mul_(tanh_c)
        through_h = tanh_c.square_().neg_().add_(1.0).mul_(o)  # o (1 - tanh(c_t)^2), in tanh_c's storage
        kept = {kind: torch.empty_like(dJ_dout) for kind in self.step_kinds} if keep else {}
        dh_next = dJ_dout.new_zeros(B, H)  # dJ/dh_T through step T + 1: nothing
        dc_next = dJ_dout.new_zeros(B, H)  # dJ/dc_(T+1) o f_(T+1): nothing
        for t in range(T, 0, -1):
            dJ_dh = self.total_dJ_dh(dJ_dout[t - 1], dh_next)  # (R1)
            dJ_dc = self.total_dJ_dc(dJ_dh * through_h[t - 1], dc_next)  # (L5)
            if keep:  # (L3), (L4): what the teaching view shows, the gates' dJ/d(.) before (L2)
                values = (dJ_dc * g[t - 1], dJ_dc * c[t - 1], dJ_dc * i[t - 1], dJ_dh * torch.tanh(c[t]), dJ_dc, dJ_dh)
                for kind, value in zip(self.step_kinds, values, strict=True):
                    kept[kind][t - 1] = value
            step = factors[t - 1]  # (B, 4, H)
            step[:, :3].mul_(dJ_dc.unsqueeze(1))  # (L2), (L3) [da_i da_f da_g] = dJ/dc_t o their factors
            step[:, 3].mul_(dJ_dh)  # (L2), (L4) da_o = dJ/dh_t o tanh(c_t) o (1 - o)
            dh_next = da[t - 1] @ W_hh  # (L1) dJ/dh_(t-1) through step t   (B, 4H) @ (4H, H)
            dc_next = dJ_dc.mul_(f[t - 1])  # (L3) dJ/dc_(t-1) through step t = dJ/dc_t o f (dJ/dc_t is used up)
        return BPTTGradients(da, da, {"h": dh_next, "c": dc_next}, kept)

    def tangent_through_time(self, Rxw: Tensor, Rhw: Tensor, cache: RecurrentCache, V_hh: Tensor) -> RecurrentCache:
        W_hh, H, c = self.params["W_hh"], self.H, cache.c
        assert c is not None
        T, B, _ = Rxw.shape
        slope, _ = self.gate_slopes(cache.gates)  # (T, B, 4H)
        R_gates = Rxw.add_(Rhw)  # (L1') every part of R{a_t} but R{h_(t-1)} W_hh^T; made R{gates} in place
        Rh = Rxw.new_zeros(T + 1, B, H)  # R{h_0} = 0: the initial states are constants
        Rc = Rxw.new_zeros(T + 1, B, H)  # R{c_0} = 0
        for t in range(1, T + 1):
            Ra = R_gates[t - 1].addmm_(Rh[t - 1], W_hh.T)  # (L1') R{a_t}   (B, 4H)
            Ra.mul_(slope[t - 1])  # (L2') R{i}, R{f}, R{g}, R{o}
            i, f, g, o = cache.gates[t - 1].split(H, dim=1)  # (B, H) each
            Ri, Rf, Rg, Ro = Ra.split(H, dim=1)
            Rc[t] = Rf * c[t - 1] + f * Rc[t - 1] + Ri * g + i * Rg  # (L3')
            tanh_c = torch.tanh(c[t])  # rebuilt from c_t, as the backward pass does
            Rh[t] = Ro * tanh_c + o * (1.0 - tanh_c * tanh_c) * Rc[t]  # (L4')
        return RecurrentCache(Rh, R_gates, c=Rc)

    def r_through_time(
        self,
        Rg: Tensor,
        cache: RecurrentCache,
        Rcache: RecurrentCache,
        grads: BPTTGradients,
        V_hh: Tensor,
        first: float,
    ) -> BPTTGradients:
        W_hh, H, c, Rc = self.params["W_hh"], self.H, cache.c, Rcache.c
        assert c is not None and Rc is not None
        T, B, _ = Rg.shape
        slope, bend = self.gate_slopes(cache.gates)  # s', s''   (T, B, 4H)
        tanh_c = torch.tanh(c[1:])  # (T, B, H)
        sech2 = 1.0 - tanh_c * tanh_c  # tanh'(c_t)
        R_da = torch.empty_like(cache.gates)  # R{da_t}   (T, B, 4H)
        kept = {kind: torch.empty_like(Rg) for kind in self.step_kinds}  # R{dJ/d(.)} of every step's i f g o c h
        # the terms that carry dJ/d(.), known for every step from the first-order BPTT (grads.steps)
        d = grads.steps
        if first:
            Ri, Rf, R_g, Ro = Rcache.gates.split(H, dim=2)  # (T, B, H) each
            i, f, g, o = cache.gates.split(H, dim=2)
            o_src = d["h"] * sech2 * Rc[1:]  # (RL4) dJ/dh_t o (1 - tanh^2) o R{c_t}
            c_src = d["h"] * sech2 * (Ro - 2.0 * o * tanh_c * Rc[1:])  # (RL5) dJ/dh_t o R{o (1 - tanh^2 c_t)}
            gate_src = torch.cat([d["c"] * R_g, d["c"] * Rc[:-1], d["c"] * Ri], dim=2)  # (RL3) i, f, g's   (T, B, 3H)
            carry_src = d["c"] * Rf  # (RL3) dJ/dc_t o R{f}
            da_src = torch.cat([d[k] for k in ("i", "f", "g", "o")], dim=2).mul_(bend).mul_(Rcache.gates)  # (RL2)
            back = grads.da_h @ V_hh  # (RL1) da_t V_hh   (T, B, H)
        R_dh_next = Rg.new_zeros(B, H)  # R{dJ/dh_T through step T + 1} = 0
        R_dc_next = Rg.new_zeros(B, H)  # R{dJ/dc_(T+1) o f_(T+1)} = 0
        for t in range(T, 0, -1):
            i, f, g, o = cache.gates[t - 1].split(H, dim=1)  # (B, H) each
            R_dh = self.total_R_dJ_dh(Rg[t - 1], R_dh_next)  # (RR1)
            R_do = R_dh * tanh_c[t - 1]  # (RL4) R{dJ/dh_t} o tanh(c_t)
            R_through_h = R_dh * o * sech2[t - 1]  # (RL5) R{dJ/dh_t} o o o (1 - tanh^2)
            if first:
                R_do += o_src[t - 1]
                R_through_h += c_src[t - 1]
            R_dc = self.total_R_dJ_dc(R_through_h, R_dc_next)  # (RL5) + the cell path's R
            R_dgates = torch.cat([R_dc * g, R_dc * c[t - 1], R_dc * i], dim=1)  # (RL3) R{dJ/di}, R{dJ/df}, R{dJ/dg}
            R_dc_next = R_dc * f  # (RL3) R{dJ/dc_(t-1) through step t}
            if first:
                R_dgates += gate_src[t - 1]
                R_dc_next += carry_src[t - 1]
            for kind, value in zip(self.step_kinds, (*R_dgates.split(H, dim=1), R_do, R_dc, R_dh), strict=True):
                kept[kind][t - 1] = value
            torch.cat([R_dgates, R_do], dim=1, out=R_da[t - 1]).mul_(slope[t - 1])  # (RL2) R{dJ/d gate} o s'
            if first:
                R_da[t - 1] += da_src[t - 1]  # (RL2) + dJ/d gate o s'' o R{gate}
            R_dh_next = R_da[t - 1] @ W_hh  # (RL1) R{da_t} W_hh   (B, H)
            if first:
                R_dh_next += back[t - 1]  # (RL1) + da_t V_hh
        return BPTTGradients(R_da, R_da, {"h": R_dh_next, "c": R_dc_next}, kept)

    def torch_step(
        self, x_t: Tensor, state: dict[str, Tensor], w: Mapping[str, Tensor | None], tap: Tap, path: tuple[int, ...]
    ) -> dict[str, Tensor]:
        W_ih, W_hh = w["W_ih"], w["W_hh"]
        assert W_ih is not None and W_hh is not None
        a = F.linear(x_t, W_ih, w["b_ih"]) + F.linear(state["h"], W_hh, w["b_hh"])  # (B, 4H)
        a_i, a_f, a_g, a_o = a.chunk(4, dim=1)
        i = tap.intermediate(Key("i", path), torch.sigmoid(a_i))
        f = tap.intermediate(Key("f", path), torch.sigmoid(a_f))
        g = tap.intermediate(Key("g", path), torch.tanh(a_g))
        o = tap.intermediate(Key("o", path), torch.sigmoid(a_o))
        c = tap.intermediate(Key("c", path), f * state["c"] + i * g)
        return {"h": tap.intermediate(Key("h", path), o * torch.tanh(c)), "c": c}
