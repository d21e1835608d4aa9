#pragma once
// The inner loops of the CPU ot kernels behind one table, filled once per call for the ISA that
// sparseops::cpu_isa() picks (AVX-512, AVX2 or portable; see lse_kernels.h for what each loop does).
#include <algorithm>
#include <cstdint>

namespace sparseops::ot {

template <typename T>
struct LseKernels {
  T (*row_lse)(const T* c, const T* h, T inv_eps, int64_t len);
  T (*row_max)(const T* c, const T* h, T inv_eps, int64_t len);
  void (*col_accum)(const T* c, T hi, T inv_eps, const T* shift, T* s, T* mx, int64_t len);
  void (*plan_row)(const T* c, T hi, const T* h, T inv_eps, T* out, int64_t len);
  T (*dual_row)(const T* c, T hi, const T* h, T inv_eps, const T* wr, T wi, T* colsum, int64_t len);
  T (*row_exp)(const T* c, const T* h, T inv_eps, T* mx, T* e, int64_t len);
  void (*axpy)(const T* e, T alpha, T* acc, int64_t len);
  void (*axpy_rows)(const T* const* rows, const T* coef, int64_t count, T* acc, int64_t len);
  T (*dot)(const T* x, const T* y, int64_t len);
  T (*min_or_nan)(const T* x, int64_t len);
  T (*log_values)(const T* c, const T* h, T inv_eps, T* x, int64_t len);
  void (*distance_buckets)(const T* x, T top, uint8_t* out, int64_t len);
  // Not typed by T (bytes), but kept with the loops of the pass that uses them.
  int64_t (*count_at_most)(const uint8_t* bucket, int64_t len, int b);
  int64_t (*split_by_bucket)(const uint8_t* bucket, int64_t len, int kb, int64_t* lt, int64_t* eq);
  void (*exp_shifted)(const T* x, T shift, T* out, int64_t len);
  // Relative size of the largest term a row_exp may drop (a skipped vector, or an exp that underflows):
  // exp(-30) float / exp(-60) double for the SIMD variants, 0 (only underflow) for the portable one.
  T dropped;
};

// Row grain of a pass over an n x m problem: passes under 2^18 entries run on one thread (~100 us or less
// of work: an OpenMP fork/join costs more than it saves whenever another process holds a core, and up to
// milliseconds then); larger ones split rows so that each chunk has ~`entries` entries.
inline int64_t ot_row_grain(int64_t n, int64_t m, int64_t entries = 16384) {
  if (n * m < (int64_t(1) << 18)) return n;
  return std::max<int64_t>(1, entries / std::max<int64_t>(1, m));
}

// Defined in sinkhorn_cpu.cpp for float and double.
template <typename T>
LseKernels<T> lse_kernels();

}  // namespace sparseops::ot
