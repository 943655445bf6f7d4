// The CPU kernels compiled for x86-64 with AVX-512 F/BW/VL/DQ + FMA + AVX512_BF16 + AMX-TILE +
// AMX-BF16 (Sapphire Rapids and later Xeons): bf16 inputs run the AMX micro-kernel (tile_amx.h:
// TDPBF16PS tiles where one operand is a broadcast, the vdpbf16ps pair kernel of tile_bf16.h
// elsewhere); fp32, fp64 and fp16 inputs run the same code as the avx512 level. Used only where
// the OS granted the process the tile data state (isa_dispatch.cpp).
#include "kernel_prelude.h"

#if defined(__x86_64__) || defined(_M_X64)

#define LK_VECTOR_BYTES 64
#define LK_TILE_ROWS 4
#define LK_TILE_COLS 6
#define LK_VECTOR_REGISTER(v) "+v"(v)  // inline-asm class of a vector register
#define LK_ISA_NAME "amx"
#define LK_BF16_PAIRS 1
#define LK_AMX 1

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,amx-tile,amx-bf16"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,amx-tile,amx-bf16")
#endif

namespace lambda_kernels {
namespace cpu {
namespace amx {
#include "kernels.inc"
}  // namespace amx
const CpuKernels& kernels_amx() { return amx::kKernels; }
}  // namespace cpu
}  // namespace lambda_kernels

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#endif  // x86-64
