"""Every back end (tests/harness.py: TARGETS) against the float64 reference over one table of
shapes, in every dtype it supports, with one tolerance rule; plus, for each, bit-identical
repeated backward passes, float64 gradcheck where it has float64, and opcheck of its ops."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from harness import SHAPES, TARGETS, Target, check_against_reference, opcheck_samples, \
    target_dtype_shape_params


def _require(target: Target, dtype=None):
    reason = target.skip_reason()
    if reason is not None:
        pytest.skip(f"{target.id}: {reason}")


@pytest.mark.parametrize("target,dtype,shape", target_dtype_shape_params())
def test_outputs_and_gradients_match_the_reference(target, dtype, shape):
    _require(target)
    check_against_reference(target, shape.inputs(dtype, target.device), dtype)


def _gradients(target, inputs, dy):
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in inputs]
    y = target.run(*leaves)
    return torch.autograd.grad(y, [t for t in leaves if t is not None], dy)


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.id)
def test_backward_is_bit_identical_across_repeats_and_threads(target):
    """Fused back ends reduce in a fixed order over a fixed partition: the same bits on every
    call and for any thread count. (The reference, on library kernels, only per thread count.)"""
    _require(target)
    # global-context table: every reduction over the batch and positions
    shape = SHAPES[0] if target.slow else SHAPES[6]
    inputs = shape.inputs(torch.float32, target.device, seed=5)
    dy = torch.randn(shape.output_shape(), generator=torch.Generator().manual_seed(6)).to(
        target.device)
    threads = torch.get_num_threads()
    # Thread counts matter to the CPU kernels only (the reference: library kernels that may
    # split reductions per thread count; Triton: the GPU or its interpreter).
    thread_counts = sorted({1, 2, threads}) if target.backend == "cpu" else [threads]
    first = _gradients(target, inputs, dy)
    try:
        for n in thread_counts:
            torch.set_num_threads(n)
            for again in (_gradients(target, inputs, dy), _gradients(target, inputs, dy)):
                for a, b in zip(first, again):
                    assert torch.equal(a, b), f"{target.id}: not bit-identical with {n} threads"
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("target", [t for t in TARGETS if torch.float64 in t.dtypes],
                         ids=lambda t: t.id)
@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[4], SHAPES[11]], ids=lambda s: s.id)
def test_gradcheck_float64(target, shape):
    _require(target)
    # Shrunk so numerical differentiation stays cheap (one forward per input element), keeping
    # the border each shape is for: tables larger than the image, u = 4, heads > 1.
    small = dataclasses.replace(shape, batch=1, height=min(shape.height, 3),
                                width=min(shape.width, 4), dim_k=min(shape.dim_k, 3),
                                dim_v=min(shape.dim_v, 3), rh=min(shape.rh, 7),
                                rw=min(shape.rw, 9))
    inputs = [t for t in small.inputs(torch.float64, target.device, requires_grad=True, seed=7)
              if t is not None]
    assert torch.autograd.gradcheck(lambda *args: target.run(*args), inputs, eps=1e-6,
                                    atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("op_name", ["content_lambda", "content_lambda_backward",
                                     "lambda_output", "lambda_output_backward"])
@pytest.mark.parametrize("target", [t for t in TARGETS if t.backend != "reference"],
                         ids=lambda t: t.id)
def test_opcheck(target, op_name):
    """Schemas, fake implementations and autograd registrations of the back end's ops."""
    _require(target)
    op = getattr(target.ops(), op_name)
    for dtype in [d for d in (torch.float32, torch.float64) if d in target.dtypes]:
        for args in opcheck_samples(target.device, dtype, few=target.slow)[op_name]:
            args = args if op_name.endswith("backward") else tuple(
                a.detach().requires_grad_() for a in args)
            with target.activate():
                torch.library.opcheck(op, args)
