"""The multilayer perceptron, its parameters and the forward pass that fills the z/a cache.

Forward pass, one row per observation (X is (N, d_0)), for layers i = 1 .. L:

    (1)  z(i) = a(i-1) W(i)^T + b(i)        W(i): (d_i, d_{i-1}),  b(i): (d_i,),  z(i): (N, d_i)
    (2)  a(i) = f_i(z(i))                   a(0) = X,  y_hat = a(L)
    (3)  J = loss(a(L), y) + lambda/2 sum_i ||W(i)||_F^2

W(i) has torch.nn.Linear's layout (d_out, d_in), so refbp and torch share parameters as is.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .activations import Activation, get_activation
from .losses import Loss, get_loss
from .validation import check_finite, check_same_dtype_device, check_tensor, describe

if TYPE_CHECKING:
    from .backward import Gradients

__all__ = ["MLP", "ForwardCache", "resolve_device"]


def resolve_device(device: str | torch.device) -> torch.device:
    """'auto' means CUDA when a GPU is present, else the CPU; anything else goes to torch."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device={device!r} is not a device; expected 'auto', 'cpu' or 'cuda[:k]'") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was asked for, but torch sees no CUDA GPU here")
    return resolved


_RELEASED = torch.empty(0)
"""What a released cache entry holds: no data (a real a(i) always has N, d_i >= 1)."""


@dataclass
class ForwardCache:
    """Everything the forward pass computed, indexed as in the equations.

    Attributes:
        a: a[0] = X (N, d_0) and a[i] = f_i(z(i)) (N, d_i) for i = 1 .. L.
        z: z[0] = None (the input has no pre-activation) and z[i] (N, d_i) for i = 1 .. L;
            z[i] is also None when the forward pass ran with ``keep_z=False`` and layer i's
            derivative reads a(i) instead (sigmoid, tanh, relu, leaky_relu, identity).
    """

    a: list[Tensor]
    z: list[Tensor | None]
    released: bool = False

    def release(self, i: int) -> None:
        """Drop a(i) and z(i), i >= 1, once the backward pass has used them for the last time.

        Only ``backward(..., release_cache=True)`` calls this: like autograd freeing its saved
        tensors during ``J.backward()``, it keeps a training step's peak memory down, and the
        cache cannot be used again afterwards."""
        self.a[i] = _RELEASED
        self.z[i] = None
        self.released = True

    @property
    def L(self) -> int:
        """Number of layers."""
        return len(self.a) - 1

    @property
    def X(self) -> Tensor:
        """The input a(0), (N, d_0)."""
        return self.a[0]

    @property
    def y_hat(self) -> Tensor:
        """The output a(L), (N, d_L)."""
        return self.a[-1]


@dataclass
class MLP:
    """A multilayer perceptron with a manual forward and backward pass.

    Build one with :meth:`from_params` or :meth:`random`. ``weights[i-1]`` is W(i) and
    ``biases[i-1]`` is b(i): Python lists start at 0, layers at 1.

    Attributes:
        weights: [W(1), ..., W(L)], W(i) of shape (d_i, d_{i-1}).
        biases: [b(1), ..., b(L)], b(i) of shape (d_i,).
        activations: [f_1, ..., f_L] by name (see ``refbp.activations.ACTIVATIONS``).
        loss_name: the loss by name (see ``refbp.losses.LOSSES``).
        weight_decay: lambda >= 0 in eq. (3).
    """

    weights: list[Tensor]
    biases: list[Tensor]
    activations: list[str]
    loss_name: str
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        self._validate()
        # Plain tensors with no autograd history: the manual path never builds a graph.
        self.weights = [W.detach() for W in self.weights]
        self.biases = [b.detach() for b in self.biases]

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_params(
        cls,
        *,
        weights: Sequence[Tensor],
        biases: Sequence[Tensor],
        activations: Sequence[str],
        loss: str,
        weight_decay: float = 0.0,
    ) -> MLP:
        """A network from given parameters: W(i) (d_i, d_{i-1}) and b(i) (d_i,), in layer order."""
        for argument, value in (("weights", weights), ("biases", biases), ("activations", activations)):
            if isinstance(value, (str, Tensor)) or not isinstance(value, Sequence):
                raise TypeError(f"{argument} must be a list, one entry per layer, got {type(value).__name__}")
        return cls(list(weights), list(biases), list(activations), loss, weight_decay)

    @classmethod
    def random(
        cls,
        dims: Sequence[int],
        *,
        activations: Sequence[str],
        loss: str,
        seed: int = 0,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device = "cpu",
        weight_decay: float = 0.0,
    ) -> MLP:
        """A network with dims [d_0, ..., d_L], initialised as torch.nn.Linear does:
        W(i), b(i) ~ U(-1/sqrt(d_{i-1}), 1/sqrt(d_{i-1})), drawn on the CPU from ``seed`` so
        that every device gets the same numbers. ``device="auto"`` picks CUDA when present."""
        if isinstance(dims, (str, Tensor)) or not isinstance(dims, Sequence) or len(dims) < 2:
            raise ValueError(f"dims={dims!r} must list at least two sizes [d_0, d_1, ...]")
        for k, d in enumerate(dims):
            if not isinstance(d, int) or isinstance(d, bool) or d < 1:
                raise ValueError(f"dims[{k}]={d!r} must be a positive int; got dims={list(dims)}")
        if isinstance(activations, str) or not isinstance(activations, Sequence):
            raise TypeError(f"activations must be a list of names, got {type(activations).__name__}")
        if dtype not in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
            raise TypeError(f"dtype={dtype!r} must be a floating torch dtype")
        target = resolve_device(device)
        generator = torch.Generator().manual_seed(seed)
        weights, biases = [], []
        for d_in, d_out in itertools.pairwise(dims):  # (d_{i-1}, d_i)
            bound = 1.0 / math.sqrt(d_in)
            W = torch.empty(d_out, d_in, dtype=torch.float64).uniform_(-bound, bound, generator=generator)
            b = torch.empty(d_out, dtype=torch.float64).uniform_(-bound, bound, generator=generator)
            weights.append(W.to(dtype=dtype, device=target))
            biases.append(b.to(dtype=dtype, device=target))
        return cls(weights, biases, list(activations), loss, weight_decay)

    def to(self, dtype: torch.dtype | None = None, device: str | torch.device | None = None) -> MLP:
        """A copy of this network with parameters converted to ``dtype`` and/or ``device``."""
        target = None if device is None else resolve_device(device)
        return MLP(
            [W.to(dtype=dtype, device=target) for W in self.weights],
            [b.to(dtype=dtype, device=target) for b in self.biases],
            list(self.activations),
            self.loss_name,
            self.weight_decay,
        )

    # ---- properties ---------------------------------------------------------------------
    @property
    def L(self) -> int:
        """Number of layers (weight matrices)."""
        return len(self.weights)

    @property
    def dims(self) -> list[int]:
        """[d_0, d_1, ..., d_L]."""
        return [self.weights[0].shape[1]] + [W.shape[0] for W in self.weights]

    @property
    def dtype(self) -> torch.dtype:
        return self.weights[0].dtype

    @property
    def device(self) -> torch.device:
        return self.weights[0].device

    @property
    def layer_activations(self) -> list[Activation]:
        """[f_1, ..., f_L] as Activation records."""
        return [get_activation(name) for name in self.activations]

    @property
    def loss_fn(self) -> Loss:
        """The loss as a Loss record."""
        return get_loss(self.loss_name)

    # ---- the forward pass ---------------------------------------------------------------
    def forward(self, X: Tensor, *, keep_z: bool = True) -> ForwardCache:
        """Run eqs. (1)-(2) for every layer and keep every z(i) and a(i).

        Args:
            X: the input, (N, d_0), same dtype and device as the parameters, N >= 1.
            keep_z: keep every z(i) (the default, what the teaching API shows). With False,
                z(i) is dropped for layers whose derivative reads a(i) (sigmoid, tanh, relu,
                leaky_relu, identity): the backward pass is the same, the cache smaller.
        """
        X = self.check_input(X)
        a: list[Tensor] = [X]  # a[0] = X          (N, d_0)
        z: list[Tensor | None] = [None]  # no pre-activation for the input
        for i in range(1, self.L + 1):
            W, b = self.weights[i - 1], self.biases[i - 1]  # (d_i, d_{i-1}), (d_i,)
            z_i = torch.addmm(b, a[i - 1], W.T)  # (1) z(i) = a(i-1) W(i)^T + b(i)   (N, d_i)
            act = get_activation(self.activations[i - 1])
            a_i = act.f(z_i)  # (2) a(i) = f_i(z(i))                 (N, d_i)
            a.append(a_i)
            z.append(z_i if keep_z or act.derivative_of == "z" else None)
        return ForwardCache(a=a, z=z)

    def loss(self, cache: ForwardCache, y: Tensor) -> Tensor:
        """J, eq. (3): the loss of the output a(L) against y, plus weight decay; 0-dim tensor."""
        y = self.check_targets(y, cache)
        J = self.loss_fn.value(cache.y_hat, y)
        if self.weight_decay:
            J = J + 0.5 * self.weight_decay * sum(torch.sum(W * W) for W in self.weights)
        return J

    def backward(
        self, cache: ForwardCache, y: Tensor, *, intermediates: bool = True, release_cache: bool = False
    ) -> Gradients:
        """Every gradient of J, by hand, from the cache (eqs. 4-9); see ``refbp.backward``."""
        from .backward import backward

        return backward(self, cache, y, intermediates=intermediates, release_cache=release_cache)

    # ---- validation ---------------------------------------------------------------------
    def check_input(self, X: object) -> Tensor:
        """X must be a finite (N, d_0) tensor, N >= 1, with the parameters' dtype and device."""
        X = check_tensor(X, "X", ndim=2)
        if X.shape[1] != self.dims[0]:
            raise ValueError(f"X must have shape (N, {self.dims[0]}) = (N, d_0), got {describe(X)}")
        if X.shape[0] == 0:
            raise ValueError(f"X has an empty batch ({describe(X)}); expected N >= 1 rows")
        check_same_dtype_device(X, "X", dtype=self.dtype, device=self.device)
        check_finite(X, "X")
        return X.detach()

    def check_targets(self, y: object, cache: ForwardCache) -> Tensor:
        """y must match the loss: (N, d_L) values, or (N,) int64 class indices in [0, d_L)."""
        N, d_L = cache.y_hat.shape
        loss = self.loss_fn
        if loss.targets == "classes":
            y = check_tensor(y, "y", ndim=1, float_only=False)
            if y.dtype != torch.int64:
                raise TypeError(f"y must hold int64 class indices for loss={loss.name!r}, got {describe(y)}")
            if y.shape[0] != N:
                raise ValueError(f"y must have shape ({N},) = (N,) for loss={loss.name!r}, got {describe(y)}")
            if y.device != self.device:
                raise ValueError(f"y is on device {y.device}, but the network is on {self.device}")
            bad = (y < 0) | (y >= d_L)
            if bool(bad.any()):
                k = int(bad.nonzero()[0, 0])
                raise ValueError(f"y[{k}] = {int(y[k])} is not a class index; expected 0 <= y < {d_L} (d_L classes)")
            return y
        if isinstance(y, Tensor) and y.dim() != 2:
            raise ValueError(f"y must have shape ({N}, {d_L}) = (N, d_L) like y_hat, got {describe(y)}")
        y = check_tensor(y, "y", ndim=2)
        if tuple(y.shape) != (N, d_L):
            raise ValueError(f"y must have shape ({N}, {d_L}) = (N, d_L) like y_hat, got {describe(y)}")
        check_same_dtype_device(y, "y", dtype=self.dtype, device=self.device)
        check_finite(y, "y")
        if loss.name == "bce" and bool(((y < 0) | (y > 1)).any()):
            raise ValueError(f"y must lie in [0, 1] for loss='bce', got values in [{y.min().item()}, {y.max().item()}]")
        return y.detach()

    def _validate(self) -> None:
        if not self.weights:
            raise ValueError("weights is empty; expected one W(i) per layer, at least one")
        L = len(self.weights)
        if len(self.biases) != L:
            raise ValueError(f"biases has {len(self.biases)} entries but weights has {L}; expected one b(i) per layer")
        if len(self.activations) != L:
            raise ValueError(
                f"activations has {len(self.activations)} entries but the network has {L} layers; "
                "expected one activation per layer"
            )
        W1 = check_tensor(self.weights[0], "weights[0] (W1)", ndim=2)
        dtype, device = W1.dtype, W1.device
        for i in range(1, L + 1):
            W = check_tensor(self.weights[i - 1], f"weights[{i - 1}] (W{i})", ndim=2)
            b = check_tensor(self.biases[i - 1], f"biases[{i - 1}] (b{i})", ndim=1)
            d_out, d_in = W.shape
            if i > 1 and d_in != self.weights[i - 2].shape[0]:
                raise ValueError(
                    f"weights[{i - 1}] (W{i}) has {describe(W)}; expected ({d_out}, "
                    f"{self.weights[i - 2].shape[0]}) so that its input matches W{i - 1}'s output"
                )
            if b.shape[0] != d_out:
                raise ValueError(f"biases[{i - 1}] (b{i}) has {describe(b)}; expected ({d_out},) to match W{i}")
            check_same_dtype_device(W, f"weights[{i - 1}] (W{i})", dtype=dtype, device=device)
            check_same_dtype_device(b, f"biases[{i - 1}] (b{i})", dtype=dtype, device=device)
            check_finite(W, f"weights[{i - 1}] (W{i})")
            check_finite(b, f"biases[{i - 1}] (b{i})")
            get_activation(self.activations[i - 1], argument=f"activations[{i - 1}]")
        loss = get_loss(self.loss_name)
        last = self.activations[-1]
        if loss.output_activation is not None and last != loss.output_activation:
            raise ValueError(
                f"loss={loss.name!r} needs activations[-1]={loss.output_activation!r} on the last layer, "
                f"got {last!r}"
                + (" (cross_entropy applies softmax to z(L) itself)" if loss.name == "cross_entropy" else "")
            )
        if loss.targets == "classes" and self.weights[-1].shape[0] < 2:
            raise ValueError("loss='cross_entropy' needs d_L >= 2 classes in the last layer, got 1")
        if (
            not isinstance(self.weight_decay, (int, float))
            or isinstance(self.weight_decay, bool)
            or not math.isfinite(self.weight_decay)
            or self.weight_decay < 0
        ):
            raise ValueError(f"weight_decay={self.weight_decay!r} must be a finite number >= 0")
