"""Loss rules any network follows (issue 16): bce refused after a last layer whose outputs can
leave [0, 1], at construction of any Network; cross_entropy's ignore_index as F.cross_entropy's
(-100 by default, another one through the loss record), checked against torch.autograd."""

from __future__ import annotations

import pathlib

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from refbp.nn.convert import from_torch
from refbp.nn.layers import Dense, Dropout, Elementwise, Linear
from refbp.nn.losses import cross_entropy
from refbp.nn.network import Network
from tests.test_convert import _draw_values, assert_same, gradient_rounding


def _float64(module: nn.Sequential, seed: int = 0) -> nn.Sequential:
    """``module`` in float64 with its parameters drawn from ``seed`` (torch's global state untouched)."""
    module = module.to(torch.float64)
    _draw_values(module, torch.Generator().manual_seed(seed))
    return module


def _X(shape: tuple[int, ...], seed: int = 1) -> Tensor:
    return torch.empty(shape, dtype=torch.float64).uniform_(-2.0, 2.0, generator=torch.Generator().manual_seed(seed))


# ---- loss pairings ----------------------------------------------------------------------------
def _W(d_out: int, d_in: int) -> Tensor:
    return torch.ones(d_out, d_in, dtype=torch.float64)


@pytest.mark.parametrize(
    "layers",
    [
        lambda: [Linear(_W(2, 3))],
        lambda: [Linear(_W(2, 3)), Elementwise("tanh")],
        lambda: [Dense(_W(2, 3), torch.zeros(2, dtype=torch.float64), "relu")],
        lambda: [Linear(_W(2, 3)), Elementwise("sigmoid"), Dropout(0.5)],
    ],
    ids=["linear", "tanh", "dense-relu", "sigmoid-then-dropout"],
)
def test_bce_after_a_last_layer_that_is_not_a_sigmoid_is_refused_at_construction(layers: object) -> None:
    with pytest.raises(ValueError, match=r"loss='bce' needs outputs in \[0, 1\], but the last layer, layer \d"):
        Network(layers(), "bce")  # type: ignore[operator]


def test_bce_after_a_sigmoid_is_accepted_and_from_torch_refuses_it_after_a_linear() -> None:
    Network([Linear(_W(2, 3)), Elementwise("sigmoid")], "bce")
    Network([Dense(_W(2, 3), torch.zeros(2, dtype=torch.float64), "sigmoid")], "bce")
    with pytest.raises(ValueError, match=r"loss='bce' needs outputs in \[0, 1\].*Linear\(3 -> 2\).*any value"):
        from_torch(nn.Sequential(nn.Linear(3, 2)), loss="bce")


# ---- cross_entropy's ignore_index ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("loss", "ignore_index"), [("cross_entropy", -100), (cross_entropy(ignore_index=-1), -1)], ids=["default", "-1"]
)
def test_cross_entropy_ignores_targets_as_torch_does(loss: object, ignore_index: int) -> None:
    module = _float64(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)))
    X = _X((5, 3))
    y = torch.tensor([2, ignore_index, 0, ignore_index, 1])
    net = from_torch(module, loss=loss)  # type: ignore[arg-type]
    grads = net.backward(net.forward(X), y)
    module.zero_grad()
    inp = X.clone().requires_grad_()
    F.cross_entropy(module(inp), y, ignore_index=ignore_index).backward()
    expected = {name: p.grad for name, p in module.named_parameters()}
    assert_same(grads.torch_named(), {**expected, "input": inp.grad}, gradient_rounding(grads))  # type: ignore[dict-item]


def test_a_target_that_is_neither_a_class_nor_the_ignore_index_is_still_refused() -> None:
    net = from_torch(_float64(nn.Sequential(nn.Linear(3, 3))), loss="cross_entropy")
    cache = net.forward(torch.ones(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"y\[1\] = -1 is not a class index; expected 0 <= y < 3 \(or -100, ignored\)"):
        net.backward(cache, torch.tensor([0, -1]))


def test_cross_entropy_refuses_an_ignore_index_that_is_not_an_int() -> None:
    with pytest.raises(TypeError, match=r"ignore_index=True must be an int or None"):
        cross_entropy(ignore_index=True)


@pytest.mark.parametrize("option", ["explain --stack", "check --spec"])
def test_a_layer_spec_with_bce_after_a_linear_exits_2_with_one_line(
    option: str, capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path
) -> None:
    """Layer specs build a Network, so the CLI gets the refusal with no code of its own."""
    import json

    from refbp.apps.cli import main

    spec = {"input": 3, "layers": [["linear", 4], ["tanh"], ["linear", 2]], "loss": "bce", "seed": 0}
    command, flag = option.split()
    path = tmp_path / "net.json"
    path.write_text(json.dumps(spec))
    assert main([command, flag, json.dumps(spec) if flag == "--stack" else str(path)]) == 2
    err = capsys.readouterr().err
    assert "loss='bce' needs outputs in [0, 1]" in err and len(err.strip().splitlines()) == 1
