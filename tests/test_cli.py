"""The command line: the report job writes complete, deterministic files as one set; bad
usage exits 2 with one readable line and no traceback (more in test_faults.py, test_io.py)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

import refbp
from refbp.apps.cli import main
from refbp.apps.report import build_json, render_markdown, write_plot
from refbp.apps.sweep import CaseOutcome, components, sweep_specs
from refbp.models.gpt_cases import GPTSpec
from refbp.verify.cases import REGIMES, CaseSpec
from refbp.verify.stacks import StackSpec


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "refbp", *args], capture_output=True, text=True, timeout=300)


def test_report_writes_markdown_json_and_plot_and_exits_0(tmp_path: Path) -> None:
    assert main(["report", "--examples", "6", "--seed", "3", "--out", str(tmp_path), "--no-progress"]) == 0
    doc = json.loads((tmp_path / "report.json").read_text())
    assert doc["schema"] == "refbp.report/2"
    assert set(doc) == {"schema", "environment", "settings", "summary", "coverage", "cases", "timing"}
    assert doc["summary"]["cases"] == 7 * 2 and doc["summary"]["failed"] == 0
    assert doc["cases"][0]["label"].startswith("seed network")
    text = (tmp_path / "REPORT.md").read_text()
    for heading in [
        "# refbp validation report",
        "## Coverage",
        "## Worst cases",
        "## Failures",
        "## Error distribution",
    ]:
        assert heading in text
    assert (tmp_path / "errors.png").read_bytes().startswith(b"\x89PNG")
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_report_json_is_identical_apart_from_timing(tmp_path: Path) -> None:
    docs = []
    for k in range(2):
        out = tmp_path / str(k)
        assert (
            main(["report", "--examples", "4", "--seed", "9", "--out", str(out), "--no-progress", "--dtype", "float32"])
            == 0
        )
        doc = json.loads((out / "report.json").read_text())
        doc.pop("timing")
        docs.append(doc)
    assert docs[0] == docs[1]


def test_sweep_covers_every_activation_loss_regime_and_layer() -> None:
    specs = [spec for _, spec in sweep_specs(200, seed=0)]
    mlps = [s for s in specs if isinstance(s, CaseSpec)]
    stacks = [s for s in specs if isinstance(s, StackSpec)]
    assert {a for s in mlps for a in s.activations} == set(refbp.nn.activations.ACTIVATIONS)
    assert {s.loss for s in mlps} == {s.loss for s in stacks} == set(refbp.nn.losses.LOSSES)
    assert {s.regime for s in mlps} == set(REGIMES) and any(s.weight_scale >= 10 for s in mlps)
    layers = {c for s in stacks for c in components(s)}
    expected = {"linear", "layernorm", "batchnorm (train)", "batchnorm (eval)", "dropout (train)", "dropout (eval)"}
    assert expected | {"embedding", "flatten", "residual"} <= layers


def test_a_failing_case_is_shown_with_the_command_that_reproduces_it(tmp_path: Path) -> None:
    label, spec = sweep_specs(1, seed=0)[1]
    case = spec.build()
    grads = case.net.backward(case.net.forward(case.X), case.y).as_dict()
    grads["X"] = -grads["X"]
    outcome = CaseOutcome(1, label, spec, refbp.check(case.net, case.X, case.y, grads=grads))
    doc = build_json(
        [outcome], {"examples": 1, "seed": 0, "devices": ["cpu"], "dtypes": ["float64"], "fd_mode": "auto"}, 1.0
    )
    text = render_markdown(doc, write_plot([outcome], tmp_path / "e.png"), [])
    assert doc["summary"]["failed"] == 1 and "1 FAILED" in text
    assert f"    refbp check --case '{spec.to_json()}'" in text
    assert doc["cases"][0]["failures"][0]["name"] == "X"


def test_the_plot_takes_margins_below_float32s_range(tmp_path: Path) -> None:
    """A margin of 1e-200 (an error of one float64 rounding on a huge allowance) is a bin of the
    histogram, not a crash (float32 arithmetic made it 0 and its log -inf)."""
    pytest.importorskip("matplotlib")
    label, spec = sweep_specs(1, seed=0)[1]
    case = spec.build()
    result = refbp.check(case.net, case.X, case.y)
    result.rows[0] = dataclasses.replace(result.rows[0], ratio=1e-200)
    assert result.rows[0].margin == 1e-200
    note = write_plot([CaseOutcome(1, label, spec, result)], tmp_path / "e.png")
    assert (tmp_path / "e.png").read_bytes().startswith(b"\x89PNG") and "e.png" in note


def test_plot_is_skipped_with_a_note_without_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    note = write_plot([], tmp_path / "e.png")
    assert note.startswith("Plot skipped: matplotlib is not installed") and not (tmp_path / "e.png").exists()


def test_check_subcommand_reads_a_spec_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "net.json"
    spec.write_text(
        json.dumps({"dims": [3, 5, 2], "activations": ["elu", "identity"], "loss": "cross_entropy", "seed": 4})
    )
    assert main(["check", "--spec", str(spec)]) == 0
    out = capsys.readouterr().out
    assert "refbp check PASSED (18 comparisons)" in out and "fd-full" in out  # 9 tensors x 2 references
    assert main(["check", "--case", spec.read_text(), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["passed"] is True


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["report", "--examples", "-1"], "--examples=-1 is out of range; expected an int >= 0"),
        (["report", "--device", "tpu"], "--device 'tpu': expected auto, cpu or cuda"),
        (["report", "--examples", "many"], "argument --examples: invalid int value: 'many'"),
        (["frobnicate"], "argument COMMAND: invalid choice: 'frobnicate'"),
        (["check", "--spec", "/no/such/net.json"], "--spec /no/such/net.json: no such file"),
        (["check", "--case", "{not json"], "--case: not valid JSON"),
        (
            ["check", "--case", '{"dims": [3, 2], "activations": ["tanh"], "loss": "hinge"}'],
            "loss='hinge' is not a known loss",
        ),
        (["check", "--case", '{"dims": [3, 2], "activations": ["tanh"]}'], "the case spec needs 'loss'"),
        (
            ["check", "--case", '{"dims": [3, 2], "activations": ["tanh"], "loss": "mse", "depth": 3}'],
            "unknown keys ['depth']",
        ),
    ],
)
def test_bad_usage_exits_2_with_one_line(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("error: ")


def test_the_installed_command_prints_no_traceback() -> None:
    """The same path end to end in a fresh interpreter: python -m refbp."""
    done = _run("check", "--case", '{"dims": [3, 2], "activations": ["tanh"], "loss": "bce"}')
    assert done.returncode == 2
    assert done.stderr == "error: --case: loss='bce' needs activations[-1]='sigmoid' on the last layer, got 'tanh'\n"


def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("report", "check", "explain", "bugs"))


def test_check_case_rebuilds_a_gpt_the_report_printed(capsys: pytest.CaptureFixture[str]) -> None:
    spec = GPTSpec(vocab_size=5, block_size=4, n_layer=1, n_head=2, n_embd=4, batch=2, length=3, ignored=1, seed=1)
    assert main(["check", "--case", spec.to_json()]) == 0
    out = capsys.readouterr().out
    assert "W_qkv4.2" in out and "fd-" in out and "autograd" in out
