// compress_24 / decompress_24 on CUDA. One thread per metadata word: a byte (2 groups) in the packed
// layout, an int16 (4 groups) in the CUTLASS layout, so no two threads write the same word.
#include "common/cuda_dispatch.cuh"
#include "common/nm_select.h"
#include "common/sparse24_format.h"
#include "sparse24/sparse24_launch.h"

namespace sparseops::sparse24 {
namespace {

template <typename scalar_t, int kGroupsPerWord>
__global__ void compress_24_kernel(const scalar_t* __restrict__ w, scalar_t* __restrict__ values, void* meta,
                                   int64_t rows, int64_t cols, bool prune, unsigned long long* first_bad) {
  const int64_t groups = cols / 4;
  const int64_t words_per_row = (groups + kGroupsPerWord - 1) / kGroupsPerWord;
  const int64_t total = rows * words_per_row;
  for (int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; t < total; t += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = t / words_per_row, c = t % words_per_row;
    uint32_t word = 0;
#pragma unroll
    for (int k = 0; k < kGroupsPerWord; ++k) {
      const int64_t g = c * kGroupsPerWord + k;
      if (g >= groups) break;
      const scalar_t* q = w + r * cols + 4 * g;
      float v[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) v[j] = to_float(q[j]);
      uint32_t keep;
      if (prune) {
        float mag[4];
        bool has_nan = false;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          has_nan |= isnan(v[j]);
          mag[j] = fabsf(v[j]);
        }
        if (has_nan) atomicMin(first_bad, static_cast<unsigned long long>(r * groups + g));
        keep = top_n_mask(mag, 2, 4);
      } else {
        keep = 0;
#pragma unroll
        for (int j = 0; j < 4; ++j) keep |= static_cast<uint32_t>(v[j] != 0.0f) << j;
        if (popcount4(keep) > 2) {
          atomicMin(first_bad, static_cast<unsigned long long>(r * groups + g));
          keep = 0;
        }
        keep = complete_pair(keep);
      }
      const uint8_t code = code_from_keep(keep);
      values[r * (cols / 2) + 2 * g] = q[code_first(code)];
      values[r * (cols / 2) + 2 * g + 1] = q[code_second(code)];
      word |= static_cast<uint32_t>(code) << (4 * k);
    }
    if (kGroupsPerWord == 2) {
      static_cast<uint8_t*>(meta)[r * words_per_row + c] = static_cast<uint8_t>(word);
    } else {
      static_cast<int16_t*>(meta)[cutlass_meta_offset(r, c, rows)] = static_cast<int16_t>(static_cast<uint16_t>(word));
    }
  }
}

template <typename scalar_t, int kGroupsPerWord>
__global__ void decompress_24_kernel(const scalar_t* __restrict__ values, const void* meta, scalar_t* __restrict__ dense,
                                     int64_t rows, int64_t cols, unsigned long long* first_bad) {
  const int64_t groups = cols / 4;
  const int64_t words_per_row = (groups + kGroupsPerWord - 1) / kGroupsPerWord;
  const int64_t total = rows * words_per_row;
  for (int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; t < total; t += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = t / words_per_row, c = t % words_per_row;
    const uint32_t word = kGroupsPerWord == 2
                              ? static_cast<const uint8_t*>(meta)[r * words_per_row + c]
                              : static_cast<uint16_t>(static_cast<const int16_t*>(meta)[cutlass_meta_offset(r, c, rows)]);
#pragma unroll
    for (int k = 0; k < kGroupsPerWord; ++k) {
      const int64_t g = c * kGroupsPerWord + k;
      if (g >= groups) break;
      const uint8_t code = (word >> (4 * k)) & 0xF;
      scalar_t out[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) out[j] = from_float<scalar_t>(0.0f);
      if (code_valid(code)) {
        out[code_first(code)] = values[r * (cols / 2) + 2 * g];
        out[code_second(code)] = values[r * (cols / 2) + 2 * g + 1];
      } else {
        atomicMin(first_bad, static_cast<unsigned long long>(r * groups + g));
      }
#pragma unroll
      for (int j = 0; j < 4; ++j) dense[r * cols + 4 * g + j] = out[j];
    }
  }
}

constexpr int kBlock = 256;

}  // namespace

cudaError_t launch_compress_24(const Compress24Params& p, cudaStream_t stream) {
  if (p.rows == 0 || p.cols == 0) return cudaSuccess;
  return SPARSEOPS_CUDA_DISPATCH(p.dtype, [&] {
    const auto* w = static_cast<const scalar_t*>(p.w);
    auto* v = static_cast<scalar_t*>(p.values);
    const int64_t groups = p.cols / 4;
    if (p.cutlass_layout) {
      compress_24_kernel<scalar_t, 4><<<grid_for(p.rows * ((groups + 3) / 4), kBlock), kBlock, 0, stream>>>(
          w, v, p.meta, p.rows, p.cols, p.prune, p.first_bad);
    } else {
      compress_24_kernel<scalar_t, 2><<<grid_for(p.rows * ((groups + 1) / 2), kBlock), kBlock, 0, stream>>>(
          w, v, p.meta, p.rows, p.cols, p.prune, p.first_bad);
    }
    return cudaGetLastError();
  });
}

cudaError_t launch_decompress_24(const Decompress24Params& p, cudaStream_t stream) {
  if (p.rows == 0 || p.cols == 0) return cudaSuccess;
  return SPARSEOPS_CUDA_DISPATCH(p.dtype, [&] {
    const auto* v = static_cast<const scalar_t*>(p.values);
    auto* d = static_cast<scalar_t*>(p.dense);
    const int64_t groups = p.cols / 4;
    if (p.cutlass_layout) {
      decompress_24_kernel<scalar_t, 4><<<grid_for(p.rows * ((groups + 3) / 4), kBlock), kBlock, 0, stream>>>(
          v, p.meta, d, p.rows, p.cols, p.first_bad);
    } else {
      decompress_24_kernel<scalar_t, 2><<<grid_for(p.rows * ((groups + 1) / 2), kBlock), kBlock, 0, stream>>>(
          v, p.meta, d, p.rows, p.cols, p.first_bad);
    }
    return cudaGetLastError();
  });
}

}  // namespace sparseops::sparse24
