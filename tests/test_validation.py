"""Bad input raises a clear TypeError/ValueError naming the argument and the expected shape."""
import pytest
import torch

from harness import make_inputs
from lambda_kernels import LambdaLayer, lambda_op


def _inputs(**kw):
    return list(make_inputs(dtype=torch.float32, **kw))


def _replace(index, value, **kw):
    args = _inputs(**kw)
    args[index] = value
    return args


@pytest.mark.parametrize("args, error, pattern", [
    (_replace(0, torch.randn(2, 2, 3, 5)), ValueError, r"q must have 5 dimensions \(B, h, k, H, W\)"),
    (_replace(1, torch.randn(2, 2, 3, 5, 4, 1)), ValueError, r"keys must have 5 dimensions"),
    (_replace(3, torch.randn(3, 3, 3)), ValueError, r"pos_table must have 4 dimensions \(Rh, Rw, k, u\)"),
    (_replace(1, torch.randn(3, 2, 3, 5, 4)), ValueError, r"keys must have shape \(B, u, k, H, W\) = \(2, u, 3, 5, 4\)"),
    (_replace(1, torch.randn(2, 2, 4, 5, 4)), ValueError, r"keys must have shape"),
    (_replace(2, torch.randn(2, 3, 4, 5, 4)), ValueError, r"values must have shape \(B, u, v, H, W\) = \(2, 2, v, 5, 4\)"),
    (_replace(2, torch.randn(2, 2, 4, 4, 5)), ValueError, r"values must have shape"),
    (_replace(3, torch.randn(4, 3, 3, 2)), ValueError, r"pos_table must have shape \(Rh, Rw, k, u\) = \(odd, odd, 3, 2\)"),
    (_replace(3, torch.randn(3, 3, 2, 2)), ValueError, r"pos_table must have shape"),
    (_replace(3, torch.randn(3, 3, 3, 1)), ValueError, r"pos_table must have shape"),
    (_replace(4, torch.randn(4)), ValueError, r"bias must have shape \(k,\) = \(3,\)"),
    (_replace(0, torch.ones(2, 2, 3, 5, 4, dtype=torch.int64)), TypeError, r"q must be a floating-point tensor"),
    (_replace(2, torch.randn(2, 2, 4, 5, 4, dtype=torch.float64)), TypeError, r"values has dtype torch.float64 but q has torch.float32"),
    (_replace(3, [[1.0]]), TypeError, r"pos_table must be a torch.Tensor"),
    (_replace(0, torch.randn(2, 2, 3, 5, 4, device="meta")), ValueError, r"on one device"),
    (_inputs(height=0), ValueError, r"q must have positive H and W"),
])
def test_lambda_op_rejects(args, error, pattern):
    with pytest.raises(error, match=pattern):
        lambda_op(*args)


def test_lambda_op_rejects_unknown_backend():
    with pytest.raises(ValueError, match=r"backend must be 'auto' or one of .*reference"):
        lambda_op(*_inputs(), backend="fastest")


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(dim=8, dim_k=4, r=3, heads=3), r"dim_out \(8\) must be divisible by heads \(3\)"),
    (dict(dim=8, dim_k=4, r=4), r"r must be a positive odd integer, got 4"),
    (dict(dim=8, dim_k=4, r=-3), r"r must be a positive odd integer"),
    (dict(dim=8, dim_k=4), r"exactly one of n .* and r"),
    (dict(dim=8, dim_k=4, n=5, r=3), r"exactly one of n .* and r"),
    (dict(dim=8, dim_k=0, r=3), r"dim_k must be a positive integer"),
    (dict(dim=8, dim_k=4, n=0), r"n must be a positive integer"),
    (dict(dim=8, dim_k=4, r=True), r"r must be a positive odd integer, got True"),
    (dict(dim=8, dim_k=4, n=True), r"n must be a positive integer, got True"),
])
def test_layer_constructor_rejects(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        LambdaLayer(**kwargs)


def test_layer_forward_rejects_bad_input():
    layer = LambdaLayer(8, dim_k=4, n=5, heads=2)
    with pytest.raises(ValueError, match=r"x must have shape \(B, dim, H, W\) with dim = 8"):
        layer(torch.randn(1, 6, 5, 5))
    with pytest.raises(ValueError, match=r"x must have shape"):
        layer(torch.randn(8, 5, 5))
    with pytest.raises(ValueError, match=r"H, W <= 5; x has H=6, W=5"):
        layer(torch.randn(1, 8, 6, 5))
    with pytest.raises(TypeError, match=r"x must be a floating-point tensor"):
        layer(torch.ones(1, 8, 5, 5, dtype=torch.int32))
    with pytest.raises(TypeError, match=r"x must be a torch.Tensor"):
        layer([1.0])
    with pytest.raises(TypeError, match=r"x has dtype torch.float64; the layer's parameters"):
        layer(torch.randn(1, 8, 5, 5, dtype=torch.float64))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast casts: no dtype check
        assert layer(torch.randn(1, 8, 5, 5, dtype=torch.bfloat16)).dtype == torch.bfloat16
