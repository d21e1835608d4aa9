#pragma once
// check_codebook_lookup_inputs(), shared by the CPU and CUDA kernels of codebook_lookup.
#include <ATen/ATen.h>

#include <cstdint>
#include <limits>
#include <string_view>

#include "common/checks.h"

namespace sparseops::codebook {

// Returns true for metric "cosine", false for "l2".
inline bool check_codebook_lookup_inputs(const at::Tensor& z, const at::Tensor& codebook, std::string_view metric) {
  constexpr const char* op = "codebook_lookup";
  TORCH_CHECK(metric == "l2" || metric == "cosine", op, ": expected metric to be \"l2\" or \"cosine\" (got \"",
              metric, "\")");
  check_dtype(op, "z", z, {at::kFloat, at::kHalf, at::kBFloat16});
  TORCH_CHECK_TYPE(codebook.scalar_type() == z.scalar_type(), op, ": expected codebook to have z's dtype ",
                   z.scalar_type(), " (got ", codebook.scalar_type(), ")");
  check_dim(op, "z", z, 2);
  check_dim(op, "codebook", codebook, 2);
  check_same_device(op, "codebook", codebook, "z", z);
  TORCH_CHECK(codebook.size(0) >= 1, op, ": expected a non-empty codebook (got codebook of shape ", codebook.sizes(),
              ")");
  TORCH_CHECK(codebook.size(1) >= 1, op, ": expected codebook.size(1) (the code dimension D) >= 1 (got ",
              codebook.size(1), ")");
  TORCH_CHECK(z.size(1) == codebook.size(1), op, ": expected z.size(1) == codebook.size(1) (got ", z.size(1), " vs ",
              codebook.size(1), ")");
  TORCH_CHECK(codebook.size(0) <= std::numeric_limits<int32_t>::max() - 64, op,
              ": expected codebook.size(0) < 2^31 - 64 (got ", codebook.size(0), ")");
  return metric == "cosine";
}

}  // namespace sparseops::codebook
