"""A rank of the ``refbp`` command that fails on purpose, for the fault tests under torchrun:

    torchrun --standalone --nproc-per-node=2 tests/fault_rank.py RANK CASE ACTION refbp-arguments...

Rank RANK, as it starts the CASE-th case of its share of the sweep, does ACTION: "die"
(SIGKILL, which nothing can catch), "stop" (SIGSTOP: every thread stands still, as on a frozen
machine), "raise" (an exception) or "hang" (sleeps, as a deadlocked rank would). Every other
rank runs ``refbp`` as it is. The fault is injected around refbp.verify.sweep.check_case, which
the sharded report calls for each case; nothing in refbp knows about it."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from refbp.apps.cli import main
from refbp.verify import sweep


def inject(action: str, case: int, *, note: Path | None = None) -> None:
    """From now on, this process does ``action`` as it starts its ``case``-th case; ``note``
    gets the moment (time.monotonic(), the same clock in every process of a machine)."""
    check_case, started = sweep.check_case, [0]

    def faulty(*args: Any, **kwargs: Any) -> Any:
        started[0] += 1
        if started[0] == case:
            if note is not None:
                note.write_text(repr(time.monotonic()))
            if action == "raise":
                raise RuntimeError(f"a fault injected at case {case}")
            os.kill(os.getpid(), {"die": signal.SIGKILL, "stop": signal.SIGSTOP}.get(action, 0))
            time.sleep(3600)  # "hang" (signal 0 only checks that the process exists)
        return check_case(*args, **kwargs)

    sweep.check_case = faulty


if __name__ == "__main__":
    rank, case, action, *argv = sys.argv[1:]
    if os.environ.get("RANK") == rank:
        inject(action, int(case))
    sys.exit(main(argv))
