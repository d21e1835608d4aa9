#pragma once
// fp32 micro-kernels of the CPU block-sparse attention (attention_cpu.cpp drives them): a small GEMM
// (and its A-transposed twin) for QK^T / PV and their backward products, the online-softmax step and the exp of the backward.
// One set per ISA: microkernels_portable_cpu.cpp (no -m flags), microkernels_avx2.cpp (-mavx2 -mfma),
// microkernels_avx512.cpp (-mavx512*), microkernels_amx.cpp (its bf16 product on AMX tiles), chosen at run
// time by attention_cpu.cpp.
//
// Deliberately free of torch headers and of shared inline functions: the AVX files must not compile a
// copy of an inline function the linker could then hand to baseline code (ODR; see
// csrc/sparse24/linear24_cpu.h).
//
// All matrices are fp32, row-major with the given leading dimension (in elements).
#include <cstdint>

namespace sparseops::attention::cpu {

// Column counts handed to gemm/softmax_step are multiples of this (callers pad their buffers).
constexpr int64_t kColAlign = 16;
constexpr int64_t round_up_cols(int64_t n) { return (n + kColAlign - 1) / kColAlign * kColAlign; }

struct MicroKernels {
  // C[M x N] = A[M x K] * B[K x N] (accumulate: C += ...). N % kColAlign == 0; ldb, ldc >= N; K >= 0.
  void (*gemm)(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
               int64_t ldc, bool accumulate);
  // The same with A stored transposed: C[M x N] = A^T B where A is [K x M] (lda >= M), i.e. A(r, k) =
  // A[k * lda + r]. The backward's P^T dO and dS^T Q read P and dS as they were computed, untransposed.
  void (*gemm_at)(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
                  int64_t ldc, bool accumulate);
  // dst[c * ldd + r] = scale * src[r * lds + c] for r < rows, c < cols, and 0 for rows <= r < ldd: the
  // [cols x ldd] panel of K^T / V^T (gemm's B operand for q K^T and dO V^T).
  void (*transpose)(const float* src, int64_t lds, int64_t rows, int64_t cols, float scale, float* dst, int64_t ldd);
  // One online-softmax step over the logits scale * S[M x N] (scale > 0, so that masked -inf entries stay
  // -inf; N % kColAlign == 0; masked or padded entries are -inf). Per row r: m' = max(row_max[r],
  // max_j scale S[r][j]); S[r][j] <- exp(scale S[r][j] - m'); alpha[r] = exp(row_max[r] - m');
  // row_sum[r] = row_sum[r] * alpha[r] + sum_j S[r][j]; row_max[r] = m'. A row whose m' is -inf (nothing
  // seen yet) gets P = 0, alpha = 1. A NaN logit makes its row NaN.
  void (*softmax_step)(float* S, int64_t lds, int64_t M, int64_t N, float scale, float* row_max, float* row_sum,
                       float* alpha);
  // S[r][j] <- exp(S[r][j] - row_shift[r] - col_shift[j]) over M x N (N % kColAlign == 0); a null shift
  // is 0; an entry whose total shift is -inf (a row that attended to nothing) becomes 0.
  void (*exp_shift)(float* S, int64_t lds, int64_t M, int64_t N, const float* row_shift, const float* col_shift);

  // bf16 products (AVX-512 BF16 only; null elsewhere). A "pair" is a uint32 holding two bf16, the
  // lower-indexed one in the low half; K2 counts pairs along the reduction dim.
  // C[M x N] = out_scale * (A[M x K2 pairs] * B[K2 pairs x N]) (accumulate: C += A * B, out_scale unused);
  // products exact in fp32, sums fp32. N % kColAlign == 0.
  // On AMX it leaves the thread's tiles configured (loading a configuration per call cost 5-20% of a
  // q K^T or P V product): a thread that ran it calls release_tiles once it is done with them.
  void (*gemm_bf16)(int64_t M, int64_t N, int64_t K2, const uint32_t* A, int64_t lda, const uint32_t* B, int64_t ldb,
                    float* C, int64_t ldc, bool accumulate, float out_scale);
  // dst[r][t] = (bf16(src[r][2t]), bf16(src[r][2t+1])) rounded to nearest even, t < N / 2 (N % kColAlign == 0).
  void (*pack_bf16)(const float* src, int64_t lds, int64_t M, int64_t N, uint32_t* dst, int64_t ldd);
  // Pairs of rows of a bf16 matrix (row stride lds, D columns): dst[t][d] = (src[2t][d], src[2t+1][d]) for
  // t < ceil(n / 2), a missing row n and the columns D..Dp zero (Dp % kColAlign == 0, ldd >= Dp).
  void (*pair_rows_bf16)(const uint16_t* src, int64_t lds, int64_t n, int64_t D, uint32_t* dst, int64_t ldd,
                         int64_t Dp);
  // A bf16 block of n rows (D columns, contiguous, D even) as pairs along D, transposed: dst[p][j] =
  // (src[j][2p], src[j][2p+1]) for j < n, p < D / 2, zero for n <= j < ldd (ldd % kColAlign == 0): the
  // second-source panel of q K^T and dO V^T.
  void (*transpose_pairs_bf16)(const uint16_t* src, int64_t n, int64_t D, uint32_t* dst, int64_t ldd);
  // An fp32 tile transposed into row pairs: dst[c][t] = (bf16(src[2t][c]), bf16(src[2t+1][c])) rounded to
  // nearest even, for c < cols and t < ldd (a missing row 2t + 1, or any row past `rows`, reads as 0);
  // ldd % kColAlign == 0. P^T and dS^T as the first source of P^T dO and dS^T Q.
  void (*pack_bf16_t)(const float* src, int64_t lds, int64_t rows, int64_t cols, uint32_t* dst, int64_t ldd);

  // The forward's per-row glue (AVX-512 only; null elsewhere, where attention_cpu.cpp runs its own loops).
  // A[r][c] *= row_scale[r] for r < M, c < N; rows whose scale is exactly 1 are left alone. The online
  // softmax's accumulator rescale.
  void (*scale_rows)(float* A, int64_t lda, int64_t M, int64_t N, const float* row_scale);
  // dst[r][c] = bf16(src[r][c] * row_scale[r]) rounded to nearest even, +0 where row_scale[r] == 0 (a row
  // that attended to nothing), for r < M, c < N: the bf16 output rows.
  void (*store_rows_bf16)(const float* src, int64_t lds, int64_t M, int64_t N, const float* row_scale,
                          uint16_t* dst, int64_t ldd);
  // The same for fp32 output rows.
  void (*store_rows_f32)(const float* src, int64_t lds, int64_t M, int64_t N, const float* row_scale, float* dst,
                         int64_t ldd);
  // softmax_step over the logits scale * S (scale > 0, so that masked -inf entries stay -inf), writing P
  // as bf16 pairs P[r][t] = (bf16(p[r][2t]), bf16(p[r][2t+1])), t < N / 2, instead of over S; row_sum adds
  // the fp32 p. The bf16 forward's A operand of P V, without a separate packing pass.
  void (*softmax_step_bf16)(const float* S, int64_t lds, int64_t M, int64_t N, float scale, float* row_max,
                            float* row_sum, float* alpha, uint32_t* P, int64_t ldp);
  // Returns this thread's AMX tiles to their initial state (AMX only; null elsewhere).
  void (*release_tiles)();
};

MicroKernels microkernels_portable();
MicroKernels microkernels_avx2();
MicroKernels microkernels_avx512();
MicroKernels microkernels_amx();  // the AVX-512 set with gemm_bf16 on AMX tiles (microkernels_amx.cpp)

}  // namespace sparseops::attention::cpu
