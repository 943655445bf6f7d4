// The one register-tiled micro-kernel every CPU loop nest of the lambda op runs on.
//
//   C[i][j] (+)= Σ_{s0, s1, s2} A(i; s0, s1, s2) · B(j; s0, s1, s2)      i < MA, j < MB
//
// C[i][j], A(i; s) and B(j; s) are SIMD vectors: each lane is one image position (the kernels
// vectorise along image rows), so every product is elementwise. An operand is read either as a
// vector (Load::kVector: a row of positions, e.g. q[h, k, y, x..x+lanes)) or as one scalar
// broadcast to all lanes (Load::kBroadcast: e.g. a table entry E[a, c, k, u]). Its element
// (i; s0, s1, s2) lies at ptr + i·lane + s0·step[0] + s1·step[1] + s2·step[2] (steps may be
// negative or 1: a step of one element along a padded row is a shift of the window by one
// position). So a contraction over up to three nested indices with affine addressing — every
// positional, content and gradient contraction of the op — is one call.
//
// Cost model: per innermost step, MA·MB fused multiply-adds against MA + MB loads; the tile
// (kTileRows × kTileCols, set per instruction-set level in isa_<name>.cpp) is the largest whose
// accumulators, MB operand registers and one A register fit the register file, so nothing spills
// inside the loop. tile_gemm covers any rows × cols with full tiles and smaller tail tiles.
//
// Included by kernels.inc inside a per-level namespace after simd.h.

enum class Load { kVector, kBroadcast };

template <typename T>
struct Operand {
  const T* ptr;
  int64_t lane;      // between the tile's rows (A) or columns (B)
  int64_t step[3];   // per reduction level, outermost first
};

// Trip counts of the three reduction levels, outermost first (1 for an unused level).
struct Reduction {
  int64_t count[3];
};

// Where C lives: vector (i, j) at ptr + i·row_stride + j·col_stride.
template <typename T>
struct Accumulator {
  T* ptr;
  int64_t row_stride;
  int64_t col_stride;
};

template <Load L, typename T>
LK_INLINE vec_t<T> load_operand(const T* p) {
  if constexpr (L == Load::kVector) {
    return vload(p);
  } else {
    return vbroadcast(*p);
  }
}

// Keeps a vector in a register: without it the compiler folds the A load into each of the MB
// FMAs that use it (MB loads instead of one) and the loop becomes load-bound. The constraint is
// the register class of this level (LK_VECTOR_REGISTER, set by isa_<name>.cpp): inline asm only
// inside the code compiled for its instruction set.
template <typename V>
LK_INLINE void keep_in_register(V& v) {
  asm("" : LK_VECTOR_REGISTER(v));
}

// A run of `tiles` tiles of one shape: tile n reads A at a.ptr + n·a_next, B at b.ptr + n·b_next
// and writes C at c.ptr + n·c_next (tile_gemm walks the columns of C this way), so one call
// amortises the call and the loop set-up over many tiles. Arguments by value: the compiler then
// knows they do not alias the data and keeps them in registers.
template <typename T>
struct TileRun {
  Accumulator<T> c;
  Operand<T> a, b;
  Reduction r;
  int64_t tiles, c_next, a_next, b_next;
};

template <typename T, int MA, int MB, Load LA, Load LB, bool kAccumulate>
void tile_kernel(const TileRun<T> run) {
  using V = vec_t<T>;
  const int64_t n0 = run.r.count[0], n1 = run.r.count[1], n2 = run.r.count[2];
  const int64_t a_lane = run.a.lane, b_lane = run.b.lane;
  const int64_t c_row = run.c.row_stride, c_col = run.c.col_stride;
  const int64_t a_step0 = run.a.step[0], a_step1 = run.a.step[1], a_step2 = run.a.step[2];
  const int64_t b_step0 = run.b.step[0], b_step1 = run.b.step[1], b_step2 = run.b.step[2];
  for (int64_t tile = 0; tile < run.tiles; ++tile) {
    T* const c = run.c.ptr + tile * run.c_next;
    const T* const a = run.a.ptr + tile * run.a_next;
    const T* const b = run.b.ptr + tile * run.b_next;
    V acc[MA][MB];
#pragma GCC unroll 8
    for (int i = 0; i < MA; ++i)
#pragma GCC unroll 8
      for (int j = 0; j < MB; ++j) acc[i][j] = kAccumulate ? vload(c + i * c_row + j * c_col) : V{};
    for (int64_t s0 = 0; s0 < n0; ++s0) {
      for (int64_t s1 = 0; s1 < n1; ++s1) {
        const T* pa = a + s0 * a_step0 + s1 * a_step1;
        const T* pb = b + s0 * b_step0 + s1 * b_step1;
        for (int64_t s2 = 0; s2 < n2; ++s2, pa += a_step2, pb += b_step2) {
          V bv[MB];
#pragma GCC unroll 8
          for (int j = 0; j < MB; ++j) bv[j] = load_operand<LB>(pb + j * b_lane);
#pragma GCC unroll 8
          for (int i = 0; i < MA; ++i) {
            V av = load_operand<LA>(pa + i * a_lane);
            keep_in_register(av);
#pragma GCC unroll 8
            for (int j = 0; j < MB; ++j) acc[i][j] += av * bv[j];
          }
        }
      }
    }
#pragma GCC unroll 8
    for (int i = 0; i < MA; ++i)
#pragma GCC unroll 8
      for (int j = 0; j < MB; ++j) vstore(c + i * c_row + j * c_col, acc[i][j]);
  }
}

template <typename T>
using TileKernelFn = void (*)(TileRun<T>);

// Every tile shape up to kTileRows × kTileCols (full tiles and the tails), indexed [MA-1][MB-1].
template <typename T, Load LA, Load LB, bool kAccumulate, int MA, int... MBs>
constexpr std::array<TileKernelFn<T>, sizeof...(MBs)> tile_row(
    std::integer_sequence<int, MBs...>) {
  return {&tile_kernel<T, MA, MBs + 1, LA, LB, kAccumulate>...};
}
template <typename T, Load LA, Load LB, bool kAccumulate, int... MAs>
constexpr std::array<std::array<TileKernelFn<T>, kTileCols>, sizeof...(MAs)> tile_table(
    std::integer_sequence<int, MAs...>) {
  return {tile_row<T, LA, LB, kAccumulate, MAs + 1>(
      std::make_integer_sequence<int, kTileCols>{})...};
}
template <typename T, Load LA, Load LB, bool kAccumulate>
constexpr auto kTileKernels =
    tile_table<T, LA, LB, kAccumulate>(std::make_integer_sequence<int, kTileRows>{});

// C (rows × cols vectors) (+)= the reduction, in register tiles. Operands and C advance by
// their lane (A: per row, B: per column) and row / col strides from tile to tile.
template <typename T, Load LA, Load LB,
          std::enable_if_t<!std::is_same_v<T, at::BFloat16>, int> = 0>
void tile_gemm(int64_t rows, int64_t cols, const Accumulator<T>& c, bool accumulate,
               const Operand<T>& a, const Operand<T>& b, const Reduction& r) {
  if (r.count[0] <= 0 || r.count[1] <= 0 || r.count[2] <= 0) {
    if (!accumulate) {  // an empty sum
      for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = 0; j < cols; ++j)
          vstore(c.ptr + i * c.row_stride + j * c.col_stride, vec_t<T>{});
    }
    return;
  }
  const auto& kernels = accumulate ? kTileKernels<T, LA, LB, true> : kTileKernels<T, LA, LB, false>;
  const int64_t full_columns = cols / kTileCols, tail_columns = cols % kTileCols;
  for (int64_t i0 = 0; i0 < rows; i0 += kTileRows) {
    const int64_t ma = std::min<int64_t>(kTileRows, rows - i0);
    TileRun<T> run{{c.ptr + i0 * c.row_stride, c.row_stride, c.col_stride}, a, b, r,
                   full_columns, kTileCols * c.col_stride, 0, kTileCols * b.lane};
    run.a.ptr = a.ptr + i0 * a.lane;
    if (full_columns > 0) kernels[ma - 1][kTileCols - 1](run);
    if (tail_columns > 0) {
      run.c.ptr += full_columns * kTileCols * c.col_stride;
      run.b.ptr += full_columns * kTileCols * b.lane;
      run.tiles = 1;
      kernels[ma - 1][tail_columns - 1](run);
    }
  }
}
