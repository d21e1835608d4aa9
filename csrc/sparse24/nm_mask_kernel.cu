// nm_mask on CUDA: one thread per group of m, grid-stride.
#include "common/cuda_dispatch.cuh"
#include "common/nm_select.h"
#include "sparse24/sparse24_launch.h"

namespace sparseops::sparse24 {
namespace {

template <int M, typename scalar_t>
__global__ void nm_mask_kernel(const scalar_t* __restrict__ score, bool* __restrict__ out, int64_t groups, int n,
                               int m_runtime, unsigned long long* first_nan) {
  const int m = M > 0 ? M : m_runtime;
  float mag[kMaxGroupSize];
  for (int64_t g = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; g < groups; g += (int64_t)gridDim.x * blockDim.x) {
    const scalar_t* s = score + g * m;
    bool has_nan = false;
#pragma unroll
    for (int j = 0; j < (M > 0 ? M : kMaxGroupSize); ++j) {
      if (j < m) {
        const float v = to_float(s[j]);
        has_nan |= isnan(v);
        mag[j] = fabsf(v);
      }
    }
    if (has_nan) {
      atomicMin(first_nan, static_cast<unsigned long long>(g * m));
      continue;
    }
    const uint32_t keep = top_n_mask(mag, n, m);
    for (int j = 0; j < m; ++j) out[g * m + j] = (keep >> j) & 1u;
  }
}

}  // namespace

cudaError_t launch_nm_mask(const NmMaskParams& p, cudaStream_t stream) {
  if (p.groups == 0) return cudaSuccess;
  constexpr int kBlock = 256;
  return SPARSEOPS_CUDA_DISPATCH(p.dtype, [&] {
    const auto* s = static_cast<const scalar_t*>(p.score);
    if (p.m == 4) {
      nm_mask_kernel<4, scalar_t><<<grid_for(p.groups, kBlock), kBlock, 0, stream>>>(s, p.out, p.groups, p.n, 4, p.first_nan);
    } else {
      nm_mask_kernel<0, scalar_t><<<grid_for(p.groups, kBlock), kBlock, 0, stream>>>(s, p.out, p.groups, p.n, p.m, p.first_nan);
    }
    return cudaGetLastError();
  });
}

}  // namespace sparseops::sparse24
