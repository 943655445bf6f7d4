// The CPU op wrappers' allocation (csrc/cpu/ops_cpu.cpp) around one level's kernel table, for
// the emulations that compile a level's kernels.inc into a test extension
// (tests/amx_emulation.cpp, tests/avx512_emulation.cpp). Inputs as the ops receive them; the
// content lambda's partial sums over positions reduced as the op does. Included once per
// emulation (it defines the allocator's functions).
#pragma once

#include <vector>

#include "checks.h"  // accumulation_dtype: the kernels' accumulation type, as the ops use it
#include "cpu/kernel_prelude.h"

// The kernels' scratch allocator (csrc/cpu/buffer_cache.cpp, part of the extension, which also
// registers ops) as plain allocations: an emulation is its own library.
namespace lambda_kernels {
namespace cpu {
at::Tensor cached_empty(at::IntArrayRef shape, const at::TensorOptions& options) {
  return at::empty(shape, options);
}
at::Tensor cached_zeros(at::IntArrayRef shape, const at::TensorOptions& options) {
  return at::zeros(shape, options);
}
size_t cached_bytes() { return 0; }
}  // namespace cpu
}  // namespace lambda_kernels

namespace emulated_calls {

using lambda_kernels::cpu::CpuKernels;

inline std::vector<at::Tensor> content_lambda(const CpuKernels& kernels, at::Tensor keys,
                                              at::Tensor values) {
  keys = keys.contiguous();
  values = values.contiguous();
  const auto acc = keys.options().dtype(lambda_kernels::accumulation_dtype(keys.scalar_type()));
  at::Tensor stats = at::empty({keys.size(0), keys.size(1), keys.size(2)}, acc);
  at::Tensor partial = at::empty({keys.size(0), keys.size(1), keys.size(2), values.size(2)}, acc);
  kernels.content_lambda(keys, values, partial, stats);
  return {partial.sum(1).to(keys.scalar_type()), stats};
}

inline std::vector<at::Tensor> content_lambda_backward(const CpuKernels& kernels, at::Tensor d_lam,
                                                       at::Tensor keys, at::Tensor values,
                                                       at::Tensor stats) {
  keys = keys.contiguous();
  values = values.contiguous();
  at::Tensor d_keys = at::empty_like(keys), d_values = at::empty_like(values);
  kernels.content_lambda_backward(d_lam.to(stats.scalar_type()).contiguous(), keys, values,
                                  stats.contiguous(), d_keys, d_values);
  return {d_keys, d_values};
}

// spectral: the spectral method's kernels, else the direct ones.
inline at::Tensor lambda_output(const CpuKernels& kernels, bool spectral, at::Tensor q,
                                at::Tensor values, at::Tensor pos_table, at::Tensor lam) {
  q = q.contiguous();
  at::Tensor y = at::empty({q.size(0), q.size(1), values.size(2), q.size(3), q.size(4)},
                           q.options());
  (spectral ? kernels.spectral_lambda_output : kernels.lambda_output)(
      q, values.contiguous(), pos_table.contiguous(), lam.contiguous(), y);
  return y;
}

inline std::vector<at::Tensor> lambda_output_backward(const CpuKernels& kernels, bool spectral,
                                                      at::Tensor dy, at::Tensor q,
                                                      at::Tensor values, at::Tensor pos_table,
                                                      at::Tensor lam) {
  q = q.contiguous();
  values = values.contiguous();
  pos_table = pos_table.contiguous();
  lam = lam.contiguous();
  at::Tensor d_q = at::empty_like(q), d_values = at::empty_like(values);
  at::Tensor d_pos_table = at::empty_like(pos_table), d_lam = at::empty_like(lam);
  (spectral ? kernels.spectral_lambda_output_backward : kernels.lambda_output_backward)(
      dy.contiguous(), q, values, pos_table, lam, d_q, d_values, d_pos_table, d_lam);
  return {d_q, d_values, d_pos_table, d_lam};
}

}  // namespace emulated_calls
