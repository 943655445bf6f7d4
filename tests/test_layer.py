"""LambdaLayer against the real lambda-networks 0.4.0 package, plus what upstream lacks."""
import pytest
import torch

lambda_networks = pytest.importorskip("lambda_networks")

import lambda_kernels  # noqa: E402
from lambda_kernels import LambdaLayer, λLayer  # noqa: E402
from harness import perturb_batch_norms  # noqa: E402

# Back ends that run CPU tensors here. Triton on CPU is its interpreter (fp32/fp16, ~1000x slower
# than a compiled kernel): its layer is checked in test_triton_backend.py, not in these sweeps.
CPU_BACKENDS = [name for name, reason in lambda_kernels.available_backends("cpu").items()
                if reason is None and name != "triton"]

CONFIGS = [
    dict(dim=8, dim_k=4, r=3, heads=2, dim_out=8, dim_u=1),
    dict(dim=6, dim_k=3, r=5, heads=2, dim_out=4, dim_u=3),
    dict(dim=8, dim_k=4, r=9, heads=1, dim_out=6, dim_u=2),   # window larger than the image
    dict(dim=6, dim_k=3, r=11, heads=1, dim_out=4, dim_u=1),
    dict(dim=8, dim_k=4, n=6, heads=2, dim_out=8, dim_u=1),
    dict(dim=6, dim_k=2, n=5, heads=4, dim_out=8, dim_u=2),
]


def _square_size(cfg):
    return cfg.get("n") or 6


def test_backends_under_test_include_a_fused_one_or_reference():
    assert "reference" in CPU_BACKENDS


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_upstream_state_dict_loads_and_matches(cfg, backend, train, dtype):
    tol = dict(rtol=1e-9, atol=1e-9) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
    upstream = lambda_networks.LambdaLayer(**cfg).to(dtype)
    perturb_batch_norms(upstream)
    ours = LambdaLayer(**cfg, backend=backend).to(dtype)
    ours.load_state_dict(upstream.state_dict(), strict=True)
    assert set(ours.state_dict()) == set(upstream.state_dict())
    upstream.train(train)
    ours.train(train)

    size = _square_size(cfg)
    x = torch.randn(2, cfg["dim"], size, size, dtype=dtype)
    x_up = x.clone().requires_grad_()
    x_ours = x.clone().requires_grad_()
    y_up = upstream(x_up)
    y_ours = ours(x_ours)
    assert ours.last_backend == backend
    torch.testing.assert_close(y_ours, y_up, **tol)

    grad = torch.randn_like(y_up)
    y_up.backward(grad)
    y_ours.backward(grad)
    torch.testing.assert_close(x_ours.grad, x_up.grad, **tol)
    up_params = dict(upstream.named_parameters())
    for name, param in ours.named_parameters():
        torch.testing.assert_close(param.grad, up_params[name].grad, **tol,
                                   msg=lambda m, name=name: f"{name}: {m}")
    # batch-norm running statistics (and num_batches_tracked) updated identically in train,
    # untouched in eval
    up_buffers = dict(upstream.named_buffers())
    for name, buffer in ours.named_buffers():
        torch.testing.assert_close(buffer, up_buffers[name], **tol, msg=name)


def test_alias_and_constructor_signature():
    assert λLayer is LambdaLayer
    layer = λLayer(4, dim_k=2, r=3, heads=2)
    assert layer.to_q.weight.shape == (4, 4, 1, 1)
    assert layer.pos_conv.weight.shape == (2, 1, 1, 3, 3)
    assert tuple(layer(torch.randn(1, 4, 5, 5)).shape) == (1, 4, 5, 5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("size", [(3, 5), (6, 2), (1, 4), (5, 1), (4, 6)])
def test_global_context_rectangular_matches_reference(size, backend):
    """Upstream issue #30: global context on H×W with H, W <= n, not only n×n."""
    layer = LambdaLayer(6, dim_k=3, n=6, heads=2, dim_u=2, backend=backend).double().eval()
    x = torch.randn(2, 6, *size, dtype=torch.float64)
    y = layer(x)
    assert tuple(y.shape) == (2, 6, *size)
    # The same layer on the image zero-embedded in the n×n window gives the same lambdas only
    # for the positional part, so check against the reference op built from first principles.
    q, keys, values, pos_table, _ = layer.project(x)
    full = layer.rel_pos_emb  # offsets addressed from the centre n-1 of the full table
    expected = lambda_kernels.reference.lambda_reference(q, keys, values, full.double())
    torch.testing.assert_close(y, expected.reshape(y.shape), rtol=1e-10, atol=1e-10)
    assert pos_table.shape[:2] == (2 * size[0] - 1, 2 * size[1] - 1)


def test_channels_last_input_keeps_format_and_values():
    layer = LambdaLayer(8, dim_k=4, r=5, heads=2, dim_u=2).eval()
    x = torch.randn(2, 8, 6, 7)
    y = layer(x)
    y_cl = layer(x.contiguous(memory_format=torch.channels_last))
    assert y_cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y_cl, y, rtol=1e-5, atol=1e-5)


def test_to_moves_everything_and_float64_runs():
    layer = LambdaLayer(4, dim_k=2, n=5, heads=2).to(torch.float64)
    assert all(t.dtype == torch.float64 for t in layer.parameters())
    y = layer(torch.randn(1, 4, 5, 5, dtype=torch.float64))
    assert y.dtype == torch.float64


def test_bfloat16_autocast_cpu_runs_and_is_close():
    layer = LambdaLayer(8, dim_k=4, r=3, heads=2).eval()
    x = torch.randn(2, 8, 6, 6)
    expected = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), expected, rtol=5e-2, atol=5e-2)


def test_empty_batch_returns_empty_output_with_grad():
    layer = LambdaLayer(4, dim_k=2, r=3, heads=2)
    x = torch.randn(0, 4, 5, 3, requires_grad=True)
    y = layer(x)
    assert tuple(y.shape) == (0, 4, 5, 3)
    y.sum().backward()
    assert x.grad.shape == x.shape


def test_backend_argument_pins_and_reports():
    layer = LambdaLayer(4, dim_k=2, r=3, heads=2, backend="reference")
    layer(torch.randn(1, 4, 3, 3))
    assert layer.last_backend == "reference"
    assert "backend='reference'" in repr(layer)


# ------------------------------------------------------------------ gradients of the whole layer
ALL_CPU_BACKENDS = [name for name, reason in lambda_kernels.available_backends(
    "cpu", torch.float64).items() if reason is None]


@pytest.mark.parametrize("backend", ALL_CPU_BACKENDS)
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("context", ["local", "global"])
def test_layer_gradcheck_float64(backend, batch, train, context):
    """Input and every parameter, float64, batch 1 included (einsum backward hands batch norm a
    (1, C, H, W) gradient with strides (1, 1, W·C, C), which torch 2.14's CPU BatchNorm backward
    gets wrong: the op must return dense gradients)."""
    kwargs = dict(r=3) if context == "local" else dict(n=4)
    layer = LambdaLayer(4, dim_k=2, heads=2, dim_u=2, backend=backend, **kwargs).double()
    perturb_batch_norms(layer)
    layer.train(train)
    params = {name: p.detach().clone().requires_grad_() for name, p in layer.named_parameters()}
    buffers = {name: b.clone() for name, b in layer.named_buffers()}
    x = torch.randn(batch, 4, 3, 4, dtype=torch.float64, requires_grad=True)
    names = list(params)

    def fn(x, *param_values):
        state = {**buffers, **dict(zip(names, param_values))}
        return torch.func.functional_call(layer, state, (x,))

    assert torch.autograd.gradcheck(fn, (x, *params.values()), eps=1e-6, atol=1e-7, rtol=1e-5)
    assert layer.last_backend == backend


@pytest.mark.parametrize("backend", ALL_CPU_BACKENDS)
def test_layer_gradient_does_not_depend_on_the_output_gradient_layout(backend):
    """The strided-gradient repro on the layer: an output gradient laid out (1, C, H, W) with
    strides (1, 1, W·C, C) gives the same gradients as the same values laid out contiguously."""
    layer = LambdaLayer(4, dim_k=2, r=3, heads=2, dim_u=2, backend=backend).double()
    perturb_batch_norms(layer)
    x = torch.randn(1, 4, 4, 4, dtype=torch.float64)
    grad = torch.randn(1, 4, 4, 4, dtype=torch.float64)
    strided = torch.empty_strided((1, 4, 4, 4), (1, 1, 16, 4), dtype=torch.float64)
    strided.copy_(grad)
    results = []
    for g in (grad, strided):
        layer.zero_grad()
        x_leaf = x.clone().requires_grad_()
        layer(x_leaf).backward(g)
        results.append([x_leaf.grad] + [p.grad.clone() for p in layer.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------ stride and sequences
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("size", [(6, 8), (7, 5)])
def test_stride_average_pools_the_stride_1_output(backend, size):
    plain = LambdaLayer(6, dim_k=3, r=5, heads=2, backend=backend).eval()
    strided = LambdaLayer(6, dim_k=3, r=5, heads=2, stride=2, backend=backend).eval()
    strided.load_state_dict(plain.state_dict(), strict=True)
    x = torch.randn(2, 6, *size)
    y = strided(x)
    assert tuple(y.shape) == (2, 6, size[0] // 2, size[1] // 2)
    torch.testing.assert_close(y, torch.nn.functional.avg_pool2d(plain(x), 2))
    assert "stride=2" in repr(strided)


def _layer_1d_reference(layer, x):
    """LambdaLayer1d from first principles: the reference op on the sequence as a 1 × L map."""
    q, keys, values, pos_table, bias = layer.project(x)
    return lambda_kernels.reference.lambda_reference(q, keys, values, pos_table, bias)


@pytest.mark.parametrize("backend", ALL_CPU_BACKENDS)
@pytest.mark.parametrize("kwargs", [dict(r=5, dim_u=2), dict(r=9, heads=1), dict(n=7, dim_u=3)],
                         ids=["r5u2", "r9h1", "n7u3"])
@pytest.mark.parametrize("length", [1, 4, 7])
def test_layer_1d_matches_reference_and_gradcheck(backend, kwargs, length):
    from lambda_kernels import LambdaLayer1d

    kwargs = {"heads": 2, **kwargs}
    layer = LambdaLayer1d(6, dim_k=3, dim_out=4, backend=backend, **kwargs).double()
    perturb_batch_norms(layer)
    x = torch.randn(2, 6, length, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    assert tuple(y.shape) == (2, 4, length) and layer.last_backend == backend
    expected = _layer_1d_reference(layer, x).reshape(y.shape)
    torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-10)
    assert torch.autograd.gradcheck(layer, (x,), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_layer_1d_equals_the_2d_layer_on_a_map_of_height_1():
    from lambda_kernels import LambdaLayer1d

    seq = LambdaLayer1d(6, dim_k=3, r=5, heads=2, dim_u=2, stride=2).eval()
    image = LambdaLayer(6, dim_k=3, r=5, heads=2, dim_u=2).eval()
    state = {name: t.reshape(image.state_dict()[name].shape) if name.startswith("to_") else t
             for name, t in seq.state_dict().items()}
    state["pos_conv.weight"] = seq.pos_conv.weight.detach().reshape(3, 2, 1, 1, 5).expand(
        3, 2, 1, 5, 5) * torch.tensor([0, 0, 1, 0, 0.]).view(1, 1, 1, 5, 1)
    image.load_state_dict(state, strict=True)
    x = torch.randn(2, 6, 9)
    expected = torch.nn.functional.avg_pool1d(image(x.unsqueeze(2)).squeeze(2), 2)
    torch.testing.assert_close(seq(x), expected, rtol=1e-5, atol=1e-5)


def test_layer_1d_rejects_bad_input():
    from lambda_kernels import LambdaLayer1d

    layer = LambdaLayer1d(4, dim_k=2, n=5, heads=2)
    with pytest.raises(ValueError, match=r"\(B, dim, L\) with dim = 4"):
        layer(torch.randn(1, 4, 5, 5))
    with pytest.raises(ValueError, match="L <= 5; x has L=6"):
        layer(torch.randn(1, 4, 6))
    with pytest.raises(ValueError, match="stride must be a positive integer"):
        LambdaLayer1d(4, dim_k=2, r=3, stride=0)


# ------------------------------------------------------------------ fused projections, eval fold
def _layer_of_rank(rank, dtype, **kwargs):
    from lambda_kernels import LambdaLayer1d, LambdaLayer3d

    cls = {1: LambdaLayer1d, 2: LambdaLayer, 3: LambdaLayer3d}[rank]
    layer = cls(6, dim_k=3, heads=2, dim_out=4, dim_u=2, **kwargs).to(dtype)
    return perturb_batch_norms(layer)


def _separate(layer):
    """A copy of `layer` that runs to_q / to_k / to_v and the batch norms one by one, as
    upstream does (a forward hook on a projection turns the fused call off)."""
    import copy

    twin = copy.deepcopy(layer)
    fired = []
    twin.to_q.register_forward_hook(lambda module, args, output: fired.append(True))
    return twin, fired


def _grads_and_buffers(layer, x, dy):
    x = x.detach().clone().requires_grad_()
    layer.zero_grad()
    y = layer(x)
    y.backward(dy)
    return ({"y": y.detach(), "x.grad": x.grad}
            | {f"{n}.grad": p.grad for n, p in layer.named_parameters()}
            | {n: b.clone() for n, b in layer.named_buffers()})


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_projections_match_the_separate_modules(rank, train, dtype):
    """Outputs, the input gradient, every parameter gradient (batch-norm affine parameters
    included: in eval they reach the output only through the folded weights) and the running
    statistics after the step, against the layer running its five modules one by one."""
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-5)
    torch.manual_seed(rank)
    layer = _layer_of_rank(rank, dtype, r=3).train(train)
    twin, fired = _separate(layer)
    x = torch.randn(2, 6, *(4, 5, 3)[:rank], dtype=dtype)
    dy = torch.randn(2, 4, *x.shape[2:], dtype=dtype)
    got = _grads_and_buffers(layer, x, dy)
    want = _grads_and_buffers(twin, x, dy)
    assert fired  # the twin did run the separate modules
    assert set(got) == set(want)
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, **tol, msg=lambda m, n=name: f"{n}: {m}")
    if train:  # the running statistics moved (the comparison above is not vacuous)
        assert not torch.equal(got["norm_q.running_mean"], layer.norm_q.running_mean * 0)


class _CountOps(torch.utils._python_dispatch.TorchDispatchMode):
    """The name of every ATen op run under it, and the dtypes of its tensor arguments."""

    def __init__(self):
        super().__init__()
        self.names, self.dtypes = [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.overloadpacket.__name__)
        self.dtypes.append(tuple(a.dtype for a in args if isinstance(a, torch.Tensor)))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("train", [True, False])
def test_projections_are_one_matrix_product_and_eval_runs_no_batch_norm(train):
    layer = _layer_of_rank(2, torch.float32, r=3).train(train)
    with _CountOps() as ops, torch.no_grad():
        layer(torch.randn(2, 6, 4, 5))
    products = [n for n in ops.names if n in ("mm", "bmm", "addmm", "baddbmm", "convolution")]
    norms = [n for n in ops.names if "batch_norm" in n]
    assert len(products) == 1, ops.names
    assert len(norms) == (2 if train else 0), ops.names


def test_eval_fold_follows_in_place_updates_load_state_dict_and_to():
    """The fold is recomputed from the current parameters and statistics on every call."""
    layer = _layer_of_rank(2, torch.float32, r=3).eval()
    x = torch.randn(2, 6, 4, 5)
    before = layer(x)
    with torch.no_grad():
        layer.norm_v.running_var.mul_(3.0)
        layer.norm_q.weight.add_(0.25)
        layer.to_k.weight.mul_(-1.0)
    twin, _ = _separate(layer)
    after = layer(x)
    assert not torch.allclose(after, before, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(after, twin(x), rtol=2e-5, atol=2e-5)
    other = _layer_of_rank(2, torch.float32, r=3).eval()
    layer.load_state_dict(other.state_dict())
    torch.testing.assert_close(layer(x), other(x), rtol=0, atol=0)
    layer.double()
    twin, _ = _separate(layer)
    y64 = layer(x.double())
    assert y64.dtype == torch.float64
    torch.testing.assert_close(y64, twin(x.double()), rtol=1e-10, atol=1e-10)


def test_eval_fold_handles_a_batch_norm_without_affine_or_in_train_mode_alone():
    """norm_q without affine parameters folds; norm_v left in train mode (the layer in eval)
    runs as its module, normalising by batch statistics and updating its running ones."""
    layer = LambdaLayer(6, dim_k=3, r=3, heads=2, dim_out=4, dim_u=2)
    layer.norm_q = torch.nn.BatchNorm2d(6, affine=False)
    perturb_batch_norms_stats(layer.norm_q)
    perturb_batch_norms_stats(layer.norm_v)
    layer.eval()
    layer.norm_v.train()
    twin, fired = _separate(layer)
    x = torch.randn(2, 6, 4, 5)
    torch.testing.assert_close(layer(x), twin(x), rtol=2e-5, atol=2e-5)
    assert fired
    torch.testing.assert_close(layer.norm_v.running_var, twin.norm_v.running_var)
    assert layer.norm_v.num_batches_tracked.item() == 1


def perturb_batch_norms_stats(bn):
    with torch.no_grad():
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 1.5)


def test_hooks_on_a_projection_still_fire_and_a_replaced_projection_runs():
    layer = _layer_of_rank(2, torch.float32, r=3).eval()
    x = torch.randn(2, 6, 4, 5)
    expected = layer(x)
    seen = []
    handle = layer.to_v.register_forward_hook(lambda m, a, out: seen.append(out.shape))
    torch.testing.assert_close(layer(x), expected, rtol=2e-5, atol=2e-5)
    assert seen == [(2, 4, 4, 5)]
    handle.remove()
    bias_free = layer.to_k
    layer.to_k = torch.nn.Conv2d(6, 6, 1, bias=True)  # not a bias-free projection: runs as is
    with torch.no_grad():
        layer.to_k.weight.copy_(bias_free.weight)
        layer.to_k.bias.fill_(0.0)
    torch.testing.assert_close(layer(x), expected, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("native", [True, False], ids=["native", "no-native"])
@pytest.mark.parametrize("mode", ["bfloat16", "float16", "autocast"])
@pytest.mark.parametrize("train", [True, False])
def test_reduced_precision_projection_runs_where_the_cpu_gemm_is_native(monkeypatch, native,
                                                                        mode, train):
    """The fused projection GEMM runs in bf16/fp16 where torch's CPU GEMM has that dtype
    natively, and in fp32 (rounded once to the activations' dtype) where it does not (bf16 on
    AVX2 CPUs). Both routes: the layer matches its float64 twin at the dtype's tolerance,
    outputs, input and parameter gradients."""
    from lambda_kernels import _cpu_gemm

    reduced = torch.float16 if mode == "float16" else torch.bfloat16
    monkeypatch.setitem(_cpu_gemm._CPU_NATIVE_GEMM, reduced, native)
    torch.manual_seed(5)
    exact = _layer_of_rank(2, torch.float64, r=5).train(train)
    layer = _layer_of_rank(2, torch.float32, r=5).train(train)
    layer.load_state_dict(exact.state_dict())
    if mode != "autocast":
        layer = layer.to(reduced)
    x = torch.randn(2, 6, 7, 5, dtype=torch.float64)
    dy = torch.randn(2, 4, 7, 5, dtype=torch.float64)
    want = _grads_and_buffers(exact, x, dy)
    x_in = x.to(torch.float32 if mode == "autocast" else reduced)
    with _CountOps() as ops, torch.autocast("cpu", dtype=reduced, enabled=mode == "autocast"):
        got = _grads_and_buffers(layer, x_in, dy.to(reduced))
    assert got["y"].dtype == reduced
    forward_gemm = next(d for n, d in zip(ops.names, ops.dtypes) if n == "bmm")
    assert forward_gemm == ((reduced, reduced) if native else (torch.float32, torch.float32))
    for name in ["y", "x.grad"] + [f"{n}.grad" for n, _ in exact.named_parameters()]:
        scale = max(want[name].abs().max().item(), 1.0)
        torch.testing.assert_close(got[name].double(), want[name], rtol=0, atol=3e-2 * scale,
                                   msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("train", [True, False])
def test_bfloat16_autocast_matches_lambda_networks(train):
    """Under CPU bf16 autocast (one bf16 GEMM with the folded weights in eval) against
    lambda-networks under the same autocast, outputs and gradients at bf16 tolerance."""
    cfg = dict(dim=16, dim_k=4, r=5, heads=2, dim_out=8, dim_u=1)
    torch.manual_seed(3)
    upstream = perturb_batch_norms(lambda_networks.LambdaLayer(**cfg)).train(train)
    ours = LambdaLayer(**cfg).train(train)
    ours.load_state_dict(upstream.state_dict(), strict=True)
    x = torch.randn(2, 16, 7, 6)
    results = []
    for layer in (upstream, ours):
        leaf = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = layer(leaf)
        assert y.dtype == torch.bfloat16
        y.float().square().sum().backward()
        results.append([y.float(), leaf.grad] + [p.grad for p in layer.parameters()])
    for got, want in zip(results[1], results[0]):
        scale = want.abs().max().item()
        torch.testing.assert_close(got, want, rtol=0, atol=4e-2 * max(scale, 1.0))
    if train:
        torch.testing.assert_close(ours.norm_q.running_mean, upstream.norm_q.running_mean,
                                   rtol=2e-2, atol=2e-2)


def test_fx_traced_layer_follows_train_and_eval_like_its_batch_norms():
    """A graph traced in eval mode and run in train mode normalises by batch statistics (the
    batch norms are leaf modules of the graph, not folded at trace time), and back."""
    layer = _layer_of_rank(2, torch.float64, r=3).eval()
    traced = torch.fx.symbolic_trace(layer)
    x = torch.randn(2, 6, 4, 5, dtype=torch.float64)
    twin, _ = _separate(layer)
    torch.testing.assert_close(traced(x), twin(x), rtol=1e-10, atol=1e-10)
    traced.train()
    twin.train()
    torch.testing.assert_close(traced(x), twin(x), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(traced.norm_v.running_var, twin.norm_v.running_var)
