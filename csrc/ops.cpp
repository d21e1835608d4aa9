// The op catalogue: every sparseops schema, defined once. Kernels live in csrc/<family>/, Python faces
// (fake kernels, autograd, typed wrappers) in python/sparseops/<family>.py.
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

  // ---- codebook: vector quantisation ------------------------------------------------------------
  // Nearest code of every row of z [N, D] in codebook [K, D] (same float dtype): (quantized =
  // codebook[indices] [N, D], indices int64 [N], dist fp32 [N]) (quantized first: the differentiable
  // output leads, as autograd tests sum the outputs in order); metric "l2" (dist = squared L2) or "cosine"
  // (dist = 1 - cos); ties to the lowest index; never materialises N x K; NaN/Inf inputs are an error.
  m.def("codebook_lookup(Tensor z, Tensor codebook, str metric=\"l2\") -> (Tensor, Tensor, Tensor)");
  // Gradient of quantized = codebook[indices] w.r.t. the codebook: grad_codebook [num_codes, D] (grad's
  // dtype), row k = sum of grad_quantized rows i with indices[i] == k; deterministic (fixed summation
  // order, fp32); indices out of [0, num_codes) raise.
  m.def("codebook_grad(Tensor grad_quantized, Tensor indices, int num_codes) -> Tensor");
  // Exact int64 histogram [num_codes] of indices (any shape); out-of-range indices raise.
  m.def("codebook_usage(Tensor indices, int num_codes) -> Tensor");
  // EMA codebook update, in place: cluster_size = decay cluster_size + (1 - decay) counts, embed_sum =
  // decay embed_sum + (1 - decay) (sum of z rows per code), codebook = embed_sum / smoothed cluster_size
  // with Laplace smoothing (cs + eps) / (n + K eps) n, n = sum(cs). Deterministic.
  m.def("codebook_ema_update_(Tensor(a!) codebook, Tensor(b!) cluster_size, Tensor(c!) embed_sum, Tensor z, Tensor indices, float decay, float eps) -> ()");
}
