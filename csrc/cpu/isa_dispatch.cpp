// Which instruction-set level the CPU kernels run: detected once from the CPU (cpuid through
// __builtin_cpu_supports on x86-64; every aarch64 CPU has NEON), overridable by the environment
// variable LAMBDA_KERNELS_CPU_ISA (read on first use) and by the op set_cpu_isa (tests and
// benchmarks force lower levels in one process). A level this CPU lacks is refused with an
// error naming what is missing.
//
// Ops (no tensors; registered with the schemas in csrc/ops.cpp):
//   cpu_isa() -> str                      the active level
//   cpu_isa_levels() -> str[]             every level of this architecture, lowest first (one
//                                         not compiled into this build is refused, saying so)
//   cpu_isa_unsupported(str) -> str       "" when this CPU can run the level, else why not
//   set_cpu_isa(str) -> str               make a level active; returns the previous one
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "isa.h"

#if (defined(__x86_64__) || defined(_M_X64)) && defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace lambda_kernels {
namespace cpu {

const char* isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kBaseline: return "baseline";
    case CpuIsa::kAvx2: return "avx2";
    case CpuIsa::kAvx512: return "avx512";
    case CpuIsa::kNeon: return "neon";
    case CpuIsa::kAvx512Bf16: return "avx512_bf16";
    case CpuIsa::kAmx: return "amx";
  }
  return "unknown";
}

// Every level of this architecture, lowest first: what cpu_isa_levels lists, so a caller sees
// the same names whichever build it has (a level left out below is refused with the reason).
std::vector<CpuIsa> architecture_isas() {
#if defined(__x86_64__) || defined(_M_X64)
  return {CpuIsa::kBaseline, CpuIsa::kAvx2, CpuIsa::kAvx512, CpuIsa::kAvx512Bf16, CpuIsa::kAmx};
#else
  return {CpuIsa::kNeon};
#endif
}

// A JIT build leaves out the optional x86-64 levels its CPU cannot run (LK_WITHOUT_<LEVEL>,
// lambda_kernels/_build_config.py: omitted_levels_for_this_cpu); the installed build has all.
std::vector<CpuIsa> compiled_isas() {
#if defined(__x86_64__) || defined(_M_X64)
  return {CpuIsa::kBaseline, CpuIsa::kAvx2,
#if !defined(LK_WITHOUT_AVX512)
          CpuIsa::kAvx512,
#endif
#if !defined(LK_WITHOUT_AVX512_BF16)
          CpuIsa::kAvx512Bf16,
#endif
#if !defined(LK_WITHOUT_AMX)
          CpuIsa::kAmx,
#endif
  };
#elif defined(__aarch64__)
  return {CpuIsa::kNeon};
#else
#error "lambda_kernels: the CPU kernels are built for x86-64 and aarch64"
#endif
}

#if defined(__x86_64__) || defined(_M_X64)
namespace {

// Asks Linux once per process for the AMX tile data state (off by default: it enlarges every
// signal frame by 8 KiB). "" when granted, else why not. Thread-safe (static initialisation).
std::string request_amx_permission() {
  static const std::string refusal = []() -> std::string {
#if defined(__linux__)
    constexpr long kArchReqXcompPerm = 0x1023;  // asm/prctl.h
    constexpr long kXfeatureXtiledata = 18;     // XTILEDATA state component
    if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0) return "";
    const int error = errno;
    return std::string("the OS refused the AMX tile data state (arch_prctl(ARCH_REQ_XCOMP_PERM, "
                       "XFEATURE_XTILEDATA): ") + std::strerror(error) +
           "; Linux 5.16 or later grants it)";
#else
    return "the amx level requests the AMX tile state from Linux; this is not Linux";
#endif
  }();
  return refusal;
}

}  // namespace
#endif

namespace {

// Empty when this CPU (and OS) can run `isa`, else the missing features.
std::string hardware_reason(CpuIsa isa) {
#if defined(__x86_64__) || defined(_M_X64)
  __builtin_cpu_init();
  std::string missing;
  auto need = [&](bool present, const char* feature) {
    if (!present) missing += std::string(missing.empty() ? "" : ", ") + feature;
  };
  switch (isa) {
    case CpuIsa::kBaseline:
      break;
    case CpuIsa::kAmx: {
      const std::string below = hardware_reason(CpuIsa::kAvx512Bf16);
      need(__builtin_cpu_supports("amx-tile"), "amx_tile");
      need(__builtin_cpu_supports("amx-bf16"), "amx_bf16");
      if (!below.empty() || !missing.empty()) {
        // "this CPU lacks avx512_bf16, ..., amx_tile, amx_bf16"
        const std::string lower = below.empty() ? "" : below.substr(std::strlen("this CPU lacks "));
        return "this CPU lacks " + lower + (lower.empty() || missing.empty() ? "" : ", ") + missing;
      }
      return request_amx_permission();
    }
    case CpuIsa::kAvx512Bf16:
      need(__builtin_cpu_supports("avx512bf16"), "avx512_bf16");
      [[fallthrough]];
    case CpuIsa::kAvx512:
      need(__builtin_cpu_supports("avx512f"), "avx512f");
      need(__builtin_cpu_supports("avx512bw"), "avx512bw");
      need(__builtin_cpu_supports("avx512vl"), "avx512vl");
      need(__builtin_cpu_supports("avx512dq"), "avx512dq");
      [[fallthrough]];
    case CpuIsa::kAvx2:
      need(__builtin_cpu_supports("avx2"), "avx2");
      need(__builtin_cpu_supports("fma"), "fma");
      break;
    case CpuIsa::kNeon:
      return "neon is an aarch64 level; this is an x86-64 build";
  }
  return missing.empty() ? "" : "this CPU lacks " + missing;
#else
  return isa == CpuIsa::kNeon ? "" : std::string(isa_name(isa)) + " is an x86-64 level; this is an aarch64 build";
#endif
}

}  // namespace

std::string isa_unsupported_reason(CpuIsa isa) {
  std::string reason = hardware_reason(isa);
  if (reason.empty()) {
    const std::vector<CpuIsa> levels = compiled_isas();
    if (std::find(levels.begin(), levels.end(), isa) == levels.end())
      reason = std::string("the ") + isa_name(isa) +
               " kernels are not compiled into this build (a JIT build compiles the levels of "
               "the CPU it ran on; LAMBDA_KERNELS_JIT_LEVELS=all compiles every level)";
  }
  return reason;
}

namespace {

CpuIsa parse_isa(const std::string& name, const char* where) {
  for (CpuIsa isa : {CpuIsa::kBaseline, CpuIsa::kAvx2, CpuIsa::kAvx512, CpuIsa::kAvx512Bf16,
                     CpuIsa::kAmx, CpuIsa::kNeon})
    if (name == isa_name(isa)) return isa;
  TORCH_CHECK(false, where, ": unknown CPU instruction-set level '", name,
              "'; choose one of baseline, avx2, avx512, avx512_bf16, amx (x86-64), neon (aarch64)");
}

CpuIsa checked(CpuIsa isa, const char* where) {
  const std::string reason = isa_unsupported_reason(isa);
  TORCH_CHECK(reason.empty(), where, ": cannot use the '", isa_name(isa), "' kernels: ", reason);
  return isa;
}

CpuIsa best_supported() {
  const std::vector<CpuIsa> levels = compiled_isas();
  for (auto it = levels.rbegin(); it != levels.rend(); ++it)
    if (isa_unsupported_reason(*it).empty()) return *it;
  return levels.front();
}

constexpr int kUnresolved = -1;
std::atomic<int> g_active{kUnresolved};
std::mutex g_resolve_mutex;

CpuIsa resolve() {
  std::lock_guard<std::mutex> guard(g_resolve_mutex);
  if (g_active.load() == kUnresolved) {
    const char* forced = std::getenv("LAMBDA_KERNELS_CPU_ISA");
    const CpuIsa isa = forced != nullptr && forced[0] != '\0'
                           ? checked(parse_isa(forced, "LAMBDA_KERNELS_CPU_ISA"),
                                     "LAMBDA_KERNELS_CPU_ISA")
                           : best_supported();
    g_active.store(static_cast<int>(isa));
  }
  return static_cast<CpuIsa>(g_active.load());
}

}  // namespace

CpuIsa active_isa() {
  const int isa = g_active.load(std::memory_order_acquire);
  return isa == kUnresolved ? resolve() : static_cast<CpuIsa>(isa);
}

const CpuKernels& active_kernels() {
  switch (active_isa()) {
#if defined(__x86_64__) || defined(_M_X64)
    case CpuIsa::kBaseline: return kernels_baseline();
    case CpuIsa::kAvx2: return kernels_avx2();
#if !defined(LK_WITHOUT_AVX512)
    case CpuIsa::kAvx512: return kernels_avx512();
#endif
#if !defined(LK_WITHOUT_AVX512_BF16)
    case CpuIsa::kAvx512Bf16: return kernels_avx512_bf16();
#endif
#if !defined(LK_WITHOUT_AMX)
    case CpuIsa::kAmx: return kernels_amx();
#endif
#endif
#if defined(__aarch64__)
    case CpuIsa::kNeon: return kernels_neon();
#endif
    default: break;
  }
  TORCH_CHECK(false, "lambda_kernels: no CPU kernels for level ", isa_name(active_isa()));
}

namespace {

std::string cpu_isa_op() { return isa_name(active_isa()); }

std::vector<std::string> cpu_isa_levels_op() {
  std::vector<std::string> names;
  for (CpuIsa isa : architecture_isas()) names.emplace_back(isa_name(isa));
  return names;
}

std::string cpu_isa_unsupported_op(const std::string& name) {
  return isa_unsupported_reason(parse_isa(name, "cpu_isa_unsupported"));
}

std::string set_cpu_isa_op(const std::string& name) {
  const CpuIsa previous = active_isa();
  const CpuIsa isa = checked(parse_isa(name, "set_cpu_isa"), "set_cpu_isa");
  g_active.store(static_cast<int>(isa), std::memory_order_release);
  return isa_name(previous);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(lambda_kernels, m) {
  m.def("cpu_isa() -> str", &cpu_isa_op);
  m.def("cpu_isa_levels() -> str[]", &cpu_isa_levels_op);
  m.def("cpu_isa_unsupported(str level) -> str", &cpu_isa_unsupported_op);
  m.def("set_cpu_isa(str level) -> str", &set_cpu_isa_op);
}

}  // namespace cpu
}  // namespace lambda_kernels
