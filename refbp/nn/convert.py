"""From torch: any torch.nn.Module becomes a refbp network computing the same function, checked.

    module = torch.nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.LayerNorm(8), nn.Linear(8, 2))
    net = refbp.from_torch(module, loss="mse")      # refuses if the network computes anything else
    grads = net.backward(net.forward(X), y)
    grads.torch_named()     # {"0.weight": ..., "0.bias": ..., "2.weight": ..., ..., "input": dJ/dX}
    module = net.to_torch() # the same function as a torch module again (Network.to_torch)
    noise = refbp.capture_noise(module, X)   # the dropout masks torch draws, as refbp's noise=

A torch.nn.Sequential becomes a Network (a stack): module i is layer i + 1, so "W1" is
"0.weight", "gamma3" is "2.weight"; a nested Sequential is one layer holding its modules
("W2.1" is "1.0.weight"). Any other module is traced by torch.fx into a GraphNetwork
(refbp.nn.fx_convert: skip connections, functional calls, nested containers), whose
``grads.torch_named()`` holds the parameters under ``named_parameters()``'s names and every
node's output under the traced node's name. Parameters are copied (refbp never holds torch's
autograd leaves), and every module's own train/eval mode is kept. A module used twice is
converted twice, its parameters tied.

The converters themselves live with their layers and register on the ground floor
(refbp.nn.registry); importing refbp.nn.layers here fills the registry.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor

from . import layers as _layers  # noqa: F401  (each layer module registers its converters)
from . import sequential as _sequential  # noqa: F401  (registers torch.nn.Sequential: a nested one)
from .fx_convert import capture_graph_noise, graph_from_torch, reseed_dropouts
from .layer import Layer
from .losses import Loss
from .network import Network
from .registry import CONVERTERS, convert_module, register, registered, registered_functions
from .self_check import EXAMPLE_BATCH, SELF_CHECK_TOLERANCE, difference
from .stack import walk_layers
from .torch_run import ModuleFailedError, check_inputs, describe_inputs, run_module
from .validation import FLOAT_DTYPES, check_seed

__all__ = [
    "CONVERTERS",
    "SELF_CHECK_TOLERANCE",
    "capture_noise",
    "convert_child",
    "from_torch",
    "register",
    "supported",
    "supported_functions",
    "to_torch",
    "torch_parameter_names",
]

convert_child = convert_module
"""The older name of ``refbp.nn.registry.convert_module``."""


# ---- conversion ------------------------------------------------------------------------------
def from_torch(
    module: torch.nn.Module,
    *,
    loss: str | Loss = "mse",
    weight_decay: float = 0.0,
    seed: int = 0,
    example_inputs: Sequence[Tensor] | Tensor | None = None,
) -> Network:
    """A refbp network computing the same function as ``module``, checked on an input.

    Args:
        module: a torch.nn.Sequential of supported modules (``supported()`` lists them; a
            nested Sequential is one layer holding its modules): a Network. Any other
            nn.Module whose forward torch.fx traces into supported modules and functions
            (``supported_functions()``): a GraphNetwork (refbp.nn.fx_convert, refbp.nn.graph),
            checked node by node. A module used twice is one
            set of parameters used twice (a tied weight: its gradient is the sum of both uses);
            a module with running statistics used twice is refused (refbp would keep two copies).
        loss: a loss name or record (refbp.nn.losses), e.g. ``cross_entropy(ignore_index=-1)``.
        weight_decay: lambda >= 0, as ``Network``.
        seed: refbp's own dropout masks (``net.forward(X)`` without ``noise=``): dropout k
            (counted from 0, depth first) draws from ``seed + k``, which must be <= MAX_SEED
            (a seed is never wrapped around 2**32).
        example_inputs: the self-check's input, a tuple of one tensor (or the tensor); None
            builds one from the first module: (2, in_features) random values of the module's
            dtype for a Linear (likewise LayerNorm, BatchNorm1d), int64 indices for an Embedding.

    The self-check: the network (``update_stats=False``) and a deep copy of the module run on
    the input, each module in its own train/eval mode, the network's dropout masks those torch
    drew (``capture_noise``); the output of every position of the Sequential must agree to
    rounding (``SELF_CHECK_TOLERANCE``), or a ValueError names the first that does not. Neither
    the module (its running statistics) nor torch's random state changes. The check needs an
    input: when ``example_inputs`` is None and none can be built (the first module fixes no
    width, the module has no parameters, the module itself refuses the built input, e.g. an
    Embedding whose output is reshaped to a width that the built indices do not give, or the
    network refuses it where torch does not check the shape), the conversion is not checked:
    pass ``example_inputs`` to have it checked.

    An unsupported module is a ValueError naming it and its position (for a traced module:
    the node and the line of its forward). For a traced module the input is built from its
    first module (Linear, LayerNorm, BatchNorm1d: (2, width); Embedding: (2, 3) indices;
    Conv1d/Conv2d: (2, C, 8[, 8])) when ``example_inputs`` is None, under the same rules."""
    inputs = None if example_inputs is None else check_inputs(example_inputs, "example_inputs")
    if isinstance(module, torch.nn.Module) and not isinstance(module, torch.nn.Sequential):
        if type(module) in CONVERTERS:
            raise TypeError(
                f"module is a single {type(module).__name__}; wrap it as torch.nn.Sequential(module), or convert "
                "the model that calls it"
            )
        return graph_from_torch(module, loss=loss, weight_decay=weight_decay, seed=seed, example_inputs=inputs)
    sequential, layers = _convert(module, seed)
    net = Network(layers, loss, weight_decay=weight_decay)
    built = inputs is None
    if inputs is None:
        inputs = _example_inputs(module)
    if inputs is not None:
        _self_check(net, sequential, inputs, built=built)
    return net


def _convert(module: object, seed: object) -> tuple[torch.nn.Sequential, list[Layer]]:
    """``module`` checked to be a non-empty Sequential, and its layers, ties and seeds set."""
    seed = check_seed(seed)
    if not isinstance(module, torch.nn.Sequential):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    if len(module) == 0:
        raise ValueError("module is an empty torch.nn.Sequential; expected at least one layer")
    _refuse_repeated_state(module)
    children = list(module._modules.items())  # every position, a module used twice included
    layers = [convert_module(child, f"module[{i}]", name) for i, (name, child) in enumerate(children)]
    devices = sorted({t.device.index or 0 for t in module.parameters() if t.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):  # building torch modules to read names draws values
        _retie(layers, module)
    reseed_dropouts(layers, seed)  # each random layer gets its own stream, also one in eval mode now
    return module, layers


def _refuse_repeated_state(module: torch.nn.Module) -> None:
    """A module with buffers (BatchNorm's running statistics) used in two places is one state
    updated twice by torch; refbp's converted layers would each hold a copy."""
    seen: dict[int, str] = {}
    for name, child in module.named_modules(remove_duplicate=False):
        if not name or not any(True for _ in child.buffers(recurse=False)):
            continue
        if id(child) in seen:
            raise ValueError(
                f"module.{seen[id(child)]} ({type(child).__name__}) is used again as module.{name}: its "
                "buffers (running statistics) would be one state in torch but two copies in refbp; "
                "expected a separate module for each use"
            )
        seen[id(child)] = name


def _retie(layers: list[Layer], module: torch.nn.Sequential) -> None:
    """Where the torch module uses one nn.Parameter in several places (one module used twice,
    or one Parameter assigned to two modules), make the refbp layers hold one tensor there too
    (the copies were made module by module): Network then sees the tie."""
    by_path = dict(walk_layers(layers))
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
    return registered()


def supported_functions() -> list[str]:
    """The functions and tensor methods a traced forward may call ("F.relu", "torch.cat", ".view")."""
    return registered_functions()


def to_torch(net: Network) -> torch.nn.Module:
    """``net.to_torch()``: the network as a torch.nn.Sequential."""
    return net.to_torch()


def torch_parameter_names(net: Network) -> dict[str, tuple[str, ...]]:
    """``net.torch_parameter_names()``: parameter name -> its names in ``net.to_torch()``."""
    return net.torch_parameter_names()


# ---- running the module: outputs and dropout masks ---------------------------------------------
def capture_noise(module: torch.nn.Module, *inputs: Tensor) -> dict[tuple[int, ...], Tensor]:
    """The dropout keep-masks torch draws when ``module`` runs on ``inputs``, as the ``noise=``
    mapping of ``from_torch(module)``'s network: layer path -> boolean mask of the layer's
    input shape, for every Dropout in training mode with p > 0 (``Network.forward(noise=...)``,
    ``refbp.check(noise=...)``). For a traced module (not a Sequential) the path is the node's,
    (l,), and ``F.dropout`` calls count as well as nn.Dropout modules.

    The module runs as a deep copy (its running statistics do not move) and torch's random
    state is restored afterwards, so the module's next call on the same inputs draws exactly
    these masks: ``noise = capture_noise(module, X); out = module(X)`` uses them both.

    A mask is recovered by drawing again from torch's random state saved before each dropout
    call, and checked against the output's zeros (refbp.nn.torch_run says why and how): an
    input entry that is exactly 0 is right even though the output cannot show its mask."""
    checked = check_inputs(inputs, "inputs")
    if isinstance(module, torch.nn.Module) and not isinstance(module, torch.nn.Sequential):
        return capture_graph_noise(module, checked)
    sequential, layers = _convert(module, 0)
    return run_module(sequential, layers, checked).noise


# ---- the self-check ----------------------------------------------------------------------------
def _first_leaf(module: torch.nn.Module) -> torch.nn.Module:
    """The first module without children inside ``module`` (itself when it has none)."""
    while True:
        children = list(module.children())
        if not children:
            return module
        module = children[0]


def _width(module: torch.nn.Module) -> int | None:
    """The size of the last input dimension the module needs, from torch's own attributes
    (Linear's in_features, BatchNorm1d's num_features, a 1-d LayerNorm's normalized_shape)."""
    for attribute in ("in_features", "num_features"):
        value = getattr(module, attribute, None)
        if isinstance(value, int):
            return value
    shape = getattr(module, "normalized_shape", None)
    if isinstance(shape, tuple) and len(shape) == 1:
        return int(shape[0])
    return None


def _example_inputs(module: object) -> tuple[Tensor, ...] | None:
    """A small input for ``module`` built from its first module, or None when none can be."""
    if not isinstance(module, torch.nn.Sequential):
        return None
    floats = [p for p in module.parameters() if p.dtype in FLOAT_DTYPES]
    if not floats:
        return None
    dtype, device = floats[0].dtype, floats[0].device
    generator = torch.Generator().manual_seed(0)  # its own generator: torch's global state is untouched
    first = _first_leaf(module[0])
    V = getattr(first, "num_embeddings", None)
    if isinstance(V, int):  # indices (N,), or (N, T) when a Flatten then merges T vectors of d into one row
        d = int(getattr(first, "embedding_dim", 1))
        T = None
        for child in list(module)[1:]:
            leaf = _first_leaf(child)
            if isinstance(leaf, torch.nn.Flatten):
                T = 0
            elif (width := _width(leaf)) is not None:
                T = width // d if T == 0 and width % d == 0 else None
                break
        shape = (EXAMPLE_BATCH,) if not T else (EXAMPLE_BATCH, T)
        return (torch.randint(0, V, shape, generator=generator).to(device),)
    width = _width(first)
    if width is None:
        return None
    X = torch.empty(EXAMPLE_BATCH, width, dtype=torch.float64).uniform_(-1.0, 1.0, generator=generator)
    return (X.to(dtype=dtype, device=device),)


def _self_check(net: Network, module: torch.nn.Sequential, inputs: tuple[Tensor, ...], *, built: bool) -> None:
    """Refuse the conversion, naming the first position where the network and the module differ.

    Both run in float64 (copies; the module's own parameters, exactly): "the same function" is a
    statement about the maps, and in float32 rounding can pass for a difference (x - mean is 0
    exactly and u-sized in torch's float32 kernels, scaled by 1/sigma: refbp.nn.cancellation)."""
    module = copy.deepcopy(module).to(torch.float64)
    net = net.to(dtype=torch.float64)
    inputs = tuple(t.to(torch.float64) if t.is_floating_point() else t for t in inputs)
    try:
        run = run_module(module, net.layers, inputs)
    except ModuleFailedError:
        if built:  # the module refuses the input we made up for it: nothing to compare
            return
        raise
    try:
        cache = net.forward(inputs[0], keep_intermediates=True, update_stats=False, noise=run.noise)
    except (ValueError, TypeError) as err:
        if built:  # refbp checks shapes torch lets pass (a BatchNorm without statistics): not an input for it
            return
        raise ValueError(
            f"from_torch: the module runs on the check's input ({describe_inputs(inputs)}) but the converted "
            f"network refuses it: {err}"
        ) from err
    pairs = list(zip(cache.a[1:], run.calls, strict=False)) if len(run.calls) == net.L else []
    pairs.append((cache.y_hat, run.output))
    for l, (ours, theirs) in enumerate(pairs, start=1):
        differs = difference(ours, theirs)
        if differs is None:
            continue
        if l > net.L or len(run.calls) != net.L:
            where = "the module's output (every position alone agrees: does its forward do more than a Sequential?)"
        else:
            where = f"module[{l - 1}] ({type(module[l - 1]).__name__}), layer {l} ({net.layers[l - 1].describe()})"
        raise ValueError(
            f"from_torch: the converted network computes another function than the module: at {where}, "
            f"{differs} (each module in its own train/eval mode, torch's dropout masks, input "
            f"{describe_inputs(inputs)}); this is a refbp bug, please report it with the module"
        )
