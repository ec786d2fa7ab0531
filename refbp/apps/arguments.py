"""What the command line accepts: limits on its numbers and the check of an output folder.

Each check runs before any work and raises a ValueError or TypeError that names the option,
its value and what was expected; refbp.apps.cli prints it as one ``error:`` line, exit code 2.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..nn.validation import check_int
from ..signals import deferred_signals

__all__ = [
    "MAX_DRAWS",
    "MAX_EXAMPLES",
    "MAX_FD_BUDGET",
    "check_draws",
    "check_examples",
    "check_fd_budget",
    "check_out_folder",
    "check_threads",
]

MAX_EXAMPLES = 10_000
"""Most random networks ``refbp report --examples`` sweeps: 50 times the default. Every case's
comparisons stay in memory until the report is written (about 14 KB a case), and each case adds
about 0.85 KB to report.json: --examples 3000 (6,002 cases in two dtypes) took 39 s here, so
10,000 take about 2 minutes, 280 MB of memory and a 17 MB report.json. Far past that a report
is neither readable nor quick, and 10**12 would exhaust memory before checking anything."""

MAX_DRAWS = 1_000
"""Most networks per entry ``refbp bugs --draws`` draws. 1,000 draws cost about 80 times the
default 12 (minutes for a few entries, hours for the whole catalogue); the entries' strategies draw at
most 3 layers of width 4, so by then further draws mostly repeat architectures already seen,
and 10**9 would run for years."""


MAX_FD_BUDGET = 86_400.0
"""Most seconds ``refbp check --fd-budget`` accepts: a day. Full finite differences of the
largest network a spec describes finish well within it; "none" lifts the limit altogether."""


def check_fd_budget(value: str) -> float | None:
    """``refbp check --fd-budget``: seconds > 0 and at most MAX_FD_BUDGET, or "none" (no limit)."""
    if value.strip().lower() == "none":
        return None
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"--fd-budget={value!r}: expected a number of seconds > 0, or 'none' for no limit") from None
    if not 0 < seconds <= MAX_FD_BUDGET:  # also refuses nan
        raise ValueError(
            f"--fd-budget={value!r}: expected a number of seconds > 0 and at most MAX_FD_BUDGET={MAX_FD_BUDGET:,.0f}, "
            "or 'none' for no limit"
        )
    return seconds


def check_examples(value: object) -> int:
    """``refbp report --examples``: an int from 0 to MAX_EXAMPLES."""
    return _at_most(check_int(value, "--examples", minimum=0), "--examples", "MAX_EXAMPLES", MAX_EXAMPLES)


def check_draws(value: object) -> int:
    """``refbp bugs --draws``: an int from 1 to MAX_DRAWS."""
    return _at_most(check_int(value, "--draws", minimum=1), "--draws", "MAX_DRAWS", MAX_DRAWS)


def _at_most(value: int, option: str, constant: str, maximum: int) -> int:
    if value > maximum:
        raise ValueError(
            f"{option}={value} is too large; expected at most {constant}={maximum:,} (see refbp.apps.arguments)"
        )
    return value


def check_threads(value: object) -> int:
    """torch CPU threads: from 1 to this machine's CPU count (more only contend for the CPUs,
    and torch would try to start every one of, say, a million threads)."""
    cpus = os.cpu_count() or 1
    try:
        return check_int(value, "--threads", minimum=1, maximum=cpus)
    except ValueError as err:
        raise ValueError(f"{err} (this machine has {cpus} CPUs)") from None


def check_out_folder(value: str, option: str = "--out") -> Path:
    """Refuse, before any work, an output folder that cannot be written: '', an existing file,
    a path below a file, or a place where this process may not create files.

    Writability is tried, not inferred from permission bits (root ignores them; read-only
    mounts and /proc do not): a probe file (or, for a folder still to be made, a probe folder)
    is created in the nearest existing folder and removed at once. Nothing else is created.
    """
    shown = f"{option} {value!r}"
    if value == "":
        raise ValueError(f"{shown}: expected the path of a folder (existing or to be created), got an empty string")
    if "\0" in value:
        raise ValueError(f"{shown}: a path cannot contain a NUL byte")
    path = existing = Path(value).absolute()
    try:
        if os.path.lexists(path) and not path.exists():
            raise ValueError(f"{shown}: is a symbolic link to nothing; expected a folder or a new path")
        existing = next(p for p in (path, *path.parents) if p.exists())
        if existing == path and not path.is_dir():
            raise ValueError(f"{shown}: is an existing file; expected a folder (existing or to be created)")
        if not existing.is_dir():
            raise ValueError(f"{shown}: {existing} is a file, so no folder can be made below it")
        with deferred_signals():  # a probe is never left behind
            if existing == path:
                fd, probe = tempfile.mkstemp(dir=path, prefix=".refbp-probe.")
                os.close(fd)
                os.unlink(probe)
            else:
                os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".refbp-probe."))
    except OSError as err:
        reason = err.strerror or str(err)
        raise ValueError(f"{shown}: cannot create files in {existing} ({reason}); expected a writable folder") from None
    return Path(value)
