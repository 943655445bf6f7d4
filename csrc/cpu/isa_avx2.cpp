// The CPU kernels compiled for x86-64 with AVX2 + FMA (16 × 256-bit registers).
#include "kernel_prelude.h"

#if defined(__x86_64__) || defined(_M_X64)

// Register tile 4 × 3: 12 accumulators + 3 operand vectors of B + 1 of A = 16 ymm registers,
// all of them; per innermost step 12 FMAs against 7 loads (2 FMA and 2-3 loads per cycle).
#define LK_VECTOR_BYTES 32
#define LK_TILE_ROWS 4
#define LK_TILE_COLS 3
#define LK_VECTOR_REGISTER(v) "+x"(v)  // inline-asm class of a vector register
#define LK_ISA_NAME "avx2"

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif

namespace lambda_kernels {
namespace cpu {
namespace avx2 {
#include "kernels.inc"
}  // namespace avx2
const CpuKernels& kernels_avx2() { return avx2::kKernels; }
}  // namespace cpu
}  // namespace lambda_kernels

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#endif  // x86-64
