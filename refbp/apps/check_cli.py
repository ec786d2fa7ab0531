"""``refbp check``: check one network a user describes, in a JSON file or string.

    refbp check --spec net.json
    refbp check --case '{"dims": [3, 8, 2], "activations": ["tanh", "identity"], "loss": "mse", "seed": 1}'

The JSON object is an MLP's CaseSpec (dims, activations, loss required; seed, dtype, device,
batch, weight_decay, weight_scale, regime optional), a layer stack's StackSpec (input,
layers, loss; refbp.verify.stacks) or a GPT's GPTSpec ("model": "gpt"; refbp.models.gpt_cases),
as REPORT.md prints them; refbp.verify.specs reads whichever it is. Prints the table of comparisons;
exits 0 when all pass, 1 when any fails, 2 on a bad spec.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from .. import models  # noqa: F401  (importing refbp.models registers the GPT's spec kind)
from ..verify.check import FD_BUDGET_S, check
from ..verify.specs import spec_from_dict
from .arguments import check_fd_budget
from .report import DEFAULT_THREADS

__all__ = ["MAX_SPEC_BYTES", "add_arguments", "parse_spec_json", "read_spec", "run"]

MAX_SPEC_BYTES = 4 * 2**20
"""Largest --spec file read: 4 MiB. A spec refbp can check is under 20 KB (MAX_LAYERS sizes and
activation names), so a larger file is not a spec; the cap bounds what reading and json.loads
may spend on a wrong file (a 4 MiB array parses into about 100 MB of Python objects)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--spec", help="path of a JSON file describing the network")
    source.add_argument("--case", help="the same JSON, inline (as REPORT.md prints for a failure)")
    parser.add_argument("--fd-mode", default="auto", choices=["auto", "full", "directional"])
    parser.add_argument(
        "--fd-budget",
        default=str(FD_BUDGET_S),
        help=f"seconds --fd-mode auto may spend on finite differences, or 'none' (default {FD_BUDGET_S})",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    if args.spec is not None:
        text, where = read_spec(args.spec), f"--spec {args.spec}"
    else:
        text, where = args.case, "--case"
    budget_s = check_fd_budget(args.fd_budget)
    data = parse_spec_json(text, where)
    try:
        spec = spec_from_dict(data)
        case = spec.build()
    except (ValueError, TypeError) as err:
        raise (TypeError if isinstance(err, TypeError) else ValueError)(f"{where}: {err}") from None
    torch.set_num_threads(DEFAULT_THREADS)  # one small network: one thread is fastest
    result = check(case.net, case.X, case.y, fd_mode=args.fd_mode, seed=spec.seed, budget_s=budget_s)
    if args.json:
        print(json.dumps({"spec": json.loads(spec.to_json()), **result.to_dict()}, indent=1))
    else:
        print(f"{spec.to_json()}\n{result}")
        if not result.passed:
            print(result.failure_message())
    return 0 if result.passed else 1


def parse_spec_json(text: str, where: str) -> dict[str, Any]:
    """The JSON object of a spec (``where`` names the option it came from, for the errors)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno})") from err
    except RecursionError:
        raise ValueError(
            f"{where}: JSON nested deeper than Python can parse ({sys.getrecursionlimit()} levels); "
            "expected a flat object (an MLP's dims or a stack's layers)"
        ) from None
    except ValueError as err:  # e.g. an integer of more than 4300 digits
        raise ValueError(f"{where}: not a JSON refbp can read ({err})") from None
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise ValueError(f"{where}: expected a JSON object (an MLP's dims or a stack's layers), got {kind}")
    return data


def read_spec(option: str) -> str:
    """The text of the --spec file: a regular file of at most MAX_SPEC_BYTES bytes of UTF-8."""
    path = Path(option)
    if not path.exists():
        raise ValueError(f"--spec {option}: no such file")
    if not path.is_file():
        raise ValueError(f"--spec {option}: not a regular file; expected a JSON file")
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_SPEC_BYTES + 1)
    except OSError as err:
        raise ValueError(f"--spec {option}: cannot be read ({err.strerror})") from None
    if len(raw) > MAX_SPEC_BYTES:
        raise ValueError(
            f"--spec {option}: larger than {MAX_SPEC_BYTES // 2**20} MiB; expected a JSON case spec (under 20 KB)"
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"--spec {option}: not UTF-8 text ({err.reason} at byte {err.start})") from None
