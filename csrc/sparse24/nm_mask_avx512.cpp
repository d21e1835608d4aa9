// nm_mask, AVX-512 kernels for m in {2, 4, 8, 16}: a group is a power-of-two block of lanes of one zmm
// (16 fp32 or 32 fp16/bf16 scores per vector), so a group never straddles two vectors.
//
// Each element is ranked against the other m-1 of its group: rotation d (d = 1..m-1) brings lane
// (j + d) mod m of the group to lane j; that partner beats j iff |s_partner| > |s_j|, or equal with a
// lower index. On sign-cleared bit patterns read as signed integers (exact for every non-NaN value) that
// is one compare, partner > key_j - lower_d, where lower_d is 1 in the lanes whose partner has a lower
// index. A lane counter adds up the partners that beat it; rank < n is kept. NaN: bits > the exponent
// mask. No torch headers here (see sparse24_cpu_kernels.h).
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

template <int M>
int64_t nm_mask32(const int32_t* s, bool* out, int64_t count, int n) {
  const Ranker32<M> ranker(n);
  const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff);
  const __m512i inf = _mm512_set1_epi32(0x7f800000);
  int64_t i = 0;
  for (; i + 16 <= count; i += 16) {
    const __m512i key = _mm512_and_si512(_mm512_loadu_si512(s + i), abs_mask);
    const __mmask16 nan = _mm512_cmpgt_epi32_mask(key, inf);
    if (nan) return i + (__builtin_ctz(nan) & ~(M - 1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), _mm_maskz_set1_epi8(ranker.keep(key), 1));
  }
  if (i < count) {  // count - i is a multiple of M: the zero lanes past the end form whole groups
    const __mmask16 lanes = static_cast<__mmask16>((1u << (count - i)) - 1);
    const __m512i key = _mm512_and_si512(_mm512_maskz_loadu_epi32(lanes, s + i), abs_mask);
    const __mmask16 nan = _mm512_cmpgt_epi32_mask(key, inf);
    if (nan) return i + (__builtin_ctz(nan) & ~(M - 1));
    _mm_mask_storeu_epi8(out + i, lanes, _mm_maskz_set1_epi8(ranker.keep(key), 1));
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

// nan_above: sign-cleared bits above this are NaN (0x7c00 fp16, 0x7f80 bf16).
template <int M>
int64_t nm_mask16(const int16_t* s, bool* out, int64_t count, int n, int16_t nan_above) {
  const Ranker16<M> ranker(n);
  const __m512i abs_mask = _mm512_set1_epi16(0x7fff);
  const __m512i inf = _mm512_set1_epi16(nan_above);
  int64_t i = 0;
  for (; i + 32 <= count; i += 32) {
    const __m512i key = _mm512_and_si512(_mm512_loadu_si512(s + i), abs_mask);
    const __mmask32 nan = _mm512_cmpgt_epi16_mask(key, inf);
    if (nan) return i + (__builtin_ctz(nan) & ~(M - 1));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), _mm256_maskz_set1_epi8(ranker.keep(key), 1));
  }
  if (i < count) {
    const __mmask32 lanes = static_cast<__mmask32>((1u << (count - i)) - 1);  // count - i < 32
    const __m512i key = _mm512_and_si512(_mm512_maskz_loadu_epi16(lanes, s + i), abs_mask);
    const __mmask32 nan = _mm512_cmpgt_epi16_mask(key, inf);
    if (nan) return i + (__builtin_ctz(nan) & ~(M - 1));
    _mm256_mask_storeu_epi8(out + i, lanes, _mm256_maskz_set1_epi8(ranker.keep(key), 1));
  }
  return -1;
}

template <int M>
int64_t nm_mask_m(Dtype dtype, const void* score, bool* out, int64_t begin, int64_t end, int n) {
  int64_t r;
  if (dtype == Dtype::kFloat32) {
    r = nm_mask32<M>(static_cast<const int32_t*>(score) + begin, out + begin, end - begin, n);
  } else {
    const int16_t nan_above = dtype == Dtype::kFloat16 ? 0x7c00 : 0x7f80;
    r = nm_mask16<M>(static_cast<const int16_t*>(score) + begin, out + begin, end - begin, n, nan_above);
  }
  return r < 0 ? -1 : begin + r;
}

}  // namespace

int64_t nm_mask_avx512(Dtype dtype, const void* score, bool* out, int64_t begin, int64_t end, int n, int m) {
  switch (m) {
    case 2: return nm_mask_m<2>(dtype, score, out, begin, end, n);
    case 4: return nm_mask_m<4>(dtype, score, out, begin, end, n);
    case 8: return nm_mask_m<8>(dtype, score, out, begin, end, n);
    case 16: return nm_mask_m<16>(dtype, score, out, begin, end, n);
    default: return -2;  // not reached: the caller checks nm_mask_avx512_supports(m)
  }
}

}  // namespace sparseops::sparse24::cpu
