// sparse24_linear, CUDA glue (packed layout): y = act(x @ W^T + bias).
//   M <= kGemvMaxM (16): the 2:4 GEMV of linear24_kernel.cu, M never padded.
//   M >  16:             W is decompressed into a dense temporary (N x K, x's dtype) and multiplied with
//                        cuBLAS (at::mm / at::addmm), then bias + activation run as one elementwise pass;
//                        rows of x holding inf/NaN are then recomputed from the kept positions only.
//                        Use the "cutlass" or "cusparselt" layouts for sparse tensor cores at large M.
#include <torch/library.h>

#include "common/cuda_glue.h"
#include "sparse24/linear24_checks.h"
#include "sparse24/linear24_launch.h"
#include "sparse24/sparse24_checks.h"
#include "sparse24/sparse24_launch.h"

namespace sparseops::sparse24 {
namespace {

constexpr const char* kOp = "sparse24_linear";

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// The CPU kernel's checks (same messages on every device), plus the device.
// values_t/meta_t (W^T compressed) are for the backward (python/sparseops/sparse24/linear.py): checked, not read.
Act check_linear24_cuda_inputs(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
                               const std::optional<at::Tensor>& bias, c10::string_view activation,
                               const std::optional<at::Tensor>& values_t, const std::optional<at::Tensor>& meta_t) {
  const Act act = parse_activation(kOp, activation);
  const Linear24Sizes s = check_linear24_inputs(x, values, meta, bias);
  check_linear24_transposed(x, s, values, values_t, meta_t);
  check_device_type(kOp, "x", x, at::kCUDA);
  return act;
}

at::Tensor sparse24_linear_cuda(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
                                const std::optional<at::Tensor>& bias, c10::string_view activation,
                                const std::optional<at::Tensor>& values_t, const std::optional<at::Tensor>& meta_t) {
  const Act act = check_linear24_cuda_inputs(x, values, meta, bias, activation, values_t, meta_t);
  const c10::cuda::OptionalCUDAGuard guard(x.device());
  const int64_t M = x.size(0), K = x.size(1), N = values.size(0);
  const DType dtype = to_device_dtype(kOp, x.scalar_type());
  const at::Tensor xc = x.contiguous();
  const at::Tensor vc = values.contiguous();
  const at::Tensor mc = meta.contiguous();
  at::Tensor bc;  // undefined without bias
  if (bias.has_value()) bc = bias->contiguous();
  const cudaStream_t stream = current_stream();

  if (M <= kGemvMaxM) {
    at::Tensor y = at::empty({M, N}, xc.options());
    Gemv24Params p{xc.const_data_ptr(), vc.const_data_ptr(), mc.const_data_ptr<uint8_t>(),
                   bc.defined() ? bc.const_data_ptr() : nullptr, y.mutable_data_ptr(), M, N, K, K, act, dtype,
                   K % 16 == 0 && aligned16(xc.const_data_ptr()) && aligned16(vc.const_data_ptr())};
    SPARSEOPS_CUDA_CHECK(launch_gemv24(p, stream));
    return y;
  }

  // Large M: dense cuBLAS on the decompressed weight (extra memory: N x K in x's dtype).
  at::Tensor w = at::empty({N, K}, vc.options());
  if (N * K > 0) {
    // meta validity is not re-checked here (it would cost a device sync); codes from compress_24 are valid.
    at::Tensor unused_slot = make_first_index_slot(vc);
    Decompress24Params dp{vc.const_data_ptr(), mc.const_data_ptr(), w.mutable_data_ptr(), N, K, false, dtype,
                          slot_ptr(unused_slot)};
    SPARSEOPS_CUDA_CHECK(launch_decompress_24(dp, stream));
  }
  at::Tensor y;
  if (act == Act::kNone) {
    y = bc.defined() ? at::addmm(bc, xc, w.t()) : at::mm(xc, w.t());
  } else {
    y = at::mm(xc, w.t());
    BiasActParams ep{y.mutable_data_ptr(), bc.defined() ? bc.const_data_ptr() : nullptr, M, N, act, dtype};
    SPARSEOPS_CUDA_CHECK(launch_bias_act(ep, stream));
  }
  // The dense product wrote 0 * inf = NaN where x holds an inf at a pruned position: those rows are
  // recomputed from the kept positions only, as the GEMV computes them (see the CPU op's comment).
  at::Tensor flags = at::empty({M}, xc.options().dtype(at::kByte));
  Gemv24Params fp{xc.const_data_ptr(), vc.const_data_ptr(), mc.const_data_ptr<uint8_t>(),
                  bc.defined() ? bc.const_data_ptr() : nullptr, y.mutable_data_ptr(), M, N, K, K, act, dtype, false};
  SPARSEOPS_CUDA_CHECK(launch_restore_structural_rows(fp, flags.mutable_data_ptr<uint8_t>(), stream));
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparseops, CUDA, m) { m.impl("sparse24_linear", &sparse24_linear_cuda); }

}  // namespace sparseops::sparse24
