// codebook_lookup (l2) on CUDA with tensor cores: a bf16 screen on WMMA 16x16x16 tiles (fp32
// accumulation) and the exact float64 re-check of every code the screen cannot rule out -- the CPU
// lookup's policy, with the same margin, exact distance and tie rule (lookup_bound.h), so the indices
// and distances equal the CPU's.
//   1. screen_kernel<kMin>: block = 4 warps, 64 query rows x 64 codes per tile, each warp 16 rows x 64
//      codes (four accumulator fragments); bf16 z and codes padded to multiples of 64 rows/codes and 16
//      dims; e = |c|^2 - 2 z.c (padding codes: |c|^2 = +inf). The tile goes through shared memory; two
//      threads per row scan 32 codes each. With kMin, every (row block, code split) writes the row's
//      smallest e; finish_threshold_kernel merges the splits into thr = best + margin (screen_margin).
//   2. screen_kernel<!kMin>: the same tiles again; every code with e <= thr is appended to its row's
//      candidate list (kCandCap slots; the count keeps going past it).
//   3. recheck_kernel: one block per row: the exact float64 (z - c)^2 of the candidates -- of all K codes
//      when the list overflowed -- and a block reduction with `better`.
// Extra memory (the glue allocates it): bf16 copies of z and the codebook, |c|^2, [splits, N] fp32 minima,
// N thresholds and counts, N x kCandCap candidate indices.
#include <mma.h>

#include "codebook/codebook_launch.h"
#include "codebook/lookup_bound.h"
#include "common/cuda_dispatch.cuh"

namespace sparseops::codebook {
namespace {

using namespace nvcuda;

constexpr int kTile = 64, kWarps = 4, kThreads = kWarps * 32, kLd = kTile + 4;

template <bool kMin>
__global__ void __launch_bounds__(kThreads) screen_kernel(const MmaLookupParams p) {
  __shared__ float tile[kTile][kLd];
  const int warp = threadIdx.x / 32;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int split = blockIdx.y;
  const int64_t tiles = p.Kp / kTile;
  const int64_t t_begin = tiles * split / p.splits, t_end = tiles * (split + 1) / p.splits;
  const int r = threadIdx.x / 2, half = threadIdx.x % 2;  // this thread's row and 32-code half
  const int64_t row = row0 + r;
  const float thr = (!kMin && row < p.N) ? p.thr[row] : 0.0f;
  float best = INFINITY;
  for (int64_t t = t_begin; t < t_end; ++t) {
    const int64_t code0 = t * kTile;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) wmma::fill_fragment(acc[j], 0.0f);
    for (int64_t d0 = 0; d0 < p.Dp; d0 += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
      wmma::load_matrix_sync(a, p.zb + (row0 + warp * 16) * p.Dp + d0, static_cast<unsigned>(p.Dp));
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        // codes are rows of [Kp, Dp]: a column-major [Dp, Kp] operand
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> b;
        wmma::load_matrix_sync(b, p.cbb + (code0 + j * 16) * p.Dp + d0, static_cast<unsigned>(p.Dp));
        wmma::mma_sync(acc[j], a, b, acc[j]);
      }
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      wmma::store_matrix_sync(&tile[warp * 16][j * 16], acc[j], kLd, wmma::mem_row_major);
    }
    __syncthreads();
    if (row < p.N) {
      for (int c = half * 32; c < half * 32 + 32; ++c) {
        const int64_t k = code0 + c;
        const float e = __fmaf_rn(-2.0f, tile[r][c], p.cn[k]);  // one rounding, the same in both passes
        if constexpr (kMin) {
          best = fminf(best, e);
        } else if (e <= thr) {
          const int slot = atomicAdd(&p.count[row], 1);
          if (slot < kCandCap) p.cand[row * kCandCap + slot] = static_cast<int32_t>(k);
        }
      }
    }
    __syncthreads();
  }
  if constexpr (kMin) {
    best = fminf(best, __shfl_xor_sync(0xffffffffu, best, 1));
    if (half == 0 && row < p.N) p.part_min[split * p.N + row] = best;
  }
}

// thr[i] = min over splits of part_min + screen_margin (bf16-rounded screen, tensor-core sums); count = 0.
__global__ void finish_threshold_kernel(const MmaLookupParams p) {
  const double maxc2 = *p.maxc2;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < p.N;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float best = INFINITY;
    for (int s = 0; s < p.splits; ++s) best = fminf(best, p.part_min[s * p.N + i]);
    const double zz = static_cast<double>(p.zn[i]) * p.zn[i];
    const double m = screen_margin(p.D, 0x1p-23, maxc2, zz, true);
    p.thr[i] = static_cast<float>(static_cast<double>(best) + m);
    p.count[i] = 0;
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) recheck_kernel(const scalar_t* __restrict__ z,
                                                           const scalar_t* __restrict__ cb, const MmaLookupParams p) {
  __shared__ double red_d[kThreads];
  __shared__ int64_t red_k[kThreads];
  for (int64_t i = blockIdx.x; i < p.N; i += gridDim.x) {  // one row per block at a time
    const int count = p.count[i];
    const bool all = count > kCandCap;  // overflowed: every code, exactly (rare: many near-identical codes)
    const int64_t n = all ? p.K : count;
    double best = INFINITY;
    int64_t best_k = -1;
    for (int64_t j = threadIdx.x; j < n; j += kThreads) {
      const int64_t k = all ? j : p.cand[i * kCandCap + j];
      double s = 0.0;
      for (int64_t d = 0; d < p.D; ++d) s = add_sq_diff(s, to_float(z[i * p.D + d]), to_float(cb[k * p.D + d]));
      if (better(s, k, best, best_k)) {
        best = s;
        best_k = k;
      }
    }
    red_d[threadIdx.x] = best;
    red_k[threadIdx.x] = best_k;
    __syncthreads();
    for (int w = kThreads / 2; w > 0; w /= 2) {
      if (threadIdx.x < w) {
        const double od = red_d[threadIdx.x + w];
        const int64_t ok = red_k[threadIdx.x + w];
        if (ok >= 0 && better(od, ok, red_d[threadIdx.x], red_k[threadIdx.x])) {
          red_d[threadIdx.x] = od;
          red_k[threadIdx.x] = ok;
        }
      }
      __syncthreads();
    }
    if (threadIdx.x == 0) {
      p.indices[i] = red_k[0];
      p.dist[i] = static_cast<float>(red_d[0]);
    }
    __syncthreads();  // red_* are reused by the next row
  }
}

}  // namespace

cudaError_t launch_codebook_lookup_mma(const MmaLookupParams& p, cudaStream_t stream) {
  if (p.N == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(p.Np / kTile), static_cast<unsigned>(p.splits));
  screen_kernel<true><<<grid, kThreads, 0, stream>>>(p);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  finish_threshold_kernel<<<grid_for(p.N, 256), 256, 0, stream>>>(p);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  screen_kernel<false><<<grid, kThreads, 0, stream>>>(p);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  return SPARSEOPS_CUDA_DISPATCH(p.dtype, [&] {
    recheck_kernel<scalar_t><<<grid_for(p.N, 1), kThreads, 0, stream>>>(
        static_cast<const scalar_t*>(p.z), static_cast<const scalar_t*>(p.codebook), p);
    return cudaGetLastError();
  });
}

}  // namespace sparseops::codebook
