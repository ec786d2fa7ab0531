"""Shape and reduction ops of a traced forward as layers: reshape, permute, transpose, scale, mean, sum.

None of them has parameters; each moves or combines entries without any nonlinearity, so each
backward is the same move run the other way (g = dJ/dy, "o" the elementwise product):

    Reshape    y = x viewed as (s_1, .., s_k)      dJ/dx = g reshaped to x's shape
    Permute    y = x with dims reordered by p      dJ/dx = g with dims reordered by p^-1
    Transpose  y = x with dims d0 and d1 swapped   dJ/dx = g with d0 and d1 swapped back
    Scale      y = c x   (or x / c)                dJ/dx = c g   (or g / c)
    Mean       y = sum over dims D of x / n_D      dJ/dx = g broadcast back over D, / n_D
    Sum        y = sum over dims D of x            dJ/dx = g broadcast back over D

Second order (refbp.nn.second_order): each is linear in x and has no parameters, so
R{.} = d/dr (.)(x + r R{x}) is the same op on the direction and the R-backward is the same
backward on R{dJ/dy} (no term carries dJ/dy; H v and G v share the rules):

    R{y} = op(R{x})                             R{dJ/dx} = backward(R{dJ/dy})

They exist so that a model whose forward calls ``x.view(x.size(0), -1)``, ``x.permute(0, 2, 1)``,
``0.5 * x`` or ``x.mean(dim=(2, 3))`` (global pooling) converts (refbp.nn.fx_convert); each
has a torch module (``to_torch()``) that computes the same call. A backward hands back a
gradient that shares no storage with dJ/dy unless the loop gave dJ/dy up (``ctx.overwrite``),
as refbp.nn.flatten does.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from .joins import Join
from .layer import (
    NO_TAP,
    BackwardContext,
    ForwardContext,
    Layer,
    LayerGradients,
    LayerTangent,
    Params,
    SecondContext,
    Tap,
)
from .registry import SizeOf, TensorArg, bind_arguments, register, register_function
from .validation import describe

__all__ = ["Mean", "Permute", "Reshape", "Scale", "Sum", "TorchShapeOp", "Transpose"]

Entry = int | SizeOf
"""One entry of a target shape: a number, or the size of one of the input's dimensions."""


def _own(g: Tensor, ctx: BackwardContext) -> Tensor:
    """dJ/dy itself where the loop gave it up, else a copy: what a backward may hand down."""
    return g if ctx.overwrite and not ctx.keep_intermediates else g.clone()


def _check_dim(dim: object, what: str) -> int:
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"{what}: dimension {dim!r} must be an int")
    return dim


class _ShapeLayer(Layer):
    """A layer without parameters, the same in training and eval mode, linear in its input."""

    def __init__(self) -> None:
        self.params = {}
        self.training = True

    def to_torch(self) -> torch.nn.Module:
        return TorchShapeOp(self)

    # ---- second order: a linear map of x, so its R is itself ---------------------------------------
    def tangent(
        self, x: Tensor, Rx: Tensor | None, out: Tensor, cache: Any, V: Params, path: tuple[int, ...]
    ) -> LayerTangent:
        assert Rx is not None
        return LayerTangent(self.forward(Rx, _TANGENT_PASS, path)[0])  # R{y} = op(R{x})

    def r_backward(
        self, g: Tensor, Rg: Tensor, x: Tensor, Rx: Tensor | None, out: Tensor, t: LayerTangent, cache: Any,
        V: Params, ctx: SecondContext,
    ) -> tuple[Tensor | None, LayerGradients]:  # fmt: skip
        return self.fixed_map_r_backward(g, Rg, x, out, cache, ctx)  # R{dJ/dx} = backward(R{dJ/dy})


_TANGENT_PASS = ForwardContext(keep_intermediates=False, update_stats=False)
"""How a shape layer's forward pass runs on a tangent: nothing kept."""


class Reshape(Join):
    """``x.reshape(shape)`` (also ``view``); an entry of ``shape`` may be -1 (inferred, once) or
    ``SizeOf(i, d)``, the size along d of input i: ``x.view(x.size(0), -1)`` keeps the batch
    size (input 0, x itself), ``h.view(x.size(0), -1)`` reads it from x (a second input, whose
    values do not matter: its gradient is none)."""

    title = "Reshape"
    linear = True

    def __init__(self, shape: Sequence[Entry]) -> None:
        super().__init__()
        entries = tuple(shape)
        for e in entries:
            if not isinstance(e, SizeOf) and (isinstance(e, bool) or not isinstance(e, int) or e < -1):
                raise ValueError(f"Reshape: shape entry {e!r} must be an int >= -1 or an input's size")
        if sum(e == -1 for e in entries if isinstance(e, int)) > 1:
            raise ValueError(f"Reshape: shape {entries} has more than one -1")
        self.shape: tuple[Entry, ...] = entries
        self.inputs = 1 + max((e.index for e in entries if isinstance(e, SizeOf)), default=0)

    def target(self, shapes: Sequence[Sequence[int]]) -> tuple[int, ...]:
        """The output's shape for inputs of ``shapes`` (the first is reshaped), -1 resolved; a
        ValueError when the entries do not fit, as torch's reshape refuses them."""
        if len(shapes) != self.inputs:
            raise ValueError(f"{self.describe()} reads {self.inputs} inputs, got {len(shapes)}")
        shape = shapes[0]
        out = [shapes[e.index][e.dim] if isinstance(e, SizeOf) else e for e in self.shape]
        known = math.prod(s for s in out if s != -1)
        total = math.prod(shape)
        if -1 in out:
            if known == 0 or total % known:
                raise ValueError(f"{self.describe()} cannot reshape an input of shape {tuple(shape)}")
            out[out.index(-1)] = total // known
        if math.prod(out) != total:
            raise ValueError(f"{self.describe()} cannot reshape an input of shape {tuple(shape)}")
        return tuple(out)

    def describe(self) -> str:
        parts = [f"x{e.index + 1}.size({e.dim})" if isinstance(e, SizeOf) else str(e) for e in self.shape]
        return f"Reshape({', '.join(parts)})"

    def equations(self) -> tuple[str, str]:
        return (f"y = x viewed as {self.describe()[7:]}", "dJ/dx = dJ/dy reshaped to x's shape")

    def check_input(self, x: Tensor, path: tuple[int, ...]) -> None:
        if self.inputs == 1:
            try:
                self.target([x.shape])
            except (ValueError, IndexError) as err:
                raise ValueError(f"layer {'.'.join(map(str, path))}: {err} ({describe(x)})") from None

    def size_all(self, shapes: Sequence[tuple[int, ...]]) -> tuple[int, ...]:
        return self.target(shapes)

    def forward_size(self, shape: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
        return self.target([shape]), 0  # a view of x where torch can (a copy at most: counted by the next layer)

    def forward_all(self, xs: Sequence[Tensor], ctx: ForwardContext, path: tuple[int, ...]) -> tuple[Tensor, None]:
        return xs[0].reshape(self.target([x.shape for x in xs])), None  # y = x viewed as shape

    def backward_all(
        self, dJ_dy: Tensor, xs: Sequence[Tensor], out: Tensor, cache: None, ctx: BackwardContext
    ) -> list[Tensor | None]:
        dJ_dx = _own(dJ_dy, ctx).reshape(xs[0].shape)  # dJ/dx = dJ/dy reshaped to x's shape
        return [dJ_dx, *(None for _ in xs[1:])]  # the other inputs lend sizes only

    def tangent_all(
        self, xs: Sequence[Tensor], Rxs: Sequence[Tensor | None], out: Tensor, cache: Any, V: Params,
        path: tuple[int, ...],
    ) -> LayerTangent:  # fmt: skip
        Rx = Rxs[0]  # the other inputs lend sizes only (their tangents, None for indices, do not matter)
        assert Rx is not None
        return LayerTangent(Rx.reshape(self.target([x.shape for x in xs])))  # R{y} = R{x} viewed as shape

    def torch_forward_all(self, xs: Sequence[Tensor]) -> Tensor:
        return xs[0].reshape([xs[e.index].shape[e.dim] if isinstance(e, SizeOf) else e for e in self.shape])


class Permute(_ShapeLayer):
    """``x.permute(dims)``: output dimension i is input dimension dims[i]."""

    title = "Permute"

    def __init__(self, dims: Sequence[int]) -> None:
        super().__init__()
        self.dims = tuple(_check_dim(d, "Permute") for d in dims)
        n = len(self.dims)
        if sorted(d % n for d in self.dims) != list(range(n)):
            raise ValueError(f"Permute: dims {self.dims} is not a permutation of {n} dimensions")
        self.dims = tuple(d % n for d in self.dims)
        self.inverse = tuple(self.dims.index(i) for i in range(n))  # p^-1: input dim i is output dim p^-1[i]

    def describe(self) -> str:
        return f"Permute{self.dims}"

    def equations(self) -> tuple[str, str]:
        return (f"y = x with dimensions reordered as {self.dims}", f"dJ/dx = dJ/dy reordered as {self.inverse}")

    def check_input(self, x: Tensor, path: tuple[int, ...]) -> None:
        if x.dim() != len(self.dims):
            where = ".".join(map(str, path))
            raise ValueError(f"layer {where} ({self.describe()}) needs {len(self.dims)} dimensions, got {describe(x)}")

    def forward_size(self, shape: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
        return tuple(shape[d] for d in self.dims), 0  # a view of x

    def forward(self, x: Tensor, ctx: ForwardContext, path: tuple[int, ...]) -> tuple[Tensor, None]:
        self.check_input(x, path)
        return x.permute(self.dims), None  # y = x with dims reordered

    def backward(self, dJ_dy: Tensor, x: Tensor, out: Tensor, cache: None, ctx: BackwardContext) -> LayerGradients:
        if not ctx.need_dx:
            return LayerGradients(None)
        return LayerGradients(_own(dJ_dy, ctx).permute(self.inverse))  # dJ/dx = dJ/dy reordered by p^-1

    def torch_forward(
        self, x: Tensor, p: Params, noise: Mapping[tuple[int, ...], Tensor], tap: Tap, path: tuple[int, ...]
    ) -> Tensor:
        return x.permute(self.dims)


class Transpose(_ShapeLayer):
    """``x.transpose(d0, d1)``: two dimensions swapped (its own inverse)."""

    title = "Transpose"

    def __init__(self, d0: int, d1: int) -> None:
        super().__init__()
        self.d0, self.d1 = _check_dim(d0, "Transpose"), _check_dim(d1, "Transpose")

    def describe(self) -> str:
        return f"Transpose({self.d0}, {self.d1})"

    def equations(self) -> tuple[str, str]:
        return (f"y = x with dimensions {self.d0} and {self.d1} swapped", "dJ/dx = dJ/dy with them swapped back")

    def forward_size(self, shape: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
        out = list(shape)
        out[self.d0], out[self.d1] = shape[self.d1], shape[self.d0]
        return tuple(out), 0  # a view of x

    def forward(self, x: Tensor, ctx: ForwardContext, path: tuple[int, ...]) -> tuple[Tensor, None]:
        return x.transpose(self.d0, self.d1), None  # y = x, d0 and d1 swapped

    def backward(self, dJ_dy: Tensor, x: Tensor, out: Tensor, cache: None, ctx: BackwardContext) -> LayerGradients:
        if not ctx.need_dx:
            return LayerGradients(None)
        return LayerGradients(_own(dJ_dy, ctx).transpose(self.d0, self.d1))  # dJ/dx = dJ/dy swapped back

    def torch_forward(
        self, x: Tensor, p: Params, noise: Mapping[tuple[int, ...], Tensor], tap: Tap, path: tuple[int, ...]
    ) -> Tensor:
        return x.transpose(self.d0, self.d1)


class Scale(_ShapeLayer):
    """y = c x for a constant c (``0.5 * x``), or y = x / c (``x / 2``, ``divide=True``)."""

    title = "Scale"

    def __init__(self, c: float, *, divide: bool = False) -> None:
        super().__init__()
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) or (divide and c == 0):
            raise ValueError(f"Scale: the constant {c!r} must be a finite number{' other than 0' if divide else ''}")
        self.c, self.divide = float(c), bool(divide)

    def describe(self) -> str:
        return f"Scale(x / {self.c:g})" if self.divide else f"Scale({self.c:g} x)"

    def equations(self) -> tuple[str, str]:
        if self.divide:
            return (f"y = x / c,  c = {self.c:g}", "dJ/dx = dJ/dy / c")
        return (f"y = c x,  c = {self.c:g}", "dJ/dx = c dJ/dy")

    def forward(self, x: Tensor, ctx: ForwardContext, path: tuple[int, ...]) -> tuple[Tensor, None]:
        return (x / self.c if self.divide else x * self.c), None  # y = c x  (or x / c)

    def backward(self, dJ_dy: Tensor, x: Tensor, out: Tensor, cache: None, ctx: BackwardContext) -> LayerGradients:
        if not ctx.need_dx:
            return LayerGradients(None)
        return LayerGradients(dJ_dy / self.c if self.divide else dJ_dy * self.c)  # dJ/dx = c dJ/dy  (or dJ/dy / c)

    def torch_forward(
        self, x: Tensor, p: Params, noise: Mapping[tuple[int, ...], Tensor], tap: Tap, path: tuple[int, ...]
    ) -> Tensor:
        return x / self.c if self.divide else x * self.c


class Sum(_ShapeLayer):
    """``x.sum(dim, keepdim)``: the sum over the dimensions ``dim`` (None: every dimension)."""

    title = "Sum"
    average = False

    def __init__(self, dim: int | Sequence[int] | None = None, keepdim: bool = False) -> None:
        super().__init__()
        dims = None if dim is None else (dim,) if isinstance(dim, int) else tuple(dim)
        self.dim = None if dims is None else tuple(_check_dim(d, self.title) for d in dims)
        self.keepdim = bool(keepdim)

    def describe(self) -> str:
        return f"{self.title}(dim={'all' if self.dim is None else list(self.dim)}{', keepdim' if self.keepdim else ''})"

    def equations(self) -> tuple[str, str]:
        if self.average:
            return ("y = sum over D of x / n_D", "dJ/dx = dJ/dy broadcast back over D / n_D")
        return ("y = sum over D of x", "dJ/dx = dJ/dy broadcast back over D")

    def _dims(self, n: int) -> tuple[int, ...]:
        return tuple(range(n)) if self.dim is None else tuple(sorted(d % n for d in self.dim))

    def forward_size(self, shape: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
        dims = self._dims(len(shape))
        out = tuple(1 if i in dims else s for i, s in enumerate(shape) if self.keepdim or i not in dims)
        return out, math.prod(out)

    def _reduce(self, x: Tensor) -> Tensor:
        dims = self._dims(x.dim())
        return x.mean(dim=dims, keepdim=self.keepdim) if self.average else x.sum(dim=dims, keepdim=self.keepdim)

    def forward(self, x: Tensor, ctx: ForwardContext, path: tuple[int, ...]) -> tuple[Tensor, None]:
        return self._reduce(x), None  # y = sum over D of x  (/ n_D for the mean)

    def backward(self, dJ_dy: Tensor, x: Tensor, out: Tensor, cache: None, ctx: BackwardContext) -> LayerGradients:
        if not ctx.need_dx:
            return LayerGradients(None)
        dims = self._dims(x.dim())
        g = dJ_dy
        if not self.keepdim:
            for d in dims:  # ascending: each unsqueeze puts dimension d back where it was
                g = g.unsqueeze(d)
        n_D = math.prod(x.shape[d] for d in dims)
        g = g / n_D if self.average else g  # (1, .., 1) where D was: dJ/dy / n_D
        return LayerGradients(g.expand(x.shape).clone(memory_format=torch.contiguous_format))  # dJ/dx = g over D

    def torch_forward(
        self, x: Tensor, p: Params, noise: Mapping[tuple[int, ...], Tensor], tap: Tap, path: tuple[int, ...]
    ) -> Tensor:
        return self._reduce(x)


class Mean(Sum):
    """``x.mean(dim, keepdim)``: the mean over the dimensions ``dim`` (global average pooling)."""

    title = "Mean"
    average = True


class TorchShapeOp(torch.nn.Module):
    """The torch module of a shape layer: its oracle (``torch_forward``) as ``forward``."""

    def __init__(self, layer: _ShapeLayer) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: Tensor) -> Tensor:
        return self.layer.torch_forward(x, _NO_PARAMS, {}, NO_TAP, ())

    def extra_repr(self) -> str:
        return self.layer.describe()


_NO_PARAMS = Params({})


@register(TorchShapeOp)
def _from_shape_op(module: torch.nn.Module) -> Layer:
    assert isinstance(module, TorchShapeOp)
    return module.layer


# ---- the calls of a traced forward ------------------------------------------------------------------
def _input(value: object, what: str) -> None:
    if value != TensorArg(0):
        raise TypeError(f"{what} applies to one tensor, its first argument; got {value!r}")


def _ints(values: tuple[Any, ...], what: str) -> tuple[Any, ...]:
    """(2, 3) or ((2, 3),): a shape or dims given as separate arguments or as one sequence."""
    if len(values) == 1 and isinstance(values[0], (tuple, list)):
        values = tuple(values[0])
    for v in values:
        if isinstance(v, TensorArg):
            raise TypeError(f"{what}: a tensor where a size was expected")
    return values


@register_function(torch.reshape, "reshape", "view")
def _reshape(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Layer:
    if "shape" in kwargs:
        args = (*args, kwargs.pop("shape"))
    if kwargs or not args:
        raise TypeError(f"reshape/view takes the tensor and a shape, got {args}, {kwargs}")
    _input(args[0], "reshape")
    return Reshape(_ints(args[1:], "reshape"))


@register_function(torch.permute, "permute")
def _permute(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Layer:
    if "dims" in kwargs:
        args = (*args, kwargs.pop("dims"))
    if kwargs or not args:
        raise TypeError(f"permute takes the tensor and dims, got {args}, {kwargs}")
    _input(args[0], "permute")
    return Permute(_ints(args[1:], "permute"))


@register_function(torch.transpose, "transpose")
def _transpose(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Layer:
    bound = bind_arguments(args, kwargs, ("input", "dim0", "dim1"), {})
    _input(bound["input"], "transpose")
    return Transpose(bound["dim0"], bound["dim1"])


def _constant_and_tensor(args: tuple[Any, ...], kwargs: dict[str, Any], what: str) -> tuple[float, bool]:
    """(c, whether the tensor is the first argument) of ``x * c`` or ``c * x``."""
    bound = bind_arguments(args, kwargs, ("input", "other"), {})
    first, second = bound["input"], bound["other"]
    if isinstance(first, TensorArg) and isinstance(second, TensorArg):
        raise ValueError(f"{what} of two tensors is not supported; {what} by a Python number is")
    if first == TensorArg(0) and isinstance(second, (int, float)):
        return second, True
    if second == TensorArg(0) and isinstance(first, (int, float)):
        return first, False
    raise TypeError(f"{what} needs a tensor and a Python number, got {first!r} and {second!r}")


@register_function(operator.mul, torch.mul, "mul")
def _mul(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Layer:
    c, _ = _constant_and_tensor(args, kwargs, "a product")
    return Scale(c)


@register_function(operator.truediv, torch.div, "div")
def _div(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Layer:
    if kwargs.get("rounding_mode") is not None:
        raise ValueError(f"rounding_mode={kwargs['rounding_mode']!r} is not differentiable; expected None")
    kwargs = {k: v for k, v in kwargs.items() if k != "rounding_mode"}
    c, tensor_first = _constant_and_tensor(args, kwargs, "a division")
    if not tensor_first:
        raise ValueError(f"{c!r} / x is not supported; x / c (a division by a number) is")
    return Scale(c, divide=True)


def _reduction(args: tuple[Any, ...], kwargs: dict[str, Any], layer: type[Sum]) -> Layer:
    if kwargs.get("dtype") is not None:
        raise ValueError(f"dtype={kwargs['dtype']} is not supported; the input's dtype is kept")
    kwargs = {k: v for k, v in kwargs.items() if k != "dtype"}
    bound = bind_arguments(args, kwargs, ("input", "dim", "keepdim"), {"dim": None, "keepdim": False})
    _input(bound["input"], layer.title.lower())
    return layer(bound["dim"], bound["keepdim"])


@register_function(torch.mean, "mean")
def _mean(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Layer:
    return _reduction(args, kwargs, Mean)


@register_function(torch.sum, "sum")
def _sum(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Layer:
    return _reduction(args, kwargs, Sum)
