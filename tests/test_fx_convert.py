"""from_torch for any nn.Module, through torch.fx: models written as classes with a forward
(PyTorch's quickstart, an MNIST CNN, a ResNet block, nested containers, a char model, random
graphs) convert, and the network's manual gradients equal what torch.autograd computes on *the
very module* (its named_parameters(), the input, intermediates by node name) to float64 rounding.
What refbp cannot convert is refused with the operation, the node and the forward's line."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, cast

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import refbp
from refbp.nn.convert import capture_noise, from_torch
from refbp.nn.graph import GraphNetwork, Node
from refbp.nn.joins import Add, Cat
from refbp.nn.layers import Elementwise, Linear
from refbp.nn.registry import FUNCTIONS

FLOAT64_ROUNDING: dict[str, Any] = {"rtol": 1e-10, "atol": 1e-12}
"""refbp and torch sum in different orders: these small float64 models differ by a few hundred
roundings (eps 2.2e-16) of the largest term at most; 1e-10 relative (1e-12 absolute per unit of
the largest gradient, for entries that cancel) keeps a wide margin and is far below any bug."""

LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "mse": F.mse_loss,
    "cross_entropy": lambda out, y: F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1)),
}
"""Each loss written with torch's own functions, independently of refbp.nn.losses."""


def _prefixed(name: str) -> Callable[[str], str]:
    return lambda message: f"{name}: {message}"


def autograd_of(module: nn.Module, X: Tensor, y: Tensor, loss: str) -> dict[str, Tensor]:
    """dJ/d(every parameter) by autograd on the module itself (named_parameters() names), and "input"."""
    module.zero_grad(set_to_none=True)
    X = X.clone().requires_grad_(X.is_floating_point())
    LOSSES[loss](module(X), y).backward()
    named = {name: p.grad for name, p in module.named_parameters() if p.grad is not None}
    if X.grad is not None:
        named["input"] = X.grad
    return named


def assert_matches_autograd(module: nn.Module, X: Tensor, y: Tensor, loss: str, **options: Any) -> GraphNetwork:
    """Convert, run both with torch's dropout masks, and compare every parameter's and the input's
    gradient; then again as a lean training step (nothing kept, the cache released), where the
    loop lets each layer overwrite the gradient it is handed: a tensor read by several nodes must
    still get the sum of its readers' gradients, untouched by any of them."""
    net = from_torch(module, loss=loss, **options)
    assert isinstance(net, GraphNetwork)
    noise = capture_noise(module, X)  # the masks module(X) draws next
    grads = net.backward(net.forward(X, noise=noise), y).torch_named()
    expected = autograd_of(module, X, y, loss)
    assert set(expected) <= set(grads), f"missing {set(expected) - set(grads)}"
    scale = max(float(g.abs().max()) for g in expected.values())
    tolerance: dict[str, Any] = {"rtol": FLOAT64_ROUNDING["rtol"], "atol": FLOAT64_ROUNDING["atol"] * max(1.0, scale)}
    for name, g in expected.items():
        torch.testing.assert_close(grads[name], g, **tolerance, msg=_prefixed(name))
    cache = net.forward(X, noise=noise, keep_intermediates=False, update_stats=False)
    lean = net.backward(cache, y, keep_intermediates=False, release_cache=True).torch_named()
    for name, g in expected.items():
        torch.testing.assert_close(lean[name], g, **tolerance, msg=_prefixed(f"lean step, {name}"))
    return net


# ---- the models people write --------------------------------------------------------------------
class NeuralNetwork(nn.Module):
    """PyTorch's quickstart model, as written there (28 x 28 images made 3 x 4)."""

    def __init__(self) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.linear_relu_stack = nn.Sequential(
            nn.Linear(3 * 4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 5)
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.flatten(x)
        logits = self.linear_relu_stack(x)
        return logits


class MnistNet(nn.Module):
    """The shape of PyTorch's MNIST example: functional relu, max-pool, flatten, dropout, log-softmax."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 2, 3)
        self.conv2 = nn.Conv2d(2, 3, 3)
        self.dropout1 = nn.Dropout(0.25)
        self.fc1 = nn.Linear(3 * 2 * 2, 6)
        self.fc2 = nn.Linear(6, 4)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = F.dropout(F.relu(self.fc1(x)), 0.5, training=self.training)
        return F.log_softmax(self.fc2(x), dim=1)


class ResidualBlock(nn.Module):
    """A ResNet-style block: y = x + conv2(relu(conv1(x)))."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 2, 3, padding=1)
        self.conv2 = nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


class Nested(nn.Module):
    """ModuleList, ModuleDict and a user module inside each other, with every shape op."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([nn.Linear(4, 4), nn.ModuleDict({"act": nn.Tanh(), "out": nn.Linear(8, 3)})])
        self.inner = ResidualBlock()

    def forward(self, x: Tensor) -> Tensor:
        h = self.blocks[0](x)
        heads = cast(nn.ModuleDict, self.blocks[1])
        k = 0.5 * heads["act"](h)
        z = torch.cat([h, k / 4.0], dim=-1).view(x.size(0), -1)  # the batch size read from x
        img = self.inner(z.reshape(-1, 2, 2, 2)).permute(0, 2, 3, 1).transpose(1, 2).flatten(1)
        return heads["out"](img) - img.mean(dim=1, keepdim=True) + img.sum(-1, keepdim=True)


class CharModel(nn.Module):
    """Embedding -> LSTM -> its output sequence (element 0 of (output, state)) -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(7, 4)
        self.lstm = nn.LSTM(4, 5, batch_first=True)
        self.head = nn.Linear(5, 7)

    def forward(self, idx: Tensor) -> Tensor:
        out, _ = self.lstm(self.embed(idx))
        return self.head(out)


class SkipTwice(nn.Module):
    """h read by three nodes (a skip connection), and fc2 called twice (one weight, two uses)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(3, 4)
        self.fc2 = nn.Linear(4, 4)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.fc1(x))
        return self.fc2(F.gelu(self.fc2(h)) + h) * 2.0 + torch.sigmoid(h)


def _float(*shape: int) -> Tensor:
    return torch.randn(*shape, dtype=torch.float64)


def test_the_quickstart_model_converts_as_written_and_matches_autograd() -> None:
    torch.manual_seed(0)
    module = NeuralNetwork().double()
    net = assert_matches_autograd(module, _float(3, 3, 4), _float(3, 5), "mse")  # input built: (2, 12)
    assert [node.name for node in net.nodes][:2] == ["flatten", "linear_relu_stack_0"]


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_an_mnist_cnn_with_functional_calls_matches_autograd(training: bool) -> None:
    torch.manual_seed(1)
    module = MnistNet().double().train(training)
    X = _float(3, 1, 8, 8)
    net = assert_matches_autograd(module, X, torch.tensor([0, 3, 1]), "cross_entropy", example_inputs=(X,))
    assert bool(capture_noise(module, X)) == training  # masks only where torch draws them
    assert refbp.check(net, X, torch.tensor([0, 3, 1]), noise=capture_noise(module, X)).passed


def test_a_residual_block_sums_both_paths_and_names_intermediates_by_node() -> None:
    torch.manual_seed(2)
    module = ResidualBlock().double()
    X, y = _float(2, 2, 3, 3), _float(2, 2, 3, 3)
    net = assert_matches_autograd(module, X, y, "mse", example_inputs=(X,))
    named = net.backward(net.forward(X), y).torch_named()
    x = X.clone().requires_grad_(True)
    h = F.relu(module.conv1(x))
    out = x + module.conv2(h)
    for t in (h, out):
        t.retain_grad()
    F.mse_loss(out, y).backward()
    torch.testing.assert_close(named["relu"], h.grad, **FLOAT64_ROUNDING)
    torch.testing.assert_close(named["add"], out.grad, **FLOAT64_ROUNDING)
    assert refbp.check(net, X, y).passed


def test_nested_module_lists_dicts_and_shape_ops_match_autograd() -> None:
    torch.manual_seed(3)
    module = Nested().double()
    X = _float(3, 4)
    net = assert_matches_autograd(module, X, _float(3, 3), "mse", example_inputs=(X,))
    assert set(dict(net.to_torch().named_parameters())) == set(dict(module.named_parameters()))
    assert refbp.check(net, X, _float(3, 3)).passed


def test_a_char_model_takes_the_lstm_output_sequence() -> None:
    torch.manual_seed(4)
    module = CharModel().double()
    idx = torch.randint(0, 7, (2, 5))
    net = assert_matches_autograd(module, idx, torch.randint(0, 7, (2, 5)), "cross_entropy", example_inputs=(idx,))
    assert net.takes_indices and "X" not in net.names()


def test_a_tensor_read_twice_and_a_module_called_twice_get_the_sum_of_their_uses() -> None:
    torch.manual_seed(5)
    module = SkipTwice().double()
    X = _float(4, 3)
    net = assert_matches_autograd(module, X, _float(4, 4), "mse", example_inputs=(X,))
    assert len(net.ties) == 2  # fc2.weight and fc2.bias: one tensor each, two uses
    assert refbp.check(net, X, _float(4, 4)).passed


def test_to_torch_computes_the_same_function_and_converts_back() -> None:
    torch.manual_seed(6)
    module = Nested().double()
    X, y = _float(3, 4), _float(3, 3)
    net = from_torch(module, loss="mse", example_inputs=(X,))
    again = net.to_torch()
    torch.testing.assert_close(again(X), module(X), **FLOAT64_ROUNDING)
    assert_matches_autograd(again, X, y, "mse", example_inputs=(X,))


# ---- random models --------------------------------------------------------------------------------
class Program(nn.Module):
    """A forward drawn as a list of steps over earlier values v[0] = x, v[1], ...; each step reads
    earlier values by index, so values feed several steps, and unused ones are left over."""

    def __init__(self, steps: list[tuple[Any, ...]], d: int, training: bool) -> None:
        super().__init__()
        self.steps, self.d = steps, d
        self.mods = nn.ModuleList()
        for step in steps:
            kind = step[0]
            self.mods.append(
                nn.Linear(d, d) if kind == "linear" else nn.Linear(2 * d, d) if kind == "cat" else
                nn.LayerNorm(d) if kind == "norm" else nn.Dropout(0.3) if kind == "dropout" else nn.Identity()
            )  # fmt: skip
        self.train(training)

    def forward(self, x: Tensor) -> Tensor:
        v = [x]
        for k, (kind, i, j, c) in enumerate(self.steps):
            a, b = v[i % len(v)], v[j % len(v)]
            if kind in ("linear", "norm", "dropout"):
                v.append(self.mods[k](a))
            elif kind == "cat":
                v.append(self.mods[k](torch.cat([a, b], dim=1)))
            elif kind == "add":
                v.append(a + b)
            elif kind == "sub":
                v.append(torch.sub(a, b, alpha=c))
            elif kind == "scale":
                v.append(c * a)
            elif kind == "layer_norm":
                v.append(F.layer_norm(a, (self.d,)))
            else:
                v.append(ACTIVATIONS[kind](a))
        return v[-1] + v[1]  # at least one skip connection, and the first step always used


ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu,
    "tanh": torch.tanh,
    "gelu": F.gelu,
    "sigmoid": torch.sigmoid,
}


@st.composite
def programs(draw: st.DrawFn) -> tuple[Program, Tensor, Tensor]:
    d = draw(st.integers(1, 3))
    kinds = ["linear", "cat", "norm", "layer_norm", "dropout", "add", "sub", "scale", "relu", "tanh", "gelu", "sigmoid"]
    first = ("linear", 0, 0, 1.0)
    rest = draw(
        st.lists(
            st.tuples(st.sampled_from(kinds), st.integers(0, 8), st.integers(0, 8), st.sampled_from([0.5, -2.0, 3.0])),
            min_size=0, max_size=6,
        )
    )  # fmt: skip
    seed = draw(st.integers(0, 2**16))
    torch.manual_seed(seed)
    module = Program([first, *rest], d, training=draw(st.booleans())).double()
    N = draw(st.integers(2, 4))
    return module, torch.randn(N, d, dtype=torch.float64), torch.randn(N, d, dtype=torch.float64)


@settings(deadline=None)
@given(programs())
def test_random_graphs_match_autograd_on_the_module(drawn: tuple[Program, Tensor, Tensor]) -> None:
    module, X, y = drawn
    assert_matches_autograd(module, X, y, "mse", example_inputs=(X,))


# ---- a graph built by hand -------------------------------------------------------------------------
def test_a_graph_built_from_nodes_matches_autograd_on_its_own_torch_module() -> None:
    torch.manual_seed(7)
    W1, W2 = torch.randn(3, 2, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64)
    nodes = [
        Node("fc1", Linear(W1), (0,), module="fc1"),
        Node("act", Elementwise("tanh"), (1,)),
        Node("both", Cat(dim=1), (1, 2)),  # fc1's output read twice: by act and here
        Node("fc2", Linear(W2), (3,), module="fc2"),
        Node("skip", Add((1.0, -2.0)), (4, 2)),  # y = fc2 - 2 act
    ]
    net = GraphNetwork(nodes, "mse")
    X, y = _float(4, 2), _float(4, 3)
    grads = net.backward(net.forward(X), y).torch_named()
    expected = autograd_of(net.to_torch(), X, y, "mse")
    assert set(expected) == {"fc1.weight", "fc2.weight", "input"}
    for name, g in expected.items():
        torch.testing.assert_close(grads[name], g, **FLOAT64_ROUNDING)


@pytest.mark.parametrize(
    ("wiring", "message"),
    [
        ([(1,), (1,)], r"node 1 \(n1\) reads \[1\]: a node reads X \(0\) or earlier nodes only"),
        ([(0,), (0,)], r"nodes \['n1'\] are read by no later node"),
        ([(0,), (0, 1)], r"Node 'n2': tanh reads one tensor, got inputs \(0, 1\)"),
    ],
    ids=["reads-itself", "unread", "two-inputs"],
)
def test_a_graph_wired_wrongly_is_refused(wiring: list[tuple[int, ...]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GraphNetwork([Node(f"n{l}", Elementwise("tanh"), inputs) for l, inputs in enumerate(wiring, 1)], "mse")


# ---- what is refused --------------------------------------------------------------------------------
class Sine(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        x = torch.sin(x)
        return x


def test_an_unsupported_operation_names_the_node_and_the_line_of_the_forward() -> None:
    line = inspect.getsourcelines(Sine.forward)[1] + 1
    where = rf"node 'sin' \(test_fx_convert.py:{line} `x = torch.sin\(x\)`\)"
    with pytest.raises(ValueError, match=rf"torch.sin at {where} is not supported; supported: .*F.relu"):
        from_torch(Sine())


class FinalState(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(2, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.rnn(x)[1]


class Product(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x) * x


class Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(2))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.w


class Branching(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 2)

    def forward(self, x: Tensor) -> Tensor:
        return x.sum() if bool(x.sum() > 0) else x


class OverwrittenSkip(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc(x)
        return F.relu(h, inplace=True) + h


@pytest.mark.parametrize(
    ("module", "message"),
    [
        (FinalState(), r"element 1 of the \(output, state\) tuple at node 'getitem' .*element 0"),
        (Product(), r"operator.mul at node 'mul' .*: a product of two tensors is not supported"),
        (Scaled(), r"reading the attribute self.w at node 'w'"),
        (Branching(), r"Branching's forward cannot be traced by torch.fx"),
        (OverwrittenSkip(), r"node 'relu' .* overwrites its input in place .* 'fc' is read elsewhere"),
        (nn.Linear(2, 2), r"a single Linear; wrap it as torch.nn.Sequential\(module\)"),
    ],
    ids=["rnn-state", "product", "get_attr", "control-flow", "inplace", "single-module"],
)
def test_what_cannot_be_converted_is_refused_with_what_and_where(module: nn.Module, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        from_torch(module)


def test_the_self_check_refuses_a_conversion_that_computes_another_function(monkeypatch: pytest.MonkeyPatch) -> None:
    # torch.tanh deliberately converted to a sigmoid: the network differs from the module there
    monkeypatch.setitem(FUNCTIONS, torch.tanh, lambda args, kwargs: Elementwise("sigmoid"))
    module = SkipTwice().double()
    with pytest.raises(ValueError, match=r"another function than the module: at node 'tanh' \(test_fx_convert"):
        from_torch(module, example_inputs=(_float(2, 3),))
