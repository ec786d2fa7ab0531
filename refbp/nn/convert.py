"""From torch, to torch: a torch.nn.Sequential becomes a refbp Network, and back.

    module = torch.nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.LayerNorm(8), nn.Linear(8, 2))
    net = refbp.from_torch(module, loss="mse")
    grads = net.backward(net.forward(X), y)
    grads.torch_named()     # {"0.weight": ..., "0.bias": ..., "2.weight": ..., ..., "input": dJ/dX}
    module = net.to_torch() # the same function as a torch module again

Parameters are copied (refbp never holds torch's autograd leaves), the module's train/eval mode
is kept. Module i of the Sequential becomes layer i + 1 of the network, so "W1" is
"0.weight", "gamma3" is "2.weight", and so on.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .keys import Key

if TYPE_CHECKING:
    from .layer import Layer
    from .network import Network

__all__ = ["CONVERTERS", "convert_child", "from_torch", "supported", "to_torch", "torch_parameter_names"]

CONVERTERS: dict[type[torch.nn.Module], Callable[[torch.nn.Module], Layer]] = {}
"""torch module type -> the function that turns such a module into a refbp layer. Each layer
module registers its own (refbp.nn.layers)."""


Converter = Callable[[torch.nn.Module], "Layer"]


def register(module_type: type[torch.nn.Module]) -> Callable[[Converter], Converter]:
    """Decorator: ``fn`` turns a ``module_type`` instance into a refbp layer."""

    def decorate(fn: Converter) -> Converter:
        CONVERTERS[module_type] = fn
        return fn

    return decorate


def _register_all() -> None:
    """Import every layer module, each of which registers its converters."""
    importlib.import_module(f"{__package__}.layers")


def from_torch(module: torch.nn.Module, *, loss: str = "mse", weight_decay: float = 0.0, seed: int = 0) -> Network:
    """A refbp Network computing the same function as ``module``, a torch.nn.Sequential of
    supported modules (``supported()`` lists them), with copies of its parameters and its
    train/eval mode. A parameter the module uses twice (a tied weight: one nn.Parameter in two
    modules) stays one tensor, its gradient the sum of both uses. Dropout k (counted in order)
    draws its masks from ``seed + k``. An unsupported module is a ValueError naming it and its
    position."""
    from .dropout import Dropout
    from .network import Network

    _register_all()
    if not isinstance(module, torch.nn.Sequential):
        raise TypeError(f"module must be a torch.nn.Sequential, got {type(module).__name__}")
    if len(module) == 0:
        raise ValueError("module is an empty torch.nn.Sequential; expected at least one layer")
    layers = [
        convert_child(child, f"module[{index}]", name) for index, (name, child) in enumerate(module.named_children())
    ]
    _retie(layers, module)
    dropouts = [layer for _, layer in _walk(layers, ()) if isinstance(layer, Dropout)]
    for k, layer in enumerate(dropouts):
        layer.reseed((seed + k) % 2**32)
    return Network(layers, loss, weight_decay=weight_decay)


def convert_child(child: torch.nn.Module, where: str, name: str | None = None) -> Layer:
    """One module as a refbp layer in the module's mode; a ValueError naming it and ``where``
    ("module[2]", with its ``name`` in the Sequential) otherwise."""
    what = f"{where} ({type(child).__name__})" if name is None else f"{where} ({name}: {type(child).__name__})"
    convert = CONVERTERS.get(type(child))
    if convert is None:
        raise ValueError(f"{what} is not supported; expected one of {supported()}")
    try:
        layer = convert(child)
    except (ValueError, TypeError) as err:
        raise type(err)(f"{what}: {err}") from None
    layer.set_training(child.training)
    return layer


def _walk(layers: list[Layer], prefix: tuple[int, ...]) -> Iterator[tuple[tuple[int, ...], Layer]]:
    for l, layer in enumerate(layers, start=1):
        yield (*prefix, l), layer
        yield from _walk(layer.sublayers(), (*prefix, l))


def _retie(layers: list[Layer], module: torch.nn.Sequential) -> None:
    """Where the torch module uses one nn.Parameter in several places, make the refbp layers
    hold one tensor there too (the copies were made module by module)."""
    by_path = dict(_walk(layers, ()))
    first: dict[int, Tensor] = {}
    offset = 0
    for l, layer in enumerate(layers, start=1):
        for key, relative in layer.torch_param_names((l,)).items():
            index, rest = relative.split(".", 1)
            original = module[offset + int(index)].get_parameter(rest)
            owner = by_path[key.layer]
            if id(original) in first:
                owner.params[key.kind] = first[id(original)]
            else:
                first[id(original)] = owner.params[key.kind]
        offset += len(layer.torch_modules())


def supported() -> list[str]:
    """The names of the torch modules ``from_torch`` converts."""
    _register_all()
    return sorted(t.__name__ for t in CONVERTERS)


def to_torch(net: Network) -> torch.nn.Sequential:
    """The network as a torch.nn.Sequential (copied parameters, the same train/eval mode); a
    tied parameter is one nn.Parameter in every module that uses it."""
    modules = [m for layer in net.layers for m in layer.torch_modules()]
    sequential = torch.nn.Sequential(*modules)
    sequential.train(net.training)
    for names in torch_parameter_names(net).values():
        shared = sequential.get_parameter(names[0])
        for name in names[1:]:
            owner, _, attribute = name.rpartition(".")
            setattr(sequential.get_submodule(owner), attribute, shared)
    return sequential


def torch_parameter_names(net: Network) -> dict[str, tuple[str, ...]]:
    """Parameter name -> its names in ``to_torch(net)`` (a tied parameter has several)."""
    names: dict[Key, list[str]] = {}
    offset = 0
    for l, layer in enumerate(net.layers, start=1):
        for key, relative in layer.torch_param_names((l,)).items():
            index, rest = relative.split(".", 1)
            owner = net.ties.get(key, key)
            names.setdefault(owner, []).append(f"{offset + int(index)}.{rest}")
        offset += len(layer.torch_modules())
    return {str(key): tuple(value) for key, value in names.items()}
