#!/usr/bin/env bash
# One command for a GPU machine: build + install with CUDA, run the whole test suite on CUDA,
# run compute-sanitizer memcheck on a small fwd+bwd for the triton and cuda back ends, and run
# the GPU benchmarks. Everything is written under benchmarks/results/gpu-<UTC date>/.
#
#   bash scripts/gpu_check.sh            (from anywhere; uses the active python)
#
# Knobs: PYTHON (default python), SKIP_INSTALL=1, SKIP_BENCH=1, FORCE=1 (run without a GPU),
#        LAMBDA_KERNELS_CUDA_ARCHS (forwarded to setup.py, e.g. "9.0").
set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python}"
OUT="benchmarks/results/gpu-$(date -u +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
status=0

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
    echo "git: $(git rev-parse HEAD 2>/dev/null || echo none)"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
    "$PYTHON" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.is_available())"
    "$PYTHON" -c "import triton; print('triton', triton.__version__)" 2>&1
} > "$OUT/env.txt"
cat "$OUT/env.txt" | tee -a "$SUMMARY"

if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "no CUDA device visible to torch: this script is for a GPU machine (FORCE=1 runs anyway)" \
        | tee -a "$SUMMARY"
    [ "${FORCE:-0}" = 1 ] || exit 1
fi
unset TRITON_INTERPRET
if [ "${SKIP_INSTALL:-0}" != 1 ]; then
    LAMBDA_KERNELS_WITH_CUDA=1 step "install (CUDA build)" "$OUT/install.log" \
        "$PYTHON" -m pip install --no-build-isolation --no-deps -v -e . \
        || { echo "install failed; see $OUT/install.log" | tee -a "$SUMMARY"; exit 1; }
fi

step "triton AOT compile" "$OUT/triton-compile.log" \
    "$PYTHON" -m lambda_kernels.triton.compile_check --arch "$("$PYTHON" -c 'import torch; c = torch.cuda.get_device_capability(); print(c[0] * 10 + c[1])' 2>/dev/null || echo 90)"

step "backends" "$OUT/backends.txt" "$PYTHON" -c \
    "import lambda_kernels as lk; [print(f'{n:10s}', r or 'OK') for n, r in lk.available_backends('cuda').items()]"

step "test suite (CUDA)" "$OUT/pytest.log" \
    "$PYTHON" -m pytest tests -ra -p no:cacheprovider --junitxml="$OUT/pytest.xml"

if command -v compute-sanitizer > /dev/null; then
    for backend in triton cuda; do
        step "memcheck $backend" "$OUT/memcheck-$backend.log" \
            compute-sanitizer --tool memcheck --error-exitcode 1 --leak-check full \
            "$PYTHON" scripts/sanitizer_case.py --backend "$backend"
    done
else
    echo "== memcheck: compute-sanitizer not found (is the CUDA toolkit on PATH?)" | tee -a "$SUMMARY"
    status=1
fi

if [ "${SKIP_BENCH:-0}" != 1 ]; then
    if command -v lambda-bench > /dev/null; then
        bench_out=()
        if lambda-bench --help 2>/dev/null | grep -q -- "--output"; then bench_out=(--output "$OUT"); fi
        step "benchmark" "$OUT/bench.log" \
            lambda-bench --preset gpu-headline --device cuda "${bench_out[@]}"
    elif [ -f benchmarks/run.py ]; then
        step "benchmark" "$OUT/bench.log" "$PYTHON" benchmarks/run.py --device cuda --output "$OUT"
    else
        echo "== benchmark: neither lambda-bench nor benchmarks/run.py found" | tee -a "$SUMMARY"
    fi
fi

echo "overall: $([ $status -eq 0 ] && echo PASS || echo FAIL)  (results in $OUT)" | tee -a "$SUMMARY"
exit $status
