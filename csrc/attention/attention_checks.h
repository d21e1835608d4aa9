#pragma once
// check_inputs() for block_sparse_attention, its backward and topk_block_mask, shared by the CPU and
// CUDA glue. The mask's contents (counts and indices) are validated here when check_mask_contents:
// always on CPU (the CPU kernels rely on it), on CUDA only on request (SPARSEOPS_CHECK_MASK=1; a
// device-to-host copy and sync), since the CUDA kernels clamp counts and skip bad indices themselves.
#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <vector>

#include "attention/attention_rule.h"
#include "common/checks.h"

namespace sparseops::attention {

// Sizes the kernels work with. Mask tensors are [mask_b, mask_h, nq(, width)], mask_b in {1, B},
// mask_h in {1, Hq}: a mask with mask_h == 1 is shared by all query heads (and so by a GQA group).
struct AttnDims {
  int64_t B = 0, Hq = 0, Hkv = 0, Sq = 0, Skv = 0, D = 0;
  int64_t block_q = 0, block_k = 0, nq = 0, nkv = 0;
  int64_t mask_b = 1, mask_h = 1, width = 0;
  bool causal = false;
  int64_t window_left = -1, window_right = -1;  // -1: unbounded on that side
  float scale = 1.0f;
};

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Counts in [0, width], indices of the first count entries in [0, nkv) and distinct. num/idx: CPU,
// contiguous int32.
inline void check_mask_values(const char* op, const at::Tensor& num, const at::Tensor& idx, int64_t nkv,
                              int64_t width) {
  const int32_t* n = num.const_data_ptr<int32_t>();
  const int32_t* ix = idx.const_data_ptr<int32_t>();
  const int64_t rows = num.numel();
  std::vector<uint8_t> seen(static_cast<size_t>(nkv), 0);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t c = n[r];
    TORCH_CHECK(c >= 0 && c <= width, op, ": expected every kv_num_blocks entry in [0, kv_indices.size(-1)=", width,
                "] (got ", c, " at flat position ", r, ")");
    const int32_t* row = ix + r * width;
    for (int64_t j = 0; j < c; ++j) {
      const int64_t b = row[j];
      TORCH_CHECK(b >= 0 && b < nkv, op, ": expected kv_indices entries (within kv_num_blocks) in [0, ", nkv,
                  ") = [0, ceil(kv_len / block_k)) (got ", b, " at row ", r, ", position ", j, ")");
      TORCH_CHECK(!seen[b], op, ": expected distinct kv_indices within a row (block ", b, " repeated in row ", r,
                  ")");
      seen[b] = 1;
    }
    for (int64_t j = 0; j < c; ++j) seen[row[j]] = 0;
  }
}

inline void check_mask_shapes(const char* op, const at::Tensor& num, const at::Tensor& idx, AttnDims& d) {
  check_dtype(op, "kv_num_blocks", num, {at::kInt});
  check_dtype(op, "kv_indices", idx, {at::kInt});
  check_dim(op, "kv_num_blocks", num, 3);
  check_dim(op, "kv_indices", idx, 4);
  TORCH_CHECK(d.block_q >= 1 && d.block_q <= 1024 && d.block_k >= 1 && d.block_k <= 1024, op,
              ": expected block_q and block_k in [1, 1024] (got ", d.block_q, ", ", d.block_k, ")");
  d.nq = ceil_div(d.Sq, d.block_q);
  d.nkv = ceil_div(d.Skv, d.block_k);
  d.mask_b = num.size(0);
  d.mask_h = num.size(1);
  TORCH_CHECK(d.mask_b == 1 || d.mask_b == d.B, op, ": expected kv_num_blocks.size(0) in {1, B=", d.B, "} (got ",
              d.mask_b, ")");
  TORCH_CHECK(d.mask_h == 1 || d.mask_h == d.Hq, op, ": expected kv_num_blocks.size(1) in {1, Hq=", d.Hq, "} (got ",
              d.mask_h, ")");
  TORCH_CHECK(num.size(2) == d.nq, op, ": expected kv_num_blocks.size(2) == ceil(q_len / block_q) = ceil(", d.Sq,
              " / ", d.block_q, ") = ", d.nq, " (got ", num.size(2), "): the mask does not fit q");
  TORCH_CHECK(idx.size(0) == d.mask_b && idx.size(1) == d.mask_h && idx.size(2) == d.nq, op,
              ": expected kv_indices.shape[:3] == kv_num_blocks.shape (got ", idx.sizes(), " vs ", num.sizes(), ")");
  d.width = idx.size(3);
}

inline AttnDims check_qkv(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  check_dtype(op, "q", q, {at::kFloat, at::kHalf, at::kBFloat16});
  TORCH_CHECK_TYPE(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(), op,
                   ": expected q, k, v of one dtype (got ", q.scalar_type(), ", ", k.scalar_type(), ", ",
                   v.scalar_type(), ")");
  check_dim(op, "q", q, 4);
  check_dim(op, "k", k, 4);
  check_dim(op, "v", v, 4);
  check_same_device(op, "k", k, "q", q);
  check_same_device(op, "v", v, "q", q);
  AttnDims d;
  d.B = q.size(0);
  d.Hq = q.size(1);
  d.Sq = q.size(2);
  d.D = q.size(3);
  d.Hkv = k.size(1);
  d.Skv = k.size(2);
  TORCH_CHECK(k.size(0) == d.B && v.size(0) == d.B, op, ": expected q, k, v with one batch size (got ", d.B, ", ",
              k.size(0), ", ", v.size(0), ")");
  TORCH_CHECK(v.sizes() == k.sizes(), op, ": expected v.shape == k.shape (got ", v.sizes(), " vs ", k.sizes(), ")");
  TORCH_CHECK(k.size(3) == d.D, op, ": expected k.size(3) == q.size(3) = ", d.D, " (got ", k.size(3), ")");
  TORCH_CHECK(d.D >= 1 && d.D <= 256, op, ": expected head dim q.size(3) in [1, 256] (got ", d.D, ")");
  TORCH_CHECK(d.Hkv >= 1 && d.Hq % d.Hkv == 0, op, ": expected q.size(1) (Hq=", d.Hq,
              ") to be a multiple of k.size(1) (Hkv=", d.Hkv, ")");
  TORCH_CHECK(d.Sq >= 1, op, ": expected q.size(2) (q_len) >= 1 (got ", d.Sq, ")");
  TORCH_CHECK(d.Skv >= 1, op, ": expected k.size(2) (kv_len) >= 1 (got ", d.Skv, ")");
  return d;
}

inline AttnDims check_block_sparse_attention_inputs(const char* op, const at::Tensor& q, const at::Tensor& k,
                                                    const at::Tensor& v, const at::Tensor& kv_num_blocks,
                                                    const at::Tensor& kv_indices, int64_t block_q, int64_t block_k,
                                                    bool causal, int64_t window_left, int64_t window_right,
                                                    std::optional<double> scale, bool check_mask_contents) {
  AttnDims d = check_qkv(op, q, k, v);
  check_same_device(op, "kv_num_blocks", kv_num_blocks, "q", q);
  check_same_device(op, "kv_indices", kv_indices, "q", q);
  d.block_q = block_q;
  d.block_k = block_k;
  check_mask_shapes(op, kv_num_blocks, kv_indices, d);
  TORCH_CHECK(window_left >= -1 && window_right >= -1, op,
              ": expected window_left and window_right >= 0, or -1 for unbounded (got ", window_left, ", ",
              window_right, ")");
  d.causal = causal;
  d.window_left = window_left;
  d.window_right = window_right;
  const double s = scale.has_value() ? *scale : 1.0 / std::sqrt(static_cast<double>(d.D));
  TORCH_CHECK(std::isfinite(s), op, ": expected a finite scale (got ", s, ")");
  d.scale = static_cast<float>(s);
  if (check_mask_contents) {
    const at::Tensor num_cpu = kv_num_blocks.to(at::kCPU).contiguous();
    const at::Tensor idx_cpu = kv_indices.to(at::kCPU).contiguous();
    check_mask_values(op, num_cpu, idx_cpu, d.nkv, d.width);
  }
  return d;
}

inline void check_backward_extra(const char* op, const AttnDims& d, const at::Tensor& q, const at::Tensor& grad_out,
                                 const at::Tensor& out, const at::Tensor& lse,
                                 const std::optional<at::Tensor>& grad_lse) {
  TORCH_CHECK(grad_out.sizes() == q.sizes() && out.sizes() == q.sizes(), op,
              ": expected grad_out.shape == out.shape == q.shape (got ", grad_out.sizes(), ", ", out.sizes(), " vs ",
              q.sizes(), ")");
  TORCH_CHECK_TYPE(grad_out.scalar_type() == q.scalar_type() && out.scalar_type() == q.scalar_type(), op,
                   ": expected grad_out and out with q's dtype ", q.scalar_type(), " (got ", grad_out.scalar_type(),
                   ", ", out.scalar_type(), ")");
  check_dtype(op, "lse", lse, {at::kFloat});
  TORCH_CHECK(lse.dim() == 3 && lse.size(0) == d.B && lse.size(1) == d.Hq && lse.size(2) == d.Sq, op,
              ": expected lse of shape [B, Hq, Sq] = [", d.B, ", ", d.Hq, ", ", d.Sq, "] (got ", lse.sizes(), ")");
  check_same_device(op, "grad_out", grad_out, "q", q);
  check_same_device(op, "out", out, "q", q);
  check_same_device(op, "lse", lse, "q", q);
  if (grad_lse.has_value()) {
    check_dtype(op, "grad_lse", *grad_lse, {at::kFloat});
    TORCH_CHECK(grad_lse->sizes() == lse.sizes(), op, ": expected grad_lse.shape == lse.shape (got ",
                grad_lse->sizes(), " vs ", lse.sizes(), ")");
    check_same_device(op, "grad_lse", *grad_lse, "q", q);
  }
}

// topk_block_mask: q [B, Hq, Sq, D], k [B, Hkv, Skv, D].
inline AttnDims check_topk_block_mask_inputs(const char* op, const at::Tensor& q, const at::Tensor& k, int64_t block_q,
                                             int64_t block_k, int64_t topk, int64_t sink_blocks,
                                             int64_t local_blocks) {
  AttnDims d = check_qkv(op, q, k, k);
  TORCH_CHECK(block_q >= 1 && block_q <= 1024 && block_k >= 1 && block_k <= 1024, op,
              ": expected block_q and block_k in [1, 1024] (got ", block_q, ", ", block_k, ")");
  TORCH_CHECK(topk >= 0 && sink_blocks >= 0 && local_blocks >= 0, op,
              ": expected topk, sink_blocks, local_blocks >= 0 (got ", topk, ", ", sink_blocks, ", ", local_blocks,
              ")");
  d.block_q = block_q;
  d.block_k = block_k;
  d.nq = ceil_div(d.Sq, block_q);
  d.nkv = ceil_div(d.Skv, block_k);
  d.width = d.nkv;
  return d;
}

inline TokenRule token_rule(const AttnDims& d) {
  return TokenRule{d.Skv - d.Sq, d.causal, d.window_left, d.window_right};
}

}  // namespace sparseops::attention
