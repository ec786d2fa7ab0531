"""The command line on several ranks (torchrun): one voice for bad usage, one line for a lost rank.

Under torchrun every rank runs the same command with the same options, so a bad option would
print the same ``error:`` line once per rank. ``on_ranks`` wraps a subcommand's ``run`` so that
only rank 0 reports an error raised before the ranks join their process group; the others
exit 2 (EXIT_USAGE) without a word. A rank that dies or hangs (refbp.distributed.launch.
RankFailedError) ends the command with one ``error:`` line that names it, exit code
EXIT_RANK_FAILED, and no file written (rank 0 writes only after every rank has answered).
A rank that stops (SIGSTOP) or fails with an error is found by the others' heartbeat
(refbp.distributed.heartbeat) within half the timeout. Under torchrun a rank that dies usually
ends the job sooner: torchrun sends SIGTERM to every other rank at once, and each says so in one
line that points to torchrun's summary and exits EXIT_RANK_FAILED too (the job could not
finish); torchrun itself then exits nonzero.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable

from .. import progress
from ..distributed.environment import leads
from ..distributed.launch import RankFailedError, has_joined
from ..signals import Terminated, stops_restored

__all__ = ["EXIT_RANK_FAILED", "EXIT_TERMINATED", "EXIT_USAGE", "on_ranks"]

EXIT_USAGE = 2
"""Bad usage (refbp.apps.cli.EXIT_USAGE)."""

EXIT_TERMINATED = 128 + 15
"""SIGTERM (refbp.apps.cli.EXIT_TERMINATED)."""

EXIT_RANK_FAILED = 3
"""A rank died, hung or lost contact: the job could not finish, and wrote nothing. Neither 1 (a
check failed: the checks did not all run) nor 2 (the command itself was fine)."""


def on_ranks(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """``run`` as a subcommand that may be one rank of several (see the module docstring)."""

    @functools.wraps(run)
    def wrapped(args: argparse.Namespace) -> int:
        try:
            with stops_restored():  # a stop torch handed on as a RuntimeError is a stop here too
                return run(args)
        except (ValueError, TypeError):
            if has_joined() or leads():
                raise
            return EXIT_USAGE  # rank 0 says why, once
        except RankFailedError as err:
            return _fail(str(err), EXIT_RANK_FAILED)
        except Terminated:
            if not has_joined():
                raise
            return _fail(
                "terminated: torchrun stops every rank as soon as one fails (its summary names the rank that "
                "failed first), or when it is stopped itself; nothing was written",
                EXIT_RANK_FAILED,  # the job could not finish: the status of a lost rank, whoever noticed
            )

    return wrapped


def _fail(message: str, code: int) -> int:
    progress.close_all()
    print(f"error: {message}", file=sys.stderr)
    return code
