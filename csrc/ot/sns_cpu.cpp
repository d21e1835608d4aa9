// The Sinkhorn-Newton-Sparse kernels on CPU: ot_sparse_plan (the k largest entries of every row of the
// plan) and ot_newton_cg (conjugate gradient on the sparsified dual Hessian).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "common/cpu_features.h"
#include "ot/ot_checks.h"
#include "ot/ot_cpu_kernels.h"
#include "ot/ot_math.h"

namespace sparseops::ot {
namespace {

// One entry of a row: its log-value and column.
template <typename T>
struct Candidate {
  T value;
  int64_t col;
};

// The k largest x_j = h[j] - c[j] * inv_eps, j < m (1 <= k <= m; among equal values the lower column
// wins), written to pick in column order. Branch mispredictions, not compares, are what cost here (a
// sorted insertion buffer or nth_element on the row: ~10 ns an entry), so the passes over the row are
// SIMD or have predictable branches:
//   1. K.log_values stores the row's log-values in x and returns their maximum, top;
//   2. K.distance_buckets puts each entry in one of 256 buckets of its distance below top (monotone: a
//      larger x never lands in a later bucket), one byte each; a binary search with K.count_at_most
//      finds the bucket kb holding the k-th entry;
//   3. K.split_by_bucket lists the entries in earlier buckets (all taken, in column order) and those
//      in kb; nth_element on the latter alone picks the ones still needed in the selection order
//      (larger value, then lower column), and they are merged in by column.
// Extra memory: x holds m scalars, bucket m bytes, at_kb, cand and pick_kb up to m entries.
template <typename T>
void top_k_columns(const LseKernels<T>& K, const T* c, const T* h, T inv_eps, int64_t m, int64_t k, T* x,
                   uint8_t* bucket, std::vector<int64_t>& at_kb, std::vector<Candidate<T>>& cand,
                   std::vector<int64_t>& pick_kb, int64_t* pick) {
  const T top = K.log_values(c, h, inv_eps, x, m);
  K.distance_buckets(x, top, bucket, m);
  // kb = the smallest b with #{bucket <= b} >= k, by a binary search over the 256 byte values, each
  // probe one vector pass over the bytes; the entries in the buckets before kb are all taken.
  int lo = 0, hi = 255;
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (K.count_at_most(bucket, m, mid) >= k) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  const int kb = lo;
  const int64_t above = kb == 0 ? 0 : K.count_at_most(bucket, m, kb - 1), taken = above;
  const int64_t nc = K.split_by_bucket(bucket, m, kb, pick, at_kb.data());
  for (int64_t t = 0; t < nc; ++t) cand[t] = {x[at_kb[t]], at_kb[t]};
  const auto before = [](const Candidate<T>& p, const Candidate<T>& q) {
    return p.value > q.value || (p.value == q.value && p.col < q.col);
  };
  const int64_t need = k - above;
  pick_kb.clear();
  if (need < nc) {  // the best `need` of bucket kb, then back into column order
    std::nth_element(cand.begin(), cand.begin() + (need - 1), cand.begin() + nc, before);
    for (int64_t t = 0; t < need; ++t) pick_kb.push_back(cand[t].col);
    std::sort(pick_kb.begin(), pick_kb.end());
  } else {
    for (int64_t t = 0; t < nc; ++t) pick_kb.push_back(cand[t].col);
  }
  // Merge the two column-ordered lists from the back into pick (taken + need = k slots).
  int64_t p = taken - 1, q = need - 1;
  for (int64_t out = k - 1; q >= 0; --out) pick[out] = (p >= 0 && pick[p] > pick_kb[q]) ? pick[p--] : pick_kb[q--];
}

// idx[e, i, :] = the k columns with the largest P_ij in row i (in column order; among equal values the
// lower column is kept), val = those P_ij: top_k_columns on each row's log-values, no sorting of the
// row. Rows of zero mass get val = 0. Extra memory per thread: m + k scalars, m bytes and up to 2 m
// (value, column) pairs or columns.
std::tuple<at::Tensor, at::Tensor> ot_sparse_plan_cpu(const at::Tensor& a, const at::Tensor& b, const at::Tensor& C,
                                                      const at::Tensor& f, const at::Tensor& g, double eps, int64_t k) {
  const OtDims d = check_ot_sparse_plan_inputs(a, b, C, f, g, eps, k);
  check_device_type("ot_sparse_plan", "C", C, at::kCPU);
  const at::Tensor ac = a.contiguous(), bc = b.contiguous(), Cc = C.contiguous(), fc = f.contiguous(), gc = g.contiguous();
  at::Tensor idx = at::empty({d.batch, d.n, k}, C.options().dtype(at::kLong));
  at::Tensor val = at::empty({d.batch, d.n, k}, C.options());
  const auto run = [&](auto tag) {
    using T = decltype(tag);
    const T inv_eps = static_cast<T>(1.0 / eps);
    const int64_t cstride = d.shared_cost ? 0 : d.n * d.m;
    const LseKernels<T> K = lse_kernels<T>();
    for (int64_t e = 0; e < d.batch; ++e) {
      const T* ap = ac.const_data_ptr<T>() + e * d.n;
      const T* bp = bc.const_data_ptr<T>() + e * d.m;
      const T* fp = fc.const_data_ptr<T>() + e * d.n;
      const T* gp = gc.const_data_ptr<T>() + e * d.m;
      const T* cp = Cc.const_data_ptr<T>() + e * cstride;
      std::vector<T> hg(d.m);
      for (int64_t j = 0; j < d.m; ++j) hg[j] = ot_h(ot_log_weight<T>(bp[j]), gp[j] * inv_eps);
      at::parallel_for(0, d.n, ot_row_grain(d.n, d.m, 4096), [&](int64_t i0, int64_t i1) {
        std::vector<T> x(d.m);
        std::vector<uint8_t> bucket(d.m);
        std::vector<int64_t> at_kb(d.m);
        std::vector<Candidate<T>> cand(d.m);
        std::vector<int64_t> pick_kb;
        pick_kb.reserve(d.m);
        std::vector<T> picked(k);
        for (int64_t i = i0; i < i1; ++i) {
          const T* ci = cp + i * d.m;
          int64_t* io = idx.mutable_data_ptr<int64_t>() + (e * d.n + i) * k;
          T* vo = val.mutable_data_ptr<T>() + (e * d.n + i) * k;
          top_k_columns<T>(K, ci, hg.data(), inv_eps, d.m, k, x.data(), bucket.data(), at_kb, cand, pick_kb, io);
          const T hi = ot_h(ot_log_weight<T>(ap[i]), fp[i] * inv_eps);
          if (hi == -std::numeric_limits<T>::infinity()) {
            std::fill(vo, vo + k, T(0));
          } else {  // the values in one vector pass (a scalar exp each was ~40% of the op at k = 64, m = 300)
            for (int64_t t = 0; t < k; ++t) picked[t] = x[io[t]];
            K.exp_shifted(picked.data(), hi, vo, k);
          }
        }
      });
    }
  };
  AT_DISPATCH_SWITCH(C.scalar_type(), "ot_sparse_plan", AT_DISPATCH_CASE(at::kFloat, [&] { run(float{}); })
                                                            AT_DISPATCH_CASE(at::kDouble, [&] { run(double{}); }));
  return {idx, val};
}

// S = the sparse plan of one batch entry held twice, so that both halves of M x are gathers (a scatter
// into y serialises on its stores): by rows as given (ELL, k per row) and by columns (CSR of S^T, built
// by a counting sort). Indices are int32 (n k and m below 2^31, checked). Extra memory: n k (4 + 4 + 8) bytes
// plus 8 (m + 1); each thread keeps its copy between calls (thread_hessian), as allocating and faulting in
// fresh pages was most of a short solve's set-up.
template <typename T>
struct SparseHessian {
  int64_t n = 0, m = 0, k = 0;
  const T* val = nullptr;      // [n, k], as given
  std::vector<int32_t> col;    // [n, k]
  std::vector<int32_t> start;  // [m + 2]: column j's entries are t in [start[j], start[j + 1])
  std::vector<int32_t> fill;   // [m]: the counting sort's next free slot per column
  std::vector<int32_t> row;    // [n k]
  std::vector<T> tval;         // [n k]

  // Returns false, leaving S unusable, when an index is outside [0, m): the range check rides on the
  // counting pass instead of costing the caller a pass of its own.
  bool build(const int64_t* idx, const T* v, int64_t n_, int64_t m_, int64_t k_) {
    n = n_, m = m_, k = k_, val = v;
    const int64_t nnz = n * k;
    col.resize(nnz);
    row.resize(nnz);
    tval.resize(nnz);
    // Column counts; an index outside [0, m) is clamped to m and counted in the extra slot start[m + 1].
    start.assign(m + 2, 0);
    for (int64_t t = 0; t < nnz; ++t) {
      const uint64_t j = std::min(static_cast<uint64_t>(idx[t]), static_cast<uint64_t>(m));
      col[t] = static_cast<int32_t>(j);
      ++start[j + 1];
    }
    if (start[m + 1] != 0) return false;
    for (int64_t j = 0; j < m; ++j) start[j + 1] += start[j];
    fill.assign(start.begin(), start.begin() + m);
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t t = 0; t < k; ++t) {
        const int32_t p = fill[col[i * k + t]]++;
        row[p] = static_cast<int32_t>(i);
        tval[p] = v[i * k + t];
      }
    }
    return true;
  }

  // Frees the buffers of a large problem rather than holding them in an idle thread.
  void release_if_larger_than(size_t bytes) {
    if ((col.capacity() + row.capacity()) * sizeof(int32_t) + tval.capacity() * sizeof(T) > bytes) *this = {};
  }

  // out = S y (y: [m], out: [n]).
  void times(const T* y, T* out) const {
    for (int64_t i = 0; i < n; ++i) out[i] = gather_dot(val + i * k, col.data() + i * k, k, y);
  }

  // out = S^T u (u: [n], out: [m]).
  void transpose_times(const T* u, T* out) const {
    for (int64_t j = 0; j < m; ++j) {
      out[j] = gather_dot(tval.data() + start[j], row.data() + start[j], start[j + 1] - start[j], u);
    }
  }

  // sum_p S_pj^2 w[p] for every column j (the Schur complement's diagonal).
  void column_square_sums(const T* w, T* out) const {
    for (int64_t j = 0; j < m; ++j) {
      T s0 = 0, s1 = 0;  // two chains: one waits an add latency per entry
      int32_t p = start[j];
      for (; p + 2 <= start[j + 1]; p += 2) {
        s0 += tval[p] * tval[p] * w[row[p]];
        s1 += tval[p + 1] * tval[p + 1] * w[row[p + 1]];
      }
      if (p < start[j + 1]) s0 += tval[p] * tval[p] * w[row[p]];
      out[j] = s0 + s1;
    }
  }

  // sum_t v[t] x[at[t]], in four independent chains (one chain waits an FMA latency per entry).
  static T gather_dot(const T* v, const int32_t* at, int64_t len, const T* x) {
    T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int64_t t = 0;
    for (; t + 4 <= len; t += 4) {
      s0 += v[t] * x[at[t]];
      s1 += v[t + 1] * x[at[t + 1]];
      s2 += v[t + 2] * x[at[t + 2]];
      s3 += v[t + 3] * x[at[t + 3]];
    }
    for (; t < len; ++t) s0 += v[t] * x[at[t]];
    return (s0 + s1) + (s2 + s3);
  }
};

template <typename T>
SparseHessian<T>& thread_hessian() {
  thread_local SparseHessian<T> S;
  return S;
}

// Solves (M + shift I) x = rhs, M = [[diag(rd), S], [S^T, diag(cd)]], per batch entry, on the Schur
// complement of the row block: with Dr = diag(rd) + shift and Dc = diag(cd) + shift,
//   (Dc - S^T Dr^-1 S) x_g = rhs_g - S^T Dr^-1 rhs_f,   x_f = Dr^-1 (rhs_f - S x_g),
// by Jacobi-preconditioned conjugate gradient from x_g = 0. x_f solves its rows exactly, so the full
// residual is the Schur one: the stop is ||r||_2 <= tol ||rhs||_2 (both halves of rhs) or max_iter
// steps. CG on the Schur complement takes about half the iterations of CG on the whole system (whose
// Jacobi-preconditioned spectrum pairs 1 +- s), each with the same two products (S, S^T). M is
// symmetric positive semi-definite (diagonally dominant when rd, cd are the full plan's marginals and
// S <= P entrywise); shift > 0 fixes the gauge (the direction (1, -1), M's null vector when S is the
// full plan) and bounds the condition number. A row with rd + shift = 0 gets x_f = 0.
// Extra memory: 2 n + 6 m scalars and the SparseHessian (~16 n k bytes) per thread; a thread keeps its
// SparseHessian for the next call when it is at most 8 MiB.
std::tuple<at::Tensor, at::Tensor, at::Tensor> ot_newton_cg_cpu(const at::Tensor& idx, const at::Tensor& val,
                                                                const at::Tensor& row_diag, const at::Tensor& col_diag,
                                                                const at::Tensor& rhs_f, const at::Tensor& rhs_g,
                                                                double shift, int64_t max_iter, double tol) {
  check_ot_newton_cg_inputs(idx, val, row_diag, col_diag, rhs_f, rhs_g, shift, max_iter, tol);
  check_device_type("ot_newton_cg", "val", val, at::kCPU);
  const int64_t B = idx.size(0), n = idx.size(1), k = idx.size(2), m = col_diag.size(1);
  TORCH_CHECK(n * k <= std::numeric_limits<int32_t>::max() && m < std::numeric_limits<int32_t>::max(),
              "ot_newton_cg: expected n * k and m below 2^31 (got n=", n, ", k=", k, ", m=", m, ")");
  const at::Tensor ic = idx.contiguous(), vc = val.contiguous(), rdc = row_diag.contiguous(), cdc = col_diag.contiguous();
  const at::Tensor rfc = rhs_f.contiguous(), rgc = rhs_g.contiguous();
  at::Tensor xf = at::empty({B, n}, val.options()), xg = at::empty({B, m}, val.options());
  at::Tensor iters = at::zeros({B}, val.options().dtype(at::kLong));
  std::atomic<bool> idx_out_of_range{false};
  const auto run = [&](auto tag) {
    using T = decltype(tag);
    at::parallel_for(0, B, 1, [&](int64_t e0, int64_t e1) {
      std::vector<T> dr_inv(n), tmp(n), y(m), r(m), z(m), p(m), q(m), dinv(m);
      SparseHessian<T>& S = thread_hessian<T>();
      for (int64_t e = e0; e < e1; ++e) {
        if (!S.build(ic.const_data_ptr<int64_t>() + e * n * k, vc.const_data_ptr<T>() + e * n * k, n, m, k)) {
          idx_out_of_range = true;
          break;
        }
        const T* rd = rdc.const_data_ptr<T>() + e * n;
        const T* cd = cdc.const_data_ptr<T>() + e * m;
        const T* bf = rfc.const_data_ptr<T>() + e * n;
        const T* bg = rgc.const_data_ptr<T>() + e * m;
        const T sh = static_cast<T>(shift);
        double rhs_norm2 = 0;
        for (int64_t i = 0; i < n; ++i) {
          dr_inv[i] = rd[i] + sh > 0 ? T(1) / (rd[i] + sh) : T(0);
          tmp[i] = dr_inv[i] * bf[i];
          rhs_norm2 += static_cast<double>(bf[i]) * bf[i];
        }
        S.transpose_times(tmp.data(), r.data());  // r = Schur rhs (y = 0)
        S.column_square_sums(dr_inv.data(), dinv.data());
        for (int64_t j = 0; j < m; ++j) {
          r[j] = bg[j] - r[j];
          rhs_norm2 += static_cast<double>(bg[j]) * bg[j];
          const T diag = cd[j] + sh - dinv[j];
          dinv[j] = diag > 0 ? T(1) / diag : T(1);
        }
        const double stop2 = tol * tol * rhs_norm2;
        std::fill(y.begin(), y.end(), T(0));
        double rz = 0, rr = 0;
        for (int64_t j = 0; j < m; ++j) {
          z[j] = dinv[j] * r[j];
          p[j] = z[j];
          rz += static_cast<double>(r[j]) * z[j];
          rr += static_cast<double>(r[j]) * r[j];
        }
        int64_t it = 0;
        while (it < max_iter && rr > stop2) {
          S.times(p.data(), tmp.data());  // q = (Dc - S^T Dr^-1 S) p
          for (int64_t i = 0; i < n; ++i) tmp[i] *= dr_inv[i];
          S.transpose_times(tmp.data(), q.data());
          double pq = 0;
          for (int64_t j = 0; j < m; ++j) {
            q[j] = (cd[j] + sh) * p[j] - q[j];
            pq += static_cast<double>(p[j]) * q[j];
          }
          if (!(pq > 0)) break;  // numerically singular direction: keep what was reached
          const T alpha = static_cast<T>(rz / pq);
          double rz_new = 0;
          rr = 0;
          for (int64_t j = 0; j < m; ++j) {
            y[j] += alpha * p[j];
            r[j] -= alpha * q[j];
            z[j] = dinv[j] * r[j];
            rz_new += static_cast<double>(r[j]) * z[j];
            rr += static_cast<double>(r[j]) * r[j];
          }
          const T beta = static_cast<T>(rz_new / rz);
          rz = rz_new;
          for (int64_t j = 0; j < m; ++j) p[j] = z[j] + beta * p[j];
          ++it;
        }
        T* of = xf.mutable_data_ptr<T>() + e * n;
        S.times(y.data(), tmp.data());
        for (int64_t i = 0; i < n; ++i) of[i] = dr_inv[i] * (bf[i] - tmp[i]);
        std::copy(y.begin(), y.end(), xg.mutable_data_ptr<T>() + e * m);
        iters.mutable_data_ptr<int64_t>()[e] = it;
      }
      S.release_if_larger_than(size_t{8} << 20);
    });
  };
  AT_DISPATCH_SWITCH(val.scalar_type(), "ot_newton_cg", AT_DISPATCH_CASE(at::kFloat, [&] { run(float{}); })
                                                            AT_DISPATCH_CASE(at::kDouble, [&] { run(double{}); }));
  if (idx_out_of_range) check_ot_newton_cg_idx_range(idx, m);  // raises, naming the bad range
  return {xf, xg, iters};
}

}  // namespace

TORCH_LIBRARY_IMPL(sparseops, CPU, m) {
  m.impl("ot_sparse_plan", &ot_sparse_plan_cpu);
  m.impl("ot_newton_cg", &ot_newton_cg_cpu);
}

}  // namespace sparseops::ot
