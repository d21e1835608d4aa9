#pragma once
// Torch-side helpers for CUDA glue files (.cpp compiled by the host compiler, never by nvcc).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <limits>

#include "common/cuda_dtype.h"

namespace sparseops {

inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

// A one-element device slot that kernels atomicMin() a flat index into; "none" reads back as -1.
// Reading it is a device sync: only ops that must report a data-dependent error use it.
inline at::Tensor make_first_index_slot(const at::Tensor& like) {
  return at::full({1}, std::numeric_limits<int64_t>::max(), like.options().dtype(at::kLong));
}
inline unsigned long long* slot_ptr(at::Tensor& slot) {
  return reinterpret_cast<unsigned long long*>(slot.mutable_data_ptr<int64_t>());
}
inline int64_t read_slot(const at::Tensor& slot) {
  const int64_t v = slot.item<int64_t>();
  return v == std::numeric_limits<int64_t>::max() ? -1 : v;
}

}  // namespace sparseops

// Checks a launcher's cudaError_t with torch's CUDA error reporting.
#define SPARSEOPS_CUDA_CHECK(expr) C10_CUDA_CHECK(expr)
