// The tensor-core block-sparse attention kernels (attention_tc.cuh) for __nv_bfloat16: one dtype per file,
// so that the two nvcc runs stay short and can build in parallel.
#include "attention/attention_tc.cuh"

namespace sparseops::attention {

cudaError_t launch_tc_fwd_bf16(const AttnParams& p, cudaStream_t stream) {
  return tc::launch_fwd<__nv_bfloat16>(p, stream);
}

cudaError_t launch_tc_bwd_bf16(const AttnParams& p, cudaStream_t stream) {
  return tc::launch_bwd<__nv_bfloat16>(p, stream);
}

}  // namespace sparseops::attention
