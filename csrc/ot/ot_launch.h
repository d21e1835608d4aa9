#pragma once
// Launchers for the ot CUDA kernels (ot_kernel.cu): plain parameters, no torch types, so the device
// code compiles without torch headers. Each returns the launch's cudaError_t. `dbl` selects double
// (else float) for every floating-point pointer of the call. Index maths in int64.
#include <cuda_runtime_api.h>

#include <cstdint>

namespace sparseops::ot {

// Row log-sum-exp: out[b, i] = LSE_j (h[b, j] - C[b, i, j] * inv_eps) (-inf when every term is -inf).
// One block per (row, batch entry), online max/sum per thread, warp-shuffle then shared-memory merge.
struct RowLseParams {
  const void* C;       // [B or 1, n, m] contiguous
  int64_t c_bstride;   // n * m, or 0 for a shared C
  const void* h;       // [B, m]
  void* out;           // [B, n]
  int64_t batch, n, m;
  double inv_eps;
  bool dbl;
};
cudaError_t launch_row_lse(const RowLseParams& p, cudaStream_t stream);

// Column log-sum-exp: out[b, j] = LSE_i (h[b, i] - C[b, i, j] * inv_eps). Tiles of 32 columns x 8 row
// lanes per block: a warp reads 32 consecutive columns of one row (coalesced), each thread keeps an
// online max/sum for its column over its rows, the 8 lanes merge in shared memory.
struct ColLseParams {
  const void* C;
  int64_t c_bstride;
  const void* h;       // [B, n]
  void* out;           // [B, m]
  int64_t batch, n, m;
  double inv_eps;
  bool dbl;
};
cudaError_t launch_col_lse(const ColLseParams& p, cudaStream_t stream);

// The potential update after a log-sum-exp L (Sinkhorn half-iteration), elementwise over [B, len]:
//   err (if not null): w > 0 ? (balanced ? w |exp(u + L) - 1| : eps |-tau L - u|) : 0, from the old u;
//   if apply and active[b] (active null = all): u = -tau L; h = lw == -inf ? -inf : lw + u.
struct PotentialUpdateParams {
  const void* L;
  void* u;
  void* h;
  const void* lw;          // log-weights
  const void* w;           // weights (for the error)
  const uint8_t* active;   // [B] or null
  void* err;               // [B, len] or null
  int64_t batch, len;
  double tau, eps;
  bool balanced, apply, dbl;
};
cudaError_t launch_potential_update(const PotentialUpdateParams& p, cudaStream_t stream);

// P[b, i, j] = exp(hf[b, i] + hg[b, j] - C[b, i, j] * inv_eps), grid-stride over B n m.
struct PlanParams {
  const void* C;
  int64_t c_bstride;
  const void* hf;   // [B, n]
  const void* hg;   // [B, m]
  void* P;          // [B, n, m]
  int64_t batch, n, m;
  double inv_eps;
  bool dbl;
};
cudaError_t launch_plan(const PlanParams& p, cudaStream_t stream);

// Sparse Hessian-vector product of ot_newton_cg, without the diagonal terms:
//   yf[b, i] += sum_t val[b, i, t] xg[b, idx[b, i, t]];   yg[b, idx[b, i, t]] += val[b, i, t] xf[b, i] (atomics).
struct SparseHvpParams {
  const int64_t* idx;  // [B, n, k]
  const void* val;     // [B, n, k]
  const void* xf;      // [B, n]
  const void* xg;      // [B, m]
  void* yf;            // [B, n], accumulated into
  void* yg;            // [B, m], accumulated into
  int64_t batch, n, m, k;
  bool dbl;
};
cudaError_t launch_sparse_hvp(const SparseHvpParams& p, cudaStream_t stream);

// ot_sparse_plan without an n x m temporary: per row (one block), the k largest x_j = hg_j - C_ij inv_eps
// found by radix selection on their order-preserving integer keys (one pass over the row per key bit,
// from L1/L2), then written in no particular order: idx [B, n, k], val = exp(hf_i + x_j) (0 when hf_i is
// -inf). Ties at the k-th value are taken in arrival order (which of equal entries is kept may vary).
struct SparsePlanParams {
  const void* C;
  int64_t c_bstride;  // 0: C shared by the batch
  const void* hf;     // [B, n]
  const void* hg;     // [B, m]
  int64_t* idx;       // [B, n, k]
  void* val;          // [B, n, k]
  int64_t batch, n, m, k;
  double inv_eps;
  bool dbl;
};
cudaError_t launch_sparse_plan(const SparsePlanParams& p, cudaStream_t stream);
// Row (rows = true: out [B, n]) or column (out [B, m]) log-sum-exp of point clouds x [B, n, d], y [B, m, d],
// the costs |x_i - y_j|_p^p recomputed per entry (same kernels and layouts as the matrix versions).
struct PointsLseParams {
  const void* x;
  const void* y;
  const void* h;   // [B, m] (rows) or [B, n] (columns)
  void* out;
  int64_t batch, n, m, d;
  int p;
  double inv_eps;
  bool rows, dbl;
};
cudaError_t launch_points_lse(const PointsLseParams& p, cudaStream_t stream);

// gx [B, n, d] = sum_j P_ij dc/dx_i, gy [B, m, d] = sum_i P_ij dc/dy_j, P_ij = exp(hf_i + hg_j - c_ij inv_eps).
struct PointsGradParams {
  const void* x;
  const void* y;
  const void* hf;  // [B, n]
  const void* hg;  // [B, m]
  void* gx;
  void* gy;
  int64_t batch, n, m, d;
  int p;
  double inv_eps;
  bool dbl;
};
cudaError_t launch_points_grad(const PointsGradParams& p, cudaStream_t stream);

}  // namespace sparseops::ot
