// The CPU kernels compiled for aarch64 with ASIMD / NEON (32 × 128-bit registers, FMA): the
// level every aarch64 CPU runs (Graviton, Ampere, Apple silicon).
#include "kernel_prelude.h"

#if defined(__aarch64__)

// Register tile 4 × 6: 24 accumulators + 6 operand vectors of B + 1 of A = 31 of the 32 vector
// registers; per innermost step 24 FMAs against 10 loads.
#define LK_VECTOR_BYTES 16
#define LK_TILE_ROWS 4
#define LK_TILE_COLS 6
#define LK_VECTOR_REGISTER(v) "+w"(v)  // inline-asm class of a vector register
#define LK_ISA_NAME "neon"

namespace lambda_kernels {
namespace cpu {
namespace neon {
#include "kernels.inc"
}  // namespace neon
const CpuKernels& kernels_neon() { return neon::kKernels; }
}  // namespace cpu
}  // namespace lambda_kernels

#endif  // aarch64
