"""A call through torch's TorchScript interpreter into Python, for the tests of stop signals.

torch.func runs scripted decompositions (layer_norm's backward for a jvp, say) in the TorchScript
interpreter, and a signal handler can run in the Python code such an interpreter calls: whatever
the handler raises, the interpreter throws on as a RuntimeError that carries its text.
``through_torchscript(x)`` makes such a call: the interpreter calls ``ON_CALL[0]()`` in Python
(say, one that sends a signal), then spins a while, so that a pending handler runs in there.
(No ``from __future__ import annotations``: TorchScript reads the annotations as objects.)"""

from collections.abc import Callable

import torch

ON_CALL: list[Callable[[], object]] = [lambda: None]
"""What the Python side of the call does first (the tests set it)."""


@torch.jit.ignore
def _python_side(x: torch.Tensor) -> torch.Tensor:
    ON_CALL[0]()
    for _ in range(200_000):  # Python runs a pending signal handler between these bytecodes
        pass
    return x


@torch.jit.script
def through_torchscript(x: torch.Tensor) -> torch.Tensor:
    return _python_side(x) + 1
