// The spectral method's buffer cache (buffer_cache.h), and the op that reports it:
//   cpu_buffer_cache_bytes() -> int     bytes of idle blocks held now
#include "buffer_cache.h"

#include <c10/core/impl/alloc_cpu.h>
#include <torch/library.h>

#include <mutex>
#include <vector>

namespace lambda_kernels {
namespace cpu {
namespace {

// Blocks are sized in steps of 64 KiB, so calls of one shape (and chunks that differ by a few
// elements of slack) reuse each other's blocks.
constexpr size_t kBlockStep = size_t(64) << 10;

struct Block {
  void* ptr;
  size_t bytes;
};

class BufferCache {
 public:
  void* acquire(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      // the smallest idle block that fits and wastes at most half of itself
      size_t best = idle_.size();
      for (size_t i = 0; i < idle_.size(); ++i)
        if (idle_[i].bytes >= bytes && idle_[i].bytes <= 2 * bytes &&
            (best == idle_.size() || idle_[i].bytes < idle_[best].bytes))
          best = i;
      if (best != idle_.size()) {
        void* ptr = idle_[best].ptr;
        idle_held_ -= idle_[best].bytes;
        idle_.erase(idle_.begin() + static_cast<std::ptrdiff_t>(best));
        return ptr;
      }
    }
    return c10::alloc_cpu(bytes);
  }

  void release(void* ptr, size_t bytes) {
    if (bytes > kMaxCachedBytes) {  // never kept: freed without emptying the cache for it
      c10::free_cpu(ptr);
      return;
    }
    std::lock_guard<std::mutex> lock(mutex_);
    // keep the newest blocks: drop the oldest ones that no longer fit
    while (!idle_.empty() && idle_held_ + bytes > kMaxCachedBytes) {
      c10::free_cpu(idle_.front().ptr);
      idle_held_ -= idle_.front().bytes;
      idle_.erase(idle_.begin());
    }
    idle_.push_back({ptr, bytes});
    idle_held_ += bytes;
  }

  size_t idle_bytes() {
    std::lock_guard<std::mutex> lock(mutex_);
    return idle_held_;
  }

 private:
  std::mutex mutex_;
  std::vector<Block> idle_;
  size_t idle_held_ = 0;
};

BufferCache& cache() {
  static BufferCache* instance = new BufferCache();  // never destroyed: tensors may outlive exit
  return *instance;
}

}  // namespace

at::Tensor cached_empty(at::IntArrayRef shape, const at::TensorOptions& options) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  const size_t bytes =
      (std::max<size_t>(size_t(n) * options.dtype().itemsize(), 1) + kBlockStep - 1) /
      kBlockStep * kBlockStep;
  void* ptr = cache().acquire(bytes);
  return at::from_blob(
      ptr, shape, [bytes](void* p) { cache().release(p, bytes); },
      options.device(at::kCPU));
}

at::Tensor cached_zeros(at::IntArrayRef shape, const at::TensorOptions& options) {
  return cached_empty(shape, options).zero_();
}

size_t cached_bytes() { return cache().idle_bytes(); }

}  // namespace cpu
}  // namespace lambda_kernels

TORCH_LIBRARY_FRAGMENT(lambda_kernels, m) {
  m.def("cpu_buffer_cache_bytes() -> int",
        [] { return static_cast<int64_t>(lambda_kernels::cpu::cached_bytes()); });
}
