#pragma once
// Device side of dtype dispatch: DType -> scalar_t, and float conversions for the 16-bit types.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include "common/device_dtype.h"

namespace sparseops {

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

}  // namespace sparseops

// Calls the lambda body with `scalar_t` bound to the CUDA type for `dtype`.
#define SPARSEOPS_CUDA_DISPATCH(dtype, ...)                        \
  [&] {                                                            \
    switch (dtype) {                                               \
      case ::sparseops::DType::kFloat32: {                         \
        using scalar_t = float;                                    \
        return __VA_ARGS__();                                      \
      }                                                            \
      case ::sparseops::DType::kFloat16: {                         \
        using scalar_t = __half;                                   \
        return __VA_ARGS__();                                      \
      }                                                            \
      case ::sparseops::DType::kBFloat16: {                        \
        using scalar_t = __nv_bfloat16;                            \
        return __VA_ARGS__();                                      \
      }                                                            \
    }                                                              \
    return cudaErrorInvalidValue;                                  \
  }()

// Launch-grid helper: blocks needed for n items, capped at CUDA's x-dimension limit (kernels stride).
inline unsigned int grid_for(long long n, int block) {
  long long blocks = (n + block - 1) / block;
  if (blocks < 1) blocks = 1;
  return static_cast<unsigned int>(blocks > 2147483647LL ? 2147483647LL : blocks);
}
