"""Content lambda, forward and backward, as Triton kernels.

Math (keys (B,u,k,N), values (B,u,v,N), N = H·W positions; σ = softmax of keys over N):

    forward    λc[b,k,v]     = Σ_u Σ_m σ[b,u,k,m] · values[b,u,v,m]
               lse[b,u,k]    = log Σ_m exp(keys[b,u,k,m])           (log-sum-exp, float32)
    backward   σ[b,u,k,m]    = exp(keys[b,u,k,m] − lse[b,u,k])      (recomputed, never stored)
               dσ[b,u,k,m]   = Σ_v dλc[b,k,v] · values[b,u,v,m]
               D[b,u,k]      = Σ_m σ · dσ
               dkeys         = σ · (dσ − D)
               dvalues[b,u,v,m] = Σ_k σ[b,u,k,m] · dλc[b,k,v]

The forward is an online softmax (running max and running sum per (b,u,k), rescaling the
accumulator like flash attention) fused with the contraction against values: σ is never written
to memory, only the log-sum-exp. Products are tl.dot with operands in the input dtype (the
probabilities rounded to it, as attention rounds P; fp32 inputs: IEEE fp32) and float32
accumulation.

Cost model (per step: a tile of BLOCK_N positions for one (b, u, k-tile, v-tile), b bytes per
element): forward 2·k·N_t·v FLOP (tl.dot) + k·N_t exponentials for (k + v)·N_t·b bytes, about
k·v/(k+v)/b ≈ 6 FLOP per byte at k=16, v=64 in bf16; the backward's two kernels likewise
(dσ = dλc·values, dvalues = dλcᵀ·σ). Far below an H100's ridge (~295 FLOP/B against HBM): all
three are bound by HBM bandwidth, each tensor read (written) once or twice. At the GPU headline
(B=32, 56×56, u=1, k=16, v=64, bf16) the forward reads 16 MB (~5 µs at 3.35 TB/s) for
0.2 GFLOP, the backward moves ~45 MB (~14 µs): negligible next to the positional kernels.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._tiles import (POSITION_CAP, Launch, block_range, channel_block, dot_precision, load_tile,
                      position_block, position_block_for, prune_to_default, run_launches)


# The forward streams keys and values through a software pipeline: stages and warps are tuned.
# Its λc accumulator (k × v) and probabilities (k × positions) stay in fp32 registers across the
# position loop: at 64 k and 64 v each tile is 64·64·4 bytes over 128 threads (4 warps), 32
# registers per thread, leaving the rest of the budget to the operands. Wider k or v take more
# programs (a v tile recomputes its k rows' softmax, a few exponentials next to the products).
FWD_CHANNEL_CAP = 64
FWD_CONFIGS = [triton.Config({}, num_warps=w, num_stages=s) for w in (4, 8) for s in (2, 3)]


@triton.autotune(configs=FWD_CONFIGS, key=["U", "K", "V", "N"],
                 prune_configs_by={"early_config_prune": prune_to_default})
@triton.jit
def content_lambda_fwd_kernel(
    keys_ptr, values_ptr, lam_ptr, lse_ptr,
    U, K, V, N,
    BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """One program: batch b, a tile of k and a tile of v; loops over u and positions."""
    b = tl.program_id(0)
    k_tile = tl.program_id(1)
    v_tile = tl.program_id(2)
    offs_k, mask_k = block_range(k_tile * BLOCK_K, BLOCK_K, K)
    offs_v, mask_v = block_range(v_tile * BLOCK_V, BLOCK_V, V)

    lam = tl.zeros((BLOCK_K, BLOCK_V), dtype=tl.float32)
    for u in range(U):
        keys_base = keys_ptr + (b * U + u).to(tl.int64) * K * N
        values_base = values_ptr + (b * U + u).to(tl.int64) * V * N
        row_max = tl.full((BLOCK_K,), float("-inf"), dtype=tl.float32)
        row_sum = tl.zeros((BLOCK_K,), dtype=tl.float32)
        acc = tl.zeros((BLOCK_K, BLOCK_V), dtype=tl.float32)
        for n0 in range(0, N, BLOCK_N):
            n, mask_n = block_range(n0, BLOCK_N, N)
            logits = tl.load(keys_base + offs_k[:, None] * N + n[None, :],
                             mask=mask_k[:, None] & mask_n[None, :],
                             other=float("-inf")).to(tl.float32)
            new_max = tl.maximum(row_max, tl.max(logits, axis=1))
            safe_max = tl.where(new_max == float("-inf"), 0.0, new_max)
            rescale = tl.exp(row_max - safe_max)
            p = tl.exp(logits - safe_max[:, None])
            row_sum = row_sum * rescale + tl.sum(p, axis=1)
            vals_t = load_tile(values_base, n, 1, mask_n, offs_v, N, mask_v)
            acc = acc * rescale[:, None] + tl.dot(p.to(vals_t.dtype), vals_t,
                                                  input_precision=PRECISION)
            row_max = new_max
        safe_sum = tl.where(row_sum > 0, row_sum, 1.0)
        lam += acc / safe_sum[:, None]
        log_sum_exp = row_max + tl.log(safe_sum)
        tl.store(lse_ptr + (b * U + u) * K + offs_k, log_sum_exp, mask=mask_k & (v_tile == 0))
    lam_ptrs = lam_ptr + b.to(tl.int64) * K * V + offs_k[:, None] * V + offs_v[None, :]
    tl.store(lam_ptrs, lam.to(lam_ptr.dtype.element_ty), mask=mask_k[:, None] & mask_v[None, :])


@triton.jit
def content_lambda_bwd_rowdot_kernel(
    d_lam_ptr, keys_ptr, values_ptr, lse_ptr, rowdot_ptr,
    U, K, V, N,
    BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """D[b,u,k] = Σ_m σ[b,u,k,m]·dσ[b,u,k,m]; one program per (b, u), all k and v."""
    bu = tl.program_id(0)
    b = bu // U
    offs_k, mask_k = block_range(0, BLOCK_K, K)
    offs_v, mask_v = block_range(0, BLOCK_V, V)
    d_lam = load_tile(d_lam_ptr + b * K * V, offs_k, V, mask_k, offs_v, 1, mask_v)
    lse = tl.load(lse_ptr + bu * K + offs_k, mask=mask_k, other=0.0)
    keys_base = keys_ptr + bu.to(tl.int64) * K * N
    values_base = values_ptr + bu.to(tl.int64) * V * N
    rowdot = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        n, mask_n = block_range(n0, BLOCK_N, N)
        logits = load_tile(keys_base, offs_k, N, mask_k, n, 1, mask_n).to(tl.float32)
        sigma = tl.where(mask_k[:, None] & mask_n[None, :], tl.exp(logits - lse[:, None]), 0.0)
        vals = load_tile(values_base, offs_v, N, mask_v, n, 1, mask_n)
        d_sigma = tl.dot(d_lam, vals, input_precision=PRECISION)
        rowdot += tl.sum(sigma * d_sigma, axis=1)
    tl.store(rowdot_ptr + bu * K + offs_k, rowdot, mask=mask_k)


@triton.jit
def content_lambda_bwd_kernel(
    d_lam_ptr, keys_ptr, values_ptr, lse_ptr, rowdot_ptr, d_keys_ptr, d_values_ptr,
    U, K, V, N,
    BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """dkeys = σ(dσ − D) and dvalues = Σ_k σ·dλc for one (b, u) and a tile of positions."""
    bu = tl.program_id(0)
    n_tile = tl.program_id(1)
    b = bu // U
    offs_k, mask_k = block_range(0, BLOCK_K, K)
    offs_v, mask_v = block_range(0, BLOCK_V, V)
    n, mask_n = block_range(n_tile * BLOCK_N, BLOCK_N, N)
    mask_kn = mask_k[:, None] & mask_n[None, :]
    mask_vn = mask_v[:, None] & mask_n[None, :]
    d_lam = load_tile(d_lam_ptr + b * K * V, offs_k, V, mask_k, offs_v, 1, mask_v)
    d_lam_t = load_tile(d_lam_ptr + b * K * V, offs_v, 1, mask_v, offs_k, V, mask_k)
    lse = tl.load(lse_ptr + bu * K + offs_k, mask=mask_k, other=0.0)
    rowdot = tl.load(rowdot_ptr + bu * K + offs_k, mask=mask_k, other=0.0)
    keys_base = keys_ptr + bu.to(tl.int64) * K * N
    values_base = values_ptr + bu.to(tl.int64) * V * N
    logits = load_tile(keys_base, offs_k, N, mask_k, n, 1, mask_n).to(tl.float32)
    sigma = tl.where(mask_kn, tl.exp(logits - lse[:, None]), 0.0)
    vals = load_tile(values_base, offs_v, N, mask_v, n, 1, mask_n)
    d_sigma = tl.dot(d_lam, vals, input_precision=PRECISION)
    d_keys = sigma * (d_sigma - rowdot[:, None])
    tl.store(d_keys_ptr + bu.to(tl.int64) * K * N + offs_k[:, None] * N + n[None, :],
             d_keys.to(d_keys_ptr.dtype.element_ty), mask=mask_kn)
    d_vals = tl.dot(d_lam_t, sigma.to(d_lam_t.dtype), input_precision=PRECISION)
    tl.store(d_values_ptr + bu.to(tl.int64) * V * N + offs_v[:, None] * N + n[None, :],
             d_vals.to(d_values_ptr.dtype.element_ty), mask=mask_vn)


def _sizes(keys, values):
    b, u, k = keys.shape[:3]
    v = values.shape[2]
    n = keys[0, 0, 0].numel()
    return b, u, k, v, n


def content_launches(keys, values, lam_c, lse):
    """The launch computing λc and the log-sum-exp lse from contiguous keys and values."""
    b, u, k, v, n = _sizes(keys, values)
    block_k = min(channel_block(k), FWD_CHANNEL_CAP)
    block_v = min(channel_block(v), FWD_CHANNEL_CAP)
    return [Launch(content_lambda_fwd_kernel,
                   (b, triton.cdiv(k, block_k), triton.cdiv(v, block_v)),
                   (keys, values, lam_c, lse, u, k, v, n),
                   dict(BLOCK_K=block_k, BLOCK_V=block_v, BLOCK_N=position_block(n),
                        PRECISION=dot_precision(keys.dtype)))]


def content_backward_launches(d_lam_c, keys, values, lse, d_keys, d_values):
    """The launches computing dkeys and dvalues of λc from contiguous inputs: the row dots
    D = Σ_m σ·dσ first (into a (B, u, k) float32 buffer), then both gradients per tile."""
    b, u, k, v, n = _sizes(keys, values)
    rowdot = keys.new_empty((b, u, k), dtype=torch.float32)
    block_k = channel_block(k)
    block_v = channel_block(v)
    block_n = position_block_for(n, max(block_k, block_v), keys.dtype, cap=POSITION_CAP)
    meta = dict(BLOCK_K=block_k, BLOCK_V=block_v, BLOCK_N=block_n,
                PRECISION=dot_precision(keys.dtype))
    return [
        Launch(content_lambda_bwd_rowdot_kernel, (b * u,),
               (d_lam_c, keys, values, lse, rowdot, u, k, v, n), meta),
        Launch(content_lambda_bwd_kernel, (b * u, triton.cdiv(n, block_n)),
               (d_lam_c, keys, values, lse, rowdot, d_keys, d_values, u, k, v, n), meta),
    ]


def content_lambda(keys: torch.Tensor, values: torch.Tensor, launch=lambda kernel: kernel):
    """(λc (B,k,v) in the input dtype, lse (B,u,k) float32 log-sum-exp)."""
    keys = keys.contiguous()
    values = values.contiguous()
    b, u, k, v, _ = _sizes(keys, values)
    lam_c = keys.new_empty((b, k, v))
    lse = keys.new_empty((b, u, k), dtype=torch.float32)
    run_launches(content_launches(keys, values, lam_c, lse), launch)
    return lam_c, lse


def content_lambda_backward(d_lam_c, keys, values, lse, launch=lambda kernel: kernel):
    """(dkeys, dvalues) of λc, given dλc (B,k,v) and the forward's log-sum-exp lse."""
    d_lam_c, keys, values, lse = (t.contiguous() for t in (d_lam_c, keys, values, lse))
    d_keys = torch.empty_like(keys, memory_format=torch.contiguous_format)
    d_values = torch.empty_like(values, memory_format=torch.contiguous_format)
    run_launches(content_backward_launches(d_lam_c, keys, values, lse, d_keys, d_values),
                 launch)
    return d_keys, d_values
