// Buffers of the spectral method from a process-wide cache of freed blocks.
//
// Why: a spectral call allocates and frees several MiB of buffers (spectra, λp chunks, packed
// copies; docs/design.md, "The spectral method", "Memory"). glibc returns such memory to the OS
// when it is freed (heap trimming, or munmap) and the next call faults every page in again:
// on the AVX2 Zen 3 VM the seed-local forward ran 11-12 ms in a fresh process against 6.6-7.2 ms
// with glibc's trim and mmap thresholds raised (1650 extra page faults per call). Blocks freed
// here go back to a cache instead and the next call of that size takes them, already mapped.
//
// Lifetimes do not change (a buffer is still released as soon as its chunk is done with it, so
// the peak memory of a call is unchanged); what the cache keeps between calls is bounded by
// kMaxCachedBytes. Thread-safe; contents of a reused block are stale, as at::empty's are
// undefined (every use writes before it reads, or zeroes: cached_zeros).
#pragma once

#include <ATen/ATen.h>

namespace lambda_kernels {
namespace cpu {

// Idle blocks kept for reuse, at most: the spectral buffers of the seed shapes (seed-global
// ≈ 16 MiB of extra memory per call) and of LambdaResNet's global-context stages fit.
constexpr size_t kMaxCachedBytes = size_t(32) << 20;

// An uninitialised CPU tensor of `shape` (contiguous) whose storage comes from the cache.
at::Tensor cached_empty(at::IntArrayRef shape, const at::TensorOptions& options);
// The same, zero-filled.
at::Tensor cached_zeros(at::IntArrayRef shape, const at::TensorOptions& options);
// Bytes of idle blocks the cache holds now (tests).
size_t cached_bytes();

}  // namespace cpu
}  // namespace lambda_kernels
