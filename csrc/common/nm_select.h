#pragma once
// Top-n selection inside one group of m <= 16 scores: the rule nm_mask, compress_24(prune=True) and
// every later N:M op share, so CPU and CUDA agree bit for bit.
#include <cstdint>
#include "common/host_device.h"

namespace sparseops {

constexpr int kMaxGroupSize = 16;

// Bit j set <=> element j is among the n largest of mag[0..m); ties go to the lower index.
// O(m^2) compares with m <= 16: cheaper than sorting at this size and branch-free on GPUs.
SPARSEOPS_HD uint32_t top_n_mask(const float* mag, int n, int m) {
  uint32_t mask = 0;
  for (int j = 0; j < m; ++j) {
    int rank = 0;
    for (int k = 0; k < m; ++k) {
      rank += (mag[k] > mag[j]) || (mag[k] == mag[j] && k < j);
    }
    if (rank < n) mask |= 1u << j;
  }
  return mask;
}

}  // namespace sparseops
