"""Each rank's sign of life in the job's store, so that a rank that stops (SIGSTOP, a dead
machine, SIGKILL) is found while the others still work, not when they next meet it.

A thread of every rank adds 1 to its own counter in the store every ``interval`` seconds and
reads the others'; a counter that has not moved for ``silence`` seconds (measured on this rank's
clock: the ranks' clocks need not agree) is a rank that stopped, or died. The thread beats while
the main thread computes (torch's operations let it run), so a long case is no silence. A rank
that leaves says why first: ``done`` (stopped on purpose: not a silence) or ``failed`` with its
error's first line, which the others then name at once.

    heart = Heartbeat(store, rank=0, world_size=3, key=lambda name: f"job/{name}", silence=30.0)
    heart.start()
    ...
    heart.verdict()      # None, or (why, ranks): what this rank has heard that ends the job
    heart.stop(None)     # or heart.stop("RuntimeError: what went wrong")
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import torch.distributed as dist

__all__ = ["STORE_LOST", "Heartbeat"]

STORE_LOST = -1
"""The rank ``verdict`` names when the job's store itself stopped answering (its keeper
stopped: rank 0, or torchrun's agent)."""


class Heartbeat:
    """This rank's beat and its view of the others' (see the module docstring).

    Args:
        store: the job's store (torch's TCPStore is safe to share between threads).
        rank, world_size: this rank and the job's size.
        key: the job's name for a key (so that runs never share keys).
        silence: seconds without a beat after which a rank is declared stopped.
    """

    def __init__(
        self, store: dist.Store, *, rank: int, world_size: int, key: Callable[[str], str], silence: float
    ) -> None:
        self.store, self.rank, self.key, self.silence = store, rank, key, silence
        self.interval = min(1.0, silence / 5)  # five beats per silence: one late beat is no alarm
        self.others = [r for r in range(world_size) if r != rank]
        now = time.monotonic()
        self._beats = {r: 0 for r in self.others}
        self._seen = {r: now for r in self.others}  # when each rank's counter last moved
        self._left: set[int] = set()
        self._failed: dict[int, str] = {}
        self._store_call_since: float | None = None  # set while the thread waits on the store
        self._stopping = threading.Event()
        self.on_verdict: Callable[[], None] | None = None
        """Called (from the heartbeat's thread) once, when ``verdict`` first finds something."""
        self._told = False
        self._thread = threading.Thread(target=self._run, name="refbp-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, failure: str | None) -> None:
        """Stop beating, after telling the others why: ``failure`` None is a rank that is done
        (or that found another rank lost, which the others find for themselves), else this
        rank's failure in one line, which the others then name."""
        self._stopping.set()
        self._thread.join(timeout=self.interval + 1.0)
        if self._thread.is_alive():  # stuck in a call to a store that does not answer: another
            return  # call would wait its full timeout, and nobody would hear it
        try:
            if failure is None:
                self.store.set(self.key(f"left/{self.rank}"), "done")
            else:
                self.store.set(self.key(f"left/{self.rank}"), failure)
                self.store.add(self.key("failures"), 1)
        except RuntimeError:
            pass  # the store is gone: the others find out from it themselves

    def tell_again(self) -> None:
        """Call ``on_verdict`` again at the next beat: the main thread could not take the
        verdict when it was told (it was already leaving, see refbp.distributed.launch)."""
        self._told = False

    def verdict(self) -> tuple[str, tuple[int, ...]] | None:
        """What this rank has heard that ends the job: a rank's failure, the store's silence
        (ranks = (STORE_LOST,)), ranks silent for ``silence`` seconds; None if nothing."""
        now = time.monotonic()
        if self._failed:
            r, why = min(self._failed.items())
            return f"rank {r} failed: {why}", (r,)
        since = self._store_call_since
        if since is not None and now - since > self.silence:
            return f"the job's store gave no answer for {self.silence:g} s", (STORE_LOST,)
        silent = tuple(r for r in self.others if r not in self._left and now - self._seen[r] > self.silence)
        if not silent:
            return None
        who = f"rank {silent[0]}" if len(silent) == 1 else "ranks " + ", ".join(map(str, silent))
        return f"{who} gave no sign of life for {self.silence:g} s (stopped, or died)", silent

    # ---- the thread ----------------------------------------------------------------------------
    def _run(self) -> None:
        failures = 0
        try:
            while not self._stopping.wait(self.interval):
                self._call(self.store.add, self.key(f"alive/{self.rank}"), 1)
                for r in self.others:
                    beats = int(self._call(self.store.add, self.key(f"alive/{r}"), 0))
                    if beats != self._beats[r]:
                        self._beats[r], self._seen[r] = beats, time.monotonic()
                    elif r not in self._left and time.monotonic() - self._seen[r] > self.interval:
                        self._read_left(r)  # quiet: did it leave on purpose?
                now_failures = int(self._call(self.store.add, self.key("failures"), 0))
                if now_failures != failures:
                    failures = now_failures
                    for r in self.others:
                        self._read_left(r)
                tell = self.on_verdict
                if tell is not None and not self._told and self.verdict() is not None:
                    self._told = True
                    tell()
        except RuntimeError:
            return  # the store is gone; the main thread's next call to it says so

    def _read_left(self, r: int) -> None:
        key = self.key(f"left/{r}")
        if self._call(self.store.check, [key]):
            why = self._call(self.store.get, key).decode(errors="replace")
            self._left.add(r)
            if why != "done":
                self._failed[r] = why

    def _call(self, method: Callable[..., Any], *args: Any) -> Any:
        self._store_call_since = time.monotonic()
        try:
            return method(*args)
        finally:
            self._store_call_since = None
