"""The CPU instruction-set level the `cpu` back end runs.

The CPU kernels are compiled once per level — x86-64: `amx` (avx512_bf16 + AMX-BF16 tiles, when
the OS grants the tile state: bf16 inputs on tdpbf16ps tiles, other dtypes as avx512),
`avx512_bf16` (avx512 + AVX512_BF16: bf16 inputs on the vdpbf16ps micro-kernel, other dtypes as
avx512), `avx512` (AVX-512
F/BW/VL/DQ + FMA), `avx2` (AVX2 + FMA), `baseline` (SSE2); aarch64: `neon` — into one
extension, and the best level this CPU supports is chosen on first use. LAMBDA_KERNELS_CPU_ISA=<level> (read then)
forces a level; use_cpu_isa() switches in-process (tests, benchmarks). A level the CPU lacks is
refused with the missing features named.

    lambda_kernels.cpu_isa()             'avx2'
    lambda_kernels.cpu_isa_levels()      {'baseline': None, 'avx2': None,
                                          'avx512': 'this CPU lacks avx512f, ...'}
    with lambda_kernels.use_cpu_isa("baseline"): ...
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch

from . import _ext

ENV_CPU_ISA = "LAMBDA_KERNELS_CPU_ISA"


def _ops():
    reason = _ext.load()
    if reason is not None:
        raise RuntimeError(f"the CPU kernels are not available: {reason}")
    return torch.ops.lambda_kernels


def cpu_isa() -> str:
    """The level the CPU kernels use now (raises if LAMBDA_KERNELS_CPU_ISA names a bad one)."""
    return _ops().cpu_isa()


def cpu_isa_levels() -> dict[str, Optional[str]]:
    """Every level of this architecture, lowest first: None if this CPU runs it, else why not
    (what the CPU lacks, or that this build left the level out: a JIT build compiles the
    levels of the CPU it ran on)."""
    ops = _ops()
    return {level: (ops.cpu_isa_unsupported(level) or None) for level in ops.cpu_isa_levels()}


def set_cpu_isa(level: str) -> str:
    """Make `level` the active one; returns the previous. ValueError if it is unknown or this
    CPU lacks it."""
    levels = cpu_isa_levels()
    if level not in levels:
        raise ValueError(f"level must be one of {list(levels)} (this architecture's "
                         f"levels), got {level!r}")
    if levels[level] is not None:
        raise ValueError(f"cannot use the {level!r} CPU kernels: {levels[level]}")
    return _ops().set_cpu_isa(level)


@contextlib.contextmanager
def _forced(value: str, set_checked, restore) -> Iterator[str]:
    """`set_checked(value)` (which returns the previous setting) for the block, then
    `restore(previous)`."""
    previous = set_checked(value)
    try:
        yield value
    finally:
        restore(previous)


def use_cpu_isa(level: str) -> contextlib.AbstractContextManager:
    """Run the CPU kernels at `level` inside the block, then restore the previous level."""
    return _forced(level, set_cpu_isa, lambda previous: _ops().set_cpu_isa(previous))


# ---- positional method (csrc/cpu/positional_method.h)
ENV_CPU_POSITIONAL = "LAMBDA_KERNELS_CPU_POSITIONAL"
POSITIONAL_METHODS = ("auto", "direct", "spectral")


def cpu_positional_method() -> str:
    """How the CPU kernels take the positional sums: "auto" (per call and direction by cost
    estimate: lambda_kernels.cost.cpu_positional_method), "direct" (register-tiled window
    loops) or "spectral" (FFT convolutions of the λp association).
    LAMBDA_KERNELS_CPU_POSITIONAL=<method> (read on first use) forces one."""
    return _ops().cpu_positional_method()


def set_cpu_positional_method(method: str) -> str:
    """Force `method` (one of POSITIONAL_METHODS); returns the previous one."""
    if method not in POSITIONAL_METHODS:
        raise ValueError(f"method must be one of {POSITIONAL_METHODS}, got {method!r}")
    return _ops().set_cpu_positional_method(method)


def use_cpu_positional_method(method: str) -> contextlib.AbstractContextManager:
    """Run the CPU kernels' positional part by `method` inside the block, then restore."""
    return _forced(method, set_cpu_positional_method,
                   lambda previous: _ops().set_cpu_positional_method(previous))
