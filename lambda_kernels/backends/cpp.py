"""The compiled C++ back ends: `cpu` (csrc/cpu) and `cuda` (csrc/cuda).

Both call torch.ops.lambda_kernels.*; the dispatcher picks the CPU or CUDA kernel by device,
so they differ only in where they may run and which dispatch key must have kernels.
"""
from __future__ import annotations

import torch

from .. import _ext
from .._meta import OP_NAMES
from . import Backend, FusedOps, dtype_reason, register


def _ops() -> FusedOps:
    ns = torch.ops.lambda_kernels
    return FusedOps(ns.content_lambda, ns.content_lambda_backward, ns.lambda_output,
                    ns.lambda_output_backward)


def _make_can_run(device_type: str, dispatch_key: str, backend_name: str):
    def can_run(input_device_type, dtype):
        if input_device_type != device_type:
            return f"runs on {device_type} tensors, got {input_device_type}"
        if device_type == "cuda" and not torch.cuda.is_available():
            return "no CUDA device available"
        reason = _ext.load()
        if reason is not None:
            return reason
        missing = [op for op in OP_NAMES if not _ext.has_kernel(op, dispatch_key)]
        if missing:
            return (f"extension built without {dispatch_key} kernels for {', '.join(missing)}"
                    + (" (rebuild with LAMBDA_KERNELS_WITH_CUDA=1)" if device_type == "cuda" else ""))
        return dtype_reason(BACKENDS[backend_name], dtype)

    return can_run


BACKENDS = {
    "cpu": Backend(
        name="cpu",
        description="fused C++ kernels for the CPU (at::parallel_for, vectorised)",
        priority=10,
        auto_devices=("cpu",),
        can_run=_make_can_run("cpu", "CPU", "cpu"),
        ops=_ops,
        dtypes=(torch.float16, torch.bfloat16, torch.float32, torch.float64),
    ),
    "cuda": Backend(
        name="cuda",
        description="fused CUDA C++ kernels",
        priority=20,
        auto_devices=("cuda",),
        can_run=_make_can_run("cuda", "CUDA", "cuda"),
        ops=_ops,
    ),
}
for _backend in BACKENDS.values():
    register(_backend)
