"""Writing report files: a set of files in one folder changes together, or not at all.

``write_set(folder, {name: data})`` is the one mechanism; ``write_atomic(path, data)`` is the
set of one file. What it guarantees (POSIX: Linux, macOS):

1. **A whole set, old or new.** Every file is first written in full to a temporary beside its
   target (``.NAME.XXXX.refbp-tmp``) and flushed to disk; a journal listing every (temporary,
   target) pair is then committed with one atomic rename; only then are the targets replaced.
   So whatever stops the writer, the folder holds the old set or the new set, or (between two
   renames) a committed journal that says how to finish the new one.
2. **Crashes are repaired by the next writer.** A writer killed by SIGKILL or a power cut
   before its commit leaves only temporaries, which the next writer deletes (rolled back: the
   old set stands); killed after it, a journal, which the next writer carries out first
   (completed: the new set stands). ``recover(folder)`` does the same without writing.
3. **Ctrl-C and SIGTERM never split a set.** They are deferred while the journal is committed
   and the targets replaced (refbp.apps.signals.deferred_signals), and act right after; arriving
   earlier, they unwind through ``finally`` (the command line turns SIGTERM into an exception),
   which deletes the writer's temporaries before the exception leaves ``write_set``.
4. **Writers take turns.** A writer holds an exclusive ``flock`` on the folder's lock file
   (``.refbp.lock``) from before its first temporary until its journal is gone, so two
   ``refbp report --out same`` at once leave the complete set of the one that wrote last.
   The lock file is removed by its holder (a waiter that then wins the lock notices and opens
   the new one), so a finished folder holds the set's files and nothing else.
5. New files get an ordinary file's mode (0666 less the umask), or the mode of the file they
   replace, not the 0600 of Python's temporary files.

Not promised: a reader that does not take the lock (``locked``) may read between two renames;
an I/O error after the commit (a full disk cannot cause one: renames need no space) leaves the
journal and its temporaries for the next writer to finish.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import stat
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .signals import deferred_signals

__all__ = ["JOURNAL_NAME", "LOCK_NAME", "TEMP_SUFFIX", "locked", "recover", "write_atomic", "write_set"]

LOCK_NAME = ".refbp.lock"
"""The file whose flock every writer into a folder holds (a lock file rather than the folder
itself: flock on a directory fails on NFS, where report folders in home directories live)."""

JOURNAL_NAME = ".refbp.journal"
"""The committed list of renames of a set being written: present only between a writer's
commit and its last rename, or after a crash there, until the next writer completes it."""

TEMP_SUFFIX = ".refbp-tmp"
"""Ends the name of every temporary ``write_set`` makes. Temporaries are only made under the
lock, so one found by a writer that holds the lock belongs to a dead writer and is deleted."""

_JOURNAL_FORMAT = "refbp.write_set/1"


def write_set(folder: str | os.PathLike[str], files: Mapping[str, str | bytes | None]) -> list[Path]:
    """Replace the files ``files`` names in ``folder`` all together (see the module docstring).

    Args:
        folder: created, with its parents, if missing.
        files: file name (no folder part) -> new contents; str is written as UTF-8, and None
            removes the file, so that a file the new set lacks does not linger from an old one.

    Returns:
        The paths of the files written, in the order given.
    """
    where = Path(folder)
    contents = {_check_name(name): _as_bytes(name, data) for name, data in files.items()}
    where.mkdir(parents=True, exist_ok=True)
    with locked(where):
        temporaries: list[Path] = []
        committed = False
        try:
            replace = []
            for name, data in contents.items():
                if data is not None:
                    temporaries.append(_write_temporary(where, name, data))
                    replace.append([temporaries[-1].name, name])
            journal = {"format": _JOURNAL_FORMAT, "replace": replace,
                       "remove": [name for name, data in contents.items() if data is None]}  # fmt: skip
            temporaries.append(_write_temporary(where, JOURNAL_NAME, json.dumps(journal).encode()))
            with deferred_signals():
                os.replace(temporaries[-1], where / JOURNAL_NAME)  # the commit point
                committed = True
                _carry_out(where, journal)
        finally:
            if not committed:
                with deferred_signals():
                    for path in temporaries:
                        path.unlink(missing_ok=True)
    return [where / name for name, data in contents.items() if data is not None]


def write_atomic(path: str | os.PathLike[str], data: str | bytes) -> Path:
    """Write one file as a set of one: a reader, a crash or a signal never leaves half a file,
    and on any error the old file, if any, stays as it was."""
    target = Path(path)
    return write_set(target.parent, {target.name: data})[0]


def recover(folder: str | os.PathLike[str]) -> None:
    """Finish or roll back what a crashed writer left in ``folder`` (the next writer does it
    anyway): afterwards the folder holds one whole set and no journal or temporaries."""
    if Path(folder).is_dir():
        with locked(folder):
            pass


@contextlib.contextmanager
def locked(folder: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the write lock of the existing ``folder``, waiting for it, after repairing what a
    crashed writer left. A reader that must see one whole set reads within this block."""
    where = Path(folder)
    fd = _acquire(where / LOCK_NAME)
    try:
        _repair(where)
        yield
    finally:
        with deferred_signals():
            try:
                (where / LOCK_NAME).unlink(missing_ok=True)  # while still held: see _acquire
            finally:
                os.close(fd)


# ---- the steps ------------------------------------------------------------------------------
def _acquire(path: Path) -> int:
    """An open descriptor of ``path`` holding its exclusive flock. The holder deletes the file
    before letting go, so a waiter that wins the lock of a deleted file tries again with the
    file now at ``path``; every writer thus locks the same file."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # waits; Ctrl-C and SIGTERM still interrupt it
            with contextlib.suppress(FileNotFoundError):
                if os.path.samestat(os.fstat(fd), os.stat(path)):
                    return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def _repair(folder: Path) -> None:
    """Complete a committed journal, then delete every leftover temporary (under the lock, all
    of them are a dead writer's)."""
    journal_path = folder / JOURNAL_NAME
    if journal_path.exists():
        journal = _read_journal(journal_path)
        with deferred_signals():
            _carry_out(folder, journal)
    with deferred_signals():
        for stale in folder.glob(f".*{TEMP_SUFFIX}"):
            stale.unlink(missing_ok=True)


def _carry_out(folder: Path, journal: dict[str, Any]) -> None:
    """Do the journal's renames and removals, then delete it. Idempotent: a temporary that is
    gone was renamed before a crash, and removing a removed file is a no-op."""
    for temporary, name in journal["replace"]:
        source = folder / temporary
        if source.exists():
            os.replace(source, folder / name)
    for name in journal["remove"]:
        (folder / name).unlink(missing_ok=True)
    _fsync_folder(folder)  # the new set is on disk before the journal goes
    (folder / JOURNAL_NAME).unlink()
    _fsync_folder(folder)


def _read_journal(path: Path) -> dict[str, Any]:
    try:
        journal = json.loads(path.read_bytes())
        if journal["format"] != _JOURNAL_FORMAT or not all(len(pair) == 2 for pair in journal["replace"]):
            raise ValueError("unexpected layout")
        for temporary, name in journal["replace"]:
            _check_name(name)
            if not isinstance(temporary, str) or "/" in temporary or not temporary.endswith(TEMP_SUFFIX):
                raise ValueError(f"{temporary!r} is not a temporary's name")
        for name in journal["remove"]:
            _check_name(name)
    except (ValueError, TypeError, KeyError) as err:
        raise ValueError(
            f"{path} is not a journal refbp can complete ({err}); the files beside it may mix two "
            f"sets: check them, then delete it"
        ) from err
    return dict(journal)


def _write_temporary(folder: Path, name: str, data: bytes) -> Path:
    fd, temporary = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=TEMP_SUFFIX)
    try:
        os.fchmod(fd, _mode_for(folder / name))
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        with deferred_signals():
            Path(temporary).unlink(missing_ok=True)
        raise
    return Path(temporary)


def _mode_for(target: Path) -> int:
    """The mode of the file being replaced, else an ordinary new file's: 0666 less the umask."""
    with contextlib.suppress(FileNotFoundError):
        return stat.S_IMODE(target.stat().st_mode)
    umask = os.umask(0o022)  # the only portable way to read the umask is to set it
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_folder(folder: Path) -> None:
    """Make the folder's renames durable (some file systems refuse fsync on a folder: fine)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


# ---- arguments ------------------------------------------------------------------------------
def _check_name(name: object) -> str:
    reserved = (LOCK_NAME, JOURNAL_NAME)
    if not isinstance(name, str):
        raise TypeError(f"file name {name!r} must be a str, got {type(name).__name__}")
    if name in ("", ".", "..") or "/" in name or "\0" in name or name in reserved or name.endswith(TEMP_SUFFIX):
        raise ValueError(
            f"file name {name!r}: expected a plain file name (no '/', not {reserved[0]!r} or "
            f"{reserved[1]!r}, not ending in {TEMP_SUFFIX!r})"
        )
    return name


def _as_bytes(name: str, data: object) -> bytes | None:
    if data is None or isinstance(data, bytes):
        return data
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"files[{name!r}] must be str, bytes or None (remove the file), got {type(data).__name__}")
