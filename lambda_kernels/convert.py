"""Swap the lambda layers of existing models for this package's fused LambdaLayer, weights kept.

    from lambda_kernels.convert import from_timm, from_lucidrains, state_dict_from_timm
    model = from_timm(timm.create_model("lambda_resnet26t", pretrained=True))   # in place
    model = from_lucidrains(my_model_with_lambda_networks_layers)               # in place
    ours = create_model("lambda_resnet26t"); ours.load_state_dict(state_dict_from_timm(sd))

timm's LambdaLayer (u = 1, fused qkv projection) maps onto ours exactly:

    qkv.weight (h·k + k + v, C, 1, 1)  -> to_q / to_k / to_v weights (split in that order;
                                          our layer runs them as one matrix product on the
                                          concatenated weights, so the projection stays one
                                          GEMM as in timm, with eval batch norms folded in)
    qkv.bias (qkv_bias=True)           -> folded away: the key bias cancels in the softmax over
                                          positions; the q and v biases feed batch norms, where
                                          they shift running_mean (training-mode batch statistics
                                          remove them), so running_mean -= bias is exact
    norm_q, norm_v                     -> norm_q, norm_v
    conv_lambda Conv3d(1, k, (r, r, 1)) over (H, W, v)
                                       -> pos_conv Conv3d(1, k, (1, r, r)) over (v, H, W)
    pos_emb (2H-1, 2W-1, k) for a fixed feat_size (H, W)
                                       -> rel_pos_emb (2n-1, 2n-1, k, 1), n = max(H, W), the
                                          table in its centre (zeros beyond: offsets that inputs
                                          of feat_size never reach)
    pool AvgPool2d(2, 2) (stride 2)    -> stride=2

lambda-networks 0.4.0 layers have our constructor and state_dict, so they load as they are.
Conversions happen in place (the model is returned, or the new layer when the model *is* a
layer); modules shared by several parents stay shared. Forward hooks registered on the old
layers do not carry over.
"""
from __future__ import annotations

import re
from typing import Callable, Mapping, Optional

import torch
from torch import nn

from .layer import LambdaLayer

_BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_POST_ATTN = re.compile(r"^(.*\.post_attn)\.(" + "|".join(_BN_KEYS) + r")$")


# ---------------------------------------------------------------------------------------------
# tensors


def lambda_tensors_from_timm(tensors: Mapping[str, torch.Tensor], *, heads: int, dim_k: int,
                             dim_v: int, n: Optional[int] = None) -> dict[str, torch.Tensor]:
    """Tensors of one timm LambdaLayer (its state_dict keys, or any subset such as the gradients
    of its parameters) under our names and layouts (module docstring). `n`: the global-context
    size of our layer (default: the smallest that holds pos_emb)."""
    out: dict[str, torch.Tensor] = {}
    for key, t in tensors.items():
        if key == "qkv.weight":
            if t.shape[0] != heads * dim_k + dim_k + dim_v:
                raise ValueError(f"qkv.weight has {t.shape[0]} output channels, expected "
                                 f"heads*dim_k + dim_k + dim_v = {heads * dim_k + dim_k + dim_v}")
            q, k, v = t.split([heads * dim_k, dim_k, dim_v], dim=0)
            out.update({"to_q.weight": q, "to_k.weight": k, "to_v.weight": v})
        elif key == "qkv.bias":
            continue  # folded below
        elif key.startswith(("norm_q.", "norm_v.")):
            out[key] = t
        elif key == "conv_lambda.weight":  # (k, 1, r, r, 1) -> (k, 1, 1, r, r)
            out["pos_conv.weight"] = t.permute(0, 1, 4, 2, 3)
        elif key == "conv_lambda.bias":
            out["pos_conv.bias"] = t
        elif key == "pos_emb":
            rows, cols = t.shape[0], t.shape[1]
            size = n if n is not None else max(rows + 1, cols + 1) // 2
            if 2 * size - 1 < max(rows, cols):
                raise ValueError(f"n={size} is too small for pos_emb of shape {tuple(t.shape)}")
            table = t.new_zeros(2 * size - 1, 2 * size - 1, t.shape[2], 1)
            top, left = size - (rows + 1) // 2, size - (cols + 1) // 2
            table[top:top + rows, left:left + cols, :, 0] = t
            out["rel_pos_emb"] = table
        else:
            raise ValueError(f"unexpected tensor {key!r} in a timm LambdaLayer")
    if "qkv.bias" in tensors:
        q_bias, _, v_bias = tensors["qkv.bias"].split([heads * dim_k, dim_k, dim_v], dim=0)
        for norm, bias in (("norm_q", q_bias), ("norm_v", v_bias)):
            if f"{norm}.running_mean" not in tensors:
                raise ValueError(f"qkv.bias is folded into {norm}.running_mean, which is missing")
            out[f"{norm}.running_mean"] = tensors[f"{norm}.running_mean"] - bias
    return out


def state_dict_from_timm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A timm lambda_resnet26t / lambda_resnet50ts / lambda_resnet26rpt_256 state_dict under the
    names of lambda_kernels.models' networks (same architecture name there)."""
    out: dict[str, torch.Tensor] = {}
    prefixes = [k[:-len("qkv.weight")] for k in state_dict
                if k.endswith("qkv.weight") and k[:-len("qkv.weight")] + "norm_q.weight" in state_dict]
    handled = set()
    for prefix in prefixes:
        local = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        dim_v = local["norm_v.weight"].shape[0]
        heads_k = local["norm_q.weight"].shape[0]
        dim_k = local["qkv.weight"].shape[0] - heads_k - dim_v
        if dim_k < 1 or heads_k % dim_k:
            raise ValueError(f"{prefix}qkv.weight does not split into heads*k + k + v channels")
        mapped = lambda_tensors_from_timm(local, heads=heads_k // dim_k, dim_k=dim_k,
                                          dim_v=dim_v)
        out.update({prefix + k: v for k, v in mapped.items()})
        handled.update(prefix + k for k in local)
    for key, value in state_dict.items():
        if key in handled:
            continue
        match = _POST_ATTN.match(key)
        out[f"{match.group(1)}.bn.{match.group(2)}" if match else key] = value
    return out


# ---------------------------------------------------------------------------------------------
# modules


def _timm_lambda_class():
    try:
        from timm.layers.lambda_layer import LambdaLayer as TimmLambdaLayer
    except ImportError as exc:
        raise ImportError("from_timm needs timm: pip install \"lambda-kernels[timm]\"") from exc
    return TimmLambdaLayer


def _copy_norm_settings(ours: LambdaLayer, source: nn.Module) -> None:
    for name in ("norm_q", "norm_v"):
        theirs = getattr(source, name)
        if not (isinstance(theirs, nn.BatchNorm2d) and theirs.affine
                and theirs.track_running_stats):
            raise ValueError(f"{name} must be an affine BatchNorm2d with running statistics, got "
                             f"{theirs!r}")
        mine = getattr(ours, name)
        mine.eps, mine.momentum = theirs.eps, theirs.momentum


def _load(ours: LambdaLayer, source: nn.Module, tensors: Mapping[str, torch.Tensor],
          sources: Mapping[str, str]) -> LambdaLayer:
    """Load `tensors` into `ours` on the device and in the dtype of `source` (before loading:
    load_state_dict copies into the existing dtype), then take its train/eval mode, batch-norm
    settings and requires_grad flags (sources: our parameter name -> the source parameter it
    came from)."""
    reference = next(source.parameters())
    ours.to(device=reference.device, dtype=reference.dtype)
    ours.load_state_dict(tensors, strict=True)
    _copy_norm_settings(ours, source)
    ours.train(source.training)
    theirs = dict(source.named_parameters())
    for name, param in ours.named_parameters():
        param.requires_grad_(theirs[sources.get(name, name)].requires_grad)
    return ours


_TIMM_SOURCES = {"to_q.weight": "qkv.weight", "to_k.weight": "qkv.weight",
                 "to_v.weight": "qkv.weight", "pos_conv.weight": "conv_lambda.weight",
                 "pos_conv.bias": "conv_lambda.bias", "rel_pos_emb": "pos_emb"}


def lambda_layer_from_timm(layer: nn.Module, *, backend: str = "auto") -> LambdaLayer:
    """Our LambdaLayer computing what one timm LambdaLayer computes, with its weights."""
    if not isinstance(layer, _timm_lambda_class()):
        raise TypeError(f"layer must be a timm LambdaLayer, got {type(layer).__name__}")
    heads, dim_k, dim_v = layer.num_heads, layer.dim_qk, layer.dim_v
    if isinstance(layer.pool, nn.AvgPool2d):
        stride = layer.pool.stride
        if layer.pool.kernel_size != stride or layer.pool.padding != 0:
            raise ValueError(f"cannot convert pooling {layer.pool!r}: expected AvgPool2d(s, s)")
    elif isinstance(layer.pool, nn.Identity):
        stride = 1
    else:
        raise ValueError(f"cannot convert pooling {layer.pool!r}")
    if layer.conv_lambda is not None:
        context = {"r": layer.conv_lambda.kernel_size[0]}
    else:
        context = {"n": max(layer.feat_size)}
    ours = LambdaLayer(layer.qkv.in_channels, dim_k=dim_k, heads=heads, dim_out=heads * dim_v,
                       dim_u=1, stride=stride, backend=backend, **context)
    tensors = lambda_tensors_from_timm(layer.state_dict(), heads=heads, dim_k=dim_k, dim_v=dim_v,
                                       n=context.get("n"))
    return _load(ours, layer, tensors, _TIMM_SOURCES)


def lambda_layer_from_lucidrains(layer: nn.Module, *, backend: str = "auto") -> LambdaLayer:
    """Our LambdaLayer with the constructor arguments and state_dict of a lambda-networks one."""
    from lambda_networks import LambdaLayer as UpstreamLambdaLayer
    if not isinstance(layer, UpstreamLambdaLayer):
        raise TypeError(f"layer must be a lambda_networks.LambdaLayer, got {type(layer).__name__}")
    heads, dim_u = layer.heads, layer.u
    if layer.local_contexts:
        context = {"r": layer.pos_conv.kernel_size[-1]}
    else:
        context = {"n": (layer.rel_pos_emb.shape[0] + 1) // 2}
    ours = LambdaLayer(layer.to_q.in_channels, dim_k=layer.norm_q.num_features // heads,
                       heads=heads, dim_out=heads * (layer.to_v.out_channels // dim_u),
                       dim_u=dim_u, backend=backend, **context)
    return _load(ours, layer, layer.state_dict(), {})


def _replace_layers(model: nn.Module, kind: type, convert: Callable[[nn.Module], nn.Module]):
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, kind):
        return convert(model)
    converted: dict[int, nn.Module] = {}  # by id: a layer shared by two parents stays shared
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, kind):
                if id(child) not in converted:
                    converted[id(child)] = convert(child)
                setattr(parent, name, converted[id(child)])
    return model


def from_timm(model: nn.Module, *, backend: str = "auto") -> nn.Module:
    """Replace every timm.layers.lambda_layer.LambdaLayer inside `model` (any timm model, or the
    layer itself) by our LambdaLayer with the same weights, in place; returns the model."""
    return _replace_layers(model, _timm_lambda_class(),
                           lambda layer: lambda_layer_from_timm(layer, backend=backend))


def from_lucidrains(model: nn.Module, *, backend: str = "auto") -> nn.Module:
    """Replace every lambda_networks.LambdaLayer inside `model` (or the layer itself) by our
    LambdaLayer with the same weights, in place; returns the model."""
    try:
        from lambda_networks import LambdaLayer as UpstreamLambdaLayer
    except ImportError as exc:
        raise ImportError("from_lucidrains needs lambda-networks: "
                          "pip install lambda-networks==0.4.0") from exc
    return _replace_layers(model, UpstreamLambdaLayer,
                           lambda layer: lambda_layer_from_lucidrains(layer, backend=backend))


__all__ = ["from_timm", "from_lucidrains", "lambda_layer_from_timm",
           "lambda_layer_from_lucidrains", "lambda_tensors_from_timm", "state_dict_from_timm"]
