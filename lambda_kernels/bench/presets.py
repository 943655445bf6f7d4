"""Benchmark cases and presets.

A *case* is one input shape for one layer configuration; a *preset* is a named list of cases
with default repeat counts. Shape flags of the CLI override the fields of every case of the
preset; `--sweep size` / `--sweep r` expand the (first) case along the image size or the
local-context size.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

import torch

DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float64": torch.float64, "fp64": torch.float64, "double": torch.float64,
}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


@dataclass
class Case:
    """One benchmark shape: x is (batch, dim, height, width); exactly one of r / n is set."""
    batch: int = 1
    dim: int = 32
    dim_out: Optional[int] = None
    height: int = 32
    width: int = 32
    dim_k: int = 16
    heads: int = 4
    dim_u: int = 1
    r: Optional[int] = 15
    n: Optional[int] = None
    dtype: str = "float32"
    label: str = ""
    frames: Optional[int] = None   # video/volume cases: x is (batch, dim, frames, height, width)
    rt: Optional[int] = None       # their temporal window (local context), odd
    # run the float32 module and input under torch.autocast in this dtype (bfloat16 / float16)
    autocast: Optional[str] = None

    def __post_init__(self):
        if self.dim_out is None:
            self.dim_out = self.dim

    @property
    def tokens(self) -> int:
        return self.height * self.width * (self.frames or 1)

    @property
    def spatial(self) -> tuple[int, ...]:
        """(height, width), or (frames, height, width) for a video/volume case."""
        return (self.height, self.width) if self.frames is None else \
            (self.frames, self.height, self.width)

    @property
    def dim_v(self) -> int:
        return self.dim_out // self.heads

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def autocast_dtype(self) -> Optional[torch.dtype]:
        return DTYPES[self.autocast] if self.autocast else None

    @property
    def context(self) -> str:
        return f"r={self.r}" if self.r is not None else f"n={self.n}"

    def describe(self) -> str:
        size = "x".join(map(str, self.spatial))
        context = self.context if self.rt is None else f"r=({self.rt},{self.r},{self.r})"
        s = (f"B={self.batch} {self.dim}->{self.dim_out} {size} "
             f"k={self.dim_k} h={self.heads} u={self.dim_u} {context} {self.dtype}"
             + (f" under autocast {self.autocast}" if self.autocast else ""))
        return f"{self.label}: {s}" if self.label else s

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Case":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def check(self) -> None:
        for name in ("batch", "dim", "dim_out", "height", "width", "dim_k", "heads", "dim_u"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.dim_out % self.heads:
            raise ValueError(f"dim_out ({self.dim_out}) must be divisible by heads ({self.heads})")
        if (self.r is None) == (self.n is None):
            raise ValueError(f"a case needs exactly one of r and n, got r={self.r}, n={self.n}")
        if self.r is not None and (self.r < 1 or self.r % 2 == 0):
            raise ValueError(f"r must be a positive odd integer, got {self.r}")
        if self.n is not None and (self.height > self.n or self.width > self.n):
            raise ValueError(f"global context n={self.n} needs H, W <= n, got "
                             f"{self.height}x{self.width}")
        if self.frames is not None and (self.frames < 1 or self.rt is None or self.rt < 1
                                        or self.rt % 2 == 0 or self.r is None):
            raise ValueError(f"a video case needs frames >= 1, local context r and an odd rt, "
                             f"got frames={self.frames}, r={self.r}, rt={self.rt}")
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; choose from {sorted(DTYPES)}")
        if self.autocast is not None and (
                DTYPES.get(self.autocast) not in (torch.bfloat16, torch.float16)
                or self.torch_dtype != torch.float32):
            raise ValueError(f"autocast needs a float32 case and bfloat16 or float16, got "
                             f"dtype={self.dtype!r}, autocast={self.autocast!r}")


@dataclass
class Preset:
    name: str
    description: str
    cases: list[Case]
    repeats: int = 10
    warmup: int = 2
    max_time: float = 3.0          # seconds per measured quantity before repeats stop early
    sweep_values: dict = field(default_factory=dict)
    providers: Optional[tuple[str, ...]] = None   # default provider list (None: all)
    kernel_rate: bool = False      # also time the positional kernel alone


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        "tiny", "CI smoke test: a few seconds in all",
        [Case(batch=1, dim=8, height=8, width=8, dim_k=4, heads=2, dim_u=1, r=3, label="tiny")],
        repeats=3, warmup=1, max_time=0.5,
        sweep_values={"size": [6, 8, 10], "r": [1, 3, 5]}),
    "quick": Preset(
        "quick", "default on CPU: one local-context layer, well under 2 minutes on 2 cores",
        [Case(batch=2, dim=64, height=28, width=28, dim_k=16, heads=4, dim_u=1, r=15,
              label="quick")],
        repeats=7, warmup=1, max_time=2.0,
        sweep_values={"size": [14, 28, 42], "r": [3, 7, 15, 23]}),
    "seed": Preset(
        "seed", "the two README examples of lambda-networks (local r=23, dim_u=4; global n=64)",
        [Case(batch=1, dim=32, height=64, width=64, dim_k=16, heads=4, dim_u=4, r=23,
              label="local r=23"),
         Case(batch=1, dim=32, height=64, width=64, dim_k=16, heads=4, dim_u=1, r=None, n=64,
              label="global n=64")],
        repeats=5, warmup=1, max_time=5.0),
    "targets": Preset(
        "targets", "CPU targets: fused vs lambda-networks on the seed cases (time, "
        "memory) and the positional kernel's useful FLOP/s vs torch.mm, in one run",
        [Case(batch=1, dim=32, height=64, width=64, dim_k=16, heads=4, dim_u=4, r=23,
              label="seed-local"),
         Case(batch=1, dim=32, height=64, width=64, dim_k=16, heads=4, dim_u=1, r=None, n=64,
              label="seed-global"),
         # bf16 (module and inputs in bf16): against lambda-networks in bf16 and our fp32 rows
         Case(batch=1, dim=32, height=64, width=64, dim_k=16, heads=4, dim_u=4, r=23,
              dtype="bfloat16", label="seed-local bf16"),
         # float32 modules under bf16 autocast, as mixed-precision training runs them
         Case(batch=1, dim=32, height=64, width=64, dim_k=16, heads=4, dim_u=4, r=23,
              autocast="bfloat16", label="seed-local autocast bf16")]
        + [Case(batch=2, dim=c, height=s, width=s, dim_k=16, heads=4, dim_u=1, r=r, dtype=dt,
                autocast=amp, label=f"{s}x{s}/{c} r={r}" + suffix)
           for s, c, r in ((56, 128, 23), (28, 256, 9), (14, 512, 9))
           for dt, amp, suffix in (("float32", None, ""), ("bfloat16", None, " bf16"),
                                   ("float32", "bfloat16", " autocast bf16"))],
        repeats=5, warmup=1, max_time=5.0, providers=("lambda-cpu", "lambda-networks"),
        kernel_rate=True),
    "resnet": Preset(
        "resnet", "LambdaResNet stage shapes (56x56/128, 28x28/256, 14x14/512) with r=23 and r=9",
        [Case(batch=2, dim=c, height=s, width=s, dim_k=16, heads=4, dim_u=1, r=r,
              label=f"{s}x{s}/{c} r={r}")
         for s, c in ((56, 128), (28, 256), (14, 512)) for r in (23, 9)],
        repeats=5, warmup=1, max_time=5.0),
    "gpu-headline": Preset(
        "gpu-headline", "bf16, B=32, 56x56, 256->256, heads=4, dim_k=16, v=64, r=23, dim_u=1",
        [Case(batch=32, dim=256, height=56, width=56, dim_k=16, heads=4, dim_u=1, r=23,
              dtype="bfloat16", label="headline")],
        repeats=20, warmup=3, max_time=10.0,
        sweep_values={"size": [14, 28, 56, 84, 112], "r": [3, 7, 15, 23, 31]}),
    "video": Preset(
        "video", "LambdaLayer3d on video, 8x28x28/128, r=(3,15,15), against a 3x3x3 Conv3d and "
        "SDPA over all T·H·W tokens (the 2-D providers do not take video)",
        [Case(batch=1, dim=128, frames=8, height=28, width=28, dim_k=16, heads=4, dim_u=1,
              r=15, rt=3, label="8x28x28/128 r=(3,15,15)")],
        repeats=5, warmup=1, max_time=5.0,
        providers=("lambda3d-reference", "lambda3d-cpu", "lambda3d-triton", "lambda3d-cuda",
                   "conv3d-3x3x3", "mhsa3d")),
}

DEFAULT_SWEEPS = {"size": [8, 16, 32, 48, 64], "r": [3, 7, 15, 23]}


def parse_size(text: str) -> tuple[int, int]:
    """'56' -> (56, 56); '32x48' -> (32, 48)."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        vals = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"size must look like 56 or 32x48, got {text!r}") from None
    if len(vals) == 1:
        vals = vals * 2
    if len(vals) != 2 or min(vals) < 1:
        raise ValueError(f"size must look like 56 or 32x48, got {text!r}")
    return vals[0], vals[1]


def apply_overrides(case: Case, **over) -> Case:
    """A copy of `case` with every non-None override applied (r and n exclude each other)."""
    d = case.to_dict()
    for key, value in over.items():
        if value is None:
            continue
        if key == "size":
            d["height"], d["width"] = value
        elif key == "r":
            d["r"], d["n"] = value, None
        elif key == "n":
            d["n"], d["r"] = value, None
        elif key == "dtype":
            d["dtype"] = dtype_name(DTYPES[value]) if value in DTYPES else value
            if d["dtype"] != "float32":
                d["autocast"] = None   # the case then runs in that dtype itself
        else:
            d[key] = value
    if over.get("dim") is not None and over.get("dim_out") is None:
        d["dim_out"] = d["dim"] if case.dim_out == case.dim else case.dim_out
    if d["n"] is not None and over.get("n") is None:
        # global context: a new image size resizes the context (n = the image, as upstream
        # needs); otherwise keep n >= the image
        if over.get("size") is not None:
            d["n"] = max(d["height"], d["width"])
        else:
            d["n"] = max(d["n"], d["height"], d["width"])
    return Case.from_dict(d)


def sweep_cases(base: Case, sweep: str, values: list[int],
                n: Optional[int] = None) -> list[Case]:
    """`base` at each size (square) or r of `values`. A size sweep of a global-context case
    resizes n with the image, unless `n` (an explicit --n) is given: then every case keeps it
    (and a size above it fails Case.check)."""
    out = []
    for v in values:
        if sweep == "size":
            c = apply_overrides(base, size=(v, v), n=n)
            c.label = f"{v}x{v}"
        elif sweep == "r":
            c = apply_overrides(base, r=v)
            c.label = f"r={v}"
        else:
            raise ValueError(f"unknown sweep {sweep!r} (size or r)")
        out.append(c)
    return out
