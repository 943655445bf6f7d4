"""Shared pieces of the Triton kernels: the interpreter flag, block sizes, the index/mask prologue
and masked tile loads every kernel starts with, the budgets that autotuning configurations are
pruned against, and the launch records (kernel, grid, arguments) that the ops run and the
compile check compiles."""
from __future__ import annotations

import os
from typing import Any, NamedTuple

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

# Smallest extent of every tl.dot operand dimension (the m16n8k16 MMA shape): channel, window and
# halo tiles are padded up to it, under the interpreter too, so the interpreter runs the GPU path.
DOT_MIN = 16

# Budgets every sm_80+ GPU meets, for pruning autotuning configurations before they are compiled:
# 99 KiB of shared memory per block (sm_86/sm_89; A100 has 163, H100 227) and 255 registers per
# thread, of which tiles may take about two thirds (addresses, masks and MMA fragments being
# reshuffled need the rest; the compile check confirms the default configurations do not spill).
SHARED_MEMORY_BUDGET = 99 * 1024
TILE_REGISTER_BUDGET = 168


def pow2(n: int, at_least: int = 1) -> int:
    return max(at_least, triton.next_power_of_2(max(1, int(n))))


def channel_block(n: int) -> int:
    """Tile size covering a channel dimension (k, v, u) of length n, usable as a tl.dot operand."""
    return pow2(n, DOT_MIN)


def dot_precision(dtype) -> str:
    """fp32 inputs keep full precision (no TF32); fp16/bf16 inputs were already rounded."""
    import torch
    return "ieee" if dtype == torch.float32 else "tf32"


# Positions per step of the kernels that stream over positions (content lambda, dΛ): every
# position is read once whatever the step, so a step only has to fill a tl.dot's reduction
# extent (a multiple of DOT_MIN) and amortise the loop's bookkeeping; 64 does both while each
# (channels × positions) tile stays at a few registers per thread.
POSITION_CAP = 64


def position_block(n_positions: int, cap: int = POSITION_CAP) -> int:
    return min(pow2(n_positions, DOT_MIN), cap)


def position_block_for(n_positions: int, widest_channel_tile: int, dtype, cap: int) -> int:
    """Positions per tile next to a channel tile of `widest_channel_tile`: (channels ×
    positions) tiles of about 8K elements (16-bit: 32 registers per thread at 4 warps), 2K for
    fp32 inputs, whose IEEE FMA products hold both operands in registers (larger tiles spill
    there)."""
    import torch
    elements = 2048 if dtype == torch.float32 else 8192
    return position_block(n_positions, cap=max(DOT_MIN, min(cap, elements // widest_channel_tile)))


def tile_footprint(register_tiles, shared_tiles, num_warps: int, num_stages: int = 1):
    """(registers per thread, shared bytes) of a kernel whose live register tiles and
    shared-memory-staged dot operands are given as (elements, bytes per element) pairs: register
    tiles are spread over the 32·num_warps threads; staged operands take one buffer per stage."""
    register_bytes = sum(elements * size for elements, size in register_tiles)
    shared_bytes = sum(elements * size for elements, size in shared_tiles) * max(1, num_stages)
    return -(-register_bytes // (4 * 32 * num_warps)), shared_bytes


def fits_budgets(registers: int, shared_bytes: int) -> bool:
    return registers <= TILE_REGISTER_BUDGET and shared_bytes <= SHARED_MEMORY_BUDGET


# Set to 0 to run every kernel at its default configuration instead of autotuning (tests,
# compute-sanitizer runs, quick starts: autotuning compiles and times every configuration once
# per shape). Read whenever a kernel meets a new shape.
AUTOTUNE_ENV = "LAMBDA_KERNELS_TRITON_AUTOTUNE"


def autotuning() -> bool:
    return not INTERPRETED and os.environ.get(AUTOTUNE_ENV, "1") != "0"


def choose_configs(configs, footprint):
    """The autotuning configurations (all able to run the shape) that fit the budgets
    (`footprint(config)` -> (registers, shared bytes)), in their listed order: the first is the
    default. The lightest one when none fits. Only the default when not autotuning (under the
    interpreter there is nothing to time)."""
    if not configs:
        raise ValueError("no tile configuration can run this shape")
    sized = [(footprint(c), c) for c in configs]
    chosen = [c for fp, c in sized if fits_budgets(*fp)]
    if not chosen:
        chosen = [min(sized, key=lambda item: item[0])[1]]
    return chosen if autotuning() else chosen[:1]


def prune_to_default(configs, named_args, **kwargs):
    """early_config_prune of kernels whose configurations all fit every shape: all of them when
    autotuning, else the first."""
    return choose_configs(configs, lambda config: (0, 0))


def unwrap_kernel(kernel):
    """(autotuner or None, heuristics wrappers outermost first, JITFunction) of a kernel as
    decorated by triton.autotune / triton.heuristics / triton.jit."""
    from triton.runtime.autotuner import Autotuner, Heuristics
    autotuner = kernel if isinstance(kernel, Autotuner) else None
    inner = kernel.fn if autotuner else kernel
    heuristics = []
    while isinstance(inner, Heuristics):
        heuristics.append(inner)
        inner = inner.fn
    return autotuner, heuristics, inner


class Launch(NamedTuple):
    """One kernel launch: `kernel[grid](*args, **kwargs)` (grid a tuple or a function of the
    meta-parameters). The ops run these; the compile check compiles them without a GPU."""

    kernel: Any
    grid: Any
    args: tuple
    kwargs: dict


def run_launches(launches, launch=lambda kernel: kernel) -> None:
    for item in launches:
        launch(item.kernel)[item.grid](*item.args, **item.kwargs)


@triton.jit
def block_range(start, BLOCK: tl.constexpr, size):
    """(indices start + [0, BLOCK), which of them are < size)."""
    offs = start + tl.arange(0, BLOCK)
    return offs, offs < size


@triton.jit
def load_tile(ptr, rows, row_stride, row_mask, cols, col_stride, col_mask):
    """Tile ptr[rows[i]·row_stride + cols[j]·col_stride] in the tensor's dtype, zero where either
    mask is off."""
    return tl.load(ptr + rows[:, None] * row_stride + cols[None, :] * col_stride,
                   mask=row_mask[:, None] & col_mask[None, :], other=0.0)


def offset_range(radius_table: int, extent: int) -> tuple[int, int]:
    """Table rows [lo, hi) whose offsets (row - table//2) can land inside an image of `extent`
    (|offset| <= extent - 1); the rest only ever see zero padding."""
    centre = radius_table // 2
    return max(0, centre - (extent - 1)), min(radius_table, centre + extent)
