#!/usr/bin/env bash
# The CPU sources built for aarch64 (Arm servers, Graviton, Apple silicon under Linux) with the
# flags of a portable install, on an x86-64 machine: every C++ file of the CPU build compiles
# with the cross compiler, and the NEON kernels pass the static disassembly checks (register
# tiles without stack access in their multiply-add loops). Needs g++-aarch64-linux-gnu
# (apt-get install g++-aarch64-linux-gnu) and torch installed in the running python.
#
#   bash scripts/check_arm_build.sh [build-dir]
set -euo pipefail
cd "$(dirname "$0")/.."
cxx=${CXX_AARCH64:-aarch64-linux-gnu-g++}
objdump=${OBJDUMP_AARCH64:-aarch64-linux-gnu-objdump}
out=${1:-build/aarch64}
mkdir -p "$out"

torch_dir=$(python -c 'import os, torch; print(os.path.dirname(torch.__file__))')
py_include=$(python -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
# The compile flags setup.py uses for a portable build (lambda_kernels/_build_config.py).
flags=$(env -u LAMBDA_KERNELS_NATIVE python -c 'from lambda_kernels import _build_config as b; print(" ".join(b.cxx_flags()))')
includes=(-I csrc -I "$torch_dir/include" -I "$torch_dir/include/torch/csrc/api/include"
          -I "$py_include")

status=0
for src in csrc/ops.cpp csrc/cpu/*.cpp; do
  obj="$out/$(basename "${src%.cpp}").o"
  echo "+ $cxx -std=c++20 $flags -fPIC -c $src -o $obj"
  # shellcheck disable=SC2086
  if ! "$cxx" -std=c++20 $flags -fPIC "${includes[@]}" -c "$src" -o "$obj"; then
    echo "FAILED: $src does not compile for aarch64" >&2
    status=1
  fi
done
if [ "$status" -eq 0 ]; then
  echo "+ python scripts/check_cpu_disassembly.py --objdump $objdump $out/isa_neon.o"
  python scripts/check_cpu_disassembly.py --objdump "$objdump" "$out/isa_neon.o" || status=1
fi
exit "$status"
