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
# PTX for GPUs newer than the newest arch built (the default arch list ends in +PTX): the driver
# compiles it at load time, e.g. on Blackwell.
CUOBJDUMP="$(command -v cuobjdump || true)"
[ -z "$CUOBJDUMP" ] && [ -x "${CUDA_HOME:-/usr/local/cuda}/bin/cuobjdump" ] && CUOBJDUMP="${CUDA_HOME:-/usr/local/cuda}/bin/cuobjdump"
[ -z "$CUOBJDUMP" ] && CUOBJDUMP="$(python -c 'import os, triton.backends.nvidia as n; print(os.path.join(os.path.dirname(n.__file__), "bin", "cuobjdump"))' 2>/dev/null || true)"
if [ -n "$CUOBJDUMP" ] && [ -x "$CUOBJDUMP" ]; then
  "$CUOBJDUMP" --list-elf --list-ptx "$SO"
  archs="$(python -c 'import sys; sys.path.insert(0, "lambda_kernels"); import _build_config as b; print(b.cuda_arch_list())')"
  ptx="$("$CUOBJDUMP" --list-ptx "$SO")"
  if [[ "$archs" == *+PTX* ]] && [[ "$ptx" != *"PTX file"* ]]; then
    echo "arch list $archs asks for PTX but the extension holds none" >&2; exit 1
  fi
else
  echo "cuobjdump not found: PTX not checked"
fi
