"""Running a torch module beside its refbp conversion: each position's output, and the dropout
keep-masks torch drew, recovered exactly and keyed by the refbp layer paths (``capture_noise``
and ``from_torch``'s self-check in refbp.nn.convert).

How a mask is recovered: torch's mask is not visible from outside, and an input entry that
is exactly 0 gives 0 whether it was kept or not (its gradient still depends on the mask). So a
hook saves torch's random state before each Dropout call and, after it, draws again from that
state as the call did (``F.dropout`` of ones of the input's shape, dtype and device), then puts
the state back where the call left it. Where the input is non-zero the redrawn mask must match
the output's zeros, or the run fails with a ValueError saying the mask could not be recovered.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .layer import Layer
from .stack import walk_layers
from .validation import describe

__all__ = ["ModuleFailedError", "TorchRun", "check_inputs", "describe_inputs", "run_module"]


@dataclass
class TorchRun:
    """What one run of (a copy of) the module gave.

    Attributes:
        calls: the output of each call of a top-level module, in call order (one per position
            of the Sequential).
        output: the module's output.
        noise: the dropout keep-masks drawn, by refbp layer path.
    """

    calls: list[Tensor]
    output: Tensor
    noise: dict[tuple[int, ...], Tensor]


class ModuleFailedError(ValueError):
    """The torch module itself raised on the input it was given."""


def run_module(module: torch.nn.Sequential, layers: list[Layer], inputs: tuple[Tensor, ...]) -> TorchRun:
    """Run a deep copy of ``module`` on ``inputs`` with torch's random state restored afterwards,
    keeping each position's output and each dropout mask (mapped to the paths of ``layers``,
    the module converted: its random layers, depth first, are torch's dropout calls in order)."""
    twin = copy.deepcopy(module)
    calls: list[Tensor] = []
    masks: list[Tensor] = []
    failures: list[str] = []
    handles = []
    for rnn in {id(m): m for m in twin.modules() if isinstance(m, torch.nn.RNNBase)}.values():
        handles.append(rnn.register_forward_hook(_output_sequence))  # before the recording hook below
    for child in {id(c): c for c in twin}.values():  # a module used twice is hooked once, heard twice
        handles.append(child.register_forward_hook(lambda m, args, out: calls.append(out.detach())))
    for m in {id(m): m for m in twin.modules() if type(m) in _DROPOUT_TYPES}.values():
        handles.extend(_hook_dropout(m, masks, failures))
    devices = sorted({t.device.index or 0 for t in (*inputs, *twin.parameters()) if t.device.type == "cuda"})
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            output = twin(*inputs)
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        raise ModuleFailedError(f"the module fails on the input ({describe_inputs(inputs)}): {err}") from err
    finally:
        for handle in handles:
            handle.remove()
    if failures:
        raise ValueError(failures[0])
    paths = [path for path, layer in walk_layers(layers) if not layer.sublayers() and layer.stochastic]
    if len(paths) != len(masks):
        raise ValueError(
            f"the module drew {len(masks)} dropout masks, but its conversion has {len(paths)} random layers "
            f"({paths}); does its forward call its modules other than in order, once each?"
        )
    return TorchRun(calls, output, dict(zip(paths, masks, strict=True)))


def _output_sequence(module: torch.nn.Module, args: tuple[Tensor, ...], out: tuple[Tensor, Any]) -> Tensor:
    """A recurrent module inside a Sequential passes its output sequence on, as refbp converts it
    (torch's own Sequential would hand the next module the tuple (output, final state))."""
    return out[0]


_DROPOUT_TYPES: tuple[type[torch.nn.Module], ...] = (torch.nn.Dropout,)
"""The torch dropout modules refbp converts (refbp.nn.dropout registers torch.nn.Dropout only)."""


def _hook_dropout(module: torch.nn.Module, masks: list[Tensor], failures: list[str]) -> list[Any]:
    """Hooks that append the keep-mask of each call of the torch Dropout ``module`` to ``masks``
    (see ``capture_noise`` for how it is recovered), or what went wrong to ``failures``."""
    saved: list[tuple[Any, Tensor]] = []

    def before(m: torch.nn.Module, args: tuple[Tensor, ...]) -> None:
        saved.append((_rng_state(args[0].device), args[0].detach().clone()))  # inplace=True overwrites x

    def after(m: torch.nn.Module, args: tuple[Tensor, ...], out: Tensor) -> None:
        state, x = saved.pop()
        p = float(m.p)  # type: ignore[arg-type]
        if not m.training or p == 0.0:
            return  # the identity: no mask drawn, and refbp's layer draws none either
        left = _rng_state(x.device)
        _set_rng_state(x.device, state)
        scaled = F.dropout(torch.ones_like(x), p, training=True)  # the call's draw again: m / (1 - p)
        _set_rng_state(x.device, left)
        mask = scaled != 0
        seen = x != 0
        if not torch.equal((out != 0)[seen], mask[seen]):
            failures.append(
                f"could not recover the keep-mask of {m!r} on an input of {describe(x)}: drawing again from "
                "torch's saved random state gave another mask (a generator other than torch's default one?)"
            )
        masks.append(mask)

    return [module.register_forward_pre_hook(before), module.register_forward_hook(after)]


def _rng_state(device: torch.device) -> Tensor:
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _set_rng_state(device: torch.device, state: Tensor) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


def check_inputs(inputs: object, name: str) -> tuple[Tensor, ...]:
    """The module's inputs as a tuple of one tensor (a torch.nn.Sequential takes one)."""
    if isinstance(inputs, Tensor):
        inputs = (inputs,)
    if not isinstance(inputs, (tuple, list)) or not all(isinstance(t, Tensor) for t in inputs):
        raise TypeError(f"{name} must be a tuple of tensors, got {type(inputs).__name__}")
    if len(inputs) != 1:
        raise ValueError(f"{name} has {len(inputs)} tensors; a torch.nn.Sequential takes exactly one input")
    return tuple(inputs)


def describe_inputs(inputs: tuple[Tensor, ...]) -> str:
    return "; ".join(describe(t) for t in inputs)
