"""Build settings shared by setup.py and the JIT build in _ext.py (one place for flags/sources).

Imported by setup.py before torch.utils.cpp_extension, so it must not import torch at module
level.
"""
from __future__ import annotations

import glob
import os
import shutil


def _toolkit_roots_of(nvcc: str) -> list[str]:
    """Candidate toolkit roots for an nvcc on PATH: its real location, or, for a wrapper
    script (`exec /usr/local/cuda-13.0/bin/nvcc "$@"`), the nvcc it runs."""
    real = os.path.realpath(nvcc)
    roots = [os.path.dirname(os.path.dirname(real))]
    try:
        with open(real, "rb") as fh:
            head = fh.read(4096)
        if head.startswith(b"#!"):
            for token in head.decode(errors="ignore").split():
                if token.endswith("/bin/nvcc") and os.path.isabs(token):
                    roots.append(os.path.dirname(os.path.dirname(os.path.realpath(token))))
    except OSError:
        pass
    return roots + ["/usr/local/cuda"]


def set_cuda_home_from_nvcc() -> None:
    """Point CUDA_HOME at the toolkit that owns the nvcc on PATH. nvcc is often a symlink or a
    wrapper script, which makes torch guess a wrong root."""
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    nvcc = shutil.which("nvcc")
    if not nvcc:
        return
    for root in _toolkit_roots_of(nvcc):
        if os.path.exists(os.path.join(root, "include", "cuda_runtime.h")):
            os.environ["CUDA_HOME"] = root
            return


def cuda_wanted(default: str = "auto") -> tuple[bool, str]:
    """(build CUDA?, why) from LAMBDA_KERNELS_WITH_CUDA (1 / 0 / auto; `default` when unset)
    and what is installed, never the GPU. The one place the knob is read."""
    knob = os.environ.get("LAMBDA_KERNELS_WITH_CUDA", default).lower()
    if knob in ("0", "no", "false", "off"):
        return False, "LAMBDA_KERNELS_WITH_CUDA=0"
    import torch

    if torch.version.cuda is None:
        if knob in ("1", "yes", "true", "on"):
            raise RuntimeError("LAMBDA_KERNELS_WITH_CUDA=1 but the installed torch has no CUDA")
        return False, "installed torch is a CPU build"
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    nvcc = os.path.join(cuda_home, "bin", "nvcc") if cuda_home else shutil.which("nvcc")
    if not nvcc or not os.path.exists(nvcc):
        if knob in ("1", "yes", "true", "on"):
            raise RuntimeError("LAMBDA_KERNELS_WITH_CUDA=1 but nvcc was not found (set CUDA_HOME)")
        return False, "nvcc not found"
    return True, f"torch {torch.__version__} with CUDA {torch.version.cuda}, nvcc at {nvcc}"


# Machine code for Ampere and Hopper, plus PTX of the newest: the driver compiles that PTX at
# load time for any later GPU (Blackwell sm_100 / sm_120 and beyond), so the CUDA back end runs
# there instead of failing with "no kernel image". A GPU host builds only its own arch.
DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"


def cuda_arch_list() -> str:
    return os.environ.get("LAMBDA_KERNELS_CUDA_ARCHS", DEFAULT_CUDA_ARCHS)


# The x86-64 levels above avx2, lowest first, each one translation unit
# (csrc/cpu/isa_<level>.cpp), with the /proc/cpuinfo flags it needs beyond the level before it
# (avx2 + fma below avx512): the rule isa_dispatch.cpp checks through cpuid at run time, read
# here from the flags because a JIT build decides before the extension exists.
OPTIONAL_X86_LEVELS = {
    "avx512": ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq"),
    "avx512_bf16": ("avx512_bf16",),
    "amx": ("amx_tile", "amx_bf16"),
}


def cpu_flags() -> set[str]:
    """This CPU's flags (/proc/cpuinfo 'flags', or 'Features' on Arm; empty where unreadable)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return set(value.split())
    except OSError:
        pass
    return set()


def omitted_levels_for_this_cpu() -> list[str]:
    """The optional x86-64 levels a JIT build leaves out: those this CPU cannot run (from
    /proc/cpuinfo). A JIT build serves the machine it runs on, and those levels are the slowest
    to compile (on an AVX2 CPU, three of the five levels: the first build takes half the time);
    baseline and avx2 are always compiled, so lower levels can still be forced.
    LAMBDA_KERNELS_JIT_LEVELS=all compiles every level; so does a machine whose flags cannot be
    read (not Linux) or that is not x86-64. The installed (setup.py) build compiles every level."""
    import platform

    choice = os.environ.get("LAMBDA_KERNELS_JIT_LEVELS", "cpu").lower()
    if choice not in ("cpu", "all"):
        raise ValueError(f"LAMBDA_KERNELS_JIT_LEVELS must be 'cpu' (the levels this CPU runs, "
                         f"the default) or 'all', got {choice!r}")
    if choice == "all" or platform.machine().lower() not in ("x86_64", "amd64"):
        return []
    flags = cpu_flags()
    return levels_lacking(flags) if flags else []


def levels_lacking(flags: set[str]) -> list[str]:
    """The optional x86-64 levels a CPU with these /proc/cpuinfo flags cannot run (a level
    needs the flags of every level below it too)."""
    needed: set[str] = set()
    lacking = []
    for level, own in OPTIONAL_X86_LEVELS.items():
        needed.update(own)
        if not flags.issuperset(needed):
            lacking.append(level)
    return lacking


def level_macros(omitted: list[str]) -> list[str]:
    """-D flags telling csrc/cpu/isa_dispatch.cpp which optional levels are not compiled."""
    return [f"-DLK_WITHOUT_{level.upper()}" for level in omitted]


def sources(root: str, with_cuda: bool, omitted_levels: list[str] = ()) -> list[str]:
    csrc = os.path.join(root, "csrc")
    skip = {os.path.join(csrc, "cpu", f"isa_{level}.cpp") for level in omitted_levels}
    files = [os.path.join(csrc, "ops.cpp")] + [
        f for f in sorted(glob.glob(os.path.join(csrc, "cpu", "*.cpp"))) if f not in skip]
    if with_cuda:
        files += sorted(glob.glob(os.path.join(csrc, "cuda", "*.cu")))
    return files


def include_dirs(root: str, with_cuda: bool) -> list[str]:
    dirs = [os.path.join(root, "csrc")]
    if with_cuda:
        # Headers of the pip `nvidia` packages torch depends on (e.g. cusparse.h, which
        # ATen/cuda headers include and a bare system toolkit may lack).
        try:
            import nvidia

            for base in nvidia.__path__:
                dirs += sorted(glob.glob(os.path.join(base, "cu*", "include")))
                dirs += sorted(glob.glob(os.path.join(base, "*", "include")))
        except ImportError:
            pass
    return dirs


def cxx_flags() -> list[str]:
    # Portable by default: no -march flag. The CPU kernels are compiled once per instruction-set
    # level by target pragmas in csrc/cpu/isa_*.cpp and chosen at run time, so one binary runs on
    # any CPU of its architecture and uses the best level there. -ffp-contract=fast lets a·b + c
    # become one FMA instruction where the level has it.
    flags = ["-O3", "-fopenmp", "-DNDEBUG", "-ffp-contract=fast"]
    if os.environ.get("LAMBDA_KERNELS_NATIVE", "0") == "1":
        flags.append("-march=native")  # opt-in: tune everything else for the build machine
    return flags


def nvcc_flags() -> list[str]:
    return ["-O3", "--expt-relaxed-constexpr", "-lineinfo", "-DNDEBUG"]
