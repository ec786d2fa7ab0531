"""refbp: a PyTorch-verified reference implementation of backpropagation."""

from .backward import Gradients, backward
from .check import CheckResult, GradientMismatchError, check, check_function
from .compare import Comparison
from .network import MLP, ForwardCache

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
