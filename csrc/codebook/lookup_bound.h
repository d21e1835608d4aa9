#pragma once
// What the CPU and CUDA lookups share (host and device): the candidate margin of the fast screen, the
// exact float64 distance term, and the tie rule. Both screens rank codes by the expanded distance
// e = |c|^2 - 2 z.c in fp32 (possibly from bf16-rounded z and c) and keep every code within the margin
// of the row's best; the exact re-check then decides with add_sq_diff / better, so the two devices give
// the same indices and distances bit for bit.
#include <cmath>
#include <cstdint>

#include "common/host_device.h"

namespace sparseops::codebook {

// Bound on twice the error of the screen's e (candidate and best), for a row with |z|^2 = zz and
// max_k |c_k|^2 = maxc2, over D dims: fp32 accumulation with unit roundoff `unit` (2^-24 for IEEE fp32
// sums; 2^-23 for tensor-core accumulation, which may truncate) of |c|^2 and the D products
// (<= gamma (3 maxc2 + zz) each, with slack); what flushing denormals can change; and when z and c were
// rounded to bf16 first (`rounded`), bf16(a) bf16(b) = a b (1 + t), |t| <= 2^-7 + 2^-16, i.e. at most
// (2^-7 + 2^-16) 2 |z| |c| per code by Cauchy-Schwarz.
SPARSEOPS_HD double screen_margin(int64_t D, double unit, double maxc2, double zz, bool rounded) {
  const double d = static_cast<double>(D);
  const double flush = 0x1p-122 * (sqrt(d) * (sqrt(maxc2) + sqrt(zz)) + d);
  double bound = 4.0 * (d + 8.0) * unit * (3.0 * maxc2 + zz) * 1.0625 + flush;
  if (rounded) {
    constexpr double ub = 0x1p-8;
    bound += 2.0 * (2.0 * ub + ub * ub) * 2.0 * sqrt(zz) * sqrt(maxc2) * 1.0625;
  }
  return bound < 3.0e38 ? bound : 3.0e38;
}

// s + (a - b)^2 in float64, as separate correctly rounded operations on both devices (nvcc would
// otherwise contract to an FMA), so the exact re-check gives the same bits on CPU and GPU.
SPARSEOPS_HD double add_sq_diff(double s, float a, float b) {
#if defined(__CUDA_ARCH__)
  const double t = __dsub_rn(static_cast<double>(a), static_cast<double>(b));
  return __dadd_rn(s, __dmul_rn(t, t));
#else
  const double t = static_cast<double>(a) - static_cast<double>(b);
  return s + t * t;
#endif
}

// The re-check's order: a smaller exact distance wins, ties go to the lower index (best_k < 0: none yet).
SPARSEOPS_HD bool better(double d, int64_t k, double best, int64_t best_k) {
  return best_k < 0 || d < best || (d == best && k < best_k);
}

}  // namespace sparseops::codebook
