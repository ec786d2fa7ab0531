"""Dense: the multilayer perceptron's layer, a linear map and an activation, z and a.

For layer i, with a(i-1) its input (a(0) = X) and "o" the elementwise product:

    (1)  z(i)       = a(i-1) W(i)^T + b(i)                     (N, d_i)
    (2)  a(i)       = f_i(z(i))                                 (N, d_i)
    (5)  dJ/dz(i)   = dJ/da(i) o f_i'(z(i))                     (N, d_i)
    (6)  dJ/dW(i)   = dJ/dz(i)^T a(i-1)  + lambda W(i)          (d_i, d_{i-1})
    (7)  dJ/db(i)   = dJ/dz(i)^T 1       (sum over the batch)   (d_i,)
    (8)  dJ/da(i-1) = dJ/dz(i) W(i)                             (N, d_{i-1})

This is the seed's z/a view: z(i), the pre-activation, is the layer's one intermediate. The
Second order (refbp.nn.second_order): the tangent R{z(i)} = R{a(i-1)} W^T + a(i-1) V_W^T + V_b,
R{a(i)} = f'(z) o R{z}, and the R-operator of eq. (5), R{dJ/dz} = R{dJ/da} o f'(z) + dJ/da o
f''(z) o R{z}; the linear part's R-backward is Linear's.

The numbers (1)-(9) are those of the README, docs/equations.md and ``refbp explain``. Eqs. (1) and
(6)-(8) are Linear's map and gradients (refbp.nn.linear), called here, not written again.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from .activations import Activation, get_activation
from .curvature import first_derivative, second_derivative
from .elementwise import OUTPUT_RANGES
from .keys import Key
from .layer import BackwardContext, ForwardContext, Layer, LayerGradients, LayerTangent, Params, SecondContext, Tap
from .linear import bias_gradient, input_gradient, linear_map, linear_r_backward, linear_tangent, weight_gradient
from .pieces import Pieces
from .validation import describe

__all__ = ["Dense"]


class Dense(Layer):
    """z = a_prev W^T + b, a = f(z): torch.nn.Linear followed by an activation.

    Args:
        W: (d_out, d_in), torch.nn.Linear's layout.
        b: (d_out,).
        activation: an Activation record or its name.
    """

    title = "Dense"
    decayed = ("W",)
    torch_names: ClassVar[dict[str, str]] = {"W": "0.weight", "b": "0.bias"}

    def __init__(self, W: Tensor, b: Tensor, activation: Activation | str) -> None:
        self.params = {"W": W, "b": b}
        self.activation = get_activation(activation) if isinstance(activation, str) else activation
        self.training = True

    @property
    def W(self) -> Tensor:
        return self.params["W"]

    @property
    def b(self) -> Tensor:
        return self.params["b"]

    @property
    def intermediates(self) -> tuple[str, ...]:
        return ("z",)

    def kinks(self, cache: Any, path: tuple[int, ...]) -> dict[Key, Tensor]:
        """z(l) == 0 for relu and leaky_relu (their kink), when the forward pass kept z(l)."""
        if not self.activation.kinked or not isinstance(cache, Tensor) or self.activation.pieces is None:
            return {}
        return {Key("z", path): cache == self.activation.pieces.boundaries[0]}

    def row_map(self) -> tuple[Tensor, Tensor, Callable[[Tensor], Tensor], Pieces | None]:
        """(W, b, f, pieces): eqs. (1)-(2), row by row, with f by torch's own function."""
        return self.params["W"], self.params["b"], self.activation.torch_fn, self.activation.pieces

    @property
    def pieces(self) -> Pieces | None:
        return self.activation.pieces

    @property
    def output_range(self) -> tuple[float, float] | None:
        return OUTPUT_RANGES.get(self.activation.name)

    def describe(self) -> str:
        d_out, d_in = self.W.shape
        return f"Dense({d_in} -> {d_out}, {self.activation.name})"

    def equations(self) -> tuple[str, str]:
        return (
            "z = a_prev W^T + b ;  a = f(z), " + self.activation.equation.split(";")[0].strip(),
            "dJ/dz = dJ/da o f'(z) ;  dJ/dW = dJ/dz^T a_prev ;  dJ/db = sum_n dJ/dz ;  dJ/da_prev = dJ/dz W",
        )

    def check_input(self, x: Tensor, path: tuple[int, ...]) -> None:
        if x.dim() != 2 or x.shape[1] != self.W.shape[1]:
            raise ValueError(
                f"layer {path[0]} ({self.describe()}) needs input (N, {self.W.shape[1]}), got {describe(x)}"
            )

    def forward_size(self, shape: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
        out = (*shape[:-1], self.W.shape[0])
        return out, 2 * math.prod(out)  # z(i) and a(i)

    def cached_values(self, cache: Tensor | None, path: tuple[int, ...]) -> dict[Key, Tensor]:
        return {} if cache is None else {Key("z", path): cache}

    # ---- the manual path ---------------------------------------------------------------------
    def forward(self, x: Tensor, ctx: ForwardContext, path: tuple[int, ...]) -> tuple[Tensor, Tensor | None]:
        """Eqs. (1)-(2). The cache is z(i), or None when f'(z) reads a(i) and z is not asked for."""
        z = linear_map(x, self.W, self.b)  # (1) z(i) = a(i-1) W(i)^T + b(i)   (N, d_i)
        a = self.activation.f(z)  # (2) a(i) = f_i(z(i))                            (N, d_i)
        keep = ctx.keep_intermediates or self.activation.derivative_of == "z"
        return a, (z if keep else None)

    def backward(
        self, dJ_da: Tensor, x: Tensor, out: Tensor, cache: Tensor | None, ctx: BackwardContext
    ) -> LayerGradients:
        """Eqs. (5)-(8), from dJ/da(i) (N, d_i), a(i-1) = x, a(i) = out and z(i) = cache."""
        act = self.activation
        t = out if act.derivative_of == "a" else cache
        if t is None:
            raise ValueError(f"cache.z[{ctx.path[0]}] is None but {act.name}'s derivative needs z({ctx.path[0]})")
        W = self.W  # (d_i, d_{i-1})

        # (5) dJ/dz(i) = dJ/da(i) o f'(z(i))   (N, d_i), computed in place by act.chain: in dJ/da's
        # own storage when nobody keeps it, on a copy otherwise
        in_place = ctx.overwrite and not ctx.keep_intermediates
        dJ_dz = act.chain(t, dJ_da if in_place else dJ_da.clone())

        # (6) dJ/dW(i) = dJ/dz(i)^T a(i-1) + lambda W(i)   (d_i, N) @ (N, d_{i-1}) = (d_i, d_{i-1})
        dJ_dW = weight_gradient(dJ_dz, x, W, ctx.weight_decay)
        dJ_db = bias_gradient(dJ_dz)  # (7) dJ/db(i) = sum over the batch    (d_i,)
        # (8) dJ/da(i-1) = dJ/dz(i) W(i)   (N, d_i) @ (d_i, d_{i-1})
        dJ_dx = input_gradient(dJ_dz, W) if ctx.need_dx else None
        kept = {ctx.key("z"): dJ_dz} if ctx.keep_intermediates else {}
        return LayerGradients(dJ_dx, {"W": dJ_dW, "b": dJ_db}, kept)

    # ---- second order ---------------------------------------------------------------------------
    def tangent(
        self, x: Tensor, Rx: Tensor | None, out: Tensor, cache: Tensor | None, V: Params, path: tuple[int, ...]
    ) -> LayerTangent:
        if cache is None:
            raise ValueError(
                f"layer {path[0]}: the tangent needs z({path[0]}); run the forward pass with keep_intermediates=True"
            )
        Rz = linear_tangent(x, Rx, self.W, V(path, "W"), V(path, "b"))  # R{z} = R{a_prev} W^T + a_prev V_W^T + V_b
        slope = first_derivative(self.activation, cache, out)  # f'(z)
        return LayerTangent(slope * Rz, (Rz, slope), {Key("z", path): Rz})  # R{a} = f'(z) o R{z}

    def r_backward(
        self, g: Tensor, Rg: Tensor, x: Tensor, Rx: Tensor | None, out: Tensor, t: LayerTangent, cache: Tensor | None,
        V: Params, ctx: SecondContext,
    ) -> tuple[Tensor | None, LayerGradients]:  # fmt: skip
        assert cache is not None  # the tangent pass refused a forward pass without z
        Rz, slope = t.cache
        # R{dJ/dz} = R{dJ/da} o f'(z) + dJ/da o f''(z) o R{z};   dJ/dz = dJ/da o f'(z)
        R_dz = Rg * slope
        if ctx.first:
            R_dz += g * second_derivative(self.activation, cache, out) * Rz
        g_x, R = linear_r_backward(g * slope, R_dz, x, Rx, self.W, V(ctx.path, "W"), ctx, bias=True)
        if ctx.keep_intermediates:
            R.intermediates[ctx.key("z")] = R_dz
        return g_x, R

    # ---- the oracle ---------------------------------------------------------------------------
    def torch_forward(
        self, x: Tensor, p: Params, noise: Mapping[tuple[int, ...], Tensor], tap: Tap, path: tuple[int, ...]
    ) -> Tensor:
        z = tap.intermediate(Key("z", path), F.linear(x, p(path, "W"), p(path, "b")))  # torch.nn.Linear's op
        if self.activation.pieces is not None:
            tap.piecewise(z, self.activation.pieces)
        return self.activation.torch_fn(z)

    def to_torch(self) -> torch.nn.Module:
        d_out, d_in = self.W.shape
        linear = torch.nn.Linear(d_in, d_out, dtype=self.W.dtype, device=self.W.device)
        with torch.no_grad():
            linear.weight.copy_(self.W)
            linear.bias.copy_(self.b)
        return torch.nn.Sequential(linear, self.activation.torch_module())

    def torch_modules(self) -> list[torch.nn.Module]:
        return list(self.to_torch().children())
