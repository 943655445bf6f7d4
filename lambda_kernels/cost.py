"""Arithmetic cost of the lambda op's positional part: the one definition of "useful FLOP"
that the benchmarks, the developer tools and the tests use, and the Python mirror of the CPU
kernels' per-call choice of association (csrc/cpu/lambda_output_kernels.inc, Geometry).

The positional part pairs every query position with every table offset that lands inside the
image (an in-image *tap*); per tap and per u it costs, in multiply-adds (docs/design.md, "The
math" and "Two associations"):

    association   forward (lambda_output)    backward (lambda_output_backward)
    logits        h·(k + v)                  3·h·k + 2·h·v
    lambda_p      k·v                        3·k·v

Logits: logits = E·q (h·k per tap, E the position table), y += logits·values (h·v); the
backward recomputes the logits (h·k), forms d logits = dy·values (h·v), then dq (h·k),
d_pos_table (h·k) and d values (h·v).
λp: λp = Σ E⊗values (k·v per tap; the product λp·q is per query, not per tap); the backward
recomputes λp (k·v) and forms d_pos_table and d values from dλp = q⊗dy (k·v each per tap). Neither
logits nor λp are kept between forward and backward (the memory rule), so the backward always
recomputes one of them.

Useful FLOP = 2 × multiply-adds of the cheaper association, over the in-image taps only (taps
on the zero padding are not work). A kernel that always uses one association (the GPU kernels
use the logits) can do more than the useful count when the other is cheaper.
"""
from __future__ import annotations

import math
from typing import Optional

LOGITS = "logits"
LAMBDA_P = "lambda_p"
ASSOCIATIONS = (LOGITS, LAMBDA_P)


def table_size(height: int, width: int, r: Optional[int] = None) -> tuple[int, int]:
    """(Rh, Rw) of the position table for an H×W map: r×r for local context, (2H-1)×(2W-1) for
    global context (the centre of the layer's (2n-1)×(2n-1) table that an H×W map reads)."""
    if r is not None:
        return r, r
    return 2 * height - 1, 2 * width - 1


def axis_taps(extent: int, table: int) -> int:
    """Σ over the positions of one axis of the table offsets that land inside the axis (the
    table is centred: offset a of a position y reads y + a - table // 2)."""
    half = table // 2
    return sum(min(extent - 1, y + table - 1 - half) - max(0, y - half) + 1
               for y in range(extent))


def in_image_taps(height: int, width: int, rh: int, rw: int) -> int:
    """Number of (query, table offset) pairs whose context position lies inside the H×W image."""
    return axis_taps(height, rh) * axis_taps(width, rw)


def in_volume_taps(frames: int, height: int, width: int, rt: int, rh: int, rw: int) -> int:
    """The same for a T×H×W volume and an (Rt, Rh, Rw) table (the 3-D layer)."""
    return axis_taps(frames, rt) * in_image_taps(height, width, rh, rw)


def multiply_adds_per_tap(heads: int, dim_k: int, dim_v: int, association: str,
                          backward: bool = False) -> int:
    """Multiply-adds per (in-image tap, u) of one direction in one association (table above)."""
    if association == LOGITS:
        return 3 * heads * dim_k + 2 * heads * dim_v if backward else heads * (dim_k + dim_v)
    if association == LAMBDA_P:
        return 3 * dim_k * dim_v if backward else dim_k * dim_v
    raise ValueError(f"association must be one of {ASSOCIATIONS}, got {association!r}")


def cheaper_association(heads: int, dim_k: int, dim_v: int, backward: bool = False) -> str:
    """The association with fewer multiply-adds; a tie goes to the logits. The CPU kernels
    choose this per call and per direction; the GPU kernels always use the logits."""
    logits = multiply_adds_per_tap(heads, dim_k, dim_v, LOGITS, backward)
    return LOGITS if logits <= multiply_adds_per_tap(heads, dim_k, dim_v, LAMBDA_P,
                                                     backward) else LAMBDA_P


def positional_flops(batch: int, heads: int, dim_k: int, dim_u: int, dim_v: int, height: int,
                     width: int, rh: int, rw: int, backward: bool = False,
                     association: Optional[str] = None) -> int:
    """FLOP (2 per multiply-add) of the positional part over the in-image taps, in
    `association` (default: the cheaper one, i.e. the useful FLOP)."""
    association = association or cheaper_association(heads, dim_k, dim_v, backward)
    per_tap = multiply_adds_per_tap(heads, dim_k, dim_v, association, backward)
    return 2 * batch * in_image_taps(height, width, rh, rw) * dim_u * per_tap


# ---- the spectral method (CPU): mirror of csrc/cpu/positional_method.cpp
# The CPU kernels can also take the λp association's window sums as FFT convolutions
# (csrc/cpu/spectral_kernels.inc, docs/design.md "The spectral method"): per image, real FFTs of
# Ph×Pw planes (Ph = H + the table's in-image reach, rounded up to a 2·3·5-smooth length)
# instead of r² multiply-adds per position. Its cost is estimated in fp32 multiply-adds of the
# direct kernels; the kernels run it per call and direction when the estimate is lower.
# The useful FLOP above stays the direct count (the spectral method does the same work in fewer
# operations, so its rate in useful FLOP/s can exceed the machine's FMA rate).
SPECTRAL = "spectral"
DIRECT = "direct"
FFT_COST = 12.0               # one real 2-D FFT of P points: FFT_COST · P·log2(P)
SPECTRAL_PRODUCT_COST = 4.0   # one complex multiply-add of two spectra
SPECTRAL_CALL_COST = 4.0e6    # fixed cost of a spectral call (~50 µs)
SPECTRAL_MARGIN = 1.5         # spectral only when estimated this much cheaper
SPECTRAL_BACKWARD_TIMES = 3.0  # the backward's transforms and contractions vs the forward's
# The direct kernels' rate on bf16 inputs relative to fp32 at the levels with a bf16 micro-kernel
# (csrc/cpu/kernels.inc, kBf16DirectSpeed); 1 elsewhere.
BF16_DIRECT_SPEED = 1.4
BF16_MICROKERNEL_LEVELS = ("avx512_bf16", "amx")


def direct_speed(dtype_name: str, cpu_level: str) -> float:
    """The `direct_speed` of cpu_positional_method for inputs of `dtype_name` ("bfloat16", ...)
    at CPU level `cpu_level`."""
    bf16 = dtype_name == "bfloat16" and cpu_level in BF16_MICROKERNEL_LEVELS
    return BF16_DIRECT_SPEED if bf16 else 1.0


def fft_length(n: int) -> int:
    """Smallest even n' ≥ n whose only prime factors are 2, 3 and 5."""
    m = max(n + n % 2, 2)
    while True:
        x = m
        for p in (2, 3, 5):
            while x % p == 0:
                x //= p
        if x == 1:
            return m
        m += 2


def spectral_length(extent: int, table: int) -> int:
    """FFT length along one axis: the extent plus the table's in-image reach."""
    return fft_length(extent + min(table // 2, extent - 1))


def direct_cost(batch, heads, dim_k, dim_u, dim_v, height, width, rh, rw,
                backward=False) -> float:
    """Multiply-adds of the direct kernels (the cheaper association over the in-image taps)."""
    return positional_flops(batch, heads, dim_k, dim_u, dim_v, height, width, rh, rw,
                            backward) / 2.0


def spectral_cost(batch, heads, dim_k, dim_u, dim_v, height, width, rh, rw,
                  backward=False) -> float:
    """Estimated cost of the spectral method in fp32 multiply-adds of the direct kernels."""
    ph, pw = spectral_length(height, rh), spectral_length(width, rw)
    plane, bins = ph * pw, ph * (pw // 2 + 1)
    planes = batch * dim_u * dim_v + dim_k * dim_u + batch * dim_k * dim_v
    products = batch * bins * dim_k * dim_u * dim_v
    contractions = batch * height * width * heads * dim_k * dim_v
    times = SPECTRAL_BACKWARD_TIMES if backward else 1.0
    return (SPECTRAL_CALL_COST + times * FFT_COST * planes * plane * math.log2(plane)
            + (3.0 if backward else 1.0) * SPECTRAL_PRODUCT_COST * products
            + times * contractions)


def cpu_positional_method(batch, heads, dim_k, dim_u, dim_v, height, width, rh, rw,
                          backward=False, direct_speed=1.0) -> str:
    """The method the CPU kernels choose on their own ("auto"): SPECTRAL when its estimate,
    times SPECTRAL_MARGIN, is below the direct cost divided by `direct_speed` (the direct
    kernels' rate relative to fp32: ~1.4 for bf16 on the levels with a bf16 micro-kernel), else
    DIRECT."""
    args = (batch, heads, dim_k, dim_u, dim_v, height, width, rh, rw, backward)
    spectral = SPECTRAL_MARGIN * spectral_cost(*args)
    return SPECTRAL if spectral < direct_cost(*args) / direct_speed else DIRECT
