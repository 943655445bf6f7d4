#!/usr/bin/env bash
# The GPU host's fixed pairing, torch 2.11.0 + triton 3.6.0 (docs/gpu.md), checked on CPU: a
# venv outside the repository with that pairing, then
#   0. every torch/triton name the package uses exists (scripts/check_api_names.py),
#   1. the Triton interpreter and reference tests, the fallback probe and back-end dispatch,
#      with the C++ extension absent (LAMBDA_KERNELS_JIT=0: nothing is built, cpu targets skip;
#      a build of another torch in the tree is never touched),
#   2. the Triton compile check for sm_90 (every kernel, bf16 and fp32, with --check).
# Needs a package index the first time (the venv is reused afterwards).
#
#   bash scripts/check_torch_pairing.sh            VENV=... TORCH=... TRITON=... to vary
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TORCH="${TORCH:-2.11.0}"
TRITON="${TRITON:-3.6.0}"
VENV="${VENV:-${TMPDIR:-/tmp}/lambda-kernels-torch${TORCH//./}-triton${TRITON//./}}"
start=$SECONDS
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
fi
# numpy < 2.4: triton 3.6's interpreter turns one-element arrays into loop bounds with int(),
# which numpy 2.4 refuses (the GPU path does not use the interpreter).
"$VENV/bin/python" -m pip install -q "torch==$TORCH" "triton==$TRITON" "numpy<2.4" pytest \
    hypothesis einops lambda-networks==0.4.0
echo "venv ready in $((SECONDS - start)) s: $VENV"
cd "$ROOT"
"$VENV/bin/python" -c "import torch, triton, numpy; print('torch', torch.__version__, 'triton', triton.__version__, 'numpy', numpy.__version__)"

echo "+ every torch/triton name the package uses"
"$VENV/bin/python" scripts/check_api_names.py

t=$SECONDS
echo "+ pytest (Triton interpreter, reference, probe, dispatch; no C++ extension)"
# Not here: the JIT-build test (it builds the extension), and the compile-check tests (step 2
# runs the compile check for the GPU host's arch).
env -u TRITON_INTERPRET LAMBDA_KERNELS_JIT=0 "$VENV/bin/python" -m pytest -q -p no:cacheprovider \
    tests/test_backends.py tests/test_triton_backend.py tests/test_backend_probe.py \
    tests/test_dispatch.py -k "(triton or reference or probe or dispatch) and not jit_built \
    and not compile_for_gpu and not compiles_for_blackwell"
echo "tests took $((SECONDS - t)) s"

t=$SECONDS
echo "+ Triton compile check, sm_90"
env -u TRITON_INTERPRET "$VENV/bin/python" -m lambda_kernels.tools.compile_check --arch 90 \
    --dtypes bf16 fp32 --check
echo "compile check took $((SECONDS - t)) s"
echo "torch $TORCH + triton $TRITON: OK in $((SECONDS - start)) s"
