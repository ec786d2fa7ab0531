"""The functional forms of refbp's layers, as a traced forward calls them: ``F.relu(x)``,
``torch.tanh(x)``, ``x.softmax(-1)``, ``F.dropout(x, 0.1, training=self.training)``, ...

Each call becomes the torch module that computes it (``F.gelu(x, approximate="tanh")`` is
``nn.GELU("tanh")``), converted by that module's own converter (refbp.nn.registry): one
conversion per layer, whichever way the model spells it, and ``to_torch()`` gives the module.
A function's ``inplace=True`` is accepted (torch computes the same values); refbp.nn.fx_convert
refuses it where the overwritten input is read again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from .layer import Layer
from .registry import TensorArg, bind_arguments, convert_module, register_function

__all__ = ["FUNCTIONAL_MODULES"]

FUNCTIONAL_MODULES: dict[str, tuple[tuple[object, ...], tuple[str, ...], dict[str, Any]]] = {
    "relu": ((F.relu, torch.relu, "relu"), ("inplace",), {"inplace": False}),
    "sigmoid": ((torch.sigmoid, F.sigmoid, "sigmoid"), (), {}),
    "tanh": ((torch.tanh, F.tanh, "tanh"), (), {}),
    "silu": ((F.silu,), ("inplace",), {"inplace": False}),
    "gelu": ((F.gelu,), ("approximate",), {"approximate": "none"}),
    "elu": ((F.elu,), ("alpha", "inplace"), {"alpha": 1.0, "inplace": False}),
    "leaky_relu": ((F.leaky_relu,), ("negative_slope", "inplace"), {"negative_slope": 0.01, "inplace": False}),
    "softplus": ((F.softplus,), ("beta", "threshold"), {"beta": 1.0, "threshold": 20.0}),
    "softmax": ((F.softmax, torch.softmax, "softmax"), ("dim", "_stacklevel", "dtype"), {"dim": None}),
    "log_softmax": ((F.log_softmax, torch.log_softmax, "log_softmax"), ("dim", "_stacklevel", "dtype"), {"dim": None}),
    "dropout": ((F.dropout,), ("p", "training", "inplace"), {"p": 0.5, "training": True, "inplace": False}),
    "flatten": ((torch.flatten, "flatten"), ("start_dim", "end_dim"), {"start_dim": 0, "end_dim": -1}),
    "max_pool2d": (
        (F.max_pool2d,),
        ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
        {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False, "return_indices": False},
    ),
    "avg_pool2d": (
        (F.avg_pool2d,),
        ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"),
        {"stride": None, "padding": 0, "ceil_mode": False, "count_include_pad": True, "divisor_override": None},
    ),
    "adaptive_avg_pool2d": ((F.adaptive_avg_pool2d,), ("output_size",), {}),
    "layer_norm": (
        (F.layer_norm,),
        ("normalized_shape", "weight", "bias", "eps"),
        {"weight": None, "bias": None, "eps": 1e-5},
    ),
}
"""Function name -> (the functions and tensor methods that compute it, its arguments after the
input, their defaults): what ``_module`` reads to build the torch module."""


def _module(name: str, bound: dict[str, Any]) -> torch.nn.Module:
    """The torch module computing the function ``name`` called with the arguments ``bound``."""
    if bound.pop("dtype", None) is not None:
        raise ValueError(f"{name}: dtype={bound.get('dtype')} is not supported; the input's dtype is kept")
    bound.pop("_stacklevel", None)
    if name == "dropout":
        module: torch.nn.Module = torch.nn.Dropout(bound["p"], inplace=bound["inplace"])
        return module.train(bool(bound["training"]))  # training=self.training, as it was traced
    if name == "layer_norm":  # without weight and bias: a parameter read outside a module is refused
        if bound.pop("weight") is not None or bound.pop("bias") is not None:
            raise ValueError("F.layer_norm with a weight or bias is not supported; nn.LayerNorm is")
        return torch.nn.LayerNorm(bound["normalized_shape"], eps=bound["eps"], elementwise_affine=False)
    if name == "max_pool2d":
        bound["stride"] = bound["stride"] or bound["kernel_size"]  # torch's default: the kernel
    if name == "avg_pool2d":
        bound["stride"] = bound["stride"] or bound["kernel_size"]
    builders: dict[str, Callable[..., torch.nn.Module]] = {
        "relu": torch.nn.ReLU,
        "sigmoid": torch.nn.Sigmoid,
        "tanh": torch.nn.Tanh,
        "silu": torch.nn.SiLU,
        "gelu": torch.nn.GELU,
        "elu": torch.nn.ELU,
        "leaky_relu": torch.nn.LeakyReLU,
        "softplus": torch.nn.Softplus,
        "softmax": torch.nn.Softmax,
        "log_softmax": torch.nn.LogSoftmax,
        "flatten": torch.nn.Flatten,
        "max_pool2d": torch.nn.MaxPool2d,
        "avg_pool2d": torch.nn.AvgPool2d,
        "adaptive_avg_pool2d": torch.nn.AdaptiveAvgPool2d,
    }
    return builders[name](**bound)


def _register(name: str) -> None:
    targets, names, defaults = FUNCTIONAL_MODULES[name]

    def convert(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Layer:
        bound = bind_arguments(args, kwargs, ("input", *names), defaults)
        if bound.pop("input") != TensorArg(0) or any(isinstance(v, TensorArg) for v in bound.values()):
            raise TypeError(f"{name} applies to one tensor, its first argument")
        return convert_module(_module(name, bound), f"the call of {name}")

    register_function(*targets)(convert)


for _name in FUNCTIONAL_MODULES:
    _register(_name)
