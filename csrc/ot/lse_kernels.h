#pragma once
// The inner loops of the log-domain OT kernels, as plain-pointer functions: one set per ISA
// (lse_avx512.cpp, lse_avx2.cpp; the portable set lives in sinkhorn_cpu.cpp). No torch headers here,
// no inline helpers shared between ISA files (ODR: see DESIGN.md). T is float or double.
//
// All arguments are already divided by eps ("scaled" units): an entry's log-weight is
//   x_j = h_j - c_j * inv_eps            (h: a scaled potential plus a log marginal; c: a row of C)
// +inf costs give x = -inf (a forbidden pair) and contribute exp(-inf) = 0.
// The SIMD variants skip the exp of a whole vector whose terms are all below exp(-30) (float) /
// exp(-60) (double) of the reference (row maximum, column shift): far below the sum's rounding, and at
// small eps most of a row (the plan is nearly sparse), which saves most of the exps there.
#include <cstdint>

namespace sparseops::ot::cpu {

// max_j x_j (-inf when every x_j is -inf): the first build of the stabilised-scaling kernel scales each
// row by its largest term.
float row_max_avx512(const float* c, const float* h, float inv_eps, int64_t len);
double row_max_avx512(const double* c, const double* h, double inv_eps, int64_t len);
float row_max_avx2(const float* c, const float* h, float inv_eps, int64_t len);
double row_max_avx2(const double* c, const double* h, double inv_eps, int64_t len);

// min_j x[j], NaN when some x[j] is NaN, +inf when len == 0 (the input check on C: one pass finds
// both NaN and -inf costs).
float min_or_nan_avx512(const float* x, int64_t len);
double min_or_nan_avx512(const double* x, int64_t len);
float min_or_nan_avx2(const float* x, int64_t len);
double min_or_nan_avx2(const double* x, int64_t len);

// The sparse plan's row pass: x[j] = x_j with NaN (from a NaN potential) stored as -inf and +inf as the
// largest finite value; returns max_j x[j]. (Every later pass of that row reads x, so they agree on it.)
float log_values_avx512(const float* c, const float* h, float inv_eps, float* x, int64_t len);
double log_values_avx512(const double* c, const double* h, double inv_eps, double* x, int64_t len);
float log_values_avx2(const float* c, const float* h, float inv_eps, float* x, int64_t len);
double log_values_avx2(const double* c, const double* h, double inv_eps, double* x, int64_t len);

// out[j] = the bucket of the distance d = top - x[j] below top (top >= every x[j]): with
// d' = (d > 2^-8 ? d : 2^-8), min(255, (bits of float(d') >> 20) - (bits of 2^-8 >> 20)): 8 buckets per
// octave from 2^-8; -inf (d = +inf) lands in 255 with any distance past float's range. Monotone: a
// larger x never lands in a later bucket.
void distance_buckets_avx512(const float* x, float top, uint8_t* out, int64_t len);
void distance_buckets_avx512(const double* x, double top, uint8_t* out, int64_t len);
void distance_buckets_avx2(const float* x, float top, uint8_t* out, int64_t len);
void distance_buckets_avx2(const double* x, double top, uint8_t* out, int64_t len);

// #{j : bucket[j] <= b} (the sparse plan's binary search for the bucket holding its k-th entry).
int64_t count_at_most_avx512(const uint8_t* bucket, int64_t len, int b);
int64_t count_at_most_avx2(const uint8_t* bucket, int64_t len, int b);

// Writes, in increasing order, the j with bucket[j] < kb to lt and those with bucket[j] == kb to eq;
// returns how many went to eq.
int64_t split_by_bucket_avx512(const uint8_t* bucket, int64_t len, int kb, int64_t* lt, int64_t* eq);
int64_t split_by_bucket_avx2(const uint8_t* bucket, int64_t len, int kb, int64_t* lt, int64_t* eq);

// Row pass: max_j x_j, then sum_j exp(x_j - max) (the row is read twice, the second time from cache).
// Returns log(sum) + max, -inf when every x_j is -inf.
float row_lse_avx512(const float* c, const float* h, float inv_eps, int64_t len);
double row_lse_avx512(const double* c, const double* h, double inv_eps, int64_t len);
float row_lse_avx2(const float* c, const float* h, float inv_eps, int64_t len);
double row_lse_avx2(const double* c, const double* h, double inv_eps, int64_t len);

// Fused pass, one row: *mx = max_j x_j; e[j] = exp(x_j - *mx) (0 for a skipped vector); returns sum_j e[j].
// The caller turns e into the row's column contributions with axpy (see sinkhorn_cpu.cpp).
float row_exp_avx512(const float* c, const float* h, float inv_eps, float* mx, float* e, int64_t len);
double row_exp_avx512(const double* c, const double* h, double inv_eps, double* mx, double* e, int64_t len);
float row_exp_avx2(const float* c, const float* h, float inv_eps, float* mx, float* e, int64_t len);
double row_exp_avx2(const double* c, const double* h, double inv_eps, double* mx, double* e, int64_t len);
// acc[j] += alpha * e[j].
void axpy_avx512(const float* e, float alpha, float* acc, int64_t len);
void axpy_avx512(const double* e, double alpha, double* acc, int64_t len);
void axpy_avx2(const float* e, float alpha, float* acc, int64_t len);
void axpy_avx2(const double* e, double alpha, double* acc, int64_t len);

// acc[j] += sum_r coef[r] * rows[r][j], r < count (the stabilised-scaling iteration's column
// contributions of a block of rows, read from L2 after their row products: see scaling_phase).
void axpy_rows_avx512(const float* const* rows, const float* coef, int64_t count, float* acc, int64_t len);
void axpy_rows_avx512(const double* const* rows, const double* coef, int64_t count, double* acc, int64_t len);
void axpy_rows_avx2(const float* const* rows, const float* coef, int64_t count, float* acc, int64_t len);
void axpy_rows_avx2(const double* const* rows, const double* coef, int64_t count, double* acc, int64_t len);

// sum_j x[j] * y[j] (the stabilised-scaling iteration's row product).
float dot_avx512(const float* x, const float* y, int64_t len);
double dot_avx512(const double* x, const double* y, int64_t len);
float dot_avx2(const float* x, const float* y, int64_t len);
double dot_avx2(const double* x, const double* y, int64_t len);

// Column pass, one row of a column block: x_j = hi - c_j * inv_eps;
//   mx[j] = max(mx[j], x_j);  s[j] += exp(x_j - shift[j]).
// The caller checks afterwards that max - shift stayed within a safe window (else it redoes the
// block with shift = max): one read of C per half-iteration once the shifts have settled.
void col_accum_avx512(const float* c, float hi, float inv_eps, const float* shift, float* s, float* mx, int64_t len);
void col_accum_avx512(const double* c, double hi, double inv_eps, const double* shift, double* s, double* mx, int64_t len);
void col_accum_avx2(const float* c, float hi, float inv_eps, const float* shift, float* s, float* mx, int64_t len);
void col_accum_avx2(const double* c, double hi, double inv_eps, const double* shift, double* s, double* mx, int64_t len);

// out[j] = exp(hi + h[j] - c[j] * inv_eps): one row of the transport plan.
void plan_row_avx512(const float* c, float hi, const float* h, float inv_eps, float* out, int64_t len);
void plan_row_avx512(const double* c, double hi, const double* h, double inv_eps, double* out, int64_t len);
void plan_row_avx2(const float* c, float hi, const float* h, float inv_eps, float* out, int64_t len);
void plan_row_avx2(const double* c, double hi, const double* h, double inv_eps, double* out, int64_t len);

// out[t] = exp(shift + x[t]): the sparse plan's values at its selected columns (gathered into x).
void exp_shifted_avx512(const float* x, float shift, float* out, int64_t len);
void exp_shifted_avx512(const double* x, double shift, double* out, int64_t len);
void exp_shifted_avx2(const float* x, float shift, float* out, int64_t len);
void exp_shifted_avx2(const double* x, double shift, double* out, int64_t len);

// Dual pass, one row: e_j = exp(hi + h[j] - c[j] * inv_eps); returns sum_j wr[j] * e_j and, when
// colsum is not null, adds wi * e_j to colsum[j].
float dual_row_avx512(const float* c, float hi, const float* h, float inv_eps, const float* wr, float wi, float* colsum, int64_t len);
double dual_row_avx512(const double* c, double hi, const double* h, double inv_eps, const double* wr, double wi, double* colsum, int64_t len);
float dual_row_avx2(const float* c, float hi, const float* h, float inv_eps, const float* wr, float wi, float* colsum, int64_t len);
double dual_row_avx2(const double* c, double hi, const double* h, double inv_eps, const double* wr, double wi, double* colsum, int64_t len);

}  // namespace sparseops::ot::cpu
