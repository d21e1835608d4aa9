// transposable_mask_24, CUDA glue: checks, guard, stream, launch, NaN report (reads back one int64:
// a device sync, as nm_mask does).
#include <torch/library.h>

#include "common/cuda_glue.h"
#include "sparse24/transposable_checks.h"
#include "sparse24/transposable_launch.h"

namespace sparseops::sparse24 {
namespace {

at::Tensor transposable_mask_24_cuda(const at::Tensor& w) {
  check_transposable_mask_24_inputs(w);
  check_device_type("transposable_mask_24", "w", w, at::kCUDA);
  const c10::cuda::OptionalCUDAGuard guard(w.device());
  const at::Tensor wc = w.contiguous();
  const int64_t rows = wc.size(0), cols = wc.size(1);
  at::Tensor mask = at::empty({rows, cols}, wc.options().dtype(at::kBool));
  at::Tensor first_nan = make_first_index_slot(wc);
  TransposableMask24Params p{wc.const_data_ptr(), mask.mutable_data_ptr<bool>(), rows, cols,
                             to_device_dtype("transposable_mask_24", wc.scalar_type()), slot_ptr(first_nan)};
  SPARSEOPS_CUDA_CHECK(launch_transposable_mask_24(p, current_stream()));
  const int64_t bad = rows * cols > 0 ? read_slot(first_nan) : -1;
  if (bad >= 0) report_transposable_nan(bad, cols / 4);
  return mask;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparseops, CUDA, m) { m.impl("transposable_mask_24", &transposable_mask_24_cuda); }

}  // namespace sparseops::sparse24
