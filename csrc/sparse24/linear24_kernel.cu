// CUDA kernels of sparse24_linear on the "packed" layout: dispatch of the small-M GEMV (M <= 16, no
// padding of M; the kernel is in gemv24_kernel.cuh, instantiated in gemv24_<dtype>.cu), and the
// elementwise bias + activation epilogues used after cuBLAS / cuSPARSELt / CUTLASS.
#include "common/sparse24_format.h"
#include "sparse24/gemv24_kernel.cuh"

namespace sparseops::sparse24 {

SPARSEOPS_GEMV24_INSTANCES(extern, float)
SPARSEOPS_GEMV24_INSTANCES(extern, __half)
SPARSEOPS_GEMV24_INSTANCES(extern, __nv_bfloat16)

namespace {

template <typename T>
__global__ void bias_act_kernel(T* __restrict__ y, const T* __restrict__ bias, int64_t total, int64_t N, int act) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float v = to_float(y[i]);
    if (bias != nullptr) v += to_float(bias[i % N]);
    y[i] = from_float<T>(apply_activation(v, act));
  }
}

// flags[m] = 1 when row m of x [M, ldx] holds an inf or NaN in its first K columns. A block per row.
template <typename T>
__global__ void nonfinite_rows_kernel(const T* __restrict__ x, int64_t M, int64_t K, int64_t ldx,
                                      uint8_t* __restrict__ flags) {
  for (int64_t m = blockIdx.x; m < M; m += gridDim.x) {
    int bad = 0;
    for (int64_t k = threadIdx.x; k < K; k += blockDim.x) bad |= !isfinite(to_float(x[m * ldx + k]));
    bad = __syncthreads_or(bad);
    if (threadIdx.x == 0) flags[m] = static_cast<uint8_t>(bad != 0);
  }
}

// y[m, n] of the flagged rows from the kept positions only; a thread per output, unflagged ones return.
template <typename T>
__global__ void structural_rows_kernel(const T* __restrict__ x, const T* __restrict__ values,
                                       const uint8_t* __restrict__ meta, const T* __restrict__ bias,
                                       T* __restrict__ y, const uint8_t* __restrict__ flags, int64_t M, int64_t N,
                                       int64_t K, int64_t ldx, int act) {
  const int64_t groups = K / 4, meta_cols = packed_meta_cols(K);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < M * N;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t m = i / N, n = i % N;
    if (flags[m] == 0) continue;
    const T* xr = x + m * ldx;
    const T* vr = values + n * (K / 2);
    const uint8_t* mr = meta + n * meta_cols;
    float acc = 0.0f;
    for (int64_t g = 0; g < groups; ++g) {
      const uint8_t code = (mr[g / 2] >> (4 * (g % 2))) & 0xF;
      acc += to_float(vr[2 * g]) * to_float(xr[4 * g + code_first(code)]) +
             to_float(vr[2 * g + 1]) * to_float(xr[4 * g + code_second(code)]);
    }
    if (bias != nullptr) acc += to_float(bias[n]);
    y[i] = from_float<T>(apply_activation(acc, act));
  }
}

constexpr int kTile = 32, kTileRows = 8;

template <typename T>
__global__ void transpose_bias_act_kernel(const T* __restrict__ d, T* __restrict__ y, const T* __restrict__ bias,
                                          int64_t M, int64_t N, int64_t ldd, int act) {
  __shared__ float tile[kTile][kTile + 1];
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kTile, n0 = static_cast<int64_t>(blockIdx.y) * kTile;
  for (int i = threadIdx.y; i < kTile; i += kTileRows) {  // read rows n of d, coalesced along m
    const int64_t n = n0 + i, m = m0 + threadIdx.x;
    float v = 0.0f;
    if (n < N && m < M) {
      v = to_float(d[n * ldd + m]);
      if (bias != nullptr) v += to_float(bias[n]);
      v = apply_activation(v, act);
    }
    tile[i][threadIdx.x] = v;
  }
  __syncthreads();
  for (int i = threadIdx.y; i < kTile; i += kTileRows) {  // write rows m of y, coalesced along n
    const int64_t m = m0 + i, n = n0 + threadIdx.x;
    if (m < M && n < N) y[m * N + n] = from_float<T>(tile[threadIdx.x][i]);
  }
}

}  // namespace

cudaError_t launch_transpose_bias_act(const TransposeBiasActParams& p, cudaStream_t stream) {
  if (p.M == 0 || p.N == 0) return cudaSuccess;
  const int64_t gx = (p.M + kTile - 1) / kTile, gy = (p.N + kTile - 1) / kTile;
  if (gx > 2147483647LL || gy > 65535) return cudaErrorInvalidConfiguration;
  return SPARSEOPS_CUDA_DISPATCH(p.dtype, [&] {
    transpose_bias_act_kernel<scalar_t><<<dim3(static_cast<unsigned int>(gx), static_cast<unsigned int>(gy)),
                                          dim3(kTile, kTileRows), 0, stream>>>(
        static_cast<const scalar_t*>(p.d), static_cast<scalar_t*>(p.y), static_cast<const scalar_t*>(p.bias), p.M,
        p.N, p.ldd, static_cast<int>(p.act));
    return cudaGetLastError();
  });
}

cudaError_t launch_gemv24(const Gemv24Params& p, cudaStream_t stream) {
  if (p.M == 0 || p.N == 0) return cudaSuccess;
  if (p.M < 0 || p.M > kGemvMaxM) return cudaErrorInvalidValue;
  return SPARSEOPS_CUDA_DISPATCH(p.dtype, [&] {
    if (p.M == 1) return launch_gemv24_m<scalar_t, 1>(p, stream);
    if (p.M <= 4) return launch_gemv24_m<scalar_t, 4>(p, stream);
    if (p.M <= 8) return launch_gemv24_m<scalar_t, 8>(p, stream);
    return launch_gemv24_m<scalar_t, 16>(p, stream);
  });
}

cudaError_t launch_restore_structural_rows(const Gemv24Params& p, uint8_t* flags, cudaStream_t stream) {
  if (p.M == 0 || p.N == 0 || p.K == 0) return cudaSuccess;
  constexpr int kBlock = 256;
  return SPARSEOPS_CUDA_DISPATCH(p.dtype, [&] {
    const unsigned int row_blocks = p.M > 65535 * 16 ? 65535u * 16u : static_cast<unsigned int>(p.M);
    nonfinite_rows_kernel<scalar_t><<<row_blocks, kBlock, 0, stream>>>(static_cast<const scalar_t*>(p.x), p.M, p.K,
                                                                       p.ldx, flags);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    const unsigned int grid = grid_for(p.M * p.N, kBlock) > 65535u * 16u ? 65535u * 16u : grid_for(p.M * p.N, kBlock);
    structural_rows_kernel<scalar_t><<<grid, kBlock, 0, stream>>>(
        static_cast<const scalar_t*>(p.x), static_cast<const scalar_t*>(p.values), p.meta,
        static_cast<const scalar_t*>(p.bias), static_cast<scalar_t*>(p.y), flags, p.M, p.N, p.K, p.ldx,
        static_cast<int>(p.act));
    return cudaGetLastError();
  });
}

cudaError_t launch_bias_act(const BiasActParams& p, cudaStream_t stream) {
  const int64_t total = p.M * p.N;
  if (total == 0 || (p.bias == nullptr && p.act == Act::kNone)) return cudaSuccess;
  constexpr int kBlock = 256;
  return SPARSEOPS_CUDA_DISPATCH(p.dtype, [&] {
    const unsigned int grid = grid_for(total, kBlock) > 65535u * 16u ? 65535u * 16u : grid_for(total, kBlock);
    bias_act_kernel<scalar_t><<<grid, kBlock, 0, stream>>>(static_cast<scalar_t*>(p.y),
                                                           static_cast<const scalar_t*>(p.bias), total, p.N,
                                                           static_cast<int>(p.act));
    return cudaGetLastError();
  });
}

}  // namespace sparseops::sparse24
