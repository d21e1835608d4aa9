#pragma once
// Launchers for the CUTLASS sm80 2:4 SparseGemm (sparse24_cutlass_gemm.cuh), one .cu per dtype. Plain
// params, no torch types. CUTLASS 2.x puts the sparse operand in A and only supports a row-major D, so
// the kernel computes D = W @ x^T as a row-major [N, M] temporary (= y^T); the glue then writes
// y = act(D^T + bias) with one transpose pass (launch_transpose_bias_act in linear24_launch.h).
#include <cuda_runtime_api.h>

#include <cstdint>

namespace sparseops::sparse24 {

// Problem requirements of the instantiated kernels (checked by the glue with these numbers, and by
// CUTLASS's can_implement()): out_features % 32 (metadata row reordering), in_features % 64 (the
// threadblock K: out-of-bounds metadata would read as invalid codes), rows of x % 8 (128-bit
// accesses; the glue pads x), and 16-byte aligned base pointers.
constexpr int64_t kCutlassNMultiple = 32;
constexpr int64_t kCutlassKMultiple = 64;
constexpr int64_t kCutlassMMultiple = 8;

struct Cutlass24Params {
  const void* values;  // [N, K/2] row-major, fp16/bf16
  const void* meta;    // int16 [N, K/16] in CUTLASS's reordered layout (compress_24(layout="cutlass"))
  const void* x;       // [M, K] row-major (= x^T column-major), M % kCutlassMMultiple == 0
  void* d;             // [N, M] row-major output (= y^T)
  int64_t M, N, K;
};

enum class Cutlass24Status : int {
  kOk = 0,
  kCannotImplement,  // CUTLASS's can_implement() rejected the problem (sizes / alignment)
  kInitFailed,       // initialize() failed (e.g. the shared-memory attribute could not be set)
  kLaunchFailed,     // the kernel launch failed (cuda_error holds why)
  kTooLarge,         // a size does not fit CUTLASS's int coordinates
};

struct Cutlass24Result {
  Cutlass24Status status;
  const char* cutlass_message;  // cutlassGetStatusString() of the failing call, or ""
  cudaError_t cuda_error;
};

Cutlass24Result run_sparse24_cutlass_f16(const Cutlass24Params& p, cudaStream_t stream);
Cutlass24Result run_sparse24_cutlass_bf16(const Cutlass24Params& p, cudaStream_t stream);

}  // namespace sparseops::sparse24
