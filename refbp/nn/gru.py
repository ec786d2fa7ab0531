"""The GRU (torch.nn.GRU): one step forward, and back through time.

At each step t = 1 .. T, from x_t (B, d_in) and h_{t-1} (B, H), with torch's gate order
r, z, n stacked in W_ih (3H, d_in), W_hh (3H, H), b_ih, b_hh (3H,):

    (G1) [x_r x_z x_n] = x_t W_ih^T + b_ih ;  [h_r h_z h_n] = h_{t-1} W_hh^T + b_hh     (B, 3H) each
    (G2) r = sigmoid(x_r + h_r) ;  z = sigmoid(x_z + h_z)                               (B, H) each
    (G3) n = tanh(x_n + r o h_n)                                                       (B, H)
    (G4) h_t = (1 - z) o n + z o h_{t-1}                                               (B, H)

r multiplies h_n = W_hn h_{t-1} + b_hn *after* the hidden projection, as torch (and cuDNN)
do, so b_hn cannot be folded into b_in. Back, t = T .. 1, with refbp.nn.recurrent_layer's
(R1)-(R5):

    (R1) dJ/dh_t = dJ/dout_t + dJ/dh_t through step t + 1
    (G4) dJ/dn = dJ/dh_t o (1 - z) ;  dJ/dz = dJ/dh_t o (h_{t-1} - n) ;  direct dJ/dh_{t-1} = dJ/dh_t o z
    (G3) da_n = dJ/dn o (1 - n^2) ;  dJ/dr = da_n o h_n ;  dJ/dh_n = da_n o r
    (G2) da_r = dJ/dr o r (1 - r) ;  da_z = dJ/dz o z (1 - z)
    (G1) input side [da_r da_z da_n], hidden side [da_r da_z dJ/dh_n]:
         dJ/dh_{t-1} through step t = dJ/dh_t o z + [da_r da_z dJ/dh_n] W_hh

Second order, R{.} along V and R{x} (refbp.nn.recurrent_layer's (T1), (RR3)-(RR5)):

    (G1') R{[x_r x_z x_n]} = R{x_t} W_ih^T + x_t V_ih^T + V_bih ;
          R{[h_r h_z h_n]} = R{h_{t-1}} W_hh^T + h_{t-1} V_hh^T + V_bhh             R{h_0} = 0
    (G2') R{r} = r (1 - r) o (R{x_r} + R{h_r}) ;  R{z} = z (1 - z) o (R{x_z} + R{h_z})
    (G3') R{n} = (1 - n^2) o (R{x_n} + R{r} o h_n + r o R{h_n})
    (G4') R{h_t} = R{n} + R{z} o (h_{t-1} - n) + z o (R{h_{t-1}} - R{n})
    back, t = T .. 1:
    (RG4) R{dJ/dn} = R{dJ/dh_t} o (1 - z) - dJ/dh_t o R{z} ;
          R{dJ/dz} = R{dJ/dh_t} o (h_{t-1} - n) + dJ/dh_t o (R{h_{t-1}} - R{n})
    (RG3) R{da_n} = R{dJ/dn} o (1 - n^2) - dJ/dn o 2 n o R{n} ;
          R{dJ/dr} = R{da_n} o h_n + da_n o R{h_n} ;  R{dJ/dh_n} = R{da_n} o r + da_n o R{r}
    (RG2) R{da_r} = R{dJ/dr} o r (1 - r) + dJ/dr o (1 - 2 r) o R{r} ;  R{da_z} likewise with z
    (RG1) R{dJ/dh_{t-1} through step t} = R{dJ/dh_t} o z + dJ/dh_t o R{z} + R{da_h} W_hh + da_h V_hh

Intermediates at each step (keys at (l, k, t)): r, z, n (after their sigmoid/tanh) and h_t.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from .keys import Key
from .layer import Tap
from .recurrent_layer import BPTTGradients, RecurrentCache, RecurrentLayer

__all__ = ["GRULayer"]


class GRULayer(RecurrentLayer):
    """One layer of torch.nn.GRU (see RecurrentLayer for the arguments)."""

    title = "GRU"
    gate_count = 3
    step_kinds = ("r", "z", "n", "h")

    @property
    def mode(self) -> str:
        return "GRU"

    def equations(self) -> tuple[str, str]:
        return (
            "r = sig(x_r + h_r) ;  z = sig(x_z + h_z) ;  n = tanh(x_n + r o h_n) ;  h_t = (1 - z) o n + z o h_(t-1)",
            "dJ/dh_t = dJ/dout_t + dJ/dh_t through t+1 ;  dJ/dn = dJ/dh_t o (1 - z) ;  "
            "dJ/dz = dJ/dh_t o (h_(t-1) - n) ;  "
            "dJ/dr = dJ/dn o (1 - n^2) o h_n ;  dJ/dh_(t-1) = dJ/dh_t o z + [da_r da_z dJ/dh_n] W_hh",
        )

    def step_values(self, cache: RecurrentCache) -> dict[str, Tensor]:
        r, z, n = cache.gates.split(self.H, dim=2)  # (T, B, H) each
        return {"r": r, "z": z, "n": n, "h": cache.h[1:]}

    def run(self, xw: Tensor, state: dict[str, Tensor]) -> RecurrentCache:
        W_hh, b_hh, H = self.params["W_hh"], self.params.get("b_hh"), self.H
        T, B, _ = xw.shape
        gates = xw  # [x_r x_z x_n] of every step (T, B, 3H), made [r z n] in place
        h = xw.new_empty(T + 1, B, H)  # h[0] = h_0, h[t] = h_t
        hn = xw.new_empty(T, B, H)  # h_n of every step, which r multiplies
        h[0] = state["h"]
        for t in range(1, T + 1):
            hh = h[t - 1] @ W_hh.T if b_hh is None else torch.addmm(b_hh, h[t - 1], W_hh.T)  # (G1) (B, 3H)
            rz = gates[t - 1, :, : 2 * H].add_(hh[:, : 2 * H]).sigmoid_()  # (G2) [r z]   (B, 2H)
            r, z = rz.split(H, dim=1)
            hn[t - 1] = hh[:, 2 * H :]
            n = gates[t - 1, :, 2 * H :].addcmul_(r, hn[t - 1]).tanh_()  # (G3) n = tanh(x_n + r o h_n)
            torch.sub(h[t - 1], n, out=h[t]).mul_(z).add_(n)  # (G4) h_t = n + z o (h_(t-1) - n)
        return RecurrentCache(h, gates, hn=hn)

    def through_time(
        self, dJ_dout: Tensor, cache: RecurrentCache, *, keep: bool, own: bool = False, consume: bool = False
    ) -> BPTTGradients:
        W_hh, H, h, hn = self.params["W_hh"], self.H, cache.h, cache.hn
        assert hn is not None
        T, B, _ = dJ_dout.shape
        # consume: step t's [da_r da_z da_n] over its gates [r z n] and dJ/dh_n over its h_n (step t
        # reads only its own), the hidden side [da_r da_z dJ/dh_n] never built whole
        da_x = cache.gates if consume else torch.empty_like(cache.gates)  # (T, B, 3H) [da_r da_z da_n]
        da_h = da_x if consume else torch.empty_like(cache.gates)  # (T, B, 3H) [da_r da_z dJ/dh_n]
        dJ_dhn = hn if consume else da_h[..., 2 * H :]  # (T, B, H) dJ/dh_n at every step
        kept = {kind: torch.empty_like(dJ_dout) for kind in self.step_kinds} if keep else {}
        from_next = dJ_dout.new_zeros(B, H)  # nothing comes back from step T + 1
        for t in range(T, 0, -1):
            r, z, n = cache.gates[t - 1].clone().split(H, dim=1) if consume else cache.gates[t - 1].split(H, dim=1)
            dJ_dh = self.total_dJ_dh(dJ_dout[t - 1], from_next)  # (R1)
            dJ_dn = dJ_dh - dJ_dh * z  # (G4) dJ/dh_t o (1 - z)
            dJ_dz = dJ_dh * (h[t - 1] - n)  # (G4) dJ/dh_t o (h_(t-1) - n)
            da_r, da_z, da_n = da_x[t - 1].split(H, dim=1)  # views into da_x
            torch.mul(n, n, out=da_n).neg_().add_(1.0).mul_(dJ_dn)  # (G3) da_n = dJ/dn o (1 - n^2)
            dJ_dr = da_n * hn[t - 1]  # (G3) dJ/dr = da_n o h_n
            if keep:
                for kind, value in zip(self.step_kinds, (dJ_dr, dJ_dz, dJ_dn, dJ_dh), strict=True):
                    kept[kind][t - 1] = value
            torch.mul(dJ_dr, r, out=da_r).addcmul_(da_r, r, value=-1.0)  # (G2) dJ/dr o r (1 - r)
            torch.mul(dJ_dz, z, out=da_z).addcmul_(da_z, z, value=-1.0)  # (G2) dJ/dz o z (1 - z)
            torch.mul(da_n, r, out=dJ_dhn[t - 1])  # (G3) dJ/dh_n = da_n o r
            if consume:  # (G1, G4) dJ/dh_t o z + [da_r da_z] W_hr,z + dJ/dh_n W_hn
                from_next = torch.addmm(dJ_dh * z, da_x[t - 1, :, : 2 * H], W_hh[: 2 * H])
                from_next.addmm_(dJ_dhn[t - 1], W_hh[2 * H :])
                continue
            da_h[t - 1, :, : 2 * H] = da_x[t - 1, :, : 2 * H]  # (G1) r and z: the same on both sides
            from_next = torch.addmm(dJ_dh * z, da_h[t - 1], W_hh)  # (G1, G4) dJ/dh_t o z + da_h W_hh   (B, H)
        if consume:
            return BPTTGradients(da_x, da_x, {"h": from_next}, kept, da_h_n=dJ_dhn)
        return BPTTGradients(da_x, da_h, {"h": from_next}, kept)

    def tangent_through_time(self, Rxw: Tensor, Rhw: Tensor, cache: RecurrentCache, V_hh: Tensor) -> RecurrentCache:
        W_hh, H, h, hn = self.params["W_hh"], self.H, cache.h, cache.hn
        assert hn is not None
        T, B, _ = Rxw.shape
        R_gates = torch.empty_like(Rxw)  # R{[r z n]} of every step   (T, B, 3H)
        Rh = Rxw.new_zeros(T + 1, B, H)  # R{h_0} = 0: the initial state is a constant
        R_hn = Rxw.new_empty(T, B, H)  # R{h_n} of every step
        for t in range(1, T + 1):
            r, z, n = cache.gates[t - 1].split(H, dim=1)  # (B, H) each
            R_hh = torch.addmm(Rhw[t - 1], Rh[t - 1], W_hh.T)  # (G1') R{[h_r h_z h_n]}   (B, 3H)
            R_x = Rxw[t - 1]  # (G1') R{[x_r x_z x_n]}   (B, 3H)
            Rr, Rz, Rn = R_gates[t - 1].split(H, dim=1)  # views to fill
            torch.add(R_x[:, :H], R_hh[:, :H], out=Rr).mul_(r * (1.0 - r))  # (G2') R{r}
            torch.add(R_x[:, H : 2 * H], R_hh[:, H : 2 * H], out=Rz).mul_(z * (1.0 - z))  # (G2') R{z}
            R_hn[t - 1] = R_hh[:, 2 * H :]
            torch.mul(R_x[:, 2 * H :] + Rr * hn[t - 1] + r * R_hn[t - 1], 1.0 - n * n, out=Rn)  # (G3') R{n}
            Rh[t] = Rn + Rz * (h[t - 1] - n) + z * (Rh[t - 1] - Rn)  # (G4') R{h_t}
        return RecurrentCache(Rh, R_gates, hn=R_hn)

    def r_through_time(
        self,
        Rg: Tensor,
        cache: RecurrentCache,
        Rcache: RecurrentCache,
        grads: BPTTGradients,
        V_hh: Tensor,
        first: float,
    ) -> BPTTGradients:
        W_hh, H, h, hn, Rh, R_hn = self.params["W_hh"], self.H, cache.h, cache.hn, Rcache.h, Rcache.hn
        assert hn is not None and R_hn is not None
        T, B, _ = Rg.shape
        R_dx = torch.empty_like(cache.gates)  # R{[da_r da_z da_n]} of every step   (T, B, 3H)
        R_dh_side = torch.empty_like(cache.gates)  # R{[da_r da_z dJ/dh_n]}
        kept = {kind: torch.empty_like(Rg) for kind in self.step_kinds}  # R{dJ/d(.)} of every step's r z n h
        # the terms that carry dJ/d(.), known for every step from the first-order BPTT (grads.steps)
        d = grads.steps
        if first:
            r, z, n = cache.gates.split(H, dim=2)  # (T, B, H) each
            Rr, Rz, Rn = Rcache.gates.split(H, dim=2)
            da_n = grads.da_x[..., 2 * H :]  # (T, B, H)
            n_src = -d["h"] * Rz  # (RG4) - dJ/dh_t o R{z}
            z_src = d["h"] * (Rh[:-1] - Rn)  # (RG4) dJ/dh_t o (R{h_(t-1)} - R{n})
            an_src = -2.0 * d["n"] * n * Rn  # (RG3) - dJ/dn o 2 n o R{n}
            r_src = da_n * R_hn  # (RG3) da_n o R{h_n}
            hn_src = da_n * Rr  # (RG3) da_n o R{r}
            ar_src = d["r"] * (1.0 - 2.0 * r) * Rr  # (RG2) dJ/dr o (1 - 2 r) o R{r}
            az_src = d["z"] * (1.0 - 2.0 * z) * Rz  # (RG2) dJ/dz o (1 - 2 z) o R{z}
            back = d["h"] * Rz + grads.da_h @ V_hh  # (RG1) dJ/dh_t o R{z} + da_h V_hh
        R_next = Rg.new_zeros(B, H)  # nothing comes back from step T + 1
        for t in range(T, 0, -1):
            r, z, n = cache.gates[t - 1].split(H, dim=1)  # (B, H) each
            R_dh = self.total_R_dJ_dh(Rg[t - 1], R_next)  # (RR1)
            R_dn = R_dh - R_dh * z  # (RG4) R{dJ/dh_t} o (1 - z)
            R_dz = R_dh * (h[t - 1] - n)  # (RG4) R{dJ/dh_t} o (h_(t-1) - n)
            R_ar, R_az, R_an = R_dx[t - 1].split(H, dim=1)  # views to fill
            if first:
                R_dn += n_src[t - 1]
                R_dz += z_src[t - 1]
            torch.mul(R_dn, 1.0 - n * n, out=R_an)  # (RG3) R{da_n} = R{dJ/dn} o (1 - n^2) ...
            if first:
                R_an += an_src[t - 1]  # ... - dJ/dn o 2 n o R{n}
            R_dr = R_an * hn[t - 1]  # (RG3) R{dJ/dr} = R{da_n} o h_n ...
            torch.mul(R_an, r, out=R_dh_side[t - 1, :, 2 * H :])  # (RG3) R{dJ/dh_n} = R{da_n} o r ...
            if first:
                R_dr += r_src[t - 1]  # ... + da_n o R{h_n}
                R_dh_side[t - 1, :, 2 * H :] += hn_src[t - 1]  # ... + da_n o R{r}
            for kind, value in zip(self.step_kinds, (R_dr, R_dz, R_dn, R_dh), strict=True):
                kept[kind][t - 1] = value
            torch.mul(R_dr, r * (1.0 - r), out=R_ar)  # (RG2) R{da_r} = R{dJ/dr} o r (1 - r) ...
            torch.mul(R_dz, z * (1.0 - z), out=R_az)  # (RG2) R{da_z} = R{dJ/dz} o z (1 - z) ...
            if first:
                R_ar += ar_src[t - 1]  # ... + dJ/dr o (1 - 2 r) o R{r}
                R_az += az_src[t - 1]  # ... + dJ/dz o (1 - 2 z) o R{z}
            R_dh_side[t - 1, :, : 2 * H] = R_dx[t - 1, :, : 2 * H]  # (G1) r and z: the same on both sides
            R_next = torch.addmm(R_dh * z, R_dh_side[t - 1], W_hh)  # (RG1) R{dJ/dh_t} o z + R{da_h} W_hh
            if first:
                R_next += back[t - 1]  # (RG1) + dJ/dh_t o R{z} + da_h V_hh
        return BPTTGradients(R_dx, R_dh_side, {"h": R_next}, kept)

    def torch_step(
        self, x_t: Tensor, state: dict[str, Tensor], w: Mapping[str, Tensor | None], tap: Tap, path: tuple[int, ...]
    ) -> dict[str, Tensor]:
        W_ih, W_hh = w["W_ih"], w["W_hh"]
        assert W_ih is not None and W_hh is not None
        x_r, x_z, x_n = F.linear(x_t, W_ih, w["b_ih"]).chunk(3, dim=1)  # (B, H) each
        h_r, h_z, h_n = F.linear(state["h"], W_hh, w["b_hh"]).chunk(3, dim=1)
        r = tap.intermediate(Key("r", path), torch.sigmoid(x_r + h_r))
        z = tap.intermediate(Key("z", path), torch.sigmoid(x_z + h_z))
        n = tap.intermediate(Key("n", path), torch.tanh(x_n + r * h_n))
        return {"h": tap.intermediate(Key("h", path), (1 - z) * n + z * state["h"])}
