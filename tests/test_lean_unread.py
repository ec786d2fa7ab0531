"""A lean forward pass (``keep_intermediates=False``) keeps only the a(l) some backward pass reads.

Layers say what their backward reads (``Layer.backward_reads_input``/``backward_reads_output``,
True unless a layer knows better); the forward loop (refbp.nn.stack) drops every a(l) that
neither its maker's backward nor any reader's backward reads, once its last reader has run:
Linear's output before an activation of its output (relu, tanh, sigmoid) or a dropout, which
torch's autograd does not keep either. These tests hold every layer that answers False to it
(its backward gives the same numbers when handed an empty tensor in that place), and show a
network's lean step dropping those tensors and still giving autograd's gradients.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from refbp.nn.activations import ACTIVATIONS
from refbp.nn.layer import BackwardContext, ForwardContext, Layer
from refbp.nn.layers import (
    Conv1d,
    Conv2d,
    Dropout,
    Elementwise,
    Embedding,
    Linear,
    LogSoftmax,
    MaxPool2d,
    Softmax,
)
from refbp.nn.network import Network

N, D = 6, 5


def _layer_classes() -> set[type[Layer]]:
    """Every subclass of Layer imported so far, at any depth."""
    found: set[type[Layer]] = set()
    todo = list(Layer.__subclasses__())
    while todo:
        cls = todo.pop()
        found.add(cls)
        todo.extend(cls.__subclasses__())
    return found


def _float(*shape: int, seed: int) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _eval(layer: Layer) -> Layer:
    layer.training = False
    return layer


def _linear() -> list[tuple[Layer, Tensor]]:
    x = _float(N, D, seed=1)
    return [(Linear(_float(D, D, seed=2), _float(D, seed=3)), x), (Linear(_float(D, D, seed=4)), x)]


def _conv() -> list[tuple[Layer, Tensor]]:
    return [
        (Conv2d(_float(3, 2, 3, 3, seed=5), _float(3, seed=6), padding=1, stride=2), _float(2, 2, 5, 5, seed=7)),
        (Conv1d(_float(3, 2, 2, seed=8), dilation=2), _float(2, 2, 7, seed=9)),
    ]


def _embedding() -> list[tuple[Layer, Tensor]]:
    idx = torch.tensor([[0, 3, 1], [3, 2, 0]])
    return [(Embedding(_float(4, D, seed=10)), idx), (Embedding(_float(4, D, seed=11), padding_idx=3), idx)]


BUILDERS: dict[type[Layer], Callable[[], list[tuple[Layer, Tensor]]]] = {
    Linear: _linear,
    Conv1d: _conv,
    Conv2d: _conv,
    Embedding: _embedding,
    MaxPool2d: lambda: [
        (MaxPool2d(3, 2, 1), torch.randint(-2, 3, (2, 3, 7, 6)).double()),  # ties in overlapping windows
        (MaxPool2d((2, 3), (1, 2), (1, 0), dilation=(2, 1)), _float(2, 3, 7, 8, seed=19)),
    ],
    Elementwise: lambda: [(Elementwise(name), _float(N, D, seed=12)) for name in ACTIVATIONS],
    Dropout: lambda: [(Dropout(0.3, seed=5), _float(N, D, seed=13)), (_eval(Dropout(0.3)), _float(N, D, seed=14))],
    Softmax: lambda: [(Softmax(-1), _float(N, D, seed=15)), (Softmax(0), _float(N, D, seed=16))],
    LogSoftmax: lambda: [(LogSoftmax(-1), _float(N, D, seed=17)), (LogSoftmax(0), _float(N, D, seed=18))],
}
"""Every layer class that answers False to either question (a subclass of one that does counts
too), and instances (with inputs) that cover its answers."""


def test_every_layer_that_says_its_backward_reads_less_is_held_to_it_here() -> None:
    claiming = {
        cls
        for cls in _layer_classes()
        if cls.backward_reads_input is not Layer.backward_reads_input
        or cls.backward_reads_output is not Layer.backward_reads_output
    }
    concrete = {  # refbp's own layers (not the bug catalogue's wrong variants of them, nor tests')
        cls
        for cls in claiming
        if cls.__module__.startswith("refbp.nn.") and not inspect.isabstract(cls) and not cls.__name__.startswith("_")
    }
    assert concrete == set(BUILDERS), f"add a builder for {concrete - set(BUILDERS)} to BUILDERS"


@pytest.mark.parametrize("cls", list(BUILDERS), ids=lambda cls: cls.__name__)
def test_a_backward_that_says_it_does_not_read_a_tensor_gives_the_same_numbers_without_it(cls: type[Layer]) -> None:
    g = torch.Generator().manual_seed(2)
    for layer, x in BUILDERS[cls]():
        y, cache = layer.forward(x, ForwardContext(keep_intermediates=False), (1,))
        dJ_dy = torch.randn(y.shape, generator=g, dtype=torch.float64)
        ctx = BackwardContext((1,), keep_intermediates=False, need_dx=not layer.takes_indices)
        expected = layer.backward(dJ_dy.clone(), x, y, cache, ctx)
        gone = torch.empty(0, dtype=torch.float64)  # no values and no shape to read
        got = layer.backward(
            dJ_dy.clone(),
            x if layer.backward_reads_input else gone,
            y if layer.backward_reads_output else gone,
            cache,
            ctx,
        )
        if layer.takes_indices:
            assert expected.dJ_dx is None and got.dJ_dx is None
        else:
            assert expected.dJ_dx is not None and got.dJ_dx is not None
            torch.testing.assert_close(got.dJ_dx, expected.dJ_dx, rtol=0, atol=0, msg=layer.describe())
        assert got.params.keys() == expected.params.keys()
        for kind, value in expected.params.items():
            torch.testing.assert_close(got.params[kind], value, rtol=0, atol=0, msg=f"{layer.describe()} {kind}")


def _network() -> Network:
    g = torch.Generator().manual_seed(3)
    W1, W2, W3 = (torch.randn(D, D, generator=g, dtype=torch.float64) for _ in range(3))
    b1 = torch.randn(D, generator=g, dtype=torch.float64)
    layers: list[Layer] = [
        Linear(W1, b1), Elementwise("relu"),  # relu's f' reads a: z(1) is read by no backward
        Linear(W2), Dropout(0.4, seed=7),  # the dropout reads its mask: z(3) is read by none either
        Linear(W3), Elementwise("gelu"),  # gelu's f' reads z: z(5) is kept
    ]  # fmt: skip
    return Network(layers, "mse")


def test_a_lean_forward_pass_keeps_only_what_some_backward_reads() -> None:
    net = _network()
    X = torch.randn(N, D, dtype=torch.float64)
    lean = net.forward(X, keep_intermediates=False)
    full = net.forward(X, noise=lean.noise)  # the same dropout mask
    assert [l for l, a in enumerate(lean.a) if a.numel() == 0] == [1, 3]  # z(1) and z(3)
    assert all(a.numel() > 0 for a in full.a)  # the teaching mode keeps every a(l)
    assert lean.a[0] is X and torch.equal(lean.y_hat, full.y_hat)


def test_the_lean_step_without_those_tensors_gives_autograd_s_gradients() -> None:
    net = _network()
    g = torch.Generator().manual_seed(4)
    X, y = (torch.randn(N, D, generator=g, dtype=torch.float64) for _ in range(2))
    cache = net.forward(X, keep_intermediates=False)
    noise = cache.noise  # the dropout's mask, for the oracle
    grads = net.backward(cache, y, keep_intermediates=False, release_cache=True).as_dict()
    p = {name: t.clone().requires_grad_(True) for name, t in net.parameters().items()}
    x = X.clone().requires_grad_(True)
    a = F.relu(F.linear(x, p["W1"], p["b1"]))
    a = F.linear(a, p["W3"]) * noise[(4,)] / (1 - 0.4)
    J = F.mse_loss(F.gelu(F.linear(a, p["W5"])), y)
    J.backward()
    expected = {**{name: t.grad for name, t in p.items()}, "X": x.grad}
    assert set(grads) == set(expected)
    for name, value in expected.items():
        assert value is not None
        torch.testing.assert_close(grads[name], value, rtol=1e-12, atol=1e-14, msg=name)


def test_a_lean_cache_can_be_backpropagated_twice_and_checked_against_its_network() -> None:
    net = _network()
    X, y = torch.randn(N, D, dtype=torch.float64), torch.randn(N, D, dtype=torch.float64)
    cache = net.forward(X, keep_intermediates=False)
    first = net.backward(cache, y).as_dict()  # keeps the cache: a second pass may follow
    second = net.backward(cache, y, keep_intermediates=False).as_dict()
    for name, value in second.items():
        torch.testing.assert_close(value, first[name], rtol=0, atol=0, msg=name)
