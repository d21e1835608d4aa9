#pragma once
// Input checks for the ot ops (sinkhorn_log, ot_plan, ot_dual, ot_sparse_plan, ot_newton_cg), shared by
// the CPU and CUDA glue. Shapes first (no data read), then the values the kernels rely on: marginals
// finite and >= 0, costs neither NaN nor -inf (+inf is a forbidden pair), balanced masses equal. The
// value checks read reductions back to the host (a device sync on CUDA, once per call: the solvers
// sync for their convergence tests anyway).
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <optional>

#include "common/checks.h"
#include "ot/ot_cpu_kernels.h"

namespace sparseops::ot {

struct OtDims {
  int64_t batch = 0, n = 0, m = 0;
  bool shared_cost = false;  // C is [n, m], shared by every batch entry (else [B, n, m])
};

// a [B, n], b [B, m], C [n, m] or [B, n, m]; one float dtype, one device; n, m, B >= 1.
inline OtDims check_problem_shapes(const char* op, const at::Tensor& a, const at::Tensor& b, const at::Tensor& C) {
  check_dtype(op, "C", C, {at::kFloat, at::kDouble});
  TORCH_CHECK_TYPE(a.scalar_type() == C.scalar_type() && b.scalar_type() == C.scalar_type(), op,
                   ": expected a, b and C to have one dtype (got ", a.scalar_type(), ", ", b.scalar_type(), ", ",
                   C.scalar_type(), ")");
  check_same_device(op, "a", a, "C", C);
  check_same_device(op, "b", b, "C", C);
  check_dim(op, "a", a, 2);
  check_dim(op, "b", b, 2);
  TORCH_CHECK(C.dim() == 2 || C.dim() == 3, op, ": expected C to be [n, m] or [B, n, m] (got shape ", C.sizes(), ")");
  OtDims d;
  d.batch = a.size(0);
  d.n = a.size(1);
  d.m = b.size(1);
  d.shared_cost = C.dim() == 2;
  TORCH_CHECK(b.size(0) == d.batch, op, ": expected b.size(0) == a.size(0) (batch) (got ", b.size(0), " vs ", d.batch, ")");
  TORCH_CHECK(d.batch >= 1 && d.n >= 1 && d.m >= 1, op, ": expected non-empty a [B, n] and b [B, m] (got a ", a.sizes(),
              ", b ", b.sizes(), ")");
  const int64_t cn = C.size(C.dim() - 2), cm = C.size(C.dim() - 1);
  TORCH_CHECK(cn == d.n && cm == d.m, op, ": expected C's last two dims to be (n, m) = (", d.n, ", ", d.m, ") from a and b (got ",
              C.sizes(), ")");
  if (!d.shared_cost) {
    TORCH_CHECK(C.size(0) == d.batch, op, ": expected C.size(0) == a.size(0) (batch) (got ", C.size(0), " vs ", d.batch, ")");
  }
  return d;
}

inline void check_eps(const char* op, double eps) {
  TORCH_CHECK(std::isfinite(eps) && eps > 0, op, ": expected eps to be finite and > 0 (got ", eps, ")");
}

// Values: marginals finite and >= 0.
inline void check_marginal_values(const char* op, const at::Tensor& a, const at::Tensor& b) {
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"a", a}, {"b", b}}) {
    const at::Tensor mn = t.amin(), mx = t.amax();
    const double lo = mn.item<double>(), hi = mx.item<double>();
    TORCH_CHECK_VALUE(!std::isnan(lo) && !std::isnan(hi) && std::isfinite(hi), op, ": expected ", name,
                " (a marginal) to be finite (got min ", lo, ", max ", hi, ")");
    TORCH_CHECK_VALUE(lo >= 0, op, ": expected ", name, " (a marginal) to be >= 0 (got min ", lo, ")");
  }
}

// min(t) (NaN if t has one). Small CPU tensors (< 2^18 entries) by the ISA's min_or_nan on this thread:
// ATen's reduction forks OpenMP threads above 32k entries, and with 2 threads on a machine where another
// process holds a core that fork/join waits a scheduler tick (4-8 ms measured here), more than a whole
// n = 300 solve. Larger or CUDA tensors: ATen's min.
inline double value_min(const at::Tensor& t) {
  if (!t.is_cpu() || t.numel() == 0 || t.numel() >= (int64_t(1) << 18) ||
      (t.scalar_type() != at::kFloat && t.scalar_type() != at::kDouble)) {
    return t.min().item<double>();
  }
  const at::Tensor c = t.contiguous();
  if (c.scalar_type() == at::kFloat) return lse_kernels<float>().min_or_nan(c.const_data_ptr<float>(), c.numel());
  return lse_kernels<double>().min_or_nan(c.const_data_ptr<double>(), c.numel());
}

// Values: marginals finite and >= 0; C not NaN and not -inf. Raises on the first problem.
inline void check_problem_values(const char* op, const at::Tensor& a, const at::Tensor& b, const at::Tensor& C) {
  check_marginal_values(op, a, b);
  // min() propagates NaN: one reduction finds both NaN and -inf.
  const double cmin = value_min(C);
  TORCH_CHECK_VALUE(!std::isnan(cmin), op, ": expected C without NaN (got a NaN cost)");
  TORCH_CHECK_VALUE(cmin > -INFINITY, op, ": expected C > -inf (got a -inf cost; +inf marks a forbidden pair)");
}

// Balanced problems: per batch entry sum(a) == sum(b) up to a relative tolerance (1e-5 float, 1e-8
// double); within it, the kernels rescale b to a's mass (documented renormalisation). Returns the
// per-batch factors sum(a) / sum(b) as a double tensor on the CPU.
inline at::Tensor check_balanced_masses(const char* op, const at::Tensor& a, const at::Tensor& b) {
  const at::Tensor sa = a.sum(1, false, at::kDouble).cpu(), sb = b.sum(1, false, at::kDouble).cpu();
  const double rel = a.scalar_type() == at::kFloat ? 1e-5 : 1e-8;
  const double* pa = sa.const_data_ptr<double>();
  const double* pb = sb.const_data_ptr<double>();
  at::Tensor factor = at::empty({sa.numel()}, sa.options());
  double* pf = factor.mutable_data_ptr<double>();
  for (int64_t i = 0; i < sa.numel(); ++i) {
    TORCH_CHECK_VALUE(pa[i] > 0 && pb[i] > 0, op, ": expected a and b with positive total mass (got sum(a) = ", pa[i],
                ", sum(b) = ", pb[i], " for batch entry ", i, ")");
    TORCH_CHECK_VALUE(std::fabs(pa[i] - pb[i]) <= rel * std::max(pa[i], pb[i]), op,
                ": expected sum(a) == sum(b) for balanced transport (rho=None) (got ", pa[i], " vs ", pb[i],
                " for batch entry ", i, "; normalise the marginals or pass rho for unbalanced transport)");
    pf[i] = pa[i] / pb[i];
  }
  return factor;
}

struct SinkhornArgs {
  OtDims dims;
  int64_t history = 0;  // err_history length: ceil(max_iter / check_every)
};

// g_init (optional): starting potentials g [B, m], finite, in C's dtype and on its device.
inline void check_g_init(const char* op, const std::optional<at::Tensor>& g_init, const at::Tensor& C, const OtDims& d) {
  if (!g_init.has_value()) return;
  const at::Tensor& g = *g_init;
  TORCH_CHECK_TYPE(g.scalar_type() == C.scalar_type(), op, ": expected g_init to have C's dtype ", C.scalar_type(),
                   " (got ", g.scalar_type(), ")");
  check_same_device(op, "g_init", g, "C", C);
  TORCH_CHECK(g.dim() == 2 && g.size(0) == d.batch && g.size(1) == d.m, op, ": expected g_init of shape [B, m] = [",
              d.batch, ", ", d.m, "] (got ", g.sizes(), ")");
  const double gmin = g.min().item<double>(), gmax = g.max().item<double>();
  TORCH_CHECK(std::isfinite(gmin) && std::isfinite(gmax), op, ": expected g_init to be finite (got min ", gmin, ", max ",
              gmax, ")");
}

inline SinkhornArgs check_sinkhorn_log_inputs(const at::Tensor& a, const at::Tensor& b, const at::Tensor& C, double eps,
                                              int64_t max_iter, double tol, int64_t check_every,
                                              std::optional<double> rho, const std::optional<at::Tensor>& g_init) {
  constexpr const char* op = "sinkhorn_log";
  SinkhornArgs s;
  s.dims = check_problem_shapes(op, a, b, C);
  check_eps(op, eps);
  TORCH_CHECK(max_iter >= 1, op, ": expected max_iter >= 1 (got ", max_iter, ")");
  TORCH_CHECK(check_every >= 1, op, ": expected check_every >= 1 (got ", check_every, ")");
  TORCH_CHECK(std::isfinite(tol) && tol >= 0, op, ": expected tol to be finite and >= 0 (got ", tol, ")");
  if (rho.has_value()) {
    TORCH_CHECK(*rho > 0, op, ": expected rho > 0 (got ", *rho, "; None is balanced transport)");
  }
  check_g_init(op, g_init, C, s.dims);
  s.history = (max_iter + check_every - 1) / check_every;
  return s;
}

// f [B, n], g [B, m] potentials of the problem (a, b, C), finite.
inline OtDims check_potential_inputs(const char* op, const at::Tensor& a, const at::Tensor& b, const at::Tensor& C,
                                     const at::Tensor& f, const at::Tensor& g, double eps) {
  OtDims d = check_problem_shapes(op, a, b, C);
  check_eps(op, eps);
  for (const auto& [name, t, len] : {std::tuple<const char*, const at::Tensor&, int64_t>{"f", f, d.n}, {"g", g, d.m}}) {
    TORCH_CHECK_TYPE(t.scalar_type() == C.scalar_type(), op, ": expected ", name, " to have C's dtype ", C.scalar_type(),
                     " (got ", t.scalar_type(), ")");
    check_same_device(op, name, t, "C", C);
    TORCH_CHECK(t.dim() == 2 && t.size(0) == d.batch && t.size(1) == len, op, ": expected ", name, " of shape [",
                d.batch, ", ", len, "] (got ", t.sizes(), ")");
  }
  return d;
}

inline OtDims check_ot_sparse_plan_inputs(const at::Tensor& a, const at::Tensor& b, const at::Tensor& C,
                                          const at::Tensor& f, const at::Tensor& g, double eps, int64_t k) {
  constexpr const char* op = "ot_sparse_plan";
  OtDims d = check_potential_inputs(op, a, b, C, f, g, eps);
  TORCH_CHECK(k >= 1 && k <= d.m, op, ": expected 1 <= k <= m = ", d.m, " (got k=", k, ")");
  return d;
}

// idx [B, n, k] int64 in [0, m), val [B, n, k], row_diag / rhs_f [B, n], col_diag / rhs_g [B, m].
inline void check_ot_newton_cg_inputs(const at::Tensor& idx, const at::Tensor& val, const at::Tensor& row_diag,
                                      const at::Tensor& col_diag, const at::Tensor& rhs_f, const at::Tensor& rhs_g,
                                      double shift, int64_t max_iter, double tol) {
  constexpr const char* op = "ot_newton_cg";
  check_dtype(op, "val", val, {at::kFloat, at::kDouble});
  check_dtype(op, "idx", idx, {at::kLong});
  check_dim(op, "idx", idx, 3);
  check_dim(op, "row_diag", row_diag, 2);
  check_dim(op, "col_diag", col_diag, 2);
  TORCH_CHECK(val.sizes() == idx.sizes(), op, ": expected val.shape == idx.shape (got ", val.sizes(), " vs ", idx.sizes(), ")");
  const int64_t B = idx.size(0), n = idx.size(1), m = col_diag.size(1);
  TORCH_CHECK(B >= 1 && n >= 1 && m >= 1, op, ": expected non-empty idx [B, n, k] and col_diag [B, m] (got ", idx.sizes(),
              ", ", col_diag.sizes(), ")");
  for (const auto& [name, t, len] : {std::tuple<const char*, const at::Tensor&, int64_t>{"row_diag", row_diag, n},
                                     {"rhs_f", rhs_f, n}, {"col_diag", col_diag, m}, {"rhs_g", rhs_g, m}}) {
    TORCH_CHECK_TYPE(t.scalar_type() == val.scalar_type(), op, ": expected ", name, " to have val's dtype ",
                     val.scalar_type(), " (got ", t.scalar_type(), ")");
    check_same_device(op, name, t, "val", val);
    TORCH_CHECK(t.dim() == 2 && t.size(0) == B && t.size(1) == len, op, ": expected ", name, " of shape [", B, ", ", len,
                "] (got ", t.sizes(), ")");
  }
  check_same_device(op, "idx", idx, "val", val);
  TORCH_CHECK(std::isfinite(shift) && shift >= 0, op, ": expected shift to be finite and >= 0 (got ", shift, ")");
  TORCH_CHECK(max_iter >= 1, op, ": expected max_iter >= 1 (got ", max_iter, ")");
  TORCH_CHECK(std::isfinite(tol) && tol >= 0, op, ": expected tol to be finite and >= 0 (got ", tol, ")");
}

// idx in [0, m): a pass of its own on CUDA; the CPU kernel checks while it copies idx and calls this
// only to name the bad range.
inline void check_ot_newton_cg_idx_range(const at::Tensor& idx, int64_t m) {
  if (idx.numel() == 0) return;
  const auto [lo_t, hi_t] = at::aminmax(idx);
  const int64_t lo = lo_t.item<int64_t>(), hi = hi_t.item<int64_t>();
  TORCH_CHECK(lo >= 0 && hi < m, "ot_newton_cg: expected idx in [0, m) = [0, ", m, ") (got min ", lo, ", max ", hi, ")");
}

struct PointDims {
  int64_t batch = 0, n = 0, m = 0, d = 0;
};

// Point clouds: x [B, n, d], y [B, m, d], a [B, n], b [B, m]; one float dtype and device; p in {1, 2}.
inline PointDims check_point_shapes(const char* op, const at::Tensor& x, const at::Tensor& y, const at::Tensor& a,
                                    const at::Tensor& b, int64_t p) {
  check_dtype(op, "x", x, {at::kFloat, at::kDouble});
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"y", y}, {"a", a}, {"b", b}}) {
    TORCH_CHECK_TYPE(t.scalar_type() == x.scalar_type(), op, ": expected ", name, " to have x's dtype ", x.scalar_type(),
                     " (got ", t.scalar_type(), ")");
    check_same_device(op, name, t, "x", x);
  }
  check_dim(op, "x", x, 3);
  check_dim(op, "y", y, 3);
  PointDims d{x.size(0), x.size(1), y.size(1), x.size(2)};
  TORCH_CHECK(y.size(0) == d.batch && y.size(2) == d.d, op, ": expected y of shape [B, m, d] with B = ", d.batch,
              ", d = ", d.d, " from x (got ", y.sizes(), ")");
  TORCH_CHECK(a.dim() == 2 && a.size(0) == d.batch && a.size(1) == d.n, op, ": expected a of shape [", d.batch, ", ", d.n,
              "] (got ", a.sizes(), ")");
  TORCH_CHECK(b.dim() == 2 && b.size(0) == d.batch && b.size(1) == d.m, op, ": expected b of shape [", d.batch, ", ", d.m,
              "] (got ", b.sizes(), ")");
  TORCH_CHECK(d.batch >= 1 && d.n >= 1 && d.m >= 1 && d.d >= 1, op, ": expected non-empty point clouds (got x ", x.sizes(),
              ", y ", y.sizes(), ")");
  TORCH_CHECK(p == 1 || p == 2, op, ": expected p in {1, 2} (got ", p, ")");
  return d;
}

inline void check_point_values(const char* op, const at::Tensor& x, const at::Tensor& y) {
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"x", x}, {"y", y}}) {
    const double lo = t.min().item<double>(), hi = t.max().item<double>();
    TORCH_CHECK_VALUE(std::isfinite(lo) && std::isfinite(hi), op, ": expected finite coordinates in ", name, " (got min ",
                      lo, ", max ", hi, ")");
  }
}

}  // namespace sparseops::ot
