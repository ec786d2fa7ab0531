"""Finite differences in float64: the reference that assumes nothing but J itself, dispatched in
one place.

    network_finite_differences(net, X, y, names)   # any network: fd_mlp's structured path when
                                                   # every layer has row structure, else fd_network's
    function_finite_differences(loss, params)      # any function of named arrays

Both network paths take their steps, moves, error estimates, piece watching, chunks and fixed
entries from refbp.verify.fd_core (whose docstring gives the equations); they differ only in how
a batch of perturbed copies of J is evaluated: the structured path (refbp.verify.fd_mlp) uses
the row and column structure of eq. (1) so that no copy runs the whole network, the general path
(refbp.verify.fd_network) runs the oracle under ``torch.func.vmap``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..nn.network import Network
from ..nn.stack import walk_layers
from .fd_core import (
    CHUNK_BYTES,
    MOVES,
    NOISE_PROBES,
    FDResult,
    Fixed,
    PieceRecorder,
    PieceWatcher,
    combine_evaluations,
    evaluation_noise,
    moves,
    random_directions,
    steps,
)
from .fd_mlp import has_row_structure, mlp_finite_differences
from .fd_network import oracle_finite_differences
from .reference import oracle_point
from .tolerances import FD_STEP

__all__ = [
    "CHUNK_BYTES",
    "MOVES",
    "NOISE_PROBES",
    "FDResult",
    "PieceRecorder",
    "PieceWatcher",
    "evaluation_noise",
    "fixed_entries",
    "function_finite_differences",
    "moves",
    "network_finite_differences",
    "random_directions",
    "steps",
]


def fixed_entries(net: Network) -> dict[str, Fixed]:
    """name -> the entries whose gradient a layer defines as zero (``Layer.fixed_gradients``:
    Embedding's padding row), found by walking the layers. For a tied parameter the convention
    holds for one use only, so its entries are excluded instead (left to autograd)."""
    tied = set(net.ties) | set(net.ties.values())
    out: dict[str, Fixed] = {}
    for path, layer in walk_layers(net.layers):
        for key, mask in layer.fixed_gradients(path).items():
            name = str(net.ties.get(key, key))
            mask = mask.detach().cpu()
            if name in out:
                mask = mask | out[name].mask
            out[name] = Fixed(mask, zero=key not in tied)
    return out


def network_finite_differences(
    net: Network,
    X: Tensor,
    y: Tensor,
    names: list[str],
    *,
    noise: Mapping[tuple[int, ...], Tensor] | None = None,
    mode: str = "full",
    directions: int = 8,
    seed: int = 0,
) -> dict[str, FDResult]:
    """Finite differences of J for the tensors named (keys as in ``backward(...).as_dict()``).

    Args:
        noise: the dropout keep-masks of the forward pass being checked (``cache.noise``).
        mode: "full" (every entry) or "directional" (``directions`` random signed vectors).
        seed: seeds the directions; the same seed gives the same directions.
    """
    if mode not in ("full", "directional"):
        raise ValueError(f"mode={mode!r}; expected 'full' or 'directional'")
    cpu = torch.device("cpu")
    X64, y64, noise64 = oracle_point(net, X, y, noise or {}, dtype=torch.float64, device=cpu)
    sigma = evaluation_noise(net, X64, y64, noise64, names)
    fixed = fixed_entries(net)
    if has_row_structure(net):
        return mlp_finite_differences(
            net, X, y, names, mode=mode, directions=directions, seed=seed, sigma=sigma, fixed=fixed
        )
    return oracle_finite_differences(
        net, X64, y64, noise64, names, mode=mode, directions=directions, seed=seed, sigma=sigma, fixed=fixed
    )


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
    its device). Full mode makes 4 calls per entry, directional mode 4 per direction and
    array: use directional for parameter vectors of more than a few thousand entries. Nothing
    is known of the function's pieces, so no difference is excluded; a non-finite J makes
    the difference non-finite, and the comparison counts it as unverified.
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
            h_up, h_down = steps(flat)
            n = flat.numel()
            steps_k = moves(h_up, h_down).reshape(4, n)
            J = torch.empty(4, n, dtype=torch.float64)
            for k in range(n):
                for row in range(4):
                    moved = flat.clone()
                    moved[k] += steps_k[row, k]
                    J[row, k] = call(name, moved.reshape(p.shape))
            values, error = combine_evaluations(J, h_up, h_down)
            excluded = torch.zeros(n, dtype=torch.bool)
            out[name] = FDResult(values.reshape(p.shape), error.reshape(p.shape), excluded.reshape(p.shape), None, J0)
        else:
            V = random_directions(tuple(p.shape), directions, seed=seed + 1009 * offset)
            h = FD_STEP * max(1.0, float(p.abs().max()) if p.numel() else 1.0)
            J = torch.tensor(
                [[call(name, p + s * h * V[k]) for k in range(directions)] for s in MOVES], dtype=torch.float64
            )
            h_k = torch.full((directions,), h, dtype=torch.float64)
            values, error = combine_evaluations(J, h_k, h_k)
            out[name] = FDResult(values, error, torch.zeros(directions, dtype=torch.bool), V, J0)
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
