"""Real gloo ranks for the distributed tests: forked processes with torchrun's environment, and
torchrun itself, each cleaned up however the test ends.

``run_ranks(fn, world_size)`` forks ``world_size`` children of the test process (torch is already
imported, so a rank starts in milliseconds), gives each the variables torchrun sets (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT: refbp.distributed.launch reads them), runs
``fn(rank)`` and sends back what it returned, its exit code and everything it printed. A rank
still running at the deadline is killed; every child is reaped before the function returns, so
no test leaves a process behind, whatever happens in it.

``torchrun(args)`` runs the real thing in a session of its own, its temporary files (torchrun's
log folders) kept in a folder of the test's, and kills the whole session at the deadline.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .processes import ROOT, child_env

TORCHRUN = Path(sys.executable).parent / "torchrun"

STOP_GRACE = 5.0
"""Seconds a rank has to end after SIGTERM before SIGKILL (torchrun waits 30)."""

RANK_DEADLINE = 60.0
"""Seconds a test's ranks may run in all: the tests' jobs take one or two seconds (a hung rank's
timeout, a few); a minute leaves room for a loaded 2-core machine and still ends a stuck test."""


LEAVING = 4.0
"""Seconds a rank may take, after it noticed, to leave the process group and exit (garbage
collection, gloo's teardown): well under one on a quiet machine, up to 3.9 s seen with the
whole suite running on 2 cores under a load average of 20. Against the default timeout of 60 s
it is nothing; a rank that noticed only at the end of the sweep ends ~50 s after the stop."""


@dataclass
class RankRun:
    """What each rank did.

    Attributes:
        codes: exit codes (None: killed at the deadline; negative: killed by that signal).
        values: what ``fn(rank)`` returned (None where it raised or died).
        output: everything the rank printed, stdout and stderr together.
        seconds: wall time of the whole run.
    """

    codes: list[int | None]
    values: list[Any]
    output: list[str]
    seconds: float

    def shown(self) -> str:
        """Every rank's exit code, value and whole output, for an assertion's message (pytest
        shortens the repr of a list of long strings, which cut the traceback a failure needs)."""
        return "\n".join(
            f"--- rank {rank}: exit code {code}, value {value!r}, after {self.seconds:.1f} s ---\n{out}"
            for rank, (code, value, out) in enumerate(zip(self.codes, self.values, self.output, strict=True))
        )


def free_port() -> int:
    """A TCP port nobody listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def torchrun_environment(rank: int, world_size: int, port: int) -> dict[str, str]:
    """The variables torchrun gives rank ``rank`` of a one-machine job."""
    return {
        "RANK": str(rank),
        "WORLD_SIZE": str(world_size),
        "LOCAL_RANK": str(rank),
        "LOCAL_WORLD_SIZE": str(world_size),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }


def _rank_main(fn: Callable[[int], Any], rank: int, env: dict[str, str], folder: Path) -> None:
    """A forked rank: torchrun's environment, output to a file, fn's value to another; the exit
    code is fn's value when that is an int (a command's), else 0 (1 when it raised)."""
    os.environ.update(env)
    os.environ.pop("TORCHELASTIC_USE_AGENT_STORE", None)  # rank 0 hosts the store, as without an agent
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder / "inductor")  # DDP makes torch's cache folder: here
    log = open(folder / f"rank{rank}.log", "w", buffering=1)  # noqa: SIM115 (open until os._exit)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    sys.stdout = sys.stderr = log
    code = 0
    try:
        value = fn(rank)
        (folder / f"rank{rank}.pickle").write_bytes(pickle.dumps(value))
        if isinstance(value, int) and not isinstance(value, bool):
            code = value  # a command's exit code, as ``sys.exit(main())`` would make it
    except BaseException:
        traceback.print_exc()
        code = 1
    log.flush()
    os._exit(code)


def run_ranks(
    fn: Callable[[int], Any],
    world_size: int,
    folder: Path,
    *,
    deadline: float = RANK_DEADLINE,
    env: dict[str, str] | None = None,
    like_torchrun: bool = False,
) -> RankRun:
    """Run ``fn(rank)`` on ``world_size`` forked ranks (see the module docstring); ``folder``
    holds their output while they run.

    ``like_torchrun``: once a rank fails (exits with a code other than 0), stop the others as
    torchrun does: SIGTERM, then SIGKILL after STOP_GRACE seconds."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    context = multiprocessing.get_context("fork")
    processes = [
        context.Process(
            target=_rank_main, args=(fn, rank, {**torchrun_environment(rank, world_size, port), **(env or {})}, folder)
        )
        for rank in range(world_size)
    ]
    start = time.monotonic()
    stuck = [False] * world_size
    try:
        for p in processes:
            p.start()
        stopping: float | None = None
        while time.monotonic() < start + deadline and any(p.is_alive() for p in processes):
            failed = any(p.exitcode not in (None, 0) for p in processes)
            if like_torchrun and failed and stopping is None:
                stopping = time.monotonic()
                for p in processes:
                    if p.is_alive():
                        p.terminate()
            if stopping is not None and time.monotonic() > stopping + STOP_GRACE:
                break
            time.sleep(0.02)
    finally:
        for rank, p in enumerate(processes):
            if p.is_alive():
                stuck[rank] = True
                p.kill()
            p.join()
    seconds = time.monotonic() - start
    codes = [None if stuck[rank] else p.exitcode for rank, p in enumerate(processes)]
    values, output = [], []
    for rank in range(world_size):
        result = folder / f"rank{rank}.pickle"
        values.append(pickle.loads(result.read_bytes()) if result.exists() else None)
        result.unlink(missing_ok=True)
        log = folder / f"rank{rank}.log"
        output.append(log.read_text() if log.exists() else "")
        log.unlink(missing_ok=True)
    return RankRun(codes, values, output, seconds)


@dataclass
class TorchrunRun:
    """How a torchrun job ended.

    Attributes:
        returncode: torchrun's exit code; None when it was killed at the deadline.
        stdout, stderr: what torchrun and its ranks printed.
        seconds: wall time until torchrun ended.
        left_behind: processes of its session still running after torchrun ended (its ranks
            should end with it); they were killed.
    """

    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    left_behind: bool


def torchrun(args: Sequence[str], folder: Path, *, deadline: float = 120.0) -> TorchrunRun:
    """``torchrun --standalone ARGS`` in the repository root, in a session of its own with
    TMPDIR in ``folder``. Whatever happens, every process of the session is gone afterwards."""
    tmp = folder / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    env = {
        **child_env(),
        "TMPDIR": str(tmp),
        "OMP_NUM_THREADS": "1",
        "TORCHINDUCTOR_CACHE_DIR": str(folder / "inductor"),
    }
    start = time.monotonic()
    proc = subprocess.Popen([str(TORCHRUN), "--standalone", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
    left_behind = False
    try:
        out, err = proc.communicate(timeout=deadline)
        code: int | None = proc.returncode
        seconds = time.monotonic() - start
        end = time.monotonic() + 2.0  # ranks get a moment to finish exiting
        while (left_behind := session_alive(proc.pid)) and time.monotonic() < end:
            time.sleep(0.05)
    except subprocess.TimeoutExpired:
        out, err, code, seconds = "", "", None, time.monotonic() - start
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # torchrun's ranks too, whatever state they are in
        proc.wait()
    return TorchrunRun(code, out, err, seconds, left_behind)


def session_alive(pid: int) -> bool:
    """True while a process of the session ``pid`` led is still running (not a zombie)."""
    for status in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = status.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == pid and fields[0] != "Z":  # fields: state, ppid, pgrp, session, ...
            return True
    return False
