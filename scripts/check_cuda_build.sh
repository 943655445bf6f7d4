#!/usr/bin/env bash
# Compile and link the extension with the CUDA kernels into a private directory (never in place)
# and check that every lambda op has a CUDA kernel. Needs no GPU, only a CUDA build of torch and
# nvcc. Usage: scripts/check_cuda_build.sh [OUT_DIR]   (default /tmp/lambda_kernels_cuda_build)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-/tmp/lambda_kernels_cuda_build}"
if [[ -z "${CUDA_HOME:-}" ]]; then
  # nvcc on PATH may be a wrapper script (e.g. /usr/local/bin/nvcc): prefer a real toolkit root.
  for cand in /usr/local/cuda "$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")"; do
    if [[ -x "$cand/bin/nvcc" && ( -e "$cand/lib64/libcudart.so" || -e "$cand/lib/libcudart.so" ) ]]; then
      export CUDA_HOME="$cand"; break
    fi
  done
fi
echo "CUDA_HOME=${CUDA_HOME:-unset}"
cd "$ROOT"
start=$(date +%s)
LAMBDA_KERNELS_WITH_CUDA=1 MAX_JOBS="${MAX_JOBS:-2}" python setup.py build_ext \
  --build-temp "$OUT/tmp" --build-lib "$OUT/lib"
echo "build took $(( $(date +%s) - start )) s"
SO="$(ls "$OUT"/lib/lambda_kernels/_C*.so)"
python - "$SO" <<'PY'
import sys
import torch
torch.ops.load_library(sys.argv[1])
ops = ("content_lambda", "content_lambda_backward", "lambda_output", "lambda_output_backward")
missing = []
for op in ops:
    ok = torch._C._dispatch_has_kernel_for_dispatch_key(f"lambda_kernels::{op}", "CUDA")
    print(f"lambda_kernels::{op:<24} CUDA kernel: {ok}")
    missing += [] if ok else [op]
sys.exit(f"missing CUDA kernels: {missing}" if missing else 0)
PY
