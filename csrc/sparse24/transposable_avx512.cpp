// transposable_mask_24, AVX-512 (compiled with -mavx512*; transposable_cpu.cpp calls it only when
// sparseops::cpu_use_avx512()): 16 4x4 blocks at once, one per lane -- the 16 consecutive blocks that 64
// columns of one block row hold. Each row's 64 values are transposed into 4 vectors (lane l = column
// 4l + j), the 24 pair sums formed, and the 90 patterns scanned with the portable solver's exact float32
// sums and tie rule (common/transposable24.h), so both paths agree bit for bit.
// No torch headers and no shared inline helpers here (see sparse24_cpu_kernels.h): the pattern codes
// come from the caller, and the two lines of pair indices below are this file's own copy.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cstdint>

#include "sparse24/sparse24_cpu_kernels.h"

namespace sparseops::sparse24::cpu {
namespace {

// Columns of pair p in the order of common/transposable24.h: {0,1} {0,2} {0,3} {1,2} {1,3} {2,3}.
constexpr int kPairFirst[6] = {0, 0, 0, 1, 1, 2};
constexpr int kPairSecond[6] = {1, 2, 3, 2, 3, 3};

// |w| of 64 consecutive elements of one row as 4 vectors: c[j] lane l = |w[4l + j]|.
template <Dtype D>
inline void load_columns(const void* w, int64_t offset, __m512 (&c)[4]) {
  __m512 a[4];
  for (int q = 0; q < 4; ++q) {
    if constexpr (D == Dtype::kFloat32) {
      a[q] = _mm512_loadu_ps(static_cast<const float*>(w) + offset + 16 * q);
    } else {
      const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(w) + offset + 16 * q));
      a[q] = D == Dtype::kFloat16 ? _mm512_cvtph_ps(h)
                                  : _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
  }
  // Columns j, j + 1 of blocks 0..7 (from a[0], a[1]) and 8..15 (from a[2], a[3]), then the halves joined.
  const __m512i even = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 1, 5, 9, 13, 17, 21, 25, 29);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(2));
  const __m512 t01 = _mm512_permutex2var_ps(a[0], even, a[1]), t23 = _mm512_permutex2var_ps(a[0], odd, a[1]);
  const __m512 u01 = _mm512_permutex2var_ps(a[2], even, a[3]), u23 = _mm512_permutex2var_ps(a[2], odd, a[3]);
  const __m512 abs = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
  c[0] = _mm512_and_ps(_mm512_shuffle_f32x4(t01, u01, 0x44), abs);
  c[1] = _mm512_and_ps(_mm512_shuffle_f32x4(t01, u01, 0xEE), abs);
  c[2] = _mm512_and_ps(_mm512_shuffle_f32x4(t23, u23, 0x44), abs);
  c[3] = _mm512_and_ps(_mm512_shuffle_f32x4(t23, u23, 0xEE), abs);
}

template <Dtype D>
bool solve16(const void* w, int64_t cols, int64_t row0, int64_t col0, const uint16_t* codes, int num_codes,
             bool* mask) {
  __m512 pair_sum[4][6];
  __mmask16 nan = 0;
  for (int r = 0; r < 4; ++r) {
    __m512 c[4];
    load_columns<D>(w, (row0 + r) * cols + col0, c);
    for (int j = 0; j < 4; ++j) nan |= _mm512_cmp_ps_mask(c[j], c[j], _CMP_UNORD_Q);
    for (int p = 0; p < 6; ++p) pair_sum[r][p] = _mm512_add_ps(c[kPairFirst[p]], c[kPairSecond[p]]);
  }
  if (nan) return false;  // the caller reports the first NaN block
  __m512 best = _mm512_set1_ps(-1.0f);
  __m512i best_code = _mm512_setzero_si512();
  for (int i = 0; i < num_codes; ++i) {  // strict '>' in enumeration order: ties keep the first pattern
    const uint32_t code = codes[i];
    const __m512 sum = _mm512_add_ps(
        _mm512_add_ps(_mm512_add_ps(pair_sum[0][code & 0xF], pair_sum[1][(code >> 4) & 0xF]), pair_sum[2][(code >> 8) & 0xF]),
        pair_sum[3][(code >> 12) & 0xF]);
    const __mmask16 better = _mm512_cmp_ps_mask(sum, best, _CMP_GT_OQ);
    best = _mm512_mask_mov_ps(best, better, sum);
    best_code = _mm512_mask_mov_epi32(best_code, better, _mm512_set1_epi32(static_cast<int>(code)));
  }
  // Row r's keep nibble per lane, packed two lanes a byte into the 64-bit mask of the row's 64 columns.
  const __m512i pair_bits = _mm512_setr_epi32(0x3, 0x5, 0x9, 0x6, 0xA, 0xC, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
  for (int r = 0; r < 4; ++r) {
    const __m512i pair = _mm512_and_si512(_mm512_srli_epi32(best_code, 4 * r), _mm512_set1_epi32(0xF));
    const __m128i nibbles = _mm512_cvtepi32_epi8(_mm512_permutexvar_epi32(pair, pair_bits));
    const __m128i bytes = _mm_packus_epi16(_mm_maddubs_epi16(nibbles, _mm_set1_epi16(0x1001)), _mm_setzero_si128());
    const uint64_t bits = static_cast<uint64_t>(_mm_cvtsi128_si64(bytes));
    _mm512_storeu_si512(mask + (row0 + r) * cols + col0, _mm512_maskz_set1_epi8(bits, 1));
  }
  return true;
}

}  // namespace

bool transposable16_avx512(Dtype dtype, const void* w, int64_t cols, int64_t row0, int64_t col0, const uint16_t* codes,
                           int num_codes, bool* mask) {
  switch (dtype) {
    case Dtype::kFloat32: return solve16<Dtype::kFloat32>(w, cols, row0, col0, codes, num_codes, mask);
    case Dtype::kFloat16: return solve16<Dtype::kFloat16>(w, cols, row0, col0, codes, num_codes, mask);
    case Dtype::kBFloat16: return solve16<Dtype::kBFloat16>(w, cols, row0, col0, codes, num_codes, mask);
  }
  return false;
}

}  // namespace sparseops::sparse24::cpu
