"""lambda_kernels.models: layouts, arguments, channels_last, autocast and torch.compile of whole
LambdaResNets (tiny widths keep it fast; the layouts themselves are checked at full width)."""
import copy

import pytest
import torch

from lambda_kernels import LambdaLayer
from lambda_kernels.models import (CONFIGS, LambdaBlock, LambdaResNet, create_model, get_config,
                                   list_models, to_channels_last)

TINY = dict(depths=(1, 1, 1, 1), channels=(32, 64, 128, 256), stem_channels=16, dim_k=4)


def tiny_model(name="lambda_resnet26t", **kwargs):
    return create_model(name, num_classes=5, **{**TINY, "r": 3, **kwargs})


def lambda_blocks_per_stage(model):
    return [sum(isinstance(b, LambdaBlock) for b in stage) for stage in model.stages]


@pytest.mark.parametrize("name, per_stage, context", [
    ("lambda_resnet26", [0, 0, 2, 2], {"r": 23}),
    ("lambda_resnet38", [0, 0, 3, 3], {"r": 23}),
    ("lambda_resnet50", [0, 0, 6, 3], {"r": 23}),
    ("lambda_resnet26t", [0, 0, 1, 2], {"r": 9}),
    ("lambda_resnet50ts", [0, 1, 3, 1], {"r": 9}),
    ("lambda_resnet26rpt_256", [0, 0, 1, 2], {"r": None}),
])
def test_layouts(name, per_stage, context):
    """Placement of the lambda blocks, depths and widths of every named model (built on the
    meta device: no memory, no initialisation cost)."""
    with torch.device("meta"):
        model = create_model(name, num_classes=10)
    assert lambda_blocks_per_stage(model) == per_stage
    depth = 3 * sum(len(stage) for stage in model.stages) + 2
    assert depth == int(name.split("resnet")[1][:2])
    assert [stage[-1].conv3_1x1.conv.out_channels for stage in model.stages] == \
        [256, 512, 1024, 2048]
    layers = [m for m in model.modules() if isinstance(m, LambdaLayer)]
    assert all(layer.r == context["r"] and layer.dim_k == 16 and layer.heads == 4
               and layer.u == 1 for layer in layers)
    # a strided first block pools after its lambda layer
    for stage in model.stages:
        if isinstance(stage[0], LambdaBlock):
            assert stage[0].self_attn.stride == 2
    if context["r"] is None:  # global context sized by the 256-px input: c4 16×16, c5 8×8
        assert [layer.n for layer in layers] == [16, 16, 8]


def test_list_and_overrides():
    assert set(list_models()) == set(CONFIGS) and "lambda_resnet50" in list_models()
    config = get_config("lambda_resnet50", r=15, depths=(1, 2, 3, 1), lambda_at="last",
                        img_size=[96, 128])
    assert config.r == 15 and [s.depth for s in config.stages] == [1, 2, 3, 1]
    assert [s.lambda_at for s in config.stages] == ["last"] * 4
    assert config.img_size == (96, 128)
    with torch.device("meta"):
        model = create_model("lambda_resnet50", r=15)
    assert {m.r for m in model.modules() if isinstance(m, LambdaLayer)} == {15}
    glob = tiny_model("lambda_resnet26rpt_256", r=None, img_size=(64, 96))
    # tiny depths: one lambda block in c4 (input 8×12) and c5 (input 4×6)
    assert [m.n for m in glob.modules() if isinstance(m, LambdaLayer)] == [12, 6]


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(name="resnet50"), ValueError, "unknown model name 'resnet50'"),
    (dict(widht=3), TypeError, "unknown LambdaResNet argument.*'widht'"),
    (dict(depths=(1, 1)), ValueError, "depths must give one value per stage"),
    (dict(r=4), ValueError, "r must be a positive odd integer"),
    (dict(lambda_at="sometimes"), ValueError, r"stages\[0\].lambda_at must be one of"),
    (dict(num_classes=0), ValueError, "num_classes must be a positive integer"),
    (dict(act="gelu"), ValueError, "act must be 'relu' or 'silu'"),
    (dict(img_size=(32, 0)), ValueError, "img_size must be"),
])
def test_bad_arguments_name_the_argument(kwargs, error, match):
    name = kwargs.pop("name", "lambda_resnet26t")
    with pytest.raises(error, match=match):
        create_model(name, **kwargs)


def test_bad_inputs_name_the_argument():
    model = tiny_model().eval()
    with pytest.raises(ValueError, match=r"x must have shape \(B, 3, H, W\)"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="stages.3.0 would get a 1×1 map"):
        model(torch.randn(1, 3, 16, 16))
    glob = tiny_model("lambda_resnet26rpt_256", r=None, img_size=32).eval()
    assert glob(torch.randn(1, 3, 32, 32)).shape == (1, 5)
    with pytest.raises(ValueError, match="global context with n=4"):
        glob(torch.randn(1, 3, 64, 64))


def test_zero_init_last_starts_residual_branches_at_zero():
    model = tiny_model()
    last_bns = [block.conv3_1x1.bn.weight for stage in model.stages for block in stage]
    assert all(bool((w == 0).all()) for w in last_bns)
    model = tiny_model(zero_init_last=False)
    assert all(bool((block.conv3_1x1.bn.weight == 1).all())
               for stage in model.stages for block in stage)


def _randomise_batch_norms(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)


def test_channels_last_matches_contiguous():
    model = tiny_model().double()  # float64: train-mode batch norms amplify rounding
    _randomise_batch_norms(model)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    ref_model = copy.deepcopy(model)
    cl_model = model.to(memory_format=torch.channels_last)
    assert cl_model.stem.conv1.conv.weight.is_contiguous(memory_format=torch.channels_last)
    for mode in ("eval", "train"):
        getattr(ref_model, mode)()
        getattr(cl_model, mode)()
        x_ref = x.clone().requires_grad_(True)
        x_cl = x.clone().contiguous(memory_format=torch.channels_last).requires_grad_(True)
        y_ref, y_cl = ref_model(x_ref), cl_model(x_cl)
        torch.testing.assert_close(y_cl, y_ref, rtol=1e-9, atol=1e-9)
        y_ref.square().sum().backward()
        y_cl.square().sum().backward()
        torch.testing.assert_close(x_cl.grad, x_ref.grad, rtol=1e-9, atol=1e-9)


def test_to_channels_last_on_any_module_with_local_lambda_layers():
    """Module.to(memory_format=channels_last) raises on the 5-D pos_conv weight; the helper
    converts the 4-D tensors only."""
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), LambdaLayer(8, dim_k=4, r=3))
    with pytest.raises(RuntimeError, match="rank 4"):
        copy.deepcopy(net).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 6, 6)
    y = net(x)
    assert to_channels_last(net) is net
    assert net[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert net[1].to_q.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(net(x.contiguous(memory_format=torch.channels_last)), y)
    with pytest.raises(ValueError, match="memory_format must be torch.channels_last"):
        tiny_model().to(memory_format=torch.preserve_format)


def test_autocast_bf16_forward_backward():
    model = tiny_model()
    _randomise_batch_norms(model)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        y_fp32 = model.eval()(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_bf16 = model(x)
    assert y_bf16.dtype == torch.bfloat16
    torch.testing.assert_close(y_bf16.float(), y_fp32, rtol=0.1, atol=0.1)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(x).float().logsumexp(1).mean()
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all()
               for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_compiled_model_fullgraph_matches_eager():
    """The whole network is one graph (no breaks) and its forward and backward equal eager's.
    aot_eager keeps CI fast: inductor over this network compiles for ~90 s on 2 cores, and
    tests/test_compile.py runs inductor on the layers themselves."""
    model = tiny_model()
    _randomise_batch_norms(model)
    x = torch.randn(2, 3, 32, 32)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(copy.deepcopy(model))(x)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    eager, twin = model, copy.deepcopy(model)  # each updates its own running statistics
    compiled = torch.compile(twin, fullgraph=True, backend="aot_eager")
    x_e = x.clone().requires_grad_(True)
    x_c = x.clone().requires_grad_(True)
    y_e, y_c = eager(x_e), compiled(x_c)
    torch.testing.assert_close(y_c, y_e, rtol=1e-5, atol=1e-5)
    y_e.square().sum().backward()
    y_c.square().sum().backward()
    torch.testing.assert_close(x_c.grad, x_e.grad, rtol=1e-4, atol=1e-5)
    for (name, p_e), p_c in zip(eager.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p_c.grad, p_e.grad, rtol=1e-4, atol=1e-5, msg=name)
    for buffer_e, buffer_c in zip(eager.buffers(), twin.buffers()):
        torch.testing.assert_close(buffer_c, buffer_e, rtol=1e-5, atol=1e-6)
    layers = [m for m in twin.modules() if isinstance(m, LambdaLayer)]
    assert layers and all(layer.last_backend == layers[0].last_backend for layer in layers)
    with torch.no_grad():  # inference: batch norms on running statistics, another graph
        torch.testing.assert_close(compiled.eval()(x), eager.eval()(x), rtol=1e-5, atol=1e-5)


def test_backend_argument_reaches_every_layer():
    model = tiny_model(backend="reference")
    model(torch.randn(2, 3, 32, 32))
    layers = [m for m in model.modules() if isinstance(m, LambdaLayer)]
    assert [layer.last_backend for layer in layers] == ["reference"] * len(layers)
    assert isinstance(model, LambdaResNet)
