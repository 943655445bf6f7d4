#!/usr/bin/env bash
# First contact with a GPU host in one command, sized for a short GPU window (about 8 minutes
# wall on an H100/H200, the CUDA build included) on a fixed, offline Python environment
# (docs/gpu.md). Steps, most valuable first, each under its own time limit and all under one
# overall budget, so whatever runs out of time is the least valuable:
#   1. wheels the host lacks (lambda-networks) from .wheelhouse/ (scripts/prepare_gpu_run.sh),
#      installed into a private folder: --no-index, the host's environment is left as it is
#   2. build the CUDA extension in place for this GPU's arch only, MAX_JOBS=$(nproc)
#   3. which back ends run on the GPU
#   4. correctness on CUDA: the harness targets triton and cuda in every dtype against the
#      reference, plus the GPU tests of the Triton and CUDA back ends and the fallback probe
#      (not the CPU emulation of the CUDA kernels nor the static compile checks: CI runs them)
#   5. the headline benchmark (bf16): lambda-triton, lambda-cuda against lambda-networks, timm
#      and SDPA global attention (mhsa)
#   6. the positional kernel alone: useful TFLOP/s against torch.mm
#   7. the Triton autotuner over the LambdaResNet stage shapes (bf16)
#   8. compute-sanitizer memcheck: triton bf16, cuda fp32
# Results, written as they come, in three files under $OUT (default
# benchmarks/results/gpu-<UTC date and time>): summary.md, results.json (every figure; schema
# in scripts/gpu_check_report.py), logs.tar.gz (every step's log and report files).
#
#   bash scripts/gpu_check.sh            (from anywhere; PYTHON picks the interpreter)
#
# Knobs: OUT, PYTHON (default python3), BUDGET_S (overall seconds, default 450), FORCE=1 (no
# GPU: a dry run that writes the same files, GPU steps "skipped: no GPU"), SKIP_BUILD=1,
# WHEELHOUSE (default .wheelhouse), LAMBDA_KERNELS_CUDA_ARCHS (default: this GPU's arch).
set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
OUT="${OUT:-benchmarks/results/gpu-$(date -u +%Y-%m-%d-%H%M)}"
BUDGET_S="${BUDGET_S:-450}"
WHEELHOUSE="${WHEELHOUSE:-.wheelhouse}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/lambda-gpu-check.XXXXXX")"
LOGS="$WORK/logs"
mkdir -p "$LOGS"
REPORT=("$PYTHON" "$ROOT/scripts/gpu_check_report.py")
started=$SECONDS
step_number=0

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
# The autotuner keeps its choices on disk: the autotune step tunes, later steps reuse them.
export TRITON_CACHE_AUTOTUNING=1

pack_logs() { tar czf "$OUT/logs.tar.gz.tmp" -C "$WORK" logs && mv "$OUT/logs.tar.gz.tmp" "$OUT/logs.tar.gz"; }

record() {  # record NAME STATUS SECONDS LIMIT LOG KIND DATA REASON
    "${REPORT[@]}" step "$OUT" --name "$1" --status "$2" --seconds "$3" --limit "$4" \
        --log "$5" --kind "$6" --data "$7" --reason "$8" || echo "could not record step $1" >&2
    pack_logs
    printf '%-34s %-8s %5ss  %s\n' "$1" "$2" "$3" "$8"
}

next_log() {  # next_log NAME: sets LOG to the next step's log file
    step_number=$((step_number + 1))
    LOG="$(printf '%s/%02d-%s.log' "$LOGS" "$step_number" \
        "$(echo "$1" | tr -c 'a-zA-Z0-9\n' '-' | tr -s '-' | sed 's/-$//' | tr 'A-Z' 'a-z')")"
}

skip() {  # skip NAME REASON
    next_log "$1"
    echo "skipped: $2" > "$LOG"
    record "$1" skipped 0 0 "$LOG" "" "" "$2"
}

# step NAME LIMIT_S KIND DATA_FILE NEEDS_GPU COMMAND...: run COMMAND under `timeout` with the
# smaller of LIMIT_S and what is left of the budget; its output goes to its own log.
step() {
    local name="$1" limit="$2" kind="$3" data="$4" needs_gpu="$5"; shift 5
    next_log "$name"
    local log="$LOG"
    echo "\$ $*" > "$log"
    if [ "$needs_gpu" = 1 ] && [ "$HAVE_GPU" != 1 ]; then
        record "$name" skipped 0 "$limit" "$log" "$kind" "" "no GPU"
        return 0
    fi
    local left=$((BUDGET_S - (SECONDS - started)))
    if [ "$left" -lt 10 ]; then
        record "$name" skipped 0 "$limit" "$log" "$kind" "" "out of time (BUDGET_S=$BUDGET_S)"
        return 0
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    local start=$SECONDS rc
    # `timeout` runs programs, not shell functions: the functions below are exported to a
    # child bash, which timeout stops with everything it started.
    timeout --kill-after=10 "$limit" bash -c '"$@"' step "$@" >> "$log" 2>&1
    rc=$?
    local status=pass reason=""
    if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
        status=timeout reason="time limit ${limit} s"
    elif [ $rc -ne 0 ]; then
        status=fail reason="exit code $rc: $(grep -v '^\s*$' "$log" | tail -n 1 | cut -c1-200)"
    fi
    record "$name" "$status" "$((SECONDS - start))" "$limit" "$log" "$kind" "$data" "$reason"
    return $rc
}

# ------------------------------------------------------------------ environment
# One interpreter start reads everything (importing torch takes seconds on a busy machine).
{
    echo "git=$(git rev-parse --short HEAD 2>/dev/null || echo none)$(git diff --quiet HEAD 2>/dev/null || echo ' (dirty)')"
    echo "host=$(hostname 2>/dev/null || cat /etc/hostname 2>/dev/null || echo unknown)"
    echo "nproc=$(nproc)"
    echo "budget_s=$BUDGET_S"
    if command -v nvidia-smi >/dev/null 2>&1; then
        echo "nvidia_smi=$(nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1 | head -n 1)"
    fi
    "$PYTHON" - <<'PY' 2>&1
import platform
print("python=" + platform.python_version())
try:
    import torch
    print("torch=" + torch.__version__)
    print("cuda=" + str(torch.version.cuda))
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        print("gpu=" + torch.cuda.get_device_name())
        print(f"capability={major}.{minor}")
        print("gpu_count=" + str(torch.cuda.device_count()))
except Exception as exc:
    print(f"torch=not importable ({exc})")
try:
    import triton
    print("triton=" + triton.__version__)
except Exception as exc:
    print(f"triton=not importable ({exc})")
PY
} > "$WORK/env.txt"
ARCH="$(sed -n 's/^capability=//p' "$WORK/env.txt")"
HAVE_GPU=0
[ -n "$ARCH" ] && HAVE_GPU=1
if [ "$HAVE_GPU" != 1 ] && [ "${FORCE:-0}" != 1 ]; then
    cat "$WORK/env.txt" >&2
    echo "no CUDA device visible to torch: this script is for a GPU host (FORCE=1: dry run)" >&2
    rm -rf "$WORK"
    exit 1
fi
cp "$WORK/env.txt" "$LOGS/00-env.txt"
export PYTHON WHEELHOUSE WORK LOGS ARCH
"${REPORT[@]}" init "$OUT" --dry-run $((1 - HAVE_GPU)) --env-file "$WORK/env.txt" || exit 1
pack_logs
echo "GPU check: results in $OUT"
cat "$WORK/env.txt"

# ------------------------------------------------------------------ 1. wheels
install_wheels() {  # each wheel of the wheelhouse whose module is missing, into $WORK/site
    local wheel module missing=()
    for wheel in "$WHEELHOUSE"/*.whl; do
        [ -e "$wheel" ] || continue
        module="$(basename "$wheel" | cut -d- -f1)"
        if "$PYTHON" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$module') is None)"; then
            echo "$module: already installed"; continue
        fi
        missing+=("$wheel")
    done
    [ ${#missing[@]} -eq 0 ] && { echo "nothing to install"; return 0; }
    "$PYTHON" -m pip install --no-index --no-deps --no-compile --target "$WORK/site" "${missing[@]}"
}
export -f install_wheels
if compgen -G "$WHEELHOUSE/*.whl" > /dev/null; then
    step "wheels from $WHEELHOUSE" 60 "" "" 0 install_wheels
    export PYTHONPATH="$PYTHONPATH:$WORK/site"
else
    skip "wheels" "no $WHEELHOUSE (scripts/prepare_gpu_run.sh): no lambda-networks rows"
fi

# ------------------------------------------------------------------ 2. CUDA build
build() {
    # Only this GPU's arch (keeps the build short); LAMBDA_KERNELS_CUDA_ARCHS overrides.
    LAMBDA_KERNELS_WITH_CUDA=1 LAMBDA_KERNELS_CUDA_ARCHS="${LAMBDA_KERNELS_CUDA_ARCHS:-$ARCH}" \
        MAX_JOBS="${MAX_JOBS:-$(nproc)}" "$PYTHON" setup.py build_ext --inplace &&
    echo "{\"archs\": \"${LAMBDA_KERNELS_CUDA_ARCHS:-$ARCH}\"}" > "$WORK/build.json"
}
export -f build
if [ "${SKIP_BUILD:-0}" = 1 ]; then
    skip "CUDA build" "SKIP_BUILD=1"
else
    step "CUDA build" 240 build "$WORK/build.json" 1 build
fi

# ------------------------------------------------------------------ 3. back ends
step "back ends on the GPU" 60 backends "$WORK/backends.json" 1 "$PYTHON" -c "
import json, lambda_kernels as lk
status = {}
for dtype in ('float32', 'bfloat16'):
    import torch
    for name, why in lk.available_backends('cuda', getattr(torch, dtype)).items():
        status[f'{name} {dtype}'] = why
        print(f'{name:10s} {dtype:9s}', why or 'runs')
json.dump(status, open('$WORK/backends.json', 'w'), indent=1)
"

# ------------------------------------------------------------------ 4. correctness
correctness() {
    local workers=()
    # pytest-xdist when the host has it: Triton compiles each kernel per shape and dtype, and
    # separate processes compile in parallel.
    if "$PYTHON" -c "import xdist" 2>/dev/null; then
        workers=(-n "$(( $(nproc) < 8 ? $(nproc) : 8 ))")
    fi
    # -v: one line per test as it finishes, so a run cut off by its limit still has figures.
    LAMBDA_KERNELS_TRITON_AUTOTUNE=0 "$PYTHON" -m pytest "${workers[@]}" -v -ra -p no:cacheprovider \
        --junitxml="$LOGS/correctness-junit.xml" \
        tests/test_backends.py tests/test_triton_backend.py tests/test_cuda_backend.py \
        tests/test_backend_probe.py \
        -k "(triton or cuda or probe) and not emulated and not compile_for_gpu and not compiles_for_blackwell"
}
export -f correctness
step "correctness (CUDA)" 150 pytest "$LOGS/correctness-junit.xml" 1 correctness

# ------------------------------------------------------------------ 5-7. speed
bench() {
    "$PYTHON" -m lambda_kernels.bench --device cuda --dtype bfloat16 --max-time 1 --no-progress "$@"
}
export -f bench
step "headline benchmark (bf16)" 90 bench "$LOGS/bench-headline.json" 1 \
    bench --preset gpu-headline --providers lambda-triton,lambda-cuda,lambda-networks,timm,mhsa \
    --json "$LOGS/bench-headline.json" --markdown "$LOGS/bench-headline.md"
step "positional kernel TFLOP/s (bf16)" 60 bench "$LOGS/bench-kernel-rate.json" 1 \
    bench --preset gpu-headline --providers lambda-triton,lambda-cuda --kernel-rate --no-memory \
    --json "$LOGS/bench-kernel-rate.json" --markdown "$LOGS/bench-kernel-rate.md"
step "autotune, resnet shapes (bf16)" 90 autotune "$LOGS/autotune-resnet.json" 1 \
    "$PYTHON" -m lambda_kernels.tools.autotune_report --preset resnet --dtype bfloat16 \
    --json "$LOGS/autotune-resnet.json" --markdown "$LOGS/autotune-resnet.md"

# ------------------------------------------------------------------ 8. memcheck
memcheck() {  # memcheck BACKEND DTYPE
    local sanitizer
    sanitizer="$(command -v compute-sanitizer || echo "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer")"
    [ -x "$sanitizer" ] || { echo "compute-sanitizer not found (PATH, CUDA_HOME)"; return 1; }
    LAMBDA_KERNELS_TRITON_AUTOTUNE=0 "$sanitizer" --tool memcheck --error-exitcode 1 \
        "$PYTHON" scripts/sanitizer_case.py --backend "$1" --dtype "$2"
}
export -f memcheck
step "memcheck triton bf16" 60 memcheck "" 1 memcheck triton bfloat16
step "memcheck cuda fp32" 60 memcheck "" 1 memcheck cuda float32

"${REPORT[@]}" finish "$OUT" --seconds $((SECONDS - started))
pack_logs
rm -rf "$WORK"
overall="$("$PYTHON" -c "import json, sys; print(json.load(open(sys.argv[1]))['overall'])" "$OUT/results.json")"
echo "overall: $overall in $((SECONDS - started)) s; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
[ "$overall" = pass ]
