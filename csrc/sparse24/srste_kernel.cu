// nm_srste / nm_srste_backward on CUDA.
//   forward: one thread per group of m (grid-stride), mask and masked weight written together.
//   backward: elementwise grid-stride; float32 maths with explicit __fmul_rn/__fadd_rn so that no FMA
//   contraction makes it differ from the CPU kernel.
#include "common/cuda_dispatch.cuh"
#include "common/nm_select.h"
#include "sparse24/srste_launch.h"

namespace sparseops::sparse24 {
namespace {

template <int M, typename scalar_t>
__global__ void nm_srste_kernel(const scalar_t* __restrict__ w, scalar_t* __restrict__ out, bool* __restrict__ mask,
                                int64_t groups, int n, int m_runtime) {
  const int m = M > 0 ? M : m_runtime;
  float mag[kMaxGroupSize];
  for (int64_t g = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; g < groups; g += (int64_t)gridDim.x * blockDim.x) {
    const scalar_t* wg = w + g * m;
#pragma unroll
    for (int j = 0; j < (M > 0 ? M : kMaxGroupSize); ++j) {
      if (j < m) {
        const float v = to_float(wg[j]);
        // NaN ranks as the largest magnitude (as on CPU): it stays in the output.
        mag[j] = isnan(v) ? INFINITY : fabsf(v);
      }
    }
    const uint32_t keep = top_n_mask(mag, n, m);
    for (int j = 0; j < m; ++j) {
      const bool k = (keep >> j) & 1u;
      mask[g * m + j] = k;
      out[g * m + j] = k ? wg[j] : from_float<scalar_t>(0.0f);
    }
  }
}

template <typename scalar_t>
__global__ void nm_srste_backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ w,
                                         const uint8_t* __restrict__ mask, scalar_t* __restrict__ grad_w, int64_t numel,
                                         float decay, float scale_value, const float* __restrict__ scale_ptr) {
  const float scale = scale_ptr != nullptr ? *scale_ptr : scale_value;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < numel; i += (int64_t)gridDim.x * blockDim.x) {
    const float g = to_float(grad[i]);
    // kept: grad; pruned: grad * scale + decay * w (the SR-STE formula as a select, as on CPU).
    const float r = mask[i] != 0 ? g : __fadd_rn(__fmul_rn(g, scale), __fmul_rn(decay, to_float(w[i])));
    grad_w[i] = from_float<scalar_t>(r);
  }
}

}  // namespace

cudaError_t launch_nm_srste(const NmSrsteParams& p, cudaStream_t stream) {
  if (p.groups == 0) return cudaSuccess;
  constexpr int kBlock = 256;
  return SPARSEOPS_CUDA_DISPATCH(p.dtype, [&] {
    const auto* w = static_cast<const scalar_t*>(p.w);
    auto* out = static_cast<scalar_t*>(p.out);
    if (p.m == 4) {
      nm_srste_kernel<4, scalar_t><<<grid_for(p.groups, kBlock), kBlock, 0, stream>>>(w, out, p.mask, p.groups, p.n, 4);
    } else {
      nm_srste_kernel<0, scalar_t><<<grid_for(p.groups, kBlock), kBlock, 0, stream>>>(w, out, p.mask, p.groups, p.n, p.m);
    }
    return cudaGetLastError();
  });
}

cudaError_t launch_nm_srste_backward(const NmSrsteBackwardParams& p, cudaStream_t stream) {
  if (p.numel == 0) return cudaSuccess;
  constexpr int kBlock = 256;
  return SPARSEOPS_CUDA_DISPATCH(p.dtype, [&] {
    nm_srste_backward_kernel<scalar_t><<<grid_for(p.numel, kBlock), kBlock, 0, stream>>>(
        static_cast<const scalar_t*>(p.grad), static_cast<const scalar_t*>(p.w), p.mask,
        static_cast<scalar_t*>(p.grad_w), p.numel, p.decay, p.pruned_grad_scale, p.pruned_grad_scale_ptr);
    return cudaGetLastError();
  });
}

}  // namespace sparseops::sparse24
