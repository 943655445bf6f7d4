"""Every autograd and export path a user of the einsum layer has, on the fused back ends, each
compared with the reference (never "it runs"): double backward and forward-mode AD of the layer
and of direct op calls, torch.func (vmap, per-sample gradients, Hessian-vector products), FX
symbolic tracing and torchvision's feature extraction (our models and from_timm ones), ONNX
export run in onnxruntime, torch.jit.trace, torch.compile with dynamic H/W (one graph for every
image size), torch.export with dynamic H/W (save/load) and AOTInductor.

Op-level second derivatives and jvp of every back end and CPU level are in test_backends.py
(the one harness); this file covers the layer, the models and the tracers."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.autograd.forward_ad as fwAD

import lambda_kernels
from harness import make_inputs
from lambda_kernels import LambdaLayer, LambdaLayer1d

CPU_RUNS = lambda_kernels.available_backends("cpu")["cpu"] is None
FUSED = ["cpu"] if CPU_RUNS else []
needs_cpu = pytest.mark.skipif(not CPU_RUNS, reason="the cpu back end is not built")


def _twins(backend, **kwargs):
    """The same layer (same weights) on `backend` and on the reference, float64, eval."""
    torch.manual_seed(1)
    kwargs = {"dim_k": 4, "r": 5, "heads": 2, "dim_u": 2, **kwargs}
    fused = LambdaLayer(8, backend=backend, **kwargs).double().eval()
    reference = LambdaLayer(8, backend="reference", **kwargs).double().eval()
    reference.load_state_dict(fused.state_dict())
    return fused, reference


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


CONTEXTS = [{"r": 5}, {"n": 8, "r": None}]


@needs_cpu
@pytest.mark.parametrize("context", CONTEXTS, ids=["local", "global"])
def test_layer_double_backward_equals_the_reference(context):
    """A gradient penalty through the layer: input and every parameter, float64."""
    fused, reference = _twins("cpu", **context)
    x = torch.randn(2, 8, 6, 7, dtype=torch.float64)
    results = []
    for layer in (fused, reference):
        xx = x.clone().requires_grad_()
        g, = torch.autograd.grad(layer(xx).square().sum(), xx, create_graph=True)
        results.append(torch.autograd.grad(g.square().sum(), [xx, *layer.parameters()]))
    for got, expected in zip(*results):
        assert expected.norm() > 0
        assert _rel(got, expected) < 1e-10


@needs_cpu
def test_direct_op_calls_have_second_derivatives_and_forward_ad():
    """torch.ops.lambda_kernels.* called directly: create_graph gradients of the backward op and
    forward-mode AD (torch.autograd.forward_ad) through the dispatcher's Autograd kernels."""
    ops = torch.ops.lambda_kernels
    q, keys, values, table, bias = make_inputs(dtype=torch.float64, seed=3)

    def fused(q, keys, values, table):
        lam_c, _ = ops.content_lambda(keys, values)
        return ops.lambda_output(q, values, table, lam_c + bias.view(1, -1, 1))

    def reference(q, keys, values, table):
        return lambda_kernels.reference.lambda_reference(q, keys, values, table, bias)

    args = [t.clone().requires_grad_() for t in (q, keys, values, table)]
    second = []
    for fn in (fused, reference):
        grads = torch.autograd.grad(fn(*args).sin().sum(), args, create_graph=True)
        second.append(torch.autograd.grad(sum(g.square().sum() for g in grads), args))
    for got, expected in zip(*second):
        assert _rel(got, expected) < 1e-10

    tangents = [torch.randn_like(t) for t in args]
    outs = []
    for fn in (fused, reference):
        with fwAD.dual_level():
            duals = [fwAD.make_dual(t.detach(), d) for t, d in zip(args, tangents)]
            outs.append(fwAD.unpack_dual(fn(*duals)).tangent)
    assert outs[1].norm() > 0 and _rel(outs[0], outs[1]) < 1e-10


@needs_cpu
@pytest.mark.parametrize("context", CONTEXTS, ids=["local", "global"])
def test_layer_jvp_hvp_and_forward_ad_equal_the_reference(context):
    fused, reference = _twins("cpu", **context)
    x = torch.randn(2, 8, 6, 7, dtype=torch.float64)
    t = torch.randn_like(x)
    jvps = [torch.func.jvp(layer, (x,), (t,))[1] for layer in (fused, reference)]
    assert jvps[1].norm() > 0 and _rel(*jvps) < 1e-10
    # forward-over-reverse Hessian-vector product
    hvps = [torch.func.jvp(torch.func.grad(lambda x, m=layer: m(x).square().sum()), (x,),
                           (t,))[1] for layer in (fused, reference)]
    assert _rel(*hvps) < 1e-10
    duals = []
    for layer in (fused, reference):
        with fwAD.dual_level():
            duals.append(fwAD.unpack_dual(layer(fwAD.make_dual(x, t))).tangent)
    assert _rel(*duals) < 1e-10


class _ProductDtypes(torch.utils._python_dispatch.TorchDispatchMode):
    """The operand dtypes of every matrix product (bmm, mm) run under it."""

    def __init__(self):
        super().__init__()
        self.dtypes = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in ("bmm", "mm"):
            self.dtypes.update(a.dtype for a in args if isinstance(a, torch.Tensor))
        return func(*args, **(kwargs or {}))


@needs_cpu
@pytest.mark.parametrize("native", [True, False], ids=["native", "no-native"])
def test_bf16_penalty_and_jvp_of_the_input_match_float64_on_both_gemm_routes(monkeypatch,
                                                                             native):
    """A bf16 layer's gradient penalty and jvp with respect to the input alone: the table and Λ
    get no gradient or tangent of their own, so the derivative formulas' content terms (q·Λ,
    dy·Λᵀ) run as einsums — in bf16 where the CPU has a bf16 GEMM, in fp32 where it does not
    (AVX2: ATen's bf16 fallback is 3-9x slower). Both routes against the float64 twin."""
    from lambda_kernels import _cpu_gemm

    monkeypatch.setitem(_cpu_gemm._CPU_NATIVE_GEMM, torch.bfloat16, native)
    fused, reference = _twins("cpu", r=5)
    fused = fused.to(torch.bfloat16)
    x = torch.randn(2, 8, 6, 7, dtype=torch.float64)
    t = torch.randn_like(x)
    results = []
    for layer, dtype in ((fused, torch.bfloat16), (reference, torch.float64)):
        xx = x.to(dtype).requires_grad_()
        with _ProductDtypes() as products:
            g, = torch.autograd.grad(layer(xx).float().square().sum(), xx, create_graph=True)
            penalty, = torch.autograd.grad(g.float().square().sum(), xx)
            jvp = torch.func.jvp(layer, (x.to(dtype),), (t.to(dtype),))[1]
        results.append((penalty.double(), jvp.double()))
        if dtype == torch.bfloat16:
            # (the content lambda's own derivatives run in fp32 on every CPU)
            assert (torch.bfloat16 in products.dtypes) == native, products.dtypes
    for got, expected in zip(*results):
        assert expected.norm() > 0
        assert _rel(got, expected) < 1.5e-2  # bf16 rounding gives 0.5-0.6% here


@needs_cpu
def test_op_on_plain_tensors_under_func_transforms_and_no_grad():
    """lambda_op skips the autograd.Function when nothing needs derivatives; inputs that do not
    require grad must still get their tangents under torch.func.jvp, batching under vmap, and
    their gradients under torch.func.grad (the transforms, not requires_grad, ask for them)."""
    from lambda_kernels import lambda_op

    args = make_inputs(seed=3)
    tangents = make_inputs(seed=4)
    fused = lambda *a: lambda_op(*a, backend="cpu")  # noqa: E731
    reference = lambda *a: lambda_op(*a, backend="reference")  # noqa: E731
    jvps = [torch.func.jvp(fn, args, tangents)[1] for fn in (fused, reference)]
    assert jvps[1].norm() > 0 and _rel(*jvps) < 1e-10
    grads = [torch.func.grad(lambda q, fn=fn: fn(q, *args[1:]).square().sum())(args[0])
             for fn in (fused, reference)]
    assert grads[1].norm() > 0 and _rel(*grads) < 1e-10
    stacked = [torch.stack([a, a * 0.5 + 0.1]) for a in args]
    mapped = torch.func.vmap(fused)(*stacked)
    loop = torch.stack([reference(*[a[i] for a in stacked]) for i in range(2)])
    assert _rel(mapped, loop) < 1e-10
    with torch.no_grad():
        quiet = fused(*args)
    assert quiet.grad_fn is None
    leaves = [a.clone().requires_grad_() for a in args]
    tracked = fused(*leaves)
    assert tracked.grad_fn is not None and torch.equal(quiet, tracked.detach())


@needs_cpu
def test_layer_vmap_and_per_sample_gradients_equal_a_loop():
    fused, _ = _twins("cpu")
    xs = torch.randn(3, 2, 8, 6, 7, dtype=torch.float64)
    mapped = torch.func.vmap(fused)(xs)
    torch.testing.assert_close(mapped, torch.stack([fused(x) for x in xs]), rtol=1e-12,
                               atol=1e-12)
    params = {k: v.detach() for k, v in fused.named_parameters()}
    buffers = dict(fused.named_buffers())

    def loss(p, x):
        return torch.func.functional_call(fused, (p, buffers), (x[None],)).square().sum()

    per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(params, xs[:, 0])
    for i in range(3):
        leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
        grads = torch.autograd.grad(loss(leaves, xs[i, 0]), list(leaves.values()))
        for (name, expected) in zip(leaves, grads):
            torch.testing.assert_close(per_sample[name][i], expected, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------ tracers
def _tiny_model(**kwargs):
    from lambda_kernels.models import create_model
    torch.manual_seed(0)
    return create_model("lambda_resnet26t", num_classes=5, depths=(1, 1, 1, 1),
                        channels=(32, 64, 128, 256), stem_channels=16, dim_k=4,
                        **{"r": 3, **kwargs}).eval()


@needs_cpu
@pytest.mark.parametrize("context", CONTEXTS, ids=["local", "global"])
def test_fx_symbolic_trace_keeps_the_op_as_one_leaf(context):
    layer, _ = _twins("cpu", **context)
    traced = torch.fx.symbolic_trace(layer)
    leaves = [n for n in traced.graph.nodes if n.op == "call_function"
              and n.target is lambda_kernels.lambda_op]
    assert len(leaves) == 1
    for size in ((6, 7), (4, 5)):  # the graph is not tied to the traced size
        x = torch.randn(2, 8, *size, dtype=torch.float64)
        # rounding only: eager eval folds the batch norms into the projection, the graph keeps
        # them as leaf modules (so that it follows train/eval)
        torch.testing.assert_close(traced(x), layer(x), rtol=1e-12, atol=1e-12)
    layer_1d = LambdaLayer1d(8, dim_k=4, r=3, heads=2).eval()
    x = torch.randn(2, 8, 9)
    torch.testing.assert_close(torch.fx.symbolic_trace(layer_1d)(x), layer_1d(x), rtol=1e-5, atol=1e-5)


def test_fx_traced_global_layers_check_the_context_when_the_graph_runs():
    """A traced graph has no input check before it runs: the table's centre checks its sizes
    (a slice past a (2n-1) table's ends would be silently short)."""
    from lambda_kernels import LambdaLayer3d
    cases = [(LambdaLayer(8, dim_k=4, n=8, heads=2), (1, 8, 8, 8), (1, 8, 9, 8)),
             (LambdaLayer1d(8, dim_k=4, n=8, heads=2), (1, 8, 8), (1, 8, 9)),
             (LambdaLayer3d(8, dim_k=4, n=(2, 4, 4), heads=2), (1, 8, 2, 4, 4), (1, 8, 3, 4, 4))]
    for layer, fits, too_large in cases:
        traced = torch.fx.symbolic_trace(layer.eval())
        x = torch.randn(fits)
        torch.testing.assert_close(traced(x), layer(x), rtol=1e-5, atol=1e-5)
        with pytest.raises(ValueError, match="global context with n="):
            traced(torch.randn(too_large))


@needs_cpu
@pytest.mark.parametrize("mapped", [0, 1, 2, 3])
def test_vmap_over_an_empty_dimension(mapped):
    """vmap over a mapped dimension of size 0 gives an empty result of the right shape (the
    folding rule keeps the op's batch; the looping rule takes a call's shape from the fake
    impl), forward and backward."""
    from lambda_kernels import lambda_op
    args = list(make_inputs(seed=3))
    one = lambda_op(*args, backend="cpu")
    args[mapped] = args[mapped].new_empty(0, *args[mapped].shape)
    in_dims = tuple(0 if i == mapped else None for i in range(len(args)))
    out = torch.func.vmap(lambda *a: lambda_op(*a, backend="cpu"), in_dims=in_dims)(*args)
    assert out.shape == (0, *one.shape)
    grads = torch.func.vmap(torch.func.grad(lambda *a: lambda_op(*a, backend="cpu").sum(),
                                            argnums=(0, 1, 2, 3)), in_dims=in_dims)(*args)
    assert [g.shape[0] for g in grads] == [0] * 4


@needs_cpu
def test_feature_extraction_of_our_model_and_of_a_from_timm_model():
    feature_extraction = pytest.importorskip("torchvision.models.feature_extraction")
    timm = pytest.importorskip("timm")
    from lambda_kernels.convert import from_timm

    x = torch.randn(1, 3, 64, 64)
    torch.manual_seed(0)
    stock = timm.create_model("lambda_resnet26t", num_classes=5, pretrained=False).eval()
    models = {"ours": _tiny_model(), "from_timm": from_timm(copy.deepcopy(stock))}
    for name, model in models.items():
        nodes = {"stages.2": "c4", "stages.3": "c5"}
        extractor = feature_extraction.create_feature_extractor(model, return_nodes=nodes)
        features = extractor(x)
        staged = model.stem(x)
        for i, stage in enumerate(model.stages):
            staged = stage(staged)
            if i == 2:
                torch.testing.assert_close(features["c4"], staged, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(features["c5"], staged, rtol=1e-5, atol=1e-5)
    # the converted model's features are the stock model's
    stock_features = feature_extraction.create_feature_extractor(
        stock, return_nodes={"stages.3": "c5"})(x)["c5"]
    converted = feature_extraction.create_feature_extractor(
        models["from_timm"], return_nodes={"stages.3": "c5"})(x)["c5"]
    torch.testing.assert_close(converted, stock_features, rtol=1e-4, atol=1e-4)


def test_jit_trace_records_standard_operators_and_matches():
    layer, _ = _twins("cpu" if CPU_RUNS else "reference")
    x = torch.randn(2, 8, 6, 7, dtype=torch.float64)
    traced = torch.jit.trace(layer, (x,))
    assert "lambda_kernels::" not in str(traced.graph)  # standard operators only
    torch.testing.assert_close(traced(x), layer(x), rtol=1e-12, atol=1e-12)


@needs_cpu
@pytest.mark.parametrize("kind", ["local", "global", "model"])
def test_onnx_export_runs_in_onnxruntime_and_matches_eager(kind, tmp_path):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    if kind == "model":
        module, x = _tiny_model(), torch.randn(1, 3, 64, 64)
    else:
        module = LambdaLayer(8, dim_k=4, heads=2, dim_u=2,
                             **({"r": 5} if kind == "local" else {"n": 7})).eval()
        x = torch.randn(2, 8, 6, 7)
    expected = module(x)
    program = torch.onnx.export(module, (x,), dynamo=True, verbose=False)
    path = tmp_path / "model.onnx"
    program.save(str(path))
    onnx = pytest.importorskip("onnx")
    op_types = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert not {"content_lambda", "lambda_output"} & op_types
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got, = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(got), expected, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------ dynamic shapes
SIZES = [(6, 7), (8, 9), (10, 5), (7, 12)]


@needs_cpu
@pytest.mark.parametrize("how", ["dynamic=True", "mark_dynamic"])
@pytest.mark.parametrize("context", CONTEXTS, ids=["local", "global"])
def test_compile_with_dynamic_hw_builds_one_graph_for_every_size(context, how):
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    layer = LambdaLayer(8, dim_k=4, heads=2, dim_u=2,
                        **({"r": 5} if "r" in context else {"n": 12})).eval()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(layer, backend=counter, fullgraph=True,
                             dynamic=True if how == "dynamic=True" else None)
    frames = []
    for size in SIZES:
        x = torch.randn(2, 8, *size, requires_grad=True)
        if how == "mark_dynamic":
            torch._dynamo.mark_dynamic(x, 2)
            torch._dynamo.mark_dynamic(x, 3)
        y = compiled(x)
        torch.testing.assert_close(y, layer(x), rtol=1e-5, atol=1e-5)
        g, = torch.autograd.grad(y.sum(), x)
        g_eager, = torch.autograd.grad(layer(x).sum(), x)
        torch.testing.assert_close(g, g_eager, rtol=1e-5, atol=1e-5)
        frames.append(counter.frame_count)
    assert frames == [frames[0]] * len(SIZES), f"recompiled for new sizes: {frames}"


@needs_cpu
@pytest.mark.parametrize("context", [{"r": 5}, {"n": 12}], ids=["local", "global"])
def test_export_with_dynamic_hw_saves_loads_and_matches(tmp_path, context):
    """Over the whole valid range: a global layer up to H = W = n (its table's centre is then
    the whole table, which a traced slice would have guarded against)."""
    layer = LambdaLayer(8, dim_k=4, heads=2, dim_u=2, **context).eval()
    most = context.get("n", 64)
    height, width = torch.export.Dim("height", min=2, max=most), torch.export.Dim("width", min=2,
                                                                                 max=most)
    program = torch.export.export(layer, (torch.randn(2, 8, 6, 7),),
                                  dynamic_shapes={"x": {2: height, 3: width}})
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert {"lambda_kernels.content_lambda.default",
            "lambda_kernels.lambda_output.default"} <= targets  # the fused ops, not einsum
    assert not any("cpu_isa" in t for t in targets)
    path = tmp_path / "layer.pt2"
    torch.export.save(program, str(path))
    loaded = torch.export.load(str(path)).module()
    for size in SIZES + [(12, 12), (12, 3)]:
        x = torch.randn(2, 8, *size)
        torch.testing.assert_close(loaded(x), layer(x), rtol=1e-5, atol=1e-5)


@needs_cpu
def test_aot_inductor_package_of_a_small_model_matches_eager(tmp_path):
    layer = LambdaLayer(8, dim_k=4, r=5, heads=2, dim_u=2).eval()
    x = torch.randn(2, 8, 6, 7)
    program = torch.export.export(layer, (x,))
    path = torch._inductor.aoti_compile_and_package(program,
                                                    package_path=str(tmp_path / "layer.pt2"))
    compiled = torch._inductor.aoti_load_package(path)
    torch.testing.assert_close(compiled(x), layer(x), rtol=1e-5, atol=1e-5)
