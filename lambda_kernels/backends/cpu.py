"""The `cpu` back end: the fused C++ kernels of csrc/cpu, compiled once per CPU instruction-set
level and run at the best level this CPU supports (its `variant`; see lambda_kernels.cpu_isa)."""
from __future__ import annotations

import torch

from .._cpu_isa import cpu_isa
from . import Backend, BadSetting, dtype_reason, register
from ._extension import extension_ops, extension_reason


def _can_run(device_type: str, dtype: torch.dtype):
    if device_type != "cpu":
        return f"runs on cpu tensors, got {device_type}"
    reason = extension_reason("CPU")
    if reason is not None:
        return reason
    try:  # a bad LAMBDA_KERNELS_CPU_ISA surfaces here, with what is wrong
        cpu_isa()
    except RuntimeError as error:
        return BadSetting(str(error).splitlines()[0])
    return dtype_reason(BACKEND, dtype)


BACKEND = Backend(
    name="cpu",
    description="fused C++ kernels for the CPU (runtime-dispatched AVX-512 / AVX2 / SSE2 / NEON)",
    priority=10,
    auto_devices=("cpu",),
    can_run=_can_run,
    ops=extension_ops,
    dtypes=(torch.float16, torch.bfloat16, torch.float32, torch.float64),
    variant=cpu_isa,
)
register(BACKEND)
