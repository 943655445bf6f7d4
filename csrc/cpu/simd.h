// SIMD vectors and register-tile sizes of one instruction-set level, through GCC/Clang vector
// extensions (no intrinsics: the same source compiles to SSE2, AVX2, AVX-512 or NEON).
//
// Included by csrc/cpu/kernels.inc inside the per-level namespace of an isa_<name>.cpp, which
// defines, before including it:
//   LK_VECTOR_BYTES   width of one SIMD register (16, 32 or 64)
//   LK_TILE_ROWS      rows of the register tile of tile_kernel (tile.h)
//   LK_TILE_COLS      columns of that tile
//   LK_VECTOR_REGISTER(v)  inline-asm operand constraint of a vector register of the level
// The register arithmetic behind each choice of tile sits next to those definitions.

template <typename T>
struct Simd {
  typedef T vec __attribute__((vector_size(LK_VECTOR_BYTES)));
  static constexpr int64_t kLanes = LK_VECTOR_BYTES / int64_t(sizeof(T));
};

template <typename T>
using vec_t = typename Simd<T>::vec;

template <typename T>
LK_INLINE vec_t<T> vload(const T* p) {
  vec_t<T> r;
  std::memcpy(&r, p, sizeof(r));  // an unaligned vector load
  return r;
}

template <typename T>
LK_INLINE void vstore(T* p, const vec_t<T>& r) {
  std::memcpy(p, &r, sizeof(r));
}

// All lanes x, written as one initializer so the compiler emits a single broadcast instruction
// (a lane-by-lane loop or `vec{} + x` compile to inserts or a scalar add first).
template <typename T, size_t... I>
LK_INLINE vec_t<T> broadcast_lanes(T x, std::index_sequence<I...>) {
  return vec_t<T>{((void)I, x)...};
}
template <typename T>
LK_INLINE vec_t<T> vbroadcast(T x) {
  return broadcast_lanes(x, std::make_index_sequence<size_t(Simd<T>::kLanes)>{});
}

// Sum of the lanes of a kBytes-wide vector.
template <typename T, int kBytes, typename V>
LK_INLINE T lanes_sum(const V& r) {
  if constexpr (kBytes > int(2 * sizeof(T))) {
    typedef T half_t __attribute__((vector_size(kBytes / 2)));
    half_t lo, hi;
    std::memcpy(&lo, &r, sizeof(lo));
    std::memcpy(&hi, reinterpret_cast<const char*>(&r) + sizeof(lo), sizeof(hi));
    return lanes_sum<T, kBytes / 2>(lo + hi);
  } else if constexpr (kBytes == int(2 * sizeof(T))) {
    return r[0] + r[1];
  } else {
    return r[0];
  }
}

// Sum of the lanes by halving: log2(lanes) vector adds.
template <typename T>
LK_INLINE T vsum(const vec_t<T>& r) {
  return lanes_sum<T, LK_VECTOR_BYTES>(r);
}

constexpr int kTileRows = LK_TILE_ROWS;
constexpr int kTileCols = LK_TILE_COLS;
