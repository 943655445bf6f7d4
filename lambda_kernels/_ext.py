"""Loads the compiled kernels (lambda_kernels._C) or JIT-builds them with ninja on first use.

`load()` returns None when the kernels are available, else the reason they are not (kept, so
every later call answers at once). Importing this module never builds anything.

Knobs:
  LAMBDA_KERNELS_JIT=0          never JIT-build; a missing _C stays missing
  LAMBDA_KERNELS_BUILD_DIR      where the JIT build goes (default ~/.cache/lambda_kernels/<key>)
  LAMBDA_KERNELS_JIT_LEVELS=all the JIT build compiles every CPU level, not only this CPU's
"""
from __future__ import annotations

import hashlib
import importlib
import os
import sys
import threading

import torch

from . import _build_config

_lock = threading.Lock()
_state: dict[str, object] = {}
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ops_registered() -> bool:
    return hasattr(torch.ops.lambda_kernels, "content_lambda")


def _jit_build() -> None:
    from torch.utils import cpp_extension

    if not os.path.isdir(os.path.join(_PACKAGE_ROOT, "csrc")):
        raise RuntimeError("sources (csrc/) are not shipped with this install; reinstall from source")
    # A JIT build compiles CUDA only when asked (LAMBDA_KERNELS_WITH_CUDA=1): nvcc takes minutes.
    with_cuda, _ = _build_config.cuda_wanted(default="0")
    omitted = _build_config.omitted_levels_for_this_cpu()
    sources = _build_config.sources(_PACKAGE_ROOT, with_cuda, omitted)
    digest = hashlib.sha1(" ".join(omitted).encode())  # a cache shared by other CPUs: own key
    for path in sources + sorted(
        os.path.join(d, f) for d, _, fs in os.walk(os.path.join(_PACKAGE_ROOT, "csrc")) for f in fs
    ):
        with open(path, "rb") as fh:
            digest.update(path.encode() + fh.read())
    digest.update(torch.__version__.encode())
    build_dir = os.environ.get("LAMBDA_KERNELS_BUILD_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "lambda_kernels", digest.hexdigest()[:16]
    )
    os.makedirs(build_dir, exist_ok=True)
    leaving_out = (f"; leaving out the CPU levels this CPU lacks: {', '.join(omitted)} "
                   "(LAMBDA_KERNELS_JIT_LEVELS=all builds them)" if omitted else "")
    print(f"lambda_kernels: compiled kernels not installed; JIT-building them in {build_dir} "
          f"(once, a few minutes){leaving_out}", file=sys.stderr)
    if with_cuda:
        _build_config.set_cuda_home_from_nvcc()
    cpp_extension.load(
        name="lambda_kernels_jit",
        sources=sources,
        extra_include_paths=_build_config.include_dirs(_PACKAGE_ROOT, with_cuda),
        extra_cflags=_build_config.cxx_flags() + _build_config.level_macros(omitted),
        extra_cuda_cflags=_build_config.nvcc_flags() if with_cuda else None,
        build_directory=build_dir,
        is_python_module=False,
        verbose=False,
    )


def load() -> str | None:
    """None if torch.ops.lambda_kernels.* have kernels here; otherwise why not."""
    with _lock:
        if "reason" in _state:
            return _state["reason"]  # type: ignore[return-value]
        reason = None
        try:
            importlib.import_module(f"{__package__}._C")  # registers the C++ ops
        except ImportError as compiled_error:
            if os.environ.get("LAMBDA_KERNELS_JIT", "1") == "0":
                reason = f"compiled extension not installed ({compiled_error}); JIT disabled"
            else:
                try:
                    _jit_build()
                except Exception as build_error:  # the compiler's message is the reason
                    reason = f"compiled extension not installed and JIT build failed: {build_error}"
        if reason is None and not _ops_registered():
            reason = "extension loaded but registered no lambda_kernels ops"
        if reason is None:
            from . import _op_registrations

            _op_registrations.register_fake_impls()
        _state["reason"] = reason
        return reason


# (op, dispatch key) pairs found to have a kernel: a registered kernel stays registered, so a
# yes is asked of the dispatcher once (back-end selection asks on every call of the layer).
_kernels_found: set[tuple[str, str]] = set()


def has_kernel(op_name: str, dispatch_key: str) -> bool:
    """Whether torch.ops.lambda_kernels.<op_name> has a kernel for `dispatch_key` (e.g. "CUDA")."""
    if (op_name, dispatch_key) in _kernels_found:
        return True
    found = torch._C._dispatch_has_kernel_for_dispatch_key(f"lambda_kernels::{op_name}",
                                                           dispatch_key)
    if found:
        _kernels_found.add((op_name, dispatch_key))
    return found
