#!/usr/bin/env bash
# One command for a GPU machine (about 10 minutes on an H100), everything written under
# benchmarks/results/gpu-<UTC date>/:
#   1. build with CUDA if the cuda back end is not available yet (INSTALL=1 forces a build)
#   2. the Triton compile check for this GPU's architecture (registers, spills, MMA in the
#      window loops), as markdown
#   3. the test suite's GPU tests on CUDA: triton, cuda and reference back ends against each
#      other and against fp64, all dtypes (kernels at their default tiles: no autotuning)
#   4. compute-sanitizer memcheck on a small forward+backward: triton (bf16 and fp32 tiles) and
#      cuda
#   5. the Triton autotuner over the gpu-headline and resnet shapes (bf16): chosen tiles, every
#      configuration's time, useful TFLOP/s against SDPA
#   6. lambda-bench --preset gpu-headline and --preset resnet in bf16 against lambda-networks,
#      timm, SDPA global attention (mhsa) and convolutions, with the positional kernel timed
#      alone too (useful FLOP/s), reusing the autotuner's choices
#
#   bash scripts/gpu_check.sh            (from anywhere; uses the active python)
#
# Knobs: PYTHON (default python), INSTALL=1 (or SKIP_INSTALL=1), SKIP_TESTS=1, SKIP_SANITIZER=1, SKIP_AUTOTUNE=1,
#        SKIP_BENCH=1, FULL_SUITE=1 (every test file, not only those with GPU tests), FORCE=1 (run
#        without a GPU), LAMBDA_KERNELS_CUDA_ARCHS (forwarded to setup.py, e.g. "9.0").
set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python}"
OUT="benchmarks/results/gpu-$(date -u +%Y-%m-%d)"
[ -e "$OUT" ] && OUT="$OUT-$(date -u +%H%M%S)"
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
status=0
started=$SECONDS

step() {  # step NAME LOGFILE COMMAND...: run, log, record pass/fail; never aborts the script
    local name="$1" log="$2"; shift 2
    echo "== $name: $*" | tee -a "$SUMMARY"
    local start=$SECONDS
    "$@" > "$log" 2>&1
    local rc=$?
    echo "   rc=$rc ($((SECONDS - start)) s) log: $log" | tee -a "$SUMMARY"
    tail -n 3 "$log" | sed 's/^/   | /' | tee -a "$SUMMARY"
    [ $rc -eq 0 ] || status=1
    return $rc
}

{
    echo "date: $(date -u +%FT%TZ)"
    echo "git: $(git rev-parse HEAD 2>/dev/null || echo none)$(git diff --quiet 2>/dev/null || echo ' (dirty)')"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1
    "$PYTHON" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.is_available())"
    "$PYTHON" -c "import triton; print('triton', triton.__version__)" 2>&1
} > "$OUT/env.txt"
tee -a "$SUMMARY" < "$OUT/env.txt"

if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "no CUDA device visible to torch: this script is for a GPU machine (FORCE=1 runs anyway)" \
        | tee -a "$SUMMARY"
    [ "${FORCE:-0}" = 1 ] || exit 1
fi
unset TRITON_INTERPRET
# The autotuner stores its choices on disk: step 5 tunes, lambda-bench (step 6) reuses them.
export TRITON_CACHE_AUTOTUNING=1

cuda_backend_ready() {
    "$PYTHON" -c "import sys, lambda_kernels as lk; sys.exit(lk.available_backends('cuda').get('cuda') is not None)" 2> /dev/null
}
if [ "${SKIP_INSTALL:-0}" != 1 ] && { [ "${INSTALL:-0}" = 1 ] || ! cuda_backend_ready; }; then
    LAMBDA_KERNELS_WITH_CUDA=1 step "install (CUDA build)" "$OUT/install.log" \
        "$PYTHON" -m pip install --no-build-isolation --no-deps -v -e . \
        || { echo "install failed; see $OUT/install.log" | tee -a "$SUMMARY"; exit 1; }
else
    echo "== install: skipped (SKIP_INSTALL=1, or the cuda back end is built; INSTALL=1 rebuilds)" \
        | tee -a "$SUMMARY"
fi

ARCH="$("$PYTHON" -c 'import torch; c = torch.cuda.get_device_capability(); print(c[0] * 10 + c[1])' 2>/dev/null || echo 90)"
step "triton compile check (sm_$ARCH)" "$OUT/triton-compile-check.log" \
    "$PYTHON" -m lambda_kernels.tools.compile_check --check --arch "$ARCH" --dtypes bf16 fp32 \
    --shape headline resnet-56-r23 resnet-28-r9 resnet-14-r23 \
    --markdown "$OUT/triton-compile-check.md"

step "backends" "$OUT/backends.txt" "$PYTHON" -c \
    "import lambda_kernels as lk; [print(f'{n:10s}', r or 'OK') for n, r in lk.available_backends('cuda').items()]"

if [ "${SKIP_TESTS:-0}" != 1 ]; then
    if [ "${FULL_SUITE:-0}" = 1 ]; then
        tests=(tests)
    else  # the files with GPU tests (the rest ran in CI on CPU)
        tests=(tests/test_triton_backend.py tests/test_cuda_backend.py tests/test_dispatch.py
               tests/test_compile.py)
    fi
    LAMBDA_KERNELS_TRITON_AUTOTUNE=0 step "test suite (CUDA)" "$OUT/pytest.log" \
        "$PYTHON" -m pytest "${tests[@]}" -ra -p no:cacheprovider --junitxml="$OUT/pytest.xml"
fi

if [ "${SKIP_SANITIZER:-0}" != 1 ]; then
    if command -v compute-sanitizer > /dev/null; then
        for case in "triton bfloat16" "triton float32" "cuda float32"; do
            set -- $case
            step "memcheck $1 $2" "$OUT/memcheck-$1-$2.log" \
                compute-sanitizer --tool memcheck --error-exitcode 1 --leak-check full \
                "$PYTHON" scripts/sanitizer_case.py --backend "$1" --dtype "$2"
        done
    else
        echo "== memcheck: compute-sanitizer not found (is the CUDA toolkit on PATH?)" \
            | tee -a "$SUMMARY"
        status=1
    fi
fi

if [ "${SKIP_AUTOTUNE:-0}" != 1 ]; then
    step "triton autotune (gpu-headline, resnet; bf16)" "$OUT/triton-autotune.log" \
        "$PYTHON" -m lambda_kernels.tools.autotune_report --preset gpu-headline resnet \
        --dtype bfloat16 --markdown "$OUT/triton-autotune.md" --json "$OUT/triton-autotune.json"
fi

if [ "${SKIP_BENCH:-0}" != 1 ]; then
    if command -v lambda-bench > /dev/null; then
        providers="lambda-triton,lambda-cuda,lambda-networks,timm,mhsa,conv3x3,conv-r"
        for preset in gpu-headline resnet; do
            step "lambda-bench $preset (bf16)" "$OUT/bench-$preset.log" \
                lambda-bench --preset "$preset" --device cuda --dtype bfloat16 \
                --providers "$providers" --max-time 2 --kernel-rate --no-progress \
                --json "$OUT/bench-$preset.json" --markdown "$OUT/bench-$preset.md" \
                --csv "$OUT/bench-gpu.csv"
        done
    else
        echo "== benchmark: lambda-bench not found (pip install -e '.[test]')" | tee -a "$SUMMARY"
        status=1
    fi
fi

echo "overall: $([ $status -eq 0 ] && echo PASS || echo FAIL) in $((SECONDS - started)) s" \
    "(results in $OUT)" | tee -a "$SUMMARY"
exit $status
