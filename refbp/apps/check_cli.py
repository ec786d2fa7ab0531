"""``refbp check``: check one network a user describes, in a JSON file or string.

    refbp check --spec net.json
    refbp check --case '{"dims": [3, 8, 2], "activations": ["tanh", "identity"], "loss": "mse", "seed": 1}'

The JSON object holds CaseSpec's fields: dims, activations, loss (required); seed, dtype,
device, batch, weight_decay, weight_scale (optional). Prints the table of comparisons; exits 0
when all pass, 1 when any fails, 2 on a bad spec.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..verify.cases import CaseSpec
from ..verify.check import check
from .report import DEFAULT_THREADS

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--spec", help="path of a JSON file describing the network")
    source.add_argument("--case", help="the same JSON, inline (as REPORT.md prints for a failure)")
    parser.add_argument("--fd-mode", default="auto", choices=["auto", "full", "directional"])
    parser.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    if args.spec is not None:
        path = Path(args.spec)
        if not path.is_file():
            raise ValueError(f"--spec {args.spec}: no such file")
        text, where = path.read_text(encoding="utf-8"), f"--spec {args.spec}"
    else:
        text, where = args.case, "--case"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a JSON object with dims, activations and loss")
    spec = CaseSpec.from_dict(data)
    torch.set_num_threads(DEFAULT_THREADS)  # one small network: one thread is fastest
    case = spec.build()
    result = check(case.net, case.X, case.y, fd_mode=args.fd_mode, seed=spec.seed)
    if args.json:
        print(json.dumps({"spec": json.loads(spec.to_json()), **result.to_dict()}, indent=1))
    else:
        print(f"{spec.to_json()}\n{result}")
        if not result.passed:
            print(result.failure_message())
    return 0 if result.passed else 1
