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
