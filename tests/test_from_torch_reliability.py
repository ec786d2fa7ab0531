"""from_torch as a demanding user meets it (issue 16): modules used twice, nested Sequentials,
the self-check, captured dropout masks, modes, loss pairings, ignore_index and seeds. Every
network here is compared with torch.autograd on the very module it came from."""

from __future__ import annotations

import ast
import pathlib

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import refbp
from refbp.nn.convert import CONVERTERS, capture_noise, from_torch
from refbp.nn.layers import Dropout, Elementwise, TorchResidual
from refbp.nn.network import Network
from refbp.nn.validation import MAX_SEED
from tests.test_convert import FLOAT64_ROUNDING, _draw_values, assert_same, gradient_rounding, torch_step


def _float64(module: nn.Sequential, seed: int = 0) -> nn.Sequential:
    """``module`` in float64 with its parameters drawn from ``seed`` (torch's global state untouched)."""
    module = module.to(torch.float64)
    _draw_values(module, torch.Generator().manual_seed(seed))
    return module


def _point(shape: tuple[int, ...], out: int, seed: int = 1) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    X = torch.empty(shape, dtype=torch.float64).uniform_(-2.0, 2.0, generator=gen)
    y = torch.empty(shape[0], out, dtype=torch.float64).uniform_(-1.0, 1.0, generator=gen)
    return X, y


def _assert_gradients_equal_autograd(module: nn.Module, net: Network, X: Tensor, y: Tensor) -> None:
    """The network's output and manual gradients equal torch's on ``module`` itself, and the
    gradients are keyed exactly as ``module.named_parameters()``."""
    cache = net.forward(X)
    grads = net.backward(cache, y)
    out, expected = torch_step(module, X, y, "mse")
    torch.testing.assert_close(cache.y_hat, out, **FLOAT64_ROUNDING)
    assert sorted(grads.torch_named()) == sorted([*(name for name, _ in module.named_parameters()), "input"])
    assert_same(grads.torch_named(), expected, gradient_rounding(grads))


# ---- a module used twice ----------------------------------------------------------------------
def test_an_activation_used_twice_is_converted_at_both_positions() -> None:
    act = nn.Tanh()
    module = _float64(nn.Sequential(nn.Linear(4, 4), act, nn.Linear(4, 3), act))
    net = from_torch(module)
    assert [layer.describe() for layer in net.layers] == ["Linear(4 -> 4)", "tanh", "Linear(4 -> 3)", "tanh"]
    _assert_gradients_equal_autograd(module, net, *_point((5, 4), 3))


def test_a_linear_used_twice_is_one_tied_parameter_used_twice() -> None:
    lin = nn.Linear(4, 4)
    module = _float64(nn.Sequential(lin, nn.Tanh(), lin, nn.Linear(4, 3)))
    net = from_torch(module)
    assert net.L == 4 and net.layers[0].params["W"] is net.layers[2].params["W"]
    assert set(net.parameters()) == {"W1", "b1", "W4", "b4"}  # the second use is a tie, not a parameter
    X, y = _point((5, 4), 3)
    _assert_gradients_equal_autograd(module, net, X, y)
    again = net.to_torch()  # the same function; the reused module becomes one Parameter in two modules
    assert isinstance(again, nn.Sequential)
    assert again[0].weight is again[2].weight
    torch.testing.assert_close(again(X), module(X), rtol=0, atol=0)


def test_a_module_with_running_statistics_used_twice_is_refused() -> None:
    norm = nn.BatchNorm1d(4)
    with pytest.raises(ValueError, match=r"module.0 \(BatchNorm1d\) is used again as module.2"):
        from_torch(nn.Sequential(norm, nn.Tanh(), norm))


# ---- nested Sequentials -----------------------------------------------------------------------
def test_a_nested_sequential_keeps_torchs_parameter_names_and_gradients() -> None:
    module = _float64(
        nn.Sequential(
            nn.Linear(3, 4),
            nn.Sequential(nn.Tanh(), nn.Linear(4, 4), nn.Sequential(nn.LayerNorm(4), nn.GELU())),
            nn.Linear(4, 2),
        )
    )
    net = from_torch(module)
    assert net.L == 3 and "W2.2" in net.parameters() and "gamma2.3.1" in net.parameters()
    X, y = _point((5, 3), 2)
    _assert_gradients_equal_autograd(module, net, X, y)  # "1.1.weight", "1.2.0.weight", ...
    again = net.to_torch()
    assert repr(again) == repr(module)
    assert [name for name, _ in again.named_parameters()] == [name for name, _ in module.named_parameters()]
    torch.testing.assert_close(again(X), module(X), rtol=0, atol=0)


def test_a_nested_sequential_starting_with_an_embedding_takes_indices() -> None:
    module = _float64(nn.Sequential(nn.Sequential(nn.Embedding(6, 3), nn.Tanh()), nn.Linear(3, 4)))
    net = from_torch(module, loss="cross_entropy")
    idx = torch.tensor([0, 5, 2, 2])
    y = torch.tensor([1, 3, 0, 2])
    grads = net.backward(net.forward(idx), y)
    module.zero_grad()
    F.cross_entropy(module(idx), y).backward()
    assert_same(grads.torch_named(), {name: p.grad for name, p in module.named_parameters()})  # type: ignore[misc]


# ---- the self-check ---------------------------------------------------------------------------
class _ShiftedTanh(nn.Module):
    """tanh(x) + 1: a module that a deliberately wrong converter below turns into plain tanh."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(x) + 1.0


@pytest.fixture
def wrong_converter() -> object:
    """A converter that gets its module wrong (forgets the + 1), registered for the test only."""
    CONVERTERS[_ShiftedTanh] = lambda module: Elementwise("tanh")
    yield
    del CONVERTERS[_ShiftedTanh]


@pytest.mark.usefixtures("wrong_converter")
def test_a_conversion_that_computes_another_function_is_refused_naming_the_position() -> None:
    module = _float64(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), _ShiftedTanh(), nn.Linear(4, 2)))
    with pytest.raises(ValueError, match=r"another function than the module: at module\[2\] \(_ShiftedTanh\), layer 3"):
        from_torch(module)


@pytest.mark.usefixtures("wrong_converter")
def test_the_self_check_runs_on_given_example_inputs_where_none_can_be_built() -> None:
    """An Embedding whose rows a Flatten merges: the built (2,) indices do not fit the LayerNorm
    after it, so only ``example_inputs`` lets the check run."""
    module = _float64(nn.Sequential(nn.Embedding(5, 2), nn.Linear(2, 3), nn.Flatten(), nn.LayerNorm(9), _ShiftedTanh()))
    from_torch(nn.Sequential(*list(module)[:-1]), example_inputs=(torch.tensor([[0, 1, 4]]),))  # agrees
    with pytest.raises(ValueError, match=r"at module\[4\] \(_ShiftedTanh\)"):
        from_torch(module, example_inputs=(torch.tensor([[0, 1, 4], [3, 3, 2]]),))


def test_a_sequential_whose_forward_does_more_is_refused() -> None:
    class Doubled(nn.Sequential):
        def forward(self, x: Tensor) -> Tensor:
            return 2.0 * super().forward(x)

    with pytest.raises(ValueError, match=r"the module's output .*does its forward do more than a Sequential"):
        from_torch(_float64(Doubled(nn.Linear(3, 3), nn.Tanh())))


@pytest.mark.parametrize(
    ("example_inputs", "error", "message"),
    [
        ([1.0, 2.0], TypeError, r"example_inputs must be a tuple of tensors, got list"),
        ((torch.ones(2, 3), torch.ones(2, 3)), ValueError, r"example_inputs has 2 tensors"),
        ((torch.ones(2, 5, dtype=torch.float64),), ValueError, r"the module fails on the input \(shape \(2, 5\)"),
    ],
    ids=["not-tensors", "two-tensors", "wrong-width"],
)
def test_bad_example_inputs_are_named(example_inputs: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        from_torch(_float64(nn.Sequential(nn.Linear(3, 3))), example_inputs=example_inputs)  # type: ignore[arg-type]


def test_from_torch_changes_neither_the_module_nor_torchs_random_state() -> None:
    module = _float64(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.5), nn.Linear(4, 2))).train()
    state = {name: t.clone() for name, t in module.state_dict().items()}
    rng = torch.get_rng_state()
    from_torch(module)
    capture_noise(module, torch.ones(3, 3, dtype=torch.float64))
    assert torch.equal(torch.get_rng_state(), rng)
    for name, t in module.state_dict().items():
        assert torch.equal(t, state[name]), name


# ---- capture_noise ----------------------------------------------------------------------------
def test_captured_masks_are_torchs_and_the_network_checks_against_autograd_with_them() -> None:
    drop = nn.Dropout(0.5)
    module = _float64(nn.Sequential(drop, nn.Linear(6, 6), nn.Sequential(nn.Tanh(), nn.Dropout(0.3)), drop))
    X, y = _point((8, 6), 6)
    X[::2, ::2] = 0.0  # exact zeros: the output cannot tell whether they were kept, the gradient can
    torch.manual_seed(0)
    noise = refbp.capture_noise(module, X)
    assert sorted(noise) == [(1,), (3, 2), (4,)]  # the reused Dropout once per call, in call order
    assert all(mask.dtype == torch.bool and mask.shape == (8, 6) for mask in noise.values())
    out, expected = torch_step(module, X, y, "mse")  # the module's next call: the same masks

    net = from_torch(module)
    cache = net.forward(X, noise=noise)
    torch.testing.assert_close(cache.y_hat, out, **FLOAT64_ROUNDING)
    grads = net.backward(cache, y)
    assert_same(grads.torch_named(), expected, gradient_rounding(grads))  # dJ/dX too, zeros included
    assert refbp.check(net, X, y, noise=noise).passed


def test_capture_noise_is_empty_in_eval_mode_and_refuses_a_module_it_cannot_run() -> None:
    module = _float64(nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5))).eval()
    assert capture_noise(module, torch.ones(2, 3, dtype=torch.float64)) == {}
    with pytest.raises(ValueError, match=r"the module fails on the input \(shape \(2, 4\)"):
        capture_noise(module, torch.ones(2, 4, dtype=torch.float64))


# ---- modes -----------------------------------------------------------------------------------
def test_to_torch_gives_each_module_its_own_mode() -> None:
    module = _float64(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.5), nn.Linear(4, 2)))
    module.train()
    module[1].eval()  # running statistics, while the dropout still drops
    again = from_torch(module).to_torch()
    assert (
        [m.training for m in again.children()] == [m.training for m in module.children()] == [True, False, True, True]
    )


def test_from_torch_keeps_each_inner_modules_mode_in_a_residual() -> None:
    body = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5))
    module = _float64(nn.Sequential(TorchResidual(body))).eval()
    body[1].train()
    net = from_torch(module)
    inner = net.layers[0].sublayers()[1]
    assert isinstance(inner, Dropout) and inner.training and inner.stochastic


# ---- seeds ------------------------------------------------------------------------------------
def _two_dropouts() -> nn.Sequential:
    return _float64(nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.Dropout(0.5)))


def test_from_torch_never_wraps_a_seed_past_max_seed() -> None:
    from_torch(_two_dropouts(), seed=MAX_SEED - 1)  # seeds MAX_SEED - 1 and MAX_SEED: fine
    with pytest.raises(
        ValueError, match=rf"seed={MAX_SEED} is too large: dropout 1 of 2 .* expected seed <= {MAX_SEED - 1}"
    ):
        from_torch(_two_dropouts(), seed=MAX_SEED)


def test_dropout_k_draws_from_seed_plus_k() -> None:
    net = from_torch(_two_dropouts(), seed=7)
    X = torch.ones(6, 4, dtype=torch.float64)
    noise = net.forward(X).noise
    for k, path in enumerate([(2,), (3,)]):
        alone = Network([Dropout(0.5, seed=7 + k)], "mse").train()
        assert torch.equal(noise[path], alone.forward(net.forward(X, noise=noise).a[path[0] - 1]).noise[(1,)])


@pytest.mark.parametrize(
    ("seed", "error", "message"),
    [
        (-1, ValueError, r"seed=-1 is out of range; expected an int in \[0, 4294967295\]"),
        (2**32, ValueError, r"seed=4294967296 is out of range"),
        (1.0, TypeError, r"seed=1.0 must be an int"),
        ("3", TypeError, r"seed='3' must be an int"),
        (True, TypeError, r"seed=True must be an int"),
    ],
)
def test_a_bad_seed_is_refused_the_same_way_by_from_torch_and_dropout(seed: object, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        from_torch(_two_dropouts(), seed=seed)  # type: ignore[arg-type]
    with pytest.raises(error, match=message):
        Dropout(0.5, seed=seed)  # type: ignore[arg-type]


# ---- the house: a ground-floor registry, no circle through convert ---------------------------------
NN = pathlib.Path(refbp.__file__).parent / "nn"


def _imports(path: pathlib.Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports included), as written."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            found.add("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_no_layer_module_and_not_the_network_imports_convert() -> None:
    """convert imports the layers and the network; none of them imports convert back (they
    register their converters in refbp.nn.registry, on the ground floor)."""
    importers = [p.name for p in sorted(NN.glob("*.py")) if p.name != "convert.py" and ".convert" in _imports(p)]
    assert importers == []
    assert "importlib" not in _imports(NN / "convert.py")
    from refbp.nn.convert import register  # still importable where older layers look for it
    from refbp.nn.registry import register as registry_register

    assert register is registry_register


def test_to_torch_keeps_each_inner_modules_mode_in_a_residual() -> None:
    """A residual whose inner BatchNorm is in eval mode next to a Dropout in training comes back so."""
    body = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4).eval(), nn.Dropout(0.3).train())
    net = refbp.from_torch(nn.Sequential(TorchResidual(body), nn.Linear(4, 2)).double())
    back = net.to_torch()
    modes = [m.training for m in back.modules() if isinstance(m, (nn.BatchNorm1d, nn.Dropout))]
    assert modes == [False, True]


def test_a_gpt_seed_too_close_to_max_seed_is_refused_not_wrapped() -> None:
    """The GPT's dropouts draw from seed + 7919 k: near MAX_SEED that would wrap onto small seeds."""
    from refbp.models import GPT
    from refbp.nn.validation import MAX_SEED

    with pytest.raises(ValueError, match="seeds are never wrapped"):
        GPT.random(vocab_size=5, block_size=4, n_layer=1, n_head=1, n_embd=4, dropout=0.1, seed=MAX_SEED)
