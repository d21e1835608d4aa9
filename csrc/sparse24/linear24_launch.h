#pragma once
// Launchers for the CUDA 2:4 linear kernels on the "packed" layout (small-M GEMV) and the elementwise
// bias + activation epilogue that the cuBLAS / cuSPARSELt paths use. Plain params, no torch types, so
// linear24_kernel.cu compiles without torch headers. Each launcher returns the launch's cudaError_t.
#include <cuda_runtime_api.h>

#include <cstdint>

#include "common/activation.h"
#include "common/device_dtype.h"
#include "common/host_device.h"

namespace sparseops::sparse24 {

// Largest M the GEMV kernel takes; sparse24_linear falls back to decompress + cuBLAS above it.
constexpr int64_t kGemvMaxM = 16;

struct Gemv24Params {
  const void* x;       // [M, K], row stride ldx elements
  const void* values;  // [N, K/2] contiguous
  const uint8_t* meta; // [N, ceil(K/8)] contiguous, "packed" layout
  const void* bias;    // [N] or nullptr
  void* y;             // [M, N] contiguous
  int64_t M, N, K, ldx;
  Act act;
  DType dtype;
  // True when every row of x and values starts 16-byte aligned and K % 16 == 0: 128-bit loads.
  bool vectorized;
};
// y = act(x @ W^T + bias) for M <= kGemvMaxM.
cudaError_t launch_gemv24(const Gemv24Params& p, cudaStream_t stream);

// The rows of y = act(x @ W^T + bias) whose row of x holds an inf or NaN, recomputed from W's kept
// positions only (a pruned weight is structurally absent, as in the GEMV and on sparse tensor cores),
// after a dense product on the decompressed W wrote 0 * inf = NaN there. p.y is read and updated in
// place; flags: M bytes of workspace. Two launches, no host sync.
cudaError_t launch_restore_structural_rows(const Gemv24Params& p, uint8_t* flags, cudaStream_t stream);

struct BiasActParams {
  void* y;            // [M, N] contiguous, updated in place
  const void* bias;   // [N] or nullptr
  int64_t M, N;
  Act act;
  DType dtype;
};
// y = act(y + bias), in place.
cudaError_t launch_bias_act(const BiasActParams& p, cudaStream_t stream);

struct TransposeBiasActParams {
  const void* d;      // [N, ldd] row-major (= y^T); columns [0, M) are read
  void* y;            // [M, N] contiguous
  const void* bias;   // [N] or nullptr
  int64_t M, N, ldd;
  Act act;
  DType dtype;
};
// y[m, n] = act(d[n, m] + bias[n]): the epilogue of the CUTLASS path (which produces y^T).
cudaError_t launch_transpose_bias_act(const TransposeBiasActParams& p, cudaStream_t stream);

}  // namespace sparseops::sparse24
