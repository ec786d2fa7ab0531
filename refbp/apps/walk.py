"""``refbp explain`` for any network: every layer walked forward and backward, its equation,
its shapes, its numbers, and torch's verdict on each.

    refbp explain --stack '{"input": 3, "layers": [["linear", 4], ["layernorm"], ["linear", 2]], "loss": "mse"}'
    refbp explain --model layers        # a built-in stack with LayerNorm and BatchNorm

Each layer brings its own equations (``Layer.equations``): the forward pass shows what the
layer computed from its input (checked against the layer's torch oracle, torch.nn.functional),
the backward pass what it hands down (checked against torch.autograd), layer L down to 1. The
seed's MLP is walked here too; refbp.apps.explain presents that walk in the seed's numbered
equations (1)-(9). refbp.apps.render prints either.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..models.gpt_cases import GPTSpec
from ..nn.keys import Key
from ..nn.layer import Layer, Params
from ..nn.network import Cache, Network
from ..nn.stack import walk_layers
from ..verify.compare import Comparison, compare
from ..verify.finite_diff import PieceRecorder
from ..verify.reference import autograd_gradients
from ..verify.stacks import StackSpec
from ..verify.tolerances import tolerance_for
from .render import Entry, Page, Quantity, agrees, render
from .tensor_format import shape_text

__all__ = ["BUILT_IN", "LayerStep", "NetworkWalk", "walk_network"]

BUILT_IN: dict[str, StackSpec | GPTSpec] = {
    "gpt": GPTSpec(vocab_size=5, block_size=4, n_layer=1, n_head=2, n_embd=4, batch=1, length=3, seed=0),
    "layers": StackSpec(
        input=3,
        layers=(("linear", 4), ("layernorm",), ("tanh",), ("residual", (("linear", 4), ("relu",))),
                ("batchnorm",), ("dropout", 0.25), ("linear", 2)),
        loss="mse", seed=0, batch=4,
    ),
}  # fmt: skip
"""Built-in networks for ``refbp explain --model``: "layers" has a LayerNorm, a residual, a
BatchNorm1d in training mode and a dropout; "gpt" is one transformer block of two heads over
three tokens, its LM head tied to the token embedding."""


@dataclass(frozen=True)
class LayerStep:
    """One layer's step of the walk.

    Attributes:
        phase: "forward" or "backward".
        path: the layer's path, "3" or "4.1".
        title: the layer, e.g. "LayerNorm(4)".
        formula: its equation (forward) or equations (backward).
        shapes: input and output shapes.
        values: (label, tensor, torch's verdict or None) for each quantity shown.
    """

    phase: str
    path: str
    title: str
    formula: str
    shapes: str
    values: tuple[tuple[str, Tensor, Comparison | None], ...]


@dataclass(frozen=True)
class NetworkWalk:
    """The whole walk: the network, the point, the steps.

    Attributes:
        grads: refbp's manual gradients by name (``backward(...).as_dict()``), what the steps show.
        reference: torch.autograd's gradients by the same names.
        cache: the manual forward pass (the layers' caches: MaxPool2d's argmax, ...).
    """

    net: Network
    X: Tensor
    y: Tensor
    description: str
    steps: tuple[LayerStep, ...]
    grads: Mapping[str, Tensor] = field(default_factory=dict, repr=False)
    reference: Mapping[str, Tensor] = field(default_factory=dict, repr=False)
    cache: Cache | None = field(default=None, repr=False)

    @property
    def checks(self) -> list[Comparison]:
        """torch's verdicts, in the order of the walk."""
        return [check for step in self.steps for _, _, check in step.values if check is not None]

    @property
    def passed(self) -> bool:
        """True when every quantity agrees with torch."""
        return all(agrees(check) for check in self.checks)

    def value(self, phase: str, label: str) -> tuple[Tensor, Comparison | None]:
        """The quantity shown as ``label`` ("z(1)", "dJ/dW2") in ``phase``, and torch's verdict."""
        for step in self.steps:
            if step.phase == phase:
                for shown, tensor, check in step.values:
                    if shown == label:
                        return tensor, check
        raise KeyError(f"the walk shows no {label!r} in its {phase} pass")

    def page(self) -> Page:
        """The walk as the renderer's Page: one entry per layer, forward then backward."""
        sections = {"forward": "Forward pass", "backward": "Backward pass, layer L down to 1"}
        entries = tuple(
            Entry(
                sections[step.phase], f"[{step.path}]", step.title, step.shapes,
                tuple(Quantity(label, value, check) for label, value, check in step.values),
                formula=step.formula, code=False,
            )
            for step in self.steps
        )  # fmt: skip
        intro = (
            f"{self.description}. N = {self.X.shape[0]}, float64. Forward values are checked against each "
            "layer's torch oracle (torch.nn.functional), gradients against torch.autograd."
        )
        return Page("backpropagation through any network, one layer at a time", intro, entries)

    def render(self, *, markdown: bool = False, ascii_only: bool = False) -> str:
        """The walk as 80-column text or as Markdown (refbp.apps.render)."""
        return render(self.page(), markdown=markdown, ascii_only=ascii_only)


def walk_network(net: Network, X: Tensor, y: Tensor, *, description: str = "") -> NetworkWalk:
    """Run ``net`` forward and backward at (X, y) (float64), keeping every step and torch's verdict."""
    tol = tolerance_for(torch.float64)
    cache = net.forward(X, update_stats=False)
    grads = net.backward(cache, y).as_dict()
    record = PieceRecorder()  # the oracle's forward, every intermediate kept by key
    with torch.no_grad():
        params = net.oracle_params(dtype=torch.float64, device="cpu")
        noise = {path: mask.cpu() for path, mask in cache.noise.items()}
        X64 = X.detach().cpu()
        X64 = X64.to(torch.float64) if X64.is_floating_point() else X64
        J_torch = net.torch_J(X64, y.detach().cpu(), Params(params, net.ties), noise, record)
    _, reference = autograd_gradients(net, X, y, dtype=torch.float64, noise=cache.noise)

    manual: dict[Key, Tensor] = {Key("X"): cache.a[0]}
    for l, layer in enumerate(net.layers, start=1):
        manual[Key("a", (l,))] = cache.a[l]
        manual.update(layer.cached_values(cache.saved[l], (l,)))
    inputs: dict[tuple[int, ...], Tensor] = {}

    def input_of(path: tuple[int, ...]) -> Tensor:
        parent, j = path[:-1], path[-1]
        if j > 1:
            return manual[Key("a", (*parent, j - 1))]
        return manual[Key("X")] if not parent else input_of(parent)

    def forward_check(key: Key) -> Comparison | None:
        torch_value = record.values.get(key)
        return None if torch_value is None else compare(str(key), "torch", manual[key], torch_value, tol)

    steps: list[LayerStep] = []
    walked = list(walk_layers(net.layers))
    for path, layer in walked:
        inputs[path] = input_of(path)
        where = ".".join(map(str, path))
        # everything the layer computed, its parameters aside (a recurrent layer's every step too)
        shown = [key for key in layer.keys(path) if key.kind not in layer.params and key in manual]
        if layer.sublayers():
            shown = [Key("a", path)]
        values = tuple(
            (f"{key.kind}({'.'.join(map(str, key.layer))})", manual[key], forward_check(key)) for key in shown
        )
        out = manual[Key("a", path)]
        steps.append(LayerStep("forward", where, layer.describe(), layer.equations()[0],
                               f"{shape_text(inputs[path])} -> {shape_text(out)}", values))  # fmt: skip
    loss_check = compare("J", "torch", net.loss(cache, y), J_torch, tol)
    steps.append(LayerStep("forward", "J", f"loss {net.loss_name}", net.loss_fn.equation.split(";")[0].strip(),
                           f"{shape_text(cache.y_hat)} -> ()", (("J", net.loss(cache, y), loss_check),)))  # fmt: skip
    for path, layer in reversed(walked):
        where = ".".join(map(str, path))
        names = [str(key) for key in layer.keys(path) if str(key) in grads and key.kind != "a"]
        if layer.sublayers():
            names = [str(key) for key in layer.keys(path)[-1:] if str(key) in grads]
        below = _below(path, walked)
        arriving = [str(Key("a", path))] if path == (net.L,) else []  # where the backward pass starts
        values = tuple(
            (f"dJ/d{name}", grads[name], compare(name, "autograd", grads[name], reference[name], tol))
            for name in [*arriving, *names, *([below] if below else [])]
            if name in grads
        )
        shapes = f"{shape_text(grads[str(Key('a', path))])} -> {shape_text(inputs[path])}"
        formula = layer.equations()[1] or "(no backward step)"
        steps.append(LayerStep("backward", where, layer.describe(), formula, shapes, values))
    return NetworkWalk(net, X, y, description or net.describe(), tuple(steps), grads, reference, cache)


def _below(path: tuple[int, ...], walked: list[tuple[tuple[int, ...], Layer]]) -> str | None:
    """The name of what layer ``path`` hands down: the previous layer's output, or X."""
    if path == (1,):
        return "X"
    parent, j = path[:-1], path[-1]
    if j > 1:
        return str(Key("a", (*parent, j - 1)))
    return None  # the first layer inside a composite hands down to the composite itself
