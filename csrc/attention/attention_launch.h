#pragma once
// Launchers for the CUDA block-sparse attention kernels: plain params, no torch types. Each returns the
// launch's cudaError_t. The kernels validate the mask as they read it (attention_tile.h): a row's count
// is clamped to [0, width] and block indices outside [0, nkv) are skipped, so nothing out of bounds is
// read whatever the mask says; the glue checks the mask's contents only when asked (attention_checks.h).
#include <cuda_runtime_api.h>

#include <cstdint>

#include "attention/attention_rule.h"
#include "common/device_dtype.h"

namespace sparseops::attention {

struct AttnParams {
  const void* q;  // [B, Hq, Sq, D] contiguous, dtype
  const void* k;  // [B, Hkv, Skv, D]
  const void* v;
  const int32_t* num;  // [mask_b, mask_h, nq]
  const int32_t* idx;  // [mask_b, mask_h, nq, width]
  int64_t B, Hq, Hkv, Sq, Skv, D, block_q, block_k, nq, nkv, mask_b, mask_h, width;
  TokenRule rule;
  float scale;
  DType dtype;
  // forward outputs
  void* out;   // [B, Hq, Sq, D], dtype
  float* lse;  // [B, Hq, Sq]
  // Forward KV split (flash-decoding, for grids too small to fill the GPU): with splits > 1, thread
  // blocks split * ... walk split_entries(count, split, splits) of their mask row (attention_tile.h) and
  // write their finished rows in fp32 to part_out [splits][B Hq Sq][D] and part_lse [splits][B Hq Sq]
  // instead of out / lse; launch_merge_splits then combines them into out / lse. The backward takes 1.
  int64_t splits;
  float* part_out;
  float* part_lse;
  // backward inputs/outputs
  const void* grad_out;  // [B, Hq, Sq, D], dtype
  const float* lse_in;   // [B, Hq, Sq]
  const float* delta;    // [B, Hq, Sq]: rowsum(dO * O) - grad_lse
  void* dq;              // [B, Hq, Sq, D], dtype
  float* dk_acc;         // [B, Hkv, Skv, D] fp32, zeroed by the caller (atomically accumulated)
  float* dv_acc;
};

// Max dynamic shared memory the kernels need for head dim D (bytes); the glue checks it against the
// device's opt-in limit.
int64_t attention_fwd_smem_bytes(int64_t D);
int64_t attention_bwd_smem_bytes(int64_t D);

// Query rows per thread block: the CUDA-core kernels (a warp per row) and the tensor-core ones (16 per
// warp, 4 warps).
constexpr int64_t kCudaCoreRowsPerBlock = 8;
constexpr int64_t kTensorCoreRowsPerBlock = 64;

// Thread blocks of the forward's grid before any KV split (the glue picks splits from it): one per
// kCudaCoreRowsPerBlock / kTensorCoreRowsPerBlock rows of each q-block, per query head and batch.
inline int64_t attention_fwd_blocks(const AttnParams& p, bool tensor_cores) {
  const int64_t rows = tensor_cores ? kTensorCoreRowsPerBlock : kCudaCoreRowsPerBlock;
  return p.nq * ((p.block_q + rows - 1) / rows) * p.Hq * p.B;
}

// Combines the forward's splits (part_out, part_lse) into out / lse (attention_kernel.cu; every dtype).
cudaError_t launch_merge_splits(const AttnParams& p, cudaStream_t stream);

// CUDA-core kernels (attention_kernel.cu): every dtype, D <= 256, any GPU.
cudaError_t launch_block_sparse_attention_fwd(const AttnParams& p, cudaStream_t stream);
cudaError_t launch_block_sparse_attention_bwd(const AttnParams& p, cudaStream_t stream);

// Tensor-core kernels (attention_tc.cuh, one .cu per dtype), for sm80+ (the glue checks the device):
// fp16 / bf16, D a multiple of 8 (16-byte rows) with 16-byte aligned q, k, v (and grad_out) data,
// D <= 256 forward, D <= 128 backward.
inline bool tc_supported(const AttnParams& p, bool backward) {
  const auto aligned = [](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; };
  const bool dtype_ok = p.dtype == DType::kFloat16 || p.dtype == DType::kBFloat16;
  const bool dims_ok = p.D % 8 == 0 && p.D <= (backward ? 128 : 256);
  const bool data_ok = aligned(p.q) && aligned(p.k) && aligned(p.v) && (!backward || aligned(p.grad_out));
  return dtype_ok && dims_ok && data_ok;
}
cudaError_t launch_tc_fwd_fp16(const AttnParams& p, cudaStream_t stream);
cudaError_t launch_tc_bwd_fp16(const AttnParams& p, cudaStream_t stream);
cudaError_t launch_tc_fwd_bf16(const AttnParams& p, cudaStream_t stream);
cudaError_t launch_tc_bwd_bf16(const AttnParams& p, cudaStream_t stream);

inline cudaError_t launch_block_sparse_attention_tc(const AttnParams& p, bool backward, cudaStream_t stream) {
  if (p.dtype == DType::kFloat16) return backward ? launch_tc_bwd_fp16(p, stream) : launch_tc_fwd_fp16(p, stream);
  if (p.dtype == DType::kBFloat16) return backward ? launch_tc_bwd_bf16(p, stream) : launch_tc_fwd_bf16(p, stream);
  return cudaErrorInvalidValue;
}

struct TopkParams {
  const void* q;  // [B, Hq, Sq, D]
  const void* k;  // [B, Hkv, Skv, D]
  int64_t B, Hq, Hkv, Sq, Skv, D, block_q, block_k, nq, nkv;
  int64_t topk, sink_blocks, local_blocks;
  TokenRule rule;  // causal only (no window)
  DType dtype;
  double* pooled_q;  // [B Hq nq, D] scratch
  double* pooled_k;  // [B Hkv nkv, D] scratch
  double* scores;    // [B Hq nq, nkv] scratch
  uint8_t* state;    // [B Hq nq, nkv] scratch
  int32_t* num;      // [B, Hq, nq]
  int32_t* idx;      // [B, Hq, nq, nkv], zeroed by the caller
};
cudaError_t launch_topk_block_mask(const TopkParams& p, cudaStream_t stream);

}  // namespace sparseops::attention
