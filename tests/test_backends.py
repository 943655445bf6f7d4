"""Every back end (tests/harness.py: TARGETS) against the float64 reference over one table of
shapes, in every dtype it supports, with one tolerance rule — outputs and gradients, and
second-order gradients and jvp (a derivative lost on the way is a silent zero that fails); plus,
for each, bit-identical repeated backward passes, float64 gradcheck and gradgradcheck where it
has float64, vmap against a loop, and opcheck of its ops."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from harness import QUICK_SHAPES, SHAPES, TARGETS, Target, check_against_reference, \
    check_second_order_against_reference, opcheck_samples, target_dtype_shape_params


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


# Borders for the higher-order checks: rectangular map and table with bias, u = 4 with a table
# larger than the image (logit association), global context, 8 heads (λp association).
SECOND_ORDER_SHAPES = [SHAPES[0], SHAPES[4], SHAPES[6], SHAPES[11]]


def _second_order_params():
    params = []
    for t in TARGETS:
        for i, dtype in enumerate(t.dtypes):
            if t.slow:  # an interpreter: its first dtype on two cheap shapes
                shapes = [] if i else QUICK_SHAPES[:2]
            elif dtype in (torch.float64, torch.float32):
                shapes = SECOND_ORDER_SHAPES
            else:
                shapes = SECOND_ORDER_SHAPES[:1]
            params += [pytest.param(t, dtype, shape, id=(
                f"{t.id}-{str(dtype).replace('torch.', '')}-{shape.id}")) for shape in shapes]
    return params


@pytest.mark.parametrize("target,dtype,shape", _second_order_params())
def test_second_order_gradients_and_jvp_match_the_reference(target, dtype, shape):
    _require(target)
    check_second_order_against_reference(target, shape.inputs(dtype, target.device, seed=4),
                                         dtype)


@pytest.mark.parametrize("target", [t for t in TARGETS if torch.float64 in t.dtypes],
                         ids=lambda t: t.id)
def test_gradgradcheck_float64(target):
    _require(target)
    small = dataclasses.replace(SHAPES[0], batch=1, height=3, width=4, dim_v=2)
    inputs = [t for t in small.inputs(torch.float64, target.device, requires_grad=True, seed=8)
              if t is not None]
    with target.activate():
        assert torch.autograd.gradgradcheck(lambda *args: target.run(*args), inputs, eps=1e-6,
                                            atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.id)
def test_vmap_matches_a_loop(target):
    """torch.func.vmap over the op (mapped dim folded into the batch), its gradient per mapped
    sample (vmap of grad: the table gradient must not mix samples), equal to a Python loop."""
    _require(target)
    dtype = target.dtypes[0] if torch.float64 not in target.dtypes else torch.float64
    # an interpreter: a cheap shape (the batching rule, not the kernel, is under test here)
    shape = next(s for s in QUICK_SHAPES if s.bias and min(s.height, s.width) > 1) \
        if target.slow else SHAPES[0]
    stacked = [torch.stack(ts) if ts[0] is not None else None for ts in zip(
        *[shape.inputs(dtype, target.device, seed=20 + i) for i in range(3)])]
    # the table is shared: mapped over the activations only
    q, keys, values, pos_table, bias = stacked
    pos_table, bias = pos_table[0], bias[0]
    with target.activate():
        run = lambda q, k, v: target.run(q, k, v, pos_table, bias)  # noqa: E731
        mapped = torch.func.vmap(run)(q, keys, values)
        looped = torch.stack([run(q[i], keys[i], values[i]) for i in range(3)])
        torch.testing.assert_close(mapped, looped, rtol=1e-5, atol=1e-5)

        def loss(table, q, k, v):
            return target.run(q, k, v, table, bias).square().sum()

        per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0, 0))(
            pos_table, q, keys, values)
        for i in range(3):
            table = pos_table.detach().clone().requires_grad_()
            expected, = torch.autograd.grad(loss(table, q[i], keys[i], values[i]), table)
            torch.testing.assert_close(per_sample[i], expected, rtol=1e-5, atol=1e-5)
