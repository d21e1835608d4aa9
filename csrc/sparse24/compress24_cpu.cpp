// compress_24 / decompress_24 on CPU: rows split across threads, one pass over w. The AVX-512 row
// kernels (compress24_avx512.cpp) run when the CPU has AVX-512; the loops below are the baseline.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "common/cpu_features.h"
#include "common/first_error.h"
#include "common/dispatch.h"
#include "sparse24/cpu_dtype.h"
#include "sparse24/sparse24_checks.h"
#include "sparse24/sparse24_cpu_kernels.h"

namespace sparseops::sparse24 {
namespace {

// Writes one row's nibbles into the metadata tensor in the requested layout.
void store_row_meta(const uint8_t* codes, int64_t groups, int64_t r, int64_t rows, Layout layout, void* meta,
                    int64_t meta_cols) {
  if (layout == Layout::kPacked) {
    uint8_t* row = static_cast<uint8_t*>(meta) + r * meta_cols;
    for (int64_t j = 0; j < meta_cols; ++j) {
      const uint8_t hi = 2 * j + 1 < groups ? codes[2 * j + 1] : 0;
      row[j] = static_cast<uint8_t>(codes[2 * j] | (hi << 4));
    }
  } else {
    int16_t* out = static_cast<int16_t*>(meta);
    for (int64_t c = 0; c < meta_cols; ++c) {
      const uint8_t* q = codes + 4 * c;
      const uint16_t word = q[0] | (q[1] << 4) | (q[2] << 8) | (q[3] << 12);
      out[cutlass_meta_offset(r, c, rows)] = static_cast<int16_t>(word);
    }
  }
}

// Row r's metadata addresses for the AVX-512 kernels (meta is only read by decompress_24).
cpu::RowMeta row_meta(void* meta, int64_t r, int64_t rows, Layout layout, int64_t meta_cols) {
  cpu::RowMeta rm;
  if (layout == Layout::kPacked) {
    rm.packed = static_cast<uint8_t*>(meta) + r * meta_cols;
  } else {
    rm.cutlass = static_cast<int16_t*>(meta);
    rm.even = cutlass_meta_offset(r, 0, rows);
    rm.odd = cutlass_meta_offset(r, 1, rows);
    rm.pair_stride = cutlass_meta_offset(r, 2, rows) - rm.even;
  }
  return rm;
}

uint8_t load_row_code(const void* meta, int64_t g, int64_t r, int64_t rows, Layout layout, int64_t meta_cols) {
  if (layout == Layout::kPacked) {
    const uint8_t byte = static_cast<const uint8_t*>(meta)[r * meta_cols + g / 2];
    return (g % 2 == 0) ? (byte & 0xF) : (byte >> 4);
  }
  const uint16_t word = static_cast<uint16_t>(static_cast<const int16_t*>(meta)[cutlass_meta_offset(r, g / 4, rows)]);
  return (word >> (4 * (g % 4))) & 0xF;
}

std::tuple<at::Tensor, at::Tensor> compress_24_cpu(const at::Tensor& w, bool prune, c10::string_view layout_str) {
  const Layout layout = check_compress_inputs(w, layout_str);
  check_device_type("compress_24", "w", w, at::kCPU);
  const at::Tensor wc = w.contiguous();
  const int64_t rows = wc.size(0), cols = wc.size(1), groups = cols / 4;
  at::Tensor values = at::empty({rows, cols / 2}, wc.options());
  const int64_t meta_cols = layout == Layout::kPacked ? packed_meta_cols(cols) : cutlass_meta_cols(cols);
  at::Tensor meta = at::empty({rows, meta_cols}, wc.options().dtype(layout == Layout::kPacked ? at::kByte : at::kShort));
  std::atomic<int64_t> first_bad{kNoError};  // flat group index of the first NaN (prune) or >2-non-zero group
  if (rows > 0 && cols > 0) {
    SPARSEOPS_DISPATCH_FLOAT_HALF_BF16(wc.scalar_type(), "compress_24", [&] {
      const scalar_t* wp = wc.const_data_ptr<scalar_t>();
      scalar_t* vp = values.mutable_data_ptr<scalar_t>();
      void* mp = meta.data_ptr();
      const int64_t grain = std::max<int64_t>(1, 16384 / cols);
#if SPARSEOPS_X86_KERNELS
      if (cpu_use_avx512()) {
        at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
          for (int64_t r = begin; r < end; ++r) {
            const int64_t g = cpu::compress24_row_avx512(cpu_dtype<scalar_t>(), wp + r * cols, vp + r * (cols / 2),
                                                         row_meta(mp, r, rows, layout, meta_cols), cols, prune);
            if (g >= 0) {
              record_min(first_bad, r * groups + g);
              return;  // the first offender of this range; the outputs are discarded
            }
          }
        });
        return;
      }
#endif
      at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
        std::vector<uint8_t> codes(groups);
        for (int64_t r = begin; r < end; ++r) {
          const scalar_t* wr = wp + r * cols;
          scalar_t* vr = vp + r * (cols / 2);
          for (int64_t g = 0; g < groups; ++g) {
            const scalar_t* q = wr + 4 * g;
            uint32_t keep;
            if (prune) {
              float mag[4];
              bool has_nan = false;
              for (int j = 0; j < 4; ++j) {
                const float v = static_cast<float>(q[j]);
                has_nan |= std::isnan(v);
                mag[j] = std::fabs(v);
              }
              if (has_nan) {
                record_min(first_bad, r * groups + g);
                return;  // the first offender of this range; the outputs are discarded
              }
              keep = cpu::top_n_mask4(mag, 2);
            } else {
              keep = 0;
              for (int j = 0; j < 4; ++j) keep |= (static_cast<float>(q[j]) != 0.0f) << j;
              if (popcount4(keep) > 2) {
                record_min(first_bad, r * groups + g);
                return;
              }
              keep = complete_pair(keep);
            }
            const uint8_t code = code_from_keep(keep);
            codes[g] = code;
            vr[2 * g] = q[code_first(code)];
            vr[2 * g + 1] = q[code_second(code)];
          }
          store_row_meta(codes.data(), groups, r, rows, layout, mp, meta_cols);
        }
      });
    });
  }
  const int64_t bad = first_bad.load();
  check_compress_result(bad == kNoError ? -1 : bad, groups, prune);
  return {values, meta};
}

at::Tensor decompress_24_cpu(const at::Tensor& values, const at::Tensor& meta, c10::string_view layout_str) {
  const Layout layout = check_decompress_inputs(values, meta, layout_str);
  check_device_type("decompress_24", "values", values, at::kCPU);
  const at::Tensor vc = values.contiguous();
  const at::Tensor mc = meta.contiguous();
  const int64_t rows = vc.size(0), cols = 2 * vc.size(1), groups = cols / 4, meta_cols = mc.size(1);
  at::Tensor dense = at::empty({rows, cols}, vc.options());
  std::atomic<int64_t> first_bad{kNoError};
  if (rows > 0 && cols > 0) {
    SPARSEOPS_DISPATCH_FLOAT_HALF_BF16(vc.scalar_type(), "decompress_24", [&] {
      const scalar_t* vp = vc.const_data_ptr<scalar_t>();
      const void* mp = mc.const_data_ptr();
      scalar_t* dp = dense.mutable_data_ptr<scalar_t>();
      const int64_t grain = std::max<int64_t>(1, 16384 / cols);
#if SPARSEOPS_X86_KERNELS
      if (cpu_use_avx512()) {
        at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
          for (int64_t r = begin; r < end; ++r) {
            // const_cast: the row kernel only reads the metadata
            const int64_t g = cpu::decompress24_row_avx512(cpu_dtype<scalar_t>(), vp + r * (cols / 2),
                                                           row_meta(const_cast<void*>(mp), r, rows, layout, meta_cols),
                                                           dp + r * cols, cols);
            if (g >= 0) {
              record_min(first_bad, r * groups + g);
              return;  // the first invalid code of this range; the output is discarded
            }
          }
        });
        return;
      }
#endif
      at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          for (int64_t g = 0; g < groups; ++g) {
            const uint8_t code = load_row_code(mp, g, r, rows, layout, meta_cols);
            scalar_t* d = dp + r * cols + 4 * g;
            d[0] = d[1] = d[2] = d[3] = scalar_t(0);
            if (!code_valid(code)) {
              record_min(first_bad, r * groups + g);
              return;  // the first invalid code of this range; the output is discarded
            }
            d[code_first(code)] = vp[r * (cols / 2) + 2 * g];
            d[code_second(code)] = vp[r * (cols / 2) + 2 * g + 1];
          }
        }
      });
    });
  }
  const int64_t bad = first_bad.load();
  check_decompress_result(bad == kNoError ? -1 : bad, groups);
  return dense;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparseops, CPU, m) {
  m.impl("compress_24", &compress_24_cpu);
  m.impl("decompress_24", &decompress_24_cpu);
}

}  // namespace sparseops::sparse24
