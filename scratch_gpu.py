"""Scratch (not committed): GPU probes for the GPT step: chunk budgets, launch counts."""
import statistics, sys, time, json
import torch
import refbp.nn.chunks as C
import refbp.nn.activations as A
from benchmarks.gpt import steps, CONFIGS, cuda_peak_bytes
from benchmarks.common import interleaved_medians

dev = torch.device("cuda")
out = {}
for budget_mib in (1, 4, 16, 64, 256):
    C.CHUNK_BYTES = A.CHUNK_BYTES = budget_mib << 20
    for cfg in CONFIGS:
        methods, reset, _ = steps(cfg, compile_=False, device="cuda")
        for m in methods.values(): m(); m()
        mem = {n: cuda_peak_bytes(f, reset, dev) for n, f in methods.items()}
        t = interleaved_medians(methods, repeats=7, device=dev)
        key = f"{budget_mib}MiB d{cfg['n_embd']} T{cfg['block_size']}"
        out[key] = {"time_ratio": t["manual"] / t["autograd"], "mem_ratio": mem["manual"] / mem["autograd"],
                    "manual_ms": t["manual"] * 1e3, "autograd_ms": t["autograd"] * 1e3}
        print(key, {k: round(v, 3) for k, v in out[key].items()}, flush=True)
C.CHUNK_BYTES = A.CHUNK_BYTES = 1 << 20
from torch.profiler import profile, ProfilerActivity
cfg = CONFIGS[0]
methods, reset, _ = steps(cfg, compile_=False, device="cuda")
for name, fn in methods.items():
    fn(); fn(); torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn(); torch.cuda.synchronize()
    ev = prof.key_averages()
    launches = sum(e.count for e in ev if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx"))
    syncs = {e.key: e.count for e in ev if "ynchronize" in e.key or "Memcpy" in e.key or "item" in e.key or "local_scalar" in e.key}
    print(f"== {name}: kernel launches {launches}, syncs {syncs}", flush=True)
    print(prof.key_averages().table(sort_by="count", row_limit=25), flush=True)
