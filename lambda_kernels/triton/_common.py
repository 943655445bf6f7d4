"""Shared pieces of the Triton kernels: block-size choice, the interpreter flag, the index/mask
prologue and masked tile loads every kernel starts with, and a small matrix product that uses
tl.dot when the tile shapes allow it (every dimension >= 16, on a GPU) and a
broadcast-multiply-sum otherwise (tiny tiles, the CPU interpreter)."""
from __future__ import annotations

import os

import triton
import triton.language as tl

# Triton decides at @triton.jit time whether a kernel is interpreted; record what it decided for
# the kernels of this package (they are decorated when this package is imported).
try:
    INTERPRETED: bool = bool(triton.knobs.runtime.interpret)
except AttributeError:  # older triton without knobs
    INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"

# The interpreter also needs triton.language's own @jit helpers (tl.zeros, ...) interpreted,
# i.e. TRITON_INTERPRET=1 set before anything imported triton. None when fine, else why not.
INTERPRETER_BROKEN = None
if INTERPRETED and type(tl.zeros).__name__ != "InterpretedFunction":
    INTERPRETER_BROKEN = ("triton was imported before TRITON_INTERPRET=1 was set; set it before "
                          "anything imports triton")

# Smallest tile dimension tl.dot accepts.
DOT_MIN = 16
# Set to 1 to force the tl.dot path (tiles padded to DOT_MIN) even under the interpreter, so
# that path is testable without a GPU. Read at every launch.
FORCE_DOT_ENV = "LAMBDA_KERNELS_TRITON_FORCE_DOT"


def pow2(n: int, at_least: int = 1) -> int:
    return max(at_least, triton.next_power_of_2(max(1, int(n))))


def dot_allowed() -> bool:
    """Whether kernels should pad their channel tiles to DOT_MIN and use tl.dot."""
    return os.environ.get(FORCE_DOT_ENV, "0") == "1" or not INTERPRETED


def channel_block(n: int) -> int:
    """Tile size covering a channel dimension (k, v, u) of length n."""
    return pow2(n, DOT_MIN if dot_allowed() else 1)


def dot_precision(dtype) -> str:
    """fp32 inputs keep full precision (no TF32); fp16/bf16 inputs were already rounded."""
    import torch
    return "ieee" if dtype == torch.float32 else "tf32"


def position_block(n_positions: int, cap: int = 64) -> int:
    return min(pow2(n_positions, DOT_MIN if dot_allowed() else 1), cap)


@triton.jit
def matmul_tile(a, b, USE_DOT: tl.constexpr, PRECISION: tl.constexpr):
    """(M, K) @ (K, N) in float32: tl.dot when allowed, else a broadcast multiply and sum."""
    if USE_DOT:
        out = tl.dot(a, b, input_precision=PRECISION)
    else:
        out = tl.sum(a[:, :, None] * b[None, :, :], axis=1)
    return out


@triton.jit
def block_range(start, BLOCK: tl.constexpr, size):
    """(indices start + [0, BLOCK), which of them are < size)."""
    offs = start + tl.arange(0, BLOCK)
    return offs, offs < size


@triton.jit
def load_tile(ptr, rows, row_stride, row_mask, cols, col_stride, col_mask):
    """float32 tile ptr[rows[i]·row_stride + cols[j]·col_stride], zero where either mask is off."""
    return tl.load(ptr + rows[:, None] * row_stride + cols[None, :] * col_stride,
                   mask=row_mask[:, None] & col_mask[None, :], other=0.0).to(tl.float32)


def offset_range(radius_table: int, extent: int) -> tuple[int, int]:
    """Table rows [lo, hi) whose offsets (row - table//2) can land inside an image of `extent`
    (|offset| <= extent - 1); the rest only ever see zero padding."""
    centre = radius_table // 2
    return max(0, centre - (extent - 1)), min(radius_table, centre + extent)
