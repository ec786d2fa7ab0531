"""The registry of torch converters: torch module type -> the function that builds a refbp layer.

Each layer module registers its own converters on the ground floor, here, and imports nothing
above it; ``refbp.nn.convert`` (``from_torch``) imports the layers, which fills the registry,
and looks converters up through ``convert_module``:

    @register(torch.nn.Tanh)
    def _from_tanh(module: torch.nn.Module) -> Layer:
        return Elementwise("tanh")

A composite layer's converter (a residual's body) converts its children with
``convert_module`` too, so that every module, at any depth, is found the same way.

The functions a traced forward calls (``F.relu``, ``torch.cat``, ``x.view``, ``operator.add``:
torch.fx's call_function and call_method nodes, refbp.nn.fx_convert) have a registry of their
own, FUNCTIONS, filled the same way. A function converter gets the call's arguments with each
tensor replaced by a TensorArg (its position among the call's tensors) and each size read from
a tensor (``x.size(0)``, ``x.shape[0]``) by a SizeOf, and returns the layer computing the call:

    @register_function(F.relu, torch.relu, "relu")      # "relu": the method x.relu()
    def _relu(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Layer:
        return Elementwise("relu")
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional

from .layer import Layer

__all__ = [
    "CONVERTERS",
    "FUNCTIONS",
    "Converter",
    "FunctionConverter",
    "SizeOf",
    "TensorArg",
    "bind_arguments",
    "convert_module",
    "function_name",
    "register",
    "register_function",
    "registered",
    "registered_functions",
]

Converter = Callable[[torch.nn.Module], Layer]
"""A function from a torch module to the refbp layer computing the same map."""

CONVERTERS: dict[type[torch.nn.Module], Converter] = {}
"""torch module type -> its converter, filled by the layer modules as they are imported."""


def register(module_type: type[torch.nn.Module]) -> Callable[[Converter], Converter]:
    """Decorator: the function turns a ``module_type`` instance (that exact type) into a refbp layer."""

    def decorate(fn: Converter) -> Converter:
        CONVERTERS[module_type] = fn
        return fn

    return decorate


def registered() -> list[str]:
    """The names of the torch module types with a converter, sorted."""
    return sorted(t.__name__ for t in CONVERTERS)


def convert_module(child: torch.nn.Module, where: str, name: str | None = None) -> Layer:
    """One module as a refbp layer in the module's own train/eval mode, or a ValueError naming
    it and ``where`` ("module[2]", with its ``name`` in the Sequential when given).

    A composite layer's converter has already given each of its sub-layers its own module's
    mode, so only the composite's own flag is set here: a Dropout in training inside a
    residual that is in eval keeps its mode, as it does in torch."""
    what = f"{where} ({type(child).__name__})" if name is None else f"{where} ({name}: {type(child).__name__})"
    convert = CONVERTERS.get(type(child))
    if convert is None:
        raise ValueError(f"{what} is not supported; expected one of {registered()}")
    try:
        layer = convert(child)
    except (ValueError, TypeError) as err:
        raise type(err)(f"{what}: {err}") from None
    if layer.sublayers():
        layer.training = child.training
    else:
        layer.set_training(child.training)
    return layer


# ---- functions called in a traced forward ---------------------------------------------------------
@dataclass(frozen=True)
class TensorArg:
    """A tensor argument of a traced call: the ``index``-th tensor among the call's arguments
    (in the order they appear, lists included), which the layer reads as its input ``index``."""

    index: int


@dataclass(frozen=True)
class SizeOf:
    """``x.size(dim)`` or ``x.shape[dim]`` of the call's tensor argument ``index``: a size that
    follows the input (the batch size), not a number fixed when the forward was traced."""

    index: int
    dim: int


FunctionConverter = Callable[[tuple[Any, ...], dict[str, Any]], Layer]
"""(the call's positional arguments, its keyword arguments) -> the layer computing the call;
a ValueError or TypeError saying what is not supported about these arguments."""

FUNCTIONS: dict[object, FunctionConverter] = {}
"""A function (``F.relu``, ``operator.add``) or a tensor method's name ("view") -> its converter."""


def register_function(*targets: object) -> Callable[[FunctionConverter], FunctionConverter]:
    """Decorator: the function converts a call of any of ``targets`` (callables, or method
    names as strings) into a refbp layer."""

    def decorate(fn: FunctionConverter) -> FunctionConverter:
        for target in targets:
            FUNCTIONS[target] = fn
        return fn

    return decorate


def function_name(target: object) -> str:
    """How people write a traced call's target: "torch.tanh", "F.relu", "operator.add", ".view"."""
    if isinstance(target, str):
        return f".{target}"
    name = getattr(target, "__name__", repr(target))
    for prefix, namespace in (("F", torch.nn.functional), ("torch", torch), ("operator", operator)):
        if getattr(namespace, name, None) is target:
            return f"{prefix}.{name}"
    return f"{getattr(target, '__module__', None) or '?'}.{name}"


def registered_functions() -> list[str]:
    """The names of the functions and tensor methods with a converter, sorted."""
    return sorted({function_name(target) for target in FUNCTIONS})


def bind_arguments(
    args: tuple[Any, ...], kwargs: dict[str, Any], names: tuple[str, ...], defaults: dict[str, Any]
) -> dict[str, Any]:
    """A call's arguments by parameter name, as Python would bind them to ``names`` (with
    ``defaults`` for the ones left out); a TypeError for an argument too many or one missing."""
    if len(args) > len(names):
        raise TypeError(f"takes at most {len(names)} arguments ({', '.join(names)}), got {len(args)}")
    bound = dict(defaults)
    bound.update(zip(names, args, strict=False))
    for name, value in kwargs.items():
        if name not in names:
            raise TypeError(f"got an argument {name}={value!r} that refbp does not know; expected {', '.join(names)}")
        bound[name] = value
    missing = [name for name in names if name not in bound]
    if missing:
        raise TypeError(f"is missing the argument {missing[0]}")
    return bound
