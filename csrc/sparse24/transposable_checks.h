#pragma once
// check_inputs() for transposable_mask_24, shared by the CPU and CUDA kernels.
#include <ATen/ATen.h>

#include "common/checks.h"

namespace sparseops::sparse24 {

inline void check_transposable_mask_24_inputs(const at::Tensor& w) {
  constexpr const char* op = "transposable_mask_24";
  check_dtype(op, "w", w, {at::kFloat, at::kHalf, at::kBFloat16});
  check_dim(op, "w", w, 2);
  TORCH_CHECK(w.size(0) % 4 == 0 && w.size(1) % 4 == 0, op,
              ": expected both dimensions of w to be divisible by 4 (got shape ", w.sizes(), ")");
}

// The data-dependent error: a 4x4 block (flat index block_row * block_cols + block_col) holds a NaN.
[[noreturn]] inline void report_transposable_nan(int64_t block, int64_t block_cols) {
  const int64_t r = 4 * (block / block_cols), c = 4 * (block % block_cols);
  TORCH_CHECK(false, "transposable_mask_24: w contains NaN (first in the 4x4 block at rows ", r, "..", r + 3,
              ", columns ", c, "..", c + 3, "); magnitudes cannot be ranked");
}

}  // namespace sparseops::sparse24
