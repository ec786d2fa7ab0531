"""The report's progress: tqdm's bar on a real terminal (a pseudo-terminal here), one plain
line per tenth in a log, nothing with --no-progress."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import select
import struct
import termios
from pathlib import Path

import pytest

from refbp.apps.cli import main
from refbp.progress import FALLBACK_SIZE, Progress, close_all


def _read_all(fd: int) -> str:
    chunks = []
    while select.select([fd], [], [], 0.05)[0]:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # the terminal's other end is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")


def _terminal(columns: int, lines: int) -> tuple[int, int]:
    """A pseudo-terminal (leader, follower) that reports its size as given (0: says nothing)."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))
    return leader, follower


@pytest.mark.parametrize(("columns", "lines"), [(100, 30), (0, 0), (90, 0)])
def test_a_terminal_gets_tqdms_bar_with_the_failures(columns: int, lines: int) -> None:
    leader, follower = _terminal(columns, lines)
    with os.fdopen(follower, "w", encoding="utf-8") as terminal:
        assert terminal.isatty()
        bar = Progress(4, True, stream=terminal)
        for done in range(4):
            bar.advance(failed=done // 2)
        terminal.flush()
        text = _read_all(leader)
    os.close(leader)
    assert "refbp report: 100%|" in text and "4/4" in text and "1 failed" in text and "\r" in text
    width = columns if columns and lines else FALLBACK_SIZE.columns
    assert max(len(line) for line in text.split("\r")) <= width + 2


def test_a_log_gets_one_plain_line_per_tenth() -> None:
    log = io.StringIO()
    bar = Progress(40, True, stream=log)
    for _ in range(40):
        bar.advance(failed=0)
    lines = log.getvalue().splitlines()
    assert len(lines) == 11  # 0%, 10%, ..., 100%
    assert lines[0] == "refbp report: 1/40 cases, 0 failed" and lines[-1] == "refbp report: 40/40 cases, 0 failed"
    assert "\r" not in log.getvalue()


def test_no_progress_draws_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--examples", "1", "--dtype", "float64", "--out", str(tmp_path), "--no-progress"]) == 0
    assert capsys.readouterr().err == ""
    assert main(["report", "--examples", "1", "--dtype", "float64", "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().err.splitlines() == [
        "refbp report: 1/2 cases, 0 failed",
        "refbp report: 2/2 cases, 0 failed",
    ]


def test_an_error_line_starts_on_a_line_of_its_own_after_an_unfinished_bar() -> None:
    leader, follower = _terminal(80, 24)
    with os.fdopen(follower, "w", encoding="utf-8") as terminal:
        bar = Progress(10, True, stream=terminal)
        bar.advance(failed=0)
        close_all()  # what the command line does before printing its error line
        terminal.flush()
        text = _read_all(leader)
    os.close(leader)
    assert text.rstrip(" ").endswith("\n") and "1/10" in text
    assert bar.bar is None
