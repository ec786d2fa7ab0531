"""The ``refbp`` command: report, check, explain, bugs, distributed.

Each subcommand lives in its own module, which provides ``add_arguments(parser)`` and
``run(args) -> int``. Exit codes: 0 all good, 1 a check failed, 2 bad usage (one ``error:``
line on stderr naming the option or key, its value and what was expected; no traceback),
3 a rank of a torchrun job died, stopped, failed or hung, or torchrun stopped this one because
another did (the line names it; refbp.apps.ranks), 130
interrupted (Ctrl-C), 143 terminated (SIGTERM). Interrupted or terminated at any moment, even
while torch is being imported, the command prints one line and leaves no temporary files, and
the report files it writes change as a set or not at all (refbp.apps.io).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from ..distributed.environment import leads
from ..signals import Terminated, stop_signals_raise

__all__ = ["EXIT_INTERRUPTED", "EXIT_TERMINATED", "EXIT_USAGE", "SUBCOMMANDS", "UsageError", "main"]

EXIT_USAGE = 2
"""Bad usage, as argparse and most Unix tools report it."""

EXIT_INTERRUPTED = 128 + 2
"""Ctrl-C (SIGINT, signal 2): 128 + the signal's number is what a shell reports for a command a
signal stopped, so scripts see the same status whether or not refbp caught the signal."""

EXIT_TERMINATED = 128 + 15
"""SIGTERM (signal 15), by the same rule."""

SUBCOMMANDS = {
    "report": ("refbp.apps.report", "sweep networks, check every gradient, write reports/REPORT.md + report.json"),
    "check": ("refbp.apps.check_cli", "check one network described in a JSON file (--spec) or string (--case)"),
    "explain": ("refbp.apps.explain_cli", "walk a network forward and backward, one chain-rule step at a time"),
    "bugs": ("refbp.apps.bugs_cli", "run the catalogue of classic backprop bugs through the harness"),
    "distributed": ("refbp.apps.distributed_cli", "under torchrun: data-parallel backprop by hand vs autograd and DDP"),
}


class UsageError(Exception):
    """Bad usage of the command line: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    """The parser; only the chosen subcommand's module is imported (fast start, and one
    subcommand's import cost is not paid by the others)."""
    parser = _Parser(prog="refbp", description="refbp: backpropagation by hand, verified against torch.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module = importlib.import_module(module_name)
            module.add_arguments(command)
            command.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (the console script exits with it).

    SIGTERM raises ``Terminated`` for the whole run, the subcommand's import (torch) included,
    so ``finally`` blocks run for it as for Ctrl-C."""
    try:
        with stop_signals_raise():
            argv = list(sys.argv[1:] if argv is None else argv)
            parser = build_parser(argv)
            args = parser.parse_args(argv)
            if args.command is None:
                if leads():
                    parser.print_help(sys.stderr)
                return EXIT_USAGE
            return int(args.run(args))
    except UsageError as err:
        if not leads():  # under torchrun every rank parsed the same options: rank 0 says why, once
            return EXIT_USAGE
        return _fail(str(err), EXIT_USAGE)
    except (ValueError, TypeError, OSError) as err:
        return _fail(str(err), EXIT_USAGE)
    except Terminated:  # before KeyboardInterrupt, which it is a kind of
        return _fail("terminated", EXIT_TERMINATED)
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED)


def _fail(message: str, code: int) -> int:
    """Print the one error line (after ending a progress bar's line, if one is drawing)."""
    progress = sys.modules.get("refbp.progress")  # loaded only if a bar may be drawing
    if progress is not None:
        progress.close_all()
    print(f"error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
