"""lambda_kernels.convert: timm and lambda-networks layers swapped for ours compute the same
outputs and gradients (float64, train and eval), whole models included."""
import copy

import pytest
import torch
from torch import nn

from lambda_kernels import LambdaLayer
from lambda_kernels.convert import (from_lucidrains, from_timm, lambda_layer_from_timm,
                                    lambda_tensors_from_timm, state_dict_from_timm)

TIGHT = dict(rtol=1e-9, atol=1e-9)


def _randomise(module):
    """Batch-norm statistics and affine parameters away from their initial values, position
    tables at unit scale, qkv biases non-zero: every mapped tensor matters."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
        for name, p in module.named_parameters():
            if name.endswith(("pos_emb", "qkv.bias")):
                p.normal_()


def _timm_layer_class():
    return pytest.importorskip("timm.layers.lambda_layer").LambdaLayer


def _timm_grads_in_our_names(model, grads: dict, timm_layer_class) -> dict:
    """Stock-model gradients renamed and reshaped like the converted model's parameters."""
    out = dict(grads)
    for prefix, layer in model.named_modules():
        if isinstance(layer, timm_layer_class):
            dot = prefix + "." if prefix else ""
            local = {k[len(dot):]: out.pop(k) for k in list(out) if k.startswith(dot)
                     and k[len(dot):] in dict(layer.named_parameters())}
            local.pop("qkv.bias", None)  # folded into running statistics: no parameter
            n = max(layer.feat_size) if layer.feat_size is not None else None
            mapped = lambda_tensors_from_timm(local, heads=layer.num_heads, dim_k=layer.dim_qk,
                                              dim_v=layer.dim_v, n=n)
            out.update({dot + k: v for k, v in mapped.items()})
    return out


def _compare(stock, converted, x, timm_layer_class=None):
    """Outputs, input gradients and parameter gradients, in train then eval mode."""
    for mode in ("train", "eval"):
        stock.train(mode == "train")
        converted.train(mode == "train")
        x_s, x_c = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        y_s, y_c = stock(x_s), converted(x_c)
        torch.testing.assert_close(y_c, y_s, **TIGHT)
        dy = torch.randn_like(y_s)
        params_s = dict(stock.named_parameters())
        params_c = dict(converted.named_parameters())
        grads_s = torch.autograd.grad(y_s, [x_s, *params_s.values()], dy)
        grads_c = torch.autograd.grad(y_c, [x_c, *params_c.values()], dy)
        torch.testing.assert_close(grads_c[0], grads_s[0], **TIGHT)
        named_s = dict(zip(params_s, grads_s[1:]))
        if timm_layer_class is not None:
            named_s = _timm_grads_in_our_names(stock, named_s, timm_layer_class)
        named_c = dict(zip(params_c, grads_c[1:]))
        assert set(named_c) == set(named_s)
        for name, grad in named_c.items():
            torch.testing.assert_close(grad, named_s[name], **TIGHT, msg=name)
    # running statistics updated alike by the train-mode pass (folded qkv biases shift them)
    buffers_c = dict(converted.named_buffers())
    folded = any(name.endswith("qkv.bias") for name, _ in stock.named_parameters())
    for name, b_s in stock.named_buffers():
        if name in buffers_c and not (folded and name.endswith("running_mean")):
            torch.testing.assert_close(buffers_c[name], b_s, **TIGHT, msg=name)


@pytest.mark.parametrize("kwargs, shape", [
    (dict(r=5), (2, 16, 6, 5)),
    (dict(r=None, feat_size=(6, 4)), (2, 16, 6, 4)),             # rectangular global context
    (dict(r=None, feat_size=(4, 6), stride=2), (2, 16, 4, 6)),
    (dict(r=3, stride=2, qkv_bias=True), (2, 16, 6, 6)),
], ids=["local", "global-rect", "global-stride2", "local-stride2-qkv-bias"])
def test_timm_layer(kwargs, shape):
    timm_layer_class = _timm_layer_class()
    stock = timm_layer_class(16, dim_head=4, num_heads=2, **kwargs).double()
    _randomise(stock)
    converted = from_timm(copy.deepcopy(stock))
    assert isinstance(converted, LambdaLayer)
    assert converted.stride == kwargs.get("stride", 1)
    _compare(stock, converted, torch.randn(*shape, dtype=torch.float64), timm_layer_class)
    assert converted.last_backend == "cpu"
    if kwargs.get("qkv_bias"):  # folded: running_mean (ours) = running_mean (timm) - bias
        q_bias = stock.qkv.bias.detach()[:8]
        torch.testing.assert_close(converted.norm_q.running_mean + q_bias,
                                   stock.norm_q.running_mean)


@pytest.mark.parametrize("name", ["lambda_resnet26t", "lambda_resnet26rpt_256"])
def test_timm_model(name):
    """A whole timm model at 64 px: stock and converted give the same logits and gradients."""
    timm = pytest.importorskip("timm")
    timm_layer_class = _timm_layer_class()
    kwargs = {"img_size": 64} if "rpt" in name else {}
    torch.manual_seed(0)
    stock = timm.create_model(name, num_classes=7, **kwargs).double()
    _randomise(stock)
    converted = from_timm(copy.deepcopy(stock))
    assert not any(isinstance(m, timm_layer_class) for m in converted.modules())
    ours = [m for m in converted.modules() if isinstance(m, LambdaLayer)]
    assert len(ours) == 3 and [m.stride for m in ours] == [1, 2, 1]
    _compare(stock, converted, torch.randn(2, 3, 64, 64, dtype=torch.float64), timm_layer_class)


@pytest.mark.parametrize("name", ["lambda_resnet26t", "lambda_resnet50ts",
                                  "lambda_resnet26rpt_256"])
def test_timm_state_dict_loads_into_our_models(name):
    """Our models have timm's layouts: timm weights load strictly and give the same logits."""
    timm = pytest.importorskip("timm")
    from lambda_kernels.models import create_model
    kwargs = {"img_size": 64} if "rpt" in name else {}
    stock = timm.create_model(name, num_classes=7, **kwargs).double()
    _randomise(stock)
    ours = create_model(name, num_classes=7, img_size=64).double()
    ours.load_state_dict(state_dict_from_timm(stock.state_dict()), strict=True)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    for mode in (True, False):
        torch.testing.assert_close(ours.train(mode)(x), stock.train(mode)(x), **TIGHT)


def test_timm_conversion_keeps_device_dtype_mode_and_frozen_parameters():
    timm_layer_class = _timm_layer_class()
    stock = timm_layer_class(8, dim_head=4, num_heads=2, r=3).to(torch.float64).eval()
    stock.qkv.weight.requires_grad_(False)
    ours = lambda_layer_from_timm(stock, backend="reference")
    assert ours.backend == "reference" and not ours.training
    assert ours.to_q.weight.dtype == torch.float64
    assert not ours.to_q.weight.requires_grad and not ours.to_v.weight.requires_grad
    assert ours.pos_conv.weight.requires_grad


def test_conversion_errors_name_the_argument():
    timm_layer_class = _timm_layer_class()
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        from_timm("lambda_resnet26t")
    with pytest.raises(TypeError, match="layer must be a timm LambdaLayer"):
        lambda_layer_from_timm(nn.Conv2d(3, 3, 1))
    with pytest.raises(ValueError, match="qkv.weight has 5 output channels"):
        lambda_tensors_from_timm({"qkv.weight": torch.zeros(5, 4, 1, 1)}, heads=2, dim_k=2,
                                 dim_v=4)
    with pytest.raises(ValueError, match="unexpected tensor 'rel_pos_indices'"):
        lambda_tensors_from_timm({"rel_pos_indices": torch.zeros(2)}, heads=2, dim_k=2, dim_v=4)
    assert isinstance(timm_layer_class(8, dim_head=4, num_heads=2), nn.Module)


class _UpstreamNet(nn.Module):
    """A model using lambda-networks layers, one of them shared by two parents."""

    def __init__(self, upstream_class):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.local = upstream_class(16, dim_k=4, r=5, heads=2, dim_u=2)
        self.glob = upstream_class(16, dim_k=4, n=6, heads=4, dim_out=16)
        self.branch = nn.Sequential(nn.ReLU(), self.glob)

    def forward(self, x):
        x = self.local(self.stem(x))
        return self.branch(x) + self.glob(x)


def test_lucidrains_model():
    lambda_networks = pytest.importorskip("lambda_networks")
    torch.manual_seed(0)
    stock = _UpstreamNet(lambda_networks.LambdaLayer).double()
    _randomise(stock)
    converted = from_lucidrains(copy.deepcopy(stock))
    assert isinstance(converted.local, LambdaLayer) and isinstance(converted.glob, LambdaLayer)
    assert converted.branch[1] is converted.glob          # sharing preserved
    assert (converted.local.u, converted.local.r, converted.glob.n) == (2, 5, 6)
    _compare(stock, converted, torch.randn(2, 3, 6, 6, dtype=torch.float64))
    layer = lambda_networks.LambdaLayer(8, dim_k=4, r=3, heads=2)
    assert isinstance(from_lucidrains(layer, backend="reference"), LambdaLayer)


class _ProjectionProducts(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the products and convolutions an op sequence runs (and batch norms)."""

    def __init__(self):
        super().__init__()
        self.products, self.norms = 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.products += name in ("mm", "bmm", "addmm", "baddbmm", "convolution")
        self.norms += "batch_norm" in name
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("train", [True, False])
def test_timm_layer_keeps_one_qkv_product_and_matches_under_bf16_autocast(train):
    """The converted layer runs timm's fused qkv projection as one product (eval: with the
    batch norms folded into it, so no batch-norm pass), and under CPU bf16 autocast its output
    and input gradient stay within bf16 tolerance of the stock layer's."""
    timm_layer_class = _timm_layer_class()
    torch.manual_seed(1)
    stock = timm_layer_class(16, dim_head=4, num_heads=2, r=5).train(train)
    _randomise(stock)
    converted = from_timm(copy.deepcopy(stock))
    x = torch.randn(2, 16, 7, 6)
    with _ProjectionProducts() as count, torch.no_grad():
        converted(x)
    assert count.products == 1 and count.norms == (2 if train else 0)
    results = []
    for layer in (stock, converted):
        leaf = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = layer(leaf)
        y.float().square().sum().backward()
        results.append((y.float(), leaf.grad))
    for got, want in zip(*reversed(results)):
        torch.testing.assert_close(got, want, rtol=0, atol=4e-2 * max(want.abs().max().item(), 1))
