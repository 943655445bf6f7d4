// The AVX-512 intrinsics the CPU kernels use, modelled in plain C++ (GCC vector extensions and
// scalar loops), so that the avx512, avx512_bf16 and amx levels' code compiles and runs on a
// CPU without AVX-512: the tests compare it with the float64 reference there like every level
// the CPU runs (tests/test_avx512_emulation.py; tests/amx_emulation.cpp on top of it).
//
// Included after <immintrin.h> (csrc/cpu/kernel_prelude.h) and before csrc/cpu/kernels.inc, in
// a translation unit compiled WITHOUT the AVX-512 target: the header keeps the types
// (__m512, __m512i, __m512bh, __mmask16, ...: plain vector typedefs usable on any target) and
// renames each intrinsic the kernels call to its model here (GCC's own are always-inline
// functions that refuse to inline into code of another target). The kernels' 64-byte vector
// arithmetic (csrc/cpu/simd.h) is lowered by the compiler to the target's narrower registers.
// The including file defines LK_VECTOR_REGISTER(v) as "+m"(v): no register holds 64 bytes.
//
// What is modelled (Intel SDM / intrinsics guide semantics):
//   loads and stores, set1 / set / setzero, add_ps        bit moves and fp32 adds
//   masked loads / stores                                 lanes outside the mask neither read
//                                                         nor written (loads give zero there)
//   unpacklo_epi16                                        per 128-bit lane, words 0-3 of a and b
//                                                         interleaved
//   permutex2var_epi16                                    word i = (idx_i & 32 ? b : a)[idx_i & 31]
//   dpbf16ps (VDPBF16PS)                                  acc += a[2j+1]·b[2j+1], then
//                                                         += a[2j]·b[2j], fp32, round to nearest
//                                                         even, bf16 denormal inputs as zero,
//                                                         denormal results flushed to zero
//   cvtneps_pbh (VCVTNEPS2BF16)                           fp32 -> bf16 round to nearest even,
//                                                         denormals as zero, NaN kept quiet
// Any other AVX-512 intrinsic stays GCC's and fails to compile here: a new one in the kernels
// needs its model added.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "bf16_model.h"

namespace lk_avx512_model {

typedef float f32x16 __attribute__((vector_size(64)));

template <typename To, typename From>
inline To bits_as(const From& from) {
  static_assert(sizeof(To) == sizeof(From), "a reinterpretation keeps the size");
  To to;
  std::memcpy(&to, &from, sizeof(to));
  return to;
}

struct Words32 {
  uint16_t w[32];
};
struct Dwords16 {
  uint32_t d[16];
};
struct Floats16 {
  float f[16];
};

using bf16_model::bf16_of_float_rne_daz;
using bf16_model::float_of_bf16_daz;
using bf16_model::flush_denormal;

// ------------------------------------------------------------------ moves and fp32 arithmetic
inline __m512 setzero_ps() { return bits_as<__m512>(Floats16{}); }
inline __m512i setzero_si512() { return bits_as<__m512i>(Dwords16{}); }
inline __m512 loadu_ps(const void* p) {
  __m512 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline void storeu_ps(void* p, __m512 v) { std::memcpy(p, &v, sizeof(v)); }
inline __m512i loadu_si512(const void* p) {
  __m512i v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline void storeu_si512(void* p, __m512i v) { std::memcpy(p, &v, sizeof(v)); }
inline __m512 add_ps(__m512 a, __m512 b) {
  return bits_as<__m512>(bits_as<f32x16>(a) + bits_as<f32x16>(b));
}

inline __m512i set1_epi16(short x) {
  Words32 r;
  for (uint16_t& w : r.w) w = uint16_t(x);
  return bits_as<__m512i>(r);
}
inline __m512i set1_epi32(int x) {
  Dwords16 r;
  for (uint32_t& d : r.d) d = uint32_t(x);
  return bits_as<__m512i>(r);
}
// _mm512_set_epi16(e31, ..., e0): the first argument is the highest word.
template <typename... Shorts>
inline __m512i set_epi16(Shorts... given) {
  static_assert(sizeof...(Shorts) == 32, "_mm512_set_epi16 takes 32 words");
  const uint16_t high_first[32] = {uint16_t(given)...};
  Words32 r;
  for (int i = 0; i < 32; ++i) r.w[i] = high_first[31 - i];
  return bits_as<__m512i>(r);
}

// ------------------------------------------------------------------ masked loads and stores
template <typename Element, int kLanes, typename Vector, typename Mask>
inline Vector masked_load(Mask mask, const void* p) {
  Element lanes[kLanes] = {};
  for (int i = 0; i < kLanes; ++i)
    if ((uint64_t(mask) >> i) & 1u)
      std::memcpy(&lanes[i], static_cast<const char*>(p) + i * sizeof(Element), sizeof(Element));
  return bits_as<Vector>(lanes);
}
template <typename Element, int kLanes, typename Vector, typename Mask>
inline void masked_store(void* p, Mask mask, Vector v) {
  Element lanes[kLanes];
  std::memcpy(lanes, &v, sizeof(lanes));
  for (int i = 0; i < kLanes; ++i)
    if ((uint64_t(mask) >> i) & 1u)
      std::memcpy(static_cast<char*>(p) + i * sizeof(Element), &lanes[i], sizeof(Element));
}

// ------------------------------------------------------------------ word shuffles
inline __m512i unpacklo_epi16(__m512i a, __m512i b) {
  const Words32 x = bits_as<Words32>(a), y = bits_as<Words32>(b);
  Words32 r;
  for (int lane = 0; lane < 4; ++lane)
    for (int i = 0; i < 4; ++i) {
      r.w[8 * lane + 2 * i] = x.w[8 * lane + i];
      r.w[8 * lane + 2 * i + 1] = y.w[8 * lane + i];
    }
  return bits_as<__m512i>(r);
}
inline __m512i permutex2var_epi16(__m512i a, __m512i index, __m512i b) {
  const Words32 x = bits_as<Words32>(a), y = bits_as<Words32>(b), idx = bits_as<Words32>(index);
  Words32 r;
  for (int i = 0; i < 32; ++i) r.w[i] = (idx.w[i] & 32u ? y : x).w[idx.w[i] & 31u];
  return bits_as<__m512i>(r);
}

// ------------------------------------------------------------------ bf16 arithmetic
inline __m512 dpbf16_ps(__m512 acc, __m512bh a, __m512bh b) {
  const Words32 x = bits_as<Words32>(a), y = bits_as<Words32>(b);
  Floats16 r = bits_as<Floats16>(acc);
  for (int j = 0; j < 16; ++j) {
    // Each bf16 product is exact in fp32; each sum rounds (RNE, the C++ default).
    float t = flush_denormal(r.f[j]);  // DAZ on the accumulator too
    t = flush_denormal(t + float_of_bf16_daz(x.w[2 * j + 1]) * float_of_bf16_daz(y.w[2 * j + 1]));
    t = flush_denormal(t + float_of_bf16_daz(x.w[2 * j]) * float_of_bf16_daz(y.w[2 * j]));
    r.f[j] = t;
  }
  return bits_as<__m512>(r);
}
inline __m256bh cvtneps_pbh(__m512 v) {
  const Floats16 x = bits_as<Floats16>(v);
  uint16_t r[16];
  for (int j = 0; j < 16; ++j) r[j] = bf16_of_float_rne_daz(x.f[j]);
  return bits_as<__m256bh>(r);
}

}  // namespace lk_avx512_model

// The kernels' calls, renamed to the models (after <immintrin.h>, whose declarations they
// would otherwise rename too).
#define _mm512_setzero_ps lk_avx512_model::setzero_ps
#define _mm512_setzero_si512 lk_avx512_model::setzero_si512
#define _mm512_loadu_ps lk_avx512_model::loadu_ps
#define _mm512_storeu_ps lk_avx512_model::storeu_ps
#define _mm512_loadu_si512 lk_avx512_model::loadu_si512
#define _mm512_storeu_si512 lk_avx512_model::storeu_si512
#define _mm512_add_ps lk_avx512_model::add_ps
#define _mm512_set1_epi16 lk_avx512_model::set1_epi16
#define _mm512_set1_epi32 lk_avx512_model::set1_epi32
#define _mm512_set_epi16 lk_avx512_model::set_epi16
#define _mm512_maskz_loadu_ps lk_avx512_model::masked_load<float, 16, __m512>
#define _mm512_mask_storeu_ps lk_avx512_model::masked_store<float, 16, __m512>
#define _mm512_maskz_loadu_epi32 lk_avx512_model::masked_load<uint32_t, 16, __m512i>
#define _mm512_mask_storeu_epi32 lk_avx512_model::masked_store<uint32_t, 16, __m512i>
#define _mm512_maskz_loadu_epi16 lk_avx512_model::masked_load<uint16_t, 32, __m512i>
#define _mm512_mask_storeu_epi16 lk_avx512_model::masked_store<uint16_t, 32, __m512i>
#define _mm256_maskz_loadu_epi16 lk_avx512_model::masked_load<uint16_t, 16, __m256i>
#define _mm256_mask_storeu_epi16 lk_avx512_model::masked_store<uint16_t, 16, __m256i>
#define _mm512_unpacklo_epi16 lk_avx512_model::unpacklo_epi16
#define _mm512_permutex2var_epi16 lk_avx512_model::permutex2var_epi16
#define _mm512_dpbf16_ps lk_avx512_model::dpbf16_ps
#define _mm512_cvtneps_pbh lk_avx512_model::cvtneps_pbh
