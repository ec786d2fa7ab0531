#!/usr/bin/env bash
# Everything refbp runs on a CUDA GPU, in one shot (about 6 minutes on an H200):
#   1. the CUDA tests (tests/test_cuda.py: every layer kind, the recurrent layers, the GPT, check and
#      H v on the GPU; the device tests of test_backward.py, test_autograd_function.py, test_errors.py)
#      beside the validation report swept on the GPU (`refbp report --device cuda`);
#   2. then, alone on the GPU: item 5 of the benchmarks (the item-1 MLP grid, BENCHMARKS_CUDA.md) and
#      the GPT training step (GPT_BENCHMARKS_CUDA.md).
# Usage: bash benchmarks/cuda.sh [OUT]   (from anywhere; OUT defaults to reports/, logs go there too)
# Needs torch with CUDA, numpy, pytest, hypothesis, tabulate; runs from the working tree (PYTHONPATH).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-reports}
mkdir -p "$OUT"
export PYTHONPATH=.
python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU visible to torch')" || exit 2
python3 -c "import torch; print('torch', torch.__version__, 'on', torch.cuda.get_device_name(0))" | tee "$OUT/cuda_device.txt"
status=0

# 1. correctness: the tests and the report side by side (the GPU is idle most of the time in both)
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py \
    tests/test_backward.py tests/test_autograd_function.py tests/test_errors.py -k "cuda or gpu or device" \
    >"$OUT/cuda_tests.log" 2>&1 &
tests=$!
timeout 200 python3 -m refbp report --device cuda --examples 200 --seed 0 --no-progress --out "$OUT/cuda_report" \
    >"$OUT/cuda_report.log" 2>&1 &
report=$!
wait $tests || status=1
tail -n 15 "$OUT/cuda_tests.log"
wait $report || status=1
tail -n 5 "$OUT/cuda_report.log"
head -n 3 "$OUT/cuda_report/REPORT.md" 2>/dev/null

# 2. speed, one benchmark at a time
timeout 150 python3 benchmarks/run.py --cuda-only --repeats 9 --out "$OUT" || status=1
timeout 100 python3 benchmarks/gpt.py --device cuda --no-compile --out "$OUT" || status=1
exit $status
