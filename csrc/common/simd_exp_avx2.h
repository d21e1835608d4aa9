#pragma once
// Vectorised exp for AVX2 + FMA translation units (*_avx2.cpp, compiled with -mavx2 -mfma). Include it
// only from those files: the functions are static inline, so each file gets its own copy and no AVX2
// code can leak into a baseline translation unit through the linker (ODR; see DESIGN.md). No torch
// headers.
//
// The same reduction and polynomials as simd_exp_avx512.h (float: Cephes expf, ~1-2 ulp; double:
// Taylor to degree 12), with 2^n built in the exponent bits. NaN stays NaN; use exp_nan_zero_avx2
// where a NaN term must contribute 0.
//   float: x < -87.34 (and -inf) gives exactly 0; x clamped to 88.38; 2^n as two factors so that both
//          stay normal.
//   double: x < -708.3 (and -inf) gives exactly 0 (no subnormal results); x clamped to 709.
#include <immintrin.h>

namespace sparseops::simd {

static inline __m256 exp_avx2(__m256 x) {
  const __m256 under = _mm256_cmp_ps(x, _mm256_set1_ps(-87.33654f), _CMP_LT_OQ);
  x = _mm256_min_ps(_mm256_set1_ps(88.3762626647949f), x);  // NaN passes (second operand)
  const __m256 fx = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
  // 2^fx with fx in [-127, 128]: the exponent field split in two factors so that both stay normal.
  const __m256i n = _mm256_cvtps_epi32(fx);
  const __m256i n1 = _mm256_srai_epi32(n, 1), n2 = _mm256_sub_epi32(n, n1);
  const __m256 p1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, _mm256_set1_epi32(127)), 23));
  const __m256 p2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, _mm256_set1_epi32(127)), 23));
  y = _mm256_mul_ps(_mm256_mul_ps(y, p1), p2);
  return _mm256_andnot_ps(under, y);
}

static inline __m256d exp_avx2(__m256d x) {
  const __m256d lo = _mm256_set1_pd(-708.3);
  const __m256d under = _mm256_cmp_pd(x, lo, _CMP_LT_OQ);
  x = _mm256_min_pd(_mm256_set1_pd(709.0), _mm256_max_pd(lo, x));  // NaN passes (second operands)
  const __m256d n = _mm256_round_pd(_mm256_mul_pd(x, _mm256_set1_pd(1.4426950408889634074)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256d r = _mm256_fnmadd_pd(n, _mm256_set1_pd(6.93145751953125e-1), x);
  r = _mm256_fnmadd_pd(n, _mm256_set1_pd(1.42860682030941723212e-6), r);
  __m256d p = _mm256_set1_pd(2.08767569878680989792e-9);
  p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(2.50521083854417187751e-8));
  p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(2.75573192239858906526e-7));
  p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(2.75573192239858906526e-6));
  p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(2.48015873015873015873e-5));
  p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.98412698412698412698e-4));
  p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.38888888888888888889e-3));
  p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(8.33333333333333333333e-3));
  p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(4.16666666666666666667e-2));
  p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.66666666666666666667e-1));
  p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(0.5));
  p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0));
  p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0));
  // 2^n: n + 1.5 * 2^52 holds n in its low mantissa bits; add the bias, shift into the exponent.
  const __m256i t = _mm256_castpd_si256(_mm256_add_pd(n, _mm256_set1_pd(6755399441055744.0)));
  const __m256i e = _mm256_slli_epi64(_mm256_add_epi64(t, _mm256_set1_epi64x(1023)), 52);
  return _mm256_andnot_pd(under, _mm256_mul_pd(p, _mm256_castsi256_pd(e)));
}

// exp with NaN (and -inf) giving 0: max(x, -inf) returns its second operand, -inf, for a NaN x.
static inline __m256 exp_nan_zero_avx2(__m256 x) { return exp_avx2(_mm256_max_ps(x, _mm256_set1_ps(-__builtin_inff()))); }
static inline __m256d exp_nan_zero_avx2(__m256d x) { return exp_avx2(_mm256_max_pd(x, _mm256_set1_pd(-__builtin_inf()))); }

}  // namespace sparseops::simd
