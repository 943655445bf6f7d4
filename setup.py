"""Builds lambda_kernels._C from csrc/: C++ kernels for the CPU, plus CUDA kernels when enabled.

CUDA is compiled when LAMBDA_KERNELS_WITH_CUDA=1, or, left unset/"auto", when the installed
torch is a CUDA build and nvcc is found. Whether a GPU is attached never matters: a GPU-less
machine with a CUDA torch and nvcc builds the CUDA kernels too.

Knobs:
  LAMBDA_KERNELS_WITH_CUDA   1 / 0 / auto (default auto)
  LAMBDA_KERNELS_CUDA_ARCHS  arch list, e.g. "9.0" (default "8.0;9.0+PTX":
                             PTX of the newest arch for later GPUs)
  LAMBDA_KERNELS_NO_EXT      1 to build a pure-Python package (kernels JIT-built on first use)
  MAX_JOBS                   parallel compile jobs (torch's knob)
"""
import os
import shutil
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(ROOT, "lambda_kernels"))
import _build_config as build_config  # noqa: E402  (shared with the JIT build in _ext.py)

# cpp_extension computes CUDA_HOME when imported: point it at the real toolkit first.
build_config.set_cuda_home_from_nvcc()

from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def extensions():
    if os.environ.get("LAMBDA_KERNELS_NO_EXT", "0") == "1":
        return []
    with_cuda, reason = build_config.cuda_wanted()
    print(f"lambda_kernels: building CUDA kernels: {with_cuda} ({reason})")
    sources = build_config.sources(ROOT, with_cuda)
    kwargs = dict(
        name="lambda_kernels._C",
        sources=[os.path.relpath(s, ROOT) for s in sources],
        include_dirs=build_config.include_dirs(ROOT, with_cuda),
        extra_compile_args={"cxx": build_config.cxx_flags(), "nvcc": build_config.nvcc_flags()},
        py_limited_api=False,
    )
    if with_cuda:
        os.environ["TORCH_CUDA_ARCH_LIST"] = build_config.cuda_arch_list()
        return [CUDAExtension(**kwargs)]
    kwargs["extra_compile_args"] = {"cxx": build_config.cxx_flags()}
    return [CppExtension(**kwargs)]


setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)},
)
