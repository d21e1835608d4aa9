// AVX2 attention micro-kernels for x86 CPUs without AVX-512 (compiled with -mavx2 -mfma; attention_cpu.cpp
// calls them only when sparseops::cpu_use_avx2()). See attention_microkernels.h for the contracts.
//   gemm: register tiles of up to 6 rows x 16 columns (12 ymm accumulators), B's 16-column panel loaded
//         once per k for all rows of the tile, A broadcast from memory.
//   gemm_at: the same with A read transposed (6 consecutive A values broadcast per k).
//   transpose: common/simd_transpose_avx.h (8 x 8 register blocks).
//   exp:  common/simd_exp_avx2.h (Cephes' expf as on AVX-512, 2^n built in the exponent field: ~2 ulp;
//         below -87.3 and -inf exactly 0; NaN stays NaN), shared with the ot family.
// No torch headers and nothing inline shared with non-AVX2 files (see the header).
#include <immintrin.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "attention/attention_microkernels.h"
#include "common/simd_exp_avx2.h"
#include "common/simd_transpose_avx.h"

namespace sparseops::attention::cpu {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

inline float hmax256(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
  return _mm_cvtss_f32(m);
}

inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

// TA: A stored transposed (A(r, k) at A[k * lda + r]).
template <int MR, bool TA>
void gemm_tile(int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* C, int64_t ldc,
               bool accumulate) {
  // Fully unrolled so that GCC keeps the 2 MR accumulators in registers (without the pragmas it
  // stored them to the stack on every k).
  __m256 c[MR][2];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    c[r][0] = accumulate ? _mm256_loadu_ps(C + r * ldc) : _mm256_setzero_ps();
    c[r][1] = accumulate ? _mm256_loadu_ps(C + r * ldc + 8) : _mm256_setzero_ps();
  }
  for (int64_t k = 0; k < K; ++k) {
    const __m256 b0 = _mm256_loadu_ps(B + k * ldb), b1 = _mm256_loadu_ps(B + k * ldb + 8);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m256 a = _mm256_broadcast_ss(TA ? A + k * lda + r : A + r * lda + k);
      c[r][0] = _mm256_fmadd_ps(a, b0, c[r][0]);
      c[r][1] = _mm256_fmadd_ps(a, b1, c[r][1]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    _mm256_storeu_ps(C + r * ldc, c[r][0]);
    _mm256_storeu_ps(C + r * ldc + 8, c[r][1]);
  }
}

constexpr int kMR = 6;

template <bool TA>
void gemm_any(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
              int64_t ldc, bool accumulate) {
  for (int64_t j = 0; j < N; j += 16) {
    for (int64_t r = 0; r < M; r += kMR) {
      const float* a = TA ? A + r : A + r * lda;
      float* c = C + r * ldc + j;
      switch (M - r < kMR ? M - r : kMR) {
        case 1: gemm_tile<1, TA>(K, a, lda, B + j, ldb, c, ldc, accumulate); break;
        case 2: gemm_tile<2, TA>(K, a, lda, B + j, ldb, c, ldc, accumulate); break;
        case 3: gemm_tile<3, TA>(K, a, lda, B + j, ldb, c, ldc, accumulate); break;
        case 4: gemm_tile<4, TA>(K, a, lda, B + j, ldb, c, ldc, accumulate); break;
        case 5: gemm_tile<5, TA>(K, a, lda, B + j, ldb, c, ldc, accumulate); break;
        default: gemm_tile<6, TA>(K, a, lda, B + j, ldb, c, ldc, accumulate); break;
      }
    }
  }
}

void gemm_avx2(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
               int64_t ldc, bool accumulate) {
  gemm_any<false>(M, N, K, A, lda, B, ldb, C, ldc, accumulate);
}

void gemm_at_avx2(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
                  int64_t ldc, bool accumulate) {
  gemm_any<true>(M, N, K, A, lda, B, ldb, C, ldc, accumulate);
}

void softmax_step_avx2(float* S, int64_t lds, int64_t M, int64_t N, float scale, float* row_max, float* row_sum,
                       float* alpha) {
  const __m256 sc = _mm256_set1_ps(scale);
  for (int64_t r = 0; r < M; ++r) {
    float* s = S + r * lds;
    __m256 mx = _mm256_set1_ps(kNegInf);
    __m256 nan = _mm256_setzero_ps();
    for (int64_t j = 0; j < N; j += 8) {
      const __m256 v = _mm256_loadu_ps(s + j);
      nan = _mm256_or_ps(nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
      mx = _mm256_max_ps(mx, v);
    }
    // scale > 0: the largest scaled logit is scale times the largest logit (rounding is monotone).
    const float m_old = row_max[r];
    const float m_blk = hmax256(mx) * scale;
    const float m_new = _mm256_movemask_ps(nan) || std::isnan(m_old) ? std::numeric_limits<float>::quiet_NaN()
                                                                     : (m_blk > m_old ? m_blk : m_old);
    if (m_new == kNegInf) {
      std::memset(s, 0, sizeof(float) * N);
      alpha[r] = 1.0f;
      continue;
    }
    const __m256 mv = _mm256_set1_ps(m_new);
    __m256 sum = _mm256_setzero_ps();
    for (int64_t j = 0; j < N; j += 8) {
      const __m256 p = simd::exp_avx2(_mm256_fmsub_ps(_mm256_loadu_ps(s + j), sc, mv));
      _mm256_storeu_ps(s + j, p);
      sum = _mm256_add_ps(sum, p);
    }
    const float a = _mm256_cvtss_f32(simd::exp_avx2(_mm256_set1_ps(m_old - m_new)));
    alpha[r] = a;
    row_sum[r] = row_sum[r] * a + hsum256(sum);
    row_max[r] = m_new;
  }
}

void exp_shift_avx2(float* S, int64_t lds, int64_t M, int64_t N, const float* row_shift, const float* col_shift) {
  const __m256 ninf = _mm256_set1_ps(kNegInf);
  for (int64_t r = 0; r < M; ++r) {
    float* s = S + r * lds;
    const __m256 rs = _mm256_set1_ps(row_shift ? row_shift[r] : 0.0f);
    for (int64_t j = 0; j < N; j += 8) {
      const __m256 t = col_shift ? _mm256_add_ps(rs, _mm256_loadu_ps(col_shift + j)) : rs;
      const __m256 dead = _mm256_cmp_ps(t, ninf, _CMP_EQ_OQ);
      const __m256 p = simd::exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(s + j), t));
      _mm256_storeu_ps(s + j, _mm256_andnot_ps(dead, p));
    }
  }
}

}  // namespace

MicroKernels microkernels_avx2() {
  MicroKernels k{};  // the bf16 products and the fused glue stay null: fp32 products and the glue's own loops
  k.gemm = gemm_avx2;
  k.gemm_at = gemm_at_avx2;
  k.transpose = simd::transpose_scaled_avx;
  k.softmax_step = softmax_step_avx2;
  k.exp_shift = exp_shift_avx2;
  return k;
}

}  // namespace sparseops::attention::cpu
