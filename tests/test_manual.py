"""The manual path is honestly manual: no autograd anywhere in it, provably.

Three independent proofs: (1) it runs with autograd switched off globally and under
inference_mode, returning tensors that require no grad; (2) it still works when every entry
point into autograd raises; (3) its source contains no reference to autograd at all."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn

import refbp
import refbp.nn
import refbp.verify.reference
from refbp.models.gpt_cases import GPTSpec
from refbp.nn.convert import from_torch
from refbp.nn.layers import recurrent_from_torch
from refbp.nn.network import Network
from refbp.strategies import ModuleCase
from refbp.verify.cases import Case, CaseSpec
from refbp.verify.stacks import StackSpec

MANUAL_MODULES = [
    *(importlib.import_module(f"refbp.nn.{m.name}") for m in pkgutil.iter_modules(refbp.nn.__path__)),
    *(importlib.import_module(f"refbp.models.{name}") for name in ("gpt", "gpt_config", "gpt_load")),
    *(importlib.import_module(f"refbp.distributed.{name}") for name in ("data_parallel", "recipe", "normalisation")),
]
"""The manual path: every module of refbp.nn (layers, networks, activations, losses), the GPT,
and the data-parallel step (refbp.distributed.ddp, the DDP reference, uses autograd by design)."""

FORBIDDEN_ATTRIBUTES = {"autograd", "func", "requires_grad_", "retain_grad", "grad", "enable_grad", "vmap", "jacrev"}

STACK = {"loss": "cross_entropy", "seed": 5, "batch": 4, "training": True}


@dataclass(frozen=True)
class RecurrentCase:
    """A recurrent network: Sequential(Embedding, cell of 2 layers, Linear) on characters with
    cross-entropy at every step, or (``initial_state``) the cell alone on a float sequence,
    time-major, from a given h0 (and c0), with mse."""

    cell: str
    initial_state: bool = False
    nonlinearity: str = "tanh"

    def describe(self) -> str:
        return f"{self.cell}{'-h0' if self.initial_state else ''}{'-relu' if self.nonlinearity == 'relu' else ''},"

    def build(self) -> Case[Network]:
        torch.manual_seed(7)
        cell = getattr(torch.nn, self.cell)
        options: dict[str, Any] = {"nonlinearity": self.nonlinearity} if self.cell == "RNN" else {}
        if not self.initial_state:
            model = torch.nn.Sequential(
                torch.nn.Embedding(5, 3), cell(3, 4, num_layers=2, batch_first=True, **options), torch.nn.Linear(4, 5)
            ).double()
            X, y = torch.randint(0, 5, (2, 3)), torch.randint(0, 5, (2, 3))
            return Case(self, from_torch(model, loss="cross_entropy"), X, y)
        module = cell(3, 4, num_layers=2, **options).double()
        h0, c0 = torch.randn(2, 2, 4, dtype=torch.float64), torch.randn(2, 2, 4, dtype=torch.float64)
        layer = recurrent_from_torch(module, h0=h0, c0=c0 if self.cell == "LSTM" else None)
        X, y = torch.randn(3, 2, 3, dtype=torch.float64), torch.randn(3, 2, 4, dtype=torch.float64)
        return Case(self, Network([layer], "mse"), X, y)


def _every_case() -> Iterator[Any]:
    """MLPs with every activation and loss, stacks with every other layer (BatchNorm and dropout
    in training mode), torch CNNs with every convolution, pooling, spatial-norm and softmax
    layer, a GPT with dropout and ignored targets, and RNN/LSTM/GRU models."""
    yield CaseSpec(dims=(3, 5, 4, 2), activations=("gelu", "relu", "identity"), loss="cross_entropy", seed=1)
    yield CaseSpec(dims=(3, 4, 2), activations=("silu", "sigmoid"), loss="bce", seed=2, weight_decay=0.1)
    yield CaseSpec(dims=(2, 3, 1), activations=("sigmoid", "sigmoid"), loss="half_sse", seed=0)
    yield CaseSpec(dims=(2, 6, 6, 6, 2), activations=("elu", "softplus", "leaky_relu", "tanh"), loss="mse", seed=4)
    yield StackSpec.from_dict({**STACK, "input": {"vocab": 5, "length": 3}, "layers": [
        ["embedding", 4], ["layernorm", {}], ["dropout", 0.25], ["flatten"], ["batchnorm", {}],
        ["residual", [["linear", 12], ["gelu_tanh"]]], ["linear", 3]]})  # fmt: skip
    yield _torch_case(  # every convolution, pooling, spatial-norm and softmax layer, in training mode
        nn.Sequential(nn.Conv2d(2, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2, 1),
                      nn.GroupNorm(2, 4), nn.AvgPool2d(2, 1, 1, count_include_pad=False), nn.AdaptiveAvgPool2d((2, 3)),
                      nn.Softmax(dim=1), nn.Flatten(), nn.Linear(24, 3)),
        (3, 2, 5, 6), training=True, seed=6)  # fmt: skip
    yield _torch_case(  # "same" padding with an even kernel, BatchNorm2d by its running statistics
        nn.Sequential(nn.Conv2d(2, 4, (2, 3), padding="same", dilation=(1, 2), groups=2, bias=False),
                      nn.BatchNorm2d(4), nn.LogSoftmax(dim=-1), nn.Flatten(), nn.Linear(80, 3)),
        (2, 2, 4, 5), training=False, seed=7)  # fmt: skip
    yield _torch_case(
        nn.Sequential(nn.Conv1d(2, 4, 3, dilation=2), nn.GroupNorm(1, 4, affine=False), nn.Softmax(dim=-1),
                      nn.Flatten(), nn.Linear(12, 3)),
        (2, 2, 7), training=True, seed=8)  # fmt: skip
    yield GPTSpec(vocab_size=5, block_size=4, n_layer=2, n_head=2, n_embd=4, dropout=0.25, batch=2, length=3,
                  ignored=1, seed=3)  # fmt: skip
    yield from (RecurrentCase("LSTM"), RecurrentCase("GRU"), RecurrentCase("RNN", nonlinearity="relu"))
    yield from (RecurrentCase("LSTM", initial_state=True), RecurrentCase("GRU", initial_state=True))


def _torch_case(
    module: nn.Sequential, shape: tuple[int, ...], *, training: bool, seed: int, classes: int = 3
) -> ModuleCase:
    """A float64 torch model in the given mode with a random input of ``shape`` and targets
    among ``classes`` classes (the last Linear's outputs)."""
    gen = torch.Generator().manual_seed(seed)
    module = module.double().train(training)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, dtype=p.dtype, generator=gen))  # away from 1 and 0 (norms)
    X = torch.randn(shape, dtype=torch.float64, generator=gen)
    return ModuleCase(module, X, torch.randint(0, classes, (shape[0],), generator=gen), "cross_entropy")


def _name(spec: Any) -> str:
    return spec.describe().split(",")[0].replace(" ", "")


def _every_tensor(cache: Any, J: torch.Tensor, grads: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Every tensor the manual path handed back: the forward's outputs, J, every gradient."""
    values = [a for a in cache.a if isinstance(a, torch.Tensor)]
    values += [t for t in getattr(cache, "z", []) if isinstance(t, torch.Tensor)]
    return [*values, J, *grads.values()]


@pytest.mark.parametrize("spec", list(_every_case()), ids=_name)
def test_runs_under_inference_mode_and_returns_plain_tensors(spec: Any) -> None:
    case = spec.build()
    with torch.inference_mode():
        cache = case.net.forward(case.X)
        J = case.net.loss(cache, case.y)
        grads = case.net.backward(cache, case.y).as_dict()
    assert not any(t.requires_grad for t in _every_tensor(cache, J, grads))
    # and the numbers are the right ones
    refbp.check(case.net, case.X, case.y, grads=grads, references=("autograd",), noise=cache.noise).raise_if_failed()


@pytest.mark.parametrize("spec", list(_every_case()), ids=_name)
def test_runs_with_autograd_disabled_globally(spec: Any) -> None:
    case = spec.build()
    previous = torch.is_grad_enabled()
    torch.set_grad_enabled(False)
    try:
        grads = case.net.backward(case.net.forward(case.X), case.y)
    finally:
        torch.set_grad_enabled(previous)
    assert not any(t.requires_grad for t in grads.as_dict().values())


def test_parameters_that_require_grad_build_no_graph() -> None:
    """Parameters taken from torch.nn.Linear require grad; the manual path must not track them."""
    linears = [torch.nn.Linear(3, 4).double(), torch.nn.Linear(4, 2).double()]
    net = refbp.MLP.from_params(
        weights=[m.weight for m in linears],
        biases=[m.bias for m in linears],
        activations=["tanh", "identity"],
        loss="mse",
    )
    X = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randn(5, 2, dtype=torch.float64)
    cache = net.forward(X)
    grads = net.backward(cache, y)
    for t in [*cache.a[1:], net.loss(cache, y), *grads.as_dict().values()]:
        assert not t.requires_grad and t.grad_fn is None


@pytest.mark.parametrize("spec", list(_every_case()), ids=_name)
def test_works_when_every_autograd_entry_point_raises(spec: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the manual path called into autograd")

    case = spec.build()
    noise = case.net.forward(case.X, update_stats=False).noise  # the dropout masks both sides use
    _, reference = refbp.verify.reference.autograd_gradients(case.net, case.X, case.y, noise=noise)  # before the trap
    monkeypatch.setattr(torch.autograd, "grad", refuse)
    monkeypatch.setattr(torch.autograd, "backward", refuse)
    monkeypatch.setattr(torch.Tensor, "backward", refuse)
    monkeypatch.setattr(torch.Tensor, "requires_grad_", refuse)
    monkeypatch.setattr(torch.func, "vjp", refuse)
    monkeypatch.setattr(torch.func, "grad", refuse)
    cache = case.net.forward(case.X, update_stats=False, noise=noise)
    grads = case.net.backward(cache, case.y).as_dict()
    assert set(grads) == set(reference)
    for name, g in grads.items():
        torch.testing.assert_close(g, reference[name], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("module", MANUAL_MODULES, ids=lambda m: m.__name__)
def test_source_never_mentions_autograd(module: object) -> None:
    tree = ast.parse(inspect.getsource(module))  # type: ignore[arg-type]
    offences = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in FORBIDDEN_ATTRIBUTES:
            offences.append(f"line {node.lineno}: .{node.attr}")
        # t.backward() is autograd; net.backward(cache, y), with arguments, is refbp's own
        is_call = isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        if is_call and node.func.attr == "backward" and not node.args:  # type: ignore[attr-defined]
            offences.append(f"line {node.lineno}: .backward()")  # type: ignore[attr-defined]
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [alias.name for alias in node.names] + [getattr(node, "module", "") or ""]
            offences += [f"line {node.lineno}: import {n}" for n in names if "autograd" in n or "func" in n.split(".")]
        if (
            isinstance(node, ast.keyword)
            and node.arg == "requires_grad"
            and not (isinstance(node.value, ast.Constant) and node.value.value is False)
        ):
            offences.append(f"line {node.lineno}: requires_grad=")
    assert not offences, f"{module.__name__} uses autograd: {offences}"  # type: ignore[attr-defined]
