"""Stop signals stay stops on their way through torch. SIGTERM and Ctrl-C whose handlers run in
Python code that torch's TorchScript interpreter called come out of the interpreter as a
RuntimeError carrying their text; within ``stop_signals_raise`` (and a command's ``on_ranks``)
they are Terminated and KeyboardInterrupt again (refbp.signals.stops_restored), and a
RuntimeError that carries no stop is left as it is. The heartbeat's verdict on a lost rank,
raised the same way, is tests/test_distributed.py's."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from types import FrameType

import pytest
import torch

import refbp.signals
from refbp.apps.ranks import on_ranks
from refbp.signals import Terminated, stop_signals_raise, stops_restored

from .torchscript_call import ON_CALL, through_torchscript


@pytest.fixture(autouse=True)
def _quiet_call() -> Iterator[None]:
    yield
    ON_CALL[0] = lambda: None


def _send(signum: int) -> None:
    ON_CALL[0] = lambda: os.kill(os.getpid(), signum)


@contextlib.contextmanager
def _handling(signum: int, handler: Callable[[int, FrameType | None], object]) -> Iterator[None]:
    """``handler`` for ``signum`` within the block, the test process's own handler after."""
    previous = signal.signal(signum, handler)
    try:
        yield
    finally:
        signal.signal(signum, previous)


def test_torch_s_interpreter_hands_a_handler_s_exception_on_as_a_runtime_error() -> None:
    # the behaviour refbp.signals answers (1 suite run in 6: torchrun's SIGTERM landed in a scripted
    # decomposition of a jvp, and a rank printed the interpreter's traceback instead of "terminated")
    _send(signal.SIGTERM)
    with (
        _handling(signal.SIGTERM, refbp.signals._raise_terminated),
        pytest.raises(RuntimeError, match="Terminated: signal SIGTERM"),
    ):
        through_torchscript(torch.ones(2))


def test_a_sigterm_inside_torchscript_is_terminated_again() -> None:
    _send(signal.SIGTERM)
    with pytest.raises(Terminated, match="signal SIGTERM") as stop, stop_signals_raise():
        through_torchscript(torch.ones(2))
    assert isinstance(stop.value.__cause__, RuntimeError)  # the interpreter's error, kept as the cause


def test_a_ctrl_c_inside_torchscript_is_a_keyboard_interrupt_again() -> None:
    _send(signal.SIGINT)
    with _handling(signal.SIGINT, signal.default_int_handler):  # Python's, as a console script has it
        with pytest.raises(KeyboardInterrupt) as stop, stop_signals_raise():
            through_torchscript(torch.ones(2))
        assert type(stop.value) is KeyboardInterrupt  # not Terminated
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # given back


def test_a_runtime_error_that_carries_no_stop_is_left_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(RuntimeError, match="gloo: connection closed"), stops_restored():
        raise RuntimeError("gloo: connection closed")
    monkeypatch.setattr(refbp.signals, "_last_raised", None)  # no handler raised anything: the text alone is no stop
    with pytest.raises(RuntimeError, match="Terminated: signal SIGTERM"), stops_restored():
        raise RuntimeError("RuntimeError: Terminated: signal SIGTERM")


def test_a_command_on_ranks_sees_the_stop_not_the_runtime_error() -> None:
    # on_ranks turns a stop into the job's "terminated" exit once the rank has joined; before that
    # (here) it lets the stop through to the command line: a stop either way, never a RuntimeError
    _send(signal.SIGTERM)
    command = on_ranks(lambda args: int(through_torchscript(torch.ones(1)).item()))
    with _handling(signal.SIGTERM, refbp.signals._raise_terminated), pytest.raises(Terminated):
        command(argparse.Namespace())
