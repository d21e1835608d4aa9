#pragma once
// The CUTLASS 2.x sm80 2:4 SparseGemm behind sparse24_linear_cutlass (instantiated per dtype in
// sparse24_cutlass_{f16,bf16}.cu; no torch headers here). The sparse operand of CUTLASS's SparseGemm
// is always A and its epilogue writes a row-major D, so with A = W ([N, K], compressed values
// [N, K/2] + reordered int16 metadata) and B = x^T (x row-major [M, K] read as column-major [K, M]):
//   D[N, M] = W @ x^T  (row-major, i.e. y^T),  fp32 accumulation, plain epilogue (alpha 1, beta 0).
// Bias, activation and the transpose to y [M, N] happen in one pass afterwards (the glue).
// Tiles from CUTLASS's own sm80 sparse generator list: 128x128x64 / warps 2x2 (64x64x64), 3 stages for
// M > 64, and 128x64x64 / warps 2x2 (64x32x64), 3 stages for M <= 64 (less waste on small batches).
// Instruction 16x8x32 (mma.sp for 16-bit types). The same sm80 code runs on sm90 (built as sm_90a).
#include <cutlass/cutlass.h>
#include <cutlass/epilogue/thread/linear_combination.h>
#include <cutlass/gemm/device/gemm_sparse.h>

#include <limits>

#include "sparse24/sparse24_cutlass_launch.h"

namespace sparseops::sparse24::cutlass24 {

template <typename Element, typename TileShape, typename WarpShape, int kStages>
using SparseGemm24 = cutlass::gemm::device::SparseGemm<
    Element, cutlass::layout::RowMajor,     // A = W, [N, K] logical, values [N, K/2]
    Element, cutlass::layout::ColumnMajor,  // B = x^T: x row-major [M, K] == column-major [K, M]
    Element, cutlass::layout::RowMajor,     // C, D: [N, M] row-major == y^T
    float, cutlass::arch::OpClassTensorOp, cutlass::arch::Sm80, TileShape, WarpShape,
    cutlass::gemm::GemmShape<16, 8, 32>,
    cutlass::epilogue::thread::LinearCombination<Element, 128 / cutlass::sizeof_bits<Element>::value, float, float>,
    cutlass::gemm::threadblock::GemmIdentityThreadblockSwizzle<>, kStages>;

template <typename Gemm>
Cutlass24Result run_gemm(const Cutlass24Params& p, cudaStream_t stream) {
  using Element = typename Gemm::ElementA;
  using ElementE = typename Gemm::ElementE;
  using LayoutE = typename Gemm::LayoutE;
  constexpr int64_t kMaxInt = std::numeric_limits<int>::max();
  if (p.M > kMaxInt || p.N > kMaxInt || p.K > kMaxInt || p.N * p.M > (int64_t{1} << 62)) {
    return {Cutlass24Status::kTooLarge, "", cudaSuccess};
  }
  // CUTLASS's GEMM coordinates: m = out_features N, n = batch rows M, k = in_features K.
  const int m = static_cast<int>(p.N), n = static_cast<int>(p.M), k = static_cast<int>(p.K);
  const int meta_cols = k / Gemm::kSparse / Gemm::kElementsPerElementE;
  auto* d = static_cast<Element*>(p.d);
  typename Gemm::Arguments args(
      cutlass::gemm::GemmCoord(m, n, k),
      {static_cast<const Element*>(p.values), cutlass::layout::RowMajor(k / Gemm::kSparse)},
      {static_cast<const Element*>(p.x), cutlass::layout::ColumnMajor(k)},
      {d, cutlass::layout::RowMajor(n)},  // C: not read (beta = 0)
      {d, cutlass::layout::RowMajor(n)},
      {const_cast<ElementE*>(static_cast<const ElementE*>(p.meta)), LayoutE::packed({m, meta_cols})},
      typename Gemm::EpilogueOutputOp::Params(1.0f, 0.0f), 1);

  cutlass::Status st = Gemm::can_implement(args);
  if (st != cutlass::Status::kSuccess) return {Cutlass24Status::kCannotImplement, cutlass::cutlassGetStatusString(st), cudaSuccess};
  // run() clears the CUDA error of a failed launch (it calls cudaGetLastError() itself), so the most
  // likely cause, no kernel image for this GPU (a build for other archs), is checked here with its error.
  cudaFuncAttributes attrs;
  const cudaError_t image = cudaFuncGetAttributes(&attrs, cutlass::Kernel<typename Gemm::GemmKernel>);
  if (image != cudaSuccess) return {Cutlass24Status::kLaunchFailed, "no usable kernel image", image};
  Gemm gemm;
  st = gemm.initialize(args, nullptr, stream);  // get_workspace_size() is 0 without split-K
  if (st != cutlass::Status::kSuccess) return {Cutlass24Status::kInitFailed, cutlass::cutlassGetStatusString(st), cudaGetLastError()};
  st = gemm.run(stream);
  if (st != cutlass::Status::kSuccess) return {Cutlass24Status::kLaunchFailed, cutlass::cutlassGetStatusString(st), cudaErrorLaunchFailure};
  return {Cutlass24Status::kOk, "", cudaSuccess};
}

template <typename Element>
Cutlass24Result run_sparse24_cutlass(const Cutlass24Params& p, cudaStream_t stream) {
  using cutlass::gemm::GemmShape;
  if (p.M <= 64) {
    return run_gemm<SparseGemm24<Element, GemmShape<128, 64, 64>, GemmShape<64, 32, 64>, 3>>(p, stream);
  }
  return run_gemm<SparseGemm24<Element, GemmShape<128, 128, 64>, GemmShape<64, 64, 64>, 3>>(p, stream);
}

}  // namespace sparseops::sparse24::cutlass24
