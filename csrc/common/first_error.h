#pragma once
// Reporting the first bad element found by a parallel CPU loop: each task records the flat index of
// the first one it sees, the smallest wins, and the glue raises one error naming it afterwards.
#include <atomic>
#include <cstdint>
#include <limits>

namespace sparseops {

constexpr int64_t kNoError = std::numeric_limits<int64_t>::max();

inline void record_min(std::atomic<int64_t>& slot, int64_t v) {
  int64_t prev = slot.load();
  while (v < prev && !slot.compare_exchange_weak(prev, v)) {
  }
}

}  // namespace sparseops
