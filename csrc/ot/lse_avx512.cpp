// AVX-512 inner loops of the log-domain OT kernels (declared in lse_kernels.h). Compiled with -mavx512*;
// chosen at run time by sparseops::cpu_isa(). Tails use masked loads, so every length takes the same path.
//
// exp: common/simd_exp_avx512.h (shared with other families; float ~1-2 ulp, exactly 0 below -87.34;
// double degree-12 Taylor, correctly rounded into the subnormals), in its variant where NaN (the
// (-inf) - (-inf) of an empty row or column) and -inf give 0.
// GCC 12's masked-load and reduce intrinsics start from _mm512_undefined_*(): false positives, reported
// inside the intrinsics headers (so the pragmas come before the include).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <limits>

#include "common/simd_exp_avx512.h"
#include "ot/lse_kernels.h"

namespace sparseops::ot::cpu {
namespace {

struct F32 {
  using T = float;
  using V = __m512;
  using M = __mmask16;
  static constexpr int kW = 16;
  static M tail(int64_t left) { return left >= kW ? M(0xFFFF) : M((1u << left) - 1u); }
  static V set1(T v) { return _mm512_set1_ps(v); }
  static V load(M k, const T* p) { return _mm512_maskz_loadu_ps(k, p); }
  static void store(M k, T* p, V v) { _mm512_mask_storeu_ps(p, k, v); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V fmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V fnmadd(V a, V b, V c) { return _mm512_fnmadd_ps(a, b, c); }
  static V max(V a, V b) { return _mm512_max_ps(a, b); }
  static V mask_max(V src, M k, V a, V b) { return _mm512_mask_max_ps(src, k, a, b); }
  static V maskz_mov(M k, V a) { return _mm512_maskz_mov_ps(k, a); }
  static T reduce_add(V v) { return _mm512_reduce_add_ps(v); }
  static T reduce_max(V v) { return _mm512_reduce_max_ps(v); }
  static bool any_gt(V a, V b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ) != 0; }
  static bool any_unordered(V a) { return _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q) != 0; }
  static V min(V a, V b) { return _mm512_min_ps(a, b); }
  static V mask_mov(V src, M k, V a) { return _mm512_mask_mov_ps(src, k, a); }
  static T reduce_min(V v) { return _mm512_reduce_min_ps(v); }
  static constexpr T kSkip = 30;
  static V exp(V x) { return simd::exp_nan_zero_avx512(x); }  // NaN, -inf -> 0
  // NaN -> -inf, +inf -> the largest finite value.
  static V sanitize(V v) {
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q),
                                _mm512_min_ps(v, set1(std::numeric_limits<T>::max())),
                                set1(-std::numeric_limits<T>::infinity()));
  }
  // The distances' float bits (d is float already).
  static __m512i float_bits(V d) { return _mm512_castps_si512(d); }
  static void store_bytes(M k, uint8_t* out, __m512i key) { _mm_mask_storeu_epi8(out, k, _mm512_cvtepi32_epi8(key)); }
};

struct F64 {
  using T = double;
  using V = __m512d;
  using M = __mmask8;
  static constexpr int kW = 8;
  static M tail(int64_t left) { return left >= kW ? M(0xFF) : M((1u << left) - 1u); }
  static V set1(T v) { return _mm512_set1_pd(v); }
  static V load(M k, const T* p) { return _mm512_maskz_loadu_pd(k, p); }
  static void store(M k, T* p, V v) { _mm512_mask_storeu_pd(p, k, v); }
  static V add(V a, V b) { return _mm512_add_pd(a, b); }
  static V sub(V a, V b) { return _mm512_sub_pd(a, b); }
  static V mul(V a, V b) { return _mm512_mul_pd(a, b); }
  static V fmadd(V a, V b, V c) { return _mm512_fmadd_pd(a, b, c); }
  static V fnmadd(V a, V b, V c) { return _mm512_fnmadd_pd(a, b, c); }
  static V max(V a, V b) { return _mm512_max_pd(a, b); }
  static V mask_max(V src, M k, V a, V b) { return _mm512_mask_max_pd(src, k, a, b); }
  static V maskz_mov(M k, V a) { return _mm512_maskz_mov_pd(k, a); }
  static T reduce_add(V v) { return _mm512_reduce_add_pd(v); }
  static T reduce_max(V v) { return _mm512_reduce_max_pd(v); }
  static bool any_gt(V a, V b) { return _mm512_cmp_pd_mask(a, b, _CMP_GT_OQ) != 0; }
  static bool any_unordered(V a) { return _mm512_cmp_pd_mask(a, a, _CMP_UNORD_Q) != 0; }
  static V min(V a, V b) { return _mm512_min_pd(a, b); }
  static V mask_mov(V src, M k, V a) { return _mm512_mask_mov_pd(src, k, a); }
  static T reduce_min(V v) { return _mm512_reduce_min_pd(v); }
  static constexpr T kSkip = 60;
  static V exp(V x) { return simd::exp_nan_zero_avx512(x); }  // NaN, -inf -> 0
  static V sanitize(V v) {
    return _mm512_mask_blend_pd(_mm512_cmp_pd_mask(v, v, _CMP_UNORD_Q),
                                _mm512_min_pd(v, set1(std::numeric_limits<T>::max())),
                                set1(-std::numeric_limits<T>::infinity()));
  }
  // Eight distances rounded to float, their bits in the low half.
  static __m256i float_bits(V d) { return _mm256_castps_si256(_mm512_cvtpd_ps(d)); }
  static void store_bytes(M k, uint8_t* out, __m256i key) { _mm_mask_storeu_epi8(out, k, _mm256_cvtepi32_epi8(key)); }
};

template <typename S>
typename S::T row_max(const typename S::T* c, const typename S::T* h, typename S::T inv_eps, int64_t len) {
  using V = typename S::V;
  const V vi = S::set1(inv_eps);
  V vmax = S::set1(-std::numeric_limits<typename S::T>::infinity());
  for (int64_t j = 0; j < len; j += S::kW) {
    const auto k = S::tail(len - j);
    vmax = S::mask_max(vmax, k, vmax, S::fnmadd(S::load(k, c + j), vi, S::load(k, h + j)));
  }
  return S::reduce_max(vmax);
}

// Four accumulators; NaN found by an unordered compare (min itself would drop it).
template <typename S>
typename S::T min_or_nan(const typename S::T* x, int64_t len) {
  using T = typename S::T;
  using V = typename S::V;
  const V inf = S::set1(std::numeric_limits<T>::infinity());
  V mn[4] = {inf, inf, inf, inf};
  bool nan = false;
  int64_t j = 0;
  for (; j + 4 * S::kW <= len; j += 4 * S::kW) {
    for (int q = 0; q < 4; ++q) {
      const V v = S::load(S::tail(S::kW), x + j + q * S::kW);
      nan |= S::any_unordered(v);
      mn[q] = S::min(mn[q], v);
    }
  }
  for (; j < len; j += S::kW) {
    const auto k = S::tail(len - j);
    const V v = S::mask_mov(inf, k, S::load(k, x + j));  // lanes past the end: +inf
    nan |= S::any_unordered(v);
    mn[0] = S::min(mn[0], v);
  }
  return nan ? std::numeric_limits<T>::quiet_NaN() : S::reduce_min(S::min(S::min(mn[0], mn[1]), S::min(mn[2], mn[3])));
}

template <typename S>
typename S::T log_values(const typename S::T* c, const typename S::T* h, typename S::T inv_eps, typename S::T* x,
                         int64_t len) {
  using V = typename S::V;
  const V vi = S::set1(inv_eps);
  V vmax = S::set1(-std::numeric_limits<typename S::T>::infinity());
  for (int64_t j = 0; j < len; j += S::kW) {
    const auto k = S::tail(len - j);
    const V v = S::sanitize(S::fnmadd(S::load(k, c + j), vi, S::load(k, h + j)));
    S::store(k, x + j, v);
    vmax = S::mask_max(vmax, k, vmax, v);
  }
  return S::reduce_max(vmax);
}

// max(a, b) returns b when a is NaN (the (-inf) - (-inf) of an all-forbidden row), as the portable
// loop's (d > floor ? d : floor) does.
template <typename S>
void distance_buckets(const typename S::T* x, typename S::T top, uint8_t* out, int64_t len) {
  using V = typename S::V;
  const V vtop = S::set1(top), vfloor = S::set1(typename S::T(1.0 / 256));
  for (int64_t j = 0; j < len; j += S::kW) {
    const auto k = S::tail(len - j);
    const auto bits = S::float_bits(S::max(S::sub(vtop, S::load(k, x + j)), vfloor));
    if constexpr (S::kW == 16) {
      const __m512i key = _mm512_sub_epi32(_mm512_srli_epi32(bits, 20), _mm512_set1_epi32((127 - 8) << 3));
      S::store_bytes(k, out + j, _mm512_min_epu32(key, _mm512_set1_epi32(255)));
    } else {
      const __m256i key = _mm256_sub_epi32(_mm256_srli_epi32(bits, 20), _mm256_set1_epi32((127 - 8) << 3));
      S::store_bytes(k, out + j, _mm256_min_epu32(key, _mm256_set1_epi32(255)));
    }
  }
}

template <typename S>
typename S::T row_lse(const typename S::T* c, const typename S::T* h, typename S::T inv_eps, int64_t len) {
  using T = typename S::T;
  using V = typename S::V;
  const T ninf = -std::numeric_limits<T>::infinity();
  const V vi = S::set1(inv_eps);
  const T mx = row_max<S>(c, h, inv_eps, len);
  if (mx == ninf) return ninf;
  const V vm = S::set1(mx), thr = S::set1(mx - S::kSkip);
  V acc = S::set1(T(0));
  for (int64_t j = 0; j < len; j += S::kW) {
    const auto k = S::tail(len - j);
    const V x = S::fnmadd(S::load(k, c + j), vi, S::load(k, h + j));
    if (!S::any_gt(x, thr)) continue;  // every term < exp(-kSkip) of the largest: below rounding
    acc = S::add(acc, S::maskz_mov(k, S::exp(S::sub(x, vm))));
  }
  return mx + std::log(S::reduce_add(acc));
}

template <typename S>
typename S::T row_exp(const typename S::T* c, const typename S::T* h, typename S::T inv_eps, typename S::T* mx_out,
                      typename S::T* e, int64_t len) {
  using T = typename S::T;
  using V = typename S::V;
  const T ninf = -std::numeric_limits<T>::infinity();
  const V vi = S::set1(inv_eps);
  const T mx = row_max<S>(c, h, inv_eps, len);
  *mx_out = mx;
  const V vm = S::set1(mx == ninf ? T(0) : mx), thr = S::set1(mx - S::kSkip), zero = S::set1(T(0));
  V acc = zero;
  for (int64_t j = 0; j < len; j += S::kW) {
    const auto k = S::tail(len - j);
    const V x = S::fnmadd(S::load(k, c + j), vi, S::load(k, h + j));
    if (!S::any_gt(x, thr)) {
      S::store(k, e + j, zero);
      continue;
    }
    const V v = S::maskz_mov(k, S::exp(S::sub(x, vm)));
    S::store(k, e + j, v);
    acc = S::add(acc, v);
  }
  return S::reduce_add(acc);
}

template <typename S>
void axpy(const typename S::T* e, typename S::T alpha, typename S::T* acc, int64_t len) {
  const typename S::V va = S::set1(alpha);
  for (int64_t j = 0; j < len; j += S::kW) {
    const auto k = S::tail(len - j);
    S::store(k, acc + j, S::fmadd(va, S::load(k, e + j), S::load(k, acc + j)));
  }
}

// Four accumulators per column chunk stay in registers over all the rows: each row costs its loads (from
// L2) and FMAs, acc is read and written once.
template <typename S>
void axpy_rows(const typename S::T* const* rows, const typename S::T* coef, int64_t count, typename S::T* acc,
               int64_t len) {
  using V = typename S::V;
  const auto full = S::tail(S::kW);
  int64_t j = 0;
  for (; j + 4 * S::kW <= len; j += 4 * S::kW) {
    V a0 = S::load(full, acc + j), a1 = S::load(full, acc + j + S::kW);
    V a2 = S::load(full, acc + j + 2 * S::kW), a3 = S::load(full, acc + j + 3 * S::kW);
    for (int64_t r = 0; r < count; ++r) {
      const typename S::T* p = rows[r] + j;
      const V c = S::set1(coef[r]);
      a0 = S::fmadd(c, S::load(full, p), a0);
      a1 = S::fmadd(c, S::load(full, p + S::kW), a1);
      a2 = S::fmadd(c, S::load(full, p + 2 * S::kW), a2);
      a3 = S::fmadd(c, S::load(full, p + 3 * S::kW), a3);
    }
    S::store(full, acc + j, a0);
    S::store(full, acc + j + S::kW, a1);
    S::store(full, acc + j + 2 * S::kW, a2);
    S::store(full, acc + j + 3 * S::kW, a3);
  }
  for (; j < len; j += S::kW) {
    const auto k = S::tail(len - j);
    V a0 = S::load(k, acc + j);
    for (int64_t r = 0; r < count; ++r) a0 = S::fmadd(S::set1(coef[r]), S::load(k, rows[r] + j), a0);
    S::store(k, acc + j, a0);
  }
}

template <typename S>
typename S::T dot(const typename S::T* x, const typename S::T* y, int64_t len) {
  using V = typename S::V;
  V acc0 = S::set1(0), acc1 = S::set1(0);  // two chains: the FMA latency, not the loads, bounds one
  int64_t j = 0;
  for (; j + 2 * S::kW <= len; j += 2 * S::kW) {
    acc0 = S::fmadd(S::load(S::tail(S::kW), x + j), S::load(S::tail(S::kW), y + j), acc0);
    acc1 = S::fmadd(S::load(S::tail(S::kW), x + j + S::kW), S::load(S::tail(S::kW), y + j + S::kW), acc1);
  }
  for (; j < len; j += S::kW) {
    const auto k = S::tail(len - j);
    acc0 = S::fmadd(S::load(k, x + j), S::load(k, y + j), acc0);
  }
  return S::reduce_add(S::add(acc0, acc1));
}

template <typename S>
void col_accum(const typename S::T* c, typename S::T hi, typename S::T inv_eps, const typename S::T* shift,
               typename S::T* s, typename S::T* mx, int64_t len) {
  using V = typename S::V;
  const V vi = S::set1(inv_eps), vh = S::set1(hi), lo = S::set1(-S::kSkip);
  for (int64_t j = 0; j < len; j += S::kW) {
    const auto k = S::tail(len - j);
    const V x = S::fnmadd(S::load(k, c + j), vi, vh);
    S::store(k, mx + j, S::max(S::load(k, mx + j), x));
    const V d = S::sub(x, S::load(k, shift + j));
    if (!S::any_gt(d, lo)) continue;  // every term < exp(-kSkip) of its column's sum: below rounding
    S::store(k, s + j, S::add(S::load(k, s + j), S::exp(d)));
  }
}

template <typename S>
void plan_row(const typename S::T* c, typename S::T hi, const typename S::T* h, typename S::T inv_eps,
              typename S::T* out, int64_t len) {
  using V = typename S::V;
  const V vi = S::set1(inv_eps), vh = S::set1(hi);
  for (int64_t j = 0; j < len; j += S::kW) {
    const auto k = S::tail(len - j);
    const V x = S::add(vh, S::fnmadd(S::load(k, c + j), vi, S::load(k, h + j)));
    S::store(k, out + j, S::exp(x));
  }
}

template <typename S>
void exp_shifted(const typename S::T* x, typename S::T shift, typename S::T* out, int64_t len) {
  const typename S::V vs = S::set1(shift);
  for (int64_t j = 0; j < len; j += S::kW) {
    const auto k = S::tail(len - j);
    S::store(k, out + j, S::exp(S::add(vs, S::load(k, x + j))));
  }
}

template <typename S>
typename S::T dual_row(const typename S::T* c, typename S::T hi, const typename S::T* h, typename S::T inv_eps,
                       const typename S::T* wr, typename S::T wi, typename S::T* colsum, int64_t len) {
  using T = typename S::T;
  using V = typename S::V;
  const V vi = S::set1(inv_eps), vh = S::set1(hi), vw = S::set1(wi);
  V acc = S::set1(T(0));
  for (int64_t j = 0; j < len; j += S::kW) {
    const auto k = S::tail(len - j);
    const V e = S::maskz_mov(k, S::exp(S::add(vh, S::fnmadd(S::load(k, c + j), vi, S::load(k, h + j)))));
    acc = S::fmadd(S::load(k, wr + j), e, acc);
    if (colsum != nullptr) S::store(k, colsum + j, S::fmadd(vw, e, S::load(k, colsum + j)));
  }
  return S::reduce_add(acc);
}

}  // namespace

float row_lse_avx512(const float* c, const float* h, float inv_eps, int64_t len) { return row_lse<F32>(c, h, inv_eps, len); }
double row_lse_avx512(const double* c, const double* h, double inv_eps, int64_t len) { return row_lse<F64>(c, h, inv_eps, len); }
float row_exp_avx512(const float* c, const float* h, float inv_eps, float* mx, float* e, int64_t len) {
  return row_exp<F32>(c, h, inv_eps, mx, e, len);
}
double row_exp_avx512(const double* c, const double* h, double inv_eps, double* mx, double* e, int64_t len) {
  return row_exp<F64>(c, h, inv_eps, mx, e, len);
}
float min_or_nan_avx512(const float* x, int64_t len) { return min_or_nan<F32>(x, len); }
double min_or_nan_avx512(const double* x, int64_t len) { return min_or_nan<F64>(x, len); }
float log_values_avx512(const float* c, const float* h, float inv_eps, float* x, int64_t len) {
  return log_values<F32>(c, h, inv_eps, x, len);
}
double log_values_avx512(const double* c, const double* h, double inv_eps, double* x, int64_t len) {
  return log_values<F64>(c, h, inv_eps, x, len);
}
void distance_buckets_avx512(const float* x, float top, uint8_t* out, int64_t len) {
  distance_buckets<F32>(x, top, out, len);
}
void distance_buckets_avx512(const double* x, double top, uint8_t* out, int64_t len) {
  distance_buckets<F64>(x, top, out, len);
}
// #{j : bucket[j] <= b}, 64 bytes a step.
int64_t count_at_most_avx512(const uint8_t* bucket, int64_t len, int b) {
  const __m512i vb = _mm512_set1_epi8(static_cast<char>(b));
  int64_t n = 0;
  for (int64_t j = 0; j < len; j += 64) {
    const __mmask64 k = len - j >= 64 ? ~__mmask64(0) : (__mmask64(1) << (len - j)) - 1;
    n += _mm_popcnt_u64(_mm512_mask_cmple_epu8_mask(k, _mm512_maskz_loadu_epi8(k, bucket + j), vb));
  }
  return n;
}
int64_t split_by_bucket_avx512(const uint8_t* bucket, int64_t len, int kb, int64_t* lt, int64_t* eq) {
  const __m512i vb = _mm512_set1_epi8(static_cast<char>(kb));
  int64_t nl = 0, ne = 0;
  for (int64_t j = 0; j < len; j += 64) {
    const __mmask64 k = len - j >= 64 ? ~__mmask64(0) : (__mmask64(1) << (len - j)) - 1;
    const __m512i v = _mm512_maskz_loadu_epi8(k, bucket + j);
    for (__mmask64 m = _mm512_mask_cmplt_epu8_mask(k, v, vb); m != 0; m &= m - 1) lt[nl++] = j + _tzcnt_u64(m);
    for (__mmask64 m = _mm512_mask_cmpeq_epu8_mask(k, v, vb); m != 0; m &= m - 1) eq[ne++] = j + _tzcnt_u64(m);
  }
  return ne;
}
float row_max_avx512(const float* c, const float* h, float inv_eps, int64_t len) {
  return row_max<F32>(c, h, inv_eps, len);
}
double row_max_avx512(const double* c, const double* h, double inv_eps, int64_t len) {
  return row_max<F64>(c, h, inv_eps, len);
}
void axpy_avx512(const float* e, float alpha, float* acc, int64_t len) { axpy<F32>(e, alpha, acc, len); }
void axpy_avx512(const double* e, double alpha, double* acc, int64_t len) { axpy<F64>(e, alpha, acc, len); }
void axpy_rows_avx512(const float* const* rows, const float* coef, int64_t count, float* acc, int64_t len) {
  axpy_rows<F32>(rows, coef, count, acc, len);
}
void axpy_rows_avx512(const double* const* rows, const double* coef, int64_t count, double* acc, int64_t len) {
  axpy_rows<F64>(rows, coef, count, acc, len);
}
float dot_avx512(const float* x, const float* y, int64_t len) { return dot<F32>(x, y, len); }
double dot_avx512(const double* x, const double* y, int64_t len) { return dot<F64>(x, y, len); }
void col_accum_avx512(const float* c, float hi, float inv_eps, const float* shift, float* s, float* mx, int64_t len) {
  col_accum<F32>(c, hi, inv_eps, shift, s, mx, len);
}
void col_accum_avx512(const double* c, double hi, double inv_eps, const double* shift, double* s, double* mx, int64_t len) {
  col_accum<F64>(c, hi, inv_eps, shift, s, mx, len);
}
void plan_row_avx512(const float* c, float hi, const float* h, float inv_eps, float* out, int64_t len) {
  plan_row<F32>(c, hi, h, inv_eps, out, len);
}
void plan_row_avx512(const double* c, double hi, const double* h, double inv_eps, double* out, int64_t len) {
  plan_row<F64>(c, hi, h, inv_eps, out, len);
}
void exp_shifted_avx512(const float* x, float shift, float* out, int64_t len) {
  exp_shifted<F32>(x, shift, out, len);
}
void exp_shifted_avx512(const double* x, double shift, double* out, int64_t len) {
  exp_shifted<F64>(x, shift, out, len);
}
float dual_row_avx512(const float* c, float hi, const float* h, float inv_eps, const float* wr, float wi, float* colsum, int64_t len) {
  return dual_row<F32>(c, hi, h, inv_eps, wr, wi, colsum, len);
}
double dual_row_avx512(const double* c, double hi, const double* h, double inv_eps, const double* wr, double wi, double* colsum, int64_t len) {
  return dual_row<F64>(c, hi, h, inv_eps, wr, wi, colsum, len);
}

}  // namespace sparseops::ot::cpu
