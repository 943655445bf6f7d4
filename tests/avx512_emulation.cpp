// The avx512 and avx512_bf16 levels' kernels (csrc/cpu/isa_avx512.cpp, isa_avx512_bf16.cpp:
// kernels.inc with each level's tile) compiled for a CPU without AVX-512: the translation unit
// has no AVX-512 target, the 64-byte vector code is lowered by the compiler, and the AVX-512
// intrinsics the kernels call run their models in tests/avx512_emulation.h. fp32 and bf16
// only (fp64 and fp16 run the same templates as fp32, through the same conversions as bf16).
//
// Built and run by tests/test_avx512_emulation.py (load_inline, csrc/ and tests/ on the include
// path) where this CPU cannot run a level: every op by both positional methods against the
// float64 reference.
#include <torch/extension.h>

#include <string>

#include "cpu/kernel_prelude.h"
#include "avx512_emulation.h"
#include "emulated_kernel_calls.h"

#define LK_DISPATCH_FLOATING(dtype, name, ...)                              \
  AT_DISPATCH_SWITCH(dtype, name, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__) \
                                      AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))
// As isa_avx512.cpp (the tile: 24 accumulators of 32 zmm registers); no register holds 64 bytes
// on this target, so the tiles' register pins become memory operands.
#define LK_VECTOR_BYTES 64
#define LK_TILE_ROWS 4
#define LK_TILE_COLS 6
#define LK_VECTOR_REGISTER(v) "+m"(v)
#define LK_ISA_NAME "avx512-emulated"
namespace lambda_kernels {
namespace cpu {
namespace avx512_emulated {
#include "cpu/kernels.inc"
}  // namespace avx512_emulated
}  // namespace cpu
}  // namespace lambda_kernels

// As isa_avx512_bf16.cpp: the same, with the bf16 pair micro-kernel (tile_bf16.h).
#define LK_DISPATCH_FLOATING(dtype, name, ...)                              \
  AT_DISPATCH_SWITCH(dtype, name, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__) \
                                      AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))
#undef LK_ISA_NAME
#define LK_ISA_NAME "avx512_bf16-emulated"
#define LK_BF16_PAIRS 1
namespace lambda_kernels {
namespace cpu {
namespace avx512_bf16_emulated {
#include "cpu/kernels.inc"
}  // namespace avx512_bf16_emulated
}  // namespace cpu
}  // namespace lambda_kernels

namespace {

const lambda_kernels::cpu::CpuKernels& kernels_of(const std::string& level) {
  if (level == "avx512") return lambda_kernels::cpu::avx512_emulated::kKernels;
  TORCH_CHECK(level == "avx512_bf16", "level must be avx512 or avx512_bf16, got ", level);
  return lambda_kernels::cpu::avx512_bf16_emulated::kKernels;
}

}  // namespace

std::vector<at::Tensor> emu_content_lambda(std::string level, at::Tensor keys, at::Tensor values) {
  return emulated_calls::content_lambda(kernels_of(level), keys, values);
}

std::vector<at::Tensor> emu_content_lambda_backward(std::string level, at::Tensor d_lam,
                                                    at::Tensor keys, at::Tensor values,
                                                    at::Tensor stats) {
  return emulated_calls::content_lambda_backward(kernels_of(level), d_lam, keys, values, stats);
}

at::Tensor emu_lambda_output(std::string level, bool spectral, at::Tensor q, at::Tensor values,
                             at::Tensor pos_table, at::Tensor lam) {
  return emulated_calls::lambda_output(kernels_of(level), spectral, q, values, pos_table, lam);
}

std::vector<at::Tensor> emu_lambda_output_backward(std::string level, bool spectral, at::Tensor dy,
                                                   at::Tensor q, at::Tensor values,
                                                   at::Tensor pos_table, at::Tensor lam) {
  return emulated_calls::lambda_output_backward(kernels_of(level), spectral, dy, q, values,
                                                pos_table, lam);
}

// The models alone, one 512-bit vector per call (tests of the models against torch's own
// arithmetic and the documented shuffles), called by their intrinsic names as the kernels do.
namespace {
template <typename V>
V vector_of(const at::Tensor& t) {
  TORCH_CHECK(t.is_contiguous() && t.nbytes() == sizeof(V), "one ", sizeof(V), "-byte vector");
  V v;
  std::memcpy(&v, t.data_ptr(), sizeof(V));
  return v;
}
template <typename V>
at::Tensor tensor_of(const V& v, at::ScalarType dtype) {
  at::Tensor t = at::empty({int64_t(sizeof(V) / c10::elementSize(dtype))}, at::dtype(dtype));
  std::memcpy(t.data_ptr(), &v, sizeof(V));
  return t;
}
}  // namespace

at::Tensor emu_dpbf16_ps(at::Tensor acc, at::Tensor a, at::Tensor b) {
  return tensor_of(_mm512_dpbf16_ps(vector_of<__m512>(acc), vector_of<__m512bh>(a),
                                    vector_of<__m512bh>(b)), at::kFloat);
}

at::Tensor emu_cvtneps_pbh(at::Tensor x) {
  return tensor_of(_mm512_cvtneps_pbh(vector_of<__m512>(x)), at::kBFloat16);
}

at::Tensor emu_permutex2var_epi16(at::Tensor a, at::Tensor index, at::Tensor b) {
  return tensor_of(_mm512_permutex2var_epi16(vector_of<__m512i>(a), vector_of<__m512i>(index),
                                             vector_of<__m512i>(b)), at::kShort);
}

at::Tensor emu_unpacklo_epi16(at::Tensor a, at::Tensor b) {
  return tensor_of(_mm512_unpacklo_epi16(vector_of<__m512i>(a), vector_of<__m512i>(b)),
                   at::kShort);
}

// Lanes where `mask` is set loaded from `src` (the rest zero), then stored over `dst` where it
// is set: the masked 16-bit load and store the kernels' row tails use.
at::Tensor emu_masked_copy_epi16(at::Tensor src, at::Tensor dst, int64_t mask) {
  TORCH_CHECK(src.numel() == 32 && dst.numel() == 32 && src.is_contiguous() && dst.is_contiguous());
  at::Tensor out = dst.clone();
  const __m512i v = _mm512_maskz_loadu_epi16(__mmask32(mask), src.data_ptr());
  _mm512_mask_storeu_epi16(out.data_ptr(), __mmask32(mask), v);
  return at::stack({tensor_of(v, at::kShort), out});  // (what was loaded, dst after the store)
}
