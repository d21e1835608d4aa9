// sparse24_linear_cutlass, CUDA glue: checks, padding of M to 8, the CUTLASS sm80 2:4 SparseGemm
// (D = W @ x^T, row-major [N, M_pad]) and one transpose + bias + activation pass into y [M, N].
// Extra memory: D (N x M_pad in x's dtype), plus a padded copy of x when M % 8 != 0.
#include <torch/library.h>

#include "common/cuda_glue.h"
#include "sparse24/linear24_checks.h"
#include "sparse24/linear24_launch.h"
#include "sparse24/sparse24_checks.h"
#include "sparse24/sparse24_cutlass_launch.h"

namespace sparseops::sparse24 {
namespace {

constexpr const char* kOp = "sparse24_linear_cutlass";

bool aligned16(const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16 == 0; }
at::Tensor aligned_contiguous(const at::Tensor& t) {
  at::Tensor c = t.contiguous();
  return aligned16(c) ? c : c.clone();  // a view with an odd storage offset: copy to a fresh allocation
}

Act check_cutlass_inputs(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
                         const std::optional<at::Tensor>& bias, c10::string_view activation) {
  const Act act = parse_activation(kOp, activation);
  check_dim(kOp, "x", x, 2);
  check_dim(kOp, "values", values, 2);
  check_dim(kOp, "meta", meta, 2);
  TORCH_CHECK_TYPE(x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16, kOp,
                   ": expected x to have dtype in {Half, BFloat16} (got ", x.scalar_type(),
                   "); the CUTLASS sparse tensor-core path is 16-bit only, use layout=\"packed\" for float32");
  TORCH_CHECK_TYPE(values.scalar_type() == x.scalar_type(), kOp, ": expected values.dtype == x.dtype (got ",
                   values.scalar_type(), " vs ", x.scalar_type(), ")");
  TORCH_CHECK_TYPE(meta.scalar_type() == at::kShort, kOp, ": expected meta to have dtype Short (int16, the \"cutlass\" ",
                   "layout from compress_24(w, layout=\"cutlass\")), got ", meta.scalar_type());
  check_device_type(kOp, "x", x, at::kCUDA);
  check_same_device(kOp, "values", values, "x", x);
  check_same_device(kOp, "meta", meta, "x", x);
  const int64_t K = x.size(1), N = values.size(0);
  TORCH_CHECK(2 * values.size(1) == K, kOp, ": x has ", K, " features (x.size(-1)) but the weight expects ",
              2 * values.size(1), " (2 * values.size(1) = 2 * ", values.size(1), ")");
  TORCH_CHECK(N % kCutlassNMultiple == 0, kOp, ": the CUTLASS sparse GEMM needs out_features (values.size(0)) % ",
              kCutlassNMultiple, " == 0 (got ", N, ")");
  TORCH_CHECK(K % kCutlassKMultiple == 0, kOp, ": the CUTLASS sparse GEMM needs in_features (x.size(1)) % ",
              kCutlassKMultiple, " == 0 (got ", K, "); use layout=\"packed\" or \"cusparselt\" for this shape");
  TORCH_CHECK(meta.size(0) == N && meta.size(1) == cutlass_meta_cols(K), kOp, ": expected meta of shape [", N, ", ",
              cutlass_meta_cols(K), "] (the \"cutlass\" layout) for values of shape ", values.sizes(), " (got ",
              meta.sizes(), ")");
  check_linear_bias(kOp, bias, x, N);
  return act;
}

at::Tensor sparse24_linear_cutlass_cuda(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
                                        const std::optional<at::Tensor>& bias, c10::string_view activation) {
  const Act act = check_cutlass_inputs(x, values, meta, bias, activation);
  const c10::cuda::OptionalCUDAGuard guard(x.device());
  int major = 0;
  SPARSEOPS_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, x.device().index()));
  TORCH_CHECK_NOT_IMPLEMENTED(major >= 8, kOp, ": needs a GPU with compute capability 8.0 or newer (sparse tensor ",
                              "cores); this device has ", major, ".x. Use layout=\"packed\".");
  const int64_t M = x.size(0), K = x.size(1), N = values.size(0);
  const DType dtype = to_device_dtype(kOp, x.scalar_type());
  const cudaStream_t stream = current_stream();
  at::Tensor bc;  // undefined without bias
  if (bias.has_value()) bc = bias->contiguous();
  const void* bias_ptr = bc.defined() ? bc.const_data_ptr() : nullptr;

  at::Tensor y = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  if (K == 0) {  // empty reduction: y = act(bias or 0)
    y.zero_();
    BiasActParams ep{y.mutable_data_ptr(), bias_ptr, M, N, act, dtype};
    SPARSEOPS_CUDA_CHECK(launch_bias_act(ep, stream));
    return y;
  }

  const int64_t m_pad = (M + kCutlassMMultiple - 1) / kCutlassMMultiple * kCutlassMMultiple;
  at::Tensor xp = aligned_contiguous(x);
  if (m_pad != M) xp = at::constant_pad_nd(xp, {0, 0, 0, m_pad - M}, 0);
  const at::Tensor vc = aligned_contiguous(values);
  const at::Tensor mc = aligned_contiguous(meta);
  at::Tensor d = at::empty({N, m_pad}, x.options());

  const Cutlass24Params p{vc.const_data_ptr(), mc.const_data_ptr(), xp.const_data_ptr(), d.mutable_data_ptr(),
                          m_pad, N, K};
  const Cutlass24Result r =
      dtype == DType::kFloat16 ? run_sparse24_cutlass_f16(p, stream) : run_sparse24_cutlass_bf16(p, stream);
  switch (r.status) {
    case Cutlass24Status::kOk: break;
    case Cutlass24Status::kCannotImplement:
      TORCH_CHECK(false, kOp, ": CUTLASS cannot run this problem (", r.cutlass_message, ") for x ", x.sizes(),
                  ", W [", N, ", ", K, "]: it needs out_features % ", kCutlassNMultiple, " == 0, in_features % ",
                  kCutlassKMultiple, " == 0 and 16-byte aligned operands");
    case Cutlass24Status::kTooLarge:
      TORCH_CHECK(false, kOp, ": problem too large for CUTLASS's 32-bit coordinates (M=", M, ", N=", N, ", K=", K, ")");
    case Cutlass24Status::kInitFailed:
      TORCH_CHECK(false, kOp, ": CUTLASS initialize() failed (", r.cutlass_message, "; CUDA: ",
                  cudaGetErrorString(r.cuda_error), ")");
    case Cutlass24Status::kLaunchFailed:
      TORCH_CHECK(false, kOp, ": CUTLASS kernel launch failed (", r.cutlass_message, "; CUDA: ",
                  cudaGetErrorString(r.cuda_error),
                  "); was sparseops built for this GPU's architecture? (build_info()['cuda_archs'])");
  }
  TransposeBiasActParams ep{d.const_data_ptr(), y.mutable_data_ptr(), bias_ptr, M, N, m_pad, act, dtype};
  SPARSEOPS_CUDA_CHECK(launch_transpose_bias_act(ep, stream));
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparseops, CUDA, m) { m.impl("sparse24_linear_cutlass", &sparse24_linear_cutlass_cuda); }

}  // namespace sparseops::sparse24
