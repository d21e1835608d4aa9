// The ot ops on CUDA: torch glue (checks, guard, stream, the iteration loops) around ot_kernel.cu.
//   sinkhorn_log: per iteration a row-LSE kernel (one block per row), the f-update, a column-LSE kernel
//     (32-column tiles) and the g-update; every check_every iterations the errors are reduced and read
//     back (one sync per check), and converged batch entries are frozen on the device. Extra memory:
//     ~6 (n + m) scalars per batch entry.
//   ot_plan: one elementwise kernel. ot_dual: the two LSE kernels + elementwise ops (two passes over C).
//   ot_sparse_plan: the log-plan of every row as a dense [B, n, m] temporary and torch's topk (extra
//     memory n x m per batch entry, unlike the CPU kernel's per-row selection).
//   sinkhorn_points / ot_points_grad: the same loop and kernels with costs recomputed from the points
//     (memory O(n + m)); the gradient kernels loop over all partners per thread (O(n m d) work, no plan).
//   ot_newton_cg: batched Jacobi-PCG with torch reductions on the device and the ELL sparse
//     Hessian-vector kernel; the stop test is read back every 8 iterations.
#include <torch/library.h>

#include <cmath>
#include <functional>
#include <limits>
#include <vector>

#include "common/cuda_glue.h"
#include "ot/ot_checks.h"
#include "ot/ot_launch.h"
#include "ot/ot_math.h"

namespace sparseops::ot {
namespace {

at::Tensor log_weight(const at::Tensor& w) {
  return at::where(w > 0, w.log(), at::full({}, -std::numeric_limits<double>::infinity(), w.options()));
}

at::Tensor with_log_weight(const at::Tensor& lw, const at::Tensor& u) {
  return at::where(lw > -std::numeric_limits<double>::infinity(), lw + u, lw);
}

void row_lse(const at::Tensor& C, const OtDims& d, const at::Tensor& h, at::Tensor& out, double inv_eps) {
  RowLseParams p{C.const_data_ptr(), d.shared_cost ? 0 : d.n * d.m, h.const_data_ptr(), out.mutable_data_ptr(),
                 d.batch, d.n, d.m, inv_eps, C.scalar_type() == at::kDouble};
  SPARSEOPS_CUDA_CHECK(launch_row_lse(p, current_stream()));
}

void col_lse(const at::Tensor& C, const OtDims& d, const at::Tensor& h, at::Tensor& out, double inv_eps) {
  ColLseParams p{C.const_data_ptr(), d.shared_cost ? 0 : d.n * d.m, h.const_data_ptr(), out.mutable_data_ptr(),
                 d.batch, d.n, d.m, inv_eps, C.scalar_type() == at::kDouble};
  SPARSEOPS_CUDA_CHECK(launch_col_lse(p, current_stream()));
}

void update(const at::Tensor& L, at::Tensor& u, at::Tensor& h, const at::Tensor& lw, const at::Tensor& w,
            const at::Tensor* active, at::Tensor* err, double tau, double eps, bool balanced, bool apply) {
  PotentialUpdateParams p{L.const_data_ptr(), u.mutable_data_ptr(), h.mutable_data_ptr(), lw.const_data_ptr(),
                          w.const_data_ptr(), active != nullptr ? active->const_data_ptr<uint8_t>() : nullptr,
                          err != nullptr ? err->mutable_data_ptr() : nullptr, u.size(0), u.size(1), tau, eps, balanced,
                          apply, u.scalar_type() == at::kDouble};
  SPARSEOPS_CUDA_CHECK(launch_potential_update(p, current_stream()));
}

using SinkhornOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using LseFn = std::function<void(const at::Tensor& h, at::Tensor& out)>;

// The Sinkhorn loop shared by sinkhorn_log and sinkhorn_points; row_lse / col_lse run one pass each.
SinkhornOutputs sinkhorn_loop_cuda(const char* op, const at::Tensor& a, const at::Tensor& b, int64_t n, int64_t m,
                                   const LseFn& row_pass, const LseFn& col_pass, double eps, int64_t max_iter, double tol,
                                   int64_t check_every, std::optional<double> rho, const std::optional<at::Tensor>& g_init) {
  const int64_t batch = a.size(0), history_len = (max_iter + check_every - 1) / check_every;
  const double rho_v = rho.has_value() && std::isfinite(*rho) ? *rho : 0.0;
  const bool balanced = !(rho_v > 0);
  const double tau = ot_tau(eps, rho_v), inv_eps = 1.0 / eps;
  at::Tensor bb = b.contiguous();
  if (balanced) {
    const at::Tensor factor = check_balanced_masses(op, a, b);
    bb = bb * factor.to(b.device(), b.scalar_type()).unsqueeze(1);
  }
  const at::Tensor ac = a.contiguous();
  const at::Tensor la = log_weight(ac), lb = log_weight(bb);
  at::Tensor u = at::zeros_like(ac);
  at::Tensor v = g_init.has_value() ? (*g_init * inv_eps).contiguous() : at::zeros_like(bb);
  at::Tensor hf = with_log_weight(la, u).contiguous(), hg = with_log_weight(lb, v).contiguous();
  at::Tensor lr = at::empty_like(ac), lc = at::full_like(bb, -std::numeric_limits<double>::infinity());
  at::Tensor err = at::empty_like(ac);
  at::Tensor active = at::ones({batch}, ac.options().dtype(at::kByte));
  std::vector<uint8_t> active_host(batch, 1);
  std::vector<int64_t> iters(batch, max_iter);
  at::Tensor history = at::full({batch, history_len}, -1.0, ac.options().device(at::kCPU).dtype(at::kDouble));
  double* hist = history.mutable_data_ptr<double>();
  int64_t it = 0, checks = 0, live = batch;
  for (;;) {
    row_pass(hg, lr);
    const bool last = it == max_iter;
    if (it > 0 && (it % check_every == 0 || last)) {
      update(lr, u, hf, la, ac, nullptr, &err, tau, eps, balanced, false);
      const at::Tensor e = (balanced ? err.sum(1, false, at::kDouble) : err.amax(1).to(at::kDouble)).cpu();
      const double* ep = e.const_data_ptr<double>();
      for (int64_t k = 0; k < batch; ++k) {
        if (!active_host[k]) continue;
        hist[k * history_len + checks] = ep[k];
        if (ep[k] <= tol) {
          active_host[k] = 0;
          iters[k] = it;
          --live;
        }
      }
      ++checks;
      if (live == 0) break;
      active.copy_(at::from_blob(active_host.data(), {batch}, at::TensorOptions().dtype(at::kByte)), false);
    }
    if (last) break;
    update(lr, u, hf, la, ac, &active, nullptr, tau, eps, balanced, true);
    col_pass(hf, lc);
    update(lc, v, hg, lb, bb, &active, nullptr, tau, eps, balanced, true);
    ++it;
  }
  // The dual objective (as on CPU): P's mass from the last column pass.
  const at::Tensor ud = u.to(at::kDouble), vd = v.to(at::kDouble), ad = ac.to(at::kDouble), bd = bb.to(at::kDouble);
  at::Tensor phi;
  if (balanced) {
    phi = eps * ((ad * ud).nan_to_num(0.0).sum(1) + (bd * vd).nan_to_num(0.0).sum(1));
  } else {
    phi = rho_v * (ad * (1 - at::exp(-ud * (eps / rho_v)))).nan_to_num(0.0).sum(1) +
          rho_v * (bd * (1 - at::exp(-vd * (eps / rho_v)))).nan_to_num(0.0).sum(1);
  }
  const at::Tensor lcd = lc.to(at::kDouble);
  const at::Tensor mass = at::where((bd > 0) & (lcd > -INFINITY), bd * at::exp(vd + lcd), at::zeros_like(bd)).sum(1);
  const at::Tensor cost = (phi - eps * (mass - ad.sum(1) * bd.sum(1))).to(a.scalar_type());
  at::Tensor n_iter = at::from_blob(iters.data(), {batch}, at::TensorOptions().dtype(at::kLong)).to(a.device());
  (void)n;
  (void)m;
  return {u * eps, v * eps, cost, n_iter, history.to(a.device(), a.scalar_type())};
}

SinkhornOutputs sinkhorn_log_cuda(const at::Tensor& a, const at::Tensor& b, const at::Tensor& C, double eps,
                                  int64_t max_iter, double tol, int64_t check_every, std::optional<double> rho,
                                  const std::optional<at::Tensor>& g_init) {
  const SinkhornArgs args = check_sinkhorn_log_inputs(a, b, C, eps, max_iter, tol, check_every, rho, g_init);
  check_device_type("sinkhorn_log", "C", C, at::kCUDA);
  TORCH_CHECK(args.dims.batch <= 65535, "sinkhorn_log: expected at most 65535 batch entries on CUDA (got ",
              args.dims.batch, ")");
  const c10::cuda::OptionalCUDAGuard guard(C.device());
  check_problem_values("sinkhorn_log", a, b, C);
  const OtDims d = args.dims;
  const at::Tensor Cc = C.contiguous();
  const double inv_eps = 1.0 / eps;
  return sinkhorn_loop_cuda(
      "sinkhorn_log", a, b, d.n, d.m, [&](const at::Tensor& h, at::Tensor& out) { row_lse(Cc, d, h, out, inv_eps); },
      [&](const at::Tensor& h, at::Tensor& out) { col_lse(Cc, d, h, out, inv_eps); }, eps, max_iter, tol, check_every, rho,
      g_init);
}

SinkhornOutputs sinkhorn_points_cuda(const at::Tensor& x, const at::Tensor& y, const at::Tensor& a, const at::Tensor& b,
                                     double eps, int64_t p, int64_t max_iter, double tol, int64_t check_every,
                                     std::optional<double> rho) {
  constexpr const char* op = "sinkhorn_points";
  const PointDims d = check_point_shapes(op, x, y, a, b, p);
  check_eps(op, eps);
  TORCH_CHECK(max_iter >= 1, op, ": expected max_iter >= 1 (got ", max_iter, ")");
  TORCH_CHECK(check_every >= 1, op, ": expected check_every >= 1 (got ", check_every, ")");
  TORCH_CHECK(std::isfinite(tol) && tol >= 0, op, ": expected tol to be finite and >= 0 (got ", tol, ")");
  if (rho.has_value()) TORCH_CHECK(*rho > 0, op, ": expected rho > 0 (got ", *rho, "; None is balanced transport)");
  check_device_type(op, "x", x, at::kCUDA);
  TORCH_CHECK(d.batch <= 65535, op, ": expected at most 65535 batch entries on CUDA (got ", d.batch, ")");
  const c10::cuda::OptionalCUDAGuard guard(x.device());
  check_marginal_values(op, a, b);
  check_point_values(op, x, y);
  const at::Tensor xc = x.contiguous(), yc = y.contiguous();
  const auto pass = [&](bool rows) {
    return [&, rows](const at::Tensor& h, at::Tensor& out) {
      PointsLseParams q{xc.const_data_ptr(), yc.const_data_ptr(), h.const_data_ptr(), out.mutable_data_ptr(), d.batch, d.n,
                        d.m, d.d, static_cast<int>(p), 1.0 / eps, rows, x.scalar_type() == at::kDouble};
      SPARSEOPS_CUDA_CHECK(launch_points_lse(q, current_stream()));
    };
  };
  return sinkhorn_loop_cuda(op, a, b, d.n, d.m, pass(true), pass(false), eps, max_iter, tol, check_every, rho,
                            std::nullopt);
}

std::tuple<at::Tensor, at::Tensor> ot_points_grad_cuda(const at::Tensor& x, const at::Tensor& y, const at::Tensor& a,
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
  check_device_type(op, "x", x, at::kCUDA);
  const c10::cuda::OptionalCUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous(), yc = y.contiguous();
  const at::Tensor hf = with_log_weight(log_weight(a), f / eps).contiguous();
  const at::Tensor hg = with_log_weight(log_weight(b), g / eps).contiguous();
  at::Tensor gx = at::empty({d.batch, d.n, d.d}, x.options()), gy = at::empty({d.batch, d.m, d.d}, x.options());
  PointsGradParams q{xc.const_data_ptr(), yc.const_data_ptr(), hf.const_data_ptr(), hg.const_data_ptr(),
                     gx.mutable_data_ptr(), gy.mutable_data_ptr(), d.batch, d.n, d.m, d.d, static_cast<int>(p), 1.0 / eps,
                     x.scalar_type() == at::kDouble};
  SPARSEOPS_CUDA_CHECK(launch_points_grad(q, current_stream()));
  return {gx, gy};
}

at::Tensor ot_plan_cuda(const at::Tensor& a, const at::Tensor& b, const at::Tensor& C, const at::Tensor& f,
                        const at::Tensor& g, double eps) {
  const OtDims d = check_potential_inputs("ot_plan", a, b, C, f, g, eps);
  check_device_type("ot_plan", "C", C, at::kCUDA);
  const c10::cuda::OptionalCUDAGuard guard(C.device());
  const at::Tensor hf = with_log_weight(log_weight(a), f / eps).contiguous();
  const at::Tensor hg = with_log_weight(log_weight(b), g / eps).contiguous();
  const at::Tensor Cc = C.contiguous();
  at::Tensor P = at::empty({d.batch, d.n, d.m}, C.options());
  PlanParams p{Cc.const_data_ptr(), d.shared_cost ? 0 : d.n * d.m, hf.const_data_ptr(), hg.const_data_ptr(),
               P.mutable_data_ptr(), d.batch, d.n, d.m, 1.0 / eps, C.scalar_type() == at::kDouble};
  SPARSEOPS_CUDA_CHECK(launch_plan(p, current_stream()));
  return P;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ot_dual_cuda(const at::Tensor& a, const at::Tensor& b, const at::Tensor& C,
                                                            const at::Tensor& f, const at::Tensor& g, double eps) {
  const OtDims d = check_potential_inputs("ot_dual", a, b, C, f, g, eps);
  check_device_type("ot_dual", "C", C, at::kCUDA);
  const c10::cuda::OptionalCUDAGuard guard(C.device());
  const at::Tensor Cc = C.contiguous();
  const at::Tensor u = f / eps, v = g / eps;
  // row_i = sum_j b_j exp(u_i + v_j - C_ij/eps) = exp(u_i + LSE_j(log b_j + v_j - C_ij/eps)); col alike.
  const at::Tensor hg = with_log_weight(log_weight(b), v).contiguous(), hf = with_log_weight(log_weight(a), u).contiguous();
  at::Tensor lr = at::empty({d.batch, d.n}, C.options()), lc = at::empty({d.batch, d.m}, C.options());
  row_lse(Cc, d, hg, lr, 1.0 / eps);
  col_lse(Cc, d, hf, lc, 1.0 / eps);
  at::Tensor row = at::exp(u + lr), col = at::exp(v + lc);
  at::Tensor mass = at::where(a > 0, a * row, at::zeros_like(row)).sum(1);
  return {mass, row, col};
}

std::tuple<at::Tensor, at::Tensor> ot_sparse_plan_cuda(const at::Tensor& a, const at::Tensor& b, const at::Tensor& C,
                                                       const at::Tensor& f, const at::Tensor& g, double eps, int64_t k) {
  const OtDims d = check_ot_sparse_plan_inputs(a, b, C, f, g, eps, k);
  check_device_type("ot_sparse_plan", "C", C, at::kCUDA);
  const c10::cuda::OptionalCUDAGuard guard(C.device());
  TORCH_CHECK(d.batch <= 65535, "ot_sparse_plan: expected at most 65535 batch entries on CUDA (got ", d.batch, ")");
  // Radix selection per row (launch_sparse_plan): no n x m temporary; extra memory (n + m) scalars per entry.
  const at::Tensor hg = with_log_weight(log_weight(b), g / eps).contiguous();
  const at::Tensor hf = with_log_weight(log_weight(a), f / eps).contiguous();
  const at::Tensor Cc = C.contiguous();
  at::Tensor idx = at::empty({d.batch, d.n, k}, C.options().dtype(at::kLong));
  at::Tensor val = at::empty({d.batch, d.n, k}, C.options());
  SparsePlanParams p{Cc.const_data_ptr(), d.shared_cost ? 0 : d.n * d.m, hf.const_data_ptr(), hg.const_data_ptr(),
                     idx.mutable_data_ptr<int64_t>(), val.mutable_data_ptr(), d.batch, d.n, d.m, k, 1.0 / eps,
                     C.scalar_type() == at::kDouble};
  SPARSEOPS_CUDA_CHECK(launch_sparse_plan(p, current_stream()));
  return {idx, val};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ot_newton_cg_cuda(const at::Tensor& idx, const at::Tensor& val,
                                                                 const at::Tensor& row_diag, const at::Tensor& col_diag,
                                                                 const at::Tensor& rhs_f, const at::Tensor& rhs_g,
                                                                 double shift, int64_t max_iter, double tol) {
  check_ot_newton_cg_inputs(idx, val, row_diag, col_diag, rhs_f, rhs_g, shift, max_iter, tol);
  check_device_type("ot_newton_cg", "val", val, at::kCUDA);
  check_ot_newton_cg_idx_range(idx, col_diag.size(1));
  const c10::cuda::OptionalCUDAGuard guard(val.device());
  const int64_t B = idx.size(0), n = idx.size(1), k = idx.size(2), m = col_diag.size(1);
  const at::Tensor ic = idx.contiguous(), vc = val.contiguous();
  const at::Tensor df = row_diag + shift, dg = col_diag + shift;
  const at::Tensor dinv_f = at::where(df > 0, df.reciprocal(), at::ones_like(df));
  const at::Tensor dinv_g = at::where(dg > 0, dg.reciprocal(), at::ones_like(dg));
  const auto hvp = [&](const at::Tensor& pf, const at::Tensor& pg) {
    at::Tensor yf = (df * pf).contiguous(), yg = (dg * pg).contiguous();
    SparseHvpParams p{ic.const_data_ptr<int64_t>(), vc.const_data_ptr(), pf.const_data_ptr(), pg.const_data_ptr(),
                      yf.mutable_data_ptr(), yg.mutable_data_ptr(), B, n, m, k, val.scalar_type() == at::kDouble};
    SPARSEOPS_CUDA_CHECK(launch_sparse_hvp(p, current_stream()));
    return std::make_pair(yf, yg);
  };
  const auto dot = [](const at::Tensor& x1, const at::Tensor& y1, const at::Tensor& x2, const at::Tensor& y2) {
    return (x1 * y1).sum(1, false, at::kDouble) + (x2 * y2).sum(1, false, at::kDouble);
  };
  at::Tensor xf = at::zeros_like(rhs_f), xg = at::zeros_like(rhs_g);
  at::Tensor rf = rhs_f.clone(), rg = rhs_g.clone();
  at::Tensor zf = dinv_f * rf, zg = dinv_g * rg;
  at::Tensor pf = zf.contiguous(), pg = zg.contiguous();
  at::Tensor rz = dot(rf, zf, rg, zg);
  const at::Tensor stop = dot(rf, rf, rg, rg) * (tol * tol);
  at::Tensor active = dot(rf, rf, rg, rg) > stop;
  at::Tensor iters = at::zeros({B}, idx.options());
  for (int64_t it = 0; it < max_iter; ++it) {
    if (it % 8 == 0 && !active.any().item<bool>()) break;
    auto [qf, qg] = hvp(pf, pg);
    const at::Tensor pq = dot(pf, qf, pg, qg);
    const at::Tensor ok = active & (pq > 0);
    const at::Tensor alpha = at::where(ok, rz / pq, at::zeros_like(pq)).to(val.scalar_type()).unsqueeze(1);
    xf += alpha * pf;
    xg += alpha * pg;
    rf -= alpha * qf;
    rg -= alpha * qg;
    zf = dinv_f * rf;
    zg = dinv_g * rg;
    const at::Tensor rz_new = dot(rf, zf, rg, zg);
    const at::Tensor beta = at::where(ok, rz_new / rz, at::zeros_like(rz)).to(val.scalar_type()).unsqueeze(1);
    pf = (zf + beta * pf).contiguous();
    pg = (zg + beta * pg).contiguous();
    rz = at::where(ok, rz_new, rz);
    iters += ok.to(at::kLong);
    active = ok & (dot(rf, rf, rg, rg) > stop);
  }
  return {xf, xg, iters};
}

}  // namespace

TORCH_LIBRARY_IMPL(sparseops, CUDA, m) {
  m.impl("sinkhorn_log", &sinkhorn_log_cuda);
  m.impl("ot_plan", &ot_plan_cuda);
  m.impl("ot_dual", &ot_dual_cuda);
  m.impl("ot_sparse_plan", &ot_sparse_plan_cuda);
  m.impl("ot_newton_cg", &ot_newton_cg_cuda);
  m.impl("sinkhorn_points", &sinkhorn_points_cuda);
  m.impl("ot_points_grad", &ot_points_grad_cuda);
}

}  // namespace sparseops::ot
