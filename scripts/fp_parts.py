"""The parts of the false-positive measurement (scripts/false_positive_rate.py), each a function
a worker process runs on a chunk of work and that returns one record per case:

- ``first_order_chunk``: refbp.check of every gradient (refbp's own, or a torch model's), in
  float64 and float32, against autograd and full finite differences; flagged when some entry is
  contradicted or verified by no reference;
- ``function_chunk``: refbp.verify.function_sweep.false_positive_sweep, correct
  ``torch.autograd.Function``s checked by ``check_autograd_function`` in float32, float16 and
  bfloat16, one record per Function and dtype;
- ``order2_chunk``: refbp.check_second_order of H v (``forward=True``: the tangents too) and of
  G v, in float64 and float32; flagged when some entry is contradicted or some H v entry is
  verified by no reference (R{intermediate} entries that a kink leaves unverified are not); a
  point exactly on a kink that v moves (a max-pool tie of integer inputs), where H v is
  undefined and the check leaves every entry unverified by design, is "on a kink", neither
  passed nor flagged (a contradicted entry there is still flagged); a network with a layer or
  loss that has no second-order rule yet is "no rule", never a pass; a product that no reference
  can take (G v through multi_margin, which torch cannot differentiate twice, while differences of
  the gradient measure H v), which the check leaves unverified and names (meta["no_reference"]),
  is "no reference", neither passed nor flagged.

A ticket names a case so that a worker can draw it: ("sweep", spec), ("makemore", seed) or
("torch", seed) (refbp's fp_cases families).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import torch
from fp_cases import TORCH_MODELS, Drawn, from_spec, makemore_case, with_sum_reduction

import refbp
from refbp.apps.report import DEFAULT_THREADS
from refbp.apps.sweep import Spec, sweep_specs
from refbp.nn.curvature import LOSSES_WITH_HESSIAN
from refbp.nn.second_order import missing_rule
from refbp.verify.function_sweep import DTYPES as FUNCTION_DTYPES
from refbp.verify.function_sweep import false_positive_sweep
from refbp.verify.hand_functions import CASES as FUNCTIONS
from refbp.verify.result import CheckResult
from refbp.verify.second_order import check_second_order

__all__ = [
    "DTYPES",
    "FUNCTION_BLOCK",
    "PRODUCTS",
    "SWEEP_BLOCK",
    "Ticket",
    "draw",
    "first_order_chunk",
    "function_chunk",
    "order2_chunk",
    "order2_flags",
    "sweep_draw",
    "tickets",
]

DTYPES = ("float64", "float32")
"""The dtypes every network is checked in."""

PRODUCTS = ("hessian", "gauss_newton")
"""The second-order products checked (the hessian with forward=True: the tangents as well)."""

FUNCTION_BLOCK = len(FUNCTIONS) * len(FUNCTION_DTYPES)
"""One round of false_positive_sweep: every hand-written Function in every kernel dtype."""

Ticket = tuple[str, Any]
"""("sweep", a sweep Spec), ("makemore", seed) or ("torch", seed)."""


SWEEP_BLOCK = 200
"""The sweep is drawn in blocks of this many networks, sweep_specs(SWEEP_BLOCK, s) for s = seed *
1000, seed * 1000 + 1, ...: each block has every regime, activation and image layer in turn (the
sweep's rotations repeat within 200), and a block whose draw raises is skipped and counted."""


def sweep_draw(n: int, seed: int) -> tuple[list[Spec], list[dict[str, Any]]]:
    """``n`` random networks of the report's sweep, one stack in four with reduction="sum", and
    the blocks whose draw raised ({"seed": s, "error": ...}): skipped, never silently."""
    out: list[Spec] = []
    refused: list[dict[str, Any]] = []
    s = seed * 1000
    while len(out) < n:
        try:
            block = sweep_specs(min(SWEEP_BLOCK, n - len(out)), s)
        except ValueError as err:  # a spec the sweep drew and then refused
            refused.append({"seed": s, "error": str(err)})
            block = []
        out += [with_sum_reduction(spec) for label, spec in block if label.startswith("random")]
        s += 1
    return out, refused


def tickets(cases: int, seed: int, torch_cases: int, makemore_cases: int) -> tuple[list[Ticket], list[dict[str, Any]]]:
    """The networks of a run, each to be checked in every dtype of DTYPES: ``cases`` / 2 of the
    report's sweep (``sweep_draw``), ``torch_cases`` / 2 users' torch models, ``makemore_cases`` / 2
    makemore MLPs; the families interleaved, so that any prefix holds each in proportion. Also
    the sweep's blocks that were skipped."""
    n = len(DTYPES)
    specs, refused = sweep_draw(cases // n, seed)
    sweep: list[Ticket] = [("sweep", spec) for spec in specs]
    torch_models: list[Ticket] = [("torch", seed * 1_000_003 + k) for k in range(torch_cases // n)]
    makemore: list[Ticket] = [("makemore", seed * 2_000_003 + k) for k in range(makemore_cases // n)]
    families = [f for f in (sweep, torch_models, makemore) if f]
    total = sum(len(f) for f in families)
    out: list[Ticket] = []
    taken = [0] * len(families)
    for _ in range(total):  # each family at its own rate: the one furthest behind its share goes next
        j = min(range(len(families)), key=lambda i: (taken[i] / len(families[i]), i))
        out.append(families[j][taken[j]])
        taken[j] += 1
    return out, refused


def draw(ticket: Ticket, dtype: str) -> Drawn:
    """The case a ticket names, in ``dtype``."""
    kind, what = ticket
    if kind == "sweep":
        spec: Spec = dataclasses.replace(what, dtype=dtype)
        return from_spec(spec)
    if kind == "makemore":
        return makemore_case(what, dtype)
    return TORCH_MODELS[what % len(TORCH_MODELS)](what, dtype)


def _each(chunk: list[Ticket]) -> Iterator[tuple[Drawn, str]]:
    torch.set_num_threads(DEFAULT_THREADS)
    for ticket in chunk:
        for dtype in DTYPES:
            yield draw(ticket, dtype), dtype


def _record(drawn: Drawn, dtype: str, result: CheckResult | None) -> dict[str, Any]:
    out = {
        "group": drawn.group, "dtype": dtype, "spec": drawn.spec, "components": drawn.components, "loss": drawn.loss,
        "ratio": 0.0, "comparison": "", "message": "",
    }  # fmt: skip
    if result is not None and result.rows:
        worst = max(result.rows, key=lambda r: r.margin)
        out |= {"ratio": worst.margin, "comparison": f"{worst.name} vs {worst.reference}"}
    return out


def first_order_chunk(chunk: list[Ticket]) -> list[dict[str, Any]]:
    """Every gradient of each case, in each dtype, against autograd and full finite differences."""
    out = []
    for drawn, dtype in _each(chunk):
        result = refbp.check(
            drawn.net, drawn.X, drawn.y, grads=drawn.grads, noise=drawn.noise, fd_mode="full", seed=drawn.seed
        )
        record = _record(drawn, dtype, result)
        record["comparison"] = "dJ/d" + record["comparison"]
        record |= {"passed": result.passed, "message": "" if result.passed else result.failure_message()}
        out.append(record)
    return out


def function_chunk(n: int, seed: int) -> dict[str, Any]:
    """``false_positive_sweep(n, seed)``: its checks counted by Function and dtype, in the order
    the sweep takes them (Function k % 7, dtype (k // 7) % 3)."""
    torch.set_num_threads(DEFAULT_THREADS)
    sweep = false_positive_sweep(n, seed)
    names = list(FUNCTIONS)
    counts: dict[str, int] = {}
    for k in range(sweep.checked):
        key = f"{names[k % len(names)]} {_dtype(FUNCTION_DTYPES[(k // len(names)) % len(FUNCTION_DTYPES)])}"
        counts[key] = counts.get(key, 0) + 1
    flagged = [
        {"function": name, "dtype": _dtype(dtype), "seed": point_seed, "message": message}
        for name, dtype, point_seed, message in sweep.flagged
    ]
    return {"counts": counts, "flagged": flagged, "worst_ratio": sweep.worst_margin, "seed": seed, "n": n}


def _dtype(dtype: object) -> str:
    return str(dtype).removeprefix("torch.")


def order2_flags(result: CheckResult) -> list[str]:
    """What makes a second-order check flagged: every tensor contradicted, and, unless the point is
    on a kink (H v undefined: result.meta["kinks"]), every H v tensor (Hv[...]) some entry of which
    no reference verified, as "Hv[W1] mismatch"."""
    undefined = bool(result.meta.get("kinks"))
    unreferenced = set(result.meta.get("no_reference", []))  # no route to a reference exists: not a false alarm
    return [
        f"{t.name} {t.verdict}"
        for t in result.tensors
        if t.verdict == "mismatch"
        or (t.verdict == "unverified" and t.name.startswith("Hv[") and not undefined and t.name not in unreferenced)
    ]


def _no_rule(drawn: Drawn) -> str | None:
    """The first layer (by its kind, as describe() names it) or loss without a second-order rule."""
    missing = missing_rule(drawn.net)  # "layer 3.1 (LayerNorm(8))"
    if missing is not None:
        return missing.partition("(")[2].partition("(")[0].rstrip(")")
    name = drawn.net.loss_fn.name
    return None if name in LOSSES_WITH_HESSIAN else f"loss {name}"


def order2_chunk(chunk: list[Ticket]) -> list[dict[str, Any]]:
    """H v (with the tangents) and G v of each case, in each dtype (see the module docstring)."""
    out = []
    for drawn, dtype in _each(chunk):
        record = _record(drawn, dtype, None)
        missing = _no_rule(drawn)
        if missing is not None:
            out.append(record | {"status": "no rule", "missing": missing})
            continue
        flags, errors, worst, kinks, unreferenced = [], [], None, [], []
        for product in PRODUCTS:
            result = None
            for forward in (True, False) if product == "hessian" else (False,):
                try:
                    result = check_second_order(
                        drawn.net, drawn.X, drawn.y, product=product, forward=forward, seed=drawn.seed
                    )
                    break
                except Exception as err:  # a crash on a correct network: reported, never a pass; the
                    # hessian is tried again without the tangents, so that H v is still judged
                    errors.append(f"{product}{', forward=True' if forward else ''}: {type(err).__name__}: {err}")
            if result is None:
                continue
            flags += [f"{product}: {flag}" for flag in order2_flags(result)]
            kinks += result.meta.get("kinks", [])
            unreferenced += [f"{product}: {name}" for name in result.meta.get("no_reference", [])]
            if flags and not record["message"]:
                record["message"] = f"{product}: {result.failure_message()}"
            if result.rows:
                row = max(result.rows, key=lambda r: r.margin)
                if worst is None or row.margin > worst[0]:
                    worst = (row.margin, f"{product}: {row.name} vs {row.reference}")
        if worst is not None:
            record |= {"ratio": worst[0], "comparison": worst[1]}
        status = (
            "flagged" if flags else "error" if errors else "on a kink" if kinks
            else "no reference" if unreferenced else "passed"
        )  # fmt: skip
        out.append(record | {"status": status, "flags": flags, "errors": errors, "kinks": sorted(set(kinks)),
                             "no_reference": unreferenced})  # fmt: skip
    return out
