#pragma once
// The int16 screen of codebook_lookup (CPUs with AVX2 but not AVX-512 BF16; lookup_avx2.cpp): VPMADDWD
// multiplies 16 pairs of int16 per instruction, twice the products of an fp32 FMA, so lookups with
// 16 <= D <= 4096 (lookup_cpu.cpp, Lookup::run) rank the codes on integer grids instead of fp32:
//   -2 z_i ~ sz_i zq_i (one grid per row),  c_k ~ sc cq_k (one grid for the codebook)
// (cosine: of the normalised vectors), with grids fine enough to rank like fp32 on spread data yet coarse
// enough that the int32 sum zq_i . cq_k over D dims is exact. The screen's expanded distance is then
// e = fma(float(zq . cq), float(sz_i sc), fp32 |c_k|^2 (cosine: 1)); the grids' error enters the row's
// candidate margin (quant_margin), and the exact float64 re-check decides as on every path.
// Host-only: plain arithmetic on doubles, tested through the lookup on every ISA path.
#include <cmath>
#include <cstdint>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace sparseops::codebook {

// What the int32 dot may reach: |zq . cq| <= |zq|_2 |cq|_2 (Cauchy-Schwarz, for every partial sum too) is
// kept below this, with room to spare for the rounding of the norms below.
constexpr double kDotBudget = 2147483647.0 * 0.999;

// The grids' bounds are chosen from the vectors' shapes, not their dimension alone: a vector whose
// largest |value| is m and whose L2 norm is n lies on a grid of step m / Q with |q|_2 <= Q n / m + sqrt(D) / 2
// (each value within half a step). The codebook takes Q_c = sqrt(budget) / (max_k |c_k|_2 / max |c|), so
// that every |cq_k|_2 <= ~sqrt(budget); each row then takes the Q_z that keeps |zq|_2 max |cq|_2 within
// the budget. For Gaussian-like data this is 2.5-3.5x finer than the worst case D Q^2 < 2^31 (every value
// at the extreme) would allow. Both bounds stay <= 2^15 - 1 (int16; VPMADDWD's pair sums then fit too).
// norm_over_max: |x|_2 / max_d |x_d| (1 for a zero vector).
inline double code_levels(double norm_over_max) {
  const double q = std::floor(std::sqrt(kDotBudget) / (norm_over_max * (1.0 + 1e-9)));
  return q < 32767.0 ? q : 32767.0;
}

// Bound on max_k |cq_k|_2 for the codebook's grid.
inline double grid_norm_bound(double levels, double norm_over_max, int64_t D) {
  return levels * norm_over_max * (1.0 + 1e-9) + 0.5 * std::sqrt(static_cast<double>(D));
}

// A row's grid bound given the codebook's max |cq|_2 (>= 0; the caller keeps D small enough for >= 1).
inline double row_levels(double norm_over_max, double max_code_grid_norm, int64_t D) {
  const double room = kDotBudget / max_code_grid_norm - 0.5 * std::sqrt(static_cast<double>(D));
  const double q = std::floor(room / (norm_over_max * (1.0 + 1e-9)));
  return q < 0.0 ? 0.0 : (q < 32767.0 ? q : 32767.0);
}

// The grid step that maps values of magnitude <= max_abs into [-Q, Q] (0 for an all-zero vector).
inline double grid_step(double max_abs, double levels) { return levels > 0.0 ? max_abs / levels : 0.0; }

// v on the grid: v / step rounded to nearest (one SSE2 conversion: this runs over the whole codebook per
// call); |v / step| <= Q (1 + 2^-50) <= 32767, so the result fits int16 as it is. 0 when inv_step is 0.
inline int16_t to_grid(float v, double inv_step) {
#if defined(__SSE2__)
  return static_cast<int16_t>(_mm_cvtsd_si32(_mm_set_sd(static_cast<double>(v) * inv_step)));
#else
  return static_cast<int16_t>(std::lrint(static_cast<double>(v) * inv_step));
#endif
}

// Bound on twice the error that the grids add to a row's e (for the candidate and for the best), with
// a = -2 z on the row's grid sz and the codes on the grid sc (each value within half a step, with slack
// for the rounding of v / step):
//   |a.c - a'.c'| <= sum |a_d| |c_d - c'_d| + |a_d - a'_d| |c'_d| <= sc/2 |a|_1 + sz/2 (max_k |c_k|_1 + D sc/2),
// plus what rounding the scale sz sc to fp32 (scale_f) changes in e: |sz sc - scale_f| |zq . cq|, with
// |zq . cq| < kDotBudget (large only when the scale underflows fp32: then every code stays a candidate).
inline double quant_margin(double sz, double sc, double a_l1, double max_c_l1, int64_t D, float scale_f) {
  const double d = static_cast<double>(D);
  const double grid = (0.5 * sc * a_l1 + 0.5 * sz * (max_c_l1 + 0.5 * d * sc)) * 1.0625;
  const double scale_err = std::fabs(sz * sc - static_cast<double>(scale_f)) + sz * sc * 0x1p-50;
  return 2.0 * grid + 2.0 * scale_err * kDotBudget;
}

}  // namespace sparseops::codebook
