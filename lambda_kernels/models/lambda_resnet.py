"""LambdaResNets: bottleneck ResNets whose 3×3 convolutions are replaced by lambda layers in
some blocks (Bello, ICLR 2021), built on this package's fused LambdaLayer.

One network class, `LambdaResNet(config)`, covers two families:

- the paper's placement: lambda layers in every block of the c4 and c5 stages, local context
  r = 23 (configurable), classic 7×7 stem;
- timm's layouts (`lambda_resnet26t`, `lambda_resnet50ts`, `lambda_resnet26rpt_256`): tiered
  3-conv stem, lambda blocks interleaved as in timm's byoanet configs, r = 9 or a global
  relative-position context sized from `img_size`.

Module names follow timm's ByobNet (`stem.conv1.conv`, `stages.2.1.self_attn`, `head.fc`, ...),
so timm checkpoints load after `lambda_kernels.convert.state_dict_from_timm`. Blocks use only
torch.nn modules and the LambdaLayer, so `nn.SyncBatchNorm.convert_sync_batchnorm`,
channels_last, autocast and `torch.compile(fullgraph=True)` work on the whole network.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import nn

from ..layer import LambdaLayer

LAMBDA_PLACEMENTS = ("none", "all", "odd", "last")


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of `divisor`, never below 90% of `value` (the
    rounding timm uses for bottleneck widths)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _activation(name: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "silu":
        return nn.SiLU(inplace=True)
    raise ValueError(f"act must be 'relu' or 'silu', got {name!r}")


@dataclass(frozen=True)
class StageSpec:
    """One stage: `depth` bottleneck blocks with `channels` outputs, the first one strided.

    lambda_at says which blocks replace their 3×3 convolution by a lambda layer: "none",
    "all", "odd" (blocks 1, 3, 5, ...; the last one if the stage has a single block: timm's
    interleave_blocks) or "last"."""

    depth: int
    channels: int
    stride: int
    lambda_at: str = "none"

    def lambda_blocks(self) -> list[bool]:
        if self.lambda_at == "all":
            return [True] * self.depth
        if self.lambda_at == "none":
            return [False] * self.depth
        if self.lambda_at == "last":
            chosen = {self.depth - 1}
        else:  # "odd"
            chosen = set(range(1, self.depth, 2)) or {self.depth - 1}
        return [i in chosen for i in range(self.depth)]


@dataclass(frozen=True)
class LambdaResNetConfig:
    """Everything that defines a LambdaResNet. create_model(name, **overrides) replaces fields;
    `depths`, `channels` and `lambda_at` override the per-stage values of `stages`."""

    stages: tuple[StageSpec, ...]
    stem: str = "tiered"                 # "tiered" (3×3 convs, 3/8, 1/2, 1 of stem_channels) or "7x7"
    stem_channels: int = 64
    act: str = "relu"
    bottle_ratio: float = 0.25
    r: Optional[int] = 9                 # local context; None = global context sized by img_size
    dim_k: int = 16
    heads: int = 4
    dim_u: int = 1
    img_size: Union[int, tuple[int, int]] = 224
    num_classes: int = 1000
    in_chans: int = 3
    drop_rate: float = 0.0               # dropout before the classifier
    zero_init_last: bool = True          # residual branches start at zero (last BN weight 0)
    backend: str = "auto"                # lambda back end of every layer

    def validate(self) -> None:
        def positive(name, value):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

        for name in ("stem_channels", "dim_k", "heads", "dim_u", "num_classes", "in_chans"):
            positive(name, getattr(self, name))
        if self.stem not in ("tiered", "7x7"):
            raise ValueError(f"stem must be 'tiered' or '7x7', got {self.stem!r}")
        _activation(self.act)
        if not self.stages:
            raise ValueError("stages must hold at least one StageSpec")
        for i, stage in enumerate(self.stages):
            positive(f"stages[{i}].depth", stage.depth)
            positive(f"stages[{i}].channels", stage.channels)
            if stage.stride not in (1, 2):
                raise ValueError(f"stages[{i}].stride must be 1 or 2, got {stage.stride!r}")
            if stage.lambda_at not in LAMBDA_PLACEMENTS:
                raise ValueError(f"stages[{i}].lambda_at must be one of {LAMBDA_PLACEMENTS}, "
                                 f"got {stage.lambda_at!r}")
        if self.r is not None and (not isinstance(self.r, int) or self.r < 1 or self.r % 2 == 0):
            raise ValueError(f"r must be a positive odd integer or None (global context), "
                             f"got {self.r!r}")
        size = _pair(self.img_size)
        if size is None:
            raise ValueError(f"img_size must be a positive int or (H, W), got {self.img_size!r}")
        if not 0.0 <= self.drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {self.drop_rate!r}")
        if not self.bottle_ratio > 0:
            raise ValueError(f"bottle_ratio must be positive, got {self.bottle_ratio!r}")
        if not isinstance(self.backend, str):
            raise TypeError(f"backend must be a string, got {type(self.backend).__name__}")

    def with_overrides(self, **overrides) -> "LambdaResNetConfig":
        """A copy with fields replaced; depths / channels / lambda_at (one value per stage, or one
        lambda_at for all) rewrite the stage specs. Unknown names raise TypeError."""
        stage_keys = {"depths": "depth", "channels": "channels", "lambda_at": "lambda_at"}
        fields = {f.name for f in dataclasses.fields(self)} - {"stages"}
        unknown = sorted(set(overrides) - fields - set(stage_keys))
        if unknown:
            raise TypeError(f"unknown LambdaResNet argument(s) {', '.join(map(repr, unknown))}; "
                            f"known: {', '.join(sorted(fields | set(stage_keys)))}")
        stages = list(self.stages)
        for key, attr in stage_keys.items():
            if key not in overrides:
                continue
            values = overrides.pop(key)
            if key == "lambda_at" and isinstance(values, str):
                values = [values] * len(stages)
            if not isinstance(values, (list, tuple)) or len(values) != len(stages):
                raise ValueError(f"{key} must give one value per stage ({len(stages)}), "
                                 f"got {values!r}")
            stages = [dataclasses.replace(s, **{attr: v}) for s, v in zip(stages, values)]
        if "img_size" in overrides and isinstance(overrides["img_size"], list):
            overrides["img_size"] = tuple(overrides["img_size"])
        config = dataclasses.replace(self, stages=tuple(stages), **overrides)
        config.validate()
        return config


def _pair(size) -> Optional[tuple[int, int]]:
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if (isinstance(size, tuple) and len(size) == 2
            and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)):
        return size
    return None


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def to_channels_last(module: nn.Module) -> nn.Module:
    """Put every 4-D parameter and buffer of `module` in channels_last memory format, in place.

    `Module.to(memory_format=torch.channels_last)` raises on 5-D tensors, and local-context
    lambda layers hold one (pos_conv, a Conv3d, as in lambda-networks and timm); this leaves
    such tensors as they are. Works on any model (e.g. a timm model after from_timm)."""
    for sub in module.modules():
        for name, param in sub.named_parameters(recurse=False):
            if param.dim() == 4:
                param.data = param.data.contiguous(memory_format=torch.channels_last)
        for name, buf in sub.named_buffers(recurse=False):
            if buf is not None and buf.dim() == 4:
                sub._buffers[name] = buf.contiguous(memory_format=torch.channels_last)
    return module


class ConvNormAct(nn.Module):
    """Conv2d (no bias) + BatchNorm2d + optional activation (timm's ConvNormAct keys)."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, *, stride: int = 1,
                 act: Optional[str] = "relu"):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride=stride,
                              padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_chs)
        self.act = _activation(act) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class NormAct(nn.Module):
    """BatchNorm2d + activation after the lambda layer (timm's post_attn)."""

    def __init__(self, channels: int, act: str):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.act = _activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(x))


class _Residual(nn.Module):
    """Shared by both blocks: the shortcut (1×1 strided conv + BN when the shape changes) and
    the final activation after the sum."""

    def _init_shortcut(self, in_chs: int, out_chs: int, stride: int, act: str) -> None:
        if in_chs != out_chs or stride != 1:
            self.shortcut = ConvNormAct(in_chs, out_chs, 1, stride=stride, act=None)
        else:
            self.shortcut = nn.Identity()
        self.act = _activation(act)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.residual(x) + self.shortcut(x))


class BottleneckBlock(_Residual):
    """1×1 → 3×3 (strided) → 1×1 bottleneck."""

    def __init__(self, in_chs: int, out_chs: int, *, stride: int, mid_chs: int, act: str):
        super().__init__()
        self._init_shortcut(in_chs, out_chs, stride, act)
        self.conv1_1x1 = ConvNormAct(in_chs, mid_chs, 1, act=act)
        self.conv2_kxk = ConvNormAct(mid_chs, mid_chs, 3, stride=stride, act=act)
        self.conv3_1x1 = ConvNormAct(mid_chs, out_chs, 1, act=None)

    def residual(self, x):
        return self.conv3_1x1(self.conv2_kxk(self.conv1_1x1(x)))


class LambdaBlock(_Residual):
    """1×1 → lambda layer (stride by average pooling) → BN + act → 1×1 bottleneck."""

    def __init__(self, in_chs: int, out_chs: int, *, stride: int, mid_chs: int, act: str,
                 lambda_kwargs: dict):
        super().__init__()
        self._init_shortcut(in_chs, out_chs, stride, act)
        self.conv1_1x1 = ConvNormAct(in_chs, mid_chs, 1, act=act)
        self.self_attn = LambdaLayer(mid_chs, dim_out=mid_chs, stride=stride, **lambda_kwargs)
        self.post_attn = NormAct(mid_chs, act)
        self.conv3_1x1 = ConvNormAct(mid_chs, out_chs, 1, act=None)

    def residual(self, x):
        return self.conv3_1x1(self.post_attn(self.self_attn(self.conv1_1x1(x))))


class ClassifierHead(nn.Module):
    """Global average pool, dropout, linear classifier."""

    def __init__(self, in_features: int, num_classes: int, drop_rate: float):
        super().__init__()
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(x.mean(dim=(2, 3))))


def _stem(config: LambdaResNetConfig) -> nn.Sequential:
    """Stride 4: strided conv(s) then a 3×3 max pool."""
    stem = nn.Sequential()
    c = config.stem_channels
    if config.stem == "tiered":
        widths = (3 * c // 8, c // 2, c)
        prev = config.in_chans
        for i, width in enumerate(widths):
            stem.add_module(f"conv{i + 1}", ConvNormAct(prev, width, 3, stride=2 if i == 0 else 1,
                                                        act=config.act))
            prev = width
    else:
        stem.add_module("conv1", ConvNormAct(config.in_chans, c, 7, stride=2, act=config.act))
    stem.add_module("pool", nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    return stem


class LambdaResNet(nn.Module):
    """A bottleneck ResNet with lambda layers; see the module docstring.

    forward(x (B, in_chans, H, W)) -> logits (B, num_classes). With global context (r=None) the
    layers accept inputs up to `img_size`."""

    def __init__(self, config: LambdaResNetConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.stem = _stem(config)
        feat = [_ceil_div(s, 4) for s in _pair(config.img_size)]
        prev = config.stem_channels
        stages = []
        for spec in config.stages:
            blocks = []
            for index, use_lambda in enumerate(spec.lambda_blocks()):
                stride = spec.stride if index == 0 else 1
                mid = make_divisible(spec.channels * config.bottle_ratio)
                if use_lambda:
                    # global context: the table covers the block's input map (before pooling)
                    context = ({"r": config.r} if config.r is not None else {"n": max(feat)})
                    block = LambdaBlock(prev, spec.channels, stride=stride, mid_chs=mid,
                                        act=config.act,
                                        lambda_kwargs=dict(dim_k=config.dim_k, heads=config.heads,
                                                           dim_u=config.dim_u,
                                                           backend=config.backend, **context))
                else:
                    block = BottleneckBlock(prev, spec.channels, stride=stride, mid_chs=mid,
                                            act=config.act)
                blocks.append(block)
                prev = spec.channels
                feat = [_ceil_div(s, stride) for s in feat]
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.num_features = prev
        self.head = ClassifierHead(prev, config.num_classes, config.drop_rate)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He-normal convolutions, unit batch norms (the last of each residual branch at zero
        when zero_init_last), lambda position tables scaled like timm's."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)
        for module in self.modules():
            if isinstance(module, LambdaLayer):
                for proj in (module.to_q, module.to_k, module.to_v):
                    nn.init.normal_(proj.weight, std=proj.weight.shape[1] ** -0.5)
                if module.local_contexts:
                    nn.init.normal_(module.pos_conv.weight, std=module.dim_k ** -0.5)
                    nn.init.zeros_(module.pos_conv.bias)
                else:
                    nn.init.normal_(module.rel_pos_emb, std=0.02)
            elif isinstance(module, (BottleneckBlock, LambdaBlock)) and self.config.zero_init_last:
                nn.init.zeros_(module.conv3_1x1.bn.weight)

    def to(self, *args, **kwargs):
        """Module.to; memory_format=torch.channels_last converts the 4-D tensors and leaves
        the 5-D lambda position weights alone (see to_channels_last) instead of raising."""
        device, dtype, non_blocking, memory_format = torch._C._nn._parse_to(*args, **kwargs)
        if memory_format is None:
            return super().to(*args, **kwargs)
        if memory_format != torch.channels_last:
            raise ValueError(f"memory_format must be torch.channels_last, got {memory_format}")
        super().to(device=device, dtype=dtype, non_blocking=non_blocking)
        return to_channels_last(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(x, torch.fx.Proxy):  # FX symbolic tracing: checked when the graph runs
            return self.stages(self.stem(x))
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != self.config.in_chans:
            raise ValueError(f"x must have shape (B, {self.config.in_chans}, H, W), got "
                             f"({', '.join(map(str, x.shape))})")
        self._check_map_sizes(x.shape[2], x.shape[3])
        return self.stages(self.stem(x))

    def _check_map_sizes(self, height: int, width: int) -> None:
        """A strided lambda block halves its map by 2×2 average pooling while its shortcut
        convolution rounds up: both agree only on even maps (as in timm)."""
        size = [_ceil_div(height, 4), _ceil_div(width, 4)]
        for s, stage in enumerate(self.stages):
            first = stage[0]
            if isinstance(first, LambdaBlock) and first.self_attn.stride > 1 and (
                    size[0] % 2 or size[1] % 2):
                raise ValueError(f"x has H×W = {height}×{width}: the strided lambda block "
                                 f"stages.{s}.0 would get a {size[0]}×{size[1]} map, which 2×2 "
                                 f"average pooling cannot halve; use sizes divisible by 32")
            stride = self.config.stages[s].stride
            size = [_ceil_div(v, stride) for v in size]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


__all__ = ["to_channels_last", "LambdaResNet", "LambdaResNetConfig", "StageSpec", "BottleneckBlock", "LambdaBlock",
           "ConvNormAct", "NormAct", "ClassifierHead", "make_divisible"]
