"""Bad input at the command line: a bad option or spec exits 2 with one ``error:`` line naming
it, its value and what was expected, before any work (a bad --out used to fail with a traceback
after the whole sweep)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from refbp.apps.arguments import MAX_DRAWS, MAX_EXAMPLES
from refbp.apps.cli import main


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# ---- bad input: exit 2, one line, before any work -------------------------------------------
def _bad_out_folders(tmp_path: Path) -> list[tuple[str, str]]:
    (tmp_path / "file").write_text("not a folder")
    locked_away = tmp_path / "read-only"
    locked_away.mkdir()
    locked_away.chmod(0o500)
    cases = [
        (str(tmp_path / "file"), "is an existing file; expected a folder"),
        (str(tmp_path / "file" / "below"), f"{tmp_path / 'file'} is a file, so no folder can be made below it"),
        ("", "expected the path of a folder (existing or to be created), got an empty string"),
    ]
    if Path("/proc/self").exists():  # read-only even for root
        cases.append(("/proc/refbp-reports", "cannot create files in /proc"))
    if os.geteuid() != 0:  # root ignores permission bits
        cases.append((str(locked_away / "sub"), "cannot create files in"))
    return cases


@pytest.mark.parametrize(
    "command", [["report", "--examples", "1"], ["bugs", "--only", "db_batch_mean", "--draws", "1"]]
)
def test_a_bad_out_folder_is_refused_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    before = sorted(p.name for p in tmp_path.iterdir())
    for out, message in _bad_out_folders(tmp_path):
        assert main([*command, "--out", out]) == 2
        line = _one_error_line(capsys)  # one line: the report's progress never started
        assert line.startswith(f"error: --out {out!r}: ") and message in line
        assert capsys.readouterr().out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({*before, "file", "read-only"})


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["report", "--examples", str(10**12)],
            f"--examples=1000000000000 is too large; expected at most MAX_EXAMPLES={MAX_EXAMPLES:,}",
        ),
        (["report", "--examples", "-1"], "--examples=-1 is out of range; expected an int >= 0"),
        (["report", "--examples", "1.7"], "argument --examples: invalid int value: '1.7'"),
        (["report", "--seed", "-1"], "--seed=-1 is out of range; expected an int in [0, 4294967295]"),
        (["report", "--seed", str(2**32)], "--seed=4294967296 is out of range"),
        (["report", "--seed", "1.7"], "argument --seed: invalid int value: '1.7'"),
        (["report", "--threads", "0"], "--threads=0 is out of range; expected an int in [1, "),
        (["report", "--threads", str(10**6)], "--threads=1000000 is out of range"),
        (["bugs", "--draws", str(10**9)], f"--draws=1000000000 is too large; expected at most MAX_DRAWS={MAX_DRAWS:,}"),
        (["bugs", "--seed", str(2**32)], "--seed=4294967296 is out of range"),
        (["explain", "--seed", str(2**40)], "--seed=1099511627776 is out of range"),
        (["explain", "--dims", ",".join(["2"] * 1002)], "--dims lists 1002 sizes (1001 layers)"),
        (["explain", "--dims", f"2,{10**12},1"], "the --dims network (dims=[2, 1000000000000, 1], batch=2) needs"),
    ],
)
def test_sizes_and_seeds_out_of_range_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    start = time.perf_counter()
    assert main(args if args[0] == "explain" else [*args, "--out", str(tmp_path / "out")]) == 2
    assert message in _one_error_line(capsys)
    assert not (tmp_path / "out").exists() and time.perf_counter() - start < 10  # refused, not attempted


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
