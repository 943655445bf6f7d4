"""LambdaResNet models on the fused LambdaLayer (no timm or torchvision needed).

    from lambda_kernels.models import create_model, list_models
    model = create_model("lambda_resnet26t", num_classes=10)
    model = create_model("lambda_resnet50", r=15, img_size=160)      # the paper's placement
    model = create_model("lambda_resnet26rpt_256", img_size=128)     # global context, n from img_size

Names:
    lambda_resnet26 / 38 / 50       the paper's placement: lambda layers in every block of c4 and
                                    c5, r = 23, k = 16, 4 heads, u = 1, 7×7 stem; depths
                                    (2,2,2,2) / (3,3,3,3) / (3,4,6,3)
    lambda_resnet26t                timm's layout: tiered stem, lambda blocks 2 of c4 and all c5, r = 9
    lambda_resnet50ts               timm's layout: SiLU, lambda blocks interleaved in c3, c4, c5, r = 9
    lambda_resnet26rpt_256          lambda_resnet26t with global relative-position context, 256 px

Keyword arguments override LambdaResNetConfig fields (num_classes, in_chans, img_size, r, dim_k,
heads, dim_u, act, stem, stem_channels, bottle_ratio, drop_rate, zero_init_last, backend) and
per-stage values (depths, channels, lambda_at). r=None switches to global context.

`model.to(memory_format=torch.channels_last)` works on these models; for other models holding
local-context lambda layers (whose 5-D Conv3d weight makes Module.to raise), use
`to_channels_last(model)`.
"""
from __future__ import annotations

from .lambda_resnet import (BottleneckBlock, LambdaBlock, LambdaResNet, LambdaResNetConfig,
                            StageSpec, to_channels_last)


def _stages(depths, lambda_at, channels=(256, 512, 1024, 2048)) -> tuple[StageSpec, ...]:
    return tuple(StageSpec(d, c, 1 if i == 0 else 2, at)
                 for i, (d, c, at) in enumerate(zip(depths, channels, lambda_at)))


_PAPER = ("none", "none", "all", "all")
_TIMM_26 = ("none", "none", "odd", "all")

CONFIGS: dict[str, LambdaResNetConfig] = {
    "lambda_resnet26": LambdaResNetConfig(_stages((2, 2, 2, 2), _PAPER), stem="7x7", r=23),
    "lambda_resnet38": LambdaResNetConfig(_stages((3, 3, 3, 3), _PAPER), stem="7x7", r=23),
    "lambda_resnet50": LambdaResNetConfig(_stages((3, 4, 6, 3), _PAPER), stem="7x7", r=23),
    "lambda_resnet26t": LambdaResNetConfig(_stages((2, 2, 2, 2), _TIMM_26), img_size=256),
    "lambda_resnet50ts": LambdaResNetConfig(_stages((3, 4, 6, 3), ("none", "last", "odd", "odd")),
                                            act="silu", img_size=256),
    "lambda_resnet26rpt_256": LambdaResNetConfig(_stages((2, 2, 2, 2), _TIMM_26), r=None,
                                                 img_size=256),
}


def list_models() -> list[str]:
    """Names accepted by create_model."""
    return sorted(CONFIGS)


def get_config(name: str, **overrides) -> LambdaResNetConfig:
    """The configuration create_model(name, **overrides) builds."""
    if not isinstance(name, str) or name not in CONFIGS:
        raise ValueError(f"unknown model name {name!r}; choose from {', '.join(list_models())}")
    return CONFIGS[name].with_overrides(**overrides)


def create_model(name: str, num_classes: int = 1000, **kwargs) -> LambdaResNet:
    """A freshly initialised LambdaResNet `name` (see list_models()) with `num_classes` outputs;
    other keyword arguments override the configuration (module docstring)."""
    return LambdaResNet(get_config(name, num_classes=num_classes, **kwargs))


__all__ = ["create_model", "list_models", "get_config", "CONFIGS", "LambdaResNet",
           "LambdaResNetConfig", "StageSpec", "BottleneckBlock", "LambdaBlock", "to_channels_last"]
