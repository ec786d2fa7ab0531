"""Joins: layers of several inputs, the sum of tensors (skip connections) and their concatenation.

A join is a node of a graph network (refbp.nn.graph) that reads several earlier tensors:

    Add   y = x_1 + c_2 x_2 + ... + c_k x_k     (c_i = 1 for ``a + b``, -1 for ``a - b``,
                                                 alpha for ``torch.add(a, b, alpha=alpha)``;
                                                 broadcast to one shape as torch does)
          dJ/dx_i = c_i dJ/dy, summed over the dimensions x_i was broadcast along
    Cat   y = [x_1, .., x_k] along dim          dJ/dx_i = the slice of dJ/dy that x_i filled

Its backward hands back one gradient per input; the loop (refbp.nn.stack) adds up the gradients of a
tensor read by several nodes (a residual's x reaches y directly and through the branch).

Second order (refbp.nn.second_order): both joins are linear in their inputs and have no
parameters (``Join.linear``), so R{.} = d/dr (.)(x_i + r R{x_i}) is the join itself applied to
the directions, and the R-backward is the backward applied to R{dJ/dy}:

    Add   R{y} = R{x_1} + c_2 R{x_2} + ...       R{dJ/dx_i} = c_i R{dJ/dy}, summed where broadcast
    Cat   R{y} = [R{x_1}, .., R{x_k}] along dim   R{dJ/dx_i} = the slice of R{dJ/dy} that x_i filled

No term carries dJ/dy: H v and G v share the rules. ``tangent_all`` and ``r_backward_all`` are
the loops' (refbp.nn.r_stack) form of the protocol's ``tangent`` and ``r_backward``.
With one input a join is a plain layer (``x + 0``-free: Add(x) = x, Cat([x]) = x), so the
Layer protocol's forward/backward are the join's with one input.
"""

from __future__ import annotations

import math
import operator
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from .layer import BackwardContext, ForwardContext, Layer, LayerGradients, LayerTangent, Params, SecondContext, Tap
from .registry import TensorArg, bind_arguments, register, register_function

__all__ = ["Add", "Cat", "Join", "TorchJoin", "unbroadcast"]


def unbroadcast(g: Tensor, shape: torch.Size) -> Tensor:
    """dJ/dx for an x of ``shape`` broadcast to g's shape: g summed over the dimensions x was
    broadcast along (the leading ones it lacks, and those where it has size 1)."""
    lead = g.dim() - len(shape)
    if lead:
        g = g.sum(dim=tuple(range(lead)))
    ones = tuple(d for d, n in enumerate(shape) if n == 1 and g.shape[d] != 1)
    return g.sum(dim=ones, keepdim=True) if ones else g


class Join(Layer):
    """A layer of one or more inputs; the single-input Layer methods are the join's with one."""

    reads_several: ClassVar[bool] = True

    linear: ClassVar[bool] = False
    """True for a join linear in its inputs and without parameters (Add, Cat, Reshape): its
    second-order rules are then the join of the directions and the backward of R{dJ/dy}."""

    def __init__(self) -> None:
        self.params = {}
        self.training = True

    @abstractmethod
    def forward_all(self, xs: Sequence[Tensor], ctx: ForwardContext, path: tuple[int, ...]) -> tuple[Tensor, Any]:
        """The manual forward pass on every input: (output, cache)."""

    @abstractmethod
    def backward_all(
        self, dJ_dout: Tensor, xs: Sequence[Tensor], out: Tensor, cache: Any, ctx: BackwardContext
    ) -> list[Tensor | None]:
        """dJ/d(each input), each of its input's shape and none sharing dJ/dout's storage (None
        for an input J does not depend on through this node)."""

    @abstractmethod
    def torch_forward_all(self, xs: Sequence[Tensor]) -> Tensor:
        """The oracle on every input."""

    @abstractmethod
    def size_all(self, shapes: Sequence[tuple[int, ...]]) -> tuple[int, ...]:
        """The output's shape for inputs of ``shapes``, found without running anything."""

    def forward(self, x: Tensor, ctx: ForwardContext, path: tuple[int, ...]) -> tuple[Tensor, Any]:
        return self.forward_all([x], ctx, path)

    def backward(self, dJ_dout: Tensor, x: Tensor, out: Tensor, cache: Any, ctx: BackwardContext) -> LayerGradients:
        return LayerGradients(self.backward_all(dJ_dout, [x], out, cache, ctx)[0] if ctx.need_dx else None)

    def torch_forward(
        self, x: Tensor, p: Params, noise: Mapping[tuple[int, ...], Tensor], tap: Tap, path: tuple[int, ...]
    ) -> Tensor:
        return self.torch_forward_all([x])

    def forward_size(self, shape: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
        out = self.size_all([shape])
        return out, math.prod(out)

    def to_torch(self) -> torch.nn.Module:
        return TorchJoin(self)

    # ---- second order: the loops' form (every input), and the protocol's (one input) ------
    @property
    def has_second_order(self) -> bool:
        return self.linear

    def tangent_all(
        self, xs: Sequence[Tensor], Rxs: Sequence[Tensor | None], out: Tensor, cache: Any, V: Params,
        path: tuple[int, ...],
    ) -> LayerTangent:  # fmt: skip
        """R{y} along the inputs' tangents R{x_i} (None for an input of indices). A linear join:
        R{y} = the join of the R{x_i}, its own forward pass run on them."""
        if not self.linear:
            raise NotImplementedError(f"{self.describe()} has no second-order rule (tangent_all) in refbp yet")
        directions = [Rx for Rx in Rxs if Rx is not None]
        if len(directions) != len(Rxs):
            raise ValueError(f"{self.describe()}: an input holds indices, it has no tangent")
        return LayerTangent(self.forward_all(directions, _TANGENT_PASS, path)[0])  # R{y} = join(R{x_1}, .., R{x_k})

    def r_backward_all(
        self, g: Tensor, Rg: Tensor, xs: Sequence[Tensor], Rxs: Sequence[Tensor | None], out: Tensor,
        t: LayerTangent, cache: Any, V: Params, ctx: SecondContext,
    ) -> tuple[list[Tensor | None], list[Tensor | None]]:  # fmt: skip
        """(dJ/dx_i for each input, R{dJ/dx_i} for each input) from g = dJ/dy and R{g}. A linear
        join's backward is linear in g and reads no input's values: R{dJ/dx_i} = backward_all(R{g})_i."""
        if not self.linear:
            raise NotImplementedError(f"{self.describe()} has no second-order rule (r_backward_all) in refbp yet")
        if not ctx.need_dx:
            return [None] * len(xs), [None] * len(xs)
        back = ctx.backward_context()
        return self.backward_all(g, xs, out, cache, back), self.backward_all(Rg, xs, out, cache, back)

    def tangent(
        self, x: Tensor, Rx: Tensor | None, out: Tensor, cache: Any, V: Params, path: tuple[int, ...]
    ) -> LayerTangent:
        return self.tangent_all([x], [Rx], out, cache, V, path)

    def r_backward(
        self, g: Tensor, Rg: Tensor, x: Tensor, Rx: Tensor | None, out: Tensor, t: LayerTangent, cache: Any,
        V: Params, ctx: SecondContext,
    ) -> tuple[Tensor | None, LayerGradients]:  # fmt: skip
        dJ_dxs, R_dJ_dxs = self.r_backward_all(g, Rg, [x], [Rx], out, t, cache, V, ctx)
        return dJ_dxs[0], LayerGradients(R_dJ_dxs[0])


_TANGENT_PASS = ForwardContext(keep_intermediates=False, update_stats=False)
"""How a linear join's forward pass runs on the tangents: nothing kept, no statistics moved."""


class Add(Join):
    """y = x_1 + c_2 x_2 + ... (``a + b``, ``a - b``, ``torch.add(a, b, alpha=c)``), broadcast."""

    title = "Add"
    linear = True

    def __init__(self, coefficients: Sequence[float] = (1.0, 1.0)) -> None:
        super().__init__()
        c = tuple(coefficients)
        if not c or c[0] != 1 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in c):
            raise ValueError(f"Add: coefficients {c!r} must be finite numbers, the first 1 (y = x_1 + c_2 x_2 + ...)")
        self.coefficients = tuple(float(v) for v in c)

    def describe(self) -> str:
        terms = ["x1", *(f"{'-' if c == -1 else '+'} {'' if abs(c) == 1 else f'{abs(c):g} '}x{i}"
                         for i, c in enumerate(self.coefficients[1:], start=2))]  # fmt: skip
        return f"Add({' '.join(terms)})"

    def equations(self) -> tuple[str, str]:
        forward = f"y = x_1 + c_2 x_2 + ...  ({self.describe()[4:-1]})"
        return (forward, "dJ/dx_i = c_i dJ/dy, summed where broadcast")

    def check_arity(self, n: int) -> None:
        if n != len(self.coefficients):
            raise ValueError(f"{self.describe()} takes {len(self.coefficients)} inputs, got {n}")

    def size_all(self, shapes: Sequence[tuple[int, ...]]) -> tuple[int, ...]:
        return tuple(torch.broadcast_shapes(*shapes))

    def _sum(self, xs: Sequence[Tensor]) -> Tensor:
        self.check_arity(len(xs))
        y = xs[0]
        for c, x in zip(self.coefficients[1:], xs[1:], strict=True):
            y = y + x if c == 1 else y - x if c == -1 else y + c * x  # y = x_1 + c_2 x_2 + ...
        return y

    def forward_all(self, xs: Sequence[Tensor], ctx: ForwardContext, path: tuple[int, ...]) -> tuple[Tensor, None]:
        y = self._sum(xs)
        return (y.clone() if len(xs) == 1 else y), None  # one input: a copy, never x itself

    def backward_all(
        self, dJ_dy: Tensor, xs: Sequence[Tensor], out: Tensor, cache: None, ctx: BackwardContext
    ) -> list[Tensor | None]:
        out_grads: list[Tensor | None] = []
        for c, x in zip(self.coefficients, xs, strict=True):
            g = dJ_dy.clone() if c == 1 else -dJ_dy if c == -1 else c * dJ_dy  # c_i dJ/dy, a tensor of its own
            out_grads.append(unbroadcast(g, x.shape))  # dJ/dx_i, summed where x_i was broadcast
        return out_grads

    def torch_forward_all(self, xs: Sequence[Tensor]) -> Tensor:
        self.check_arity(len(xs))
        y = xs[0]
        for c, x in zip(self.coefficients[1:], xs[1:], strict=True):
            y = torch.add(y, x, alpha=c)
        return y


class Cat(Join):
    """``torch.cat(xs, dim)``: the inputs side by side along ``dim``."""

    title = "Cat"
    linear = True

    def __init__(self, dim: int = 0) -> None:
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise TypeError(f"Cat: dim={dim!r} must be an int")
        self.dim = dim

    def describe(self) -> str:
        return f"Cat(dim={self.dim})"

    def equations(self) -> tuple[str, str]:
        return (f"y = [x_1, .., x_k] along dim {self.dim}", "dJ/dx_i = the slice of dJ/dy that x_i filled")

    def size_all(self, shapes: Sequence[tuple[int, ...]]) -> tuple[int, ...]:
        out = list(shapes[0])
        out[self.dim] = sum(shape[self.dim] for shape in shapes)
        return tuple(out)

    def forward_all(self, xs: Sequence[Tensor], ctx: ForwardContext, path: tuple[int, ...]) -> tuple[Tensor, None]:
        return torch.cat(list(xs), dim=self.dim), None  # y = [x_1, .., x_k] along dim

    def backward_all(
        self, dJ_dy: Tensor, xs: Sequence[Tensor], out: Tensor, cache: None, ctx: BackwardContext
    ) -> list[Tensor | None]:
        sizes = [x.shape[self.dim] for x in xs]
        return [piece.clone() for piece in torch.split(dJ_dy, sizes, dim=self.dim)]  # dJ/dx_i: x_i's slice

    def torch_forward_all(self, xs: Sequence[Tensor]) -> Tensor:
        return torch.cat(list(xs), dim=self.dim)


class TorchJoin(torch.nn.Module):
    """The torch module of a join: ``forward(*xs)`` is its oracle."""

    def __init__(self, layer: Join) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, *xs: Tensor) -> Tensor:
        return self.layer.torch_forward_all(xs)

    def extra_repr(self) -> str:
        return self.layer.describe()


@register(TorchJoin)
def _from_join(module: torch.nn.Module) -> Layer:
    assert isinstance(module, TorchJoin)
    return module.layer


# ---- the calls of a traced forward ------------------------------------------------------------------
def _two_tensors(args: tuple[Any, ...], kwargs: dict[str, Any], what: str) -> dict[str, Any]:
    bound = bind_arguments(args, kwargs, ("input", "other", "alpha"), {"alpha": 1})
    if bound["input"] != TensorArg(0) or bound["other"] != TensorArg(1):
        raise ValueError(
            f"{what} of a tensor and a number (a shift) is not supported; {what} of two tensors (a skip "
            f"connection) is, got {bound['input']!r} and {bound['other']!r}"
        )
    return bound


@register_function(operator.add, torch.add, "add")
def _add(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Layer:
    return Add((1.0, _two_tensors(args, kwargs, "a sum")["alpha"]))


@register_function(operator.sub, torch.sub, "sub")
def _sub(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Layer:
    return Add((1.0, -_two_tensors(args, kwargs, "a difference")["alpha"]))


@register_function(torch.cat, torch.concat, torch.concatenate)
def _cat(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Layer:
    kwargs = dict(kwargs)
    if "axis" in kwargs:
        kwargs["dim"] = kwargs.pop("axis")
    bound = bind_arguments(args, kwargs, ("tensors", "dim"), {"dim": 0})
    tensors = bound["tensors"]
    if not isinstance(tensors, (tuple, list)) or list(tensors) != [TensorArg(i) for i in range(len(tensors))]:
        raise TypeError(f"torch.cat takes a list of tensors, got {tensors!r}")
    return Cat(bound["dim"])
