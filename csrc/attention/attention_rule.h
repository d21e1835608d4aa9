#pragma once
// The token-level causal / sliding-window rule of block_sparse_attention, shared by the CPU kernels and
// the CUDA kernels (no torch headers).
#include <cstdint>

#include "common/host_device.h"

namespace sparseops::attention {

// Token-level visibility of key j to query i (bottom-right aligned: query i sits at key position
// i + Skv - Sq), and the same for whole blocks: 0 none visible, 1 some, 2 all.
struct TokenRule {
  int64_t offset;
  bool causal;
  int64_t left, right;
  SPARSEOPS_HD bool visible(int64_t i, int64_t j) const {
    const int64_t p = i + offset;
    if (causal && j > p) return false;
    if (left >= 0 && j < p - left) return false;
    if (right >= 0 && j > p + right) return false;
    return true;
  }
  // rows [i0, i1), keys [j0, j1), both non-empty
  SPARSEOPS_HD int block(int64_t i0, int64_t i1, int64_t j0, int64_t j1) const {
    const int64_t p0 = i0 + offset, p1 = i1 - 1 + offset;
    if (causal && j0 > p1) return 0;
    if (left >= 0 && j1 - 1 < p0 - left) return 0;
    if (right >= 0 && j0 > p1 + right) return 0;
    bool all = true;
    if (causal && j1 - 1 > p0) all = false;
    if (left >= 0 && j0 < p1 - left) all = false;
    if (right >= 0 && j1 - 1 > p0 + right) all = false;
    return all ? 2 : 1;
  }
};

}  // namespace sparseops::attention
