"""torch.compile over the op and the layers: one graph (no graph breaks), forward and backward
equal to eager, the back-end choice still honouring `backend=` and LAMBDA_KERNELS_BACKEND."""
import copy

import pytest
import torch

import lambda_kernels
from harness import assert_compiled_matches_eager, make_inputs
from lambda_kernels import LambdaLayer, LambdaLayer1d, lambda_op
from lambda_kernels.functional import ENV_BACKEND

CPU_RUNS = lambda_kernels.available_backends("cpu")["cpu"] is None
COMPILED_BACKENDS = ["cpu", "reference"] if CPU_RUNS else ["reference"]


def _graph_breaks(fn, *args) -> int:
    torch._dynamo.reset()
    return torch._dynamo.explain(fn)(*args).graph_break_count


@pytest.mark.parametrize("backend", COMPILED_BACKENDS)
def test_compiled_op_fullgraph_matches_eager(backend):
    inputs = make_inputs(dtype=torch.float32, requires_grad=True, seed=1)

    def op(q, keys, values, pos_table, bias):
        return lambda_op(q, keys, values, pos_table, bias, backend=backend)

    assert _graph_breaks(op, *inputs) == 0
    compiled = torch.compile(op, fullgraph=True, backend="aot_eager")
    y_eager = op(*inputs)
    y_compiled = compiled(*inputs)
    torch.testing.assert_close(y_compiled, y_eager)
    grads_eager = torch.autograd.grad(y_eager.square().sum(), inputs)
    grads_compiled = torch.autograd.grad(y_compiled.square().sum(), inputs)
    for g_c, g_e in zip(grads_compiled, grads_eager):
        torch.testing.assert_close(g_c, g_e)


def _layers():
    yield "local", LambdaLayer(8, dim_k=4, r=5, heads=2, dim_u=2), (2, 8, 6, 5)
    yield "global-stride2", LambdaLayer(8, dim_k=4, n=6, heads=2, stride=2), (2, 8, 6, 4)
    yield "1d", LambdaLayer1d(8, dim_k=4, r=5, heads=2), (2, 8, 9)


@pytest.mark.parametrize("backend", COMPILED_BACKENDS)
@pytest.mark.parametrize("name", [name for name, _, _ in _layers()])
def test_compiled_layer_fullgraph_inductor_matches_eager(name, backend):
    _, layer, shape = next(item for item in _layers() if item[0] == name)
    layer.backend = backend
    x = torch.randn(*shape, requires_grad=True)
    assert _graph_breaks(copy.deepcopy(layer), x) == 0
    # A twin, so the batch-norm running statistics each run updates are its own.
    compiled = torch.compile(copy.deepcopy(layer), fullgraph=True)
    assert_compiled_matches_eager(layer, compiled, x, backend)


def test_compiled_layer_honours_the_environment_variable(monkeypatch):
    monkeypatch.setenv(ENV_BACKEND, "reference")
    layer = LambdaLayer(8, dim_k=4, r=3, heads=2)
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    compiled(torch.randn(1, 8, 5, 5))
    assert layer.last_backend == "reference"


def test_compiled_layer_raises_for_a_back_end_that_cannot_run():
    layer = LambdaLayer(8, dim_k=4, r=3, heads=2, backend="cuda")
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    with pytest.raises(Exception, match="backend 'cuda' cannot run"):
        compiled(torch.randn(1, 8, 5, 5))


@pytest.mark.parametrize("native", [True, False], ids=["native", "no-native"])
@pytest.mark.parametrize("mode", ["bfloat16", "autocast"])
def test_compiled_bf16_layer_fullgraph_matches_eager(monkeypatch, native, mode):
    """bf16 and bf16 autocast compile to one graph on both routes of the projection GEMM
    (bf16 where the CPU GEMM has it, fp32 with autocast off around it where it does not),
    forward and backward equal to eager."""
    from lambda_kernels import _cpu_gemm

    monkeypatch.setitem(_cpu_gemm._CPU_NATIVE_GEMM, torch.bfloat16, native)
    layer = LambdaLayer(8, dim_k=4, r=5, heads=2, dim_u=2).eval()
    if mode == "bfloat16":
        layer = layer.to(torch.bfloat16)
    x = torch.randn(2, 8, 6, 5, dtype=torch.bfloat16 if mode == "bfloat16" else torch.float32,
                    requires_grad=True)

    def run(module, inp):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "autocast"):
            return module(inp)

    assert _graph_breaks(lambda inp: run(layer, inp), x) == 0
    compiled = torch.compile(lambda inp: run(layer, inp), fullgraph=True, backend="aot_eager")
    y_eager, y_compiled = run(layer, x), compiled(x)
    assert y_compiled.dtype == torch.bfloat16
    torch.testing.assert_close(y_compiled, y_eager)
    dy = torch.randn_like(y_eager)
    (g_eager,) = torch.autograd.grad(y_eager, x, dy)
    (g_compiled,) = torch.autograd.grad(y_compiled, x, dy)
    torch.testing.assert_close(g_compiled, g_eager)
