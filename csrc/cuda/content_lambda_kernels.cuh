// Device kernels of the content lambda (math: see content_lambda.cu, which launches them). Only
// the positional part has two associations to choose from (lambda_output.cu).
#pragma once

#include "block_reductions.cuh"

namespace lambda_kernels {
namespace cuda {


// Chunks of positions for the rowdot partials, fixed by the shapes: rows · chunks blocks. As in
// gram_plan: chunks until ~1024 blocks fill the GPU, at most 64 (partial buffer rows × chunks),
// and at least kThreads positions per chunk so no thread of a block idles.
struct RowdotPlan {
  int64_t chunks, chunk_len;
};
inline RowdotPlan rowdot_plan(int64_t rows, int64_t N) {  // rows, N > 0
  RowdotPlan p;
  p.chunks = std::min<int64_t>(std::min<int64_t>(std::max<int64_t>(1, ceil_div(1024, rows)), 64),
                               ceil_div(N, kThreads));
  p.chunk_len = ceil_div(N, p.chunks);
  return p;
}

// lse of one softmax row per block: SoftmaxRow per thread over a strided set of positions,
// merged in a fixed tree order.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    softmax_lse_kernel(const scalar_t* __restrict__ keys,
                       at::opmath_type<scalar_t>* __restrict__ lse, int64_t N) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t s_max[kThreads];
  __shared__ acc_t s_sum[kThreads];
  const int64_t row = blockIdx.x;
  const int tid = threadIdx.x;
  const scalar_t* key_row = keys + row * N;
  SoftmaxRow<acc_t> mine;
  for (int64_t m = tid; m < N; m += kThreads) mine.add(load(key_row, m));
  s_max[tid] = mine.max;
  s_sum[tid] = mine.sum;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (tid < s) {
      SoftmaxRow<acc_t> left, right;
      left.max = s_max[tid];
      left.sum = s_sum[tid];
      right.max = s_max[tid + s];
      right.sum = s_sum[tid + s];
      left.merge(right);
      s_max[tid] = left.max;
      s_sum[tid] = left.sum;
    }
    __syncthreads();
  }
  if (tid == 0) {
    SoftmaxRow<acc_t> total;
    total.max = s_max[0];
    total.sum = s_sum[0];
    lse[row] = total.logsumexp();
  }
}

// dσ for one (row = (b,u,k), position m): Σ_v dλ[b,k,v] · values[b,u,v,m].
template <typename scalar_t>
__device__ __forceinline__ at::opmath_type<scalar_t> d_sigma_at(
    const scalar_t* __restrict__ value_bu, const at::opmath_type<scalar_t>* __restrict__ dl_bk,
    int64_t V, int64_t N, int64_t m) {
  using acc_t = at::opmath_type<scalar_t>;
  acc_t d = acc_t(0);
  for (int64_t v = 0; v < V; ++v) d += dl_bk[v] * load(value_bu, v * N + m);
  return d;
}

// partial[row, c] = Σ_{m in chunk c} σ·dσ for row = (b,u,k); grid = rows · chunks.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    rowdot_partial_kernel(const scalar_t* __restrict__ keys, const scalar_t* __restrict__ values,
                          const at::opmath_type<scalar_t>* __restrict__ lse,
                          const at::opmath_type<scalar_t>* __restrict__ d_lam,
                          at::opmath_type<scalar_t>* __restrict__ partial, int64_t U, int64_t K,
                          int64_t V, int64_t N, int64_t chunk_len, int64_t chunks) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t shm[1][kThreads];
  const int64_t row = blockIdx.x / chunks;  // (b*U + u)*K + k
  const int64_t c = blockIdx.x % chunks;
  const int64_t k = row % K;
  const int64_t bu = row / K;
  const int64_t b = bu / U;
  const scalar_t* key_row = keys + row * N;
  const scalar_t* value_bu = values + bu * V * N;
  const acc_t* dl_bk = d_lam + (b * K + k) * V;
  const acc_t row_lse = lse[row];
  const int64_t m_end = std::min<int64_t>(N, (c + 1) * chunk_len);
  acc_t acc = acc_t(0);
  for (int64_t m = c * chunk_len + threadIdx.x; m < m_end; m += kThreads) {
    const acc_t sigma = softmax_weight(load(key_row, m), row_lse);
    acc += sigma * d_sigma_at(value_bu, dl_bk, V, N, m);
  }
  const acc_t total = block_sum(acc, shm);
  if (threadIdx.x == 0) partial[row * chunks + c] = total;
}

// dkeys[b,u,k,m] = σ (dσ − rowdot); one thread per element.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    d_keys_kernel(const scalar_t* __restrict__ keys, const scalar_t* __restrict__ values,
                  const at::opmath_type<scalar_t>* __restrict__ lse,
                  const at::opmath_type<scalar_t>* __restrict__ d_lam,
                  const at::opmath_type<scalar_t>* __restrict__ rowdot,
                  scalar_t* __restrict__ d_keys, int64_t U, int64_t K, int64_t V, int64_t N,
                  int64_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (idx >= total) return;
  const int64_t m = idx % N;
  const int64_t row = idx / N;  // (b*U + u)*K + k
  const int64_t k = row % K;
  const int64_t bu = row / K;
  const int64_t b = bu / U;
  const acc_t sigma = softmax_weight(load(keys, idx), lse[row]);
  const acc_t d_sigma = d_sigma_at(values + bu * V * N, d_lam + (b * K + k) * V, V, N, m);
  d_keys[idx] = static_cast<scalar_t>(softmax_grad(sigma, d_sigma, rowdot[row]));
}

// dvalues[b,u,v,m] = Σ_k σ[b,u,k,m] · dλ[b,k,v]; one thread per element.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    d_values_content_kernel(const scalar_t* __restrict__ keys,
                            const at::opmath_type<scalar_t>* __restrict__ lse,
                            const at::opmath_type<scalar_t>* __restrict__ d_lam,
                            scalar_t* __restrict__ d_values, int64_t U, int64_t K, int64_t V,
                            int64_t N, int64_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (idx >= total) return;
  const int64_t m = idx % N;
  const int64_t rest = idx / N;  // (b*U + u)*V + v
  const int64_t v = rest % V;
  const int64_t bu = rest / V;
  const int64_t b = bu / U;
  const scalar_t* key_bu = keys + bu * K * N;
  const acc_t* lse_bu = lse + bu * K;
  const acc_t* dl_b = d_lam + b * K * V;
  acc_t acc = acc_t(0);
  for (int64_t k = 0; k < K; ++k)
    acc += softmax_weight(load(key_bu, k * N + m), lse_bu[k]) * dl_b[k * V + v];
  d_values[idx] = static_cast<scalar_t>(acc);
}

}  // namespace cuda
}  // namespace lambda_kernels
