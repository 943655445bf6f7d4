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
    if train:  # batch-norm running statistics were updated identically
        torch.testing.assert_close(ours.norm_q.running_mean, upstream.norm_q.running_mean)
        torch.testing.assert_close(ours.norm_v.running_var, upstream.norm_v.running_var)


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
