// AVX-512 attention micro-kernels (compiled with -mavx512f/bw/vl/dq; attention_cpu.cpp calls them only
// when sparseops::cpu_use_avx512()). See attention_microkernels.h for the contracts.
//   gemm: register tiles of up to 12 rows x 32 columns (24 zmm accumulators), B's 32-column panel
//         loaded once per k for all rows of the tile, A broadcast from memory; the tile loops are
//         unrolled by pragma (without, GCC stored the accumulators to the stack on every k).
//   transpose: common/simd_transpose_avx.h (8 x 8 blocks in ymm registers, shared with the AVX2 set);
//         bf16 pairs: common/simd_transpose_avx512.h (16 x 16 blocks of 32-bit pairs).
//   exp:  common/simd_exp_avx512.h (Cephes' expf, ~2 ulp; below -87.3 and -inf exactly 0; NaN stays
//         NaN), shared with the ot family.
// No torch headers and nothing inline shared with non-AVX-512 files (see the header).
#include <immintrin.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "attention/attention_microkernels.h"
#include "common/simd_exp_avx512.h"
#include "common/simd_transpose_avx.h"
#include "common/simd_transpose_avx512.h"

namespace sparseops::attention::cpu {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// TA: A stored transposed (A(r, k) at A[k * lda + r]).
template <int MR, int NV, bool TA>
void gemm_tile(int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* C, int64_t ldc,
               bool accumulate) {
  __m512 c[MR][NV];
#pragma GCC unroll 12
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) c[r][v] = accumulate ? _mm512_loadu_ps(C + r * ldc + 16 * v) : _mm512_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    __m512 b[NV];
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) b[v] = _mm512_loadu_ps(B + k * ldb + 16 * v);
#pragma GCC unroll 12
    for (int r = 0; r < MR; ++r) {
      const __m512 a = _mm512_set1_ps(TA ? A[k * lda + r] : A[r * lda + k]);
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) c[r][v] = _mm512_fmadd_ps(a, b[v], c[r][v]);
    }
  }
#pragma GCC unroll 12
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(C + r * ldc + 16 * v, c[r][v]);
}

constexpr int kMR = 12;

template <int NV, bool TA>
void gemm_rows(int rows, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* C, int64_t ldc,
               bool acc) {
  switch (rows) {
#define SPARSEOPS_TILE(R) \
  case R:                 \
    return gemm_tile<R, NV, TA>(K, A, lda, B, ldb, C, ldc, acc);
    SPARSEOPS_TILE(1) SPARSEOPS_TILE(2) SPARSEOPS_TILE(3) SPARSEOPS_TILE(4) SPARSEOPS_TILE(5) SPARSEOPS_TILE(6)
    SPARSEOPS_TILE(7) SPARSEOPS_TILE(8) SPARSEOPS_TILE(9) SPARSEOPS_TILE(10) SPARSEOPS_TILE(11) SPARSEOPS_TILE(12)
#undef SPARSEOPS_TILE
    default:
      return;
  }
}

template <bool TA>
void gemm_any(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
              int64_t ldc, bool accumulate) {
  for (int64_t j = 0; j < N; j += 32) {
    const bool two = N - j >= 32;
    for (int64_t r = 0; r < M; r += kMR) {
      const int rows = static_cast<int>(M - r < kMR ? M - r : kMR);
      const float* a = TA ? A + r : A + r * lda;
      if (two) {
        gemm_rows<2, TA>(rows, K, a, lda, B + j, ldb, C + r * ldc + j, ldc, accumulate);
      } else {
        gemm_rows<1, TA>(rows, K, a, lda, B + j, ldb, C + r * ldc + j, ldc, accumulate);
      }
    }
  }
}

void gemm_avx512(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
                 int64_t ldc, bool accumulate) {
  gemm_any<false>(M, N, K, A, lda, B, ldb, C, ldc, accumulate);
}

void gemm_at_avx512(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb,
                    float* C, int64_t ldc, bool accumulate) {
  gemm_any<true>(M, N, K, A, lda, B, ldb, C, ldc, accumulate);
}

// The online softmax's new running max of a row for the logits scale * s[0, N) (scale > 0: the largest
// scaled logit is scale times the largest logit, rounding being monotone); NaN when a logit or m_old is.
inline float next_row_max(const float* s, int64_t N, float scale, float m_old) {
  __m512 mx = _mm512_set1_ps(kNegInf);
  __mmask16 nan = 0;
  for (int64_t j = 0; j < N; j += 16) {
    const __m512 v = _mm512_loadu_ps(s + j);
    nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    mx = _mm512_max_ps(mx, v);
  }
  const float m_blk = _mm512_reduce_max_ps(mx) * scale;
  return nan || std::isnan(m_old) ? std::numeric_limits<float>::quiet_NaN() : (m_blk > m_old ? m_blk : m_old);
}

// A row's bookkeeping once its probabilities (summing to `sum`) were taken against m_new.
inline void close_row_step(float m_new, __m512 sum, float& row_max, float& row_sum, float& alpha) {
  const float a = _mm512_cvtss_f32(simd::exp_avx512(_mm512_set1_ps(row_max - m_new)));
  alpha = a;
  row_sum = row_sum * a + _mm512_reduce_add_ps(sum);
  row_max = m_new;
}

void softmax_step_avx512(float* S, int64_t lds, int64_t M, int64_t N, float scale, float* row_max, float* row_sum,
                         float* alpha) {
  const __m512 sc = _mm512_set1_ps(scale);
  for (int64_t r = 0; r < M; ++r) {
    float* s = S + r * lds;
    const float m_new = next_row_max(s, N, scale, row_max[r]);
    if (m_new == kNegInf) {
      std::memset(s, 0, sizeof(float) * N);
      alpha[r] = 1.0f;
      continue;
    }
    const __m512 mv = _mm512_set1_ps(m_new);
    __m512 sum = _mm512_setzero_ps();
    for (int64_t j = 0; j < N; j += 16) {
      const __m512 p = simd::exp_avx512(_mm512_fmsub_ps(_mm512_loadu_ps(s + j), sc, mv));
      _mm512_storeu_ps(s + j, p);
      sum = _mm512_add_ps(sum, p);
    }
    close_row_step(m_new, sum, row_max[r], row_sum[r], alpha[r]);
  }
}

void exp_shift_avx512(float* S, int64_t lds, int64_t M, int64_t N, const float* row_shift, const float* col_shift) {
  const __m512 ninf = _mm512_set1_ps(kNegInf);
  for (int64_t r = 0; r < M; ++r) {
    float* s = S + r * lds;
    const __m512 rs = _mm512_set1_ps(row_shift ? row_shift[r] : 0.0f);
    for (int64_t j = 0; j < N; j += 16) {
      const __m512 t = col_shift ? _mm512_add_ps(rs, _mm512_loadu_ps(col_shift + j)) : rs;
      const __mmask16 dead = _mm512_cmp_ps_mask(t, ninf, _CMP_EQ_OQ);
      const __m512 p = simd::exp_avx512(_mm512_sub_ps(_mm512_loadu_ps(s + j), t));
      _mm512_storeu_ps(s + j, _mm512_maskz_mov_ps(static_cast<__mmask16>(~dead), p));
    }
  }
}

// ---- bf16 pairs (vdpbf16ps) ---------------------------------------------------------------------

template <int MR, int NV>
void gemm_bf16_tile(int64_t K2, const uint32_t* A, int64_t lda, const uint32_t* B, int64_t ldb, float* C, int64_t ldc,
                    bool accumulate, float out_scale) {
  __m512 c[MR][NV];
#pragma GCC unroll 12
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) c[r][v] = accumulate ? _mm512_loadu_ps(C + r * ldc + 16 * v) : _mm512_setzero_ps();
  for (int64_t k = 0; k < K2; ++k) {
    __m512bh b[NV];
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) b[v] = (__m512bh)_mm512_loadu_si512(B + k * ldb + 16 * v);
#pragma GCC unroll 12
    for (int r = 0; r < MR; ++r) {
      const __m512bh a = (__m512bh)_mm512_set1_epi32(static_cast<int>(A[r * lda + k]));
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) c[r][v] = _mm512_dpbf16_ps(c[r][v], a, b[v]);
    }
  }
  const __m512 s = _mm512_set1_ps(out_scale);
#pragma GCC unroll 12
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(C + r * ldc + 16 * v, accumulate ? c[r][v] : _mm512_mul_ps(c[r][v], s));
}

template <int NV>
void gemm_bf16_rows(int rows, int64_t K2, const uint32_t* A, int64_t lda, const uint32_t* B, int64_t ldb, float* C,
                    int64_t ldc, bool acc, float sc) {
  switch (rows) {
#define SPARSEOPS_TILE(R) \
  case R:                 \
    return gemm_bf16_tile<R, NV>(K2, A, lda, B, ldb, C, ldc, acc, sc);
    SPARSEOPS_TILE(1) SPARSEOPS_TILE(2) SPARSEOPS_TILE(3) SPARSEOPS_TILE(4) SPARSEOPS_TILE(5) SPARSEOPS_TILE(6)
    SPARSEOPS_TILE(7) SPARSEOPS_TILE(8) SPARSEOPS_TILE(9) SPARSEOPS_TILE(10) SPARSEOPS_TILE(11) SPARSEOPS_TILE(12)
#undef SPARSEOPS_TILE
    default:
      return;
  }
}

void gemm_bf16_avx512(int64_t M, int64_t N, int64_t K2, const uint32_t* A, int64_t lda, const uint32_t* B,
                      int64_t ldb, float* C, int64_t ldc, bool accumulate, float out_scale) {
  for (int64_t j = 0; j < N; j += 32) {
    const bool two = N - j >= 32;
    for (int64_t r = 0; r < M; r += kMR) {
      const int rows = static_cast<int>(M - r < kMR ? M - r : kMR);
      if (two) {
        gemm_bf16_rows<2>(rows, K2, A + r * lda, lda, B + j, ldb, C + r * ldc + j, ldc, accumulate, out_scale);
      } else {
        gemm_bf16_rows<1>(rows, K2, A + r * lda, lda, B + j, ldb, C + r * ldc + j, ldc, accumulate, out_scale);
      }
    }
  }
}

void pack_bf16_avx512(const float* src, int64_t lds, int64_t M, int64_t N, uint32_t* dst, int64_t ldd) {
  for (int64_t r = 0; r < M; ++r) {
    const float* s = src + r * lds;
    uint32_t* d = dst + r * ldd;
    int64_t j = 0;
    for (; j + 32 <= N; j += 32) {  // 32 floats -> 16 pairs, in order
      const __m512bh p = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(s + j + 16), _mm512_loadu_ps(s + j));
      _mm512_storeu_si512(d + j / 2, (__m512i)p);
    }
    if (j < N) {  // 16 floats -> 8 pairs
      const __m256bh p = _mm512_cvtneps_pbh(_mm512_loadu_ps(s + j));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + j / 2), (__m256i)p);
    }
  }
}

// 32 columns of the two rows at a time, interleaved by two vpermt2w.
void pair_rows_bf16_avx512(const uint16_t* src, int64_t lds, int64_t n, int64_t D, uint32_t* dst, int64_t ldd,
                           int64_t Dp) {
  alignas(64) static const uint16_t kLo[32] = {0, 32, 1, 33, 2,  34, 3,  35, 4,  36, 5,  37, 6,  38, 7,  39,
                                               8, 40, 9, 41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
  const __m512i lo_idx = _mm512_load_si512(kLo);
  const __m512i hi_idx = _mm512_add_epi16(lo_idx, _mm512_set1_epi16(16));
  for (int64_t t = 0; 2 * t < n; ++t) {
    const uint16_t* r0 = src + 2 * t * lds;
    const uint16_t* r1 = r0 + lds;
    const bool has1 = 2 * t + 1 < n;
    uint32_t* d = dst + t * ldd;
    for (int64_t x = 0; x < Dp; x += 32) {
      const int64_t left = D - x;
      const __mmask32 m = left >= 32 ? ~__mmask32{0} : (left > 0 ? (__mmask32{1} << left) - 1 : __mmask32{0});
      const __m512i a = _mm512_maskz_loadu_epi16(m, r0 + x);
      const __m512i b = has1 ? _mm512_maskz_loadu_epi16(m, r1 + x) : _mm512_setzero_si512();
      _mm512_storeu_si512(d + x, _mm512_permutex2var_epi16(a, lo_idx, b));  // columns x .. x + 15
      if (x + 16 < Dp) _mm512_storeu_si512(d + x + 16, _mm512_permutex2var_epi16(a, hi_idx, b));
    }
  }
}

// 16 x 16 blocks of pairs (16 rows x 32 bf16 columns) transposed in registers.
void transpose_pairs_bf16_avx512(const uint16_t* src, int64_t n, int64_t D, uint32_t* dst, int64_t ldd) {
  const int64_t P = D / 2;
  for (int64_t j0 = 0; j0 < ldd; j0 += 16) {
    for (int64_t p0 = 0; p0 < P; p0 += 16) {
      const int64_t np = P - p0 < 16 ? P - p0 : 16;
      const __mmask16 lanes = static_cast<__mmask16>((1u << np) - 1u);
      __m512i r[16];
      for (int64_t i = 0; i < 16; ++i) {
        r[i] = j0 + i < n ? _mm512_maskz_loadu_epi32(lanes, src + (j0 + i) * D + 2 * p0) : _mm512_setzero_si512();
      }
      simd::transpose16x16_epi32(r);  // r[q] lane i: pair p0 + q of row j0 + i
      for (int64_t q = 0; q < np; ++q) _mm512_storeu_si512(dst + (p0 + q) * ldd + j0, r[q]);
    }
  }
}

// 16 column x 16 pair blocks: each row pair converted and interleaved into 32-bit pairs, then transposed.
void pack_bf16_t_avx512(const float* src, int64_t lds, int64_t rows, int64_t cols, uint32_t* dst, int64_t ldd) {
  for (int64_t c0 = 0; c0 < cols; c0 += 16) {
    const int64_t nc = cols - c0 < 16 ? cols - c0 : 16;
    const __mmask16 lanes = static_cast<__mmask16>((1u << nc) - 1u);
    for (int64_t t0 = 0; t0 < ldd; t0 += 16) {
      __m512i r[16];
      for (int64_t k = 0; k < 16; ++k) {
        const int64_t r0 = 2 * (t0 + k);
        const __m512 a = r0 < rows ? _mm512_maskz_loadu_ps(lanes, src + r0 * lds + c0) : _mm512_setzero_ps();
        const __m512 b = r0 + 1 < rows ? _mm512_maskz_loadu_ps(lanes, src + (r0 + 1) * lds + c0) : _mm512_setzero_ps();
        const __m512i lo = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(a));
        const __m512i hi = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(b));
        r[k] = _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16));  // lane c: pair t0 + k of column c0 + c
      }
      simd::transpose16x16_epi32(r);
      for (int64_t c = 0; c < nc; ++c) _mm512_storeu_si512(dst + (c0 + c) * ldd + t0, r[c]);
    }
  }
}

// ---- the forward's per-row glue -----------------------------------------------------------------

inline __mmask16 tail_mask(int64_t left) {
  return left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1u);
}

void scale_rows_avx512(float* A, int64_t lda, int64_t M, int64_t N, const float* row_scale) {
  for (int64_t r = 0; r < M; ++r) {
    if (row_scale[r] == 1.0f) continue;
    const __m512 f = _mm512_set1_ps(row_scale[r]);
    float* a = A + r * lda;
    for (int64_t c = 0; c < N; c += 16) {
      const __mmask16 m = tail_mask(N - c);
      _mm512_mask_storeu_ps(a + c, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, a + c), f));
    }
  }
}

// dst row r = row_scale[r] * src row r (zeros where row_scale[r] == 0), 16 columns at a time through
// store(dst + c, mask, values).
template <typename Out, typename Store>
void store_scaled_rows(const float* src, int64_t lds, int64_t M, int64_t N, const float* row_scale, Out* dst,
                       int64_t ldd, Store store) {
  for (int64_t r = 0; r < M; ++r) {
    const float* s = src + r * lds;
    const bool zero = row_scale[r] == 0.0f;
    const __m512 f = _mm512_set1_ps(row_scale[r]);
    for (int64_t c = 0; c < N; c += 16) {
      const __mmask16 m = tail_mask(N - c);
      store(dst + r * ldd + c, m, zero ? _mm512_setzero_ps() : _mm512_mul_ps(_mm512_maskz_loadu_ps(m, s + c), f));
    }
  }
}

// vcvtneps2bf16 rounds to nearest even, as c10::BFloat16 does, but flushes subnormal results to zero.
void store_rows_bf16_avx512(const float* src, int64_t lds, int64_t M, int64_t N, const float* row_scale, uint16_t* dst,
                            int64_t ldd) {
  store_scaled_rows(src, lds, M, N, row_scale, dst, ldd, [](uint16_t* d, __mmask16 m, __m512 v) {
    _mm256_mask_storeu_epi16(d, m, (__m256i)_mm512_cvtneps_pbh(v));
  });
}

void store_rows_f32_avx512(const float* src, int64_t lds, int64_t M, int64_t N, const float* row_scale, float* dst,
                           int64_t ldd) {
  store_scaled_rows(src, lds, M, N, row_scale, dst, ldd,
                    [](float* d, __mmask16 m, __m512 v) { _mm512_mask_storeu_ps(d, m, v); });
}

void softmax_step_bf16_avx512(const float* S, int64_t lds, int64_t M, int64_t N, float scale, float* row_max,
                              float* row_sum, float* alpha, uint32_t* P, int64_t ldp) {
  constexpr float kLog2e = 1.44269504088896341f;
  const __m512 sc = _mm512_set1_ps(scale * kLog2e);
  for (int64_t r = 0; r < M; ++r) {
    const float* s = S + r * lds;
    uint32_t* p = P + r * ldp;
    const float m_new = next_row_max(s, N, scale, row_max[r]);
    if (m_new == kNegInf) {
      std::memset(p, 0, sizeof(uint32_t) * (N / 2));
      alpha[r] = 1.0f;
      continue;
    }
    // p = 2^(s scale log2(e) - m_new log2(e)): one FMA and the cheaper exp2 per entry.
    const __m512 mv = _mm512_set1_ps(m_new * kLog2e);
    __m512 sum = _mm512_setzero_ps();
    int64_t j = 0;
    for (; j + 32 <= N; j += 32) {
      const __m512 p0 = simd::exp2_avx512(_mm512_fmsub_ps(_mm512_loadu_ps(s + j), sc, mv));
      const __m512 p1 = simd::exp2_avx512(_mm512_fmsub_ps(_mm512_loadu_ps(s + j + 16), sc, mv));
      sum = _mm512_add_ps(sum, _mm512_add_ps(p0, p1));
      _mm512_storeu_si512(p + j / 2, (__m512i)_mm512_cvtne2ps_pbh(p1, p0));
    }
    if (j < N) {  // 16 logits -> 8 pairs
      const __m512 p0 = simd::exp2_avx512(_mm512_fmsub_ps(_mm512_loadu_ps(s + j), sc, mv));
      sum = _mm512_add_ps(sum, p0);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(p + j / 2), (__m256i)_mm512_cvtneps_pbh(p0));
    }
    close_row_step(m_new, sum, row_max[r], row_sum[r], alpha[r]);
  }
}

}  // namespace

MicroKernels microkernels_avx512() {
  MicroKernels k{};  // the members not set here stay null (only AMX releases tiles)
  k.gemm = gemm_avx512;
  k.gemm_at = gemm_at_avx512;
  k.transpose = simd::transpose_scaled_avx;
  k.softmax_step = softmax_step_avx512;
  k.exp_shift = exp_shift_avx512;
  k.gemm_bf16 = gemm_bf16_avx512;
  k.pack_bf16 = pack_bf16_avx512;
  k.pair_rows_bf16 = pair_rows_bf16_avx512;
  k.transpose_pairs_bf16 = transpose_pairs_bf16_avx512;
  k.pack_bf16_t = pack_bf16_t_avx512;
  k.scale_rows = scale_rows_avx512;
  k.store_rows_bf16 = store_rows_bf16_avx512;
  k.store_rows_f32 = store_rows_f32_avx512;
  k.softmax_step_bf16 = softmax_step_bf16_avx512;
  return k;
}

}  // namespace sparseops::attention::cpu
