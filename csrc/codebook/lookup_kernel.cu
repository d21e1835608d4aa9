// codebook_lookup on CUDA, cosine metric: a tiled fp32 kernel (plain FMA tiles). l2 goes through the
// tensor-core screen + exact re-check of lookup_mma_kernel.cu.
//   Block: 64 query rows x 64 codes per tile, 256 threads, each thread a 4 x 4 micro-tile; z and code
//   chunks of 16 dims staged (transposed) in shared memory. The distance is 1 - z.c on normalised fp32
//   copies.
//   Each thread keeps per row a running minimum over its codes (in increasing index order, so a strict <
//   keeps the lowest index), then the 16 threads of a row reduce in shared memory (ties: lower index).
//   With code splits (few rows, many codes) the partial minima go to a workspace and a second kernel
//   merges them in split order.
#include "codebook/codebook_launch.h"
#include "common/cuda_dispatch.cuh"

namespace sparseops::codebook {
namespace {

constexpr int kBM = 64, kBN = 64, kBK = 16, kThreads = 256;

__global__ void __launch_bounds__(kThreads) lookup_kernel(const float* __restrict__ z, const float* __restrict__ cb,
                                                          int64_t N, int64_t K, int64_t D, int splits,
                                                          float* __restrict__ out_dist, int64_t* __restrict__ out_idx) {
  __shared__ float zt[kBK][kBM + 4];
  __shared__ float ct[kBK][kBN + 4];
  __shared__ float red_v[kBM][17];
  __shared__ int64_t red_i[kBM][17];
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kBM;
  const int split = blockIdx.y;
  const int64_t tiles = (K + kBN - 1) / kBN;
  const int64_t t_begin = tiles * split / splits, t_end = tiles * (split + 1) / splits;

  float best[4];
  int64_t best_k[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    best[i] = INFINITY;
    best_k[i] = -1;
  }
  for (int64_t t = t_begin; t < t_end; ++t) {
    const int64_t code0 = t * kBN;
    float acc[4][4] = {};
    for (int64_t d0 = 0; d0 < D; d0 += kBK) {
      // 64 x 16 elements of each operand, 4 per thread, transposed into shared memory.
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int e = tid + r * kThreads;
        const int m = e / kBK, kk = e % kBK;
        const int64_t d = d0 + kk;
        const int64_t zr = row0 + m, cr = code0 + m;
        zt[kk][m] = (zr < N && d < D) ? z[zr * D + d] : 0.0f;
        ct[kk][m] = (cr < K && d < D) ? cb[cr * D + d] : 0.0f;
      }
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < kBK; ++kk) {
        float a[4], b[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) a[i] = zt[kk][ty * 4 + i];
#pragma unroll
        for (int j = 0; j < 4; ++j) b[j] = ct[kk][tx * 4 + j];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
#pragma unroll
          for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
      }
      __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int64_t k = code0 + tx * 4 + j;
        const float dist = 1.0f - acc[i][j];
        if (k < K && dist < best[i]) {
          best[i] = dist;
          best_k[i] = k;
        }
      }
    }
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    red_v[ty * 4 + i][tx] = best[i];
    red_i[ty * 4 + i][tx] = best_k[i];
  }
  __syncthreads();
  if (tid < kBM && row0 + tid < N) {
    float v = INFINITY;
    int64_t k = -1;
    for (int x = 0; x < 16; ++x) {
      const float cv = red_v[tid][x];
      const int64_t ck = red_i[tid][x];
      if (ck >= 0 && (k < 0 || cv < v || (cv == v && ck < k))) {
        v = cv;
        k = ck;
      }
    }
    out_dist[split * N + row0 + tid] = v;
    out_idx[split * N + row0 + tid] = k;
  }
}

__global__ void merge_kernel(const float* __restrict__ part_dist, const int64_t* __restrict__ part_idx, int64_t N,
                             int splits, float* __restrict__ dist, int64_t* __restrict__ idx) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < N; i += (int64_t)gridDim.x * blockDim.x) {
    float v = INFINITY;
    int64_t k = -1;
    for (int s = 0; s < splits; ++s) {  // splits cover increasing code ranges: strict < keeps the lowest
      const int64_t ck = part_idx[s * N + i];
      const float cv = part_dist[s * N + i];
      if (ck >= 0 && (k < 0 || cv < v)) {
        v = cv;
        k = ck;
      }
    }
    dist[i] = v;
    idx[i] = k;
  }
}

}  // namespace

int lookup_splits(int64_t N, int64_t K, int sm_count) {
  const int64_t row_blocks = (N + kBM - 1) / kBM;
  const int64_t tiles = (K + kBN - 1) / kBN;
  const int64_t want = (2 * static_cast<int64_t>(sm_count) + row_blocks - 1) / row_blocks;
  int64_t s = want < tiles / 4 ? want : tiles / 4;
  if (s > 65535) s = 65535;
  return s < 1 ? 1 : static_cast<int>(s);
}

cudaError_t launch_codebook_lookup_cosine(const LookupParams& p, cudaStream_t stream) {
  if (p.N == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>((p.N + kBM - 1) / kBM), static_cast<unsigned>(p.splits));
  float* dist = p.splits > 1 ? p.part_dist : p.dist;
  int64_t* idx = p.splits > 1 ? p.part_idx : p.indices;
  lookup_kernel<<<grid, kThreads, 0, stream>>>(p.z, p.codebook, p.N, p.K, p.D, p.splits, dist, idx);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess || p.splits == 1) return err;
  merge_kernel<<<grid_for(p.N, 256), 256, 0, stream>>>(p.part_dist, p.part_idx, p.N, p.splits, p.dist, p.indices);
  return cudaGetLastError();
}

}  // namespace sparseops::codebook
