"""The 3-D lambda (video, volumes): lambda_op3d on every back end under test (tests/harness.py:
TARGETS, SHAPES3D, the one tolerance rule) against the einsum + Conv3d reference, the reference
against naive loops, float64 gradcheck, LambdaLayer3d against the reference (input and
parameter gradients) and against the 2-D layer at T = 1, torch.compile, and the memory rule
(peak memory never holds λp)."""
from __future__ import annotations

import copy
import dataclasses
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import lambda_kernels
from harness import (QUICK_SHAPES3D, SHAPES3D, TARGETS, Shape3d, Target,
                     assert_compiled_matches_eager,
                     check3d_against_reference, check3d_second_order_against_reference,
                     make_inputs, outputs_and_grads, peak_memory_increase,
                     perturb_batch_norms,
                     target_dtype_shape_params)
from lambda_kernels import LambdaLayer, LambdaLayer3d, lambda_op3d, reference
from lambda_kernels.functional import temporal_taps

CPU_RUNS = lambda_kernels.available_backends("cpu")["cpu"] is None


def _require(target: Target):
    reason = target.skip_reason()
    if reason is not None:
        pytest.skip(f"{target.id}: {reason}")


# ------------------------------------------------------------------------------ reference
def naive_lambda3d(q, keys, values, pos_table, bias):
    """Loops over every index, straight from the definitions (softmax over all T·H·W)."""
    batch, heads, dim_k, tt, hh, ww = q.shape
    dim_u, dim_v = keys.shape[1], values.shape[2]
    rt, rh, rw = pos_table.shape[:3]
    positions = list(itertools.product(range(tt), range(hh), range(ww)))
    y = torch.zeros(batch, heads, dim_v, tt, hh, ww, dtype=q.dtype)
    for b in range(batch):
        sigma = {}
        for u, k in itertools.product(range(dim_u), range(dim_k)):
            total = sum(math.exp(keys[b, u, k][p]) for p in positions)
            for p in positions:
                sigma[u, k, p] = math.exp(keys[b, u, k][p]) / total
        lam_c = torch.zeros(dim_k, dim_v, dtype=q.dtype)
        for k, v in itertools.product(range(dim_k), range(dim_v)):
            lam_c[k, v] = sum(sigma[u, k, p] * values[b, u, v][p]
                              for u in range(dim_u) for p in positions)
        for t, i, j in positions:
            lam_p = torch.zeros(dim_k, dim_v, dtype=q.dtype)
            for k, v in itertools.product(range(dim_k), range(dim_v)):
                acc = 0.0 if bias is None else float(bias[k])
                for a, c, e, u in itertools.product(range(rt), range(rh), range(rw),
                                                    range(dim_u)):
                    ct, ci, cj = t + a - rt // 2, i + c - rh // 2, j + e - rw // 2
                    if 0 <= ct < tt and 0 <= ci < hh and 0 <= cj < ww:
                        acc += float(pos_table[a, c, e, k, u]) * float(values[b, u, v, ct, ci, cj])
                lam_p[k, v] = acc
            for h, v in itertools.product(range(heads), range(dim_v)):
                y[b, h, v, t, i, j] = sum(q[b, h, k, t, i, j] * (lam_c[k, v] + lam_p[k, v])
                                          for k in range(dim_k))
    return y


REFERENCE_SHAPES = [
    # batch, heads, dim_k, dim_u, dim_v, T, H, W, Rt, Rh, Rw
    (1, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3),
    (2, 1, 2, 1, 3, 3, 2, 3, 5, 1, 3),  # rt > T, one-row table
    (1, 1, 2, 2, 2, 3, 1, 4, 1, 3, 7),  # rt = 1, H = 1, table wider than the map
]


@pytest.mark.parametrize("shape", REFERENCE_SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_reference3d_matches_naive_loops(shape, bias):
    batch, heads, dim_k, dim_u, dim_v, tt, hh, ww, rt, rh, rw = shape
    inputs = make_inputs(batch, heads, dim_k, dim_u, dim_v, hh, ww, rh, rw, bias=bias,
                         frames=tt, rt=rt, seed=2)
    torch.testing.assert_close(reference.lambda_reference3d(*inputs), naive_lambda3d(*inputs),
                               rtol=1e-12, atol=1e-12)


def test_reference3d_gradcheck():
    inputs = make_inputs(1, 1, 2, 1, 2, 2, 3, 3, 1, bias=True, frames=2, rt=3,
                         requires_grad=True, seed=3)
    assert torch.autograd.gradcheck(reference.lambda_reference3d, inputs)


def test_reference3d_at_one_frame_is_the_2d_reference():
    inputs = make_inputs(2, 2, 3, 2, 4, 4, 5, 3, 5, bias=True, frames=1, rt=1, seed=4)
    q, keys, values, pos_table, bias = inputs
    y2d = reference.lambda_reference(q[:, :, :, 0], keys[:, :, :, 0], values[:, :, :, 0],
                                     pos_table[0], bias)
    torch.testing.assert_close(reference.lambda_reference3d(*inputs)[:, :, :, 0], y2d,
                               rtol=1e-12, atol=1e-12)


def test_temporal_taps_cover_the_frames_each_offset_reaches():
    assert temporal_taps(1, 5) == [(2, 0, 0, 1)]
    assert temporal_taps(4, 3) == [(0, -1, 1, 4), (1, 0, 0, 4), (2, 1, 0, 3)]
    assert [tap[1] for tap in temporal_taps(2, 7)] == [-1, 0, 1]


# ------------------------------------------------------------------------------ every back end
@pytest.mark.parametrize("target,dtype,shape",
                         target_dtype_shape_params(SHAPES3D, quick_shapes=[],
                                                   slow_shapes=QUICK_SHAPES3D))
def test_outputs_and_gradients_match_the_reference(target, dtype, shape):
    _require(target)
    check3d_against_reference(target, shape.inputs(dtype, target.device), dtype)


@pytest.mark.parametrize("target", [t for t in TARGETS if torch.float64 in t.dtypes],
                         ids=lambda t: t.id)
@pytest.mark.parametrize("shape,fast", [
    (Shape3d(1, 2, 2, 1, 2, 2, 2, 2, 3, 3, 1, True, "tiny: full Jacobians"), False),
    (SHAPES3D[2], True), (SHAPES3D[3], True), (SHAPES3D[5], True)],
    ids=lambda s: getattr(s, "id", s))
def test_gradcheck_float64(target, shape, fast):
    """Full Jacobians on a tiny volume (two forwards per input element, one backward per
    output element); random projections of the Jacobians (fast mode) on the larger ones, where
    the full ones take a minute."""
    _require(target)
    small = dataclasses.replace(shape, batch=1, frames=min(shape.frames, 2), height=2,
                                width=3, dim_k=2, dim_v=2, heads=2, rh=min(shape.rh, 3),
                                rw=min(shape.rw, 3)) if fast else shape
    inputs = [t for t in small.inputs(torch.float64, target.device, requires_grad=True, seed=7)
              if t is not None]
    assert torch.autograd.gradcheck(lambda *args: target.run3d(*args), inputs, eps=1e-6,
                                    atol=1e-8, rtol=1e-6, fast_mode=fast)


@pytest.mark.parametrize("target", [t for t in TARGETS if not t.slow], ids=lambda t: t.id)
@pytest.mark.parametrize("shape", [SHAPES3D[2], SHAPES3D[4]], ids=lambda s: s.id)
def test_second_order_gradients_and_jvp_match_the_reference(target, shape):
    """Double backward and forward-mode AD through the temporal taps: inherited from the
    derivatives of the 2-D ops."""
    _require(target)
    dtype = torch.float64 if torch.float64 in target.dtypes else torch.float32
    check3d_second_order_against_reference(target, shape.inputs(dtype, target.device, seed=4),
                                           dtype)


@pytest.mark.parametrize("target", [t for t in TARGETS if not t.slow], ids=lambda t: t.id)
def test_vmap_matches_a_loop(target):
    _require(target)
    inputs = SHAPES3D[4].inputs(torch.float64, target.device, seed=5)
    q, keys, values, pos_table, bias = inputs
    stack = lambda t: torch.stack([t, 0.5 * t.flip(0)])  # noqa: E731

    def run(q, keys, values):
        return target.run3d(q, keys, values, pos_table, bias)

    mapped = torch.func.vmap(run)(stack(q), stack(keys), stack(values))
    loop = torch.stack([run(a, b, c) for a, b, c in zip(stack(q), stack(keys), stack(values))])
    torch.testing.assert_close(mapped, loop, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.id)
def test_one_frame_and_rt_1_is_the_2d_op(target):
    """T = 1, Rt = 1: the same numbers as lambda_op on the frame, output and gradients."""
    _require(target)
    dtype = torch.float32
    shape = SHAPES3D[0] if not target.slow else dataclasses.replace(
        SHAPES3D[0], batch=1, height=3, width=4, rw=3)  # the interpreter: smaller
    inputs = shape.inputs(dtype, target.device, seed=8)
    dy = torch.randn(shape.output_shape(), generator=torch.Generator().manual_seed(9),
                     dtype=dtype).to(target.device)
    got = outputs_and_grads(target.run3d, inputs, dy)
    frame = [inputs[0][:, :, :, 0], inputs[1][:, :, :, 0], inputs[2][:, :, :, 0], inputs[3][0],
             inputs[4]]
    want = outputs_and_grads(target.run, frame, dy[:, :, :, 0])
    for g, w in zip(got, want):
        torch.testing.assert_close(g.reshape(w.shape), w, rtol=1e-6, atol=1e-6)


def test_validation_names_the_argument_and_shape():
    q, keys, values, pos_table, bias = make_inputs(frames=3, rt=3)
    with pytest.raises(ValueError, match=r"q must have 6 dimensions \(B, h, k, T, H, W\)"):
        lambda_op3d(q[:, :, :, 0], keys, values, pos_table, bias)
    with pytest.raises(ValueError, match=r"keys must have shape \(B, u, k, T, H, W\)"):
        lambda_op3d(q, keys[:, :, :, :2], values, pos_table, bias)
    with pytest.raises(ValueError, match=r"values must have shape \(B, u, v, T, H, W\)"):
        lambda_op3d(q, keys, values[:, :, :, :, :2], pos_table, bias)
    with pytest.raises(ValueError, match=r"pos_table must have shape \(Rt, Rh, Rw, k, u\) = "
                                         r"\(odd, odd, odd"):
        lambda_op3d(q, keys, values, pos_table[:2], bias)
    with pytest.raises(ValueError, match=r"pos_table must have 5 dimensions"):
        lambda_op3d(q, keys, values, pos_table[0], bias)
    with pytest.raises(ValueError, match=r"bias must have shape \(k,\)"):
        lambda_op3d(q, keys, values, pos_table, bias[:1])
    with pytest.raises(TypeError, match="values has dtype torch.float32 but q has"):
        lambda_op3d(q, keys, values.float(), pos_table, bias)
    with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
        lambda_op3d(q, keys, values, pos_table, bias, backend="nope")


def test_empty_batch():
    inputs = make_inputs(batch=0, frames=2, rt=3, requires_grad=True)
    y = lambda_op3d(*inputs)
    assert tuple(y.shape) == (0, 2, 4, 2, 5, 4)


# ------------------------------------------------------------------------------ the layer
# Back ends that run CPU tensors here; the Triton interpreter on the smallest layer only.
LAYER_TARGETS = [t for t in TARGETS if t.device == "cpu"]


def _perturb(layer):
    """Non-trivial batch-norm state and table so eval mode and the table are exercised."""
    perturb_batch_norms(layer)
    with torch.no_grad():
        if not layer.local_contexts:
            layer.rel_pos_emb.mul_(0.3)
    return layer


def _layer_outputs_and_grads(layer, x, dy):
    x = x.detach().clone().requires_grad_()
    layer.zero_grad()
    y = layer(x)
    y.backward(dy)
    return [y.detach(), x.grad] + [p.grad for _, p in layer.named_parameters()]


LAYER_CONFIGS = [
    ("local", dict(dim=6, dim_k=3, r=(3, 5, 3), heads=2, dim_out=4, dim_u=2), (2, 6, 3, 4, 5)),
    ("local-rt-over-T", dict(dim=4, dim_k=2, r=5, heads=1, dim_out=3, dim_u=1), (1, 4, 2, 3, 4)),
    ("global", dict(dim=4, dim_k=3, n=(3, 5, 4), heads=2, dim_out=4, dim_u=1), (1, 4, 2, 5, 3)),
]


@pytest.mark.parametrize("target,name,train", [
    pytest.param(t, name, train, id=f"{t.id}-{name}-{'train' if train else 'eval'}")
    for t in LAYER_TARGETS for name, _, _ in LAYER_CONFIGS for train in (True, False)
    if not t.slow or (name == "local-rt-over-T" and train)])  # the interpreter: the smallest
def test_layer_matches_reference_layer_with_parameter_gradients(target, name, train):
    _require(target)
    _, cfg, shape = next(c for c in LAYER_CONFIGS if c[0] == name)
    dtype = torch.float32 if target.slow else torch.float64
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-9)
    torch.manual_seed(0)
    ref_layer = _perturb(LambdaLayer3d(**cfg, backend="reference")).to(dtype).train(train)
    layer = LambdaLayer3d(**cfg, backend=target.backend).to(dtype).train(train)
    layer.load_state_dict(ref_layer.state_dict())
    x = torch.randn(*shape, dtype=dtype)
    dy = torch.randn(shape[0], cfg["dim_out"], *shape[2:], dtype=dtype)
    with target.activate():
        got = _layer_outputs_and_grads(layer, x, dy)
    want = _layer_outputs_and_grads(ref_layer, x, dy)
    assert layer.last_backend == target.backend
    names = ["y", "x.grad"] + [n + ".grad" for n, _ in layer.named_parameters()]
    for n, g, w in zip(names, got, want):
        torch.testing.assert_close(g, w, **tol, msg=lambda m, n=n: f"{n}: {m}")
    if train:
        torch.testing.assert_close(layer.norm_v.running_var, ref_layer.norm_v.running_var)


def _first_principles(layer, x):
    """The layer's output from its own modules: pos_conv applied to the values of every value
    channel (Conv3d, cross-correlation, zero padding) or the global table's centre via the
    reference, then the einsum of the paper."""
    q, keys, values, _, _ = layer.project(x)
    b, u, v = values.shape[:3]
    lam_c = reference.content_lambda(keys, values)
    if layer.local_contexts:
        per_channel = values.transpose(1, 2).reshape(b * v, u, *values.shape[3:])
        lam_p = layer.pos_conv(per_channel).reshape(b, v, -1, *values.shape[3:]).transpose(1, 2)
    else:  # the full table: offsets beyond the volume never reach inside it
        lam_p = reference.positional_lambda3d(values, layer.rel_pos_emb)
    y = torch.einsum("bhktyx,bkv->bhvtyx", q, lam_c) + \
        torch.einsum("bhktyx,bkvtyx->bhvtyx", q, lam_p)
    return y.reshape(x.shape[0], layer.dim_out, *x.shape[2:])


@pytest.mark.parametrize("name", [c[0] for c in LAYER_CONFIGS])
def test_layer_tables_are_its_conv3d_and_the_global_table_centre(name):
    _, cfg, shape = next(c for c in LAYER_CONFIGS if c[0] == name)
    layer = _perturb(LambdaLayer3d(**cfg)).double().eval()
    x = torch.randn(*shape, dtype=torch.float64)
    torch.testing.assert_close(layer(x), _first_principles(layer, x), rtol=1e-10, atol=1e-10)


def test_pos_conv_and_table_shapes():
    layer = LambdaLayer3d(8, dim_k=4, r=(3, 7, 5), heads=2, dim_u=2)
    assert layer.pos_conv.weight.shape == (4, 2, 3, 7, 5)
    assert layer.pos_conv.padding == (1, 3, 2)
    assert layer.to_q.weight.shape == (8, 8, 1, 1, 1)
    glob = LambdaLayer3d(8, dim_k=4, n=(4, 6, 5), heads=2, dim_u=3)
    assert glob.rel_pos_emb.shape == (7, 11, 9, 4, 3)
    assert LambdaLayer3d(8, dim_k=4, n=6).rel_pos_emb.shape == (11, 11, 11, 4, 1)


@pytest.mark.parametrize("kind", ["local", "global"])
def test_one_frame_equals_the_2d_layer_on_the_same_weights(kind):
    kwargs = dict(r=5) if kind == "local" else dict(n=6)
    kwargs3d = dict(r=(1, 5, 5)) if kind == "local" else dict(n=(1, 6, 6))
    torch.manual_seed(0)
    layer2d = _perturb(LambdaLayer(6, dim_k=3, heads=2, dim_u=2, **kwargs)).double()
    layer3d = LambdaLayer3d(6, dim_k=3, heads=2, dim_u=2, **kwargs3d).double()
    state = {name: (t.unsqueeze(0) if name == "rel_pos_emb" else
                    t.unsqueeze(-1) if name.startswith("to_") else t)
             for name, t in layer2d.state_dict().items()}
    layer3d.load_state_dict(state)
    x = torch.randn(2, 6, 5, 6, dtype=torch.float64)
    dy = torch.randn(2, 6, 5, 6, dtype=torch.float64)
    got = _layer_outputs_and_grads(layer3d, x.unsqueeze(2), dy.unsqueeze(2))
    want = _layer_outputs_and_grads(layer2d, x, dy)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.reshape(w.shape), w, rtol=1e-10, atol=1e-10)


def test_stride_average_pools_time_and_space():
    layer = _perturb(LambdaLayer3d(4, dim_k=2, r=3, heads=2, stride=2)).double().eval()
    x = torch.randn(1, 4, 4, 6, 5, dtype=torch.float64)
    y = layer(x)
    assert tuple(y.shape) == (1, 4, 2, 3, 2)
    layer.pool = torch.nn.Identity()
    torch.testing.assert_close(y, F.avg_pool3d(layer(x), 2, 2))


def test_channels_last_3d_keeps_format_and_values():
    layer = _perturb(LambdaLayer3d(8, dim_k=4, r=(3, 5, 5), heads=2, dim_u=2)).eval()
    x = torch.randn(2, 8, 3, 6, 7)
    y = layer(x)
    y_cl = layer(x.contiguous(memory_format=torch.channels_last_3d))
    assert y_cl.is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(y_cl, y, rtol=1e-5, atol=1e-5)


def test_layer_rejects_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match=r"r must be a positive odd integer or a \(t, h, w\)"):
        LambdaLayer3d(4, dim_k=2, r=(3, 4, 3))
    with pytest.raises(ValueError, match=r"r must be .* got \(3, 3\)"):
        LambdaLayer3d(4, dim_k=2, r=(3, 3))
    with pytest.raises(ValueError, match=r"n must be a positive integer or a \(t, h, w\)"):
        LambdaLayer3d(4, dim_k=2, n=(2, 0, 3))
    with pytest.raises(ValueError, match="exactly one of n"):
        LambdaLayer3d(4, dim_k=2)
    with pytest.raises(ValueError, match=r"x must have shape \(B, dim, T, H, W\) with dim = 4"):
        LambdaLayer3d(4, dim_k=2, r=3)(torch.randn(1, 4, 5, 5))
    with pytest.raises(ValueError, match=r"takes T <= 2, H <= 5, W <= 5; x has T=3"):
        LambdaLayer3d(4, dim_k=2, n=(2, 5, 5))(torch.randn(1, 4, 3, 5, 5))
    with pytest.raises(ValueError, match=r"x must have T, H, W at least stride = 2, got T=1"):
        LambdaLayer3d(4, dim_k=2, r=3, stride=2)(torch.randn(1, 4, 1, 4, 4))
    with pytest.raises(ValueError, match=r"x must have T, H, W at least 1, got T=2, H=0, W=3"):
        LambdaLayer3d(4, dim_k=2, r=3)(torch.randn(1, 4, 2, 0, 3))


def test_layer_takes_numpy_integers():
    """As the 2-D layer (tests/test_validation.py): any integer type, stored as int."""
    import numpy as np
    layer = LambdaLayer3d(np.int64(4), dim_k=np.int32(2), r=(np.int64(3), 5, np.uint8(1)),
                          stride=np.int64(2))
    assert layer.window == (3, 5, 1) and all(type(r) is int for r in layer.window)
    assert tuple(layer.pos_conv.weight.shape) == (2, 1, 3, 5, 1)
    assert LambdaLayer3d(4, dim_k=2, n=np.int64(3)).context_size == (3, 3, 3)


# ------------------------------------------------------------------------------ torch.export
@pytest.mark.skipif(not CPU_RUNS, reason="cpu back end unavailable")
@pytest.mark.parametrize("context", [{"r": 3}, {"n": (4, 6, 6)}], ids=["local", "global"])
def test_export_with_dynamic_hw_matches_eager(context):
    """One exported program for every H, W (up to n for global context) at the traced T: the
    fused 2-D ops stay in the graph (README: T is static, its taps are chosen in Python)."""
    layer = LambdaLayer3d(8, dim_k=4, heads=2, **context).eval()
    height, width = torch.export.Dim("H", min=2, max=6), torch.export.Dim("W", min=2, max=6)
    program = torch.export.export(layer, (torch.randn(2, 8, 4, 5, 5),),
                                  dynamic_shapes={"x": {3: height, 4: width}})
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert "lambda_kernels.lambda_output.default" in targets
    for size in [(2, 6), (6, 6), (3, 4)]:
        x = torch.randn(2, 8, 4, *size)
        torch.testing.assert_close(program.module()(x), layer(x), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------ torch.compile
COMPILED_BACKENDS = ["cpu", "reference"] if CPU_RUNS else ["reference"]


@pytest.mark.parametrize("backend", COMPILED_BACKENDS)
def test_compiled_layer_fullgraph_matches_eager(backend):
    """One graph through the temporal taps; inductor for the fused ops (their fake
    implementations), aot_eager for the reference (inductor adds a minute of C++ builds)."""
    layer = LambdaLayer3d(6, dim_k=3, r=(3, 5, 3), heads=2, dim_u=2, stride=2, backend=backend)
    x = torch.randn(2, 6, 4, 6, 5, requires_grad=True)
    torch._dynamo.reset()
    compiled = torch.compile(copy.deepcopy(layer), fullgraph=True,
                             backend="inductor" if backend != "reference" else "aot_eager")
    assert_compiled_matches_eager(layer, compiled, x, backend)


# ------------------------------------------------------------------------------ memory rule
@pytest.mark.skipif(not CPU_RUNS, reason="cpu back end unavailable")
def test_peak_memory_never_builds_positional_lambda():
    # λp (B, k, v, T·H·W) = 268 MB in float32; each input is 2 MB. The same probe as the 2-D
    # test in tests/test_cpu_backend.py (peak RSS of a fresh process, step and repeat).
    # Measured on the development machine: ~50 MB for the first step, ~20 MB for a repeat
    # (input-sized tensors: the time-major copies of q and the values, per-tap outputs and
    # gradient slices, the gradients).
    b, h, k, u, v, tt, hh, ww, rt, rh, rw = 1, 1, 128, 1, 128, 4, 32, 32, 3, 5, 5
    lam_p_bytes = 4 * b * tt * hh * ww * k * v
    input_bytes = 4 * b * tt * hh * ww * k
    first, steady = peak_memory_increase(
        "lambda_op3d", (b, h, k, tt, hh, ww), (b, u, k, tt, hh, ww), (b, u, v, tt, hh, ww),
        (rt, rh, rw, k, u), (b, h, v, tt, hh, ww))
    assert first < lam_p_bytes / 2, (first, lam_p_bytes)
    assert steady < min(lam_p_bytes / 4, 16 * input_bytes), (steady, lam_p_bytes)


@pytest.mark.skipif(not CPU_RUNS, reason="cpu back end unavailable")
def test_jit_trace_records_the_reference_formulas():
    """Tracing for another runtime (jit.trace, ONNX) records standard operators only."""
    inputs = SHAPES3D[3].inputs(torch.float64, seed=3)
    traced = torch.jit.trace(lambda *a: lambda_op3d(*a, backend="cpu"), inputs,
                             check_trace=False)
    assert "lambda_kernels::" not in str(traced.graph)  # no custom op recorded
    fresh = SHAPES3D[3].inputs(torch.float64, seed=4)
    torch.testing.assert_close(traced(*fresh), reference.lambda_reference3d(*fresh),
                               rtol=1e-10, atol=1e-10)


@pytest.mark.skipif(not CPU_RUNS, reason="the cpu back end is not built")
@pytest.mark.parametrize("context", [{"r": (3, 3, 5)}, {"n": (3, 5, 6)}], ids=["local", "global"])
def test_fx_symbolic_trace_keeps_the_3d_op_as_one_leaf(context):
    """torch.fx.symbolic_trace: lambda_op3d is one leaf node, and the graph (which reads no
    Python sizes of the input) serves other volume sizes too."""
    torch.manual_seed(0)
    layer = LambdaLayer3d(8, dim_k=4, heads=2, dim_u=2, **context).double().eval()
    traced = torch.fx.symbolic_trace(layer)
    leaves = [n for n in traced.graph.nodes if n.op == "call_function" and n.target is lambda_op3d]
    assert len(leaves) == 1
    for size in ((3, 5, 6), (2, 4, 3)):
        x = torch.randn(2, 8, *size, dtype=torch.float64)
        # rounding only: eager eval folds the batch norms, the graph keeps them as modules
        torch.testing.assert_close(traced(x), layer(x), rtol=1e-12, atol=1e-12)
