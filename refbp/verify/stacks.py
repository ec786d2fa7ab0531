"""StackSpec: a layer stack described in JSON, built reproducibly from one seed, shrinkable.

    {"input": 4, "layers": [["linear", 8], ["tanh"], ["layernorm"], ["residual", [["linear", 8], ["relu"]]],
                            ["dropout", 0.2], ["linear", 3]],
     "loss": "mse", "seed": 0, "batch": 4, "training": true}

``input`` is the width d_0 of X (N, d_0), {"vocab": V, "length": T} for int64 token indices
(N, T) read by a first ["embedding", d] layer, or {"shape": [C, H, W]} for X of shape
(N, C, H, W) (any shape of one observation: (C, L) for Conv1d, (T, d) for a recurrent layer),
with "integers": true for entries drawn from -2..2 (pooling windows then hold ties). Each layer
is [kind, *arguments]:

    ["linear", d_out]  ["linear", d_out, {"bias": false}]        torch.nn.Linear
    ["<activation>"]   e.g. ["tanh"], ["gelu_tanh"], ["leaky_relu", {"slope": 0.2}]
    ["layernorm"]      ["layernorm", {"affine": false}]  ["layernorm", {"bias": false}]
    ["batchnorm"]      ["batchnorm", {"affine": false}]          on (N, C)
    ["dropout", p]     ["embedding", d]     ["flatten"]     ["residual", [layers...]]
    ["conv2d", C_out, {...}]  ["conv1d", C_out]  ["maxpool", {...}]  ["avgpool", {...}]
    ["adaptive_avgpool", [h, w]]  ["batchnorm2d"]  ["groupnorm", G]  ["softmax", dim]
    ["logsoftmax", dim]  ["rnn", H]  ["lstm", H]  ["gru", H]       refbp.verify.curriculum_stacks

Parameters are drawn on the CPU in float64 from ``seed`` (linear maps as torch.nn.Linear
initialises them; norms' gamma and beta away from 1 and 0, and BatchNorm's running statistics
away from 0 and 1, so that no term of a backward pass hides behind a neutral value), then
converted to ``dtype`` and ``device``. ``refbp check --case`` accepts the same JSON. An optional
"reduction": "sum" (or "mean") builds the loss with that reduction (refbp.nn.losses).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..nn.activations import ACTIVATIONS, Activation, elu, leaky_relu, softplus
from ..nn.batchnorm import BatchNorm1d
from ..nn.dropout import Dropout
from ..nn.elementwise import Elementwise
from ..nn.embedding import Embedding
from ..nn.flatten import Flatten
from ..nn.layer import Layer
from ..nn.layernorm import LayerNorm
from ..nn.linear import Linear
from ..nn.losses import get_loss
from ..nn.network import Network, resolve_device
from ..nn.residual import Residual
from ..nn.validation import check_int, check_seed
from .cases import DTYPES, Case, check_choice, check_device, check_number, check_spec_keys
from .curriculum_stacks import CURRICULUM_ARGUMENTS, CURRICULUM_KINDS, CURRICULUM_OPTIONS, build_curriculum_layer

__all__ = ["LAYER_KINDS", "StackSpec", "build_layers"]

LAYER_KINDS = (
    "linear", "layernorm", "batchnorm", "dropout", "embedding", "flatten", "residual", *CURRICULUM_KINDS, *ACTIVATIONS
)  # fmt: skip
"""The kinds a layer of a StackSpec may have (activations by name)."""

MAX_STACK_LAYERS = 1_000
"""The most layers a StackSpec may describe (nested ones included): far more than any network
people check by hand; a larger spec is refused before anything is built."""


_OPTIONS: dict[str, dict[str, type]] = {
    "linear": {"bias": bool},
    "layernorm": {"affine": bool, "bias": bool},
    "batchnorm": {"affine": bool},
    "leaky_relu": {"slope": float},
    "elu": {"alpha": float},
    "softplus": {"beta": float, "threshold": float},
}
"""The options each kind takes in its trailing {...}, with their types (float: any finite
number); a kind not listed takes none."""

_ARGUMENTS: dict[str, tuple[str, ...]] = {
    "linear": ("d_out",), "dropout": ("p",), "embedding": ("d",), "residual": ("layers",), **CURRICULUM_ARGUMENTS,
}  # fmt: skip
"""The positional arguments each kind takes after its name; a kind not listed takes none."""


def _parse(spec: object, where: str) -> tuple[str, list[Any], dict[str, Any]]:
    """``spec`` as (kind, positional arguments, options), every one checked against what the
    kind takes: an unknown kind, an unknown option ("bais"), an option of the wrong type
    ("bias": "no") or too many arguments (["tanh", 3]) is refused, naming ``where``."""
    if isinstance(spec, (str, bytes)) or not isinstance(spec, Sequence) or not spec or not isinstance(spec[0], str):
        raise ValueError(f"{where}={spec!r}: expected a list [kind, *arguments], kind one of {list(LAYER_KINDS)}")
    kind, args = spec[0], list(spec[1:])
    if kind not in LAYER_KINDS:
        raise ValueError(f"{where}: unknown layer kind {kind!r}; expected one of {list(LAYER_KINDS)}")
    options: dict[str, Any] = args.pop() if args and isinstance(args[-1], dict) else {}
    allowed = _OPTIONS.get(kind, {})
    checks = CURRICULUM_OPTIONS.get(kind, {})
    for key, value in options.items():
        if key not in allowed and key not in checks:
            known = sorted([*allowed, *checks])
            expected = f"some of {known}" if known else "none"
            raise ValueError(f"{where}: {kind} has no option {key!r}; its options are {expected}")
        if key in checks:
            checks[key](value, f"{where}: {kind}'s option {key!r}")
            continue
        wanted = allowed[key]
        if wanted is bool and not isinstance(value, bool):
            raise TypeError(f"{where}: {kind}'s option {key!r}={value!r} must be true or false")
        if wanted is float:
            check_number(value, f"{where}: {kind}'s option {key!r}", positive=False, signed=True)
    names = _ARGUMENTS.get(kind, ())
    if len(args) > len(names):
        takes = f"takes {', '.join(names)}" if names else "takes no arguments"
        raise ValueError(
            f"{where}={_lists(spec)!r}: {kind} {takes}, got {len(args)} ({', '.join(map(repr, args))}); "
            "options go in a trailing {...}"
        )
    return kind, args, options


def _activation(name: str, options: dict[str, Any]) -> Activation:
    if name == "leaky_relu" and "slope" in options:
        return leaky_relu(float(options["slope"]))
    if name == "elu" and "alpha" in options:
        return elu(float(options["alpha"]))
    if name == "softplus" and ("beta" in options or "threshold" in options):
        return softplus(float(options.get("beta", 1.0)), float(options.get("threshold", 20.0)))
    return ACTIVATIONS[name]


class _Builder:
    """Draws each layer's parameters in turn from one float64 CPU generator."""

    def __init__(self, seed: int, batch: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.seed = seed
        self.batch = batch
        self.count = 0

    def uniform(self, shape: tuple[int, ...], low: float, high: float) -> Tensor:
        return torch.empty(shape, dtype=torch.float64).uniform_(low, high, generator=self.generator)

    def layer(self, spec: Sequence[Any], shape: tuple[int, ...], where: str) -> tuple[Layer, tuple[int, ...]]:
        """The layer described by ``spec`` for an input of ``shape`` (without the batch), and its output shape."""
        kind, args, options = _parse(spec, where)
        self.count += 1
        d = shape[-1] if shape else 0
        if kind in CURRICULUM_KINDS:
            return build_curriculum_layer(kind, args, options, shape, self.batch, self.uniform, where)
        if kind == "linear":
            d_out = check_int(args[0] if args else None, f"{where}[1] (d_out)", minimum=1, maximum=1 << 20)
            bound = 1.0 / math.sqrt(d)
            W = self.uniform((d_out, d), -bound, bound)
            b = self.uniform((d_out,), -bound, bound) if options.get("bias", True) else None
            return Linear(W, b), (*shape[:-1], d_out)
        if kind in ACTIVATIONS:
            return Elementwise(_activation(kind, options)), shape
        if kind == "layernorm":
            affine, bias = options.get("affine", True), options.get("bias", True)
            gamma = self.uniform((d,), 0.5, 1.5) if affine else None
            beta = self.uniform((d,), -0.5, 0.5) if affine and bias else None
            return LayerNorm(gamma, beta, d=d), shape
        if kind == "batchnorm":
            if len(shape) != 1:
                raise ValueError(
                    f"{where}: batchnorm needs (N, C) inputs, this one is (N, {', '.join(map(str, shape))})"
                )
            affine = options.get("affine", True)
            gamma = self.uniform((d,), 0.5, 1.5) if affine else None
            beta = self.uniform((d,), -0.5, 0.5) if affine else None
            mean, var = self.uniform((d,), -0.5, 0.5), self.uniform((d,), 0.5, 1.5)
            return BatchNorm1d(gamma, beta, C=d, running_mean=mean, running_var=var), shape
        if kind == "dropout":
            p = check_number(args[0], f"{where}[1] (p)", positive=False) if args else 0.5
            if not p < 1.0:
                raise ValueError(f"{where}[1] (p)={args[0]!r} is out of range; expected a probability in [0, 1)")
            return Dropout(p, seed=(self.seed + 7919 * self.count) % 2**32), shape
        if kind == "flatten":
            return Flatten(), (math.prod(shape),)
        if kind == "residual":
            inner_specs = args[0] if args else []
            if not isinstance(inner_specs, (list, tuple)) or not inner_specs:
                raise ValueError(f"{where}: residual needs a non-empty list of inner layers")
            inner, inner_shape = [], shape
            for j, inner_spec in enumerate(inner_specs):
                layer, inner_shape = self.layer(inner_spec, inner_shape, f"{where}[1][{j}]")
                inner.append(layer)
            if inner_shape != shape:
                raise ValueError(
                    f"{where}: the residual's inner layers map {shape} to {inner_shape}; they must keep it"
                )
            return Residual(*inner), shape
        if kind == "embedding":
            raise ValueError(f"{where}: an embedding must be the first layer, reading token indices")
        raise ValueError(f"{where}: unknown layer kind {kind!r}; expected one of {list(LAYER_KINDS)}")


def build_layers(spec: StackSpec) -> tuple[list[Layer], tuple[int, ...]]:
    """The float64 CPU layers of ``spec`` and the output shape (without the batch)."""
    builder = _Builder(spec.seed, spec.batch)
    layers: list[Layer] = []
    specs = list(spec.layers)
    if spec.vocab:
        first = specs.pop(0) if specs else None
        if not (isinstance(first, (list, tuple)) and first and first[0] == "embedding"):
            raise ValueError('an input of token indices needs ["embedding", d] as the first layer')
        _, args, _ = _parse(first, "layers[0]")
        d = check_int(args[0] if args else None, "layers[0][1] (d)", minimum=1, maximum=1 << 16)
        layers.append(Embedding(torch.randn(spec.vocab, d, dtype=torch.float64, generator=builder.generator)))
        shape: tuple[int, ...] = (spec.input, d)
    else:
        shape = spec.shape or (spec.input,)
    for k, layer_spec in enumerate(specs, start=len(layers)):
        layer, shape = builder.layer(layer_spec, shape, f"layers[{k}]")
        layers.append(layer)
    return layers, shape


@dataclass(frozen=True)
class StackSpec:
    """A layer stack, a loss and a point, in JSON (see the module docstring).

    Attributes:
        input: d_0, the width of X; or T, the number of tokens per row, when ``vocab`` is set;
            or shape[0] when ``shape`` is set.
        layers: the layers, each [kind, *arguments] as nested tuples.
        loss: a loss name.
        seed: draws parameters, dropout seeds and the point.
        vocab: V for an input of token indices (0 for a float input).
        shape: one observation's shape when X has more than one dimension besides the batch
            ((C, H, W) images, (C, L) or (T, d) sequences); () for rows (N, d_0) or tokens.
        integers: X's entries are integers from -2..2 (stored as floats): ties on purpose.
        dtype, device: of the network and the point.
        batch: N.
        training: training mode (BatchNorm's batch statistics, Dropout's masks) or eval mode.
        weight_decay: lambda.
        reduction: the loss's reduction, "mean" or "sum"; None for the loss's own (torch's mean).

    The kind "stack" of refbp.verify.specs, told apart by "layers".
    """

    kind: ClassVar[str] = "stack"
    input: int
    layers: tuple[Any, ...]
    loss: str
    seed: int = 0
    vocab: int = 0
    dtype: str = "float64"
    device: str = "cpu"
    batch: int = 4
    training: bool = True
    weight_decay: float = 0.0
    reduction: str | None = None
    shape: tuple[int, ...] = ()
    integers: bool = False
    label: str = field(default="", compare=False)

    def build(self) -> Case[Network]:
        """The network and (X, y), drawn from ``seed``."""
        layers, out_shape = build_layers(self)
        loss = get_loss(self.loss, reduction=self.reduction)
        net64 = Network(layers, loss, weight_decay=self.weight_decay).train(self.training)
        generator = torch.Generator().manual_seed((self.seed + 1) % 2**32)
        N = self.batch
        if self.vocab:
            X = torch.randint(0, self.vocab, (N, self.input), generator=generator)  # (N, T) token indices
        elif self.integers:
            X = torch.randint(-2, 3, (N, *(self.shape or (self.input,))), generator=generator).double()  # ties
        elif self.shape:
            X = torch.empty(N, *self.shape, dtype=torch.float64).uniform_(-2.0, 2.0, generator=generator)
        else:
            X = torch.empty(N, self.input, dtype=torch.float64).uniform_(-2.0, 2.0, generator=generator)
        y = loss.sample_targets((N, *out_shape), generator)
        dtype, device = getattr(torch, self.dtype), resolve_device(self.device)
        net = net64.to(dtype=dtype, device=device).train(self.training)
        X = X.to(device=device, dtype=dtype if X.is_floating_point() else X.dtype)
        y = y.to(device=device, dtype=dtype if y.is_floating_point() else y.dtype)
        return Case(spec=self, net=net, X=X, y=y)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object ``from_dict`` reads back."""
        given: Any = self.input
        if self.vocab:
            given = {"vocab": self.vocab, "length": self.input}
        elif self.shape or self.integers:
            given = {"shape": list(self.shape or (self.input,)), **({"integers": True} if self.integers else {})}
        data = {
            "input": given,
            "layers": _lists(self.layers), "loss": self.loss, "seed": self.seed, "dtype": self.dtype,
            "device": self.device, "batch": self.batch, "training": self.training, "weight_decay": self.weight_decay,
        }  # fmt: skip
        return data if self.reduction is None else {**data, "reduction": self.reduction}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StackSpec:
        """Build from a dict such as ``refbp check --case`` reads; unknown keys are refused."""
        allowed = {
            "input", "layers", "loss", "seed", "dtype", "device", "batch", "training", "weight_decay", "reduction",
        }  # fmt: skip
        check_spec_keys(data, allowed=allowed, required=("input", "layers", "loss"), what="stack spec")
        vocab, width, integers = 0, data["input"], False
        shape: tuple[int, ...] = ()
        if isinstance(width, dict) and ("shape" in width or "integers" in width):
            shape, integers = _input_shape(width)
            width = shape[0]
        elif isinstance(width, dict):
            vocab = check_int(width.get("vocab"), "input.vocab", minimum=1, maximum=1 << 20)
            width = width.get("length")
        width = check_int(width, "input", minimum=1, maximum=1 << 20)
        layers = data["layers"]
        if not isinstance(layers, list) or not layers:
            raise ValueError(f"layers={layers!r}: expected a non-empty list of [kind, *arguments]")
        if _count(layers) > MAX_STACK_LAYERS:
            raise ValueError(f"the spec has {_count(layers)} layers; at most MAX_STACK_LAYERS = {MAX_STACK_LAYERS}")
        if not isinstance(data["loss"], str):
            raise TypeError(f"loss={data['loss']!r} must be a loss name (a str), got {type(data['loss']).__name__}")
        reduction = data.get("reduction")
        get_loss(data["loss"], reduction=reduction)  # a reduction that is not "mean" or "sum": a ValueError
        training = data.get("training", True)
        if not isinstance(training, bool):
            raise TypeError(f"training={training!r} must be true or false")
        spec = cls(
            input=width, layers=_tuples(layers), loss=data["loss"], seed=check_seed(data.get("seed", 0)), vocab=vocab,
            dtype=check_choice(data.get("dtype", "float64"), "dtype", DTYPES),
            device=check_device(data.get("device", "cpu")),
            batch=check_int(data.get("batch", 4), "batch", minimum=1, maximum=1 << 20), training=training,
            weight_decay=check_number(data.get("weight_decay", 0.0), "weight_decay", positive=False),
            reduction=reduction,
            shape=shape if len(shape) > 1 else (), integers=integers,
        )  # fmt: skip
        build_layers(spec)  # every layer must make sense before anything else is drawn
        return spec

    def components(self) -> list[str]:
        """The layer kinds (BatchNorm and Dropout with their mode), residuals' inner ones included."""
        mode = "train" if self.training else "eval"
        found: set[str] = set()
        todo = list(self.layers)
        while todo:
            layer = todo.pop()
            kind = layer[0]
            found.add(f"{kind} ({mode})" if kind in ("batchnorm", "batchnorm2d", "dropout") else kind)
            if kind == "residual":
                todo.extend(layer[1])
        return sorted(found)

    def describe(self) -> str:
        """The stack in one short line."""
        first = f"tokens {self.vocab}x{self.input}" if self.vocab else f"in {self.input}"
        if self.shape:
            first = "in " + "x".join(map(str, self.shape))
        first += " integers" if self.integers else ""
        parts = [first, *(_short(layer) for layer in self.layers)]
        mode = "" if self.training else ", eval"
        loss = self.loss if self.reduction is None else f"{self.loss} ({self.reduction})"
        return " > ".join(parts) + f", {loss}, N={self.batch}{mode}"

    def command(self) -> str:
        """The shell command that checks exactly this case."""
        return f"refbp check --case '{self.to_json()}'"


def _input_shape(given: dict[str, Any]) -> tuple[tuple[int, ...], bool]:
    """{"shape": [...], "integers": bool}: one observation's shape and whether X holds integers."""
    unknown = sorted(set(given) - {"shape", "integers"})
    if unknown:
        raise ValueError(f"input={given!r}: unknown keys {unknown}; expected 'shape' and optionally 'integers'")
    shape = given.get("shape")
    if not isinstance(shape, list) or not 1 <= len(shape) <= 3:
        raise ValueError(f"input.shape={shape!r}: expected a list of 1 to 3 sizes, e.g. [C, H, W]")
    sizes = tuple(check_int(n, f"input.shape[{i}]", minimum=1, maximum=1 << 16) for i, n in enumerate(shape))
    integers = given.get("integers", False)
    if not isinstance(integers, bool):
        raise TypeError(f"input.integers={integers!r} must be true or false")
    return sizes, integers


def _short(layer: Any) -> str:
    kind, args = layer[0], [a for a in layer[1:] if not isinstance(a, dict)]
    if kind == "residual":
        return "res(" + " > ".join(_short(inner) for inner in args[0]) + ")"
    return kind + ("" if not args else " " + " ".join(str(a) for a in args))


def _count(layers: Any) -> int:
    total = 0
    for layer in layers:
        total += 1
        nested = isinstance(layer, (list, tuple)) and len(layer) > 1 and layer[0] == "residual"
        if nested and isinstance(layer[1], (list, tuple)):
            total += _count(layer[1])
    return total


def _tuples(value: Any) -> Any:
    """Lists as tuples, all the way down (a frozen, hashable spec); dicts kept."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def _lists(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_lists(v) for v in value]
    return value
