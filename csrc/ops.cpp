// Schemas of the lambda ops (torch.ops.lambda_kernels.*). Implementations register per dispatch
// key in csrc/cpu/ and csrc/cuda/; fake (meta) implementations and the autograd formulas live in
// lambda_kernels/_op_registrations.py.
//
//   content_lambda(keys, values) -> (lam_c (B,k,v), lse (B,u,k) log-sum-exp of softmax rows)
//   content_lambda_backward(d_lam_c, keys, values, lse) -> (d_keys, d_values)
//   lambda_output(q, values, pos_table, lam) -> y (B,h,v,H,W)
//   lambda_output_backward(dy, q, values, pos_table, lam) -> (d_q, d_values, d_pos_table, d_lam)
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(lambda_kernels, m) {
  m.def("content_lambda(Tensor keys, Tensor values) -> (Tensor, Tensor)");
  m.def(
      "content_lambda_backward(Tensor d_lam_c, Tensor keys, Tensor values, Tensor lse) -> "
      "(Tensor, Tensor)");
  m.def("lambda_output(Tensor q, Tensor values, Tensor pos_table, Tensor lam) -> Tensor");
  m.def(
      "lambda_output_backward(Tensor dy, Tensor q, Tensor values, Tensor pos_table, Tensor lam) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
}

// An importable (empty) Python module, so `import lambda_kernels._C` loads the library and
// runs the registrations above.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
