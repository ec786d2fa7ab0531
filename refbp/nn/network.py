"""Network: any stack of layers with a loss, its manual forward and backward pass, its oracle.

    net = Network([Linear(W1, b1), Elementwise("tanh"), LayerNorm(gamma, beta), Linear(W2, b2)], "mse")
    cache = net.forward(X)            # cache.a[l]: layer l's output, a[0] = X
    J = net.loss(cache, y)
    grads = net.backward(cache, y)    # grads["W1"], grads["a2"], grads["X"], ...: dJ/d(that)

Layer l (from 1) names its tensors with keys at path (l,): "W1", "b1", "a1", "gamma3", ...;
the input is "X" (refbp.nn.keys). The forward and backward loops are refbp.nn.stack's, and
know nothing of any particular layer. A parameter tensor that appears in two layers (a tied
weight: pass the same tensor object) has one key, the first, and its gradient is the sum of
both uses.

The oracle of the whole network, ``torch_J``, chains the layers' torch oracles and the loss's
torch function: refbp.verify differentiates it with autograd and perturbs it for finite
differences. It is the one torch definition of the network's function.

Every network reads its arrays (X, y, dJ/da(L)) and hands back its gradients in its ``layout``
(refbp.nn.layouts): torch's own for any network built from layers; an MLP (refbp.nn.mlp) can be
built in another. The loops themselves always compute in torch's layout.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, cast

import numpy as np
import torch
from torch import Tensor
from typing_extensions import TypeVar

from .keys import Key, sort_names
from .layer import NO_TAP, BackwardContext, ForwardContext, Layer, Params, SecondContext, Tap
from .layouts import TORCH, Layout
from .losses import Loss, check_output_range, get_loss
from .noise import check_noise
from .r_stack import StackTangent, stack_r_backward, stack_tangent
from .sequential import torch_modules_in_mode
from .stack import (
    Reads,
    StackCache,
    StackGradients,
    chain,
    check_depth,
    stack_backward,
    stack_forward,
    stack_keys,
    stack_sizes,
    stack_torch_forward,
    walk_layers,
)
from .validation import (
    FLOAT_DTYPES,
    as_tensor,
    check_finite,
    check_fits_in_memory,
    check_same_dtype_device,
    check_tensor,
    describe,
)

__all__ = ["Cache", "Network", "NetworkGradients", "check_live_cache", "keep_flag", "resolve_device"]


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
    if resolved.type == "meta":
        raise ValueError(f"device={device!r}: the meta device holds no values to compute with")
    return resolved


def keep_flag(value: bool | None, old: bool | None, old_name: str) -> bool:
    """The "keep intermediates" flag from its one name and an older spelling of it (``keep_z``
    for the forward pass, ``intermediates`` for the backward pass); True when neither is given."""
    if value is not None and old is not None and value != old:
        raise TypeError(f"{old_name}={old!r} is the older spelling of keep_intermediates={value!r}: pass one of them")
    flag = value if value is not None else (old if old is not None else True)
    if not isinstance(flag, bool):
        name = "keep_intermediates" if value is not None else old_name
        raise TypeError(f"{name}={flag!r} must be True or False")
    return flag


_ITEMSIZE = {torch.float64: 8, torch.float32: 4, torch.float16: 2, torch.bfloat16: 2}
"""Bytes per entry of the floating dtypes, without building a tensor to ask."""


_PLAIN_FORWARD = {
    (keep, update): ForwardContext(keep_intermediates=keep, update_stats=update)
    for keep in (True, False)
    for update in (True, False)
}
"""The forward contexts without given noise, built once: a frozen dataclass costs a few
microseconds to build, a noticeable part of a small network's training step."""


NetT = TypeVar("NetT", bound="Network[Any, Any]")
"""A network type: ``train``, ``eval`` and ``to`` return a network of its own class."""


@dataclass
class Cache(StackCache):
    """Everything a network's forward pass computed.

    Attributes:
        a: a[0] = X, a[l] = layer l's output (l = 1 .. L).
        saved: saved[l] = what layer l's backward needs besides a[l-1] and a[l] (e.g. z(l)).
        noise: the random draws made (dropout keep-masks), by layer path.
        released: True once ``backward(..., release_cache=True)`` has dropped the entries.
    """

    noise: dict[tuple[int, ...], Tensor] = field(default_factory=dict)
    released: bool = False

    @property
    def L(self) -> int:
        """Number of layers."""
        return len(self.a) - 1

    @property
    def X(self) -> Tensor:
        """The input a(0)."""
        return self.a[0]

    @property
    def y_hat(self) -> Tensor:
        """The output a(L)."""
        return self.a[-1]


def check_live_cache(cache: object) -> Cache:
    """``cache`` itself, checked to be what a forward pass returned and not yet released by a backward pass."""
    if not isinstance(cache, Cache):
        raise TypeError(
            f"cache must be what net.forward(X) returned (a refbp.nn.network.Cache), got {type(cache).__name__}"
        )
    if cache.released:
        raise ValueError("cache was released by an earlier backward(..., release_cache=True); run net.forward(X) again")
    return cache


class NetworkGradients:
    """Every gradient of J a backward pass computed: dJ/d(parameter), dJ/d(intermediate), dJ/dX.

    ``grads["W1"]``, ``grads.as_dict()`` (names in key order), ``grads.dJ_dX``, each in the
    network's layout (refbp.nn.layouts; torch's unless the network was built in another), and
    ``grads.torch_named()``: the parameter gradients under the names of the network's torch
    module (``to_torch().named_parameters()``), plus "input" for dJ/dX."""

    def __init__(self, values: dict[str, Tensor], network: Network) -> None:
        self._values = {name: values[name] for name in network.in_order(values)}
        self._network = network

    @property
    def layout(self) -> Layout:
        """The layout ``as_dict`` and ``grads[name]`` hand the gradients back in: the network's."""
        return self._network.layout

    @property
    def network(self) -> Network:
        """The network whose backward pass computed these gradients."""
        return self._network

    def __getitem__(self, name: str) -> Tensor:
        if name not in self._values:
            raise KeyError(f"no gradient for {name!r}; there are {list(self._values)}")
        return self.layout.to_user(name, self._values[name])

    def __contains__(self, name: object) -> bool:
        return name in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def as_dict(self, layout: str | None = None) -> dict[str, Tensor]:
        """name -> dJ/d(that), in key order, in ``layout`` ("torch", "in_out" or "columns"; the
        default: the network's, refbp.nn.layouts), where dJ/d(T) always has T's shape."""
        view = self.layout if layout is None else self.layout.named(layout)
        if view.identity:
            return dict(self._values)
        return {name: view.to_user(name, t) for name, t in self._values.items()}

    @property
    def dJ_dX(self) -> Tensor:
        """dJ/dX, the input's shape, in refbp's rows (not defined when the input holds token
        indices); ``grads["X"]`` is the same in the network's layout."""
        if "X" not in self._values:
            raise KeyError("this network's input holds integers (token indices): dJ/dX is not defined")
        return self._values["X"]

    def torch_named(self) -> dict[str, Tensor]:
        """Parameter gradients under the names ``to_torch().named_parameters()`` gives (a tied
        weight once, under its first name, as torch lists it), plus "input" for dJ/dX."""
        out: dict[str, Tensor] = {}
        for name, torch_names in self._network.torch_parameter_names().items():
            if name in self._values:
                out[torch_names[0]] = self._values[name]
        if "X" in self._values:
            out["input"] = self._values["X"]
        return out


CacheT = TypeVar("CacheT", bound=Cache, default=Cache, covariant=True)
"""What a network's forward pass returns: a Cache (an MLP's adds the seed's z list)."""

GradientsT = TypeVar("GradientsT", bound=NetworkGradients, default=NetworkGradients, covariant=True)
"""What a network's backward pass returns: NetworkGradients (an MLP's adds the seed's lists)."""


LayerT = TypeVar("LayerT", bound=Layer, default=Layer, covariant=True)
"""The type of a network's layers (an MLP's are Dense)."""


class Network(Generic[CacheT, GradientsT, LayerT]):
    """A stack of layers and a loss, with a manual forward and backward pass.

    The type parameters are the cache and gradients types its passes return and its layers'
    type, so that a view of a network (refbp.nn.mlp.MLP) presents the same results otherwise,
    with the same methods; a plain Network returns Cache and NetworkGradients.

    Args:
        layers: the layers, input first (refbp.nn.layers).
        loss: a loss name or record (refbp.nn.losses).
        weight_decay: lambda >= 0: J gains lambda/2 ||W||^2 for every weight of a linear map.
    """

    def __init__(self, layers: Sequence[Layer], loss: str | Loss, *, weight_decay: float = 0.0) -> None:
        if isinstance(layers, Layer) or not isinstance(layers, Sequence) or not layers:
            raise TypeError(f"layers must be a non-empty list of refbp layers, got {type(layers).__name__}")
        for l, layer in enumerate(layers, start=1):
            if not isinstance(layer, Layer):
                raise TypeError(f"layers[{l - 1}] must be a refbp layer, got {type(layer).__name__}")
        self.layers: list[LayerT] = cast(list[LayerT], list(layers))
        self.reads: Reads = chain(len(self.layers))
        """reads[l - 1] = the tensors layer l reads (0: X, i: a(i)): a stack, layer l reads a(l-1);
        a graph network (refbp.nn.graph) wires them otherwise. The loops (refbp.nn.stack) follow it."""
        for layer in self.layers:
            check_depth(layer)
        self.loss_fn = get_loss(loss)
        check_output_range(self.loss_fn, self.layers[-1].output_range, f"layer {self.L} ({self.layers[-1].describe()})")
        if (
            isinstance(weight_decay, bool)
            or not isinstance(weight_decay, (int, float))
            or not math.isfinite(weight_decay)
            or weight_decay < 0
        ):
            raise ValueError(f"weight_decay={weight_decay!r} must be a finite number >= 0")
        self.weight_decay = float(weight_decay)
        self._entries_by_shape: dict[tuple[object, ...], tuple[int, str]] = {}  # check_forward_memory's
        self._backward_contexts: dict[tuple[object, ...], BackwardContext] = {}  # _backward_context's
        self._adopt_parameters()

    # ---- parameters -----------------------------------------------------------------------
    def _walk(self) -> Iterator[tuple[tuple[int, ...], Layer]]:
        """Every layer and sub-layer with its path, depth first, in order (refbp.nn.stack.walk_layers)."""
        return walk_layers(self.layers)

    def _adopt_parameters(self) -> None:
        """Detach every parameter (the manual path builds no graph), check dtypes, devices and
        values, and find tied parameters: the same tensor object in two places."""
        first: dict[int, Key] = {}
        detached: dict[int, Tensor] = {}
        self.ties: dict[Key, Key] = {}
        reference: Tensor | None = None
        for path, layer in self._walk():
            for kind, t in list(layer.params.items()):
                key = Key(kind, path)
                name = f"{key} ({layer.describe()}.{kind})"
                if id(t) in first:
                    self.ties[key] = first[id(t)]
                    layer.params[kind] = detached[id(t)]
                    continue
                check_tensor(t, name)
                if t.numel() == 0:
                    raise ValueError(f"{name} has no entries ({describe(t)}); every size must be >= 1")
                if reference is None:
                    reference = t
                check_same_dtype_device(t, name, dtype=reference.dtype, device=reference.device)
                check_finite(t, name)
                first[id(t)] = key
                detached[id(t)] = t.detach()
                layer.params[kind] = detached[id(t)]
        # a network without parameters (activations, dropout) keeps what it was given by ``to``
        self._dtype = reference.dtype if reference is not None else getattr(self, "_dtype", torch.float64)
        self._device = reference.device if reference is not None else getattr(self, "_device", torch.device("cpu"))

    def parameters(self) -> dict[str, Tensor]:
        """name -> parameter tensor, every parameter once (a tied one under its first key)."""
        out: dict[str, Tensor] = {}
        for path, layer in self._walk():
            for kind, t in layer.params.items():
                key = Key(kind, path)
                if key not in self.ties:
                    out[str(key)] = t
        return out

    def parameter_keys(self) -> list[Key]:
        """The keys of ``parameters()``, in order."""
        return [Key.parse(name) for name in self.parameters()]

    def set_parameter(self, name: str, value: Tensor) -> None:
        """Replace parameter ``name`` (and every layer that shares it) with ``value``."""
        key = Key.parse(name)
        targets = [k for k in (key, *(k for k, v in self.ties.items() if v == key))]
        for path, layer in self._walk():
            for kind in layer.params:
                if Key(kind, path) in targets:
                    layer.params[kind] = value

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def L(self) -> int:
        """Number of layers."""
        return len(self.layers)

    @property
    def takes_indices(self) -> bool:
        """True when the input holds integer indices (the first layer is an embedding)."""
        return self.layers[0].takes_indices

    @property
    def loss_name(self) -> str:
        return self.loss_fn.name

    @property
    def training(self) -> bool:
        return all(layer.training for _, layer in self._walk())

    def train(self: NetT, mode: bool = True) -> NetT:
        """Training mode (BatchNorm uses batch statistics, Dropout draws masks); returns self."""
        for layer in self.layers:
            layer.set_training(mode)
        return self

    def eval(self: NetT) -> NetT:
        """Eval mode (BatchNorm uses its running statistics, Dropout is the identity); returns self."""
        return self.train(False)

    def names(self) -> list[str]:
        """The names ``backward(...).as_dict()`` holds, in order: every layer's parameters,
        intermediates and output, then X (when the input is not a tensor of indices)."""
        keys = [key for key in stack_keys(self.layers, ()) if key not in self.ties]
        names = [str(key) for key in keys]
        return [*names, "X"] if not self.takes_indices else names

    def in_order(self, names: Iterable[str]) -> list[str]:
        """``names`` in the order of ``names()`` (each layer's parameters, intermediates and
        output, as the layer lists them); any other name (a user's "fc1.weight") after, in
        refbp.nn.keys.sort_names' order."""
        names = tuple(names)
        rank = self._name_rank
        if rank is None or rank[1] is not self.layers:  # backward sorts at every call
            rank = self._name_rank = ({name: i for i, name in enumerate(self.names())}, self.layers, {})
        place, _, orders = rank
        order = orders.get(names)  # a training loop sorts the same names at every step: remembered
        if order is None:
            known = sorted((name for name in names if name in place), key=place.__getitem__)
            order = (*known, *sort_names([name for name in names if name not in place]))
            if len(orders) < 64:
                orders[names] = order
        return list(order)

    _name_rank: tuple[dict[str, int], object, dict[tuple[str, ...], tuple[str, ...]]] | None = None
    """(name -> place, the layer list it is for, the orders already found by the names given)"""

    def describe(self) -> str:
        """The layers in one line."""
        return " -> ".join(layer.describe() for layer in self.layers) + f", loss {self.loss_name}"

    # ---- the forward pass -----------------------------------------------------------------
    layout: Layout = TORCH
    """How the network reads X, y and dJ/da(L) and hands back gradients (refbp.nn.layouts):
    torch's, rows of observations, for any network built from layers; the loops compute in it."""

    def input_from_user(self, X: object) -> Tensor:
        """X as refbp computes with it: a tensor (from NumPy) turned from the network's layout
        into refbp's (a transpose or nothing)."""
        X = check_tensor(X, "X", float_only=not self.takes_indices)
        return self.layout.from_user("X", X)

    def check_input(self, X: object) -> Tensor:
        """X in the network's layout -> X in refbp's, checked: a finite tensor with the
        parameters' dtype and device (int64 indices for an embedding), with at least one row, a
        shape the first layer accepts, and a forward pass that fits in the free memory."""
        name = "X"
        X = self.input_from_user(X)
        if X.dim() == 0 or X.shape[0] == 0:
            raise ValueError(f"{name} has an empty batch ({describe(X)}); expected N >= 1 rows")
        if self.takes_indices:
            if X.dtype != torch.int64:
                raise TypeError(
                    f"{name} must hold int64 token indices for {self.layers[0].describe()}, got {describe(X)}"
                )
            if X.device != self.device:
                raise ValueError(f"{name} is on device {X.device}, but the network is on {self.device}")
        else:
            check_same_dtype_device(X, name, dtype=self.dtype, device=self.device)
            check_finite(X, name)
        for l, read in enumerate(self.reads, start=1):
            if 0 in read:  # layer 1 reads X; in a graph network later layers may too
                self.layers[l - 1].check_input(X, (l,))
        self.check_forward_memory(tuple(X.shape))
        return X.detach() if X.requires_grad else X  # the manual path builds no graph

    def forward_entries(self, shape: tuple[int, ...]) -> int:
        """How many entries a forward pass and its backward pass allocate for an input of
        ``shape``, counted layer by layer (``Layer.forward_size``) without running anything:
        what the forward pass keeps, and as many again for the backward pass's gradients."""
        return 2 * stack_sizes(self.layers, shape, self.reads)

    def check_forward_memory(self, shape: tuple[int, ...]) -> None:
        """Refuse, before allocating, a forward pass on an input of ``shape`` that cannot fit
        in the free memory, naming the size it needs (refbp.nn.validation.check_fits_in_memory).

        The size and its description are remembered by shape and dtype for these very layers: a
        training loop runs the same shapes again and again, and the walk over the layers would
        cost more than its step."""
        seen = self._entries_by_shape
        key = (shape, self.dtype, *map(id, self.layers))
        known = seen.get(key)
        if known is None:
            if len(seen) > 64:  # a few shapes are reused; anything else is not worth keeping
                seen.clear()
            entries = self.forward_entries(shape)
            itemsize = _ITEMSIZE.get(self.dtype) or torch.empty((), dtype=self.dtype).element_size()
            what = f"a forward and backward pass on X of shape {shape} ({entries} entries of {itemsize} bytes)"
            known = seen[key] = (entries * itemsize, what)
        check_fits_in_memory(*known)

    def forward(
        self,
        X: Tensor | np.ndarray,
        *,
        keep_intermediates: bool | None = None,
        update_stats: bool = True,
        noise: Mapping[tuple[int, ...], Tensor] | None = None,
        keep_z: bool | None = None,
    ) -> CacheT:
        """Run every layer on X and keep what the backward pass needs.

        Args:
            X: the input in the network's layout: (N, d_0) rows (or (N, ...) as the first
                layer accepts; int64 indices for an embedding), the parameters' dtype and device.
            keep_intermediates: keep the intermediates the teaching view shows (z(l), ...; the
                default). With False a layer keeps only what its backward reads (Dense drops
                z(l) where f' reads a(l)), and the loop drops each a(l) that no backward reads
                (a Linear's output before relu; ``Layer.backward_reads_input``/``_output``), an
                empty tensor in ``cache.a``: the backward pass is the same, the cache smaller.
                ``keep_z`` is the seed's older spelling of the same flag.
            update_stats: BatchNorm in training mode updates its running statistics, as torch.
            noise: dropout keep-masks by layer path, to reuse a draw; None draws new ones.
        """
        keep = keep_flag(keep_intermediates, keep_z, "keep_z")
        X = self.check_input(X)
        check_noise(self.layers, noise)
        if noise is None:
            ctx = _PLAIN_FORWARD[keep, update_stats]
        else:
            ctx = ForwardContext(keep_intermediates=keep, update_stats=update_stats, noise=noise)
        stack = stack_forward(self.layers, X, ctx, (), self.reads)
        drawn: dict[tuple[int, ...], Tensor] = {}
        for l, layer in enumerate(self.layers, start=1):
            drawn.update(layer.noise_of(stack.saved[l], (l,)))
        return self._cache(stack.a, stack.saved, drawn)

    def _cache(self, a: list[Tensor], saved: list[Any], noise: dict[tuple[int, ...], Tensor]) -> CacheT:
        """The result object of a forward pass (a view of the network may present it otherwise)."""
        return cast(CacheT, Cache(a=a, saved=saved, noise=noise))

    def loss(self, cache: Cache, y: object) -> Tensor:
        """J = loss(a(L), y) + lambda/2 sum ||W||^2 (eq. 3); a 0-dim tensor; y in the network's layout."""
        self._check_cache(cache)
        y = self.targets_from_user(y, cache)
        J = self.loss_fn.value(cache.y_hat, y)  # (3) J = loss(a(L), y) + lambda/2 sum ||W||^2
        if self.weight_decay:
            params = self.parameters()
            decayed = [params[str(key)] for key in self.decayed_keys()]
            J = J + 0.5 * self.weight_decay * sum(torch.sum(W * W) for W in decayed)
        return J

    def decayed_keys(self) -> list[Key]:
        """The keys of the parameters weight decay applies to (each layer's ``decayed`` kinds:
        the weights of linear maps), each once: a tied weight under its first key."""
        return [
            Key(kind, path)
            for path, layer in self._walk()
            for kind in layer.decayed
            if kind in layer.params and Key(kind, path) not in self.ties
        ]

    # ---- the backward pass ----------------------------------------------------------------
    def backward(
        self,
        cache: Cache,
        y: object,
        *,
        keep_intermediates: bool | None = None,
        release_cache: bool = False,
        intermediates: bool | None = None,
    ) -> GradientsT:
        """Every gradient of J, by hand, from the cache.

        Args:
            cache: what ``forward`` returned; read, never modified (unless released).
            y: the targets, as ``loss`` takes them (in the network's layout).
            keep_intermediates: keep dJ/d(every intermediate) (the default). With False only
                the parameters' gradients and dJ/dX are kept, each intermediate's freed once
                used. ``intermediates`` is the older spelling of the same flag.
            release_cache: drop each cache entry after its last use, as autograd frees its
                saved tensors; the cache cannot be used again afterwards.
        """
        keep = keep_flag(keep_intermediates, intermediates, "intermediates")
        self._check_cache(cache)
        y = self.targets_from_user(y, cache)
        return self._backward_loss(cache, y, keep_intermediates=keep, release_cache=release_cache)

    def _backward_loss(self, cache: Cache, y: Tensor, *, keep_intermediates: bool, release_cache: bool) -> GradientsT:
        """``backward`` once the cache and the targets are checked."""
        # (4) dJ/da(L) = dloss/dy_hat: a fresh tensor, handed over in a list so that the loop
        # owns the only reference and can overwrite and free it like every later dJ/da(l)
        upstream = [self.loss_fn.gradient(cache.y_hat, y)]
        return self._backward(cache, upstream, keep=keep_intermediates, release_cache=release_cache, owned=True)

    def backward_from(
        self,
        cache: Cache,
        dJ_da_L: Tensor,
        *,
        keep_intermediates: bool | None = None,
        release_cache: bool = False,
        intermediates: bool | None = None,
    ) -> GradientsT:
        """The backward pass from a given dJ/da(L) (the output's shape, in the network's
        layout) instead of a loss.

        This is how a gradient crosses from one network into another: when a(L) feeds
        something above it, dJ/da(L) is what that something hands down (its own dJ/dX).
        ``dJ_da_L`` itself is never modified. Options as for ``backward``."""
        keep = keep_flag(keep_intermediates, intermediates, "intermediates")
        self._check_cache(cache)
        upstream = as_tensor(dJ_da_L, "dJ_da_L")
        if isinstance(upstream, Tensor):
            upstream = self.layout.from_user(f"a{self.L}", upstream)
        if not isinstance(upstream, Tensor) or upstream.shape != cache.y_hat.shape:
            got = describe(dJ_da_L) if isinstance(dJ_da_L, Tensor) else type(dJ_da_L).__name__
            shape = self.layout.to_user(f"a{self.L}", cache.y_hat).shape
            raise ValueError(f"dJ_da_L must have a(L)'s shape {tuple(shape)}{self.layout.output_sizes}, got {got}")
        check_same_dtype_device(upstream, "dJ_da_L", dtype=self.dtype, device=self.device)
        check_finite(upstream, "dJ_da_L")
        owned = [upstream.detach() if upstream.requires_grad else upstream]
        return self._backward(cache, owned, keep=keep, release_cache=release_cache, owned=False)

    def _backward_context(self, keep: bool, owned: bool) -> BackwardContext:
        """The network-level BackwardContext, remembered by what it holds (a training loop asks
        for the same one at every step; building it costs a few microseconds)."""
        key = (keep, owned, not self.takes_indices, self.weight_decay, id(self.ties))
        ctx = self._backward_contexts.get(key)
        if ctx is None or ctx.ties is not self.ties:
            if len(self._backward_contexts) > 64:  # a few are reused; anything else is not worth keeping
                self._backward_contexts.clear()
            ctx = self._backward_contexts[key] = BackwardContext(
                path=(),
                keep_intermediates=keep,
                overwrite=owned,
                need_dx=not self.takes_indices,
                weight_decay=self.weight_decay,
                ties=self.ties,
            )
        return ctx

    def _backward(
        self, cache: Cache, upstream: list[Tensor], *, keep: bool, release_cache: bool, owned: bool
    ) -> GradientsT:
        ctx = self._backward_context(keep, owned)
        grads = stack_backward(self.layers, cache, upstream, ctx, release=release_cache, reads=self.reads)
        if release_cache:
            cache.released = True
        values = {key.name: value for key, value in grads.params.items()}
        for key, value in grads.intermediates.items():
            values[key.name] = value
        if grads.dJ_dx is not None:
            values["X"] = grads.dJ_dx  # (9) dJ/dX = dJ/da(0), summed over X's readers
        return self._gradients(values)

    # ---- second order: the R-operator's loops (refbp.nn.second_order) --------------------------
    def tangent_pass(self, cache: Cache, RX: Tensor | None, V: Params) -> StackTangent:
        """Every layer's tangent along (R{X}, V), from a forward pass's cache (refbp.nn.r_stack)."""
        return stack_tangent(self.layers, cache, RX, V, (), self.reads)

    def r_backward_pass(
        self, cache: Cache, tangent: StackTangent, g: Tensor, Rg: Tensor, V: Params, ctx: SecondContext
    ) -> tuple[Tensor | None, StackGradients]:
        """Every layer's R-backward from dJ/da(L) and R{dJ/da(L)} (refbp.nn.r_stack)."""
        return stack_r_backward(self.layers, cache, tangent, g, Rg, V, ctx, self.reads)

    def _gradients(self, values: dict[str, Tensor]) -> GradientsT:
        """The result object of a backward pass (a view of the network may present it otherwise)."""
        return cast(GradientsT, NetworkGradients(values, self))

    def targets_from_user(self, y: object, cache: Cache) -> Tensor:
        """y as refbp computes with it: a tensor (from NumPy) turned from the network's layout
        into refbp's ((d_L, N) values to (N, d_L) in "columns"), then checked as
        ``check_targets`` does."""
        y = as_tensor(y, "y")
        if isinstance(y, Tensor) and not self.layout.rows and y.dim() == 2:
            N, d_L = cache.y_hat.shape
            if tuple(y.shape) != (d_L, N):
                raise ValueError(f"y must have shape ({d_L}, {N}) = (d_L, N) like y_hat, got {describe(y)}")
            y = self.layout.targets_from_user(y)
        return self.check_targets(y, cache)

    def check_targets(self, y: object, cache: Cache) -> Tensor:
        """y in refbp's layout as the loss needs it for the output a(L) in ``cache``
        (refbp.nn.losses.Loss.check_targets)."""
        return self.loss_fn.check_targets(as_tensor(y, "y"), cache.y_hat, rows=self.layout.named_sizes)

    def _check_cache(self, cache: object) -> None:
        cache = check_live_cache(cache)
        if cache.L != self.L:
            raise ValueError(
                f"cache has {cache.L} layers; it does not come from this network ({self.L} layers): "
                "pass the cache of net.forward(X)"
            )
        for l, (layer, read) in enumerate(zip(self.layers, self.reads, strict=True), start=1):
            if len(read) > 1 or cache.a[read[0]].numel() == 0:
                continue  # a join of several tensors (each checked as its own layer's output); a dropped a(i)
            try:
                layer.check_input(cache.a[read[0]], (l,))
            except ValueError as err:
                raise ValueError(
                    f"cache does not come from this network: {err}; pass the cache of net.forward(X)"
                ) from err

    # ---- the oracle -----------------------------------------------------------------------
    def torch_forward(self, X: Tensor, p: Params, noise: Mapping[tuple[int, ...], Tensor], tap: Tap = NO_TAP) -> Tensor:
        """The network's output computed by the layers' torch oracles (torch.nn.functional)."""
        return stack_torch_forward(self.layers, X, p, noise, tap, (), self.reads)

    def torch_J(
        self, X: Tensor, y: Tensor, p: Params, noise: Mapping[tuple[int, ...], Tensor], tap: Tap = NO_TAP
    ) -> Tensor:
        """J by torch's own functions: the oracle of eq. (3) for the whole network."""
        J = self.torch_loss(self.torch_forward(X, p, noise, tap), y, tap)
        if self.weight_decay:
            decayed = [p(key.layer, key.kind) for key in self.decayed_keys()]
            J = J + 0.5 * self.weight_decay * sum((W * W).sum() for W in decayed)
        return J

    def torch_loss(self, y_hat: Tensor, y: Tensor, tap: Tap = NO_TAP) -> Tensor:
        """The data term of J by the loss's torch function; the tap hears of its pieces and domain."""
        loss = self.loss_fn
        if loss.pieces is not None:  # bce's clamps on y_hat; multi_margin's hinge on margin - z_y + z_j
            tap.piecewise(loss.pieces_of(y_hat, y), loss.pieces)
        if loss.domain is not None:
            y_hat = tap.within(y_hat, loss.domain)
        return loss.torch_fn(y_hat, y)

    def oracle_params(
        self, *, dtype: torch.dtype | None = None, device: torch.device | str | None = None
    ) -> dict[Key, Tensor]:
        """Copies of the parameters by key, in ``dtype`` on ``device`` (default: as they are)."""
        return {
            Key.parse(name): t.detach().to(dtype=dtype or t.dtype, device=device or t.device)
            for name, t in self.parameters().items()
        }

    # ---- conversions ----------------------------------------------------------------------
    def to(self: NetT, dtype: torch.dtype | None = None, device: str | torch.device | None = None) -> NetT:
        """A copy of this network, of its own class, with parameters and buffers converted to
        ``dtype`` and/or ``device`` (ties kept)."""
        if dtype is not None and dtype not in FLOAT_DTYPES:
            raise TypeError(f"dtype={dtype!r} must be a floating torch dtype")
        target = None if device is None else resolve_device(device)
        clone = copy.deepcopy(self)
        converted: dict[int, Tensor] = {}
        for _, layer in clone._walk():
            for kind, t in layer.params.items():
                if id(t) not in converted:
                    converted[id(t)] = t.to(dtype=dtype, device=target)
                layer.params[kind] = converted[id(t)]
            for name, buffer in layer.buffers().items():
                setattr(layer, name, buffer.to(dtype=dtype, device=target))
        clone._dtype = dtype or clone._dtype
        clone._device = target or clone._device
        clone._adopt_parameters()
        return clone

    def torch_parameter_names(self) -> dict[str, tuple[str, ...]]:
        """Parameter name -> its names in ``to_torch()``'s module (several for a tied weight):
        layer l's modules follow those of the layers before it, so a layer's own name "0.weight"
        becomes "<offset>.weight"."""
        names: dict[Key, list[str]] = {}
        offset = 0
        with self._torch_random_state_kept():  # building torch modules draws their initial values
            for l, layer in enumerate(self.layers, start=1):
                for key, relative in layer.torch_param_names((l,)).items():
                    index, rest = relative.split(".", 1)
                    names.setdefault(self.ties.get(key, key), []).append(f"{offset + int(index)}.{rest}")
                offset += len(layer.torch_modules())
        return {str(key): tuple(value) for key, value in names.items()}

    def _torch_random_state_kept(self) -> contextlib.AbstractContextManager[None]:
        """torch's random state restored on exit: a torch module's constructor draws initial
        values (overwritten by the copies) from it, which must not shift the user's draws."""
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        return torch.random.fork_rng(devices=devices)

    def to_torch(self) -> torch.nn.Module:
        """The equivalent torch.nn.Sequential: a copy of the parameters (a tied parameter is one
        nn.Parameter in every module that uses it), each module in its own layer's train/eval mode."""
        with self._torch_random_state_kept():
            sequential = torch.nn.Sequential(*[m for layer in self.layers for m in torch_modules_in_mode(layer)])
        sequential.training = self.training  # its own flag only: each module keeps its layer's mode
        for names in self.torch_parameter_names().values():
            shared = sequential.get_parameter(names[0])
            for name in names[1:]:
                owner, _, attribute = name.rpartition(".")
                setattr(sequential.get_submodule(owner), attribute, shared)
        return sequential
