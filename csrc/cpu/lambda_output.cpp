// Positional part of the lambda op on the CPU, fused: λp is never stored beyond one register /
// stack tile, logits are never stored at all.
//
// Inputs: q (B,h,k,H,W), values (B,u,v,H,W), E = pos_table (Rh,Rw,k,u), Λ = lam (B,k,v)
// (λc + bias). Offsets o = (a − Rh/2, c − Rw/2); values outside the image are zero.
//
// Forward (lambda_output):
//   λp[b,n,k,v] = Σ_{o,u} E[o,k,u] · values[b,u,v,n+o]          (one tile at a time)
//   y[b,h,v,n]  = Σ_k q[b,h,k,n] · (Λ[b,k,v] + λp[b,n,k,v])
// Backward (lambda_output_backward), given dy (B,h,v,H,W):
//   dλp[b,n,k,v]    = Σ_h q[b,h,k,n] · dy[b,h,v,n]                (one row at a time)
//   dq[b,h,k,n]     = Σ_v dy[b,h,v,n] · (Λ[b,k,v] + λp[b,n,k,v])
//   dΛ[b,k,v]       = Σ_n dλp[b,n,k,v]
//   dE[o,k,u]       = Σ_{b,n,v} dλp[b,n,k,v] · values[b,u,v,n+o]
//   dvalues[b,u,v,m]= Σ_{o,k} E[o,k,u] · dλp[b,m−o,k,v]
// (the same sums as the logit form s = q·E, g = dy·values of ARCHITECTURE.md, associated so
// that every inner loop is a register-blocked FMA stream over a contiguous (x, v) row).
//
// Layout. values are packed once to a zero-padded channels-last row layout
//   Vp[b][y][u][(P + x)·v + v']      (input size, plus P zero positions left and right)
// so that a window offset along x is a plain pointer shift of o_x·v and out-of-image reads hit
// zeros. Work on one image row is split in chunks of the flattened (x, v) row: a chunk of
// kXB SIMD vectors is the register tile. Windows are clipped per row (y) and per chunk (x), so
// tables larger than the image (global context) cost only their in-image part.
//
// Parallelism and determinism. Forward: at::parallel_for over (b, row). Backward pass 1 (dq,
// dE, dΛ): tasks are (b, band of kBandRows rows), grouped into a FIXED number of chunks that
// depends only on the shape; each chunk owns one dE partial buffer (Rh·Rw·k·u) and one dΛ
// partial per task; partials are summed in a fixed order afterwards. Pass 2 (dvalues): tasks
// are (b, band of kOutBandRows output rows); each output element is written by one task.
// No atomics; results do not depend on the thread count and repeat bit-for-bit.
//
// Memory: per thread one band of dλp rows (at most kBandRows rows and ~kBandBytes unless a
// single row is larger: k·(W + 2P)·v), per chunk one Rh·Rw·k·u partial.
// Nothing of size B·N·k·v, N·N or B·h·N·r².
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "../checks.h"
#include "../lambda_math.h"

namespace lambda_kernels {
namespace {

// 64-byte SIMD vectors through GCC/Clang vector extensions (AVX-512 with -march=native on a
// capable machine, split into narrower registers by the compiler otherwise).
template <typename T>
struct Simd;
template <>
struct Simd<float> {
  typedef float vec __attribute__((vector_size(64)));
  static constexpr int kLanes = 16;
};
template <>
struct Simd<double> {
  typedef double vec __attribute__((vector_size(64)));
  static constexpr int kLanes = 8;
};

template <typename T>
inline typename Simd<T>::vec vload(const T* p) {
  typename Simd<T>::vec r;
  std::memcpy(&r, p, sizeof(r));
  return r;
}
template <typename T>
inline void vstore(T* p, const typename Simd<T>::vec& r) {
  std::memcpy(p, &r, sizeof(r));
}
template <typename T>
inline typename Simd<T>::vec vzero() {
  return typename Simd<T>::vec{};
}
// Keeps a loaded vector in a register (stops the compiler from re-reading it from memory as
// an FMA operand once per use, which would make the loops load-bound).
template <typename V>
inline void pin_register(V& v) {
#if defined(__GNUC__) && defined(__AVX512F__)
  asm("" : "+v"(v));
#endif
}

template <typename T>
inline T vsum(const typename Simd<T>::vec& r) {
  T s = 0;
#pragma GCC unroll 16
  for (int i = 0; i < Simd<T>::kLanes; ++i) s += r[i];
  return s;
}

template <typename T>
inline T* tensor_ptr(const at::Tensor& t) {
  return static_cast<T*>(t.data_ptr());
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Register tiles.
constexpr int kFwdK = 8;      // λp tile: k rows ...
constexpr int kFwdX = 3;      // ... × vectors of the (x, v) row
constexpr int kGradEK = 4;    // dE tile: k rows ...
constexpr int kGradEX = 6;    // ... × x offsets
constexpr int kGradVRows = 4; // dvalues tile: output rows ...
constexpr int kGradVX = 4;    // ... × vectors of the (x, v) row
constexpr int kBandRows = 8;  // rows per pass-1 backward task (at most; dE / dΛ partials)
constexpr int kOutBandRows = 8;  // output rows per pass-2 task (dvalues); each recomputes the
                                 // dλp rows of its window, so taller bands recompute less
constexpr int64_t kBandBytes = 1 << 20;  // budget of one pass-1 band of dλp rows
constexpr int64_t kMaxGradEChunks = 16;  // dE partial buffers (fixed: not the thread count) ...
constexpr int64_t kGradEPartialBytes = 4 << 20;  // ... fewer when the table is large

// Sizes of one problem and of its packed layouts.
template <typename acc_t>
struct Geometry {
  static constexpr int64_t kLanes = Simd<acc_t>::kLanes;
  static constexpr int64_t kFwdChunk = kFwdX * kLanes;     // (x, v) elements per λp tile
  static constexpr int64_t kGradVChunk = kGradVX * kLanes;  // (x, v) elements per dvalues tile
  int64_t B, heads, K, Kp, U, V, H, W, N, Rh, Rw;
  int64_t P;    // zero positions left and right of every packed row
  int64_t L;    // W·v, the flattened (x, v) row
  int64_t Lp;   // (W + 2P)·v, the padded row

  Geometry(const at::Tensor& q, const at::Tensor& values, const at::Tensor& pos_table) {
    B = q.size(0);
    heads = q.size(1);
    K = q.size(2);
    Kp = ceil_div(K, kFwdK) * kFwdK;
    U = values.size(1);
    V = values.size(2);
    H = q.size(3);
    W = q.size(4);
    N = H * W;
    Rh = pos_table.size(0);
    Rw = pos_table.size(1);
    P = ceil_div(2 * std::max(kFwdChunk, kGradVChunk), V) + kGradEX + ceil_div(kLanes, V) + 4;
    L = W * V;
    Lp = (W + 2 * P) * V;
  }
};

// values (B,u,v,H,W) -> Vp (B,H,u,Lp), zero padded.
template <typename scalar_t, typename acc_t>
void pack_values(const scalar_t* values, acc_t* vp, const Geometry<acc_t>& g) {
  at::parallel_for(0, g.B * g.H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t by = begin; by < end; ++by) {
      const int64_t b = by / g.H, y = by % g.H;
      for (int64_t u = 0; u < g.U; ++u) {
        acc_t* row = vp + (by * g.U + u) * g.Lp;
        std::fill(row, row + g.Lp, acc_t(0));
        for (int64_t c = 0; c < g.V; ++c) {
          const scalar_t* src = values + (((b * g.U + u) * g.V + c) * g.H + y) * g.W;
          acc_t* dst = row + g.P * g.V + c;
          for (int64_t x = 0; x < g.W; ++x) dst[x * g.V] = static_cast<acc_t>(src[x]);
        }
      }
    }
  });
}

// λp tile of one image row: out[kk][j − j0] = Σ_{a,c,u} E[a,c,k0+kk,u] · Vp[y+a−Rh/2][u][j+o_x·v]
// for the chunk j ∈ [j0, j0 + kFwdChunk) of the flattened (x, v) row; ef is E packed as
// (Kp/kFwdK, Rh, Rw, u, kFwdK) so that one k block streams through contiguous memory;
// (Rh, Rw, u, Kp). out has row stride kFwdChunk.
template <typename acc_t>
void positional_lambda_tile(const acc_t* vp_image, const acc_t* ef, const Geometry<acc_t>& g,
                            int64_t y, int64_t j0, int64_t k0, acc_t* out) {
  using vec = typename Simd<acc_t>::vec;
  constexpr int64_t VL = Simd<acc_t>::kLanes;
  vec acc[kFwdK][kFwdX];
#pragma GCC unroll 8
  for (int kk = 0; kk < kFwdK; ++kk)
#pragma GCC unroll 4
    for (int xb = 0; xb < kFwdX; ++xb) acc[kk][xb] = vzero<acc_t>();

  const int64_t x0 = j0 / g.V;
  const int64_t x1 = std::min(g.W - 1, (j0 + Geometry<acc_t>::kFwdChunk - 1) / g.V);
  const IndexRange rows = window_range(y, g.H, g.Rh);
  const int64_t c_begin = std::max<int64_t>(0, g.Rw / 2 - x1);
  const int64_t c_end = std::min<int64_t>(g.Rw, g.Rw / 2 + g.W - x0);
  const int64_t U = g.U, Kp = g.Kp, Lp = g.Lp, V = g.V;
  for (int64_t a = rows.begin; a < rows.end; ++a) {
    const acc_t* v_row = vp_image + context_coord(y, a, g.Rh) * U * Lp + g.P * V + j0;
    const acc_t* e_row = ef + (k0 / kFwdK * g.Rh + a) * g.Rw * U * kFwdK;
    for (int64_t c = c_begin; c < c_end; ++c) {
      const acc_t* v_ptr = v_row + (c - g.Rw / 2) * V;
      const acc_t* e_ptr = e_row + c * U * kFwdK;
      for (int64_t u = 0; u < U; ++u) {
        vec vals[kFwdX];
#pragma GCC unroll 4
        for (int xb = 0; xb < kFwdX; ++xb) {
          vals[xb] = vload(v_ptr + u * Lp + xb * VL);
          pin_register(vals[xb]);
        }
#pragma GCC unroll 8
        for (int kk = 0; kk < kFwdK; ++kk) {
          const acc_t e = e_ptr[u * kFwdK + kk];  // broadcast by the vector product
#pragma GCC unroll 4
          for (int xb = 0; xb < kFwdX; ++xb) acc[kk][xb] += e * vals[xb];
        }
      }
    }
  }
#pragma GCC unroll 8
  for (int kk = 0; kk < kFwdK; ++kk)
#pragma GCC unroll 4
    for (int xb = 0; xb < kFwdX; ++xb)
      vstore(out + kk * Geometry<acc_t>::kFwdChunk + xb * VL, acc[kk][xb]);
}

// Full lambda Λ + λp of one chunk, all k: tile[k][j − j0], k < Kp.
template <typename acc_t>
void lambda_tile(const acc_t* vp_image, const acc_t* ef, const acc_t* lam_b,
                 const Geometry<acc_t>& g, int64_t y, int64_t j0, acc_t* tile) {
  constexpr int64_t CL = Geometry<acc_t>::kFwdChunk;
  for (int64_t k0 = 0; k0 < g.Kp; k0 += kFwdK)
    positional_lambda_tile(vp_image, ef, g, y, j0, k0, tile + k0 * CL);
  const int64_t j_end = std::min(j0 + CL, g.L);
  for (int64_t k = 0; k < g.K; ++k)
    for (int64_t j = j0; j < j_end; ++j) tile[k * CL + j - j0] += lam_b[k * g.V + j % g.V];
}

// Packed inputs shared by forward and backward.
template <typename acc_t>
struct Packed {
  at::Tensor vp;   // (B, H, u, Lp)
  at::Tensor ef;   // (Kp / kFwdK, Rh, Rw, u, kFwdK)
  at::Tensor lam;  // (B, k, v)
};

template <typename scalar_t, typename acc_t>
Packed<acc_t> pack_inputs(const at::Tensor& values, const at::Tensor& pos_table,
                          const at::Tensor& lam, const Geometry<acc_t>& g) {
  const auto acc_options = values.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
  Packed<acc_t> p;
  p.vp = at::empty({g.B, g.H, g.U, g.Lp}, acc_options);
  pack_values<scalar_t, acc_t>(values.data_ptr<scalar_t>(), tensor_ptr<acc_t>(p.vp), g);
  // Small tables: packed serially (no parallel region to pay for).
  p.ef = at::empty({g.Kp / kFwdK, g.Rh, g.Rw, g.U, kFwdK}, acc_options);
  acc_t* ef = tensor_ptr<acc_t>(p.ef);
  const scalar_t* e = pos_table.data_ptr<scalar_t>();  // (Rh, Rw, k, u), contiguous
  const int64_t cells = g.Rh * g.Rw;
  for (int64_t kb = 0; kb < g.Kp / kFwdK; ++kb)
    for (int64_t cell = 0; cell < cells; ++cell)
      for (int64_t u = 0; u < g.U; ++u)
        for (int64_t kk = 0; kk < kFwdK; ++kk) {
          const int64_t k = kb * kFwdK + kk;
          ef[((kb * cells + cell) * g.U + u) * kFwdK + kk] =
              k < g.K ? static_cast<acc_t>(e[(cell * g.K + k) * g.U + u]) : acc_t(0);
        }
  p.lam = lam.scalar_type() == acc_options.dtype() ? lam : lam.to(acc_options.dtype());
  return p;
}

template <typename scalar_t>
void lambda_output_impl(const at::Tensor& q, const at::Tensor& values,
                        const at::Tensor& pos_table, const at::Tensor& lam, at::Tensor& y_out) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int64_t CL = Geometry<acc_t>::kFwdChunk;
  const Geometry<acc_t> g(q, values, pos_table);
  const Packed<acc_t> packed = pack_inputs<scalar_t, acc_t>(values, pos_table, lam, g);
  const acc_t* vp = tensor_ptr<acc_t>(packed.vp);
  const acc_t* ef = tensor_ptr<acc_t>(packed.ef);
  const acc_t* lam_ptr = tensor_ptr<acc_t>(packed.lam);
  const scalar_t* q_ptr = q.data_ptr<scalar_t>();
  scalar_t* y_ptr = y_out.data_ptr<scalar_t>();

  at::parallel_for(0, g.B * g.H, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> tile(g.Kp * CL);
    std::vector<acc_t> q_row(g.heads * g.K * g.W);  // [h][k][x]
    for (int64_t by = begin; by < end; ++by) {
      const int64_t b = by / g.H, y = by % g.H;
      for (int64_t hk = 0; hk < g.heads * g.K; ++hk) {
        const scalar_t* src = q_ptr + (b * g.heads * g.K + hk) * g.N + y * g.W;
        for (int64_t x = 0; x < g.W; ++x) q_row[hk * g.W + x] = static_cast<acc_t>(src[x]);
      }
      const acc_t* vp_image = vp + b * g.H * g.U * g.Lp;
      for (int64_t j0 = 0; j0 < g.L; j0 += CL) {
        lambda_tile(vp_image, ef, lam_ptr + b * g.K * g.V, g, y, j0, tile.data());
        const int64_t j_end = std::min(j0 + CL, g.L);
        for (int64_t h = 0; h < g.heads; ++h) {
          const acc_t* qh = q_row.data() + h * g.K * g.W;
          for (int64_t j = j0; j < j_end; ++j) {
            const int64_t x = j / g.V, c = j % g.V;
            acc_t sum = 0;
            for (int64_t k = 0; k < g.K; ++k) sum += qh[k * g.W + x] * tile[k * CL + j - j0];
            y_ptr[((b * g.heads + h) * g.V + c) * g.N + y * g.W + x] = static_cast<scalar_t>(sum);
          }
        }
      }
    }
  });
}

// dλp of one image row into a zero-padded row buffer [Kp][Lp] (padding and k >= K stay zero):
// dlp[k][(P + x)·v + c] = Σ_h q[b,h,k,y,x] · dy[b,h,c,y,x]. q_row [h][k][x], dy_row [h][v][x].
template <typename acc_t>
void grad_positional_lambda_row(const acc_t* q_row, const acc_t* dy_row, const Geometry<acc_t>& g,
                                acc_t* dlp) {
  for (int64_t k = 0; k < g.K; ++k) {
    acc_t* out = dlp + k * g.Lp + g.P * g.V;
    std::fill(out, out + g.L, acc_t(0));
    for (int64_t h = 0; h < g.heads; ++h) {
      const acc_t* qk = q_row + (h * g.K + k) * g.W;
      const acc_t* dyh = dy_row + h * g.V * g.W;
      for (int64_t c = 0; c < g.V; ++c)
        for (int64_t x = 0; x < g.W; ++x) out[x * g.V + c] += qk[x] * dyh[c * g.W + x];
    }
  }
}

template <typename scalar_t, typename acc_t>
void load_rows(const scalar_t* q_ptr, const scalar_t* dy_ptr, const Geometry<acc_t>& g, int64_t b,
               int64_t y, acc_t* q_row, acc_t* dy_row) {
  for (int64_t hk = 0; hk < g.heads * g.K; ++hk) {
    const scalar_t* src = q_ptr + (b * g.heads * g.K + hk) * g.N + y * g.W;
    for (int64_t x = 0; x < g.W; ++x) q_row[hk * g.W + x] = static_cast<acc_t>(src[x]);
  }
  for (int64_t hc = 0; hc < g.heads * g.V; ++hc) {
    const scalar_t* src = dy_ptr + (b * g.heads * g.V + hc) * g.N + y * g.W;
    for (int64_t x = 0; x < g.W; ++x) dy_row[hc * g.W + x] = static_cast<acc_t>(src[x]);
  }
}

// dE contribution of one band of rows [r0, r1) of image b (dλp rows in dlp_band [row][Kp][Lp]):
// part[a][c][k][u] += Σ_{n_y ∈ band} Σ_{x,v} dλp[n_y][k][(x,v)] · Vp[n_y + a − Rh/2][u][(x+o_x, v)]
template <typename acc_t>
void grad_pos_table_band(const acc_t* dlp_band, const acc_t* vp_image, const Geometry<acc_t>& g,
                         int64_t r0, int64_t r1, acc_t* part) {
  using vec = typename Simd<acc_t>::vec;
  constexpr int64_t VL = Simd<acc_t>::kLanes;
  const int64_t a_begin = std::max<int64_t>(0, g.Rh / 2 - (r1 - 1));
  const int64_t a_end = std::min<int64_t>(g.Rh, g.Rh / 2 + g.H - r0);
  const int64_t c_begin = std::max<int64_t>(0, g.Rw / 2 - (g.W - 1));
  const int64_t c_end = std::min<int64_t>(g.Rw, g.Rw / 2 + g.W);
  const int64_t V = g.V, Lp = g.Lp, Kp = g.Kp;
  for (int64_t a = a_begin; a < a_end; ++a) {
    const int64_t oy = a - g.Rh / 2;
    const int64_t n_begin = std::max(r0, -oy), n_end = std::min(r1, g.H - oy);
    for (int64_t u = 0; u < g.U; ++u) {
      for (int64_t c0 = c_begin; c0 < c_end; c0 += kGradEX) {
        const int64_t ox0 = c0 - g.Rw / 2;
        const int64_t ox_last = std::min<int64_t>(c0 + kGradEX, c_end) - 1 - g.Rw / 2;
        const int64_t x_lo = std::max<int64_t>(0, -ox_last);
        const int64_t x_hi = std::min<int64_t>(g.W, g.W - ox0);
        if (x_lo >= x_hi) continue;
        const int64_t n_vec = ceil_div((x_hi - x_lo) * V, VL);
        for (int64_t k0 = 0; k0 < g.K; k0 += kGradEK) {
          vec acc[kGradEK][kGradEX];
#pragma GCC unroll 4
          for (int kk = 0; kk < kGradEK; ++kk)
#pragma GCC unroll 6
            for (int d = 0; d < kGradEX; ++d) acc[kk][d] = vzero<acc_t>();
          for (int64_t n = n_begin; n < n_end; ++n) {
            const acc_t* d_row = dlp_band + ((n - r0) * Kp + k0) * Lp + (g.P + x_lo) * V;
            const acc_t* v_row =
                vp_image + ((n + oy) * g.U + u) * Lp + (g.P + x_lo + ox0) * V;
            for (int64_t iv = 0; iv < n_vec; ++iv) {
              const int64_t j = iv * VL;
              // Four dλp rows (k0 .. k0+3) held in named registers (an array here gets
              // spilled to the stack by GCC), times kGradEX shifted value vectors.
              static_assert(kGradEK == 4, "the dE micro-kernel is written for 4 k rows");
              vec dl0 = vload(d_row + j), dl1 = vload(d_row + Lp + j);
              vec dl2 = vload(d_row + 2 * Lp + j), dl3 = vload(d_row + 3 * Lp + j);
#pragma GCC unroll 6
              for (int d = 0; d < kGradEX; ++d) {
                vec vv = vload(v_row + d * V + j);
                pin_register(vv);
                acc[0][d] += dl0 * vv;
                acc[1][d] += dl1 * vv;
                acc[2][d] += dl2 * vv;
                acc[3][d] += dl3 * vv;
              }
            }
          }
          // Constant indices only on acc (so that it stays in registers), then the clipped
          // write-back from a plain array.
          acc_t sums[kGradEK][kGradEX];
#pragma GCC unroll 4
          for (int kk = 0; kk < kGradEK; ++kk)
#pragma GCC unroll 6
            for (int d = 0; d < kGradEX; ++d) sums[kk][d] = vsum<acc_t>(acc[kk][d]);
          for (int d = 0; d < kGradEX && c0 + d < c_end; ++d)
            for (int kk = 0; kk < kGradEK && k0 + kk < g.K; ++kk)
              part[((a * g.Rw + c0 + d) * g.K + k0 + kk) * g.U + u] += sums[kk][d];
        }
      }
    }
  }
}

// dvalues tile: rows m_y .. m_y + kGradVRows − 1 of the band buffer, chunk j0 of the (x, v)
// row, one u, from the dλp row of source row n_y:
//   out[i][u][j] += Σ_{c,k} E[a_i, c, k, u] · dλp[n_y][k][j − o_x·v],  a_i = m_y + i − n_y + Rh/2
// e_rows[i] points at E[a_i] in (Rw, k, u) layout (or at zeros when a_i is outside the table).
template <typename acc_t>
void grad_values_tile(const acc_t* dlp, const acc_t* const* e_rows, const Geometry<acc_t>& g,
                      int64_t u, int64_t j0, acc_t* out, int64_t out_row_stride) {
  using vec = typename Simd<acc_t>::vec;
  constexpr int64_t VL = Simd<acc_t>::kLanes;
  constexpr int64_t CL = Geometry<acc_t>::kGradVChunk;
  vec acc[kGradVRows][kGradVX];
#pragma GCC unroll 4
  for (int i = 0; i < kGradVRows; ++i)
#pragma GCC unroll 4
    for (int xb = 0; xb < kGradVX; ++xb) acc[i][xb] = vzero<acc_t>();
  const int64_t x0 = j0 / g.V;
  const int64_t x1 = std::min(g.W - 1, (j0 + CL - 1) / g.V);
  const int64_t c_begin = std::max<int64_t>(0, g.Rw / 2 + x0 - g.W + 1);
  const int64_t c_end = std::min<int64_t>(g.Rw, g.Rw / 2 + x1 + 1);
  const int64_t K = g.K, U = g.U, Lp = g.Lp;
  for (int64_t c = c_begin; c < c_end; ++c) {
    const acc_t* d_ptr = dlp + g.P * g.V + j0 - (c - g.Rw / 2) * g.V;
    const int64_t e_off = c * K * U + u;
    for (int64_t k = 0; k < K; ++k) {
      vec dl[kGradVX];
#pragma GCC unroll 4
      for (int xb = 0; xb < kGradVX; ++xb) {
        dl[xb] = vload(d_ptr + k * Lp + xb * VL);
        pin_register(dl[xb]);
      }
#pragma GCC unroll 4
      for (int i = 0; i < kGradVRows; ++i) {
        const acc_t e = e_rows[i][e_off + k * U];
#pragma GCC unroll 4
        for (int xb = 0; xb < kGradVX; ++xb) acc[i][xb] += e * dl[xb];
      }
    }
  }
#pragma GCC unroll 4
  for (int i = 0; i < kGradVRows; ++i)
#pragma GCC unroll 4
    for (int xb = 0; xb < kGradVX; ++xb) {
      acc_t* dst = out + i * out_row_stride + xb * VL;
      vstore(dst, vload(dst) + acc[i][xb]);
    }
}

template <typename scalar_t>
void lambda_output_backward_impl(const at::Tensor& dy, const at::Tensor& q,
                                 const at::Tensor& values, const at::Tensor& pos_table,
                                 const at::Tensor& lam, at::Tensor& d_q, at::Tensor& d_values,
                                 at::Tensor& d_pos_table, at::Tensor& d_lam) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int64_t CL = Geometry<acc_t>::kFwdChunk;
  constexpr int64_t CLV = Geometry<acc_t>::kGradVChunk;
  const Geometry<acc_t> g(q, values, pos_table);
  const auto acc_options = values.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
  const Packed<acc_t> packed = pack_inputs<scalar_t, acc_t>(values, pos_table, lam, g);
  const at::Tensor e_acc = pos_table.scalar_type() == acc_options.dtype()
                               ? pos_table
                               : pos_table.to(acc_options.dtype());  // (Rh, Rw, k, u)
  const acc_t* vp = tensor_ptr<acc_t>(packed.vp);
  const acc_t* ef = tensor_ptr<acc_t>(packed.ef);
  const acc_t* e_ptr = tensor_ptr<acc_t>(e_acc);
  const acc_t* lam_ptr = tensor_ptr<acc_t>(packed.lam);
  const scalar_t* q_ptr = q.data_ptr<scalar_t>();
  const scalar_t* dy_ptr = dy.data_ptr<scalar_t>();
  scalar_t* dq_ptr = d_q.data_ptr<scalar_t>();
  scalar_t* dv_ptr = d_values.data_ptr<scalar_t>();

  // Pass 1: dq, dE and dΛ partials over tasks (b, band), in a fixed number of chunks.
  // Rows per pass-1 band: up to kBandRows, fewer when one dλp row is large (a function of
  // the shape only, so the chunking below never depends on the thread count).
  const int64_t band_rows = std::max<int64_t>(
      1, std::min<int64_t>(kBandRows, kBandBytes / (g.Kp * g.Lp * int64_t(sizeof(acc_t)))));
  const int64_t bands = ceil_div(g.H, band_rows);
  const int64_t tasks = g.B * bands;
  const int64_t table_bytes = g.Rh * g.Rw * g.K * g.U * int64_t(sizeof(acc_t));
  const int64_t chunks = std::min(
      tasks, std::max<int64_t>(2, std::min(kMaxGradEChunks, kGradEPartialBytes / table_bytes)));
  const int64_t table_size = g.Rh * g.Rw * g.K * g.U;
  at::Tensor de_part = at::empty({chunks, table_size}, acc_options);  // zeroed per chunk
  at::Tensor dlam_part = at::empty({tasks, g.K * g.V}, acc_options);  // zeroed per task
  acc_t* de_part_ptr = tensor_ptr<acc_t>(de_part);
  acc_t* dlam_part_ptr = tensor_ptr<acc_t>(dlam_part);

  at::parallel_for(0, chunks, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
    std::vector<acc_t> dlp_band(band_rows * g.Kp * g.Lp, acc_t(0));
    std::vector<acc_t> tile(g.Kp * CL);
    std::vector<acc_t> q_row(g.heads * g.K * g.W), dy_row(g.heads * g.V * g.W);
    std::vector<acc_t> dq_row(g.heads * g.K * g.W);
    for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
      acc_t* part = de_part_ptr + chunk * table_size;
      std::fill(part, part + table_size, acc_t(0));
      const int64_t t_begin = chunk * tasks / chunks, t_end = (chunk + 1) * tasks / chunks;
      for (int64_t t = t_begin; t < t_end; ++t) {
        const int64_t b = t / bands;
        const int64_t r0 = (t % bands) * band_rows, r1 = std::min(g.H, r0 + band_rows);
        const acc_t* vp_image = vp + b * g.H * g.U * g.Lp;
        const acc_t* lam_b = lam_ptr + b * g.K * g.V;
        acc_t* dlam = dlam_part_ptr + t * g.K * g.V;
        std::fill(dlam, dlam + g.K * g.V, acc_t(0));
        for (int64_t y = r0; y < r1; ++y) {
          load_rows(q_ptr, dy_ptr, g, b, y, q_row.data(), dy_row.data());
          acc_t* dlp = dlp_band.data() + (y - r0) * g.Kp * g.Lp;
          grad_positional_lambda_row(q_row.data(), dy_row.data(), g, dlp);
          for (int64_t k = 0; k < g.K; ++k) {
            const acc_t* row = dlp + k * g.Lp + g.P * g.V;
            for (int64_t x = 0; x < g.W; ++x)
              for (int64_t c = 0; c < g.V; ++c) dlam[k * g.V + c] += row[x * g.V + c];
          }
          // dq[h,k,x] = Σ_v dy[h,v,x] · (Λ + λp)[k,(x,v)]
          std::fill(dq_row.begin(), dq_row.end(), acc_t(0));
          for (int64_t j0 = 0; j0 < g.L; j0 += CL) {
            lambda_tile(vp_image, ef, lam_b, g, y, j0, tile.data());
            const int64_t j_end = std::min(j0 + CL, g.L);
            for (int64_t h = 0; h < g.heads; ++h) {
              const acc_t* dyh = dy_row.data() + h * g.V * g.W;
              acc_t* dqh = dq_row.data() + h * g.K * g.W;
              for (int64_t k = 0; k < g.K; ++k) {
                const acc_t* tk = tile.data() + k * CL - j0;
                for (int64_t j = j0; j < j_end; ++j) {
                  const int64_t x = j / g.V, c = j % g.V;
                  dqh[k * g.W + x] += dyh[c * g.W + x] * tk[j];
                }
              }
            }
          }
          for (int64_t hk = 0; hk < g.heads * g.K; ++hk) {
            scalar_t* dst = dq_ptr + (b * g.heads * g.K + hk) * g.N + y * g.W;
            for (int64_t x = 0; x < g.W; ++x)
              dst[x] = static_cast<scalar_t>(dq_row[hk * g.W + x]);
          }
        }
        grad_pos_table_band(dlp_band.data(), vp_image, g, r0, r1, part);
      }
    }
  });

  // Pass 2: dvalues over tasks (b, band of output rows); dλp rows are recomputed per band.
  const std::vector<acc_t> zero_table_row(g.Rw * g.K * g.U, acc_t(0));
  const int64_t lv = ceil_div(g.L, CLV) * CLV;
  const int64_t out_bands = ceil_div(g.H, kOutBandRows);
  at::parallel_for(0, g.B * out_bands, 1, [&](int64_t t_begin, int64_t t_end) {
    std::vector<acc_t> dlp(g.Kp * g.Lp, acc_t(0));
    std::vector<acc_t> band((kOutBandRows + kGradVRows) * g.U * lv);
    std::vector<acc_t> q_row(g.heads * g.K * g.W), dy_row(g.heads * g.V * g.W);
    for (int64_t t = t_begin; t < t_end; ++t) {
      const int64_t b = t / out_bands;
      const int64_t y0 = (t % out_bands) * kOutBandRows, y1 = std::min(g.H, y0 + kOutBandRows);
      std::fill(band.begin(), band.end(), acc_t(0));
      const int64_t n_begin = std::max<int64_t>(0, y0 - g.Rh / 2);
      const int64_t n_end = std::min<int64_t>(g.H, y1 + g.Rh / 2);
      for (int64_t n = n_begin; n < n_end; ++n) {
        load_rows(q_ptr, dy_ptr, g, b, n, q_row.data(), dy_row.data());
        grad_positional_lambda_row(q_row.data(), dy_row.data(), g, dlp.data());
        const int64_t m_begin = std::max<int64_t>(y0, n - g.Rh / 2);
        const int64_t m_end = std::min<int64_t>(y1, n + g.Rh / 2 + 1);
        for (int64_t m = m_begin; m < m_end; m += kGradVRows) {
          const acc_t* e_rows[kGradVRows];
          for (int i = 0; i < kGradVRows; ++i) {
            const int64_t a = m + i - n + g.Rh / 2;
            e_rows[i] = (m + i < m_end && a < g.Rh) ? e_ptr + a * g.Rw * g.K * g.U
                                                    : zero_table_row.data();
          }
          for (int64_t u = 0; u < g.U; ++u)
            for (int64_t j0 = 0; j0 < g.L; j0 += CLV)
              grad_values_tile(dlp.data(), e_rows, g, u, j0,
                               band.data() + ((m - y0) * g.U + u) * lv + j0, g.U * lv);
        }
      }
      for (int64_t m = y0; m < y1; ++m)
        for (int64_t u = 0; u < g.U; ++u) {
          const acc_t* src = band.data() + ((m - y0) * g.U + u) * lv;
          for (int64_t c = 0; c < g.V; ++c) {
            scalar_t* dst = dv_ptr + (((b * g.U + u) * g.V + c) * g.H + m) * g.W;
            for (int64_t x = 0; x < g.W; ++x) dst[x] = static_cast<scalar_t>(src[x * g.V + c]);
          }
        }
    }
  });

  // Fixed-order reductions of the partials (chunk 0, 1, ... for every element).
  scalar_t* d_pos_ptr = d_pos_table.data_ptr<scalar_t>();
  at::parallel_for(0, table_size, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      acc_t sum = 0;
      for (int64_t chunk = 0; chunk < chunks; ++chunk) sum += de_part_ptr[chunk * table_size + i];
      d_pos_ptr[i] = static_cast<scalar_t>(sum);
    }
  });
  scalar_t* d_lam_ptr = d_lam.data_ptr<scalar_t>();
  for (int64_t b = 0; b < g.B; ++b)
    for (int64_t i = 0; i < g.K * g.V; ++i) {
      acc_t sum = 0;
      for (int64_t t = b * bands; t < (b + 1) * bands; ++t) sum += dlam_part_ptr[t * g.K * g.V + i];
      d_lam_ptr[b * g.K * g.V + i] = static_cast<scalar_t>(sum);
    }
}

at::Tensor lambda_output_cpu(const at::Tensor& q_in, const at::Tensor& values_in,
                             const at::Tensor& pos_table_in, const at::Tensor& lam_in) {
  check_output_inputs(q_in, values_in, pos_table_in, lam_in);
  const at::Tensor q = q_in.contiguous();
  const at::Tensor values = values_in.contiguous();
  const at::Tensor pos_table = pos_table_in.contiguous();
  const at::Tensor lam = lam_in.contiguous();
  at::Tensor y = at::empty({q.size(0), q.size(1), values.size(2), q.size(3), q.size(4)},
                           q.options());
  if (y.numel() == 0) return y;
  if (q.size(2) == 0 || values.size(1) == 0) return y.zero_();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "lambda_output_cpu",
                                  [&] {
                                    lambda_output_impl<scalar_t>(q, values, pos_table, lam, y);
                                  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lambda_output_backward_cpu(
    const at::Tensor& dy_in, const at::Tensor& q_in, const at::Tensor& values_in,
    const at::Tensor& pos_table_in, const at::Tensor& lam_in) {
  check_output_inputs(q_in, values_in, pos_table_in, lam_in);
  check_output_grad(dy_in, q_in, values_in);
  const at::Tensor dy = dy_in.contiguous();
  const at::Tensor q = q_in.contiguous();
  const at::Tensor values = values_in.contiguous();
  const at::Tensor pos_table = pos_table_in.contiguous();
  const at::Tensor lam = lam_in.contiguous();
  at::Tensor d_q = at::empty_like(q);
  at::Tensor d_values = at::empty_like(values);
  at::Tensor d_pos_table = at::empty_like(pos_table);
  at::Tensor d_lam = at::empty_like(lam);
  if (q.numel() == 0 || values.numel() == 0 || dy.numel() == 0) {
    d_q.zero_();
    d_values.zero_();
    d_pos_table.zero_();
    d_lam.zero_();
    return {d_q, d_values, d_pos_table, d_lam};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(),
                                  "lambda_output_backward_cpu", [&] {
                                    lambda_output_backward_impl<scalar_t>(
                                        dy, q, values, pos_table, lam, d_q, d_values, d_pos_table,
                                        d_lam);
                                  });
  return {d_q, d_values, d_pos_table, d_lam};
}

}  // namespace

TORCH_LIBRARY_IMPL(lambda_kernels, CPU, m) {
  m.impl("lambda_output", &lambda_output_cpu);
  m.impl("lambda_output_backward", &lambda_output_backward_cpu);
}

}  // namespace lambda_kernels
