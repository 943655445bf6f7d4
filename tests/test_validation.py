"""Bad input raises a clear TypeError/ValueError naming the argument and the expected shape."""
import pytest
import torch

from harness import make_inputs
from lambda_kernels import LambdaLayer, LambdaLayer1d, lambda_op


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


@pytest.mark.parametrize("layer_class, context", [(LambdaLayer, "r"), (LambdaLayer, "n"),
                                                   (LambdaLayer1d, "r")])
def test_layer_constructor_takes_numpy_integers(layer_class, context):
    """lambda-networks' constructor takes NumPy integers (configs read from arrays or YAML);
    the drop-in takes them too, and builds the same layer as with Python ints."""
    import numpy as np
    args = dict(dim=12, dim_k=4, heads=2, dim_u=2, dim_out=8, stride=1, **{context: 5})
    plain = layer_class(**args)
    numpy_args = {name: (np.int64 if i % 2 else np.int32)(value)
                  for i, (name, value) in enumerate(args.items())}
    layer = layer_class(**numpy_args)
    assert all(type(getattr(layer, name)) is int for name in ("dim", "dim_k", "heads", "u",
                                                               "dim_out", context))
    layer.load_state_dict(plain.state_dict())  # same names and shapes
    x = torch.randn(2, 12, *((5, 4) if layer_class is LambdaLayer else (6,)))
    torch.testing.assert_close(layer(x), plain(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"r must be a positive odd integer, got 4"):
        layer_class(12, dim_k=4, r=np.int64(4))
    with pytest.raises(ValueError, match=r"dim_k must be a positive integer, got .*4\.0"):
        layer_class(12, dim_k=np.float64(4), r=3)


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
    # maps the lambda or the pooling cannot run on, refused before the lambda runs
    with pytest.raises(ValueError, match=r"x must have H, W at least 1, got H=0, W=5"):
        layer(torch.randn(1, 8, 0, 5))
    with pytest.raises(ValueError, match=r"x must have H, W at least stride = 2, got H=1, W=5"):
        LambdaLayer(8, dim_k=4, r=3, stride=2)(torch.randn(2, 8, 1, 5))
    with pytest.raises(ValueError, match=r"x must have L at least 1, got L=0"):
        LambdaLayer1d(8, dim_k=4, r=3)(torch.randn(2, 8, 0))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast casts: no dtype check
        assert layer(torch.randn(1, 8, 5, 5, dtype=torch.bfloat16)).dtype == torch.bfloat16
