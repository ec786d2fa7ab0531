"""Correct ``torch.autograd.Function``s with hand-written backward passes, as a kernel author
writes them, and the plain-torch forwards that are their references.

Each Function computes in float32 when given float16 or bfloat16 tensors and rounds its results
to the inputs' dtype, as fused CUDA/Triton kernels do (load half, accumulate in float32, store
half); in float32 and float64 it computes in that dtype. They are what
``check_autograd_function`` must pass in every dtype (refbp.verify.function_sweep) and what the
bug catalogue (refbp.verify.function_bugs) breaks one mistake at a time.

    Linear                  z = x W^T + b              dJ/dx = g W, dJ/dW = g^T x, dJ/db = 1^T g
    SoftmaxCrossEntropy     J = mean_n -log softmax(z_n)[y_n]   dJ/dz = g (softmax(z) - onehot(y)) / N
    LayerNorm               a = w o x_hat + b, x_hat = (x - mu) / sigma   (eq. in ``LayerNorm``)
    GELU                    a = x Phi(x)               dJ/dx = g (Phi(x) + x phi(x))
    Sigmoid                 s = 1 / (1 + e^-x)         dJ/dx = g s (1 - s)
    Tanh                    a = tanh(x)                dJ/dx = g (1 - a^2)
    Mul                     c = u o v                  dJ/du = g o v, dJ/dv = g o u
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import Function

__all__ = [
    "CASES",
    "GELU",
    "FunctionCase",
    "LayerNorm",
    "Linear",
    "Mul",
    "Sigmoid",
    "SoftmaxCrossEntropy",
    "Tanh",
    "up",
]

LAYER_NORM_EPS = 1e-5
"""torch.nn.LayerNorm's default epsilon, so that F.layer_norm is the reference as it stands."""


def up(t: Tensor) -> Tensor:
    """float16/bfloat16 -> float32 for the arithmetic (a kernel's accumulator); else unchanged."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


class Linear(Function):
    """z = x W^T + b;  x (N, d_in), W (d_out, d_in), b (d_out,) -> z (N, d_out)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, W: Tensor, b: Tensor) -> Tensor:
        ctx.save_for_backward(x, W)
        ctx.save_for_forward(x, W)
        return (up(x) @ up(W).T + up(b)).to(x.dtype)  # (N, d_out)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x, W = ctx.saved_tensors
        dJ_dx = up(g) @ up(W)  # (N, d_in)      dJ/dx = g W
        dJ_dW = up(g).T @ up(x)  # (d_out, d_in)  dJ/dW = g^T x
        dJ_db = up(g).sum(0)  # (d_out,)       dJ/db = 1^T g: the batch sums into the bias
        return dJ_dx.to(x.dtype), dJ_dW.to(W.dtype), dJ_db.to(W.dtype)

    @staticmethod
    def jvp(ctx: Any, t_x: Tensor, t_W: Tensor, t_b: Tensor) -> Tensor:
        x, W = ctx.saved_tensors
        dz = up(t_x) @ up(W).T + up(x) @ up(t_W).T + up(t_b)  # (N, d_out)  the product rule
        return dz.to(x.dtype)


class SoftmaxCrossEntropy(Function):
    """J = (1/N) sum_n -log softmax(z_n)[y_n];  z (N, C) logits, y (N,) class indices -> J ()."""

    @staticmethod
    def forward(ctx: Any, z: Tensor, y: Tensor) -> Tensor:
        log_p = torch.log_softmax(up(z), dim=1)  # (N, C)  z - logsumexp(z): no overflow
        ctx.save_for_backward(log_p, y)
        return (-log_p.gather(1, y[:, None]).mean()).to(z.dtype)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None]:
        log_p, y = ctx.saved_tensors
        N = log_p.shape[0]
        onehot = F.one_hot(y, log_p.shape[1]).to(log_p.dtype)  # (N, C)
        dJ_dz = up(g) * (log_p.exp() - onehot) / N  # (N, C)  g (softmax - onehot) / N
        return dJ_dz.to(g.dtype), None


class LayerNorm(Function):
    """a = w o x_hat + b, x_hat = (x - mu) / sigma over the last axis, sigma = sqrt(var + eps);
    x (N, D), w and b (D,).

        dJ/dx = (1/sigma) (gw - mean(gw) - x_hat o mean(gw o x_hat)),  gw = g o w
        dJ/dw = sum_n g o x_hat,  dJ/db = sum_n g
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, w: Tensor, b: Tensor) -> Tensor:
        x32 = up(x)
        mu = x32.mean(dim=1, keepdim=True)  # (N, 1)
        inv_sigma = torch.rsqrt(x32.var(dim=1, unbiased=False, keepdim=True) + LAYER_NORM_EPS)  # (N, 1)
        x_hat = (x32 - mu) * inv_sigma  # (N, D)
        ctx.save_for_backward(x_hat, inv_sigma, w)
        return (up(w) * x_hat + up(b)).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x_hat, inv_sigma, w = ctx.saved_tensors
        g32 = up(g)
        gw = g32 * up(w)  # (N, D)
        dJ_dx = inv_sigma * (gw - gw.mean(1, keepdim=True) - x_hat * (gw * x_hat).mean(1, keepdim=True))
        return dJ_dx.to(g.dtype), (g32 * x_hat).sum(0).to(w.dtype), g32.sum(0).to(w.dtype)


def _Phi(x: Tensor) -> Tensor:
    """The standard normal's CDF, 0.5 (1 + erf(x / sqrt 2))."""
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _phi(x: Tensor) -> Tensor:
    """The standard normal's density, exp(-x^2 / 2) / sqrt(2 pi)."""
    return torch.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


class GELU(Function):
    """a = x Phi(x) (the exact, erf form), elementwise."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return (up(x) * _Phi(up(x))).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        x32 = up(x)
        return (up(g) * (_Phi(x32) + x32 * _phi(x32))).to(g.dtype)  # g (Phi + x phi)


class Sigmoid(Function):
    """s = 1 / (1 + e^-x), elementwise; backward and jvp read s, not x."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        s = torch.sigmoid(up(x))
        ctx.save_for_backward(s)
        ctx.save_for_forward(s)
        return s.to(x.dtype)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> Tensor:
        (s,) = ctx.saved_tensors
        return (up(g) * s * (1.0 - s)).to(g.dtype)  # g s (1 - s)

    @staticmethod
    def jvp(ctx: Any, t: Tensor) -> Tensor:
        (s,) = ctx.saved_tensors
        return (up(t) * s * (1.0 - s)).to(t.dtype)


class Tanh(Function):
    """a = tanh(x), elementwise; backward reads a: 1 - a^2."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        a = torch.tanh(up(x))
        ctx.save_for_backward(a)
        return a.to(x.dtype)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> Tensor:
        (a,) = ctx.saved_tensors
        return (up(g) * (1.0 - a * a)).to(g.dtype)


class Mul(Function):
    """c = u o v, elementwise, u and v of one shape."""

    @staticmethod
    def forward(ctx: Any, u: Tensor, v: Tensor) -> Tensor:
        ctx.save_for_backward(u, v)
        return (up(u) * up(v)).to(u.dtype)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, Tensor]:
        u, v = ctx.saved_tensors
        return (up(g) * up(v)).to(u.dtype), (up(g) * up(u)).to(v.dtype)  # dJ/du = g o v, dJ/dv = g o u


@dataclass(frozen=True)
class FunctionCase:
    """A Function, its plain-torch reference, and how to draw a point to check it at.

    Attributes:
        name: what the case is called in reports and tests.
        fn: the autograd.Function (called as fn.apply).
        reference: the same forward in plain torch ops (torch's autograd differentiates it).
        inputs: (dtype, generator) -> the inputs, small, drawn in float64 and rounded to dtype.
    """

    name: str
    fn: type[Function]
    reference: Callable[..., Tensor]
    inputs: Callable[[torch.dtype, torch.Generator], tuple[Tensor, ...]]


def _normal(generator: torch.Generator, dtype: torch.dtype, *shape: int, scale: float = 1.0) -> Tensor:
    return (scale * torch.randn(shape, dtype=torch.float64, generator=generator)).to(dtype)


def _linear_inputs(dtype: torch.dtype, gen: torch.Generator) -> tuple[Tensor, ...]:
    return _normal(gen, dtype, 3, 4), _normal(gen, dtype, 4, 4, scale=0.5), _normal(gen, dtype, 4)  # square W


def _cross_entropy_inputs(dtype: torch.dtype, gen: torch.Generator) -> tuple[Tensor, ...]:
    return _normal(gen, dtype, 4, 5, scale=2.0), torch.randint(0, 5, (4,), generator=gen)


def _layer_norm_inputs(dtype: torch.dtype, gen: torch.Generator) -> tuple[Tensor, ...]:
    return _normal(gen, dtype, 3, 6), 1.0 + _normal(gen, dtype, 6, scale=0.2), _normal(gen, dtype, 6, scale=0.2)


def _elementwise_inputs(dtype: torch.dtype, gen: torch.Generator) -> tuple[Tensor, ...]:
    return (_normal(gen, dtype, 3, 5, scale=2.0),)  # both sides of 0, into the tails


def _pair_inputs(dtype: torch.dtype, gen: torch.Generator) -> tuple[Tensor, ...]:
    return _normal(gen, dtype, 3, 4), _normal(gen, dtype, 3, 4)


CASES: dict[str, FunctionCase] = {
    case.name: case
    for case in (
        FunctionCase("linear", Linear, F.linear, _linear_inputs),
        FunctionCase("softmax_cross_entropy", SoftmaxCrossEntropy, F.cross_entropy, _cross_entropy_inputs),
        FunctionCase(
            "layer_norm",
            LayerNorm,
            lambda x, w, b: F.layer_norm(x, (x.shape[-1],), w, b, LAYER_NORM_EPS),
            _layer_norm_inputs,
        ),
        FunctionCase("gelu", GELU, F.gelu, _elementwise_inputs),
        FunctionCase("sigmoid", Sigmoid, torch.sigmoid, _elementwise_inputs),
        FunctionCase("tanh", Tanh, torch.tanh, _elementwise_inputs),
        FunctionCase("mul", Mul, torch.mul, _pair_inputs),
    )
}
"""The correct Functions by name, each with its reference and a point to draw."""
