"""The job torchrun starts: the gloo process group the ranks share, its timeouts, a lost rank.

``torchrun_launch()`` (refbp.distributed.environment, re-exported here) says whether this
process is a rank, and which; ``joined(launch, timeout=...)`` joins the gloo group for the
length of a ``with`` block and always leaves it.

**A rank that dies, stops or hangs does not hang the others.** Every collective gives up
after ``timeout`` seconds (``init_process_group(timeout=...)``), and ``Job.collective`` turns
gloo's error into one naming the rank. While the ranks are joined, each beats a heartbeat in the
job's store (refbp.distributed.heartbeat): a rank silent for half the timeout (SIGSTOP, SIGKILL,
a frozen machine), or one that failed with an error (it says so as it leaves), is found by the
others between two cases (``Job.check_alive``) or while they wait for it, so every rank ends
within the timeout of the stop (half of it to notice, the rest for the case in progress: every
case of the sweep takes far less). Before rank 0 gathers the ranks' results, ``Job.barrier``
waits for every rank in the store (each notes its arrival), listening to the heartbeat; a rank
that still beats but never comes (hung) is named after ``timeout``. Every failure becomes one
``RankFailedError`` naming the rank(s) when they are known. (Under torchrun a rank that
*dies* usually ends the job sooner: torchrun stops every other rank at once, and its summary
names the rank that failed first.)
"""

from __future__ import annotations

import _thread
import contextlib
import functools
import gc
import math
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import timedelta
from types import FrameType
from typing import Any

import torch.distributed as dist

from ..signals import raise_from_handler, stops_restored
from .environment import TORCHRUN_VARIABLES, Launch, torchrun_launch
from .heartbeat import STORE_LOST, Heartbeat

__all__ = [
    "DEFAULT_TIMEOUT",
    "TIMEOUT_VARIABLE",
    "TORCHRUN_VARIABLES",
    "Job",
    "Launch",
    "RankFailedError",
    "check_timeout",
    "has_joined",
    "joined",
    "timeout_from_environment",
    "torchrun_launch",
]

DEFAULT_TIMEOUT = 60.0
"""Seconds a rank waits for the others in any collective before the job is declared broken.
The ranks take cases from one shared queue (refbp.distributed.sharded_report) and reach each
meeting point within one case of each other: the slowest case of the default sweep takes under
a second, and a few seconds on a loaded 2-core machine. A minute is far beyond that, and short
enough that a hung rank costs a minute, not the hours of torch's default (30 minutes)."""

TIMEOUT_VARIABLE = "REFBP_DISTRIBUTED_TIMEOUT"
"""The environment variable that sets the timeout of ``refbp report`` under torchrun (in
seconds; ``refbp distributed`` has ``--timeout``)."""

SILENCE_SHARE = 0.5
"""A rank whose heartbeat has not moved for this share of the timeout is declared stopped or
dead (refbp.distributed.heartbeat): half, so that the others end within the timeout of the
stop even when they notice it one case later."""

INTERRUPT_SIGNAL = signal.SIGUSR1
"""The signal whose Python handler stops the main thread when the heartbeat finds a rank lost
(tripped in-process by ``_thread.interrupt_main``, never sent)."""

BARRIER_POLL = 0.02
"""Seconds between two looks at the store while a rank waits for the others at a barrier."""

MAX_TIMEOUT = 24 * 3600.0
"""The longest timeout accepted: a day. Longer is a typo, and timedelta and gloo overflow long
before 1e300."""


class RankFailedError(RuntimeError):
    """A rank died, hung or lost contact: the job cannot finish.

    Attributes:
        ranks: the ranks that failed, when known (empty when the group could not say).
    """

    def __init__(self, message: str, ranks: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.ranks = ranks


def check_timeout(value: object, name: str = "--timeout") -> float:
    """A timeout in seconds: a finite number > 0 and at most MAX_TIMEOUT."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}={value!r} must be a number of seconds, got {type(value).__name__}")
    if not (math.isfinite(value) and 0 < value <= MAX_TIMEOUT):
        raise ValueError(f"{name}={value!r} is out of range; expected seconds in (0, {MAX_TIMEOUT:g}]")
    return float(value)


def timeout_from_environment(environ: Mapping[str, str] | None = None) -> float:
    """The timeout TIMEOUT_VARIABLE sets, or DEFAULT_TIMEOUT."""
    env = os.environ if environ is None else environ
    text = env.get(TIMEOUT_VARIABLE)
    if not text:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{TIMEOUT_VARIABLE}={text!r} is not a number; expected seconds, e.g. 60") from None
    return check_timeout(value, TIMEOUT_VARIABLE)


class Job:
    """The joined process group, as the ranks use it: a shared counter, a monitored barrier, a
    gather to rank 0. Every failure of the group is a RankFailedError."""

    def __init__(self, launch: Launch, store: dist.Store, timeout: float) -> None:
        self.launch = launch
        self.store = store
        self.timeout = timeout
        self._meetings = 0
        self.doing = "the job"
        """What this rank is doing with the others (the sweep, a network): the head of a lost
        rank's line."""
        self.heart = Heartbeat(
            store, rank=launch.rank, world_size=launch.world_size, key=self._key, silence=timeout * SILENCE_SHARE
        )

    @property
    def rank(self) -> int:
        return self.launch.rank

    @property
    def world_size(self) -> int:
        return self.launch.world_size

    @property
    def leader(self) -> bool:
        return self.launch.leader

    def _key(self, name: str) -> str:
        return f"refbp/{self.launch.run_id}/{name}"

    def add(self, name: str, amount: int = 1) -> int:
        """Add ``amount`` to the job-wide counter ``name`` (0 at first) and return its new value:
        atomic across ranks, so ``add(name) - 1`` hands each caller a different number."""
        try:
            return int(self.store.add(self._key(name), amount))
        except RuntimeError as err:
            first = (str(err).strip() or type(err).__name__).splitlines()[0]
            ranks: tuple[int, ...] = ()
            if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
                keeper = "torchrun's agent, which keeps the job's store,"
            else:
                keeper, ranks = "rank 0, which keeps the job's store,", (0,)
            raise RankFailedError(
                f"the job's counter {name!r}: rank {self.rank} lost {keeper} (it died or hung): {first}", ranks
            ) from err

    def check_alive(self, what: str) -> None:
        """Raise RankFailedError if this rank has heard that another failed, died or stopped
        (refbp.distributed.heartbeat): call it between steps of work that meets no other rank."""
        self.doing = what
        heard = self.heart.verdict()
        if heard is not None:
            raise self._failure(what, heard)

    def _failure(self, what: str, heard: tuple[str, tuple[int, ...]]) -> RankFailedError:
        why, ranks = heard
        if ranks == (STORE_LOST,):
            keeper, ranks = self._store_keeper()
            return RankFailedError(f"{what}: {why}: rank {self.rank} lost {keeper} (it died or stopped)", ranks)
        return RankFailedError(f"{what}: {why}", ranks)

    def _store_keeper(self) -> tuple[str, tuple[int, ...]]:
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            return "torchrun's agent, which keeps the job's store,", ()
        return "rank 0, which keeps the job's store,", (0,)

    @contextlib.contextmanager
    def collective(self, what: str) -> Iterator[None]:
        """Run collectives (all-reduces, DDP) in the block: an error of the process group
        (gloo's timeout after ``timeout`` seconds, a closed connection) becomes a RankFailedError
        that names the rank this rank has heard stop, when it has."""
        self.doing = what
        try:
            yield
        except RuntimeError as err:
            if isinstance(err, RankFailedError) or not _from_the_group(err):
                raise
            heard = self.heart.verdict()
            raise (self._failure(what, heard) if heard else _lost(what, self.rank, err)) from err

    def barrier(self, what: str) -> None:
        """Wait until every rank gets here, at most ``timeout`` seconds. A rank that arrives
        says so in the job's store first, and the wait is on the store, listening to the
        heartbeat meanwhile: a rank that stops or fails while the others wait is named within
        the heartbeat's silence, one that works on and never comes after ``timeout``."""
        self.doing = what
        self._meetings += 1
        arrived = f"meeting{self._meetings}/arrived/"
        start = time.monotonic()
        try:
            self.store.set(self._key(f"{arrived}{self.rank}"), "1")
        except RuntimeError as err:
            raise _lost(what, self.rank, err) from err
        while absent := self._absent(arrived):
            self.check_alive(what)
            if time.monotonic() - start >= self.timeout:
                who = f"rank {absent[0]}" if len(absent) == 1 else "ranks " + ", ".join(map(str, absent))
                raise RankFailedError(f"{what}: {who} did not arrive within {self.timeout:g} s (hung, or died)", absent)
            time.sleep(BARRIER_POLL)
        try:  # every rank has arrived: this passes at once, and keeps gloo's ranks in step
            dist.monitored_barrier(timeout=timedelta(seconds=self.timeout), wait_all_ranks=True)
        except RuntimeError as err:
            elapsed = time.monotonic() - start
            absent = self._absent(arrived)
            if not absent:
                raise _lost(what, self.rank, err) from err
            who = f"rank {absent[0]}" if len(absent) == 1 else "ranks " + ", ".join(map(str, absent))
            how = (
                f"did not arrive within {self.timeout:g} s (hung, or died)"
                if elapsed >= self.timeout
                else "died (its connection closed)"
            )
            raise RankFailedError(f"{what}: {who} {how}", absent) from err

    def _absent(self, arrived: str) -> tuple[int, ...]:
        """The ranks that have not said they arrived (none when the store cannot say)."""
        try:
            return tuple(r for r in range(self.world_size) if not self.store.check([self._key(f"{arrived}{r}")]))
        except RuntimeError:
            return ()

    def gather(self, value: Any, what: str) -> list[Any] | None:
        """Every rank's ``value`` (picklable), in rank order, on rank 0; None elsewhere."""
        out: list[Any] | None = [None] * self.world_size if self.leader else None
        try:
            dist.gather_object(value, out, dst=0)
        except RuntimeError as err:
            heard = self.heart.verdict()
            raise (self._failure(what, heard) if heard else _lost(what, self.rank, err)) from err
        return out


_JOINED = False
"""True once this process has joined a process group with ``joined`` (see ``has_joined``)."""


def has_joined() -> bool:
    """True once this process has joined its job's process group (even if it has left it since):
    an error raised before then is the command's own (the same on every rank), one raised
    after it may be this rank's alone."""
    return _JOINED


@contextlib.contextmanager
def joined(launch: Launch, *, timeout: float = DEFAULT_TIMEOUT) -> Iterator[Job]:
    """Join the job's gloo process group for the block and leave it afterwards, whatever happens.

    The rendezvous store is torchrun's (``env://``: MASTER_ADDR, MASTER_PORT); every
    collective, the rendezvous included, gives up after ``timeout`` seconds."""
    check_timeout(timeout, "timeout")
    if dist.is_initialized():
        raise RuntimeError("a torch.distributed process group is already initialised in this process")
    global _JOINED
    _JOINED = True
    wait = timedelta(seconds=timeout)
    try:
        store, _, _ = next(dist.rendezvous("env://", timeout=wait))
        dist.init_process_group("gloo", store=store, rank=launch.rank, world_size=launch.world_size, timeout=wait)
    except RuntimeError as err:
        raise _lost(f"joining the process group (within {timeout:g} s)", launch.rank, err) from err
    job = Job(launch, store, timeout)
    job.heart.start()
    failure: str | None = None
    try:
        with _interrupted_when_lost(job), job.collective("the job"):
            yield job
    except RankFailedError:
        raise  # another rank's: the others find it themselves
    except BaseException as err:
        failure = _first_line(err)  # this rank's own: told to the others, who then end at once
        raise
    finally:
        job.heart.stop(failure)
        # DistributedDataParallel's reducer holds the group and sits in a reference cycle with
        # the parameters it hooks; left to the interpreter's exit, it outlived the group and
        # gloo aborted the process ("terminate called without an active exception", 3 runs
        # of 32 of refbp distributed on 3 ranks). Collected now, it goes first: 0 of 40.
        gc.collect()
        dist.destroy_process_group()


class _Interrupted(BaseException):
    """The heartbeat's verdict, raised in the main thread wherever it stands. A BaseException,
    as KeyboardInterrupt is, so that no ``except RuntimeError`` (or ``except Exception``) on
    the way swallows it: raised as the RankFailedError it carries, ``Job._absent``'s guard
    against a store that cannot answer took it for one, and the barrier then named a stopped
    rank as one whose connection closed (1 CI run). ``_interrupted_when_lost`` turns it back
    into its RankFailedError at the block's edge."""

    def __init__(self, error: RankFailedError) -> None:
        super().__init__(str(error))
        self.error = error


@contextlib.contextmanager
def _interrupted_when_lost(job: Job) -> Iterator[None]:
    """Within the block, the heartbeat's verdict stops the main thread where it is (mid-case)
    with the RankFailedError, so that the case in progress does not delay the end. The
    heartbeat trips INTERRUPT_SIGNAL's Python handler (``_thread.interrupt_main``: no signal is
    sent to any process); only in the main thread, where Python runs handlers. The handler
    raises ``_Interrupted``, which only this block's edge catches; while another exception is
    on its way it leaves that one be and asks the heartbeat to tell it again."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def lost(signum: int, frame: FrameType | None) -> None:
        heard = job.heart.verdict()
        if heard is None:
            return  # a real SIGUSR1 from elsewhere: nothing to do
        if sys.exc_info()[1] is not None:
            # an exception is on its way already (a stop, this rank's own error, one a guard is
            # handling): raised now, ours would replace it, and where the handler ran at the
            # start of a with-block's __exit__ it would escape this block's edge unconverted (a
            # traceback instead of "terminated", 1 CI run); the heartbeat tells again at its
            # next beat, by when the block has been left, or the guard is done
            job.heart.tell_again()
            return
        raise_from_handler(_Interrupted(job._failure(job.doing, heard)))

    previous = signal.signal(INTERRUPT_SIGNAL, lost)
    job.heart.on_verdict = functools.partial(_thread.interrupt_main, INTERRUPT_SIGNAL)
    try:
        with stops_restored():  # the verdict as torch's TorchScript interpreter may hand it on
            yield
    except _Interrupted as interrupted:
        raise interrupted.error from None
    finally:
        job.heart.on_verdict = None
        signal.signal(INTERRUPT_SIGNAL, previous)  # SIG_DFL: a late trip is ignored


def _from_the_group(err: RuntimeError) -> bool:
    """True for an error of the process group (gloo's own messages name its source files), not
    of the code between collectives."""
    return isinstance(err, dist.DistError) or "gloo" in str(err)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def _lost(what: str, rank: int, err: RuntimeError) -> RankFailedError:
    """The error of a rank that lost contact with the job, naming the rank the message names
    (gloo's monitored barrier names the ranks it waited for in vain)."""
    text = str(err).strip()
    found = re.search(r"Ranks? ([0-9, ]+) failed to pass monitoredBarrier", text) or re.search(
        r"from rank ([0-9]+)", text
    )
    ranks = tuple(int(r) for r in re.findall(r"[0-9]+", found.group(1))) if found else ()
    first = text.splitlines()[0] if text else type(err).__name__
    if ranks:
        who = f"rank {ranks[0]}" if len(ranks) == 1 else "ranks " + ", ".join(map(str, ranks))
        return RankFailedError(f"{what}: {who} did not answer rank {rank} (died or hung): {first}", ranks)
    return RankFailedError(
        f"{what}: rank {rank} lost contact with the job (a rank died, or the job's store with it: rank 0 "
        f"keeps it when torchrun does not): {first}"
    )
