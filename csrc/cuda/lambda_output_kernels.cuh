// Device kernels of the lambda output op and its backward (math and kernel shapes: see
// lambda_output.cu, which launches them). They always take the logit association (coefficients
// s and g per offset), never λp, while the CPU picks the one with fewer FLOPs per call: a
// per-position k×v λp accumulator does not fit a block's registers, and these loops are bound by
// gathers and instruction issue, not FLOPs (docs/design.md, "GPU formulation").
#pragma once

#include "block_reductions.cuh"

namespace lambda_kernels {
namespace cuda {

// Tiles of query_tile_kernel and d_values_pos_kernel (a block = kTQ lanes × kOC slots = kThreads).
// kTQ: positions per tile = the warp size, so a warp is the kTQ consecutive positions of one slot:
// q/dy/values loads along positions coalesce and the E and Λ loads are warp-uniform broadcasts.
constexpr int kTQ = 32;
// kOC: offsets per step = the warps of a block, one coefficient per thread per step, so the
// shared coefficient array is kOC × kTQ = one value per thread (1 KiB fp32, 2 KiB fp64).
constexpr int kOC = kThreads / kTQ;
// kDR: output channels per thread. Phase 2 reuses each coefficient read from shared memory for
// kDR channels while the kDR accumulators stay in registers (≤ 80 per thread for fp32 and 16-bit
// inputs by ptxas for sm_80 and sm_90, no spills: 3 resident blocks of kThreads in an SM's 64 K
// registers); phase 1 is recomputed per channel tile, so kTD = kOC·kDR = 32 channels per block
// covers v = 32 in one tile.
constexpr int kDR = 4;
constexpr int kTD = kOC * kDR;
// kEK: k channels per d_pos_table block. Each thread keeps kEK accumulators in registers, and the
// block's fixed-order tree needs kEK × kThreads partials in shared memory (16 KiB fp32, 32 KiB
// fp64, inside the 48 KiB a block gets without opting in); g = Σ_v dy·values is recomputed per
// k tile, so kEK = 16 covers the usual dim_k = 16 in one tile.
constexpr int kEK = 16;

// Slices of the d_pos_table reduction, fixed by the shapes (never the device, so results repeat
// bit for bit on any GPU): blocks = Rh·Rw·U·k_tiles·slices. Slices are added until the grid has
// ~2048 blocks (~15 per SM on a 132-SM H100, 19 on a 108-SM A100: several waves of resident
// blocks), at most 32 (the partial buffer is slices × the table, and partial_sum_kernel
// adds `slices` terms per output).
struct DPosTablePlan {
  int64_t k_tiles, slices, blocks;
};
inline DPosTablePlan d_pos_table_plan(int64_t B, int64_t Hh, int64_t N, int64_t Rh, int64_t Rw,
                                      int64_t U, int64_t K) {
  DPosTablePlan p;
  p.k_tiles = ceil_div(K, kEK);
  const int64_t base = Rh * Rw * U * p.k_tiles;
  const int64_t want = std::max<int64_t>(1, ceil_div(2048, std::max<int64_t>(1, base)));
  p.slices = std::min<int64_t>(want, 32);
  // at least ~kThreads items per slice for the busiest offset (the centre one)
  p.slices = std::max<int64_t>(1, std::min(p.slices, ceil_div(B * Hh * N, kThreads)));
  p.blocks = base * p.slices;
  return p;
}

// Geometry of one launch.
struct Geometry {
  int64_t H, W, N, Rh, Rw;
};

// Rows/columns spanned by the positions [p0, p_last] of a tile.
struct TileSpan {
  int64_t y0, y1, x0, x1;
};
__device__ __forceinline__ TileSpan tile_span(int64_t p0, int64_t p_last, int64_t W) {
  TileSpan t;
  t.y0 = p0 / W;
  t.y1 = p_last / W;
  if (t.y0 == t.y1) {
    t.x0 = p0 % W;
    t.x1 = p_last % W;
  } else {
    t.x0 = 0;
    t.x1 = W - 1;
  }
  return t;
}

// ---------------------------------------------------------------------------------------------
// The skeleton of query_tile_kernel and d_values_pos_kernel. A block owns a tile of kTQ
// consecutive positions and a tile of kTD output channels; thread (lane, slot) = (threadIdx.x %
// kTQ, threadIdx.x / kTQ) owns position p0 + lane and channels o0 + slot + j·kOC, j < kDR. The
// block walks the table offsets that pair some position of the tile with a position inside the
// image, kOC offsets per step (offset_step):
//   phase 1: thread (lane, slot) computes the coefficient of its position and offset t0 + slot
//            into shared memory (0 where the paired position is outside the image);
//   phase 2: every thread adds coefficient · column to its kDR channels for each offset of the
//            step whose paired position is inside the image.
// With kQueryTile the tile holds query positions n, paired with context positions n + o (y, dq);
// otherwise it holds context positions m, paired with queries m − o (dvalues).

// Block index → (outer index, position tile, channel tile), channel tile fastest.
struct TileBlock {
  int64_t outer, tile, channel_tile;
};
__device__ __forceinline__ TileBlock tile_block(int64_t tiles, int64_t channel_tiles) {
  int64_t blk = blockIdx.x;
  TileBlock t;
  t.channel_tile = blk % channel_tiles;
  blk /= channel_tiles;
  t.tile = blk % tiles;
  t.outer = blk / tiles;
  return t;
}

// One walked offset: table entry (a, c) and the position it pairs with this thread's position
// (−1 when that lies outside the image).
struct TileOffset {
  int64_t a, c, partner;
};

template <bool kQueryTile>
struct PositionTile {
  int lane, slot;
  int64_t p;          // this thread's position
  bool p_ok;          // p < N (the last tile may be partial)
  int64_t py, px;     // its image coordinates (0 when !p_ok)
  IndexRange ar, cr;  // table rows / columns reaching inside the image from some position
  int64_t nc, n_off;  // |cr| and the offsets walked (uniform over the block: no divergent loop)

  __device__ __forceinline__ PositionTile(int64_t tile, const Geometry& geo) {
    lane = threadIdx.x % kTQ;
    slot = threadIdx.x / kTQ;
    const int64_t p0 = tile * kTQ;
    p = p0 + lane;
    p_ok = p < geo.N;
    py = p_ok ? p / geo.W : 0;
    px = p_ok ? p % geo.W : 0;
    const TileSpan span = tile_span(p0, std::min<int64_t>(geo.N, p0 + kTQ) - 1, geo.W);
    if constexpr (kQueryTile) {
      ar = query_union(span.y0, span.y1, geo.H, geo.Rh);
      cr = query_union(span.x0, span.x1, geo.W, geo.Rw);
    } else {
      ar = context_union(span.y0, span.y1, geo.H, geo.Rh);
      cr = context_union(span.x0, span.x1, geo.W, geo.Rw);
    }
    nc = cr.size();
    n_off = ar.size() * nc;
  }

  __device__ __forceinline__ TileOffset offset(int64_t t, const Geometry& geo) const {
    TileOffset o;
    o.a = ar.begin + t / nc;
    o.c = cr.begin + t % nc;
    int64_t y, x;
    if constexpr (kQueryTile) {
      y = context_coord(py, o.a, geo.Rh);
      x = context_coord(px, o.c, geo.Rw);
    } else {
      y = query_coord(py, o.a, geo.Rh);
      x = query_coord(px, o.c, geo.Rw);
    }
    o.partner = (y >= 0 && y < geo.H && x >= 0 && x < geo.W) ? y * geo.W + x : -1;
    return o;
  }
};

// The kDR output channels o0 + j·kOC (j < kDR, o < C) of a thread; o0 = channel_tile·kTD + slot.
template <typename acc_t>
struct ChannelAcc {
  acc_t acc[kDR];
  int64_t o0, C;

  __device__ __forceinline__ ChannelAcc(int64_t channel_tile, int slot, int64_t channels)
      : o0(channel_tile * kTD + slot), C(channels) {
#pragma unroll
    for (int j = 0; j < kDR; ++j) acc[j] = acc_t(0);
  }
  // acc[o] += s · column[o · stride]
  template <typename T>
  __device__ __forceinline__ void add(acc_t s, const T* column, int64_t stride) {
#pragma unroll
    for (int j = 0; j < kDR; ++j) {
      const int64_t o = o0 + j * kOC;
      if (o < C) acc[j] += s * load(column, o * stride);
    }
  }
  // out[o · N + p] = acc[o]
  template <typename scalar_t>
  __device__ __forceinline__ void store(scalar_t* out, int64_t N, int64_t p) const {
#pragma unroll
    for (int j = 0; j < kDR; ++j) {
      const int64_t o = o0 + j * kOC;
      if (o < C) out[o * N + p] = static_cast<scalar_t>(acc[j]);
    }
  }
};

// One step of the walk: offsets t0 .. t0 + kOC − 1 (see above). Must be reached by all threads
// of the block (two __syncthreads).
//   coefficient(o) -> acc_t: phase 1 for this thread's position and offset o (partner inside);
//   accumulate(o, s):        phase 2, adds s · (the column of offset o) to this thread's channels.
template <bool kQueryTile, typename acc_t, typename Coefficient, typename Accumulate>
__device__ __forceinline__ void offset_step(const PositionTile<kQueryTile>& tile,
                                            const Geometry& geo, int64_t t0,
                                            acc_t (&coef)[kOC][kTQ], Coefficient coefficient,
                                            Accumulate accumulate) {
  {
    acc_t s = acc_t(0);
    const int64_t t = t0 + tile.slot;
    if (tile.p_ok && t < tile.n_off) {
      const TileOffset o = tile.offset(t, geo);
      if (o.partner >= 0) s = coefficient(o);
    }
    coef[tile.slot][tile.lane] = s;
  }
  __syncthreads();
  if (tile.p_ok) {
    for (int oi = 0; oi < kOC; ++oi) {
      const int64_t t = t0 + oi;
      if (t >= tile.n_off) break;
      const TileOffset o = tile.offset(t, geo);
      if (o.partner < 0) continue;
      accumulate(o, coef[oi][tile.lane]);
    }
  }
  __syncthreads();
}

// A channel column of one operand at offset o, slot u, context position o.partner: element i is
// p[i · stride]: values[b,u,·,m] (stride N) or E[a,c,·,u] (stride U).
template <typename scalar_t>
struct Column {
  const scalar_t* p;
  int64_t stride;
};
template <bool kValues, typename scalar_t>
__device__ __forceinline__ Column<scalar_t> operand_column(const scalar_t* E,
                                                           const scalar_t* val_b,
                                                           const TileOffset& o, int64_t u,
                                                           int64_t K, int64_t U, int64_t V,
                                                           int64_t N, int64_t Rw) {
  if constexpr (kValues) return {val_b + u * V * N + o.partner, N};
  else return {E + (o.a * Rw + o.c) * K * U + u, U};
}

// ---------------------------------------------------------------------------------------------
// y and dq: one kernel, kGradQ picks which. Block = (b,h) × query tile × tile of kTD output
// channels. The two are the same computation with the roles of (E, k) and (values, v) exchanged:
//   y  (kGradQ = false): input q,  reduce k, out v; phase 1 s = Σ_k q·E,      phase 2 y += s·values
//   dq (kGradQ = true):  input dy, reduce v, out k; phase 1 g = Σ_v dy·values, phase 2 dq += g·E
// plus the content part Σ_r input[r]·Λ (Λ indexed [k, v] either way).
template <typename scalar_t, bool kGradQ>
__global__ void __launch_bounds__(kThreads)
    query_tile_kernel(const scalar_t* __restrict__ in, const scalar_t* __restrict__ values,
                      const scalar_t* __restrict__ E,
                      const at::opmath_type<scalar_t>* __restrict__ lam,
                      scalar_t* __restrict__ out, int64_t Hh, int64_t K, int64_t U, int64_t V,
                      Geometry geo, int64_t q_tiles, int64_t o_tiles) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t coef[kOC][kTQ];
  const int64_t N = geo.N;
  const int64_t C_in = kGradQ ? V : K;   // channels of the input, reduced
  const int64_t C_out = kGradQ ? K : V;  // channels of the output
  const int64_t lam_in = kGradQ ? 1 : V, lam_out = kGradQ ? V : 1;  // Λ[k, v] strides

  const TileBlock blk = tile_block(q_tiles, o_tiles);
  const int64_t bh = blk.outer, b = bh / Hh;
  const PositionTile</*kQueryTile=*/true> tile(blk.tile, geo);
  const int64_t n = tile.p;
  const scalar_t* in_bh = in + bh * C_in * N;
  const scalar_t* val_b = values + b * U * V * N;
  const acc_t* lam_b = lam + b * K * V;

  ChannelAcc<acc_t> acc(blk.channel_tile, tile.slot, C_out);
  if (tile.p_ok) {  // content part: Σ_r input[r]·Λ
    for (int64_t r = 0; r < C_in; ++r)
      acc.add(load(in_bh, r * N + n), lam_b + r * lam_in, lam_out);
  }
  for (int64_t t0 = 0; t0 < tile.n_off; t0 += kOC) {
    for (int64_t u = 0; u < U; ++u) {
      offset_step(
          tile, geo, t0, coef,
          [&](const TileOffset& o) {  // s = Σ_k q·E[o,·,u]  or  g = Σ_v dy·values[u,·,n+o]
            const Column<scalar_t> col =
                operand_column<kGradQ>(E, val_b, o, u, K, U, V, N, geo.Rw);
            acc_t s = acc_t(0);
            for (int64_t r = 0; r < C_in; ++r)
              s += load(in_bh, r * N + n) * load(col.p, r * col.stride);
            return s;
          },
          [&](const TileOffset& o, acc_t s) {  // y += s·values[u,·,n+o]  or  dq += g·E[o,·,u]
            const Column<scalar_t> col =
                operand_column<!kGradQ>(E, val_b, o, u, K, U, V, N, geo.Rw);
            acc.add(s, col.p, col.stride);
          });
    }
  }
  if (tile.p_ok) acc.store(out + bh * C_out * N, N, n);
}

// ---------------------------------------------------------------------------------------------
// dvalues (positional part): block = (b,u) × context-position tile × v tile. Walks heads and the
// offsets whose query m − o lies in the image for some position of the tile. Phase 1:
// s[b,h,m−o,o,u]; phase 2: dvalues[v] += s · dy[b,h,v,m−o].
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    d_values_pos_kernel(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ q,
                        const scalar_t* __restrict__ E, scalar_t* __restrict__ d_values,
                        int64_t Hh, int64_t K, int64_t U, int64_t V, Geometry geo,
                        int64_t m_tiles, int64_t v_tiles) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t coef[kOC][kTQ];
  const int64_t N = geo.N;

  const TileBlock blk = tile_block(m_tiles, v_tiles);
  const int64_t bu = blk.outer, b = bu / U, u = bu % U;
  const PositionTile</*kQueryTile=*/false> tile(blk.tile, geo);

  ChannelAcc<acc_t> acc(blk.channel_tile, tile.slot, V);
  for (int64_t h = 0; h < Hh; ++h) {
    const int64_t bh = b * Hh + h;
    const scalar_t* q_bh = q + bh * K * N;
    const scalar_t* dy_bh = dy + bh * V * N;
    for (int64_t t0 = 0; t0 < tile.n_off; t0 += kOC) {
      offset_step(
          tile, geo, t0, coef,
          [&](const TileOffset& o) {  // s = Σ_k q[k, m−o]·E[o,k,u]
            const Column<scalar_t> e =
                operand_column</*kValues=*/false>(E, q_bh, o, u, K, U, V, N, geo.Rw);
            acc_t s = acc_t(0);
            for (int64_t k = 0; k < K; ++k)
              s += load(q_bh, k * N + o.partner) * load(e.p, k * e.stride);
            return s;
          },
          [&](const TileOffset& o, acc_t s) { acc.add(s, dy_bh + o.partner, N); });
    }
  }
  if (tile.p_ok) acc.store(d_values + bu * V * N, N, tile.p);
}

// ---------------------------------------------------------------------------------------------
// d_pos_table partials: block = (offset (a,c), u, k tile of kEK, slice s of S). The queries for
// which the offset stays inside the image form a rectangle; its B·h·ny·nx items are split into S
// fixed slices. Each thread walks its items (stride kThreads) computing g = Σ_v dy·values and
// accumulating q[k]·g for kEK channels; a fixed-order tree over the block (block_sum_each) gives
// partial[s, a, c, k, u].
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    d_pos_table_partial_kernel(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ q,
                         const scalar_t* __restrict__ values,
                         at::opmath_type<scalar_t>* __restrict__ partial, int64_t B, int64_t Hh,
                         int64_t K, int64_t U, int64_t V, Geometry geo, int64_t k_tiles,
                         int64_t slices) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t red[kEK][kThreads];
  const int64_t N = geo.N, W = geo.W, H = geo.H, Rh = geo.Rh, Rw = geo.Rw;
  const int tid = threadIdx.x;

  int64_t blk = blockIdx.x;
  const int64_t sl = blk % slices;
  blk /= slices;
  const int64_t kt = blk % k_tiles;
  blk /= k_tiles;
  const int64_t u = blk % U;
  const int64_t ac = blk / U;  // a * Rw + c
  const int64_t a = ac / Rw, c = ac % Rw;
  const int64_t k0 = kt * kEK;

  // Queries (y, x) whose context (y + a − Rh/2, x + c − Rw/2) is inside the image.
  const IndexRange ys = queries_reaching_inside(a, H, Rh);
  const IndexRange xs = queries_reaching_inside(c, W, Rw);
  const int64_t y_lo = ys.begin, x_lo = xs.begin;
  const int64_t ny = ys.size(), nx = xs.size();
  const int64_t items = B * Hh * ny * nx;
  const int64_t per = (items + slices - 1) / slices;
  const int64_t it_begin = sl * per;
  const int64_t it_end = std::min<int64_t>(items, it_begin + per);

  acc_t acc[kEK];
#pragma unroll
  for (int j = 0; j < kEK; ++j) acc[j] = acc_t(0);

  for (int64_t it = it_begin + tid; it < it_end; it += kThreads) {
    const int64_t xx = it % nx;
    const int64_t rest = it / nx;
    const int64_t yy = rest % ny;
    const int64_t bh = rest / ny;
    const int64_t b = bh / Hh;
    const int64_t py = y_lo + yy, px = x_lo + xx;
    const int64_t n = py * W + px;
    const int64_t m = context_coord(py, a, Rh) * W + context_coord(px, c, Rw);
    const scalar_t* dy_bh = dy + bh * V * N;
    const scalar_t* val_bu = values + (b * U + u) * V * N;
    acc_t g = acc_t(0);
    for (int64_t v = 0; v < V; ++v) g += load(dy_bh, v * N + n) * load(val_bu, v * N + m);
    const scalar_t* q_bh = q + bh * K * N;
#pragma unroll
    for (int j = 0; j < kEK; ++j) {
      const int64_t k = k0 + j;
      if (k < K) acc[j] += load(q_bh, k * N + n) * g;
    }
  }

  block_sum_each(acc, red);
  if (tid < kEK) {
    const int64_t k = k0 + tid;
    if (k < K) partial[sl * (Rh * Rw * K * U) + (ac * K + k) * U + u] = red[tid][0];
  }
}

}  // namespace cuda
}  // namespace lambda_kernels
