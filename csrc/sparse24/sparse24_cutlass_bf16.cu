// CUTLASS sm80 2:4 SparseGemm, bf16 instantiations (see sparse24_cutlass_gemm.cuh).
#include "sparse24/sparse24_cutlass_gemm.cuh"

namespace sparseops::sparse24 {
Cutlass24Result run_sparse24_cutlass_bf16(const Cutlass24Params& p, cudaStream_t stream) {
  return cutlass24::run_sparse24_cutlass<cutlass::bfloat16_t>(p, stream);
}
}  // namespace sparseops::sparse24
