set -u
export PYTHONPATH=.
timeout 200 python3 -m refbp report --device cuda --examples 200 --seed 0 --no-progress --out "$OUT/report_cuda" > "$OUT/cuda_report.log" 2>&1 &
r=$!
timeout 240 python3 scratch_gpu.py > "$OUT/probe.log" 2>&1
wait $r; echo "report rc=$?"
tail -5 "$OUT/cuda_report.log"; head -3 "$OUT/report_cuda/REPORT.md"
grep -E "MiB d|==" "$OUT/probe.log"
