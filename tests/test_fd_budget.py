"""Finite differences that pay for precision only where it decides, and fd_mode "auto" under a
time budget: the cheap pass changes no verdict, each tensor says what it cost and what covered
it, copies that start mid-network equal whole runs, and the budget never drops a reference
silently."""

from __future__ import annotations

import json
import math
import time

import pytest
import torch

import refbp
from refbp.apps.arguments import check_fd_budget
from refbp.apps.cli import main as cli_main
from refbp.models import GPT
from refbp.nn.layer import Params
from refbp.verify import finite_diff
from refbp.verify.cases import CaseSpec
from refbp.verify.fd_core import PieceRecorder, oracle_J_from
from refbp.verify.finite_diff import more_directions, network_finite_differences, plan_differences
from refbp.verify.reference import autograd_gradients, oracle_point
from refbp.verify.rows import fd_row
from refbp.verify.tolerances import FD_ERROR_SAFETY, tolerance_for


def _tiny_gpt(dtype: torch.dtype = torch.float64) -> tuple[GPT, torch.Tensor, torch.Tensor]:
    net = GPT.random(vocab_size=7, block_size=4, n_layer=2, n_head=2, n_embd=4, seed=3, dtype=dtype)
    g = torch.Generator().manual_seed(1)
    return net, torch.randint(0, 7, (2, 4), generator=g), torch.randint(0, 7, (2, 4), generator=g)


def _mlp(dtype: str = "float64") -> tuple[refbp.MLP, torch.Tensor, torch.Tensor]:
    case = CaseSpec(dims=(3, 5, 2), activations=("tanh", "identity"), loss="mse", seed=4, batch=4, dtype=dtype).build()
    return case.net, case.X, case.y


# ---- the cheap pass -----------------------------------------------------------------------------
def test_smooth_entries_are_settled_by_the_cheap_pass_at_two_evaluations_each() -> None:
    net, X, y = _mlp()
    result = refbp.check(net, X, y, fd_mode="full")
    rows = [row for row in result.rows if row.reference == "fd-full"]
    assert result.passed and rows
    assert all(row.evaluations == 2 * row.n_elements for row in rows)  # +h and -h, nothing more


def test_entries_the_cheap_pass_cannot_confirm_get_the_error_estimate_and_are_contradicted() -> None:
    net, X, y = _mlp()
    grads = net.backward(net.forward(X), y).as_dict()
    wrong = grads["W1"].clone()
    wrong[0, 0] += 0.5  # one entry wrong
    result = refbp.check(net, X, y, grads={"W1": wrong}, references=("fd",), fd_mode="full")
    (row,) = result.rows
    assert row.verdict == "mismatch" and row.n_mismatched == 1 and row.worst_index == (0, 0)
    # 2 per entry, 2 more for the wrong one (D(2h)), and the rounding probes for its estimate
    assert row.evaluations == 2 * wrong.numel() + 2 + 4


@pytest.mark.parametrize(
    ("net", "mode", "scale"),
    [("mlp", "full", 1.0 + 3e-5), ("mlp", "full", 1.01), ("gpt", "directional", 1.0), ("gpt", "directional", 1.01)],
)
def test_the_cheap_pass_changes_no_verdict(net: str, mode: str, scale: float) -> None:
    """check's rows (cheap pass, then the estimate where it does not decide) judge as rows
    built from differences that all carry their error estimate."""
    model, X, y = _mlp("float32") if net == "mlp" else _tiny_gpt(torch.float32)
    grads = {name: g * scale for name, g in model.backward(model.forward(X), y).as_dict().items()}
    if net == "gpt":  # a few of each kind, every layer: embeddings, attention, block, output
        grads = {name: grads[name] for name in ("E1", "W_qkv4.2", "att4.2", "gamma5.4", "W5.7", "a6")}
    result = refbp.check(model, X, y, grads=grads, references=("fd",), fd_mode=mode, directions=3, seed=2)
    estimated = network_finite_differences(model, X, y, list(grads), mode=mode, directions=3, seed=2)
    tol = tolerance_for(torch.float32)
    for row in result.rows:
        full = fd_row(row.name, grads[row.name], estimated[row.name], mode, tol, row.widened)
        assert row.verdict == full.verdict, (row.message(), full.message())


# ---- starting mid-network ---------------------------------------------------------------------
def test_a_run_from_a_later_layer_equals_the_whole_oracle() -> None:
    net, idx, targets = _tiny_gpt()
    X64, y64, noise64 = oracle_point(net, idx, targets, {}, dtype=torch.float64, device=torch.device("cpu"))
    params = Params(net.oracle_params(dtype=torch.float64), net.ties)
    record = PieceRecorder()
    with torch.no_grad():
        J = net.torch_J(X64, y64, params, noise64, record)
        for first in range(1, len(net.layers) + 1):
            x = X64 if first == 1 else record.values[refbp.nn.keys.Key("a", (first - 1,))]
            assert torch.equal(oracle_J_from(net, first, x, y64, params, noise64, PieceRecorder()), J)


def test_differences_started_mid_network_are_directional_derivatives_of_J() -> None:
    net, idx, targets = _tiny_gpt()
    _, reference = autograd_gradients(net, idx, targets)
    names = ["E1", "P2", "W_qkv4.2", "att4.2", "a4.5", "gamma5.4", "W5.7", "a5", "gamma6", "a6"]
    fd = network_finite_differences(net, idx, targets, names, mode="directional", directions=3)
    for name in names:
        V = fd[name].directions
        assert V is not None
        expected = torch.tensordot(V, reference[name], dims=reference[name].dim())
        # each difference within its own error estimate (as compare() allows it), plus J's
        # rounding over the step where the estimate is 0 (a few 1e-12 here)
        gap = (fd[name].values - expected).abs()
        assert (gap <= FD_ERROR_SAFETY * fd[name].error + 1e-10).all(), (name, gap, fd[name].error)


def test_a_wrong_gradient_of_the_last_block_is_caught_by_differences_alone() -> None:
    net, idx, targets = _tiny_gpt()
    grads = net.backward(net.forward(idx), targets).as_dict()
    for name in ("W5.7", "a5.5"):
        wrong = {name: grads[name] * 1.01}
        result = refbp.check(net, idx, targets, grads=wrong, references=("fd",), fd_mode="directional")
        assert [t.verdict for t in result.tensors] == ["mismatch"]


# ---- the budget -------------------------------------------------------------------------------
@pytest.fixture
def directional_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """fd_mode "auto" takes every network as one too large for full mode (where the budget acts)."""
    monkeypatch.setattr(finite_diff, "FD_AUTO_MAX_ENTRIES", 0)


@pytest.mark.usefixtures("directional_size")
def test_a_spent_budget_leaves_tensors_to_autograd_and_says_so() -> None:
    net, idx, targets = _tiny_gpt()
    result = refbp.check(net, idx, targets, budget_s=1e-9)
    assert result.passed, result.failure_message()
    assert all(row.reference == "autograd" for row in result.rows)
    assert all(t.coverage.startswith("autograd only: the finite-difference budget") for t in result.tensors)
    assert json.loads(json.dumps(result.to_dict()))["tensors"][0]["coverage"] == result.tensors[0].coverage


@pytest.mark.usefixtures("directional_size")
def test_a_spent_budget_still_gives_every_tensor_a_direction_when_differences_are_the_only_reference() -> None:
    net, idx, targets = _tiny_gpt()
    result = refbp.check(net, idx, targets, references=("fd",), budget_s=1e-9)
    assert result.passed, result.failure_message()
    assert {row.name for row in result.rows} == set(net.names())
    assert all(row.reference == "fd-directional" for row in result.rows)
    # one direction each, and more only where the first decided nothing (too imprecise to confirm)
    assert {row.directions for row in result.rows} <= {1, 2, 4, 8} and min(row.directions for row in result.rows) == 1


@pytest.mark.usefixtures("directional_size")
def test_a_budget_does_not_hide_a_wrong_gradient() -> None:
    net, idx, targets = _tiny_gpt()
    grads = net.backward(net.forward(idx), targets).as_dict()
    wrong = {"W5.5": grads["W5.5"] * 1.01, "b5.5": grads["b5.5"]}
    for budget in (1e-9, None):
        result = refbp.check(net, idx, targets, grads=wrong, budget_s=budget, directions=1)
        assert [t.verdict for t in result.tensors] == ["mismatch", "passed"]


def test_networks_small_enough_for_full_mode_are_not_cut_by_the_budget() -> None:
    net, idx, targets = _tiny_gpt()
    grads = net.backward(net.forward(idx), targets).as_dict()
    result = refbp.check(net, idx, targets, grads={"W5.7": grads["W5.7"], "a6": grads["a6"]}, budget_s=1e-9)
    assert result.passed and result.fd_mode == "full"
    assert [(row.name, row.reference) for row in result.rows if row.reference.startswith("fd")] == [
        ("W5.7", "fd-full"),
        ("a6", "fd-full"),
    ]


def test_the_plan_is_by_size_without_a_budget_and_by_time_with_one() -> None:
    def plan(sizes: dict[str, int], budget: float | None, *, started: float, optional: bool = True) -> list[tuple]:
        names = list(sizes)
        return list(plan_differences(names, sizes, directions=8, optional=optional, budget_s=budget,
                                     started=started, per_copy=lambda: 1e-3, guess=1e-3, priority=names))  # fmt: skip

    now = time.perf_counter()
    assert plan({"W1": 10, "b1": 2}, None, started=now) == [("W1", "full", 0), ("b1", "full", 0)]
    big = {"W1": 30_000, "b1": 2}  # more than FD_AUTO_MAX_ENTRIES: directional
    assert plan(big, None, started=now) == [("W1", "directional", 8), ("b1", "directional", 8)]
    # beside autograd: one direction each while the budget lasts (more only where undecided, later)
    assert plan(big, 1.0, started=now) == [("W1", "directional", 1), ("b1", "directional", 1)]
    shared = plan(big, 0.006, started=now, optional=False)  # alone: 3 directions' worth, shared by two tensors
    assert shared[0] == ("W1", "directional", 1) and 1 <= shared[1][2] <= 3
    assert plan(big, 1.0, started=now, optional=False) == [("W1", "directional", 8), ("b1", "directional", 8)]
    spent = now - 10.0  # the budget was spent ten seconds ago
    assert plan(big, 1.0, started=spent) == []
    assert plan(big, 1.0, started=spent, optional=False) == [("W1", "directional", 1), ("b1", "directional", 1)]
    # full mode is by size alone: the same rows whatever the machine's load
    assert plan({"W1": 10, "b1": 2}, 1.0, started=spent) == [("W1", "full", 0), ("b1", "full", 0)]


@pytest.mark.parametrize(
    ("budget", "error"),
    [("2", TypeError), (True, TypeError), (0, ValueError), (-1.0, ValueError), (math.nan, ValueError),
     (math.inf, ValueError)],
)  # fmt: skip
def test_check_refuses_a_budget_that_is_not_seconds(budget: object, error: type[Exception]) -> None:
    net, X, y = _mlp()
    with pytest.raises(error, match="budget_s"):
        refbp.check(net, X, y, budget_s=budget)  # type: ignore[arg-type]


def test_cli_fd_budget_takes_seconds_or_none_and_refuses_the_rest(capsys: pytest.CaptureFixture[str]) -> None:
    case = '{"dims": [2, 3, 1], "activations": ["tanh", "identity"], "loss": "mse", "seed": 1}'
    assert cli_main(["check", "--case", case, "--json", "--fd-budget", "none"]) == 0
    assert all("evaluations" in row for row in json.loads(capsys.readouterr().out)["rows"])
    for bad in ("abc", "0", "-2", "nan"):
        with pytest.raises(ValueError, match="--fd-budget"):
            check_fd_budget(bad)
    assert cli_main(["check", "--case", case, "--fd-budget", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --fd-budget") and "Traceback" not in err


def test_more_directions_double_up_to_the_cap_only() -> None:
    assert list(more_directions(1, 8)) == [1, 2, 4]
    assert list(more_directions(3, 8)) == [3, 2]
    assert list(more_directions(8, 8)) == [8]  # asked for 8: one more round of 8 at most
