// nm_mask, CUDA glue: checks, stream, launch, NaN report.
#include <torch/library.h>

#include "common/cuda_glue.h"
#include "sparse24/sparse24_checks.h"
#include "sparse24/sparse24_launch.h"

namespace sparseops::sparse24 {
namespace {

at::Tensor nm_mask_cuda(const at::Tensor& w, int64_t n, int64_t m, const std::optional<at::Tensor>& score) {
  check_nm_mask_inputs(w, n, m, score);
  check_device_type("nm_mask", "w", w, at::kCUDA);
  const c10::cuda::OptionalCUDAGuard guard(w.device());
  const at::Tensor s = (score.has_value() ? *score : w).contiguous();
  at::Tensor out = at::empty(w.sizes(), w.options().dtype(at::kBool));
  at::Tensor first_nan = make_first_index_slot(w);
  NmMaskParams p{s.const_data_ptr(), out.mutable_data_ptr<bool>(), s.numel() / m, static_cast<int>(n),
                 static_cast<int>(m), to_device_dtype("nm_mask", s.scalar_type()), slot_ptr(first_nan)};
  SPARSEOPS_CUDA_CHECK(launch_nm_mask(p, current_stream()));
  const int64_t bad = p.groups > 0 ? read_slot(first_nan) : -1;
  TORCH_CHECK(bad < 0, "nm_mask: ", score.has_value() ? "score" : "w",
              " contains NaN (first in the group starting at flat index ", bad, "); magnitudes cannot be ranked");
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparseops, CUDA, m) { m.impl("nm_mask", &nm_mask_cuda); }

}  // namespace sparseops::sparse24
