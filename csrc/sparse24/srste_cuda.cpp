// nm_srste / nm_srste_backward, CUDA glue: checks, guard, stream, launch. No device sync.
#include <torch/library.h>

#include "common/cuda_glue.h"
#include "sparse24/srste_checks.h"
#include "sparse24/srste_launch.h"

namespace sparseops::sparse24 {
namespace {

std::tuple<at::Tensor, at::Tensor> nm_srste_cuda(const at::Tensor& w, int64_t n, int64_t m, double decay,
                                                 const std::optional<at::Tensor>& pruned_grad_scale) {
  check_nm_srste_inputs(w, n, m, decay, pruned_grad_scale);
  check_device_type("nm_srste", "w", w, at::kCUDA);
  const c10::cuda::OptionalCUDAGuard guard(w.device());
  const at::Tensor wc = w.contiguous();
  at::Tensor out = at::empty(wc.sizes(), wc.options());
  at::Tensor mask = at::empty(wc.sizes(), wc.options().dtype(at::kBool));
  NmSrsteParams p{wc.const_data_ptr(), out.mutable_data_ptr(), mask.mutable_data_ptr<bool>(), wc.numel() / m,
                  static_cast<int>(n), static_cast<int>(m), to_device_dtype("nm_srste", wc.scalar_type())};
  SPARSEOPS_CUDA_CHECK(launch_nm_srste(p, current_stream()));
  return {out, mask};
}

at::Tensor nm_srste_backward_cuda(const at::Tensor& grad, const at::Tensor& w, const at::Tensor& mask, double decay,
                                  const std::optional<at::Tensor>& pruned_grad_scale) {
  const ScaleArg scale = check_nm_srste_backward_inputs(grad, w, mask, decay, pruned_grad_scale);
  check_device_type("nm_srste_backward", "w", w, at::kCUDA);
  const c10::cuda::OptionalCUDAGuard guard(w.device());
  const at::Tensor gc = grad.contiguous(), wc = w.contiguous(), mc = mask.contiguous();
  at::Tensor out = at::empty(wc.sizes(), wc.options());
  NmSrsteBackwardParams p{gc.const_data_ptr(), wc.const_data_ptr(), static_cast<const uint8_t*>(mc.const_data_ptr()),
                          out.mutable_data_ptr(),
                          wc.numel(), static_cast<float>(decay), scale.value, scale.device_ptr,
                          to_device_dtype("nm_srste_backward", wc.scalar_type())};
  SPARSEOPS_CUDA_CHECK(launch_nm_srste_backward(p, current_stream()));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparseops, CUDA, m) {
  m.impl("nm_srste", &nm_srste_cuda);
  m.impl("nm_srste_backward", &nm_srste_backward_cuda);
}

}  // namespace sparseops::sparse24
