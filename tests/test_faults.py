"""Bad input and faults at the command line: a bad option or spec exits 2 with one ``error:``
line naming it, its value and what was expected, before any work; Ctrl-C and SIGTERM end a run
with one line and exit 130 or 143, whenever they come (torch's import included), leaving no
temporaries and the report files of one run only; two reports into one folder take turns.

Signals and concurrency are tested on real ``python -m refbp`` children with real signals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from refbp.apps.arguments import MAX_DRAWS, MAX_EXAMPLES
from refbp.apps.cli import main
from refbp.apps.io import LOCK_NAME, locked
from refbp.apps.report import render_plot
from refbp.apps.sweep import run_report, sweep_specs

from .processes import child_env, waiting_on

REPORT_FILES = {"REPORT.md", "report.json", "errors.png"}


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


# ---- signals: real children, real signals ---------------------------------------------------
RUN_REFBP = textwrap.dedent(
    """
    import importlib.abc, os, runpy, signal, sys

    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if the parent ignores Ctrl-C
    when, signum = sys.argv[1], getattr(signal, sys.argv[2])

    class SignalDuringTorchImport(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch._C":  # torch/__init__.py is running: torch is half imported
                os.kill(os.getpid(), signum)
            return None

    if when == "import":
        sys.meta_path.insert(0, SignalDuringTorchImport())
    elif when.startswith("draw-"):  # at hypothesis's Nth integer draw, midway through a network
        from hypothesis.internal.conjecture.data import ConjectureData
        real_draw, draws = ConjectureData.draw_integer, []
        def draw_integer(self, *args, **kwargs):
            draws.append(1)
            if len(draws) == int(when.removeprefix("draw-")):
                os.kill(os.getpid(), signum)
            return real_draw(self, *args, **kwargs)
        ConjectureData.draw_integer = draw_integer
    else:  # when == "rename-2": after the second rename of the report set (the first target)
        real_replace, renames = os.replace, []
        def replace(source, target):
            real_replace(source, target)
            renames.append(target)
            if len(renames) == 2:
                os.kill(os.getpid(), signum)
        os.replace = replace
    sys.argv = ["refbp", *sys.argv[3:]]
    runpy.run_module("refbp", run_name="__main__", alter_sys=True)  # what python -m refbp runs
    """
)


def _refbp_with_a_signal(when: str, signum: str, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", RUN_REFBP, when, signum, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=child_env())


@pytest.mark.parametrize(("signum", "code", "line"), [("SIGINT", 130, "interrupted"), ("SIGTERM", 143, "terminated")])
def test_a_signal_while_torch_imports_prints_one_line(tmp_path: Path, signum: str, code: int, line: str) -> None:
    done = _refbp_with_a_signal("import", signum, "report", "--examples", "1", "--out", str(tmp_path / "out"))
    assert (done.returncode, done.stderr, done.stdout) == (code, f"error: {line}\n", "")
    assert not (tmp_path / "out").exists()


def test_sigterm_while_hypothesis_draws_networks_prints_one_line(tmp_path: Path) -> None:
    """An exception other than KeyboardInterrupt that stops hypothesis midway through a draw
    comes out as "FlakyStrategyDefinition: Inconsistent data generation" with two tracebacks
    (the 500th draw of this run is such a point): Terminated must pass as a KeyboardInterrupt."""
    args = ["bugs", "--only", "db_batch_mean", "--out", str(tmp_path)]
    done = _refbp_with_a_signal("draw-500", "SIGTERM", *args)
    assert (done.returncode, done.stderr, done.stdout) == (143, "error: terminated\n", "")
    assert list(tmp_path.iterdir()) == []


def _consistent_set(out: Path) -> dict[str, object]:
    """The report files of one run: REPORT.md shows report.json's settings, counts and timing."""
    assert {p.name for p in out.iterdir()} == REPORT_FILES  # no temporaries, journal or lock
    doc = json.loads((out / "report.json").read_text())
    text = (out / "REPORT.md").read_text()
    settings, summary = doc["settings"], doc["summary"]
    assert f"`refbp report --examples {settings['examples']} --seed {settings['seed']}`" in text
    assert f"{summary['passed']} / {summary['cases']} cases (" in text
    assert f"), {summary['comparisons']} gradient comparisons" in text
    assert f"{doc['timing']['seconds']:.1f} s ({doc['timing']['cases_per_second']} cases/s)" in text
    assert (out / "errors.png").read_bytes() == _expected_plot(settings["examples"], settings["seed"])
    return dict(settings)


def _expected_plot(examples: int, seed: int) -> bytes:
    outcomes, _ = run_report(sweep_specs(examples, seed), devices=["cpu"], dtypes=["float64"], progress=False)
    png, _ = render_plot(outcomes)
    assert png is not None
    return png


def test_sigterm_between_two_renames_waits_for_the_whole_report_set(tmp_path: Path) -> None:
    """(tests/test_io.py stops a writer with SIGTERM, Ctrl-C and SIGKILL before each of its steps.)"""
    out = tmp_path / "out"
    out.mkdir()
    for name in REPORT_FILES:
        (out / name).write_text("from an older run\n")
    args = ["report", "--examples", "1", "--seed", "5", "--dtype", "float64", "--no-progress", "--out", str(out)]
    done = _refbp_with_a_signal("rename-2", "SIGTERM", *args)
    assert (done.returncode, done.stderr) == (143, "error: terminated\n")
    assert _consistent_set(out)["seed"] == 5  # every file is the new run's


def test_a_report_file_that_cannot_be_replaced_exits_2_and_leaves_the_old_set(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """errors.png is a folder: the set is committed, report.json and REPORT.md are renamed into
    place, then the rename onto the folder fails; the two must be put back."""
    out = tmp_path / "out"
    (out / "errors.png").mkdir(parents=True)
    for name in ("REPORT.md", "report.json"):
        (out / name).write_text("from an older run\n")
    args = ["report", "--examples", "1", "--seed", "5", "--dtype", "float64", "--no-progress", "--out", str(out)]
    assert main(args) == 2
    line = _one_error_line(capsys)
    assert "errors.png: a folder stands where the set has a file; nothing was replaced" in line, line
    assert sorted(p.name for p in out.iterdir()) == ["REPORT.md", "errors.png", "report.json"]  # nothing left over
    assert [(out / name).read_text() for name in ("REPORT.md", "report.json")] == ["from an older run\n"] * 2


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs Linux /proc/locks to see waiting writers")
def test_two_reports_into_one_folder_leave_one_consistent_set(tmp_path: Path) -> None:
    """Both runs are held at the folder's lock until both are ready to write, so that their
    writes really meet; they then take turns, and the folder holds the set of the later one."""
    out = tmp_path / "out"
    out.mkdir()
    command = [sys.executable, "-m", "refbp", "report", "--examples", "1", "--dtype", "float64", "--no-progress"]
    with locked(out):
        children = []
        for seed in (1, 2):
            arguments = [*command, "--seed", str(seed), "--out", str(out)]
            pipe = subprocess.PIPE
            children.append(subprocess.Popen(arguments, stdout=pipe, stderr=pipe, text=True, env=child_env()))
        deadline = time.monotonic() + 300
        while waiting_on(out / LOCK_NAME) != {c.pid for c in children}:
            assert all(c.poll() is None for c in children), [c.communicate() for c in children]
            assert time.monotonic() < deadline, "the two reports never both waited to write"
            time.sleep(0.01)
    results = [c.communicate(timeout=300) for c in children]
    assert [c.returncode for c in children] == [0, 0], results
    assert _consistent_set(out)["seed"] in (1, 2)


def test_the_command_line_imports_no_torch_before_the_subcommand() -> None:
    code = "import sys, refbp, refbp.apps.cli; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=child_env())
    assert done.stdout.strip() == "False", done.stderr


def test_bugs_replaces_its_two_files_as_a_set(tmp_path: Path) -> None:
    for name in ("bugs.md", "bugs.json"):
        (tmp_path / name).write_text("from an older run\n")
    assert main(["bugs", "--only", "db_batch_mean", "--draws", "2", "--out", str(tmp_path)]) == 0
    assert {p.name for p in tmp_path.iterdir()} == {"bugs.md", "bugs.json"}  # nothing else left
    assert json.loads((tmp_path / "bugs.json").read_text())["draws"] == 2
    assert "Generated by `refbp bugs --seed 0 --draws 2`" in (tmp_path / "bugs.md").read_text()
