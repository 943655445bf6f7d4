"""lambda-bench train: whole-model throughput, inference and a full training step.

Models (providers), all built with torch.manual_seed(0) so a converted model and its stock twin
share weights, and with zero_init_last=False so the residual branches (lambda layers included)
do not start at zero and the logits compared in the max|err| column depend on every layer:
    timm-resnet26t, timm-halonet26t, timm-botnet26t_256       timm baselines (conv, halo
                                                              attention, bottleneck attention)
    timm-lambda_resnet26t, timm-lambda_resnet26rpt_256        timm's LambdaResNets, stock
    from_timm-lambda_resnet26t, from_timm-lambda_resnet26rpt_256
                                                              the same, lambda layers swapped
                                                              for ours by convert.from_timm
    lambda_kernels-lambda_resnet26                            ours (models.create_model), the
                                                              paper's placement, r = 23

Measured per model on one seeded input batch: inference = eval-mode forward under no_grad;
training step = train-mode forward, cross-entropy, backward and an SGD (momentum) step, the
step lambda-train runs. Mixed precision (bfloat16 / float16) runs under autocast, as training
does. All models are built first, then timed together, interleaved call by call (runner.
measure_rows), so the vs-stock and speed-up columns are medians of per-pair ratios. Peak
memory is not measured here.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from .presets import DTYPES, dtype_name
from .providers import module_missing, torch_variant
from .runner import (Entry, Options, Steps, add_note, base_row, measure_rows, paired_speedup,
                     set_ratio)

INSTALL_TIMM = 'pip install "lambda-kernels[timm]"'


@dataclass
class ModelCase:
    """One input batch for every model: (batch, 3, image_size, image_size)."""
    batch: int = 8
    image_size: int = 256
    dtype: str = "float32"          # float32, or bfloat16 / float16 under autocast
    channels_last: bool = False
    num_classes: int = 1000
    label: str = "models"

    @property
    def autocast_dtype(self) -> Optional[torch.dtype]:
        dtype = DTYPES[self.dtype]
        return None if dtype in (torch.float32, torch.float64) else dtype

    def describe(self) -> str:
        layout = ", channels_last" if self.channels_last else ""
        precision = f"autocast {self.dtype}" if self.autocast_dtype else self.dtype
        return (f"{self.label}: batch {self.batch}, {self.image_size}x{self.image_size}, "
                f"{precision}{layout}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def check(self) -> None:
        for name in ("batch", "image_size", "num_classes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; choose from {sorted(DTYPES)}")
        self.dtype = dtype_name(DTYPES[self.dtype])


class ModelProvider:
    name = "?"
    description = ""
    stock: Optional[str] = None      # the stock model this one converts (vs-stock columns)
    size_multiple = 32               # the image size must be a multiple of this

    def unavailable(self, case: ModelCase, device: torch.device) -> Optional[str]:
        if case.image_size % self.size_multiple:
            return (f"needs an image size divisible by {self.size_multiple}, got "
                    f"{case.image_size}")
        return None

    def build(self, case: ModelCase) -> tuple[nn.Module, str]:
        raise NotImplementedError

    def ran(self, module: nn.Module, device: torch.device) -> tuple[str, Optional[str]]:
        """(back end, variant): our lambda layers' if the model has any, else torch's."""
        from ..layer import LambdaLayer
        layers = [m for m in module.modules() if isinstance(m, LambdaLayer)]
        ran = sorted({(m.last_backend, m.last_backend_variant) for m in layers
                      if m.last_backend is not None}, key=str)
        if ran:
            return (",".join(b for b, _ in ran),
                    ",".join(v for _, v in ran if v) or None)
        return "torch", torch_variant(device)


class TimmModel(ModelProvider):
    def __init__(self, model: str, *, size_multiple: int = 32, takes_img_size: bool = False):
        self.model = model
        self.name = f"timm-{model}"
        self.description = f"timm.create_model({model!r}), stock"
        self.size_multiple = size_multiple
        self.takes_img_size = takes_img_size   # position tables sized from img_size

    def unavailable(self, case, device):
        missing = module_missing("timm")
        if missing:
            return f"{missing}: {INSTALL_TIMM}"
        return super().unavailable(case, device)

    def build(self, case):
        import timm
        torch.manual_seed(0)
        kwargs = {"img_size": case.image_size} if self.takes_img_size else {}
        return timm.create_model(self.model, num_classes=case.num_classes, zero_init_last=False,
                                 **kwargs), ""


class ConvertedTimmModel(TimmModel):
    def __init__(self, model: str, **kwargs):
        super().__init__(model, **kwargs)
        self.stock = self.name
        self.name = f"from_timm-{model}"
        self.description = f"timm {model!r} with lambda layers converted by from_timm"

    def build(self, case):
        from ..convert import from_timm
        module, _ = super().build(case)
        return from_timm(module), "same weights as the stock model"


class OurModel(ModelProvider):
    def __init__(self, model: str):
        self.model = model
        self.name = f"lambda_kernels-{model}"
        self.description = f"lambda_kernels.models.create_model({model!r})"

    def build(self, case):
        from ..models import create_model
        torch.manual_seed(0)
        return create_model(self.model, num_classes=case.num_classes, img_size=case.image_size,
                            zero_init_last=False), ""


MODEL_REGISTRY: dict[str, ModelProvider] = {}
for _provider in (TimmModel("resnet26t"), TimmModel("halonet26t", size_multiple=256),
                  TimmModel("botnet26t_256", takes_img_size=True),
                  TimmModel("lambda_resnet26t"),
                  TimmModel("lambda_resnet26rpt_256", takes_img_size=True),
                  ConvertedTimmModel("lambda_resnet26t"),
                  ConvertedTimmModel("lambda_resnet26rpt_256", takes_img_size=True),
                  OurModel("lambda_resnet26")):
    MODEL_REGISTRY[_provider.name] = _provider


def resolve(names: Optional[list[str]]) -> list[str]:
    """Model provider names in order (all by default); unknown names stay (error rows;
    lambda-bench train refuses them)."""
    if not names:
        return list(MODEL_REGISTRY)
    return list(dict.fromkeys(n.strip() for n in names if n.strip()))


def make_batch(case: ModelCase, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(case.batch, 3, case.image_size, case.image_size, generator=g)
    labels = torch.randint(0, case.num_classes, (case.batch,), generator=g)
    x = x.to(device)
    if case.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, labels.to(device)


def model_steps(module: nn.Module, x: torch.Tensor, labels: torch.Tensor,
                case: ModelCase, device: torch.device) -> tuple[Callable, Callable]:
    """(inference, training step) callables (lambda-train's step and autocast)."""
    from ..training import autocast, train_step
    optimizer = torch.optim.SGD(module.parameters(), lr=1e-3, momentum=0.9)
    dtype = case.autocast_dtype

    def infer():
        module.eval()
        with torch.no_grad(), autocast(device, dtype):
            return module(x)

    def step():
        module.train()
        return train_step(module, optimizer, x, labels, device=device, dtype=dtype)

    return infer, step


def model_entry(name: str, case: ModelCase, x: torch.Tensor, labels: torch.Tensor,
                opts: Options) -> Entry:
    """One model's inference and training step, for runner.measure_rows (an unknown name: an
    error row)."""
    row = base_row(name, case.label, 0, {**case.to_dict(), "model": name}, params=None,
                   stock=None, max_rel_err=None)
    provider = MODEL_REGISTRY.get(name)
    if provider is None:
        row.update(status="error", reason=f"unknown model provider {name!r}; known: "
                                          f"{', '.join(MODEL_REGISTRY)}")
        return Entry(row, None, lambda: None)
    row["stock"] = provider.stock

    def build() -> Steps:
        module, note = provider.build(case)
        module = module.to(opts.device)
        if case.channels_last:
            from ..models import to_channels_last
            to_channels_last(module)  # 5-D lambda weights make Module.to(channels_last) raise
        row["params"] = sum(p.numel() for p in module.parameters())
        infer, step = model_steps(module, x, labels, case, opts.device)
        return Steps(module, infer, step, note=note)

    return Entry(row, provider, build)


def add_model_ratios(rows: list[dict], outputs: dict, baseline: Optional[str]) -> None:
    """speedup_<mode> = t(baseline) / t and vs_stock_<mode> = t(stock twin) / t, each the
    median over repeat pairs (runner.paired_speedup; spread in <key>_pairs); images/s; and the
    largest logit difference from the stock twin."""
    by_name = {r["provider"]: r for r in rows}
    for row in rows:
        row["baseline"] = baseline
        batch = row["shape"]["batch"]
        for mode in ("fwd", "fwdbwd"):
            mine = row[mode].get("median") if row["status"] == "ok" and row[mode] else None
            row[f"img_s_{mode}"] = batch / mine if mine else None
            set_ratio(row, f"speedup_{mode}",
                      paired_speedup(by_name.get(baseline) if baseline else None, row, mode))
            set_ratio(row, f"vs_stock_{mode}",
                      paired_speedup(by_name.get(row["stock"]) if row["stock"] else None, row,
                                     mode))
        if row["stock"] in outputs and row["provider"] in outputs:
            stock_logits = outputs[row["stock"]]
            row["max_abs_err"] = float((outputs[row["provider"]] - stock_logits).abs().max())
            row["max_rel_err"] = row["max_abs_err"] / max(float(stock_logits.abs().max()), 1e-30)
            row["err_vs"] = row["stock"]


def run_models(case: ModelCase, names: list[str], opts: Options, baseline: Optional[str],
               progress: Optional[Callable[[str], None]] = None) -> list[dict]:
    x, labels = make_batch(case, opts.device)
    outputs: dict = {}
    entries = [model_entry(name, case, x, labels, opts) for name in names]
    measure_rows(entries, case, opts, outputs)
    rows = [entry.row for entry in entries]
    if progress:
        for name in names:
            progress(name)
    add_model_ratios(rows, outputs, baseline)
    for row in rows:
        if row["max_abs_err"] is not None and not math.isfinite(row["max_abs_err"]):
            add_note(row, "non-finite logits")
    return rows
