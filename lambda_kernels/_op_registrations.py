"""Registrations of the lambda ops made from Python: fake (meta) implementations, so that
torch.compile and opcheck can trace them without running a kernel, and the autograd formulas of
the two forward ops (register_autograd, used for the C++ ops and the Triton ops alike): the one
autograd path of every fused back end, whether the ops are called by lambda_op or directly."""
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


def register_autograd(namespace: str) -> None:
    """Derivatives of the two forward ops of `namespace` (the C++ ops in `lambda_kernels`, the
    Triton ops in `lambda_kernels_triton`) through that namespace's backward ops: the one place
    where a fused back end's backward is glued in. lambda_op composes the forward ops, so
    autograd sums the two value gradients (content and positional) by itself."""
    ops = getattr(torch.ops, namespace)

    def content_lambda_setup(ctx, inputs, output):
        keys, values = inputs
        ctx.save_for_backward(keys, values, output[1])

    def content_lambda_backward_formula(ctx, d_lam_c, d_stats):
        keys, values, stats = ctx.saved_tensors
        d_keys, d_values = ops.content_lambda_backward(d_lam_c, keys, values, stats)
        if d_stats is not None:  # d lse / d keys = σ
            sigma = torch.exp(keys.to(stats.dtype) - stats[..., None, None])
            d_keys = d_keys + (sigma * d_stats[..., None, None]).to(d_keys.dtype)
        return d_keys, d_values

    def lambda_output_setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def lambda_output_backward_formula(ctx, dy):
        return ops.lambda_output_backward(dy.contiguous(), *ctx.saved_tensors)

    torch.library.register_autograd(f"{namespace}::content_lambda",
                                    content_lambda_backward_formula,
                                    setup_context=content_lambda_setup)
    torch.library.register_autograd(f"{namespace}::lambda_output", lambda_output_backward_formula,
                                    setup_context=lambda_output_setup)


_registered = False


def register_fake_impls() -> None:
    global _registered
    if _registered:
        return
    for name in OP_NAMES:
        torch.library.register_fake(f"lambda_kernels::{name}")(globals()[name])
    register_autograd("lambda_kernels")
    _registered = True
