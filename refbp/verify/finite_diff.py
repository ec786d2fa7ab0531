"""Central finite differences in float64: the reference that assumes nothing but J itself.

    dJ/dp_k  ~  (J(p + h_k e_k) - J(p - h_k e_k)) / (2 h_k)        full mode, every entry k
    v . dJ/dp ~  (J(p + h v) - J(p - h v)) / (2 h)                  directional mode, k vectors v

Steps are FD_STEP * max(1, |p_k|) (see refbp.tolerances.FD_STEP for why). Whatever the dtype
under test, differences are taken on a float64 copy of the network, evaluated with torch's own
functions (refbp.reference), not with refbp's manual forward.

For refbp's MLPs both modes are vectorised: P perturbed copies run as one batched forward pass
(P, N, d), chunked to bound memory. Full mode also uses the layer structure, so that no copy
runs the whole network:

- perturbing W(l)[j, k] (or b(l)[j]) only adds delta * a(l-1)[:, k] (or delta) to column j of
  z(l), and changes nothing below layer l; by eq. (1) the changed column j of a(l) then moves
  z(l+1) by an outer product, with no matrix product at layer l+1 (``run_from_column``);
- perturbing entry (n, k) of X, z(l) or a(l) only changes row n of every later layer: the
  observations of a batch go through the network independently (``run_rows_from``).

Intermediates z(l), a(l) are checked the same way: perturb the intermediate, run the rest of
the network from that layer. When a perturbation moves any pre-activation of a relu or
leaky_relu layer across 0 (a kink), the difference quotient mixes two slopes and means
nothing: such entries (or directions) are flagged ``excluded`` and counted, not compared.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..nn.activations import get_activation
from ..nn.network import MLP
from .reference import TORCH_ACTIVATIONS
from .tolerances import FD_STEP

__all__ = ["CHUNK_BYTES", "FDResult", "function_finite_differences", "mlp_finite_differences", "random_directions"]

CHUNK_BYTES = 4 * 2**20
"""Memory for one batch of perturbed activations (P, N, d): 4 MiB, so a check needs little
memory whatever the network's size, and each batch stays in the CPU's cache (2 to 3 times
faster than 64 MiB batches on a 1 MiB-L2 machine: benchmarks/, item 3)."""


@dataclass
class FDResult:
    """Finite differences for one tensor.

    Attributes:
        values: full mode: dJ/dp, the tensor's shape. Directional: (k,) estimates of v_k . dJ/dp.
        excluded: bool, like ``values``: entries (directions) whose perturbation crossed a kink.
        directions: directional mode only: (k, *shape) float64, the v_k used.
        J: the loss at the unperturbed point, float64.
    """

    values: Tensor
    excluded: Tensor
    directions: Tensor | None
    J: float


def random_directions(shape: tuple[int, ...], k: int, *, seed: int) -> Tensor:
    """k signed random directions (k, *shape), float64, each scaled to max |v| = 1.

    Gaussian entries, so signs and sizes vary: unlike one fixed all-positive direction, a
    wrong gradient cannot stay orthogonal to all of them except on a set of probability 0."""
    generator = torch.Generator().manual_seed(seed)
    V = torch.randn((k, *shape), dtype=torch.float64, generator=generator)
    norms = V.reshape(k, -1).abs().amax(dim=1).clamp_min(1e-300)
    return V / norms.reshape((k,) + (1,) * len(shape))


class _Network64:
    """A float64 copy of an MLP, its base forward pass, and a batched J evaluator."""

    def __init__(self, net: MLP, X: Tensor, y: Tensor) -> None:
        # float64 on the CPU whatever the network's dtype and device: the reference is the same
        # everywhere, and float16/bfloat16/CUDA networks are checked against it as they are.
        self.Ws = [W.detach().to(device="cpu", dtype=torch.float64) for W in net.weights]
        self.bs = [b.detach().to(device="cpu", dtype=torch.float64) for b in net.biases]
        self.names = list(net.activations)
        self.kinked = [get_activation(name).kinked for name in self.names]
        self.loss_name = net.loss_name
        self.weight_decay = float(net.weight_decay)
        self.y = y.detach().to(device="cpu", dtype=torch.float64) if y.is_floating_point() else y.detach().cpu()
        self.L = len(self.Ws)
        # base forward, indexed as in the equations: a[0] = X, z[0] unused
        self.a: list[Tensor] = [X.detach().to(device="cpu", dtype=torch.float64)]
        self.z: list[Tensor] = [self.a[0]]
        for i in range(1, self.L + 1):
            self.z.append(F.linear(self.a[i - 1], self.Ws[i - 1], self.bs[i - 1]))
            self.a.append(TORCH_ACTIVATIONS[self.names[i - 1]](self.z[i]))
        self.wd_base = sum(float((W * W).sum()) for W in self.Ws)
        self.J = float(self.batched_loss(self.a[-1].unsqueeze(0))[0]) + 0.5 * self.weight_decay * self.wd_base

    def batched_loss(self, y_hat: Tensor) -> Tensor:
        """The data loss of P outputs at once: (P, N, d_L) -> (P,), torch's own functions."""
        P, N, d = y_hat.shape
        if self.loss_name == "cross_entropy":
            per_row = F.cross_entropy(y_hat.reshape(P * N, d), self.y.repeat(P), reduction="none")
            return per_row.reshape(P, N).mean(dim=1)
        y = self.y.expand_as(y_hat)
        if self.loss_name == "half_sse":
            return 0.5 * F.mse_loss(y_hat, y, reduction="none").sum(dim=(1, 2))
        if self.loss_name == "mse":
            return F.mse_loss(y_hat, y, reduction="none").mean(dim=(1, 2))
        return F.binary_cross_entropy(y_hat, y, reduction="none").mean(dim=(1, 2))

    def run_from(self, layer: int, *, Z: Tensor | None = None, A: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """J for P perturbed states, and whether each crossed a kink.

        Give either Z, a perturbed z(layer) (P, N, d_layer), or A, a perturbed a(layer); the
        rest of the network runs from there. Returns (J (P,), crossed (P,) bool)."""
        first, state = _starting_point(layer, Z, A)
        P = state.shape[0]
        crossed = torch.zeros(P, dtype=torch.bool)
        for i in range(first, self.L + 1):
            if i > first or Z is None:
                N, d_prev = state.shape[1], state.shape[2]
                # eq. (1) for all P copies as one matrix product, bias added inside it
                z_i = torch.addmm(self.bs[i - 1], state.reshape(P * N, d_prev), self.Ws[i - 1].T)  # (P N, d_i)
                state = z_i.reshape(P, N, -1)  # z(i)  (P, N, d_i)
            if self.kinked[i - 1]:
                flipped = (state > 0) != (self.z[i] > 0)  # a pre-activation moved across 0
                crossed |= flipped.reshape(P, -1).any(dim=1)
            state = TORCH_ACTIVATIONS[self.names[i - 1]](state)  # a(i)  (P, N, d_i)
        return self.batched_loss(state), crossed

    def run_from_column(self, layer: int, j: Tensor, z_col: Tensor) -> tuple[Tensor, Tensor]:
        """J for P copies of the network that differ from the base only in column j[p] of
        z(layer), which holds z_col[p] (P, N); and whether each crossed a kink.

        Only column j of a(layer) changes, so by eq. (1) z(layer+1) moves by the outer product
        (change of that column) W(layer+1)[:, j]^T: no matrix product is needed at layer+1."""
        P, N = z_col.shape
        f = TORCH_ACTIVATIONS[self.names[layer - 1]]
        crossed = torch.zeros(P, dtype=torch.bool)
        if self.kinked[layer - 1]:
            crossed = ((z_col > 0) != (self.z[layer].T[j] > 0)).any(dim=1)
        a_col = f(z_col)  # (P, N) column j of a(layer), one per copy
        if layer == self.L:  # the output itself: copy y_hat and replace column j
            y_hat = self.a[layer].expand(P, N, -1).clone()  # (P, N, d_L)
            y_hat[torch.arange(P), :, j] = a_col
            return self.batched_loss(y_hat) + 0.5 * self.weight_decay * self.wd_base, crossed
        change = a_col - self.a[layer].T[j]  # (P, N)
        W_col = self.Ws[layer].T[j]  # (P, d_{layer+1}) column j of W(layer+1), one per copy
        Z = self.z[layer + 1] + change.unsqueeze(2) * W_col.unsqueeze(1)  # (P, N, d_{layer+1})
        J, crossed_above = self.run_from(layer + 1, Z=Z)
        return J + 0.5 * self.weight_decay * self.wd_base, crossed | crossed_above

    def run_rows_from(
        self, layer: int, n: Tensor, *, Z: Tensor | None = None, A: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """J for P copies of the network that differ from the base only in row n[p] of
        z(layer) (give Z, (P, d_layer)) or of a(layer) (give A); and whether each crossed a kink.

        Each observation goes through eqs. (1)-(2) on its own, so only row n of every later
        z(i), a(i) changes: the P rows run alone, then replace row n of a copy of y_hat."""
        first, state = _starting_point(layer, Z, A)
        P = state.shape[0]
        crossed = torch.zeros(P, dtype=torch.bool)
        for i in range(first, self.L + 1):
            if i > first or Z is None:
                state = torch.addmm(self.bs[i - 1], state, self.Ws[i - 1].T)  # (1) row n of z(i)  (P, d_i)
            if self.kinked[i - 1]:
                crossed |= ((state > 0) != (self.z[i][n] > 0)).any(dim=1)
            state = TORCH_ACTIVATIONS[self.names[i - 1]](state)  # (2) row n of a(i)  (P, d_i)
        y_hat = self.a[-1].expand(P, *self.a[-1].shape).clone()  # (P, N, d_L)
        y_hat[torch.arange(P), n] = state
        return self.batched_loss(y_hat) + 0.5 * self.weight_decay * self.wd_base, crossed


def _starting_point(layer: int, Z: Tensor | None, A: Tensor | None) -> tuple[int, Tensor]:
    """(first layer to run, state): from a perturbed z(layer), f_layer is applied first; from a
    perturbed a(layer), layer+1's linear map (eq. 1) comes first."""
    if Z is not None:
        return layer, Z
    if A is not None:
        return layer + 1, A
    raise ValueError("a perturbed z (Z) or a (A) is needed to start from")


def _steps(p: Tensor) -> tuple[Tensor, Tensor]:
    """Exactly representable steps up and down for each entry: h+ = (p + h) - p, h- = p - (p - h)."""
    h = FD_STEP * p.abs().clamp_min(1.0)
    return (p + h) - p, p - (p - h)


def mlp_finite_differences(
    net: MLP,
    X: Tensor,
    y: Tensor,
    names: list[str],
    *,
    mode: str = "full",
    directions: int = 8,
    seed: int = 0,
) -> dict[str, FDResult]:
    """Finite differences of J for the tensors named (keys as in Gradients.as_dict()).

    Args:
        mode: "full" (every entry) or "directional" (``directions`` random signed vectors).
        seed: seeds the directions; the same seed gives the same directions.
    """
    if mode not in ("full", "directional"):
        raise ValueError(f"mode={mode!r}; expected 'full' or 'directional'")
    net64 = _Network64(net, X, y)
    N = X.shape[0]
    width = max(net.dims)
    chunk = max(1, CHUNK_BYTES // (2 * 8 * N * width * 3))  # perturbations per batch
    out: dict[str, FDResult] = {}
    for offset, name in enumerate(names):
        kind, layer = name[0], (0 if name == "X" else int(name[1:]))
        base = _tensor_of(net64, kind, layer)
        if mode == "full":
            out[name] = _full(net64, kind, layer, base, chunk)
        else:
            V = random_directions(tuple(base.shape), directions, seed=seed + 1009 * offset)
            out[name] = _directional(net64, kind, layer, base, V, chunk)
    return out


def _tensor_of(net64: _Network64, kind: str, layer: int) -> Tensor:
    if kind == "W":
        return net64.Ws[layer - 1]
    if kind == "b":
        return net64.bs[layer - 1]
    if kind == "z":
        return net64.z[layer]
    return net64.a[layer]  # "a" and "X" (= a(0))


def _evaluate(net64: _Network64, kind: str, layer: int, delta: Tensor, wd_change: Tensor) -> tuple[Tensor, Tensor]:
    """J and kink flags for P perturbations ``delta`` (P, *shape) of tensor (kind, layer)."""
    if kind == "W":  # z(l) + a(l-1) dW^T: only layer l onwards changes
        Z = net64.z[layer] + torch.matmul(net64.a[layer - 1], delta.transpose(1, 2))  # (P, N, d_l)
        J, crossed = net64.run_from(layer, Z=Z)
    elif kind == "b":
        J, crossed = net64.run_from(layer, Z=net64.z[layer] + delta.unsqueeze(1))  # (P, N, d_l)
    elif kind == "z":
        J, crossed = net64.run_from(layer, Z=net64.z[layer] + delta)
    else:  # "a" or "X"
        J, crossed = net64.run_from(layer, A=net64.a[layer] + delta)
    return J + 0.5 * net64.weight_decay * (net64.wd_base + wd_change), crossed


def _full(net64: _Network64, kind: str, layer: int, base: Tensor, chunk: int) -> FDResult:
    """Full mode: each entry moved up and down, 2P perturbed copies of the network per batch.

    No copy runs the whole network: moving W(l)[j, k] or b(l)[j] changes only column j of
    z(l) (``run_from_column``), and moving entry (n, k) of X, z(l) or a(l) changes only row n
    of every later layer (``run_rows_from``)."""
    n = base.numel()
    h_up, h_down = _steps(base.reshape(-1))  # (n,)
    values = torch.empty(n, dtype=torch.float64)
    excluded = torch.zeros(n, dtype=torch.bool)
    width = base.shape[-1]  # d_{l-1} for W(l), d_l for z(l), a(l); 1 entry per row for b(l)
    for start in range(0, n, chunk):
        idx = torch.arange(start, min(start + chunk, n))
        P = idx.numel()
        steps = torch.cat([h_up[idx], -h_down[idx]])  # (2P,)  +h then -h
        entries = idx.repeat(2)  # (2P,) flat index of the entry moved in each copy
        if kind == "W":  # W(l)[j, k]: by (1), column j of z(l) moves by step * a(l-1)[:, k]
            j, k = entries // width, entries % width
            z_col = net64.z[layer].T[j] + steps.unsqueeze(1) * net64.a[layer - 1].T[k]  # (2P, N)
            J, crossed = net64.run_from_column(layer, j, z_col)
            w = base.reshape(-1)[entries]  # ||W + delta||^2 - ||W||^2 = 2 w delta + delta^2
            J = J + 0.5 * net64.weight_decay * (2 * w * steps + steps * steps)
        elif kind == "b":  # b(l)[j]: by (1), column j of z(l) moves by the step itself
            z_col = net64.z[layer].T[entries] + steps.unsqueeze(1)  # (2P, N)
            J, crossed = net64.run_from_column(layer, entries, z_col)
        else:  # entry (n, k) of X, z(l) or a(l): only row n of that tensor moves
            rows, k = entries // width, entries % width
            moved = base[rows].clone()  # (2P, width) row n of the tensor, one per copy
            moved[torch.arange(2 * P), k] += steps
            if kind == "z":
                J, crossed = net64.run_rows_from(layer, rows, Z=moved)
            else:
                J, crossed = net64.run_rows_from(layer, rows, A=moved)
        values[idx] = (J[:P] - J[P:]) / (h_up[idx] + h_down[idx])
        excluded[idx] = crossed[:P] | crossed[P:]
    return FDResult(values.reshape(base.shape), excluded.reshape(base.shape), None, net64.J)


def _directional(net64: _Network64, kind: str, layer: int, base: Tensor, V: Tensor, chunk: int) -> FDResult:
    k = V.shape[0]
    h = FD_STEP * max(1.0, float(base.abs().max()) if base.numel() else 1.0)
    values = torch.empty(k, dtype=torch.float64)
    excluded = torch.zeros(k, dtype=torch.bool)
    for start in range(0, k, chunk):
        sl = slice(start, min(start + chunk, k))
        Vc = V[sl]
        P = Vc.shape[0]
        delta = torch.cat([h * Vc, -h * Vc])  # (2P, *shape)
        wd_change = torch.zeros(2 * P, dtype=torch.float64)
        if kind == "W":  # ||W + delta||^2 - ||W||^2
            flat = delta.reshape(2 * P, -1)
            wd_change = 2 * flat @ base.reshape(-1) + (flat * flat).sum(dim=1)
        J, crossed = _evaluate(net64, kind, layer, delta, wd_change)
        values[sl] = (J[:P] - J[P:]) / (2 * h)
        excluded[sl] = crossed[:P] | crossed[P:]
    return FDResult(values, excluded, V, net64.J)


# ---- any function of named arrays ------------------------------------------------------
def function_finite_differences(
    loss: Callable[[dict[str, Any]], float],
    params: Mapping[str, Any],
    *,
    mode: str = "full",
    directions: int = 8,
    seed: int = 0,
) -> dict[str, FDResult]:
    """Finite differences of a scalar function of named arrays (NumPy or torch).

    ``loss`` is called with a dict like ``params`` in which one array has been perturbed; the
    arrays passed are float64 and of the type given (NumPy stays NumPy, torch stays torch, on
    its device). Full mode makes 2 calls per entry, directional mode 2 per direction and array:
    use directional for parameter vectors of more than a few thousand entries.
    """
    if mode not in ("full", "directional"):
        raise ValueError(f"mode={mode!r}; expected 'full' or 'directional'")
    base = {name: _as_float64_tensor(value) for name, value in params.items()}

    def call(name: str, new_value: Tensor) -> float:
        args = {key: _like(params[key], new_value if key == name else base[key]) for key in params}
        return float(loss(args))

    J0 = float(loss({key: _like(params[key], base[key]) for key in params}))
    out: dict[str, FDResult] = {}
    for offset, (name, p) in enumerate(base.items()):
        if mode == "full":
            flat = p.reshape(-1)
            h_up, h_down = _steps(flat)
            values = torch.empty(flat.numel(), dtype=torch.float64)
            for k in range(flat.numel()):
                up, down = flat.clone(), flat.clone()
                up[k] += h_up[k]
                down[k] -= h_down[k]
                J_up, J_down = call(name, up.reshape(p.shape)), call(name, down.reshape(p.shape))
                values[k] = (J_up - J_down) / (h_up[k] + h_down[k])
            out[name] = FDResult(values.reshape(p.shape), torch.zeros(p.shape, dtype=torch.bool), None, J0)
        else:
            V = random_directions(tuple(p.shape), directions, seed=seed + 1009 * offset)
            h = FD_STEP * max(1.0, float(p.abs().max()) if p.numel() else 1.0)
            values = torch.empty(directions, dtype=torch.float64)
            for k in range(directions):
                values[k] = (call(name, p + h * V[k]) - call(name, p - h * V[k])) / (2 * h)
            out[name] = FDResult(values, torch.zeros(directions, dtype=torch.bool), V, J0)
    return out


def _as_float64_tensor(value: Any) -> Tensor:
    if isinstance(value, Tensor):
        return value.detach().to(device="cpu", dtype=torch.float64)
    return torch.as_tensor(np.asarray(value, dtype=np.float64))


def _like(original: Any, value: Tensor) -> Any:
    """``value`` as the caller's type: a float64 torch tensor on the original device, or NumPy."""
    if isinstance(original, Tensor):
        return value.to(original.device)
    return value.numpy().copy()
