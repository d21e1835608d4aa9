#pragma once
// check_inputs() for the sparse24 mask/format ops, shared by the CPU and CUDA kernels.
#include <ATen/ATen.h>

#include "common/checks.h"
#include "common/sparse24_format.h"

namespace sparseops::sparse24 {

enum class Layout { kPacked, kCutlass };

inline Layout parse_layout(const char* op, c10::string_view layout) {
  if (layout == "packed") return Layout::kPacked;
  if (layout == "cutlass") return Layout::kCutlass;
  TORCH_CHECK(false, op, ": expected layout to be \"packed\" or \"cutlass\" (got \"", std::string(layout), "\")");
}

inline void check_nm_mask_inputs(const at::Tensor& w, int64_t n, int64_t m, const std::optional<at::Tensor>& score) {
  constexpr const char* op = "nm_mask";
  check_dtype(op, "w", w, {at::kFloat, at::kHalf, at::kBFloat16});
  TORCH_CHECK(m >= 2 && m <= 16, op, ": expected 2 <= m <= 16 (got m=", m, ")");
  TORCH_CHECK(n >= 1 && n < m, op, ": expected 1 <= n < m (got n=", n, ", m=", m, ")");
  TORCH_CHECK(w.dim() >= 1, op, ": expected w to have at least 1 dimension (got a 0-D tensor)");
  TORCH_CHECK(w.size(-1) % m == 0, op, ": expected w.size(-1) to be divisible by m=", m, " (got ", w.size(-1), ")");
  if (score.has_value()) {
    check_dtype(op, "score", *score, {at::kFloat, at::kHalf, at::kBFloat16});
    TORCH_CHECK(score->sizes() == w.sizes(), op, ": expected score.shape == w.shape (got ", score->sizes(),
                " vs ", w.sizes(), ")");
    check_same_device(op, "score", *score, "w", w);
  }
}

inline Layout check_compress_inputs(const at::Tensor& w, c10::string_view layout_str) {
  constexpr const char* op = "compress_24";
  Layout layout = parse_layout(op, layout_str);
  check_dtype(op, "w", w, {at::kFloat, at::kHalf, at::kBFloat16});
  check_dim(op, "w", w, 2);
  TORCH_CHECK(w.size(1) % 4 == 0, op, ": expected w.size(1) to be divisible by 4 (got ", w.size(1), ")");
  if (layout == Layout::kCutlass) {
    check_dtype(op, "w (layout=\"cutlass\")", w, {at::kHalf, at::kBFloat16});
    TORCH_CHECK(w.size(0) % kCutlassRowMultiple == 0 && w.size(1) % kCutlassColMultiple == 0, op,
                ": layout=\"cutlass\" expects w.size(0) % ", kCutlassRowMultiple, " == 0 and w.size(1) % ",
                kCutlassColMultiple, " == 0 (got shape ", w.sizes(), ")");
  }
  return layout;
}

inline Layout check_decompress_inputs(const at::Tensor& values, const at::Tensor& meta, c10::string_view layout_str) {
  constexpr const char* op = "decompress_24";
  Layout layout = parse_layout(op, layout_str);
  check_dtype(op, "values", values, {at::kFloat, at::kHalf, at::kBFloat16});
  check_dim(op, "values", values, 2);
  check_dim(op, "meta", meta, 2);
  check_same_device(op, "meta", meta, "values", values);
  const int64_t rows = values.size(0), cols = 2 * values.size(1);
  TORCH_CHECK(cols % 4 == 0, op, ": expected values.size(1) to be even (got ", values.size(1), ")");
  if (layout == Layout::kPacked) {
    check_dtype(op, "meta", meta, {at::kByte});
    TORCH_CHECK(meta.size(0) == rows && meta.size(1) == packed_meta_cols(cols), op, ": expected meta of shape [",
                rows, ", ", packed_meta_cols(cols), "] for values of shape ", values.sizes(), " (got ", meta.sizes(), ")");
  } else {
    check_dtype(op, "meta", meta, {at::kShort});
    check_dtype(op, "values (layout=\"cutlass\")", values, {at::kHalf, at::kBFloat16});
    TORCH_CHECK(rows % kCutlassRowMultiple == 0 && cols % kCutlassColMultiple == 0, op,
                ": layout=\"cutlass\" expects rows % 32 == 0 and dense cols % 32 == 0 (got values shape ",
                values.sizes(), ")");
    TORCH_CHECK(meta.size(0) == rows && meta.size(1) == cutlass_meta_cols(cols), op, ": expected meta of shape [",
                rows, ", ", cutlass_meta_cols(cols), "] for values of shape ", values.sizes(), " (got ", meta.sizes(), ")");
  }
  return layout;
}

// The data-dependent errors of compress_24 / decompress_24, for the flat group index `bad` of the first
// offending group (row-major, `groups` groups per row); bad < 0 means none. Shared by CPU and CUDA.
inline void check_compress_result(int64_t bad, int64_t groups, bool prune) {
  if (bad < 0) return;
  const int64_t r = bad / groups, g = bad % groups;
  TORCH_CHECK(!prune, "compress_24: w contains NaN (row ", r, ", columns ", 4 * g, "..", 4 * g + 3,
              "); magnitudes cannot be ranked for prune=True");
  TORCH_CHECK(false, "compress_24: w is not 2:4 sparse: row ", r, ", group ", g, " (columns ", 4 * g, "..", 4 * g + 3,
              ") has more than 2 non-zeros; pass prune=True to keep the 2 largest by magnitude");
}

// bad: flat index (row * groups + group) of the first invalid metadata code found, or < 0.
inline void check_meta_result(const char* op, const char* arg, int64_t bad, int64_t groups) {
  TORCH_CHECK(bad < 0, op, ": ", arg, " holds an invalid 2:4 code at row ", bad / std::max<int64_t>(groups, 1),
              ", group ", bad % std::max<int64_t>(groups, 1), " (a code's first kept index must be below its second; ",
              arg, " must come from compress_24 with the same layout)");
}

inline void check_decompress_result(int64_t bad, int64_t groups) { check_meta_result("decompress_24", "meta", bad, groups); }

}  // namespace sparseops::sparse24
