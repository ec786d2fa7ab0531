"""The size of the operands of a centred quantity: what rounding sees when a difference cancels.

A normalisation computes x_hat = (x - mean) / sqrt(var + eps). In a precision with unit roundoff
u, the difference x - mean is only known to about u (|x| + |mean|): when x lies close to its mean
(a feature constant over the batch, LayerNorm over a single feature) the exact x_hat is 0 or tiny,
yet a float32 kernel returns x_hat of size u (|x| + |mean|) / sigma, and every gradient that
x_hat multiplies (dJ/dgamma = sum dJ/dy o x_hat) inherits that. The conditioning allowance of
refbp.verify imitates rounding by moving each intermediate by u times its size; for x_hat the
size that matters is that of its operands,

    size(x_hat) = (|x| + |mean|) / sqrt(var + eps)   (>= |x_hat|),

which the normalisation layers hand to their taps (Tap.centred).
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["centred_size", "grouped_centred_size"]


def centred_size(x: Tensor, mean: Tensor, var: Tensor, eps: float) -> Tensor:
    """(|x| + |mean|) / sqrt(var + eps), entry by entry (mean and var broadcast against x)."""
    return ((x.abs() + mean.abs()) / (var + eps).sqrt()).detach()


def grouped_centred_size(x: Tensor, groups: int, eps: float) -> Tensor:
    """centred_size for statistics over each sample's groups of channels (GroupNorm; groups=1 is a
    LayerNorm over all but the first dimension): x (N, C, *) viewed as (N, groups, rest)."""
    grouped = x.detach().reshape(x.shape[0], groups, -1)  # (N, G, C/G * spatial)
    mean = grouped.mean(-1, keepdim=True)  # (N, G, 1)
    var = grouped.var(-1, unbiased=False, keepdim=True)  # (N, G, 1)
    return centred_size(grouped, mean, var, eps).reshape(x.shape)
