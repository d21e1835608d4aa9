#pragma once
// An in-register 8 x 8 fp32 transpose, and a scaled transpose of an fp32 panel with 256-bit AVX: dst[c * ldd + r] = scale * src[r * lds + c] for
// r < rows, c < cols, and 0 for rows <= r < ldd. For translation units compiled with AVX2 or AVX-512
// flags only (*_avx2.cpp, *_avx512.cpp): static inline, so each file gets its own copy and no AVX code
// reaches a baseline translation unit through the linker (ODR; see DESIGN.md). No torch headers.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace sparseops::simd {

// r[0..7] (8 rows of 8 floats) replaced by its transpose (r[j] = column j), in registers: unpack,
// shuffle, 128-bit permute.
static inline void transpose8x8_ps(__m256 (&r)[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]),
               t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]),
               t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]),
               t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE),
               u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE),
               u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE),
               u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
  r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
  r[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
  r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
  r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
  r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
  r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
  r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

// 8 x 8 blocks in registers (transpose8x8_ps); ragged edges element by element. Columns outer, so that
// the stores go to 8 destination rows at a time (the destination rows are often 512 B apart: more of
// them at once would thrash L1's sets).
static inline void transpose_scaled_avx(const float* src, int64_t lds, int64_t rows, int64_t cols, float scale,
                                        float* dst, int64_t ldd) {
  const __m256 sv = _mm256_set1_ps(scale);
  const int64_t r8 = rows / 8 * 8, c8 = cols / 8 * 8;
  for (int64_t c = 0; c < c8; c += 8) {
    for (int64_t r = 0; r < r8; r += 8) {
      __m256 a[8];
      for (int i = 0; i < 8; ++i) a[i] = _mm256_loadu_ps(src + (r + i) * lds + c);
      transpose8x8_ps(a);
      for (int i = 0; i < 8; ++i) _mm256_storeu_ps(dst + (c + i) * ldd + r, _mm256_mul_ps(sv, a[i]));
    }
    for (int64_t x = c; x < c + 8; ++x)
      for (int64_t r = r8; r < rows; ++r) dst[x * ldd + r] = scale * src[r * lds + x];
  }
  for (int64_t x = c8; x < cols; ++x)
    for (int64_t r = 0; r < rows; ++r) dst[x * ldd + r] = scale * src[r * lds + x];
  if (rows < ldd)
    for (int64_t x = 0; x < cols; ++x) std::memset(dst + x * ldd + rows, 0, sizeof(float) * (ldd - rows));
}

}  // namespace sparseops::simd
