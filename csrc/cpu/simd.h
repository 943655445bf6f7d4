// SIMD vectors and register-tile sizes of one instruction-set level, through GCC/Clang vector
// extensions (no intrinsics: the same source compiles to SSE2, AVX2, AVX-512 or NEON; the one
// exception, the masked last vector of the element-type conversions, is AVX-512 only and has a
// portable twin).
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

// ---------------------------------------------------------------- element-type conversion
// dst[i] = static_cast<D>(src[i]) for i < n, the same bits, a vector of positions at a time: the
// stores of outputs and the packing of inputs run these once per image row, and the scalar loop
// (c10's BFloat16 conversion per element, with its NaN test) took a seventh of the forward at
// 14×14/512 bf16 (perf). float -> bf16 rounds to nearest even and turns NaN into 0x7FC0, as
// c10::BFloat16(float) does; bf16 -> float is exact; equal types copy. Other pairs (Half, double)
// keep static_cast.
typedef uint32_t u32_vec_t __attribute__((vector_size(LK_VECTOR_BYTES)));
typedef uint16_t u16_half_vec_t __attribute__((vector_size(LK_VECTOR_BYTES / 2)));

// The float -> bf16 rounding of one vector: c10's round_to_nearest_even, lane by lane.
LK_INLINE u16_half_vec_t bf16_round_vector(const vec_t<float>& f) {
  u32_vec_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  u32_vec_t rounded = (bits + ((bits >> 16) & 1u) + 0x7FFFu) >> 16;
  const u32_vec_t nan = (u32_vec_t)(f != f);  // all ones in NaN lanes
  rounded = (rounded & ~nan) | (nan & 0x7FC0u);
  return __builtin_convertvector(rounded, u16_half_vec_t);
}

LK_INLINE vec_t<float> float_of_bf16_bits(const u16_half_vec_t& in) {
  const u32_vec_t bits = __builtin_convertvector(in, u32_vec_t) << 16;
  vec_t<float> f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

template <typename D, typename S>
LK_INLINE void convert_vector(D* dst, const S* src) {
  if constexpr (std::is_same_v<D, at::BFloat16>) {
    const u16_half_vec_t out = bf16_round_vector(vload(src));
    std::memcpy(dst, &out, sizeof(out));
  } else {
    u16_half_vec_t in;
    std::memcpy(&in, src, sizeof(in));
    vstore(dst, float_of_bf16_bits(in));
  }
}

#if LK_VECTOR_BYTES == 64 && (defined(__x86_64__) || defined(_M_X64))
// The AVX-512 levels (F/BW/VL on all of them) convert the last, partial vector with masked
// loads and stores: no access past element n, no scalar loop.
#define LK_MASKED_TAIL 1
template <typename D, typename S>
LK_INLINE void convert_tail(D* dst, const S* src, int64_t n) {
  const __mmask16 mask = __mmask16((1u << n) - 1u);
  if constexpr (std::is_same_v<D, at::BFloat16>) {
    vec_t<float> f;
    const __m512 in = _mm512_maskz_loadu_ps(mask, src);
    std::memcpy(&f, &in, sizeof(f));
    const u16_half_vec_t bits = bf16_round_vector(f);
    __m256i out;
    std::memcpy(&out, &bits, sizeof(out));
    _mm256_mask_storeu_epi16(dst, mask, out);
  } else {
    const __m256i in = _mm256_maskz_loadu_epi16(mask, src);
    u16_half_vec_t bits;
    std::memcpy(&bits, &in, sizeof(bits));
    const vec_t<float> f = float_of_bf16_bits(bits);
    __m512 out;
    std::memcpy(&out, &f, sizeof(out));
    _mm512_mask_storeu_ps(dst, mask, out);
  }
}

// n elements of 2 or 4 bytes copied a 64-byte vector at a time, the last one masked (a libc
// memcpy call per row cost more than the copy at 14-wide rows).
template <typename T>
LK_INLINE void copy_n(T* dst, const T* src, int64_t n) {
  constexpr int64_t L = 64 / int64_t(sizeof(T));
  int64_t i = 0;
  for (; i + L <= n; i += L) _mm512_storeu_si512(dst + i, _mm512_loadu_si512(src + i));
  if (i == n) return;
  if constexpr (sizeof(T) == 2) {
    const __mmask32 mask = __mmask32((uint64_t(1) << (n - i)) - 1u);
    _mm512_mask_storeu_epi16(dst + i, mask, _mm512_maskz_loadu_epi16(mask, src + i));
  } else {
    const __mmask16 mask = __mmask16((1u << (n - i)) - 1u);
    _mm512_mask_storeu_epi32(dst + i, mask, _mm512_maskz_loadu_epi32(mask, src + i));
  }
}
#endif

template <typename D, typename S>
inline void convert_n(D* dst, const S* src, int64_t n) {
  if constexpr (std::is_same_v<D, S>) {
#if defined(LK_MASKED_TAIL)
    if constexpr (sizeof(D) == 2 || sizeof(D) == 4) {
      copy_n(dst, src, n);
      return;
    }
#endif
    std::memcpy(static_cast<void*>(dst), src, size_t(n) * sizeof(D));
  } else if constexpr ((std::is_same_v<D, at::BFloat16> && std::is_same_v<S, float>) ||
                       (std::is_same_v<D, float> && std::is_same_v<S, at::BFloat16>)) {
    constexpr int64_t L = Simd<float>::kLanes;
    int64_t i = 0;
    for (; i + L <= n; i += L) convert_vector(dst + i, src + i);
#if defined(LK_MASKED_TAIL)
    if (i < n) convert_tail(dst + i, src + i, n - i);
#else
    for (; i < n; ++i) dst[i] = static_cast<D>(src[i]);
#endif
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<D>(src[i]);
  }
}
