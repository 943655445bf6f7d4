// Content lambda on the CPU, fused: softmax over positions is never stored.
//
//   lse[b,u,k]  = log Σ_m exp(keys[b,u,k,m])                    (kept as `stats`)
//   σ[b,u,k,m]  = exp(keys[b,u,k,m] − lse[b,u,k])
//   λc[b,k,v]   = Σ_u Σ_m σ[b,u,k,m] · values[b,u,v,m]
// Backward, given dλc (B, k, v):
//   dσ[b,u,k,m]      = Σ_v dλc[b,k,v] · values[b,u,v,m]
//   dkeys[b,u,k,m]   = σ · (dσ − Σ_m' σ·dσ)
//   dvalues[b,u,v,m] = Σ_k σ[b,u,k,m] · dλc[b,k,v]
//
// Work is split over (b, u) rows; positions are walked in chunks so σ and dσ for one chunk
// live in a small stack buffer. The sum over u is a fixed-order reduction of per-(b, u)
// partials, so results do not depend on the thread count.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../checks.h"
#include "../lambda_math.h"

namespace lambda_kernels {
namespace {

constexpr int64_t kChunk = 64;  // positions per chunk

template <typename scalar_t>
void content_lambda_forward_impl(const at::Tensor& keys, const at::Tensor& values,
                                 at::Tensor& partial, at::Tensor& stats) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = keys.size(0), U = keys.size(1), K = keys.size(2), V = values.size(2);
  const int64_t N = keys.size(3) * keys.size(4);
  const scalar_t* key_ptr = keys.data_ptr<scalar_t>();
  const scalar_t* value_ptr = values.data_ptr<scalar_t>();
  acc_t* partial_ptr = partial.data_ptr<acc_t>();  // (B, U, K, V)
  acc_t* stats_ptr = stats.data_ptr<acc_t>();      // (B, U, K)

  at::parallel_for(0, B * U, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> sigma(K * kChunk);
    for (int64_t bu = begin; bu < end; ++bu) {
      const scalar_t* key_row = key_ptr + bu * K * N;
      const scalar_t* value_row = value_ptr + bu * V * N;
      acc_t* lse = stats_ptr + bu * K;
      acc_t* lam = partial_ptr + bu * K * V;
      for (int64_t k = 0; k < K; ++k) {
        SoftmaxRow<acc_t> row;
        for (int64_t m = 0; m < N; ++m) row.add(static_cast<acc_t>(key_row[k * N + m]));
        lse[k] = row.logsumexp();
      }
      std::fill(lam, lam + K * V, acc_t(0));
      for (int64_t m0 = 0; m0 < N; m0 += kChunk) {
        const int64_t len = std::min(kChunk, N - m0);
        for (int64_t k = 0; k < K; ++k)
          for (int64_t i = 0; i < len; ++i)
            sigma[k * kChunk + i] =
                softmax_weight(static_cast<acc_t>(key_row[k * N + m0 + i]), lse[k]);
        for (int64_t k = 0; k < K; ++k) {
          for (int64_t v = 0; v < V; ++v) {
            const scalar_t* value_chunk = value_row + v * N + m0;
            acc_t dot = 0;
            for (int64_t i = 0; i < len; ++i)
              dot += sigma[k * kChunk + i] * static_cast<acc_t>(value_chunk[i]);
            lam[k * V + v] += dot;
          }
        }
      }
    }
  });
}

template <typename scalar_t>
void content_lambda_backward_impl(const at::Tensor& d_lam, const at::Tensor& keys,
                                  const at::Tensor& values, const at::Tensor& stats,
                                  at::Tensor& d_keys, at::Tensor& d_values) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = keys.size(0), U = keys.size(1), K = keys.size(2), V = values.size(2);
  const int64_t N = keys.size(3) * keys.size(4);
  const scalar_t* key_ptr = keys.data_ptr<scalar_t>();
  const scalar_t* value_ptr = values.data_ptr<scalar_t>();
  const acc_t* d_lam_ptr = d_lam.data_ptr<acc_t>();  // (B, K, V), in acc_t
  const acc_t* stats_ptr = stats.data_ptr<acc_t>();
  scalar_t* d_key_ptr = d_keys.data_ptr<scalar_t>();
  scalar_t* d_value_ptr = d_values.data_ptr<scalar_t>();

  at::parallel_for(0, B * U, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> sigma(K * kChunk), d_sigma(K * kChunk), row_dot(K);
    for (int64_t bu = begin; bu < end; ++bu) {
      const int64_t b = bu / U;
      const scalar_t* key_row = key_ptr + bu * K * N;
      const scalar_t* value_row = value_ptr + bu * V * N;
      const acc_t* lse = stats_ptr + bu * K;
      const acc_t* dl = d_lam_ptr + b * K * V;
      scalar_t* d_key_row = d_key_ptr + bu * K * N;
      scalar_t* d_value_row = d_value_ptr + bu * V * N;

      // σ and dσ of one chunk of positions.
      auto load_chunk = [&](int64_t m0, int64_t len) {
        for (int64_t k = 0; k < K; ++k) {
          for (int64_t i = 0; i < len; ++i) {
            sigma[k * kChunk + i] =
                softmax_weight(static_cast<acc_t>(key_row[k * N + m0 + i]), lse[k]);
            d_sigma[k * kChunk + i] = 0;
          }
          for (int64_t v = 0; v < V; ++v) {
            const acc_t w = dl[k * V + v];
            const scalar_t* value_chunk = value_row + v * N + m0;
            for (int64_t i = 0; i < len; ++i)
              d_sigma[k * kChunk + i] += w * static_cast<acc_t>(value_chunk[i]);
          }
        }
      };

      std::fill(row_dot.begin(), row_dot.end(), acc_t(0));
      for (int64_t m0 = 0; m0 < N; m0 += kChunk) {
        const int64_t len = std::min(kChunk, N - m0);
        load_chunk(m0, len);
        for (int64_t k = 0; k < K; ++k)
          for (int64_t i = 0; i < len; ++i)
            row_dot[k] += sigma[k * kChunk + i] * d_sigma[k * kChunk + i];
      }
      for (int64_t m0 = 0; m0 < N; m0 += kChunk) {
        const int64_t len = std::min(kChunk, N - m0);
        load_chunk(m0, len);
        for (int64_t k = 0; k < K; ++k)
          for (int64_t i = 0; i < len; ++i)
            d_key_row[k * N + m0 + i] = static_cast<scalar_t>(
                softmax_grad(sigma[k * kChunk + i], d_sigma[k * kChunk + i], row_dot[k]));
        for (int64_t v = 0; v < V; ++v) {
          for (int64_t i = 0; i < len; ++i) {
            acc_t acc = 0;
            for (int64_t k = 0; k < K; ++k) acc += sigma[k * kChunk + i] * dl[k * V + v];
            d_value_row[v * N + m0 + i] = static_cast<scalar_t>(acc);
          }
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> content_lambda_cpu(const at::Tensor& keys_in,
                                                      const at::Tensor& values_in) {
  check_content_inputs(keys_in, values_in);
  const at::Tensor keys = keys_in.contiguous();
  const at::Tensor values = values_in.contiguous();
  const int64_t B = keys.size(0), U = keys.size(1), K = keys.size(2), V = values.size(2);
  const auto acc_dtype = stats_dtype(keys.scalar_type());
  at::Tensor stats = at::empty({B, U, K}, keys.options().dtype(acc_dtype));
  at::Tensor partial = at::empty({B, U, K, V}, keys.options().dtype(acc_dtype));
  if (keys.numel() > 0 && values.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, keys.scalar_type(),
                                    "content_lambda_cpu", [&] {
                                      content_lambda_forward_impl<scalar_t>(keys, values, partial,
                                                                            stats);
                                    });
  } else {
    partial.zero_();
    stats.fill_(-std::numeric_limits<double>::infinity());
  }
  return {partial.sum(1).to(keys.scalar_type()), stats};
}

std::tuple<at::Tensor, at::Tensor> content_lambda_backward_cpu(const at::Tensor& d_lam_in,
                                                               const at::Tensor& keys_in,
                                                               const at::Tensor& values_in,
                                                               const at::Tensor& stats_in) {
  check_content_inputs(keys_in, values_in);
  check_stats(stats_in, keys_in);
  check_lam(d_lam_in, "d_lam_c", keys_in.size(0), keys_in.size(2), values_in.size(2), values_in);
  const at::Tensor keys = keys_in.contiguous();
  const at::Tensor values = values_in.contiguous();
  const at::Tensor stats = stats_in.contiguous();
  const at::Tensor d_lam = d_lam_in.to(stats.scalar_type()).contiguous();
  at::Tensor d_keys = at::empty_like(keys);
  at::Tensor d_values = at::empty_like(values);
  if (keys.numel() > 0 && values.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, keys.scalar_type(),
                                    "content_lambda_backward_cpu", [&] {
                                      content_lambda_backward_impl<scalar_t>(
                                          d_lam, keys, values, stats, d_keys, d_values);
                                    });
  }
  return {d_keys, d_values};
}

}  // namespace

TORCH_LIBRARY_IMPL(lambda_kernels, CPU, m) {
  m.impl("content_lambda", &content_lambda_cpu);
  m.impl("content_lambda_backward", &content_lambda_backward_cpu);
}

}  // namespace lambda_kernels
