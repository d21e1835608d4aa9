#pragma once
// Launcher for transposable_mask_24: plain params, no torch types (transposable_kernel.cu compiles
// without torch headers).
#include <cuda_runtime_api.h>

#include <cstdint>

#include "common/device_dtype.h"

namespace sparseops::sparse24 {

struct TransposableMask24Params {
  const void* w;                  // [rows, cols] row-major, dtype
  bool* mask;                     // [rows, cols]
  int64_t rows, cols;             // rows % 4 == 0, cols % 4 == 0
  DType dtype;
  unsigned long long* first_nan;  // in/out: min flat block index (block_row * cols/4 + block_col) holding a NaN
};
cudaError_t launch_transposable_mask_24(const TransposableMask24Params& p, cudaStream_t stream);

}  // namespace sparseops::sparse24
