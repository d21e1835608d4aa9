// nm_mask on CPU: one pass over the scores, groups split across threads. The AVX-512 kernels
// (nm_mask_avx512.cpp, m in {2, 4, 8, 16}) run when the CPU has AVX-512; the loops below are the baseline.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "common/cpu_features.h"
#include "common/first_error.h"
#include "common/dispatch.h"
#include "common/nm_select.h"
#include "sparse24/cpu_dtype.h"
#include "sparse24/sparse24_checks.h"
#include "sparse24/sparse24_cpu_kernels.h"

namespace sparseops::sparse24 {
namespace {

// Baseline, m == 4: pairwise compares (cpu::top_n_mask4), 4 bools written as one word.
template <typename scalar_t>
void nm_mask_groups4(const scalar_t* score, bool* out, int64_t groups, int n, std::atomic<int64_t>& first_nan) {
  at::parallel_for(0, groups, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g) {
      const scalar_t* s = score + 4 * g;
      float mag[4];
      bool has_nan = false;
      for (int j = 0; j < 4; ++j) {
        const float v = static_cast<float>(s[j]);
        has_nan |= std::isnan(v);
        mag[j] = std::fabs(v);
      }
      if (has_nan) {
        record_min(first_nan, 4 * g);
        return;  // the first NaN of this range; the output is discarded
      }
      const uint32_t keep = cpu::top_n_mask4(mag, n);
      uint8_t bytes[4];
      for (int j = 0; j < 4; ++j) bytes[j] = (keep >> j) & 1u;
      std::memcpy(out + 4 * g, bytes, 4);
    }
  });
}

// Baseline, any m.
template <typename scalar_t>
void nm_mask_groups(const scalar_t* score, bool* out, int64_t groups, int n, int m, std::atomic<int64_t>& first_nan) {
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
        record_min(first_nan, g * m);
        return;  // the first NaN of this range; the output is discarded
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
  std::atomic<int64_t> first_nan{kNoError};
  SPARSEOPS_DISPATCH_FLOAT_HALF_BF16(s.scalar_type(), "nm_mask", [&] {
    const scalar_t* sp = s.const_data_ptr<scalar_t>();
    bool* op = out.mutable_data_ptr<bool>();
#if SPARSEOPS_X86_KERNELS
    if (cpu_use_avx512() && cpu::nm_mask_avx512_supports(m)) {
      // Chunks of whole 64-element blocks (a multiple of every supported m and of the vector width).
      constexpr int64_t kBlock = 64;
      const int64_t numel = s.numel();
      at::parallel_for(0, (numel + kBlock - 1) / kBlock, 512, [&](int64_t b0, int64_t b1) {
        const int64_t bad = cpu::nm_mask_avx512(cpu_dtype<scalar_t>(), sp, op, b0 * kBlock, std::min(b1 * kBlock, numel),
                                                static_cast<int>(n), static_cast<int>(m));
        if (bad >= 0) record_min(first_nan, bad);
      });
    } else
#endif
    if (m == 4) {
      nm_mask_groups4(sp, op, groups, static_cast<int>(n), first_nan);
    } else {
      nm_mask_groups(sp, op, groups, static_cast<int>(n), static_cast<int>(m), first_nan);
    }
  });
  const int64_t bad = first_nan.load();
  TORCH_CHECK(bad == kNoError, "nm_mask: ", score.has_value() ? "score" : "w",
              " contains NaN (first in the group starting at flat index ", bad, "); magnitudes cannot be ranked");
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparseops, CPU, m) { m.impl("nm_mask", &nm_mask_cpu); }

}  // namespace sparseops::sparse24
