"""The benchmarks' code paths run on tiny sizes and write reports with every section.

No timing is asserted: these only prove that ``make bench`` will not crash and that its
report has the expected shape."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from benchmarks import memory, time_backprop
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


def test_time_grid_rows_have_their_ratios() -> None:
    rows = time_backprop.time_grid(TINY_GRID, repeats=1, work_per_repeat=1e4)
    assert {"manual/autograd", "manual/gemm", "autograd/gemm", "manual_full/autograd"} <= set(rows[0])


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
