#!/usr/bin/env bash
# Before a GPU window, on a machine with a package index: download the wheels the GPU host
# lacks into .wheelhouse/ (ignored by git; it travels with the checkout, e.g. as a carried
# path), so scripts/gpu_check.sh can install them there with --no-index. Pure-Python wheels
# only, without their dependencies (the host has torch and einops); pinned to what the tests
# and benchmarks compare against. docs/gpu.md says what to run when.
#
#   bash scripts/prepare_gpu_run.sh [PIP]     (PIP default: python3 -m pip)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WHEELHOUSE="${WHEELHOUSE:-$ROOT/.wheelhouse}"
read -r -a PIP <<< "${1:-python3 -m pip}"
# lambda-networks: the module the drop-in layer and the headline benchmark compare against;
# einops: its one dependency, in case the host lacks it (gpu_check.sh installs a wheel only
# when its module is missing).
WHEELS=(lambda-networks==0.4.0 einops==0.8.2)
mkdir -p "$WHEELHOUSE"
"${PIP[@]}" download --no-deps --only-binary=:all: --python-version 3.12 --implementation py \
    --abi none --platform any -d "$WHEELHOUSE" "${WHEELS[@]}"
for wheel in "$WHEELHOUSE"/*.whl; do
    case "$(basename "$wheel")" in
        *-none-any.whl) ;;
        *) echo "not a pure-Python wheel: $wheel" >&2; exit 1 ;;
    esac
done
ls -l "$WHEELHOUSE"
echo "wheelhouse ready: $(du -sh "$WHEELHOUSE" | cut -f1) in $WHEELHOUSE"
