// transposable_mask_24 on CUDA: one thread per 4x4 block (grid-stride), solved by the solver the CPU
// kernel shares (common/transposable24.h); the pattern table lives in constant memory, where the
// threads of a warp reading the same entry get it broadcast.
#include "common/cuda_dispatch.cuh"
#include "common/transposable24.h"
#include "sparse24/transposable_launch.h"

namespace sparseops::sparse24 {
namespace {

__constant__ Transposable24Table kTable = make_transposable24_table();

template <typename scalar_t>
__global__ void transposable_mask_24_kernel(const scalar_t* __restrict__ w, bool* __restrict__ mask, int64_t cols,
                                            int64_t blocks, unsigned long long* first_nan) {
  const int64_t block_cols = cols / 4;
  for (int64_t b = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; b < blocks; b += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r0 = 4 * (b / block_cols), c0 = 4 * (b % block_cols);
    float mag[16];
    bool has_nan = false;
#pragma unroll
    for (int r = 0; r < 4; ++r) {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float v = to_float(w[(r0 + r) * cols + c0 + j]);
        has_nan |= isnan(v);
        mag[4 * r + j] = fabsf(v);
      }
    }
    if (has_nan) {
      atomicMin(first_nan, static_cast<unsigned long long>(b));
      continue;
    }
    const uint32_t code = kTable.code[solve_transposable24(mag, kTable.code)];
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const uint32_t bits = transposable24_row_bits(code, r);
#pragma unroll
      for (int j = 0; j < 4; ++j) mask[(r0 + r) * cols + c0 + j] = (bits >> j) & 1u;
    }
  }
}

}  // namespace

cudaError_t launch_transposable_mask_24(const TransposableMask24Params& p, cudaStream_t stream) {
  const int64_t blocks = (p.rows / 4) * (p.cols / 4);
  if (blocks == 0) return cudaSuccess;
  constexpr int kBlock = 128;
  return SPARSEOPS_CUDA_DISPATCH(p.dtype, [&] {
    transposable_mask_24_kernel<scalar_t><<<grid_for(blocks, kBlock), kBlock, 0, stream>>>(
        static_cast<const scalar_t*>(p.w), p.mask, p.cols, blocks, p.first_nan);
    return cudaGetLastError();
  });
}

}  // namespace sparseops::sparse24
