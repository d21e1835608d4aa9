// The __half instantiations of the small-M 2:4 GEMV (see gemv24_kernel.cuh).
#include "sparse24/gemv24_kernel.cuh"

namespace sparseops::sparse24 {
SPARSEOPS_GEMV24_INSTANCES(, __half)
}  // namespace sparseops::sparse24
