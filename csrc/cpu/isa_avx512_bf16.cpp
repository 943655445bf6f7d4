// The CPU kernels compiled for x86-64 with AVX-512 F/BW/VL/DQ + FMA + AVX512_BF16 (Cooper Lake,
// Sapphire Rapids and later Xeons, Zen 4 and later): bf16 inputs run the bf16 micro-kernel
// (tile_bf16.h: vdpbf16ps on pairs of bf16, fp32 accumulation); fp32, fp64 and fp16 inputs run
// the same code as the avx512 level (the tile of isa_avx512.cpp).
#include "kernel_prelude.h"

#if defined(__x86_64__) || defined(_M_X64)

#define LK_VECTOR_BYTES 64
#define LK_TILE_ROWS 4
#define LK_TILE_COLS 6
#define LK_VECTOR_REGISTER(v) "+v"(v)  // inline-asm class of a vector register
#define LK_ISA_NAME "avx512_bf16"
#define LK_BF16_PAIRS 1

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma")
#endif

namespace lambda_kernels {
namespace cpu {
namespace avx512_bf16 {
#include "kernels.inc"
}  // namespace avx512_bf16
const CpuKernels& kernels_avx512_bf16() { return avx512_bf16::kKernels; }
}  // namespace cpu
}  // namespace lambda_kernels

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#endif  // x86-64
