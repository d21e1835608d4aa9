// Portable (baseline) attention micro-kernels: plain loops the compiler vectorises for the baseline ISA
// and std::exp. The reference the AVX variants are tested against (tests/test_attention_isa.py).
#include <cmath>
#include <cstring>
#include <limits>

#include "attention/attention_microkernels.h"

namespace sparseops::attention::cpu {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

void gemm_portable(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb,
                   float* C, int64_t ldc, bool accumulate) {
  for (int64_t r = 0; r < M; ++r) {
    float* __restrict__ c = C + r * ldc;
    if (!accumulate) std::memset(c, 0, sizeof(float) * N);
    const float* a = A + r * lda;
    for (int64_t k = 0; k < K; ++k) {
      const float ak = a[k];
      const float* __restrict__ b = B + k * ldb;
      for (int64_t j = 0; j < N; ++j) c[j] += ak * b[j];
    }
  }
}

void gemm_at_portable(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb,
                      float* C, int64_t ldc, bool accumulate) {
  for (int64_t r = 0; r < M; ++r) {
    float* __restrict__ c = C + r * ldc;
    if (!accumulate) std::memset(c, 0, sizeof(float) * N);
    for (int64_t k = 0; k < K; ++k) {
      const float ak = A[k * lda + r];
      const float* __restrict__ b = B + k * ldb;
      for (int64_t j = 0; j < N; ++j) c[j] += ak * b[j];
    }
  }
}

// In 8 x 8 blocks, so that reads and writes each stay within a few cache lines at a time.
void transpose_portable(const float* src, int64_t lds, int64_t rows, int64_t cols, float scale, float* dst,
                        int64_t ldd) {
  for (int64_t c0 = 0; c0 < cols; c0 += 8)
    for (int64_t r0 = 0; r0 < rows; r0 += 8)
      for (int64_t c = c0; c < c0 + 8 && c < cols; ++c)
        for (int64_t r = r0; r < r0 + 8 && r < rows; ++r) dst[c * ldd + r] = scale * src[r * lds + c];
  if (rows < ldd)
    for (int64_t c = 0; c < cols; ++c) std::memset(dst + c * ldd + rows, 0, sizeof(float) * (ldd - rows));
}

void softmax_step_portable(float* S, int64_t lds, int64_t M, int64_t N, float scale, float* row_max, float* row_sum,
                           float* alpha) {
  for (int64_t r = 0; r < M; ++r) {
    float* s = S + r * lds;
    float mx = kNegInf;
    for (int64_t j = 0; j < N; ++j) mx = (s[j] > mx || std::isnan(s[j])) ? s[j] : mx;  // NaN sticks
    // scale > 0: the largest scaled logit is scale times the largest logit (rounding is monotone).
    const float m_blk = mx * scale, m_old = row_max[r];
    const float m_new = std::isnan(m_old) || std::isnan(m_blk) ? std::numeric_limits<float>::quiet_NaN()
                                                               : (m_blk > m_old ? m_blk : m_old);
    if (m_new == kNegInf) {
      std::memset(s, 0, sizeof(float) * N);
      alpha[r] = 1.0f;
      continue;
    }
    float sum = 0.0f;
    for (int64_t j = 0; j < N; ++j) {
      s[j] = std::exp(s[j] * scale - m_new);
      sum += s[j];
    }
    alpha[r] = std::exp(m_old - m_new);
    row_sum[r] = row_sum[r] * alpha[r] + sum;
    row_max[r] = m_new;
  }
}

void exp_shift_portable(float* S, int64_t lds, int64_t M, int64_t N, const float* row_shift, const float* col_shift) {
  for (int64_t r = 0; r < M; ++r) {
    float* s = S + r * lds;
    const float rs = row_shift ? row_shift[r] : 0.0f;
    for (int64_t j = 0; j < N; ++j) {
      const float t = rs + (col_shift ? col_shift[j] : 0.0f);
      s[j] = t == kNegInf ? 0.0f : std::exp(s[j] - t);
    }
  }
}

}  // namespace

MicroKernels microkernels_portable() {
  MicroKernels k{};  // the bf16 products and the fused glue stay null: fp32 products and the glue's own loops
  k.gemm = gemm_portable;
  k.gemm_at = gemm_at_portable;
  k.transpose = transpose_portable;
  k.softmax_step = softmax_step_portable;
  k.exp_shift = exp_shift_portable;
  return k;
}

}  // namespace sparseops::attention::cpu
