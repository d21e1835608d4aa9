// codebook_grad / codebook_usage / codebook_ema_update_ on CUDA.
//   histogram: one atomicAdd per index (integer counts: exact, order-free); the first out-of-range
//   position atomicMin'ed into a slot the glue reads.
//   segment sum: one block column per code, one thread per dim, summing the code's rows in the order of a
//   stable sort of the indices (ascending rows): fixed order, fp32, deterministic. The EMA variant folds
//   the decay update of embed_sum and cluster_size into the same pass.
#include "codebook/codebook_launch.h"
#include "common/cuda_dispatch.cuh"

namespace sparseops::codebook {
namespace {

__global__ void histogram_kernel(const int64_t* __restrict__ idx, int64_t n, int64_t num_codes,
                                 unsigned long long* __restrict__ counts, unsigned long long* __restrict__ bad_pos) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t k = idx[i];
    if (k < 0 || k >= num_codes) {
      atomicMin(bad_pos, static_cast<unsigned long long>(i));
    } else {
      atomicAdd(counts + k, 1ull);
    }
  }
}

template <typename scalar_t, bool kEma>
__global__ void segment_sum_kernel(const scalar_t* __restrict__ x, const int64_t* __restrict__ order,
                                   const int64_t* __restrict__ offsets, int64_t K, int64_t D, scalar_t* __restrict__ out,
                                   float* __restrict__ embed_sum, float* __restrict__ cluster_size, float decay) {
  const int64_t d = blockIdx.y * (int64_t)blockDim.x + threadIdx.x;
  for (int64_t k = blockIdx.x; k < K; k += gridDim.x) {
    const int64_t j0 = offsets[k], j1 = offsets[k + 1];
    if (d < D) {
      float acc = 0.0f;
      for (int64_t j = j0; j < j1; ++j) acc += to_float(x[order[j] * D + d]);
      if constexpr (kEma) {
        embed_sum[k * D + d] = decay * embed_sum[k * D + d] + (1.0f - decay) * acc;
      } else {
        out[k * D + d] = from_float<scalar_t>(acc);
      }
    }
    if constexpr (kEma) {
      if (blockIdx.y == 0 && threadIdx.x == 0) {
        cluster_size[k] = decay * cluster_size[k] + (1.0f - decay) * static_cast<float>(j1 - j0);
      }
    }
  }
}

template <typename scalar_t>
__global__ void ema_normalise_kernel(scalar_t* __restrict__ codebook, const float* __restrict__ embed_sum,
                                     const float* __restrict__ cluster_size, const double* __restrict__ total,
                                     int64_t K, int64_t D, double eps) {
  const double n = *total;
  const double scale = n / (n + static_cast<double>(K) * eps);
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < K * D; e += (int64_t)gridDim.x * blockDim.x) {
    const int64_t k = e / D;
    const float denom = static_cast<float>((static_cast<double>(cluster_size[k]) + eps) * scale);
    codebook[e] = from_float<scalar_t>(embed_sum[e] / denom);
  }
}

}  // namespace

cudaError_t launch_codebook_histogram(const int64_t* indices, int64_t n, int64_t num_codes, int64_t* counts,
                                      unsigned long long* bad_pos, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  histogram_kernel<<<grid_for(n, 256), 256, 0, stream>>>(indices, n, num_codes,
                                                         reinterpret_cast<unsigned long long*>(counts), bad_pos);
  return cudaGetLastError();
}

cudaError_t launch_codebook_segment_sum(const SegmentSumParams& p, cudaStream_t stream) {
  if (p.K == 0) return cudaSuccess;
  const int threads = p.D >= 128 ? 128 : 32 * static_cast<int>((p.D + 31) / 32);
  const dim3 grid(static_cast<unsigned>(p.K < 65535 * 16 ? p.K : 65535 * 16),
                  static_cast<unsigned>((p.D + threads - 1) / threads));
  return SPARSEOPS_CUDA_DISPATCH(p.dtype, [&] {
    if (p.embed_sum != nullptr) {
      segment_sum_kernel<scalar_t, true><<<grid, threads, 0, stream>>>(static_cast<const scalar_t*>(p.x), p.order,
                                                                        p.offsets, p.K, p.D, nullptr, p.embed_sum,
                                                                        p.cluster_size, p.decay);
    } else {
      segment_sum_kernel<scalar_t, false><<<grid, threads, 0, stream>>>(static_cast<const scalar_t*>(p.x), p.order,
                                                                         p.offsets, p.K, p.D,
                                                                         static_cast<scalar_t*>(p.out), nullptr,
                                                                         nullptr, 0.0f);
    }
    return cudaGetLastError();
  });
}

cudaError_t launch_codebook_ema_normalise(void* codebook, DType dtype, const float* embed_sum,
                                          const float* cluster_size, const double* total, int64_t K, int64_t D,
                                          double eps, cudaStream_t stream) {
  return SPARSEOPS_CUDA_DISPATCH(dtype, [&] {
    ema_normalise_kernel<scalar_t><<<grid_for(K * D, 256), 256, 0, stream>>>(
        static_cast<scalar_t*>(codebook), embed_sum, cluster_size, total, K, D, eps);
    return cudaGetLastError();
  });
}

}  // namespace sparseops::codebook
