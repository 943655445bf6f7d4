// CPU implementations of the lambda ops: argument checks, output allocation, and the call into
// the kernels of the active instruction-set level (isa_dispatch.cpp). Registered under the CPU
// dispatch key of the schemas in csrc/ops.cpp.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <limits>

#include "../checks.h"
#include "isa.h"
#include "positional_method.h"

namespace lambda_kernels {
namespace {

// Whether this positional call runs by the spectral method (positional_method.h).
bool spectral(const cpu::CpuKernels& kernels, const at::Tensor& q, const at::Tensor& values,
              const at::Tensor& pos_table, bool backward) {
  const cpu::PositionalSizes sizes{q.size(0), q.size(1), q.size(2), values.size(1),
                                   values.size(2), q.size(3), q.size(4), pos_table.size(0),
                                   pos_table.size(1)};
  return cpu::use_spectral(sizes, backward,
                           q.scalar_type() == at::kBFloat16 ? kernels.bf16_direct_speed : 1.0);
}

std::tuple<at::Tensor, at::Tensor> content_lambda_cpu(const at::Tensor& keys_in,
                                                      const at::Tensor& values_in) {
  check_content_inputs(keys_in, values_in);
  const at::Tensor keys = keys_in.contiguous();
  const at::Tensor values = values_in.contiguous();
  const int64_t B = keys.size(0), U = keys.size(1), K = keys.size(2), V = values.size(2);
  const auto acc_dtype = accumulation_dtype(keys.scalar_type());
  at::Tensor lse = at::empty({B, U, K}, keys.options().dtype(acc_dtype));
  at::Tensor partial = at::empty({B, U, K, V}, keys.options().dtype(acc_dtype));
  if (keys.numel() > 0 && values.numel() > 0) {
    cpu::active_kernels().content_lambda(keys, values, partial, lse);
  } else {
    partial.zero_();
    lse.fill_(-std::numeric_limits<double>::infinity());
  }
  // Fixed-order sum over u of the per-(b, u) partials.
  return {partial.sum(1).to(keys.scalar_type()), lse};
}

std::tuple<at::Tensor, at::Tensor> content_lambda_backward_cpu(const at::Tensor& d_lam_in,
                                                               const at::Tensor& keys_in,
                                                               const at::Tensor& values_in,
                                                               const at::Tensor& lse_in) {
  const ContentBackwardInputs in =
      prepare_content_backward(d_lam_in, keys_in, values_in, lse_in);
  at::Tensor d_keys = at::empty_like(in.keys);
  at::Tensor d_values = at::empty_like(in.values);
  if (in.keys.numel() > 0 && in.values.numel() > 0)
    cpu::active_kernels().content_lambda_backward(in.d_lam, in.keys, in.values, in.lse, d_keys,
                                                  d_values);
  return {d_keys, d_values};
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
  const cpu::CpuKernels& kernels = cpu::active_kernels();
  if (spectral(kernels, q, values, pos_table, false))
    kernels.spectral_lambda_output(q, values, pos_table, lam, y);
  else
    kernels.lambda_output(q, values, pos_table, lam, y);
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
  const cpu::CpuKernels& kernels = cpu::active_kernels();
  if (spectral(kernels, q, values, pos_table, true))
    kernels.spectral_lambda_output_backward(dy, q, values, pos_table, lam, d_q, d_values,
                                            d_pos_table, d_lam);
  else
    kernels.lambda_output_backward(dy, q, values, pos_table, lam, d_q, d_values, d_pos_table,
                                   d_lam);
  return {d_q, d_values, d_pos_table, d_lam};
}

}  // namespace

TORCH_LIBRARY_IMPL(lambda_kernels, CPU, m) {
  m.impl("content_lambda", &content_lambda_cpu);
  m.impl("content_lambda_backward", &content_lambda_backward_cpu);
  m.impl("lambda_output", &lambda_output_cpu);
  m.impl("lambda_output_backward", &lambda_output_backward_cpu);
}

}  // namespace lambda_kernels
