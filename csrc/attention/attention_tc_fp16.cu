// The tensor-core block-sparse attention kernels (attention_tc.cuh) for __half: one dtype per file,
// so that the two nvcc runs stay short and can build in parallel.
#include "attention/attention_tc.cuh"

namespace sparseops::attention {

cudaError_t launch_tc_fwd_fp16(const AttnParams& p, cudaStream_t stream) {
  return tc::launch_fwd<__half>(p, stream);
}

cudaError_t launch_tc_bwd_fp16(const AttnParams& p, cudaStream_t stream) {
  return tc::launch_bwd<__half>(p, stream);
}

}  // namespace sparseops::attention
