"""The registered torch.ops.lambda_kernels.* ops: kernels present, opcheck, fake shapes."""
import pytest
import torch

from harness import make_inputs
from lambda_kernels import _ext
from lambda_kernels._op_registrations import OP_NAMES

pytestmark = pytest.mark.skipif(_ext.load() is not None, reason=f"extension: {_ext.load()}")


def test_every_op_has_a_cpu_kernel():
    assert [op for op in OP_NAMES if not _ext.has_kernel(op, "CPU")] == []


def _op_samples(dtype):
    for shape in [dict(), dict(height=1, width=6, rh=5, rw=3, dim_u=1, heads=1),
                  dict(height=4, width=3, rh=9, rw=7, dim_u=3, heads=3, dim_v=5)]:
        q, keys, values, pos_table, _ = make_inputs(dtype=dtype, requires_grad=True, **shape)
        batch, heads, dim_k = q.shape[:3]
        lam = torch.randn(batch, dim_k, values.shape[2], dtype=dtype, requires_grad=True)
        lse = torch.ops.lambda_kernels.content_lambda(keys.detach(), values.detach())[1]
        d_lam_c = torch.randn_like(lam)
        dy = torch.randn(batch, heads, values.shape[2], *q.shape[3:], dtype=dtype)
        yield {
            "content_lambda": (keys, values),
            "content_lambda_backward": (d_lam_c, keys, values, lse),
            "lambda_output": (q, values, pos_table, lam),
            "lambda_output_backward": (dy, q, values, pos_table, lam),
        }


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("op_name", OP_NAMES)
def test_opcheck(op_name, dtype):
    op = getattr(torch.ops.lambda_kernels, op_name)
    for samples in _op_samples(dtype):
        args = samples[op_name]
        if op_name.endswith("backward"):
            args = tuple(a.detach() for a in args)
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("op_name", OP_NAMES)
def test_fake_impl_shapes_match_real_outputs(op_name):
    from torch._subclasses.fake_tensor import FakeTensorMode

    op = getattr(torch.ops.lambda_kernels, op_name)
    args = tuple(a.detach() for a in next(_op_samples(torch.float32))[op_name])
    real = op(*args)
    with FakeTensorMode() as mode:
        fake = op(*(mode.from_tensor(a) for a in args))
    real = real if isinstance(real, tuple) else (real,)
    fake = fake if isinstance(fake, tuple) else (fake,)
    assert [(t.shape, t.dtype) for t in real] == [(t.shape, t.dtype) for t in fake]


def test_cpp_checks_reject_bad_shapes_without_crashing():
    q, keys, values, pos_table, _ = make_inputs(dtype=torch.float32)
    with pytest.raises(RuntimeError, match="keys .* and values .* disagree"):
        torch.ops.lambda_kernels.content_lambda(keys, values[:, :, :, :2])
    lam = torch.zeros(q.shape[0], q.shape[2], values.shape[2])
    with pytest.raises(RuntimeError, match="pos_table must have shape"):
        torch.ops.lambda_kernels.lambda_output(q, values, pos_table[:2], lam)
    with pytest.raises(RuntimeError, match="lam must have shape"):
        torch.ops.lambda_kernels.lambda_output(q, values, pos_table, lam[:, :1])


@pytest.mark.parametrize("op_name", ["content_lambda", "lambda_output"])
def test_direct_op_gradcheck_float64(op_name):
    """The forward ops are differentiable when called directly (autograd registered on them)."""
    op = getattr(torch.ops.lambda_kernels, op_name)
    args = next(_op_samples(torch.float64))[op_name]
    assert torch.autograd.gradcheck(op, args)


def test_lambda_op_and_the_ops_called_directly_give_the_same_gradients():
    """One autograd path: lambda_op and a hand-written composition of torch.ops.lambda_kernels.*
    both differentiate through the formulas registered on the forward ops."""
    import lambda_kernels

    inputs = make_inputs(dtype=torch.float64, requires_grad=True, seed=4)
    q, keys, values, pos_table, bias = inputs
    dy = torch.randn(q.shape[0], q.shape[1], values.shape[2], *q.shape[3:], dtype=torch.float64)
    y_op = lambda_kernels.lambda_op(*inputs, backend="cpu")
    grads_op = torch.autograd.grad(y_op, inputs, dy)
    lam_c, _ = torch.ops.lambda_kernels.content_lambda(keys, values)
    y_direct = torch.ops.lambda_kernels.lambda_output(q, values, pos_table,
                                                      lam_c + bias.view(1, -1, 1))
    grads_direct = torch.autograd.grad(y_direct, inputs, dy)
    torch.testing.assert_close(y_op, y_direct, rtol=0, atol=0)
    for g_op, g_direct in zip(grads_op, grads_direct):
        torch.testing.assert_close(g_op, g_direct, rtol=0, atol=0)
        assert g_op.is_contiguous()
