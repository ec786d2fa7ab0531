"""A catalogue of mistakes people make writing a custom backward, each one a Function that
differs from a correct one (refbp.verify.hand_functions) by that mistake alone.

``check_autograd_function`` must catch each in float32, float16 and bfloat16 where the mistake
exceeds the dtype's resolution, and say "unverified" (never "passed") where it does not
(``subtle`` bugs: smaller than the float16 and bfloat16 tolerances, larger than float32's).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.autograd import Function

from .hand_functions import CASES, GELU, LayerNorm, Linear, Mul, Sigmoid, SoftmaxCrossEntropy, Tanh, up

__all__ = ["FUNCTION_BUGS", "FunctionBug"]


class SigmoidWithoutGradOutput(Sigmoid):
    """dJ/dx = s (1 - s): the local derivative, never multiplied by grad_output."""

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> Tensor:
        (s,) = ctx.saved_tensors
        return (s * (1.0 - s)).to(g.dtype)


class LinearTransposedWeight(Linear):
    """dJ/dW = x^T g, the transpose of g^T x (unnoticed when W is square)."""

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x, W = ctx.saved_tensors
        dJ_dx, _, dJ_db = Linear.backward(ctx, g)
        return dJ_dx, (up(x).T @ up(g)).to(W.dtype), dJ_db


class LinearBiasMean(Linear):
    """dJ/db = mean_n g: the batch averaged into the bias where the forward sums it."""

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        dJ_dx, dJ_dW, _ = Linear.backward(ctx, g)
        return dJ_dx, dJ_dW, up(g).mean(0).to(dJ_dW.dtype)


class LinearJvpWithoutWeightTerm(Linear):
    """jvp = t_x W^T + t_b: the product rule's x t_W^T term forgotten (the backward is right)."""

    @staticmethod
    def jvp(ctx: Any, t_x: Tensor, t_W: Tensor, t_b: Tensor) -> Tensor:
        x, W = ctx.saved_tensors
        return (up(t_x) @ up(W).T + up(t_b)).to(x.dtype)


class CrossEntropyWithoutMean(SoftmaxCrossEntropy):
    """dJ/dz = g (softmax - onehot): the forward's 1/N mean left out of the backward."""

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None]:
        log_p, y = ctx.saved_tensors
        onehot = torch.nn.functional.one_hot(y, log_p.shape[1]).to(log_p.dtype)
        return (up(g) * (log_p.exp() - onehot)).to(g.dtype), None


class MulSwapped(Mul):
    """dJ/du = g o u, dJ/dv = g o v: each input given the other's gradient."""

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, Tensor]:
        u, v = ctx.saved_tensors
        return (up(g) * up(u)).to(u.dtype), (up(g) * up(v)).to(v.dtype)


class LayerNormWithoutProjection(LayerNorm):
    """dJ/dx = (1/sigma)(gw - mean(gw)): the x_hat mean(gw o x_hat) term (sigma's own
    dependence on x) left out."""

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        _, inv_sigma, w = ctx.saved_tensors
        _, dJ_dw, dJ_db = LayerNorm.backward(ctx, g)
        gw = up(g) * up(w)
        return (inv_sigma * (gw - gw.mean(1, keepdim=True))).to(g.dtype), dJ_dw, dJ_db


class TanhFromInput(Tanh):
    """dJ/dx = g (1 - x^2): the input where the output belongs. Right to O(x^4) near 0, wrong
    (even negative) in the saturated tails, |x| > 1."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return torch.tanh(up(x)).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return (up(g) * (1.0 - up(x) * up(x))).to(g.dtype)


class SigmoidOverflow(Sigmoid):
    """dJ/dx = g e^-x / (1 + e^-x)^2: right in float64, NaN (inf / inf) where e^-x overflows,
    x < -88 in float32 arithmetic: a saturated sigmoid whose true gradient is ~0."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        s = torch.sigmoid(up(x))
        ctx.save_for_backward(x)
        ctx.save_for_forward(s)  # the jvp, inherited, is right
        return s.to(x.dtype)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        e = torch.exp(-up(x))
        return (up(g) * e / (1.0 + e) ** 2).to(g.dtype)


class GELUTanhBackward(GELU):
    """The exact (erf) GELU forward with the tanh approximation's derivative: the slopes differ
    by at most 9e-4 (at x = 2.02; the slope is about 1 there), above float32's resolution,
    below float16's and bfloat16's."""

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        x32 = up(x)
        c = math.sqrt(2.0 / math.pi)
        u = c * (x32 + 0.044715 * x32**3)
        t = torch.tanh(u)
        slope = 0.5 * (1.0 + t) + 0.5 * x32 * (1.0 - t * t) * c * (1.0 + 3 * 0.044715 * x32 * x32)
        return (up(g) * slope).to(g.dtype)


@dataclass(frozen=True)
class FunctionBug:
    """One mistake in a custom backward.

    Attributes:
        name: the bug's name.
        case: the correct FunctionCase it breaks (its reference and its point).
        fn: the Function with the mistake.
        what: the mistake, in a sentence.
        subtle: smaller than the float16 and bfloat16 tolerances (only float32 can contradict it).
        inputs: a point where the mistake shows, when the case's own may miss it.
    """

    name: str
    case: str
    fn: type[Function]
    what: str
    subtle: bool = False
    inputs: Callable[[torch.dtype, torch.Generator], tuple[Tensor, ...]] | None = None

    def point(self, dtype: torch.dtype, generator: torch.Generator) -> tuple[Tensor, ...]:
        return (self.inputs or CASES[self.case].inputs)(dtype, generator)


def _saturated(dtype: torch.dtype, generator: torch.Generator) -> tuple[Tensor, ...]:
    """(3, 5), the last column at -100: a sigmoid saturated at 0 (gradient ~ 4e-44)."""
    x = 2.0 * torch.randn((3, 5), dtype=torch.float64, generator=generator)
    x[:, -1] = -100.0
    return (x.to(dtype),)


FUNCTION_BUGS: dict[str, FunctionBug] = {
    bug.name: bug
    for bug in (
        FunctionBug("missing_grad_output", "sigmoid", SigmoidWithoutGradOutput,
                    "the backward returns the local derivative s (1 - s), not grad_output times it"),
        FunctionBug("transposed_weight_grad", "linear", LinearTransposedWeight,
                    "dJ/dW = x^T g, the transpose of g^T x (W square, so the shape hides it)"),
        FunctionBug("bias_mean", "linear", LinearBiasMean,
                    "dJ/db averages grad_output over the batch; the forward adds b to every row"),
        FunctionBug("cross_entropy_sum", "softmax_cross_entropy", CrossEntropyWithoutMean,
                    "the forward takes the mean over the batch, the backward leaves out the 1/N"),
        FunctionBug("swapped_inputs", "mul", MulSwapped,
                    "the gradient of u is returned for v and v's for u"),
        FunctionBug("layer_norm_no_projection", "layer_norm", LayerNormWithoutProjection,
                    "dJ/dx leaves out the term from sigma's dependence on x"),
        FunctionBug("tanh_from_input", "tanh", TanhFromInput,
                    "1 - x^2 where 1 - tanh(x)^2 belongs: right near 0, wrong where tanh saturates"),
        FunctionBug("sigmoid_overflow", "sigmoid", SigmoidOverflow,
                    "e^-x / (1 + e^-x)^2 overflows to NaN where the sigmoid saturates at 0", inputs=_saturated),
        FunctionBug("linear_jvp_no_weight_term", "linear", LinearJvpWithoutWeightTerm,
                    "the forward-mode jvp forgets the x t_W^T term of the product rule"),
        FunctionBug("gelu_tanh_backward", "gelu", GELUTanhBackward,
                    "the tanh approximation's derivative for the exact GELU", subtle=True),
    )
}  # fmt: skip
"""The catalogue by name."""
