// Peak multiply-add throughput of one core, per instruction the CPU kernels' levels use: the
// ceiling the micro-kernels (csrc/cpu/tile.h, tile_bf16.h) are measured against, and the
// answer to "how much can bf16 gain over fp32 on this CPU" (2× only where vdpbf16ps issues as
// often as a fp32 FMA of the same width), and what the bf16 micro-kernel's word interleaves
// (vpermt2w) leave of it.
//
// Each loop keeps more independent accumulators than latency × issue width on current cores
// (12 in the 16 ymm registers of AVX2, 20 in the 32 of AVX-512, so none spills) and touches no
// memory, so it measures issue rate alone. Levels the CPU lacks are
// skipped (cpuid via __builtin_cpu_supports).
//
//   g++ -O2 -o /tmp/cpu_peak_rates benchmarks/cpu_peak_rates.cpp && /tmp/cpu_peak_rates
#include <immintrin.h>

#include <chrono>
#include <cstdio>

namespace {

constexpr int kAccumulators = 20;      // zmm loops
constexpr int kAccumulatorsYmm = 12;  // avx2 has 16 vector registers
constexpr long kIterations = 50'000'000;

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

__attribute__((target("avx2,fma"))) double fma_ymm() {
  __m256 acc[kAccumulatorsYmm];
  for (int i = 0; i < kAccumulatorsYmm; ++i) acc[i] = _mm256_set1_ps(float(i));
  __m256 a = _mm256_set1_ps(1.0001f), b = _mm256_set1_ps(0.9999f);
  const auto t0 = Clock::now();
  {
    for (long k = 0; k < kIterations; ++k) {
#pragma GCC unroll 32
      for (int i = 0; i < kAccumulatorsYmm; ++i) acc[i] = _mm256_fmadd_ps(a, b, acc[i]);
      asm volatile("" : "+x"(a), "+x"(b));  // operands unknown to the compiler each round
    }
  }
  const double s = since(t0);
  float sink = 0;
  for (auto& v : acc) sink += _mm256_cvtss_f32(v);
  asm volatile("" : : "x"(sink));
  return s;
}

__attribute__((target("avx512f"))) double fma_zmm() {
  __m512 acc[kAccumulators];
  for (int i = 0; i < kAccumulators; ++i) acc[i] = _mm512_set1_ps(float(i));
  __m512 a = _mm512_set1_ps(1.0001f), b = _mm512_set1_ps(0.9999f);
  const auto t0 = Clock::now();
  {
    for (long k = 0; k < kIterations; ++k) {
#pragma GCC unroll 32
      for (int i = 0; i < kAccumulators; ++i) acc[i] = _mm512_fmadd_ps(a, b, acc[i]);
      asm volatile("" : "+v"(a), "+v"(b));
    }
  }
  const double s = since(t0);
  float sink = 0;
  for (auto& v : acc) sink += _mm512_cvtss_f32(v);
  asm volatile("" : : "v"(sink));
  return s;
}

__attribute__((target("avx512f,avx512bf16"))) double dpbf16_zmm() {
  __m512 acc[kAccumulators];
  for (int i = 0; i < kAccumulators; ++i) acc[i] = _mm512_set1_ps(float(i));
  __m512i a = _mm512_set1_epi32(0x3f803f80), b = _mm512_set1_epi32(0x3f803f80);  // (1, 1) pairs
  const auto t0 = Clock::now();
  {
    for (long k = 0; k < kIterations; ++k) {
#pragma GCC unroll 32
      for (int i = 0; i < kAccumulators; ++i)
        acc[i] = _mm512_dpbf16_ps(acc[i], (__m512bh)a, (__m512bh)b);
      asm volatile("" : "+v"(a), "+v"(b));
    }
  }
  const double s = since(t0);
  float sink = 0;
  for (auto& v : acc) sink += _mm512_cvtss_f32(v);
  asm volatile("" : : "v"(sink));
  return s;
}

// vpermt2w alone: the word interleave the bf16 micro-kernel (tile_bf16.h) builds each vector
// operand's pair with; 20 independent chains.
__attribute__((target("avx512f,avx512bw"))) double permute_zmm() {
  __m512i acc[kAccumulators];
  for (int i = 0; i < kAccumulators; ++i) acc[i] = _mm512_set1_epi16(short(i));
  __m512i index = _mm512_set1_epi16(33), b = _mm512_set1_epi16(7);
  const auto t0 = Clock::now();
  {
    for (long k = 0; k < kIterations; ++k) {
#pragma GCC unroll 32
      for (int i = 0; i < kAccumulators; ++i)
        acc[i] = _mm512_permutex2var_epi16(acc[i], index, b);
      asm volatile("" : "+v"(index), "+v"(b));
    }
  }
  const double s = since(t0);
  int sink = 0;
  for (auto& v : acc) sink += _mm512_cvtsi512_si32(v);
  asm volatile("" : : "r"(sink));
  return s;
}

// The instruction mix of one reduction step of the 4 × 5 pair tile with two vector operands:
// 5 + 4 vpermt2w forming the pairs, 20 vdpbf16ps (registers only: the issue rate of the mix).
__attribute__((target("avx512f,avx512bw,avx512bf16"))) double pair_tile_mix_zmm() {
  __m512 acc[kAccumulators];
  for (int i = 0; i < kAccumulators; ++i) acc[i] = _mm512_set1_ps(float(i));
  // Each B pair is re-formed from its own previous value, each A pair from one of them (so
  // none is hoisted or shared), as the kernel holds them: 20 + 5 + 1 + 2 of the 32 registers.
  __m512i index = _mm512_set1_epi16(0), x = _mm512_set1_epi32(0x3f803f80);
  __m512i b[5];
  for (auto& v : b) v = x;
  const auto t0 = Clock::now();
  {
    for (long k = 0; k < kIterations; ++k) {
#pragma GCC unroll 8
      for (int j = 0; j < 5; ++j) b[j] = _mm512_permutex2var_epi16(b[j], index, x);
#pragma GCC unroll 8
      for (int i = 0; i < 4; ++i) {
        const __m512i a = _mm512_permutex2var_epi16(b[i], index, x);
#pragma GCC unroll 8
        for (int j = 0; j < 5; ++j)
          acc[i * 5 + j] = _mm512_dpbf16_ps(acc[i * 5 + j], (__m512bh)a, (__m512bh)b[j]);
      }
      asm volatile("" : "+v"(index), "+v"(x));
    }
  }
  const double s = since(t0);
  float sink = 0;
  for (auto& v : acc) sink += _mm512_cvtss_f32(v);
  asm volatile("" : : "v"(sink));
  return s;
}

void report(const char* name, double s, int accumulators, int flops_per_instruction,
            double reference) {
  const double instructions = double(accumulators) * kIterations;
  const double gflops = instructions * flops_per_instruction / s / 1e9;
  std::printf("%-26s %6.2f G instructions/s", name, instructions / s / 1e9);
  if (flops_per_instruction > 0) std::printf("  %7.1f GFLOP/s per core", gflops);
  if (reference > 0) std::printf("  (%.2f× the zmm fp32 FMA rate)", gflops / reference);
  std::printf("\n");
}

}  // namespace

int main() {
  __builtin_cpu_init();
  for (int round = 0; round < 3; ++round) {
    std::printf("round %d\n", round + 1);
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
      report("vfmadd231ps ymm (avx2)", fma_ymm(), kAccumulatorsYmm, 16, 0);
    double zmm = 0;
    if (__builtin_cpu_supports("avx512f")) {
      const double s = fma_zmm();
      zmm = double(kAccumulators) * kIterations * 32 / s / 1e9;
      report("vfmadd231ps zmm (avx512)", s, kAccumulators, 32, 0);
    }
    if (__builtin_cpu_supports("avx512bf16"))
      report("vdpbf16ps zmm (avx512_bf16)", dpbf16_zmm(), kAccumulators, 64, zmm);
    if (__builtin_cpu_supports("avx512bw"))
      report("vpermt2w zmm (avx512bw)", permute_zmm(), kAccumulators, 0, 0);
    if (__builtin_cpu_supports("avx512bf16"))
      report("4x5 pair tile mix (vdpbf16ps)", pair_tile_mix_zmm(), kAccumulators, 64, zmm);
  }
}
