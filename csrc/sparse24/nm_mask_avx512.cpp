// nm_mask and the nm_srste forward, AVX-512 kernels for m in {2, 4, 8, 16}: a group is a power-of-two
// block of lanes of one zmm (16 fp32 or 32 fp16/bf16 scores per vector), so a group never straddles two
// vectors.
//
// Each element is ranked against the other m-1 of its group: rotation d (d = 1..m-1) brings lane
// (j + d) mod m of the group to lane j; that partner beats j iff |s_partner| > |s_j|, or equal with a
// lower index. On sign-cleared bit patterns read as signed integers (exact for every non-NaN value) that
// is one compare, partner > key_j - lower_d, where lower_d is 1 in the lanes whose partner has a lower
// index. A lane counter adds up the partners that beat it; rank < n is kept. NaN: bits > the exponent
// mask; nm_mask reports it, nm_srste ranks it as +inf (its key clamped to inf's: it ties with +-inf and
// the lower index wins, as srste_mag in srste_cpu.cpp). No torch headers here (see
// sparse24_cpu_kernels.h).
// GCC 12's _mm512_undefined_epi32() (inside vpshufd, vprorq & co.) trips -W(maybe-)uninitialized when
// inlined: a false positive, silenced for this file (the pragma must precede the intrinsics header).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cstdint>

#include "sparse24/sparse24_cpu_kernels.h"

namespace sparseops::sparse24::cpu {
namespace {

alignas(64) constexpr int32_t kIota32[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
alignas(64) constexpr int16_t kIota16[32] = {0,  1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12, 13, 14, 15,
                                             16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31};

template <int D>
struct Int {
  static constexpr int value = D;
};

// Calls f(Int<D>{}) for D = Begin..End-1 (compile-time D, for intrinsics that take immediates).
template <int Begin, int End, typename F>
inline void static_for(F&& f) {
  if constexpr (Begin < End) {
    f(Int<Begin>{});
    static_for<Begin + 1, End>(f);
  }
}

constexpr int shuffle_imm(int m, int d) {  // vpshufd immediate of rotation d in groups of m <= 4 lanes
  int imm = 0;
  for (int i = 0; i < 4; ++i) imm |= ((i & ~(m - 1)) | ((i + d) & (m - 1))) << (2 * i);
  return imm;
}

// ---- 32-bit lanes (fp32) -----------------------------------------------------------------------

// Lane j receives lane (j & ~(M-1)) | ((j + D) & (M-1)). idx[D] is the vpermd index for M >= 8.
template <int M, int D>
inline __m512i rotate32(__m512i x, const __m512i* idx) {
  if constexpr (M <= 4) {
    return _mm512_shuffle_epi32(x, static_cast<_MM_PERM_ENUM>(shuffle_imm(M, D)));
  } else {
    return _mm512_permutexvar_epi32(idx[D], x);
  }
}

template <int M>
struct Ranker32 {
  __m512i idx[M];
  __m512i lower[M];
  __m512i n_vec;

  explicit Ranker32(int n) : n_vec(_mm512_set1_epi32(n)) {
    const __m512i iota = _mm512_load_si512(kIota32);
    const __m512i pos = _mm512_and_si512(iota, _mm512_set1_epi32(M - 1));  // index inside the group
    const __m512i base = _mm512_sub_epi32(iota, pos);
    static_for<1, M>([&](auto d) {
      constexpr int D = decltype(d)::value;
      idx[D] = _mm512_or_si512(base, _mm512_and_si512(_mm512_add_epi32(pos, _mm512_set1_epi32(D)),
                                                      _mm512_set1_epi32(M - 1)));
      const __m512i partner = rotate32<M, D>(pos, idx);  // built by the same rotation: cannot disagree
      lower[D] = _mm512_maskz_set1_epi32(_mm512_cmplt_epi32_mask(partner, pos), 1);
    });
  }

  // key: sign-cleared bits of 16 non-NaN scores. Bit j set <=> lane j is kept.
  inline __mmask16 keep(__m512i key) const {
    __m512i rank = _mm512_setzero_si512();
    const __m512i one = _mm512_set1_epi32(1);
    static_for<1, M>([&](auto d) {
      constexpr int D = decltype(d)::value;
      const __mmask16 beats =
          _mm512_cmpgt_epi32_mask(rotate32<M, D>(key, idx), _mm512_sub_epi32(key, lower[D]));
      rank = _mm512_mask_add_epi32(rank, beats, rank, one);
    });
    return _mm512_cmplt_epi32_mask(rank, n_vec);
  }
};

// One ranking pass over count elements (a multiple of M) of 32-bit scores s: the keep mask into mask;
// kSrste: NaN ranked as +inf and s where kept / +0 elsewhere into out; else the flat index (within the
// pass) of the first element of the first group holding a NaN is returned (the outputs are then partly
// written), or -1. Full vectors are loaded and stored unmasked (masked stores are slow on Zen 4/5: the
// nm_mask pass ran 4x slower with them); the last partial vector is masked, its zero lanes past the
// end forming whole groups that are not stored.
template <int M, bool kSrste>
int64_t rank32(const int32_t* s, bool* mask, int32_t* out, int64_t count, int n) {
  const Ranker32<M> ranker(n);
  const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff);
  const __m512i inf = _mm512_set1_epi32(0x7f800000);
  for (int64_t i = 0; i < count; i += 16) {
    const bool full = count - i >= 16;
    const __mmask16 lanes = full ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (count - i)) - 1);
    const __m512i v = full ? _mm512_loadu_si512(s + i) : _mm512_maskz_loadu_epi32(lanes, s + i);
    __m512i key = _mm512_and_si512(v, abs_mask);
    if constexpr (kSrste) {
      key = _mm512_min_epi32(key, inf);
    } else {
      const __mmask16 nan = _mm512_cmpgt_epi32_mask(key, inf);
      if (nan) return i + (__builtin_ctz(nan) & ~(M - 1));
    }
    const __mmask16 keep = ranker.keep(key);
    const __m128i keep_bytes = _mm_maskz_set1_epi8(keep, 1);
    const __m512i kept = _mm512_maskz_mov_epi32(keep, v);
    if (full) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(mask + i), keep_bytes);
      if constexpr (kSrste) _mm512_storeu_si512(out + i, kept);
    } else {
      _mm_mask_storeu_epi8(mask + i, lanes, keep_bytes);
      if constexpr (kSrste) _mm512_mask_storeu_epi32(out + i, lanes, kept);
    }
  }
  return -1;
}

// ---- 16-bit lanes (fp16, bf16) -----------------------------------------------------------------

template <int M, int D>
inline __m512i rotate16(__m512i x, const __m512i* idx) {
  if constexpr (M == 2) {
    return _mm512_ror_epi32(x, 16);
  } else if constexpr (M == 4) {
    return _mm512_ror_epi64(x, 16 * D);
  } else if constexpr (M == 8) {
    return _mm512_alignr_epi8(x, x, 2 * D);  // rotation inside each 128-bit lane
  } else {
    return _mm512_permutexvar_epi16(idx[D], x);
  }
}

template <int M>
struct Ranker16 {
  __m512i idx[M];
  __m512i lower[M];
  __m512i n_vec;

  explicit Ranker16(int n) : n_vec(_mm512_set1_epi16(static_cast<int16_t>(n))) {
    const __m512i iota = _mm512_load_si512(kIota16);
    const __m512i pos = _mm512_and_si512(iota, _mm512_set1_epi16(M - 1));
    const __m512i base = _mm512_sub_epi16(iota, pos);
    static_for<1, M>([&](auto d) {
      constexpr int D = decltype(d)::value;
      idx[D] = _mm512_or_si512(base, _mm512_and_si512(_mm512_add_epi16(pos, _mm512_set1_epi16(D)),
                                                      _mm512_set1_epi16(M - 1)));
      const __m512i partner = rotate16<M, D>(pos, idx);
      lower[D] = _mm512_maskz_set1_epi16(_mm512_cmplt_epi16_mask(partner, pos), 1);
    });
  }

  inline __mmask32 keep(__m512i key) const {
    __m512i rank = _mm512_setzero_si512();
    const __m512i one = _mm512_set1_epi16(1);
    static_for<1, M>([&](auto d) {
      constexpr int D = decltype(d)::value;
      const __mmask32 beats =
          _mm512_cmpgt_epi16_mask(rotate16<M, D>(key, idx), _mm512_sub_epi16(key, lower[D]));
      rank = _mm512_mask_add_epi16(rank, beats, rank, one);
    });
    return _mm512_cmplt_epi16_mask(rank, n_vec);
  }
};

// rank32 for 16-bit scores; nan_above: sign-cleared bits above this are NaN (0x7c00 fp16, 0x7f80 bf16).
template <int M, bool kSrste>
int64_t rank16(const int16_t* s, bool* mask, int16_t* out, int64_t count, int n, int16_t nan_above) {
  const Ranker16<M> ranker(n);
  const __m512i abs_mask = _mm512_set1_epi16(0x7fff);
  const __m512i inf = _mm512_set1_epi16(nan_above);
  for (int64_t i = 0; i < count; i += 32) {
    const bool full = count - i >= 32;
    const __mmask32 lanes = full ? ~__mmask32(0) : static_cast<__mmask32>((1u << (count - i)) - 1);
    const __m512i v = full ? _mm512_loadu_si512(s + i) : _mm512_maskz_loadu_epi16(lanes, s + i);
    __m512i key = _mm512_and_si512(v, abs_mask);
    if constexpr (kSrste) {
      key = _mm512_min_epi16(key, inf);
    } else {
      const __mmask32 nan = _mm512_cmpgt_epi16_mask(key, inf);
      if (nan) return i + (__builtin_ctz(nan) & ~(M - 1));
    }
    const __mmask32 keep = ranker.keep(key);
    const __m256i keep_bytes = _mm256_maskz_set1_epi8(keep, 1);
    const __m512i kept = _mm512_maskz_mov_epi16(keep, v);
    if (full) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(mask + i), keep_bytes);
      if constexpr (kSrste) _mm512_storeu_si512(out + i, kept);
    } else {
      _mm256_mask_storeu_epi8(mask + i, lanes, keep_bytes);
      if constexpr (kSrste) _mm512_mask_storeu_epi16(out + i, lanes, kept);
    }
  }
  return -1;
}

// Elements [begin, end) of a pass (multiples of m); returns as rank32/rank16, with the index made flat.
template <int M, bool kSrste>
int64_t rank_m(Dtype dtype, const void* s, bool* mask, void* out, int64_t begin, int64_t end, int n) {
  int64_t r;
  if (dtype == Dtype::kFloat32) {
    int32_t* o = kSrste ? static_cast<int32_t*>(out) + begin : nullptr;
    r = rank32<M, kSrste>(static_cast<const int32_t*>(s) + begin, mask + begin, o, end - begin, n);
  } else {
    const int16_t nan_above = dtype == Dtype::kFloat16 ? 0x7c00 : 0x7f80;
    int16_t* o = kSrste ? static_cast<int16_t*>(out) + begin : nullptr;
    r = rank16<M, kSrste>(static_cast<const int16_t*>(s) + begin, mask + begin, o, end - begin, n, nan_above);
  }
  return r < 0 ? -1 : begin + r;
}

template <bool kSrste>
int64_t rank_any_m(Dtype dtype, const void* s, bool* mask, void* out, int64_t begin, int64_t end, int n, int m) {
  switch (m) {
    case 2: return rank_m<2, kSrste>(dtype, s, mask, out, begin, end, n);
    case 4: return rank_m<4, kSrste>(dtype, s, mask, out, begin, end, n);
    case 8: return rank_m<8, kSrste>(dtype, s, mask, out, begin, end, n);
    case 16: return rank_m<16, kSrste>(dtype, s, mask, out, begin, end, n);
    default: return -2;  // not reached: the callers check nm_mask_avx512_supports(m)
  }
}

}  // namespace

int64_t nm_mask_avx512(Dtype dtype, const void* score, bool* out, int64_t begin, int64_t end, int n, int m) {
  return rank_any_m<false>(dtype, score, out, nullptr, begin, end, n, m);
}

void nm_srste_forward_avx512(Dtype dtype, const void* w, void* out, bool* mask, int64_t begin, int64_t end, int n,
                             int m) {
  rank_any_m<true>(dtype, w, mask, out, begin, end, n, m);
}

}  // namespace sparseops::sparse24::cpu
