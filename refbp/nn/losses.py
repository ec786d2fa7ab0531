"""Loss functions J(y_hat, y) and their gradients dJ/dy_hat, each matching a torch function.

y_hat is the network output a(L): (N, d_L) for an MLP, (..., d_L) in general. Each loss gives
its value (eq. 3) and the gradient that starts the backward pass, dJ/da(L) (eq. 4). Each
matches the torch function named in its docstring to the last detail that changes a number
(clamps included), so that torch.autograd is an exact oracle.

=============== ============================================ ==========================
name            J                                            dJ/dy_hat
=============== ============================================ ==========================
half_sse        1/2 sum_{n,k} (y_hat - y)^2                  y_hat - y
mse             1/(N d) sum_{n,k} (y_hat - y)^2              2 (y_hat - y) / (N d)
bce             -1/(N d) sum y log p + (1 - y) log(1 - p)    (p - y) / (p (1 - p) N d)
cross_entropy   1/M sum_n (logsumexp(z_n) - z_n[y_n])        (softmax(z) - onehot(y)) / M
=============== ============================================ ==========================

(bce: p = y_hat, the sigmoid output. cross_entropy: y_hat = z(L), the logits, identity output;
M is the number of counted targets: N, or fewer when some equal ``ignore_index``.)

A loss is a record: its value, its gradient, its torch oracle, how to draw targets for it and
how to check a user's targets. Everything that depends on which loss a network has asks the
record; an unknown name is an error everywhere (``get_loss``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .pieces import Pieces
from .validation import check_finite, check_same_dtype_device, check_tensor_any, describe

__all__ = [
    "BCE_EPS",
    "BCE_LOG_FLOOR",
    "BCE_RESOLUTION",
    "IGNORE_INDEX",
    "LOSSES",
    "Loss",
    "check_output_range",
    "cross_entropy",
    "get_loss",
]

BCE_LOG_FLOOR = -100.0
"""torch.nn.functional.binary_cross_entropy clamps log(p) and log(1 - p) at -100, so that a
saturated sigmoid (p exactly 0 or 1) gives a finite loss; we clamp identically."""

BCE_EPS = 9.999999960041972e-13
"""torch's binary_cross_entropy backward divides by max(p (1 - p), EPSILON) with EPSILON the
float32 constant 1e-12 (9.999999960041972e-13 exactly: at p = 1, y = 0 torch's float64
dJ/dp is 1000000003995.8029 = 1 / that); we floor with the same number, so a saturated p
gives a finite gradient identical to torch's to the last digit."""

BCE_RESOLUTION = 1e-4
"""Within this distance of 0 or 1, a float64 p (stored to about 1e-16) leaves log(p) or
log(1 - p) with fewer than 12 correct digits, and a finite difference of J through it errs by
more than the finite-difference tolerance (1e-6 relative): such entries are unresolvable."""


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
        pieces: where J changes formula as a function of y_hat (bce's clamped logarithms), or None.
        domain: (low, high): the y_hat at which J is defined (bce: probabilities), or None.
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
            raise ValueError(f"{argument} must have shape {expected} for loss={self.name!r}, got {describe(y)}")
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
        if self.ignore_index is not None and y.numel() and bool((y == self.ignore_index).all()):
            raise ValueError(f"every entry of {argument} is {self.ignore_index} (ignored): the mean has no terms")
        return y


# ---- half_sse: the seed's loss --------------------------------------------------------
def _half_sse(y_hat: Tensor, y: Tensor) -> Tensor:
    r = y_hat - y  # (N, d_L)
    return 0.5 * torch.sum(r * r)  # J = 1/2 sum (y_hat - y)^2


def _half_sse_gradient(y_hat: Tensor, y: Tensor) -> Tensor:
    return y_hat - y  # dJ/dy_hat = y_hat - y   (the seed writes y - y_hat: wrong sign)


# ---- mse ------------------------------------------------------------------------------
def _mse(y_hat: Tensor, y: Tensor) -> Tensor:
    r = y_hat - y  # (N, d_L)
    return torch.mean(r * r)  # J = 1/(N d) sum (y_hat - y)^2


def _mse_gradient(y_hat: Tensor, y: Tensor) -> Tensor:
    return (y_hat - y).mul_(2.0 / y_hat.numel())  # dJ/dy_hat = 2 (y_hat - y) / (N d)


# ---- bce: binary cross-entropy on probabilities ---------------------------------------
def _bce(p: Tensor, y: Tensor) -> Tensor:
    log_p = torch.clamp_min(torch.log(p), BCE_LOG_FLOOR)  # (N, d_L)
    log_1mp = torch.clamp_min(torch.log(1.0 - p), BCE_LOG_FLOOR)  # (N, d_L)
    return -torch.mean(y * log_p + (1.0 - y) * log_1mp)  # J = -mean(y log p + (1-y) log(1-p))


def _bce_gradient(p: Tensor, y: Tensor) -> Tensor:
    # dJ/dp = (p - y) / (p (1 - p)) / (N d), the denominator floored at BCE_EPS as in torch
    denominator = torch.clamp_min((1.0 - p) * p, BCE_EPS).mul_(p.numel())
    return (p - y).div_(denominator)


def _bce_region(p: Tensor) -> Tensor:
    """Which clamp is active: bit 0 for log(p) <= -100, bit 1 for log(1 - p) <= -100."""
    low = torch.log(p) <= BCE_LOG_FLOOR
    high = torch.log(1.0 - p) <= BCE_LOG_FLOOR
    return low.to(torch.int8) + 2 * high.to(torch.int8)


def _bce_unresolvable(p: Tensor) -> Tensor:
    """Where no finite difference can verify dJ/dp: torch's backward divides by BCE_EPS instead
    of p (1 - p) (not J's derivative), or p is within BCE_RESOLUTION of 0 or 1."""
    return ((1.0 - p) * p < BCE_EPS) | (torch.minimum(p, 1.0 - p) < BCE_RESOLUTION)


_BCE_PIECES = Pieces(
    (math.exp(BCE_LOG_FLOOR), 1.0 - math.exp(BCE_LOG_FLOOR)),
    "log(p) or log(1 - p) clamped at -100; p (1 - p) floored at 1e-12 in torch's backward",
    region=_bce_region,
    unresolvable=_bce_unresolvable,
)


# ---- cross_entropy: softmax + negative log-likelihood on the logits ---------------------
IGNORE_INDEX = -100
"""F.cross_entropy's default ignore_index: a target equal to it is not counted in the mean."""


def cross_entropy(ignore_index: int | None = IGNORE_INDEX) -> Loss:
    """Softmax cross-entropy on logits (..., C) against int64 classes (...,), as
    ``F.cross_entropy(z.reshape(-1, C), y.reshape(-1), ignore_index=...)``: the mean over the
    targets that are counted. Targets equal to ``ignore_index`` (torch's default -100; -1 for
    nanoGPT) are not; None counts every target and refuses any that is not a class."""
    if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
        raise TypeError(f"ignore_index={ignore_index!r} must be an int or None, got {type(ignore_index).__name__}")

    def counted(y: Tensor) -> Tensor:
        return torch.ones_like(y, dtype=torch.bool) if ignore_index is None else y != ignore_index

    def value(z: Tensor, y: Tensor) -> Tensor:
        C = z.shape[-1]
        z, y = z.reshape(-1, C), y.reshape(-1)  # (M', C), (M',)
        keep = counted(y)
        log_norm = torch.logsumexp(z, dim=1)  # (M',)  logsumexp is shifted by max: no overflow
        z_true = z.gather(1, torch.where(keep, y, 0).unsqueeze(1)).squeeze(1)  # (M',)  z_n[y_n]
        M = keep.sum()  # counted targets
        return torch.sum(torch.where(keep, log_norm - z_true, 0.0)) / M  # J = 1/M sum (logsumexp(z_n) - z_n[y_n])

    def gradient(z: Tensor, y: Tensor) -> Tensor:
        C = z.shape[-1]
        z2, y2 = z.reshape(-1, C), y.reshape(-1)  # (M', C), (M',)
        keep = counted(y2)
        dJ_dz = torch.softmax(z2, dim=1)  # (M', C)  softmax(z), stable at any |z|
        rows = torch.arange(z2.shape[0], device=z.device)
        dJ_dz[rows, torch.where(keep, y2, 0)] -= keep.to(z.dtype)  # softmax(z) - onehot(y)
        if ignore_index is not None:
            dJ_dz.mul_(keep.unsqueeze(1))  # ignored rows contribute nothing
        return dJ_dz.div_(keep.sum()).reshape(z.shape)  # mean over the counted targets

    def torch_fn(z: Tensor, y: Tensor) -> Tensor:
        C = z.shape[-1]
        index = IGNORE_INDEX if ignore_index is None else ignore_index
        return F.cross_entropy(z.reshape(-1, C), y.reshape(-1), ignore_index=index)

    ignored = "" if ignore_index is None else f", ignore_index={ignore_index}"
    return Loss(
        "cross_entropy", value, gradient, torch_fn,
        f"torch.nn.functional.cross_entropy(z, y{ignored})",
        "J = mean_n (logsumexp(z_n) - z_n[y_n]) ;  dJ/dz = (softmax(z) - onehot(y)) / M",
        output_activation="identity", targets="classes", ignore_index=ignore_index,
    )  # fmt: skip


LOSSES: dict[str, Loss] = {
    loss.name: loss
    for loss in (
        Loss(
            "half_sse", _half_sse, _half_sse_gradient,
            lambda y_hat, y: 0.5 * F.mse_loss(y_hat, y, reduction="sum"),
            "0.5 * torch.nn.functional.mse_loss(y_hat, y, reduction='sum')",
            "J = 1/2 sum (y_hat - y)^2 ;  dJ/dy_hat = y_hat - y",
            output_activation=None, targets="values",
        ),
        Loss(
            "mse", _mse, _mse_gradient, F.mse_loss,
            "torch.nn.functional.mse_loss(y_hat, y)",
            "J = mean (y_hat - y)^2 ;  dJ/dy_hat = 2 (y_hat - y) / (N d)",
            output_activation=None, targets="values",
        ),
        Loss(
            "bce", _bce, _bce_gradient, F.binary_cross_entropy,
            "torch.nn.functional.binary_cross_entropy(y_hat, y)",
            "J = -mean(y log p + (1-y) log(1-p)) ;  dJ/dp = (p - y) / (p (1-p) N d)",
            output_activation="sigmoid", targets="values", pieces=_BCE_PIECES, domain=(0.0, 1.0),
        ),
        cross_entropy(),
    )
}  # fmt: skip
"""Every loss refbp knows, by name."""


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


def get_loss(name: object) -> Loss:
    """Look up a loss by name (a Loss record passes through); a clear ValueError lists the
    valid names otherwise."""
    if isinstance(name, Loss):
        return name
    if not isinstance(name, str) or name not in LOSSES:
        raise ValueError(f"loss={name!r} is not a known loss; expected one of {sorted(LOSSES)}")
    return LOSSES[name]
