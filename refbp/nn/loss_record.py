"""The Loss record: what every loss of refbp.nn.losses is, and how it checks its targets.

A loss is a record, not a class per loss: its value J(y_hat, y) (eq. 3), its gradient
dJ/dy_hat (eq. 4), its torch oracle, how it reduces its terms (``reduction``), where it is
piecewise, how to draw targets for it and how to check a user's. Everything that depends on which
loss a network has asks the record (refbp.nn.losses lists them and looks them up by name).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .pieces import Pieces
from .validation import check_finite, check_same_dtype_device, check_tensor_any, describe

__all__ = ["REDUCTIONS", "Loss", "check_output_range", "check_reduction"]

REDUCTIONS = ("mean", "sum")
"""How a loss reduces its terms l_k (one per target entry, or per counted target): "mean",
J = 1/M sum_k l_k (torch's default, and refbp's), or "sum", J = sum_k l_k."""


def check_reduction(reduction: object, name: str) -> str:
    """``reduction`` as a loss factory takes it: "mean" or "sum"; a ValueError names the loss
    otherwise."""
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r} for loss={name!r}; expected one of {list(REDUCTIONS)}")
    return reduction


@dataclass(frozen=True)
class Loss:
    """One loss: J, dJ/dy_hat, the torch function it matches, and what its targets are.

    Attributes:
        name: the name used in ``MLP(loss=...)``.
        value: (y_hat (..., d_L), y) -> J, a 0-dim tensor.
        gradient: (y_hat, y) -> dJ/dy_hat, a new tensor of y_hat's shape.
        torch_fn: (y_hat, y) -> J by torch's own functions: the oracle.
        torch_equivalent: the torch function this loss reproduces, as text.
        equation: J and dJ/dy_hat in plain text.
        output_activation: the only activation allowed on an MLP's last layer, or None for any.
        targets: "values" (y has y_hat's shape and dtype) or "classes" (y int64 class indices,
            y_hat's shape without its last dimension).
        ignore_index: for "classes": a target value that is not counted (None: every target counts).
        pieces: where J changes formula (bce's clamped logarithms, multi_margin's hinge), or None.
        domain: (low, high): the y_hat at which J is defined (bce: probabilities), or None.
        reduction: "mean" (J divides its sum of terms by their number) or "sum" (REDUCTIONS).
        piece_input: (y_hat, y) -> the tensor ``pieces`` is a function of, when that is not
            y_hat itself (multi_margin: the hinge arguments margin - z_y + z_j); None for y_hat.
        bounded_below: J has a floor whatever y_hat is (every loss's J >= 0 but nll's, -logp[y],
            which is >= 0 only on log-probabilities: on a free output it falls without bound,
            and gradient descent on it diverges instead of fitting).
    """

    name: str
    value: Callable[[Tensor, Tensor], Tensor]
    gradient: Callable[[Tensor, Tensor], Tensor]
    torch_fn: Callable[[Tensor, Tensor], Tensor]
    torch_equivalent: str
    equation: str
    output_activation: str | None
    targets: str
    ignore_index: int | None = None
    pieces: Pieces | None = None
    domain: tuple[float, float] | None = None
    reduction: str = "mean"
    piece_input: Callable[[Tensor, Tensor], Tensor] | None = None
    bounded_below: bool = True

    def pieces_of(self, y_hat: Tensor, y: Tensor) -> Tensor:
        """The tensor whose entries ``pieces`` sorts into pieces: y_hat, or ``piece_input``'s."""
        return y_hat if self.piece_input is None else self.piece_input(y_hat, y)

    def sample_targets(self, y_hat_shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
        """Targets this loss accepts for an output of ``y_hat_shape``, drawn from ``generator``
        in float64 on the CPU (class indices are int64)."""
        if self.targets == "classes":
            *lead, C = y_hat_shape
            return torch.randint(0, C, tuple(lead), generator=generator)  # (...,) class indices
        if self.domain is not None:  # bce: probabilities in [0, 1)
            return torch.rand(y_hat_shape, dtype=torch.float64, generator=generator)
        return torch.empty(y_hat_shape, dtype=torch.float64).uniform_(-1.0, 1.0, generator=generator)

    def check_targets(self, y: object, y_hat: Tensor, *, argument: str = "y", rows: bool = False) -> Tensor:
        """``y`` as this loss needs it for the output ``y_hat``, or a ValueError/TypeError
        naming the argument, what it got and what was expected. ``rows``: y_hat is (N, d_L),
        and messages name the sizes so ("(5, 2) = (N, d_L)")."""
        if self.targets == "classes":
            return self._check_classes(y, y_hat, argument, rows)
        expected = "(" + ", ".join(str(s) for s in y_hat.shape) + ")" + (" = (N, d_L)" if rows else "")
        y = check_tensor_any(y, argument)
        if tuple(y.shape) != tuple(y_hat.shape):
            raise ValueError(f"{argument} must have shape {expected} like y_hat, got {describe(y)}")
        check_same_dtype_device(y, argument, dtype=y_hat.dtype, device=y_hat.device)
        check_finite(y, argument)
        if self.domain is not None:
            low, high = self.domain
            if bool(((y < low) | (y > high)).any()):
                raise ValueError(
                    f"{argument} must lie in [{low:g}, {high:g}] for loss={self.name!r}, got values in "
                    f"[{y.min().item()}, {y.max().item()}]"
                )
        return y.detach()

    def _check_classes(self, y: object, y_hat: Tensor, argument: str, rows: bool) -> Tensor:
        *lead, C = y_hat.shape
        expected = (
            "(" + ", ".join(str(s) for s in lead) + ("," if len(lead) == 1 else "") + ")" + (" = (N,)" if rows else "")
        )
        y = check_tensor_any(y, argument)
        if y.dtype != torch.int64:
            raise TypeError(f"{argument} must hold int64 class indices for loss={self.name!r}, got {describe(y)}")
        if tuple(y.shape) != tuple(lead):
            raise ValueError(
                f"{argument} must have shape {expected} for loss={self.name!r}, got {describe(y)}"
                + ("" if rows else f": y_hat's shape {tuple(y_hat.shape)} without its last dimension (the classes)")
            )
        if y.device != y_hat.device:
            raise ValueError(f"{argument} is on device {y.device}, but the network is on {y_hat.device}")
        bad = (y < 0) | (y >= C)
        if self.ignore_index is not None:
            bad &= y != self.ignore_index
        if bool(bad.any()):
            k = tuple(int(i) for i in bad.nonzero()[0])
            index = k[0] if len(k) == 1 else k
            allowed = "" if self.ignore_index is None else f" (or {self.ignore_index}, ignored)"
            raise ValueError(
                f"{argument}[{index}] = {int(y[k])} is not a class index; expected 0 <= {argument} < {C}"
                + (" (d_L classes)" if rows else "")
                + allowed
            )
        every_ignored = self.ignore_index is not None and y.numel() and bool((y == self.ignore_index).all())
        if every_ignored and self.reduction == "mean":  # a sum of no terms is 0, as torch's
            raise ValueError(f"every entry of {argument} is {self.ignore_index} (ignored): the mean has no terms")
        return y


def check_output_range(loss: Loss, output_range: tuple[float, float] | None, last: str) -> None:
    """A loss defined on a range only (bce: probabilities in [0, 1]) needs a last layer whose
    every output lies in it (a sigmoid); ``last`` names that layer, ``output_range`` is its
    ``Layer.output_range``. A ValueError otherwise, at construction, before any NaN."""
    if loss.domain is None:
        return
    low, high = loss.domain
    if output_range is None or not low <= output_range[0] <= output_range[1] <= high:
        values = "any value" if output_range is None else f"values in [{output_range[0]:g}, {output_range[1]:g}]"
        needs = f"a last layer ending in {loss.output_activation}" if loss.output_activation else "another last layer"
        raise ValueError(
            f"loss={loss.name!r} needs outputs in [{low:g}, {high:g}], but the last layer, {last}, can give "
            f"{values}; expected {needs}"
        )
