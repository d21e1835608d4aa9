// The ot CUDA kernels (launchers declared in ot_launch.h). float and double; accurate expf/exp and
// logf/log (no fast math). Log-sum-exps are online (running max m and sum s of exp(x - m)): one read of
// C per pass, one exp per entry except when the running maximum grows.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "ot/ot_launch.h"

namespace sparseops::ot {
namespace {

template <typename T> __device__ __forceinline__ T dexp(T x);
template <> __device__ __forceinline__ float dexp<float>(float x) { return expf(x); }
template <> __device__ __forceinline__ double dexp<double>(double x) { return exp(x); }
template <typename T> __device__ __forceinline__ T dlog(T x);
template <> __device__ __forceinline__ float dlog<float>(float x) { return logf(x); }
template <> __device__ __forceinline__ double dlog<double>(double x) { return log(x); }

template <typename T>
__device__ __forceinline__ void lse_push(T& mx, T& s, T x) {
  if (!(x > T(-INFINITY))) return;  // -inf (forbidden pair or zero mass) contributes nothing
  if (x > mx) {
    s = s * dexp(mx - x) + T(1);
    mx = x;
  } else {
    s += dexp(x - mx);
  }
}

template <typename T>
__device__ __forceinline__ void lse_merge(T& mx, T& s, T mx2, T s2) {
  if (!(mx2 > T(-INFINITY))) return;
  if (!(mx > T(-INFINITY))) {
    mx = mx2;
    s = s2;
  } else if (mx2 > mx) {
    s = s * dexp(mx - mx2) + s2;
    mx = mx2;
  } else {
    s += s2 * dexp(mx2 - mx);
  }
}

template <typename T>
__device__ __forceinline__ void warp_lse(T& mx, T& s) {
  for (int off = 16; off > 0; off >>= 1) {
    const T m2 = __shfl_down_sync(0xffffffffu, mx, off);
    const T s2 = __shfl_down_sync(0xffffffffu, s, off);
    lse_merge(mx, s, m2, s2);
  }
}

// Where the kernels read costs: a matrix, or point clouds (recomputed per entry: memory O(n + m)).
template <typename T>
struct MatrixCost {
  const T* C;
  int64_t bstride, m;
  __device__ __forceinline__ T operator()(int64_t b, int64_t i, int64_t j) const { return C[b * bstride + i * m + j]; }
};

template <typename T>
struct PointCost {
  const T* x;  // [B, n, d]
  const T* y;  // [B, m, d]
  int64_t n, m, d;
  int p;
  __device__ __forceinline__ T operator()(int64_t b, int64_t i, int64_t j) const {
    const T* xi = x + (b * n + i) * d;
    const T* yj = y + (b * m + j) * d;
    T s = T(0);
    for (int64_t k = 0; k < d; ++k) {
      const T t = xi[k] - yj[k];
      s += p == 2 ? t * t : fabs(t);
    }
    return s;
  }
};

constexpr int kRowThreads = 256;

template <typename T, typename Cost>
__global__ void row_lse_kernel(Cost cost, const T* __restrict__ h, T* __restrict__ out, int64_t n, int64_t m, T inv_eps) {
  const int64_t i = blockIdx.x, b = blockIdx.y;
  const T* hb = h + b * m;
  T mx = T(-INFINITY), s = T(0);
  for (int64_t j = threadIdx.x; j < m; j += blockDim.x) lse_push(mx, s, hb[j] - cost(b, i, j) * inv_eps);
  warp_lse(mx, s);
  __shared__ T sm[kRowThreads / 32], ss[kRowThreads / 32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    sm[warp] = mx;
    ss[warp] = s;
  }
  __syncthreads();
  if (warp == 0) {
    mx = lane < kRowThreads / 32 ? sm[lane] : T(-INFINITY);
    s = lane < kRowThreads / 32 ? ss[lane] : T(0);
    warp_lse(mx, s);
    if (lane == 0) out[b * n + i] = mx > T(-INFINITY) ? mx + dlog(s) : T(-INFINITY);
  }
}

constexpr int kColTile = 32, kColLanes = 8;

template <typename T, typename Cost>
__global__ void col_lse_kernel(Cost cost, const T* __restrict__ h, T* __restrict__ out, int64_t n, int64_t m, T inv_eps) {
  const int64_t b = blockIdx.y;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kColTile + threadIdx.x;
  const T* hb = h + b * n;
  T mx = T(-INFINITY), s = T(0);
  if (j < m) {
    for (int64_t i = threadIdx.y; i < n; i += kColLanes) {
      const T hi = hb[i];
      if (hi > T(-INFINITY)) lse_push(mx, s, hi - cost(b, i, j) * inv_eps);
    }
  }
  __shared__ T sm[kColLanes][kColTile + 1], ss[kColLanes][kColTile + 1];
  sm[threadIdx.y][threadIdx.x] = mx;
  ss[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && j < m) {
    for (int r = 1; r < kColLanes; ++r) lse_merge(mx, s, sm[r][threadIdx.x], ss[r][threadIdx.x]);
    out[b * m + j] = mx > T(-INFINITY) ? mx + dlog(s) : T(-INFINITY);
  }
}

template <typename T>
__global__ void potential_update_kernel(PotentialUpdateParams p) {
  const T* L = static_cast<const T*>(p.L);
  T* u = static_cast<T*>(p.u);
  T* h = static_cast<T*>(p.h);
  const T* lw = static_cast<const T*>(p.lw);
  const T* w = static_cast<const T*>(p.w);
  T* err = static_cast<T*>(p.err);
  const T tau = static_cast<T>(p.tau);
  const int64_t total = p.batch * p.len;
  for (int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; t < total; t += (int64_t)gridDim.x * blockDim.x) {
    const int64_t b = t / p.len;
    if (err != nullptr) {
      T e = T(0);
      if (w[t] > T(0)) {
        e = p.balanced ? w[t] * fabs(dexp(u[t] + L[t]) - T(1)) : static_cast<T>(p.eps) * fabs(-tau * L[t] - u[t]);
      }
      err[t] = e;
    }
    if (p.apply && (p.active == nullptr || p.active[b] != 0)) {
      const T nu = -tau * L[t];
      u[t] = nu;
      h[t] = lw[t] > T(-INFINITY) ? lw[t] + nu : T(-INFINITY);
    }
  }
}

template <typename T>
__global__ void plan_kernel(const T* __restrict__ C, int64_t c_bstride, const T* __restrict__ hf, const T* __restrict__ hg,
                            T* __restrict__ P, int64_t batch, int64_t n, int64_t m, T inv_eps) {
  const int64_t total = batch * n * m;
  for (int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; t < total; t += (int64_t)gridDim.x * blockDim.x) {
    const int64_t b = t / (n * m), ij = t % (n * m), i = ij / m, j = ij % m;
    P[t] = dexp(hf[b * n + i] + (hg[b * m + j] - C[b * c_bstride + ij] * inv_eps));
  }
}

// Point-cloud gradients: thread per (b, i) for gx (loop over j), thread per (b, j) for gy (loop over i);
// P_ij = exp(hf_i + hg_j - c_ij inv_eps), dc/dx = 2 (x - y) (p = 2) or sign(x - y) (p = 1), dc/dy = -dc/dx.
template <typename T>
__global__ void points_grad_kernel(PointCost<T> cost, const T* __restrict__ hf, const T* __restrict__ hg, T* __restrict__ out,
                                   int64_t batch, T inv_eps, bool rows) {
  const int64_t outer = rows ? cost.n : cost.m, inner = rows ? cost.m : cost.n;
  for (int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; t < batch * outer; t += (int64_t)gridDim.x * blockDim.x) {
    const int64_t b = t / outer, o = t % outer;
    T* acc = out + t * cost.d;
    for (int64_t k = 0; k < cost.d; ++k) acc[k] = T(0);
    const T ho = rows ? hf[b * cost.n + o] : hg[b * cost.m + o];
    if (!(ho > T(-INFINITY))) continue;
    for (int64_t q = 0; q < inner; ++q) {
      const int64_t i = rows ? o : q, j = rows ? q : o;
      const T hq = rows ? hg[b * cost.m + j] : hf[b * cost.n + i];
      const T P = dexp(ho + (hq - cost(b, i, j) * inv_eps));
      if (P == T(0)) continue;
      const T* xi = cost.x + (b * cost.n + i) * cost.d;
      const T* yj = cost.y + (b * cost.m + j) * cost.d;
      for (int64_t k = 0; k < cost.d; ++k) {
        const T diff = xi[k] - yj[k];
        const T dc = cost.p == 2 ? T(2) * diff : T((diff > T(0)) - (diff < T(0)));
        acc[k] += rows ? P * dc : -P * dc;
      }
    }
  }
}

template <typename T>
__global__ void sparse_hvp_kernel(const int64_t* __restrict__ idx, const T* __restrict__ val, const T* __restrict__ xf,
                                  const T* __restrict__ xg, T* __restrict__ yf, T* __restrict__ yg, int64_t batch,
                                  int64_t n, int64_t m, int64_t k) {
  const int64_t rows = batch * n;
  for (int64_t r = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; r < rows; r += (int64_t)gridDim.x * blockDim.x) {
    const int64_t b = r / n;
    T acc = T(0);
    const T x = xf[r];
    for (int64_t t = 0; t < k; ++t) {
      const int64_t j = idx[r * k + t];
      const T v = val[r * k + t];
      acc += v * xg[b * m + j];
      atomicAdd(yg + b * m + j, v * x);
    }
    yf[r] += acc;
  }
}

// Order-preserving unsigned keys of floating-point values (larger value, larger key; -inf lowest).
template <typename T> struct OrderedKey;
template <> struct OrderedKey<float> {
  using U = unsigned int;
  static __device__ __forceinline__ U of(float x) {
    const U u = __float_as_uint(x);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  }
};
template <> struct OrderedKey<double> {
  using U = unsigned long long;
  static __device__ __forceinline__ U of(double x) {
    const U u = static_cast<U>(__double_as_longlong(x));
    return (u >> 63) ? ~u : (u | (1ull << 63));
  }
};

constexpr int kSelectThreads = 256;

// One block per (row i, batch entry b); see SparsePlanParams. Radix selection from the top bit: `prefix`
// holds the decided high bits of the k-th largest key and `need` how many entries with exactly that key
// prefix are still to be taken; every thread reads the same block-wide counts, so all agree.
template <typename T>
__global__ void sparse_plan_kernel(const T* __restrict__ C, int64_t c_bstride, const T* __restrict__ hf,
                                   const T* __restrict__ hg, int64_t* __restrict__ idx_out, T* __restrict__ val_out,
                                   int64_t n, int64_t m, int64_t k, T inv_eps) {
  using Key = OrderedKey<T>;
  using U = typename Key::U;
  const int64_t i = blockIdx.x, b = blockIdx.y;
  const T* c = C + b * c_bstride + i * m;
  const T* h = hg + b * m;
  __shared__ unsigned long long count, n_gt, n_eq;
  U prefix = 0, decided = 0;
  int64_t need = k;
  for (int bit = static_cast<int>(sizeof(U) * 8) - 1; bit >= 0; --bit) {
    const U mask = U(1) << bit;
    if (threadIdx.x == 0) count = 0;
    __syncthreads();
    unsigned long long local = 0;
    for (int64_t j = threadIdx.x; j < m; j += blockDim.x) {
      const U key = Key::of(h[j] - c[j] * inv_eps);
      local += ((key & decided) == prefix && (key & mask)) ? 1 : 0;
    }
    if (local != 0) atomicAdd(&count, local);
    __syncthreads();
    const int64_t above = static_cast<int64_t>(count);
    if (above >= need) {
      prefix |= mask;  // the k-th largest has this bit set
    } else {
      need -= above;   // all of those are taken; look among the ones with the bit clear
    }
    decided |= mask;
    __syncthreads();  // every thread has read count before it is reset
  }
  // prefix is now the k-th largest key: the k - need entries above it all go, and `need` of those equal to it.
  if (threadIdx.x == 0) {
    n_gt = 0;
    n_eq = 0;
  }
  __syncthreads();
  const T hi = hf[b * n + i];
  int64_t* io = idx_out + (b * n + i) * k;
  T* vo = val_out + (b * n + i) * k;
  for (int64_t j = threadIdx.x; j < m; j += blockDim.x) {
    const T x = h[j] - c[j] * inv_eps;
    const U key = Key::of(x);
    int64_t slot = -1;
    if (key > prefix) {
      slot = static_cast<int64_t>(atomicAdd(&n_gt, 1ull));
    } else if (key == prefix) {
      const int64_t e = static_cast<int64_t>(atomicAdd(&n_eq, 1ull));
      if (e < need) slot = k - need + e;
    }
    if (slot >= 0) {
      io[slot] = j;
      vo[slot] = hi > T(-INFINITY) ? dexp(hi + x) : T(0);
    }
  }
}

unsigned int blocks_for(int64_t n, int block) {
  int64_t g = (n + block - 1) / block;
  if (g < 1) g = 1;
  return static_cast<unsigned int>(g > 65535 * 16 ? 65535 * 16 : g);
}

template <typename F>
cudaError_t by_dtype(bool dbl, F&& f) {
  if (dbl) {
    f(double{});
  } else {
    f(float{});
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_row_lse(const RowLseParams& p, cudaStream_t stream) {
  if (p.batch == 0 || p.n == 0) return cudaSuccess;
  if (p.batch > 65535) return cudaErrorInvalidConfiguration;
  return by_dtype(p.dbl, [&](auto tag) {
    using T = decltype(tag);
    const MatrixCost<T> cost{static_cast<const T*>(p.C), p.c_bstride, p.m};
    row_lse_kernel<T><<<dim3(static_cast<unsigned>(p.n), static_cast<unsigned>(p.batch)), kRowThreads, 0, stream>>>(
        cost, static_cast<const T*>(p.h), static_cast<T*>(p.out), p.n, p.m, static_cast<T>(p.inv_eps));
  });
}

cudaError_t launch_col_lse(const ColLseParams& p, cudaStream_t stream) {
  if (p.batch == 0 || p.m == 0) return cudaSuccess;
  if (p.batch > 65535) return cudaErrorInvalidConfiguration;
  return by_dtype(p.dbl, [&](auto tag) {
    using T = decltype(tag);
    const dim3 grid(static_cast<unsigned>((p.m + kColTile - 1) / kColTile), static_cast<unsigned>(p.batch));
    const MatrixCost<T> cost{static_cast<const T*>(p.C), p.c_bstride, p.m};
    col_lse_kernel<T><<<grid, dim3(kColTile, kColLanes), 0, stream>>>(cost, static_cast<const T*>(p.h),
                                                                      static_cast<T*>(p.out), p.n, p.m,
                                                                      static_cast<T>(p.inv_eps));
  });
}

cudaError_t launch_points_lse(const PointsLseParams& p, cudaStream_t stream) {
  if (p.batch == 0 || p.n == 0 || p.m == 0) return cudaSuccess;
  if (p.batch > 65535) return cudaErrorInvalidConfiguration;
  return by_dtype(p.dbl, [&](auto tag) {
    using T = decltype(tag);
    const PointCost<T> cost{static_cast<const T*>(p.x), static_cast<const T*>(p.y), p.n, p.m, p.d, p.p};
    if (p.rows) {
      row_lse_kernel<T><<<dim3(static_cast<unsigned>(p.n), static_cast<unsigned>(p.batch)), kRowThreads, 0, stream>>>(
          cost, static_cast<const T*>(p.h), static_cast<T*>(p.out), p.n, p.m, static_cast<T>(p.inv_eps));
    } else {
      const dim3 grid(static_cast<unsigned>((p.m + kColTile - 1) / kColTile), static_cast<unsigned>(p.batch));
      col_lse_kernel<T><<<grid, dim3(kColTile, kColLanes), 0, stream>>>(cost, static_cast<const T*>(p.h),
                                                                        static_cast<T*>(p.out), p.n, p.m,
                                                                        static_cast<T>(p.inv_eps));
    }
  });
}

cudaError_t launch_points_grad(const PointsGradParams& p, cudaStream_t stream) {
  if (p.batch == 0) return cudaSuccess;
  return by_dtype(p.dbl, [&](auto tag) {
    using T = decltype(tag);
    const PointCost<T> cost{static_cast<const T*>(p.x), static_cast<const T*>(p.y), p.n, p.m, p.d, p.p};
    const T inv_eps = static_cast<T>(p.inv_eps);
    points_grad_kernel<T><<<blocks_for(p.batch * p.n, 128), 128, 0, stream>>>(
        cost, static_cast<const T*>(p.hf), static_cast<const T*>(p.hg), static_cast<T*>(p.gx), p.batch, inv_eps, true);
    points_grad_kernel<T><<<blocks_for(p.batch * p.m, 128), 128, 0, stream>>>(
        cost, static_cast<const T*>(p.hf), static_cast<const T*>(p.hg), static_cast<T*>(p.gy), p.batch, inv_eps, false);
  });
}

cudaError_t launch_potential_update(const PotentialUpdateParams& p, cudaStream_t stream) {
  if (p.batch * p.len == 0) return cudaSuccess;
  return by_dtype(p.dbl, [&](auto tag) {
    using T = decltype(tag);
    potential_update_kernel<T><<<blocks_for(p.batch * p.len, 256), 256, 0, stream>>>(p);
  });
}

cudaError_t launch_plan(const PlanParams& p, cudaStream_t stream) {
  const int64_t total = p.batch * p.n * p.m;
  if (total == 0) return cudaSuccess;
  return by_dtype(p.dbl, [&](auto tag) {
    using T = decltype(tag);
    plan_kernel<T><<<blocks_for(total, 256), 256, 0, stream>>>(static_cast<const T*>(p.C), p.c_bstride,
                                                               static_cast<const T*>(p.hf), static_cast<const T*>(p.hg),
                                                               static_cast<T*>(p.P), p.batch, p.n, p.m,
                                                               static_cast<T>(p.inv_eps));
  });
}

cudaError_t launch_sparse_plan(const SparsePlanParams& p, cudaStream_t stream) {
  if (p.batch == 0 || p.n == 0 || p.k == 0) return cudaSuccess;
  if (p.batch > 65535) return cudaErrorInvalidConfiguration;
  return by_dtype(p.dbl, [&](auto tag) {
    using T = decltype(tag);
    sparse_plan_kernel<T><<<dim3(static_cast<unsigned>(p.n), static_cast<unsigned>(p.batch)), kSelectThreads, 0, stream>>>(
        static_cast<const T*>(p.C), p.c_bstride, static_cast<const T*>(p.hf), static_cast<const T*>(p.hg), p.idx,
        static_cast<T*>(p.val), p.n, p.m, p.k, static_cast<T>(p.inv_eps));
  });
}

cudaError_t launch_sparse_hvp(const SparseHvpParams& p, cudaStream_t stream) {
  if (p.batch * p.n == 0) return cudaSuccess;
  return by_dtype(p.dbl, [&](auto tag) {
    using T = decltype(tag);
    sparse_hvp_kernel<T><<<blocks_for(p.batch * p.n, 256), 256, 0, stream>>>(
        p.idx, static_cast<const T*>(p.val), static_cast<const T*>(p.xf), static_cast<const T*>(p.xg),
        static_cast<T*>(p.yf), static_cast<T*>(p.yg), p.batch, p.n, p.m, p.k);
  });
}

}  // namespace sparseops::ot
