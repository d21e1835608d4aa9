#pragma once
// check_inputs() and the activation parser of sparse24_linear. Device-agnostic: the CPU kernels use
// them, and CUDA glue can share them so the messages stay identical across devices.
#include <ATen/ATen.h>

#include <optional>
#include <string>
#include <string_view>

#include "common/activation.h"
#include "common/checks.h"
#include "common/sparse24_format.h"

namespace sparseops::sparse24 {

// Parses a linear op's activation argument (the names in common/activation.h).
inline Act parse_activation(const char* op, c10::string_view name) {
  Act act = Act::kNone;
  TORCH_CHECK(act_from_name(std::string_view(name.data(), name.size()), &act), op, ": expected activation in {",
              kActivationNames, "} (got \"", std::string(name), "\")");
  return act;
}

// bias: optional [N], x's dtype and device.
inline void check_linear_bias(const char* op, const std::optional<at::Tensor>& bias, const at::Tensor& x, int64_t n) {
  if (!bias.has_value()) return;
  TORCH_CHECK_TYPE(bias->scalar_type() == x.scalar_type(), op, ": expected bias to have x's dtype ", x.scalar_type(),
                   " (got ", bias->scalar_type(), ")");
  TORCH_CHECK(bias->dim() == 1 && bias->size(0) == n, op, ": expected bias of shape [", n, "] (got ", bias->sizes(), ")");
  check_same_device(op, "bias", *bias, "x", x);
}

struct Linear24Sizes {
  int64_t m, n, k;
};

// check_inputs() of sparse24_linear: x [M, K], values [N, K/2] of x's dtype, meta uint8
// [N, ceil(K/8)], bias [N] of x's dtype, all on one device.
inline Linear24Sizes check_linear24_inputs(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
                                           const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "sparse24_linear";
  check_dtype(op, "x", x, {at::kFloat, at::kHalf, at::kBFloat16});
  TORCH_CHECK_TYPE(values.scalar_type() == x.scalar_type(), op, ": expected values to have x's dtype ",
                   x.scalar_type(), " (got ", values.scalar_type(), ")");
  check_dim(op, "x", x, 2);
  check_dim(op, "values", values, 2);
  check_same_device(op, "values", values, "x", x);
  check_same_device(op, "meta", meta, "x", x);
  const int64_t m = x.size(0), k = x.size(1), n = values.size(0);
  TORCH_CHECK(k % 4 == 0, op, ": expected x.size(1) (K) to be divisible by 4 (got ", k, ")");
  TORCH_CHECK(k == 2 * values.size(1), op, ": x has ", k, " features (x.size(-1)) but the weight expects ",
              2 * values.size(1), " (2 * values.size(1) = 2 * ", values.size(1), ")");
  TORCH_CHECK_TYPE(meta.scalar_type() == at::kByte, op, ": expected meta to have dtype uint8 (layout \"packed\") (got ",
                   meta.scalar_type(), ")");
  TORCH_CHECK(meta.dim() == 2 && meta.size(0) == n && meta.size(1) == packed_meta_cols(k), op,
              ": expected meta of shape [", n, ", ", packed_meta_cols(k), "] for values of shape ", values.sizes(),
              " (got ", meta.sizes(), ")");
  check_linear_bias(op, bias, x, n);
  return {m, n, k};
}

// The optional (values_t, meta_t) of sparse24_linear: W^T [K, N] compressed in the packed layout, read by
// the backward only (grad_x = grad_z @ W through the 2:4 kernel). Given together or not at all; values_t
// [K, N/2] of values' dtype, meta_t uint8 [K, ceil(N/8)], N % 4 == 0, on x's device. Shapes only: the
// kept positions are not compared with W's (that would read both operands on every forward).
inline void check_linear24_transposed(const at::Tensor& x, const Linear24Sizes& s, const at::Tensor& values,
                                      const std::optional<at::Tensor>& values_t,
                                      const std::optional<at::Tensor>& meta_t) {
  constexpr const char* op = "sparse24_linear";
  TORCH_CHECK(values_t.has_value() == meta_t.has_value(), op,
              ": expected values_t and meta_t to be given together (got values_t ",
              values_t.has_value() ? "given" : "None", ", meta_t ", meta_t.has_value() ? "given" : "None", ")");
  if (!values_t.has_value()) return;
  const at::Tensor& vt = *values_t;
  const at::Tensor& mt = *meta_t;
  TORCH_CHECK_TYPE(vt.scalar_type() == values.scalar_type(), op, ": expected values_t to have values' dtype ",
                   values.scalar_type(), " (got ", vt.scalar_type(), ")");
  TORCH_CHECK_TYPE(mt.scalar_type() == at::kByte, op,
                   ": expected meta_t to have dtype uint8 (layout \"packed\") (got ", mt.scalar_type(), ")");
  check_same_device(op, "values_t", vt, "x", x);
  check_same_device(op, "meta_t", mt, "x", x);
  TORCH_CHECK(s.n % 4 == 0, op, ": values_t/meta_t (W^T in 2:4) need N = values.size(0) divisible by 4 (got ", s.n,
              ")");
  TORCH_CHECK(vt.dim() == 2 && vt.size(0) == s.k && 2 * vt.size(1) == s.n, op, ": expected values_t of shape [",
              s.k, ", ", s.n / 2, "] (W^T [K, N] compressed, for values of shape ", values.sizes(), ") (got ",
              vt.sizes(), ")");
  TORCH_CHECK(mt.dim() == 2 && mt.size(0) == s.k && mt.size(1) == packed_meta_cols(s.n), op,
              ": expected meta_t of shape [", s.k, ", ", packed_meta_cols(s.n), "] (got ", mt.sizes(), ")");
}

}  // namespace sparseops::sparse24
