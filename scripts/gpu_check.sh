#!/usr/bin/env bash
# The GPU validation: the one prepared command to run when a task is lent a GPU (see the
# developers' guide).
# Run from the repository root on the GPU machine (python3 there has cupy-cuda13x, numpy, torch,
# pytest; no network):   bash scripts/gpu_check.sh        (about 8.5 minutes at most)
# Each step has its own time limit. Everything lands in $OUT (default ./gpu-check-out):
#   gpu_check.log  the output of every step, in order
#   summary.txt    one line per step: name, exit status, seconds
#   bench.json     `cudeconv bench --backend cuda` results (cuDNN with TF32 off/on in the same run)
#   bench.png      the benchmark chart
#   bench_tf32.*   the same with --precision tf32 (the kernels on TF32 tensor cores)
#   sass.json      scripts/sass_report.py for every kernels/*.cu (needs nvcc and cuobjdump there)
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-check-out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
LOG="$OUT/gpu_check.log"
: > "$LOG"
: > "$OUT/summary.txt"
failed=0

step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2 start rc
    shift 2
    start=$(date +%s)
    echo "===== $name (limit ${limit}s): $*" | tee -a "$LOG"
    timeout --kill-after=10 "$limit" "$@" >> "$LOG" 2>&1
    rc=$?
    echo "$name rc=$rc $(( $(date +%s) - start ))s" | tee -a "$OUT/summary.txt" "$LOG"
    [ "$rc" -eq 0 ] || failed=1
}

step gpu 15 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv
step info 30 python3 -m cudeconv info
# The suite's "cuda" cases, the CUDA-graph capture/replay of a training step among them.
step tests 150 python3 -m pytest -q -p no:cacheprovider -k cuda tests/
# compute-sanitizer refuses the device on some machines (gVisor): probe it on a trivial program first,
# so that its absence reads as skipped, not as a fault of the kernels.
if timeout 60 compute-sanitizer --tool memcheck --error-exitcode 1 python3 -c "import cupy; cupy.zeros(1)" \
        >> "$LOG" 2>&1; then
    step memcheck 50 compute-sanitizer --tool memcheck --error-exitcode 1 python3 scripts/gpu_smoke_step.py
    step racecheck 50 compute-sanitizer --tool racecheck --error-exitcode 1 python3 scripts/gpu_smoke_step.py
else
    echo "memcheck skipped: compute-sanitizer does not run on this machine (see $LOG)" | tee -a "$OUT/summary.txt"
    echo "racecheck skipped: compute-sanitizer does not run on this machine" | tee -a "$OUT/summary.txt"
fi
# The same suite with exact FP32 kernels (against cuDNN with TF32 off) and with TF32 tensor cores
# (against cuDNN with TF32 on, PyTorch's default for convolutions).
step bench 100 python3 -m cudeconv bench --backend cuda --json "$OUT/bench.json" --plot "$OUT/bench.png"
step bench_tf32 100 python3 -m cudeconv bench --backend cuda --precision tf32 --json "$OUT/bench_tf32.json" \
    --plot "$OUT/bench_tf32.png"
# What the GPU ran, from the SASS (registers, spills, HMMA/LDGSTS/FFMA counts), beside the timings.
step sass 60 python3 scripts/sass_report.py --json "$OUT/sass.json"
cat "$OUT/summary.txt"
exit $failed
