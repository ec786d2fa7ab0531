"""A fused softmax cross-entropy as a custom ``torch.autograd.Function``, checked in float32 and
bfloat16 with ``refbp.check_autograd_function``: the right backward, and one that forgets
grad_output.

    python -m refbp.examples.custom_function

The forward takes logits z (N, C) and class indices y (N,) and returns the mean loss

    J = (1/N) sum_n ( logsumexp(z_n) - z_n[y_n] ),

and the backward, fused, never forms the softmax's Jacobian:

    dJ/dz = g (softmax(z) - onehot(y)) / N,         g = grad_output (a scalar)

Forgetting g is the classic mistake here: training works as long as the loss is the last
output (g = 1), and breaks silently under mixed-precision loss scaling (g = 65536) or any loss
weight. gradcheck needs float64 for this; refbp checks the kernel in the dtype it runs in, with
an allowance from that dtype and the point's conditioning, against F.cross_entropy in float64.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import Function

from ..verify.autograd_function import check_autograd_function
from ..verify.result import CheckResult

__all__ = ["DTYPES", "FusedCrossEntropy", "FusedCrossEntropyWithoutGradOutput", "check_variants", "main"]

DTYPES = (torch.float32, torch.bfloat16)
"""What the example checks the kernel in: the training dtype and the mixed-precision one."""


class FusedCrossEntropy(Function):
    """J = mean_n -log softmax(z_n)[y_n], in float32 arithmetic whatever z's dtype (a kernel's
    accumulator), returned in z's dtype."""

    @staticmethod
    def forward(ctx: Any, z: Tensor, y: Tensor) -> Tensor:
        z32 = z.float()  # (N, C)
        log_p = z32 - torch.logsumexp(z32, dim=1, keepdim=True)  # (N, C)  no exp overflow
        ctx.save_for_backward(log_p, y)
        return (-log_p.gather(1, y[:, None]).mean()).to(z.dtype)  # ()

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None]:
        log_p, y = ctx.saved_tensors
        N, C = log_p.shape
        dJ_dz = (log_p.exp() - F.one_hot(y, C).float()) / N  # (N, C)  (softmax - onehot) / N
        return (g.float() * dJ_dz).to(g.dtype), None  # times grad_output; y has no gradient


class FusedCrossEntropyWithoutGradOutput(FusedCrossEntropy):
    """The same kernel with the mistake: dJ/dz = (softmax - onehot) / N, g forgotten."""

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None]:
        log_p, y = ctx.saved_tensors
        N, C = log_p.shape
        return ((log_p.exp() - F.one_hot(y, C).float()) / N).to(g.dtype), None


def check_variants(seed: int = 0) -> dict[tuple[str, str], CheckResult]:
    """(variant, dtype) -> the check of that kernel at one random point (N = 4, C = 5)."""
    generator = torch.Generator().manual_seed(seed + 1)  # the point's stream, not the check's
    z = 2.0 * torch.randn((4, 5), dtype=torch.float64, generator=generator)  # (N, C)
    y = torch.randint(0, 5, (4,), generator=generator)  # (N,)
    out = {}
    for fn in (FusedCrossEntropy, FusedCrossEntropyWithoutGradOutput):
        for dtype in DTYPES:
            result = check_autograd_function(fn, z.to(dtype), y, reference=F.cross_entropy, seed=seed)
            out[fn.__name__, str(dtype).removeprefix("torch.")] = result
    return out


def main() -> int:
    """Check both kernels in both dtypes; print each verdict, its table and what failed."""
    for (variant, dtype), result in check_variants().items():
        print(f"== {variant} in {dtype}: {'PASSED' if result.passed else 'FAILED'}")
        print(result.table(tablefmt="simple"))
        if not result.passed:
            print(result.failure_message())
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
