"""Measure the harness's false-positive rate: check many random *correct* cases (refbp's own
manual gradients) and count how many are flagged.

    python scripts/false_positive_rate.py --cases 10000 --seed 1 --workers 2 --out reports

Cases come from refbp.apps.sweep.sweep_specs, the report's own sweep: half MLPs (every
activation and loss, depths 1-4, widths 1-12, batches 1-8; weight decay in 1 of 5; weights x3
in 1 of 4 and x10 in 1 of 10: saturated units; 1 in 10 trained to confident outputs with refbp's
own gradients; 1 in 10 with a pre-activation 1e-7 from a piecewise boundary), 40% random layer
stacks (LayerNorm, BatchNorm1d, Dropout, Embedding, Flatten, Residual, every activation, in
training and eval mode) and 10% tiny GPTs (attention, tied embeddings, ignored targets,
dropout); of the stacks, one in four a CNN (convolutions, pooling with and without ties,
BatchNorm2d, GroupNorm, softmax) and one in four a recurrent network (RNN, LSTM, GRU). Each
runs in float64 and float32, against autograd and full finite differences. Beside the sweep,
``--torch-cases`` users' own torch models (default 1 in 10 of ``--cases``), in turn: a random
``nn.Sequential`` with an ``nn.Embedding(padding_idx=...)`` whose padding token occurs in the
input, a Dropout in training mode, LayerNorm or not, an activation; a random CNN (Conv2d with
stride, padding, dilation and groups, ReLU, MaxPool2d or AvgPool2d, BatchNorm2d in training or
eval mode or GroupNorm, Flatten, Linear); a recurrent model (Embedding, LSTM/GRU/RNN of 1-2
layers, batch_first either way, Linear on every step). Each is converted by
``refbp.from_torch``; the gradients checked are torch's own (autograd on the module, dJ/dX
included where X is not token indices), with the masks torch drew passed as
``noise=refbp.capture_noise(module, idx)``. Writes
reports/false_positives.md and .json: the count, a breakdown by kind and regime, and the
closest calls (error/allowed).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch
from tabulate import tabulate
from torch import nn

import refbp
from refbp.apps.io import write_set
from refbp.apps.report import DEFAULT_THREADS
from refbp.apps.sweep import Spec, check_case, sweep_specs
from refbp.models.gpt_cases import GPTSpec
from refbp.verify.cases import CaseSpec

DTYPES = ("float64", "float32")


def group(spec: Spec) -> str:
    """The breakdown a case counts under: its kind and, for an MLP, its regime; a stack of
    images or sequences (its input's shape, or a recurrent layer) as a CNN or recurrent stack."""
    if isinstance(spec, GPTSpec):
        return "GPT (train)" if spec.training else "GPT (eval)"
    if not isinstance(spec, CaseSpec):
        kinds = {layer[0] for layer in spec.layers}
        what = "recurrent stack" if kinds & {"rnn", "lstm", "gru"} else "CNN stack" if len(spec.shape) > 1 else "stack"
        return f"{what} ({'train' if spec.training else 'eval'})"
    if spec.regime != "plain":
        return f"MLP, {spec.regime}"
    return "MLP, weights x10" if spec.weight_scale >= 10 else "MLP, plain"


def check_chunk(specs: list[Spec]) -> list[dict[str, Any]]:
    """Check each spec in each dtype (in a worker process: one torch thread)."""
    torch.set_num_threads(DEFAULT_THREADS)
    out = []
    for base in specs:
        for dtype in DTYPES:
            spec = dataclasses.replace(base, dtype=dtype)
            result = check_case(spec, "full")
            worst = max(result.rows, key=lambda r: r.margin)
            out.append({
                "group": group(spec), "dtype": dtype, "ratio": worst.margin, "passed": result.passed,
                "comparison": f"dJ/d{worst.name} vs {worst.reference}", "spec": json.loads(spec.to_json()),
                "message": "" if result.passed else result.failure_message(),
            })  # fmt: skip
    return out


def torch_model_case(seed: int, dtype: str) -> dict[str, Any]:
    """One user's torch model, its own autograd gradients and captured dropout masks, checked."""
    g = torch.Generator().manual_seed(seed)

    def draw(low: int, high: int) -> int:
        return int(torch.randint(low, high + 1, (), generator=g))

    V, d, T, width, classes, N = draw(3, 12), draw(1, 6), draw(1, 4), draw(1, 10), draw(2, 5), draw(1, 6)
    padding_idx = draw(0, V - 1)
    activation = [nn.Tanh, nn.GELU, nn.Sigmoid, nn.SiLU][draw(0, 3)]()
    torch.manual_seed(seed)  # the module's parameters and, below, torch's dropout masks
    modules: list[nn.Module] = [nn.Embedding(V, d, padding_idx=padding_idx), nn.Flatten()]
    if draw(0, 1):
        modules.append(nn.LayerNorm(T * d))
    modules += [nn.Linear(T * d, width), activation, nn.Dropout(0.1 + 0.4 * draw(0, 4) / 4), nn.Linear(width, classes)]
    module = nn.Sequential(*modules).to(getattr(torch, dtype)).train()
    idx = torch.randint(0, V, (N, T), generator=g)
    idx[draw(0, N - 1), draw(0, T - 1)] = padding_idx  # the padding token occurs
    y = torch.randint(0, classes, (N,), generator=g)
    net = refbp.from_torch(module, loss="cross_entropy")
    noise = refbp.capture_noise(module, idx)
    loss = nn.functional.cross_entropy(module(idx), y)  # torch's own step, drawing those very masks
    loss.backward()
    named = dict(module.named_parameters())
    grads = {name: named[torch_names[0]].grad for name, torch_names in net.torch_parameter_names().items()}
    result = refbp.check(net, idx, y, grads=grads, noise=noise, fd_mode="full")
    worst = max(result.rows, key=lambda r: r.margin)
    spec = {"torch_model": seed, "dtype": dtype, "module": repr(module).replace("\n", "")}
    return {
        "group": "torch model (padding_idx, dropout, captured noise)", "dtype": dtype, "ratio": worst.margin,
        "passed": result.passed, "comparison": f"dJ/d{worst.name} vs {worst.reference}", "spec": spec,
        "message": "" if result.passed else result.failure_message(),
    }  # fmt: skip


def _record(group: str, seed: int, dtype: str, module: nn.Module, result: refbp.CheckResult) -> dict[str, Any]:
    worst = max(result.rows, key=lambda r: r.margin)
    spec = {"torch_model": seed, "dtype": dtype, "module": repr(module).replace("\n", "")}
    return {
        "group": group, "dtype": dtype, "ratio": worst.margin, "passed": result.passed,
        "comparison": f"dJ/d{worst.name} vs {worst.reference}", "spec": spec,
        "message": "" if result.passed else result.failure_message(),
    }  # fmt: skip


def _torch_gradients(net: refbp.Network, module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's autograd gradients under refbp's names (zeros where torch left none)."""
    named = dict(module.named_parameters())
    out = {}
    for name, torch_names in net.torch_parameter_names().items():
        p = named[torch_names[0]]
        out[name] = p.grad if p.grad is not None else torch.zeros_like(p)  # J does not depend on it: 0
    return out


def cnn_model_case(seed: int, dtype: str) -> dict[str, Any]:
    """A user's CNN: Conv2d (stride, padding, dilation, groups), ReLU, MaxPool2d or AvgPool2d,
    BatchNorm2d (training or eval, running statistics away from 0 and 1) or GroupNorm, Flatten,
    Linear; torch's autograd gradients of cross-entropy, dJ/dX included."""
    g = torch.Generator().manual_seed(seed)

    def draw(low: int, high: int) -> int:
        return int(torch.randint(low, high + 1, (), generator=g))

    C, H, W, classes = draw(1, 3), draw(3, 6), draw(3, 6), draw(2, 4)
    divisors = [k for k in range(1, C + 1) if C % k == 0]
    groups = divisors[draw(0, len(divisors) - 1)]
    C_out = groups * draw(1, 2)
    kernel, padding, dilation = draw(1, 3), draw(0, 1), draw(1, 2)
    if dilation * (kernel - 1) + 1 > min(H, W) + 2 * padding:  # the dilated kernel must fit
        dilation = 1
    torch.manual_seed(seed)  # the module's parameters
    conv = nn.Conv2d(C, C_out, kernel, stride=draw(1, 2), padding=padding, dilation=dilation, groups=groups)
    with torch.no_grad():
        probe = conv(torch.zeros(1, C, H, W))
    h, w = probe.shape[2:]
    modules: list[nn.Module] = [conv, nn.ReLU()]
    if min(h, w) >= 2 and draw(0, 2):
        k = draw(2, min(3, h, w))
        pool = (
            nn.MaxPool2d(k, stride=draw(1, k), padding=draw(0, k // 2))
            if draw(0, 1)
            else nn.AvgPool2d(k, stride=draw(1, k), padding=draw(0, k // 2), count_include_pad=bool(draw(0, 1)))
        )
        modules.append(pool)
        with torch.no_grad():
            h, w = pool(probe).shape[2:]
    training = bool(draw(0, 1))
    norm: nn.Module | None = None
    if draw(0, 1):
        norm = nn.BatchNorm2d(C_out)
        assert norm.running_mean is not None and norm.running_var is not None
        with torch.no_grad():
            norm.weight.uniform_(0.5, 1.5, generator=g)
            norm.bias.uniform_(-0.5, 0.5, generator=g)
            norm.running_mean.uniform_(-0.5, 0.5, generator=g)
            norm.running_var.uniform_(0.5, 1.5, generator=g)
    else:  # torch normalises groups of two values or more
        counts = [k for k in range(1, C_out + 1) if C_out % k == 0 and (C_out // k) * h * w >= 2]
        norm = nn.GroupNorm(counts[draw(0, len(counts) - 1)], C_out) if counts else None
    if norm is not None:
        modules.append(norm)
    modules += [nn.Flatten(), nn.Linear(C_out * h * w, classes)]
    N = draw(2 if isinstance(norm, nn.BatchNorm2d) and training else 1, 3)
    module = nn.Sequential(*modules).to(getattr(torch, dtype)).train(training)
    X = torch.empty(N, C, H, W).uniform_(-2.0, 2.0, generator=g).to(getattr(torch, dtype))
    y = torch.randint(0, classes, (N,), generator=g)
    net = refbp.from_torch(module, loss="cross_entropy")  # before torch's step updates the running statistics
    X_leaf = X.clone().requires_grad_(True)
    nn.functional.cross_entropy(module(X_leaf), y).backward()
    grads = {**_torch_gradients(net, module), "X": X_leaf.grad}
    result = refbp.check(net, X, y, grads=grads, fd_mode="full")
    mode = "train" if training else "eval"
    return _record(f"torch CNN ({mode})", seed, dtype, module, result)


def recurrent_model_case(seed: int, dtype: str) -> dict[str, Any]:
    """A user's character model: Embedding, an LSTM, GRU or RNN (tanh or relu) of 1-2 layers,
    batch_first either way, a Linear on every step; torch's autograd gradients of cross-entropy
    over every step (the module called as a user does: rnn(...)[0])."""
    g = torch.Generator().manual_seed(seed)

    def draw(low: int, high: int) -> int:
        return int(torch.randint(low, high + 1, (), generator=g))

    V, d, H, T, N, layers = draw(3, 8), draw(1, 4), draw(1, 4), draw(1, 4), draw(1, 3), draw(1, 2)
    kind = ["LSTM", "GRU", "RNN_TANH", "RNN_RELU"][draw(0, 3)]
    torch.manual_seed(seed)
    options: dict[str, Any] = {"num_layers": layers, "batch_first": bool(draw(0, 1))}
    if kind.startswith("RNN"):
        cell: nn.Module = nn.RNN(d, H, nonlinearity=kind.removeprefix("RNN_").lower(), **options)
    else:
        cell = (nn.LSTM if kind == "LSTM" else nn.GRU)(d, H, **options)
    module = nn.Sequential(nn.Embedding(V, d), cell, nn.Linear(H, V)).to(getattr(torch, dtype))
    idx = torch.randint(0, V, (N, T), generator=g)
    y = torch.randint(0, V, (N, T), generator=g)
    net = refbp.from_torch(module, loss="cross_entropy")
    embedding, rnn, head = module
    logits = head(rnn(embedding(idx))[0])  # (N, T, V): the output sequence, as a user's forward takes it
    nn.functional.cross_entropy(logits.reshape(-1, V), y.reshape(-1)).backward()
    result = refbp.check(net, idx, y, grads=_torch_gradients(net, module), fd_mode="full")
    return _record(f"torch recurrent ({kind})", seed, dtype, module, result)


TORCH_MODELS = (torch_model_case, cnn_model_case, recurrent_model_case)
"""The users' models, in turn by seed: embedding and dropout, CNN, recurrent."""


def check_torch_models(seeds: list[int]) -> list[dict[str, Any]]:
    """Each seed's torch model in each dtype (in a worker process: one torch thread)."""
    torch.set_num_threads(DEFAULT_THREADS)
    return [TORCH_MODELS[seed % len(TORCH_MODELS)](seed, dtype) for seed in seeds for dtype in DTYPES]


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=10_000, help="cases in all (half per dtype)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1, help="processes (one torch thread each)")
    parser.add_argument("--torch-cases", type=int, default=None, help="users' torch models (default: cases / 10)")
    parser.add_argument("--out", default="reports")
    args = parser.parse_args()

    specs = [spec for label, spec in sweep_specs(args.cases // len(DTYPES), args.seed) if label.startswith("random")]
    chunks = [specs[k :: args.workers * 8] for k in range(args.workers * 8)]
    start = time.perf_counter()
    records: list[dict[str, Any]] = []
    torch_cases = args.cases // 10 if args.torch_cases is None else args.torch_cases
    seeds = [args.seed * 1_000_003 + k for k in range(torch_cases // len(DTYPES))]
    seed_chunks = [seeds[k :: args.workers * 4] for k in range(args.workers * 4)]
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        sweep, models = pool.map(check_chunk, chunks), pool.map(check_torch_models, seed_chunks)  # all submitted
        for done in itertools.chain(sweep, models):  # each chunk counted as it arrives
            records += done
            print(f"{len(records)} cases, {sum(not r['passed'] for r in records)} flagged", file=sys.stderr)
    seconds = time.perf_counter() - start
    flagged = [r for r in records if not r["passed"]]
    by_dtype = {dt: max(r["ratio"] for r in records if r["dtype"] == dt) for dt in DTYPES}
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[r["group"]].append(r)
    breakdown = {
        name: {
            "cases": len(rs),
            "flagged": sum(not r["passed"] for r in rs),
            "worst_ratio": max(r["ratio"] for r in rs),
        }
        for name, rs in sorted(groups.items())
    }
    closest = sorted(records, key=lambda r: -r["ratio"])[:10]
    command = (
        f"python scripts/false_positive_rate.py --cases {args.cases} --seed {args.seed} --workers {args.workers}"
        + ("" if args.torch_cases is None else f" --torch-cases {args.torch_cases}")
    )
    doc = {
        "cases": len(records), "flagged": len(flagged), "false_positive_rate": len(flagged) / len(records),
        "worst_ratio_by_dtype": by_dtype, "breakdown": breakdown,
        "closest_calls": [{k: r[k] for k in ("ratio", "dtype", "group", "comparison", "spec")} for r in closest],
        "flagged_cases": [{"spec": r["spec"], "message": r["message"]} for r in flagged],
        "seconds": round(seconds, 1), "command": command,
    }  # fmt: skip
    rows = [[f"{r['ratio']:.3g}", r["dtype"], r["group"], r["comparison"], json.dumps(r["spec"])] for r in closest]
    table = [[name, b["cases"], b["flagged"], f"{b['worst_ratio']:.3g}"] for name, b in breakdown.items()]
    md = [
        "# False-positive rate of the harness",
        "",
        f"`{command}`: **{len(flagged)} of {len(records)} correct cases flagged** "
        f"(rate {len(flagged) / len(records):.2g}), {seconds:.0f} s.",
        "",
        "Each case checks every gradient of refbp's own backward pass (parameters, intermediates, input) against "
        "autograd and full finite differences; a case is flagged when some entry is contradicted or verified by no "
        f"reference. Largest error/allowed seen: float64 {by_dtype['float64']:.3g}, float32 {by_dtype['float32']:.3g} "
        "(a verified entry fails above 1).",
        "",
        "## By kind and regime",
        "",
        tabulate(table, headers=["cases", "n", "flagged", "worst error/allowed"], tablefmt="github",
                 disable_numparse=True),
        "",
        "## Closest calls",
        "",
        tabulate(rows, headers=["error/allowed", "dtype", "kind", "comparison", "case"], tablefmt="github",
                 disable_numparse=True),
        "",
    ]  # fmt: skip
    write_set(
        Path(args.out), {"false_positives.json": json.dumps(doc, indent=1) + "\n", "false_positives.md": "\n".join(md)}
    )
    print(f"{len(flagged)} of {len(records)} correct cases flagged; worst ratios {by_dtype}; {seconds:.0f} s")
    return 0 if not flagged else 1


if __name__ == "__main__":
    sys.exit(main())
