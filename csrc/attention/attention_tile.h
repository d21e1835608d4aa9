#pragma once
// Per-block bookkeeping and online-softmax maths of block_sparse_attention, shared by the CPU kernels
// (attention_cpu.cpp) and the CUDA kernels (attention_kernel.cu, attention_tc.cuh). No torch headers.
#include <cmath>
#include <cstdint>

#include "common/host_device.h"

namespace sparseops::attention {

// The mask row of (batch b, query head h, q-block qb): the mask broadcasts over B and H when its
// size there is 1.
SPARSEOPS_HD int64_t mask_row(int64_t b, int64_t h, int64_t qb, int64_t mask_b, int64_t mask_h, int64_t nq) {
  return ((mask_b == 1 ? 0 : b) * mask_h + (mask_h == 1 ? 0 : h)) * nq + qb;
}

// How many entries of a mask row a kernel reads: the stored count clamped to [0, width], so that a
// bad count never reads past the row (the CUDA kernels do not rely on a host-side check).
SPARSEOPS_HD int64_t readable_count(int32_t count, int64_t width) {
  return count < 0 ? 0 : (count > width ? width : static_cast<int64_t>(count));
}

// A stored KV-block index is used only inside [0, nkv); the CUDA kernels skip any other.
SPARSEOPS_HD bool valid_kv_block(int64_t kb, int64_t nkv) { return kb >= 0 && kb < nkv; }

// Keys [begin, end) of KV block kb (the last block may be ragged).
struct KeyRange {
  int64_t begin, end;
};
SPARSEOPS_HD KeyRange kv_block_keys(int64_t kb, int64_t block_k, int64_t Skv) {
  const int64_t j0 = kb * block_k;
  return KeyRange{j0, j0 + block_k < Skv ? j0 + block_k : Skv};
}

// max that keeps a NaN (fmaxf would drop it), so NaN inputs give NaN outputs.
SPARSEOPS_HD float nan_max(float a, float b) { return (a != a || b != b) ? a + b : (a > b ? a : b); }

// Online softmax: the factor that rescales a row's running sum and accumulator when its running max
// moves from m_old to m_new; 1 while nothing was visible yet (both -inf).
SPARSEOPS_HD float softmax_rescale(float m_old, float m_new) {
  return m_new == -INFINITY ? 1.0f : expf(m_old - m_new);
}

// exp(s - m) for a score against the row's running max, 0 for a hidden score (s = -inf) and while
// the row has seen nothing (m = -inf).
SPARSEOPS_HD float softmax_weight(float s, float m) { return m == -INFINITY ? 0.0f : expf(s - m); }

// A finished row: the factor for its accumulator and its log-sum-exp. A row that attended to nothing
// (l == 0) yields zeros and lse = -inf.
struct RowResult {
  float inv_l, lse;
};
SPARSEOPS_HD RowResult finish_softmax_row(float m, float l) {
  if (l == 0.0f) return RowResult{0.0f, -INFINITY};
  return RowResult{1.0f / l, m + logf(l)};
}

// Flash-decoding: split s of `splits` walks the entries [begin, end) of a mask row's `count` kept
// blocks (the CPU and CUDA forwards' KV split).
struct EntryRange {
  int64_t begin, end;
};
SPARSEOPS_HD EntryRange split_entries(int64_t count, int64_t split, int64_t splits) {
  return EntryRange{count * split / splits, count * (split + 1) / splits};
}

// Combining the splits of a row, each finished on its own (a normalised row o_s and its lse_s, `stride`
// apart): lse = log sum_s exp(lse_s) and the row is sum_s split_weight(lse_s, lse) o_s. A split that saw
// nothing (lse_s = -inf) weighs 0 (skip it: its o_s is 0, or NaN from 0 * inf); no split saw anything:
// -inf (zeros); a NaN lse_s gives NaN.
SPARSEOPS_HD float merged_lse(const float* lse, int64_t stride, int64_t splits) {
  float mx = -INFINITY;
  for (int64_t s = 0; s < splits; ++s) mx = nan_max(mx, lse[s * stride]);
  if (mx == -INFINITY || mx != mx) return mx;
  float sum = 0.0f;
  for (int64_t s = 0; s < splits; ++s) sum += softmax_weight(lse[s * stride], mx);
  return mx + logf(sum);
}
SPARSEOPS_HD float split_weight(float lse_s, float lse) {
  return lse_s == -INFINITY || lse == -INFINITY ? 0.0f : expf(lse_s - lse);
}

// Backward: P = exp(s - lse) from the saved log-sum-exp, 0 for hidden scores and empty rows.
SPARSEOPS_HD float recomputed_prob(float s, float lse) { return lse == -INFINITY ? 0.0f : expf(s - lse); }

}  // namespace sparseops::attention
