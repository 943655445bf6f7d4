// Host helpers shared by the CUDA launchers of the lambda ops (csrc/cuda/*.cu): launch geometry
// (1-D grids, flattened block counts computed in int64 and checked against the CUDA limit before
// each launch) and the launchers of the deterministic reductions of block_reductions.cuh.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "../checks.h"
#include "block_reductions.cuh"

namespace lambda_kernels {
namespace cuda {

// 1-D grid of `blocks` blocks; the caller skips the launch when blocks == 0.
inline dim3 grid_1d(int64_t blocks, const char* kernel) {
  TORCH_CHECK(blocks >= 1 && blocks <= static_cast<int64_t>(std::numeric_limits<int32_t>::max()),
              "lambda_kernels CUDA: ", kernel, " needs ", blocks,
              " blocks, outside the CUDA grid limit [1, 2^31 - 1]; the inputs are too large");
  return dim3(static_cast<unsigned int>(blocks));
}

// out (outer, inner) = Σ_p partial (outer, parts, inner) in the order p = 0, 1, ...; both
// contiguous, allocated by the caller.
template <typename acc_t, typename out_t>
void launch_partial_sum(const at::Tensor& partial, at::Tensor& out, int64_t outer, int64_t parts,
                        int64_t inner, cudaStream_t stream) {
  if (outer * inner == 0) return;
  partial_sum_kernel<acc_t, out_t>
      <<<grid_1d(ceil_div(outer * inner, kThreads), "partial_sum_kernel"), kThreads, 0, stream>>>(
          partial.data_ptr<acc_t>(), out.data_ptr<out_t>(), outer, parts, inner);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Host side: out (batch, I, J) of dtype scalar_t (contiguous, allocated by the caller).
// A, Bm contiguous; lse (batch, G, I) of acc type when kSoftmax, else unused.
template <typename scalar_t, bool kSoftmax>
void launch_gram(const at::Tensor& A, const at::Tensor& Bm, const at::Tensor* lse,
                 at::Tensor& out, int64_t batch, int64_t G, int64_t I, int64_t J, int64_t N) {
  using acc_t = at::opmath_type<scalar_t>;
  if (batch == 0 || I == 0 || J == 0) return;  // out is empty
  const GramPlan plan = gram_plan(batch, I, J, N);
  const int64_t chunks = plan.chunks;
  at::Tensor partial =
      at::empty({batch, chunks, I, J}, A.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  auto stream = at::cuda::getCurrentCUDAStream();
  gram_partial_kernel<scalar_t, kSoftmax>
      <<<grid_1d(plan.blocks, "gram_partial_kernel"), kThreads, 0, stream>>>(
          A.data_ptr<scalar_t>(), Bm.data_ptr<scalar_t>(),
          kSoftmax ? lse->data_ptr<acc_t>() : nullptr, partial.data_ptr<acc_t>(), G, I, J, N,
          plan.chunk_len, chunks, plan.i_tiles, plan.j_tiles);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  launch_partial_sum<acc_t, scalar_t>(partial, out, batch, chunks, I * J, stream);
}

}  // namespace cuda
}  // namespace lambda_kernels
