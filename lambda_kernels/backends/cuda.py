"""The `cuda` back end: the fused CUDA C++ kernels of csrc/cuda (CUDA cores), the fallback when
Triton cannot run."""
from __future__ import annotations

import torch

from . import Backend, describe_failure, dtype_reason, probe_reason, register
from ._extension import extension_ops, extension_reason


def _can_run(device_type: str, dtype: torch.dtype):
    if device_type != "cuda":
        return f"runs on cuda tensors, got {device_type}"
    if not torch.cuda.is_available():
        return "no CUDA device available"
    reason = extension_reason("CUDA", " (rebuild with LAMBDA_KERNELS_WITH_CUDA=1)")
    if reason is not None:
        return reason
    return dtype_reason(BACKEND, dtype) or probe_reason(BACKEND, device_type, dtype, _explain)


def _explain(exc: BaseException) -> str:
    if "no kernel image" in str(exc):
        major, minor = torch.cuda.get_device_capability()
        return (f"the extension has no kernel image for sm_{major}{minor} and no PTX older than "
                f"it; rebuild with LAMBDA_KERNELS_CUDA_ARCHS=\"{major}.{minor}\" (or an arch "
                "list ending in +PTX, the default)")
    return describe_failure(exc)


BACKEND = Backend(
    name="cuda",
    description="fused CUDA C++ kernels",
    priority=20,
    auto_devices=("cuda",),
    can_run=_can_run,
    ops=extension_ops,
)
register(BACKEND)
