"""The sweep ``refbp report`` checks: the seed's network, random MLPs in every regime, random
layer stacks; each in every dtype and available device.

    specs = sweep_specs(examples=200, seed=0)          # [(label, spec)], float64 on the CPU
    outcomes, seconds = run_report(specs, devices=["cpu"], dtypes=["float64", "float32"])

Everything is drawn from ``seed`` with Python's own generator, so the same arguments give the
same cases, in the same order, on any machine: a case's ``id`` is its place in that order
(``case_order``), which is what lets a sharded sweep (``refbp.distributed``) put its pieces
back together into the very report one process writes.

Half the random networks are MLPs: losses cycle, every activation takes its turn in the first
layer; some carry weight decay, some large weights (x3, x10: saturated units), some are
trained to confident outputs with refbp's own gradients, and some have a pre-activation put
right at a piecewise boundary (refbp.verify.cases.REGIMES). Of the other half, four in five
are layer stacks (refbp.verify.stacks), in training and in eval mode: two of those four of
LayerNorm, BatchNorm1d, Dropout, Embedding, Flatten, Residual and every activation; one a CNN
on images (Conv1d/Conv2d, MaxPool2d with and without ties, AvgPool2d, AdaptiveAvgPool2d,
BatchNorm2d, GroupNorm, Softmax, LogSoftmax); one a recurrent network (RNN, LSTM, GRU, on
tokens or numbers). One in five is a tiny GPT (refbp.models.gpt_cases): causal
self-attention, tied embeddings, ignored targets, dropout.

Drawing a stack, ordering, checking and the outcome record live a floor down, in
refbp.verify.sweep (the sharded sweep of refbp.distributed uses them too); they are
re-exported here under their old names.
"""

from __future__ import annotations

import dataclasses
import random
import time

from ..models.gpt_cases import GPTSpec
from ..nn.activations import ACTIVATIONS
from ..nn.losses import LOSSES
from ..progress import Progress
from ..verify.cases import CaseSpec
from ..verify.stacks import StackSpec
from ..verify.sweep import (
    IMAGE_KINDS,
    CaseOutcome,
    SweepSpec,
    case_order,
    check_case,
    finite,
    kind_of,
    random_image_stack,
    random_sequence_stack,
    random_stack,
)

Spec = CaseSpec | StackSpec | GPTSpec
"""The kinds of network the report sweeps (each a refbp.verify.sweep.SweepSpec)."""

__all__ = [
    "CaseOutcome",
    "Spec",
    "case_order",
    "check_case",
    "components",
    "finite",
    "kind_of",
    "random_gpt",
    "random_stack",
    "run_report",
    "sweep_specs",
]


# ---- what is swept ------------------------------------------------------------------------
def sweep_specs(examples: int, seed: int) -> list[tuple[str, Spec]]:
    """The seed's network, then ``examples`` random networks drawn from ``seed`` (float64, cpu;
    the caller sets dtype and device): MLPs and layer stacks in turn (every fifth stack a GPT,
    and of the others, every second a CNN or a recurrent network in turn)."""
    rng = random.Random(seed)
    out: list[tuple[str, Spec]] = [
        (
            "seed network 2-3-1, sigmoid, half_sse",
            CaseSpec((2, 3, 1), ("sigmoid", "sigmoid"), "half_sse", seed, batch=4),
        )
    ]
    for k in range(examples):
        if k % 2 == 0:
            out.append((f"random MLP #{k // 2 + 1}", _random_mlp(k // 2, rng)))
        elif k % 10 == 9:
            out.append((f"random GPT #{k // 10 + 1}", random_gpt(rng)))
        else:
            if k % 10 == 3:  # a CNN, each of its layer kinds in turn at least once
                stack = random_image_stack(rng, include=IMAGE_KINDS[(k // 10) % len(IMAGE_KINDS)])
            else:
                stack = random_sequence_stack(rng) if k % 10 == 7 else random_stack(rng)
            out.append((f"random stack #{k // 2 + 1 - k // 10}", stack))
    return out


def _random_mlp(k: int, rng: random.Random) -> CaseSpec:
    """The k-th random MLP: losses cycle, activations take turns in the first layer, and every
    tenth network of a kind is trained, put on a boundary, or saturated (weights x10)."""
    names, losses = sorted(ACTIVATIONS), sorted(LOSSES)
    loss = losses[k % len(losses)]
    depth = rng.randint(1, 4)
    dims = [rng.randint(1, 12) for _ in range(depth)] + [rng.randint(2 if LOSSES[loss].targets == "classes" else 1, 6)]
    acts = [names[(k // len(losses) + layer) % len(names)] for layer in range(depth)]
    required = LOSSES[loss].output_activation
    if required is not None:
        acts[-1] = required
    elif depth > 1:
        acts[-1] = rng.choice(names)
    trained = "trained" if LOSSES[loss].bounded_below else "plain"  # nll on an MLP's free outputs diverges
    regime = {7: trained, 9: "boundary"}.get(k % 10, "plain")
    scale = 10.0 if k % 10 == 5 else 3.0 if k % 4 == 3 else 1.0
    return CaseSpec(
        dims=tuple(dims), activations=tuple(acts), loss=loss, seed=rng.randint(0, 2**31 - 1),
        batch=rng.randint(1, 8), weight_decay=0.1 if k % 5 == 4 else 0.0, weight_scale=scale, regime=regime,
    )  # fmt: skip


def random_gpt(rng: random.Random) -> GPTSpec:
    """A tiny random GPT, as refbp.strategies.gpt_specs draws them, from ``rng``: 1-2 blocks,
    1-2 heads of size 1-3, a vocabulary of 2-6, T <= block size <= 4, a batch of 1-3, biases
    or not, dropout 0.25 in one of three, some targets ignored in one of three."""
    n_head, head_size = rng.randint(1, 2), rng.randint(1, 3)
    block_size = rng.randint(1, 4)
    length, batch = rng.randint(1, block_size), rng.randint(1, 3)
    ignored = rng.randint(1, batch * length - 1) if batch * length > 1 and rng.random() < 1 / 3 else 0
    spec = GPTSpec(
        vocab_size=rng.randint(2, 6), block_size=block_size, n_layer=rng.randint(1, 2), n_head=n_head,
        n_embd=n_head * head_size, bias=rng.random() < 0.5, dropout=0.25 if rng.random() < 1 / 3 else 0.0,
        training=rng.random() < 0.6, batch=batch, length=length, ignored=ignored, seed=rng.randint(0, 2**31 - 1),
    )  # fmt: skip
    return _with_mingpt_variants(spec)


def _with_mingpt_variants(spec: GPTSpec) -> GPTSpec:
    """One GPT in four becomes a minGPT variant: an untied head, the tanh GELU, separate dropout
    rates; drawn from the case's own seed, so the sweep's stream of cases is unchanged."""
    twist = random.Random(spec.seed)
    if twist.random() >= 0.25:
        return spec
    if twist.random() < 0.5:  # each dropout its own rate
        embd, attn, resid = (twist.choice((0.0, 0.25)) for _ in range(3))
        spec = dataclasses.replace(spec, embd_pdrop=embd, attn_pdrop=attn, resid_pdrop=resid)
    return dataclasses.replace(spec, tied=twist.random() < 0.5, gelu=twist.choice(("exact", "tanh")))


def components(spec: SweepSpec) -> list[str]:
    """What a case exercises, for the coverage table: the spec's own answer (``Spec.components``)."""
    return spec.components()


def run_report(
    specs: list[tuple[str, Spec]],
    *,
    devices: list[str],
    dtypes: list[str],
    fd_mode: str = "auto",
    progress: bool = True,
) -> tuple[list[CaseOutcome], float]:
    """Check every case of the sweep in every dtype and device; returns (outcomes, seconds)."""
    order = case_order(specs, devices, dtypes)
    bar = Progress(len(order), progress)
    outcomes: list[CaseOutcome] = []
    failed = 0
    start = time.perf_counter()
    try:
        for label, spec in order:
            result = check_case(spec, fd_mode)
            outcomes.append(CaseOutcome(len(outcomes) + 1, label, spec, result))
            failed += not result.passed
            bar.advance(failed)
    finally:
        bar.close()
    return outcomes, time.perf_counter() - start
