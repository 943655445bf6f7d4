// Device code shared by the CUDA kernels of the lambda ops (included by the *_kernels.cuh headers).
//
//   - kThreads: every kernel runs 1-D blocks of kThreads threads;
//   - deterministic block reductions (fixed tree order, no atomics);
//   - the batched "Gram" reduction over positions used by the content lambda (σ·valuesᵀ) and by
//     d_lam (q·dyᵀ):
//         out[b, i, j] = Σ_g Σ_n A(b, g, i, n) · Bm[b, g, j, n]
//     computed as per-block partial sums over fixed position chunks (gram_partial_kernel), then
//     added over the chunks in a fixed order (partial_sum_kernel);
//   - partial_sum_kernel: the fixed-order second step of every deterministic reduction.
//
// Kernel headers hold device code only (no launches, no CUDA runtime headers), so the test suite
// can also compile them as plain C++ with a thread-per-CUDA-thread emulation of blocks and
// __syncthreads (tests/cuda_emulation.cpp, built by tests/test_cuda_backend.py;
// LK_CUDA_EMULATION) and check them without a GPU.
#pragma once

#include <ATen/OpMathType.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "../lambda_math.h"

namespace lambda_kernels {
namespace cuda {

// Threads per block: a power of two (the tree reductions halve it), 8 warps; at the ≤ 80
// registers per thread of query_tile_kernel and d_values_pos_kernel, 3 blocks (24 warps) stay
// resident per SM.
constexpr int kThreads = 256;

// Host-side planning helpers (plain inline functions: the launchers and the CPU emulation of the
// kernels share them, so both use the same fixed, shape-only grids).
inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <typename scalar_t>
__device__ __forceinline__ at::opmath_type<scalar_t> load(const scalar_t* p, int64_t i) {
  return static_cast<at::opmath_type<scalar_t>>(p[i]);
}

// Sums each of the kCount per-thread values x[j] over the block (blockDim.x == kThreads) in a
// fixed tree order (strides kThreads/2, kThreads/4, ..., 1); afterwards shm[j][0] holds the sum
// of x[j]. Must be reached by all threads of the block (contains __syncthreads).
template <int kCount, typename acc_t>
__device__ __forceinline__ void block_sum_each(const acc_t (&x)[kCount],
                                               acc_t (&shm)[kCount][kThreads]) {
  const int tid = threadIdx.x;
#pragma unroll
  for (int j = 0; j < kCount; ++j) shm[j][tid] = x[j];
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (tid < s) {
#pragma unroll
      for (int j = 0; j < kCount; ++j) shm[j][tid] += shm[j][tid + s];
    }
    __syncthreads();
  }
}

// Sum of `x` over the block in block_sum_each's order; every thread gets the result.
template <typename acc_t>
__device__ __forceinline__ acc_t block_sum(acc_t x, acc_t (&shm)[1][kThreads]) {
  const acc_t v[1] = {x};
  block_sum_each(v, shm);
  const acc_t total = shm[0][0];
  __syncthreads();  // shm may be reused right after
  return total;
}

// ---------------------------------------------------------------------------------------------
// Gram reduction over positions.
//   A  : (batch, G, I, N) scalar_t; with kSoftmax the element used is exp(A - lse[b, g, i])
//   Bm : (batch, G, J, N) scalar_t
//   partial : (batch, chunks, I, J) acc_t, chunk c covering positions [c·chunk_len, ...)
// One block computes a kGramTile × kGramTile tile of (i, j) for one (b, chunk), summing over g
// and the chunk's positions in steps of kGramStep staged in shared memory.
constexpr int kGramTile = 16;  // kGramTile² == kThreads: one (i, j) output per thread
// Positions staged per step = the warp size: a warp loads 32 consecutive positions of one i or j
// (coalesced). The two staged tiles of kGramTile × (kGramStep + 1) take 4.1 KiB fp32, 8.3 KiB
// fp64 together; the +1 column puts the 16 j a warp reads at one position on distinct banks.
constexpr int kGramStep = 32;
static_assert(kGramTile * kGramTile == kThreads, "gram tile must match the block size");

template <typename scalar_t, bool kSoftmax>
__global__ void __launch_bounds__(kThreads)
    gram_partial_kernel(const scalar_t* __restrict__ A, const scalar_t* __restrict__ Bm,
                        const at::opmath_type<scalar_t>* __restrict__ lse,
                        at::opmath_type<scalar_t>* __restrict__ partial, int64_t G, int64_t I,
                        int64_t J, int64_t N, int64_t chunk_len, int64_t chunks, int64_t i_tiles,
                        int64_t j_tiles) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t a_s[kGramTile][kGramStep + 1];
  __shared__ acc_t b_s[kGramTile][kGramStep + 1];

  int64_t blk = blockIdx.x;
  const int64_t tj = blk % j_tiles;
  blk /= j_tiles;
  const int64_t ti = blk % i_tiles;
  blk /= i_tiles;
  const int64_t c = blk % chunks;
  const int64_t b = blk / chunks;

  const int tx = threadIdx.x % kGramTile;  // j within the tile
  const int ty = threadIdx.x / kGramTile;  // i within the tile
  const int64_t i0 = ti * kGramTile, j0 = tj * kGramTile;
  const int64_t n_begin = c * chunk_len;
  const int64_t n_end = std::min<int64_t>(N, n_begin + chunk_len);

  acc_t acc = acc_t(0);
  for (int64_t g = 0; g < G; ++g) {
    const int64_t bg = b * G + g;
    const scalar_t* Ag = A + bg * I * N;
    const scalar_t* Bg = Bm + bg * J * N;
    for (int64_t n0 = n_begin; n0 < n_end; n0 += kGramStep) {
      for (int e = threadIdx.x; e < kGramTile * kGramStep; e += kThreads) {
        const int r = e / kGramStep, col = e % kGramStep;
        const int64_t n = n0 + col;
        const int64_t i = i0 + r, j = j0 + r;
        acc_t va = acc_t(0), vb = acc_t(0);
        if (n < n_end && i < I) {
          va = load(Ag, i * N + n);
          if (kSoftmax) va = softmax_weight(va, lse[bg * I + i]);
        }
        if (n < n_end && j < J) vb = load(Bg, j * N + n);
        a_s[r][col] = va;
        b_s[r][col] = vb;
      }
      __syncthreads();
#pragma unroll 8
      for (int col = 0; col < kGramStep; ++col) acc += a_s[ty][col] * b_s[tx][col];
      __syncthreads();
    }
  }
  if (i0 + ty < I && j0 + tx < J) partial[((b * chunks + c) * I + i0 + ty) * J + j0 + tx] = acc;
}

// Grid of the Gram reduction, fixed by the shapes only (never the device, so results repeat bit
// for bit on any GPU), position chunks that are multiples of kGramStep. blocks =
// batch·i_tiles·j_tiles·chunks. Chunks are added until the grid has ~1024 blocks (~8 per SM on a
// 132-SM H100, ~10 on a 108-SM A100: enough to fill either), at most 64 (the partial buffer is
// chunks × the output, and partial_sum_kernel adds `chunks` terms per output).
struct GramPlan {
  int64_t i_tiles, j_tiles, chunks, chunk_len, blocks;
};
inline GramPlan gram_plan(int64_t batch, int64_t I, int64_t J, int64_t N) {
  GramPlan p;
  p.i_tiles = ceil_div(I, kGramTile);
  p.j_tiles = ceil_div(J, kGramTile);
  const int64_t tiles = batch * p.i_tiles * p.j_tiles;
  const int64_t max_chunks = std::max<int64_t>(1, ceil_div(N, kGramStep));
  const int64_t want =
      std::min<int64_t>(std::max<int64_t>(1, ceil_div(1024, std::max<int64_t>(1, tiles))), 64);
  p.chunks = std::min(want, max_chunks);
  p.chunk_len = N == 0 ? 0 : ceil_div(ceil_div(N, p.chunks), kGramStep) * kGramStep;
  if (N > 0) p.chunks = ceil_div(N, p.chunk_len);
  p.blocks = tiles * p.chunks;
  return p;
}

// The second step of every deterministic reduction of the CUDA kernels (the Gram reduction, the
// rowdot of the content backward, d_pos_table): per-block partial sums on a grid fixed by the
// shapes are added in a fixed order, one thread per output:
//   out[o, i] = Σ_p partial[o, p, i]   for p = 0, 1, ..., parts − 1 in that order
// partial (outer, parts, inner) in acc_t, out (outer, inner) cast to out_t.
template <typename acc_t, typename out_t>
__global__ void __launch_bounds__(kThreads)
    partial_sum_kernel(const acc_t* __restrict__ partial, out_t* __restrict__ out, int64_t outer,
                       int64_t parts, int64_t inner) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (idx >= outer * inner) return;
  const int64_t o = idx / inner, i = idx % inner;
  acc_t total = acc_t(0);
  for (int64_t p = 0; p < parts; ++p) total += partial[(o * parts + p) * inner + i];
  out[idx] = static_cast<out_t>(total);
}

}  // namespace cuda
}  // namespace lambda_kernels
