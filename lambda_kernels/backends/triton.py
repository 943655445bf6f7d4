"""The Triton back end: fused Triton kernels (lambda_kernels/triton) registered as torch.library
triton_ops, so they compose with torch.compile.

Runs on CUDA tensors (float16, bfloat16, float32), and on CPU tensors through the Triton
interpreter when TRITON_INTERPRET=1 was set before triton was imported (float32 and float16:
the interpreter cannot do bfloat16 arithmetic). Slow on CPU: meant for testing.

On CUDA every contraction, the positional window included, is a tl.dot: tensor cores for
float16/bfloat16, IEEE fp32 products for float32. Tile sizes are autotuned once per shape and
the choices kept in Triton's on-disk cache (LAMBDA_KERNELS_TRITON_AUTOTUNE=0 runs the default
tiles). Preferred over the CUDA C++ back end on CUDA (priority 5 against 20); when its kernels
fail on a device (backends.probe_reason), `auto` falls back to the CUDA back end with a warning.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import sys

import torch

from . import Backend, FusedOps, dtype_reason, probe_reason, register

_GPU_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_INTERPRETER_DTYPES = (torch.float16, torch.float32)


def _triton_import_reason():
    try:
        importlib.import_module("triton")
    except Exception as exc:  # ImportError, or a broken install
        return f"triton is not importable ({type(exc).__name__}: {exc})"
    return None


def _env_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def interpreter_active() -> bool:
    """Whether our kernels run under the Triton CPU interpreter: decided when they were
    decorated (package import); before that, by TRITON_INTERPRET now."""
    package = sys.modules.get("lambda_kernels.triton")
    if package is not None and hasattr(package, "INTERPRETED"):
        return bool(package.INTERPRETED)
    return _env_interpret()


def _interpreter_reason():
    """Why the interpreter cannot run our kernels in this process, or None."""
    package = sys.modules.get("lambda_kernels.triton")
    if package is not None and getattr(package, "INTERPRETER_BROKEN", None):
        return package.INTERPRETER_BROKEN
    if package is None and "triton.language" in sys.modules:
        import triton.language as tl
        if type(tl.zeros).__name__ != "InterpretedFunction":
            return ("triton was imported before TRITON_INTERPRET=1 was set; set it before "
                    "anything imports triton")
    return None


def _can_run(device: str, dtype: torch.dtype):
    # Cheap checks first: never import triton (which fixes the interpreter mode for the whole
    # process) just to answer for a device or mode that cannot run anyway.
    if device == "cpu":
        if not interpreter_active():
            return "set TRITON_INTERPRET=1 to run Triton on CPU tensors"
        reason = _triton_import_reason() or _interpreter_reason()
        if reason is not None:
            return reason
        if dtype not in _INTERPRETER_DTYPES:
            return (f"dtype {dtype} unsupported by the Triton CPU interpreter "
                    "(supports torch.float16, torch.float32)")
        return probe_reason(BACKEND, device, dtype)
    if device != "cuda":
        return f"runs on cuda tensors (or cpu tensors under TRITON_INTERPRET=1), got {device}"
    reason = _triton_import_reason()
    if reason is not None:
        return reason
    if interpreter_active():
        return ("the Triton kernels were loaded under TRITON_INTERPRET=1 (CPU interpreter); "
                "unset it to run on CUDA tensors")
    if not torch.cuda.is_available():
        return "no CUDA device available"
    # Last, the kernels themselves on this device: Triton compiles them for the GPU at first use,
    # and a compile error (an untested architecture or Triton version) makes `auto` fall back.
    reason = dtype_reason(BACKEND, dtype)
    if reason is not None:
        return reason
    return probe_reason(BACKEND, device, dtype, setting=_default_tiles)


@contextlib.contextmanager
def _default_tiles():
    """The probe's tiny shape runs at the default tiles: autotuning it would compile and time
    every configuration for a shape nobody uses."""
    from ..triton._tiles import AUTOTUNE_ENV
    saved = os.environ.get(AUTOTUNE_ENV)
    os.environ[AUTOTUNE_ENV] = "0"
    try:
        yield
    finally:
        if saved is None:
            del os.environ[AUTOTUNE_ENV]
        else:
            os.environ[AUTOTUNE_ENV] = saved


def _ops() -> FusedOps:
    from ..triton import ops
    return FusedOps(ops.content_lambda, ops.content_lambda_backward, ops.lambda_output,
                    ops.lambda_output_backward, namespace=ops.NAMESPACE)


BACKEND = Backend(
    name="triton",
    description="fused Triton kernels (CUDA; CPU tensors under TRITON_INTERPRET=1)",
    priority=5,
    auto_devices=("cuda",),
    can_run=_can_run,
    ops=_ops,
    dtypes=_GPU_DTYPES,
)
register(BACKEND)
