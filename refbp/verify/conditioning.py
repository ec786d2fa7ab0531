"""How much a gradient may differ from float64 at this point through rounding alone: the
allowance ``check`` adds to the tolerance where a point is ill-conditioned
(refbp.verify.tolerances.CONDITIONING_SAFETY says why and by how much).

``check`` computes it only when some entry is not verified without it (contradicted, or its
finite difference too imprecise to confirm it): the allowance only widens the tolerance, so where
every entry is verified without it, it changes no verdict and no count, and its probes (several
autograd runs, about half of a small network's check) are not paid.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from ..nn.network import Network
from .reference import autograd_gradients
from .tolerances import CONDITIONING_PROBES, CONDITIONING_SAFETY

__all__ = ["allowance", "conditioning_allowance", "rounded"]

_SPREAD, _SCRAMBLE = 12.9898, 43758.5453
"""A value's u is the fractional part of sin(value _SPREAD + phase) _SCRAMBLE (the usual hash of a
number to [0, 1)): nearby numbers, and consecutive integers, get unrelated u's; inf gets u = 0."""


def rounded(t: Tensor, eps: float, generator: torch.Generator) -> Tensor:
    """t o (1 + eps u), u in [-1, 1), in float64: a rounding of relative size eps, or less.

    u is a function of the value (spread over [-1, 1) by a phase drawn from ``generator``), as a
    rounding is: equal given numbers round alike, so a tie of X (a max-pool window holding its
    maximum twice) stays a tie, instead of the kink's convention passing for an O(1) effect of
    rounding. Integer tensors (indices) are returned as they are."""
    if not t.is_floating_point():
        return t
    t64 = t.detach().to(torch.float64)
    phase = float(torch.rand((), dtype=torch.float64, generator=generator))
    u = torch.remainder(torch.sin(t64 * _SPREAD + phase) * _SCRAMBLE, 1.0).mul_(2.0).sub_(1.0).nan_to_num_(0.0)
    return t64 * (1.0 + eps * u)


def conditioning_allowance(
    net: Network,
    X: Tensor,
    y: Tensor,
    noise: Mapping[tuple[int, ...], Tensor],
    dtype: torch.dtype,
    names: list[str],
    seed: int,
) -> dict[str, float]:
    """name -> the allowance for this point's conditioning (tolerances.CONDITIONING_SAFETY):
    CONDITIONING_SAFETY x the largest change of the float64 gradient when every parameter, the
    input, and every intermediate and its gradient on the way back, moves by one rounding of
    ``dtype``; or (below float64) of torch's own autograd in ``dtype`` against float64,
    whichever is larger. Where a gradient is a sum of large terms that cancel (a bias feeding a
    BatchNorm, which ignores shifts), the rounding of the terms sets its attainable accuracy,
    not the size of the result."""
    eps = float(torch.finfo(dtype).eps)
    _, high = autograd_gradients(net, X, y, dtype=torch.float64, noise=noise)
    runs = []
    generator = torch.Generator().manual_seed(seed)

    for _ in range(CONDITIONING_PROBES):
        params = {key: rounded(t, eps, generator) for key, t in net.oracle_params(dtype=torch.float64).items()}
        probe = autograd_gradients(
            net,
            rounded(X, eps, generator),
            y,
            dtype=torch.float64,
            noise=noise,
            params=params,
            rounding=eps,
            generator=generator,
        )
        runs.append(probe[1])
    if dtype != torch.float64 and net.dtype != torch.float64:
        runs.append(autograd_gradients(net, X, y, dtype=dtype, noise=noise)[1])
    widened = allowance(runs, {name: high[name] for name in names if name in high})
    return {name: widened.get(name, 0.0) for name in names}


def allowance(runs: Sequence[Mapping[str, Tensor]], high: Mapping[str, Tensor]) -> dict[str, float]:
    """name -> CONDITIONING_SAFETY x the largest finite |run[name] - high[name]| over ``runs``."""
    out = {}
    for name, reference in high.items():
        largest = 0.0
        for run in runs:
            if name in run and run[name].shape == reference.shape:
                gap = (run[name].detach().to(torch.float64) - reference.to(torch.float64)).abs()
                gap = gap[torch.isfinite(gap)]
                largest = max(largest, float(gap.max()) if gap.numel() else 0.0)
        out[name] = CONDITIONING_SAFETY * largest
    return out
