#pragma once
// Launchers for the CUDA block-sparse attention kernels (attention_kernel.cu): plain params, no torch
// types. Each returns the launch's cudaError_t. Every index the kernels read was validated by the glue
// (attention_checks.h); the kernels also skip any block index outside [0, nkv).
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

cudaError_t launch_block_sparse_attention_fwd(const AttnParams& p, cudaStream_t stream);
cudaError_t launch_block_sparse_attention_bwd(const AttnParams& p, cudaStream_t stream);

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
