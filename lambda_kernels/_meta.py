"""Registrations of the C++ lambda ops made from Python: fake (meta) implementations, so that
torch.compile and opcheck can trace them without running a kernel, and autograd formulas for
the two forward ops, so that calling torch.ops.lambda_kernels.* directly is differentiable too
(the layer goes through functional.LambdaFunction, which calls the backward ops itself)."""
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


def _content_lambda_setup(ctx, inputs, output):
    keys, values = inputs
    ctx.save_for_backward(keys, values, output[1])


def _content_lambda_backward(ctx, d_lam_c, d_stats):
    keys, values, stats = ctx.saved_tensors
    d_keys, d_values = torch.ops.lambda_kernels.content_lambda_backward(d_lam_c, keys, values,
                                                                        stats)
    if d_stats is not None:  # d lse / d keys = σ
        sigma = torch.exp(keys.to(stats.dtype) - stats[..., None, None])
        d_keys = d_keys + (sigma * d_stats[..., None, None]).to(d_keys.dtype)
    return d_keys, d_values


def _lambda_output_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _lambda_output_backward(ctx, dy):
    return torch.ops.lambda_kernels.lambda_output_backward(dy.contiguous(), *ctx.saved_tensors)


_registered = False


def register_fake_impls() -> None:
    global _registered
    if _registered:
        return
    for name in OP_NAMES:
        torch.library.register_fake(f"lambda_kernels::{name}")(globals()[name])
    torch.library.register_autograd("lambda_kernels::content_lambda", _content_lambda_backward,
                                    setup_context=_content_lambda_setup)
    torch.library.register_autograd("lambda_kernels::lambda_output", _lambda_output_backward,
                                    setup_context=_lambda_output_setup)
    _registered = True
