// Device kernels of the lambda output op and its backward (math and kernel shapes: see
// lambda_output.cu, which launches them).
#pragma once

#include "block_reductions.cuh"

namespace lambda_kernels {
namespace cuda {


constexpr int kTQ = 32;                // positions per tile (one warp-width of lanes)
constexpr int kOC = kThreads / kTQ;    // offsets per chunk == thread rows (8)
constexpr int kDR = 4;                 // output channels per thread
constexpr int kTD = kOC * kDR;         // output channels per block (32)
constexpr int kEK = 16;                // dE: k channels per block (registers per thread)

// Slices of the dE reduction, fixed by the shapes: blocks = Rh·Rw·U·k_tiles·slices.
struct DPosPlan {
  int64_t k_tiles, slices, blocks;
};
inline DPosPlan d_pos_plan(int64_t B, int64_t Hh, int64_t N, int64_t Rh, int64_t Rw, int64_t U,
                           int64_t K) {
  DPosPlan p;
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

// Rows/columns spanned by the positions [n0, n_last] of a tile.
struct TileSpan {
  int64_t y0, y1, x0, x1;
};
__device__ __forceinline__ TileSpan tile_span(int64_t n0, int64_t n_last, int64_t W) {
  TileSpan t;
  t.y0 = n0 / W;
  t.y1 = n_last / W;
  if (t.y0 == t.y1) {
    t.x0 = n0 % W;
    t.x1 = n_last % W;
  } else {
    t.x0 = 0;
    t.x1 = W - 1;
  }
  return t;
}

// ---------------------------------------------------------------------------------------------
// y and dq: one kernel, kGradQ picks which. Block = (b,h) × position tile × tile of kTD output
// channels. Thread (lane, row): position n0 + lane; in phase 1 offset t0 + row; in phase 2
// channels o0 + row + j·kOC, j < kDR. The two are the same computation with the roles of
// (E, k) and (values, v) exchanged:
//   y  (kGradQ = false): input q,  reduce k, out v; phase 1 s = Σ_k q·E,      phase 2 y  += s·values
//   dq (kGradQ = true):  input dy, reduce v, out k; phase 1 g = Σ_v dy·values, phase 2 dq += g·E
// plus the content part Σ_r input[r]·Λ (Λ indexed [k, v] either way).

// A channel column of one operand at offset (a, c), slot u, context position m: element i is
// p[i · stride]. Phase 1 contracts the input with one operand, phase 2 the coefficient with the
// other: values[b,u,·,m] (stride N) or E[a,c,·,u] (stride U).
template <typename scalar_t>
struct Column {
  const scalar_t* p;
  int64_t stride;
};
template <bool kValues, typename scalar_t>
__device__ __forceinline__ Column<scalar_t> operand_column(const scalar_t* E,
                                                           const scalar_t* val_b, int64_t a,
                                                           int64_t c, int64_t u, int64_t m,
                                                           int64_t K, int64_t U, int64_t V,
                                                           int64_t N, int64_t Rw) {
  if constexpr (kValues) return {val_b + u * V * N + m, N};
  else return {E + (a * Rw + c) * K * U + u, U};
}

template <typename scalar_t, bool kGradQ>
__global__ void __launch_bounds__(kThreads)
    query_tile_kernel(const scalar_t* __restrict__ in, const scalar_t* __restrict__ values,
                      const scalar_t* __restrict__ E,
                      const at::opmath_type<scalar_t>* __restrict__ lam,
                      scalar_t* __restrict__ out, int64_t Hh, int64_t K, int64_t U, int64_t V,
                      Geometry geo, int64_t q_tiles, int64_t o_tiles) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t coef[kOC][kTQ];
  const int64_t N = geo.N, W = geo.W, H = geo.H, Rh = geo.Rh, Rw = geo.Rw;
  const int64_t C_in = kGradQ ? V : K;   // channels of the input, reduced
  const int64_t C_out = kGradQ ? K : V;  // channels of the output
  const int64_t lam_in = kGradQ ? 1 : V, lam_out = kGradQ ? V : 1;  // Λ[k, v] strides

  int64_t blk = blockIdx.x;
  const int64_t ot = blk % o_tiles;
  blk /= o_tiles;
  const int64_t qt = blk % q_tiles;
  const int64_t bh = blk / q_tiles;
  const int64_t b = bh / Hh;

  const int lane = threadIdx.x % kTQ;
  const int row = threadIdx.x / kTQ;
  const int64_t n0 = qt * kTQ;
  const int64_t n = n0 + lane;
  const bool q_ok = n < N;
  const int64_t py = q_ok ? n / W : 0, px = q_ok ? n % W : 0;
  const scalar_t* in_bh = in + bh * C_in * N;
  const scalar_t* val_b = values + b * U * V * N;
  const acc_t* lam_b = lam + b * K * V;
  const int64_t o0 = ot * kTD + row;

  acc_t acc[kDR];
#pragma unroll
  for (int j = 0; j < kDR; ++j) acc[j] = acc_t(0);
  if (q_ok) {  // content part: Σ_r input[r]·Λ
    for (int64_t r = 0; r < C_in; ++r) {
      const acc_t x = load(in_bh, r * N + n);
#pragma unroll
      for (int j = 0; j < kDR; ++j) {
        const int64_t o = o0 + j * kOC;
        if (o < C_out) acc[j] += x * lam_b[r * lam_in + o * lam_out];
      }
    }
  }

  const TileSpan span = tile_span(n0, std::min<int64_t>(N, n0 + kTQ) - 1, W);
  const IndexRange ar = query_union(span.y0, span.y1, H, Rh);
  const IndexRange cr = query_union(span.x0, span.x1, W, Rw);
  const int64_t na = ar.end > ar.begin ? ar.end - ar.begin : 0;
  const int64_t nc = cr.end > cr.begin ? cr.end - cr.begin : 0;
  const int64_t n_off = na * nc;  // uniform over the block: the loops below never diverge

  for (int64_t t0 = 0; t0 < n_off; t0 += kOC) {
    for (int64_t u = 0; u < U; ++u) {
      {  // phase 1: s (or g) for (position lane, offset t0 + row)
        acc_t s = acc_t(0);
        const int64_t t = t0 + row;
        if (q_ok && t < n_off) {
          const int64_t a = ar.begin + t / nc, c = cr.begin + t % nc;
          const int64_t cy = context_coord(py, a, Rh), cx = context_coord(px, c, Rw);
          if (cy >= 0 && cy < H && cx >= 0 && cx < W) {
            const Column<scalar_t> col =
                operand_column<kGradQ>(E, val_b, a, c, u, cy * W + cx, K, U, V, N, Rw);
            for (int64_t r = 0; r < C_in; ++r)
              s += load(in_bh, r * N + n) * load(col.p, r * col.stride);
          }
        }
        coef[row][lane] = s;
      }
      __syncthreads();
      if (q_ok) {  // phase 2: y[v] += s · values[u, v, n + o]  or  dq[k] += g · E[o, k, u]
        for (int oi = 0; oi < kOC; ++oi) {
          const int64_t t = t0 + oi;
          if (t >= n_off) break;
          const int64_t a = ar.begin + t / nc, c = cr.begin + t % nc;
          const int64_t cy = context_coord(py, a, Rh), cx = context_coord(px, c, Rw);
          if (cy < 0 || cy >= H || cx < 0 || cx >= W) continue;
          const acc_t s = coef[oi][lane];
          const Column<scalar_t> col =
              operand_column<!kGradQ>(E, val_b, a, c, u, cy * W + cx, K, U, V, N, Rw);
#pragma unroll
          for (int j = 0; j < kDR; ++j) {
            const int64_t o = o0 + j * kOC;
            if (o < C_out) acc[j] += s * load(col.p, o * col.stride);
          }
        }
      }
      __syncthreads();
    }
  }

  if (q_ok) {
#pragma unroll
    for (int j = 0; j < kDR; ++j) {
      const int64_t o = o0 + j * kOC;
      if (o < C_out) out[(bh * C_out + o) * N + n] = static_cast<scalar_t>(acc[j]);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// dvalues (positional part): block = (b,u) × context-position tile × v tile. Walks heads and the
// offsets whose query m − o lies in the image for some position of the tile. Phase 1:
// s[b,h,m−o,o,u] per (position lane, offset t0 + row); phase 2: dvalues[v] += s · dy[b,h,v,m−o].
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    d_values_pos_kernel(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ q,
                        const scalar_t* __restrict__ E, scalar_t* __restrict__ d_values,
                        int64_t Hh, int64_t K, int64_t U, int64_t V, Geometry geo,
                        int64_t m_tiles, int64_t v_tiles) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t coef[kOC][kTQ];
  const int64_t N = geo.N, W = geo.W, H = geo.H, Rh = geo.Rh, Rw = geo.Rw;

  int64_t blk = blockIdx.x;
  const int64_t vt = blk % v_tiles;
  blk /= v_tiles;
  const int64_t mt = blk % m_tiles;
  const int64_t bu = blk / m_tiles;
  const int64_t b = bu / U, u = bu % U;

  const int lane = threadIdx.x % kTQ;
  const int row = threadIdx.x / kTQ;
  const int64_t m0 = mt * kTQ;
  const int64_t m = m0 + lane;
  const bool m_ok = m < N;
  const int64_t my = m_ok ? m / W : 0, mx = m_ok ? m % W : 0;
  const int64_t v0 = vt * kTD + row;

  const TileSpan span = tile_span(m0, std::min<int64_t>(N, m0 + kTQ) - 1, W);
  const IndexRange ar = context_union(span.y0, span.y1, H, Rh);
  const IndexRange cr = context_union(span.x0, span.x1, W, Rw);
  const int64_t na = ar.end > ar.begin ? ar.end - ar.begin : 0;
  const int64_t nc = cr.end > cr.begin ? cr.end - cr.begin : 0;
  const int64_t n_off = na * nc;

  acc_t acc[kDR];
#pragma unroll
  for (int j = 0; j < kDR; ++j) acc[j] = acc_t(0);

  for (int64_t h = 0; h < Hh; ++h) {
    const int64_t bh = b * Hh + h;
    const scalar_t* q_bh = q + bh * K * N;
    const scalar_t* dy_bh = dy + bh * V * N;
    for (int64_t t0 = 0; t0 < n_off; t0 += kOC) {
      {  // phase 1
        acc_t s = acc_t(0);
        const int64_t t = t0 + row;
        if (m_ok && t < n_off) {
          const int64_t a = ar.begin + t / nc, c = cr.begin + t % nc;
          const int64_t qy = query_coord(my, a, Rh), qx = query_coord(mx, c, Rw);
          if (qy >= 0 && qy < H && qx >= 0 && qx < W) {
            const int64_t nq = qy * W + qx;
            const scalar_t* e = E + (a * Rw + c) * K * U + u;
            for (int64_t k = 0; k < K; ++k) s += load(q_bh, k * N + nq) * load(e, k * U);
          }
        }
        coef[row][lane] = s;
      }
      __syncthreads();
      if (m_ok) {  // phase 2
        for (int oi = 0; oi < kOC; ++oi) {
          const int64_t t = t0 + oi;
          if (t >= n_off) break;
          const int64_t a = ar.begin + t / nc, c = cr.begin + t % nc;
          const int64_t qy = query_coord(my, a, Rh), qx = query_coord(mx, c, Rw);
          if (qy < 0 || qy >= H || qx < 0 || qx >= W) continue;
          const int64_t nq = qy * W + qx;
          const acc_t s = coef[oi][lane];
#pragma unroll
          for (int j = 0; j < kDR; ++j) {
            const int64_t v = v0 + j * kOC;
            if (v < V) acc[j] += s * load(dy_bh, v * N + nq);
          }
        }
      }
      __syncthreads();
    }
  }

  if (m_ok) {
#pragma unroll
    for (int j = 0; j < kDR; ++j) {
      const int64_t v = v0 + j * kOC;
      if (v < V) d_values[(bu * V + v) * N + m] = static_cast<scalar_t>(acc[j]);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// dE partials: block = (offset (a,c), u, k tile of kEK, slice s of S). The queries for which the
// offset stays inside the image form a rectangle; its B·h·ny·nx items are split into S fixed
// slices. Each thread walks its items (stride kThreads) computing g = Σ_v dy·values and
// accumulating q[k]·g for kEK channels; a fixed-order tree over the block gives
// partial[s, a, c, k, u].
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    d_pos_partial_kernel(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ q,
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

#pragma unroll
  for (int j = 0; j < kEK; ++j) red[j][tid] = acc[j];
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (tid < s) {
#pragma unroll
      for (int j = 0; j < kEK; ++j) red[j][tid] += red[j][tid + s];
    }
    __syncthreads();
  }
  if (tid < kEK) {
    const int64_t k = k0 + tid;
    if (k < K) partial[sl * (Rh * Rw * K * U) + (ac * K + k) * U + u] = red[tid][0];
  }
}

}  // namespace cuda
}  // namespace lambda_kernels
