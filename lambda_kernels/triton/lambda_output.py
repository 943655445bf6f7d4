"""Fused lambda output (content + positional), forward and backward, as Triton kernels.

Math (q (B,h,k,N), values (B,u,v,N), E = pos_table (Rh,Rw,k,u), Λ = λc + bias (B,k,v);
o = (oy, ox) = (a − Rh//2, c − Rw//2) an offset of the table, n+o the position shifted by it,
values outside the image are zero):

    s[b,h,n,o,u]  = Σ_k q[b,h,k,n] · E[o,k,u]                         (positional logits)
    y[b,h,v,n]    = Σ_k q[b,h,k,n] · Λ[b,k,v]  +  Σ_{o,u} s[b,h,n,o,u] · values[b,u,v,n+o]

    g[b,h,n,o,u]  = Σ_v dy[b,h,v,n] · values[b,u,v,n+o]
    dq[b,h,k,n]   = Σ_v dy[b,h,v,n] · Λ[b,k,v]  +  Σ_{o,u} E[o,k,u] · g[b,h,n,o,u]
    dΛ[b,k,v]     = Σ_{h,n} q[b,h,k,n] · dy[b,h,v,n]
    dvalues[b,u,v,m] = Σ_{h,o} s[b,h,m−o,o,u] · dy[b,h,v,m−o]
    dE[o,k,u]     = Σ_{b,h,n} q[b,h,k,n] · g[b,h,n,o,u]

s and g are formed one (offset, u) at a time inside a tile of positions and consumed at once:
nothing of size B·N·k·v (λp), N·N or B·h·N·r² is ever allocated. Offsets that can never land
inside the image (|oy| ≥ H or |ox| ≥ W, e.g. most of a global-context table) are skipped.
y and dq are the same contraction with the roles of (E, k) and (values, v) exchanged: one kernel
body (_fused_output_tile, specialised at compile time by its GRAD_Q flag) computes both.

Cross-program reductions (dΛ over positions, dE over batch and positions) write per-program
partial sums over a fixed grid that depends only on the shapes, then a second reduction sums
them in a fixed order: results are bit-reproducible, no atomics.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (INTERPRETED, block_range, channel_block, dot_allowed, dot_precision,
                      load_tile, matmul_tile, offset_range, position_block)


def _out_configs():
    if INTERPRETED:
        return [triton.Config({}, num_warps=4)]
    return [triton.Config({}, num_warps=w) for w in (2, 4, 8)]


@triton.jit
def _table_column(table_ptr, a, c, RW, K, U, u, offs_k, mask_k):
    """E[o,:,u] for the offset o = (a, c) of the table, float32."""
    return tl.load(table_ptr + ((a * RW + c) * K + offs_k) * U + u, mask=mask_k,
                   other=0.0).to(tl.float32)


@triton.jit
def _fused_output_tile(
    x_ptr, values_ptr, table_ptr, lam_ptr, out_ptr,
    HEADS, K, U, V, H_DIM, W_DIM, N, RH, RW, A_LO, A_HI, C_LO, C_HI,
    BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_N: tl.constexpr,
    USE_DOT: tl.constexpr, PRECISION: tl.constexpr, GRAD_Q: tl.constexpr,
):
    """One (b, head), a tile of positions. GRAD_Q=False: x = q (k, n), out = y (v, n);
    GRAD_Q=True: x = dy (v, n), out = dq (k, n). The two are the same contraction with the roles
    of (E, k) and (values, v) exchanged; GRAD_Q is resolved at compile time."""
    bh = tl.program_id(0)
    b = bh // HEADS
    offs_k, mask_k = block_range(0, BLOCK_K, K)
    offs_v, mask_v = block_range(0, BLOCK_V, V)
    n, mask_n = block_range(tl.program_id(1) * BLOCK_N, BLOCK_N, N)
    row = n // W_DIM
    col = n % W_DIM

    lam_b = lam_ptr + b * K * V
    if GRAD_Q:
        x = load_tile(x_ptr + bh.to(tl.int64) * V * N, offs_v, N, mask_v, n, 1, mask_n)
        lam = load_tile(lam_b, offs_k, V, mask_k, offs_v, 1, mask_v)  # Λ (k, v)
    else:
        x = load_tile(x_ptr + bh.to(tl.int64) * K * N, offs_k, N, mask_k, n, 1, mask_n)
        lam = load_tile(lam_b, offs_v, 1, mask_v, offs_k, V, mask_k)  # Λᵀ (v, k)
    acc = matmul_tile(lam, x, USE_DOT, PRECISION)  # content part

    values_b = values_ptr + b.to(tl.int64) * U * V * N
    for a in range(A_LO, A_HI):
        src_row = row + (a - RH // 2)
        row_ok = mask_n & (src_row >= 0) & (src_row < H_DIM)
        for c in range(C_LO, C_HI):
            src_col = col + (c - RW // 2)
            src_ok = row_ok & (src_col >= 0) & (src_col < W_DIM)
            src = src_row * W_DIM + src_col
            for u in range(U):
                e = _table_column(table_ptr, a, c, RW, K, U, u, offs_k, mask_k)
                vals = load_tile(values_b + u * V * N, offs_v, N, mask_v, src, 1, src_ok)
                if GRAD_Q:
                    g = tl.sum(x * vals, axis=0)  # g[b,h,n,o,u] for the tile
                    acc += e[:, None] * g[None, :]
                else:
                    logits = tl.sum(e[:, None] * x, axis=0)  # s[b,h,n,o,u] for the tile
                    acc += vals * logits[None, :]
    if GRAD_Q:
        tl.store(out_ptr + bh.to(tl.int64) * K * N + offs_k[:, None] * N + n[None, :],
                 acc.to(out_ptr.dtype.element_ty), mask=mask_k[:, None] & mask_n[None, :])
    else:
        tl.store(out_ptr + bh.to(tl.int64) * V * N + offs_v[:, None] * N + n[None, :],
                 acc.to(out_ptr.dtype.element_ty), mask=mask_v[:, None] & mask_n[None, :])


@triton.autotune(configs=_out_configs(), key=["H_DIM", "K", "U", "V", "N", "RH", "RW"])
@triton.jit
def lambda_output_fwd_kernel(
    q_ptr, values_ptr, table_ptr, lam_ptr, y_ptr,
    HEADS, K, U, V, H_DIM, W_DIM, N, RH, RW, A_LO, A_HI, C_LO, C_HI,
    BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_N: tl.constexpr,
    USE_DOT: tl.constexpr, PRECISION: tl.constexpr,
):
    """y for one (b, head), all v, a tile of positions."""
    _fused_output_tile(q_ptr, values_ptr, table_ptr, lam_ptr, y_ptr,
                       HEADS, K, U, V, H_DIM, W_DIM, N, RH, RW, A_LO, A_HI, C_LO, C_HI,
                       BLOCK_K, BLOCK_V, BLOCK_N, USE_DOT, PRECISION, GRAD_Q=False)


@triton.jit
def lambda_output_bwd_dq_kernel(
    dy_ptr, values_ptr, table_ptr, lam_ptr, dq_ptr,
    HEADS, K, U, V, H_DIM, W_DIM, N, RH, RW, A_LO, A_HI, C_LO, C_HI,
    BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_N: tl.constexpr,
    USE_DOT: tl.constexpr, PRECISION: tl.constexpr,
):
    """dq for one (b, head), all k, a tile of positions."""
    _fused_output_tile(dy_ptr, values_ptr, table_ptr, lam_ptr, dq_ptr,
                       HEADS, K, U, V, H_DIM, W_DIM, N, RH, RW, A_LO, A_HI, C_LO, C_HI,
                       BLOCK_K, BLOCK_V, BLOCK_N, USE_DOT, PRECISION, GRAD_Q=True)


@triton.jit
def lambda_output_bwd_dvalues_kernel(
    dy_ptr, q_ptr, table_ptr, d_values_ptr,
    HEADS, K, U, V, H_DIM, W_DIM, N, RH, RW, A_LO, A_HI, C_LO, C_HI,
    BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Positional part of dvalues for one (b, u), all v, a tile of target positions m: gathers
    from the query positions m − o that read m (no scatter, no atomics)."""
    bu = tl.program_id(0)
    m_tile = tl.program_id(1)
    b = bu // U
    u = bu % U
    offs_k, mask_k = block_range(0, BLOCK_K, K)
    offs_v, mask_v = block_range(0, BLOCK_V, V)
    m, mask_m = block_range(m_tile * BLOCK_N, BLOCK_N, N)
    row = m // W_DIM
    col = m % W_DIM

    acc = tl.zeros((BLOCK_V, BLOCK_N), dtype=tl.float32)
    for head in range(HEADS):
        bh = (b * HEADS + head).to(tl.int64)
        for a in range(A_LO, A_HI):
            src_row = row - (a - RH // 2)
            row_ok = mask_m & (src_row >= 0) & (src_row < H_DIM)
            for c in range(C_LO, C_HI):
                src_col = col - (c - RW // 2)
                src_ok = row_ok & (src_col >= 0) & (src_col < W_DIM)
                src = src_row * W_DIM + src_col
                q = load_tile(q_ptr + bh * K * N, offs_k, N, mask_k, src, 1, src_ok)
                e = _table_column(table_ptr, a, c, RW, K, U, u, offs_k, mask_k)
                logits = tl.sum(e[:, None] * q, axis=0)  # s[b,h,m−o,o,u]
                dy = load_tile(dy_ptr + bh * V * N, offs_v, N, mask_v, src, 1, src_ok)
                acc += dy * logits[None, :]
    tl.store(d_values_ptr + bu.to(tl.int64) * V * N + offs_v[:, None] * N + m[None, :],
             acc.to(d_values_ptr.dtype.element_ty), mask=mask_v[:, None] & mask_m[None, :])


@triton.jit
def lambda_output_bwd_dlam_partial_kernel(
    dy_ptr, q_ptr, partial_ptr,
    HEADS, K, V, N, SPLITS, TILES_PER_SPLIT,
    BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_N: tl.constexpr,
    USE_DOT: tl.constexpr, PRECISION: tl.constexpr,
):
    """partial[b,split,k,v] = Σ_h Σ_{n in this split's position tiles} q[b,h,k,n]·dy[b,h,v,n]."""
    b = tl.program_id(0)
    split = tl.program_id(1)
    offs_k, mask_k = block_range(0, BLOCK_K, K)
    offs_v, mask_v = block_range(0, BLOCK_V, V)
    acc = tl.zeros((BLOCK_K, BLOCK_V), dtype=tl.float32)
    for head in range(HEADS):
        bh = (b * HEADS + head).to(tl.int64)
        for t in range(TILES_PER_SPLIT):
            n, mask_n = block_range((split * TILES_PER_SPLIT + t) * BLOCK_N, BLOCK_N, N)
            q = load_tile(q_ptr + bh * K * N, offs_k, N, mask_k, n, 1, mask_n)
            dy_t = load_tile(dy_ptr + bh * V * N, n, 1, mask_n, offs_v, N, mask_v)
            acc += matmul_tile(q, dy_t, USE_DOT, PRECISION)
    tl.store(partial_ptr + (b * SPLITS + split) * K * V + offs_k[:, None] * V + offs_v[None, :],
             acc, mask=mask_k[:, None] & mask_v[None, :])


@triton.jit
def lambda_output_bwd_dtable_partial_kernel(
    dy_ptr, q_ptr, values_ptr, partial_ptr,
    B, HEADS, K, U, V, H_DIM, W_DIM, N, RH, RW, A_LO, C_LO, C_COUNT, OFFSETS,
    SPLITS, N_TILES,
    BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """partial[split,o,k,u] = Σ over this split's (b, position tile) pairs and all heads of
    q[b,h,k,n]·g[b,h,n,o,u]; one program per (offset o, split)."""
    o = tl.program_id(0)
    split = tl.program_id(1)
    a = A_LO + o // C_COUNT
    c = C_LO + o % C_COUNT
    offs_k, mask_k = block_range(0, BLOCK_K, K)
    offs_v, mask_v = block_range(0, BLOCK_V, V)
    for u in range(U):
        acc = tl.zeros((BLOCK_K,), dtype=tl.float32)
        for item in range(split, B * N_TILES, SPLITS):
            b = item // N_TILES
            n, mask_n = block_range((item % N_TILES) * BLOCK_N, BLOCK_N, N)
            src_row = n // W_DIM + (a - RH // 2)
            src_col = n % W_DIM + (c - RW // 2)
            src_ok = mask_n & (src_row >= 0) & (src_row < H_DIM) & (src_col >= 0) & (
                src_col < W_DIM)
            src = src_row * W_DIM + src_col
            vals = tl.load(values_ptr + ((b * U + u) * V + offs_v[:, None]).to(tl.int64) * N
                           + src[None, :], mask=mask_v[:, None] & src_ok[None, :],
                           other=0.0).to(tl.float32)
            for head in range(HEADS):
                bh = (b * HEADS + head).to(tl.int64)
                dy = load_tile(dy_ptr + bh * V * N, offs_v, N, mask_v, n, 1, mask_n)
                g = tl.sum(dy * vals, axis=0)
                q = load_tile(q_ptr + bh * K * N, offs_k, N, mask_k, n, 1, mask_n)
                acc += tl.sum(q * g[None, :], axis=1)
        tl.store(partial_ptr + ((split * OFFSETS + o) * K + offs_k) * U + u, acc, mask=mask_k)


def _geometry(q, values, pos_table):
    b, heads, k, hh, ww = q.shape
    u, v = values.shape[1], values.shape[2]
    rh, rw = pos_table.shape[0], pos_table.shape[1]
    a_lo, a_hi = offset_range(rh, hh)
    c_lo, c_hi = offset_range(rw, ww)
    return dict(b=b, heads=heads, k=k, u=u, v=v, hh=hh, ww=ww, n=hh * ww, rh=rh, rw=rw,
                a_lo=a_lo, a_hi=a_hi, c_lo=c_lo, c_hi=c_hi)


def _tile_n(n: int, block_k: int, block_v: int) -> int:
    # Keep the (channels × positions) register tiles around 8K floats.
    return position_block(n, cap=max(16, min(128, 8192 // max(block_k, block_v))))


def _blocks(g):
    """(BLOCK_K, BLOCK_V, BLOCK_N) for a geometry from _geometry."""
    block_k, block_v = channel_block(g["k"]), channel_block(g["v"])
    return block_k, block_v, _tile_n(g["n"], block_k, block_v)


def _launch_fused_output(launch, kernel, x, values, pos_table, lam, out, g, precision):
    """Launch lambda_output_fwd_kernel (x = q, out = y) or lambda_output_bwd_dq_kernel
    (x = dy, out = dq): one program per (b, head) and position tile."""
    block_k, block_v, block_n = _blocks(g)
    launch(kernel)[(g["b"] * g["heads"], triton.cdiv(g["n"], block_n))](
        x, values, pos_table, lam, out,
        g["heads"], g["k"], g["u"], g["v"], g["hh"], g["ww"], g["n"], g["rh"], g["rw"],
        g["a_lo"], g["a_hi"], g["c_lo"], g["c_hi"],
        BLOCK_K=block_k, BLOCK_V=block_v, BLOCK_N=block_n,
        USE_DOT=dot_allowed(), PRECISION=precision)


def lambda_output(q, values, pos_table, lam, launch=lambda kernel: kernel):
    """y (B, h, v, H, W) = content (q·Λ) + positional (Σ_{o,u} s·values) parts, fused."""
    q, values, pos_table, lam = (t.contiguous() for t in (q, values, pos_table, lam))
    g = _geometry(q, values, pos_table)
    y = q.new_empty((g["b"], g["heads"], g["v"], g["hh"], g["ww"]))
    _launch_fused_output(launch, lambda_output_fwd_kernel, q, values, pos_table, lam, y, g,
                         dot_precision(q.dtype))
    return y


# Number of partial sums per reduction: fixed by the shapes only, so the summation order (and
# hence every bit of the result) is the same on every call.
MAX_SPLITS = 32


def lambda_output_backward(dy, q, values, pos_table, lam, launch=lambda kernel: kernel):
    """(dq, dvalues (positional part), dpos_table, dΛ) of lambda_output."""
    dy, q, values, pos_table, lam = (t.contiguous() for t in (dy, q, values, pos_table, lam))
    g = _geometry(q, values, pos_table)
    b, heads, k, u, v, n = g["b"], g["heads"], g["k"], g["u"], g["v"], g["n"]
    block_k, block_v, block_n = _blocks(g)
    n_tiles = triton.cdiv(n, block_n)
    use_dot, precision = dot_allowed(), dot_precision(q.dtype)
    geometry_args = (g["hh"], g["ww"], n, g["rh"], g["rw"])

    dq = torch.empty_like(q, memory_format=torch.contiguous_format)
    _launch_fused_output(launch, lambda_output_bwd_dq_kernel, dy, values, pos_table, lam, dq, g,
                         precision)

    d_values = torch.empty_like(values, memory_format=torch.contiguous_format)
    launch(lambda_output_bwd_dvalues_kernel)[(b * u, n_tiles)](
        dy, q, pos_table, d_values, heads, k, u, v, *geometry_args,
        g["a_lo"], g["a_hi"], g["c_lo"], g["c_hi"],
        BLOCK_K=block_k, BLOCK_V=block_v, BLOCK_N=block_n)

    lam_splits = min(n_tiles, MAX_SPLITS)
    tiles_per_split = triton.cdiv(n_tiles, lam_splits)
    lam_splits = triton.cdiv(n_tiles, tiles_per_split)
    lam_partial = q.new_empty((b, lam_splits, k, v), dtype=torch.float32)
    launch(lambda_output_bwd_dlam_partial_kernel)[(b, lam_splits)](
        dy, q, lam_partial, heads, k, v, n, lam_splits, tiles_per_split,
        BLOCK_K=block_k, BLOCK_V=block_v, BLOCK_N=block_n, USE_DOT=use_dot, PRECISION=precision)
    d_lam = lam_partial.sum(dim=1).to(lam.dtype)

    rows, cols = g["a_hi"] - g["a_lo"], g["c_hi"] - g["c_lo"]
    offsets = rows * cols
    table_splits = min(b * n_tiles, MAX_SPLITS)
    table_partial = q.new_empty((table_splits, rows, cols, k, u), dtype=torch.float32)
    launch(lambda_output_bwd_dtable_partial_kernel)[(offsets, table_splits)](
        dy, q, values, table_partial, b, heads, k, u, v, *geometry_args,
        g["a_lo"], g["c_lo"], cols, offsets, table_splits, n_tiles,
        BLOCK_K=block_k, BLOCK_V=block_v, BLOCK_N=block_n)
    d_table = pos_table.new_zeros(pos_table.shape, dtype=torch.float32)
    d_table[g["a_lo"]:g["a_hi"], g["c_lo"]:g["c_hi"]] = table_partial.sum(dim=0)
    return dq, d_values, d_table.to(pos_table.dtype), d_lam
