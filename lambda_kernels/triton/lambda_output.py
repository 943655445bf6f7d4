"""Fused lambda output (content + positional), forward and backward, as Triton kernels whose
window contractions run on tensor cores (tl.dot).

Math (q (B,h,k,N), values (B,u,v,N), E = pos_table (Rh,Rw,k,u), Λ = λc + bias (B,k,v);
o = (a, c) a table entry, offset (a − Rh//2, c − Rw//2); values outside the image are zero):

    s[b,h,n,o,u]  = Σ_k q[b,h,k,n] · E[o,k,u]                         (positional logits)
    y[b,h,v,n]    = Σ_k q[b,h,k,n] · Λ[b,k,v]  +  Σ_{o,u} s[b,h,n,o,u] · values[b,u,v,n+o]
    g[b,h,n,o,u]  = Σ_v dy[b,h,v,n] · values[b,u,v,n+o]
    dq[b,h,k,n]   = Σ_v dy[b,h,v,n] · Λ[b,k,v]  +  Σ_{o,u} E[o,k,u] · g[b,h,n,o,u]
    dΛ[b,k,v]     = Σ_{h,n} q[b,h,k,n] · dy[b,h,v,n]
    dvalues[b,u,v,m] = Σ_{h,o} s[b,h,m−o,o,u] · dy[b,h,v,m−o]
    d_pos_table[o,k,u] = Σ_{b,h,n} q[b,h,k,n] · g[b,h,n,o,u]

Formulation: logits per table row, sheared onto the halo (all contractions are tl.dot).
A *tile* is T = BLOCK_T consecutive positions x0 … x0+T−1 of one image row and BLOCK_H heads,
M = BLOCK_H·T rows r = (head, position) (in the kernels an unqualified *row* is always such a
tile row; rows of the map are *image rows*, rows of the table *table rows*). Under table row a
the tile's positions read source image row y + a − Rh//2 at the window columns of the table
(Cw = C_COUNT of them, the table columns that can land in the image); together they read the
*halo* of that image row: at most T + Cw − 1 consecutive columns (fewer at the image border),
padded to J = BLOCK_J. Per (a, u):

    y   (fwd)      S  = Q @ E_a            (M×k)·(k×Cw)   logits of every (row, window offset)
                   Sb = shear(S)           (M×J)          S[r, c] moved to halo column x_r + dx_c
                   y += Sb @ Halo          (M×J)·(J×v)    Halo: values of the image row, read once
    dq             Gb = DY @ Haloᵀ         (M×v)·(v×J)    g at halo columns
                   G  = unshear(Gb)        (M×Cw)
                   dq += G @ E_aᵀ          (M×Cw)·(Cw×k)
    d_pos_table    D_a += Qᵀ @ G           (k×M)·(M×Cw)   D_a: table row a's gradient, G as for
                                                          dq; tiles split over SPLITS programs,
                                                          partial sums reduced after
    dvalues        a tile of T *target* positions, one head at a time, the J query positions
                   that read it under table row a:
                   S  = Q_halo @ E_a       (J×k)·(k×Cw)
                   Sᵀb[j, i] = S[j, c(i, j)]  (J×T)    the offset taking query j to target i
                   dvaluesᵀ += DY_haloᵀ @ Sᵀb (v×J)·(J×T)

The shear is a tl.gather along the row (each row's entries stay in its own warp: shuffles).
16-bit inputs: operands in the input dtype (logits rounded to it before the second product, as
attention rounds P), fp32 accumulation; fp32 inputs: fp32 operands, input_precision="ieee" (no
TF32, no MMA: exact). Only logits of one (tile, table row) live at a time, in registers: nothing
of size B·N·k·v (λp), N·N or B·h·N·r² is allocated. Table rows whose source row lies outside the
image are skipped per tile, table columns that never land inside it per launch.

Association: these kernels always form the logits, while the CPU kernels choose per call between
the logits and λp by multiply-adds (lambda_kernels.cost.cheaper_association). On a GPU the logit
form is two GEMMs per step with operands shared by the whole tile and state independent of k·v;
the λp form needs a k×v accumulator per query position (beyond a block's registers, and the
memory rule forbids spilling λp), and these kernels are bound by instruction issue and L2
traffic, not by tensor-core FLOPs (cost model below), so fewer FLOPs would not make them faster.
docs/design.md, "Why the GPU kernels always use the logits", has the full argument.

Cost model. Per step (one table row a and one u for a tile; dvalues: one head too), padded
tile sizes, b bytes per element, M = heads·T rows, J the padded halo, Cw the window, Cp its
padding. The numbers are the GPU headline (bf16, B=32, 56×56, h=4, k=16, v=64, u=1, r=23:
Cw=23, Cp=32, ~20.6 in-image table rows per image row, ~426 in-image taps per query) at each
kernel's default configuration. The three times are the whole launch at the MMA peak, at L2
bandwidth, and issuing the SASS instructions of its compiled window loop (sm_90, counted by
`python -m lambda_kernels.tools.compile_check`) on 4 schedulers × 132 SMs at 1.755 GHz. An
H100 does ~990 dense bf16 TFLOP/s, its L2 feeds the SMs at roughly 5.5 TB/s, HBM3 3.35 TB/s.

    kernel (T)    MMA FLOP/step          L2 bytes/step                  AI   steps  MMA   L2    time
    fwd (32)      2M(k·Cp + J·v)  1.18M  (T+Cw−1)·v·b + k·Cw·b  7.6K   154  74K   .09ms .10ms .23ms
    dq (32)       2M(v·J + Cp·k)  1.18M  the same               7.6K   154  74K   .09ms .10ms .27ms
    dvalues (64)  2J(k·Cp + v·T)  0.59M  (T+Cw−1)·(k+v)·b + …   9.7K    61  148K  .09ms .26ms .47ms
    d_pos_table   2M(v·J + k·Cp)  0.59M  M·(v+k)·b + halo      15.1K    39  148K  .09ms .41ms .55ms
    (d_pos_table at T = 16)

Each kernel does 87 GFLOP of MMA for 27 GFLOP of useful work (the band is Cw/J full, W=56
pads to whole tiles, logits are formed for all Cp offsets). HBM sees each tensor about once
(~80 MB per kernel, ~25 µs); the halo, table and (dvalues, d_pos_table) q/dy re-reads hit L2/L1.
So none is bound by the tensor cores or HBM: forward and dq are bound by instruction issue (a
window iteration issues ~360 instructions per warp around 5 wgmma on sm_90, 36 mma.sync on
sm_80: the halo is gathered element by element, its start being unaligned, and the logits are
sheared one element per lane), about a quarter of a millisecond each; dvalues and d_pos_table
by issue and L2 traffic, as they re-read q and dy per table row and head. Wider tiles trade
band padding for fewer halo loads per position: what autotuning decides on a GPU.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._tiles import (DOT_MIN, POSITION_CAP, Launch, block_range, channel_block, choose_configs,
                      dot_precision, load_tile, offset_range, position_block_for, pow2,
                      run_launches, tile_footprint)

# ------------------------------------------------------------------ tile configurations
# Autotuning key: everything the tile choice depends on (input dtypes are appended by Triton).
TUNING_KEY = ["HEADS", "K", "U", "V", "H_DIM", "W_DIM", "RH", "RW"]
# Heads per tile: all of them (they share the halo and the table row) up to 16, beyond that a
# grid axis: 16 heads at the narrowest T = 8 already give 128 tl.dot rows, and more would only
# grow the (rows × channels) register tiles until the budget forces a narrower T.
MAX_BLOCK_H = 16


def halo_block(block_t: int, window: int, width: int) -> int:
    """J: the halo of BLOCK_T positions under a window of `window` columns, clipped to the image
    row, padded to a power of two usable by tl.dot."""
    return pow2(min(block_t + window - 1, width), DOT_MIN)


def _halo_heuristic(args):
    return halo_block(args["BLOCK_T"], args["C_COUNT"], args["W_DIM"])


def _values_block_heuristic(args):
    # Configurations give a cap; small v uses one tile of pow2(v) instead.
    return min(channel_block(args["V"]), args["V_CAP"])


def _config(block_t, num_warps, v_cap=None):
    kwargs = {"BLOCK_T": block_t}
    if v_cap is not None:
        kwargs["V_CAP"] = v_cap
    # num_stages=2: the halo loads are 2-byte gathers at arbitrary offsets, which the pipeliner
    # cannot turn into cp.async copies; warps, not stages, hide their latency.
    return triton.Config(kwargs, num_warps=num_warps, num_stages=2)


# Listed in order of preference (the first that fits is the default and the interpreter's
# choice). Static ranking until a GPU times them: the kernels issue more load, shuffle and
# conversion instructions per iteration than MMAs, and the halo's loads and shear are shared by
# all heads and positions of a tile, so wider tiles (T=32, 8 warps; J stays 64 at r ≈ 23) do
# the most MMA work per issued instruction (~420 FLOP per warp instruction against ~320 at
# T=16, 4 warps on sm_80). T=16 and T=8 serve narrow images and small windows. The v cap of 64
# keeps the forward's (M × v) fp32 accumulator at 32 registers per thread for M = 128 rows on 8
# warps (T=32, 4 heads); the cap of 128 serves v >= 128 with half the v tiles (each v tile
# recomputes the logits). d_pos_table re-loads dy and q for every table row, so its loop is
# load-heavy whatever T, and T=16 with 4 warps keeps its registers lowest among the wide tiles.
# dvalues: T is the N extent of its second product, so at least 16; its query halo's loads are
# amortised over T targets, so T=64 issues the fewest instructions per target.
#
# fp32 inputs multiply as IEEE fp32 FMA products, whose registers grow with the tile far
# faster than MMA fragments: the 16-bit tiles spill there (the compile check shows it), so fp32
# launches tune over their own list, only at its narrowest valid T (see _prune), preferring 8
# warps (T=16 serves one head, where T=8 leaves fewer than DOT_MIN rows).
CONFIGS = {
    "fwd": ([_config(32, 8, 64), _config(16, 4, 64), _config(32, 8, 128), _config(16, 8, 128),
             _config(8, 4, 64), _config(8, 4, 128)],
            [_config(8, 8, 64), _config(8, 4, 64), _config(16, 8, 64)]),
    "dq": ([_config(32, 8), _config(16, 4), _config(16, 8), _config(8, 4)],
           [_config(8, 8), _config(8, 4), _config(16, 8)]),
    "d_pos_table": ([_config(16, 4), _config(32, 8), _config(16, 8), _config(8, 4)],
                    [_config(8, 8), _config(8, 4), _config(16, 8)]),
    "dvalues": ([_config(64, 8, 64), _config(32, 8, 64), _config(32, 8, 128), _config(16, 4, 64),
                 _config(16, 8, 64)],
                [_config(16, 8, 16)]),
}


def _element_size(args) -> int:
    # From the launch's constexpr, not a tensor: torch.compile traces this prune too.
    return 4 if args["PRECISION"] == "ieee" else 2


def _dedupe(configs, effective):
    seen, kept = set(), []
    for config in configs:
        key = (effective(config), config.num_warps, config.num_stages)
        if key not in seen:
            seen.add(key)
            kept.append(config)
    return kept


def _block_v(args, config) -> int:
    v_cap = config.kwargs.get("V_CAP")
    return args["BLOCK_V"] if v_cap is None else min(channel_block(args["V"]), v_cap)


def _rows_per_position(kind: str, args: dict) -> int:
    """tl.dot rows per position of a tile: its heads (fwd, dq, d_pos_table), or one for dvalues,
    whose positions are the N extent of its second product."""
    return 1 if kind == "dvalues" else args["BLOCK_H"]


def footprint(kind: str, args: dict, config):
    """(registers per thread, shared bytes) that a configuration of kernel `kind` ("fwd", "dq",
    "d_pos_table", "dvalues") needs for the launch arguments `args`. Counts every tile live in the
    window loop: accumulator, resident operand, logits and their sheared copy (fp32, as an
    operand, and the gather's int32 index), the halo and table tiles on their way to shared
    memory. fp32 inputs multiply as IEEE FMA products, which hold both operands in registers:
    their dot operands count twice."""
    size = _element_size(args)
    block_k, block_c = args["BLOCK_K"], args["BLOCK_C"]
    block_t, block_v = config.kwargs["BLOCK_T"], _block_v(args, config)
    block_j = halo_block(block_t, args["C_COUNT"], args["W_DIM"])
    operand = size * (2 if size == 4 else 1)
    if kind == "dvalues":
        sheared = block_j * block_t
        registers = [(block_v * block_t, 4), (block_j * block_k, operand), (block_j * block_c, 4),
                     (sheared, 4 + operand + 4), (block_v * block_j, operand),
                     (block_k * block_c, size)]
        shared = [(block_v * block_j, size), (block_k * block_c, size), (sheared, size)]
        return tile_footprint(registers, shared, config.num_warps)
    rows = args["BLOCK_H"] * block_t
    band = (rows * block_j, 4 + operand + 4)
    halo, table = (block_j * block_v, operand), (block_k * block_c, operand)
    window = (rows * block_c, 4 + operand + 4)
    if kind == "fwd":
        registers = [(rows * block_v, 4), (rows * block_k, operand), (rows * block_c, 4), band,
                     halo, table]
    elif kind == "dq":
        registers = [(rows * block_k, 4), (rows * block_v, operand), band, window, halo, table]
    else:  # d_pos_table
        registers = [(block_k * block_c, 4), (rows * block_v, operand), (rows * block_k, operand),
                     band, window, halo]
    shared = [(block_j * block_v, size), (block_k * block_c, size), (rows * block_j, size)]
    return tile_footprint(registers, shared, config.num_warps)


def _prune(kind):
    """early_config_prune of kernel `kind`: configurations whose products are valid tl.dot shapes
    (at least DOT_MIN rows per tile), not wider than the image row unless none narrower is valid
    (fp32: the narrowest valid), and within the register and shared-memory budgets; preferred
    first (see choose_configs)."""

    def prune(configs, named_args, **kwargs):
        args = {**named_args, **kwargs}
        configs = _dedupe(configs, lambda c: (c.kwargs["BLOCK_T"], _block_v(args, c)))
        rows = _rows_per_position(kind, args)
        valid = [c for c in configs if rows * c.kwargs["BLOCK_T"] >= DOT_MIN]
        if not valid:
            raise ValueError(f"no {kind} tile configuration reaches {DOT_MIN} rows")
        narrowest = min(c.kwargs["BLOCK_T"] for c in valid)
        widest = narrowest if _element_size(args) == 4 else max(pow2(args["W_DIM"]), narrowest)
        valid = [c for c in valid if c.kwargs["BLOCK_T"] <= widest]
        return choose_configs(valid, lambda config: footprint(kind, args, config))

    return prune


# ------------------------------------------------------------------ shared tile helpers
# Words in the kernels: an *image row* (`image_row`) is one row of the H×W map; a *table row*
# (`a`) is one row of the position table, `table_row` its window tile; an unqualified *row* is
# a row r = (head, position) of a tile, i.e. of the tl.dot operands (M of them).
@triton.jit
def _query_tile(tile, head_group, HEADS, W_DIM, BLOCK_H: tl.constexpr, BLOCK_T: tl.constexpr):
    """The rows of a (heads × positions) tile: position tile `tile` counts BLOCK_T-wide tiles
    along image rows; row r = h·BLOCK_T + t is head head_group·BLOCK_H + h at column x0 + t.
    Returns (image row, x0, head (M,), column (M,), position in the image (M,), row mask (M,))."""
    x_tiles = tl.cdiv(W_DIM, BLOCK_T)
    image_row = tile // x_tiles
    x0 = (tile % x_tiles) * BLOCK_T
    r = tl.arange(0, BLOCK_H * BLOCK_T)
    head = head_group * BLOCK_H + r // BLOCK_T
    col = x0 + r % BLOCK_T
    return image_row, x0, head, col, image_row * W_DIM + col, (head < HEADS) & (col < W_DIM)


@triton.jit
def _program_query_tile(HEADS, W_DIM, BLOCK_H: tl.constexpr, BLOCK_T: tl.constexpr):
    """The tile of a fwd or dq program, whose grid is (position tiles, B × head groups, …):
    (b, then what _query_tile returns)."""
    head_groups = tl.cdiv(HEADS, BLOCK_H)
    b = tl.program_id(1) // head_groups
    image_row, x0, head, col, pos, rows_ok = _query_tile(
        tl.program_id(0), tl.program_id(1) % head_groups, HEADS, W_DIM, BLOCK_H, BLOCK_T)
    return b, image_row, x0, head, col, pos, rows_ok


@triton.jit
def _table_ranges(K, C_COUNT, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr):
    """Indices and masks of a table window tile: (k, its mask, window column c, its mask)."""
    offs_k, mask_k = block_range(0, BLOCK_K, K)
    offs_c, mask_c = block_range(0, BLOCK_C, C_COUNT)
    return offs_k, mask_k, offs_c, mask_c


@triton.jit
def _load_rows(ptr, b, HEADS, C, N, head, pos, rows_ok, offs_c, mask_c):
    """(rows × channels) tile of a (B, heads, C, N) tensor: [r, c] = ptr[b, head[r], c, pos[r]]."""
    base = ptr + b.to(tl.int64) * HEADS * C * N
    return tl.load(base + (head * C * N + pos)[:, None] + offs_c[None, :] * N,
                   mask=rows_ok[:, None] & mask_c[None, :], other=0.0)


@triton.jit
def _store_rows(ptr, b, HEADS, C, N, head, pos, rows_ok, offs_c, mask_c, tile):
    """The inverse of _load_rows: ptr[b, head[r], c, pos[r]] = tile[r, c], in ptr's dtype."""
    base = ptr + b.to(tl.int64) * HEADS * C * N
    tl.store(base + (head * C * N + pos)[:, None] + offs_c[None, :] * N,
             tile.to(ptr.dtype.element_ty), mask=rows_ok[:, None] & mask_c[None, :])


@triton.jit
def _tile_halo(x0, col, offs_c, C_LO, C_COUNT, RW, W_DIM, BLOCK_T: tl.constexpr,
               BLOCK_J: tl.constexpr):
    """The halo of a tile: the source columns its positions x0 … x0+BLOCK_T−1 read through the
    window columns [C_LO, C_LO + C_COUNT) of the table, clipped to the image, and the maps
    between halo and window order (row r at column col_r reads halo column j at window offset c
    when col_r + C_LO + c − RW//2 = halo_cols[j]). Returns (the BLOCK_J halo columns, which of
    them are read, window_of_halo (M × BLOCK_J): c for each (r, j), halo_of_window
    (M × BLOCK_C): j for each (r, c)); a kernel keeps the map it shears with."""
    first = tl.maximum(x0 + C_LO - RW // 2, 0)
    end = tl.minimum(x0 + BLOCK_T + C_LO + C_COUNT - 1 - RW // 2, W_DIM)
    halo_cols = first + tl.arange(0, BLOCK_J)
    window_of_halo = halo_cols[None, :] - col[:, None] - C_LO + RW // 2
    halo_of_window = col[:, None] + (C_LO - RW // 2 - first) + offs_c[None, :]
    return halo_cols, halo_cols < end, window_of_halo, halo_of_window


@triton.jit
def _load_halo(values_ptr, b, u, a, image_row, U, V, N, RH, W_DIM, halo_cols, halo_ok, offs_v,
               mask_v):
    """(BLOCK_J × BLOCK_V) tile [j, v] = values[b, u, v, image_row + a − RH//2, halo_cols[j]]:
    what the tile's image row reads under table row a."""
    base = values_ptr + (b * U + u).to(tl.int64) * V * N + (image_row + a - RH // 2) * W_DIM
    return tl.load(base + halo_cols[:, None] + offs_v[None, :] * N,
                   mask=halo_ok[:, None] & mask_v[None, :], other=0.0)


@triton.jit
def _load_table_row(table_ptr, a, u, RW, K, U, C_LO, offs_k, mask_k, offs_c, mask_c):
    """(BLOCK_K × BLOCK_C) tile [k, c] = E[a, C_LO + c, k, u]: the window of one table row."""
    return tl.load(table_ptr + ((a * RW + C_LO + offs_c[None, :]) * K + offs_k[:, None]) * U + u,
                   mask=mask_k[:, None] & mask_c[None, :], other=0.0)


@triton.jit
def _load_step(table_ptr, values_ptr, step, b, image_row, K, U, V, N, RH, RW, W_DIM, C_LO,
               halo_cols, halo_ok, offs_k, mask_k, offs_c, mask_c, offs_v, mask_v):
    """The operands of one window-loop step of the fwd and dq kernels, (table row a, u) =
    divmod(step, U): (the table row's window tile, the halo the tile reads under it)."""
    a = step // U
    u = step % U
    table_row = _load_table_row(table_ptr, a, u, RW, K, U, C_LO, offs_k, mask_k, offs_c, mask_c)
    halo = _load_halo(values_ptr, b, u, a, image_row, U, V, N, RH, W_DIM, halo_cols, halo_ok,
                      offs_v, mask_v)
    return table_row, halo


@triton.jit
def _shear(src, index, limit):
    """out[r, i] = src[r, index[r, i]] where 0 <= index < limit, else 0: moves each row's entries
    between window-offset order and halo-column order."""
    valid = (index >= 0) & (index < limit)
    return tl.where(valid, tl.gather(src, tl.where(valid, index, 0), axis=1), 0.0)


@triton.jit
def _table_rows_reading(image_row, RH, H_DIM):
    """Table rows [first, last) under which `image_row` reads a source row in the image."""
    return tl.maximum(RH // 2 - image_row, 0), tl.minimum(RH // 2 + H_DIM - image_row, RH)


@triton.jit
def _window_gradients(dy, halo, halo_of_window, BLOCK_J: tl.constexpr, PRECISION: tl.constexpr):
    """g[r, c] = Σ_v dy[r, v] · halo[x_r + dx_c, v] for every row and window offset, fp32:
    the product at every halo column (tl.dot), then gathered back to window order."""
    band = tl.dot(dy, tl.trans(halo), input_precision=PRECISION)
    return _shear(band, halo_of_window, BLOCK_J)


# ------------------------------------------------------------------ kernels
@triton.jit
def lambda_output_fwd_kernel(
    q_ptr, values_ptr, table_ptr, lam_ptr, y_ptr,
    HEADS, K, U, V, H_DIM, W_DIM, RH, RW, C_LO, C_COUNT,
    BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr,
    BLOCK_T: tl.constexpr, V_CAP: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_J: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """y for one batch element, BLOCK_H heads, BLOCK_T positions of an image row, BLOCK_V
    channels."""
    b, image_row, x0, head, col, pos, rows_ok = _program_query_tile(HEADS, W_DIM, BLOCK_H,
                                                                    BLOCK_T)
    N = H_DIM * W_DIM
    offs_k, mask_k, offs_c, mask_c = _table_ranges(K, C_COUNT, BLOCK_K, BLOCK_C)
    offs_v, mask_v = block_range(tl.program_id(2) * BLOCK_V, BLOCK_V, V)

    q = _load_rows(q_ptr, b, HEADS, K, N, head, pos, rows_ok, offs_k, mask_k)
    lam = load_tile(lam_ptr + b * K * V, offs_k, V, mask_k, offs_v, 1, mask_v)
    acc = tl.dot(q, lam, input_precision=PRECISION)  # content part

    halo_cols, halo_ok, window_of_halo, _ = _tile_halo(x0, col, offs_c, C_LO, C_COUNT, RW, W_DIM,
                                                       BLOCK_T, BLOCK_J)
    a_first, a_last = _table_rows_reading(image_row, RH, H_DIM)
    for step in range(a_first * U, a_last * U):
        table_row, halo = _load_step(table_ptr, values_ptr, step, b, image_row, K, U, V, N, RH,
                                     RW, W_DIM, C_LO, halo_cols, halo_ok, offs_k, mask_k, offs_c,
                                     mask_c, offs_v, mask_v)
        logits = tl.dot(q, table_row, input_precision=PRECISION)  # s[h, n, (a, c), u]
        band = _shear(logits, window_of_halo, C_COUNT)
        acc += tl.dot(band.to(halo.dtype), halo, input_precision=PRECISION)

    _store_rows(y_ptr, b, HEADS, V, N, head, pos, rows_ok, offs_v, mask_v, acc)


@triton.jit
def lambda_output_bwd_dq_kernel(
    dy_ptr, values_ptr, table_ptr, lam_ptr, dq_ptr,
    HEADS, K, U, V, H_DIM, W_DIM, RH, RW, C_LO, C_COUNT,
    BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr,
    BLOCK_V: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_J: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """dq for one batch element, BLOCK_H heads, BLOCK_T positions of an image row, all k (v
    whole: it is contracted)."""
    b, image_row, x0, head, col, pos, rows_ok = _program_query_tile(HEADS, W_DIM, BLOCK_H,
                                                                    BLOCK_T)
    N = H_DIM * W_DIM
    offs_k, mask_k, offs_c, mask_c = _table_ranges(K, C_COUNT, BLOCK_K, BLOCK_C)
    offs_v, mask_v = block_range(0, BLOCK_V, V)

    dy = _load_rows(dy_ptr, b, HEADS, V, N, head, pos, rows_ok, offs_v, mask_v)
    lam_t = load_tile(lam_ptr + b * K * V, offs_v, 1, mask_v, offs_k, V, mask_k)  # Λᵀ
    acc = tl.dot(dy, lam_t, input_precision=PRECISION)  # content part

    halo_cols, halo_ok, _, halo_of_window = _tile_halo(x0, col, offs_c, C_LO, C_COUNT, RW, W_DIM,
                                                       BLOCK_T, BLOCK_J)
    a_first, a_last = _table_rows_reading(image_row, RH, H_DIM)
    for step in range(a_first * U, a_last * U):
        table_row, halo = _load_step(table_ptr, values_ptr, step, b, image_row, K, U, V, N, RH,
                                     RW, W_DIM, C_LO, halo_cols, halo_ok, offs_k, mask_k, offs_c,
                                     mask_c, offs_v, mask_v)
        grads = _window_gradients(dy, halo, halo_of_window, BLOCK_J, PRECISION)
        acc += tl.dot(grads.to(table_row.dtype), tl.trans(table_row), input_precision=PRECISION)

    _store_rows(dq_ptr, b, HEADS, K, N, head, pos, rows_ok, offs_k, mask_k, acc)


@triton.jit
def lambda_output_bwd_dvalues_kernel(
    dy_ptr, q_ptr, table_ptr, d_values_ptr,
    HEADS, K, U, V, H_DIM, W_DIM, RH, RW, C_LO, C_COUNT,
    BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr,
    BLOCK_T: tl.constexpr, V_CAP: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_J: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Positional part of dvalues for one (b, u), BLOCK_T target positions m of an image row and
    BLOCK_V channels: gathers from the query positions m − o that read them (no scatter, no
    atomics), one (table row, head) per step."""
    b = tl.program_id(1) // U
    u = tl.program_id(1) % U
    x_tiles = tl.cdiv(W_DIM, BLOCK_T)
    image_row = tl.program_id(0) // x_tiles
    x0 = tl.program_id(0) % x_tiles * BLOCK_T
    N = H_DIM * W_DIM
    offs_k, mask_k, offs_c, mask_c = _table_ranges(K, C_COUNT, BLOCK_K, BLOCK_C)
    offs_v, mask_v = block_range(tl.program_id(2) * BLOCK_V, BLOCK_V, V)
    target, target_ok = block_range(x0, BLOCK_T, W_DIM)

    # Query columns that read the tile (target = query + C_LO + c − RW//2), clipped to the image.
    query_first = tl.maximum(x0 - (C_LO + C_COUNT - 1 - RW // 2), 0)
    query_end = tl.minimum(x0 + BLOCK_T - (C_LO - RW // 2), W_DIM)
    query, query_ok = block_range(query_first, BLOCK_J, query_end)
    window_of_target = target[None, :] - query[:, None] - C_LO + RW // 2
    # Table rows under which a query image row inside the image reads this image row.
    a_first = tl.maximum(image_row - H_DIM + 1 + RH // 2, 0)
    a_last = tl.minimum(image_row + RH // 2 + 1, RH)

    acc = tl.zeros((BLOCK_V, BLOCK_T), dtype=tl.float32)
    for step in range(a_first * HEADS, a_last * HEADS):
        a = step // HEADS
        bh = (b * HEADS + step % HEADS).to(tl.int64)
        pos = (image_row - a + RH // 2) * W_DIM + query
        q = load_tile(q_ptr + bh * K * N, pos, 1, query_ok, offs_k, N, mask_k)
        dy_t = load_tile(dy_ptr + bh * V * N, offs_v, N, mask_v, pos, 1, query_ok)
        table_row = _load_table_row(table_ptr, a, u, RW, K, U, C_LO, offs_k, mask_k, offs_c,
                                    mask_c)
        logits = tl.dot(q, table_row, input_precision=PRECISION)  # s[h, query, (a, c), u]
        band = _shear(logits, window_of_target, C_COUNT)  # the logit linking query j, target i
        acc += tl.dot(dy_t, band.to(dy_t.dtype), input_precision=PRECISION)

    base = d_values_ptr + (b * U + u).to(tl.int64) * V * N + image_row * W_DIM
    tl.store(base + offs_v[:, None] * N + target[None, :], acc.to(d_values_ptr.dtype.element_ty),
             mask=mask_v[:, None] & target_ok[None, :])


@triton.jit
def lambda_output_bwd_d_pos_table_partial_kernel(
    dy_ptr, q_ptr, values_ptr, partial_ptr,
    B, HEADS, K, U, V, H_DIM, W_DIM, RH, RW, A_LO, C_LO, C_COUNT, SPLITS,
    BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr,
    BLOCK_V: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_J: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """partial[split, (a, u), k, c] = Σ over this split's (b, position tile, head group) items of
    q[b,h,k,n]·g[b,h,n,(a,c),u]; one program per (table row a, u, split)."""
    a = A_LO + tl.program_id(0) // U
    u = tl.program_id(0) % U
    N = H_DIM * W_DIM
    offs_k, mask_k, offs_c, mask_c = _table_ranges(K, C_COUNT, BLOCK_K, BLOCK_C)
    offs_v, mask_v = block_range(0, BLOCK_V, V)
    # Image rows whose source row under table row a is inside the image.
    image_row_lo = tl.maximum(RH // 2 - a, 0)
    image_rows = tl.minimum(H_DIM + RH // 2 - a, H_DIM) - image_row_lo
    x_tiles = tl.cdiv(W_DIM, BLOCK_T)
    head_groups = tl.cdiv(HEADS, BLOCK_H)
    per_image = image_rows * x_tiles * head_groups

    acc = tl.zeros((BLOCK_K, BLOCK_C), dtype=tl.float32)
    for item in range(tl.program_id(1), B * per_image, SPLITS):
        b = item // per_image
        image_row, x0, head, col, pos, rows_ok = _query_tile(
            image_row_lo * x_tiles + item % per_image // head_groups, item % head_groups, HEADS,
            W_DIM, BLOCK_H, BLOCK_T)
        dy = _load_rows(dy_ptr, b, HEADS, V, N, head, pos, rows_ok, offs_v, mask_v)
        q = _load_rows(q_ptr, b, HEADS, K, N, head, pos, rows_ok, offs_k, mask_k)
        halo_cols, halo_ok, _, halo_of_window = _tile_halo(x0, col, offs_c, C_LO, C_COUNT, RW,
                                                           W_DIM, BLOCK_T, BLOCK_J)
        halo = _load_halo(values_ptr, b, u, a, image_row, U, V, N, RH, W_DIM, halo_cols, halo_ok,
                          offs_v, mask_v)
        grads = _window_gradients(dy, halo, halo_of_window, BLOCK_J, PRECISION)
        acc += tl.dot(tl.trans(q), grads.to(q.dtype), input_precision=PRECISION)

    out = partial_ptr + (tl.program_id(1) * tl.num_programs(0) + tl.program_id(0)) * K * C_COUNT
    tl.store(out + offs_k[:, None] * C_COUNT + offs_c[None, :], acc,
             mask=mask_k[:, None] & mask_c[None, :])


@triton.jit
def lambda_output_bwd_dlam_partial_kernel(
    dy_ptr, q_ptr, partial_ptr,
    HEADS, K, V, N, SPLITS, TILES_PER_SPLIT,
    BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """partial[b,split,k,v] = Σ_h Σ_{n in this split's position tiles} q[b,h,k,n]·dy[b,h,v,n]."""
    b = tl.program_id(0)
    split = tl.program_id(1)
    offs_k, mask_k = block_range(0, BLOCK_K, K)
    offs_v, mask_v = block_range(0, BLOCK_V, V)
    acc = tl.zeros((BLOCK_K, BLOCK_V), dtype=tl.float32)
    for item in range(HEADS * TILES_PER_SPLIT):
        bh = (b * HEADS + item // TILES_PER_SPLIT).to(tl.int64)
        tile = split * TILES_PER_SPLIT + item % TILES_PER_SPLIT
        n, mask_n = block_range(tile * BLOCK_N, BLOCK_N, N)
        q = load_tile(q_ptr + bh * K * N, offs_k, N, mask_k, n, 1, mask_n)
        dy_t = load_tile(dy_ptr + bh * V * N, n, 1, mask_n, offs_v, N, mask_v)
        acc += tl.dot(q, dy_t, input_precision=PRECISION)
    tl.store(partial_ptr + (b * SPLITS + split) * K * V + offs_k[:, None] * V + offs_v[None, :],
             acc, mask=mask_k[:, None] & mask_v[None, :])


# ------------------------------------------------------------------ autotuned variants
_HALO = {"BLOCK_J": _halo_heuristic}
_HALO_AND_VALUES = {"BLOCK_J": _halo_heuristic, "BLOCK_V": _values_block_heuristic}
_KERNELS = {"fwd": (lambda_output_fwd_kernel, _HALO_AND_VALUES),
            "dq": (lambda_output_bwd_dq_kernel, _HALO),
            "dvalues": (lambda_output_bwd_dvalues_kernel, _HALO_AND_VALUES),
            "d_pos_table": (lambda_output_bwd_d_pos_table_partial_kernel, _HALO)}
# TUNED[kind][fp32]: the kernel autotuned over CONFIGS[kind][fp32], pruned per launch, with the
# block sizes that follow from a configuration (halo, values tile) filled in by heuristics.
TUNED = {
    kind: tuple(
        triton.autotune(configs=CONFIGS[kind][fp32], key=TUNING_KEY, cache_results=True,
                        prune_configs_by={"early_config_prune": _prune(kind)})(
            triton.heuristics(heuristics)(kernel))
        for fp32 in (False, True))
    for kind, (kernel, heuristics) in _KERNELS.items()
}


def _tuned(kind, dtype):
    return TUNED[kind][dtype == torch.float32]


# ------------------------------------------------------------------ launches
def _geometry(q, values, pos_table):
    b, heads, k, hh, ww = q.shape
    u, v = values.shape[1], values.shape[2]
    rh, rw = pos_table.shape[0], pos_table.shape[1]
    a_lo, a_hi = offset_range(rh, hh)
    c_lo, c_hi = offset_range(rw, ww)
    return dict(b=b, heads=heads, k=k, u=u, v=v, hh=hh, ww=ww, n=hh * ww, rh=rh, rw=rw,
                a_lo=a_lo, a_hi=a_hi, c_lo=c_lo, c_count=c_hi - c_lo,
                block_h=min(pow2(heads), MAX_BLOCK_H), block_k=channel_block(k),
                block_c=channel_block(c_hi - c_lo))


def _shape_args(g):
    """HEADS, K, U, V, H_DIM, W_DIM, RH, RW (the tuning key)."""
    return g["heads"], g["k"], g["u"], g["v"], g["hh"], g["ww"], g["rh"], g["rw"]


def _position_tiles(g, meta):
    return g["hh"] * triton.cdiv(g["ww"], meta["BLOCK_T"])


def forward_launches(q, values, pos_table, lam, y):
    """The launch computing y (B, h, v, H, W) from contiguous inputs."""
    g = _geometry(q, values, pos_table)
    head_groups = triton.cdiv(g["heads"], g["block_h"])
    return [Launch(
        _tuned("fwd", q.dtype),
        lambda meta: (_position_tiles(g, meta), g["b"] * head_groups,
                      triton.cdiv(g["v"], meta["BLOCK_V"])),
        (q, values, pos_table, lam, y, *_shape_args(g), g["c_lo"], g["c_count"]),
        dict(BLOCK_H=g["block_h"], BLOCK_K=g["block_k"], BLOCK_C=g["block_c"],
             PRECISION=dot_precision(q.dtype)))]


# Number of partial sums per reduction: fixed by the shapes only, so the summation order (and
# hence every bit of the result, for a given tile configuration) is the same on every call. dΛ
# gives each batch element up to 32 programs: with B >= 4 that is over 128 programs, about one
# per SM, and its partial sums (B × 32 × k × v fp32) stay small next to q and dy.
MAX_SPLITS = 32
# d_pos_table programs to aim for, (table rows × u) × splits: about 8 per SM of a 132-SM GPU,
# while the float32 partial sums (splits × table rows × u × k × window) stay a few MB (2.7 MB
# at r=41, k=16). At most 64 splits: small tables (few table rows × u) would otherwise get
# hundreds of splits, each re-reading the halo for a handful of items, and a host reduction over
# all of them.
D_POS_TABLE_PROGRAMS = 1024
MAX_D_POS_TABLE_SPLITS = 64


def backward_launches(dy, q, values, pos_table, lam):
    """(launches, finish) of lambda_output_backward on contiguous inputs: the kernel launches, and
    the host step that reduces their partial sums into (dq, dvalues (positional part),
    d_pos_table, dΛ)."""
    g = _geometry(q, values, pos_table)
    b, heads, k, u, v, n = g["b"], g["heads"], g["k"], g["u"], g["v"], g["n"]
    precision = dot_precision(q.dtype)
    tile_blocks = dict(BLOCK_K=g["block_k"], BLOCK_C=g["block_c"], PRECISION=precision)
    row_blocks = dict(tile_blocks, BLOCK_H=g["block_h"], BLOCK_V=channel_block(v))
    head_groups = triton.cdiv(heads, g["block_h"])
    window = (g["c_lo"], g["c_count"])

    dq = torch.empty_like(q, memory_format=torch.contiguous_format)
    d_values = torch.empty_like(values, memory_format=torch.contiguous_format)
    launches = [
        Launch(_tuned("dq", q.dtype),
               lambda meta: (_position_tiles(g, meta), b * head_groups),
               (dy, values, pos_table, lam, dq, *_shape_args(g), *window), row_blocks),
        Launch(_tuned("dvalues", q.dtype),
               lambda meta: (_position_tiles(g, meta), b * u, triton.cdiv(v, meta["BLOCK_V"])),
               (dy, q, pos_table, d_values, *_shape_args(g), *window), tile_blocks),
    ]

    table_rows = g["a_hi"] - g["a_lo"]
    d_pos_table_splits = max(1, min(MAX_D_POS_TABLE_SPLITS,
                                    triton.cdiv(D_POS_TABLE_PROGRAMS, table_rows * u),
                                    b * g["hh"]))
    d_pos_table_partial = q.new_empty((d_pos_table_splits, table_rows, u, k, g["c_count"]),
                                      dtype=torch.float32)
    launches.append(Launch(
        _tuned("d_pos_table", q.dtype), (table_rows * u, d_pos_table_splits),
        (dy, q, values, d_pos_table_partial, b, *_shape_args(g), g["a_lo"], *window,
         d_pos_table_splits),
        row_blocks))

    block_lam_k, block_lam_v = channel_block(k), channel_block(v)
    # dΛ keeps only its k×v accumulator across the loop, so its steps may be twice the usual
    # POSITION_CAP: half the iterations over q and dy (the tile-size rule still bounds them).
    block_n = position_block_for(n, max(block_lam_k, block_lam_v), q.dtype, cap=2 * POSITION_CAP)
    n_tiles = triton.cdiv(n, block_n)
    lam_splits = min(n_tiles, MAX_SPLITS)
    tiles_per_split = triton.cdiv(n_tiles, lam_splits)
    lam_splits = triton.cdiv(n_tiles, tiles_per_split)
    lam_partial = q.new_empty((b, lam_splits, k, v), dtype=torch.float32)
    launches.append(Launch(
        lambda_output_bwd_dlam_partial_kernel, (b, lam_splits),
        (dy, q, lam_partial, heads, k, v, n, lam_splits, tiles_per_split),
        dict(BLOCK_K=block_lam_k, BLOCK_V=block_lam_v, BLOCK_N=block_n, PRECISION=precision)))

    def finish():
        d_lam = lam_partial.sum(dim=1).to(lam.dtype)
        d_pos_table = pos_table.new_zeros(pos_table.shape, dtype=torch.float32)
        # (splits, a, u, k, c) -> (a, c, k, u)
        d_pos_table[g["a_lo"]:g["a_hi"], g["c_lo"]:g["c_lo"] + g["c_count"]] = (
            d_pos_table_partial.sum(dim=0).permute(0, 3, 2, 1))
        return dq, d_values, d_pos_table.to(pos_table.dtype), d_lam

    return launches, finish


def lambda_output(q, values, pos_table, lam, launch=lambda kernel: kernel):
    """y (B, h, v, H, W) = content (q·Λ) + positional (Σ_{o,u} s·values) parts, fused."""
    q, values, pos_table, lam = (t.contiguous() for t in (q, values, pos_table, lam))
    b, heads, _, hh, ww = q.shape
    y = q.new_empty((b, heads, values.shape[2], hh, ww))
    run_launches(forward_launches(q, values, pos_table, lam, y), launch)
    return y


def lambda_output_backward(dy, q, values, pos_table, lam, launch=lambda kernel: kernel):
    """(dq, dvalues (positional part), d_pos_table, dΛ) of lambda_output."""
    launches, finish = backward_launches(
        *(t.contiguous() for t in (dy, q, values, pos_table, lam)))
    run_launches(launches, launch)
    return finish()
