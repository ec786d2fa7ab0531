"""A GPT training step, refbp's manual gradients against torch.autograd: time and peak memory.

    python benchmarks/gpt.py --out reports            # reports/GPT_BENCHMARKS.md, gpt_benchmarks.json, .png
    python benchmarks/gpt.py --quick --no-compile     # a smoke run on a tiny GPT, seconds
    python benchmarks/gpt.py --device cuda --out reports  # on a GPU: GPT_BENCHMARKS_CUDA.md, gpt_benchmarks_cuda.json

One training step is forward + loss + backward, float32 on the CPU, for refbp.models.GPT with
nanoGPT's initialisation, B = 8 sequences, a vocabulary of 65 characters, heads of 32:

- *manual*: ``net.backward(cache, targets, intermediates=False, release_cache=True)`` after
  ``cache = net.forward(idx, keep_intermediates=False)`` and ``net.loss(cache, targets)``;
- *autograd*: the same model as a torch module (``GPT.to_torch()``: nanoGPT's layout, attention by
  F.scaled_dot_product_attention, nanoGPT's default path), ``loss.backward()``, grads set to None first;
- *autograd compiled*: that module under ``torch.compile`` (inductor);
- *manual compiled*: the manual step function under ``torch.compile``.

Time: medians of interleaved repeats in one process, of CPU time (the step's own; wall time is
recorded too), compilation done in a warm-up, with glibc's allocator as a user has it. Peak
memory: in a second process with glibc's mmap threshold at 4 KiB (set before Python starts, as
benchmarks/memory_probe.py does), every tensor of 4 KiB or more is its own mapping, returned to
the system when freed, so the resident set follows the live tensors; a step's peak is the
high-water mark (VmHWM, reset first) minus the resident set just before it, parameters'
gradients included for both (autograd's are set to None before the step). The two are kept
apart because a mapping per tensor makes every allocation a system call and its pages fresh
faults: timed that way, a step that allocates more temporaries (refbp's) is penalised far more
than it is with the allocator people run (1.86x autograd's time against 1.40x, measured side by
side at n_embd 128, T 64).
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import environment, interleaved_medians
from benchmarks.memory import MMAP_THRESHOLD
from refbp.apps.io import write_atomic
from refbp.models import GPT

__all__ = ["CONFIGS", "QUICK_CONFIGS", "main", "measure", "render_markdown"]

CONFIGS: list[dict[str, int]] = [
    {"n_layer": 4, "n_embd": n_embd, "block_size": T, "batch": 8} for n_embd in (128, 256) for T in (64, 256)
]
"""The issue's grid: n_layer 4, n_embd 128 and 256, T 64 and 256, B 8."""

QUICK_CONFIGS: list[dict[str, int]] = [{"n_layer": 2, "n_embd": 32, "block_size": 16, "batch": 4}]

VOCAB = 65
"""A character-level vocabulary (nanoGPT's shakespeare_char has 65 characters)."""

HEAD_SIZE = 32
"""Heads of 32: n_head = n_embd / 32 (4 and 8 heads)."""

METHODS = ("manual", "autograd", "autograd compiled", "manual compiled")

LIMITS = (
    "## What limits these figures",
    "",
    "Measured while this benchmark was written (profiles and per-layer timings, 1 thread):",
    "",
    "- **Manual time (eager).** The matrix products are the same as autograd's. The difference is in the "
    "elementwise work, where torch runs one fused kernel and refbp several tensor operations: LayerNorm "
    "takes 4-5 passes forward and 6-10 backward (since this round a training step computes it in float32, as "
    "torch does, from mu and rstd, instead of accumulating in float64: 1.32x -> 1.19x at n_embd 128, T 64, "
    "1.11-1.22x -> 1.09-1.20x at the other sizes, measured side by side), GELU's derivative and the "
    "softmax's backward take several passes (GELU 1.7x), and attention rebuilds its T x T probabilities in "
    "the backward pass (one more scores "
    "product and softmax per block) so as not to keep them, while torch's CPU flash attention also skips the "
    "masked half of the scores (attention 1.2-1.3x). Per block that is 1.15-1.3x. These passes are bound by "
    "memory bandwidth and suffer most from other processes and from fresh pages: the first version of this "
    "benchmark timed the steps under the 64 KiB mmap threshold that the memory measurement needs (every "
    "tensor a system call and fresh page faults) on a machine at a load average near 10, and read 1.4-1.9x; "
    "timed under the allocator users run, on a quiet machine, the same code reads 1.16-1.43x.",
    "- **Manual memory.** The forward caches match autograd's saved tensors; the backward frees each "
    "sub-layer's cache once used (as autograd does), attention's probabilities, LayerNorm's xhat and GELU's "
    "output are rebuilt instead of kept, and attention, GELU and LayerNorm do their temporaries 1 MiB at a "
    "time (refbp.nn.chunks).",
    "- **Manual compiled.** Measured in the one full run with torch.compile (`python benchmarks/gpt.py --out "
    "reports`, 52 minutes, most of it compiling the manual step at n_embd 256; timed under the mmap threshold "
    "at a load average near 10, and not rerun since): autograd compiled 0.87-0.92x eager autograd's time, the "
    "manual step compiled 0.99-1.29x its time and 1.34-1.63x its memory. torch.compile fuses refbp's "
    "elementwise chains, which brings the step to eager "
    "autograd's time at n_embd 128, but the step splits into 8 graphs (graph breaks at the input checks: "
    "`.item()`), Dynamo unrolls the chunk loops (compilation takes minutes, growing "
    "with T), and inductor plans each graph's buffers without the backward's release-as-you-go order, so the "
    "compiled step needs 1.3-1.6x autograd's memory.",
)
"""The closing section of GPT_BENCHMARKS.md: what was found to limit each figure."""


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def interleaved(methods: dict[str, Callable[[], object]], *, repeats: int) -> tuple[dict[str, float], dict[str, float]]:
    """(wall, CPU) median seconds per call of each method, in turns as benchmarks/common.py's
    interleaved_medians does. CPU time (time.process_time) is what the step itself used: on a
    shared machine, waiting for a core while other processes run counts in the wall time only."""
    names = list(methods)
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            methods[name]()
            cpu[name].append(time.process_time() - start_cpu)
            wall[name].append(time.perf_counter() - start_wall)
    return ({n: statistics.median(v) for n, v in wall.items()}, {n: statistics.median(v) for n, v in cpu.items()})


def peak_bytes(step: Callable[[], object], reset: Callable[[], None]) -> int:
    """Bytes above the resident set just before one call of ``step``, at its high-water mark;
    ``reset`` first frees what an earlier call left (autograd's .grad), so that both methods
    allocate their gradients inside the measured step."""
    reset()
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := the current resident set
    before = _status_kib("VmRSS")
    result = step()
    peak = _status_kib("VmHWM")
    del result
    return (peak - before) * 1024


def steps(
    config: dict[str, int], *, compile_: bool, device: str = "cpu"
) -> tuple[dict[str, Callable[[], object]], Callable[[], None], dict[str, str]]:
    """The training step of each method for one configuration (compiled ones compiled lazily),
    what frees the gradients a step leaves behind, and, for a method that could not be built, why."""
    d, T, B = config["n_embd"], config["block_size"], config["batch"]
    net = GPT.random(vocab_size=VOCAB, block_size=T, n_layer=config["n_layer"], n_head=d // HEAD_SIZE, n_embd=d,
                     seed=0, dtype=torch.float32, device=device)  # fmt: skip
    generator = torch.Generator().manual_seed(1)
    idx = torch.randint(0, VOCAB, (B, T), generator=generator).to(device)  # (B, T)
    targets = torch.randint(0, VOCAB, (B, T), generator=generator).to(device)
    module = net.to_torch()
    params = list(module.parameters())

    def manual() -> object:
        cache = net.forward(idx, keep_intermediates=False)
        J = net.loss(cache, targets)
        return J, net.backward(cache, targets, intermediates=False, release_cache=True).as_dict()

    def autograd_of(model: Callable[..., Any]) -> Callable[[], object]:
        def step() -> object:
            for p in params:
                p.grad = None
            _, J = model(idx, targets)
            J.backward()
            return J

        return step

    def reset() -> None:
        for p in params:  # autograd's gradients live in .grad between steps; manual's are returned
            p.grad = None

    methods: dict[str, Callable[[], object]] = {"manual": manual, "autograd": autograd_of(module)}
    failures: dict[str, str] = {}
    if compile_:
        methods["autograd compiled"] = autograd_of(torch.compile(module))
        methods["manual compiled"] = torch.compile(manual)
    return methods, reset, failures


def _warm(methods: dict[str, Callable[[], object]], failures: dict[str, str]) -> dict[str, float]:
    """Run each method twice (compilation, allocator, lazy initialisation); drop the ones that
    cannot run, saying why; return the seconds each warm-up took."""
    seconds: dict[str, float] = {}
    for name in list(methods):
        start = time.perf_counter()
        try:
            methods[name]()
            methods[name]()
        except Exception as err:  # a method that cannot run is reported, not fatal
            failures[name] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
            del methods[name]
            continue
        seconds[name] = time.perf_counter() - start
    return seconds


def measure_memory(config: dict[str, int], *, compile_: bool) -> dict[str, int]:
    """Peak bytes of one step of every method that runs (call with the mmap threshold, MMAP_THRESHOLD, set)."""
    methods, reset, failures = steps(config, compile_=compile_)
    _warm(methods, failures)
    return {name: peak_bytes(fn, reset) for name, fn in methods.items()}


def measure(config: dict[str, int], *, repeats: int, compile_: bool, memory: dict[str, int]) -> dict[str, Any]:
    """Time of every method on one configuration, beside its peak memory measured apart."""
    methods, _, failures = steps(config, compile_=compile_)
    compile_seconds = _warm(methods, failures)
    wall, times = interleaved(methods, repeats=repeats)
    row: dict[str, Any] = {**config, "n_head": config["n_embd"] // HEAD_SIZE, "vocab": VOCAB}
    row["seconds"] = times  # CPU seconds: the ratios are taken from these
    row["wall_seconds"] = wall
    row["wall_time_vs_autograd"] = {name: t / wall["autograd"] for name, t in wall.items()}
    row["peak_bytes"] = memory
    row["warmup_seconds"] = compile_seconds
    row["failures"] = failures
    base_t, base_m = times["autograd"], memory["autograd"]
    row["time_vs_autograd"] = {name: t / base_t for name, t in times.items()}
    # tensors under 4 KiB (a --quick run) come from the heap, which keeps freed memory: no peak shows
    row["memory_vs_autograd"] = {name: m / base_m if base_m > 0 else None for name, m in memory.items()}
    if "autograd compiled" in times:
        row["time_vs_autograd_compiled"] = {name: t / times["autograd compiled"] for name, t in times.items()}
    print(
        f"  n_embd {config['n_embd']}, T {config['block_size']}: "
        + ", ".join(
            f"{n} {times[n] * 1e3:.0f} ms CPU ({wall[n] * 1e3:.0f} wall) / {memory.get(n, 0) / 2**20:.0f} MiB"
            for n in times
        ),
        flush=True,
    )
    return row


def cuda_peak_bytes(step: Callable[[], object], reset: Callable[[], None], device: torch.device) -> int:
    """Bytes the caching allocator handed out at its peak during one call of ``step``, above
    what was allocated just before it (``reset`` first frees autograd's .grad, as peak_bytes)."""
    reset()
    gc.collect()
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    result = step()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    del result
    return peak - before


def measure_cuda(config: dict[str, int], *, repeats: int, compile_: bool) -> dict[str, Any]:
    """measure() on the GPU: wall time between synchronisations, peak memory from the allocator."""
    device = torch.device("cuda")
    methods, reset, failures = steps(config, compile_=compile_, device="cuda")
    compile_seconds = _warm(methods, failures)
    memory = {name: cuda_peak_bytes(fn, reset, device) for name, fn in methods.items()}
    times = interleaved_medians(methods, repeats=repeats, device=device)
    row: dict[str, Any] = {**config, "n_head": config["n_embd"] // HEAD_SIZE, "vocab": VOCAB, "device": "cuda"}
    row.update(seconds=times, wall_seconds=times, peak_bytes=memory, warmup_seconds=compile_seconds,
               failures=failures)  # fmt: skip
    row["time_vs_autograd"] = {name: t / times["autograd"] for name, t in times.items()}
    row["wall_time_vs_autograd"] = row["time_vs_autograd"]
    row["memory_vs_autograd"] = {name: m / memory["autograd"] for name, m in memory.items()}
    if "autograd compiled" in times:
        row["time_vs_autograd_compiled"] = {name: t / times["autograd compiled"] for name, t in times.items()}
    print(
        f"  n_embd {config['n_embd']}, T {config['block_size']}: "
        + ", ".join(f"{n} {times[n] * 1e3:.2f} ms / {memory[n] / 2**20:.0f} MiB" for n in times),
        flush=True,
    )
    return row


def ratio_table(rows: list[dict[str, Any]], methods: list[str]) -> list[str]:
    """The "Ratios to eager autograd" section: a row per configuration, each method's time and
    peak memory over autograd's (CPU and CUDA documents alike)."""
    others = [m for m in methods if m != "autograd"]
    header = ["n_layer", "n_embd", "T", *(f"{m} time" for m in others), *(f"{m} memory" for m in others)]
    lines = ["## Ratios to eager autograd (time, peak memory)", "", "| " + " | ".join(header) + " |",
             "|" + "---|" * len(header)]  # fmt: skip
    for row in rows:
        cells = [str(row["n_layer"]), str(row["n_embd"]), str(row["block_size"])]
        cells += [_ratio(row["time_vs_autograd"].get(m)) for m in others]
        cells += [_ratio(row["memory_vs_autograd"].get(m)) for m in others]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render_cuda_markdown(doc: dict[str, Any]) -> str:
    """GPT_BENCHMARKS_CUDA.md: the ratios and absolute figures of a --device cuda run."""
    env = doc["environment"]
    methods = [m for m in METHODS if any(m in row["seconds"] for row in doc["rows"])]
    lines = [
        "# GPT training step on a CUDA GPU: manual gradients vs torch.autograd",
        "",
        f"`{doc['command']}`, {doc['seconds']:.0f} s in all. {env['cuda_device']}, torch {env['torch']}, "
        f"{env['date']}.",
        "",
        "One step = forward + loss + backward, float32, B = 8, vocabulary 65, heads of 32, nanoGPT's "
        "initialisation, as GPT_BENCHMARKS.md (CPU). Time: wall time between `torch.cuda.synchronize` calls, "
        f"medians of {doc['repeats']} interleaved repeats. Peak memory: `torch.cuda.max_memory_allocated` during "
        "one step above what was allocated before it, parameter gradients included for both. Autograd runs "
        "the model as a torch module (`GPT.to_torch()`, attention by `F.scaled_dot_product_attention`, which "
        "picks a fused CUDA kernel).",
        "",
    ]
    lines += ratio_table(doc["rows"], methods)
    lines += ["", "## Absolute figures", "", "| n_embd | T | method | ms per step | peak MiB | warm-up s |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for row in doc["rows"]:
        for m in methods:
            if m in row["seconds"]:
                lines.append(
                    f"| {row['n_embd']} | {row['block_size']} | {m} | {row['seconds'][m] * 1e3:.2f} | "
                    f"{row['peak_bytes'][m] / 2**20:.1f} | {row['warmup_seconds'].get(m, 0.0):.1f} |"
                )
        for m, why in row["failures"].items():
            lines.append(f"| {row['n_embd']} | {row['block_size']} | {m} | failed: {why} | | |")
    return "\n".join(lines) + "\n"


def render_markdown(doc: dict[str, Any]) -> str:
    """GPT_BENCHMARKS.md: the environment, the ratios, the absolute figures and what limits them."""
    env = doc["environment"]
    lines = [
        "# GPT training step: manual gradients vs torch.autograd",
        "",
        f"`{doc['command']}`, {doc['seconds']:.0f} s in all. torch {env['torch']}, {env['threads']} thread(s), "
        f"{env['cpu']} ({env['cpu_cores_visible']} cores visible), {env['date']}"
        + (
            f"; load average {doc['load_average'][0]:.1f} at the start, {doc['load_average'][1]:.1f} at the end."
            if "load_average" in doc
            else "."
        ),
        "",
        "One step = forward + loss + backward, float32, CPU, B = 8, vocabulary 65, heads of 32, nanoGPT's "
        "initialisation. Ratios are to autograd on the same model as a torch module (`GPT.to_torch()`: "
        "nanoGPT's layout, attention by `F.scaled_dot_product_attention`). Time: from one process with glibc's "
        f"allocator as users have it, medians of {doc['repeats']} interleaved repeats of CPU time "
        "(`time.process_time`: what the step itself used, which other processes on this shared 2-core machine "
        "do not change; wall times, which they do, are listed below). Peak memory, from a second process: the "
        "resident set's high-water mark during one step above the resident set before it (there, allocations "
        f"of {MMAP_THRESHOLD // 1024} KiB and more are mappings of their own, so that freed tensors leave the "
        "resident set at once), "
        "parameter gradients included for both. Only ratios taken side by side are meaningful on this "
        "shared machine.",
        "",
    ]
    methods = [m for m in METHODS if any(m in row["seconds"] for row in doc["rows"])]
    lines += ratio_table(doc["rows"], methods)
    lines += ["", "## Absolute figures", "",
              "| n_embd | T | method | CPU ms per step | wall ms per step | peak MiB | warm-up s |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for row in doc["rows"]:
        for m in methods:
            if m in row["seconds"]:
                lines.append(
                    f"| {row['n_embd']} | {row['block_size']} | {m} | {row['seconds'][m] * 1e3:.1f} | "
                    f"{row['wall_seconds'][m] * 1e3:.1f} | {row['peak_bytes'].get(m, 0) / 2**20:.1f} | "
                    f"{row['warmup_seconds'].get(m, 0.0):.1f} |"
                )
        for m, why in row["failures"].items():
            lines.append(f"| {row['n_embd']} | {row['block_size']} | {m} | failed: {why} | | | |")
    lines += ["", *LIMITS]
    return "\n".join(lines) + "\n"


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def plot(doc: dict[str, Any], path: Path) -> Path | None:
    """Time and memory ratios to eager autograd per configuration, as bars; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = doc["rows"]
    labels = [f"d={r['n_embd']}\nT={r['block_size']}" for r in rows]
    methods = [m for m in METHODS if m != "autograd" and any(m in r["seconds"] for r in rows)]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in ((axes[0], "time_vs_autograd", "time / autograd's"),
                           (axes[1], "memory_vs_autograd", "peak memory / autograd's")):  # fmt: skip
        width = 0.8 / max(1, len(methods))
        for k, m in enumerate(methods):
            heights = [r[key].get(m) or 0.0 for r in rows]
            ax.bar([i + k * width for i in range(len(rows))], heights, width, label=m)
        ax.axhline(1.0, color="black", lw=0.8, ls="--")
        ax.set_xticks([i + width * (len(methods) - 1) / 2 for i in range(len(rows))], labels)
        ax.set_title(title)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"GPT training step, n_layer {rows[0]['n_layer']}, B {rows[0]['batch']}, float32 CPU")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return write_atomic(path, buffer.getvalue())


def _memory_in_child(argv: list[str]) -> list[dict[str, int]]:
    """Each configuration's peak bytes per method, from a fresh process with glibc's mmap threshold
    at MMAP_THRESHOLD (glibc reads it at start-up only, so it cannot be set in this process)."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "memory.json"
        script = [sys.executable, str(Path(__file__).resolve()), *argv, "--memory-json", str(path)]
        subprocess.run(script, env=env, check=True)
        peaks: list[dict[str, int]] = json.loads(path.read_text())
    return peaks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="reports", help="folder for GPT_BENCHMARKS.md, gpt_benchmarks.json/png")
    parser.add_argument("--quick", action="store_true", help="one tiny GPT: a smoke run of every code path")
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile methods")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved repeats per timing (default 7)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the steps run")
    parser.add_argument("--memory-json", help=argparse.SUPPRESS)  # internal: the memory child's output
    args = parser.parse_args(argv)
    command = "python benchmarks/gpt.py " + " ".join(argv if argv is not None else sys.argv[1:])
    torch.set_num_threads(args.threads)
    configs = QUICK_CONFIGS if args.quick else CONFIGS
    if args.device == "cuda":
        return main_cuda(args, configs, command)
    if args.memory_json:  # the child: peak memory only, under the mmap threshold its parent set
        peaks = [measure_memory(config, compile_=not args.no_compile) for config in configs]
        Path(args.memory_json).write_text(json.dumps(peaks))
        return 0
    start = time.perf_counter()
    repeats = 3 if args.quick else args.repeats
    load_before = os.getloadavg()[0]  # other processes' load changes wall times (and caches): recorded
    peaks = _memory_in_child(argv if argv is not None else sys.argv[1:])
    rows = [measure(config, repeats=repeats, compile_=not args.no_compile, memory=peak)
            for config, peak in zip(configs, peaks, strict=True)]  # fmt: skip
    doc = {"environment": environment(args.threads), "command": command, "repeats": repeats, "rows": rows,
           "seconds": time.perf_counter() - start, "load_average": [load_before, os.getloadavg()[0]]}  # fmt: skip
    out = Path(args.out)
    write_atomic(out / "gpt_benchmarks.json", json.dumps(doc, indent=1) + "\n")
    write_atomic(out / "GPT_BENCHMARKS.md", render_markdown(doc))
    plot(doc, out / "gpt_benchmarks.png")
    print(f"wrote {out / 'GPT_BENCHMARKS.md'} in {doc['seconds']:.0f} s")
    return 0


def main_cuda(args: argparse.Namespace, configs: list[dict[str, int]], command: str) -> int:
    """--device cuda: every configuration on the GPU, written to GPT_BENCHMARKS_CUDA.md and
    gpt_benchmarks_cuda.json (the CPU figures are left as they are)."""
    if not torch.cuda.is_available():
        print("--device cuda: torch sees no CUDA GPU on this machine", file=sys.stderr)
        return 2
    start = time.perf_counter()
    repeats = 3 if args.quick else args.repeats
    rows = [measure_cuda(config, repeats=repeats, compile_=not args.no_compile) for config in configs]
    doc = {"environment": environment(args.threads), "command": command, "repeats": repeats, "rows": rows,
           "seconds": time.perf_counter() - start}  # fmt: skip
    out = Path(args.out)
    write_atomic(out / "gpt_benchmarks_cuda.json", json.dumps(doc, indent=1) + "\n")
    write_atomic(out / "GPT_BENCHMARKS_CUDA.md", render_cuda_markdown(doc))
    print(f"wrote {out / 'GPT_BENCHMARKS_CUDA.md'} in {doc['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
