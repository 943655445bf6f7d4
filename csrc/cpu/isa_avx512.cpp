// The CPU kernels compiled for x86-64 with AVX-512 F/BW/VL/DQ + FMA (32 × 512-bit registers).
#include "kernel_prelude.h"

#if defined(__x86_64__) || defined(_M_X64)

// Register tile 4 × 6: 24 accumulators + 6 operand vectors of B + 1 of A = 31 of the 32 zmm
// registers; per innermost step 24 FMAs against 10 loads. Four rows match the usual 4 heads.
#define LK_VECTOR_BYTES 64
#define LK_TILE_ROWS 4
#define LK_TILE_COLS 6
#define LK_VECTOR_REGISTER(v) "+v"(v)  // inline-asm class of a vector register
#define LK_ISA_NAME "avx512"

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")
#endif

namespace lambda_kernels {
namespace cpu {
namespace avx512 {
#include "kernels.inc"
}  // namespace avx512
const CpuKernels& kernels_avx512() { return avx512::kKernels; }
}  // namespace cpu
}  // namespace lambda_kernels

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#endif  // x86-64
