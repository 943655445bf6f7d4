// The CPU kernels compiled for aarch64 with ASIMD / NEON (32 × 128-bit registers, FMA): the
// level every aarch64 CPU runs (Graviton, Ampere, Apple silicon).
#include "kernel_prelude.h"

#if defined(__aarch64__)

// Register tile 4 × 5: 20 accumulators + 4 operand vectors of A + 5 of B (scalars used by
// lane in FMLA) = 29 of the 32 vector registers; per innermost step 20 FMAs against 9 loads.
// (4 × 6 needs 34 and spills accumulators to the stack inside the loop.)
#define LK_VECTOR_BYTES 16
#define LK_TILE_ROWS 4
#define LK_TILE_COLS 5
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
