"""Which reduced-precision dtypes torch's CPU matrix products run natively on this CPU, and the
dtype a small product of the layer (outside the fused kernels) should run in.

torch's CPU GEMM (oneDNN) has bf16 only with AVX-512 BF16 / AMX / Arm BF16 and fp16 only with
AVX512-FP16 / AMX-FP16; elsewhere ATen falls back to a scalar loop 30-100x slower than its fp32
GEMM ((112×32)·(32×4096) bf16 on an AVX2 Zen 3: 94 ms against 0.9 ms in fp32). There the
product runs in fp32 on the operands' exact values and is rounded once (docs/design.md, "CPU:
instruction-set dispatch"): the same accumulation as the native route, at fp32 speed. The layer's
projection GEMM and the derivative formulas' content terms ask `product_dtype`.
"""
from __future__ import annotations

import torch


def _cpu_native_gemm() -> dict:
    """{dtype: whether torch's CPU matrix products run it natively} for bf16 and fp16: oneDNN's
    own check, which ATen's GEMM dispatch asks too (read once at import: the answer is the
    CPU's, and reading it inside torch.compile would break the graph)."""
    checks = {torch.bfloat16: "_is_mkldnn_bf16_supported",
              torch.float16: "_is_mkldnn_fp16_supported"}
    native = {}
    for dtype, name in checks.items():
        try:
            native[dtype] = bool(getattr(torch.ops.mkldnn, name)())
        except (AttributeError, RuntimeError):  # a build without oneDNN, or an older torch
            native[dtype] = True
    return native


_CPU_NATIVE_GEMM = _cpu_native_gemm()


def cpu_gemm_is_native(dtype: torch.dtype) -> bool:
    """Whether torch's CPU GEMMs and convolutions run `dtype` natively on this CPU (every
    dtype but bf16/fp16 does); where not, ATen's fallback is 30-100x slower than fp32."""
    return _CPU_NATIVE_GEMM.get(dtype, True)


def product_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The dtype a matrix product of `dtype` operands on `device` runs in: float32 on a CPU
    without a native `dtype` GEMM, `dtype` itself everywhere else."""
    if device.type == "cpu" and not cpu_gemm_is_native(dtype):
        return torch.float32
    return dtype
