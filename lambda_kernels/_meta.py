"""Output shapes of the lambda ops, used as their fake (meta) implementations so that
torch.compile and opcheck can trace them without running a kernel."""
from __future__ import annotations

import torch

OP_NAMES = ("content_lambda", "content_lambda_backward", "lambda_output", "lambda_output_backward")


def stats_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def content_lambda(keys, values):
    b, u, k = keys.shape[:3]
    lam_c = keys.new_empty((b, k, values.shape[2]))
    stats = keys.new_empty((b, u, k), dtype=stats_dtype(keys.dtype))
    return lam_c, stats


def content_lambda_backward(d_lam_c, keys, values, stats):
    return torch.empty_like(keys, memory_format=torch.contiguous_format), torch.empty_like(
        values, memory_format=torch.contiguous_format)


def lambda_output(q, values, pos_table, lam):
    b, h, _, hh, ww = q.shape
    return q.new_empty((b, h, values.shape[2], hh, ww))


def lambda_output_backward(dy, q, values, pos_table, lam):
    return (
        torch.empty_like(q, memory_format=torch.contiguous_format),
        torch.empty_like(values, memory_format=torch.contiguous_format),
        torch.empty_like(pos_table, memory_format=torch.contiguous_format),
        torch.empty_like(lam, memory_format=torch.contiguous_format),
    )


_registered = False


def register_fake_impls() -> None:
    global _registered
    if _registered:
        return
    for name in OP_NAMES:
        torch.library.register_fake(f"lambda_kernels::{name}")(globals()[name])
    _registered = True
