"""The benchmarks' code paths run on tiny sizes and write reports with every section.

No timing is asserted: these only prove that ``make bench`` will not crash and that its
report has the expected shape."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from benchmarks import layers, memory, time_backprop
from benchmarks.common import benchmark_network
from benchmarks.report import render_markdown, target_verdicts

TINY_GRID: dict[str, list[Any]] = {"batch": [8], "width": [4], "dtype": [torch.float64], "activation": ["relu"]}


def test_every_timed_method_computes_the_same_gradients_as_autograd() -> None:
    net, X, y = benchmark_network(4, batch=8, activation="tanh")
    manual = time_backprop.manual_step(net, X, y)()
    full = time_backprop.manual_full(net, X, y)()
    for a, b in zip(manual.dJ_dW, full.dJ_dW, strict=True):  # type: ignore[attr-defined]
        if a is not None:
            torch.testing.assert_close(a, b)
    J = time_backprop.autograd_step(net, X, y)()
    assert isinstance(J, torch.Tensor) and float(J.detach()) > 0.0


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_the_floor_step_runs_the_forward_pass_that_every_step_runs(activation: str) -> None:
    # the floor is a lower bound only if it does work every step must do: a(i) = f(z(i)) by torch's
    # own function between the products. With zero biases its a(L) is the network's output.
    net, X, _ = benchmark_network(6, batch=8, activation=activation, dtype=torch.float64)
    for b in net.biases:
        b.zero_()
    a = time_backprop.floor_step(net, X)()
    torch.testing.assert_close(a[-1], net.forward(X).y_hat, rtol=0, atol=1e-12)
    assert any(bool((z < 0).any()) for z in a[:-1]) == (activation == "tanh")  # relu's a(i) >= 0


def test_time_grid_rows_have_their_ratios() -> None:
    rows = time_backprop.time_grid(TINY_GRID, repeats=1, work_per_repeat=1e4)
    assert {"manual/autograd", "manual/gemm", "autograd/gemm", "manual_full/autograd", "floor/autograd"} <= set(rows[0])


def test_quick_run_writes_markdown_and_json_with_every_section(tmp_path: Path) -> None:
    from benchmarks.run import main

    assert main(["--quick", "--skip-suite", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "BENCHMARKS.md").read_text()
    for section in ("## Targets", "## 1.", "## 2.", "## 3.", "## 4.", "## 5. CUDA"):
        assert section in text
    doc = json.loads((tmp_path / "benchmarks.json").read_text())
    assert [r["mode"] for r in doc["memory"]] == list(memory.MODES)
    assert doc["finite_differences"][0]["parameters"] == 3 * (5 * 5 + 5)
    for key in ("torch", "threads", "cpu", "date"):
        assert key in doc["environment"]
    assert {"time_cpu", "memory", "finite_differences", "harness", "time_cuda"} <= set(doc)
    if not torch.cuda.is_available():
        assert "skipped: no CUDA GPU visible" in text
    assert render_markdown(doc) == text
    assert target_verdicts(doc)
    assert "## 6. Each layer" in text
    assert [r["layer"] for r in doc["layers"]["rows"]] == list(layers.LAYERS)
    assert "## 7. Cold start" in text and not doc["startup"]["sympy_loaded"]  # a check imports no sympy
    assert 0 < doc["startup"]["import_refbp_s"] < doc["startup"]["import_torch_s"]  # import refbp skips torch


@pytest.mark.parametrize("name", layers.LAYERS)
def test_each_layers_timed_steps_compute_the_same_gradients(name: str) -> None:
    case = layers.make_case(name, N=8, d=16, V=10)
    manual = layers.manual_gradients(case, layers.manual_step(case)())
    autograd = layers.autograd_step(case)()
    assert sorted(manual) == sorted(autograd)
    for key, value in autograd.items():
        if case.layer.stochastic:  # torch draws its own dropout mask: only the shapes can agree
            assert manual[key].shape == value.shape
        else:
            torch.testing.assert_close(manual[key], value, msg=f"{name}, {key}: refbp and autograd differ")


def test_layers_only_merges_item_6_into_the_existing_report(tmp_path: Path) -> None:
    from benchmarks.run import main

    shutil.copy(Path(__file__).resolve().parent.parent / "reports" / "benchmarks.json", tmp_path)
    before = json.loads((tmp_path / "benchmarks.json").read_text())
    assert main(["--layers-only", "--quick", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "benchmarks.json").read_text())
    assert {k: v for k, v in doc.items() if k != "layers"} == {k: v for k, v in before.items() if k != "layers"}
    assert doc["layers"]["quick"] and doc["layers"]["command"].endswith("--layers-only --quick --out " + str(tmp_path))
    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert "## 1." in text and "## 6. Each layer" in text


@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
def test_the_recurrent_floor_runs_the_products_of_bptt_at_the_modules_shapes(kind: str) -> None:
    # each product's shapes come from the module's own weights: a W_ih or W_hh taken the wrong way
    # round (or a gate count that is not the module's) fails in torch.mm
    from benchmarks import recurrent

    case = recurrent.make_case({"B": 3, "T": 4, "d": 5, "H": 6}, kind=kind)
    dx = recurrent.gemm_floor(case.module, case.X)()
    assert dx.shape == (3 * 4, 5)
