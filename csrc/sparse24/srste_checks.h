#pragma once
// check_inputs() for nm_srste / nm_srste_backward, shared by the CPU and CUDA kernels.
#include <ATen/ATen.h>

#include <cmath>

#include "common/checks.h"
#include "common/nm_select.h"

namespace sparseops::sparse24 {

inline void check_nm_srste_inputs(const at::Tensor& w, int64_t n, int64_t m, double decay, double pruned_grad_scale) {
  constexpr const char* op = "nm_srste";
  check_dtype(op, "w", w, {at::kFloat, at::kHalf, at::kBFloat16});
  TORCH_CHECK(m >= 2 && m <= kMaxGroupSize, op, ": expected 2 <= m <= ", kMaxGroupSize, " (got m=", m, ")");
  TORCH_CHECK(n >= 1 && n < m, op, ": expected 1 <= n < m (got n=", n, ", m=", m, ")");
  TORCH_CHECK(w.dim() >= 1, op, ": expected w to have at least 1 dimension (got a 0-D tensor)");
  TORCH_CHECK(w.size(-1) % m == 0, op, ": expected w.size(-1) to be divisible by m=", m, " (got ", w.size(-1), ")");
  TORCH_CHECK(std::isfinite(decay) && decay >= 0, op, ": expected decay to be finite and >= 0 (got ", decay, ")");
  TORCH_CHECK(std::isfinite(pruned_grad_scale) && pruned_grad_scale >= 0, op,
              ": expected pruned_grad_scale to be finite and >= 0 (got ", pruned_grad_scale, ")");
}

inline void check_nm_srste_backward_inputs(const at::Tensor& grad, const at::Tensor& w, const at::Tensor& mask,
                                           double decay, double pruned_grad_scale) {
  constexpr const char* op = "nm_srste_backward";
  check_dtype(op, "w", w, {at::kFloat, at::kHalf, at::kBFloat16});
  TORCH_CHECK_TYPE(grad.scalar_type() == w.scalar_type(), op, ": expected grad to have w's dtype ",
                   w.scalar_type(), " (got ", grad.scalar_type(), ")");
  check_dtype(op, "mask", mask, {at::kBool});
  TORCH_CHECK(grad.sizes() == w.sizes(), op, ": expected grad.shape == w.shape (got ", grad.sizes(), " vs ",
              w.sizes(), ")");
  TORCH_CHECK(mask.sizes() == w.sizes(), op, ": expected mask.shape == w.shape (got ", mask.sizes(), " vs ",
              w.sizes(), ")");
  check_same_device(op, "grad", grad, "w", w);
  check_same_device(op, "mask", mask, "w", w);
  TORCH_CHECK(std::isfinite(decay) && decay >= 0, op, ": expected decay to be finite and >= 0 (got ", decay, ")");
  TORCH_CHECK(std::isfinite(pruned_grad_scale) && pruned_grad_scale >= 0, op,
              ": expected pruned_grad_scale to be finite and >= 0 (got ", pruned_grad_scale, ")");
}

}  // namespace sparseops::sparse24
