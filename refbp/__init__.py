"""refbp: a PyTorch-verified reference implementation of backpropagation.

The public names load on first use (PEP 562): ``import refbp`` itself imports no torch, so the
command line starts fast, and an interrupt while torch loads is handled like any other.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the lazy names are, for type checkers and readers
    from .nn.convert import capture_noise, from_torch
    from .nn.graph import GraphNetwork
    from .nn.mlp import MLP, ForwardCache, Gradients, backward
    from .nn.network import Network
    from .nn.second_order import gvp, hvp, jvp
    from .verify.autograd_function import check_autograd_function
    from .verify.check import CheckResult, GradientMismatchError, check, check_function
    from .verify.compare import Comparison
    from .verify.second_order import check_second_order

__all__ = [
    "MLP",
    "CheckResult",
    "Comparison",
    "ForwardCache",
    "GradientMismatchError",
    "Gradients",
    "GraphNetwork",
    "Network",
    "backward",
    "capture_noise",
    "check",
    "check_autograd_function",
    "check_function",
    "check_second_order",
    "from_torch",
    "gvp",
    "hvp",
    "jvp",
]
from .version import __version__ as __version__

_LAZY = {
    "MLP": "refbp.nn.mlp",
    "ForwardCache": "refbp.nn.mlp",
    "Gradients": "refbp.nn.mlp",
    "backward": "refbp.nn.mlp",
    "Network": "refbp.nn.network",
    "GraphNetwork": "refbp.nn.graph",
    "from_torch": "refbp.nn.convert",
    "capture_noise": "refbp.nn.convert",
    "CheckResult": "refbp.verify.check",
    "GradientMismatchError": "refbp.verify.check",
    "check": "refbp.verify.check",
    "check_function": "refbp.verify.check",
    "check_autograd_function": "refbp.verify.autograd_function",
    "Comparison": "refbp.verify.compare",
    "hvp": "refbp.nn.second_order",
    "gvp": "refbp.nn.second_order",
    "jvp": "refbp.nn.second_order",
    "check_second_order": "refbp.verify.second_order",
}
"""Public name -> the module that defines it."""

_SUBMODULES = ("apps", "nn", "verify", "strategies", "testing", "examples", "distributed", "models")
"""Subpackages reachable as attributes (``refbp.strategies``, ``refbp.nn.activations``, ...)."""


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # the next access skips this function
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY, *_SUBMODULES])
