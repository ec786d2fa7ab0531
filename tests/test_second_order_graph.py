"""Second order of graph networks (refbp.nn.r_stack): models converted through torch.fx, with
skip connections, concatenations, reductions, functional activations, indices and a module used
twice, get H v, G v and the tangents of every node, checked against torch.func forward-over-reverse,
double backward and differences of the manual gradient; a join whose R drops a path is caught."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import refbp
from refbp.nn.conv import Conv2d
from refbp.nn.graph import GraphNetwork, Node
from refbp.nn.joins import Add
from refbp.nn.layer import LayerTangent, Params, SecondContext
from refbp.nn.layers import Elementwise, Flatten, Linear
from refbp.verify.result import CheckResult
from refbp.verify.second_order import SECOND_ORDER_REFERENCES, check_second_order

PRODUCTS = ("hessian", "gauss_newton")


class ResidualCNN(nn.Module):
    """A ResNet-style block x + conv(relu(conv(x))), a functional tanh and max-pool, a cat of the
    map and half of it, a mean over the spatial dims, a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 2, 3, padding=1)
        self.conv2 = nn.Conv2d(2, 2, 3, padding=1, bias=False)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(x + self.conv2(F.relu(self.conv1(x))))
        h = F.max_pool2d(h, 2)
        h = torch.cat([h, 0.5 * h], dim=1)
        return self.fc(h.mean(dim=(2, 3)))


class SequenceModel(nn.Module):
    """Conv1d ("same") minus a channel sum of x, then permute, transpose, view(x.size(0), -1),
    flatten and a division: every shape operation of a traced forward."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 4, 3, padding="same")
        self.fc = nn.Linear(20, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.conv(x)) - x.sum(dim=1, keepdim=True)
        h = h.permute(0, 2, 1).transpose(1, 2)
        h = h.view(x.size(0), -1)
        return self.fc(torch.flatten(F.silu(h), 1) / 2)


class TiedTokens(nn.Module):
    """Embedding of int64 tokens, a reshape by the batch size, and one Linear used twice (a tied
    weight) around a skip connection."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(6, 3)
        self.fc = nn.Linear(6, 4)
        self.mix = nn.Linear(4, 4)

    def forward(self, x: Tensor) -> Tensor:
        e = self.emb(x)
        h = torch.tanh(self.fc(e.view(e.size(0), -1)))
        return self.mix(h + torch.tanh(self.mix(h)))


def _model(kind: str, dtype: torch.dtype = torch.float64) -> tuple[GraphNetwork, Tensor, Tensor]:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    if kind == "tied tokens":
        X, y = torch.randint(0, 6, (3, 2), generator=g), torch.randint(0, 4, (3,), generator=g)
        net = refbp.from_torch(TiedTokens().to(dtype), loss="cross_entropy", example_inputs=(X,))
    else:
        module, shape, out = (
            (ResidualCNN(), (3, 2, 4, 4), 3) if kind == "residual cnn" else (SequenceModel(), (2, 3, 5), 2)
        )
        X = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
        y = torch.randn(shape[0], out, generator=g, dtype=torch.float64).to(dtype)
        net = refbp.from_torch(module.to(dtype), loss="mse", example_inputs=(X,))
    assert isinstance(net, GraphNetwork)
    return net, X, y


def assert_every_row(result: CheckResult, net: GraphNetwork, X: Tensor, product: str) -> None:
    """Passed, with H v of every parameter (and of X when it is real) against every reference of
    the product, and every node's tangent R{a(l)}, R{J} (and, for H v, every R{dJ/da(l)})."""
    assert result.passed, result.failure_message()
    names = {row.name for row in result.rows}
    Hv = {f"Hv[{name}]" for name in [*net.parameters(), *(["X"] if X.is_floating_point() else [])]}
    assert Hv | {"R{J}", *(f"R{{a{l}}}" for l in range(1, net.L + 1))} <= names
    for name in Hv:
        references = {row.reference for row in result.rows if row.name == name}
        assert references == (set(SECOND_ORDER_REFERENCES) if product == "hessian" else {"torch-gauss-newton"})
    if product == "hessian":
        assert {f"R{{dJ/da{l}}}" for l in range(1, net.L + 1)} <= names


@pytest.mark.parametrize("product", PRODUCTS)
@pytest.mark.parametrize("kind", ["residual cnn", "sequence model", "tied tokens"])
def test_traced_models_get_exact_products_and_tangents(kind: str, product: str) -> None:
    net, X, y = _model(kind)
    result = check_second_order(net, X, y, product=product, forward=True, seed=1)
    assert_every_row(result, net, X, product)


def test_the_traced_models_hold_the_nodes_they_are_meant_to_test() -> None:
    """The models above exercise joins, reductions, shape operations and a tie: if tracing ever
    folded one away, the tests above would pass without checking it."""
    titles = {kind: {node.layer.title for node in _model(kind)[0].nodes} for kind in ("residual cnn", "sequence model")}
    assert {"Add", "Cat", "Mean", "Scale", "MaxPool2d", "Conv2d", "Elementwise"} <= titles["residual cnn"]
    assert {"Add", "Sum", "Permute", "Transpose", "Reshape", "Flatten", "Scale", "Conv1d"} <= titles["sequence model"]
    assert _model("tied tokens")[0].ties  # mix's weight and bias, used twice


def test_float32_traced_model_passes_against_float64_references() -> None:
    net, X, y = _model("residual cnn", torch.float32)
    for product in PRODUCTS:
        result = check_second_order(net, X, y, product=product, forward=True, seed=2)
        assert result.passed, result.failure_message()
        assert result.dtype == "float32"


class AddWithoutTheSkipsR(Add):
    """The slip: R{dJ/dx_1} = 0 for the skip path, R{dJ/dy} sent through the branch only (the
    first-order gradients stay right: only R{(G)} loses a reader)."""

    def r_backward_all(
        self, g: Tensor, Rg: Tensor, xs: Sequence[Tensor], Rxs: Sequence[Tensor | None], out: Tensor,
        t: LayerTangent, cache: Any, V: Params, ctx: SecondContext,
    ) -> tuple[list[Tensor | None], list[Tensor | None]]:  # fmt: skip
        dJ_dxs, R_dJ_dxs = super().r_backward_all(g, Rg, xs, Rxs, out, t, cache, V, ctx)
        skip = R_dJ_dxs[0]
        assert skip is not None
        return dJ_dxs, [torch.zeros_like(skip), *R_dJ_dxs[1:]]


def _block(add: Callable[[], Add]) -> tuple[GraphNetwork, Tensor, Tensor]:
    """x1 = tanh(conv(X)); y = Linear(flatten(tanh(x1 + conv(x1)))), built node by node."""
    g = torch.Generator().manual_seed(3)

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    nodes = [
        Node("conv1", Conv2d(randn(2, 2, 2, 2), randn(2), padding="same")),
        Node("tanh1", Elementwise("tanh"), (1,)),
        Node("conv2", Conv2d(randn(2, 2, 3, 3), None, padding=1), (2,)),
        Node("add", add(), (2, 3)),
        Node("tanh2", Elementwise("tanh"), (4,)),
        Node("flatten", Flatten(), (5,)),
        Node("fc", Linear(randn(3, 2 * 4 * 4), randn(3)), (6,)),
    ]
    return GraphNetwork(nodes, "mse"), randn(2, 2, 4, 4), randn(2, 3)


def test_a_join_whose_R_drops_the_skip_path_is_caught() -> None:
    net, X, y = _block(Add)
    assert check_second_order(net, X, y, seed=4).passed  # the right join, first
    wrong, X, y = _block(AddWithoutTheSkipsR)
    right_grads, wrong_grads = (n.backward(n.forward(X), y).as_dict() for n in (net, wrong))
    assert all(torch.equal(right_grads[name], wrong_grads[name]) for name in right_grads)  # first order: the same
    result = check_second_order(wrong, X, y, seed=4)
    assert not result.passed
    verdicts = {t.name: t.verdict for t in result.tensors}
    assert {verdicts[name] for name in ("Hv[W1]", "Hv[b1]", "Hv[X]")} == {"mismatch"}  # below the skip's source
    assert verdicts["Hv[W3]"] == verdicts["Hv[W7]"] == "passed"  # the branch and the head: untouched
