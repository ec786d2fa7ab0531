"""Bad input at the command line: a bad option or spec exits 2 with one ``error:`` line naming
it, its value and what was expected, before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from refbp.apps.cli import main


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# ---- bad input: exit 2, one line, before any work -------------------------------------------
def test_json_nested_100000_deep_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    assert main(["check", "--case", deep]) == 2
    assert "error: --case: JSON nested deeper than Python can parse" in _one_error_line(capsys)
    (tmp_path / "deep.json").write_text(deep)
    assert main(["check", "--spec", str(tmp_path / "deep.json")]) == 2
    assert "JSON nested deeper than Python can parse" in _one_error_line(capsys)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ('"batch": true', "error: --case: batch=True must be an int >= 1, got bool"),
        ('"weight_scale": "3"', "error: --case: weight_scale='3' must be a finite number > 0, got str"),
        ('"dims": 5', "error: --case: dims=5 must be a list of layer sizes"),
        ('"dims": [3, true]', "error: --case: dims[1]=True must be an int >= 1, got bool"),
        ('"seed": 1.7', "error: --case: seed=1.7 must be an int in [0, 4294967295], got float"),
        ('"seed": 4294967296', "error: --case: seed=4294967296 is out of range"),
        ('"weight_scale": NaN', "error: --case: weight_scale=nan is out of range; expected a finite number > 0"),
        ('"weight_scale": 0', "error: --case: weight_scale=0 is out of range"),
        ('"weight_decay": -1', "error: --case: weight_decay=-1 is out of range; expected a finite number >= 0"),
        ('"weight_decay": "a"', "error: --case: weight_decay='a' must be a finite number >= 0, got str"),
        ('"dtype": "float8"', "error: --case: dtype='float8'; expected one of float64"),
        ('"device": "tpu"', "error: --case: device='tpu'; expected 'auto', 'cpu', 'cuda' or 'cuda:K'"),
        (
            '"dims": [3, 1000000000000]',
            "error: --case: the case spec's network (dims=[3, 1000000000000], batch=4) needs",
        ),
        ('"seed": 1' + "0" * 5000, "error: --case: not a JSON refbp can read (Exceeds the limit"),
    ],
)
def test_a_bad_case_spec_exits_2_with_one_line(change: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    case = '{"dims": [3, 2], "activations": ["tanh"], "loss": "mse", ' + change + "}"
    assert main(["check", "--case", case]) == 2
    assert _one_error_line(capsys).startswith(message)
    assert capsys.readouterr().out == ""


def test_a_spec_file_that_is_no_spec_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    layers = 10**6
    (tmp_path / "deep.json").write_text(json.dumps({"dims": [2] * (layers + 1), "activations": ["tanh"] * layers}))
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe{}")
    for spec, message in [
        (tmp_path / "deep.json", "larger than 4 MiB; expected a JSON case spec"),
        (tmp_path / "binary.json", "not UTF-8 text"),
        (tmp_path, "not a regular file"),
    ]:
        assert main(["check", "--spec", str(spec)]) == 2
        assert _one_error_line(capsys).startswith(f"error: --spec {spec}: {message}")
