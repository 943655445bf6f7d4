// The CPU kernels compiled for baseline x86-64 (SSE2, 16 × 128-bit registers, no FMA): the
// level every x86-64 CPU runs.
#include "kernel_prelude.h"

#if defined(__x86_64__) || defined(_M_X64)

// Register tile 4 × 2: 8 accumulators + 2 operand vectors of B + 1 of A + 1 for the product
// (no FMA: multiply, then add) = 12 of the 16 xmm registers.
#define LK_VECTOR_BYTES 16
#define LK_TILE_ROWS 4
#define LK_TILE_COLS 2
#define LK_VECTOR_REGISTER(v) "+x"(v)  // inline-asm class of a vector register
#define LK_ISA_NAME "baseline"

namespace lambda_kernels {
namespace cpu {
namespace baseline {
#include "kernels.inc"
}  // namespace baseline
const CpuKernels& kernels_baseline() { return baseline::kKernels; }
}  // namespace cpu
}  // namespace lambda_kernels

#endif  // x86-64
