// The bf16 micro-kernel of the levels with AVX512_BF16 (vdpbf16ps): the same contraction as
// tile_kernel (tile.h), on bf16 operands, with fp32 accumulators.
//
//   C[i][j] (+)= Σ_{s0, s1, s2} A(i; s0, s1, s2) · B(j; s0, s1, s2)
//
// vdpbf16ps multiplies pairs of bf16 in each 32-bit lane and adds both products to the fp32
// lane: acc[x] += A[x][s]·B[x][s] + A[x][s+1]·B[x][s+1]. The kernel forms those pairs from two
// consecutive steps of the innermost reduction level, s2 and s2 + 1, at load time — whatever
// their distance in memory — so every call site of tile_gemm keeps its operand layout and its
// addressing (a channel stride, a shift of one position, a negative step):
//   vector operand     the 16 positions of step s2 and of step s2 + 1 (two loads), interleaved
//                      word by word into 16 pairs by one vpermt2w;
//   broadcast operand  the two scalars of steps s2 and s2 + 1 as one 32-bit pair broadcast to
//                      all lanes (one vpbroadcastd from memory when they are adjacent, step 1).
// An odd trip count ends with one unpaired step whose partner is zero.
//
// Loads. A vector operand is read as 64 bytes at the step's address and 64 bytes at the next
// step's (the second folds into vpermt2w as its memory operand, so the pair needs no extra
// register); only the first 32 bytes of each are used. Every bf16 buffer the kernels read
// therefore keeps kPairOverread bytes of slack after its last element (packed inputs and
// scratch; see pair_slack below), and the unused bytes are never interpreted.
//
// Output: fp32 accumulators stored as fp32 (outputs, partials; kAccumulate reads them back) or
// rounded to bf16 (intermediates — logits, their gradients, λp — that a later contraction reads
// as its bf16 operand; rounded exactly where the bf16 reference rounds them).
//
// Registers (32 zmm): MA·MB accumulators + the interleave index + 1 operand of A + MB of B;
// tile 4 × 6 with an adjacent broadcast B folded into vdpbf16ps as an embedded broadcast
// (24 + 1 + 1 + spare), 4 × 5 when B is a vector or a pair built from two word broadcasts
// (20 + 1 + 1 + 5), 4 × 4 when A is such a built pair (its temporaries; 4 × 5 spills).
//
// Included by kernels.inc after tile.h on levels that define LK_BF16_PAIRS.

using bf16 = at::BFloat16;

constexpr int64_t kPairOverread = 64;  // bytes read past the last used element of a bf16 buffer
// Elements of slack a bf16 buffer needs after its last element.
constexpr int64_t kPairSlack = kPairOverread / int64_t(sizeof(bf16));

// Word 2i of the result: word i of the first table; word 2i + 1: word i of the second (word 32
// + i of the concatenation).
LK_INLINE __m512i pair_index() {
  return _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8,
                          39, 7, 38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
}

LK_INLINE __m512i load_words(const bf16* p) { return _mm512_loadu_si512(p); }

// The words at p and p + step as a pair in every lane: two word broadcasts, interleaved
// (no general-purpose registers: the tile loops need all of them for addresses).
LK_INLINE __m512i broadcast_pair(const bf16* p, int64_t step) {
  return _mm512_unpacklo_epi16(_mm512_set1_epi16(short(p[0].x)), _mm512_set1_epi16(short(p[step].x)));
}
LK_INLINE uint32_t adjacent_pair(const bf16* p) {
  uint32_t pair;
  std::memcpy(&pair, p, sizeof(pair));
  return pair;
}

// The pair (step s, step s + 1) of one operand as 16 lanes of two bf16 each.
template <Load L, bool kAdjacent>
LK_INLINE __m512i load_pair(const bf16* p, int64_t step, __m512i index) {
  if constexpr (L == Load::kVector) {
    return _mm512_permutex2var_epi16(load_words(p), index, load_words(p + step));
  } else if constexpr (kAdjacent) {
    return _mm512_set1_epi32(int(adjacent_pair(p)));
  } else {
    return broadcast_pair(p, step);
  }
}

// The last, unpaired step: its partner is zero.
template <Load L>
LK_INLINE __m512i load_single(const bf16* p, __m512i index) {
  if constexpr (L == Load::kVector) {
    return _mm512_permutex2var_epi16(load_words(p), index, _mm512_setzero_si512());
  } else {
    return _mm512_set1_epi32(int(uint32_t(p[0].x)));
  }
}

LK_INLINE __m512 dot_pairs(__m512 acc, __m512i a, __m512i b) {
  return _mm512_dpbf16_ps(acc, (__m512bh)a, (__m512bh)b);
}

template <typename C>
LK_INLINE void store_accumulator(C* p, __m512 v) {
  if constexpr (std::is_same_v<C, float>) {
    _mm512_storeu_ps(p, v);
  } else {
    static_assert(std::is_same_v<C, bf16>);
    const __m256bh rounded = _mm512_cvtneps_pbh(v);
    std::memcpy(p, &rounded, sizeof(rounded));
  }
}

template <typename C>
struct PairTileRun {
  Accumulator<C> c;
  Operand<bf16> a, b;
  Reduction r;
  int64_t tiles, c_next, a_next, b_next;
};

// kAdjacent: the broadcast operand's innermost step is 1 (its pair is one 32-bit load).
template <typename C, int MA, int MB, Load LA, Load LB, bool kAccumulate, bool kAdjacent>
void pair_tile_kernel(const PairTileRun<C> run) {
  static_assert(!(kAccumulate && std::is_same_v<C, bf16>), "bf16 outputs are written, not summed");
  const int64_t n0 = run.r.count[0], n1 = run.r.count[1], n2 = run.r.count[2];
  const int64_t pairs = n2 / 2;
  const bool odd = (n2 & 1) != 0;
  const int64_t a_lane = run.a.lane, b_lane = run.b.lane;
  const int64_t c_row = run.c.row_stride, c_col = run.c.col_stride;
  const int64_t a_step0 = run.a.step[0], a_step1 = run.a.step[1], a_step2 = run.a.step[2];
  const int64_t b_step0 = run.b.step[0], b_step1 = run.b.step[1], b_step2 = run.b.step[2];
  constexpr bool kAdjacentA = LA == Load::kBroadcast && kAdjacent;
  constexpr bool kAdjacentB = LB == Load::kBroadcast && kAdjacent;
  __m512i index = pair_index();
  keep_in_register(index);
  for (int64_t tile = 0; tile < run.tiles; ++tile) {
    C* const c = run.c.ptr + tile * run.c_next;
    const bf16* const a = run.a.ptr + tile * run.a_next;
    const bf16* const b = run.b.ptr + tile * run.b_next;
    __m512 acc[MA][MB];
#pragma GCC unroll 8
    for (int i = 0; i < MA; ++i)
#pragma GCC unroll 8
      for (int j = 0; j < MB; ++j) {
        if constexpr (kAccumulate) {
          acc[i][j] = _mm512_loadu_ps(reinterpret_cast<const float*>(c + i * c_row + j * c_col));
        } else {
          acc[i][j] = _mm512_setzero_ps();
        }
      }
    for (int64_t s0 = 0; s0 < n0; ++s0) {
      for (int64_t s1 = 0; s1 < n1; ++s1) {
        const bf16* pa = a + s0 * a_step0 + s1 * a_step1;
        const bf16* pb = b + s0 * b_step0 + s1 * b_step1;
        // counted down to zero: no register or stack slot for the bound
        for (int64_t s2 = pairs; s2 > 0; --s2, pa += 2 * a_step2, pb += 2 * b_step2) {
          __m512i bv[MB];
#pragma GCC unroll 8
          for (int j = 0; j < MB; ++j) bv[j] = load_pair<LB, kAdjacentB>(pb + j * b_lane, b_step2, index);
#pragma GCC unroll 8
          for (int i = 0; i < MA; ++i) {
            __m512i av = load_pair<LA, kAdjacentA>(pa + i * a_lane, a_step2, index);
            keep_in_register(av);
#pragma GCC unroll 8
            for (int j = 0; j < MB; ++j) acc[i][j] = dot_pairs(acc[i][j], av, bv[j]);
          }
        }
        if (odd) {
          __m512i bv[MB];
#pragma GCC unroll 8
          for (int j = 0; j < MB; ++j) bv[j] = load_single<LB>(pb + j * b_lane, index);
#pragma GCC unroll 8
          for (int i = 0; i < MA; ++i) {
            const __m512i av = load_single<LA>(pa + i * a_lane, index);
#pragma GCC unroll 8
            for (int j = 0; j < MB; ++j) acc[i][j] = dot_pairs(acc[i][j], av, bv[j]);
          }
        }
      }
    }
#pragma GCC unroll 8
    for (int i = 0; i < MA; ++i)
#pragma GCC unroll 8
      for (int j = 0; j < MB; ++j) store_accumulator(c + i * c_row + j * c_col, acc[i][j]);
  }
}

// Tile columns per operand kind (register budget above). Four rows, as on the fp32 avx512
// level: the heads (4 in LambdaResNets) or the output rows of pass 2 (kTileRows of them).
template <Load LA, Load LB, bool kAdjacent>
constexpr int kPairTileCols = (LB == Load::kBroadcast && kAdjacent) ? 6
                              : (LA == Load::kBroadcast && !kAdjacent) ? 4 : 5;
constexpr int kPairTileRows = 4;

template <typename C>
using PairTileKernelFn = void (*)(PairTileRun<C>);

template <typename C, Load LA, Load LB, bool kAccumulate, bool kAdjacent, int MA, int... MBs>
constexpr std::array<PairTileKernelFn<C>, sizeof...(MBs)> pair_tile_row(
    std::integer_sequence<int, MBs...>) {
  return {&pair_tile_kernel<C, MA, MBs + 1, LA, LB, kAccumulate, kAdjacent>...};
}
template <typename C, Load LA, Load LB, bool kAccumulate, bool kAdjacent, int... MAs>
constexpr auto pair_tile_table(std::integer_sequence<int, MAs...>) {
  constexpr int kCols = kPairTileCols<LA, LB, kAdjacent>;
  return std::array<std::array<PairTileKernelFn<C>, kCols>, sizeof...(MAs)>{
      pair_tile_row<C, LA, LB, kAccumulate, kAdjacent, MAs + 1>(
          std::make_integer_sequence<int, kCols>{})...};
}
template <typename C, Load LA, Load LB, bool kAccumulate, bool kAdjacent>
constexpr auto kPairTileKernels = pair_tile_table<C, LA, LB, kAccumulate, kAdjacent>(
    std::make_integer_sequence<int, kPairTileRows>{});

template <typename C, Load LA, Load LB, bool kAccumulate, bool kAdjacent>
void pair_tile_gemm_with(int64_t rows, int64_t cols, const Accumulator<C>& c,
                         const Operand<bf16>& a, const Operand<bf16>& b, const Reduction& r) {
  constexpr int kCols = kPairTileCols<LA, LB, kAdjacent>;
  const auto& kernels = kPairTileKernels<C, LA, LB, kAccumulate, kAdjacent>;
  const int64_t full_columns = cols / kCols, tail_columns = cols % kCols;
  for (int64_t i0 = 0; i0 < rows; i0 += kPairTileRows) {
    const int64_t ma = std::min<int64_t>(kPairTileRows, rows - i0);
    PairTileRun<C> run{{c.ptr + i0 * c.row_stride, c.row_stride, c.col_stride}, a, b, r,
                       full_columns, kCols * c.col_stride, 0, kCols * b.lane};
    run.a.ptr = a.ptr + i0 * a.lane;
    if (full_columns > 0) kernels[ma - 1][kCols - 1](run);
    if (tail_columns > 0) {
      run.c.ptr += full_columns * kCols * c.col_stride;
      run.b.ptr += full_columns * kCols * b.lane;
      run.tiles = 1;
      kernels[ma - 1][tail_columns - 1](run);
    }
  }
}

// The kernels for a broadcast operand whose pair is adjacent in memory, or not.
template <typename C, Load LA, Load LB, bool kAccumulate>
void pair_tile_gemm_adjacency(int64_t rows, int64_t cols, const Accumulator<C>& c,
                              const Operand<bf16>& a, const Operand<bf16>& b, const Reduction& r) {
  if constexpr (LA == Load::kVector && LB == Load::kVector) {
    pair_tile_gemm_with<C, LA, LB, kAccumulate, false>(rows, cols, c, a, b, r);
  } else {
    const bool adjacent = LA == Load::kBroadcast ? a.step[2] == 1 : b.step[2] == 1;
    if (adjacent)
      pair_tile_gemm_with<C, LA, LB, kAccumulate, true>(rows, cols, c, a, b, r);
    else
      pair_tile_gemm_with<C, LA, LB, kAccumulate, false>(rows, cols, c, a, b, r);
  }
}

// tile_gemm on bf16 operands: C (fp32, or bf16 when not accumulating) (+)= the reduction.
template <typename P, Load LA, Load LB, typename C,
          std::enable_if_t<std::is_same_v<P, bf16>, int> = 0>
void tile_gemm(int64_t rows, int64_t cols, const Accumulator<C>& c, bool accumulate,
               const Operand<bf16>& a, const Operand<bf16>& b, const Reduction& r) {
  if (r.count[0] <= 0 || r.count[1] <= 0 || r.count[2] <= 0) {
    if (!accumulate) {  // an empty sum
      for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = 0; j < cols; ++j)
          store_accumulator(c.ptr + i * c.row_stride + j * c.col_stride, _mm512_setzero_ps());
    }
    return;
  }
  if constexpr (std::is_same_v<C, bf16>) {
    TORCH_CHECK(!accumulate, "lambda_kernels: bf16 tile outputs are written, not accumulated");
    pair_tile_gemm_adjacency<C, LA, LB, false>(rows, cols, c, a, b, r);
  } else if (accumulate) {
    pair_tile_gemm_adjacency<C, LA, LB, true>(rows, cols, c, a, b, r);
  } else {
    pair_tile_gemm_adjacency<C, LA, LB, false>(rows, cols, c, a, b, r);
  }
}

// ------------------------------------------------------------------- rows along positions
// The content lambda's contractions run along the contiguous position axis m of one (b, u)
// slice; pairs are two consecutive m (dot products) or two rows (weighted sums of rows).

// Σ_m a[m] · b[m] over n elements (no read past a + n or b + n).
LK_INLINE float dot_bf16(const bf16* a, const bf16* b, int64_t n) {
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  int64_t m = 0;
  for (; m + 64 <= n; m += 64) {
    acc0 = dot_pairs(acc0, _mm512_loadu_si512(a + m), _mm512_loadu_si512(b + m));
    acc1 = dot_pairs(acc1, _mm512_loadu_si512(a + m + 32), _mm512_loadu_si512(b + m + 32));
  }
  for (; m < n; m += 32) {
    const __mmask32 mask = n - m >= 32 ? ~__mmask32(0) : __mmask32((1u << (n - m)) - 1);
    acc0 = dot_pairs(acc0, _mm512_maskz_loadu_epi16(mask, a + m),
                     _mm512_maskz_loadu_epi16(mask, b + m));
  }
  float lanes[16];
  _mm512_storeu_ps(lanes, _mm512_add_ps(acc0, acc1));
  float sum = 0;
  for (float lane : lanes) sum += lane;
  return sum;
}

// The bits of x rounded to bf16 (nearest even).
template <typename S>
LK_INLINE uint32_t bf16_bits(S x) {
  return uint32_t(bf16(static_cast<float>(x)).x);
}

// dst[p][m] = (rows[2p][m], rows[2p+1][m]) as 32-bit pairs for p < ⌈count/2⌉, m < n_pad; zero
// for m ≥ n and for the missing partner of an odd count. Row r starts at rows + r·stride.
template <typename S>
void pair_rows(const S* rows, int64_t count, int64_t n, int64_t stride, int64_t n_pad,
               uint32_t* dst) {
  for (int64_t p = 0; p < (count + 1) / 2; ++p) {
    uint32_t* out = dst + p * n_pad;
    const S* lo = rows + 2 * p * stride;
    const S* hi = 2 * p + 1 < count ? lo + stride : nullptr;
    for (int64_t m = 0; m < n; ++m) out[m] = bf16_bits(lo[m]) | (hi ? bf16_bits(hi[m]) << 16 : 0u);
    std::fill(out + n, out + n_pad, 0u);
  }
}

// Weights w[i], i < count, at w + i·stride, as bf16 pairs (w[2p], w[2p+1]); zero partner when odd.
template <typename S>
void pair_weights(const S* w, int64_t count, int64_t stride, uint32_t* dst) {
  for (int64_t p = 0; p < (count + 1) / 2; ++p)
    dst[p] = bf16_bits(w[2 * p * stride]) |
             (2 * p + 1 < count ? bf16_bits(w[(2 * p + 1) * stride]) << 16 : 0u);
}

// out[m] = Σ_p pairs[p][m] · weights[p] for m < n_pad (a multiple of 16), fp32.
inline void combine_pairs(const uint32_t* pairs, const uint32_t* weights, int64_t pair_count,
                          int64_t n_pad, float* out) {
  int64_t m = 0;
  for (; m + 64 <= n_pad; m += 64) {
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                     _mm512_setzero_ps()};
    for (int64_t p = 0; p < pair_count; ++p) {
      const __m512i w = _mm512_set1_epi32(int(weights[p]));
      const uint32_t* row = pairs + p * n_pad + m;
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) acc[j] = dot_pairs(acc[j], _mm512_loadu_si512(row + 16 * j), w);
    }
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) _mm512_storeu_ps(out + m + 16 * j, acc[j]);
  }
  for (; m < n_pad; m += 16) {
    __m512 acc = _mm512_setzero_ps();
    for (int64_t p = 0; p < pair_count; ++p)
      acc = dot_pairs(acc, _mm512_loadu_si512(pairs + p * n_pad + m),
                      _mm512_set1_epi32(int(weights[p])));
    _mm512_storeu_ps(out + m, acc);
  }
}
