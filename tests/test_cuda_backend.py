"""The fused CUDA back end (csrc/cuda): registration, values and gradients vs the reference.

- test_cuda_kernels_registered runs without a GPU: a CUDA build of torch plus an extension
  built with CUDA must have a CUDA kernel for every op (skipped only when torch has no CUDA or
  the build was explicitly without CUDA, LAMBDA_KERNELS_WITH_CUDA=0).
- test_cuda_kernels_emulated_on_cpu runs without a GPU too: it compiles the CUDA kernel headers
  (csrc/cuda/*_kernels.cuh, device code only) as plain C++ with one std::thread per CUDA thread,
  blocks run one after the other, __shared__ arrays as statics of the running block and
  __syncthreads as a barrier that fails on a deadlock, and checks every kernel against the
  reference. It exercises the real index math, tiling, shared-memory use and barrier placement.
- Everything else needs a GPU and is skipped with "no CUDA device" otherwise.

Tolerance rule (flash-attention's): the back end's error against an fp64 reference must be at
most 2x the error of the same-dtype PyTorch reference, plus a small absolute slack.
"""
from __future__ import annotations

import os
import shutil

import pytest
import torch

from lambda_kernels import _ext, backends
from lambda_kernels.functional import lambda_op
from lambda_kernels.reference import content_lambda as reference_content_lambda
from lambda_kernels.reference import lambda_reference

from lambda_kernels._meta import OP_NAMES as OPS
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
SLACK = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.5e-2}

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _cuda_build_disabled() -> bool:
    return os.environ.get("LAMBDA_KERNELS_WITH_CUDA", "auto").lower() in ("0", "no", "false", "off")


def test_cuda_kernels_registered():
    if torch.version.cuda is None:
        pytest.skip("installed torch has no CUDA")
    if _cuda_build_disabled():
        pytest.skip("extension built without CUDA (LAMBDA_KERNELS_WITH_CUDA=0)")
    reason = _ext.load()
    assert reason is None, reason
    missing = [op for op in OPS if not _ext.has_kernel(op, "CUDA")]
    assert not missing, (f"torch {torch.__version__} has CUDA {torch.version.cuda} but the "
                         f"extension has no CUDA kernel for {missing}: rebuild with "
                         "LAMBDA_KERNELS_WITH_CUDA=1")


def _cuda_backend_reason():
    if not torch.cuda.is_available():
        return "no CUDA device"
    reason = _ext.load()
    if reason is not None:
        return reason
    missing = [op for op in OPS if not _ext.has_kernel(op, "CUDA")]
    return f"extension has no CUDA kernels for {missing}" if missing else None


@pytest.fixture(scope="module")
def cuda_backend():
    reason = _cuda_backend_reason()
    if reason is not None:
        pytest.skip(reason)


# (B, heads, k, u, v, H, W, Rh, Rw, bias)
SHAPES = [
    (2, 4, 16, 1, 8, 7, 9, 5, 5, True),      # odd sizes, typical k
    (1, 1, 4, 2, 3, 1, 13, 3, 7, False),     # H = 1
    (2, 2, 8, 3, 5, 11, 1, 7, 3, True),      # W = 1
    (1, 2, 4, 4, 6, 5, 6, 13, 15, False),    # window >= 2·max(H, W), rectangular table
    (2, 3, 8, 1, 4, 6, 6, 11, 11, False),    # global context: (2n-1)² table, n = 6
    (1, 3, 20, 2, 40, 9, 10, 3, 5, True),    # k > 16 and v > 32: several channel tiles
    (1, 2, 4, 2, 4, 17, 19, 5, 3, True),     # tiles spanning rows
    (3, 1, 3, 1, 2, 1, 1, 1, 1, True),       # 1x1 image, 1x1 table
    (1, 4, 5, 3, 7, 12, 5, 1, 9, False),     # Rh = 1
]


def _inputs(shape, dtype, device="cuda", seed=0):
    b, h, k, u, v, hh, ww, rh, rw, bias = shape
    g = torch.Generator(device="cpu").manual_seed(seed)

    def rand(*s, scale=1.0):
        return (torch.randn(*s, generator=g, dtype=torch.float64) * scale).to(device=device,
                                                                                dtype=dtype)

    q = rand(b, h, k, hh, ww)
    keys = rand(b, u, k, hh, ww, scale=2.0)
    values = rand(b, u, v, hh, ww)
    pos = rand(rh, rw, k, u, scale=0.5)
    bias_t = rand(k) if bias else None
    return q, keys, values, pos, bias_t


def _run(fn, inputs, dy):
    leaves = [t.detach().clone().requires_grad_(True) if t is not None else None for t in inputs]
    y = fn(*leaves)
    grads = torch.autograd.grad(y, [t for t in leaves if t is not None], dy)
    return [y.detach()] + list(grads)


def _assert_close_rule(name, got, ref64, ref_same, dtype):
    got, ref64, ref_same = got.double(), ref64.double(), ref_same.double()
    assert got.shape == ref64.shape, name
    assert torch.isfinite(got).all(), f"{name}: non-finite values"
    scale = max(1.0, ref64.abs().max().item())
    err = (got - ref64).abs().max().item()
    ref_err = (ref_same - ref64).abs().max().item()
    bound = 2 * ref_err + SLACK[dtype] * scale
    assert err <= bound, f"{name} ({dtype}): max error {err:.3e} > bound {bound:.3e}"


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_backward_vs_reference(cuda_backend, shape, dtype):
    inputs = _inputs(shape, dtype)
    b, h, _, _, v, hh, ww = shape[:7]
    dy = torch.randn(b, h, v, hh, ww, device="cuda", dtype=torch.float64,
                     generator=torch.Generator("cuda").manual_seed(1))
    got = _run(lambda *t: lambda_op(*t, backend="cuda"), inputs, dy.to(dtype))
    ref64 = _run(lambda_reference, [None if t is None else t.double() for t in inputs], dy)
    ref_same = _run(lambda_reference, inputs, dy.to(dtype))
    names = ["y", "d_q", "d_keys", "d_values", "d_pos_table"] + (["d_bias"] if shape[-1] else [])
    for name, g, r64, rs in zip(names, got, ref64, ref_same):
        _assert_close_rule(name, g, r64, rs, dtype)


def _triton_reason(inputs):
    if "triton" not in backends.names():
        return "triton back end not registered"
    return backends.get("triton").can_run(inputs[0].device.type, inputs[0].dtype)


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES[:5], ids=str)
def test_matches_triton(cuda_backend, shape, dtype):
    inputs = _inputs(shape, dtype, seed=3)
    reason = _triton_reason(inputs)
    if reason is not None:
        pytest.skip(f"triton back end unavailable: {reason}")
    b, h, _, _, v, hh, ww = shape[:7]
    dy = torch.randn(b, h, v, hh, ww, device="cuda", dtype=dtype)
    got = _run(lambda *t: lambda_op(*t, backend="cuda"), inputs, dy)
    tri = _run(lambda *t: lambda_op(*t, backend="triton"), inputs, dy)
    ref64 = _run(lambda_reference, [None if t is None else t.double() for t in inputs],
                 dy.double())
    for g, t, r in zip(got, tri, ref64):
        # both back ends are held to the same rule against fp64, so they agree within twice it
        err_t = (t.double() - r).abs().max().item()
        scale = max(1.0, r.abs().max().item())
        assert (g.double() - t.double()).abs().max().item() <= 3 * err_t + 4 * SLACK[dtype] * scale


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES + (torch.float64,), ids=str)
def test_content_lambda_op(cuda_backend, dtype):
    keys = torch.randn(2, 3, 5, 7, 9, device="cuda", dtype=dtype) * 3
    values = torch.randn(2, 3, 6, 7, 9, device="cuda", dtype=dtype)
    lam_c, stats = torch.ops.lambda_kernels.content_lambda(keys, values)
    assert lam_c.dtype == dtype and lam_c.shape == (2, 5, 6)
    assert stats.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    lse = torch.logsumexp(keys.double().flatten(3), dim=-1)
    assert (stats.double() - lse).abs().max().item() < 1e-4 * max(1.0, lse.abs().max().item())
    ref64 = reference_content_lambda(keys.double(), values.double())
    ref_same = reference_content_lambda(keys, values)
    _assert_close_rule("lam_c", lam_c, ref64, ref_same, dtype)


@needs_gpu
def test_gradcheck_float64(cuda_backend):
    for shape in [(1, 2, 3, 2, 2, 3, 4, 3, 5, True), (2, 1, 2, 1, 3, 1, 3, 7, 3, False)]:
        inputs = [t.requires_grad_(True) for t in _inputs(shape, torch.float64) if t is not None]
        assert torch.autograd.gradcheck(lambda *t: lambda_op(*t, backend="cuda"), inputs,
                                        eps=1e-6, atol=1e-5, rtol=1e-4)


@needs_gpu
def test_opcheck(cuda_backend):
    q, keys, values, pos, _ = _inputs((2, 2, 4, 2, 3, 5, 6, 3, 5, False), torch.float32)
    ops = torch.ops.lambda_kernels
    lam_c, stats = ops.content_lambda(keys, values)
    dy = torch.randn(2, 2, 3, 5, 6, device="cuda")
    samples = [
        (ops.content_lambda.default, (keys, values)),
        (ops.content_lambda_backward.default, (torch.randn_like(lam_c), keys, values, stats)),
        (ops.lambda_output.default, (q, values, pos, lam_c)),
        (ops.lambda_output_backward.default, (dy, q, values, pos, lam_c)),
    ]
    for op, args in samples:
        torch.library.opcheck(op, args)


@needs_gpu
@pytest.mark.parametrize("dtype", (torch.float32, torch.float16), ids=str)
def test_backward_deterministic(cuda_backend, dtype):
    q, keys, values, pos, _ = _inputs((3, 4, 16, 2, 16, 23, 21, 7, 9, False), dtype)
    lam = torch.randn(3, 16, 16, device="cuda", dtype=dtype)
    dy = torch.randn(3, 4, 16, 23, 21, device="cuda", dtype=dtype)
    first = torch.ops.lambda_kernels.lambda_output_backward(dy, q, values, pos, lam)
    for _ in range(3):
        again = torch.ops.lambda_kernels.lambda_output_backward(dy, q, values, pos, lam)
        for a, b in zip(first, again):
            assert torch.equal(a, b), "CUDA backward is not bitwise deterministic"
    c1 = torch.ops.lambda_kernels.content_lambda(keys, values)
    c2 = torch.ops.lambda_kernels.content_lambda(keys, values)
    assert torch.equal(c1[0], c2[0]) and torch.equal(c1[1], c2[1])


@needs_gpu
def test_peak_memory_has_no_big_intermediates(cuda_backend):
    # λp would be B·N·k·v = 1·4096·16·64 floats = 16 MiB; logits B·h·N·r² = 4·4096·81 floats.
    q, keys, values, pos, bias = _inputs((1, 4, 16, 1, 64, 64, 64, 9, 9, True), torch.float32)
    leaves = [t.requires_grad_(True) for t in (q, keys, values, pos, bias)]
    dy = torch.randn(1, 4, 64, 64, 64, device="cuda")
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    y = lambda_op(*leaves, backend="cuda")
    torch.autograd.grad(y, leaves, dy)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    lam_p_bytes = 1 * 4096 * 16 * 64 * 4
    # outputs + gradients (y, dq, dkeys, 2x dvalues, ...) are ~5 MiB; λp alone would be 16 MiB
    assert extra < lam_p_bytes, f"peak extra memory {extra / 2**20:.1f} MiB"


@needs_gpu
def test_empty_batch_and_direct_op_checks(cuda_backend):
    ops = torch.ops.lambda_kernels
    keys = torch.randn(0, 2, 3, 4, 5, device="cuda")
    values = torch.randn(0, 2, 6, 4, 5, device="cuda")
    lam_c, stats = ops.content_lambda(keys, values)
    assert lam_c.shape == (0, 3, 6) and stats.shape == (0, 2, 3)
    q = torch.randn(0, 2, 3, 4, 5, device="cuda")
    pos = torch.randn(3, 3, 3, 2, device="cuda")
    dq, dv, dpos, dlam = ops.lambda_output_backward(torch.randn(0, 2, 6, 4, 5, device="cuda"), q,
                                                    values, pos, lam_c)
    assert torch.equal(dpos, torch.zeros_like(dpos))
    with pytest.raises(RuntimeError, match="odd"):
        ops.lambda_output(q, values, torch.randn(2, 3, 3, 2, device="cuda"), lam_c)


# ------------------------------------------------------------------ CPU emulation of the kernels
_EMULATION_SOURCE = r'''
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
  emu_launch(lkc::ceil_div(batch * I * J, lkc::kThreads), [&] {
    lkc::gram_reduce_kernel<acc_t, scalar_t>(partial.data_ptr<acc_t>(), out.data_ptr<scalar_t>(),
                                             batch, plan.chunks, I * J);
  });
}

std::vector<at::Tensor> emu_content_lambda(at::Tensor keys, at::Tensor values) {
  keys = keys.contiguous();
  values = values.contiguous();
  const int64_t B = keys.size(0), U = keys.size(1), K = keys.size(2), V = values.size(2);
  const int64_t N = keys.size(3) * keys.size(4);
  const auto acc = keys.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor stats = at::full({B, U, K}, std::nan(""), keys.options().dtype(acc));
  at::Tensor lam_c = at::full({B, K, V}, std::nan(""), keys.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, keys.scalar_type(), "emu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (B * U * K > 0)
      emu_launch(B * U * K, [&] {
        lkc::softmax_stats_kernel<scalar_t>(keys.data_ptr<scalar_t>(), stats.data_ptr<acc_t>(), N);
      });
    emu_gram<scalar_t, true>(keys, values, &stats, lam_c, B, U, K, V, N);
  });
  return {lam_c, stats};
}

std::vector<at::Tensor> emu_content_lambda_backward(at::Tensor d_lam, at::Tensor keys,
                                                    at::Tensor values, at::Tensor stats) {
  keys = keys.contiguous();
  values = values.contiguous();
  stats = stats.contiguous();
  d_lam = d_lam.to(stats.scalar_type()).contiguous();
  at::Tensor d_keys = at::full_like(keys, std::nan(""));
  at::Tensor d_values = at::full_like(values, std::nan(""));
  const int64_t B = keys.size(0), U = keys.size(1), K = keys.size(2), V = values.size(2);
  const int64_t N = keys.size(3) * keys.size(4);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, keys.scalar_type(), "emu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t rows = B * U * K;
    if (rows > 0 && N > 0) {
      const lkc::RowdotPlan plan = lkc::rowdot_plan(rows, N);
      at::Tensor partial = at::full({rows, plan.chunks}, std::nan(""), stats.options());
      at::Tensor rowdot = at::full({rows}, std::nan(""), stats.options());
      emu_launch(rows * plan.chunks, [&] {
        lkc::rowdot_partial_kernel<scalar_t>(keys.data_ptr<scalar_t>(), values.data_ptr<scalar_t>(),
                                             stats.data_ptr<acc_t>(), d_lam.data_ptr<acc_t>(),
                                             partial.data_ptr<acc_t>(), U, K, V, N, plan.chunk_len,
                                             plan.chunks);
      });
      emu_launch(lkc::ceil_div(rows, lkc::kThreads), [&] {
        lkc::rowdot_reduce_kernel<acc_t>(partial.data_ptr<acc_t>(), rowdot.data_ptr<acc_t>(), rows,
                                         plan.chunks);
      });
      emu_launch(lkc::ceil_div(rows * N, lkc::kThreads), [&] {
        lkc::d_keys_kernel<scalar_t>(keys.data_ptr<scalar_t>(), values.data_ptr<scalar_t>(),
                                     stats.data_ptr<acc_t>(), d_lam.data_ptr<acc_t>(),
                                     rowdot.data_ptr<acc_t>(), d_keys.data_ptr<scalar_t>(), U, K, V,
                                     N, rows * N);
      });
    }
    const int64_t total_v = B * U * V * N;
    if (total_v > 0)
      emu_launch(lkc::ceil_div(total_v, lkc::kThreads), [&] {
        lkc::d_values_content_kernel<scalar_t>(keys.data_ptr<scalar_t>(), stats.data_ptr<acc_t>(),
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
  at::Tensor d_pos = at::full_like(E, std::nan(""));
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
      const lkc::DPosPlan plan = lkc::d_pos_plan(B, Hh, N, Rh, Rw, U, K);
      at::Tensor partial = at::full({plan.slices, table}, std::nan(""), lam.options());
      emu_launch(plan.blocks, [&] {
        lkc::d_pos_partial_kernel<scalar_t>(dy.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(),
                                            values.data_ptr<scalar_t>(), partial.data_ptr<acc_t>(),
                                            B, Hh, K, U, V, geo, plan.k_tiles, plan.slices);
      });
      emu_launch(lkc::ceil_div(table, lkc::kThreads), [&] {
        lkc::slice_reduce_kernel<acc_t, scalar_t>(partial.data_ptr<acc_t>(),
                                                  d_pos.data_ptr<scalar_t>(), table, plan.slices);
      });
    }
    emu_gram<scalar_t, false>(q, dy, nullptr, d_lam, B, Hh, K, V, N);
  });
  return {dq, d_values, d_pos, d_lam};
}
'''

_EMULATED = ("emu_content_lambda", "emu_content_lambda_backward", "emu_lambda_output",
             "emu_lambda_output_backward")


@pytest.fixture(scope="module")
def emulated_kernels(tmp_path_factory):
    from torch.utils import cpp_extension

    if shutil.which(os.environ.get("CXX", "c++")) is None:
        pytest.skip("no C++ compiler")
    try:
        cpp_extension.verify_ninja_availability()
    except RuntimeError:
        pytest.skip("ninja is not installed (needed to compile the emulation)")
    csrc = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")
    if not os.path.isfile(os.path.join(csrc, "cuda", "lambda_output_kernels.cuh")):
        pytest.skip("csrc/ not available")
    return cpp_extension.load_inline(
        "lambda_kernels_cuda_emulation", cpp_sources=[_EMULATION_SOURCE], functions=list(_EMULATED),
        extra_include_paths=[csrc], extra_cflags=["-O1", "-w"],
        build_directory=str(tmp_path_factory.mktemp("cuda_emulation")), verbose=False)


# (B, heads, k, u, v, H, W, Rh, Rw, dtype)
EMULATION_CASES = [
    (1, 2, 3, 2, 3, 5, 7, 5, 3, torch.float64),     # odd sizes, u = 2
    (1, 1, 17, 1, 33, 2, 3, 3, 3, torch.float64),   # k > 16, v > 32: several channel tiles
    (1, 1, 2, 2, 2, 3, 3, 9, 11, torch.float64),    # window far larger than the image
    (1, 1, 2, 1, 2, 9, 5, 5, 7, torch.float64),     # 45 positions: tiles spanning rows
    (2, 1, 2, 1, 2, 40, 1, 3, 1, torch.float64),    # W = 1, several tiles, batch 2
    (1, 2, 3, 1, 2, 1, 5, 3, 3, torch.float32),
    (1, 2, 3, 1, 2, 1, 5, 3, 3, torch.float16),
    (1, 2, 3, 1, 2, 1, 5, 3, 3, torch.bfloat16),
]
_EMULATION_TOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 3e-2,
                  torch.bfloat16: 1.5e-1}


@pytest.mark.slow
@pytest.mark.parametrize("case", EMULATION_CASES, ids=str)
def test_cuda_kernels_emulated_on_cpu(emulated_kernels, case):
    from lambda_kernels.reference import positional_lambda

    b, h, k, u, v, hh, ww, rh, rw, dtype = case
    g = torch.Generator().manual_seed(0)

    def rand(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    q, keys, values = rand(b, h, k, hh, ww), rand(b, u, k, hh, ww, scale=2.0), rand(b, u, v, hh, ww)
    pos, lam = rand(rh, rw, k, u, scale=0.5), rand(b, k, v)
    dy, d_lam = rand(b, h, v, hh, ww), rand(b, k, v)
    leaves = [t.requires_grad_(True) for t in (q, keys, values, pos, lam)]
    y = (torch.einsum("bhkyx,bkv->bhvyx", q, lam)
         + torch.einsum("bhkyx,bkvyx->bhvyx", q, positional_lambda(values, pos)))
    g_q, g_values, g_pos, g_lam = torch.autograd.grad(y, [q, values, pos, lam], dy)
    lam_c = reference_content_lambda(keys, values)
    g_keys, g_values_c = torch.autograd.grad(lam_c, [keys, values], d_lam)
    lse = torch.logsumexp(keys.detach().flatten(3), dim=-1)

    def c(t):
        return t.detach().to(dtype)

    emu = emulated_kernels
    e_y = emu.emu_lambda_output(c(q), c(values), c(pos), c(lam))
    e_dq, e_dv, e_dpos, e_dlam = emu.emu_lambda_output_backward(c(dy), c(q), c(values), c(pos),
                                                                c(lam))
    e_lam_c, e_stats = emu.emu_content_lambda(c(keys), c(values))
    e_dk, e_dv_c = emu.emu_content_lambda_backward(c(d_lam), c(keys), c(values), e_stats)
    pairs = {"y": (e_y, y), "d_q": (e_dq, g_q), "d_values": (e_dv, g_values),
             "d_pos_table": (e_dpos, g_pos), "d_lam": (e_dlam, g_lam), "lam_c": (e_lam_c, lam_c),
             "stats": (e_stats, lse), "d_keys": (e_dk, g_keys),
             "d_values_content": (e_dv_c, g_values_c)}
    for name, (got, want) in pairs.items():
        want = want.detach()
        assert got.shape == want.shape, name
        assert torch.isfinite(got).all(), f"{name}: unwritten (NaN-filled) or non-finite outputs"
        err = (got.double() - want).abs().max().item()
        bound = _EMULATION_TOL[dtype] * max(1.0, want.abs().max().item())
        assert err <= bound, f"{name}: max error {err:.3e} > {bound:.3e}"
