#pragma once
// Launchers for the SR-STE kernels (nm_srste, nm_srste_backward): plain params, no torch types, so
// srste_kernel.cu compiles without torch headers. Each returns the launch's cudaError_t.
#include <cuda_runtime_api.h>

#include <cstdint>

#include "common/device_dtype.h"

namespace sparseops::sparse24 {

struct NmSrsteParams {
  const void* w;      // [groups * m], dtype, contiguous
  void* out;          // [groups * m], dtype: w where kept, 0 elsewhere
  bool* mask;         // [groups * m]
  int64_t groups;
  int n, m;
  DType dtype;
};
cudaError_t launch_nm_srste(const NmSrsteParams& p, cudaStream_t stream);

struct NmSrsteBackwardParams {
  const void* grad;   // [numel], dtype, contiguous
  const void* w;      // [numel], dtype, contiguous
  const uint8_t* mask;  // [numel], a bool tensor's bytes: non-zero = kept
  void* grad_w;       // [numel], dtype
  int64_t numel;
  float decay;
  float pruned_grad_scale;              // used when pruned_grad_scale_ptr is null
  const float* pruned_grad_scale_ptr;   // device float32, or null
  DType dtype;
};
cudaError_t launch_nm_srste_backward(const NmSrsteBackwardParams& p, cudaStream_t stream);

}  // namespace sparseops::sparse24
