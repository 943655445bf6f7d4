// CPU instruction-set levels and the kernel table each one provides.
//
// The CPU kernels are compiled once per instruction-set level (csrc/cpu/isa_*.cpp, each a
// translation unit whose functions carry their own target attribute; the default build uses no
// -march flag, so one binary runs on any CPU of its architecture) and chosen once at run time:
// the best level this CPU supports, or the one forced with LAMBDA_KERNELS_CPU_ISA (which must
// be supported), or the one set through the op `lambda_kernels::set_cpu_isa`.
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

namespace lambda_kernels {
namespace cpu {

// What each level gets compiled for.
enum class CpuIsa : int {
  kBaseline = 0,  // x86-64: SSE2 (every x86-64 CPU)
  kAvx2 = 1,      // x86-64: AVX2 + FMA (Haswell, Zen 1 and later)
  kAvx512 = 2,    // x86-64: AVX-512 F/BW/VL/DQ + FMA (Skylake-X, Ice Lake, Zen 4 and later)
  kNeon = 3,      // aarch64: ASIMD (every aarch64 CPU: Graviton, Ampere, Apple silicon)
  kAvx512Bf16 = 4,  // x86-64: avx512 + AVX512_BF16 (Cooper Lake, Sapphire Rapids, Zen 4 and later)
  kAmx = 5,         // x86-64: avx512_bf16 + AMX-TILE + AMX-BF16, OS tile permission (Sapphire Rapids+)
};

// The CPU entry points of one level. Inputs are contiguous and checked by the op wrappers
// (ops_cpu.cpp); outputs are allocated by them.
struct CpuKernels {
  const char* name;
  // lam_c_partial (B, u, k, v) and lse (B, u, k), in the accumulation dtype.
  void (*content_lambda)(const at::Tensor& keys, const at::Tensor& values,
                         at::Tensor& lam_c_partial, at::Tensor& lse);
  void (*content_lambda_backward)(const at::Tensor& d_lam, const at::Tensor& keys,
                                  const at::Tensor& values, const at::Tensor& lse,
                                  at::Tensor& d_keys, at::Tensor& d_values);
  void (*lambda_output)(const at::Tensor& q, const at::Tensor& values,
                        const at::Tensor& pos_table, const at::Tensor& lam, at::Tensor& y);
  void (*lambda_output_backward)(const at::Tensor& dy, const at::Tensor& q,
                                 const at::Tensor& values, const at::Tensor& pos_table,
                                 const at::Tensor& lam, at::Tensor& d_q, at::Tensor& d_values,
                                 at::Tensor& d_pos_table, at::Tensor& d_lam);
  // The same two ops by the spectral method (spectral_kernels.inc; positional_method.h chooses).
  void (*spectral_lambda_output)(const at::Tensor& q, const at::Tensor& values,
                                 const at::Tensor& pos_table, const at::Tensor& lam,
                                 at::Tensor& y);
  void (*spectral_lambda_output_backward)(const at::Tensor& dy, const at::Tensor& q,
                                          const at::Tensor& values, const at::Tensor& pos_table,
                                          const at::Tensor& lam, at::Tensor& d_q,
                                          at::Tensor& d_values, at::Tensor& d_pos_table,
                                          at::Tensor& d_lam);
  // The direct kernels' multiply-add rate on bf16 inputs relative to fp32 (the cost estimate).
  double bf16_direct_speed;
};

// Kernel tables, one per level compiled into this binary (defined in isa_<name>.cpp).
#if defined(__x86_64__) || defined(_M_X64)
const CpuKernels& kernels_baseline();
const CpuKernels& kernels_avx2();
const CpuKernels& kernels_avx512();
const CpuKernels& kernels_avx512_bf16();
const CpuKernels& kernels_amx();
#endif
#if defined(__aarch64__)
const CpuKernels& kernels_neon();
#endif

const char* isa_name(CpuIsa isa);
// Every level of this architecture, lowest first (what cpu_isa_levels lists).
std::vector<CpuIsa> architecture_isas();
// Levels compiled into this binary, lowest first (a JIT build may leave some out).
std::vector<CpuIsa> compiled_isas();
// Empty when this CPU can run `isa`, else why not.
std::string isa_unsupported_reason(CpuIsa isa);
// The level the CPU kernels use now (resolved once, on first use).
CpuIsa active_isa();
// The kernel table of the active level.
const CpuKernels& active_kernels();

}  // namespace cpu
}  // namespace lambda_kernels
