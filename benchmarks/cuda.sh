#!/usr/bin/env bash
# Item 5 of the benchmarks on a CUDA machine, one shot: the item-1 grid on the GPU.
# Writes reports/BENCHMARKS_CUDA.md and reports/benchmarks_cuda.json (device name recorded).
# Usage: bash benchmarks/cuda.sh [--quick]   (from the repository root; about 2 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU visible to torch')"
PYTHONPATH=. python3 benchmarks/run.py --cuda-only --repeats 9 --out reports "$@"
