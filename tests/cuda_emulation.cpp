// The CUDA kernels of csrc/cuda, compiled as plain C++ so they can be checked on a CPU without a
// GPU: the device-code headers (csrc/cuda/*_kernels.cuh) are included after macros that turn the
// CUDA keywords into C++ and a thread/block emulation below stands in for the launch.
//
// Built and run by tests/test_cuda_backend.py (test_cuda_kernels_emulated_on_cpu): the test
// reads this file and compiles it with torch.utils.cpp_extension.load_inline (cpp_sources = this
// file's text, functions = the four emu_* entry points, csrc/ on the include path), then checks
// every emulated kernel against the float64 reference.
//
// CPU emulation of the CUDA kernels: one std::thread per CUDA thread, blocks run one after the
// other, __shared__ arrays become function statics (shared by the threads of the running block),
// __syncthreads is a barrier that fails loudly on a deadlock (a barrier not reached by all).
#include <torch/extension.h>

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

struct lk_dim3 {
  unsigned int x = 0, y = 0, z = 0;
};
static thread_local lk_dim3 threadIdx, blockIdx, blockDim;

class LkBarrier {
 public:
  explicit LkBarrier(int n) : n_(n) {}
  void wait() {
    std::unique_lock<std::mutex> lock(m_);
    if (failed_) return;
    const long gen = gen_;
    if (++count_ == n_) {
      count_ = 0;
      ++gen_;
      cv_.notify_all();
      return;
    }
    if (!cv_.wait_for(lock, std::chrono::seconds(20), [&] { return gen_ != gen || failed_; })) {
      failed_ = true;  // releases everyone; later waits return at once
      cv_.notify_all();
    }
  }
  bool failed() {
    std::lock_guard<std::mutex> lock(m_);
    return failed_;
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  int n_, count_ = 0;
  long gen_ = 0;
  bool failed_ = false;
};
static LkBarrier* lk_barrier = nullptr;
inline void __syncthreads() { lk_barrier->wait(); }

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(x)
#define __shared__ static
#define LK_CUDA_EMULATION 1

#include "cuda/content_lambda_kernels.cuh"
#include "cuda/lambda_output_kernels.cuh"

namespace lkc = lambda_kernels::cuda;

// kThreads persistent threads walk the blocks in order; a barrier after each block keeps the
// statics (__shared__) of one block from being overwritten by the next.
template <typename F>
void emu_launch(int64_t blocks, F body) {
  LkBarrier barrier(lkc::kThreads);
  lk_barrier = &barrier;
  std::vector<std::thread> threads;
  threads.reserve(lkc::kThreads);
  for (int t = 0; t < lkc::kThreads; ++t)
    threads.emplace_back([&, t] {
      for (int64_t b = 0; b < blocks && !barrier.failed(); ++b) {
        blockIdx.x = static_cast<unsigned>(b);
        threadIdx.x = t;
        blockDim.x = lkc::kThreads;
        body();
        barrier.wait();
      }
    });
  for (auto& th : threads) th.join();
  TORCH_CHECK(!barrier.failed(), "emulated __syncthreads deadlocked (a barrier not reached by all "
              "threads of a block)");
}

// Emulates launch_partial_sum (csrc/cuda/launch_helpers.cuh).
template <typename acc_t, typename out_t>
void emu_partial_sum(const at::Tensor& partial, at::Tensor& out, int64_t outer, int64_t parts,
                     int64_t inner) {
  if (outer * inner == 0) return;
  emu_launch(lkc::ceil_div(outer * inner, lkc::kThreads), [&] {
    lkc::partial_sum_kernel<acc_t, out_t>(partial.data_ptr<acc_t>(), out.data_ptr<out_t>(), outer,
                                          parts, inner);
  });
}

template <typename scalar_t, bool kSoftmax>
void emu_gram(const at::Tensor& A, const at::Tensor& Bm, const at::Tensor* lse, at::Tensor& out,
              int64_t batch, int64_t G, int64_t I, int64_t J, int64_t N) {
  using acc_t = at::opmath_type<scalar_t>;
  if (batch == 0 || I == 0 || J == 0) return;
  const lkc::GramPlan plan = lkc::gram_plan(batch, I, J, N);
  at::Tensor partial = at::full({batch, plan.chunks, I, J}, std::nan(""),
                                A.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  const acc_t* lse_ptr = kSoftmax ? lse->data_ptr<acc_t>() : nullptr;
  emu_launch(plan.blocks, [&] {
    lkc::gram_partial_kernel<scalar_t, kSoftmax>(A.data_ptr<scalar_t>(), Bm.data_ptr<scalar_t>(),
                                                 lse_ptr, partial.data_ptr<acc_t>(), G, I, J, N,
                                                 plan.chunk_len, plan.chunks, plan.i_tiles,
                                                 plan.j_tiles);
  });
  emu_partial_sum<acc_t, scalar_t>(partial, out, batch, plan.chunks, I * J);
}

std::vector<at::Tensor> emu_content_lambda(at::Tensor keys, at::Tensor values) {
  keys = keys.contiguous();
  values = values.contiguous();
  const int64_t B = keys.size(0), U = keys.size(1), K = keys.size(2), V = values.size(2);
  const int64_t N = keys.size(3) * keys.size(4);
  const auto acc = keys.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor lse = at::full({B, U, K}, std::nan(""), keys.options().dtype(acc));
  at::Tensor lam_c = at::full({B, K, V}, std::nan(""), keys.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, keys.scalar_type(), "emu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (B * U * K > 0)
      emu_launch(B * U * K, [&] {
        lkc::softmax_lse_kernel<scalar_t>(keys.data_ptr<scalar_t>(), lse.data_ptr<acc_t>(), N);
      });
    emu_gram<scalar_t, true>(keys, values, &lse, lam_c, B, U, K, V, N);
  });
  return {lam_c, lse};
}

std::vector<at::Tensor> emu_content_lambda_backward(at::Tensor d_lam, at::Tensor keys,
                                                    at::Tensor values, at::Tensor lse) {
  keys = keys.contiguous();
  values = values.contiguous();
  lse = lse.contiguous();
  d_lam = d_lam.to(lse.scalar_type()).contiguous();
  at::Tensor d_keys = at::full_like(keys, std::nan(""));
  at::Tensor d_values = at::full_like(values, std::nan(""));
  const int64_t B = keys.size(0), U = keys.size(1), K = keys.size(2), V = values.size(2);
  const int64_t N = keys.size(3) * keys.size(4);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, keys.scalar_type(), "emu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t rows = B * U * K;
    if (rows > 0 && N > 0) {
      const lkc::RowdotPlan plan = lkc::rowdot_plan(rows, N);
      at::Tensor partial = at::full({rows, plan.chunks}, std::nan(""), lse.options());
      at::Tensor rowdot = at::full({rows}, std::nan(""), lse.options());
      emu_launch(rows * plan.chunks, [&] {
        lkc::rowdot_partial_kernel<scalar_t>(keys.data_ptr<scalar_t>(), values.data_ptr<scalar_t>(),
                                             lse.data_ptr<acc_t>(), d_lam.data_ptr<acc_t>(),
                                             partial.data_ptr<acc_t>(), U, K, V, N, plan.chunk_len,
                                             plan.chunks);
      });
      emu_partial_sum<acc_t, acc_t>(partial, rowdot, rows, plan.chunks, 1);
      emu_launch(lkc::ceil_div(rows * N, lkc::kThreads), [&] {
        lkc::d_keys_kernel<scalar_t>(keys.data_ptr<scalar_t>(), values.data_ptr<scalar_t>(),
                                     lse.data_ptr<acc_t>(), d_lam.data_ptr<acc_t>(),
                                     rowdot.data_ptr<acc_t>(), d_keys.data_ptr<scalar_t>(), U, K, V,
                                     N, rows * N);
      });
    }
    const int64_t total_v = B * U * V * N;
    if (total_v > 0)
      emu_launch(lkc::ceil_div(total_v, lkc::kThreads), [&] {
        lkc::d_values_content_kernel<scalar_t>(keys.data_ptr<scalar_t>(), lse.data_ptr<acc_t>(),
                                               d_lam.data_ptr<acc_t>(),
                                               d_values.data_ptr<scalar_t>(), U, K, V, N, total_v);
      });
  });
  return {d_keys, d_values};
}

static lkc::Geometry geometry(const at::Tensor& q, const at::Tensor& E) {
  lkc::Geometry g;
  g.H = q.size(3);
  g.W = q.size(4);
  g.N = g.H * g.W;
  g.Rh = E.size(0);
  g.Rw = E.size(1);
  return g;
}

at::Tensor emu_lambda_output(at::Tensor q, at::Tensor values, at::Tensor E, at::Tensor lam) {
  q = q.contiguous();
  values = values.contiguous();
  E = E.contiguous();
  lam = lam.to(q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat).contiguous();
  const int64_t B = q.size(0), Hh = q.size(1), K = q.size(2);
  const int64_t U = values.size(1), V = values.size(2);
  const lkc::Geometry geo = geometry(q, E);
  at::Tensor y = at::full({B, Hh, V, geo.H, geo.W}, std::nan(""), q.options());
  const int64_t q_tiles = lkc::ceil_div(geo.N, lkc::kTQ), v_tiles = lkc::ceil_div(V, lkc::kTD);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "emu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    emu_launch(B * Hh * q_tiles * v_tiles, [&] {
      lkc::query_tile_kernel<scalar_t, false>(q.data_ptr<scalar_t>(), values.data_ptr<scalar_t>(),
                                           E.data_ptr<scalar_t>(), lam.data_ptr<acc_t>(),
                                           y.data_ptr<scalar_t>(), Hh, K, U, V, geo, q_tiles,
                                           v_tiles);
    });
  });
  return y;
}

std::vector<at::Tensor> emu_lambda_output_backward(at::Tensor dy, at::Tensor q, at::Tensor values,
                                                   at::Tensor E, at::Tensor lam_in) {
  dy = dy.contiguous();
  q = q.contiguous();
  values = values.contiguous();
  E = E.contiguous();
  const auto acc = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor lam = lam_in.to(acc).contiguous();
  const int64_t B = q.size(0), Hh = q.size(1), K = q.size(2);
  const int64_t U = values.size(1), V = values.size(2);
  const lkc::Geometry geo = geometry(q, E);
  const int64_t N = geo.N, Rh = geo.Rh, Rw = geo.Rw;
  at::Tensor dq = at::full_like(q, std::nan(""));
  at::Tensor d_values = at::full_like(values, std::nan(""));
  at::Tensor d_pos_table = at::full_like(E, std::nan(""));
  at::Tensor d_lam = at::full({B, K, V}, std::nan(""), lam_in.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "emu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t q_tiles = lkc::ceil_div(N, lkc::kTQ);
    const int64_t k_tiles = lkc::ceil_div(K, lkc::kTD), v_tiles = lkc::ceil_div(V, lkc::kTD);
    emu_launch(B * Hh * q_tiles * k_tiles, [&] {
      lkc::query_tile_kernel<scalar_t, true>(dy.data_ptr<scalar_t>(), values.data_ptr<scalar_t>(),
                                E.data_ptr<scalar_t>(), lam.data_ptr<acc_t>(),
                                dq.data_ptr<scalar_t>(), Hh, K, U, V, geo, q_tiles, k_tiles);
    });
    emu_launch(B * U * q_tiles * v_tiles, [&] {
      lkc::d_values_pos_kernel<scalar_t>(dy.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(),
                                         E.data_ptr<scalar_t>(), d_values.data_ptr<scalar_t>(), Hh,
                                         K, U, V, geo, q_tiles, v_tiles);
    });
    const int64_t table = Rh * Rw * K * U;
    if (table > 0) {
      const lkc::DPosTablePlan plan = lkc::d_pos_table_plan(B, Hh, N, Rh, Rw, U, K);
      at::Tensor partial = at::full({plan.slices, table}, std::nan(""), lam.options());
      emu_launch(plan.blocks, [&] {
        lkc::d_pos_table_partial_kernel<scalar_t>(dy.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(),
                                            values.data_ptr<scalar_t>(), partial.data_ptr<acc_t>(),
                                            B, Hh, K, U, V, geo, plan.k_tiles, plan.slices);
      });
      emu_partial_sum<acc_t, scalar_t>(partial, d_pos_table, 1, plan.slices, table);
    }
    emu_gram<scalar_t, false>(q, dy, nullptr, d_lam, B, Hh, K, V, N);
  });
  return {dq, d_values, d_pos_table, d_lam};
}
