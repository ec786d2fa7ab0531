"""The registry of torch converters: torch module type -> the function that builds a refbp layer.

Each layer module registers its own converters on the ground floor, here, and imports nothing
above it; ``refbp.nn.convert`` (``from_torch``) imports the layers, which fills the registry,
and looks converters up through ``convert_module``:

    @register(torch.nn.Tanh)
    def _from_tanh(module: torch.nn.Module) -> Layer:
        return Elementwise("tanh")

A composite layer's converter (a residual's body) converts its children with
``convert_module`` too, so that every module, at any depth, is found the same way.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .layer import Layer

__all__ = ["CONVERTERS", "Converter", "convert_module", "register", "registered"]

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
