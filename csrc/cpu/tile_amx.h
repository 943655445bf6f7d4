// The bf16 micro-kernel of the amx level (Intel AMX-BF16 tiles: Sapphire Rapids and later Xeons):
// tile_gemm (tile.h) on bf16 operands with fp32 accumulation, on TDPBF16PS where the contraction
// is a matrix product, on the vdpbf16ps pair kernel of tile_bf16.h (which this level also has)
// where it is not. Included by kernels.inc instead of tile_bf16.h on the level that defines
// LK_AMX; tile_bf16.h is included here, inside the namespace `pairs`, so its pair kernel and its
// content-lambda helpers serve this level unchanged.
//
// Math. tile_gemm computes C(i, j)[x] (+)= Σ_s A(i; s)[x] · B(j; s)[x] over the 16 lanes x (image
// positions) of a vector. When exactly one operand is a broadcast — W(r; s), the same scalar in
// every lane — and the other, X(q; s)[x], a vector, this is for every q an ordinary product
//     C_q[r][x] = Σ_s W[r][s] · X_q[s][x]          (R × 16 fp32) = (R × S bf16) · (S × 16 bf16)
// with C_q's row r the C vector (q, r) (LA vector: C(q, r); LA broadcast: C(r, q)). TDPBF16PS
// computes one 16 × 16 fp32 block of it from a 16-row block of W (tile rows: r, 64 bytes = 32
// steps s) and the matching 32 steps of X_q in VNNI layout (tile row p: the 16 lanes of steps 2p
// and 2p + 1 interleaved word by word — the pairs vdpbf16ps takes too), adding both products of
// a pair to the fp32 element in order, RNE, bf16 denormals as zero (every product of two bf16 is
// exact in fp32). Pairs are two consecutive steps of the flattened reduction s = (s0, s1, s2),
// zero-padded to a multiple of 32: the same exact products as tile_bf16.h's, summed in fp32 in
// another order, so the bf16 tolerance of the avx512_bf16 level holds.
//
// Tile shapes. One palette-1 configuration for every call, three of the 8 tile registers, each
// at the hardware maximum of 16 rows × 64 bytes (1 KiB): tmm0 the C block (16 × 16 fp32: one row
// is one C vector of 16 lanes, so C needs no transpose), tmm1 a W block (16 rows × 32 bf16),
// tmm2 an X block (16 pair rows × 16 lanes). Maximal tiles make each TDPBF16PS 16·16·32 = 8192
// multiply-adds; partial blocks are zero-padded in the packed copies instead of reconfigured.
//
// Packing. Per call, W once into rows [R padded to 16][S padded to 32] bf16 (zeros outside);
// per q, X_q into [S/2 padded to 16][16 lanes] pairs (1 KiB per 32 steps). C goes through a
// 1 KiB fp32 scratch tile when a block has fewer than 16 rows or C is bf16 (rounded to nearest
// even, exactly where tile_bf16.h rounds); a whole fp32 block is loaded from and stored to C
// directly (its rows, the C vectors, are r_stride apart).
//
// Cost model. A TDPBF16PS is 8192 multiply-adds (16 cycles on Sapphire Rapids: 512 per cycle,
// 8× two vdpbf16ps ports) for two tile loads (2 KiB from L1). Per q, packing X_q costs one
// 64-byte pair row per two steps, reused by the ⌈R/16⌉ blocks of W (R: the broadcast rows —
// table columns, k or v); W is packed once per call. Both operands vectors (the logits × values
// and gradient products: C(i, j)[x] = Σ_s A(i; s)[x] · B(j; s)[x]) is diagonal in x: on tiles
// it is 16 separate products per lane, each with both operands transposed lane by lane — a
// packing of (1/rows + 1/cols) elements per multiply-add, ≥ 1/4 at 4 heads, far more than the
// multiply-adds cost on tiles. These keep the pair kernel (vdpbf16ps needs no packing).
//
// Configuration. Tile state is per thread, so each ATen worker configures its own: the first
// tile_gemm inside a TileScope (one per parallel chunk of lambda_output_kernels.inc) loads the
// configuration (ldtilecfg), the scope's end releases it (tilerelease: the thread's tile state
// returns to init, so context switches stop saving 8 KiB of tiles). Not a thread-lifetime flag:
// other code on the same threads between our calls — oneDNN's AMX kernels under torch — loads
// its own configurations and releases them. A call outside any scope configures and releases
// itself. The OS permission for the tile data (arch_prctl ARCH_REQ_XCOMP_PERM,
// XFEATURE_XTILEDATA) is requested once per process by isa_dispatch.cpp before this level is
// accepted.
//
// The tile instructions are reached only through the amx_* wrappers below;
// tests/amx_emulation.cpp defines LK_AMX_EMULATION and its own scalar amx_* to run this file's
// logic on CPUs without AMX.

namespace pairs {
#include "tile_bf16.h"
}  // namespace pairs

using pairs::bf16;
using pairs::combine_pairs;
using pairs::dot_bf16;
using pairs::pair_rows;
using pairs::pair_weights;

constexpr int64_t kAmxRows = 16;                  // rows of every tile
constexpr int64_t kAmxRowBytes = 64;              // bytes of every tile row
constexpr int64_t kAmxLanes = kAmxRowBytes / 4;   // fp32 lanes of a C row = pairs of an X row
constexpr int64_t kAmxSteps = kAmxRowBytes / 2;   // reduction steps per W row (bf16)
static_assert(Simd<float>::kLanes == kAmxLanes, "a C row of a tile is one fp32 vector");

inline int64_t amx_round_up(int64_t n, int64_t multiple) {
  return (n + multiple - 1) / multiple * multiple;
}

// ldtilecfg's 64-byte operand (palette 1).
struct alignas(64) AmxTileConfig {
  uint8_t palette;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

// tmm0 (C), tmm1 (W), tmm2 (X): 16 rows × 64 bytes each; the other tiles unused.
inline AmxTileConfig amx_tile_config() {
  AmxTileConfig config{};
  config.palette = 1;
  for (int t = 0; t < 3; ++t) {
    config.rows[t] = uint8_t(kAmxRows);
    config.colsb[t] = uint16_t(kAmxRowBytes);
  }
  return config;
}

#if !defined(LK_AMX_EMULATION)
// The intrinsics are inline asm without a memory operand: the barriers tell the compiler that
// a tile load reads, and a tile store writes, the memory around them.
LK_INLINE void amx_compiler_barrier() { asm volatile("" ::: "memory"); }
LK_INLINE void amx_load_config(const void* config) {
  amx_compiler_barrier();
  _tile_loadconfig(config);
}
LK_INLINE void amx_release() { _tile_release(); }
// Tile numbers are part of the instruction (the intrinsics paste them into the asm text).
template <int T>
LK_INLINE void amx_zero() {
  if constexpr (T == 0) _tile_zero(0);
  else if constexpr (T == 1) _tile_zero(1);
  else { static_assert(T == 2); _tile_zero(2); }
}
template <int T>
LK_INLINE void amx_load(const void* p, int64_t stride) {
  amx_compiler_barrier();
  if constexpr (T == 0) _tile_loadd(0, p, stride);
  else if constexpr (T == 1) _tile_loadd(1, p, stride);
  else { static_assert(T == 2); _tile_loadd(2, p, stride); }
}
template <int T>
LK_INLINE void amx_store(void* p, int64_t stride) {
  static_assert(T == 0);
  _tile_stored(0, p, stride);
  amx_compiler_barrier();
}
// tmm0 += tmm1 · tmm2 (bf16 pairs, fp32 accumulation)
LK_INLINE void amx_dot_bf16() { _tile_dpbf16ps(0, 1, 2); }
#endif

// Tile state of this thread. Inside a TileScope (one per parallel chunk of the kernels, where
// nothing but our code runs on the thread) the first tile_gemm loads the configuration and the
// scope's end releases it; outside any scope every call configures and releases.
struct AmxThreadState {
  int scopes = 0;
  bool configured = false;
};
inline AmxThreadState& amx_thread_state() {
  thread_local AmxThreadState state;
  return state;
}
inline void amx_release_if_configured(AmxThreadState& state) {
  if (state.configured) {
    amx_release();
    state.configured = false;
  }
}

class TileScope {
 public:
  TileScope() { ++amx_thread_state().scopes; }
  ~TileScope() {
    AmxThreadState& state = amx_thread_state();
    if (--state.scopes == 0) amx_release_if_configured(state);
  }
  TileScope(const TileScope&) = delete;
  TileScope& operator=(const TileScope&) = delete;
};

// Configures this thread's tiles for one call; releases them at the end unless a scope holds.
class AmxCallTiles {
 public:
  AmxCallTiles() : state_(amx_thread_state()) {
    if (!state_.configured) {
      const AmxTileConfig config = amx_tile_config();
      amx_load_config(&config);
      state_.configured = true;
    }
  }
  ~AmxCallTiles() {
    if (state_.scopes == 0) amx_release_if_configured(state_);
  }
  AmxCallTiles(const AmxCallTiles&) = delete;
  AmxCallTiles& operator=(const AmxCallTiles&) = delete;

 private:
  AmxThreadState& state_;
};

// Per-thread packing buffers, grown as needed.
struct AmxScratch {
  std::vector<uint16_t> w;         // [R padded to 16][S padded to 32] bf16 bits
  std::vector<uint32_t> x;         // [S/2 padded to 16][16] bf16 pairs
  std::vector<int64_t> x_offsets;  // element offset of each flat step s of X
  alignas(64) float c[kAmxRows * kAmxLanes];
};
inline AmxScratch& amx_scratch() {
  thread_local AmxScratch scratch;
  return scratch;
}

// Offsets of the flat steps s = (s0, s1, s2), row-major, of one operand.
inline void amx_step_offsets(const Operand<bf16>& o, const Reduction& r,
                             std::vector<int64_t>& out) {
  out.resize(size_t(r.count[0] * r.count[1] * r.count[2]));
  int64_t s = 0;
  for (int64_t s0 = 0; s0 < r.count[0]; ++s0)
    for (int64_t s1 = 0; s1 < r.count[1]; ++s1)
      for (int64_t s2 = 0; s2 < r.count[2]; ++s2)
        out[size_t(s++)] = s0 * o.step[0] + s1 * o.step[1] + s2 * o.step[2];
}

// Row `row` of W (its S flat steps) as bf16 bits at out; runs along s2 copied whole when s2 is
// the contiguous axis (the table's k).
inline void amx_pack_w_row(const Operand<bf16>& w, int64_t row, const Reduction& r,
                           uint16_t* out) {
  const bf16* in = w.ptr + row * w.lane;
  const int64_t n2 = r.count[2];
  for (int64_t s0 = 0; s0 < r.count[0]; ++s0)
    for (int64_t s1 = 0; s1 < r.count[1]; ++s1, out += n2) {
      const bf16* run = in + s0 * w.step[0] + s1 * w.step[1];
      if (w.step[2] == 1) {
        std::memcpy(out, run, size_t(n2) * sizeof(bf16));
      } else {
        for (int64_t s2 = 0; s2 < n2; ++s2) out[s2] = run[s2 * w.step[2]].x;
      }
    }
}

// The tile loop: tmm0 = (accumulate ? C : 0) + Σ_blocks W block · X block, stored to C (16 rows
// of 16 fp32, c_stride bytes apart). W block b at w + b·32 (rows w_stride bytes apart), X block
// b at x + b·256.
template <bool kAccumulate>
__attribute__((noinline)) void amx_tile_kernel(float* c, int64_t c_stride, const uint16_t* w,
                                               int64_t w_stride, const uint32_t* x,
                                               int64_t blocks) {
  if constexpr (kAccumulate) {
    amx_load<0>(c, c_stride);
  } else {
    amx_zero<0>();
  }
  for (int64_t block = 0; block < blocks; ++block) {
    amx_load<1>(w + block * kAmxSteps, w_stride);
    amx_load<2>(x + block * kAmxRows * kAmxLanes, kAmxRowBytes);
    amx_dot_bf16();
  }
  amx_store<0>(c, c_stride);
}

// C (+)= the contraction with W the broadcast operand (count rows R) and X the vector one
// (count Q). C vector (q, r) at c.ptr + q·q_stride + r·r_stride.
template <typename C>
void amx_broadcast_gemm(int64_t Q, int64_t R, int64_t q_stride, int64_t r_stride,
                        const Accumulator<C>& c, bool accumulate, const Operand<bf16>& vec,
                        const Operand<bf16>& bcast, const Reduction& r) {
  AmxScratch& s = amx_scratch();
  const int64_t S = r.count[0] * r.count[1] * r.count[2];
  const int64_t s_pad = amx_round_up(S, kAmxSteps);
  const int64_t r_pad = amx_round_up(R, kAmxRows);
  const int64_t blocks = s_pad / kAmxSteps;
  s.w.resize(size_t(r_pad * s_pad));
  s.x.resize(size_t(s_pad / 2 * kAmxLanes));
  for (int64_t row = 0; row < r_pad; ++row) {
    uint16_t* out = s.w.data() + row * s_pad;
    if (row < R) amx_pack_w_row(bcast, row, r, out);
    std::fill(out + (row < R ? S : 0), out + s_pad, uint16_t(0));
  }
  amx_step_offsets(vec, r, s.x_offsets);
  const AmxCallTiles tiles;
  for (int64_t q = 0; q < Q; ++q) {
    const bf16* in = vec.ptr + q * vec.lane;
    for (int64_t p = 0; p < s_pad / 2; ++p) {  // X_q in pairs of steps (2p, 2p + 1)
      uint32_t* out = s.x.data() + p * kAmxLanes;
      if (2 * p + 1 < S) {
        const bf16* lo = in + s.x_offsets[size_t(2 * p)];
        const bf16* hi = in + s.x_offsets[size_t(2 * p + 1)];
        for (int64_t l = 0; l < kAmxLanes; ++l) out[l] = uint32_t(lo[l].x) | uint32_t(hi[l].x) << 16;
      } else if (2 * p < S) {
        const bf16* lo = in + s.x_offsets[size_t(2 * p)];
        for (int64_t l = 0; l < kAmxLanes; ++l) out[l] = uint32_t(lo[l].x);
      } else {
        std::fill(out, out + kAmxLanes, 0u);
      }
    }
    for (int64_t r0 = 0; r0 < R; r0 += kAmxRows) {
      const int64_t rows = std::min(kAmxRows, R - r0);
      C* dst = c.ptr + q * q_stride + r0 * r_stride;
      const uint16_t* w = s.w.data() + r0 * s_pad;
      if constexpr (std::is_same_v<C, float>) {
        if (rows == kAmxRows) {  // a whole block: the tile moves to and from C itself
          if (accumulate)
            amx_tile_kernel<true>(dst, r_stride * 4, w, s_pad * 2, s.x.data(), blocks);
          else
            amx_tile_kernel<false>(dst, r_stride * 4, w, s_pad * 2, s.x.data(), blocks);
          continue;
        }
        if (accumulate) {
          for (int64_t row = 0; row < rows; ++row)
            std::memcpy(s.c + row * kAmxLanes, dst + row * r_stride, kAmxRowBytes);
          amx_tile_kernel<true>(s.c, kAmxRowBytes, w, s_pad * 2, s.x.data(), blocks);
        } else {
          amx_tile_kernel<false>(s.c, kAmxRowBytes, w, s_pad * 2, s.x.data(), blocks);
        }
        for (int64_t row = 0; row < rows; ++row)
          std::memcpy(dst + row * r_stride, s.c + row * kAmxLanes, kAmxRowBytes);
      } else {  // bf16: written, never accumulated; rounded to nearest even
        amx_tile_kernel<false>(s.c, kAmxRowBytes, w, s_pad * 2, s.x.data(), blocks);
        for (int64_t row = 0; row < rows; ++row)
          for (int64_t l = 0; l < kAmxLanes; ++l)
            dst[row * r_stride + l] = bf16(s.c[row * kAmxLanes + l]);
      }
    }
  }
}

// tile_gemm on bf16 operands: C (fp32, or bf16 when not accumulating) (+)= the reduction; one
// broadcast operand on tiles, two vector operands on the pair kernel (see the top of the file).
template <typename P, Load LA, Load LB, typename C,
          std::enable_if_t<std::is_same_v<P, bf16>, int> = 0>
void tile_gemm(int64_t rows, int64_t cols, const Accumulator<C>& c, bool accumulate,
               const Operand<bf16>& a, const Operand<bf16>& b, const Reduction& r) {
  const bool empty = rows <= 0 || cols <= 0 || r.count[0] <= 0 || r.count[1] <= 0 ||
                     r.count[2] <= 0;
  if constexpr (LA == LB) {
    pairs::tile_gemm<P, LA, LB, C>(rows, cols, c, accumulate, a, b, r);
  } else {
    if (empty) {
      pairs::tile_gemm<P, LA, LB, C>(rows, cols, c, accumulate, a, b, r);
      return;
    }
    if constexpr (std::is_same_v<C, bf16>)
      TORCH_CHECK(!accumulate, "lambda_kernels: bf16 tile outputs are written, not accumulated");
    if constexpr (LA == Load::kVector)
      amx_broadcast_gemm<C>(rows, cols, c.row_stride, c.col_stride, c, accumulate, a, b, r);
    else
      amx_broadcast_gemm<C>(cols, rows, c.col_stride, c.row_stride, c, accumulate, b, a, r);
  }
}
