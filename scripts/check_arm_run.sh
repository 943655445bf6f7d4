#!/usr/bin/env bash
# The NEON level run, not only compiled: on an x86-64 machine, build the extension for aarch64
# (scripts/check_arm_build.sh against an aarch64 torch) and run the tests under qemu-user, so
# the NEON kernels are compared with the reference like every other level (outputs, gradients,
# second order, gradcheck, both positional methods, in every dtype).
#
#   bash scripts/check_arm_run.sh [pytest arguments]       (default: the ARM_TESTS files)
#
# Needs root (or sudo) and apt for qemu-user, the cross compiler and the arm64 Python runtime
# (Debian packages unpacked into a private root, not installed), pip for aarch64 wheels, and
# binfmt_misc (qemu-aarch64 is registered there, and stays registered, so that the tests'
# subprocesses of the arm64 Python run too). Exit status 3: this machine cannot set that up
# (the check did not run); otherwise the build's or pytest's.
# The torch is PyPI's newest aarch64 wheel without CUDA dependencies (ARM_TORCH_VERSION; later
# aarch64 wheels on PyPI are CUDA builds that need the CUDA libraries to import): older than
# the torch the package asks for on x86, which the kernels do not depend on. qemu runs
# the code, not the speed: no timing here means anything.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
work=${ARM_WORK:-$repo/build/aarch64-run}
torch_version=${ARM_TORCH_VERSION:-2.9.1}
export QEMU_CPU=${QEMU_CPU:-neoverse-n1}  # a Graviton2-class core: ASIMD, no SVE
# the kernels' own tests: every op against the reference (both positional methods, every dtype,
# first and second order), the spectral method, bad input, the level's selection
tests=${ARM_TESTS:-tests/test_backends.py tests/test_spectral.py tests/test_ops.py
  tests/test_validation.py tests/test_cpu_isa.py}
mkdir -p "$work"
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)

root=$work/root
site=$work/site-packages
if [ "${1:-}" = "--setup" ]; then
  # 1. qemu-user and the cross compiler
  if ! command -v qemu-aarch64 >/dev/null || ! command -v aarch64-linux-gnu-g++ >/dev/null ||
     [ ! -e /usr/lib/binfmt.d/qemu-aarch64.conf ]; then
    echo "+ apt-get install -y qemu-user qemu-user-binfmt g++-aarch64-linux-gnu"
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq qemu-user qemu-user-binfmt g++-aarch64-linux-gnu >/dev/null
  fi

  # 2. an arm64 Python (Debian's, the same version as the host distribution's) in a private root
  if [ ! -x "$root/usr/bin/python3" ]; then
    if ! dpkg --print-foreign-architectures | grep -qx arm64; then
      echo "+ dpkg --add-architecture arm64 && apt-get update"
      $SUDO dpkg --add-architecture arm64
      $SUDO apt-get update -qq
    fi
    pyver=$(apt-cache show python3-minimal:arm64 | sed -n 's/^Pre-Depends: \(python3\.[0-9]*\)-minimal.*/\1/p' | head -n 1)
    [ -n "$pyver" ] || { echo "no arm64 python3-minimal package found by apt" >&2; exit 1; }
    mkdir -p "$work/debs" "$root"
    packages=("$pyver-minimal" "lib$pyver-minimal" "lib$pyver-stdlib" "lib$pyver-dev" "$pyver-dev"
              libc6 libstdc++6 libgcc-s1 libgomp1 zlib1g libexpat1 libffi8 libssl3 libbz2-1.0
              liblzma5 libuuid1 libncursesw6 libtinfo6 libreadline8 libsqlite3-0 libcrypt1)
    echo "+ apt-get download ${packages[*]/%/:arm64} (unpacked into $root)"
    (cd "$work/debs" && for p in "${packages[@]}"; do
      apt-get download -qq "$p:arm64" >/dev/null 2>&1 || { echo "apt-get download $p:arm64 failed" >&2; exit 1; }
    done)
    for deb in "$work"/debs/*.deb; do dpkg -x "$deb" "$root"; done
    ln -sf "$pyver" "$root/usr/bin/python3"
  fi
  # The kernel runs aarch64 executables through qemu (binfmt_misc), so the tests' own
  # subprocesses (sys.executable) run too; qemu finds the arm64 libraries under QEMU_LD_PREFIX.
  if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    echo "+ register qemu-aarch64 with binfmt_misc (/usr/lib/binfmt.d/qemu-aarch64.conf)"
    mountpoint -q /proc/sys/fs/binfmt_misc || $SUDO mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    $SUDO sh -c 'cat /usr/lib/binfmt.d/qemu-aarch64.conf > /proc/sys/fs/binfmt_misc/register'
  fi
  export QEMU_LD_PREFIX=$root
  pyver=$("$root/usr/bin/python3" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')

  # 3. aarch64 wheels: torch and what the tests import
  if [ ! -e "$site/.installed" ]; then
    echo "+ pip install --target $site --platform manylinux_2_28_aarch64 torch==$torch_version ..."
    # torch without its dependencies: pip evaluates their markers for this (x86-64) machine and
    # would ask for x86 CUDA packages; its own (pure Python) requirements are listed instead.
    python -m pip install -q --target "$site" --platform manylinux_2_28_aarch64 \
      --only-binary=:all: --python-version "$pyver" --no-deps "torch==$torch_version"
    python -m pip install -q --target "$site" --platform manylinux_2_28_aarch64 \
      --only-binary=:all: --python-version "$pyver" typing_extensions sympy networkx jinja2 \
      fsspec filelock numpy pytest pytest-benchmark hypothesis einops rich
    python -m pip install -q --target "$site" --no-deps lambda-networks==0.4.0
    touch "$site/.installed"
  fi
  exit 0
fi
if ! bash "$0" --setup; then
  echo "NOT RUN: the aarch64 test run (qemu-user, an arm64 Python or binfmt_misc could not be set up here)" >&2
  exit 3
fi
export QEMU_LD_PREFIX=$root
python_arm=("$root/usr/bin/python3")
pyver=$("${python_arm[@]}" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
arch_include=$root/usr/include/aarch64-linux-gnu/python$pyver

# 4. the extension for aarch64, in a copy of the tree (the checkout keeps its own build)
tree=$work/tree
rm -rf "$tree" && mkdir -p "$tree"
git ls-files -z lambda_kernels tests scripts pyproject.toml | xargs -0 cp --parents -t "$tree"
echo "+ ARM_TORCH_DIR=$site/torch ARM_LINK=... bash scripts/check_arm_build.sh $work/objects"
ARM_TORCH_DIR=$site/torch ARM_PY_INCLUDES="-I $root/usr/include -I $arch_include -I $root/usr/include/python$pyver" \
  ARM_LINK="$tree/lambda_kernels/_C.cpython-${pyver/./}-aarch64-linux-gnu.so" \
  bash scripts/check_arm_build.sh "$work/objects"

# 5. the tests, under qemu (the level is neon: the only one an aarch64 build has)
cd "$tree"
# What an aarch64 machine's `objdump` is (tests/test_cpu_isa.py disassembles the extension).
mkdir -p "$work/bin" && ln -sf "$(command -v aarch64-linux-gnu-objdump)" "$work/bin/objdump"
export PATH=$work/bin:$PATH
args=("$@")
[ ${#args[@]} -eq 0 ] && read -r -d "" -a args <<< "$tests -q -p no:cacheprovider" || true
echo "+ (aarch64, under qemu) python$pyver -m pytest ${args[*]}"
LAMBDA_KERNELS_JIT=0 PYTHONPATH="$site:$tree:$tree/tests" "${python_arm[@]}" -m pytest "${args[@]}"
