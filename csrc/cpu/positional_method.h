// How the CPU kernels take the positional sums of one call: directly (the register-tiled window
// loops of lambda_output_kernels.inc, in the cheaper of the two associations) or spectrally (the
// λp association with its window sums as FFT convolutions, spectral_kernels.inc). Chosen per
// call and per direction by estimated cost (docs/design.md, "The spectral method"), or forced
// with LAMBDA_KERNELS_CPU_POSITIONAL=auto|direct|spectral (read on first use) and the op
// set_cpu_positional_method (tests and benchmarks switch in one process).
#pragma once

#include <cstdint>
#include <initializer_list>

// MKL's per-thread thread count (its C entry point: mkl_service.h maps mkl_set_num_threads_local
// to it; the lower-case symbol is the Fortran one, which takes a pointer), resolved at load time
// from torch's libraries where they carry MKL (a weak reference: null elsewhere).
extern "C" int MKL_Set_Num_Threads_Local(int) __attribute__((weak));

namespace lambda_kernels {
namespace cpu {

enum class PositionalMethod : int { kAuto = 0, kDirect = 1, kSpectral = 2 };

// The forced method, or kAuto.
PositionalMethod positional_method();

// Sizes of one positional call, as the estimate needs them.
struct PositionalSizes {
  int64_t B, heads, K, U, V, H, W, Rh, Rw;
};

// Smallest even n' ≥ n whose only prime factors are 2, 3 and 5: the fast real-FFT lengths
// (measured with ATen's FFTs on Zen 4: 72 and 80 points take 0.6-0.7× the time of 75 and 81).
inline int64_t fft_length(int64_t n) {
  for (int64_t m = n > 2 ? n + n % 2 : 2;; m += 2) {
    int64_t x = m;
    for (int64_t p : {2, 3, 5})
      while (x % p == 0) x /= p;
    if (x == 1) return m;
  }
}
// FFT length of the spectral method along one axis: the image plus the table's in-image reach
// (min(R/2, extent − 1)), so the circular convolution never wraps an image position onto
// another.
inline int64_t spectral_length(int64_t extent, int64_t table_size) {
  const int64_t reach = table_size / 2 < extent - 1 ? table_size / 2 : extent - 1;
  return fft_length(extent + reach);
}

// While it lives, the FFTs this thread calls run single-threaded: MKL's batched transforms
// change their arithmetic with the number of threads they get (torch.fft.irfft2 of a few planes
// differs in the last bits between 1 and 2 threads), so the spectral method runs fixed groups
// of planes per call, single-threaded, in its own parallel loop and gives the same bits at any
// thread count. Where torch has no MKL (pocketfft: single-threaded per call) it does nothing.
class SequentialFfts {
 public:
  SequentialFfts() {
    if (MKL_Set_Num_Threads_Local != nullptr) previous_ = MKL_Set_Num_Threads_Local(1);
  }
  ~SequentialFfts() {
    // (0, MKL's default for a thread: back to the global setting)
    if (MKL_Set_Num_Threads_Local != nullptr) MKL_Set_Num_Threads_Local(previous_);
  }
  SequentialFfts(const SequentialFfts&) = delete;
  SequentialFfts& operator=(const SequentialFfts&) = delete;

 private:
  int previous_ = 0;
};

// Estimated cost of each method in fp32 multiply-add equivalents of the direct kernels
// (docs/design.md, "The spectral method"; mirrored by lambda_kernels/cost.py).
double direct_cost(const PositionalSizes& s, bool backward);
double spectral_cost(const PositionalSizes& s, bool backward);

// Whether this call runs spectrally: the forced method, else whether the spectral estimate is
// clearly (kSpectralMargin) below the direct one.
// `direct_speed` is the direct kernels' multiply-add rate relative to fp32 for the call's
// dtype (CpuKernels::bf16_direct_speed; the spectral method always computes in fp32 or fp64).
bool use_spectral(const PositionalSizes& s, bool backward, double direct_speed);

}  // namespace cpu
}  // namespace lambda_kernels
