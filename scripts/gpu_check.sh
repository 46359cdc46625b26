#!/usr/bin/env bash
# The GPU validation: the one prepared command for a machine with a GPU (python3 there with
# cupy-cuda13x, numpy, torch, pytest; no network). Run from anywhere in the checkout:
#
#   bash scripts/gpu_check.sh              on the GPU machine: about 8.5 minutes at most
#   bash scripts/gpu_check.sh --rehearse   here, without a GPU: every step it can, on the emulator
#
# Steps, each under its own limit (LIMIT_* below; the script refuses limits that, with the kill
# grace of each, add up to more than BUDGET seconds):
#   gpu              nvidia-smi: the card, driver, clocks
#   preflight        `cudeconv info`, then stop the whole run unless the cuda backend works
#   warmup           `cudeconv warmup` of every dtype and precision in one process per CPU: the
#                    GEMM's one-kernel modules (a menu of tiles per pass and math) and the rest,
#                    into this run's CuPy cache, so the steps below compile (almost) nothing
#   tests            the suite's cuda cases (`-k cuda`) with CUDECONV_REQUIRE_CUDA=1 (a cuda test
#                    that would skip for want of the backend fails), -rs, and pytest-timeout's
#                    per-test limit where that plugin is installed
#   sanitizer_probe  whether compute-sanitizer runs on this machine at all (it does not on gVisor)
#   memcheck         scripts/gpu_smoke_step.py under compute-sanitizer memcheck, the library's
#                    kernels only: every entry point of kernels/*.cu, checked against NumPy, and
#                    the set launched must equal the set defined (or, without the sanitizer, the
#                    same step plain, as "smoke")
#   racecheck        the same under racecheck
#   tune             `cudeconv tune` of a few benchmark layers (into this run's autotuning cache):
#                    each pass's candidates timed, the fastest kept; the choices are in the log
#   bench            `cudeconv bench --backend cuda`, exact FP32
#   bench_tf32       the same with --precision tf32
#   archive          the cubins CuPy built during the run (CUPY_CACHE_DIR is a folder of this run),
#                    for `python scripts/sass_report.py --cubins cubins.tar.gz` afterwards
#   ncu              Nsight Compute's sectors, requests and shared wavefronts of the GEMM launches
#                    of scripts/profile_gemm.py's small layer (scripts/ncu_traffic.py record), the
#                    CSV added to cubins.tar.gz as ncu.csv ($OUT holds 8 files already), for
#                    `python scripts/ncu_traffic.py compare cubins.tar.gz` against the emulator
# A step over its limit is reported as "timeout" (exit status 124), not as a failure of what it ran.
#
# What lands in $OUT (default ./gpu-check-out; at most 8 files of at most 16 MiB, checked last):
#   summary.txt, summary.json   every step's outcome, exit status, seconds and limit; the budget
#   gpu_check.log               every step's output in order (gzipped, and cut in the middle if
#                               need be, to stay under the file limit: then gpu_check.log.gz)
#   bench.json, bench.png, bench_tf32.json, bench_tf32.png, cubins.tar.gz
# Exit status: 0 when every step that ran passed; 1 when one failed or timed out; 2 when the run
# could not start (limits over budget) or the preflight stopped it.
#
# --rehearse runs the same steps on the CPU: the emulator backend for the preflight, a small
# emulator selection of the tests, the smoke step (with its entry-point check), `bench --quick`,
# and the archive of an empty cache; nvidia-smi, compute-sanitizer and ncu are skipped, as the summary says.
set -u
cd "$(dirname "$0")/.."

MODE=gpu
case "${1:-}" in
    "") ;;
    --rehearse) MODE=rehearsal ;;
    *) echo "usage: bash scripts/gpu_check.sh [--rehearse]" >&2; exit 2 ;;
esac

# -- the time budget --------------------------------------------------------------------------
BUDGET=510        # seconds the whole run may take: the device call's ~9 minutes, less transfers
KILL_GRACE=5      # after a step's limit, TERM; this much later, KILL
LIMIT_GPU=${LIMIT_GPU:-10}
LIMIT_PREFLIGHT=${LIMIT_PREFLIGHT:-30}
LIMIT_WARMUP=${LIMIT_WARMUP:-30}  # ~90 modules, ~1 s each, on 16 CPUs
LIMIT_TESTS=${LIMIT_TESTS:-105}
LIMIT_SANITIZER_PROBE=${LIMIT_SANITIZER_PROBE:-20}
LIMIT_MEMCHECK=${LIMIT_MEMCHECK:-55}
LIMIT_RACECHECK=${LIMIT_RACECHECK:-45}
LIMIT_TUNE=${LIMIT_TUNE:-25}  # its 30 s with the grace: 15 s each from bench and bench_tf32
LIMIT_BENCH=${LIMIT_BENCH:-50}
LIMIT_BENCH_TF32=${LIMIT_BENCH_TF32:-30}
LIMIT_ARCHIVE=${LIMIT_ARCHIVE:-15}
LIMIT_NCU=${LIMIT_NCU:-35}  # its 40 s with the grace came from tests, racecheck and bench (10 s each)
STEPS="gpu preflight warmup tests sanitizer_probe memcheck racecheck tune bench bench_tf32 archive ncu"
PER_TEST_TIMEOUT=90  # pytest-timeout's limit for one test (the first NVRTC compile of a module is the slowest)
# compute-sanitizer checks only the library's kernels (every entry point is deconv_* or sgd_step_*),
# not CuPy's own: the regex filter of its --kernel-name option.
SANITIZER_KERNELS='regex=^(deconv|sgd_step)_'

limit_of() { local var="LIMIT_${1^^}"; echo "${!var}"; }
LIMITS_TOTAL=0
LIMITS=""
for name in $STEPS; do
    limit=$(limit_of "$name")
    if ! [[ $limit =~ ^[1-9][0-9]*$ ]]; then
        echo "gpu_check: LIMIT_${name^^}=$limit is not a positive number of seconds" >&2
        exit 2
    fi
    LIMITS_TOTAL=$(( LIMITS_TOTAL + limit + KILL_GRACE ))
    LIMITS="$LIMITS${LIMITS:+,}$name=$limit"
done
if (( LIMITS_TOTAL > BUDGET )); then
    echo "gpu_check: the step limits and their kill grace add up to ${LIMITS_TOTAL}s, over the ${BUDGET}s budget ($LIMITS; ${KILL_GRACE}s grace each)" >&2
    exit 2
fi

# -- where things go --------------------------------------------------------------------------
PYTHON=${PYTHON:-python3}
OUT=${OUT:-$PWD/gpu-check-out}
OUT_MAX_FILES=8
OUT_MAX_BYTES=$(( 16 * 1024 * 1024 ))
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
rm -f "$LOG" "$LOG.gz" "$OUT"/summary.txt "$OUT"/summary.json "$OUT"/bench.json "$OUT"/bench.png \
    "$OUT"/bench_tf32.json "$OUT"/bench_tf32.png "$OUT"/cubins.tar.gz
: > "$LOG"
RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
trap 'rm -rf "$RUN_DIR"' EXIT
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export CUPY_CACHE_DIR="$RUN_DIR/cupy-cache"  # only this run's cubins, for the archive
export CUDECONV_AUTOTUNE_CACHE="$RUN_DIR/autotune"  # this run's choices only (they are in the log)
export GPU_CHECK_NOTE="$RUN_DIR/note"        # a step may leave a one-line note for the summary here
: > "$RUN_DIR/steps.tsv"
failed=0

write_summary() {  # summary.json and summary.txt from the steps recorded so far
    "$PYTHON" - "$RUN_DIR/steps.tsv" "$OUT" "$MODE" "$BUDGET" "$KILL_GRACE" "$LIMITS_TOTAL" "$LIMITS" \
        "$SECONDS" "$failed" <<'PY'
import json, sys
from pathlib import Path
tsv, out, mode, budget, grace, total, limits, elapsed, failed = sys.argv[1:]
steps = []
for line in Path(tsv).read_text().splitlines():
    name, status, rc, seconds, limit, note = line.split("\t")
    steps.append({"name": name, "status": status, "rc": int(rc) if rc else None,
                  "seconds": int(seconds) if seconds else None, "limit_s": int(limit), "note": note})
summary = {"mode": mode, "budget_s": int(budget), "kill_grace_s": int(grace), "limits_total_s": int(total),
           "limits_s": {k: int(v) for k, v in (item.split("=") for item in limits.split(","))},
           "elapsed_s": int(elapsed), "failed": failed == "1", "steps": steps}
Path(out, "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
lines = [f"gpu_check ({mode}): {int(elapsed)}s elapsed; step limits {total}s of a {budget}s budget"]
for s in steps:
    took = "" if s["seconds"] is None else f"{s['seconds']:>4}s of {s['limit_s']:>3}s"
    rc = "" if s["rc"] is None else f"rc {s['rc']}"
    lines.append(f"{s['name']:16s} {s['status']:11s} {rc:7s} {took:13s} {s['note']}".rstrip())
Path(out, "summary.txt").write_text("\n".join(lines) + "\n")
PY
}

record() {  # record NAME STATUS RC SECONDS LIMIT NOTE
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" "${6//[$'\t\n']/ }" >> "$RUN_DIR/steps.tsv"
    echo "gpu_check: $1 $2${3:+ (rc $3)}${4:+, ${4}s of ${5}s}${6:+: $6}" | tee -a "$LOG"
    write_summary
}

skip() {  # skip NAME WHY
    record "$1" skipped "" "" "$(limit_of "$1")" "$2"
}

# step [--soft] NAME [--as LABEL] COMMAND...: run COMMAND under NAME's limit. rc 124 (or a KILL
# after the grace) is a timeout; --soft records a failure as "unavailable" (a tool that cannot
# run here) instead of failing the run. The summary's note: $STEP_NOTE, then what the command
# wrote to $GPU_CHECK_NOTE.
STEP_NOTE=""
step() {
    local soft=0 name label limit start rc status seconds note=$STEP_NOTE
    [ "$1" = --soft ] && { soft=1; shift; }
    name=$1 label=$1
    shift
    [ "$1" = --as ] && { label=$2; shift 2; }
    limit=$(limit_of "$name")
    rm -f "$GPU_CHECK_NOTE"
    echo "===== $label (limit ${limit}s): $*" >> "$LOG"
    start=$SECONDS
    # timeout signals the command's whole process group (compute-sanitizer's target too); no step
    # reads a terminal, which a background process group could not.
    timeout --kill-after="$KILL_GRACE" "$limit" "$@" < /dev/null >> "$LOG" 2>&1
    rc=$?
    seconds=$(( SECONDS - start ))
    [ -s "$GPU_CHECK_NOTE" ] && note="${note:+$note; }$(head -c 300 "$GPU_CHECK_NOTE")"
    if [ "$rc" -eq 0 ]; then
        status=ok
    elif [ "$rc" -eq 124 ] || { [ "$rc" -eq 137 ] && [ "$seconds" -ge "$limit" ]; }; then
        status=timeout
        note="${note:+$note; }stopped at its ${limit}s limit$([ "$rc" -eq 137 ] && echo ", killed after the ${KILL_GRACE}s grace")"
        failed=1
    elif [ "$soft" -eq 1 ]; then
        status=unavailable
    else
        status=failed
        failed=1
    fi
    record "$label" "$status" "$rc" "$seconds" "$limit" "$note"
    return "$rc"
}

# -- the steps --------------------------------------------------------------------------------
if [ "$MODE" = gpu ]; then
    BACKEND=cuda
    step gpu nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv
else
    BACKEND=emulator
    skip gpu "rehearsal: no GPU, nvidia-smi not run"
fi

# `cudeconv info` for the log (whatever state the CLI is in), then the verdict on the backend.
PREFLIGHT='
import os, sys
from cudeconv import backends
try:
    from cudeconv import cli
    cli.main(["info"])
except Exception as exc:
    print(f"cudeconv info failed: {type(exc).__name__}: {exc}")
name = sys.argv[1]
reason = backends.cuda_unavailable_reason() if name == "cuda" else backends.emulator_unavailable_reason()
verdict = f"backend {name!r} " + (f"unavailable: {reason}" if reason else "works")
print(verdict)
with open(os.environ["GPU_CHECK_NOTE"], "w") as note:
    note.write(verdict)
sys.exit(1 if reason else 0)
'
if ! step preflight "$PYTHON" -c "$PREFLIGHT" "$BACKEND"; then
    for name in $STEPS; do
        case $name in gpu|preflight) ;; *) skip "$name" "not run: the preflight stopped the run" ;; esac
    done
    echo "gpu_check: STOPPED: the $BACKEND backend does not work here; see preflight in $OUT/summary.txt" | tee -a "$LOG"
    cat "$OUT/summary.txt"
    exit 2
fi

step warmup "$PYTHON" -m cudeconv warmup --backend "$BACKEND" --dtype float16 bfloat16 float32 float64 \
    --precision fp32 tf32 tf32x3 --jobs 0

PYTEST=("$PYTHON" -m pytest -q -rs -p no:cacheprovider)
if "$PYTHON" -c "import pytest_timeout" 2>/dev/null; then
    PYTEST+=("--timeout=$PER_TEST_TIMEOUT")
    STEP_NOTE="per-test timeout ${PER_TEST_TIMEOUT}s"
else
    STEP_NOTE="pytest-timeout not installed: no per-test timeout"
fi
if [ "$MODE" = gpu ]; then
    # This file runs the rehearsal, which has no place inside the GPU run.
    step tests env CUDECONV_REQUIRE_CUDA=1 "${PYTEST[@]}" -k cuda --ignore=tests/test_gpu_check.py tests/
else
    # The same pytest line on a small emulator selection, failing where the emulator cannot run.
    step tests env CUDECONV_REQUIRE_KERNEL_CHECKS=1 "${PYTEST[@]}" -k "emulator and (matches_reference or follows_numpy)" \
        tests/test_sgd.py
fi
STEP_NOTE=""

SMOKE=("$PYTHON" scripts/gpu_smoke_step.py --backend "$BACKEND")
if [ "$MODE" = rehearsal ]; then
    skip sanitizer_probe "rehearsal: no GPU, compute-sanitizer not run"
    step memcheck --as smoke "${SMOKE[@]}"
    skip racecheck "rehearsal: no GPU, compute-sanitizer not run"
elif step --soft sanitizer_probe compute-sanitizer --tool memcheck --error-exitcode 1 \
        "$PYTHON" -c "import cupy; cupy.zeros(1)"; then
    SANITIZE=(compute-sanitizer --error-exitcode 1 --kernel-name "$SANITIZER_KERNELS")
    step memcheck "${SANITIZE[@]}" --tool memcheck "${SMOKE[@]}"
    step racecheck "${SANITIZE[@]}" --tool racecheck "${SMOKE[@]}"
else
    # No sanitizer here (gVisor refuses it): the smoke step still checks every entry point's result.
    step memcheck --as smoke "${SMOKE[@]}"
    skip racecheck "compute-sanitizer does not run on this machine (sanitizer_probe)"
fi

# A few layers of different shapes (GEMM, split K, 1-d, depthwise), 0.5 s of timing per pass at most.
TUNE=("$PYTHON" -m cudeconv tune --backend "$BACKEND" --cases dcgan_g2 deep_4x4 hifigan_up1 depthwise_up --budget 0.5)
[ "$MODE" = rehearsal ] && TUNE+=(--quick)
step tune "${TUNE[@]}"

BENCH=("$PYTHON" -m cudeconv bench --backend "$BACKEND")
if [ "$MODE" = rehearsal ]; then
    BENCH+=(--quick)
    # No CPU baselines in a rehearsal: the kernels' path through the bench is what is rehearsed.
    "$PYTHON" -m cudeconv bench --help 2>/dev/null | grep -q -- --baselines && BENCH+=(--baselines none)
fi
# On the GPU the FP32 bench also times the autotuned kernels beside the heuristic's (the tune step's
# cache serves its layers; others are tuned within the bench). The rehearsal leaves this out: the
# tuner's timing on the emulator is tested in tests/test_autotune.py.
AUTOTUNE=()
[ "$MODE" = rehearsal ] || AUTOTUNE=(--autotune)
step bench "${BENCH[@]}" "${AUTOTUNE[@]}" --json "$OUT/bench.json" --plot "$OUT/bench.png"
step bench_tf32 "${BENCH[@]}" --precision tf32 --json "$OUT/bench_tf32.json" --plot "$OUT/bench_tf32.png"

mkdir -p "$CUPY_CACHE_DIR"
step archive "$PYTHON" scripts/sass_report.py --pack-cubins "$CUPY_CACHE_DIR" "$OUT/cubins.tar.gz"

if [ "$MODE" = rehearsal ]; then
    skip ncu "rehearsal: no GPU, Nsight Compute not run"
elif ! command -v ncu > /dev/null; then
    skip ncu "ncu is not on PATH"
else
    # --soft: ncu cannot read the counters on some machines (gVisor); that is no failure of the kernels.
    step --soft ncu "$PYTHON" scripts/ncu_traffic.py record "$RUN_DIR/ncu.csv" --archive "$OUT/cubins.tar.gz"
fi

# -- $OUT within what comes back ----------------------------------------------------------------
echo "gpu_check: steps done in ${SECONDS}s" >> "$LOG"
if [ "$(stat -c %s "$LOG")" -gt "$OUT_MAX_BYTES" ]; then
    gzip -9 "$LOG"
    if [ "$(stat -c %s "$LOG.gz")" -gt "$OUT_MAX_BYTES" ]; then  # keep a quarter from the start, half from the end
        { zcat "$LOG.gz" | head -c $(( OUT_MAX_BYTES / 4 ))
          printf '\n===== [gpu_check: the middle of this log was cut to fit the file limit] =====\n'
          zcat "$LOG.gz" | tail -c $(( OUT_MAX_BYTES / 2 )); } | gzip -9 > "$RUN_DIR/log.gz"
        mv "$RUN_DIR/log.gz" "$LOG.gz"
    fi
fi
LOG=/dev/null  # the log is final: the verdict on $OUT goes to the summary only
problems=$(cd "$OUT" && {
    count=$(find . -type f | wc -l)
    [ "$count" -le "$OUT_MAX_FILES" ] || echo "$count files, at most $OUT_MAX_FILES come back"
    find . -type f -size +"$OUT_MAX_BYTES"c -printf '%P is over 16 MiB; '
    find . -mindepth 4 -printf '%P is more than two folders deep; '
    find . -mindepth 1 -name '*[!A-Za-z0-9._-]*' -printf '%P has a name that does not come back; '
} | tr '\n' ' ')
if [ -n "$problems" ]; then
    failed=1
    record out_limits failed "" "" 0 "$problems"
else
    record out_limits ok "" "" 0 "$(cd "$OUT" && find . -type f | wc -l) files, each at most 16 MiB"
fi

cat "$OUT/summary.txt"
exit "$failed"
