// Argument checks shared by every C++ implementation (CPU and CUDA) of the lambda ops.
// The Python layer validates first with friendlier messages; these keep direct calls of
// torch.ops.lambda_kernels.* from reading out of bounds.
#pragma once

#include <ATen/ATen.h>

namespace lambda_kernels {

inline void check_float_tensor(const at::Tensor& t, const char* name, int64_t ndim) {
  TORCH_CHECK(t.dim() == ndim, name, " must have ", ndim, " dimensions, got shape ", t.sizes());
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), name, " must be a floating tensor, got ",
              t.scalar_type());
}

inline void check_same(const at::Tensor& a, const char* a_name, const at::Tensor& b,
                       const char* b_name) {
  TORCH_CHECK(a.device() == b.device(), a_name, " and ", b_name,
              " must be on the same device, got ", a.device(), " and ", b.device());
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), a_name, " and ", b_name,
              " must have the same dtype, got ", a.scalar_type(), " and ", b.scalar_type());
}

// keys (B, u, k, H, W), values (B, u, v, H, W)
inline void check_content_inputs(const at::Tensor& keys, const at::Tensor& values) {
  check_float_tensor(keys, "keys", 5);
  check_float_tensor(values, "values", 5);
  check_same(keys, "keys", values, "values");
  TORCH_CHECK(keys.size(0) == values.size(0) && keys.size(1) == values.size(1) &&
                  keys.size(3) == values.size(3) && keys.size(4) == values.size(4),
              "keys (B, u, k, H, W) and values (B, u, v, H, W) disagree: ", keys.sizes(), " vs ",
              values.sizes());
}

// lse (B, u, k): log-sum-exp of each softmax row, in the accumulation dtype.
inline void check_lse(const at::Tensor& lse, const at::Tensor& keys) {
  TORCH_CHECK(lse.dim() == 3 && lse.size(0) == keys.size(0) &&
                  lse.size(1) == keys.size(1) && lse.size(2) == keys.size(2),
              "lse must have shape (B, u, k) = ", keys.sizes().slice(0, 3), ", got ",
              lse.sizes());
  TORCH_CHECK(lse.device() == keys.device(), "lse must be on ", keys.device());
  TORCH_CHECK(lse.scalar_type() ==
                  (keys.scalar_type() == at::kDouble ? at::kDouble : at::kFloat),
              "lse must be float64 for float64 keys and float32 otherwise, got ",
              lse.scalar_type());
}

// lam (B, k, v): the content lambda plus bias.
inline void check_lam(const at::Tensor& lam, const char* name, int64_t batch, int64_t dim_k,
                      int64_t dim_v, const at::Tensor& like) {
  check_float_tensor(lam, name, 3);
  check_same(lam, name, like, "values");
  TORCH_CHECK(lam.size(0) == batch && lam.size(1) == dim_k && lam.size(2) == dim_v, name,
              " must have shape (B, k, v) = (", batch, ", ", dim_k, ", ", dim_v, "), got ",
              lam.sizes());
}

// q (B, h, k, H, W), values (B, u, v, H, W), pos_table (Rh, Rw, k, u) with odd Rh, Rw,
// lam (B, k, v).
inline void check_output_inputs(const at::Tensor& q, const at::Tensor& values,
                                const at::Tensor& pos_table, const at::Tensor& lam) {
  check_float_tensor(q, "q", 5);
  check_float_tensor(values, "values", 5);
  check_float_tensor(pos_table, "pos_table", 4);
  check_same(q, "q", values, "values");
  check_same(pos_table, "pos_table", values, "values");
  TORCH_CHECK(q.size(0) == values.size(0) && q.size(3) == values.size(3) &&
                  q.size(4) == values.size(4),
              "q (B, h, k, H, W) and values (B, u, v, H, W) disagree: ", q.sizes(), " vs ",
              values.sizes());
  TORCH_CHECK(pos_table.size(0) % 2 == 1 && pos_table.size(1) % 2 == 1 &&
                  pos_table.size(2) == q.size(2) && pos_table.size(3) == values.size(1),
              "pos_table must have shape (Rh, Rw, k, u) with odd Rh, Rw, k = ", q.size(2),
              ", u = ", values.size(1), "; got ", pos_table.sizes());
  check_lam(lam, "lam", q.size(0), q.size(2), values.size(2), values);
}

inline void check_output_grad(const at::Tensor& dy, const at::Tensor& q,
                              const at::Tensor& values) {
  check_float_tensor(dy, "dy", 5);
  check_same(dy, "dy", values, "values");
  TORCH_CHECK(dy.size(0) == q.size(0) && dy.size(1) == q.size(1) &&
                  dy.size(2) == values.size(2) && dy.size(3) == q.size(3) &&
                  dy.size(4) == q.size(4),
              "dy must have shape (B, h, v, H, W) = (", q.size(0), ", ", q.size(1), ", ",
              values.size(2), ", ", q.size(3), ", ", q.size(4), "), got ", dy.sizes());
}

// The checked, contiguous inputs of content_lambda_backward, d_lam in the accumulation dtype:
// the boundary every implementation starts from.
struct ContentBackwardInputs {
  at::Tensor d_lam, keys, values, lse;
};

inline ContentBackwardInputs prepare_content_backward(const at::Tensor& d_lam,
                                                      const at::Tensor& keys,
                                                      const at::Tensor& values,
                                                      const at::Tensor& lse) {
  check_content_inputs(keys, values);
  check_lse(lse, keys);
  check_lam(d_lam, "d_lam_c", keys.size(0), keys.size(2), values.size(2), values);
  return {d_lam.to(lse.scalar_type()).contiguous(), keys.contiguous(), values.contiguous(),
          lse.contiguous()};
}

// The accumulation dtype of every kernel (and of lse, d_lam): float64 for float64 inputs,
// float32 for everything else.
inline at::ScalarType accumulation_dtype(at::ScalarType input) {
  return input == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace lambda_kernels
