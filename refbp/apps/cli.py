"""The ``refbp`` command: report, check, explain, bugs.

Each subcommand lives in its own module, which provides ``add_arguments(parser)`` and
``run(args) -> int``. Exit codes: 0 all good, 1 a check failed, 2 bad usage (one line on
stderr, no traceback).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["SUBCOMMANDS", "UsageError", "main"]

SUBCOMMANDS = {
    "report": ("refbp.apps.report", "sweep networks, check every gradient, write reports/REPORT.md + report.json"),
    "check": ("refbp.apps.check_cli", "check one network described in a JSON file (--spec) or string (--case)"),
    "explain": ("refbp.apps.explain", "walk the seed's network forward and backward, one chain-rule step at a time"),
    "bugs": ("refbp.apps.bugs_cli", "run the catalogue of classic backprop bugs through the harness"),
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
    """Run the command line; returns the exit code (the console script exits with it)."""
    try:
        argv = list(sys.argv[1:] if argv is None else argv)
        parser = build_parser(argv)
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help(sys.stderr)
            return 2
        return int(args.run(args))
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, FileNotFoundError, IsADirectoryError, PermissionError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
