// The choice between the direct and the spectral positional method (positional_method.h), and
// the ops that force it:
//   cpu_positional_method() -> str            "auto", "direct" or "spectral"
//   set_cpu_positional_method(str) -> str      force one; returns the previous
//   cpu_positional_costs(int[] sizes, bool backward) -> float[]
//                                              [direct, spectral] estimates for sizes
//                                              (B, h, k, u, v, H, W, Rh, Rw)
#include "positional_method.h"

#include <torch/library.h>

#include "../lambda_math.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <mutex>
#include <string>
#include <vector>

namespace lambda_kernels {
namespace cpu {

// Cost of one real 2-D FFT (r2c or c2r) of a P = Ph·Pw plane, with its share of the spectral
// method's copies and operand forms: kFftCost · P·log2(P) fp32 multiply-adds of the direct
// kernels. Measured on Zen 4 (ATen's FFTs on MKL, 2 threads): the FFTs alone 0.09-0.4 ns per
// P·log2(P) unit (smooth even lengths fastest), the direct kernels 0.014 ns per multiply-add;
// whole spectral calls against direct ones at r = 9-127 (seed, stage and global shapes) fit
// 10-14 on an idle machine; under load the spectral calls (more memory traffic) slowed up to 2×
// more than the direct ones.
constexpr double kFftCost = 12.0;
// The spectral method runs only when estimated this much cheaper: near the break-even the two
// are within the estimate's error, and the direct kernels are the better measured and less
// load-sensitive of the two.
constexpr double kSpectralMargin = 1.5;
// A complex multiply-add of two spectra: two vector FMAs over the interleaved (re, im) floats.
constexpr double kSpectralProductCost = 4.0;
// The spectral backward's transforms and contractions relative to its forward's (below).
constexpr double kSpectralBackwardTimes = 3.0;
// Fixed cost of one spectral call (the FFT set-up, buffers, conversion passes): ~50 µs.
constexpr double kSpectralCallCost = 4.0e6;

namespace {

// Σ over the positions of one axis of the table offsets that land inside it (cost.axis_taps).
int64_t axis_taps(int64_t extent, int64_t table) {
  int64_t taps = 0;
  for (int64_t y = 0; y < extent; ++y) taps += window_range(y, extent, table).size();
  return taps;
}

constexpr int kUnresolved = -1;
std::atomic<int> g_method{kUnresolved};
std::mutex g_resolve_mutex;

const char* method_name(PositionalMethod m) {
  switch (m) {
    case PositionalMethod::kAuto: return "auto";
    case PositionalMethod::kDirect: return "direct";
    case PositionalMethod::kSpectral: return "spectral";
  }
  return "unknown";
}

PositionalMethod parse_method(const std::string& name, const char* where) {
  for (PositionalMethod m :
       {PositionalMethod::kAuto, PositionalMethod::kDirect, PositionalMethod::kSpectral})
    if (name == method_name(m)) return m;
  TORCH_CHECK(false, where, ": unknown positional method '", name,
              "'; choose one of auto, direct, spectral");
}

}  // namespace

PositionalMethod positional_method() {
  const int m = g_method.load(std::memory_order_acquire);
  if (m != kUnresolved) return static_cast<PositionalMethod>(m);
  std::lock_guard<std::mutex> guard(g_resolve_mutex);
  if (g_method.load() == kUnresolved) {
    const char* forced = std::getenv("LAMBDA_KERNELS_CPU_POSITIONAL");
    g_method.store(static_cast<int>(forced != nullptr && forced[0] != '\0'
                                        ? parse_method(forced, "LAMBDA_KERNELS_CPU_POSITIONAL")
                                        : PositionalMethod::kAuto));
  }
  return static_cast<PositionalMethod>(g_method.load());
}

double direct_cost(const PositionalSizes& s, bool backward) {
  const double logits = backward ? 3.0 * s.heads * s.K + 2.0 * s.heads * s.V
                                 : double(s.heads) * (s.K + s.V);
  const double lambda_p = (backward ? 3.0 : 1.0) * s.K * s.V;
  return double(s.B) * axis_taps(s.H, s.Rh) * axis_taps(s.W, s.Rw) * s.U *
         std::min(logits, lambda_p);
}

double spectral_cost(const PositionalSizes& s, bool backward) {
  const double ph = double(spectral_length(s.H, s.Rh)), pw = double(spectral_length(s.W, s.Rw));
  const double plane = ph * pw, bins = ph * (std::floor(pw / 2) + 1);
  // Forward: values and table spectra, λp back; backward: the same plus dλp's spectrum and
  // the d values and d table transforms back.
  const double planes = double(s.B) * s.U * s.V + double(s.K) * s.U + double(s.B) * s.K * s.V;
  const double products = double(s.B) * bins * s.K * s.U * s.V;
  const double contractions = double(s.B) * s.H * s.W * s.heads * s.K * s.V;
  // The backward does twice the forward's transforms and contractions; measured, it takes ~3×
  // the spectral forward (its larger buffers: zero-filled dλp, more operand forms, and their
  // first-touch page faults), so it counts 3×.
  const double times = backward ? kSpectralBackwardTimes : 1.0;
  return kSpectralCallCost + times * kFftCost * planes * plane * std::log2(plane) +
         (backward ? 3.0 : 1.0) * kSpectralProductCost * products + times * contractions;
}

bool use_spectral(const PositionalSizes& s, bool backward, double direct_speed) {
  switch (positional_method()) {
    case PositionalMethod::kDirect: return false;
    case PositionalMethod::kSpectral: return true;
    case PositionalMethod::kAuto: break;
  }
  return kSpectralMargin * spectral_cost(s, backward) < direct_cost(s, backward) / direct_speed;
}

namespace {

std::string cpu_positional_method_op() { return method_name(positional_method()); }

std::string set_cpu_positional_method_op(const std::string& name) {
  const PositionalMethod previous = positional_method();
  g_method.store(static_cast<int>(parse_method(name, "set_cpu_positional_method")),
                 std::memory_order_release);
  return method_name(previous);
}

std::vector<double> cpu_positional_costs_op(const std::vector<int64_t>& sizes, bool backward) {
  TORCH_CHECK(sizes.size() == 9, "cpu_positional_costs: sizes must be (B, h, k, u, v, H, W, Rh, "
              "Rw), got ", sizes.size(), " numbers");
  const PositionalSizes s{sizes[0], sizes[1], sizes[2], sizes[3], sizes[4],
                          sizes[5], sizes[6], sizes[7], sizes[8]};
  return {direct_cost(s, backward), spectral_cost(s, backward)};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(lambda_kernels, m) {
  m.def("cpu_positional_method() -> str", &cpu_positional_method_op);
  m.def("set_cpu_positional_method(str method) -> str", &set_cpu_positional_method_op);
  m.def("cpu_positional_costs(int[] sizes, bool backward) -> float[]", &cpu_positional_costs_op);
}

}  // namespace cpu
}  // namespace lambda_kernels
