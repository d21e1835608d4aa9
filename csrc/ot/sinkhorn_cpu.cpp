// sinkhorn_log, ot_plan, ot_dual, sinkhorn_points, ot_points_grad on CPU (log-domain entropic OT;
// conventions in ot/ot_math.h).
//
// Why the whole iteration loop is one op (not one op per half-iteration): at n = 300 a half-iteration
// is ~20-40 us of arithmetic, about what a Python-level dispatch of an op costs; a loop in C++ keeps the
// overhead out of the per-iteration time (the benchmark target is POT's plain numpy Sinkhorn, which
// is one BLAS GEMV per half-iteration) and lets every batch entry stop at its own convergence.
//
// Passes (each reads C once; no exp(-C/eps) or C/eps copy is ever built):
//   row pass (f-update): per row, max_j x_ij then sum_j exp(x_ij - max), x_ij = log b_j + g_j/eps - C_ij/eps;
//       the second sweep reads the row from cache (vectors whose terms are all negligible skip the exp).
//   column pass (g-update): C is walked in blocks of columns, each block row by row (contiguous
//       segments, never a strided column walk), keeping per-column running sums of exp(x_ij - shift_j)
//       and maxima. shift_j is the column's log-sum-exp from the previous iteration; if the maximum ended
//       outside [shift - W, shift + W] (W = 30 float, 200 double: no overflow, no loss of the leading
//       terms) the block is redone with shift = max. Once the potentials settle (after a few iterations)
//       every block is read exactly once. Blocks are split across threads.
//   fused (balanced, dense C, every b_j > 0): the row pass also produces the column sums from its
//       buffered row terms (see solve_one), so an iteration reads C once with one exp per entry; the
//       column pass above is the fallback for iterations where that is not accurate.
//   stabilised scaling (balanced, dense C of at most 64 MiB): after the first iteration the potentials
//       are absorbed into an n x m kernel and the iteration is plain scaling on it (see scaling_phase):
//       one read of that kernel per iteration and no exp, as POT's plain Sinkhorn but stable.
//   The marginal error at a check costs nothing extra: the row pass at the start of the next
//   iteration yields the row marginals of the current (f, g); if converged, (f, g) is returned as is,
//   so the column marginals are exact and the error is the row error.
// Batches: with at least as many batch entries as threads, one thread solves whole entries (no sync
// per half-iteration; nested at::parallel_for runs inline); otherwise entries run one after the other
// with the passes parallel when a pass has at least 2^18 entries (smaller passes run on one thread:
// see ot_row_grain). Point clouds run the same solver with costs computed per tile (PointCosts).
// Extra memory per batch entry being solved: ~4 (n + m) scalars (logs of the marginals, scaled
// potentials, LSE buffers, column shifts/sums/maxima) plus the outputs; with stabilised scaling, n m
// scalars more (the absorbed kernel) and threads x m column partial sums.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "common/cpu_features.h"
#include "common/huge_page_buffer.h"
#include "ot/lse_kernels.h"
#include "ot/ot_checks.h"
#include "ot/ot_math.h"
#include "ot/ot_cpu_kernels.h"

namespace sparseops::ot {
namespace {

// ---- portable inner loops (the reference for the ISA variants) --------------------------------------
template <typename T>
T row_max_portable(const T* c, const T* h, T inv_eps, int64_t len) {
  T mx = -std::numeric_limits<T>::infinity();
  for (int64_t j = 0; j < len; ++j) mx = std::max(mx, h[j] - c[j] * inv_eps);
  return mx;
}

// The minimum, NaN if there is one (lse_kernels.h: min_or_nan). Four independent chains and no early
// exit (one chain with a NaN branch per element took a 20-iteration n = m = 300 fp64 solve from 0.57 to
// 0.92 ms on a Zen 4).
template <typename T>
T min_or_nan_portable(const T* x, int64_t len) {
  T mn[4] = {INFINITY, INFINITY, INFINITY, INFINITY};
  bool nan = false;
  int64_t i = 0;
  for (; i + 4 <= len; i += 4) {
    for (int q = 0; q < 4; ++q) {
      const T v = x[i + q];
      nan |= v != v;
      mn[q] = v < mn[q] ? v : mn[q];
    }
  }
  for (; i < len; ++i) {
    nan |= x[i] != x[i];
    mn[0] = x[i] < mn[0] ? x[i] : mn[0];
  }
  return nan ? T(NAN) : std::min(std::min(mn[0], mn[1]), std::min(mn[2], mn[3]));
}

// Sanitised log-values and their maximum (lse_kernels.h: log_values).
template <typename T>
T log_values_portable(const T* c, const T* h, T inv_eps, T* x, int64_t len) {
  T mx = -std::numeric_limits<T>::infinity();
  for (int64_t j = 0; j < len; ++j) {
    const T v = h[j] - c[j] * inv_eps;
    x[j] = v == v ? std::min(v, std::numeric_limits<T>::max()) : -std::numeric_limits<T>::infinity();
    mx = std::max(mx, x[j]);
  }
  return mx;
}

// Distance buckets below top (lse_kernels.h: distance_buckets).
template <typename T>
void distance_buckets_portable(const T* x, T top, uint8_t* out, int64_t len) {
  constexpr uint32_t kBase = uint32_t(127 - 8) << 3;  // the exponent-and-3-bit key of 2^-8
  for (int64_t j = 0; j < len; ++j) {
    const T d = top - x[j];
    // Clamped: converting a double past float's range is undefined (the vector conversion gives +inf; both
    // land in bucket 255).
    const float df = static_cast<float>(std::min(d > T(1.0 / 256) ? d : T(1.0 / 256), T(1e30)));
    uint32_t bits;
    std::memcpy(&bits, &df, sizeof bits);
    out[j] = static_cast<uint8_t>(std::min<uint32_t>((bits >> 20) - kBase, 255));
  }
}

// The bytes <= b (lse_kernels.h: count_at_most).
int64_t count_at_most_portable(const uint8_t* bucket, int64_t len, int b) {
  int64_t n = 0;
  for (int64_t j = 0; j < len; ++j) n += bucket[j] <= b;
  return n;
}

// The entries below and at bucket kb (lse_kernels.h: split_by_bucket).
int64_t split_by_bucket_portable(const uint8_t* bucket, int64_t len, int kb, int64_t* lt, int64_t* eq) {
  int64_t nl = 0, ne = 0;
  for (int64_t j = 0; j < len; ++j) {
    if (bucket[j] < kb) {
      lt[nl++] = j;
    } else if (bucket[j] == kb) {
      eq[ne++] = j;
    }
  }
  return ne;
}

template <typename T>
T row_lse_portable(const T* c, const T* h, T inv_eps, int64_t len) {
  const T mx = row_max_portable(c, h, inv_eps, len);
  if (mx == -std::numeric_limits<T>::infinity()) return mx;
  T s = 0;
  for (int64_t j = 0; j < len; ++j) s += std::exp(h[j] - c[j] * inv_eps - mx);
  return mx + std::log(s);
}

template <typename T>
T row_exp_portable(const T* c, const T* h, T inv_eps, T* mx_out, T* e, int64_t len) {
  const T mx = row_max_portable(c, h, inv_eps, len);
  *mx_out = mx;
  const T m0 = mx == -std::numeric_limits<T>::infinity() ? T(0) : mx;
  T s = 0;
  for (int64_t j = 0; j < len; ++j) {
    e[j] = std::exp(h[j] - c[j] * inv_eps - m0);
    s += e[j];
  }
  return s;
}

template <typename T>
void axpy_portable(const T* e, T alpha, T* acc, int64_t len) {
  for (int64_t j = 0; j < len; ++j) acc[j] += alpha * e[j];
}

template <typename T>
void axpy_rows_portable(const T* const* rows, const T* coef, int64_t count, T* acc, int64_t len) {
  for (int64_t r = 0; r < count; ++r) axpy_portable(rows[r], coef[r], acc, len);
}

template <typename T>
T dot_portable(const T* x, const T* y, int64_t len) {
  T sum = 0;
  for (int64_t j = 0; j < len; ++j) sum += x[j] * y[j];
  return sum;
}

template <typename T>
void col_accum_portable(const T* c, T hi, T inv_eps, const T* shift, T* s, T* mx, int64_t len) {
  for (int64_t j = 0; j < len; ++j) {
    const T x = hi - c[j] * inv_eps;
    mx[j] = std::max(mx[j], x);
    const T d = x - shift[j];
    s[j] += d == d ? std::exp(d) : T(0);  // (-inf) - (-inf): an empty column contributes 0
  }
}

template <typename T>
void plan_row_portable(const T* c, T hi, const T* h, T inv_eps, T* out, int64_t len) {
  for (int64_t j = 0; j < len; ++j) out[j] = std::exp(hi + (h[j] - c[j] * inv_eps));
}

template <typename T>
void exp_shifted_portable(const T* x, T shift, T* out, int64_t len) {
  for (int64_t j = 0; j < len; ++j) out[j] = std::exp(shift + x[j]);
}

template <typename T>
T dual_row_portable(const T* c, T hi, const T* h, T inv_eps, const T* wr, T wi, T* colsum, int64_t len) {
  T sum = 0;
  for (int64_t j = 0; j < len; ++j) {
    const T e = std::exp(hi + (h[j] - c[j] * inv_eps));
    sum += wr[j] * e;
    if (colsum != nullptr) colsum[j] += wi * e;
  }
  return sum;
}

}  // namespace

template <typename T>
LseKernels<T> lse_kernels() {
  LseKernels<T> k{&row_lse_portable<T>,  &row_max_portable<T>, &col_accum_portable<T>,
                  &plan_row_portable<T>, &dual_row_portable<T>, &row_exp_portable<T>,
                  &axpy_portable<T>,     &axpy_rows_portable<T>, &dot_portable<T>, &min_or_nan_portable<T>,
                  &log_values_portable<T>,
                  &distance_buckets_portable<T>, &count_at_most_portable, &split_by_bucket_portable,
                  &exp_shifted_portable<T>, T(0)};
#if SPARSEOPS_X86_KERNELS
  using RowFn = T (*)(const T*, const T*, T, int64_t);
  using ColFn = void (*)(const T*, T, T, const T*, T*, T*, int64_t);
  using PlanFn = void (*)(const T*, T, const T*, T, T*, int64_t);
  using DualFn = T (*)(const T*, T, const T*, T, const T*, T, T*, int64_t);
  using ExpFn = T (*)(const T*, const T*, T, T*, T*, int64_t);
  using AxpyFn = void (*)(const T*, T, T*, int64_t);
  using AxpyRowsFn = void (*)(const T* const*, const T*, int64_t, T*, int64_t);
  using DotFn = T (*)(const T*, const T*, int64_t);
  using MinFn = T (*)(const T*, int64_t);
  using ValuesFn = T (*)(const T*, const T*, T, T*, int64_t);
  using BucketsFn = void (*)(const T*, T, uint8_t*, int64_t);
  using ExpShiftedFn = void (*)(const T*, T, T*, int64_t);
  const T dropped = std::is_same_v<T, float> ? T(9.4e-14) : T(8.8e-27);  // exp(-30), exp(-60): the skip rule
  if (cpu_use_avx512()) {
    k = {static_cast<RowFn>(&cpu::row_lse_avx512), static_cast<RowFn>(&cpu::row_max_avx512),
         static_cast<ColFn>(&cpu::col_accum_avx512), static_cast<PlanFn>(&cpu::plan_row_avx512),
         static_cast<DualFn>(&cpu::dual_row_avx512), static_cast<ExpFn>(&cpu::row_exp_avx512),
         static_cast<AxpyFn>(&cpu::axpy_avx512), static_cast<AxpyRowsFn>(&cpu::axpy_rows_avx512),
         static_cast<DotFn>(&cpu::dot_avx512), static_cast<MinFn>(&cpu::min_or_nan_avx512),
         static_cast<ValuesFn>(&cpu::log_values_avx512),
         static_cast<BucketsFn>(&cpu::distance_buckets_avx512), &cpu::count_at_most_avx512,
         &cpu::split_by_bucket_avx512, static_cast<ExpShiftedFn>(&cpu::exp_shifted_avx512), dropped};
  } else if (cpu_use_avx2()) {
    k = {static_cast<RowFn>(&cpu::row_lse_avx2), static_cast<RowFn>(&cpu::row_max_avx2),
         static_cast<ColFn>(&cpu::col_accum_avx2), static_cast<PlanFn>(&cpu::plan_row_avx2),
         static_cast<DualFn>(&cpu::dual_row_avx2), static_cast<ExpFn>(&cpu::row_exp_avx2),
         static_cast<AxpyFn>(&cpu::axpy_avx2), static_cast<AxpyRowsFn>(&cpu::axpy_rows_avx2),
         static_cast<DotFn>(&cpu::dot_avx2), static_cast<MinFn>(&cpu::min_or_nan_avx2),
         static_cast<ValuesFn>(&cpu::log_values_avx2),
         static_cast<BucketsFn>(&cpu::distance_buckets_avx2), &cpu::count_at_most_avx2,
         &cpu::split_by_bucket_avx2, static_cast<ExpShiftedFn>(&cpu::exp_shifted_avx2), dropped};
  }
#endif
  return k;
}
template LseKernels<float> lse_kernels<float>();
template LseKernels<double> lse_kernels<double>();

namespace {

constexpr int64_t kColBlockMax = 512;

template <typename T>
struct SinkhornOut {
  T* f;
  T* g;
  T* cost;
  int64_t* n_iter;
  T* history;  // [history_len], -1-filled by the caller
};

// Where a pass reads its costs from. MatrixCosts: C [n, m] itself (a tile is a view). PointCosts: the
// costs of point clouds x [n, d], y [m, d], computed tile by tile into a per-thread buffer of kPointTile
// scalars (y transposed once per solve, so the inner loops run over contiguous columns): memory O(n + m).
constexpr int64_t kPointTile = 512;

template <typename T>
struct MatrixCosts {
  const T* C;
  int64_t m;
  static constexpr bool kComputed = false;
  const T* tile(int64_t i, int64_t j0, int64_t, T*) const { return C + i * m + j0; }
};

template <typename T>
struct PointCosts {
  const T* x;   // [n, d]
  const T* yT;  // [d, m]
  int64_t m, d;
  int p;        // 1: L1, 2: squared Euclidean
  static constexpr bool kComputed = true;
  const T* tile(int64_t i, int64_t j0, int64_t len, T* buf) const {
    std::fill(buf, buf + len, T(0));
    for (int64_t k = 0; k < d; ++k) {
      const T xv = x[i * d + k];
      const T* yk = yT + k * m + j0;
      if (p == 2) {
        for (int64_t j = 0; j < len; ++j) {
          const T t = xv - yk[j];
          buf[j] += t * t;
        }
      } else {
        for (int64_t j = 0; j < len; ++j) buf[j] += std::fabs(xv - yk[j]);
      }
    }
    return buf;
  }
};

// The g-update of the zero-mass columns only (v_j = -LSE_i(hf_i - C_ij/eps), as the column pass would
// give): once per solve after fused iterations, so a strided scalar walk over those columns.
template <typename T>
void fill_zero_mass_columns(const T* C, const T* hf, int64_t n, int64_t m, T inv_eps, const std::vector<int64_t>& cols,
                            T* v, T* lc) {
  const T ninf = -std::numeric_limits<T>::infinity();
  for (const int64_t j : cols) {
    T mx = ninf;
    for (int64_t i = 0; i < n; ++i) {
      if (hf[i] != ninf) mx = std::max(mx, hf[i] - C[i * m + j] * inv_eps);
    }
    T sum = 0;
    if (mx != ninf) {
      for (int64_t i = 0; i < n; ++i) {
        if (hf[i] != ninf) sum += std::exp(hf[i] - C[i * m + j] * inv_eps - mx);
      }
    }
    lc[j] = mx == ninf ? ninf : mx + std::log(sum);
    v[j] = -lc[j];
  }
}

// ---- stabilised scaling (Schmitzer, "Stabilized sparse scaling algorithms for entropy regularized
// transport problems", SIAM J. Sci. Comput. 2019) ----------------------------------------------------
// With the current scaled potentials (u0, v0) absorbed into the kernel
//   Kt_ij = exp(u0_i + v0_j - C_ij/eps)            (built once: n m exps, n m scalars of memory)
// the log-domain updates become plain scaling, P_ij = a_i b_j s_i Kt_ij t_j:
//   s_i = 1 / sum_j Kt_ij b_j t_j,   t_j = 1 / sum_i Kt_ij a_i s_i
// (u = u0 + log s, v = v0 + log t: the same iterates up to rounding). One read of Kt per iteration and
// no exp: POT's plain Sinkhorn's work, stable at any eps. Rows go in blocks of ~kScalingBlockBytes: their
// row products (streaming from memory), then their column contributions with the column sums held in
// registers (axpy_rows, the block from L2). Row by row (the row's contributions right after its
// product), the row + column sums + column scalings (3 m scalars) outgrew L1 and every entry cost a load
// and a store of a column sum: fp64, one Zen 4 core, per iteration n = m = 300 32 -> 20 us, n = m = 2000
// 3.1 -> 2.4-2.7 ms (the row products alone, streaming Kt from DRAM: ~1.8 ms).
// When s or t leave [1/B, B] they are absorbed again (u0 += log s, v0 += log t, Kt rebuilt), so what
// Kt loses to underflow (terms below ~e^-700 / e^-87) stays below rounding relative to the sums. A row
// or column sum that is 0 or not finite (early iterations at small eps, potentials still far off) hands
// back to the log-domain loop with the last consistent potentials.
// The phase can start the solve (seed_rows): the first build takes u0_i = -max_j (v0_j - C_ij/eps), so
// each row's largest entry is 1, and its first iteration is the log-domain one (s_i = 1 / d_i is the row
// log-sum-exp) without a log-domain iteration first (its row pass's exps and fused column sums): fp64,
// one Zen 4 core, the fixed cost of a solve (3 iterations minus 3 x the per-iteration time) went from
// 4.3-5.3 to 2.6-2.9 ms at n = m = 1000 and from 18-19 to 12-14 ms at n = m = 2000.
enum class ScalingExit { kDone, kBack };

template <typename T>
struct ScalingArgs {
  const LseKernels<T>& K;
  const T* a;
  const T* bw;  // b, rescaled to a's mass
  const T* C;
  int64_t n, m;
  T inv_eps;
  int64_t max_iter, check_every;
  double tol;
  bool parallel;
  int64_t threads, row_grain;
  bool seed_rows;  // u is not yet consistent with v: build Kt with u0_i = -max_j (v0_j - C_ij/eps)
};

constexpr int64_t kScalingBlockBytes = 256 << 10;  // half the smallest L2 met here (Zen 3: 512 KiB)
constexpr int64_t kScalingMaxBlock = 64;             // rows; more gained nothing at n = m = 300

// kt: n m scalars, written before read.
template <typename T>
ScalingExit scaling_phase(const ScalingArgs<T>& A, T* u, T* v, int64_t& it, T* history, int64_t& checks, T* kt) {
  const int64_t n = A.n, m = A.m;
  const int64_t block = std::clamp<int64_t>(kScalingBlockBytes / (m * int64_t(sizeof(T))), 1, kScalingMaxBlock);
  const T bound = std::is_same_v<T, float> ? T(3.3e6) : T(2.7e43);  // e^15, e^100
  std::vector<T> s(n, T(1)), t(m, T(1)), s_new(n), d(n), w(m), part(A.threads * m);
  const auto absorb = [&] {
    for (int64_t i = 0; i < n; ++i) u[i] += std::log(s[i]), s[i] = T(1);
    for (int64_t j = 0; j < m; ++j) v[j] += std::log(t[j]), t[j] = T(1);
  };
  const auto rebuild = [&](bool seed_rows) {
    absorb();
    at::parallel_for(0, n, A.row_grain, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const T* c = A.C + i * m;
        if (seed_rows) {  // the row from cache for plan_row
          const T mx = A.K.row_max(c, v, A.inv_eps, m);
          u[i] = mx == -std::numeric_limits<T>::infinity() ? T(0) : -mx;  // all forbidden: d_i = 0 hands back
        }
        A.K.plan_row(c, u[i], v, A.inv_eps, kt + i * m, m);
      }
    });
  };
  rebuild(A.seed_rows);
  for (;;) {
    for (int64_t j = 0; j < m; ++j) w[j] = A.bw[j] * t[j];
    std::fill(part.begin(), part.end(), T(0));
    at::parallel_for(0, n, A.row_grain, [&](int64_t i0, int64_t i1) {
      T* acc = part.data() + (A.parallel ? at::get_thread_num() : 0) * m;
      const T* rows[kScalingMaxBlock];
      T coef[kScalingMaxBlock];
      for (int64_t b0 = i0; b0 < i1; b0 += block) {
        int64_t count = 0;
        for (int64_t i = b0; i < std::min(i1, b0 + block); ++i) {
          const T* row = kt + i * m;
          d[i] = A.K.dot(row, w.data(), m);
          s_new[i] = T(1) / d[i];
          if (A.a[i] > 0 && d[i] > 0) rows[count] = row, coef[count++] = A.a[i] * s_new[i];
        }
        A.K.axpy_rows(rows, coef, count, acc, m);
      }
    });
    const bool last = it == A.max_iter;
    if (it > 0 && (it % A.check_every == 0 || last)) {
      double err = 0;  // sum_i |(P1)_i - a_i|, (P1)_i = a_i s_i d_i
      for (int64_t i = 0; i < n; ++i) {
        if (A.a[i] > 0) err += A.a[i] * std::fabs(static_cast<double>(s[i]) * d[i] - 1.0);
      }
      history[checks++] = static_cast<T>(err);
      if (err <= A.tol) break;
    }
    if (last) break;
    bool ok = true;
    for (int64_t i = 0; i < n && ok; ++i) ok = d[i] > 0 && std::isfinite(d[i]);
    for (int64_t j = 0; j < m && ok; ++j) {
      T col = part[j];
      for (int64_t q = 1; q < A.threads; ++q) col += part[q * m + j];
      ok = col > 0 && std::isfinite(col);
      w[j] = col;
    }
    if (!ok) {
      absorb();
      return ScalingExit::kBack;
    }
    bool out_of_range = false;
    for (int64_t i = 0; i < n; ++i) {
      s[i] = s_new[i];
      out_of_range |= !(s[i] < bound && s[i] * bound > T(1));
    }
    for (int64_t j = 0; j < m; ++j) {
      t[j] = T(1) / w[j];
      out_of_range |= !(t[j] < bound && t[j] * bound > T(1));
    }
    ++it;
    if (out_of_range) rebuild(false);
  }
  absorb();
  return ScalingExit::kDone;
}

// Whether the balanced dense solver may run the stabilised-scaling phase: Kt takes n m scalars per batch
// entry being solved (up to 64 MiB each); SPARSEOPS_OT_SCALING=0 keeps the log-domain iteration (tests
// run both).
inline bool scaling_enabled(int64_t n, int64_t m, int64_t elem_size) {
  static const bool env_off = [] {
    const char* e = std::getenv("SPARSEOPS_OT_SCALING");
    return e != nullptr && std::string(e) == "0";
  }();
  return !env_off && n * m * elem_size <= (int64_t(64) << 20);
}

// One batch entry, start to finish. a [n], b [m]; costs from `costs` (see above).
template <typename T, typename Costs>
void solve_one(const LseKernels<T>& K, const T* a, const T* b, const Costs& costs, int64_t n, int64_t m, T eps, double rho,
               double b_factor, const T* g_init, int64_t max_iter, double tol, int64_t check_every,
               const SinkhornOut<T>& out) {
  const T inv_eps = T(1) / eps;
  const T tau = static_cast<T>(ot_tau(eps, rho));
  const T ninf = -std::numeric_limits<T>::infinity();
  const T window = std::is_same_v<T, float> ? T(30) : T(200);
  std::vector<T> la(n), lb(m), u(n, T(0)), v(m, T(0)), hf(n), hg(m), lr(n), lc(m), erow(n);
  std::vector<T> shift(m, std::numeric_limits<T>::infinity()), s(m), mx(m);
  for (int64_t i = 0; i < n; ++i) la[i] = ot_log_weight<T>(a[i]);
  for (int64_t j = 0; j < m; ++j) lb[j] = ot_log_weight<T>(static_cast<T>(b[j] * b_factor));
  if (g_init != nullptr) {
    for (int64_t j = 0; j < m; ++j) v[j] = g_init[j] * inv_eps;
  }
  for (int64_t j = 0; j < m; ++j) hg[j] = ot_h(lb[j], v[j]);

  // Passes below kParallelMin entries run on one thread: a pass is then ~100 us or less, and an OpenMP
  // fork/join per half-iteration costs more than it saves whenever another process holds a core.
  constexpr int64_t kParallelMin = int64_t(1) << 18;
  const bool parallel = n * m >= kParallelMin;
  const int64_t threads = parallel ? std::max<int64_t>(1, at::get_num_threads()) : 1;
  const int64_t row_grain = parallel ? std::max<int64_t>(1, 16384 / m) : n;
  const int64_t col_block = std::clamp<int64_t>(((m + threads - 1) / threads + 15) / 16 * 16, 64, kColBlockMax);
  const int64_t col_blocks = (m + col_block - 1) / col_block;
  const bool balanced = !(rho > 0);
  // Fused iteration (balanced, a dense C): the row pass keeps the row's terms
  // e_ij = exp(x_ij - max_i) in an L1 buffer, and since the new f makes the column terms
  //   exp(hf_i - C_ij/eps) = e_ij * alpha_i * exp(-hg_j),  alpha_i = exp(hf_i + max_i) = a_i / S_i
  // (S_i the row's sum of e), adds alpha_i e_i into per-thread column sums: the g-update then needs no
  // exp and no second read of C (one read of C and one exp per entry per iteration). alpha_i <= a_i and
  // e <= 1 cannot overflow; a column whose sum is not well above the largest term that the row pass may
  // have dropped (K.dropped * sum(alpha), relative to rounding) falls back to the exact column pass for
  // that iteration (early iterations at small eps, where a column's mass sits far below every row's max).
  // A zero-mass column (b_j = 0) gets no terms from the row pass (its log-weight is -inf) and plays no
  // part in the iteration; its potential is computed once, from the final f, by fill_zero_mass_columns.
  // Point clouds fuse too (a whole row of costs computed into a per-thread buffer of m scalars) unless
  // some b_j = 0 (that fill reads C).
  std::vector<int64_t> zero_cols;
  for (int64_t j = 0; j < m; ++j) {
    if (lb[j] == ninf) zero_cols.push_back(j);
  }
  const bool fusable = balanced && (!Costs::kComputed || zero_cols.empty());
  bool zero_cols_stale = false;  // the last g-update was fused: zero-mass columns' potentials not set
  const T rel_round = std::is_same_v<T, float> ? T(6e-8) : T(1.2e-16);
  std::vector<T> colpart(fusable ? threads * m : 0), alpha_part(fusable ? threads : 0);

  // Stabilised scaling (see scaling_phase) from the start (its first build seeds f); after a hand-back,
  // retried check_every iterations later, at most 3 times.
  const bool scaling = fusable && !Costs::kComputed && scaling_enabled(n, m, sizeof(T));
  HugePageBuffer<T> kt;  // not initialised: the scaling phase writes it before reading it
  std::vector<T> bw(scaling ? m : 0);
  for (int64_t j = 0; j < static_cast<int64_t>(bw.size()); ++j) bw[j] = static_cast<T>(b[j] * b_factor);
  int64_t scaling_at = 0, hand_backs = 0;
  bool scaled_done = false;

  int64_t it = 0, checks = 0;
  for (;; ) {
    if constexpr (!Costs::kComputed) {
      if (scaling && it >= scaling_at && hand_backs < 3) {
        if (!kt) kt = alloc_huge_page_buffer<T>(static_cast<size_t>(n * m));
        if (zero_cols_stale) {  // bring the zero-mass columns' potentials to the current f first
          fill_zero_mass_columns(costs.C, hf.data(), n, m, inv_eps, zero_cols, v.data(), lc.data());
          zero_cols_stale = false;
        }
        const ScalingArgs<T> sa{K,    a,           bw.data(), costs.C, n,        m,         inv_eps, max_iter, check_every,
                                tol,  parallel,    threads,   row_grain, it == 0};
        if (scaling_phase(sa, u.data(), v.data(), it, out.history, checks, kt.get()) == ScalingExit::kDone) {
          scaled_done = true;
          break;
        }
        ++hand_backs;
        scaling_at = it + check_every;
        for (int64_t j = 0; j < m; ++j) {
          hg[j] = ot_h(lb[j], v[j]);
          shift[j] = -v[j];
        }
      }
    }
    if (fusable) {
      std::fill(colpart.begin(), colpart.end(), T(0));
      std::fill(alpha_part.begin(), alpha_part.end(), T(0));
    }
    // Row pass with the current g: the row log-sum-exps (next f) and, at a check, the row marginals.
    at::parallel_for(0, n, row_grain, [&](int64_t i0, int64_t i1) {
      if (fusable) {
        const int64_t t = parallel ? at::get_thread_num() : 0;
        T* acc = colpart.data() + t * m;
        std::vector<T> e(m), row(Costs::kComputed ? m : 0);
        for (int64_t i = i0; i < i1; ++i) {
          T rmax;
          const T rsum = K.row_exp(costs.tile(i, 0, m, row.data()), hg.data(), inv_eps, &rmax, e.data(), m);
          lr[i] = rmax == ninf ? ninf : rmax + std::log(rsum);
          if (a[i] > 0 && rmax != ninf) {
            const T alpha = a[i] / rsum;
            K.axpy(e.data(), alpha, acc, m);
            alpha_part[t] += alpha;
          }
        }
        return;
      }
      const int64_t tile = Costs::kComputed ? kPointTile : m;
      std::vector<T> buf(Costs::kComputed ? kPointTile : 0);
      for (int64_t i = i0; i < i1; ++i) {
        T acc = ninf;  // log-sum-exp of the row, merged tile by tile
        for (int64_t j0 = 0; j0 < m; j0 += tile) {
          const int64_t len = std::min(tile, m - j0);
          const T t = K.row_lse(costs.tile(i, j0, len, buf.data()), hg.data() + j0, inv_eps, len);
          const T hi = std::max(acc, t);
          acc = hi == ninf ? ninf : hi + std::log(std::exp(acc - hi) + std::exp(t - hi));
        }
        lr[i] = acc;
      }
    });
    const bool last = it == max_iter;
    if (it > 0 && (it % check_every == 0 || last)) {
      double err = 0;
      for (int64_t i = 0; i < n; ++i) {
        if (!(a[i] > 0)) continue;
        if (balanced) {
          err += a[i] * std::fabs(std::exp(static_cast<double>(u[i]) + lr[i]) - 1.0);  // |(P1)_i - a_i|
        } else {
          err = std::max(err, static_cast<double>(eps) * std::fabs(-tau * lr[i] - u[i]));  // sup |f_new - f|
        }
      }
      out.history[checks++] = static_cast<T>(err);
      if (err <= tol) break;
    }
    if (last) break;
    for (int64_t i = 0; i < n; ++i) {
      u[i] = -tau * lr[i];
      hf[i] = ot_h(la[i], u[i]);
    }
    if (fusable) {  // the g-update from the fused column sums, unless one of them is unreliable
      T sum_alpha = 0;
      for (int64_t t = 0; t < static_cast<int64_t>(alpha_part.size()); ++t) sum_alpha += alpha_part[t];
      const T floor = K.dropped * sum_alpha / rel_round + std::numeric_limits<T>::min() / rel_round;
      bool ok = true;
      for (int64_t j = 0; j < m; ++j) {
        T tot = colpart[j];
        for (int64_t t = 1; t < threads; ++t) tot += colpart[t * m + j];
        if (lb[j] == ninf) {  // zero mass: no terms; potential filled after the loop
          lc[j] = ninf;
          continue;
        }
        if (!(tot > floor) || !std::isfinite(tot)) {
          ok = false;
          break;
        }
        lc[j] = std::log(tot) - hg[j];
      }
      if (ok) {
        for (int64_t j = 0; j < m; ++j) {
          if (lb[j] == ninf) continue;
          shift[j] = lc[j];
          v[j] = -lc[j];
          hg[j] = lb[j] + v[j];
        }
        zero_cols_stale = !zero_cols.empty();
        ++it;
        continue;
      }
    }
    // Column pass.
    zero_cols_stale = false;
    at::parallel_for(0, col_blocks, parallel ? 1 : col_blocks, [&](int64_t b0, int64_t b1) {
      for (int64_t blk = b0; blk < b1; ++blk) {
        const int64_t j0 = blk * col_block, len = std::min(col_block, m - j0);
        std::vector<T> buf(Costs::kComputed ? len : 0);
        for (int attempt = 0; attempt < 2; ++attempt) {
          std::fill(s.begin() + j0, s.begin() + j0 + len, T(0));
          std::fill(mx.begin() + j0, mx.begin() + j0 + len, ninf);
          for (int64_t i = 0; i < n; ++i) {
            if (hf[i] == ninf) continue;  // zero-mass row: contributes nothing
            K.col_accum(costs.tile(i, j0, len, buf.data()), hf[i], inv_eps, shift.data() + j0, s.data() + j0, mx.data() + j0,
                        len);
          }
          bool redo = false;
          for (int64_t j = j0; j < j0 + len; ++j) {
            if (mx[j] != ninf && !(std::fabs(mx[j] - shift[j]) <= window)) redo = true;
          }
          if (!redo) break;
          for (int64_t j = j0; j < j0 + len; ++j) shift[j] = mx[j] == ninf ? T(0) : mx[j];
        }
        for (int64_t j = j0; j < j0 + len; ++j) {
          lc[j] = mx[j] == ninf ? ninf : shift[j] + std::log(s[j]);
          if (lc[j] != ninf) shift[j] = lc[j];
          v[j] = -tau * lc[j];
          hg[j] = ot_h(lb[j], v[j]);
        }
      }
    });
    ++it;
  }
  if (scaled_done) {  // g was computed from f: the column log-sum-exps are -g (all columns, zero-mass too)
    for (int64_t j = 0; j < m; ++j) lc[j] = -v[j];
    zero_cols_stale = false;
  }
  if constexpr (!Costs::kComputed) {
    if (zero_cols_stale) fill_zero_mass_columns(costs.C, hf.data(), n, m, inv_eps, zero_cols, v.data(), lc.data());
  }
  // The dual objective at (f, g): g was computed from f, so sum_j b_j exp(g_j/eps + lc_j) is P's mass.
  double mass = 0, ma = 0, mb = 0, obj = 0;
  for (int64_t i = 0; i < n; ++i) {
    ma += a[i];
    obj += ot_phi(a[i], u[i], eps, rho);
    out.f[i] = eps * u[i];
  }
  for (int64_t j = 0; j < m; ++j) {
    const double bj = b[j] * b_factor;
    mb += bj;
    obj += ot_phi(bj, v[j], eps, rho);
    if (bj > 0 && lc[j] != ninf) mass += bj * std::exp(static_cast<double>(v[j]) + lc[j]);
    out.g[j] = eps * v[j];
  }
  *out.cost = static_cast<T>(obj - static_cast<double>(eps) * (mass - ma * mb));
  *out.n_iter = it;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> sinkhorn_log_cpu(
    const at::Tensor& a, const at::Tensor& b, const at::Tensor& C, double eps, int64_t max_iter, double tol,
    int64_t check_every, std::optional<double> rho, const std::optional<at::Tensor>& g_init) {
  const SinkhornArgs args = check_sinkhorn_log_inputs(a, b, C, eps, max_iter, tol, check_every, rho, g_init);
  check_device_type("sinkhorn_log", "C", C, at::kCPU);
  check_problem_values("sinkhorn_log", a, b, C);
  const OtDims d = args.dims;
  const double rho_v = rho.has_value() && std::isfinite(*rho) ? *rho : 0.0;  // rho = inf is balanced
  const at::Tensor factor = rho_v > 0 ? at::ones({d.batch}, a.options().dtype(at::kDouble))
                                      : check_balanced_masses("sinkhorn_log", a, b);
  const at::Tensor ac = a.contiguous(), bc = b.contiguous(), Cc = C.contiguous();
  const at::Tensor gi = g_init.has_value() ? g_init->contiguous() : at::Tensor();
  at::Tensor f = at::empty({d.batch, d.n}, a.options()), g = at::empty({d.batch, d.m}, a.options());
  at::Tensor cost = at::empty({d.batch}, a.options());
  at::Tensor n_iter = at::empty({d.batch}, a.options().dtype(at::kLong));
  at::Tensor history = at::full({d.batch, args.history}, -1.0, a.options());  // -1: no check (NaN would defeat opcheck)
  const auto run = [&](auto tag) {
    using T = decltype(tag);
    const LseKernels<T> K = lse_kernels<T>();
    const T* ap = ac.const_data_ptr<T>();
    const T* bp = bc.const_data_ptr<T>();
    const T* cp = Cc.const_data_ptr<T>();
    const T* gp = gi.defined() ? gi.const_data_ptr<T>() : nullptr;
    const double* fac = factor.const_data_ptr<double>();
    const int64_t cstride = d.shared_cost ? 0 : d.n * d.m;
    const auto one = [&](int64_t e) {
      SinkhornOut<T> o{f.mutable_data_ptr<T>() + e * d.n, g.mutable_data_ptr<T>() + e * d.m, cost.mutable_data_ptr<T>() + e,
                       n_iter.mutable_data_ptr<int64_t>() + e, history.mutable_data_ptr<T>() + e * args.history};
      solve_one<T>(K, ap + e * d.n, bp + e * d.m, MatrixCosts<T>{cp + e * cstride, d.m}, d.n, d.m, static_cast<T>(eps), rho_v, fac[e],
                   gp != nullptr ? gp + e * d.m : nullptr, max_iter, tol, check_every, o);
    };
    if (d.batch >= at::get_num_threads()) {
      at::parallel_for(0, d.batch, 1, [&](int64_t e0, int64_t e1) {
        for (int64_t e = e0; e < e1; ++e) one(e);
      });
    } else {
      for (int64_t e = 0; e < d.batch; ++e) one(e);
    }
  };
  AT_DISPATCH_SWITCH(C.scalar_type(), "sinkhorn_log", AT_DISPATCH_CASE(at::kFloat, [&] { run(float{}); })
                                                          AT_DISPATCH_CASE(at::kDouble, [&] { run(double{}); }));
  return {f, g, cost, n_iter, history};
}

// sinkhorn_points: solve_one with PointCosts. Extra memory per batch entry: y transposed (m d scalars), a
// kPointTile buffer per thread, and the solver's ~4 (n + m) scalars; balanced with every b_j > 0 (the
// fused iteration), 3 m scalars per thread (a row of costs, its terms, column sums): no n x m buffer.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> sinkhorn_points_cpu(
    const at::Tensor& x, const at::Tensor& y, const at::Tensor& a, const at::Tensor& b, double eps, int64_t p,
    int64_t max_iter, double tol, int64_t check_every, std::optional<double> rho) {
  constexpr const char* op = "sinkhorn_points";
  const PointDims d = check_point_shapes(op, x, y, a, b, p);
  check_eps(op, eps);
  TORCH_CHECK(max_iter >= 1, op, ": expected max_iter >= 1 (got ", max_iter, ")");
  TORCH_CHECK(check_every >= 1, op, ": expected check_every >= 1 (got ", check_every, ")");
  TORCH_CHECK(std::isfinite(tol) && tol >= 0, op, ": expected tol to be finite and >= 0 (got ", tol, ")");
  if (rho.has_value()) TORCH_CHECK(*rho > 0, op, ": expected rho > 0 (got ", *rho, "; None is balanced transport)");
  check_device_type(op, "x", x, at::kCPU);
  check_marginal_values(op, a, b);
  check_point_values(op, x, y);
  const double rho_v = rho.has_value() && std::isfinite(*rho) ? *rho : 0.0;
  const at::Tensor factor = rho_v > 0 ? at::ones({d.batch}, a.options().dtype(at::kDouble)) : check_balanced_masses(op, a, b);
  const int64_t history_len = (max_iter + check_every - 1) / check_every;
  const at::Tensor xc = x.contiguous(), yT = y.transpose(1, 2).contiguous(), ac = a.contiguous(), bc = b.contiguous();
  at::Tensor f = at::empty({d.batch, d.n}, a.options()), g = at::empty({d.batch, d.m}, a.options());
  at::Tensor cost = at::empty({d.batch}, a.options());
  at::Tensor n_iter = at::empty({d.batch}, a.options().dtype(at::kLong));
  at::Tensor history = at::full({d.batch, history_len}, -1.0, a.options());
  const auto run = [&](auto tag) {
    using T = decltype(tag);
    const LseKernels<T> K = lse_kernels<T>();
    const double* fac = factor.const_data_ptr<double>();
    const auto one = [&](int64_t e) {
      SinkhornOut<T> o{f.mutable_data_ptr<T>() + e * d.n, g.mutable_data_ptr<T>() + e * d.m, cost.mutable_data_ptr<T>() + e,
                       n_iter.mutable_data_ptr<int64_t>() + e, history.mutable_data_ptr<T>() + e * history_len};
      const PointCosts<T> costs{xc.const_data_ptr<T>() + e * d.n * d.d, yT.const_data_ptr<T>() + e * d.m * d.d, d.m, d.d,
                                static_cast<int>(p)};
      solve_one<T>(K, ac.const_data_ptr<T>() + e * d.n, bc.const_data_ptr<T>() + e * d.m, costs, d.n, d.m,
                   static_cast<T>(eps), rho_v, fac[e], nullptr, max_iter, tol, check_every, o);
    };
    if (d.batch >= at::get_num_threads()) {
      at::parallel_for(0, d.batch, 1, [&](int64_t e0, int64_t e1) {
        for (int64_t e = e0; e < e1; ++e) one(e);
      });
    } else {
      for (int64_t e = 0; e < d.batch; ++e) one(e);
    }
  };
  AT_DISPATCH_SWITCH(x.scalar_type(), op, AT_DISPATCH_CASE(at::kFloat, [&] { run(float{}); })
                                              AT_DISPATCH_CASE(at::kDouble, [&] { run(double{}); }));
  return {f, g, cost, n_iter, history};
}

// ot_points_grad: per row, the plan tile by tile (plan_row on recomputed costs), accumulated into
// gx_i = sum_j P_ij dc/dx_i and gy_j = sum_i P_ij dc/dy_j (dc/dx = 2 (x - y) for p = 2, sign(x - y) for
// p = 1; dc/dy = -dc/dx). Extra memory: y transposed, threads x m x d partial sums for gy, two tiles per thread.
std::tuple<at::Tensor, at::Tensor> ot_points_grad_cpu(const at::Tensor& x, const at::Tensor& y, const at::Tensor& a,
                                                      const at::Tensor& b, const at::Tensor& f, const at::Tensor& g,
                                                      double eps, int64_t p) {
  constexpr const char* op = "ot_points_grad";
  const PointDims d = check_point_shapes(op, x, y, a, b, p);
  check_eps(op, eps);
  for (const auto& [name, t, len] : {std::tuple<const char*, const at::Tensor&, int64_t>{"f", f, d.n}, {"g", g, d.m}}) {
    TORCH_CHECK_TYPE(t.scalar_type() == x.scalar_type(), op, ": expected ", name, " to have x's dtype (got ",
                     t.scalar_type(), ")");
    TORCH_CHECK(t.dim() == 2 && t.size(0) == d.batch && t.size(1) == len, op, ": expected ", name, " of shape [",
                d.batch, ", ", len, "] (got ", t.sizes(), ")");
  }
  check_device_type(op, "x", x, at::kCPU);
  const at::Tensor xc = x.contiguous(), yT = y.transpose(1, 2).contiguous(), ac = a.contiguous(), bc = b.contiguous();
  const at::Tensor fc = f.contiguous(), gc = g.contiguous();
  at::Tensor gx = at::zeros({d.batch, d.n, d.d}, x.options()), gyT = at::zeros({d.batch, d.d, d.m}, x.options());
  const auto run = [&](auto tag) {
    using T = decltype(tag);
    const LseKernels<T> K = lse_kernels<T>();
    const T inv_eps = static_cast<T>(1.0 / eps);
    const int64_t threads = at::get_num_threads();
    std::vector<T> partial(threads * d.d * d.m), hg(d.m);
    for (int64_t e = 0; e < d.batch; ++e) {
      const PointCosts<T> costs{xc.const_data_ptr<T>() + e * d.n * d.d, yT.const_data_ptr<T>() + e * d.m * d.d, d.m, d.d,
                                static_cast<int>(p)};
      const T* ap = ac.const_data_ptr<T>() + e * d.n;
      const T* bp = bc.const_data_ptr<T>() + e * d.m;
      const T* fp = fc.const_data_ptr<T>() + e * d.n;
      const T* gp = gc.const_data_ptr<T>() + e * d.m;
      for (int64_t j = 0; j < d.m; ++j) hg[j] = ot_h(ot_log_weight<T>(bp[j]), gp[j] * inv_eps);
      std::fill(partial.begin(), partial.end(), T(0));
      T* gxp = gx.mutable_data_ptr<T>() + e * d.n * d.d;
      at::parallel_for(0, d.n, ot_row_grain(d.n, d.m * d.d), [&](int64_t i0, int64_t i1) {
        std::vector<T> cbuf(kPointTile), pbuf(kPointTile);
        T* gyp = partial.data() + at::get_thread_num() * d.d * d.m;
        for (int64_t i = i0; i < i1; ++i) {
          const T hi = ot_h(ot_log_weight<T>(ap[i]), fp[i] * inv_eps);
          if (hi == -std::numeric_limits<T>::infinity()) continue;
          for (int64_t j0 = 0; j0 < d.m; j0 += kPointTile) {
            const int64_t len = std::min(kPointTile, d.m - j0);
            K.plan_row(costs.tile(i, j0, len, cbuf.data()), hi, hg.data() + j0, inv_eps, pbuf.data(), len);
            for (int64_t k = 0; k < d.d; ++k) {
              const T xv = costs.x[i * d.d + k];
              const T* yk = costs.yT + k * d.m + j0;
              T* gyk = gyp + k * d.m + j0;
              T acc = 0;
              for (int64_t j = 0; j < len; ++j) {
                const T diff = xv - yk[j];
                const T t = pbuf[j] * (p == 2 ? T(2) * diff : T((diff > 0) - (diff < 0)));
                acc += t;
                gyk[j] -= t;
              }
              gxp[i * d.d + k] += acc;
            }
          }
        }
      });
      T* gyo = gyT.mutable_data_ptr<T>() + e * d.d * d.m;
      for (int64_t t = 0; t < threads; ++t) {
        for (int64_t q = 0; q < d.d * d.m; ++q) gyo[q] += partial[t * d.d * d.m + q];
      }
    }
  };
  AT_DISPATCH_SWITCH(x.scalar_type(), op, AT_DISPATCH_CASE(at::kFloat, [&] { run(float{}); })
                                              AT_DISPATCH_CASE(at::kDouble, [&] { run(double{}); }));
  return {gx, gyT.transpose(1, 2).contiguous()};
}

// P[e, i, j] = a_i b_j exp((f_i + g_j - C_ij) / eps). Extra memory: (n + m) scalars per batch entry.
at::Tensor ot_plan_cpu(const at::Tensor& a, const at::Tensor& b, const at::Tensor& C, const at::Tensor& f,
                       const at::Tensor& g, double eps) {
  const OtDims d = check_potential_inputs("ot_plan", a, b, C, f, g, eps);
  check_device_type("ot_plan", "C", C, at::kCPU);
  const at::Tensor ac = a.contiguous(), bc = b.contiguous(), Cc = C.contiguous(), fc = f.contiguous(), gc = g.contiguous();
  at::Tensor P = at::empty({d.batch, d.n, d.m}, C.options());
  const auto run = [&](auto tag) {
    using T = decltype(tag);
    const LseKernels<T> K = lse_kernels<T>();
    const T inv_eps = static_cast<T>(1.0 / eps);
    const int64_t cstride = d.shared_cost ? 0 : d.n * d.m;
    for (int64_t e = 0; e < d.batch; ++e) {
      const T* ap = ac.const_data_ptr<T>() + e * d.n;
      const T* bp = bc.const_data_ptr<T>() + e * d.m;
      const T* fp = fc.const_data_ptr<T>() + e * d.n;
      const T* gp = gc.const_data_ptr<T>() + e * d.m;
      const T* cp = Cc.const_data_ptr<T>() + e * cstride;
      T* pp = P.mutable_data_ptr<T>() + e * d.n * d.m;
      std::vector<T> hg(d.m);
      for (int64_t j = 0; j < d.m; ++j) hg[j] = ot_h(ot_log_weight<T>(bp[j]), gp[j] * inv_eps);
      at::parallel_for(0, d.n, ot_row_grain(d.n, d.m), [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) {
          const T hi = ot_h(ot_log_weight<T>(ap[i]), fp[i] * inv_eps);
          if (hi == -std::numeric_limits<T>::infinity()) {
            std::fill(pp + i * d.m, pp + (i + 1) * d.m, T(0));
          } else {
            K.plan_row(cp + i * d.m, hi, hg.data(), inv_eps, pp + i * d.m, d.m);
          }
        }
      });
    }
  };
  AT_DISPATCH_SWITCH(C.scalar_type(), "ot_plan", AT_DISPATCH_CASE(at::kFloat, [&] { run(float{}); })
                                                     AT_DISPATCH_CASE(at::kDouble, [&] { run(double{}); }));
  return P;
}

// mass[e] = sum_ij P_ij; row[e, i] = sum_j b_j exp((f_i + g_j - C_ij)/eps) (so (P1)_i = a_i row_i);
// col[e, j] = sum_i a_i exp((f_i + g_j - C_ij)/eps). One pass over C; extra memory: threads x m scalars.
std::tuple<at::Tensor, at::Tensor, at::Tensor> ot_dual_cpu(const at::Tensor& a, const at::Tensor& b, const at::Tensor& C,
                                                           const at::Tensor& f, const at::Tensor& g, double eps) {
  const OtDims d = check_potential_inputs("ot_dual", a, b, C, f, g, eps);
  check_device_type("ot_dual", "C", C, at::kCPU);
  const at::Tensor ac = a.contiguous(), bc = b.contiguous(), Cc = C.contiguous(), fc = f.contiguous(), gc = g.contiguous();
  at::Tensor mass = at::empty({d.batch}, C.options()), row = at::empty({d.batch, d.n}, C.options());
  at::Tensor col = at::empty({d.batch, d.m}, C.options());
  const auto run = [&](auto tag) {
    using T = decltype(tag);
    const LseKernels<T> K = lse_kernels<T>();
    const T inv_eps = static_cast<T>(1.0 / eps);
    const int64_t cstride = d.shared_cost ? 0 : d.n * d.m;
    const int64_t threads = at::get_num_threads();
    std::vector<T> partial(threads * d.m);
    std::vector<T> gs(d.m);
    for (int64_t e = 0; e < d.batch; ++e) {
      const T* ap = ac.const_data_ptr<T>() + e * d.n;
      const T* bp = bc.const_data_ptr<T>() + e * d.m;
      const T* fp = fc.const_data_ptr<T>() + e * d.n;
      const T* cp = Cc.const_data_ptr<T>() + e * cstride;
      T* rp = row.mutable_data_ptr<T>() + e * d.n;
      for (int64_t j = 0; j < d.m; ++j) gs[j] = gc.const_data_ptr<T>()[e * d.m + j] * inv_eps;
      std::fill(partial.begin(), partial.end(), T(0));
      at::parallel_for(0, d.n, ot_row_grain(d.n, d.m), [&](int64_t i0, int64_t i1) {
        T* colsum = partial.data() + at::get_thread_num() * d.m;
        for (int64_t i = i0; i < i1; ++i) {
          rp[i] = K.dual_row(cp + i * d.m, fp[i] * inv_eps, gs.data(), inv_eps, bp, ap[i], ap[i] > 0 ? colsum : nullptr, d.m);
        }
      });
      T* colp = col.mutable_data_ptr<T>() + e * d.m;
      for (int64_t j = 0; j < d.m; ++j) {
        T s = 0;
        for (int64_t t = 0; t < threads; ++t) s += partial[t * d.m + j];
        colp[j] = s;
      }
      double tot = 0;
      for (int64_t i = 0; i < d.n; ++i) {
        if (ap[i] > 0) tot += static_cast<double>(ap[i]) * rp[i];
      }
      mass.mutable_data_ptr<T>()[e] = static_cast<T>(tot);
    }
  };
  AT_DISPATCH_SWITCH(C.scalar_type(), "ot_dual", AT_DISPATCH_CASE(at::kFloat, [&] { run(float{}); })
                                                     AT_DISPATCH_CASE(at::kDouble, [&] { run(double{}); }));
  return {mass, row, col};
}

}  // namespace

TORCH_LIBRARY_IMPL(sparseops, CPU, m) {
  m.impl("sinkhorn_log", &sinkhorn_log_cpu);
  m.impl("ot_plan", &ot_plan_cpu);
  m.impl("ot_dual", &ot_dual_cpu);
  m.impl("sinkhorn_points", &sinkhorn_points_cpu);
  m.impl("ot_points_grad", &ot_points_grad_cpu);
}

}  // namespace sparseops::ot
