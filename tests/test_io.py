"""Report files change as a set or not at all: whatever stops a writer (an error, Ctrl-C,
SIGTERM, SIGKILL) and whoever writes beside it, the folder ends up holding one whole set.

The crash and signal tests run a real writer in a child process (refbp.apps.io only: no torch,
so each starts in a few tens of milliseconds) and stop it with a real signal before each of its
file-system steps in turn; the step count only chooses the moment."""

from __future__ import annotations

import gc
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from refbp.apps.io import JOURNAL_NAME, LOCK_NAME, locked, recover, write_atomic, write_set
from refbp.signals import Terminated, deferred_signals, stop_signals_raise

from .processes import child_env, waiting_on

OLD = {"a.txt": "old a\n", "b.txt": "old b\n", "c.bin": "old c\n", "gone.txt": "old only\n"}
NEW = {"a.txt": "new a\n", "b.txt": "new b\n", "c.bin": "new c\n"}
"""The new set lacks gone.txt: write_set is told to remove it (None)."""

WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from refbp.apps import io
    from refbp.signals import Terminated, stop_signals_raise

    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if the parent ignores Ctrl-C
    folder, stop_at, signum = sys.argv[1], int(sys.argv[2]), getattr(signal, sys.argv[3])
    steps = 0

    def counted(real):
        def step(*args, **kwargs):
            global steps
            steps += 1
            if steps == stop_at:
                os.kill(os.getpid(), signum)  # a real signal, just before this step
            return real(*args, **kwargs)
        return step

    for name in ("fsync", "replace", "unlink"):  # every step that changes or flushes the folder
        setattr(os, name, counted(getattr(os, name)))
    try:
        with stop_signals_raise():
            io.write_set(folder, {"a.txt": "new a\\n", "b.txt": "new b\\n", "c.bin": b"new c\\n", "gone.txt": None})
    except Terminated:  # a kind of KeyboardInterrupt: first
        sys.exit(143)
    except KeyboardInterrupt:
        sys.exit(130)
    print(steps)
    """
)


def _write(folder: Path, stop_at: int, signum: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", WRITER, str(folder), str(stop_at), signum]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=child_env())


def _contents(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(folder.iterdir())}


def _old_folder(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    for file, text in OLD.items():
        (folder / file).write_text(text)
    return folder


def _every_stop(tmp_path: Path, signum: str) -> list[tuple[int, int, dict[str, str]]]:
    """Stop a writer with ``signum`` before each of its steps in turn, until one runs to the
    end; returns (step, exit code, folder contents) per run."""
    runs = []
    for stop_at in range(1, 40):
        folder = _old_folder(tmp_path, f"{signum}-{stop_at}")
        done = _write(folder, stop_at, signum)
        assert "Traceback" not in done.stderr, done.stderr
        runs.append((stop_at, done.returncode, _contents(folder)))
        if done.returncode == 0:
            return runs
    raise AssertionError("the writer never finished: more steps than expected")


def test_write_set_replaces_every_file_and_removes_the_ones_set_to_none(tmp_path: Path) -> None:
    folder = _old_folder(tmp_path, "out")
    paths = write_set(folder, {**NEW, "gone.txt": None})
    assert [p.name for p in paths] == list(NEW)
    assert _contents(folder) == NEW  # no temporaries, no journal, no lock file


def test_write_set_creates_the_folder_and_gives_files_an_ordinary_mode(tmp_path: Path) -> None:
    folder = tmp_path / "a" / "b"
    write_set(folder, {"x.txt": "x"})
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE((folder / "x.txt").stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600
    (folder / "x.txt").chmod(0o640)
    write_set(folder, {"x.txt": "y"})
    assert stat.S_IMODE((folder / "x.txt").stat().st_mode) == 0o640  # a replaced file keeps its mode


@pytest.mark.parametrize(
    ("files", "error", "message"),
    [
        ({"sub/x.txt": "x"}, ValueError, "file name 'sub/x.txt': expected a plain file name"),
        ({"..": "x"}, ValueError, "file name '..'"),
        ({LOCK_NAME: "x"}, ValueError, "file name '.refbp.lock'"),
        ({"x.refbp-tmp": "x"}, ValueError, "not ending in '.refbp-tmp'"),
        ({"x.txt": 3}, TypeError, r"files\['x.txt'\] must be str, bytes or None \(remove the file\), got int"),
    ],
)
def test_write_set_refuses_bad_names_and_contents_before_writing(
    tmp_path: Path, files: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        write_set(tmp_path / "out", files)  # type: ignore[arg-type]
    assert not (tmp_path / "out").exists()


def test_write_atomic_keeps_the_old_file_when_the_commit_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "REPORT.md"
    write_atomic(target, "old\n")

    def fail(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, "new\n" * 1000)
    assert _contents(tmp_path) == {"REPORT.md": "old\n"}


def _entries(folder: Path) -> dict[str, str]:
    """Every entry of ``folder``: a file's text, or "<folder>"."""
    return {p.name: "<folder>" if p.is_dir() else p.read_text() for p in sorted(folder.iterdir())}


def test_a_folder_in_a_targets_place_puts_the_previous_set_back(tmp_path: Path) -> None:
    """The kernel lets the first renames through (a.txt, b.txt, c.bin, and new.txt, which had
    no old file), then d.txt cannot be replaced: every one of them must be undone."""
    folder = _old_folder(tmp_path, "out")
    (folder / "d.txt").mkdir()
    before = _entries(folder)
    with pytest.raises(OSError, match=r"d\.txt: a folder stands where the set has a file; nothing was replaced: "
                       r"the previous set in .* stands"):  # fmt: skip
        write_set(folder, {**NEW, "new.txt": "new\n", "d.txt": "new d\n", "gone.txt": None})
    assert _entries(folder) == before  # no temporary, backup, journal or lock file
    (folder / "d.txt").rmdir()
    write_set(folder, {**NEW, "d.txt": "new d\n", "gone.txt": None})  # nothing left over that stops the next
    assert _entries(folder) == {**NEW, "d.txt": "new d\n"}


def _immutable(path: Path, on: bool) -> bool:
    """chattr +i / -i: True if it worked (root with CAP_LINUX_IMMUTABLE, a file system with the flag)."""
    done = subprocess.run(["chattr", "+i" if on else "-i", str(path)], capture_output=True, check=False)
    return done.returncode == 0


@pytest.mark.skipif(shutil.which("chattr") is None, reason="needs chattr")
def test_an_immutable_target_puts_the_previous_set_back(tmp_path: Path) -> None:
    folder = _old_folder(tmp_path, "out")
    (folder / "REPORT.md").write_text("old report\n")
    if not _immutable(folder / "REPORT.md", True):
        pytest.skip("chattr +i is not allowed here (needs CAP_LINUX_IMMUTABLE and ext4, xfs or btrfs)")
    try:
        before = _entries(folder)
        with pytest.raises(OSError, match=r"REPORT\.md.*: Operation not permitted; nothing was replaced"):
            write_set(folder, {**NEW, "REPORT.md": "new report\n", "gone.txt": None})
        assert _entries(folder) == before
    finally:
        _immutable(folder / "REPORT.md", False)


def test_a_sigkill_at_any_step_leaves_a_set_the_next_writer_completes_or_rolls_back(tmp_path: Path) -> None:
    runs = _every_stop(tmp_path, "SIGKILL")
    outcomes = []
    for stop_at, code, before in runs[:-1]:
        assert code == -signal.SIGKILL
        folder = tmp_path / f"SIGKILL-{stop_at}"
        recover(folder)  # what the next writer does first
        after = _contents(folder)
        assert after in (OLD, NEW), f"killed before step {stop_at}: {after}"
        outcomes.append(after == NEW)
        if before not in (OLD, NEW) and before.get(JOURNAL_NAME):
            assert after == NEW  # a committed journal is carried out
    assert runs[-1][2] == NEW and runs[-1][1] == 0
    # rolled back until the commit, completed from then on, and at least one kill fell between
    # two renames (the mix the journal repairs)
    assert outcomes == sorted(outcomes) and False in outcomes and True in outcomes
    assert any(b.get("a.txt") == NEW["a.txt"] and b.get("c.bin") == OLD["c.bin"] for _, _, b in runs)


@pytest.mark.parametrize(("signum", "code"), [("SIGTERM", 143), ("SIGINT", 130)])
def test_sigterm_or_ctrl_c_at_any_step_leaves_the_old_set_or_the_new_and_nothing_else(
    tmp_path: Path, signum: str, code: int
) -> None:
    runs = _every_stop(tmp_path, signum)
    outcomes = []
    for stop_at, returncode, contents in runs[:-1]:
        assert returncode == code
        assert contents in (OLD, NEW), f"{signum} before step {stop_at} left {contents}"  # no temporaries
        outcomes.append(contents == NEW)
    # a signal before the commit unwinds (temporaries deleted); from the commit on it waits for
    # the whole set, then stops the writer
    assert outcomes == sorted(outcomes) and False in outcomes and True in outcomes


def _poll(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.01)


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs Linux /proc/locks to see a waiting writer")
def test_a_writer_waits_for_the_folder_lock_and_then_writes_its_whole_set(tmp_path: Path) -> None:
    folder = _old_folder(tmp_path, "out")
    with locked(folder):
        command = [sys.executable, "-c", WRITER, str(folder), "0", "SIGTERM"]
        child = subprocess.Popen(command, env=child_env(), stdout=subprocess.DEVNULL)
        _poll(lambda: child.pid in waiting_on(folder / LOCK_NAME) or child.poll() is not None, "the writer waits")
        assert child.poll() is None, "the writer did not wait for the lock"
        assert {k: v for k, v in _contents(folder).items() if k != LOCK_NAME} == OLD  # nothing written yet
    assert child.wait(timeout=60) == 0
    assert _contents(folder) == NEW


def test_a_corrupt_journal_is_reported_not_guessed(tmp_path: Path) -> None:
    folder = _old_folder(tmp_path, "out")
    (folder / JOURNAL_NAME).write_text("{not json")
    with pytest.raises(ValueError, match=r"\.refbp\.journal is not a journal refbp can complete"):
        write_set(folder, NEW)
    assert (folder / "a.txt").read_text() == OLD["a.txt"]


def _signal_from_another_thread(signum: int) -> tuple[threading.Thread, threading.Event]:
    """A thread, started now (so that it does not inherit a block's signal mask), that sends
    ``signum`` to itself once the event is set: the kernel runs the handler's C part in that
    thread before pthread_kill returns, and Python runs the Python handler in the main thread,
    as when the kernel picks one of torch's or tqdm's threads for a signal sent to the process."""
    go = threading.Event()

    def send() -> None:
        go.wait(timeout=30)
        signal.pthread_kill(threading.get_ident(), signum)

    thread = threading.Thread(target=send)
    thread.start()
    return thread, go


@pytest.fixture
def ctrl_c_raises() -> Iterator[None]:
    """SIGINT raising KeyboardInterrupt, as in an interactive Python. A process started in the
    background by a non-interactive shell (`make test &`, nohup) inherits SIGINT ignored, and then
    Python installs no handler: deferred_signals rightly restores "ignored", and nothing is raised."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("ctrl_c_raises")
def test_deferred_signals_hold_ctrl_c_and_sigterm_until_the_block_ends() -> None:
    # Each signal is sent to one chosen thread, not to the process (os.kill lets the kernel pick
    # the thread), so that both paths are taken on purpose: the main thread, whose mask holds the
    # signal pending, and another thread, whose signal the recording handler holds.
    finished = []
    sigterm_handler = signal.getsignal(signal.SIGTERM)
    # the main thread: its mask holds the signal pending until the block ends
    with pytest.raises(KeyboardInterrupt) as interrupt, deferred_signals():
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)
        finished.append("block")
    assert finished == ["block"] and interrupt.type is KeyboardInterrupt
    with pytest.raises(Terminated), stop_signals_raise(), deferred_signals():
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGTERM)
        finished.append("again")
    assert finished == ["block", "again"]
    # another thread, which does not block the signal: the recording handler holds it instead
    for signum, error in ((signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, Terminated)):
        thread, go = _signal_from_another_thread(signum)
        with pytest.raises(error), stop_signals_raise(), deferred_signals():
            go.set()
            thread.join(timeout=30)
            time.sleep(0.01)  # the main thread runs Python handlers between bytecodes: here, at the latest
            finished.append(signum.name)
    assert finished == ["block", "again", "SIGINT", "SIGTERM"]
    assert signal.getsignal(signal.SIGTERM) == sigterm_handler  # stop_signals_raise put the handler back


def test_a_stop_request_swallowed_by_a_gc_callback_is_raised_again(capsys: pytest.CaptureFixture[str]) -> None:
    """Python runs a signal handler wherever the main thread is; inside a garbage-collector
    callback (hypothesis installs one) it prints the exception as "ignored" and goes on."""
    sent: list[str] = []

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and not sent:
            sent.append(phase)
            os.kill(os.getpid(), signal.SIGTERM)  # the handler runs here, inside the callback

    try:
        with pytest.raises(Terminated), stop_signals_raise():
            gc.callbacks.append(callback)  # inside: an automatic collection may come at any time
            gc.collect()
            assert sent, "the callback did not run"
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # ordinary code: where the resent signal lands
                time.sleep(0.001)
    finally:
        if callback in gc.callbacks:
            gc.callbacks.remove(callback)
    assert "Exception ignored" not in capsys.readouterr().err
