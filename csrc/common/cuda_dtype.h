#pragma once
// Torch glue side: at::ScalarType -> DType for launchers, and the stream/guard idiom.
#include <ATen/ATen.h>
#include "common/device_dtype.h"

namespace sparseops {
inline DType to_device_dtype(const char* op, at::ScalarType t) {
  switch (t) {
    case at::kFloat: return DType::kFloat32;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default: TORCH_CHECK_TYPE(false, op, ": dtype ", t, " has no CUDA kernel");
  }
}
}  // namespace sparseops
