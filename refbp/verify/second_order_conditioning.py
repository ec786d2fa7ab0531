"""How much a second-order product may differ from float64 through rounding alone: the
allowance ``check_second_order`` adds to its tolerance where a point is ill-conditioned, the
order-2 counterpart of refbp.verify.conditioning (tolerances.CONDITIONING_SAFETY says why and by
how much).

For H v (or G v), R{dJ/d(intermediate)} and the tangents R{a}, R{J}, the allowance of an entry
name is

    CONDITIONING_SAFETY x max over runs of max |run[name] - float64[name]|

where the runs are

- torch's own product in the network's dtype (below float64): the error the dtype itself makes
  at this point, by the same formulas as the float64 reference;
- CONDITIONING_PROBES float64 products (H v and G v only) with every parameter, the input and v
  moved by one rounding of the dtype (refbp.verify.conditioning.rounded), and every intermediate
  the oracle reports multiplied by (1 + eps u), u uniform in [-1, 1] per entry (``Jitter``): a
  rounding at each step of the forward pass, and, since d(c t)/dt = c, of the gradient that
  flows back into it and of its tangent. How far the product moves when each step is only as
  exact as the dtype.

Where H v is a sum of large terms that cancel (a bias before a batch norm, whose curvature along
a shift is 0), the terms' rounding sets the attainable accuracy, not the size of the result;
where nothing cancels, the allowance is a few roundings of the result and a real bug still shows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from ..nn.keys import Key
from ..nn.layer import NO_TAP, Tap
from ..nn.network import Network
from .conditioning import allowance, rounded
from .tolerances import CONDITIONING_PROBES

__all__ = ["Jitter", "product_allowance"]

Noise = Mapping[tuple[int, ...], Tensor]
Products = Callable[[Network, Tensor, Mapping[str, Tensor], Tap], Mapping[str, Tensor]]
"""(network, X, v, tap) -> the products by name, by one torch route whose oracle tells ``tap``
its intermediates, in the network's dtype."""


class Jitter(Tap):
    """Every intermediate the oracle reports times (1 + eps u), u uniform in [-1, 1] per entry,
    drawn once per key (a route that runs the oracle twice, as the Gauss-Newton product's jvp
    and vjp do, sees one function); a centred difference gets eps u size (its operands' rounding,
    refbp.nn.cancellation), not eps u x (the difference's)."""

    def __init__(self, eps: float, generator: torch.Generator) -> None:
        self.eps = eps
        self.generator = generator
        self.u: dict[tuple[str, tuple[int, ...]], Tensor] = {}

    def _u(self, key: Key, t: Tensor) -> Tensor:
        name = (str(key), tuple(t.shape))
        if name not in self.u:
            self.u[name] = torch.rand(t.shape, dtype=torch.float64, generator=self.generator).mul_(2.0).sub_(1.0)
        return self.u[name].to(dtype=t.dtype, device=t.device)

    def intermediate(self, key: Key, t: Tensor) -> Tensor:
        return t * (1.0 + self.eps * self._u(key, t)) if t.is_floating_point() else t

    def centred(self, key: Key, t: Tensor, size: Callable[[], Tensor]) -> Tensor:
        return t + self.eps * self._u(key, t) * size().to(t.dtype) if t.is_floating_point() else t

    def within(self, t: Tensor, domain: tuple[float, float]) -> Tensor:
        return t + (t.clamp(*domain) - t).detach()  # a jitter must not push a probability past 0 or 1


def product_allowance(
    net: Network, X: Tensor, v: Mapping[str, Tensor], products: Products, high: Mapping[str, Tensor], seed: int
) -> dict[str, float]:
    """name -> the allowance for ``products`` (H v or G v by a torch route) at this point: the
    runs of the module docstring against ``high``, the same route in float64. ``net``, ``X`` and
    ``v`` are in the dtype under test."""
    eps = float(torch.finfo(net.dtype).eps)
    runs: list[Mapping[str, Tensor]] = []
    if net.dtype != torch.float64:
        runs.append(products(net, X, v, NO_TAP))
    generator = torch.Generator().manual_seed(seed)
    for _ in range(CONDITIONING_PROBES):
        moved = net.to(dtype=torch.float64)
        for name, p in net.parameters().items():
            moved.set_parameter(name, rounded(p, eps, generator))  # rounded(p) is float64
        v_moved = {name: rounded(t, eps, generator) for name, t in v.items()}
        runs.append(products(moved, rounded(X, eps, generator), v_moved, Jitter(eps, generator)))
    return allowance(runs, high)
