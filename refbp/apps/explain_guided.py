"""What the guided walks of ``refbp explain --model cnn`` and ``--model lstm`` share: the walk
they present, and quantities read from it with torch's verdict.

A guided walk is the one walk every network gets (refbp.apps.walk.walk_network: each layer's
values checked against its torch oracle, each gradient against torch.autograd), presented step
by step in the order the chain rule takes, one equation per entry. It shows what the layers
computed (their outputs, caches and gradients), never a second implementation of them; where an
entry shows a part of an equation (one time step of a sequence, one term of a sum), the part is
cut from refbp's tensor and from autograd's alike, and compared.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..verify.compare import Comparison, compare
from ..verify.tolerances import tolerance_for
from .render import Page, Quantity, agrees, render
from .walk import NetworkWalk

__all__ = ["GuidedWalk", "derived", "drawn", "forward", "given", "gradient"]


@dataclass(frozen=True)
class GuidedWalk:
    """A network's walk presented as a guided page.

    Attributes:
        walk: the walk (values, gradients, references and torch's verdicts).
        page: the entries in chain-rule order, for the renderer.
        seed: what drew the parameters and the point.
    """

    walk: NetworkWalk
    page: Page
    seed: int

    @property
    def checks(self) -> list[Comparison]:
        """torch's verdicts, in the order the page shows them."""
        return self.page.checks

    @property
    def passed(self) -> bool:
        """True when every quantity the page shows agrees with torch."""
        return all(agrees(check) for check in self.checks)

    def render(self, *, markdown: bool = False, ascii_only: bool = False) -> str:
        """The page as 80-column text or as Markdown (refbp.apps.render)."""
        return render(self.page, markdown=markdown, ascii_only=ascii_only)


def drawn(generator: torch.Generator, shape: tuple[int, ...], bound: float) -> Tensor:
    """U(-bound, bound) in float64 from ``generator``: torch.nn's initialisation with bound
    1/sqrt(fan_in), or an input."""
    return torch.empty(shape, dtype=torch.float64).uniform_(-bound, bound, generator=generator)


def given(label: str, value: Tensor) -> Quantity:
    """A quantity the walk starts from (X, y, a parameter): nothing to check."""
    return Quantity(label, value)


def forward(walk: NetworkWalk, label: str, shown_as: str | None = None) -> Quantity:
    """The forward value the walk shows as ``label`` ("a(3)", "i(1.1.2)"), with torch's verdict."""
    value, check = walk.value("forward", label)
    return Quantity(label if shown_as is None else shown_as, value, check)


def gradient(walk: NetworkWalk, name: str, shown_as: str | None = None) -> Quantity:
    """dJ/d(name) by refbp's backward pass, checked against torch.autograd."""
    value, check = walk.value("backward", f"dJ/d{name}")
    return Quantity(f"dJ/d{name}" if shown_as is None else shown_as, value, check)


def derived(walk: NetworkWalk, label: str, part: Callable[[Callable[[str], Tensor]], Tensor]) -> Quantity:
    """A part of an equation cut from refbp's gradients and, the same way, from autograd's:
    ``part(g)`` reads gradients by name through ``g`` (e.g. one time step, or a difference of
    two gradients); both results are compared as any gradient is."""
    manual = part(lambda name: walk.grads[name])
    reference = part(lambda name: walk.reference[name])
    check = compare(label.removeprefix("dJ/d"), "autograd", manual, reference, tolerance_for(torch.float64))
    return Quantity(label, manual, check)
