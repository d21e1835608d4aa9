#pragma once
// Scalar formulas of the entropic OT solvers, shared by the CPU and CUDA kernels.
//
// Conventions (GeomLoss's, "KL(P | a x b)" regularisation): potentials f [n], g [m] in cost units and
//   P_ij = a_i b_j exp((f_i + g_j - C_ij) / eps).
// Sinkhorn's f-update is f_i = -tau * eps * LSE_j(log b_j + (g_j - C_ij) / eps), the g-update alike,
// with tau = 1 (balanced) or rho / (rho + eps) (marginals relaxed by rho * KL(P1 | a)). A zero-mass
// entry has a finite potential and contributes nothing (its log-weight is -inf).
#include <cmath>

#include "common/host_device.h"

namespace sparseops::ot {

// The damping factor of the potential update: 1 for balanced transport (rho <= 0 means "none").
SPARSEOPS_HD double ot_tau(double eps, double rho) { return rho > 0 ? rho / (rho + eps) : 1.0; }

// The log-weight of a marginal entry: log(w), -inf for w == 0.
template <typename T>
SPARSEOPS_HD T ot_log_weight(T w) { return w > T(0) ? log(w) : -INFINITY; }

// h = log(w) + u (a scaled potential plus its log-weight), -inf for a zero-mass entry whatever u is
// (u may be +-inf for a row with no allowed pair: -inf + inf would be NaN).
template <typename T>
SPARSEOPS_HD T ot_h(T log_w, T u) { return log_w == -INFINITY ? T(-INFINITY) : log_w + u; }

// The dual objective's marginal term for one entry with mass w and scaled potential u = f / eps:
// balanced eps * w * u; unbalanced rho * w * (1 - exp(-f / rho)).
SPARSEOPS_HD double ot_phi(double w, double u, double eps, double rho) {
  if (!(w > 0)) return 0.0;
  return rho > 0 ? rho * w * (1.0 - exp(-u * eps / rho)) : eps * w * u;
}

}  // namespace sparseops::ot
