"""The benchmark cases (presets.py, the one registry of shapes) seen as shapes of the lambda op,
(B, h, k, u, v, H, W, Rh, Rw), and the op's inputs for a shape: what lambda-bench's kernel
timing and the developer tools (lambda_kernels.tools) run.
"""
from __future__ import annotations

from typing import Union

import torch

from ..cost import table_size
from .presets import DTYPES, PRESETS, Case

OpShape = tuple  # (batch, heads, dim_k, dim_u, dim_v, height, width, table rows, table cols)


def case_shape(case: Case) -> OpShape:
    """(B, h, k, u, v, H, W, Rh, Rw) of a benchmark case: an r×r table for local context, the
    (2H-1)×(2W-1) table the layer passes for global context."""
    rh, rw = table_size(case.height, case.width, case.r)
    return (case.batch, case.heads, case.dim_k, case.dim_u, case.dim_v, case.height, case.width,
            rh, rw)


def named_cases() -> dict[str, Case]:
    """The benchmark cases the compile check knows by name: the GPU headline, the LambdaResNet
    stage shapes, and the global-context seed case."""
    named = {"headline": PRESETS["gpu-headline"].cases[0]}
    for case in PRESETS["resnet"].cases:
        named[f"resnet-{case.height}-r{case.r}"] = case
    named["global-64"] = next(c for c in PRESETS["seed"].cases if c.n is not None)
    return named


def named_shapes() -> dict[str, OpShape]:
    return {name: case_shape(case) for name, case in named_cases().items()}


def _dtype(dtype: Union[str, torch.dtype]) -> torch.dtype:
    return DTYPES[dtype] if isinstance(dtype, str) else dtype


def op_inputs(shape: OpShape, dtype, device="cpu", seed: int = 0) -> tuple:
    """(q, keys, values, pos_table, lam) of the lambda op for `shape`: seeded random values
    (the table and λ scaled down like trained ones), or empty tensors on the meta device."""
    b, heads, k, u, v, hh, ww, rh, rw = shape
    dtype = _dtype(dtype)
    if torch.device(device).type == "meta":
        def rand(*size, scale=1.0):
            return torch.empty(*size, device="meta", dtype=dtype)
    else:
        gen = torch.Generator(device="cpu").manual_seed(seed)

        def rand(*size, scale=1.0):
            return (torch.randn(*size, generator=gen) * scale).to(device=device, dtype=dtype)

    return (rand(b, heads, k, hh, ww), rand(b, u, k, hh, ww), rand(b, u, v, hh, ww),
            rand(rh, rw, k, u, scale=0.5), rand(b, k, v, scale=0.1))
