"""A progress bar on stderr: tqdm's on a terminal, one plain line per tenth anywhere else.

A terminal gets tqdm (a maintained library: rate, time left, width that follows the window).
A log file or CI console gets no carriage returns or redraws, only a short line at 0%, 10%, ...,
100%, so a log stays readable and greppable.
"""

from __future__ import annotations

import os
import sys
import weakref
from typing import Any, TextIO

from tqdm import tqdm

__all__ = ["FALLBACK_SIZE", "Progress", "close_all"]

FALLBACK_SIZE = os.terminal_size((80, 24))
"""The classic 80 x 24, for a terminal that reports 0 columns or 0 lines (a fresh pseudo-terminal,
``docker run -t`` before its first resize, ``script``): there tqdm, asked to follow the terminal's
size, would draw nothing (0 lines hide every bar)."""

_OPEN: weakref.WeakSet[Progress] = weakref.WeakSet()
"""Bars still drawing, so that an error line can first end the bar's line (``close_all``)."""


class Progress:
    """Counts finished cases and failures.

    Args:
        total: the number of cases to come.
        enabled: False draws nothing (``--no-progress``).
        stream: where to draw; stderr by default.
        label: what the plain lines start with.
    """

    def __init__(self, total: int, enabled: bool, *, stream: TextIO | None = None, label: str = "refbp report") -> None:
        self.total, self.enabled, self.done, self.label = total, enabled, 0, label
        self.stream = sys.stderr if stream is None else stream
        self.tenth = -1  # the last tenth a plain line was printed for
        self.bar: tqdm[Any] | None = None
        if enabled and self.stream.isatty():
            size = _size(self.stream)
            follow = size.columns > 0 and size.lines > 0
            self.bar = tqdm(
                total=total, file=self.stream, desc=label, unit="case", dynamic_ncols=follow,
                ncols=None if follow else FALLBACK_SIZE.columns, nrows=None if follow else FALLBACK_SIZE.lines,
            )  # fmt: skip
            _OPEN.add(self)

    def advance(self, failed: int) -> None:
        """One more case is done; ``failed`` cases have failed so far."""
        self.done += 1
        if self.bar is not None:
            self.bar.set_postfix_str(f"{failed} failed", refresh=False)
            self.bar.update(1)
            if self.done >= self.total:
                self.close()
        elif self.enabled and int(10 * self.done / max(1, self.total)) > self.tenth:
            self.tenth = int(10 * self.done / max(1, self.total))
            self.stream.write(f"{self.label}: {self.done}/{self.total} cases, {failed} failed\n")
            self.stream.flush()

    def close(self) -> None:
        """End the bar's line (it stays on screen); later calls do nothing."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        _OPEN.discard(self)


def close_all() -> None:
    """Close every bar still drawing: an error line then starts on a line of its own."""
    for progress in list(_OPEN):
        progress.close()


def _size(stream: TextIO) -> os.terminal_size:
    try:
        return os.get_terminal_size(stream.fileno())
    except (OSError, ValueError):
        return os.terminal_size((0, 0))
