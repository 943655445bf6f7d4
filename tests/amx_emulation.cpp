// The amx level's kernels (csrc/cpu/isa_amx.cpp: kernels.inc with the AMX micro-kernel of
// csrc/cpu/tile_amx.h) compiled as plain C++ for CPUs without AMX: LK_AMX_EMULATION makes
// tile_amx.h use the amx_* functions defined here — a scalar model of the tile unit — instead
// of the AMX intrinsics. Everything else (the avx512_bf16 code the level shares: the pair kernel
// for two vector operands, the content lambda, packing) is the real code, compiled for
// AVX-512 + AVX512_BF16 as on that level (or, where the CPU lacks them, through the AVX-512
// model of tests/avx512_emulation.h: LK_EMULATE_AVX512); only bf16 is instantiated (the
// dtypes the AMX code serves).
//
// Built and run by tests/test_amx_emulation.py: the test compiles this file's text with
// torch.utils.cpp_extension.load_inline (csrc/ on the include path) and checks the four entry
// points emu_* against the float64 reference.
//
// The model, per thread (tile state is per thread on the hardware; every ATen worker must load
// its own configuration):
//   ldtilecfg   reads the 64-byte palette-1 configuration: rows (≤ 16) and bytes per row
//               (colsb ≤ 64) of each of the 8 tiles; palette 0 releases; anything else faults.
//   tilerelease returns to the init state (no configuration: every tile instruction faults).
//   tileloadd / tilestored  move rows × colsb bytes between a tile and memory rows `stride`
//               bytes apart; a load zeroes the rest of the 1 KiB register.
//   tilezero    zeroes a tile.
//   tdpbf16ps   tmm0-7: C[m][n] += a[m][2k]·b[k][2n] then += a[m][2k+1]·b[k][2n+1] for
//               k < A.colsb/4, in fp32 with round-to-nearest-even, bf16 denormals read as zero
//               and fp32 denormal results flushed to zero (Intel SDM / intrinsics guide); the
//               shape checks of the SDM (#UD) raise an error.
// A fault is a C++ exception: through at::parallel_for it reaches the test as a RuntimeError.
// Not modelled: the real ldtilecfg's fault on reserved bytes, start_row restarts, and the OS
// side (the arch_prctl permission: isa_dispatch.cpp, tested by tests/test_cpu_isa.py).
#include <torch/extension.h>

#include <atomic>
#include <cmath>
#include <stdexcept>
#include <string>

#include "cpu/kernel_prelude.h"
#include "bf16_model.h"

namespace amx_model {

struct Tile {
  int rows = 0;
  int colsb = 0;
  alignas(64) uint8_t bytes[16][64] = {};
};
struct State {
  bool configured = false;
  Tile tiles[8];
};
thread_local State state;
std::atomic<int64_t> configs{0}, releases{0}, dots{0};

[[noreturn]] inline void fault(const std::string& what) {
  throw std::runtime_error("AMX emulation: " + what);
}

inline Tile& configured_tile(int t) {
  if (!state.configured) fault("tile instruction without a loaded configuration (#UD)");
  Tile& tile = state.tiles[t];
  if (tile.rows == 0 || tile.colsb == 0) fault("tmm" + std::to_string(t) + " is not configured");
  return tile;
}

using bf16_model::flush_denormal;
using bf16_model::float_of_bf16_daz;

}  // namespace amx_model

// The amx_* interface of tile_amx.h.
inline void amx_load_config(const void* config) {
  using namespace amx_model;
  const uint8_t* raw = static_cast<const uint8_t*>(config);
  const uint8_t palette = raw[0];
  if (palette == 0) {
    state = State{};
    return;
  }
  if (palette != 1) fault("palette " + std::to_string(palette) + " (only 1 exists)");
  if (raw[1] != 0) fault("start_row must be 0");
  State next;
  next.configured = true;
  for (int t = 0; t < 8; ++t) {
    uint16_t colsb;
    std::memcpy(&colsb, raw + 16 + 2 * t, 2);
    const int rows = raw[48 + t];
    if (rows > 16 || colsb > 64) fault("tile " + std::to_string(t) + " larger than 16 × 64 bytes");
    if ((rows == 0) != (colsb == 0)) fault("tile " + std::to_string(t) + " half configured");
    next.tiles[t].rows = rows;
    next.tiles[t].colsb = colsb;
  }
  state = next;
  ++configs;
}

inline void amx_release() {
  amx_model::state = amx_model::State{};
  ++amx_model::releases;
}

template <int T>
void amx_zero() {
  amx_model::Tile& tile = amx_model::configured_tile(T);
  std::memset(tile.bytes, 0, sizeof(tile.bytes));
}

template <int T>
void amx_load(const void* p, int64_t stride) {
  amx_model::Tile& tile = amx_model::configured_tile(T);
  std::memset(tile.bytes, 0, sizeof(tile.bytes));
  for (int r = 0; r < tile.rows; ++r)
    std::memcpy(tile.bytes[r], static_cast<const uint8_t*>(p) + r * stride, size_t(tile.colsb));
}

template <int T>
void amx_store(void* p, int64_t stride) {
  const amx_model::Tile& tile = amx_model::configured_tile(T);
  for (int r = 0; r < tile.rows; ++r)
    std::memcpy(static_cast<uint8_t*>(p) + r * stride, tile.bytes[r], size_t(tile.colsb));
}

// tdpbf16ps tmm0, tmm1, tmm2
inline void amx_dot_bf16() {
  using namespace amx_model;
  Tile& c = configured_tile(0);
  const Tile& a = configured_tile(1);
  const Tile& b = configured_tile(2);
  if (c.colsb % 4 || a.colsb % 4 || b.colsb % 4) fault("tdpbf16ps: colsb not a multiple of 4");
  if (c.rows != a.rows) fault("tdpbf16ps: C rows != A rows");
  if (a.colsb / 4 != b.rows) fault("tdpbf16ps: A pairs per row != B rows");
  if (c.colsb != b.colsb) fault("tdpbf16ps: C bytes per row != B bytes per row");
  Tile out;  // rows past C's and bytes past colsb end zero
  out.rows = c.rows;
  out.colsb = c.colsb;
  for (int m = 0; m < c.rows; ++m) {
    float tmp[16];
    std::memcpy(tmp, c.bytes[m], sizeof(tmp));
    for (float& v : tmp) v = flush_denormal(v);
    for (int k = 0; k < a.colsb / 4; ++k) {
      uint16_t a_pair[2], b_pair[2];
      std::memcpy(a_pair, a.bytes[m] + 4 * k, 4);
      for (int n = 0; n < c.colsb / 4; ++n) {
        std::memcpy(b_pair, b.bytes[k] + 4 * n, 4);
        // products of two bf16 are exact in fp32; each sum rounds (RNE, the default mode)
        volatile float p0 = float_of_bf16_daz(a_pair[0]) * float_of_bf16_daz(b_pair[0]);
        tmp[n] = flush_denormal(tmp[n] + p0);
        volatile float p1 = float_of_bf16_daz(a_pair[1]) * float_of_bf16_daz(b_pair[1]);
        tmp[n] = flush_denormal(tmp[n] + p1);
      }
    }
    std::memcpy(out.bytes[m], tmp, size_t(c.colsb));
  }
  std::memcpy(c.bytes, out.bytes, sizeof(out.bytes));
  ++dots;
}

// The level, as isa_amx.cpp builds it, bf16 only: compiled for AVX-512 + AVX512_BF16, or, with
// LK_EMULATE_AVX512 (a CPU without them), with the AVX-512 intrinsics through their models
// (tests/avx512_emulation.h; no register holds 64 bytes there, so the tiles' register pins
// become memory operands).
#if defined(LK_EMULATE_AVX512)
#include "avx512_emulation.h"
#define LK_VECTOR_REGISTER(v) "+m"(v)
#else
#define LK_VECTOR_REGISTER(v) "+v"(v)
#endif
#define LK_VECTOR_BYTES 64
#define LK_TILE_ROWS 4
#define LK_TILE_COLS 6
#define LK_ISA_NAME "amx-emulated"
#define LK_BF16_PAIRS 1
#define LK_AMX 1
#define LK_AMX_EMULATION 1
#define LK_DISPATCH_FLOATING(dtype, name, ...) \
  AT_DISPATCH_SWITCH(dtype, name, AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

#if !defined(LK_EMULATE_AVX512)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma")
#endif
namespace lambda_kernels {
namespace cpu {
namespace amx_emulated {
#include "cpu/kernels.inc"
}  // namespace amx_emulated
}  // namespace cpu
}  // namespace lambda_kernels
#if !defined(LK_EMULATE_AVX512)
#pragma GCC pop_options
#endif

#include "emulated_kernel_calls.h"

namespace {
const lambda_kernels::cpu::CpuKernels& kKernels = lambda_kernels::cpu::amx_emulated::kKernels;
}  // namespace

// The four ops for bf16 inputs (the direct kernels: the spectral method computes in fp32
// whatever the level).
std::vector<at::Tensor> emu_content_lambda(at::Tensor keys, at::Tensor values) {
  return emulated_calls::content_lambda(kKernels, keys, values);
}

std::vector<at::Tensor> emu_content_lambda_backward(at::Tensor d_lam, at::Tensor keys,
                                                    at::Tensor values, at::Tensor stats) {
  return emulated_calls::content_lambda_backward(kKernels, d_lam, keys, values, stats);
}

at::Tensor emu_lambda_output(at::Tensor q, at::Tensor values, at::Tensor pos_table,
                             at::Tensor lam) {
  return emulated_calls::lambda_output(kKernels, false, q, values, pos_table, lam);
}

std::vector<at::Tensor> emu_lambda_output_backward(at::Tensor dy, at::Tensor q, at::Tensor values,
                                                   at::Tensor pos_table, at::Tensor lam) {
  return emulated_calls::lambda_output_backward(kKernels, false, dy, q, values, pos_table, lam);
}

// (configurations loaded, releases, tdpbf16ps executed) since the last call, all threads.
std::vector<int64_t> emu_amx_counters() {
  return {amx_model::configs.exchange(0), amx_model::releases.exchange(0),
          amx_model::dots.exchange(0)};
}
