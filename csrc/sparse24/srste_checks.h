#pragma once
// check_inputs() for nm_srste / nm_srste_backward, shared by the CPU and CUDA kernels.
#include <ATen/ATen.h>

#include <cmath>
#include <optional>

#include "common/checks.h"
#include "common/nm_select.h"

namespace sparseops::sparse24 {

// pruned_grad_scale as the kernels take it: a value (None, or a tensor on the CPU) or a pointer to a
// float32 on w's device (read by the CUDA kernel: no sync; not validated).
struct ScaleArg {
  float value = 1.0f;
  const float* device_ptr = nullptr;
};

inline ScaleArg check_scale(const char* op, const std::optional<at::Tensor>& scale, const at::Tensor& w) {
  ScaleArg out;
  if (!scale.has_value()) return out;
  const at::Tensor& s = *scale;
  check_dtype(op, "pruned_grad_scale", s, {at::kFloat});
  TORCH_CHECK(s.numel() == 1 && s.dim() <= 1, op, ": expected pruned_grad_scale to be a one-element tensor (got shape ",
              s.sizes(), ")");
  TORCH_CHECK(s.device().is_cpu() || s.device() == w.device(), op,
              ": expected pruned_grad_scale on the CPU or on w's device (", w.device(), "), got ", s.device());
  if (s.device().is_cpu()) {
    out.value = s.item<float>();
    TORCH_CHECK(std::isfinite(out.value) && out.value >= 0, op,
                ": expected pruned_grad_scale to be finite and >= 0 (got ", out.value, ")");
  } else {
    out.device_ptr = s.const_data_ptr<float>();
  }
  return out;
}

inline ScaleArg check_nm_srste_inputs(const at::Tensor& w, int64_t n, int64_t m, double decay,
                                      const std::optional<at::Tensor>& pruned_grad_scale) {
  constexpr const char* op = "nm_srste";
  check_dtype(op, "w", w, {at::kFloat, at::kHalf, at::kBFloat16});
  TORCH_CHECK(m >= 2 && m <= kMaxGroupSize, op, ": expected 2 <= m <= ", kMaxGroupSize, " (got m=", m, ")");
  TORCH_CHECK(n >= 1 && n < m, op, ": expected 1 <= n < m (got n=", n, ", m=", m, ")");
  TORCH_CHECK(w.dim() >= 1, op, ": expected w to have at least 1 dimension (got a 0-D tensor)");
  TORCH_CHECK(w.size(-1) % m == 0, op, ": expected w.size(-1) to be divisible by m=", m, " (got ", w.size(-1), ")");
  TORCH_CHECK(std::isfinite(decay) && decay >= 0, op, ": expected decay to be finite and >= 0 (got ", decay, ")");
  return check_scale(op, pruned_grad_scale, w);
}

inline ScaleArg check_nm_srste_backward_inputs(const at::Tensor& grad, const at::Tensor& w, const at::Tensor& mask,
                                               double decay, const std::optional<at::Tensor>& pruned_grad_scale) {
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
  return check_scale(op, pruned_grad_scale, w);
}

}  // namespace sparseops::sparse24
