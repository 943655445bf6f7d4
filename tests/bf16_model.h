// The bf16 arithmetic rules of the x86 bf16 instructions (VDPBF16PS, VCVTNEPS2BF16, TDPBF16PS:
// Intel SDM), shared by the instruction models of the emulations (tests/avx512_emulation.h,
// tests/amx_emulation.cpp): bf16 denormal inputs read as zero, fp32 denormal results flushed to
// zero, round to nearest even whatever MXCSR says.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace bf16_model {

inline float float_of_bf16_daz(uint16_t bits) {
  if ((bits & 0x7f80u) == 0) bits &= 0x8000u;  // zero or denormal -> signed zero
  const uint32_t word = uint32_t(bits) << 16;
  float f;
  std::memcpy(&f, &word, sizeof(f));
  return f;
}

inline float flush_denormal(float f) {
  return std::fpclassify(f) == FP_SUBNORMAL ? std::copysign(0.0f, f) : f;
}

// VCVTNEPS2BF16: NaN stays a quiet NaN (sign and payload's top kept), a denormal becomes a
// signed zero, everything else rounds to nearest even.
inline uint16_t bf16_of_float_rne_daz(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  if (std::isnan(f)) return uint16_t((bits >> 16) | 0x40u);
  if (std::fpclassify(f) == FP_SUBNORMAL) return uint16_t((bits >> 16) & 0x8000u);
  return uint16_t((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

}  // namespace bf16_model
