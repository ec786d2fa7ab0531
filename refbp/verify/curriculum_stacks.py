"""The curriculum's layer kinds of a StackSpec: convolutions, pooling, spatial norms, softmax and
recurrent layers, each written [kind, *arguments, {options}] as the other kinds are
(refbp.verify.stacks), checked and built here.

    ["conv2d", C_out, {"kernel": [2, 3], "stride": 2, "padding": 1, "dilation": 1, "groups": 1, "bias": true}]
    ["conv1d", C_out, {...the same, one size each}]      padding also "same" or "valid"
    ["maxpool", {"kernel": 2, "stride": 1, "padding": 0, "dilation": 1}]
    ["avgpool", {"kernel": 3, "stride": 2, "padding": 1, "count_include_pad": false}]
    ["adaptive_avgpool", [h_o, w_o]]                     null keeps that size
    ["batchnorm2d", {"affine": false}]    ["groupnorm", G, {"affine": false}]
    ["softmax", dim]    ["logsoftmax", dim]             dim counts the batch dimension, as torch's
    ["rnn", H, {"nonlinearity": "relu"}]  ["lstm", H]  ["gru", H]
         with {"layers": 2, "bias": false, "batch_first": false, "initial_state": true}

Images (N, C, H, W) and sequences (N, C, L) for a convolution, or (N, T, d) for a recurrent
layer, come from a StackSpec whose ``input`` gives one observation's shape,
{"shape": [C, H, W]}. A recurrent layer reads (N, T, d) as torch does with its batch_first: as
(B, T, d), or (T, B, d) (the StackSpec's batch dimension is then the time axis). Its initial
state, when asked for, is drawn for the batch it reads.

Parameters are drawn as torch initialises them (uniform +-1/sqrt(fan-in)), gamma and beta and
BatchNorm2d's running statistics away from 1 and 0, from the one generator of the stack.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ..nn.conv import Conv1d, Conv2d
from ..nn.gru import GRULayer
from ..nn.layer import ForwardContext, Layer
from ..nn.lstm import LSTMLayer
from ..nn.norm2d import BatchNorm2d, GroupNorm
from ..nn.pool import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d
from ..nn.recurrent import GRU, LSTM, RNN
from ..nn.recurrent_layer import RecurrentLayer
from ..nn.rnn import NONLINEARITIES, RNNLayer
from ..nn.softmax import LogSoftmax, Softmax

__all__ = ["CURRICULUM_ARGUMENTS", "CURRICULUM_KINDS", "CURRICULUM_OPTIONS", "build_curriculum_layer"]

Uniform = Callable[[tuple[int, ...], float, float], Tensor]
"""shape, low, high -> float64 numbers drawn from the stack's generator."""

Check = Callable[[object, str], None]
"""An option's check: (its value, where) -> None, or a ValueError/TypeError naming ``where``."""


def _sizes(value: object, where: str, minimum: int) -> None:
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    ok = 1 <= len(items) <= 2 and all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in items)
    if not ok:
        raise ValueError(f"{where}={value!r}: expected an int >= {minimum} or a list of one or two")


def _positive(value: object, where: str) -> None:
    _sizes(value, where, 1)


def _padding(value: object, where: str) -> None:
    if not (isinstance(value, str) and value in ("same", "valid")):
        _sizes(value, where, 0)


def _flag(value: object, where: str) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{where}={value!r} must be true or false")


def _nonlinearity(value: object, where: str) -> None:
    if value not in NONLINEARITIES:
        raise ValueError(f"{where}={value!r}; expected one of {list(NONLINEARITIES)}")


_CONV: dict[str, Check] = {"kernel": _positive, "stride": _positive, "padding": _padding, "dilation": _positive,
                           "groups": _positive, "bias": _flag}  # fmt: skip
_RECURRENT: dict[str, Check] = {"layers": _positive, "bias": _flag, "batch_first": _flag, "initial_state": _flag}

CURRICULUM_OPTIONS: dict[str, dict[str, Check]] = {
    "conv1d": _CONV,
    "conv2d": _CONV,
    "maxpool": {"kernel": _positive, "stride": _positive, "padding": _padding, "dilation": _positive},
    "avgpool": {"kernel": _positive, "stride": _positive, "padding": _padding, "count_include_pad": _flag},
    "adaptive_avgpool": {},
    "batchnorm2d": {"affine": _flag},
    "groupnorm": {"affine": _flag},
    "softmax": {},
    "logsoftmax": {},
    "rnn": {**_RECURRENT, "nonlinearity": _nonlinearity},
    "lstm": _RECURRENT,
    "gru": _RECURRENT,
}
"""Each curriculum kind's options (in its trailing {...}) and how each is checked."""

CURRICULUM_ARGUMENTS: dict[str, tuple[str, ...]] = {
    "conv1d": ("C_out",), "conv2d": ("C_out",), "adaptive_avgpool": ("size",), "groupnorm": ("groups",),
    "softmax": ("dim",), "logsoftmax": ("dim",), "rnn": ("H",), "lstm": ("H",), "gru": ("H",),
}  # fmt: skip
"""The positional arguments each curriculum kind takes after its name."""

CURRICULUM_KINDS = tuple(CURRICULUM_OPTIONS)
"""The kinds this module builds."""

_CELLS: dict[str, tuple[type[RecurrentLayer], int]] = {
    "rnn": (RNNLayer, 1),
    "lstm": (LSTMLayer, 4),
    "gru": (GRULayer, 3),
}


def _int(value: object, where: str, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{where}={value!r}: expected an int >= {minimum}")
    return value


def build_curriculum_layer(
    kind: str,
    args: Sequence[Any],
    options: dict[str, Any],
    shape: tuple[int, ...],
    batch: int,
    uniform: Uniform,
    where: str,
) -> tuple[Layer, tuple[int, ...]]:
    """The layer of ``kind`` for one observation of ``shape`` (a batch of ``batch``), its
    parameters from ``uniform``, and its output's shape (without the batch); a ValueError naming
    ``where`` when the layer cannot read that shape."""
    try:
        layer = _layer(kind, args, options, shape, batch, uniform, where)
    except ValueError as err:
        raise ValueError(str(err) if str(err).startswith(where) else f"{where}: {err}") from None
    x = torch.zeros(batch, *shape, dtype=torch.float64)  # the output's shape, found by running the layer once
    try:
        out, _ = layer.forward(x, ForwardContext(keep_intermediates=False, update_stats=False), (1,))
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    return layer, tuple(out.shape[1:])


def _layer(
    kind: str, args: Sequence[Any], options: dict[str, Any], shape: tuple[int, ...], batch: int,
    uniform: Uniform, where: str,
) -> Layer:  # fmt: skip
    C = shape[0] if shape else 0
    if kind in ("conv1d", "conv2d"):
        dims = 1 if kind == "conv1d" else 2
        if len(shape) != dims + 1:
            expected = "(N, C, L)" if dims == 1 else "(N, C, H, W)"
            raise ValueError(f"{where}: {kind} needs {expected} inputs, this one is (N, {', '.join(map(str, shape))})")
        C_out = _int(args[0] if args else None, f"{where}[1] (C_out)", 1)
        groups = int(options.get("groups", 1))
        if C % groups or C_out % groups:
            raise ValueError(f"{where}: groups={groups} must divide C_in = {C} and C_out = {C_out}")
        kernel = options.get("kernel", 3)
        k = list(kernel) if isinstance(kernel, (list, tuple)) else [kernel] * dims
        if len(k) != dims:
            raise ValueError(f"{where}: kernel={kernel!r} has {len(k)} sizes; {kind} takes {dims}")
        fan_in = C // groups * math.prod(k)
        bound = 1.0 / math.sqrt(fan_in)
        W = uniform((C_out, C // groups, *k), -bound, bound)
        b = uniform((C_out,), -bound, bound) if options.get("bias", True) else None
        padding = options.get("padding", 0)
        conv = Conv1d if dims == 1 else Conv2d
        stride, dilation = _tuple(options.get("stride", 1), dims), _tuple(options.get("dilation", 1), dims)
        padding = padding if isinstance(padding, str) else _tuple(padding, dims)
        return conv(W, b, stride=stride, padding=padding, dilation=dilation, groups=groups)
    if kind in ("maxpool", "avgpool"):
        kernel = _tuple(options.get("kernel", 2), 2)
        stride = _tuple(options.get("stride", kernel), 2)
        padding = _tuple(options.get("padding", 0), 2)
        if kind == "maxpool":
            return MaxPool2d(kernel, stride, padding, _tuple(options.get("dilation", 1), 2))
        return AvgPool2d(kernel, stride, padding, count_include_pad=options.get("count_include_pad", True))
    if kind == "adaptive_avgpool":
        size = args[0] if args else 1
        sizes = list(size) if isinstance(size, (list, tuple)) else [size, size]
        return AdaptiveAvgPool2d(sizes)
    if kind == "batchnorm2d":
        affine = options.get("affine", True)
        gamma = uniform((C,), 0.5, 1.5) if affine else None
        beta = uniform((C,), -0.5, 0.5) if affine else None
        mean, var = uniform((C,), -0.5, 0.5), uniform((C,), 0.5, 1.5)
        return BatchNorm2d(gamma, beta, C=C, running_mean=mean, running_var=var)
    if kind == "groupnorm":
        G = _int(args[0] if args else None, f"{where}[1] (groups)", 1)
        if not options.get("affine", True):
            return GroupNorm(G, C=C)
        return GroupNorm(G, uniform((C,), 0.5, 1.5), uniform((C,), -0.5, 0.5))
    if kind in ("softmax", "logsoftmax"):
        dim = args[0] if args else -1
        if not isinstance(dim, int) or isinstance(dim, bool):
            raise ValueError(f"{where}[1] (dim)={dim!r}: expected an int")
        return Softmax(dim) if kind == "softmax" else LogSoftmax(dim)
    return _recurrent(kind, args, options, shape, batch, uniform, where)


def _recurrent(
    kind: str, args: Sequence[Any], options: dict[str, Any], shape: tuple[int, ...], batch: int,
    uniform: Uniform, where: str,
) -> Layer:  # fmt: skip
    if len(shape) != 2:
        raise ValueError(f"{where}: {kind} needs (N, T, d) inputs, this one is (N, {', '.join(map(str, shape))})")
    cell, gates = _CELLS[kind]
    H = _int(args[0] if args else None, f"{where}[1] (H)", 1)
    batch_first = options.get("batch_first", True)
    B = batch if batch_first else shape[0]  # the batch the layer reads: (B, T, d), or (T, B, d)
    bound = 1.0 / math.sqrt(H)
    layers: list[RecurrentLayer] = []
    d_in = shape[1]
    for k in range(int(options.get("layers", 1))):
        W_ih, W_hh = uniform((gates * H, d_in), -bound, bound), uniform((gates * H, H), -bound, bound)
        b_ih = uniform((gates * H,), -bound, bound) if options.get("bias", True) else None
        b_hh = uniform((gates * H,), -bound, bound) if options.get("bias", True) else None
        states: dict[str, Any] = {"h0": uniform((B, H), -1.0, 1.0)} if options.get("initial_state") else {}
        if states and cell is LSTMLayer:
            states["c0"] = uniform((B, H), -1.0, 1.0)
        if cell is RNNLayer:
            states["nonlinearity"] = options.get("nonlinearity", "tanh")
        layers.append(cell(W_ih, W_hh, b_ih, b_hh, batch_first=batch_first, index=k, **states))
        d_in = H
    stack = {"rnn": RNN, "lstm": LSTM, "gru": GRU}[kind]
    return stack(*layers)


def _tuple(value: Any, n: int) -> tuple[int, ...]:
    """An int, or a list of n (options already checked), as an n-tuple."""
    items = list(value) if isinstance(value, (list, tuple)) else [value] * n
    if len(items) != n:
        raise ValueError(f"{value!r} has {len(items)} sizes; expected {n}")
    return tuple(int(v) for v in items)
