// The op catalogue: every sparseops schema, defined once. Kernels live in csrc/<family>/, Python faces
// (fake kernels, autograd, typed wrappers) in python/sparseops/<family>.py.
#include <torch/library.h>

TORCH_LIBRARY(sparseops, m) {
  // ---- sparse24: N:M masks and 2:4 formats ----
  // Bool mask keeping, in every group of m consecutive elements along the last dim, the n with the
  // largest |score| (score defaults to w); ties go to the lower index.
  m.def("nm_mask(Tensor w, int n, int m, Tensor? score=None) -> Tensor");
  // 2:4 compression of a 2-D w into (values [rows, cols/2], meta) in the given layout
  // ("packed" | "cutlass", see csrc/common/sparse24_format.h).
  m.def("compress_24(Tensor w, bool prune=False, str layout=\"packed\") -> (Tensor, Tensor)");
  m.def("decompress_24(Tensor values, Tensor meta, str layout=\"packed\") -> Tensor");
}
