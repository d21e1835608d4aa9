// transposable_mask_24 on CPU: 4x4 blocks split across threads, each solved exactly over the 90
// transposable patterns by the solver CUDA shares (common/transposable24.h); with AVX-512, 16 blocks
// of a block row at a time (transposable_avx512.cpp, bit-identical), the portable solver for the rest
// and for NaN blocks (reported).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>

#include "common/cpu_features.h"
#include "common/dispatch.h"
#include "common/transposable24.h"
#include "sparse24/cpu_dtype.h"
#include "sparse24/transposable_checks.h"

namespace sparseops::sparse24 {
namespace {

constexpr Transposable24Table kTable = make_transposable24_table();

at::Tensor transposable_mask_24_cpu(const at::Tensor& w) {
  check_transposable_mask_24_inputs(w);
  check_device_type("transposable_mask_24", "w", w, at::kCPU);
  const at::Tensor wc = w.contiguous();
  const int64_t rows = wc.size(0), cols = wc.size(1);
  const int64_t block_cols = cols / 4, blocks = (rows / 4) * block_cols;
  at::Tensor mask = at::empty({rows, cols}, wc.options().dtype(at::kBool));
  std::atomic<int64_t> first_nan{std::numeric_limits<int64_t>::max()};
  SPARSEOPS_DISPATCH_FLOAT_HALF_BF16(wc.scalar_type(), "transposable_mask_24", [&] {
    const scalar_t* wp = wc.const_data_ptr<scalar_t>();
    bool* mp = mask.mutable_data_ptr<bool>();
    // Block b with the portable solver; a NaN block is recorded (the lowest index is reported).
    auto solve_block = [&](int64_t b) {
      const int64_t r0 = 4 * (b / block_cols), c0 = 4 * (b % block_cols);
      float mag[16];
      bool has_nan = false;
      for (int r = 0; r < 4; ++r) {
        for (int j = 0; j < 4; ++j) {
          const float v = static_cast<float>(wp[(r0 + r) * cols + c0 + j]);
          has_nan |= std::isnan(v);
          mag[4 * r + j] = std::fabs(v);
        }
      }
      if (has_nan) {
        int64_t prev = first_nan.load();
        while (b < prev && !first_nan.compare_exchange_weak(prev, b)) {
        }
        return;
      }
      const uint32_t code = kTable.code[solve_transposable24(mag, kTable.code)];
      for (int r = 0; r < 4; ++r) {
        const uint32_t bits = transposable24_row_bits(code, r);
        for (int j = 0; j < 4; ++j) mp[(r0 + r) * cols + c0 + j] = (bits >> j) & 1u;
      }
    };
#if SPARSEOPS_X86_KERNELS
    if (cpu_use_avx512()) {
      // Work items: runs of 16 blocks (64 columns) of a block row, the row's remainder run shorter.
      const int64_t runs_per_row = (block_cols + 15) / 16;
      at::parallel_for(0, (rows / 4) * runs_per_row, 16, [&](int64_t begin, int64_t end) {
        for (int64_t t = begin; t < end; ++t) {
          const int64_t br = t / runs_per_row, bc0 = 16 * (t % runs_per_row), nb = std::min<int64_t>(16, block_cols - bc0);
          if (nb < 16 || !cpu::transposable16_avx512(cpu_dtype<scalar_t>(), wp, cols, 4 * br, 4 * bc0, kTable.code,
                                                     kTransposable24Patterns, mp)) {
            for (int64_t b = br * block_cols + bc0; b < br * block_cols + bc0 + nb; ++b) solve_block(b);
          }
        }
      });
      return;
    }
#endif
    at::parallel_for(0, blocks, 256, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) solve_block(b);
    });
  });
  const int64_t bad = first_nan.load();
  if (bad != std::numeric_limits<int64_t>::max()) report_transposable_nan(bad, block_cols);
  return mask;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparseops, CPU, m) { m.impl("transposable_mask_24", &transposable_mask_24_cpu); }

}  // namespace sparseops::sparse24
