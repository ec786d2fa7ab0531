"""benchmarks/gpt.py runs every code path on a tiny GPT and writes its report; no timing is asserted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import gpt


def test_quick_run_writes_markdown_json_and_figure(tmp_path: Path) -> None:
    # times in this process; the peak memory comes from a child process with the mmap threshold set
    assert gpt.main(["--quick", "--no-compile", "--repeats", "2", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "gpt_benchmarks.json").read_text())
    row = doc["rows"][0]
    assert set(row["seconds"]) == {"manual", "autograd"} and row["time_vs_autograd"]["autograd"] == 1.0
    assert {"wall_seconds", "peak_bytes", "memory_vs_autograd", "failures"} <= set(row)
    text = (tmp_path / "GPT_BENCHMARKS.md").read_text()
    assert text == gpt.render_markdown(doc) and "## Ratios to eager autograd" in text
    pytest.importorskip("matplotlib")
    assert (tmp_path / "gpt_benchmarks.png").read_bytes().startswith(b"\x89PNG")
