// compress_24 / decompress_24, CUDA glue: checks, stream, launch, data-dependent error report.
#include <torch/library.h>

#include "common/cuda_glue.h"
#include "sparse24/sparse24_checks.h"
#include "sparse24/sparse24_launch.h"

namespace sparseops::sparse24 {
namespace {

std::tuple<at::Tensor, at::Tensor> compress_24_cuda(const at::Tensor& w, bool prune, c10::string_view layout_str) {
  const Layout layout = check_compress_inputs(w, layout_str);
  check_device_type("compress_24", "w", w, at::kCUDA);
  const c10::cuda::OptionalCUDAGuard guard(w.device());
  const at::Tensor wc = w.contiguous();
  const int64_t rows = wc.size(0), cols = wc.size(1), groups = cols / 4;
  at::Tensor values = at::empty({rows, cols / 2}, wc.options());
  const bool cutlass = layout == Layout::kCutlass;
  at::Tensor meta = at::empty({rows, cutlass ? cutlass_meta_cols(cols) : packed_meta_cols(cols)},
                              wc.options().dtype(cutlass ? at::kShort : at::kByte));
  at::Tensor first_bad = make_first_index_slot(wc);
  Compress24Params p{wc.const_data_ptr(), values.mutable_data_ptr(), meta.mutable_data_ptr(), rows, cols, prune,
                     cutlass, to_device_dtype("compress_24", wc.scalar_type()), slot_ptr(first_bad)};
  SPARSEOPS_CUDA_CHECK(launch_compress_24(p, current_stream()));
  const int64_t bad = rows * cols > 0 ? read_slot(first_bad) : -1;
  check_compress_result(bad, groups, prune);
  return {values, meta};
}

at::Tensor decompress_24_cuda(const at::Tensor& values, const at::Tensor& meta, c10::string_view layout_str) {
  const Layout layout = check_decompress_inputs(values, meta, layout_str);
  check_device_type("decompress_24", "values", values, at::kCUDA);
  const c10::cuda::OptionalCUDAGuard guard(values.device());
  const at::Tensor vc = values.contiguous();
  const at::Tensor mc = meta.contiguous();
  const int64_t rows = vc.size(0), cols = 2 * vc.size(1), groups = cols / 4;
  at::Tensor dense = at::empty({rows, cols}, vc.options());
  at::Tensor first_bad = make_first_index_slot(vc);
  Decompress24Params p{vc.const_data_ptr(), mc.const_data_ptr(), dense.mutable_data_ptr(), rows, cols,
                       layout == Layout::kCutlass, to_device_dtype("decompress_24", vc.scalar_type()), slot_ptr(first_bad)};
  SPARSEOPS_CUDA_CHECK(launch_decompress_24(p, current_stream()));
  const int64_t bad = rows * cols > 0 ? read_slot(first_bad) : -1;
  check_decompress_result(bad, groups);
  return dense;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparseops, CUDA, m) {
  m.impl("compress_24", &compress_24_cuda);
  m.impl("decompress_24", &decompress_24_cuda);
}

}  // namespace sparseops::sparse24
