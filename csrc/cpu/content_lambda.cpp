// Content lambda on the CPU, fused: softmax over positions is never stored beyond one (b, u)
// slice of keys per thread.
//
//   lse[b,u,k]  = log Σ_m exp(keys[b,u,k,m])                    (kept as `stats`)
//   σ[b,u,k,m]  = exp(keys[b,u,k,m] − lse[b,u,k])
//   λc[b,k,v]   = Σ_u Σ_m σ[b,u,k,m] · values[b,u,v,m]
// Backward, given dλc (B, k, v):
//   dσ[b,u,k,m]      = Σ_v dλc[b,k,v] · values[b,u,v,m]
//   dkeys[b,u,k,m]   = σ · (dσ − Σ_m' σ·dσ)
//   dvalues[b,u,v,m] = Σ_k σ[b,u,k,m] · dλc[b,k,v]
//
// Work is split over (b, u) rows. Per thread, the forward keeps exp(keys − max) of one row (N)
// and the backward σ of the K rows of one (b, u) slice (K·N), next to a float copy of the
// values slice (V·N), so every exponential is evaluated once; the contractions are `omp simd` loops over the
// contiguous position axis. The sum over u is a fixed-order reduction of per-(b, u) partials,
// so results do not depend on the thread count.
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

template <typename scalar_t>
void content_lambda_forward_impl(const at::Tensor& keys, const at::Tensor& values,
                                 at::Tensor& partial, at::Tensor& stats) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = keys.size(0), U = keys.size(1), K = keys.size(2), V = values.size(2);
  const int64_t N = keys.size(3) * keys.size(4);
  const scalar_t* key_ptr = keys.data_ptr<scalar_t>();
  const scalar_t* value_ptr = values.data_ptr<scalar_t>();
  acc_t* partial_ptr = static_cast<acc_t*>(partial.data_ptr());  // (B, U, K, V)
  acc_t* stats_ptr = static_cast<acc_t*>(stats.data_ptr());      // (B, U, K)

  at::parallel_for(0, B * U, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> weights(N);  // exp(keys − row max) of one row
    std::vector<acc_t> value_row(V * N);
    for (int64_t bu = begin; bu < end; ++bu) {
      const scalar_t* key_rows = key_ptr + bu * K * N;
      const scalar_t* value_rows = value_ptr + bu * V * N;
      for (int64_t i = 0; i < V * N; ++i) value_row[i] = static_cast<acc_t>(value_rows[i]);
      acc_t* lse = stats_ptr + bu * K;
      acc_t* lam = partial_ptr + bu * K * V;
      for (int64_t k = 0; k < K; ++k) {
        const scalar_t* key_row = key_rows + k * N;
        SoftmaxRow<acc_t> row;
        row.max = static_cast<acc_t>(key_row[0]);
        for (int64_t m = 1; m < N; ++m) row.max = std::max(row.max, static_cast<acc_t>(key_row[m]));
        acc_t sum = 0;
        for (int64_t m = 0; m < N; ++m) {
          weights[m] = lk_exp(static_cast<acc_t>(key_row[m]) - row.max);
          sum += weights[m];
        }
        row.sum = sum;
        lse[k] = row.logsumexp();
        const acc_t inv_sum = acc_t(1) / sum;
        for (int64_t v = 0; v < V; ++v) {
          const acc_t* vals = value_row.data() + v * N;
          acc_t dot = 0;
#pragma omp simd reduction(+ : dot)
          for (int64_t m = 0; m < N; ++m) dot += weights[m] * vals[m];
          lam[k * V + v] = dot * inv_sum;
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
  const acc_t* d_lam_ptr = static_cast<const acc_t*>(d_lam.data_ptr());  // (B, K, V), in acc_t
  const acc_t* stats_ptr = static_cast<const acc_t*>(stats.data_ptr());
  scalar_t* d_key_ptr = d_keys.data_ptr<scalar_t>();
  scalar_t* d_value_ptr = d_values.data_ptr<scalar_t>();

  at::parallel_for(0, B * U, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> sigma(K * N), d_sigma(N), value_row(V * N), d_value_row(N);
    for (int64_t bu = begin; bu < end; ++bu) {
      const int64_t b = bu / U;
      const scalar_t* key_rows = key_ptr + bu * K * N;
      const scalar_t* value_rows = value_ptr + bu * V * N;
      const acc_t* lse = stats_ptr + bu * K;
      const acc_t* dl = d_lam_ptr + b * K * V;
      scalar_t* d_key_rows = d_key_ptr + bu * K * N;
      scalar_t* d_value_rows = d_value_ptr + bu * V * N;
      for (int64_t i = 0; i < V * N; ++i) value_row[i] = static_cast<acc_t>(value_rows[i]);
      for (int64_t k = 0; k < K; ++k) {
        // σ, dσ = Σ_v dλc[k,v] · values[v], and dkeys = σ · (dσ − Σ_m σ·dσ) for row k.
        acc_t* sig = sigma.data() + k * N;
        for (int64_t m = 0; m < N; ++m)
          sig[m] = softmax_weight(static_cast<acc_t>(key_rows[k * N + m]), lse[k]);
        std::fill(d_sigma.begin(), d_sigma.end(), acc_t(0));
        for (int64_t v = 0; v < V; ++v) {
          const acc_t w = dl[k * V + v];
          const acc_t* vals = value_row.data() + v * N;
#pragma omp simd
          for (int64_t m = 0; m < N; ++m) d_sigma[m] += w * vals[m];
        }
        acc_t row_dot = 0;
#pragma omp simd reduction(+ : row_dot)
        for (int64_t m = 0; m < N; ++m) row_dot += sig[m] * d_sigma[m];
        for (int64_t m = 0; m < N; ++m)
          d_key_rows[k * N + m] = static_cast<scalar_t>(softmax_grad(sig[m], d_sigma[m], row_dot));
      }
      // dvalues[v] = Σ_k σ[k] · dλc[k,v]
      for (int64_t v = 0; v < V; ++v) {
        std::fill(d_value_row.begin(), d_value_row.end(), acc_t(0));
        for (int64_t k = 0; k < K; ++k) {
          const acc_t w = dl[k * V + v];
          const acc_t* sig = sigma.data() + k * N;
#pragma omp simd
          for (int64_t m = 0; m < N; ++m) d_value_row[m] += sig[m] * w;
        }
        for (int64_t m = 0; m < N; ++m)
          d_value_rows[v * N + m] = static_cast<scalar_t>(d_value_row[m]);
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
  const ContentBackwardInputs in =
      prepare_content_backward(d_lam_in, keys_in, values_in, stats_in);
  const at::Tensor &d_lam = in.d_lam, &keys = in.keys, &values = in.values, &stats = in.stats;
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
