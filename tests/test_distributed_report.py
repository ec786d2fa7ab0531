"""``refbp report`` sharded over real gloo ranks: the same report as one process; a rank that
dies or hangs is named, ends the job in bounded time and leaves the old report as it was.
Forked processes with torchrun's environment (tests/ranks.py), and torchrun itself.

Every test reaps every process it starts, also when it fails (run_ranks and torchrun kill what
is left at their deadline), and keeps torchrun's temporary folders in its own tmp_path."""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from refbp.apps.cli import main
from refbp.apps.ranks import EXIT_RANK_FAILED

from .fault_rank import inject
from .ranks import LEAVING, RankRun, run_ranks, torchrun

TIMEOUT = 20.0
"""The process groups' timeout where a test does not shorten it: no healthy test rank waits a
second for another, and a broken one fails the test in seconds, not torch's 30 minutes."""


def _report_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# ---- the sharded report --------------------------------------------------------------------------
@pytest.mark.parametrize("world_size", [2, 3])
def test_the_sharded_report_is_the_single_process_report(world_size: int, tmp_path: Path) -> None:
    args = ["report", "--examples", "5", "--seed", "3", "--no-progress", "--out"]
    assert main([*args, str(tmp_path / "one")]) == 0
    run = run_ranks(lambda r: main([*args, str(tmp_path / "ranks")]), world_size, tmp_path / "logs")
    assert run.codes == [0] * world_size and run.values == [0] * world_size, run.shown()
    assert run.output[0].startswith("refbp report: 12/12 cases passed") and run.output[1:] == [""] * (world_size - 1)
    one, shared = _report_files(tmp_path / "one"), _report_files(tmp_path / "ranks")
    assert sorted(shared) == ["REPORT.md", "errors.png", "report.json"]
    docs = [json.loads(files.pop("report.json")) for files in (one, shared)]
    timings = [doc.pop("timing") for doc in docs]
    assert docs[0] == docs[1] and [t["processes"] for t in timings] == [1, world_size]
    assert one["errors.png"] == shared["errors.png"]
    untimed = [[line for line in f["REPORT.md"].decode().splitlines() if " s (" not in line] for f in (one, shared)]
    assert untimed[0] == untimed[1]


def test_rank_0_shows_the_progress_of_every_rank_and_the_others_stay_quiet(tmp_path: Path) -> None:
    run = run_ranks(lambda r: main(["report", "--examples", "9", "--out", str(tmp_path / "out")]), 3, tmp_path / "logs")
    assert run.values == [0, 0, 0], run.shown()
    progress = [line for line in run.output[0].splitlines() if line.startswith("refbp report: ") and "cases," in line]
    done = [int(line.split()[2].split("/")[0]) for line in progress]
    assert done == sorted(done) and progress[-1] == "refbp report: 20/20 cases, 0 failed"  # every rank's cases
    assert run.output[1:] == ["", ""]


def _old_report(folder: Path) -> dict[str, bytes]:
    assert main(["report", "--examples", "1", "--dtype", "float64", "--no-progress", "--out", str(folder)]) == 0
    return _report_files(folder)


def test_a_rank_that_dies_mid_sweep_is_named_and_the_old_report_stays(tmp_path: Path) -> None:
    old = _old_report(tmp_path / "out")

    def rank(r: int) -> int:
        if r == 1:
            inject("die", 3)
        return main(["report", "--examples", "12", "--no-progress", "--out", str(tmp_path / "out")])

    run = run_ranks(rank, 2, tmp_path / "logs", env={"REFBP_DISTRIBUTED_TIMEOUT": "4"})
    assert run.codes[1] == -9 and run.values[0] == EXIT_RANK_FAILED, run.shown()
    errors = [line for line in run.output[0].splitlines() if line.startswith("error: ")]
    assert errors == ["error: the sharded sweep: rank 1 gave no sign of life for 2 s (stopped, or died)"], run.output[0]
    assert _report_files(tmp_path / "out") == old  # nothing written, no temporary left


LONG_SWEEP = ["report", "--examples", "60", "--dtype", "float64", "--no-progress", "--out"]
"""A sweep of several seconds: a rank that stops or fails early leaves the others much to do."""

STOP_TIMEOUT = 6.0
"""The timeout of the tests that stop a rank: its heartbeat's silence is 3 s, which leaves 3 s
for the case in progress on a loaded machine; the rest of the sweep of --examples 60 takes far
longer, so a rank that noticed only at the end would be late."""


def _ended_within_the_timeout_of_the_stop(rank_fn: Callable[[int], int], tmp_path: Path) -> RankRun:
    """Run ``rank_fn`` on 2 ranks, rank 1 noting when it stops (``tmp_path / "stopped"``) and
    rank 0 when it ended; check that rank 0 ended within STOP_TIMEOUT of the stop."""
    ended = tmp_path / "ended"

    def rank(r: int) -> int:
        code = rank_fn(r)
        if r == 0:
            ended.write_text(repr(time.monotonic()))
        return code

    env = {"REFBP_DISTRIBUTED_TIMEOUT": str(STOP_TIMEOUT)}
    run = run_ranks(rank, 2, tmp_path / "logs", env=env, like_torchrun=True)
    assert run.values[0] == EXIT_RANK_FAILED, run.shown()
    assert "Traceback" not in run.output[0], run.output[0]
    seconds = float(ended.read_text()) - float((tmp_path / "stopped").read_text())
    assert 0 < seconds <= STOP_TIMEOUT + LEAVING, (seconds, run.output[0])
    return run


def test_a_rank_stopped_mid_sweep_ends_the_job_within_the_timeout_of_the_stop(tmp_path: Path) -> None:
    """SIGSTOP: the process stands still, its connections stay open, so nothing fails; only its
    silence tells. Rank 0 must not work through the rest of the sweep first."""
    old = _old_report(tmp_path / "out")

    def rank(r: int) -> int:
        if r == 1:
            inject("stop", 2, note=tmp_path / "stopped")
        return main(
            ["report", "--examples", "60", "--dtype", "float64", "--no-progress", "--out", str(tmp_path / "out")]
        )

    run = _ended_within_the_timeout_of_the_stop(rank, tmp_path)
    errors = [line for line in run.output[0].splitlines() if line.startswith("error: ")]
    assert errors == ["error: the sharded sweep: rank 1 gave no sign of life for 3 s (stopped, or died)"], run.output[0]
    assert _report_files(tmp_path / "out") == old


def test_a_rank_whose_check_raises_is_named_at_once_by_the_others(tmp_path: Path) -> None:
    old = _old_report(tmp_path / "out")

    def rank(r: int) -> int:
        if r == 1:
            inject("raise", 2)
        return main(
            ["report", "--examples", "60", "--dtype", "float64", "--no-progress", "--out", str(tmp_path / "out")]
        )

    run = run_ranks(rank, 2, tmp_path / "logs", env={"REFBP_DISTRIBUTED_TIMEOUT": str(TIMEOUT)})
    assert run.codes[1] == 1 and "RuntimeError: a fault injected at case 2" in run.output[1], run.shown()
    assert run.values[0] == EXIT_RANK_FAILED and run.seconds < TIMEOUT / 2, (run.seconds, run.output)
    errors = [line for line in run.output[0].splitlines() if line.startswith("error: ")]
    assert errors == ["error: the sharded sweep: rank 1 failed: RuntimeError: a fault injected at case 2"], run.shown()
    assert _report_files(tmp_path / "out") == old


def test_a_rank_that_torchrun_terminates_exits_3_with_one_line(tmp_path: Path) -> None:
    """torchrun sends SIGTERM to every other rank once one fails (run_ranks does the same with
    like_torchrun): the job could not finish, so the surviving rank's status is 3, not 143."""

    def rank(r: int) -> int:
        if r == 1:
            inject("die", 2)
        return main(
            ["report", "--examples", "60", "--dtype", "float64", "--no-progress", "--out", str(tmp_path / "out")]
        )

    run = run_ranks(rank, 2, tmp_path / "logs", env={"REFBP_DISTRIBUTED_TIMEOUT": str(TIMEOUT)}, like_torchrun=True)
    assert run.codes[1] == -9 and run.values[0] == EXIT_RANK_FAILED, run.shown()
    errors = [line for line in run.output[0].splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: terminated: torchrun stops every rank"), run.shown()
    assert not (tmp_path / "out").exists()


def test_a_rank_that_hangs_is_named_after_the_timeout_and_the_job_ends(tmp_path: Path) -> None:
    old = _old_report(tmp_path / "out")

    def rank(r: int) -> int:
        if r == 1:
            inject("hang", 2)
        return main(["report", "--examples", "6", "--no-progress", "--out", str(tmp_path / "out")])

    run = run_ranks(rank, 2, tmp_path / "logs", env={"REFBP_DISTRIBUTED_TIMEOUT": "2"}, like_torchrun=True)
    assert run.values[0] == EXIT_RANK_FAILED and run.codes[1] is not None, run.shown()
    assert "error: the sharded sweep: rank 1 did not arrive within 2 s (hung, or died)" in run.output[0]
    assert run.seconds < TIMEOUT
    assert _report_files(tmp_path / "out") == old


def test_when_rank_0_dies_the_others_name_it(tmp_path: Path) -> None:
    # rank 0 dies as it starts its second case, while the others work on theirs. The ranks share the
    # sweep's cases as each is free: with --examples 6 the other two took every case but rank 0's
    # first on a quiet machine (rank 0 never died); dying at its first case instead, rank 0 could
    # die while a loaded machine's other ranks were still joining the group (another message)
    def rank(r: int) -> int:
        if r == 0:
            inject("die", 2)
        return main(["report", "--examples", "40", "--no-progress", "--out", str(tmp_path / "out")])

    run = run_ranks(rank, 3, tmp_path / "logs", env={"REFBP_DISTRIBUTED_TIMEOUT": str(TIMEOUT)})
    assert run.codes[0] == -9 and run.values[1:] == [EXIT_RANK_FAILED] * 2, run.shown()
    for output in run.output[1:]:
        errors = [line for line in output.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and re.search(r"rank 0\b.*\(it died or hung\)|rank 0 \(died", errors[0]), output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# ---- the environment ------------------------------------------------------------------------------
def test_an_incomplete_torchrun_environment_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("RANK", "0")
    for name in ("WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert main(["report", "--examples", "1", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "error: the environment sets RANK but not WORLD_SIZE, MASTER_ADDR, MASTER_PORT: start the ranks with "
        "torchrun (torchrun --standalone --nproc-per-node=2 -m refbp ...), which sets all of RANK, WORLD_SIZE, "
        "MASTER_ADDR, MASTER_PORT"
    ]


def test_a_bad_timeout_variable_is_said_once_by_rank_0(tmp_path: Path) -> None:
    env = {"REFBP_DISTRIBUTED_TIMEOUT": "soon"}
    run = run_ranks(lambda r: main(["report", "--examples", "1"]), 2, tmp_path, env=env)
    assert run.values == [2, 2], run.shown()
    assert run.output == ["error: REFBP_DISTRIBUTED_TIMEOUT='soon' is not a number; expected seconds, e.g. 60\n", ""]


def _command(args: list[str], rank: int) -> int:
    return main(args)


def test_an_argparse_error_on_ranks_is_said_once_by_rank_0(tmp_path: Path) -> None:
    for args in (["report", "--examples", "many"], ["report", "--no-such-option"], []):
        run = run_ranks(functools.partial(_command, args), 3, tmp_path / "logs")
        assert run.values == [2, 2, 2], run.shown()
        assert run.output[1:] == ["", ""], run.output  # the other ranks exit 2 without a word
        lines = run.output[0].splitlines()
        if args:
            assert len(lines) == 1 and lines[0].startswith("error: refbp"), run.output[0]
        else:
            assert lines[0].startswith("usage: refbp"), run.output[0]  # the help, from rank 0 only


# ---- torchrun itself -------------------------------------------------------------------------------
@pytest.mark.slow
def test_torchrun_runs_the_sharded_report(tmp_path: Path) -> None:
    args = ["--examples", "4", "--seed", "5", "--no-progress", "--out"]
    assert main(["report", *args, str(tmp_path / "one")]) == 0
    job = torchrun(["--nproc-per-node=2", "-m", "refbp", "report", *args, str(tmp_path / "ranks")], tmp_path)
    assert job.returncode == 0 and not job.left_behind, job.stderr
    docs = [json.loads((tmp_path / where / "report.json").read_text()) for where in ("one", "ranks")]
    assert docs[1].pop("timing")["processes"] == 2 and (docs[0].pop("timing"), docs[0])[1] == docs[1]
    leftovers = [p.name for p in (tmp_path / "tmp").iterdir() if not p.name.startswith("torchelastic_")]
    assert not leftovers  # torchrun's own log folders are all it left, in the test's folder


@pytest.mark.slow
def test_under_torchrun_a_bad_option_is_said_once(tmp_path: Path) -> None:
    job = torchrun(["--nproc-per-node=2", "-m", "refbp", "report", "--examples", "many"], tmp_path)
    assert job.returncode not in (0, None) and not job.left_behind, job.stderr
    assert job.stderr.count("error: refbp report: argument --examples: invalid int value: 'many'") == 1, job.stderr


@pytest.mark.slow
def test_under_torchrun_a_rank_killed_mid_sweep_ends_the_job_and_leaves_the_old_report(tmp_path: Path) -> None:
    old = _old_report(tmp_path / "out")
    script = Path(__file__).parent / "fault_rank.py"
    args = ["--nproc-per-node=2", str(script), "1", "3", "die", "report", "--examples", "40", "--no-progress"]
    job = torchrun([*args, "--out", str(tmp_path / "out")], tmp_path)
    assert job.returncode not in (0, None) and not job.left_behind, job.stderr
    summary = re.search(r"Root Cause.*?rank\s*:\s*1 \(local_rank: 1\)\s+exitcode\s*:\s*-9", job.stderr, re.S)
    assert summary, job.stderr  # torchrun names the rank that died first
    assert "error: terminated: torchrun stops every rank as soon as one fails" in job.stderr  # rank 0, in one line
    assert _report_files(tmp_path / "out") == old
