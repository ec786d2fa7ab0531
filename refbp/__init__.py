"""refbp: a PyTorch-verified reference implementation of backpropagation."""

from .nn.backward import Gradients, backward
from .nn.network import MLP, ForwardCache
from .verify.check import CheckResult, GradientMismatchError, check, check_function
from .verify.compare import Comparison

__all__ = [
    "MLP",
    "CheckResult",
    "Comparison",
    "ForwardCache",
    "GradientMismatchError",
    "Gradients",
    "backward",
    "check",
    "check_function",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """``refbp.strategies`` and ``refbp.testing`` load on first use: they import hypothesis
    and pytest-facing helpers that plain users of the backward pass do not need."""
    if name in ("strategies", "testing"):
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
