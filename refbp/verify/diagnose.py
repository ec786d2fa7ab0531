"""Diagnoses: what a mismatch looks like, in words, when the numbers say so.

A failure message says how far a gradient is from its reference; often the pattern says why.
Each diagnosis here holds only when its pattern holds to the row's own tolerance, so it is a
finding, not a guess:

- every entry is c times the reference (one ratio for all): c = -1 is a flipped sign; c = N,
  d_L or N d_L (the batch size, the output width) is a missing 1/N or 1/d_L; c = 2 or 1/2 is a
  lost or extra factor 2 (the 1/2 of 1/2 ||r||^2, or the 2 of the square's derivative);
- every entry is 0 where the reference is not: a gradient never written (a layer skipped);
- the entries that differ are exactly those where a relu-like pre-activation sits on its kink
  (z == 0): torch takes f'(0) = 0 (leaky_relu: the slope); this code takes another subgradient;
- the loss differs by such a factor: a sum where torch takes the mean, or the other 1/2;
- every gradient fails: the forward pass or the loss is probably another model (an activation
  variant, a variance convention, a reduction, dropout masks), not one slip in a backward pass;
- a network with dropout in training mode was checked without the masks the gradients used.

(A shape that is the transpose of the reference's is diagnosed by the comparison itself.)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..nn.keys import Key
from ..nn.network import Network
from ..nn.noise import noise_layers
from ..nn.stack import walk_layers
from .compare import Comparison

__all__ = [
    "all_fail_note",
    "explain_factor",
    "kink_hints",
    "kink_note",
    "loss_note",
    "noise_note",
    "on_kinks",
    "proportional",
    "with_diagnosis",
    "with_kink_note",
]

FACTORS_RTOL = 1e-3
"""How close a fitted ratio must be to a named factor (N, 2, 1/2, ...) to be called that."""


def proportional(g: Tensor, r: Tensor, allowed: float) -> float | None:
    """The c with g = c r to within ``allowed`` at every entry (least squares, c != 1), or None."""
    g64, r64 = g.detach().double().reshape(-1).cpu(), r.detach().double().reshape(-1).cpu()
    if g64.numel() == 0 or not bool(torch.isfinite(g64).all() & torch.isfinite(r64).all()):
        return None
    rr = float(r64 @ r64)
    if rr == 0.0:
        return None
    c = float(g64 @ r64) / rr
    if not math.isfinite(c) or abs(c - 1.0) <= FACTORS_RTOL:
        return None
    if float((g64 - c * r64).abs().max()) > allowed * max(1.0, abs(c)):
        return None
    return c


def explain_factor(c: float, sizes: Mapping[str, int]) -> str:
    """ "every entry is 3x the reference (a missing 1/N? N = 3)" and its kin; ``sizes`` names
    the sizes a factor may be (N, d_L, N d_L). Every explanation that fits is given."""
    if c == 0:
        return "every entry is 0: the gradient was never written (a layer skipped?)"
    text = f"every entry is {c:.3g}x the reference"
    reasons = []
    if _near(c, -1.0):
        reasons.append("sign flipped?")
    for name, size in sizes.items():
        if size > 1 and _near(c, float(size)):
            reasons.append(f"a missing 1/{name}? {name} = {size}")
        if size > 1 and _near(c, 1.0 / size):
            reasons.append(f"an extra 1/{name}? {name} = {size}")
    if _near(c, 2.0):
        reasons.append("a lost 1/2, or the square's 2 counted twice?")
    if _near(c, 0.5):
        reasons.append("an extra 1/2, or the square's derivative without its 2?")
    return text + (f" ({'; or '.join(reasons)})" if reasons else "")


def _near(c: float, target: float) -> bool:
    return abs(c - target) <= FACTORS_RTOL * abs(target)


def kink_note(mismatched: Tensor, on_kink: Tensor) -> str:
    """A note when the mismatched entries are exactly the entries on a kink (both bool, one shape)."""
    if mismatched.shape != on_kink.shape or not bool(mismatched.any()):
        return ""
    if bool((mismatched == on_kink).all()):
        return (
            "the differing entries sit exactly on relu kinks (z == 0): torch takes f'(0) = 0 "
            "(leaky_relu: its slope), this code takes the other side's slope"
        )
    return ""


def loss_note(c: float, sizes: Mapping[str, int]) -> str:
    """Why a user's J may be ``c`` times refbp's: a sum for a mean over one of ``sizes``, the
    other 1/2 convention, or else another forward pass or loss."""
    reasons = []
    for name, n in with_products(sizes).items():
        if n > 1 and abs(c - n) <= 1e-3 * n:
            reasons.append(f"a sum where refbp (as torch) takes the mean over {name} = {n}?")
        if n > 1 and abs(c - 1.0 / n) <= 1e-3 / n:
            reasons.append(f"a mean over {name} = {n} where refbp (as torch) takes the sum?")
    if abs(c - 2.0) <= 2e-3 or abs(c - 0.5) <= 5e-4:
        reasons.append("the other 1/2 convention (1/2 ||y_hat - y||^2 or ||y_hat - y||^2)?")
    if reasons:
        return f"your J is {c:.3g}x refbp's: " + " Or ".join(reasons)
    return "your J differs: a different forward pass or loss (another activation, a GELU variant, another clamp)?"


def with_products(sizes: Mapping[str, int]) -> dict[str, int]:
    """The sizes a wrong factor may be: N, d_L and their product N d_L."""
    return {**sizes, "N d_L": sizes["N"] * sizes["d_L"]}


def with_diagnosis(row: Comparison, g: Tensor, r: Tensor, sizes: Mapping[str, int]) -> Comparison:
    """A mismatch row with what its pattern says (one ratio for every entry), when it says something."""
    if row.verdict != "mismatch" or tuple(g.shape) != tuple(r.shape):
        return row
    c = proportional(g, r, row.allowed)
    if c is None:
        return row
    return dataclasses.replace(row, note=(row.note + " " + explain_factor(c, with_products(sizes)) + ".").strip())


def on_kinks(net: Network, cache: Any) -> dict[str, Tensor]:
    """Intermediate name -> where its entries sit exactly on a kink, as each layer reports
    (``Layer.kinks``: Dense with relu or leaky_relu, z(l) == 0)."""
    out = {}
    for l, layer in enumerate(net.layers, start=1):
        for key, mask in layer.kinks(cache.saved[l], (l,)).items():
            out[str(key)] = mask
    return out


def with_kink_note(row: Comparison, g: Tensor, r: Tensor, on_kink: Tensor | None) -> Comparison:
    """A mismatch of an intermediate's gradient whose differing entries are exactly those on a kink, said so."""
    if on_kink is None or row.verdict != "mismatch" or tuple(g.shape) != tuple(r.shape):
        return row
    differs = (g.detach().double().cpu() - r.double().cpu()).abs() > row.allowed
    note = kink_note(differs, on_kink.cpu())
    return dataclasses.replace(row, note=(row.note + " " + note + ".").strip()) if note else row


def kink_hints(net: Network, cache: Any) -> list[str]:
    """One line per layer with entries exactly on a kink: where subgradient conventions differ."""
    hints = []
    for name, mask in on_kinks(net, cache).items():
        count = int(mask.sum())
        if count:
            layer = ".".join(str(i) for i in Key.parse(name).layer)
            hints.append(
                f"layer {layer} has {count} pre-activations exactly on its kink (z == 0), where torch takes "
                "f'(0) = 0 (leaky_relu: its slope); a gradient that takes the other side's slope differs there"
            )
    return hints


def noise_note(net: Network, given: Mapping[tuple[int, ...], Tensor] | None) -> str:
    """Why the gradients of a network with dropout in training mode may fail when checked
    without (all) their masks: the references ran with masks refbp drew, not the gradients' own."""
    drawn = {path: layer for path, layer in noise_layers(net.layers).items() if given is None or path not in given}
    if not drawn:
        return ""
    where = ", ".join(f"{path} {layer.describe()}" for path, layer in drawn.items())
    which = "none were given" if not given else f"noise= has none for {sorted(drawn)}"
    return (
        f"the network draws dropout masks in training mode ({where}) and {which}: refbp drew its own "
        "dropout masks; pass the masks your gradients used as noise= (refbp's own: cache.noise; a torch "
        "module's: refbp.capture_noise(module, *inputs)), or check in eval mode"
    )


def all_fail_note(net: Network, tensors: Sequence[Any], *, J_given: bool) -> str:
    """When every gradient (two or more) fails: the pattern of a different model, not of one
    slip in a backward pass. Names the variance convention of every layer that normalises by
    batch statistics (BatchNorm in training mode), which the network reports itself."""
    if len(tensors) < 2 or any(t.passed for t in tensors):
        return ""
    causes = "an activation variant such as the tanh GELU, a variance convention, a reduction, dropout masks"
    batch = [
        f"{path} {layer.describe()}"
        for path, layer in walk_layers(net.layers)
        if layer.uses_batch_statistics and not any(sub.uses_batch_statistics for sub in layer.sublayers())
    ]
    note = (
        f"all {len(tensors)} gradients differ: the forward pass or the loss is probably not the same model ({causes})"
    )
    if batch:
        note += (
            f"; {', '.join(batch)} normalises by batch statistics: torch divides the batch variance by N "
            "(biased), not N - 1, and adds eps inside the square root"
        )
    return note + ("" if J_given else "; pass J= to compare losses first")
