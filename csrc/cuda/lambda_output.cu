// Lambda output on CUDA (forward and backward), fused: λp (B·N·k·v), N·N maps and the logits
// s (B·h·N·r²) are never allocated.
//
// Inputs: q (B,h,k,H,W), values (B,u,v,H,W), E = pos_table (Rh,Rw,k,u) with odd Rh, Rw, entry
// (a,c) = offset o = (a − Rh/2, c − Rw/2), zero outside the image; Λ = lam (B,k,v). N = H·W.
//
//   s[b,h,n,o,u]  = Σ_k q[b,h,k,n] · E[o,k,u]
//   y[b,h,v,n]    = Σ_k q[b,h,k,n] · Λ[b,k,v] + Σ_{o,u} s[b,h,n,o,u] · values[b,u,v,n+o]
// Backward, given dy (B,h,v,H,W):
//   g[b,h,n,o,u]       = Σ_v dy[b,h,v,n] · values[b,u,v,n+o]
//   dq[b,h,k,n]        = Σ_v dy[b,h,v,n] · Λ[b,k,v] + Σ_{o,u} E[o,k,u] · g[b,h,n,o,u]
//   dvalues[b,u,v,m]   = Σ_{h,o} s[b,h,m−o,o,u] · dy[b,h,v,m−o]        (positional part only)
//   d_pos_table[o,k,u] = Σ_{b,h,n} q[b,h,k,n] · g[b,h,n,o,u]
//   dΛ[b,k,v]          = Σ_{h,n} q[b,h,k,n] · dy[b,h,v,n]
//
// Association: always the logits (s, g above), while the CPU kernels pick per call whichever of
// logits and λp costs fewer FLOPs (lambda_kernels/cost.py). Here a λp tile would be a k×v
// accumulator per position, beyond a block's registers, and λp-sized scratch is forbidden by the
// memory rule; and these kernels are bound by gathers and issue, not FLOPs, so the FLOP count
// would not pick the faster one (docs/design.md, "GPU formulation").
//
// Kernel shape (y, dq, dvalues): y and dq are one kernel (query_tile_kernel, roles of (E, k) and
// (values, v) exchanged); one block = one (b, h or u) × a tile of kTQ consecutive
// positions × a tile of kTD output channels. The offsets that are inside the image for at least
// one position of the tile are walked in steps of kOC; per step, the block first computes the
// kOC × kTQ coefficients (s or g) into shared memory, one per thread, then every thread
// accumulates its kDR output channels (offset_step, the skeleton both kernels share). Any window
// size works (the loop is over the window's intersection with the image, never over the raw
// table), shared memory is a fixed 1-2 KiB.
// Global loads are coalesced along positions (consecutive threads = consecutive positions) or
// warp-uniform broadcasts (E, Λ), so nothing else is staged in shared memory.
//
// d_pos_table and dΛ are deterministic: per-block partial sums on a grid fixed by the shapes,
// then partial_sum_kernel adds the partials in a fixed order. No atomics anywhere.
#include <torch/library.h>

#include "launch_helpers.cuh"
#include "lambda_output_kernels.cuh"

namespace lambda_kernels {
namespace cuda {
namespace {

struct Prepared {
  at::Tensor q, values, pos_table, lam;
  int64_t B, Hh, K, U, V;
  Geometry geo;
};

Prepared prepare(const at::Tensor& q, const at::Tensor& values, const at::Tensor& pos_table,
                 const at::Tensor& lam) {
  Prepared p;
  p.q = q.contiguous();
  p.values = values.contiguous();
  p.pos_table = pos_table.contiguous();
  p.lam = lam.to(accumulation_dtype(lam.scalar_type())).contiguous();  // Λ in the accumulation type
  p.B = q.size(0);
  p.Hh = q.size(1);
  p.K = q.size(2);
  p.U = values.size(1);
  p.V = values.size(2);
  p.geo.H = q.size(3);
  p.geo.W = q.size(4);
  p.geo.N = p.geo.H * p.geo.W;
  p.geo.Rh = pos_table.size(0);
  p.geo.Rw = pos_table.size(1);
  return p;
}

at::Tensor lambda_output_cuda(const at::Tensor& q_in, const at::Tensor& values_in,
                              const at::Tensor& pos_table_in, const at::Tensor& lam_in) {
  check_output_inputs(q_in, values_in, pos_table_in, lam_in);
  TORCH_CHECK(q_in.is_cuda(), "lambda_output (CUDA): q must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(q_in.device());
  const Prepared p = prepare(q_in, values_in, pos_table_in, lam_in);
  at::Tensor y = at::empty({p.B, p.Hh, p.V, p.geo.H, p.geo.W}, p.q.options());
  const int64_t q_tiles = ceil_div(p.geo.N, kTQ), v_tiles = ceil_div(p.V, kTD);
  const int64_t blocks = p.B * p.Hh * q_tiles * v_tiles;
  if (blocks == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.q.scalar_type(),
                                  "lambda_output_cuda", [&] {
                                    using acc_t = at::opmath_type<scalar_t>;
                                    query_tile_kernel<scalar_t, /*kGradQ=*/false>
                                        <<<grid_1d(blocks, "query_tile_kernel (y)"), kThreads, 0,
                                           at::cuda::getCurrentCUDAStream()>>>(
                                            p.q.data_ptr<scalar_t>(),
                                            p.values.data_ptr<scalar_t>(),
                                            p.pos_table.data_ptr<scalar_t>(),
                                            p.lam.data_ptr<acc_t>(), y.data_ptr<scalar_t>(), p.Hh,
                                            p.K, p.U, p.V, p.geo, q_tiles, v_tiles);
                                    C10_CUDA_KERNEL_LAUNCH_CHECK();
                                  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lambda_output_backward_cuda(
    const at::Tensor& dy_in, const at::Tensor& q_in, const at::Tensor& values_in,
    const at::Tensor& pos_table_in, const at::Tensor& lam_in) {
  check_output_inputs(q_in, values_in, pos_table_in, lam_in);
  check_output_grad(dy_in, q_in, values_in);
  TORCH_CHECK(q_in.is_cuda(), "lambda_output_backward (CUDA): q must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(q_in.device());
  const Prepared p = prepare(q_in, values_in, pos_table_in, lam_in);
  const at::Tensor dy = dy_in.contiguous();
  const int64_t B = p.B, Hh = p.Hh, K = p.K, U = p.U, V = p.V, N = p.geo.N;
  const int64_t Rh = p.geo.Rh, Rw = p.geo.Rw;
  at::Tensor dq = at::empty_like(p.q, at::MemoryFormat::Contiguous);
  at::Tensor d_values = at::empty_like(p.values, at::MemoryFormat::Contiguous);
  at::Tensor d_pos_table = at::empty_like(p.pos_table, at::MemoryFormat::Contiguous);
  at::Tensor d_lam = at::empty({B, K, V}, lam_in.options());

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, p.q.scalar_type(), "lambda_output_backward_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        auto stream = at::cuda::getCurrentCUDAStream();
        const int64_t q_tiles = ceil_div(N, kTQ);

        // dq
        const int64_t k_tiles = ceil_div(K, kTD);
        const int64_t dq_blocks = B * Hh * q_tiles * k_tiles;
        if (dq_blocks > 0) {
          query_tile_kernel<scalar_t, /*kGradQ=*/true>
              <<<grid_1d(dq_blocks, "query_tile_kernel (dq)"), kThreads, 0, stream>>>(
              dy.data_ptr<scalar_t>(), p.values.data_ptr<scalar_t>(),
              p.pos_table.data_ptr<scalar_t>(), p.lam.data_ptr<acc_t>(), dq.data_ptr<scalar_t>(),
              Hh, K, U, V, p.geo, q_tiles, k_tiles);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }

        // dvalues (positional part)
        const int64_t v_tiles = ceil_div(V, kTD);
        const int64_t dv_blocks = B * U * q_tiles * v_tiles;
        if (dv_blocks > 0) {
          d_values_pos_kernel<scalar_t>
              <<<grid_1d(dv_blocks, "d_values_pos_kernel"), kThreads, 0, stream>>>(
                  dy.data_ptr<scalar_t>(), p.q.data_ptr<scalar_t>(),
                  p.pos_table.data_ptr<scalar_t>(), d_values.data_ptr<scalar_t>(), Hh, K, U, V,
                  p.geo, q_tiles, v_tiles);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }

        // d_pos_table: per-block partials on a grid fixed by the shapes, then a fixed-order sum.
        const int64_t table = Rh * Rw * K * U;
        if (table > 0) {
          const DPosTablePlan plan = d_pos_table_plan(B, Hh, N, Rh, Rw, U, K);
          const int64_t slices = plan.slices;
          at::Tensor partial = at::empty({slices, table}, p.lam.options());
          d_pos_table_partial_kernel<scalar_t>
              <<<grid_1d(plan.blocks, "d_pos_table_partial_kernel"), kThreads, 0, stream>>>(
                  dy.data_ptr<scalar_t>(), p.q.data_ptr<scalar_t>(),
                  p.values.data_ptr<scalar_t>(), partial.data_ptr<acc_t>(), B, Hh, K, U, V,
                  p.geo, plan.k_tiles, slices);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
          launch_partial_sum<acc_t, scalar_t>(partial, d_pos_table, 1, slices, table, stream);
        }

        // dΛ[b,k,v] = Σ_{h,n} q[b,h,k,n]·dy[b,h,v,n]
        launch_gram<scalar_t, false>(p.q, dy, nullptr, d_lam, B, Hh, K, V, N);
      });
  return {dq, d_values, d_pos_table, d_lam};
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(lambda_kernels, CUDA, m) {
  m.impl("lambda_output", &cuda::lambda_output_cuda);
  m.impl("lambda_output_backward", &cuda::lambda_output_backward_cuda);
}

}  // namespace lambda_kernels
