#pragma once
// Vectorised exp for AVX-512 translation units (*_avx512.cpp, compiled with -mavx512f/bw/vl/dq). Include
// it only from those files: the functions are static inline, so each file gets its own copy and no
// AVX-512 code can leak into a baseline translation unit through the linker (ODR; see DESIGN.md).
// No torch headers.
//
// Both: x = n ln2 + r with |r| <= ln2/2 (n = round(x log2 e), ln2 split in two so the reduction is exact),
// exp(r) by a polynomial, times 2^n. NaN stays NaN (every clamp passes its second operand through for
// NaN); use exp_nan_zero where a NaN term, as from (-inf) - (-inf), must contribute 0.
//   float: Cephes expf's degree-6 minimax polynomial, ~1-2 ulp; x < -87.34 (and -inf) gives exactly 0
//          (no subnormal results), x > 88.38 is clamped there (finite).
//   double: Taylor to degree 12 (truncation < 2e-16 relative), 2^n by vscalefpd, which rounds correctly
//          into the subnormals and to 0 (x clamped to [-750, 709.7]).
#include <immintrin.h>

namespace sparseops::simd {

static inline __m512 exp_avx512(__m512 x) {
  const __mmask16 under = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.33654f), _CMP_LT_OQ);
  x = _mm512_min_ps(_mm512_set1_ps(88.3762626647949f), x);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  x = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  x = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), x);
  __m512 y = _mm512_set1_ps(1.9875691500e-4f);
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.3981999507e-3f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(8.3334519073e-3f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(4.1665795894e-2f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.6666665459e-1f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(5.0000001201e-1f));
  y = _mm512_fmadd_ps(y, _mm512_mul_ps(x, x), _mm512_add_ps(x, _mm512_set1_ps(1.0f)));
  return _mm512_maskz_mov_ps(static_cast<__mmask16>(~under), _mm512_scalef_ps(y, n));
}

static inline __m512d exp_avx512(__m512d x) {
  x = _mm512_min_pd(_mm512_set1_pd(709.7), _mm512_max_pd(_mm512_set1_pd(-750.0), x));
  const __m512d n = _mm512_roundscale_pd(_mm512_mul_pd(x, _mm512_set1_pd(1.4426950408889634074)),
                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512d r = _mm512_fnmadd_pd(n, _mm512_set1_pd(6.93145751953125e-1), x);
  r = _mm512_fnmadd_pd(n, _mm512_set1_pd(1.42860682030941723212e-6), r);
  // Taylor coefficients 1/k!, k = 12 .. 0 (Horner).
  __m512d p = _mm512_set1_pd(2.08767569878680989792e-9);
  p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(2.50521083854417187751e-8));
  p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(2.75573192239858906526e-7));
  p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(2.75573192239858906526e-6));
  p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(2.48015873015873015873e-5));
  p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.98412698412698412698e-4));
  p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.38888888888888888889e-3));
  p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(8.33333333333333333333e-3));
  p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(4.16666666666666666667e-2));
  p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.66666666666666666667e-1));
  p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(0.5));
  p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0));
  p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0));
  return _mm512_scalef_pd(p, n);
}

// 2^t for t <= 127, a cheaper exp for the bf16 attention forward, whose probabilities are rounded to bf16:
// t = n + f (n = round(t), |f| <= 1/2), 2^f by a degree-5 polynomial fitted on [-1/2, 1/2] (relative
// error < 2.5e-7, ~2 ulp), times 2^n by vscalefps. t < -126 (and -inf) gives exactly 0; NaN stays NaN.
static inline __m512 exp2_avx512(__m512 t) {
  const __mmask16 under = _mm512_cmp_ps_mask(t, _mm512_set1_ps(-126.0f), _CMP_LT_OQ);
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(t, n);
  __m512 y = _mm512_set1_ps(1.3268018374e-3f);
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(9.6754729748e-3f));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(5.5507395416e-2f));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(2.4022121727e-1f));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(6.9314694405e-1f));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(1.0000001192e+0f));
  return _mm512_maskz_mov_ps(static_cast<__mmask16>(~under), _mm512_scalef_ps(y, n));
}

// exp with NaN (and -inf) giving 0: max(x, -inf) returns its second operand, -inf, for a NaN x.
static inline __m512 exp_nan_zero_avx512(__m512 x) {
  return exp_avx512(_mm512_max_ps(x, _mm512_set1_ps(-__builtin_inff())));
}
static inline __m512d exp_nan_zero_avx512(__m512d x) {
  return exp_avx512(_mm512_max_pd(x, _mm512_set1_pd(-__builtin_inf())));
}

}  // namespace sparseops::simd
