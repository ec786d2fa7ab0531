"""Signals as exceptions: SIGTERM unwinds like Ctrl-C, and a critical section can make both wait.

Python turns SIGINT into KeyboardInterrupt, so ``finally`` blocks run and temporary files go;
SIGTERM (what ``kill``, systemd and CI runners send) kills the process on the spot unless a
handler is installed. ``stop_signals_raise`` installs one that raises ``Terminated``, so both
end the same way, and makes sure that neither exception is silently lost. ``deferred_signals``
holds both back while a few lines must run to the end (the renames that replace a set of
report files), then lets them act as they would have. ``stops_restored`` gives back a stop that
a library turned into a RuntimeError on its way (torch's TorchScript interpreter does).
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, NoReturn

__all__ = [
    "DEFERRED",
    "RESEND_DELAY",
    "Terminated",
    "carried",
    "deferred_signals",
    "raise_from_handler",
    "stop_signals_raise",
    "stops_restored",
]

DEFERRED = (signal.SIGINT, signal.SIGTERM)
"""The signals that ask a program to stop: Ctrl-C and ``kill``. SIGKILL cannot be caught; a
crash it causes is repaired by the journal of refbp.apps.io instead."""

RESEND_DELAY = 0.01
"""Seconds after which a stop request that Python swallowed is sent again: enough for the code
that swallowed it (a garbage-collector callback) to return, nothing next to a person's wait."""


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived. A kind of KeyboardInterrupt, because libraries already let that through
    promptly and untouched: ``except Exception`` does not catch it, and hypothesis, which turns
    any other exception raised while it draws examples into an "inconsistent data generation"
    error, re-raises it. refbp tells the two apart by type (catch ``Terminated`` first)."""


_last_raised: BaseException | None = None
"""The exception a signal handler raised last (``raise_from_handler``), for ``carried``."""


def raise_from_handler(exc: BaseException) -> NoReturn:
    """Raise ``exc`` from a signal handler, remembered, so that ``carried`` knows it again when a
    library hands it on as a RuntimeError."""
    global _last_raised
    _last_raised = exc
    raise exc


def carried(err: BaseException) -> BaseException | None:
    """The exception a signal handler raised (``raise_from_handler``), when ``err`` is a
    RuntimeError that carries it in its place; else None.

    A handler runs wherever the main thread is, and that can be Python code called from C++ that
    does not let Python's exceptions through: torch's TorchScript interpreter (torch.func runs
    scripted decompositions, layer_norm's backward for a jvp among them) catches the exception
    and throws a RuntimeError whose text holds its type and message, "Terminated: signal
    SIGTERM" (1 run in 6 of the suite: a rank stopped by torchrun printed a traceback)."""
    exc = _last_raised
    if not isinstance(err, RuntimeError) or exc is None:
        return None
    said = f"{type(exc).__name__}: {exc}" if str(exc) else f"{type(exc).__name__}: <EMPTY MESSAGE>"
    return exc if said in str(err) else None


@contextmanager
def stops_restored() -> Iterator[None]:
    """Within the block, a RuntimeError that carries a signal handler's exception (``carried``)
    is raised as that exception again, so that the code which catches stops sees its stop."""
    try:
        yield
    except RuntimeError as err:
        stop = carried(err)
        if stop is None:
            raise
        raise stop from err


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise_from_handler(Terminated(f"signal {signal.Signals(signum).name}"))


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise_from_handler(KeyboardInterrupt(f"signal {signal.Signals(signum).name}"))  # Python's own, remembered


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def stop_signals_raise() -> Iterator[None]:
    """Within the block SIGTERM raises ``Terminated`` in the main thread, as Ctrl-C raises
    KeyboardInterrupt, and neither is lost (nor turned into a RuntimeError: ``stops_restored``);
    the previous handlers and hook come back after.

    Python runs a signal handler wherever the main thread happens to be, and where that is a
    garbage-collector callback or a ``__del__`` (hypothesis runs one at every collection) it
    prints the exception as "ignored" and carries on: the request to stop would vanish. So the
    hook that receives such exceptions (``sys.unraisablehook``) sends the signal again,
    RESEND_DELAY later, until it lands in ordinary code. Outside the main thread (where Python
    cannot set handlers) the block changes nothing.
    """
    if not _in_main_thread():
        yield
        return
    resends: list[threading.Timer] = []
    previous_hook = sys.unraisablehook
    # A timer that has already fired may be about to send when the block ends; the lock and the
    # flag make it send only while the block's handler is still there to receive it (after, a
    # SIGTERM would meet the default action and kill the process).
    lock = threading.Lock()
    active = [True]

    def send_again(signum: int) -> None:
        with lock:
            if active[0]:
                signal.pthread_kill(threading.main_thread().ident or 0, signum)

    def hook(unraisable: Any) -> None:
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):  # Terminated included
            previous_hook(unraisable)
            return
        signum = signal.SIGTERM if isinstance(unraisable.exc_value, Terminated) else signal.SIGINT
        resend = threading.Timer(RESEND_DELAY, send_again, (signum,))
        resend.daemon = True
        resends.append(resend)
        resend.start()

    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    own_interrupt = signal.getsignal(signal.SIGINT) is signal.default_int_handler  # not a caller's
    if own_interrupt:
        signal.signal(signal.SIGINT, _raise_interrupted)
    sys.unraisablehook = hook
    try:
        with stops_restored():
            yield
    finally:
        with lock:
            active[0] = False
        sys.unraisablehook = previous_hook
        signal.signal(signal.SIGTERM, previous)
        if own_interrupt:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        for resend in resends:  # the stop request has been honoured: send no more
            resend.cancel()


@contextmanager
def deferred_signals() -> Iterator[None]:
    """SIGINT and SIGTERM that arrive within the block act only when it ends, as they would have.

    Two locks, because either alone leaks: ``pthread_sigmask`` blocks the signals for this thread
    only, and the kernel hands a process-wide signal to any thread that does not block it (torch's
    and tqdm's threads); so the Python handlers are also swapped for one that only records the
    signal (Python runs handlers in the main thread, whichever thread the kernel picked). At the
    end the mask is restored first (a pending signal then reaches the recorder), the handlers
    next, and each recorded signal is raised again for the restored handler: KeyboardInterrupt,
    ``Terminated``, or the default action. Nested blocks defer to the outermost one.
    """
    caught: list[int] = []
    previous: dict[int, Any] = {}
    if _in_main_thread():
        for signum in DEFERRED:
            handler = signal.getsignal(signum)
            if handler is None:  # installed outside Python: cannot be restored, so leave it
                continue
            previous[signum] = handler
            signal.signal(signum, lambda number, frame: caught.append(number))
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, DEFERRED)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # Python runs pending handlers here
        for number, handler in previous.items():
            signal.signal(number, handler)
        for number in dict.fromkeys(caught):  # once each, in order of arrival
            signal.raise_signal(number)
