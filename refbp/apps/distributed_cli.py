"""``refbp distributed``: data-parallel backprop by hand, checked on real ranks.

    torchrun --standalone --nproc-per-node=2 -m refbp distributed
    torchrun --standalone --nproc-per-node=3 -m refbp distributed --seed 1 --examples 60 --out reports
    torchrun --nnodes=2 --nproc-per-node=2 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 -m refbp distributed

Every rank draws the same ``--examples`` networks from ``--seed`` (MLPs and layer stacks; no
BatchNorm in training mode, whose batch statistics do not shard) with uneven shards of their
batch, one per rank, sometimes empty. On each, every rank runs refbp's manual forward and
backward pass on its rows and all-reduces the parameter gradients
(refbp.distributed.data_parallel), and DistributedDataParallel does the same on the same rows;
rank 0 compares (refbp.distributed.verify) and writes DISTRIBUTED.md and DISTRIBUTED.json to
``--out`` as one set (refbp.apps.io.write_set).

Exit codes: 0 every comparison passed; 1 some failed; 2 bad usage (not started by torchrun,
fewer than 2 ranks, a bad option: one ``error:`` line, from rank 0); 3 a rank died or hung
(refbp.apps.ranks.EXIT_RANK_FAILED; one ``error:`` line naming it, nothing written).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch
from tabulate import tabulate

from ..distributed.cases import draw_specs
from ..distributed.launch import DEFAULT_TIMEOUT, check_timeout, joined, torchrun_launch
from ..distributed.verify import REFERENCES, ShardedCheck, check_on_ranks
from ..nn.validation import check_int, check_seed
from .arguments import check_out_folder
from .io import write_set
from .ranks import on_ranks
from .report import versions

__all__ = ["DEFAULT_EXAMPLES", "MAX_EXAMPLES", "SCHEMA", "add_arguments", "build_json", "render_markdown", "run"]

SCHEMA = "refbp.distributed/1"

DEFAULT_EXAMPLES = 40
"""Networks checked by default: every loss about ten times, MLPs and stacks, weight decay, empty
shards and ignored targets several times each; a few seconds on 2 or 3 ranks."""

MAX_EXAMPLES = 2_000
"""Most networks ``--examples`` accepts: each takes a few tens of milliseconds on every rank and
a gather, so 2,000 take about two minutes; beyond that the draws only repeat kinds of networks."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the networks, 0 to 2**32 - 1 (default %(default)s)"
    )
    parser.add_argument(
        "--examples", type=int, default=DEFAULT_EXAMPLES,
        help=f"networks to check, 1 to {MAX_EXAMPLES:,} (default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--out", default="reports", help="folder for DISTRIBUTED.md and DISTRIBUTED.json, replaced together"
    )
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT,
        help="seconds a rank waits for the others before the job is declared broken (default %(default)g)",
    )  # fmt: skip


@on_ranks
def run(args: argparse.Namespace) -> int:
    """Check every option on every rank before any work, join the ranks, check the networks,
    and (rank 0) write the two files."""
    launch = torchrun_launch()
    if launch is None:
        raise ValueError(
            "refbp distributed runs on several processes: start it with torchrun, e.g. "
            "`torchrun --standalone --nproc-per-node=2 -m refbp distributed`"
        )
    if launch.world_size < 2:
        raise ValueError(
            f"WORLD_SIZE={launch.world_size}: a data-parallel check needs at least 2 ranks to split the batch "
            "among (torchrun --nproc-per-node=2 or more)"
        )
    out = check_out_folder(args.out)
    check_seed(args.seed, "--seed")
    check_int(args.examples, "--examples", minimum=1, maximum=MAX_EXAMPLES)
    timeout = check_timeout(args.timeout)
    torch.set_num_threads(1)  # tiny tensors: see refbp.apps.report.DEFAULT_THREADS
    specs = draw_specs(args.seed, args.examples, launch.world_size)
    start = time.perf_counter()
    with joined(launch, timeout=timeout) as job:
        results = [check_on_ranks(job, spec, id=k) for k, spec in enumerate(specs, start=1)]
    if not launch.leader:
        return 0  # rank 0 writes the files and tells how the checks went
    checks = [r for r in results if r is not None]
    settings = {"seed": args.seed, "examples": args.examples, "world_size": launch.world_size}
    doc = build_json(checks, settings, time.perf_counter() - start)
    write_set(out, {
        "DISTRIBUTED.json": json.dumps(doc, indent=1) + "\n",
        "DISTRIBUTED.md": render_markdown(doc),
    })  # fmt: skip
    s = doc["summary"]
    print(f"refbp distributed: {s['passed']}/{s['networks']} networks passed on {launch.world_size} ranks, "
          f"{s['comparisons']} comparisons; wrote {out / 'DISTRIBUTED.md'}, {out / 'DISTRIBUTED.json'}")  # fmt: skip
    return 0 if s["failed"] == 0 else 1


# ---- the files --------------------------------------------------------------------------------
def build_json(checks: list[ShardedCheck], settings: dict[str, Any], seconds: float) -> dict[str, Any]:
    """DISTRIBUTED.json: identical between runs with the same settings apart from ``timing``.

    schema, environment {refbp, torch, python}, settings {seed, examples, world_size},
    summary {networks, passed, failed, comparisons, worst_margin: {reference: max error/allowed}},
    cases [ShardedCheck.to_dict()], timing {generated, seconds}."""
    cases = [c.to_dict() for c in checks]
    worst = {ref: max((_number(c["margin"][ref]) for c in cases), default=0.0) for ref in REFERENCES}
    return {
        "schema": SCHEMA,
        "environment": versions(),
        "settings": settings,
        "summary": {
            "networks": len(cases),
            "passed": sum(c["passed"] for c in cases),
            "failed": sum(not c["passed"] for c in cases),
            "comparisons": sum(c["comparisons"] for c in cases),
            "worst_margin": {ref: value if value != float("inf") else "inf" for ref, value in worst.items()},
        },
        "cases": cases,
        "timing": {"generated": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "seconds": round(seconds, 3)},
    }


def _number(x: float | str) -> float:
    return float(x)


def _fmt(x: float | str) -> str:
    return x if isinstance(x, str) else f"{x:.2e}"


EXPLANATION = """\
## What the ranks compute

Rank r holds rows S_r of the batch: n_r rows (uneven, sometimes none) and m_r of the loss's
terms (every target entry; for cross_entropy the targets not ignored). Every loss is a sum of
terms divided by M (M = 1 for half_sse, a sum; N d_L for mse and bce; the counted targets for
cross_entropy), so with J_r the shard's own mean loss and w_r = m_r / M its share:

    (D1)  J           = sum_r w_r J_r + lambda/2 ||W||^2
    (D2)  dJ_r/da(L)  = w_r dloss_r/dy_hat        the loss record's gradient on the shard, weighted
    (D3)  dJ_r/dW     = refbp's manual backward pass from (D2), without weight decay
    (D4)  dJ/dW       = sum_r dJ_r/dW + lambda W  one SUM all-reduce; the decay added once
    (D5)  dJ/dX[S_r]  = dJ_r/dX                   each rank's own rows: never all-reduced

after one all-reduce of the counts (M = sum_r m_r). DistributedDataParallel averages the ranks'
gradients (divides by R), so its rank r minimises R w_r J_r + lambda/2 ||W||^2: R undoes the
average, w_r weighs uneven shards, and the decay, the same on every rank, is not scaled. Dropout
draws one mask for the whole batch and each rank uses its rows of it. BatchNorm in training
mode is left out: its mean and variance are over the whole batch, and a shard's are others.
The wrong ways (each rank's mean loss averaged, a division by R instead of M, biases not
all-reduced, dJ/dX all-reduced, the decay on every rank) are in the bug catalogue
(`refbp bugs`, refbp.apps.distributed_bugs).
"""


def render_markdown(doc: dict[str, Any]) -> str:
    """DISTRIBUTED.md from the JSON document, so the two never disagree."""
    s, settings = doc["summary"], doc["settings"]
    R = settings["world_size"]
    verdict = "ALL PASSED" if s["failed"] == 0 else f"{s['failed']} FAILED"
    lines = [
        "# refbp data-parallel check",
        "",
        f"**{verdict}**: {s['passed']} / {s['networks']} networks on {R} ranks, {s['comparisons']} comparisons: "
        "on uneven shards, every parameter gradient all-reduced from the ranks' manual backward passes "
        "against refbp's manual backward pass in one process, against torch.autograd over the whole batch, "
        "and against DistributedDataParallel on the same shards; every rank's copy against rank 0's; "
        "dJ/dX (each rank's own rows) and J against one process and autograd.",
        "",
        f"Command: `torchrun --standalone --nproc-per-node={R} -m refbp distributed --seed {settings['seed']} "
        f"--examples {settings['examples']}`. refbp {doc['environment']['refbp']}, torch "
        f"{doc['environment']['torch']}, {doc['timing']['seconds']:.1f} s.",
        "",
        EXPLANATION,
        "## Worst error relative to the tolerance",
        "",
        "Largest max|g - r| / allowed over all networks (a comparison passes at <= 1; float64 tolerances "
        "of refbp/verify/tolerances.py).",
        "",
    ]
    refs = list(s["worst_margin"])
    lines += [tabulate([[_fmt(s["worst_margin"][r]) for r in refs]], headers=refs, tablefmt="github",
                       disable_numparse=True), ""]  # fmt: skip
    lines += ["## Networks", ""]
    lines += ["Each network's largest error / allowed against each reference; rows per rank in rank order.", ""]
    rows = [
        [c["id"], c["network"], "+".join(map(str, c["shards"])), *(_fmt(c["margin"][r]) for r in refs),
         "yes" if c["passed"] else "**NO**"]
        for c in doc["cases"]
    ]  # fmt: skip
    headers = ["id", "network", "rows per rank", *refs, "ok"]
    lines += [tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True), ""]
    failures = [c for c in doc["cases"] if not c["passed"]]
    lines += ["## Failures", ""]
    if not failures:
        lines += ["None.", ""]
    for c in failures:
        lines += [f"### network {c['id']}: {c['describe']}", "", f"    {json.dumps(c['spec'])}", ""]
        for r in c["failures"]:
            lines.append(f"- dJ/d{r['name']} vs {r['reference']}: {r['verdict']}, max rel error {r['max_rel_error']}. "
                         f"{r['note']}".rstrip())  # fmt: skip
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
