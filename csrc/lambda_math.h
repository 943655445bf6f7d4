// Inline math shared by the CPU and CUDA kernels of the lambda op (host and device).
//
// Window geometry. A position table of odd size R along one axis is centred at R/2: table index
// a addresses the context coordinate p + a - R/2 of a query at coordinate p. Only indices whose
// context coordinate lies inside [0, extent) contribute (zero padding outside the image).
//
// Softmax statistics. σ = softmax over positions is never stored: kernels keep, per (b, u, k)
// row, lse = log Σ_m exp(keys[m]) and recompute σ[m] = exp(keys[m] - lse) when needed.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define LK_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define LK_HOST_DEVICE inline
#endif

namespace lambda_kernels {

// Half-open range [begin, end) of indices; empty when begin >= end.
struct IndexRange {
  int64_t begin;
  int64_t end;
  LK_HOST_DEVICE int64_t size() const { return end > begin ? end - begin : 0; }
};

// Offset of table index a along an axis of odd size R: a − R/2.
LK_HOST_DEVICE int64_t table_offset(int64_t a, int64_t table_size) { return a - table_size / 2; }

// Context coordinate addressed by table index a for a query at p.
LK_HOST_DEVICE int64_t context_coord(int64_t p, int64_t a, int64_t table_size) {
  return p + table_offset(a, table_size);
}

// Query coordinate whose table index a addresses the context coordinate m.
LK_HOST_DEVICE int64_t query_coord(int64_t m, int64_t a, int64_t table_size) {
  return m - table_offset(a, table_size);
}

LK_HOST_DEVICE IndexRange clip_range(int64_t begin, int64_t end, int64_t size) {
  return {begin < 0 ? 0 : begin, end > size ? size : end};
}

// Table indices a whose context p + a − R/2 lies inside [0, extent), for a query at p.
LK_HOST_DEVICE IndexRange window_range(int64_t p, int64_t extent, int64_t table_size) {
  const int64_t centre = table_size / 2;
  return clip_range(centre - p, centre - p + extent, table_size);
}

// Table indices valid for some query coordinate in [p0, p1] (the union of their windows).
LK_HOST_DEVICE IndexRange query_union(int64_t p0, int64_t p1, int64_t extent,
                                      int64_t table_size) {
  return {window_range(p1, extent, table_size).begin, window_range(p0, extent, table_size).end};
}

// Table indices a for which some context coordinate in [m0, m1] is read by a query inside
// [0, extent): query = m − a + R/2 ∈ [0, extent).
LK_HOST_DEVICE IndexRange context_union(int64_t m0, int64_t m1, int64_t extent,
                                        int64_t table_size) {
  return clip_range(m0 + table_size / 2 - extent + 1, m1 + table_size / 2 + 1, table_size);
}

// Query coordinates p in [0, extent) whose context p + a − R/2 lies inside [0, extent).
LK_HOST_DEVICE IndexRange queries_reaching_inside(int64_t a, int64_t extent,
                                                  int64_t table_size) {
  const int64_t offset = table_offset(a, table_size);
  return clip_range(-offset, extent - offset, extent);
}

LK_HOST_DEVICE float lk_exp(float x) {
#if defined(__CUDA_ARCH__)
  return __expf(x);
#else
  return std::exp(x);
#endif
}
LK_HOST_DEVICE double lk_exp(double x) { return exp(x); }
LK_HOST_DEVICE float lk_log(float x) { return logf(x); }
LK_HOST_DEVICE double lk_log(double x) { return log(x); }

// Running (max, Σ exp(x - max)) of a softmax row; merge() combines two partial rows so that
// threads or blocks can reduce disjoint position ranges in any fixed order.
template <typename acc_t>
struct SoftmaxRow {
  acc_t max = -std::numeric_limits<acc_t>::infinity();
  acc_t sum = acc_t(0);

  LK_HOST_DEVICE void add(acc_t x) {
    if (x > max) {
      sum = sum * lk_exp(max - x) + acc_t(1);
      max = x;
    } else {
      sum += lk_exp(x - max);
    }
  }
  LK_HOST_DEVICE void merge(const SoftmaxRow& other) {
    if (other.max > max) {
      sum = sum * lk_exp(max - other.max) + other.sum;
      max = other.max;
    } else if (other.sum > acc_t(0)) {
      sum += other.sum * lk_exp(other.max - max);
    }
  }
  LK_HOST_DEVICE acc_t logsumexp() const { return max + lk_log(sum); }
};

// σ recomputed from the stored log-sum-exp of its row.
template <typename acc_t>
LK_HOST_DEVICE acc_t softmax_weight(acc_t x, acc_t lse) {
  return lk_exp(x - lse);
}

// Softmax backward for one element: dx = σ · (dσ − Σ_m σ·dσ).
template <typename acc_t>
LK_HOST_DEVICE acc_t softmax_grad(acc_t sigma, acc_t d_sigma, acc_t row_dot) {
  return sigma * (d_sigma - row_dot);
}

}  // namespace lambda_kernels
