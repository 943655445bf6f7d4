#!/usr/bin/env bash
# The CPU sources built for aarch64 (Arm servers, Graviton, Apple silicon under Linux) with the
# flags of a portable install, on an x86-64 machine: every C++ file of the CPU build compiles
# with the cross compiler, and the NEON kernels pass the static disassembly checks (register
# tiles without stack access in their multiply-add loops). Needs g++-aarch64-linux-gnu
# (apt-get install g++-aarch64-linux-gnu) and torch installed in the running python.
#
#   bash scripts/check_arm_build.sh [build-dir]
#
# With ARM_TORCH_DIR (an aarch64 torch package directory), ARM_PY_INCLUDES (-I flags of an
# aarch64 Python's headers) and ARM_LINK (an output path), the objects are compiled against
# that torch and linked into a loadable extension (scripts/check_arm_run.sh runs it).
set -euo pipefail
cd "$(dirname "$0")/.."
cxx=${CXX_AARCH64:-aarch64-linux-gnu-g++}
objdump=${OBJDUMP_AARCH64:-aarch64-linux-gnu-objdump}
out=${1:-build/aarch64}
mkdir -p "$out"

torch_dir=${ARM_TORCH_DIR:-$(python -c 'import os, torch; print(os.path.dirname(torch.__file__))')}
py_includes=${ARM_PY_INCLUDES:--I $(python -c 'import sysconfig; print(sysconfig.get_paths()["include"])')}
# The compile flags setup.py uses for a portable build (lambda_kernels/_build_config.py).
# (The module by its path: the package itself imports torch, which an ARM_TORCH_DIR run lacks.)
flags=$(env -u LAMBDA_KERNELS_NATIVE python -c 'import importlib.util as u
spec = u.spec_from_file_location("build_config", "lambda_kernels/_build_config.py")
b = u.module_from_spec(spec); spec.loader.exec_module(b); print(" ".join(b.cxx_flags()))')
# What torch.utils.cpp_extension defines for an extension named _C (torch's wheels use the
# C++11 ABI since 2.7).
defines="-DTORCH_EXTENSION_NAME=_C -DTORCH_API_INCLUDE_EXTENSION_H -D_GLIBCXX_USE_CXX11_ABI=1"
includes=(-I csrc -I "$torch_dir/include" -I "$torch_dir/include/torch/csrc/api/include")

compile() {  # src obj
  # shellcheck disable=SC2086
  if ! "$cxx" -std=c++20 $flags $defines -fPIC "${includes[@]}" $py_includes -c "$1" -o "$2"; then
    echo "FAILED: $1 does not compile for aarch64" >&2
    return 1
  fi
}

# MAX_JOBS files at a time (as setup.py's build)
status=0
objects=()
pids=()
for src in csrc/ops.cpp csrc/cpu/*.cpp; do
  obj="$out/$(basename "${src%.cpp}").o"
  objects+=("$obj")
  echo "+ $cxx -std=c++20 $flags -fPIC -c $src -o $obj"
  compile "$src" "$obj" &
  pids+=($!)
  if [ "${#pids[@]}" -ge "${MAX_JOBS:-2}" ]; then
    wait "${pids[0]}" || status=1
    pids=("${pids[@]:1}")
  fi
done
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
if [ "$status" -eq 0 ]; then
  echo "+ python scripts/check_cpu_disassembly.py --objdump $objdump $out/isa_neon.o"
  python scripts/check_cpu_disassembly.py --objdump "$objdump" "$out/isa_neon.o" || status=1
fi
if [ "$status" -eq 0 ] && [ -n "${ARM_LINK:-}" ]; then
  echo "+ $cxx -shared -o $ARM_LINK (objects) -L $torch_dir/lib -lc10 -ltorch -ltorch_cpu -ltorch_python"
  "$cxx" -shared -fopenmp -o "$ARM_LINK" "${objects[@]}" -L "$torch_dir/lib" -lc10 -ltorch \
    -ltorch_cpu -ltorch_python -Wl,-rpath,"$torch_dir/lib" || status=1
fi
exit "$status"
