// Content lambda on CUDA, fused: the softmax over positions σ is never stored.
//
//   lse[b,u,k]  = log Σ_m exp(keys[b,u,k,m])                    (returned, saved for backward)
//   σ[b,u,k,m]  = exp(keys[b,u,k,m] − lse[b,u,k])                (recomputed on the fly)
//   λc[b,k,v]   = Σ_u Σ_m σ[b,u,k,m] · values[b,u,v,m]          (returned in the input dtype)
// Backward, given dλc (B, k, v):
//   dσ[b,u,k,m]      = Σ_v dλc[b,k,v] · values[b,u,v,m]
//   rowdot[b,u,k]    = Σ_m σ[b,u,k,m] · dσ[b,u,k,m]
//   dkeys[b,u,k,m]   = σ · (dσ − rowdot)
//   dvalues[b,u,v,m] = Σ_k σ[b,u,k,m] · dλc[b,k,v]
//
// Same semantics as csrc/cpu/content_lambda_kernels.inc. Accumulation in at::opmath_type (float for
// half/bfloat16/float, double for double); lse in float32 (float64 for double inputs).
// Every reduction is deterministic: block-level partials (SoftmaxRow merges, partial sums over
// fixed position chunks) combined in a fixed order; no atomics. No choice of association here:
// that is the positional part's (lambda_output.cu says why the GPU always takes the logits).
#include <torch/library.h>

#include "launch_helpers.cuh"
#include "content_lambda_kernels.cuh"

namespace lambda_kernels {
namespace cuda {
namespace {

std::tuple<at::Tensor, at::Tensor> content_lambda_cuda(const at::Tensor& keys_in,
                                                       const at::Tensor& values_in) {
  check_content_inputs(keys_in, values_in);
  TORCH_CHECK(keys_in.is_cuda(), "content_lambda (CUDA): keys must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(keys_in.device());
  const at::Tensor keys = keys_in.contiguous();
  const at::Tensor values = values_in.contiguous();
  const int64_t B = keys.size(0), U = keys.size(1), K = keys.size(2), V = values.size(2);
  const int64_t N = keys.size(3) * keys.size(4);
  const auto acc_dtype = accumulation_dtype(keys.scalar_type());
  at::Tensor lse = at::empty({B, U, K}, keys.options().dtype(acc_dtype));
  at::Tensor lam_c = at::empty({B, K, V}, keys.options());
  if (B * K * V == 0 && B * U * K == 0) return {lam_c, lse};
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, keys.scalar_type(), "content_lambda_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        auto stream = at::cuda::getCurrentCUDAStream();
        const int64_t rows = B * U * K;
        if (rows > 0) {
          softmax_lse_kernel<scalar_t>
              <<<grid_1d(rows, "softmax_lse_kernel"), kThreads, 0, stream>>>(
                  keys.data_ptr<scalar_t>(), lse.data_ptr<acc_t>(), N);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
        // λc[b,k,v] = Σ_{u,m} σ[b,u,k,m]·values[b,u,v,m]: A = σ (B,U,K,N), Bm = values.
        launch_gram<scalar_t, true>(keys, values, &lse, lam_c, B, U, K, V, N);
      });
  return {lam_c, lse};
}

std::tuple<at::Tensor, at::Tensor> content_lambda_backward_cuda(const at::Tensor& d_lam_in,
                                                                const at::Tensor& keys_in,
                                                                const at::Tensor& values_in,
                                                                const at::Tensor& lse_in) {
  TORCH_CHECK(keys_in.is_cuda(), "content_lambda_backward (CUDA): keys must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(keys_in.device());
  const ContentBackwardInputs in =
      prepare_content_backward(d_lam_in, keys_in, values_in, lse_in);
  const at::Tensor &d_lam = in.d_lam, &keys = in.keys, &values = in.values, &lse = in.lse;
  at::Tensor d_keys = at::empty_like(keys, at::MemoryFormat::Contiguous);
  at::Tensor d_values = at::empty_like(values, at::MemoryFormat::Contiguous);
  const int64_t B = keys.size(0), U = keys.size(1), K = keys.size(2), V = values.size(2);
  const int64_t N = keys.size(3) * keys.size(4);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, keys.scalar_type(), "content_lambda_backward_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        auto stream = at::cuda::getCurrentCUDAStream();
        const int64_t rows = B * U * K;
        if (rows > 0 && N > 0) {
          const RowdotPlan plan = rowdot_plan(rows, N);
          const int64_t chunks = plan.chunks, chunk_len = plan.chunk_len;
          at::Tensor partial = at::empty({rows, chunks}, lse.options());
          at::Tensor rowdot = at::empty({rows}, lse.options());
          rowdot_partial_kernel<scalar_t>
              <<<grid_1d(rows * chunks, "rowdot_partial_kernel"), kThreads, 0, stream>>>(
                  keys.data_ptr<scalar_t>(), values.data_ptr<scalar_t>(),
                  lse.data_ptr<acc_t>(), d_lam.data_ptr<acc_t>(), partial.data_ptr<acc_t>(), U,
                  K, V, N, chunk_len, chunks);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
          launch_partial_sum<acc_t, acc_t>(partial, rowdot, rows, chunks, 1, stream);
          const int64_t total = rows * N;
          d_keys_kernel<scalar_t>
              <<<grid_1d(ceil_div(total, kThreads), "d_keys_kernel"), kThreads, 0, stream>>>(
                  keys.data_ptr<scalar_t>(), values.data_ptr<scalar_t>(),
                  lse.data_ptr<acc_t>(), d_lam.data_ptr<acc_t>(), rowdot.data_ptr<acc_t>(),
                  d_keys.data_ptr<scalar_t>(), U, K, V, N, total);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
        const int64_t total_v = B * U * V * N;
        if (total_v > 0) {
          d_values_content_kernel<scalar_t>
              <<<grid_1d(ceil_div(total_v, kThreads), "d_values_content_kernel"), kThreads, 0,
                 stream>>>(keys.data_ptr<scalar_t>(), lse.data_ptr<acc_t>(),
                           d_lam.data_ptr<acc_t>(), d_values.data_ptr<scalar_t>(), U, K, V, N,
                           total_v);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
      });
  return {d_keys, d_values};
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(lambda_kernels, CUDA, m) {
  m.impl("content_lambda", &cuda::content_lambda_cuda);
  m.impl("content_lambda_backward", &cuda::content_lambda_backward_cuda);
}

}  // namespace lambda_kernels
