"""The multilayer perceptron of the seed: z(i) and a(i), W(i) and b(i), in the seed's notation.

    net = MLP.from_params(weights=[W1, W2], biases=[b1, b2], activations=["sigmoid", "sigmoid"], loss="half_sse")
    cache = net.forward(X)            # cache.a[i], cache.z[i]; cache.a[0] is X
    J = net.loss(cache, y)
    grads = net.backward(cache, y)    # grads.dJ_dW[i], dJ_db[i], dJ_dz[i], dJ_da[i], dJ_dX

An MLP is a Network (refbp.nn.network) of Dense layers (refbp.nn.dense), one per W(i): the
forward and backward loops are the network's, the equations (1)-(8) are Dense's, and this
module adds the view a student reads beside the seed: lists indexed by the layer number i,
from 1 as in the equations (index 0 of z, W, b unused; a[0] = X), and ``net.W(i)``, ``net.b(i)``
for the parameters by the same number.

One row per observation: X is (N, d_0), z(i) and a(i) are (N, d_i). W(i) has torch.nn.Linear's
layout (d_out, d_in), so refbp and torch share parameters as is.

    (1)  z(i) = a(i-1) W(i)^T + b(i),  a(0) = X         (N, d_i)
    (2)  a(i) = f_i(z(i)),  y_hat = a(L)                 (N, d_i)
    (3)  J = loss(a(L), y) + lambda/2 sum_i ||W(i)||^2   ()
    (4)  dJ/da(L) = dloss/dy_hat                         (N, d_L)
    (5)-(8)  Dense.backward, layer L down to 1
    (9)  dJ/dX = dJ/da(0)                                (N, d_0)
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload

import numpy as np
import torch
from torch import Tensor

from .activations import get_activation
from .dense import Dense
from .layouts import Layout, check_layout
from .losses import Loss, get_loss
from .network import Cache, GradientsT, Network, NetworkGradients, resolve_device
from .validation import (
    FLOAT_DTYPES,
    check_finite,
    check_fits_in_memory,
    check_int,
    check_same_dtype_device,
    check_seed,
    check_tensor,
    describe,
)

__all__ = ["MLP", "ForwardCache", "Gradients", "backward", "backward_from"]

MAX_LAYERS = 10_000
"""The deepest MLP refbp builds: far beyond any network people check by hand, and small enough
that a mistyped depth (a million layers) is refused at once instead of after minutes."""

MAX_PARAMETERS = 10**8
"""The most parameters ``MLP.random`` draws: 800 MB in float64, far beyond any MLP people
check by hand (the benchmarks' widest, 2048 x 3 layers, has 13 million), and small enough that
a mistyped width (``[3, 2 * 10**8, 1]``, a billion parameters, 8 GB) is refused at once, with
the size it would need, instead of after minutes of allocating, or a process killed for memory
where the free memory reported is not the memory this process may use (a container)."""


@dataclass
class ForwardCache(Cache):
    """A Network's cache (refbp.nn.network.Cache), with the seed's z list beside a.

    Attributes:
        a: a[0] = X (N, d_0) and a[i] = f_i(z(i)) (N, d_i) for i = 1 .. L.
        z: z[0] = None (the input has no pre-activation) and z[i] (N, d_i) for i = 1 .. L;
            z[i] is also None when the forward pass ran with ``keep_z=False`` and layer i's
            derivative reads a(i) instead (sigmoid, tanh, relu, leaky_relu, identity).
    """

    @property
    def z(self) -> list[Tensor | None]:
        """z[i] = z(i) (N, d_i); z[0] is None. Dense's cache is its z: this is that list."""
        return self.saved


class Gradients(NetworkGradients):
    """A Network's gradients (refbp.nn.network.NetworkGradients: ``grads["W1"]``,
    ``as_dict()``, ``torch_named()``), with the seed's lists beside them, indexed as in the
    equations (index 0 unused for W, b, z), in refbp's own layout.

    Attributes:
        dJ_dW: [None, dJ/dW(1), ..., dJ/dW(L)], dJ/dW(i) (d_i, d_{i-1}).
        dJ_db: [None, dJ/db(1), ..., dJ/db(L)], dJ/db(i) (d_i,).
        dJ_dz: [None, dJ/dz(1), ..., dJ/dz(L)], dJ/dz(i) (N, d_i); None where not kept.
        dJ_da: [dJ/dX, dJ/da(1), ..., dJ/da(L)], dJ/da(i) (N, d_i); None where not kept.
    """

    @property
    def L(self) -> int:
        """Number of layers."""
        return self.network.L

    def _column(self, kind: str) -> list[Tensor | None]:
        """[None, dJ/d(kind 1), ..., dJ/d(kind L)]: the keys "W1", "W2", ... as a list."""
        return [None] + [self._values.get(f"{kind}{i}") for i in range(1, self.L + 1)]

    @functools.cached_property
    def dJ_dW(self) -> list[Tensor | None]:
        """[None, dJ/dW(1), ..., dJ/dW(L)]: eq. (6) by layer."""
        return self._column("W")

    @functools.cached_property
    def dJ_db(self) -> list[Tensor | None]:
        """[None, dJ/db(1), ..., dJ/db(L)]: eq. (7) by layer."""
        return self._column("b")

    @functools.cached_property
    def dJ_dz(self) -> list[Tensor | None]:
        """[None, dJ/dz(1), ..., dJ/dz(L)]: eq. (5) by layer; None where not kept."""
        return self._column("z")

    @functools.cached_property
    def dJ_da(self) -> list[Tensor | None]:
        """[dJ/dX, dJ/da(1), ..., dJ/da(L)]: eq. (8) by layer, dJ/da(0) = dJ/dX (eq. 9)."""
        return [self._values.get("X"), *self._column("a")[1:]]

    def W(self, i: int) -> Tensor:
        """dJ/dW(i), layer i counted from 1 as in the equations (like ``net.W(i)``)."""
        return _at(self.dJ_dW, i, "dJ_dW")

    def b(self, i: int) -> Tensor:
        """dJ/db(i), layer i counted from 1."""
        return _at(self.dJ_db, i, "dJ_db")


def _at(values: list[Tensor | None], i: int, name: str) -> Tensor:
    L = len(values) - 1
    if isinstance(i, bool) or not isinstance(i, int) or not 1 <= i <= L:
        raise IndexError(
            f"layer {i!r} does not exist; {name} has layers 1 .. {L} (counted from 1, as in the equations)"
        )
    value = values[i]
    assert value is not None  # parameter gradients are always kept
    return value


class _LayerParams(Sequence[Tensor]):
    """``net.weights`` / ``net.biases``: the layers' W(i) or b(i) as a list (index i - 1 is
    layer i), read and written through to the layers, so ``net.weights[0] = W`` updates W(1)."""

    def __init__(self, net: MLP, kind: str) -> None:
        self._net, self._kind = net, kind

    def __len__(self) -> int:
        return len(self._net.layers)

    @overload
    def __getitem__(self, index: int) -> Tensor: ...

    @overload
    def __getitem__(self, index: slice) -> list[Tensor]: ...

    def __getitem__(self, index: int | slice) -> Tensor | list[Tensor]:
        if isinstance(index, slice):
            return [self[k] for k in range(len(self))[index]]
        i = range(1, len(self) + 1)[index]
        return self._net.layout.to_user(f"{self._kind}{i}", self._net.layers[index].params[self._kind])

    def __setitem__(self, index: int, value: Tensor) -> None:
        layer = self._net.layers[index]
        i = range(1, len(self) + 1)[index]
        name = f"{'weights' if self._kind == 'W' else 'biases'}[{i - 1}] ({self._kind}{i})"
        shown = self[index]
        value = check_tensor(value, name, ndim=shown.dim())
        if value.shape != shown.shape:
            raise ValueError(f"{name} must keep its shape {tuple(shown.shape)}, got {describe(value)}")
        old = layer.params[self._kind]
        check_same_dtype_device(value, name, dtype=old.dtype, device=old.device)
        layer.params[self._kind] = self._net.layout.from_user(f"{self._kind}{i}", value.detach())

    def __iter__(self) -> Iterator[Tensor]:
        return (self[k] for k in range(len(self)))

    def __repr__(self) -> str:
        return repr(list(self))


class MLP(Network[ForwardCache, Gradients, Dense]):
    """A multilayer perceptron with a manual forward and backward pass.

    Build one with :meth:`from_params` or :meth:`random`. ``weights[i-1]`` is W(i) and
    ``biases[i-1]`` is b(i) (Python lists start at 0); ``net.W(i)`` and ``net.b(i)`` count
    from 1, as the equations and ``grads.dJ_dW[i]`` do.

    An MLP is a Network of Dense layers and nothing more: ``forward``, ``loss``, ``backward``
    and ``backward_from`` are the Network's, and what this class adds is the seed's view,
    written once: ``net.W(i)``, ``weights``, ``dims``; ``cache.z`` (ForwardCache);
    ``grads.dJ_dW`` and the other lists (Gradients); messages in the seed's notation.

    With ``layout="in_out"`` or ``"columns"`` (refbp.nn.layouts) the network reads X, y and
    its parameters, and hands back ``weights``, ``biases`` and ``grads.as_dict()``, in that
    arrangement; it computes in torch's (the lists of the cache and of Gradients stay in it).

    Attributes:
        weights: [W(1), ..., W(L)], W(i) of shape (d_i, d_{i-1}) (in the network's layout).
        biases: [b(1), ..., b(L)], b(i) of shape (d_i,) (or as given).
        activations: [f_1, ..., f_L] by name (see ``refbp.nn.activations.ACTIVATIONS``).
        loss_name: the loss by name (see ``refbp.nn.losses.LOSSES``) or a record (``mse(reduction="sum")``).
        weight_decay: lambda >= 0 in eq. (3).
    """

    def __init__(
        self,
        weights: Sequence[Tensor | np.ndarray],
        biases: Sequence[Tensor | np.ndarray],
        activations: Sequence[str],
        loss_name: str | Loss,
        weight_decay: float = 0.0,
        layout: str = "torch",
    ) -> None:
        check_layout(layout)
        Ws = [check_tensor(W, f"weights[{k}] (W{k + 1})", ndim=2) for k, W in enumerate(weights)]
        bs = [_bias(b, f"biases[{k}] (b{k + 1})") for k, b in enumerate(biases)]
        bias_shapes = tuple(tuple(b.shape) for b in bs)
        if layout == "in_out":  # (d_{i-1}, d_i) as given; refbp keeps torch's (d_i, d_{i-1})
            Ws = [W.T for W in Ws]
        flat = [b.reshape(-1) if b.dim() == 2 else b for b in bs]
        _validate(Ws, flat, list(activations), loss_name, layout)
        if layout == "columns":  # the seed's b is a column (d_i, 1) unless given otherwise
            bias_shapes = tuple(shape if len(shape) == 2 else (shape[0], 1) for shape in bias_shapes)
        acts = [get_activation(name, argument=f"activations[{k}]") for k, name in enumerate(activations)]
        layers = [Dense(W, b, act) for W, b, act in zip(Ws, flat, acts, strict=True)]
        super().__init__(layers, loss_name, weight_decay=weight_decay)
        self.layout = Layout(layout, bias_shapes, named_sizes=True)

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_params(
        cls,
        *,
        weights: Sequence[Tensor | np.ndarray],
        biases: Sequence[Tensor | np.ndarray],
        activations: Sequence[str],
        loss: str | Loss,
        weight_decay: float = 0.0,
        layout: str = "torch",
    ) -> MLP:
        """A network from given parameters, in layer order, torch tensors or NumPy arrays:
        W(i) (d_i, d_{i-1}) and b(i) (d_i,), (d_i, 1) or (1, d_i); with ``layout="in_out"``
        W(i) is (d_{i-1}, d_i) (``h = x @ W + b``), with ``"columns"`` X, y and every
        activation hold one observation per column (``z = W a + b``)."""
        for argument, value in (("weights", weights), ("biases", biases), ("activations", activations)):
            if isinstance(value, (str, Tensor, np.ndarray)) or not isinstance(value, Sequence):
                raise TypeError(f"{argument} must be a list, one entry per layer, got {type(value).__name__}")
        return cls(list(weights), list(biases), list(activations), loss, weight_decay, layout)

    @classmethod
    def random(
        cls,
        dims: Sequence[int],
        *,
        activations: Sequence[str],
        loss: str | Loss,
        seed: int = 0,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device = "cpu",
        weight_decay: float = 0.0,
        layout: str = "torch",
    ) -> MLP:
        """A network with dims [d_0, ..., d_L], initialised as torch.nn.Linear does:
        W(i), b(i) ~ U(-1/sqrt(d_{i-1}), 1/sqrt(d_{i-1})), drawn on the CPU from ``seed`` so
        that every device gets the same numbers. ``device="auto"`` picks CUDA when present.
        ``layout``: how it reads and hands back arrays (refbp.nn.layouts); the numbers are the same."""
        dims = _check_dims(dims)
        if isinstance(activations, str) or not isinstance(activations, Sequence):
            raise TypeError(f"activations must be a list of names, got {type(activations).__name__}")
        if dtype not in FLOAT_DTYPES:
            raise TypeError(f"dtype={dtype!r} must be a floating torch dtype")
        seed = check_seed(seed)
        target = resolve_device(device)
        _check_size(dims, dtype)
        generator = torch.Generator().manual_seed(seed)
        weights, biases = [], []
        for d_in, d_out in itertools.pairwise(dims):  # (d_{i-1}, d_i)
            bound = 1.0 / math.sqrt(d_in)
            W = torch.empty(d_out, d_in, dtype=torch.float64).uniform_(-bound, bound, generator=generator)
            b = torch.empty(d_out, dtype=torch.float64).uniform_(-bound, bound, generator=generator)
            weights.append(W.to(dtype=dtype, device=target))
            biases.append(b.to(dtype=dtype, device=target))
        net = cls(weights, biases, list(activations), loss, weight_decay)
        net.layout = Layout.standard(check_layout(layout), [int(b.shape[0]) for b in biases])
        return net

    # ---- the seed's view ----------------------------------------------------------------
    @property
    def weights(self) -> _LayerParams:
        """[W(1), ..., W(L)]: ``weights[i - 1]`` is W(i); assigning to it updates the layer."""
        return _LayerParams(self, "W")

    @property
    def biases(self) -> _LayerParams:
        """[b(1), ..., b(L)]: ``biases[i - 1]`` is b(i)."""
        return _LayerParams(self, "b")

    def W(self, i: int) -> Tensor:
        """W(i), layer i counted from 1 as in the equations, (d_i, d_{i-1})."""
        return self._layer(i).W

    def b(self, i: int) -> Tensor:
        """b(i), layer i counted from 1, (d_i,)."""
        return self._layer(i).b

    def _layer(self, i: int) -> Dense:
        if isinstance(i, bool) or not isinstance(i, int) or not 1 <= i <= self.L:
            raise IndexError(f"layer {i!r} does not exist; this MLP has layers 1 .. {self.L} (counted from 1)")
        return self.layers[i - 1]

    @property
    def activations(self) -> list[str]:
        """[f_1, ..., f_L] by name."""
        return [layer.activation.name for layer in self.layers]

    @property
    def d_0(self) -> int:
        """The input's width d_0."""
        return int(self.layers[0].params["W"].shape[1])

    @property
    def dims(self) -> list[int]:
        """[d_0, d_1, ..., d_L]."""
        return [self.d_0] + [layer.W.shape[0] for layer in self.layers]

    # ---- the seed's messages and results ----------------------------------------------------
    def input_from_user(self, X: object) -> Tensor:
        """X as refbp computes with it: a tensor (from NumPy), observations as rows; a shape
        that is not (N, d_0) (or (d_0, N) in "columns") is refused in the seed's notation."""
        X = check_tensor(X, "X", ndim=2)
        if X.shape[1 if self.layout.rows else 0] != self.d_0:
            raise ValueError(f"X must have shape {self.layout.describe_X(self.d_0)}, got {describe(X)}")
        return self.layout.from_user("X", X)

    def _check_cache(self, cache: object) -> None:
        """The Network's check, a foreign cache named by its widths in the seed's notation."""
        if isinstance(cache, Cache) and not cache.released and cache.L == self.L:
            width = cache.a[0].shape[1] if cache.a[0].dim() == 2 else None
            if width != self.d_0:
                raise ValueError(
                    f"cache has {cache.L} layers and input width {width}; it does not come from this network "
                    f"({self.L} layers, d_0 = {self.d_0}): pass the cache of net.forward(X)"
                )
        super()._check_cache(cache)

    def _cache(self, a: list[Tensor], saved: list[Any], noise: dict[tuple[int, ...], Tensor]) -> ForwardCache:
        return ForwardCache(a=a, saved=saved, noise=noise)

    def _gradients(self, values: dict[str, Tensor]) -> Gradients:
        return Gradients(values, self)


def backward(
    net: Network[Any, GradientsT],
    cache: Cache,
    y: Tensor,
    *,
    keep_intermediates: bool | None = None,
    release_cache: bool = False,
    intermediates: bool | None = None,
) -> GradientsT:
    """``net.backward(cache, y, ...)``: eqs. (4)-(9) for ``net`` from its forward ``cache``."""
    return net.backward(
        cache, y, keep_intermediates=keep_intermediates, release_cache=release_cache, intermediates=intermediates
    )


def backward_from(
    net: Network[Any, GradientsT],
    cache: Cache,
    dJ_da_L: Tensor,
    *,
    keep_intermediates: bool | None = None,
    release_cache: bool = False,
    intermediates: bool | None = None,
) -> GradientsT:
    """Eqs. (5)-(9) from a given dJ/da(L) (N, d_L) instead of a loss's eq. (4).

    This is how a gradient crosses from one network into another: when a(L) feeds something
    above it (a second network, a score), dJ/da(L) is what that something hands down, e.g. its
    own dJ/dX. ``dJ_da_L`` itself is never modified."""
    return net.backward_from(
        cache, dJ_da_L, keep_intermediates=keep_intermediates, release_cache=release_cache, intermediates=intermediates
    )


# ---- validation ---------------------------------------------------------------------------
def _check_dims(dims: object) -> list[int]:
    if hasattr(dims, "tolist") and not isinstance(dims, Tensor):  # a NumPy array of sizes
        dims = dims.tolist()
    if isinstance(dims, Tensor):
        dims = dims.tolist()
    if isinstance(dims, (str, bytes)) or not isinstance(dims, Sequence) or len(dims) < 2:
        raise ValueError(f"dims={dims!r} must list at least two sizes [d_0, d_1, ...]")
    if len(dims) - 1 > MAX_LAYERS:
        raise ValueError(f"dims lists {len(dims) - 1} layers; refbp builds at most MAX_LAYERS = {MAX_LAYERS}")
    out = []
    for k, d in enumerate(dims):
        if hasattr(d, "__index__") and not isinstance(d, bool):
            d = int(d.__index__())
        try:
            out.append(check_int(d, f"dims[{k}]", minimum=1))
        except (TypeError, ValueError) as err:
            raise ValueError(f"dims[{k}]={d!r} must be a positive int; got dims={list(dims)}") from err
    return out


def _check_size(dims: list[int], dtype: torch.dtype) -> None:
    """Refuse, before drawing anything, an MLP of more than MAX_PARAMETERS parameters, or one
    whose parameters and their gradients (what every use of it computes) do not fit in the
    free memory, with the size it needs. The draws are float64, one layer at a time."""
    entries = sum(d_in * d_out + d_out for d_in, d_out in itertools.pairwise(dims))
    itemsize = torch.empty((), dtype=dtype).element_size()
    largest = max(d_in * d_out for d_in, d_out in itertools.pairwise(dims))
    nbytes = 2 * entries * itemsize + 8 * largest  # W(i), b(i), their gradients; one float64 draw
    what = f"an MLP with dims {_short(dims)} ({entries} parameters)"
    if entries > MAX_PARAMETERS:
        raise ValueError(
            f"{what} would need {nbytes / 2**30:.3g} GiB for its parameters and their gradients; "
            f"refbp builds at most MAX_PARAMETERS = {MAX_PARAMETERS} (refbp.nn.mlp.MAX_PARAMETERS)"
        )
    check_fits_in_memory(nbytes, f"{what}, with their gradients,")


def _short(dims: Sequence[int]) -> str:
    text = "-".join(str(d) for d in dims[:8])
    return text + (f"-... ({len(dims)} sizes)" if len(dims) > 8 else "")


def _bias(b: object, name: str) -> Tensor:
    """A bias as given, (d,), (d, 1) or (1, d), as a tensor; anything else a clear error."""
    b = check_tensor(b, name)
    if b.dim() == 1 or (b.dim() == 2 and 1 in b.shape):
        return b
    raise ValueError(f"{name} has {describe(b)}; expected (d,), (d, 1) or (1, d)")


def _validate(
    weights: list[Tensor], biases: list[Tensor], activations: list[str], loss_name: str | Loss, layout: str = "torch"
) -> None:
    """The MLP's own messages, in the seed's notation (W{i}, b{i}, weights[i-1])."""
    try:
        _validate_torch_layout(weights, biases, activations, loss_name)
    except ValueError as err:
        if layout != "in_out":
            raise
        raise ValueError(f"{err} (layout 'in_out': shapes shown as refbp keeps them, W(i) transposed)") from None


def _validate_torch_layout(
    weights: list[Tensor], biases: list[Tensor], activations: list[str], loss_name: str | Loss
) -> None:
    if not weights:
        raise ValueError("weights is empty; expected one W(i) per layer, at least one")
    L = len(weights)
    if L > MAX_LAYERS:
        raise ValueError(f"weights has {L} layers; refbp builds at most MAX_LAYERS = {MAX_LAYERS}")
    if len(biases) != L:
        raise ValueError(f"biases has {len(biases)} entries but weights has {L}; expected one b(i) per layer")
    if len(activations) != L:
        raise ValueError(
            f"activations has {len(activations)} entries but the network has {L} layers; "
            "expected one activation per layer"
        )
    W1 = check_tensor(weights[0], "weights[0] (W1)", ndim=2)
    dtype, device = W1.dtype, W1.device
    for i in range(1, L + 1):
        W = check_tensor(weights[i - 1], f"weights[{i - 1}] (W{i})", ndim=2)
        b = check_tensor(biases[i - 1], f"biases[{i - 1}] (b{i})", ndim=1)
        d_out, d_in = W.shape
        if d_out == 0 or d_in == 0:
            raise ValueError(f"weights[{i - 1}] (W{i}) has {describe(W)}; every layer needs at least one unit")
        if i > 1 and d_in != weights[i - 2].shape[0]:
            raise ValueError(
                f"weights[{i - 1}] (W{i}) has {describe(W)}; expected ({d_out}, "
                f"{weights[i - 2].shape[0]}) so that its input matches W{i - 1}'s output"
            )
        if b.shape[0] != d_out:
            raise ValueError(f"biases[{i - 1}] (b{i}) has {describe(b)}; expected ({d_out},) to match W{i}")
        check_same_dtype_device(W, f"weights[{i - 1}] (W{i})", dtype=dtype, device=device)
        check_same_dtype_device(b, f"biases[{i - 1}] (b{i})", dtype=dtype, device=device)
        check_finite(W, f"weights[{i - 1}] (W{i})")
        check_finite(b, f"biases[{i - 1}] (b{i})")
        get_activation(activations[i - 1], argument=f"activations[{i - 1}]")
    loss = get_loss(loss_name)
    last = activations[-1]
    if loss.output_activation is not None and last != loss.output_activation:
        raise ValueError(
            f"loss={loss.name!r} needs activations[-1]={loss.output_activation!r} on the last layer, "
            f"got {last!r}"
            + (" (cross_entropy applies softmax to z(L) itself)" if loss.name == "cross_entropy" else "")
        )
    if loss.targets == "classes" and weights[-1].shape[0] < 2:
        raise ValueError(f"loss={loss.name!r} needs d_L >= 2 classes in the last layer, got 1")
