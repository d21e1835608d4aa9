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

  // ---- attention: block-sparse attention (FlashAttention-2 on the kept blocks) ----------------------
  // (out, lse) = softmax(scale q k^T + mask) v over the KV blocks a FlexAttention-style block mask keeps:
  // q [B, Hq, Sq, D], k/v [B, Hkv, Skv, D] (GQA: Hq % Hkv == 0, k/v never expanded); kv_num_blocks int32
  // [B|1, Hq|1, ceil(Sq/block_q)], kv_indices int32 [B|1, Hq|1, ceil(Sq/block_q), W] (the first
  // kv_num_blocks entries of a row: distinct KV-block indices < ceil(Skv/block_k)). Inside kept blocks
  // the token-level rule applies: causal (key j visible to query i iff j <= i + Skv - Sq) and the window
  // i + Skv - Sq - window_left <= j <= i + Skv - Sq + window_right (-1: unbounded). scale=None: D^-0.5.
  // lse fp32 [B, Hq, Sq]; a row that sees no key gives out 0 and lse -inf.
  m.def("block_sparse_attention(Tensor q, Tensor k, Tensor v, Tensor kv_num_blocks, Tensor kv_indices, int block_q, int block_k, bool causal=False, int window_left=-1, int window_right=-1, float? scale=None) -> (Tensor, Tensor)");
  // (dq, dk, dv) of block_sparse_attention from its saved (out, lse), recomputing P; dk/dv summed over
  // each GQA group; grad_lse (optional) is the gradient reaching lse.
  m.def("block_sparse_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor kv_num_blocks, Tensor kv_indices, int block_q, int block_k, bool causal=False, int window_left=-1, int window_right=-1, float? scale=None, Tensor? grad_lse=None) -> (Tensor, Tensor, Tensor)");
  // NSA/MoBA-style block selection: (kv_num_blocks int32 [B, Hq, nq], kv_indices int32 [B, Hq, nq, nkv])
  // keeping, per (b, query head, q-block), the blocks visible under `causal` (block level, bottom-right
  // aligned) among: the first sink_blocks, the local_blocks ending at the diagonal block (the one holding
  // key position last query + Skv - Sq), and the topk others with the largest dot product of the
  // mean-pooled q-block and k-block (ties to the lower index); indices ascending, unused entries 0.
  m.def("topk_block_mask(Tensor q, Tensor k, int block_q, int block_k, int topk, bool causal=False, int sink_blocks=0, int local_blocks=1) -> (Tensor, Tensor)");

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

  // ---- ot: entropic optimal transport (log domain; conventions in csrc/ot/ot_math.h) -------------
  // P_ij = a_i b_j exp((f_i + g_j - C_ij) / eps). a [B, n], b [B, m] >= 0; C [B, n, m] or a shared [n, m]
  // (+inf = forbidden pair); float32 / float64. rho = None: balanced (sum a == sum b; b is rescaled to a's
  // mass within 1e-5 / 1e-8 relative), else the marginals are relaxed by rho * KL.
  // Sinkhorn iterations from g = g_init (0 when None) until the marginal error (balanced: L1 row error
  // after the g-update; unbalanced: sup |f change|) <= tol, checked every check_every iterations, or
  // max_iter. Returns f [B, n], g [B, m], cost [B] (the dual objective at (f, g)), n_iter [B] (int64),
  // err_history [B, ceil(max_iter / check_every)] (-1 after the stop).
  m.def("sinkhorn_log(Tensor a, Tensor b, Tensor C, float eps, int max_iter=1000, float tol=1e-9, int check_every=10, float? rho=None, Tensor? g_init=None) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // The plan P [B, n, m] of potentials (f, g).
  m.def("ot_plan(Tensor a, Tensor b, Tensor C, Tensor f, Tensor g, float eps) -> Tensor");
  // One fused pass over C: (mass [B] = sum P, row [B, n] = sum_j b_j exp((f_i + g_j - C_ij)/eps),
  // col [B, m] = sum_i a_i exp(...)): the dual objective and gradient (P1 = a * row, P^T1 = b * col).
  m.def("ot_dual(Tensor a, Tensor b, Tensor C, Tensor f, Tensor g, float eps) -> (Tensor, Tensor, Tensor)");
  // The k largest entries of every row of P: (idx [B, n, k] int64, val [B, n, k]), unordered.
  m.def("ot_sparse_plan(Tensor a, Tensor b, Tensor C, Tensor f, Tensor g, float eps, int k) -> (Tensor, Tensor)");
  // Jacobi-preconditioned CG for ([[diag(row_diag), S], [S^T, diag(col_diag)]] + shift I) x = rhs, S the
  // sparse rows (idx [B, n, k], val [B, n, k]); from x = 0 until ||r|| <= tol ||rhs|| or max_iter (CPU:
  // CG on the Schur complement of the row block, whose residual is the whole system's; CUDA: on the whole).
  // Returns (x_f [B, n], x_g [B, m], iterations [B] int64).
  m.def("ot_newton_cg(Tensor idx, Tensor val, Tensor row_diag, Tensor col_diag, Tensor rhs_f, Tensor rhs_g, float shift, int max_iter, float tol) -> (Tensor, Tensor, Tensor)");
  // The whole Sinkhorn-Newton-Sparse solve (balanced): Sinkhorn warm start (warmup_iters, continued while
  // its rate predicts tol within sinkhorn_budget iterations), then up to max_newton Newton steps with the
  // k largest plan entries per row (doubled while they miss too much of the plan's mass, and after a failed
  // step) and CG of at most cg_max_iter iterations; g_init [B, m] (optional) starts the warm start.
  // Returns f [B, n], g [B, m], cost [B] (dual objective), n_iter [B] int64 (Newton steps), err_history
  // [B, max_newton + 1] (after the warm start, then after each step; -1 after the stop).
  m.def("sinkhorn_newton_sparse(Tensor a, Tensor b, Tensor C, float eps, int warmup_iters, int max_newton, int k, float tol, int cg_max_iter, int sinkhorn_budget, Tensor? g_init=None) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Point clouds x [B, n, d], y [B, m, d] with costs |x_i - y_j|_p^p (p = 1 or 2) recomputed tile by tile
  // inside the passes (memory O(n + m)); otherwise sinkhorn_log (same outputs and conventions).
  m.def("sinkhorn_points(Tensor x, Tensor y, Tensor a, Tensor b, float eps, int p=2, int max_iter=1000, float tol=1e-9, int check_every=10, float? rho=None) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // The plan-weighted cost gradients of point clouds, without the plan in memory:
  // (gx [B, n, d] = sum_j P_ij d c(x_i, y_j) / d x_i, gy [B, m, d] = sum_i P_ij d c(x_i, y_j) / d y_j).
  m.def("ot_points_grad(Tensor x, Tensor y, Tensor a, Tensor b, Tensor f, Tensor g, float eps, int p=2) -> (Tensor, Tensor)");
}
