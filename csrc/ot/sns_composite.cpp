// sinkhorn_newton_sparse: the whole Sinkhorn-Newton-Sparse solve as one op (the method is described in
// python/sparseops/ot/newton_sparse.py). Device-generic: the work is done by the family's kernels
// (sinkhorn_log for the warm start, ot_dual, ot_sparse_plan, ot_newton_cg), called through the
// dispatcher, and a few ATen vector ops on n- and m-vectors; registered for CPU and, when built, CUDA.
//
// Why one op and not a Python loop over the kernels: at n = 300 a Newton step's kernels take ~0.8 ms
// and the ~40 small torch calls around them took ~0.3 ms more from Python (measured: 2.7-3.2 ms of a
// 13 ms solve); from C++ they cost a few microseconds each.
//
// Extra memory: what the kernels take (see ot_sparse_plan and ot_newton_cg: no n x m buffer) and ~16
// vectors of n or m scalars per batch entry.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <tuple>
#include <vector>

#include "ot/ot_checks.h"

namespace sparseops::ot {
namespace {

using at::Tensor;
using Tensors2 = std::tuple<Tensor, Tensor>;
using Tensors3 = std::tuple<Tensor, Tensor, Tensor>;
using Tensors5 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>;

// The family's kernels, through the dispatcher (so each call reaches the backend of its tensors). The
// signatures are those of their schemas in csrc/ops.cpp.
using SinkhornLogFn = Tensors5(const Tensor&, const Tensor&, const Tensor&, double, int64_t, double, int64_t,
                               std::optional<double>, const std::optional<Tensor>&);
using OtDualFn = Tensors3(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, double);
using OtSparsePlanFn = Tensors2(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, double,
                                int64_t);
using OtNewtonCgFn = Tensors3(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                              double, int64_t, double);

template <typename Fn>
c10::TypedOperatorHandle<Fn> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Fn>();
}

struct FamilyOps {
  c10::TypedOperatorHandle<SinkhornLogFn> sinkhorn_log = find_op<SinkhornLogFn>("sparseops::sinkhorn_log");
  c10::TypedOperatorHandle<OtDualFn> ot_dual = find_op<OtDualFn>("sparseops::ot_dual");
  c10::TypedOperatorHandle<OtSparsePlanFn> ot_sparse_plan = find_op<OtSparsePlanFn>("sparseops::ot_sparse_plan");
  c10::TypedOperatorHandle<OtNewtonCgFn> ot_newton_cg = find_op<OtNewtonCgFn>("sparseops::ot_newton_cg");
};

const FamilyOps& family_ops() {
  static const FamilyOps ops;
  return ops;
}

struct SnsSettings {
  int64_t warmup_iters, max_newton, k, cg_max_iter, sinkhorn_budget;
  double tol;
};

// One batch entry: a [1, n], b [1, m], C [1, n, m] or [n, m].
struct Problem {
  Tensor a, b, C;
  double eps;
};

double dot_value(const Tensor& x, const Tensor& y) { return at::dot(x.view(-1), y.view(-1)).item<double>(); }

// (dual objective, marginal error, P1, P^T1) at (f, g): one fused pass over C.
struct DualState {
  double obj = 0, err = 0;
  Tensor r, c;
};

DualState dual_state(const Problem& p, const Tensor& f, const Tensor& g, double mass_ab) {
  const auto [mass, row, col] = family_ops().ot_dual.call(p.a, p.b, p.C, f, g, p.eps);
  DualState s;
  s.r = p.a * row;
  s.c = p.b * col;
  s.obj = dot_value(p.a, f) + dot_value(p.b, g) - p.eps * (mass.item<double>() - mass_ab);
  s.err = at::dist(p.a, s.r, 1).item<double>() + at::dist(p.b, s.c, 1).item<double>();
  return s;
}

// The continued Sinkhorn solve runs in chunks of at most this many iterations, re-estimating its rate
// after each: Sinkhorn's rate slows as it goes (fast early progress predicts too little), and a chunk
// whose rate no longer predicts tol within the budget hands over to Newton steps.
constexpr int64_t kSinkhornChunk = 100;

// The marginal errors sinkhorn_log reported (err_history [1, L], -1 after its stop).
std::vector<double> reported_errors(const Tensor& history) {
  const Tensor h = history.to(at::kCPU, at::kDouble).contiguous();
  std::vector<double> errs;
  for (int64_t t = 0; t < h.numel(); ++t) {
    const double e = h.const_data_ptr<double>()[t];
    if (e >= 0) errs.push_back(e);
  }
  return errs;
}

// The per-iteration linear rate of a marginal-error history sampled every `every` iterations, over its
// later half (Sinkhorn's rate slows as it goes: the recent one predicts best); NaN when it cannot be told.
double observed_rate(const std::vector<double>& errs, int64_t every) {
  if (errs.size() < 2) return std::numeric_limits<double>::quiet_NaN();
  const size_t from = (errs.size() - 1) / 2, len = errs.size() - from;
  if (len < 2 || !(errs[from] > 0)) return std::numeric_limits<double>::quiet_NaN();
  return std::pow(errs.back() / errs[from], 1.0 / static_cast<double>(every * static_cast<int64_t>(len - 1)));
}

// Stage 1: warmup_iters Sinkhorn iterations (tol applies: an easy problem may finish here), then, while
// the observed linear rate predicts tol within the rest of sinkhorn_budget (large eps, where Sinkhorn
// converges fast and a Newton step, ~4 passes over C plus CG, costs tens of iterations), Sinkhorn
// continued in chunks. done: Sinkhorn reached tol, with (obj, err) as it reported them (its g is computed
// from f, so the column marginals are exact and its row error is the whole error).
struct WarmStart {
  Tensor f, g;
  bool done = false;
  double obj = 0, err = 0;
};

WarmStart warm_start(const Problem& p, const SnsSettings& s, const std::optional<Tensor>& g_init) {
  const FamilyOps& ops = family_ops();
  const int64_t w = std::max<int64_t>(1, s.warmup_iters);
  int64_t every = std::max<int64_t>(1, w / 4);
  auto [f, g, cost, n_iter, history] = ops.sinkhorn_log.call(p.a, p.b, p.C, p.eps, w, s.tol, every, std::nullopt,
                                                              g_init);
  std::vector<double> errs = reported_errors(history);
  int64_t budget = s.sinkhorn_budget;
  while (true) {
    if (!errs.empty() && errs.back() <= s.tol) return {f, g, true, cost.item<double>(), errs.back()};
    const double rate = observed_rate(errs, every);
    if (budget <= 0 || !(rate > 0 && rate < 1)) return {f, g};
    const double needed = std::log(s.tol / errs.back()) / std::log(rate);  // +inf for tol = 0
    if (!(needed <= static_cast<double>(budget))) return {f, g};
    const int64_t chunk =
        std::min({budget, kSinkhornChunk, 10 * static_cast<int64_t>(std::ceil(1.25 * needed / 10)) + 10});
    every = 10;
    std::tie(f, g, cost, n_iter, history) = ops.sinkhorn_log.call(p.a, p.b, p.C, p.eps, chunk, s.tol, every,
                                                                  std::nullopt, g);
    const double last = errs.back();
    errs = reported_errors(history);
    errs.insert(errs.begin(), last);
    budget -= chunk;
  }
}

struct EntryResult {
  Tensor f, g;
  double obj = 0;
  int64_t steps = 0;
  std::vector<double> history;  // the error after the warm start, then after each Newton step
};

// The share of P's mass the sparse Hessian may leave out at marginal error err. With it, Newton converges
// linearly at a rate of a few times that share (measured: leaving out 1.6% gave ~9x per step), so the
// share follows the error down (0.1 err keeps the steps quadratic), from at most 1e-2 (the damped steps
// far from the solution gain nothing from a finer Hessian) to at least 1e-5 (enough for a last step).
// Replaces doubling k after every step that did not halve the error, which at eps = 1e-3 doubled k
// through the damped steps while the kept share was already 1 - 1e-6 (n = 300: 9 -> 7 steps; n = 2000:
// 8 -> 4), and at eps = 1e-2 left k where steps converged only ~9x (11 -> 3 steps).
double allowed_drop(double err) { return std::min(1e-2, std::max(1e-5, 0.1 * err)); }

// Stage 2: Newton steps with a backtracking (Armijo) line search on the dual; the sparse Hessian keeps the
// k largest entries of each row of P, k doubling until they hold all but allowed_drop(err) of its mass
// (one more pass over C a doubling; k never shrinks) and after a failed step (which takes one Sinkhorn
// iteration instead).
EntryResult solve_one(Problem p, const SnsSettings& s, const std::optional<Tensor>& g_init) {
  const FamilyOps& ops = family_ops();
  const WarmStart w = warm_start(p, s, g_init);
  if (w.done) return {w.f, w.g, w.obj, 0, {w.err}};  // no Newton step, and no extra pass over C
  p.b = p.b * (p.a.sum() / p.b.sum());  // the warm start checked the masses; absorb a round-off mismatch as it does
  const double mass_ab = (p.a.sum() * p.b.sum()).item<double>();
  const int64_t m = p.b.size(1);
  Tensor f = w.f, g = w.g;
  DualState state = dual_state(p, f, g, mass_ab);
  EntryResult out;
  out.history.push_back(state.err);
  int64_t k = s.k;
  while (state.err > s.tol && out.steps < s.max_newton) {
    ++out.steps;
    Tensor idx, val;
    std::tie(idx, val) = ops.ot_sparse_plan.call(p.a, p.b, p.C, f, g, p.eps, k);
    const double mass = state.r.sum().item<double>();
    while (k < m && val.sum().item<double>() < (1 - allowed_drop(state.err)) * mass) {
      k = std::min(m, 2 * k);
      std::tie(idx, val) = ops.ot_sparse_plan.call(p.a, p.b, p.C, f, g, p.eps, k);
    }
    const double shift = 1e-10 * std::max(state.r.max().item<double>(), state.c.max().item<double>());
    // Forcing term: min(0.1, err) keeps the steps quadratic; a step whose error needs to fall only by
    // tol / err (the last one) needs no tighter a solve than a tenth of that.
    const double cg_tol = std::min(0.1, std::max(state.err, 0.1 * s.tol / state.err));
    const Tensor grad_f = p.a - state.r, grad_g = p.b - state.c;
    const auto [df, dg, cg_iters] = ops.ot_newton_cg.call(idx, val, state.r, state.c, grad_f * p.eps,
                                                          grad_g * p.eps, shift, s.cg_max_iter, cg_tol);
    const double slope = dot_value(grad_f, df) + dot_value(grad_g, dg);
    double t = 1.0;
    bool accepted = false;
    Tensor f_next, g_next;
    DualState next;
    for (int tries = 0; tries < 30; ++tries) {
      f_next = at::add(f, df, t);
      g_next = at::add(g, dg, t);
      next = dual_state(p, f_next, g_next, mass_ab);
      if (std::isfinite(next.obj) && (next.obj >= state.obj + 1e-4 * t * slope || next.err < state.err)) {
        accepted = true;
        break;
      }
      t *= 0.5;
    }
    if (accepted) {
      f = f_next, g = g_next, state = next;
    }
    if (!accepted || t < 0.25) k = std::min(m, 2 * k);  // the sparse Hessian may be too crude: keep more of P
    if (!accepted) {
      std::tie(f, g, std::ignore, std::ignore, std::ignore) =
          ops.sinkhorn_log.call(p.a, p.b, p.C, p.eps, 1, 0.0, 1, std::nullopt, g);
      state = dual_state(p, f, g, mass_ab);
    }
    out.history.push_back(state.err);
  }
  out.f = f, out.g = g, out.obj = state.obj;
  return out;
}

// Returns (f [B, n], g [B, m], cost [B] = the dual objective, n_iter [B] int64 = Newton steps,
// err_history [B, max_newton + 1]: the error after the warm start, then after each step, -1 after the
// stop, as sinkhorn_log's). Each batch entry is solved to its own stop; on CPU small entries run in
// parallel, one thread each. g_init [B, m] (optional, cost units: e.g. an earlier solve's g) is where the
// warm start's Sinkhorn iterations begin instead of g = 0.
Tensors5 sinkhorn_newton_sparse(const Tensor& a, const Tensor& b, const Tensor& C, double eps, int64_t warmup_iters,
                                int64_t max_newton, int64_t k, double tol, int64_t cg_max_iter, int64_t sinkhorn_budget,
                                const std::optional<Tensor>& g_init) {
  constexpr const char* op = "sinkhorn_newton_sparse";
  const OtDims d = check_problem_shapes(op, a, b, C);
  check_eps(op, eps);
  TORCH_CHECK(warmup_iters >= 0 && max_newton >= 0 && sinkhorn_budget >= 0, op,
              ": expected warmup_iters, max_newton and sinkhorn_budget >= 0 (got ", warmup_iters, ", ", max_newton,
              ", ", sinkhorn_budget, ")");
  TORCH_CHECK(k >= 1 && k <= d.m, op, ": expected 1 <= k <= m = ", d.m, " (got k=", k, ")");
  TORCH_CHECK(cg_max_iter >= 1, op, ": expected cg_max_iter >= 1 (got ", cg_max_iter, ")");
  TORCH_CHECK(std::isfinite(tol) && tol >= 0, op, ": expected tol to be finite and >= 0 (got ", tol, ")");
  check_g_init(op, g_init, C, d);
  check_problem_values(op, a, b, C);
  check_balanced_masses(op, a, b);
  // The kernels below are not differentiable (the cost is documented as not differentiable): skip autograd.
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const SnsSettings s{warmup_iters, max_newton, k, cg_max_iter, sinkhorn_budget, tol};
  Tensor f = at::empty({d.batch, d.n}, C.options()), g = at::empty({d.batch, d.m}, C.options());
  Tensor cost = at::empty({d.batch}, at::kDouble), n_iter = at::empty({d.batch}, at::kLong);
  Tensor history = at::full({d.batch, max_newton + 1}, -1.0, at::kDouble);
  const auto solve_entry = [&](int64_t e) {
    const Problem p{a.narrow(0, e, 1), b.narrow(0, e, 1), d.shared_cost ? C : C.narrow(0, e, 1), eps};
    const EntryResult r = solve_one(p, s, g_init ? std::optional<Tensor>(g_init->narrow(0, e, 1)) : std::nullopt);
    f.narrow(0, e, 1).copy_(r.f);
    g.narrow(0, e, 1).copy_(r.g);
    cost.mutable_data_ptr<double>()[e] = r.obj;
    n_iter.mutable_data_ptr<int64_t>()[e] = r.steps;
    std::copy(r.history.begin(), r.history.end(), history.mutable_data_ptr<double>() + e * (max_newton + 1));
  };
  // On CPU, batch entries go to threads when each entry's passes would run on one thread anyway
  // (ot_row_grain: under 2^18 entries) or there are enough entries for every thread: an entry is a chain
  // of small kernels (their own parallel_for runs inline here), and entries are independent.
  const bool entries_in_parallel =
      C.is_cpu() && d.batch > 1 && (ot_row_grain(d.n, d.m) == d.n || d.batch >= at::get_num_threads());
  if (entries_in_parallel) {
    // The dispatch guard is thread-local, hence repeated in each worker.
    at::parallel_for(0, d.batch, 1, [&](int64_t e0, int64_t e1) {
      at::AutoDispatchBelowADInplaceOrView below_autograd_in_worker;
      for (int64_t e = e0; e < e1; ++e) solve_entry(e);
    });
  } else {
    for (int64_t e = 0; e < d.batch; ++e) solve_entry(e);
  }
  return {f, g, cost.to(C.options()), n_iter.to(C.device()), history.to(C.options())};
}

}  // namespace

TORCH_LIBRARY_IMPL(sparseops, CPU, m) { m.impl("sinkhorn_newton_sparse", &sinkhorn_newton_sparse); }

#if defined(SPARSEOPS_WITH_CUDA)
TORCH_LIBRARY_IMPL(sparseops, CUDA, m) { m.impl("sinkhorn_newton_sparse", &sinkhorn_newton_sparse); }
#endif

}  // namespace sparseops::ot
