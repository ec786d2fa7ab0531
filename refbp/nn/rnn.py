"""The Elman RNN (torch.nn.RNN), tanh or relu: one step forward, and back through time.

At each step t = 1 .. T, from x_t (B, d_in) and h_{t-1} (B, H):

    (E1) z_t = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh          (B, H)
    (E2) h_t = f(z_t)                                              (B, H)   f = tanh or relu

and back, t = T .. 1, with refbp.nn.recurrent_layer's (R1)-(R5):

    (R1) dJ/dh_t = dJ/dout_t + dJ/dh_t through step t + 1
    (E2) dJ/dz_t = dJ/dh_t o f'(z_t)                               tanh: 1 - h_t^2 ;  relu: 1 if z_t > 0
    (E1) da_t = dJ/dz_t ;  dJ/dh_{t-1} through step t = dJ/dz_t W_hh

Second order, R{.} along V and R{x} (refbp.nn.recurrent_layer's (T1), (RR3)-(RR5)):

    (E1') R{z_t} = R{x_t} W_ih^T + x_t V_ih^T + V_bih + R{h_{t-1}} W_hh^T + h_{t-1} V_hh^T + V_bhh
    (E2') R{h_t} = f'(z_t) o R{z_t}                                 R{h_0} = 0
    back, t = T .. 1:
    (RR1) R{dJ/dh_t} = R{dJ/dout_t} + R{dJ/dh_t through step t + 1}
    (RE2) R{dJ/dz_t} = R{dJ/dh_t} o f'(z_t) + dJ/dh_t o f''(z_t) o R{z_t}     tanh'' = -2 h (1 - h^2); relu'' = 0
    (RE1) R{dJ/dh_{t-1} through step t} = R{dJ/dz_t} W_hh + dJ/dz_t V_hh

Intermediates at each step (keys at (l, k, t)): z_t and h_t. relu's kink (z_t = 0, where
torch takes f'(0) = 0) is reported by ``kinks``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .activations import ACTIVATIONS
from .curvature import first_derivative, second_derivative
from .keys import Key
from .layer import Tap
from .pieces import Pieces
from .recurrent_layer import BPTTGradients, RecurrentCache, RecurrentLayer

__all__ = ["NONLINEARITIES", "RNNLayer"]

NONLINEARITIES = ("tanh", "relu")
"""The f of (E2) torch.nn.RNN offers."""


class RNNLayer(RecurrentLayer):
    """One layer of torch.nn.RNN (see RecurrentLayer for the arguments), f = tanh or relu.

    Args:
        nonlinearity: "tanh" (torch's default) or "relu".
    """

    title = "RNN"
    gate_count = 1
    step_kinds = ("z", "h")

    def __init__(
        self,
        W_ih: Tensor,
        W_hh: Tensor,
        b_ih: Tensor | None = None,
        b_hh: Tensor | None = None,
        *,
        nonlinearity: str = "tanh",
        h0: Tensor | None = None,
        batch_first: bool = False,
        index: int = 0,
    ) -> None:
        if nonlinearity not in NONLINEARITIES:
            raise ValueError(f"nonlinearity={nonlinearity!r}: torch.nn.RNN has one of {list(NONLINEARITIES)}")
        super().__init__(W_ih, W_hh, b_ih, b_hh, h0=h0, batch_first=batch_first, index=index)
        self.activation = ACTIVATIONS[nonlinearity]

    @property
    def mode(self) -> str:
        return "RNN_RELU" if self.activation.name == "relu" else "RNN_TANH"

    @property
    def pieces(self) -> Pieces | None:
        return self.activation.pieces

    def describe(self) -> str:
        return super().describe()[:-1] + f", {self.activation.name})"

    def equations(self) -> tuple[str, str]:
        return (
            f"z_t = x_t W_ih^T + b_ih + h_(t-1) W_hh^T + b_hh ;  h_t = {self.activation.name}(z_t)",
            "dJ/dh_t = dJ/dout_t + dJ/dz_(t+1) W_hh ;  dJ/dz_t = dJ/dh_t o f'(z_t) ;  "
            "dJ/dW_ih = sum_t dJ/dz_t^T x_t ;  dJ/dW_hh = sum_t dJ/dz_t^T h_(t-1)",
        )

    def kinks(self, cache: Any, path: tuple[int, ...]) -> dict[Key, Tensor]:
        """z_t == 0 with relu, at every step (where torch takes f'(0) = 0)."""
        if not self.activation.kinked or not isinstance(cache, RecurrentCache) or not cache.gates.numel():
            return {}  # (a training step's cache keeps no z_t)
        return {Key("z", (*path, t)): cache.gates[t - 1] == 0 for t in range(1, cache.gates.shape[0] + 1)}

    def drop_unread(self, cache: RecurrentCache) -> None:
        """z_t: the backward takes f'(z_t) from h_t (tanh: 1 - h_t^2; relu: h_t > 0), as torch's
        autograd keeps tanh's and relu's outputs, not their inputs."""
        cache.gates = cache.gates.new_empty(0)

    def step_values(self, cache: RecurrentCache) -> dict[str, Tensor]:
        return {"z": cache.gates, "h": cache.h[1:]}

    def run(self, xw: Tensor, state: dict[str, Tensor]) -> RecurrentCache:
        W_hh, b_hh = self.params["W_hh"], self.params.get("b_hh")
        T, B, H = xw.shape
        z = xw if b_hh is None else xw.add_(b_hh)  # x_t W_ih^T + b_ih + b_hh, every step   (T, B, H)
        h = xw.new_empty(T + 1, B, H)  # h[0] = h_0, h[t] = h_t
        h[0] = state["h"]
        for t in range(1, T + 1):
            z[t - 1].addmm_(h[t - 1], W_hh.T)  # (E1) z_t = ... + h_(t-1) W_hh^T   (B, H)
            h[t] = self.activation.f(z[t - 1])  # (E2) h_t = f(z_t)   (B, H)
        return RecurrentCache(h, z)

    def through_time(
        self, dJ_dout: Tensor, cache: RecurrentCache, *, keep: bool, own: bool = False, consume: bool = False
    ) -> BPTTGradients:
        W_hh = self.params["W_hh"]  # (H, H)
        T, B, H = dJ_dout.shape
        # dJ/dz_t in dJ/dout_t's rows when they are the cell's (step t reads only its own), else new
        dJ_dz = dJ_dout if own else torch.empty_like(dJ_dout)  # (T, B, H), in dJ/dout's layout
        kept_h = torch.empty(T, B, H, dtype=dJ_dout.dtype, device=dJ_dout.device) if keep else None
        from_next = dJ_dout.new_zeros(B, H)  # nothing comes back from step T + 1
        for t in range(T, 0, -1):
            dJ_dh = self.total_dJ_dh(dJ_dout[t - 1], from_next)  # (R1) (B, H), a new tensor
            if kept_h is not None:
                kept_h[t - 1] = dJ_dh
            dJ_dz[t - 1] = self.activation.chain(cache.h[t], dJ_dh)  # (E2) dJ/dh_t o f'(z_t), from h_t
            from_next = dJ_dz[t - 1] @ W_hh  # (E1) dJ/dh_(t-1) through step t   (B, H) @ (H, H)
        steps = {"z": dJ_dz, "h": kept_h} if kept_h is not None else {}
        return BPTTGradients(dJ_dz, dJ_dz, {"h": from_next}, steps)

    def tangent_through_time(self, Rxw: Tensor, Rhw: Tensor, cache: RecurrentCache, V_hh: Tensor) -> RecurrentCache:
        W_hh = self.params["W_hh"]  # (H, H)
        T, B, H = Rxw.shape
        slope = first_derivative(self.activation, cache.gates, cache.h[1:])  # f'(z_t), every step   (T, B, H)
        Rz = Rxw.add_(Rhw)  # (E1') every part of R{z_t} but R{h_(t-1)} W_hh^T   (T, B, H)
        Rh = Rxw.new_zeros(T + 1, B, H)  # R{h_0} = 0: the initial state is a constant
        for t in range(1, T + 1):
            Rz[t - 1].addmm_(Rh[t - 1], W_hh.T)  # (E1') + R{h_(t-1)} W_hh^T   (B, H)
            torch.mul(slope[t - 1], Rz[t - 1], out=Rh[t])  # (E2') R{h_t} = f'(z_t) o R{z_t}
        return RecurrentCache(Rh, Rz)

    def r_through_time(
        self,
        Rg: Tensor,
        cache: RecurrentCache,
        Rcache: RecurrentCache,
        grads: BPTTGradients,
        V_hh: Tensor,
        first: float,
    ) -> BPTTGradients:
        W_hh = self.params["W_hh"]  # (H, H)
        T, B, H = Rg.shape
        slope = first_derivative(self.activation, cache.gates, cache.h[1:])  # f'(z_t)   (T, B, H)
        R_dz = torch.empty_like(Rg)  # R{dJ/dz_t}, every step   (T, B, H)
        R_dh = torch.empty_like(Rg)  # R{dJ/dh_t}
        # the terms that carry dJ/d(.), known for every step from the first-order BPTT
        curve = back = None
        if first:
            f2 = second_derivative(self.activation, cache.gates, cache.h[1:])  # f''(z_t)   (T, B, H)
            curve = grads.steps["h"] * f2 * Rcache.gates  # (RE2) dJ/dh_t o f''(z_t) o R{z_t}
            back = grads.da_h @ V_hh  # (RE1) dJ/dz_t V_hh   (T, B, H)
        R_next = Rg.new_zeros(B, H)  # nothing comes back from step T + 1
        for t in range(T, 0, -1):
            R_dh[t - 1] = self.total_R_dJ_dh(Rg[t - 1], R_next)  # (RR1)
            torch.mul(R_dh[t - 1], slope[t - 1], out=R_dz[t - 1])  # (RE2) R{dJ/dh_t} o f'(z_t)
            if curve is not None:
                R_dz[t - 1] += curve[t - 1]  # (RE2) + dJ/dh_t o f''(z_t) o R{z_t}
            R_next = R_dz[t - 1] @ W_hh  # (RE1) R{dJ/dz_t} W_hh   (B, H)
            if back is not None:
                R_next += back[t - 1]  # (RE1) + dJ/dz_t V_hh
        return BPTTGradients(R_dz, R_dz, {"h": R_next}, {"z": R_dz, "h": R_dh})

    def torch_step(
        self, x_t: Tensor, state: dict[str, Tensor], w: Mapping[str, Tensor | None], tap: Tap, path: tuple[int, ...]
    ) -> dict[str, Tensor]:
        W_ih, W_hh = w["W_ih"], w["W_hh"]
        assert W_ih is not None and W_hh is not None
        z = tap.intermediate(Key("z", path), F.linear(x_t, W_ih, w["b_ih"]) + F.linear(state["h"], W_hh, w["b_hh"]))
        if self.activation.pieces is not None:
            tap.piecewise(z, self.activation.pieces)
        return {"h": tap.intermediate(Key("h", path), self.activation.torch_fn(z))}
