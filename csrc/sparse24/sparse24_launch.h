#pragma once
// Launchers for the sparse24 mask/format kernels: plain params, no torch types, so the .cu files
// compile without torch headers. Each returns the launch's cudaError_t; the glue checks it.
#include <cuda_runtime_api.h>

#include <cstdint>

#include "common/device_dtype.h"

namespace sparseops::sparse24 {

struct NmMaskParams {
  const void* score;              // [groups * m], dtype
  bool* out;                      // [groups * m]
  int64_t groups;
  int n, m;
  DType dtype;
  unsigned long long* first_nan;  // in/out: min flat index of a NaN group (init to UINT64 max)
};
cudaError_t launch_nm_mask(const NmMaskParams& p, cudaStream_t stream);

struct Compress24Params {
  const void* w;                  // [rows, cols] row-major
  void* values;                   // [rows, cols/2]
  void* meta;                     // packed: uint8 [rows, ceil(cols/8)]; cutlass: int16 [rows, cols/16]
  int64_t rows, cols;
  bool prune;
  bool cutlass_layout;
  DType dtype;
  unsigned long long* first_bad;  // in/out: min flat group index of a NaN (prune) or >2-non-zero group
};
cudaError_t launch_compress_24(const Compress24Params& p, cudaStream_t stream);

struct Decompress24Params {
  const void* values;
  const void* meta;
  void* dense;                    // [rows, cols]
  int64_t rows, cols;
  bool cutlass_layout;
  DType dtype;
  unsigned long long* first_bad;  // in/out: min flat group index holding an invalid code
};
cudaError_t launch_decompress_24(const Decompress24Params& p, cudaStream_t stream);

}  // namespace sparseops::sparse24
