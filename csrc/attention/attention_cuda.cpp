// block_sparse_attention (forward, backward) and topk_block_mask on CUDA: checks, guard, stream,
// launch. The mask's contents are not copied to the host (no sync per call): the kernels clamp each
// row's count and skip out-of-range block indices as they read them (attention_tile.h), so a bad mask
// never reads out of bounds; SPARSEOPS_CHECK_MASK=1 turns on the full host-side check with its error
// messages (one device-to-host copy and sync per call). Kernels: attention_tc.cuh (tensor cores, sm80+,
// fp16/bf16), else attention_kernel.cu (CUDA cores).
#include <ATen/cuda/CUDAContext.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>

#include "attention/attention_checks.h"
#include "attention/attention_launch.h"
#include "common/cuda_glue.h"

namespace sparseops::attention {
namespace {

AttnParams make_params(const AttnDims& d, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                       const at::Tensor& num, const at::Tensor& idx, const char* op) {
  TORCH_CHECK(d.Hq <= 65535 && d.B <= 65535, op, ": expected B and Hq <= 65535 on CUDA (got ", d.B, ", ", d.Hq, ")");
  AttnParams p{};
  p.q = q.const_data_ptr();
  p.k = k.const_data_ptr();
  p.v = v.const_data_ptr();
  p.num = num.const_data_ptr<int32_t>();
  p.idx = idx.const_data_ptr<int32_t>();
  p.B = d.B;
  p.Hq = d.Hq;
  p.Hkv = d.Hkv;
  p.Sq = d.Sq;
  p.Skv = d.Skv;
  p.D = d.D;
  p.block_q = d.block_q;
  p.block_k = d.block_k;
  p.nq = d.nq;
  p.nkv = d.nkv;
  p.mask_b = d.mask_b;
  p.mask_h = d.mask_h;
  p.width = d.width;
  p.rule = token_rule(d);
  p.scale = d.scale;
  p.dtype = to_device_dtype(op, q.scalar_type());
  p.splits = 1;
  return p;
}

// Flash-decoding: a forward grid with fewer thread blocks than the GPU has SMs (decoding: a few query
// rows per head against a long cache) leaves most of the GPU idle, so each row's kept blocks are split
// over enough thread blocks to give every SM two, with at least two entries of a full mask row per
// split, and at most 64 splits. SPARSEOPS_ATTENTION_KV_SPLITS=n sets the count (1: no split; tests).
int64_t kv_splits(const AttnParams& p, bool tensor_cores, const at::Tensor& q) {
  constexpr int64_t kMaxSplits = 64;
  if (const char* env = std::getenv("SPARSEOPS_ATTENTION_KV_SPLITS"); env != nullptr && env[0] != '\0')
    return std::clamp<int64_t>(std::atoll(env), 1, kMaxSplits);
  const int64_t blocks = attention_fwd_blocks(p, tensor_cores);
  const int64_t sms = at::cuda::getDeviceProperties(q.device().index())->multiProcessorCount;
  if (blocks == 0 || blocks >= sms) return 1;
  return std::max<int64_t>(1, std::min({ceil_div(2 * sms, blocks), ceil_div(p.width, 2), kMaxSplits}));
}

// The tensor-core kernels when they take these inputs on this device; SPARSEOPS_ATTENTION_CUDA_CORES=1
// forces the CUDA-core kernels (to compare the two).
bool use_tensor_cores(const AttnParams& p, bool backward, const at::Tensor& q) {
  if (std::getenv("SPARSEOPS_ATTENTION_CUDA_CORES") != nullptr) return false;
  return tc_supported(p, backward) && at::cuda::getDeviceProperties(q.device().index())->major >= 8;
}

// The CUDA-core kernels' shared memory grows with D (fp32 tiles); the tensor-core ones fit every sm80+
// GPU (static_asserts in attention_tc.cuh).
void check_cuda_core_smem(const char* op, const AttnParams& p, bool backward, const at::Tensor& q) {
  const int64_t smem = backward ? attention_bwd_smem_bytes(p.D) : attention_fwd_smem_bytes(p.D);
  int optin = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, q.device().index()));
  TORCH_CHECK(smem <= optin, op, ": head dim ", p.D, " needs ", smem, " bytes of shared memory, this GPU allows ",
              optin);
}

// Opt-in full check of the mask's contents on CUDA (a device-to-host copy and sync per call).
bool mask_check_requested() {
  const char* env = std::getenv("SPARSEOPS_CHECK_MASK");
  return env != nullptr && env[0] != '\0' && env[0] != '0';
}

std::tuple<at::Tensor, at::Tensor> block_sparse_attention_cuda(const at::Tensor& q, const at::Tensor& k,
                                                               const at::Tensor& v, const at::Tensor& kv_num_blocks,
                                                               const at::Tensor& kv_indices, int64_t block_q,
                                                               int64_t block_k, bool causal, int64_t window_left,
                                                               int64_t window_right, std::optional<double> scale) {
  constexpr const char* op = "block_sparse_attention";
  const AttnDims d = check_block_sparse_attention_inputs(op, q, k, v, kv_num_blocks, kv_indices, block_q, block_k,
                                                         causal, window_left, window_right, scale,
                                                         mask_check_requested());
  check_device_type(op, "q", q, at::kCUDA);
  const c10::cuda::OptionalCUDAGuard guard(q.device());
  const at::Tensor qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous();
  const at::Tensor num = kv_num_blocks.contiguous(), idx = kv_indices.contiguous();
  at::Tensor out = at::empty(qc.sizes(), qc.options());
  at::Tensor lse = at::empty({d.B, d.Hq, d.Sq}, qc.options().dtype(at::kFloat));
  AttnParams p = make_params(d, qc, kc, vc, num, idx, op);
  p.out = out.mutable_data_ptr();
  p.lse = lse.mutable_data_ptr<float>();
  const bool tensor_cores = use_tensor_cores(p, false, qc);
  p.splits = kv_splits(p, tensor_cores, qc);
  at::Tensor part_out, part_lse;  // the splits' finished rows, merged into out / lse
  if (p.splits > 1) {
    const auto f32 = qc.options().dtype(at::kFloat);
    part_out = at::empty({p.splits, d.B * d.Hq * d.Sq, d.D}, f32);
    part_lse = at::empty({p.splits, d.B * d.Hq * d.Sq}, f32);
    p.part_out = part_out.mutable_data_ptr<float>();
    p.part_lse = part_lse.mutable_data_ptr<float>();
  }
  if (tensor_cores) {
    SPARSEOPS_CUDA_CHECK(launch_block_sparse_attention_tc(p, false, current_stream()));
  } else {
    check_cuda_core_smem(op, p, false, qc);
    SPARSEOPS_CUDA_CHECK(launch_block_sparse_attention_fwd(p, current_stream()));
  }
  if (p.splits > 1) SPARSEOPS_CUDA_CHECK(launch_merge_splits(p, current_stream()));
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> block_sparse_attention_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, const at::Tensor& kv_num_blocks, const at::Tensor& kv_indices, int64_t block_q,
    int64_t block_k, bool causal, int64_t window_left, int64_t window_right, std::optional<double> scale,
    const std::optional<at::Tensor>& grad_lse) {
  constexpr const char* op = "block_sparse_attention_backward";
  const AttnDims d = check_block_sparse_attention_inputs(op, q, k, v, kv_num_blocks, kv_indices, block_q, block_k,
                                                         causal, window_left, window_right, scale,
                                                         mask_check_requested());
  check_backward_extra(op, d, q, grad_out, out, lse, grad_lse);
  check_device_type(op, "q", q, at::kCUDA);
  const c10::cuda::OptionalCUDAGuard guard(q.device());
  const at::Tensor qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous(), gc = grad_out.contiguous();
  const at::Tensor num = kv_num_blocks.contiguous(), idx = kv_indices.contiguous(), lse_c = lse.contiguous();
  at::Tensor delta = (gc.to(at::kFloat) * out.to(at::kFloat)).sum(-1);
  if (grad_lse.has_value()) delta = delta - grad_lse->to(at::kFloat);
  delta = delta.contiguous();
  at::Tensor dq = at::empty(qc.sizes(), qc.options());
  at::Tensor dk_acc = at::zeros(kc.sizes(), kc.options().dtype(at::kFloat));
  at::Tensor dv_acc = at::zeros(vc.sizes(), vc.options().dtype(at::kFloat));
  AttnParams p = make_params(d, qc, kc, vc, num, idx, op);
  p.grad_out = gc.const_data_ptr();
  p.lse_in = lse_c.const_data_ptr<float>();
  p.delta = delta.const_data_ptr<float>();
  p.dq = dq.mutable_data_ptr();
  p.dk_acc = dk_acc.mutable_data_ptr<float>();
  p.dv_acc = dv_acc.mutable_data_ptr<float>();
  if (use_tensor_cores(p, true, qc)) {
    SPARSEOPS_CUDA_CHECK(launch_block_sparse_attention_tc(p, true, current_stream()));
  } else {
    check_cuda_core_smem(op, p, true, qc);
    SPARSEOPS_CUDA_CHECK(launch_block_sparse_attention_bwd(p, current_stream()));
  }
  return {dq, dk_acc.to(kc.scalar_type()), dv_acc.to(vc.scalar_type())};
}

std::tuple<at::Tensor, at::Tensor> topk_block_mask_cuda(const at::Tensor& q, const at::Tensor& k, int64_t block_q,
                                                        int64_t block_k, int64_t topk, bool causal,
                                                        int64_t sink_blocks, int64_t local_blocks) {
  constexpr const char* op = "topk_block_mask";
  AttnDims d = check_topk_block_mask_inputs(op, q, k, block_q, block_k, topk, sink_blocks, local_blocks);
  check_device_type(op, "q", q, at::kCUDA);
  d.causal = causal;
  const c10::cuda::OptionalCUDAGuard guard(q.device());
  const at::Tensor qc = q.contiguous(), kc = k.contiguous();
  const auto i32 = qc.options().dtype(at::kInt), f64 = qc.options().dtype(at::kDouble);
  at::Tensor num = at::empty({d.B, d.Hq, d.nq}, i32);
  at::Tensor idx = at::zeros({d.B, d.Hq, d.nq, d.nkv}, i32);
  at::Tensor pooled_q = at::empty({d.B * d.Hq * d.nq * d.D}, f64);
  at::Tensor pooled_k = at::empty({d.B * d.Hkv * d.nkv * d.D}, f64);
  at::Tensor scores = at::empty({d.B * d.Hq * d.nq * d.nkv}, f64);
  at::Tensor state = at::empty({d.B * d.Hq * d.nq * d.nkv}, qc.options().dtype(at::kByte));
  TopkParams p{qc.const_data_ptr(), kc.const_data_ptr(), d.B, d.Hq, d.Hkv, d.Sq, d.Skv, d.D, d.block_q, d.block_k,
               d.nq, d.nkv, topk, sink_blocks, local_blocks, token_rule(d), to_device_dtype(op, qc.scalar_type()),
               pooled_q.mutable_data_ptr<double>(), pooled_k.mutable_data_ptr<double>(),
               scores.mutable_data_ptr<double>(), state.mutable_data_ptr<uint8_t>(), num.mutable_data_ptr<int32_t>(),
               idx.mutable_data_ptr<int32_t>()};
  SPARSEOPS_CUDA_CHECK(launch_topk_block_mask(p, current_stream()));
  return {num, idx};
}

}  // namespace

TORCH_LIBRARY_IMPL(sparseops, CUDA, m) {
  m.impl("block_sparse_attention", &block_sparse_attention_cuda);
  m.impl("block_sparse_attention_backward", &block_sparse_attention_backward_cuda);
  m.impl("topk_block_mask", &topk_block_mask_cuda);
}

}  // namespace sparseops::attention
