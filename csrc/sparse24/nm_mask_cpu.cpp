// nm_mask on CPU: one pass over the scores, groups split across threads.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <cmath>
#include <limits>

#include "common/dispatch.h"
#include "common/nm_select.h"
#include "sparse24/sparse24_checks.h"

namespace sparseops::sparse24 {
namespace {

// M > 0: group size known at compile time (unrolled); M == 0: runtime m.
template <int M, typename scalar_t>
void nm_mask_groups(const scalar_t* score, bool* out, int64_t groups, int n, int m_runtime,
                    std::atomic<int64_t>& first_nan) {
  const int m = M > 0 ? M : m_runtime;
  at::parallel_for(0, groups, 4096, [&](int64_t begin, int64_t end) {
    float mag[kMaxGroupSize];
    for (int64_t g = begin; g < end; ++g) {
      const scalar_t* s = score + g * m;
      bool has_nan = false;
      for (int j = 0; j < m; ++j) {
        const float v = static_cast<float>(s[j]);
        has_nan |= std::isnan(v);
        mag[j] = std::fabs(v);
      }
      if (has_nan) {
        int64_t prev = first_nan.load();
        while (g * m < prev && !first_nan.compare_exchange_weak(prev, g * m)) {
        }
        continue;
      }
      const uint32_t keep = top_n_mask(mag, n, m);
      for (int j = 0; j < m; ++j) out[g * m + j] = (keep >> j) & 1u;
    }
  });
}

at::Tensor nm_mask_cpu(const at::Tensor& w, int64_t n, int64_t m, const std::optional<at::Tensor>& score) {
  check_nm_mask_inputs(w, n, m, score);
  check_device_type("nm_mask", "w", w, at::kCPU);
  const at::Tensor s = (score.has_value() ? *score : w).contiguous();
  at::Tensor out = at::empty(w.sizes(), w.options().dtype(at::kBool));
  const int64_t groups = s.numel() / m;
  std::atomic<int64_t> first_nan{std::numeric_limits<int64_t>::max()};
  SPARSEOPS_DISPATCH_FLOAT_HALF_BF16(s.scalar_type(), "nm_mask", [&] {
    const scalar_t* sp = s.const_data_ptr<scalar_t>();
    bool* op = out.mutable_data_ptr<bool>();
    if (m == 4) {
      nm_mask_groups<4>(sp, op, groups, static_cast<int>(n), 4, first_nan);
    } else {
      nm_mask_groups<0>(sp, op, groups, static_cast<int>(n), static_cast<int>(m), first_nan);
    }
  });
  const int64_t bad = first_nan.load();
  TORCH_CHECK(bad == std::numeric_limits<int64_t>::max(), "nm_mask: ", score.has_value() ? "score" : "w",
              " contains NaN (first in the group starting at flat index ", bad, "); magnitudes cannot be ranked");
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparseops, CPU, m) { m.impl("nm_mask", &nm_mask_cpu); }

}  // namespace sparseops::sparse24
