"""``refbp report`` on several processes: the ranks share the sweep's cases, rank 0 gathers them
and writes the very report one process would.

    torchrun --standalone --nproc-per-node=2 -m refbp report --examples 200 --seed 0

Every rank builds the same list of cases (refbp.verify.sweep.case_order: seeded, the same on
every machine). The ranks take cases from one queue, a counter in the job's store that hands
out 0, 1, 2, ... once each: a rank that finishes a quick case takes the next, so no rank idles
while another still has a backlog (a fixed split, case i to rank i % R, left one rank of four
with 60 % more work than another on the default sweep, whose "trained" cases take ten times
the others). Each result keeps its place in the order (``CaseOutcome.id``), so rank 0 puts the
gathered results back in order and report.json is the single-process one, byte for byte, apart
from ``timing`` (which records ``processes``).

Before gathering, every rank waits at a monitored barrier (refbp.distributed.launch): a rank
that died or hung is named there, and nothing is written.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from itertools import chain
from typing import Any

import numpy as np
import torch

from ..progress import Progress
from ..verify import sweep
from ..verify.sweep import CaseOutcome, SweepSpec, case_order
from .launch import DEFAULT_TIMEOUT, Job, Launch, joined

__all__ = ["run_report_on_ranks", "run_sharded_report"]


def run_sharded_report(
    job: Job,
    specs: Sequence[tuple[str, SweepSpec]],
    *,
    devices: list[str],
    dtypes: list[str],
    fd_mode: str = "auto",
    progress: bool = True,
) -> tuple[list[CaseOutcome], float] | None:
    """Check this rank's share of the sweep; on rank 0 return every outcome, in report order,
    and the seconds the sweep took (what refbp.apps.sweep.run_report returns); None on the others.

    Rank 0 draws the progress of the whole job (every rank's finished cases)."""
    order = case_order(specs, devices, dtypes)
    bar = Progress(len(order), progress and job.leader)
    mine: list[CaseOutcome] = []
    start = time.perf_counter()
    try:
        while (i := job.add("report/next") - 1) < len(order):  # the next case nobody has taken
            job.check_alive("the sharded sweep")  # a rank that stopped ends the job now, not at the end
            label, spec = order[i]
            result = sweep.check_case(spec, fd_mode)
            mine.append(CaseOutcome(i + 1, label, spec, result))
            if progress:  # every rank counts, rank 0 draws
                _advance(bar, job.add("report/done"), job.add("report/failed", int(not result.passed)))
        job.barrier("the sharded sweep")
        if progress:  # the other ranks' last cases, finished while rank 0 waited
            _advance(bar, job.add("report/done", 0), job.add("report/failed", 0))
    finally:
        bar.close()
    # rank 0 keeps its own outcomes as they are: only the others' need pickling
    gathered = job.gather(None if job.leader else [_portable(o) for o in mine], "gathering the cases")
    if gathered is None:
        return None
    others = (_restored(*packed) for packed in chain.from_iterable(gathered[1:]))
    outcomes = sorted([*mine, *others], key=lambda o: o.id)
    ids = [o.id for o in outcomes]
    if ids != list(range(1, len(order) + 1)):
        raise RuntimeError(f"the ranks returned cases {ids[:10]}...; expected each of 1 .. {len(order)} once")
    return outcomes, time.perf_counter() - start


def run_report_on_ranks(
    launch: Launch,
    specs: Sequence[tuple[str, SweepSpec]],
    *,
    devices: list[str],
    dtypes: list[str],
    fd_mode: str = "auto",
    progress: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
) -> tuple[list[CaseOutcome], float] | None:
    """Join the job's process group, run this rank's share (``run_sharded_report``) and leave
    the group: what ``refbp report`` does under torchrun."""
    with joined(launch, timeout=timeout) as job:
        return run_sharded_report(job, specs, devices=devices, dtypes=dtypes, fd_mode=fd_mode, progress=progress)


Masks = list[np.ndarray[Any, Any] | None]


def _advance(bar: Progress, done: int, failed: int) -> None:
    while bar.done < done:
        bar.advance(failed)


def _portable(outcome: CaseOutcome) -> tuple[CaseOutcome, Masks]:
    """The outcome without its rows' masks of verified entries, and the masks as NumPy arrays:
    torch pickles a tensor through torch.save, which made gathering the default sweep's 8,000
    masks take two seconds; NumPy's arrays pickle as plain bytes, five times faster."""
    rows = outcome.result.rows
    masks: Masks = [None if row.verified is None else row.verified.numpy() for row in rows]
    bare = [dataclasses.replace(row, verified=None) for row in rows]
    return dataclasses.replace(outcome, result=dataclasses.replace(outcome.result, rows=bare)), masks


def _restored(outcome: CaseOutcome, masks: Masks) -> CaseOutcome:
    """``_portable``'s inverse: the outcome as the rank that checked it had it."""
    rows = [
        dataclasses.replace(row, verified=None if mask is None else torch.from_numpy(mask))
        for row, mask in zip(outcome.result.rows, masks, strict=True)
    ]
    return dataclasses.replace(outcome, result=dataclasses.replace(outcome.result, rows=rows))
