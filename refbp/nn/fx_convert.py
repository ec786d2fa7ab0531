"""From any torch module through torch.fx: its traced forward becomes a GraphNetwork, checked.

    class Net(nn.Module):                      # PyTorch's quickstart, a ResNet block, a char model
        def forward(self, x):
            return x + self.conv2(F.relu(self.conv1(x)))
    net = refbp.from_torch(Net(), loss="mse", example_inputs=(X,))

``torch.fx.symbolic_trace`` records the forward as nodes (torch.fx.Node: placeholder,
call_module, call_function, call_method, get_attr, output). Each becomes a refbp node:

    call_module     a module refbp converts (refbp.nn.registry.CONVERTERS), at any depth:
                    Sequential, ModuleList, ModuleDict and the user's own modules are traced
                    through; refbp's module types and torch.nn's stay one call each
    call_function,  F.relu, torch.tanh, x.view, torch.cat, operator.add, ... (FUNCTIONS, filled
    call_method     by refbp.nn.fx_functions, shape_ops and joins)
    x.size(d), x.shape[d]   a size that follows the input (``x.view(x.size(0), -1)``)
    getitem 0 of an nn.RNN/LSTM/GRU's (output, state): the output sequence, its layer's output

Anything else is a ValueError naming the operation, the node and the line of the forward that
made it. Nodes whose output reaches nothing are dropped. The self-check runs the traced module
(a copy: its running statistics do not move) node by node beside the network, on
``example_inputs`` or an input built from the first module, with the dropout masks torch drew
(recovered as refbp.nn.torch_run does), and refuses the conversion at the first node whose
output differs (refbp.nn.self_check).
"""

from __future__ import annotations

import copy
import inspect
import linecache
import operator
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor

from . import fx_functions as _fx_functions  # noqa: F401  (registers the functional forms)
from . import joins as _joins  # noqa: F401  (registers add, sub, cat)
from . import layers as _layers  # noqa: F401  (each layer module registers its converters)
from . import sequential as _sequential  # noqa: F401
from . import shape_ops as _shape_ops  # noqa: F401  (registers view, permute, mean, ...)
from .graph import GraphNetwork, Node
from .keys import Key
from .layer import Layer
from .losses import Loss
from .registry import (
    CONVERTERS,
    FUNCTIONS,
    SizeOf,
    TensorArg,
    convert_module,
    function_name,
    registered,
    registered_functions,
)
from .self_check import EXAMPLE_BATCH, difference
from .stack import walk_layers
from .validation import FLOAT_DTYPES, check_seed, derived_seed, describe

__all__ = ["capture_graph_noise", "graph_from_torch", "reseed_dropouts", "trace", "where"]

_TORCH_DIR = os.path.dirname(torch.__file__)
_RECURRENT = (torch.nn.RNN, torch.nn.LSTM, torch.nn.GRU)
"""torch's own recurrent modules, which return (output, final state); refbp's TorchRNN/LSTM/GRU
return the output sequence only."""


class _Tracer(torch.fx.Tracer):
    """torch.fx's tracer, with every module type refbp converts kept as one call (a leaf), and
    the line of the forward that made each node in ``node.meta["source"]``: (file, line, code).

    The line is read from Python's own stack (the innermost frame outside torch and this
    module). torch's ``record_stack_traces`` gives the same, but its
    first use loads torch's profiler machinery, about 10 s on a loaded 2-core machine."""

    def create_node(self, *args: Any, **kwargs: Any) -> torch.fx.Node:
        node = super().create_node(*args, **kwargs)
        frame = inspect.currentframe()
        while frame is not None and (
            frame.f_code.co_filename.startswith(_TORCH_DIR) or frame.f_code.co_filename == __file__
        ):
            frame = frame.f_back  # outwards, to the innermost frame of the user's forward
        if frame is not None:
            file, line = frame.f_code.co_filename, frame.f_lineno
            node.meta["source"] = (os.path.basename(file), line, linecache.getline(file, line).strip())
        return node

    def is_leaf_module(self, m: torch.nn.Module, module_qualified_name: str) -> bool:
        if type(m) in CONVERTERS and not isinstance(m, torch.nn.Sequential):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def trace(module: torch.nn.Module) -> torch.fx.Graph:
    """The graph of ``module``'s forward, or a ValueError saying why torch.fx cannot trace it."""
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    try:
        return _Tracer().trace(module)
    except Exception as err:  # torch.fx raises TraceError, TypeError, RuntimeError, ... from the user's forward
        raise ValueError(
            f"{type(module).__name__}'s forward cannot be traced by torch.fx ({type(err).__name__}: {err}); "
            "refbp converts forwards without control flow on tensor values"
        ) from err


def where(node: torch.fx.Node) -> str:
    """The node and the forward's line that made it: "node 'sin' (model.py:12 `x = torch.sin(x)`)"."""
    source = node.meta.get("source")
    if source is None:
        return f"node {node.name!r}"
    file, line, code = source
    return f"node {node.name!r} ({file}:{line} `{code}`)"


# ---- the nodes ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Shape:
    """``x.shape`` or ``x.size()`` of refbp node ``index``'s output."""

    index: int


@dataclass(frozen=True)
class _Size:
    """``x.shape[dim]`` or ``x.size(dim)`` of refbp node ``index``'s output."""

    index: int
    dim: int


@dataclass(frozen=True)
class _Pair:
    """The (output, final state) tuple of torch's RNN/LSTM/GRU at refbp node ``index``."""

    index: int


@dataclass(frozen=True)
class _Refused:
    """A value refbp cannot compute with (a recurrent module's final state): an error once read."""

    message: str


def _supported() -> str:
    return f"supported: the functions {registered_functions()} and the modules {registered()}"


class _Converter:
    """Walks the traced graph once, building the refbp nodes."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        self.env: dict[torch.fx.Node, object] = {}
        self.nodes: list[Node] = []
        self.origin: list[torch.fx.Node] = []  # the fx node each refbp node computes

    def run(self, graph: torch.fx.Graph) -> int:
        """Convert every node; the refbp node (by number) the module returns."""
        output: int | None = None
        for n in graph.nodes:
            if n.op == "placeholder":
                if any(value == 0 for value in self.env.values() if isinstance(value, int)):
                    raise ValueError(
                        f"the forward takes several inputs ({n.name!r} is another); a refbp network takes one input X"
                    )
                self.env[n] = 0
            elif n.op == "output":
                output = self._output(n)
            elif n.op == "get_attr":
                raise ValueError(
                    f"reading the attribute self.{n.target} at {where(n)} is not supported (a parameter or "
                    f"buffer used outside a module); {_supported()}"
                )
            elif n.op == "call_module":
                self._call_module(n)
            else:
                self._call(n)
        assert output is not None
        return output

    def _value(self, n: object) -> object:
        return self.env[n] if isinstance(n, torch.fx.Node) else n

    def _tensor(self, n: object, at: torch.fx.Node) -> int:
        value = self._value(n)
        if isinstance(value, _Pair):
            raise ValueError(
                f"the (output, state) tuple of {self.nodes[value.index - 1].layer.describe()} is used as a whole at "
                f"{where(at)}; only its element 0, the output sequence, is supported"
            )
        if isinstance(value, _Refused):
            raise ValueError(value.message)
        if not isinstance(value, int):
            raise ValueError(f"{where(at)} reads {n!r} where a tensor was expected")
        return value

    def _add(self, n: torch.fx.Node, layer: Layer, inputs: list[int], module: str | None = None) -> int:
        try:
            self.nodes.append(Node(n.name, layer, tuple(inputs), module))
        except (ValueError, TypeError) as err:
            raise type(err)(f"{where(n)}: {err}") from None
        self.origin.append(n)
        return len(self.nodes)

    def _output(self, n: torch.fx.Node) -> int:
        out = n.args[0]
        if isinstance(out, (tuple, list, dict)):
            raise ValueError(f"the forward returns {type(out).__name__}; a refbp network has one output tensor")
        index = self._tensor(out, n)
        if index == 0:
            raise ValueError("the forward returns its input unchanged: there is nothing to convert")
        return index

    def _call_module(self, n: torch.fx.Node) -> None:
        target = str(n.target)
        sub = self.module.get_submodule(target)
        if n.kwargs:
            raise ValueError(f"{where(n)} calls self.{target} with keyword arguments {dict(n.kwargs)}; not supported")
        inputs = [self._tensor(arg, n) for arg in n.args]
        if isinstance(sub, _RECURRENT) and len(inputs) > 1:
            raise ValueError(
                f"{where(n)} passes self.{target} an initial state: not supported (refbp.nn.layers."
                "recurrent_from_torch(module, h0=...) converts a module with one)"
            )
        if type(sub) not in CONVERTERS:
            raise ValueError(f"self.{target} ({type(sub).__name__}) at {where(n)} is not supported; {_supported()}")
        try:
            layer = convert_module(sub, f"self.{target}")
        except (ValueError, TypeError) as err:
            raise type(err)(f"{where(n)}: {err}") from None
        self._refuse_overwritten_input(n, bool(getattr(sub, "inplace", False)))
        index = self._add(n, layer, inputs, target)
        self.env[n] = _Pair(index) if type(sub) in _RECURRENT else index

    def _refuse_overwritten_input(self, n: torch.fx.Node, inplace: bool) -> None:
        source = n.args[0] if n.args else None
        if inplace and isinstance(source, torch.fx.Node) and len(source.users) > 1:
            raise ValueError(
                f"{where(n)} overwrites its input in place (inplace=True), and {source.name!r} is read elsewhere "
                "too: torch would hand those readers the overwritten values; expected inplace=False"
            )

    def _call(self, n: torch.fx.Node) -> None:
        target = n.target
        args = tuple(self._value(a) for a in n.args)
        if self._special(n, target, args):
            return
        convert = FUNCTIONS.get(target)
        what = function_name(target)
        if convert is None:
            raise ValueError(f"{what} at {where(n)} is not supported; {_supported()}")
        tensors: list[int] = []
        call_args, call_kwargs = self._arguments(n, tensors)
        try:
            layer = convert(call_args, call_kwargs)
        except (ValueError, TypeError) as err:
            raise type(err)(f"{what} at {where(n)}: {err}") from None
        self._refuse_overwritten_input(n, n.kwargs.get("inplace") is True)
        self.env[n] = self._add(n, layer, tensors)

    def _special(self, n: torch.fx.Node, target: object, args: tuple[Any, ...]) -> bool:
        """Sizes and the recurrent tuple's element: no layer, a value later nodes read."""
        first = args[0] if args else None
        if target == "size" and isinstance(first, int):
            dim = args[1] if len(args) > 1 else n.kwargs.get("dim")
            self.env[n] = _Size(first, dim) if isinstance(dim, int) else _Shape(first)
            return True
        if target is getattr and isinstance(first, int) and args[1:] == ("shape",):
            self.env[n] = _Shape(first)
            return True
        if target is operator.getitem and isinstance(first, _Shape) and isinstance(args[1], int):
            self.env[n] = _Size(first.index, args[1])
            return True
        if target is operator.getitem and isinstance(first, _Pair):
            refused = _Refused(
                f"element {args[1]!r} of the (output, state) tuple at {where(n)} is not supported; element 0, "
                "the output sequence, is (its final state is not an output of refbp's layer)"
            )
            self.env[n] = first.index if args[1] == 0 else refused  # ``out, _ = self.lstm(x)`` reads no state
            return True
        if target is operator.getitem and isinstance(first, int):
            raise ValueError(
                f"indexing or slicing a tensor (x[{args[1]!r}]) at {where(n)} is not supported; {_supported()}"
            )
        return False

    def _arguments(self, n: torch.fx.Node, tensors: list[int]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The call's arguments with each tensor a TensorArg (its number appended to ``tensors``)
        and each size a SizeOf of one of those tensors."""

        def swap(value: object) -> object:
            if isinstance(value, (tuple, list)):
                return type(value)(swap(v) for v in value)
            if not isinstance(value, torch.fx.Node):
                return value
            got = self.env[value]
            if isinstance(got, _Size):
                return got
            tensors.append(self._tensor(value, n))
            return TensorArg(len(tensors) - 1)

        args = tuple(swap(a) for a in n.args)
        kwargs = {k: swap(v) for k, v in n.kwargs.items()}

        def place(value: object) -> object:
            if isinstance(value, (tuple, list)):
                return type(value)(place(v) for v in value)
            if isinstance(value, _Size):
                if value.index not in tensors:  # read for its size only: one more input
                    tensors.append(value.index)
                return SizeOf(tensors.index(value.index), value.dim)
            if isinstance(value, _Shape):
                raise ValueError(f"{where(n)} uses a whole shape (x.shape, x.size()); not supported: use x.size(d)")
            return value

        return tuple(place(a) for a in args), {k: place(v) for k, v in kwargs.items()}


def _prune(nodes: list[Node], origin: list[torch.fx.Node], output: int) -> tuple[list[Node], list[torch.fx.Node]]:
    """The nodes the output depends on, renumbered (a result nothing reads changes nothing)."""
    live = {output}
    for l in range(output, 0, -1):
        if l in live:
            live.update(nodes[l - 1].inputs)
    number = {old: new for new, old in enumerate([0, *sorted(live - {0})])}
    kept = []
    for l in sorted(live - {0}):
        node = nodes[l - 1]
        kept.append(Node(node.name, node.layer, tuple(number[i] for i in node.inputs), node.module))
    return kept, [origin[l - 1] for l in sorted(live - {0})]


# ---- parameters: ties, names, seeds -----------------------------------------------------------------
def _tie_and_name(module: torch.nn.Module, nodes: list[Node]) -> dict[str, tuple[str, ...]]:
    """Make the layers share one tensor wherever the module uses one nn.Parameter twice (a
    module called twice, or a Parameter assigned to two modules), and return parameter name ->
    its names in ``module.named_parameters()``. A module with buffers used twice is refused."""
    names: dict[int, list[str]] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    by_path = dict(walk_layers([node.layer for node in nodes]))
    first: dict[int, tuple[Key, Tensor]] = {}
    out: dict[str, tuple[str, ...]] = {}
    stateful: dict[int, str] = {}
    devices = sorted({p.device.index or 0 for p in module.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):  # building torch modules to read names draws values
        for l, node in enumerate(nodes, start=1):
            if node.module is None:
                continue
            sub = module.get_submodule(node.module)
            if any(True for _ in sub.buffers(recurse=True)):
                if id(sub) in stateful:
                    raise ValueError(
                        f"self.{node.module} ({type(sub).__name__}) is called twice: its buffers (running statistics) "
                        "would be one state in torch but two copies in refbp; expected a separate module for each use"
                    )
                stateful[id(sub)] = node.module
            single = len(node.layer.torch_modules()) == 1
            for key, relative in node.layer.torch_param_names((l,)).items():
                index, rest = relative.split(".", 1)
                original = sub.get_parameter(rest if single else f"{index}.{rest}")
                owner = by_path[key.layer]
                if id(original) in first:
                    owner.params[key.kind] = first[id(original)][1]
                else:
                    first[id(original)] = (key, owner.params[key.kind])
                    out[str(key)] = tuple(names[id(original)])
    return out


def reseed_dropouts(layers: Sequence[Layer], seed: int) -> None:
    """Give every layer that draws random numbers in training mode (whatever its mode now) its
    own stream: dropout k (counted from 0, depth first) draws from ``seed + k``."""
    random = [layer for _, layer in walk_layers(layers) if _draws_in_training(layer)]
    for k, layer in enumerate(random):
        layer.reseed(derived_seed(seed, k, f"dropout {k} of {len(random)}"))


def _draws_in_training(layer: Layer) -> bool:
    """True for a layer without sub-layers that draws random numbers in training mode, whatever
    its mode now (a Dropout converted from a module in eval may be switched to training later)."""
    if layer.sublayers():
        return False
    mode = layer.training
    layer.set_training(True)
    random = layer.stochastic
    layer.set_training(mode)
    return random


# ---- the conversion ---------------------------------------------------------------------------------
@dataclass
class _Converted:
    net: GraphNetwork
    graph: torch.fx.Graph
    origin: list[torch.fx.Node]


def _convert(module: torch.nn.Module, loss: str | Loss, weight_decay: float, seed: object) -> _Converted:
    seed = check_seed(seed)
    graph = trace(module)
    converter = _Converter(module)
    output = converter.run(graph)
    nodes, origin = _prune(converter.nodes, converter.origin, output)
    torch_names = _tie_and_name(module, nodes)
    reseed_dropouts([node.layer for node in nodes], seed)
    net = GraphNetwork(nodes, loss, weight_decay=weight_decay, torch_names=torch_names)
    return _Converted(net, graph, origin)


def graph_from_torch(
    module: torch.nn.Module,
    *,
    loss: str | Loss,
    weight_decay: float,
    seed: object,
    example_inputs: tuple[Tensor, ...] | None,
) -> GraphNetwork:
    """``from_torch`` for a module that is not a torch.nn.Sequential (refbp.nn.convert documents it)."""
    converted = _convert(module, loss, weight_decay, seed)
    built = example_inputs is None
    inputs = _example_inputs(module, converted.net) if example_inputs is None else example_inputs
    if inputs is not None:
        _self_check(module, converted, inputs, built=built)
    return converted.net


def capture_graph_noise(module: torch.nn.Module, inputs: tuple[Tensor, ...]) -> dict[tuple[int, ...], Tensor]:
    """``capture_noise`` for a traced module: the dropout keep-masks torch draws, by node path."""
    converted = _convert(module, "mse", 0.0, 0)
    return _noise(converted, _run(module, converted.graph, inputs)[1])


def _example_inputs(module: torch.nn.Module, net: GraphNetwork) -> tuple[Tensor, ...] | None:
    """A small input built from the first module that fixes the input's size, or None."""
    floats = [p for p in module.parameters() if p.dtype in FLOAT_DTYPES]
    if not floats:
        return None
    dtype, device = floats[0].dtype, floats[0].device
    generator = torch.Generator().manual_seed(0)  # its own generator: torch's global state is untouched
    first = next((module.get_submodule(node.module) for node in net.nodes if node.module is not None), None)
    if isinstance(first, torch.nn.Embedding):
        return (torch.randint(0, first.num_embeddings, (EXAMPLE_BATCH, 3), generator=generator).to(device),)
    shape: tuple[int, ...] | None = None
    for attribute in ("in_features", "num_features"):
        value = getattr(first, attribute, None)
        if isinstance(value, int):
            shape = (EXAMPLE_BATCH, value)
    if isinstance(first, torch.nn.LayerNorm) and len(first.normalized_shape) == 1:
        shape = (EXAMPLE_BATCH, first.normalized_shape[0])
    if isinstance(first, (torch.nn.Conv1d, torch.nn.Conv2d)):
        shape = (EXAMPLE_BATCH, first.in_channels, *(8,) * (2 if isinstance(first, torch.nn.Conv2d) else 1))
    if shape is None:
        return None
    X = torch.empty(shape, dtype=torch.float64).uniform_(-1.0, 1.0, generator=generator)
    return (X.to(dtype=dtype, device=device),)


# ---- running the traced module ------------------------------------------------------------------------
def _rng_state(device: torch.device) -> Tensor:
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _set_rng_state(device: torch.device, state: Tensor) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


class _Recorder(torch.fx.Interpreter):
    """Runs the traced module node by node, keeping each node's output (a copy: a later
    in-place call may overwrite it) and each dropout call's keep-mask, drawn again from
    torch's random state saved before the call (refbp.nn.torch_run says why)."""

    def __init__(self, module: torch.fx.GraphModule) -> None:
        super().__init__(module)
        self.outputs: dict[str, Tensor] = {}
        self.masks: dict[str, Tensor] = {}

    def _dropout(self, n: torch.fx.Node) -> float | None:
        """p when the node is a dropout that draws a mask (training mode, p > 0), else None."""
        if n.op == "call_module":
            m = self.module.get_submodule(str(n.target))
            return float(m.p) if type(m) is torch.nn.Dropout and m.training and m.p > 0 else None
        if n.op == "call_function" and n.target is F.dropout:
            p = n.kwargs.get("p", n.args[1] if len(n.args) > 1 else 0.5)
            training = n.kwargs.get("training", n.args[2] if len(n.args) > 2 else True)
            return float(p) if training and p > 0 else None  # type: ignore[operator,arg-type]
        return None

    def run_node(self, n: torch.fx.Node) -> Any:
        p = self._dropout(n)
        saved = None
        if p is not None:
            x = self.fetch_args_kwargs_from_env(n)[0][0]
            saved = (_rng_state(x.device), x.detach().clone())
        result = super().run_node(n)
        if saved is not None and p is not None:
            self.masks[n.name] = _recover_mask(saved[0], saved[1], result, p)
        value = result[0] if isinstance(result, tuple) and result and isinstance(result[0], Tensor) else result
        if isinstance(value, Tensor):
            self.outputs[n.name] = value.detach().clone()
        return result


def _recover_mask(state: Tensor, x: Tensor, out: Tensor, p: float) -> Tensor:
    """The keep-mask of a dropout call on ``x`` that gave ``out``, from the state before it."""
    left = _rng_state(x.device)
    _set_rng_state(x.device, state)
    mask = F.dropout(torch.ones_like(x), p, training=True) != 0  # the call's draw again
    _set_rng_state(x.device, left)
    seen = x != 0
    if not torch.equal((out != 0)[seen], mask[seen]):
        raise ValueError(
            f"could not recover a dropout keep-mask on an input of {describe(x)}: drawing again from torch's "
            "saved random state gave another mask (a generator other than torch's default one?)"
        )
    return mask


def _run(
    module: torch.nn.Module, graph: torch.fx.Graph, inputs: tuple[Tensor, ...], *, float64: bool = False
) -> tuple[Tensor, _Recorder]:
    """Run a copy of the traced module on ``inputs`` (in float64 when asked: parameters,
    buffers and float inputs), torch's random state restored afterwards."""
    twin = torch.fx.GraphModule(copy.deepcopy(module), graph)
    if float64:
        twin = twin.to(torch.float64)
        inputs = tuple(t.to(torch.float64) if t.is_floating_point() else t for t in inputs)
    recorder = _Recorder(twin)
    devices = sorted({t.device.index or 0 for t in (*inputs, *twin.parameters()) if t.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        output = recorder.run(*inputs)
    return output, recorder


def _noise(converted: _Converted, recorder: _Recorder) -> dict[tuple[int, ...], Tensor]:
    """The masks torch drew, by the path of the refbp node (a dropout) that computes each call."""
    noise: dict[tuple[int, ...], Tensor] = {}
    for l, n in enumerate(converted.origin, start=1):
        if n.name in recorder.masks and converted.net.nodes[l - 1].layer.stochastic:
            noise[(l,)] = recorder.masks[n.name]
    return noise


def _self_check(module: torch.nn.Module, converted: _Converted, inputs: tuple[Tensor, ...], *, built: bool) -> None:
    """Refuse the conversion, naming the first node where the network and the module differ.

    Both run in float64 (copies; the module's own parameters, exactly), as the Sequential's
    self-check does: "the same function" is a statement about the maps, and in float32 rounding
    can pass for a difference (x - mean is 0 exactly in refbp and u-sized in torch's kernels)."""
    net = converted.net.to(dtype=torch.float64)
    inputs = tuple(t.to(torch.float64) if t.is_floating_point() else t for t in inputs)
    try:
        _, recorder = _run(module, converted.graph, inputs, float64=True)
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        if built:  # the module refuses the input we made up for it: nothing to compare
            return
        raise ValueError(f"from_torch: the module fails on example_inputs ({_describe(inputs)}): {err}") from err
    try:
        cache = net.forward(inputs[0], keep_intermediates=True, update_stats=False, noise=_noise(converted, recorder))
    except (ValueError, TypeError) as err:
        if built:
            return
        raise ValueError(
            f"from_torch: the module runs on example_inputs ({_describe(inputs)}) but the converted network refuses "
            f"them: {err}"
        ) from err
    for l, n in enumerate(converted.origin, start=1):
        differs = difference(cache.a[l], recorder.outputs[n.name])
        if differs is not None:
            raise ValueError(
                f"from_torch: the converted network computes another function than the module: at {where(n)}, "
                f"{net.nodes[l - 1].layer.describe()}, {differs} (each module in its own train/eval mode, torch's "
                f"dropout masks, input {_describe(inputs)}); this is a refbp bug, please report it with the module"
            )


def _describe(inputs: tuple[Tensor, ...]) -> str:
    return "; ".join(describe(t) for t in inputs)
