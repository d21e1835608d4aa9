// AVX2 + FMA inner loops of the log-domain OT kernels (declared in lse_kernels.h), for x86 CPUs without
// AVX-512. exp: common/simd_exp_avx2.h (shared with other families; results below -87.34 / -708.3 are
// 0), in its variant where NaN (the (-inf) - (-inf) of an empty row or column) and -inf give 0. Tails
// (< one vector) run a scalar loop with std::exp.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "common/simd_exp_avx2.h"
#include "ot/lse_kernels.h"

namespace sparseops::ot::cpu {
namespace {

struct F32 {
  using T = float;
  using V = __m256;
  static constexpr int kW = 8;
  static V set1(T v) { return _mm256_set1_ps(v); }
  static V load(const T* p) { return _mm256_loadu_ps(p); }
  static void store(T* p, V v) { _mm256_storeu_ps(p, v); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V fnmadd(V a, V b, V c) { return _mm256_fnmadd_ps(a, b, c); }
  static V max(V a, V b) { return _mm256_max_ps(a, b); }
  static T reduce_add(V v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static T reduce_max(V v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static bool any_gt(V a, V b) { return _mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_GT_OQ)) != 0; }
  static V or_unordered(V acc, V a) { return _mm256_or_ps(acc, _mm256_cmp_ps(a, a, _CMP_UNORD_Q)); }
  static bool any_set(V a) { return _mm256_movemask_ps(a) != 0; }
  static V min(V a, V b) { return _mm256_min_ps(a, b); }
  static T reduce_min(V v) {
    __m128 s = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_min_ps(s, _mm_movehl_ps(s, s));
    s = _mm_min_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static constexpr T kSkip = 30;
  static V exp(V x) { return simd::exp_nan_zero_avx2(x); }  // NaN, -inf -> 0
  // NaN -> -inf, +inf -> the largest finite value.
  static V sanitize(V v) {
    return _mm256_blendv_ps(_mm256_min_ps(v, set1(std::numeric_limits<T>::max())),
                            set1(-std::numeric_limits<T>::infinity()), _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  }
  // Eight distance keys (lse_kernels.h: distance_buckets) as bytes.
  static void store_buckets(V d, uint8_t* out) {
    __m256i key = _mm256_sub_epi32(_mm256_srli_epi32(_mm256_castps_si256(d), 20), _mm256_set1_epi32((127 - 8) << 3));
    key = _mm256_min_epu32(key, _mm256_set1_epi32(255));
    const __m128i w = _mm_packus_epi32(_mm256_castsi256_si128(key), _mm256_extracti128_si256(key, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(out), _mm_packus_epi16(w, w));
  }
};

struct F64 {
  using T = double;
  using V = __m256d;
  static constexpr int kW = 4;
  static V set1(T v) { return _mm256_set1_pd(v); }
  static V load(const T* p) { return _mm256_loadu_pd(p); }
  static void store(T* p, V v) { _mm256_storeu_pd(p, v); }
  static V add(V a, V b) { return _mm256_add_pd(a, b); }
  static V sub(V a, V b) { return _mm256_sub_pd(a, b); }
  static V fmadd(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
  static V fnmadd(V a, V b, V c) { return _mm256_fnmadd_pd(a, b, c); }
  static V max(V a, V b) { return _mm256_max_pd(a, b); }
  static T reduce_add(V v) {
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
  }
  static T reduce_max(V v) {
    __m128d s = _mm_max_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_max_sd(s, _mm_unpackhi_pd(s, s)));
  }
  static bool any_gt(V a, V b) { return _mm256_movemask_pd(_mm256_cmp_pd(a, b, _CMP_GT_OQ)) != 0; }
  static V or_unordered(V acc, V a) { return _mm256_or_pd(acc, _mm256_cmp_pd(a, a, _CMP_UNORD_Q)); }
  static bool any_set(V a) { return _mm256_movemask_pd(a) != 0; }
  static V min(V a, V b) { return _mm256_min_pd(a, b); }
  static T reduce_min(V v) {
    __m128d s = _mm_min_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_min_sd(s, _mm_unpackhi_pd(s, s)));
  }
  static constexpr T kSkip = 60;
  static V exp(V x) { return simd::exp_nan_zero_avx2(x); }  // NaN, -inf -> 0
  static V sanitize(V v) {
    return _mm256_blendv_pd(_mm256_min_pd(v, set1(std::numeric_limits<T>::max())),
                            set1(-std::numeric_limits<T>::infinity()), _mm256_cmp_pd(v, v, _CMP_UNORD_Q));
  }
  // Four distances rounded to float, their keys as bytes.
  static void store_buckets(V d, uint8_t* out) {
    const __m128i bits = _mm_castps_si128(_mm256_cvtpd_ps(d));
    __m128i key = _mm_sub_epi32(_mm_srli_epi32(bits, 20), _mm_set1_epi32((127 - 8) << 3));
    key = _mm_min_epu32(key, _mm_set1_epi32(255));
    const __m128i w = _mm_packus_epi32(key, key);
    const int32_t four = _mm_cvtsi128_si32(_mm_packus_epi16(w, w));
    std::memcpy(out, &four, sizeof four);
  }
};

// The scalar tails of log_values and distance_buckets (the portable loops' formulas).
template <typename T>
T log_value_tail(const T* c, const T* h, T inv_eps, int64_t j) {
  const T v = h[j] - c[j] * inv_eps;
  return v == v ? std::min(v, std::numeric_limits<T>::max()) : -std::numeric_limits<T>::infinity();
}
template <typename T>
uint8_t distance_bucket_tail(T top, T x) {
  const T d = top - x;
  // Clamped: converting a double past float's range is undefined (the vector conversion gives +inf; both
  // land in bucket 255).
  const float df = static_cast<float>(std::min(d > T(1.0 / 256) ? d : T(1.0 / 256), T(1e30)));
  uint32_t bits;
  std::memcpy(&bits, &df, sizeof bits);
  return static_cast<uint8_t>(std::min<uint32_t>((bits >> 20) - ((127 - 8) << 3), 255));
}

template <typename S>
typename S::T row_max(const typename S::T* c, const typename S::T* h, typename S::T inv_eps, int64_t len) {
  using V = typename S::V;
  const V vi = S::set1(inv_eps);
  V vmax = S::set1(-std::numeric_limits<typename S::T>::infinity());
  int64_t j = 0;
  for (; j + S::kW <= len; j += S::kW) vmax = S::max(vmax, S::fnmadd(S::load(c + j), vi, S::load(h + j)));
  typename S::T mx = S::reduce_max(vmax);
  for (; j < len; ++j) mx = std::max(mx, h[j] - c[j] * inv_eps);
  return mx;
}

// Four accumulators; NaN found by an unordered compare (min itself would drop it); a scalar tail.
template <typename S>
typename S::T min_or_nan(const typename S::T* x, int64_t len) {
  using T = typename S::T;
  using V = typename S::V;
  const V inf = S::set1(std::numeric_limits<T>::infinity());
  V mn[4] = {inf, inf, inf, inf}, unordered = S::set1(T(0));
  int64_t j = 0;
  for (; j + 4 * S::kW <= len; j += 4 * S::kW) {
    for (int q = 0; q < 4; ++q) {
      const V v = S::load(x + j + q * S::kW);
      unordered = S::or_unordered(unordered, v);
      mn[q] = S::min(mn[q], v);
    }
  }
  bool nan = S::any_set(unordered);
  T m = S::reduce_min(S::min(S::min(mn[0], mn[1]), S::min(mn[2], mn[3])));
  for (; j < len; ++j) {
    nan |= x[j] != x[j];
    m = x[j] < m ? x[j] : m;
  }
  return nan ? std::numeric_limits<T>::quiet_NaN() : m;
}

template <typename S>
typename S::T log_values(const typename S::T* c, const typename S::T* h, typename S::T inv_eps, typename S::T* x,
                         int64_t len) {
  using T = typename S::T;
  using V = typename S::V;
  const V vi = S::set1(inv_eps);
  V vmax = S::set1(-std::numeric_limits<T>::infinity());
  int64_t j = 0;
  for (; j + S::kW <= len; j += S::kW) {
    const V v = S::sanitize(S::fnmadd(S::load(c + j), vi, S::load(h + j)));
    S::store(x + j, v);
    vmax = S::max(vmax, v);
  }
  T mx = S::reduce_max(vmax);
  for (; j < len; ++j) {
    x[j] = log_value_tail(c, h, inv_eps, j);
    mx = std::max(mx, x[j]);
  }
  return mx;
}

// max(a, b) returns b when a is NaN (the (-inf) - (-inf) of an all-forbidden row), as the tail's
// (d > floor ? d : floor) does.
template <typename S>
void distance_buckets(const typename S::T* x, typename S::T top, uint8_t* out, int64_t len) {
  using V = typename S::V;
  const V vtop = S::set1(top), vfloor = S::set1(typename S::T(1.0 / 256));
  int64_t j = 0;
  for (; j + S::kW <= len; j += S::kW) S::store_buckets(S::max(S::sub(vtop, S::load(x + j)), vfloor), out + j);
  for (; j < len; ++j) out[j] = distance_bucket_tail(top, x[j]);
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
  int64_t j = 0;
  for (; j + S::kW <= len; j += S::kW) {
    const V x = S::fnmadd(S::load(c + j), vi, S::load(h + j));
    if (!S::any_gt(x, thr)) continue;  // every term < exp(-kSkip) of the largest: below rounding
    acc = S::add(acc, S::exp(S::sub(x, vm)));
  }
  T sum = S::reduce_add(acc);
  for (int64_t t = j; t < len; ++t) sum += std::exp(h[t] - c[t] * inv_eps - mx);
  return mx + std::log(sum);
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
  const T m0 = mx == ninf ? T(0) : mx;
  const V vm = S::set1(m0), thr = S::set1(mx - S::kSkip), zero = S::set1(T(0));
  V acc = zero;
  int64_t j = 0;
  for (; j + S::kW <= len; j += S::kW) {
    const V x = S::fnmadd(S::load(c + j), vi, S::load(h + j));
    if (!S::any_gt(x, thr)) {
      S::store(e + j, zero);
      continue;
    }
    const V v = S::exp(S::sub(x, vm));
    S::store(e + j, v);
    acc = S::add(acc, v);
  }
  T sum = S::reduce_add(acc);
  for (; j < len; ++j) {
    e[j] = std::exp(h[j] - c[j] * inv_eps - m0);
    sum += e[j];
  }
  return sum;
}

template <typename S>
void axpy(const typename S::T* e, typename S::T alpha, typename S::T* acc, int64_t len) {
  const typename S::V va = S::set1(alpha);
  int64_t j = 0;
  for (; j + S::kW <= len; j += S::kW) S::store(acc + j, S::fmadd(va, S::load(e + j), S::load(acc + j)));
  for (; j < len; ++j) acc[j] += alpha * e[j];
}

// Four accumulators per column chunk stay in registers over all the rows: each row costs its loads (from
// L2) and FMAs, acc is read and written once.
template <typename S>
void axpy_rows(const typename S::T* const* rows, const typename S::T* coef, int64_t count, typename S::T* acc,
               int64_t len) {
  using V = typename S::V;
  int64_t j = 0;
  for (; j + 4 * S::kW <= len; j += 4 * S::kW) {
    V a0 = S::load(acc + j), a1 = S::load(acc + j + S::kW);
    V a2 = S::load(acc + j + 2 * S::kW), a3 = S::load(acc + j + 3 * S::kW);
    for (int64_t r = 0; r < count; ++r) {
      const typename S::T* p = rows[r] + j;
      const V c = S::set1(coef[r]);
      a0 = S::fmadd(c, S::load(p), a0);
      a1 = S::fmadd(c, S::load(p + S::kW), a1);
      a2 = S::fmadd(c, S::load(p + 2 * S::kW), a2);
      a3 = S::fmadd(c, S::load(p + 3 * S::kW), a3);
    }
    S::store(acc + j, a0);
    S::store(acc + j + S::kW, a1);
    S::store(acc + j + 2 * S::kW, a2);
    S::store(acc + j + 3 * S::kW, a3);
  }
  for (; j < len; ++j) {
    typename S::T sum = acc[j];
    for (int64_t r = 0; r < count; ++r) sum += coef[r] * rows[r][j];
    acc[j] = sum;
  }
}

template <typename S>
typename S::T dot(const typename S::T* x, const typename S::T* y, int64_t len) {
  using V = typename S::V;
  V acc0 = S::set1(0), acc1 = S::set1(0);  // two chains: the FMA latency, not the loads, bounds one
  int64_t j = 0;
  for (; j + 2 * S::kW <= len; j += 2 * S::kW) {
    acc0 = S::fmadd(S::load(x + j), S::load(y + j), acc0);
    acc1 = S::fmadd(S::load(x + j + S::kW), S::load(y + j + S::kW), acc1);
  }
  for (; j + S::kW <= len; j += S::kW) acc0 = S::fmadd(S::load(x + j), S::load(y + j), acc0);
  typename S::T sum = S::reduce_add(S::add(acc0, acc1));
  for (; j < len; ++j) sum += x[j] * y[j];
  return sum;
}

template <typename S>
void col_accum(const typename S::T* c, typename S::T hi, typename S::T inv_eps, const typename S::T* shift,
               typename S::T* s, typename S::T* mx, int64_t len) {
  using T = typename S::T;
  using V = typename S::V;
  const V vi = S::set1(inv_eps), vh = S::set1(hi), lo = S::set1(-S::kSkip);
  int64_t j = 0;
  for (; j + S::kW <= len; j += S::kW) {
    const V x = S::fnmadd(S::load(c + j), vi, vh);
    S::store(mx + j, S::max(S::load(mx + j), x));
    const V d = S::sub(x, S::load(shift + j));
    if (!S::any_gt(d, lo)) continue;  // every term < exp(-kSkip) of its column's sum: below rounding
    S::store(s + j, S::add(S::load(s + j), S::exp(d)));
  }
  for (; j < len; ++j) {
    const T x = hi - c[j] * inv_eps;
    mx[j] = std::max(mx[j], x);
    const T d = x - shift[j];
    s[j] += d == d ? std::exp(d) : T(0);
  }
}

template <typename S>
void plan_row(const typename S::T* c, typename S::T hi, const typename S::T* h, typename S::T inv_eps,
              typename S::T* out, int64_t len) {
  using V = typename S::V;
  const V vi = S::set1(inv_eps), vh = S::set1(hi);
  int64_t j = 0;
  for (; j + S::kW <= len; j += S::kW) S::store(out + j, S::exp(S::add(vh, S::fnmadd(S::load(c + j), vi, S::load(h + j)))));
  for (; j < len; ++j) out[j] = std::exp(hi + (h[j] - c[j] * inv_eps));
}

template <typename S>
void exp_shifted(const typename S::T* x, typename S::T shift, typename S::T* out, int64_t len) {
  const typename S::V vs = S::set1(shift);
  int64_t j = 0;
  for (; j + S::kW <= len; j += S::kW) S::store(out + j, S::exp(S::add(vs, S::load(x + j))));
  for (; j < len; ++j) out[j] = std::exp(shift + x[j]);
}

template <typename S>
typename S::T dual_row(const typename S::T* c, typename S::T hi, const typename S::T* h, typename S::T inv_eps,
                       const typename S::T* wr, typename S::T wi, typename S::T* colsum, int64_t len) {
  using T = typename S::T;
  using V = typename S::V;
  const V vi = S::set1(inv_eps), vh = S::set1(hi), vw = S::set1(wi);
  V acc = S::set1(T(0));
  int64_t j = 0;
  for (; j + S::kW <= len; j += S::kW) {
    const V e = S::exp(S::add(vh, S::fnmadd(S::load(c + j), vi, S::load(h + j))));
    acc = S::fmadd(S::load(wr + j), e, acc);
    if (colsum != nullptr) S::store(colsum + j, S::fmadd(vw, e, S::load(colsum + j)));
  }
  T sum = S::reduce_add(acc);
  for (; j < len; ++j) {
    const T e = std::exp(hi + (h[j] - c[j] * inv_eps));
    sum += wr[j] * e;
    if (colsum != nullptr) colsum[j] += wi * e;
  }
  return sum;
}

// The 32-bit mask of the bytes of v that are <= b (unsigned).
uint32_t bytes_at_most(__m256i v, __m256i vb) {
  return static_cast<uint32_t>(_mm256_movemask_epi8(_mm256_cmpeq_epi8(_mm256_min_epu8(v, vb), v)));
}

}  // namespace

float row_lse_avx2(const float* c, const float* h, float inv_eps, int64_t len) { return row_lse<F32>(c, h, inv_eps, len); }
double row_lse_avx2(const double* c, const double* h, double inv_eps, int64_t len) { return row_lse<F64>(c, h, inv_eps, len); }
float row_exp_avx2(const float* c, const float* h, float inv_eps, float* mx, float* e, int64_t len) {
  return row_exp<F32>(c, h, inv_eps, mx, e, len);
}
double row_exp_avx2(const double* c, const double* h, double inv_eps, double* mx, double* e, int64_t len) {
  return row_exp<F64>(c, h, inv_eps, mx, e, len);
}
float min_or_nan_avx2(const float* x, int64_t len) { return min_or_nan<F32>(x, len); }
double min_or_nan_avx2(const double* x, int64_t len) { return min_or_nan<F64>(x, len); }
float log_values_avx2(const float* c, const float* h, float inv_eps, float* x, int64_t len) {
  return log_values<F32>(c, h, inv_eps, x, len);
}
double log_values_avx2(const double* c, const double* h, double inv_eps, double* x, int64_t len) {
  return log_values<F64>(c, h, inv_eps, x, len);
}
void distance_buckets_avx2(const float* x, float top, uint8_t* out, int64_t len) {
  distance_buckets<F32>(x, top, out, len);
}
void distance_buckets_avx2(const double* x, double top, uint8_t* out, int64_t len) {
  distance_buckets<F64>(x, top, out, len);
}
// #{j : bucket[j] <= b}, 32 bytes a step.
int64_t count_at_most_avx2(const uint8_t* bucket, int64_t len, int b) {
  const __m256i vb = _mm256_set1_epi8(static_cast<char>(b));
  int64_t n = 0, j = 0;
  for (; j + 32 <= len; j += 32) {
    n += _mm_popcnt_u32(bytes_at_most(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(bucket + j)), vb));
  }
  for (; j < len; ++j) n += bucket[j] <= b;
  return n;
}
int64_t split_by_bucket_avx2(const uint8_t* bucket, int64_t len, int kb, int64_t* lt, int64_t* eq) {
  const __m256i vb = _mm256_set1_epi8(static_cast<char>(kb));
  int64_t nl = 0, ne = 0, j = 0;
  for (; j + 32 <= len; j += 32) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bucket + j));
    const uint32_t at_eq = static_cast<uint32_t>(_mm256_movemask_epi8(_mm256_cmpeq_epi8(v, vb)));
    const uint32_t at_lt = bytes_at_most(v, vb) & ~at_eq;
    for (uint32_t m = at_lt; m != 0; m &= m - 1) lt[nl++] = j + _tzcnt_u32(m);
    for (uint32_t m = at_eq; m != 0; m &= m - 1) eq[ne++] = j + _tzcnt_u32(m);
  }
  for (; j < len; ++j) {
    if (bucket[j] < kb) {
      lt[nl++] = j;
    } else if (bucket[j] == kb) {
      eq[ne++] = j;
    }
  }
  return ne;
}
float row_max_avx2(const float* c, const float* h, float inv_eps, int64_t len) {
  return row_max<F32>(c, h, inv_eps, len);
}
double row_max_avx2(const double* c, const double* h, double inv_eps, int64_t len) {
  return row_max<F64>(c, h, inv_eps, len);
}
void axpy_avx2(const float* e, float alpha, float* acc, int64_t len) { axpy<F32>(e, alpha, acc, len); }
void axpy_avx2(const double* e, double alpha, double* acc, int64_t len) { axpy<F64>(e, alpha, acc, len); }
void axpy_rows_avx2(const float* const* rows, const float* coef, int64_t count, float* acc, int64_t len) {
  axpy_rows<F32>(rows, coef, count, acc, len);
}
void axpy_rows_avx2(const double* const* rows, const double* coef, int64_t count, double* acc, int64_t len) {
  axpy_rows<F64>(rows, coef, count, acc, len);
}
float dot_avx2(const float* x, const float* y, int64_t len) { return dot<F32>(x, y, len); }
double dot_avx2(const double* x, const double* y, int64_t len) { return dot<F64>(x, y, len); }
void col_accum_avx2(const float* c, float hi, float inv_eps, const float* shift, float* s, float* mx, int64_t len) {
  col_accum<F32>(c, hi, inv_eps, shift, s, mx, len);
}
void col_accum_avx2(const double* c, double hi, double inv_eps, const double* shift, double* s, double* mx, int64_t len) {
  col_accum<F64>(c, hi, inv_eps, shift, s, mx, len);
}
void plan_row_avx2(const float* c, float hi, const float* h, float inv_eps, float* out, int64_t len) {
  plan_row<F32>(c, hi, h, inv_eps, out, len);
}
void plan_row_avx2(const double* c, double hi, const double* h, double inv_eps, double* out, int64_t len) {
  plan_row<F64>(c, hi, h, inv_eps, out, len);
}
void exp_shifted_avx2(const float* x, float shift, float* out, int64_t len) {
  exp_shifted<F32>(x, shift, out, len);
}
void exp_shifted_avx2(const double* x, double shift, double* out, int64_t len) {
  exp_shifted<F64>(x, shift, out, len);
}
float dual_row_avx2(const float* c, float hi, const float* h, float inv_eps, const float* wr, float wi, float* colsum, int64_t len) {
  return dual_row<F32>(c, hi, h, inv_eps, wr, wi, colsum, len);
}
double dual_row_avx2(const double* c, double hi, const double* h, double inv_eps, const double* wr, double wi, double* colsum, int64_t len) {
  return dual_row<F64>(c, hi, h, inv_eps, wr, wi, colsum, len);
}

}  // namespace sparseops::ot::cpu
