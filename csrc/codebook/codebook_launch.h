#pragma once
// Launchers of the codebook CUDA kernels: plain params, no torch types, so that the .cu files compile
// without torch headers. Each returns the launch's cudaError_t.
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "common/device_dtype.h"

namespace sparseops::codebook {

// Nearest code per row by cosine, fp32 tiles on normalised copies: 1 - z.c. Each (row block, code split)
// keeps per-thread running minima (ties to the lower index), reduced in shared memory; splits > 1 writes
// partials merged by a second kernel.
struct LookupParams {
  const float* z;         // [N, D] fp32, rows normalised
  const float* codebook;  // [K, D] fp32, rows normalised
  int64_t* indices;       // [N]
  float* dist;            // [N]
  float* part_dist;       // [splits, N] fp32 workspace (splits > 1)
  int64_t* part_idx;      // [splits, N]
  int64_t N, K, D;
  int splits;
};
int lookup_splits(int64_t N, int64_t K, int sm_count);  // code splits (64-code tiles) for both lookups
cudaError_t launch_codebook_lookup_cosine(const LookupParams& p, cudaStream_t stream);

// Nearest code per row (l2) with tensor cores: a bf16 WMMA screen, then the exact float64 re-check of
// every code within the screen's margin (lookup_mma_kernel.cu), with the CPU lookup's rules.
constexpr int kCandCap = 32;  // candidate slots per row; a row with more is re-checked over all K codes
struct MmaLookupParams {
  const void* z;            // [N, D] dtype, contiguous (the exact re-check reads these)
  const void* codebook;     // [K, D] dtype, contiguous
  const __nv_bfloat16* zb;  // [Np, Dp] bf16 copy of z, zero padded (Np: multiple of 64, Dp: of 16)
  const __nv_bfloat16* cbb; // [Kp, Dp] bf16 copy of the codebook, zero padded (Kp: multiple of 64)
  const float* cn;          // [Kp] fp32 |c|^2 of the codes, +inf for the padding codes
  const float* zn;          // [N] fp32 |z|
  const float* maxc2;       // [1] fp32 max |c|^2
  float* part_min;          // [splits, N] workspace
  float* thr;               // [N] workspace
  int32_t* count;           // [N] workspace
  int32_t* cand;            // [N, kCandCap] workspace
  int64_t* indices;         // [N]
  float* dist;              // [N]
  int64_t N, K, D, Np, Kp, Dp;
  int splits;               // code splits (lookup_splits)
  DType dtype;              // of z and codebook
};
cudaError_t launch_codebook_lookup_mma(const MmaLookupParams& p, cudaStream_t stream);

// Histogram of indices [n] into counts [num_codes] (int64, atomics: exact); the first out-of-range
// position is atomicMin'ed into bad_pos (initialised to INT64_MAX by the caller).
cudaError_t launch_codebook_histogram(const int64_t* indices, int64_t n, int64_t num_codes, int64_t* counts,
                                      unsigned long long* bad_pos, cudaStream_t stream);

// Segmented sum in a fixed order: for code k, out[k, :] = sum over j in [offsets[k], offsets[k+1]) of
// x[order[j], :] in fp32, order from a stable sort of the indices (so ascending rows).
//   grad:  writes out (dtype) directly.
//   ema:   embed_sum[k, :] = decay embed_sum + (1 - decay) sum; cluster_size[k] likewise with the count.
struct SegmentSumParams {
  const void* x;            // [N, D] dtype
  const int64_t* order;     // [N]
  const int64_t* offsets;   // [K + 1]
  int64_t K, D;
  DType dtype;
  void* out;                // grad: [K, D] dtype
  float* embed_sum;         // ema: [K, D] fp32 (then out is unused)
  float* cluster_size;      // ema: [K] fp32
  float decay;
};
cudaError_t launch_codebook_segment_sum(const SegmentSumParams& p, cudaStream_t stream);

// codebook[k, :] = embed_sum[k, :] / ((cluster_size[k] + eps) * n / (n + K eps)), n = *total (device).
cudaError_t launch_codebook_ema_normalise(void* codebook, DType dtype, const float* embed_sum,
                                          const float* cluster_size, const double* total, int64_t K, int64_t D,
                                          double eps, cudaStream_t stream);

}  // namespace sparseops::codebook
