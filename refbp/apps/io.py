"""Writing report files: a set of files in one folder changes together, or not at all.

``write_set(folder, {name: data})`` is the one mechanism; ``write_atomic(path, data)`` is the
set of one file. What it guarantees (POSIX: Linux, macOS):

1. **A whole set, old or new.** Every file is first written in full to a temporary beside its
   target (``.NAME.XXXX.refbp-tmp``) and flushed to disk; a journal listing every (temporary,
   target) pair, and the backup name each old target is moved to, is then committed with one
   atomic rename; only then are the targets replaced, each old file moved aside to its backup
   (``.NAME.XXXX.old.refbp-tmp``) before the new one takes its place. The backups are deleted
   only after the journal, so until the whole new set stands the old one can be put back.
   Whatever stops the writer, the folder holds the old set or the new set, or (between two
   renames) a committed journal that says how to finish the new one or restore the old.
2. **Errors put the old set back.** An error after the commit (a target that cannot be
   replaced: a folder in a file's place, an immutable or read-only file, a rename refused with
   EISDIR, EPERM or EACCES) moves every backup back and deletes the new files, the temporaries
   and the journal, then raises an OSError that names the file and says the previous set
   stands. Only if putting the old set back fails too are the journal and its files left, for
   the next writer to try again (the error says so).
3. **Crashes are repaired by the next writer.** A writer killed by SIGKILL or a power cut
   before its commit leaves only temporaries, which the next writer deletes (rolled back: the
   old set stands); killed after it, a journal, which the next writer carries out first
   (completed: the new set stands), or, if a target still cannot be replaced, rolls back as in
   2. ``recover(folder)`` does the same without writing.
4. **Ctrl-C and SIGTERM never split a set.** They are deferred while the journal is committed
   and the targets replaced (refbp.signals.deferred_signals), and act right after; arriving
   earlier, they unwind through ``finally`` (the command line turns SIGTERM into an exception),
   which deletes the writer's temporaries before the exception leaves ``write_set``.
5. **Writers take turns.** A writer holds an exclusive ``flock`` on the folder's lock file
   (``.refbp.lock``) from before its first temporary until its journal is gone, so two
   ``refbp report --out same`` at once leave the complete set of the one that wrote last.
   The lock file is removed by its holder (a waiter that then wins the lock notices and opens
   the new one), so a finished folder holds the set's files and nothing else.
6. New files get an ordinary file's mode (0666 less the umask), or the mode of the file they
   replace, not the 0600 of Python's temporary files.

Not promised: a reader that does not take the lock (``locked``) may read between two renames
(and find a target missing for a moment, while its old file is moved aside).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import stat
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ..signals import deferred_signals

__all__ = ["BACKUP_MARK", "JOURNAL_NAME", "LOCK_NAME", "TEMP_SUFFIX", "locked", "recover", "write_atomic", "write_set"]

LOCK_NAME = ".refbp.lock"
"""The file whose flock every writer into a folder holds (a lock file rather than the folder
itself: flock on a directory fails on NFS, where report folders in home directories live)."""

JOURNAL_NAME = ".refbp.journal"
"""The committed list of renames of a set being written: present only between a writer's
commit and its last rename, or after a crash there, until the next writer completes it."""

TEMP_SUFFIX = ".refbp-tmp"
"""Ends the name of every temporary ``write_set`` makes. Temporaries are only made under the
lock, so one found by a writer that holds the lock belongs to a dead writer and is deleted."""

_JOURNAL_FORMAT = "refbp.write_set/2"

_FORWARD_ONLY_FORMAT = "refbp.write_set/1"
"""An older refbp's journal: no backups, so it can only be completed, never rolled back."""

BACKUP_MARK = ".old"
"""Comes before TEMP_SUFFIX in the name of an old target moved aside (``.NAME.XXXX.old.refbp-tmp``):
a temporary like the others, so that the next writer deletes one a crash left behind."""


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
                       "remove": [name for name, data in contents.items() if data is None],
                       "backup": {name: _backup_name(where, name) for name in contents}}  # fmt: skip
            temporaries.append(_write_temporary(where, JOURNAL_NAME, json.dumps(journal).encode()))
            with deferred_signals():
                os.replace(temporaries[-1], where / JOURNAL_NAME)  # the commit point
                committed = True
                failure = _complete(where, journal)
            if failure is not None:
                raise failure
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
    anyway): afterwards the folder holds one whole set and no journal or temporaries. A set
    that cannot be finished (a target cannot be replaced) is rolled back: the old set stands."""
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
    """Complete a committed journal (or roll it back when it cannot be completed), then delete
    every leftover temporary (under the lock, all of them are a dead writer's)."""
    journal_path = folder / JOURNAL_NAME
    if journal_path.exists():
        journal = _read_journal(journal_path)
        with deferred_signals():
            _complete(folder, journal)  # rolled back: the dead writer's set is not this writer's error
    with deferred_signals():
        for stale in folder.glob(f".*{TEMP_SUFFIX}"):
            stale.unlink(missing_ok=True)


def _complete(folder: Path, journal: dict[str, Any]) -> OSError | None:
    """Carry out a committed journal; if a step fails, put the old set back and return the
    error to raise (the folder is whole again). Raises only when the old set cannot be put back
    either: then the journal and its files stay for the next writer."""
    try:
        _carry_out(folder, journal)
    except OSError as err:
        failed = _describe(err)
        if journal["format"] == _FORWARD_ONLY_FORMAT:
            raise OSError(f"{failed}; an older refbp's journal {folder / JOURNAL_NAME} cannot be rolled back: "
                          "make the target replaceable, and the next writer completes it") from err  # fmt: skip
        try:
            _roll_back(folder, journal)
        except OSError as again:
            raise OSError(
                f"{failed}; putting the previous set back failed too ({_describe(again)}): "
                f"{folder / JOURNAL_NAME} and the files it lists stay, and the next writer into {folder} "
                "tries again"
            ) from err
        return OSError(f"{failed}; nothing was replaced: the previous set in {folder} stands")
    return None


def _carry_out(folder: Path, journal: dict[str, Any]) -> None:
    """Do the journal's steps, then delete it, then the backups. For each target: move the old
    file aside to its backup, then move the temporary in; a target to remove is only moved
    aside. Idempotent (so a crash anywhere is completed by running it again): a temporary that
    is gone was moved in, a backup that exists holds the old file already."""
    backup = journal.get("backup", {})
    for temporary, name in journal["replace"]:
        source = folder / temporary
        if source.exists():
            _move_aside(folder, name, backup.get(name))
            os.replace(source, folder / name)  # a folder in its place: the kernel refuses (EISDIR)
    for name in journal["remove"]:
        _move_aside(folder, name, backup.get(name))
        if backup.get(name) is None:  # an older journal: no backup, remove at once
            (folder / name).unlink(missing_ok=True)
    _fsync_folder(folder)  # the new set is on disk before the journal goes
    (folder / JOURNAL_NAME).unlink()
    _fsync_folder(folder)
    for aside in backup.values():  # the new set stands: the old files go (the next writer
        with contextlib.suppress(OSError):  # deletes any that cannot go now)
            (folder / aside).unlink(missing_ok=True)


def _move_aside(folder: Path, name: str, aside: str | None) -> None:
    """Rename the old target ``name``, if any and not yet done, to its backup ``aside`` (None:
    an older journal without backups). A folder is not a file refbp replaces: an error."""
    target = folder / name
    if aside is None or os.path.lexists(folder / aside) or not os.path.lexists(target):
        return
    if target.is_dir() and not target.is_symlink():  # renamed aside, it would go with the backups
        raise IsADirectoryError(errno.EISDIR, "a folder stands where the set has a file", str(target))
    os.replace(target, folder / aside)


def _roll_back(folder: Path, journal: dict[str, Any]) -> None:
    """Undo whatever part of the journal was done: every backup back in its place, every new
    file that had no old one deleted, the temporaries and the journal deleted."""
    backup = journal["backup"]
    for temporary, name in journal["replace"]:
        aside, source = folder / backup[name], folder / temporary
        if os.path.lexists(aside):
            os.replace(aside, folder / name)  # the old file back, over the new one if it came in
        elif not source.exists():
            (folder / name).unlink(missing_ok=True)  # moved in where no old file was
        source.unlink(missing_ok=True)
    for name in journal["remove"]:
        if os.path.lexists(folder / backup[name]):
            os.replace(folder / backup[name], folder / name)
    _fsync_folder(folder)
    (folder / JOURNAL_NAME).unlink()
    _fsync_folder(folder)


def _describe(err: OSError) -> str:
    """An OSError in words, naming the files involved: "cannot replace 'x' with 'y': Is a directory"."""
    reason = err.strerror or str(err)
    if err.filename is not None and err.filename2 is not None:
        return f"cannot rename {err.filename} to {err.filename2}: {reason}"
    if err.filename is not None:
        return f"{err.filename}: {reason}"
    return reason


def _backup_name(folder: Path, name: str) -> str:
    """A name nothing in ``folder`` has, for the old ``name`` while it is moved aside."""
    while True:
        aside = f".{name}.{secrets.token_hex(4)}{BACKUP_MARK}{TEMP_SUFFIX}"
        if not os.path.lexists(folder / aside):
            return aside


def _read_journal(path: Path) -> dict[str, Any]:
    try:
        journal = json.loads(path.read_bytes())
        if journal["format"] not in (_JOURNAL_FORMAT, _FORWARD_ONLY_FORMAT):
            raise ValueError(f"unknown format {journal['format']!r}")
        if not all(len(pair) == 2 for pair in journal["replace"]):
            raise ValueError("unexpected layout")
        backup = journal.setdefault("backup", {}) if journal["format"] == _FORWARD_ONLY_FORMAT else journal["backup"]
        names = {name for _, name in journal["replace"]} | set(journal["remove"])
        if journal["format"] == _JOURNAL_FORMAT and set(backup) != names:
            raise ValueError("its backups are not those of its targets")
        for aside in backup.values():
            if not isinstance(aside, str) or "/" in aside or not aside.endswith(BACKUP_MARK + TEMP_SUFFIX):
                raise ValueError(f"{aside!r} is not a backup's name")
        for temporary, name in journal["replace"]:
            _check_name(name)
            if not isinstance(temporary, str) or "/" in temporary or not temporary.endswith(TEMP_SUFFIX):
                raise ValueError(f"{temporary!r} is not a temporary's name")
        for name in journal["remove"]:
            _check_name(name)
    except (ValueError, TypeError, KeyError, AttributeError) as err:
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
