"""The Triton kernel families as torch.library ops, so torch.compile / torch.export trace them
and fake tensors get shapes without running a kernel:

    lambda_kernels_triton::content_lambda(keys, values) -> (lam_c, lse)
    lambda_kernels_triton::content_lambda_backward(d_lam_c, keys, values, lse)
        -> (d_keys, d_values)
    lambda_kernels_triton::lambda_output(q, values, pos_table, lam) -> y
    lambda_kernels_triton::lambda_output_backward(dy, q, values, pos_table, lam)
        -> (dq, d_values, d_pos_table, d_lam)

Compiled kernels: torch.library.triton_op with every launch through wrap_triton, so the compiler
sees (and can optimise around) the kernels; the fake implementation is the traced body itself.
Under the Triton interpreter (TRITON_INTERPRET=1), wrap_triton cannot trace interpreted kernels,
so the same bodies are registered as opaque torch.library.custom_op's with the fake
implementations of lambda_kernels._op_registrations: torch.compile still works, treating them
as black boxes.
Their kernels launch directly: only some torch versions let interpreted kernels through
wrap_triton (others fail on them), and an opaque op has nothing to trace.
"""
from __future__ import annotations

import torch
from torch.library import triton_op, wrap_triton

from .. import _op_registrations
from ._tiles import INTERPRETED, unwrap_kernel
from . import content_lambda as _content
from . import lambda_output as _output

NAMESPACE = "lambda_kernels_triton"


def _no_timing(kernel_call, quantiles):
    return [0.0] * len(quantiles)


def _launch_interpreted(kernel):
    """The kernel itself, its autotuner (if any) told not to time: under the interpreter it
    keeps one configuration (_tiles.choose_configs), and some Triton versions would still time
    that one through a GPU driver, which a CPU-only machine lacks."""
    autotuner, _, _ = unwrap_kernel(kernel)
    if autotuner is not None:
        autotuner.do_bench = _no_timing
    return kernel


_launch = wrap_triton if not INTERPRETED else _launch_interpreted


def _register(fn):
    name = f"{NAMESPACE}::{fn.__name__}"
    if not INTERPRETED:
        return triton_op(name, mutates_args=())(fn)
    op = torch.library.custom_op(name, mutates_args=())(fn)
    op.register_fake(getattr(_op_registrations, fn.__name__))
    return op


@_register
def content_lambda(keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _content.content_lambda(keys, values, launch=_launch)


@_register
def content_lambda_backward(d_lam_c: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                            lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _content.content_lambda_backward(d_lam_c, keys, values, lse, launch=_launch)


@_register
def lambda_output(q: torch.Tensor, values: torch.Tensor, pos_table: torch.Tensor,
                  lam: torch.Tensor) -> torch.Tensor:
    return _output.lambda_output(q, values, pos_table, lam, launch=_launch)


@_register
def lambda_output_backward(dy: torch.Tensor, q: torch.Tensor, values: torch.Tensor,
                           pos_table: torch.Tensor, lam: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _output.lambda_output_backward(dy, q, values, pos_table, lam, launch=_launch)


_op_registrations.register_autograd(NAMESPACE)
