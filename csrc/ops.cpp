// The op catalogue: every sparseops schema, defined once. Kernels live in csrc/<family>/, Python faces
// (fake kernels, autograd, typed wrappers) in python/sparseops/<family>/.
#include <torch/library.h>

TORCH_LIBRARY(sparseops, m) {
  // ---- sparse24: N:M masks and 2:4 formats ------------------------------------------------------
  // Bool mask keeping, in every group of m consecutive elements along the last dim, the n with the
  // largest |score| (score defaults to w); ties go to the lower index.
  m.def("nm_mask(Tensor w, int n, int m, Tensor? score=None) -> Tensor");
  // 2:4 compression of a 2-D w into (values [rows, cols/2], meta) in the given layout
  // ("packed" | "cutlass", see csrc/common/sparse24_format.h).
  m.def("compress_24(Tensor w, bool prune=False, str layout=\"packed\") -> (Tensor, Tensor)");
  m.def("decompress_24(Tensor values, Tensor meta, str layout=\"packed\") -> Tensor");

  // ---- sparse24: 2:4 GEMM on the packed layout (CPU kernel; CUDA small-M GEMV) -------------------
  // y = act(x @ W^T + bias): x [M, K], W [N, K] given as packed (values [N, K/2], meta);
  // activation in {"none", "relu", "gelu", "silu", "relu2"}; fp32 accumulation. Optional W^T [K, N]
  // compressed the same way (values_t [K, N/2], meta_t [K, ceil(N/8)]; W's mask transposable): not read by
  // the forward, used by the backward for grad_x = grad_z @ W as sparse24_linear(grad_z, values_t, meta_t).
  m.def("sparse24_linear(Tensor x, Tensor values, Tensor meta, Tensor? bias=None, str activation=\"none\", Tensor? values_t=None, Tensor? meta_t=None) -> Tensor");

  // ---- sparse24: CUDA GEMM backends (CUTLASS sm80 SparseGemm, cuSPARSELt) -----------------------
  // Same maths with W in the "cutlass" layout.
  m.def("sparse24_linear_cutlass(Tensor x, Tensor values, Tensor meta, Tensor? bias=None, str activation=\"none\") -> Tensor");
  // cuSPARSELt's opaque compressed W [N, K] (uint8 buffer), and the GEMM on it. alg_id < 0: the
  // cached default; search=True runs cuSPARSELt's algorithm search once per shape and caches it.
  // int8 / float8_e4m3fn x and W: y = act((x @ W^T) * scale + bias), scale fp32 [] / [1] / [N], y fp16/bf16.
  m.def("compress_24_cusparselt(Tensor w) -> Tensor");
  m.def("sparse24_linear_cusparselt(Tensor x, Tensor compressed, int out_features, int in_features, Tensor? bias=None, str activation=\"none\", int alg_id=-1, bool search=False, Tensor? scale=None, ScalarType? out_dtype=None) -> Tensor");

  // ---- sparse24: training ----------------------------------------------------------------------
  // SR-STE: forward (w * mask, mask) with mask = nm_mask(w, n, m) (a NaN ranks as the largest
  // magnitude instead of raising: no device sync per step); backward (nm_srste_backward)
  // grad_w = grad * (mask + pruned_grad_scale * (1 - mask)) + decay * (1 - mask) * w.
  // decay and pruned_grad_scale are unused by the forward kernels: they are forward arguments only so
  // that register_autograd's setup_context can hand them to the backward (one op, compile-friendly).
  // pruned_grad_scale is a float32 one-element tensor (None = 1), on the CPU or on w's device, read by
  // the kernel itself: a schedule updating it in place changes no Python constant, so torch.compile
  // does not recompile per step and CUDA needs no sync.
  m.def("nm_srste(Tensor w, int n=2, int m=4, float decay=0.0002, Tensor? pruned_grad_scale=None) -> (Tensor, Tensor)");
  m.def("nm_srste_backward(Tensor grad, Tensor w, Tensor mask, float decay, Tensor? pruned_grad_scale=None) -> Tensor");
  // Mask that is 2:4 along both rows and columns of every 4x4 block, maximising the kept |w|.
  m.def("transposable_mask_24(Tensor w) -> Tensor");
}
