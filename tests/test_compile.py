"""torch.compile over the layer and the op with the C++ CPU kernels (fake impls + autograd)."""
import copy

import pytest
import torch

import lambda_kernels
from helpers import make_inputs
from lambda_kernels import LambdaLayer
from lambda_kernels.functional import LambdaFunction

pytestmark = pytest.mark.skipif(lambda_kernels.available_backends("cpu")["cpu"] is not None,
                                reason="cpu back end not available")


def test_compiled_op_fullgraph_matches_eager():
    inputs = make_inputs(dtype=torch.float32, requires_grad=True, seed=1)

    def op(q, keys, values, pos_table, bias):
        return LambdaFunction.apply(q, keys, values, pos_table, bias, "cpu")

    compiled = torch.compile(op, fullgraph=True, backend="aot_eager")
    y_eager = op(*inputs)
    y_compiled = compiled(*inputs)
    torch.testing.assert_close(y_compiled, y_eager)
    grads_eager = torch.autograd.grad(y_eager.square().sum(), inputs)
    grads_compiled = torch.autograd.grad(y_compiled.square().sum(), inputs)
    for g_c, g_e in zip(grads_compiled, grads_eager):
        torch.testing.assert_close(g_c, g_e)


def test_compiled_layer_matches_eager_with_inductor():
    layer = LambdaLayer(8, dim_k=4, r=5, heads=2, dim_u=2, backend="cpu")
    # A twin, so the batch-norm running statistics each run updates are its own.
    compiled = torch.compile(copy.deepcopy(layer))
    x = torch.randn(2, 8, 6, 5, requires_grad=True)
    y_eager = layer(x)
    y_compiled = compiled(x)
    torch.testing.assert_close(y_compiled, y_eager, rtol=1e-5, atol=1e-5)
    (g_eager,) = torch.autograd.grad(y_eager.sum(), x)
    (g_compiled,) = torch.autograd.grad(y_compiled.sum(), x)
    torch.testing.assert_close(g_compiled, g_eager, rtol=1e-5, atol=1e-5)
