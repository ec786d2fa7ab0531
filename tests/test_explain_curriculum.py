"""``refbp explain --model cnn`` and ``--model lstm``: the convolution as im2col, max-pool's
argmax and BPTT step by step, every quantity the layers' own and checked against torch; a
wrong layer is seen where it is wrong."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from refbp.apps.cli import main
from refbp.apps.explain_cnn import cnn_network, cnn_point, cnn_walkthrough, walk_cnn
from refbp.apps.explain_guided import GuidedWalk
from refbp.apps.explain_lstm import lstm_network, lstm_point, lstm_walkthrough, walk_lstm
from refbp.apps.render import agrees
from refbp.nn.conv import Conv2d
from refbp.nn.layer import BackwardContext, LayerGradients
from refbp.nn.layers import LSTM
from refbp.nn.lstm import LSTMLayer
from refbp.nn.network import Network


@pytest.fixture(scope="module")
def cnn() -> GuidedWalk:
    return cnn_walkthrough()


@pytest.fixture(scope="module")
def lstm() -> GuidedWalk:
    return lstm_walkthrough()


def _shown(w: GuidedWalk) -> dict[str, Tensor]:
    return {q.label: q.value for entry in w.page.entries for q in entry.quantities}


def _failing(w: GuidedWalk) -> list[str]:
    return [q.label for e in w.page.entries for q in e.quantities if q.check is not None and not agrees(q.check)]


def test_the_cnn_walk_shows_im2col_and_argmax_and_torch_agrees_with_every_step(cnn: GuidedWalk) -> None:
    assert cnn.passed and len(cnn.checks) == 16  # 6 forward values and 10 gradients, each judged
    assert {c.reference for c in cnn.checks} == {"torch", "autograd"}
    text = cnn.render(ascii_only=True)
    steps = ("X_col = unfold(X)", "(N, C k_h k_w, L) = (2, 9, 16)", "W_mat X_col_n", "argmax(3)",
             "dJ/dW(1) = sum_n dJ/dZ_n X_col_n^T", "dJ/dX = fold(W_mat^T dJ/dZ_n)", "conv_transpose2d")  # fmt: skip
    for step in steps:
        assert step in text, step
    assert "[FAIL]" not in text


def test_the_cnn_walk_s_numbers_satisfy_the_im2col_equations_it_states(cnn: GuidedWalk) -> None:
    shown, X = _shown(cnn), cnn.walk.X
    conv = cnn.walk.net.layers[0]
    assert isinstance(conv, Conv2d)
    cols = F.unfold(X, (3, 3), padding=1)  # (N, C k_h k_w, L)
    dZ = shown["dJ/dz(1) = dJ/da1"].reshape(X.shape[0], conv.C_out, -1)  # (N, C_out, L)
    dJ_dW = (dZ @ cols.transpose(1, 2)).sum(dim=0).reshape(conv.W.shape)  # sum_n dZ_n X_col_n^T
    torch.testing.assert_close(shown["dJ/dW1"], dJ_dW)
    W_mat = conv.W.reshape(conv.C_out, -1)  # (C_out, C k_h k_w)
    dJ_dX = F.fold(W_mat.T @ dZ, X.shape[2:], (3, 3), padding=1)  # col2im of W_mat^T dZ_n
    torch.testing.assert_close(shown["dJ/dX"], dJ_dX)


def test_max_pool_sends_each_window_s_gradient_to_the_argmax_the_walk_shows(cnn: GuidedWalk) -> None:
    shown = _shown(cnn)
    argmax = next(value for label, value in shown.items() if label.startswith("argmax(3)"))  # (N, C, 2, 2)
    dJ_da3, dJ_da2 = shown["dJ/da3"], shown["dJ/da2"]  # (N, C, 2, 2), (N, C, 4, 4)
    windows = dJ_da2.unfold(2, 2, 2).unfold(3, 2, 2).reshape(*argmax.shape, 4)  # each window's 4 entries
    routed = torch.zeros_like(windows).scatter_(-1, argmax.unsqueeze(-1), dJ_da3.unsqueeze(-1))
    torch.testing.assert_close(windows, routed)  # all of it at the argmax, nothing elsewhere


class _UnflippedConv(Conv2d):
    """dJ/dX as a correlation with the kernel not flipped: a classic transposed-convolution bug."""

    def backward(self, dJ_dz: Tensor, x: Tensor, out: Tensor, cache: Any, ctx: BackwardContext) -> LayerGradients:
        grads = super().backward(dJ_dz, x, out, cache, ctx)
        grads.dJ_dx = F.conv2d(dJ_dz, self.W.transpose(0, 1), padding=1)  # should be W flipped in both directions
        return grads


def test_a_convolution_with_the_kernel_not_flipped_makes_the_walk_differ_at_dJ_dX_only() -> None:
    good = cnn_network(0)
    conv = good.layers[0]
    assert isinstance(conv, Conv2d)
    broken = Network([_UnflippedConv(conv.W.clone(), conv.params["b"].clone(), padding=1), *good.layers[1:]],
                     "cross_entropy")  # fmt: skip
    X, y = cnn_point(2, 0)
    w = walk_cnn(broken, X, y)
    assert not w.passed and _failing(w) == ["dJ/dX"]  # dJ/dW1, dJ/db1 and everything above agree
    text = w.render(ascii_only=True)
    assert "[FAIL]" in text and "differ by more than" in text


def test_the_lstm_walk_goes_forward_t_1_to_T_and_back_T_to_1_and_agrees(lstm: GuidedWalk) -> None:
    assert lstm.passed and {c.reference for c in lstm.checks} == {"torch", "autograd"}
    tags = [e.tag for e in lstm.page.entries if e.tag.startswith("[t=")]
    forward, backward = tags[:6], tags[6:]
    assert forward == ["[t=1]", "[t=1]", "[t=2]", "[t=2]", "[t=3]", "[t=3]"]
    assert backward == ["[t=3]"] * 3 + ["[t=2]"] * 3 + ["[t=1]"] * 3
    shown = _shown(lstm)
    for t in (1, 2, 3):
        for kind in ("h", "c", "i", "f", "g", "o"):
            assert f"dJ/d{kind}1.1.{t}" in shown and f"{kind}(1.1.{t})" in shown  # the layer's own keys
    assert {"dJ/dW_ih1.1", "dJ/dW_hh1.1", "dJ/dh_init1.1", "dJ/dc_init1.1", "dJ/dX"} <= set(shown)
    assert not shown["dJ/dh_3 through step 4, which does not exist: 0"].any()
    assert shown["dJ/dh_2 through step 3"].abs().sum() > 0  # the step after hands gradient back
    assert shown["dJ/dc_2 o f_2, the cell path from step 2"].abs().sum() > 0


class _NoCellPath(LSTMLayer):
    """An LSTM whose BPTT misses the cell-state path: dJ/dc_t only through h_t."""

    def total_dJ_dc(self, through_h: Tensor, from_next: Tensor) -> Tensor:
        return through_h


def test_an_lstm_missing_the_cell_path_differs_from_step_T_minus_1_down() -> None:
    good = lstm_network(0)
    cell = good.layers[0].sublayers()[0]
    assert isinstance(cell, LSTMLayer)
    params = [cell.params[kind].clone() for kind in ("W_ih", "W_hh", "b_ih", "b_hh")]
    broken = Network([LSTM(_NoCellPath(*params, batch_first=True)), good.layers[1]], "cross_entropy")
    X, y = lstm_point(1, 0)
    w = walk_lstm(broken, X, y)
    failing = _failing(w)
    assert not w.passed and failing[0] == "dJ/dc1.1.2"  # step T has no cell path to miss
    assert "dJ/dc1.1.3" not in failing and "dJ/dh1.1.3" not in failing
    assert "[FAIL]" in w.render(ascii_only=True) and "✗" in w.render(markdown=True)


@pytest.mark.parametrize("model", ["cnn", "lstm"])
def test_explain_model_runs_from_the_command_line_and_seed_and_batch_change_the_walk(
    model: str, capsys: pytest.CaptureFixture[str]
) -> None:
    outputs = []
    for extra in ([], ["--seed", "5"], ["--batch", "3"]):
        assert main(["explain", "--model", model, "--ascii", *extra]) == 0
        outputs.append(capsys.readouterr().out)
    default, seed5, batch3 = outputs
    assert seed5 != default and batch3 != default
    assert all("[FAIL]" not in out and "agree with torch" in out for out in outputs)
    assert ("N = 3 images" if model == "cnn" else "B = 3 sequences") in " ".join(batch3.split())
    assert main(["explain", "--model", model, "--markdown"]) == 0
    assert "## Backward pass" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "cnn", "--loss", "mse"], "--loss mse: --model cnn is trained with cross_entropy"),
        (["--model", "lstm", "--dims", "2,3,1"], "--dims describes the seed's MLP"),
        (["--model", "lstm", "--batch", "0"], "--batch=0 is out of range"),
        (["--model", "cnn", "--seed", "-2"], "--seed"),
        (["--model", "rnn"], "invalid choice: 'rnn'"),
    ],
)
def test_a_bad_option_for_a_guided_model_exits_2_with_one_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["explain", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize(("path", "walkthrough"), [("docs/explain_cnn.md", cnn_walkthrough),
                                                   ("docs/explain_lstm.md", lstm_walkthrough)])  # fmt: skip
def test_the_committed_guided_docs_equal_what_explain_markdown_generates(path: str, walkthrough: Any) -> None:
    committed = (Path(__file__).resolve().parent.parent / path).read_text(encoding="utf-8")
    assert committed == walkthrough().render(markdown=True), f"{path} is stale: run python scripts/make_docs.py"
