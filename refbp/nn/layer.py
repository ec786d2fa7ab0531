"""The layer protocol: what every layer of refbp provides, so that one loop runs any network.

A layer owns its parameters and four things, each written once:

    forward(x)                       -> (out, cache)      the manual forward pass, no autograd;
                                                          cache holds what backward needs
    backward(dJ/dout, x, out, cache) -> LayerGradients         the manual backward pass: dJ/dx and
                                                          dJ/d(each parameter), from the cache
    torch_forward(x, params, ...)    -> out               the oracle: the same map built from
                                                          torch.nn.functional, differentiated by
                                                          autograd and perturbed by finite
                                                          differences in refbp.verify
    to_torch()                       -> torch.nn.Module   the equivalent torch module

and, optionally, second order (refbp.nn.second_order), each layer's rules beside its backward:

    tangent(x, R{x}, out, cache, V)  -> LayerTangent      forward mode: R{out} along the
                                                          direction (R{x}, V) (a JVP)
    r_backward(g, R{g}, x, R{x}, ...) -> (dJ/dx, LayerGradients)  Pearlmutter's R-operator applied to
                                                          the backward pass: R{dJ/dx} and the
                                                          layer's share of H v

``backward`` reads its input x and output out from the network's list of activations and the
rest from its own ``cache`` (a dataclass, or the one tensor it needs); it never recomputes a
forward quantity. Parameter gradients are returned, and the network *adds* them into its
gradients, so that a parameter used twice (a tied weight) gets the sum of both uses.

Names: a layer calls its parameters and intermediates by kind ("W", "b", "gamma", "z", ...);
the network places it at a layer path (l,) and every tensor gets a Key, "W3", "z3", "a3"
(refbp.nn.keys). a(l), a layer's output, is always there; ``intermediates`` lists the others.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from .keys import Key
from .pieces import Pieces

__all__ = [
    "NO_TAP",
    "BackwardContext",
    "ForwardContext",
    "Layer",
    "LayerGradients",
    "LayerTangent",
    "Params",
    "SecondContext",
    "Tap",
]


class Tap:
    """Where a torch oracle reports what it computes; this base class listens to nothing.

    refbp.verify subclasses it: to keep intermediates for autograd (``retain_grad``), to add a
    finite-difference perturbation to one of them, and to notice when a perturbation moves an
    input of a piecewise function into another piece."""

    def intermediate(self, key: Key, t: Tensor) -> Tensor:
        """``t``, the intermediate called ``key``; return it, or a perturbed copy."""
        return t

    def centred(self, key: Key, t: Tensor, size: Callable[[], Tensor]) -> Tensor:
        """``t``, the intermediate called ``key``, is a difference of operands whose size, entry by
        entry, ``size()`` gives (x_hat = (x - mean) / sigma: refbp.nn.cancellation). Rounding those
        operands moves ``t`` by up to eps size(), however near 0 the difference itself is (a
        cancellation); a tap that imitates rounding needs that, the others treat ``t`` as any
        intermediate."""
        return self.intermediate(key, t)

    def piecewise(self, t: Tensor, pieces: Pieces) -> None:
        """``t`` is about to go through a function defined piecewise as ``pieces`` says."""

    def within(self, t: Tensor, domain: tuple[float, float]) -> Tensor:
        """``t`` must lie in ``domain`` (bce needs probabilities); return it, or a copy moved inside."""
        return t


NO_TAP = Tap()
"""A tap that listens to nothing: the oracle run plainly."""


class Params:
    """The parameters as an oracle sees them, by key: leaves for autograd, perturbed copies for
    finite differences. ``ties`` maps a tied parameter's key to the key it shares storage with."""

    def __init__(self, values: Mapping[Key, Tensor], ties: Mapping[Key, Key] | None = None) -> None:
        self.values = values
        self.ties = ties or {}

    def __call__(self, path: tuple[int, ...], kind: str) -> Tensor:
        key = Key.at(kind, path)  # cached: an oracle run asks for every parameter
        return self.values[self.ties.get(key, key)]


@dataclass(frozen=True)
class ForwardContext:
    """How a forward pass runs.

    Attributes:
        keep_intermediates: keep every intermediate the teaching view shows (z(i), ...); with
            False a layer keeps only what its backward needs.
        update_stats: let BatchNorm update its running statistics in training mode, as torch
            does; the harness runs with False, so checking a network does not change it.
        noise: given random draws (dropout keep-masks) by layer path, or None to draw new ones.
    """

    keep_intermediates: bool = True
    update_stats: bool = True
    noise: Mapping[tuple[int, ...], Tensor] | None = None


@dataclass(frozen=True)
class BackwardContext:
    """How a backward pass runs at one layer.

    Attributes:
        path: where the layer is: (l,) or (l, j) inside a composite layer.
        keep_intermediates: return dJ/d(every intermediate) of the layer (dJ/dz(l), ...).
        overwrite: the layer may reuse dJ/dout's storage (the caller keeps no reference to it).
        need_dx: compute dJ/dx (False for the first layer when the input holds integers).
        weight_decay: lambda; a layer adds lambda W to the gradient of each ``decayed`` parameter.
        ties: a tied parameter's key -> the key it shares storage with (the network's ties).
        release: the caller drops this layer's cache after this call (``release_cache=True``):
            a composite layer may drop its sub-layers' caches as it goes, as the network loop does.
    """

    path: tuple[int, ...]
    keep_intermediates: bool = True
    overwrite: bool = False
    need_dx: bool = True
    weight_decay: float = 0.0
    ties: Mapping[Key, Key] = field(default_factory=dict)
    release: bool = False

    def key(self, kind: str) -> Key:
        """The key of this layer's tensor of the given kind."""
        return Key.at(kind, self.path)


@dataclass
class LayerGradients:
    """What a layer's backward returns.

    Attributes:
        dJ_dx: dJ/d(its input), the input's shape; None when not asked for (need_dx=False).
        params: kind -> dJ/d(that parameter of this layer), the parameter's shape.
        intermediates: key -> dJ/d(that intermediate), when keep_intermediates (sub-layers'
            ones included, for composite layers).
        sub_params: key -> dJ/d(a parameter of a sub-layer), for composite layers.
    """

    dJ_dx: Tensor | None
    params: dict[str, Tensor] = field(default_factory=dict)
    intermediates: dict[Key, Tensor] = field(default_factory=dict)
    sub_params: dict[Key, Tensor] = field(default_factory=dict)


@dataclass
class LayerTangent:
    """What a layer's ``tangent`` returns: R{out} = d/dr out(x + r R{x}, w + r V) at r = 0.

    Attributes:
        out: R{out}, the output's shape.
        cache: whatever ``r_backward`` reads again (R{z}, f'(z), a sub-stack's tangents, ...).
        intermediates: key -> R{that intermediate} (R{z(l)}, sub-layers' R{a}): the teaching view.
    """

    out: Tensor
    cache: Any = None
    intermediates: dict[Key, Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class SecondContext:
    """How an R-backward runs at one layer.

    Attributes:
        path: where the layer is.
        gauss_newton: drop every term that carries a first derivative dJ/d(.) into the
            R-backward (dJ/da o f''(z) o R{z}, dJ/dz V_W, dJ/dz^T R{a_prev}, ...): what is left
            backpropagates H_loss J_f v through the network's linearisation, G v instead of H v.
        need_dx: compute dJ/dx and R{dJ/dx} (False for a first layer that takes indices).
        keep_intermediates: return R{dJ/d(every intermediate)} of the layer.
        ties: a tied parameter's key -> the key it shares storage with.
    """

    path: tuple[int, ...]
    gauss_newton: bool = False
    need_dx: bool = True
    keep_intermediates: bool = True
    ties: Mapping[Key, Key] = field(default_factory=dict)

    @property
    def first(self) -> float:
        """1.0 for H v, 0.0 for G v: the factor of the terms that carry a first derivative."""
        return 0.0 if self.gauss_newton else 1.0

    def key(self, kind: str) -> Key:
        """The key of this layer's tensor of the given kind."""
        return Key.at(kind, self.path)

    def backward_context(self) -> BackwardContext:
        """The first-order pass at this layer, as an R-backward runs it beside its own terms."""
        return BackwardContext(path=self.path, keep_intermediates=False, need_dx=self.need_dx, ties=self.ties)

    def inner(self, path: tuple[int, ...], need_dx: bool = True) -> SecondContext:
        """The context of a sub-layer at ``path``."""
        return SecondContext(path, self.gauss_newton, need_dx, self.keep_intermediates, self.ties)


class Layer(ABC):
    """One layer of a network: parameters, manual forward and backward, and a torch oracle.

    Subclasses set ``params`` (kind -> tensor) and implement the abstract methods; see the
    module docstring for the contract.

    Attributes:
        params: kind -> parameter tensor, e.g. {"W": (d_out, d_in), "b": (d_out,)}.
        training: training mode (BatchNorm's batch statistics, Dropout's masks) or eval mode.
        title: the layer's name in messages and the walk-through, e.g. "LayerNorm".
        decayed: the parameter kinds weight decay applies to (the weights of linear maps).
        torch_names: parameter kind -> its name among ``torch_modules()``: "0.weight" is the
            parameter "weight" of the first module the layer becomes.
    """

    title: ClassVar[str] = "Layer"
    decayed: ClassVar[tuple[str, ...]] = ()
    torch_names: ClassVar[dict[str, str]] = {}

    params: dict[str, Tensor]
    training: bool = True

    # ---- description -----------------------------------------------------------------------
    @property
    def intermediates(self) -> tuple[str, ...]:
        """Kinds of the intermediates a backward pass reports besides the output a (Dense: z)."""
        return ()

    @property
    def pieces(self) -> Pieces | None:
        """Where this layer's map changes formula, if anywhere (relu: at z = 0)."""
        return None

    def keys(self, path: tuple[int, ...]) -> list[Key]:
        """Every key of this layer at ``path``: parameters, intermediates, output (in that order)."""
        kinds = [*self.params, *self.intermediates, "a"]
        return [Key(kind, path) for kind in kinds]

    def sublayers(self) -> list[Layer]:
        """The layers inside a composite layer, in order (none for a plain layer)."""
        return []

    def describe(self) -> str:
        """One line: the layer and its sizes, e.g. "Linear(4 -> 8)"."""
        return self.title

    def equations(self) -> tuple[str, str]:
        """(forward equation, backward equations) in plain text, for ``refbp explain``."""
        return (self.title, "")

    @property
    def stochastic(self) -> bool:
        """True when the forward pass draws random numbers in training mode (Dropout)."""
        return any(layer.stochastic for layer in self.sublayers())

    def set_training(self, mode: bool) -> None:
        """Switch this layer (and every sub-layer) to training or eval mode."""
        self.training = mode
        for layer in self.sublayers():
            layer.set_training(mode)

    def check_input(self, x: Tensor, path: tuple[int, ...]) -> None:  # noqa: B027 (accepting any input is a fine default)
        """Raise a ValueError naming the layer when ``x`` cannot be its input (wrong width)."""

    def forward_size(self, shape: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
        """(the output's shape, the entries the forward pass allocates: output and cache) for an
        input of ``shape``, found without running anything: what ``Network.forward`` checks
        against the free memory before it allocates. The default is an elementwise map (the
        output and one saved tensor of the input's shape); a composite layer's sub-layers in
        turn, plus its output. Layers that change the shape or keep more say so."""
        entries, out = 0, shape
        for layer in self.sublayers():
            out, kept = layer.forward_size(out)
            entries += kept
        if self.sublayers():  # a Residual's output has its input's shape; a Sequential's, its last layer's
            return out, entries + math.prod(out)
        return shape, 2 * math.prod(shape)

    # ---- optional parts: what only some layers know, asked by the loops, never by type ------
    takes_indices: ClassVar[bool] = False
    """True when the layer's input holds int64 indices (Embedding): dJ/dx does not exist."""

    reads_several: ClassVar[bool] = False
    """True for a join (refbp.nn.joins: Add, Cat), a layer that may read several tensors: the loops
    (refbp.nn.stack, refbp.nn.r_stack) call its forms over every input (``forward_all``,
    ``backward_all``, ...) and sum each input's gradient into the gradient of the tensor it read."""

    @property
    def backward_reads_input(self) -> bool:
        """Whether ``backward`` reads x (its values or its shape) after a lean forward pass
        (``keep_intermediates=False``). The default, True, is always safe. A layer that answers
        False lets the forward loop drop a(l-1) as soon as no other backward reads it (Linear
        before an activation of its output: torch keeps that z no more than refbp then does)."""
        return True

    @property
    def backward_reads_output(self) -> bool:
        """Whether ``backward`` reads its output ``out`` (values or shape) after a lean forward
        pass; True (the default) is always safe. False lets the forward loop drop the output once
        its readers have run, unless their backward reads it (``backward_reads_input``)."""
        return True

    def buffers(self) -> dict[str, Tensor]:
        """State that is not a parameter but that the forward pass reads, by attribute name
        (BatchNorm's running statistics): converted with the parameters by ``Network.to``."""
        return {}

    @property
    def uses_batch_statistics(self) -> bool:
        """True when one row's output depends on the other rows of the batch (BatchNorm in
        training mode): the rows of a batch are then not independent observations."""
        return any(layer.uses_batch_statistics for layer in self.sublayers())

    def reseed(self, seed: int) -> None:
        """Draw random numbers from ``seed`` from now on (a stochastic layer and its sub-layers)."""
        for layer in self.sublayers():
            layer.reseed(seed)

    def kinks(self, cache: Any, path: tuple[int, ...]) -> dict[Key, Tensor]:
        """Intermediate key -> boolean mask of its entries that sit exactly on a kink of this
        layer's map (Dense with relu: z(l) == 0), where subgradient conventions differ."""
        return {}

    def fixed_gradients(self, path: tuple[int, ...]) -> dict[Key, Tensor]:
        """Parameter key -> boolean mask of the entries whose gradient is zero by this layer's
        definition (Embedding's padding row, as torch's ``padding_idx``): every reference
        follows the convention, so finite differences do not perturb those entries."""
        return {}

    @property
    def output_range(self) -> tuple[float, float] | None:
        """[low, high] that holds every output entry whatever the input (a sigmoid's [0, 1]), or
        None when not bounded or not known: a loss defined only on a range (bce) asks the last layer."""
        return None

    def row_map(self) -> tuple[Tensor, Tensor, Callable[[Tensor], Tensor], Pieces | None] | None:
        """(W, b, f, f's pieces) when this layer is a = f(x W^T + b) with f elementwise and
        torch's own (Dense), each row of the batch on its own; None otherwise. A network of
        such layers only gets the structured finite-difference path (refbp.verify.fd_mlp)."""
        return None

    # ---- the manual path ---------------------------------------------------------------------
    @abstractmethod
    def forward(self, x: Tensor, ctx: ForwardContext, path: tuple[int, ...]) -> tuple[Tensor, Any]:
        """The manual forward pass: (output, cache for backward). No autograd."""

    @abstractmethod
    def backward(self, dJ_dout: Tensor, x: Tensor, out: Tensor, cache: Any, ctx: BackwardContext) -> LayerGradients:
        """The manual backward pass from dJ/d(output), the input x, the output and the cache."""

    def noise_of(self, cache: Any, path: tuple[int, ...]) -> dict[tuple[int, ...], Tensor]:
        """The random draws this layer (and its sub-layers) made in the forward pass that filled
        ``cache``, by layer path: what the oracle needs to run the same function."""
        return {}

    def cached_values(self, cache: Any, path: tuple[int, ...]) -> dict[Key, Tensor]:
        """The intermediates this layer's forward pass computed, by key (its ``intermediates``
        and, for a composite layer, its sub-layers' outputs): what the walk-through shows."""
        return {}

    def release(self, cache: Any) -> None:  # noqa: B027 (most caches hold nothing to release)
        """Drop what ``cache`` holds, after its last use (``backward(..., release_cache=True)``)."""

    # ---- second order (optional): refbp.nn.second_order ---------------------------------------
    @property
    def has_second_order(self) -> bool:
        """True when ``tangent`` and ``r_backward`` are written for this layer: both overridden,
        here or in a parent class. A composite layer overrides this to ask its sub-layers too."""
        cls = type(self)
        return cls.tangent is not Layer.tangent and cls.r_backward is not Layer.r_backward

    def tangent(
        self, x: Tensor, Rx: Tensor | None, out: Tensor, cache: Any, V: Params, path: tuple[int, ...]
    ) -> LayerTangent:
        """Forward mode: R{out} along R{x} (None when x holds indices) and the parameters'
        direction V (``V(path, kind)``), from the forward pass's x, out and cache. No autograd."""
        raise NotImplementedError(f"{self.describe()} has no second-order rule (tangent) in refbp yet")

    def r_backward(
        self, g: Tensor, Rg: Tensor, x: Tensor, Rx: Tensor | None, out: Tensor, t: LayerTangent, cache: Any,
        V: Params, ctx: SecondContext,
    ) -> tuple[Tensor | None, LayerGradients]:  # fmt: skip
        """The R-operator of ``backward``: from g = dJ/dout and R{g}, (dJ/dx, R-gradients) where the
        R-gradients hold R{dJ/dx} (``dJ_dx``), this layer's share of H v by parameter kind
        (``params``; sub-layers' by key in ``sub_params``) and R{dJ/d(intermediate)} by key."""
        raise NotImplementedError(f"{self.describe()} has no second-order rule (r_backward) in refbp yet")

    def fixed_map_r_backward(
        self, g: Tensor, Rg: Tensor, x: Tensor, out: Tensor, cache: Any, ctx: SecondContext
    ) -> tuple[Tensor | None, LayerGradients]:
        """``r_backward`` of a layer without parameters whose backward is a linear map of dJ/dy that
        the forward pass fixes (a reshape, an average, a max-pool's routing): R{dJ/dx} is the same
        map applied to R{dJ/dy}, and R{x} adds no term."""
        if not ctx.need_dx:
            return None, LayerGradients(None)
        back = ctx.backward_context()
        R_dx = self.backward(Rg, x, out, cache, back).dJ_dx  # R{dJ/dx} = backward(R{dJ/dy})
        return self.backward(g, x, out, cache, back).dJ_dx, LayerGradients(R_dx)

    # ---- the oracle ---------------------------------------------------------------------------
    @abstractmethod
    def torch_forward(
        self, x: Tensor, p: Params, noise: Mapping[tuple[int, ...], Tensor], tap: Tap, path: tuple[int, ...]
    ) -> Tensor:
        """The same map, from torch.nn.functional and plain tensor ops; p(path, kind) gives the
        parameters, ``tap`` is told about intermediates and piecewise inputs."""

    @abstractmethod
    def to_torch(self) -> torch.nn.Module:
        """The equivalent torch.nn module, with a copy of the parameters and the same mode."""

    def torch_modules(self) -> list[torch.nn.Module]:
        """The modules this layer becomes in a torch.nn.Sequential (Dense: Linear, activation)."""
        return [self.to_torch()]

    def torch_param_names(self, path: tuple[int, ...]) -> dict[Key, str]:
        """Each parameter's key -> its name among ``torch_modules()`` ("0.weight", ...)."""
        return {Key(kind, path): self.torch_names[kind] for kind in self.params}
