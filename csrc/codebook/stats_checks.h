#pragma once
// Input checks of codebook_grad, codebook_usage and codebook_ema_update_, shared by the CPU and CUDA
// kernels. The kernels check the index values themselves (data-dependent): index_error() words it.
#include <ATen/ATen.h>

#include <cmath>
#include <string>

#include "common/checks.h"

namespace sparseops::codebook {

inline std::string index_error(const char* op, int64_t num_codes, int64_t value, int64_t position) {
  return std::string(op) + ": expected indices in [0, " + std::to_string(num_codes) + ") (got " +
         std::to_string(value) + " at position " + std::to_string(position) + ")";
}

inline void check_num_codes(const char* op, int64_t num_codes) {
  TORCH_CHECK(num_codes >= 1, op, ": expected num_codes >= 1 (got ", num_codes, ")");
}

inline void check_codebook_grad_inputs(const at::Tensor& grad_quantized, const at::Tensor& indices, int64_t num_codes) {
  constexpr const char* op = "codebook_grad";
  check_dtype(op, "grad_quantized", grad_quantized, {at::kFloat, at::kHalf, at::kBFloat16});
  check_dtype(op, "indices", indices, {at::kLong});
  check_dim(op, "grad_quantized", grad_quantized, 2);
  check_dim(op, "indices", indices, 1);
  check_same_device(op, "indices", indices, "grad_quantized", grad_quantized);
  TORCH_CHECK(indices.size(0) == grad_quantized.size(0), op, ": expected indices.size(0) == grad_quantized.size(0) (got ",
              indices.size(0), " vs ", grad_quantized.size(0), ")");
  check_num_codes(op, num_codes);
}

inline void check_codebook_usage_inputs(const at::Tensor& indices, int64_t num_codes) {
  constexpr const char* op = "codebook_usage";
  check_dtype(op, "indices", indices, {at::kLong});
  check_num_codes(op, num_codes);
}

inline void check_codebook_ema_update_inputs(const at::Tensor& codebook, const at::Tensor& cluster_size,
                                             const at::Tensor& embed_sum, const at::Tensor& z,
                                             const at::Tensor& indices, double decay, double eps) {
  constexpr const char* op = "codebook_ema_update_";
  check_dtype(op, "codebook", codebook, {at::kFloat, at::kHalf, at::kBFloat16});
  check_dtype(op, "cluster_size", cluster_size, {at::kFloat});
  check_dtype(op, "embed_sum", embed_sum, {at::kFloat});
  check_dtype(op, "z", z, {at::kFloat, at::kHalf, at::kBFloat16});
  check_dtype(op, "indices", indices, {at::kLong});
  check_dim(op, "codebook", codebook, 2);
  check_dim(op, "cluster_size", cluster_size, 1);
  check_dim(op, "embed_sum", embed_sum, 2);
  check_dim(op, "z", z, 2);
  check_dim(op, "indices", indices, 1);
  const int64_t K = codebook.size(0), D = codebook.size(1);
  TORCH_CHECK(K >= 1, op, ": expected a non-empty codebook (got shape ", codebook.sizes(), ")");
  TORCH_CHECK(cluster_size.size(0) == K, op, ": expected cluster_size.size(0) == codebook.size(0) (got ",
              cluster_size.size(0), " vs ", K, ")");
  TORCH_CHECK(embed_sum.sizes() == codebook.sizes(), op, ": expected embed_sum.shape == codebook.shape (got ",
              embed_sum.sizes(), " vs ", codebook.sizes(), ")");
  TORCH_CHECK(z.size(1) == D, op, ": expected z.size(1) == codebook.size(1) (got ", z.size(1), " vs ", D, ")");
  TORCH_CHECK(indices.size(0) == z.size(0), op, ": expected indices.size(0) == z.size(0) (got ", indices.size(0),
              " vs ", z.size(0), ")");
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"codebook", codebook},
                                {"cluster_size", cluster_size}, {"embed_sum", embed_sum}}) {
    TORCH_CHECK(t.is_contiguous(), op, ": expected ", name, " to be contiguous (it is updated in place; got strides ",
                t.strides(), ")");
  }
  check_same_device(op, "cluster_size", cluster_size, "codebook", codebook);
  check_same_device(op, "embed_sum", embed_sum, "codebook", codebook);
  check_same_device(op, "z", z, "codebook", codebook);
  check_same_device(op, "indices", indices, "codebook", codebook);
  TORCH_CHECK(decay >= 0.0 && decay <= 1.0, op, ": expected 0 <= decay <= 1 (got ", decay, ")");
  TORCH_CHECK(std::isfinite(eps) && eps > 0.0, op, ": expected eps > 0 and finite (got ", eps, ")");
}

}  // namespace sparseops::codebook
