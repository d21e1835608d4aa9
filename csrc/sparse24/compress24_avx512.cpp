// compress_24 / decompress_24, AVX-512 kernels, one row per call.
//
// A vector holds whole groups of 4 (16 fp32 = 4 groups, 32 fp16/bf16 = 8 groups), so each vector yields
// a keep mask with one bit per element: prune=True ranks the 4 elements of a group with in-lane
// rotations and compares on sign-cleared bits (the rule of common/nm_select.h; see nm_mask_avx512.cpp),
// prune=False tests for non-zeros and completes groups with fewer than 2 through a table. Two 256-entry
// tables turn a keep byte (2 groups) into the 2 metadata nibbles and back. Values are compacted with
// vpcompressd (register form; 16-bit values widened to 32 bits first, since AVX512_VBMI2 is not assumed)
// and expanded with vpexpandd for decompress_24. Row tails use masked loads and stores only.
// No torch headers here (see sparse24_cpu_kernels.h).
// GCC 12's _mm512_undefined_epi32() (inside vpshufd, vprorq & co.) trips -W(maybe-)uninitialized when
// inlined: a false positive, silenced for this file (the pragma must precede the intrinsics header).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cstdint>

#include "sparse24/sparse24_cpu_kernels.h"

namespace sparseops::sparse24::cpu {
namespace {

// ---- tables (built at compile time from the format's definitions in common/sparse24_format.h) -------

struct Table {
  uint16_t v[256];
};

constexpr int popcount4(int keep) { return (keep & 1) + ((keep >> 1) & 1) + ((keep >> 2) & 1) + ((keep >> 3) & 1); }

constexpr int code_of_keep(int keep) {  // nibble of a 2-bit keep mask: first | second << 2
  int first = -1, second = -1;
  for (int j = 0; j < 4; ++j) {
    if (keep & (1 << j)) {
      if (first < 0) first = j; else second = j;
    }
  }
  return first < 0 || second < 0 ? 0 : first | (second << 2);
}

constexpr int complete_pair(int keep) {  // lowest unkept positions added until 2 are kept
  for (int j = 0; j < 4 && popcount4(keep) < 2; ++j) keep |= 1 << j;
  return keep;
}

// keep byte (2 groups, exactly 2 bits per nibble) -> meta byte (2 nibbles)
constexpr Table make_code_table() {
  Table t{};
  for (int b = 0; b < 256; ++b) t.v[b] = static_cast<uint16_t>(code_of_keep(b & 15) | (code_of_keep(b >> 4) << 4));
  return t;
}

// non-zero byte (2 groups) -> completed keep byte | bit 8: group 0 has > 2 non-zeros | bit 9: group 1 has.
// A group with more than 2 non-zeros gets keep 0b0011 (only the error is reported for it).
constexpr Table make_fill_table() {
  Table t{};
  for (int b = 0; b < 256; ++b) {
    int out = 0;
    for (int h = 0; h < 2; ++h) {
      const int nz = (b >> (4 * h)) & 15;
      const bool bad = popcount4(nz) > 2;
      out |= complete_pair(bad ? 0 : nz) << (4 * h);
      out |= static_cast<int>(bad) << (8 + h);
    }
    t.v[b] = static_cast<uint16_t>(out);
  }
  return t;
}

// meta byte (2 nibbles) -> keep byte | bit 8: nibble 0 invalid (first >= second) | bit 9: nibble 1 invalid.
// An invalid nibble gets keep 0 (only the error is reported for it).
constexpr Table make_decode_table() {
  Table t{};
  for (int b = 0; b < 256; ++b) {
    int out = 0;
    for (int h = 0; h < 2; ++h) {
      const int code = (b >> (4 * h)) & 15, first = code & 3, second = code >> 2;
      const bool valid = first < second;
      out |= (valid ? (1 << first) | (1 << second) : 0) << (4 * h);
      out |= static_cast<int>(!valid) << (8 + h);
    }
    t.v[b] = static_cast<uint16_t>(out);
  }
  return t;
}

constexpr Table kCode = make_code_table();
constexpr Table kFill = make_fill_table();
constexpr Table kDecode = make_decode_table();

// keep mask (2 of 4 bits set per group) of 2 * bytes groups -> their meta nibbles.
inline uint32_t codes_of_keep(uint32_t keep, int bytes) {
  uint32_t codes = 0;
  for (int b = 0; b < bytes; ++b) codes |= static_cast<uint32_t>(kCode.v[(keep >> (8 * b)) & 0xFF]) << (8 * b);
  return codes;
}

// ---- metadata words ------------------------------------------------------------------------------

inline void store_word(const RowMeta& meta, int64_t c, uint16_t word) {
  if (meta.packed != nullptr) {
    meta.packed[2 * c] = static_cast<uint8_t>(word);
    meta.packed[2 * c + 1] = static_cast<uint8_t>(word >> 8);
  } else {
    meta.cutlass[((c & 1) ? meta.odd : meta.even) + (c >> 1) * meta.pair_stride] = static_cast<int16_t>(word);
  }
}

inline uint16_t load_word(const RowMeta& meta, int64_t c) {
  if (meta.packed != nullptr) return static_cast<uint16_t>(meta.packed[2 * c] | (meta.packed[2 * c + 1] << 8));
  return static_cast<uint16_t>(meta.cutlass[((c & 1) ? meta.odd : meta.even) + (c >> 1) * meta.pair_stride]);
}

// Row tail of `groups` (< 4 per word) groups starting at word c: "packed" rows end with ceil(groups / 2)
// bytes; "cutlass" rows have no tails (cols % 32 == 0), whole words are used for completeness.
inline void store_tail(const RowMeta& meta, int64_t c, uint32_t codes, int groups) {
  if (meta.packed != nullptr) {
    for (int b = 0; b < (groups + 1) / 2; ++b) meta.packed[2 * c + b] = static_cast<uint8_t>(codes >> (8 * b));
  } else {
    for (int w = 0; w < (groups + 3) / 4; ++w) store_word(meta, c + w, static_cast<uint16_t>(codes >> (16 * w)));
  }
}

inline uint32_t load_tail(const RowMeta& meta, int64_t c, int groups) {
  uint32_t codes = 0;
  if (meta.packed != nullptr) {
    for (int b = 0; b < (groups + 1) / 2; ++b) codes |= static_cast<uint32_t>(meta.packed[2 * c + b]) << (8 * b);
  } else {
    for (int w = 0; w < (groups + 3) / 4; ++w) codes |= static_cast<uint32_t>(load_word(meta, c + w)) << (16 * w);
  }
  return codes;
}

// meta nibbles of `groups` groups -> keep mask (4 bits per group) and a bit per invalid group.
inline uint32_t decode(uint32_t codes, int groups, uint32_t& invalid) {
  uint32_t keep = 0;
  invalid = 0;
  for (int b = 0; b < (groups + 1) / 2; ++b) {
    const uint32_t d = kDecode.v[(codes >> (8 * b)) & 0xFF];
    keep |= (d & 0xFF) << (8 * b);
    invalid |= (d >> 8) << (2 * b);
  }
  invalid &= (1u << groups) - 1;  // a trailing half byte's high nibble is padding
  return keep;
}

// ---- selection ----------------------------------------------------------------------------------

// Top 2 of each group of 4 fp32 keys (sign-cleared bits of non-NaN values). Partner d of lane j is
// lane (j + d) mod 4 of its group; it beats j iff key_p > key_j, or key_p == key_j and p < j, i.e.
// key_p > key_j - lower_d with lower_d = 1 where j + d >= 4.
inline __mmask16 top2_32(__m512i key) {
  const __m512i one = _mm512_set1_epi32(1);
  const __m512i r1 = _mm512_shuffle_epi32(key, static_cast<_MM_PERM_ENUM>(0x39));  // lanes 1 2 3 0
  const __m512i r2 = _mm512_shuffle_epi32(key, static_cast<_MM_PERM_ENUM>(0x4E));  // lanes 2 3 0 1
  const __m512i r3 = _mm512_shuffle_epi32(key, static_cast<_MM_PERM_ENUM>(0x93));  // lanes 3 0 1 2
  const __mmask16 b1 = _mm512_cmpgt_epi32_mask(r1, _mm512_mask_sub_epi32(key, 0x8888, key, one));
  const __mmask16 b2 = _mm512_cmpgt_epi32_mask(r2, _mm512_mask_sub_epi32(key, 0xCCCC, key, one));
  const __mmask16 b3 = _mm512_cmpgt_epi32_mask(r3, _mm512_mask_sub_epi32(key, 0xEEEE, key, one));
  // kept <=> at most one of the three partners beats it
  return static_cast<__mmask16>(~((b1 & b2) | (b1 & b3) | (b2 & b3)));
}

// The same for 32 16-bit keys: a group is one 64-bit lane, rotations are 64-bit rotates.
inline __mmask32 top2_16(__m512i key) {
  const __m512i one = _mm512_set1_epi16(1);
  const __m512i r1 = _mm512_ror_epi64(key, 16);
  const __m512i r2 = _mm512_ror_epi64(key, 32);
  const __m512i r3 = _mm512_ror_epi64(key, 48);
  const __mmask32 b1 = _mm512_cmpgt_epi16_mask(r1, _mm512_mask_sub_epi16(key, 0x88888888u, key, one));
  const __mmask32 b2 = _mm512_cmpgt_epi16_mask(r2, _mm512_mask_sub_epi16(key, 0xCCCCCCCCu, key, one));
  const __mmask32 b3 = _mm512_cmpgt_epi16_mask(r3, _mm512_mask_sub_epi16(key, 0xEEEEEEEEu, key, one));
  return static_cast<__mmask32>(~((b1 & b2) | (b1 & b3) | (b2 & b3)));
}

// Non-zero mask -> completed keep mask (bytes * 2 groups); bad: a bit per group with > 2 non-zeros.
inline uint32_t fill_keep(uint32_t nz, int bytes, uint32_t& bad) {
  uint32_t keep = 0;
  bad = 0;
  for (int b = 0; b < bytes; ++b) {
    const uint32_t t = kFill.v[(nz >> (8 * b)) & 0xFF];
    keep |= (t & 0xFF) << (8 * b);
    bad |= (t >> 8) << (2 * b);
  }
  return keep;
}

// ---- fp32 rows -----------------------------------------------------------------------------------

// Keep mask of one vector of 16 lanes; returns 0, or -1 - (first bad group in the vector).
template <bool kPrune>
inline int64_t select32(__m512i x, uint32_t& keep) {
  const __m512i key = _mm512_and_si512(x, _mm512_set1_epi32(0x7fffffff));
  if constexpr (kPrune) {
    const __mmask16 nan = _mm512_cmpgt_epi32_mask(key, _mm512_set1_epi32(0x7f800000));
    if (nan) return -1 - __builtin_ctz(nan) / 4;
    keep = top2_32(key);
  } else {
    uint32_t bad;
    keep = fill_keep(_mm512_test_epi32_mask(key, key), 2, bad);
    if (bad) return -1 - __builtin_ctz(bad);
  }
  return 0;
}

template <bool kPrune>
int64_t compress_row32(const int32_t* w, int32_t* values, const RowMeta& meta, int64_t cols) {
  int64_t i = 0;
  for (; i + 16 <= cols; i += 16) {
    const __m512i x = _mm512_loadu_si512(w + i);
    uint32_t keep;
    const int64_t bad = select32<kPrune>(x, keep);
    if (bad < 0) return i / 4 - 1 - bad;
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(values + i / 2),
                        _mm512_castsi512_si256(_mm512_maskz_compress_epi32(static_cast<__mmask16>(keep), x)));
    store_word(meta, i / 16, static_cast<uint16_t>(codes_of_keep(keep, 2)));
  }
  if (i < cols) {
    const int rem = static_cast<int>(cols - i);  // 4, 8 or 12; zero lanes past the end are ignored
    const __m512i x = _mm512_maskz_loadu_epi32(static_cast<__mmask16>((1u << rem) - 1), w + i);
    uint32_t keep;
    const int64_t bad = select32<kPrune>(x, keep);
    if (bad < 0) return i / 4 - 1 - bad;
    _mm256_mask_storeu_epi32(values + i / 2, static_cast<__mmask8>((1u << (rem / 2)) - 1),
                             _mm512_castsi512_si256(_mm512_maskz_compress_epi32(static_cast<__mmask16>(keep), x)));
    store_tail(meta, i / 16, codes_of_keep(keep, 2) & ((1u << rem) - 1), rem / 4);
  }
  return -1;
}

int64_t decompress_row32(const int32_t* values, const RowMeta& meta, int32_t* dense, int64_t cols) {
  int64_t i = 0;
  for (; i + 16 <= cols; i += 16) {
    uint32_t invalid;
    const uint32_t keep = decode(load_word(meta, i / 16), 4, invalid);
    if (invalid) return i / 4 + __builtin_ctz(invalid);
    const __m512i v = _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(values + i / 2)));
    _mm512_storeu_si512(dense + i, _mm512_maskz_expand_epi32(static_cast<__mmask16>(keep), v));
  }
  if (i < cols) {
    const int rem = static_cast<int>(cols - i), groups = rem / 4;
    uint32_t invalid;
    const uint32_t keep = decode(load_tail(meta, i / 16, groups), groups, invalid) & ((1u << rem) - 1);
    if (invalid) return i / 4 + __builtin_ctz(invalid);
    const __m512i v = _mm512_castsi256_si512(
        _mm256_maskz_loadu_epi32(static_cast<__mmask8>((1u << (rem / 2)) - 1), values + i / 2));
    _mm512_mask_storeu_epi32(dense + i, static_cast<__mmask16>((1u << rem) - 1),
                             _mm512_maskz_expand_epi32(static_cast<__mmask16>(keep), v));
  }
  return -1;
}

// ---- fp16 / bf16 rows ----------------------------------------------------------------------------

template <bool kPrune>
inline int64_t select16(__m512i x, int16_t nan_above, uint32_t& keep) {
  const __m512i key = _mm512_and_si512(x, _mm512_set1_epi16(0x7fff));
  if constexpr (kPrune) {
    const __mmask32 nan = _mm512_cmpgt_epi16_mask(key, _mm512_set1_epi16(nan_above));
    if (nan) return -1 - __builtin_ctz(nan) / 4;
    keep = top2_16(key);
  } else {
    uint32_t bad;
    keep = fill_keep(_mm512_test_epi16_mask(key, key), 4, bad);
    if (bad) return -1 - __builtin_ctz(bad);
  }
  return 0;
}

// The kept 16-bit values of 16 lanes (8 of them kept), as 8 words in the low 128 bits.
inline __m128i compact16(__m256i half, __mmask16 keep) {
  const __m512i wide = _mm512_cvtepu16_epi32(half);
  return _mm256_castsi256_si128(_mm512_cvtepi32_epi16(_mm512_maskz_compress_epi32(keep, wide)));
}

// 8 16-bit values (low 128 bits) spread over 16 lanes by keep.
inline __m256i expand16(__m128i packed, __mmask16 keep) {
  const __m512i wide = _mm512_cvtepu16_epi32(_mm256_castsi128_si256(packed));
  return _mm512_cvtepi32_epi16(_mm512_maskz_expand_epi32(keep, wide));
}

template <bool kPrune>
int64_t compress_row16(const int16_t* w, int16_t* values, const RowMeta& meta, int64_t cols, int16_t nan_above) {
  int64_t i = 0;
  for (; i + 32 <= cols; i += 32) {
    const __m512i x = _mm512_loadu_si512(w + i);
    uint32_t keep;
    const int64_t bad = select16<kPrune>(x, nan_above, keep);
    if (bad < 0) return i / 4 - 1 - bad;
    const __m128i lo = compact16(_mm512_castsi512_si256(x), static_cast<__mmask16>(keep));
    const __m128i hi = compact16(_mm512_extracti64x4_epi64(x, 1), static_cast<__mmask16>(keep >> 16));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(values + i / 2), _mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1));
    const uint32_t codes = codes_of_keep(keep, 4);
    store_word(meta, i / 16, static_cast<uint16_t>(codes));
    store_word(meta, i / 16 + 1, static_cast<uint16_t>(codes >> 16));
  }
  if (i < cols) {
    const int rem = static_cast<int>(cols - i);  // 4..28
    const __m512i x = _mm512_maskz_loadu_epi16(static_cast<__mmask32>((1u << rem) - 1), w + i);
    uint32_t keep;
    const int64_t bad = select16<kPrune>(x, nan_above, keep);
    if (bad < 0) return i / 4 - 1 - bad;
    const int nvals = rem / 2, nlo = nvals < 8 ? nvals : 8, nhi = nvals - nlo;
    _mm_mask_storeu_epi16(values + i / 2, static_cast<__mmask8>((1u << nlo) - 1),
                          compact16(_mm512_castsi512_si256(x), static_cast<__mmask16>(keep)));
    if (nhi > 0) {
      _mm_mask_storeu_epi16(values + i / 2 + 8, static_cast<__mmask8>((1u << nhi) - 1),
                            compact16(_mm512_extracti64x4_epi64(x, 1), static_cast<__mmask16>(keep >> 16)));
    }
    store_tail(meta, i / 16, codes_of_keep(keep, 4) & ((1u << rem) - 1), rem / 4);
  }
  return -1;
}

int64_t decompress_row16(const int16_t* values, const RowMeta& meta, int16_t* dense, int64_t cols) {
  int64_t i = 0;
  for (; i + 32 <= cols; i += 32) {
    uint32_t invalid;
    const uint32_t codes = load_word(meta, i / 16) | (static_cast<uint32_t>(load_word(meta, i / 16 + 1)) << 16);
    const uint32_t keep = decode(codes, 8, invalid);
    if (invalid) return i / 4 + __builtin_ctz(invalid);
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(values + i / 2));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dense + i), expand16(_mm256_castsi256_si128(v), static_cast<__mmask16>(keep)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dense + i + 16),
                        expand16(_mm256_extracti128_si256(v, 1), static_cast<__mmask16>(keep >> 16)));
  }
  if (i < cols) {
    const int rem = static_cast<int>(cols - i), groups = rem / 4;  // rem 4..28
    uint32_t invalid;
    const uint32_t keep = decode(load_tail(meta, i / 16, groups), groups, invalid) & ((1u << rem) - 1);
    if (invalid) return i / 4 + __builtin_ctz(invalid);
    const __m256i v = _mm256_maskz_loadu_epi16(static_cast<__mmask16>((1u << (rem / 2)) - 1), values + i / 2);
    const __mmask16 lo_lanes = static_cast<__mmask16>(rem >= 16 ? 0xFFFFu : (1u << rem) - 1);
    _mm256_mask_storeu_epi16(dense + i, lo_lanes, expand16(_mm256_castsi256_si128(v), static_cast<__mmask16>(keep)));
    if (rem > 16) {
      _mm256_mask_storeu_epi16(dense + i + 16, static_cast<__mmask16>((1u << (rem - 16)) - 1),
                               expand16(_mm256_extracti128_si256(v, 1), static_cast<__mmask16>(keep >> 16)));
    }
  }
  return -1;
}

}  // namespace

int64_t compress24_row_avx512(Dtype dtype, const void* w, void* values, const RowMeta& meta, int64_t cols,
                              bool prune) {
  if (dtype == Dtype::kFloat32) {
    const auto* wp = static_cast<const int32_t*>(w);
    auto* vp = static_cast<int32_t*>(values);
    return prune ? compress_row32<true>(wp, vp, meta, cols) : compress_row32<false>(wp, vp, meta, cols);
  }
  const auto* wp = static_cast<const int16_t*>(w);
  auto* vp = static_cast<int16_t*>(values);
  const int16_t nan_above = dtype == Dtype::kFloat16 ? 0x7c00 : 0x7f80;
  return prune ? compress_row16<true>(wp, vp, meta, cols, nan_above)
               : compress_row16<false>(wp, vp, meta, cols, nan_above);
}

int64_t decompress24_row_avx512(Dtype dtype, const void* values, const RowMeta& meta, void* dense, int64_t cols) {
  if (dtype == Dtype::kFloat32) {
    return decompress_row32(static_cast<const int32_t*>(values), meta, static_cast<int32_t*>(dense), cols);
  }
  return decompress_row16(static_cast<const int16_t*>(values), meta, static_cast<int16_t*>(dense), cols);
}

}  // namespace sparseops::sparse24::cpu
