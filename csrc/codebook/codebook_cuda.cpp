// codebook_lookup / codebook_grad / codebook_usage / codebook_ema_update_ on CUDA: checks, guards,
// workspaces, launches. Syncs: codebook_lookup reads back one flag (the NaN/Inf check); the other ops
// read back the first out-of-range index position (the index check) -- data-dependent errors need it.
#include <ATen/cuda/CUDAContext.h>
#include <torch/library.h>

#include <limits>
#include <string_view>

#include "codebook/codebook_launch.h"
#include "codebook/lookup_checks.h"
#include "codebook/stats_checks.h"
#include "common/cuda_glue.h"

namespace sparseops::codebook {
namespace {

// Norms of the rows of t (fp32 [rows]); raises when a row has NaN/Inf (l2 also: a squared norm beyond
// fp32), naming the first such row as the CPU kernel does.
at::Tensor checked_row_norms(const at::Tensor& t, bool squared_must_fit, bool is_z) {
  at::Tensor norms = at::linalg_vector_norm(t, 2, {1}, false, at::kFloat);
  at::Tensor bad = squared_must_fit ? at::isfinite(norms * norms).logical_not() : at::isfinite(norms).logical_not();
  if (bad.any().item<bool>()) {
    const int64_t row = bad.nonzero().select(1, 0)[0].item<int64_t>();
    if (is_z) {
      TORCH_CHECK(false, "codebook_lookup: expected finite z values (got NaN or Inf, or a squared norm beyond float32, "
                  "in row ", row, " of z flattened to [N, D])");
    }
    TORCH_CHECK(false, "codebook_lookup: expected finite codebook values (got NaN or Inf, or a squared norm beyond "
                "float32, in codebook row ", row, ")");
  }
  return norms;
}

// l2: the tensor-core screen + exact re-check (lookup_mma_kernel.cu). Extra memory: bf16 copies of z and
// the codebook (padded to 64 rows and 16 dims), |c|^2, [splits, N] fp32 minima, and 4 + 4 * 32 bytes of
// candidate state per row.
std::tuple<at::Tensor, at::Tensor, at::Tensor> lookup_l2_mma(const at::Tensor& zc, const at::Tensor& cb,
                                                             const at::Tensor& znorm, int splits, at::Tensor& indices,
                                                             at::Tensor& dist) {
  const int64_t N = zc.size(0), K = cb.size(0), D = cb.size(1);
  const int64_t Np = (N + 63) / 64 * 64, Kp = (K + 63) / 64 * 64, Dp = (D + 15) / 16 * 16;
  const auto bf16 = zc.options().dtype(at::kBFloat16), f32 = zc.options().dtype(at::kFloat);
  at::Tensor zb = at::zeros({Np, Dp}, bf16), cbb = at::zeros({Kp, Dp}, bf16);
  zb.slice(0, 0, N).slice(1, 0, D).copy_(zc);  // round to nearest even: the margin covers it
  cbb.slice(0, 0, K).slice(1, 0, D).copy_(cb);
  at::Tensor cn = at::full({Kp}, std::numeric_limits<float>::infinity(), f32);
  cn.slice(0, 0, K).copy_(cb.to(at::kFloat).square().sum(1));
  const at::Tensor maxc2 = cn.slice(0, 0, K).max().reshape({1});
  at::Tensor part_min = at::empty({splits, N}, f32), thr = at::empty({N}, f32);
  at::Tensor count = at::empty({N}, zc.options().dtype(at::kInt)), cand = at::empty({N, kCandCap}, count.options());
  MmaLookupParams p{zc.const_data_ptr(), cb.const_data_ptr(),
                    reinterpret_cast<const __nv_bfloat16*>(zb.const_data_ptr()),
                    reinterpret_cast<const __nv_bfloat16*>(cbb.const_data_ptr()), cn.const_data_ptr<float>(),
                    znorm.const_data_ptr<float>(), maxc2.const_data_ptr<float>(), part_min.mutable_data_ptr<float>(),
                    thr.mutable_data_ptr<float>(), count.mutable_data_ptr<int32_t>(), cand.mutable_data_ptr<int32_t>(),
                    indices.mutable_data_ptr<int64_t>(), dist.mutable_data_ptr<float>(), N, K, D, Np, Kp, Dp, splits,
                    to_device_dtype("codebook_lookup", zc.scalar_type())};
  SPARSEOPS_CUDA_CHECK(launch_codebook_lookup_mma(p, current_stream()));
  return {cb.index_select(0, indices), indices, dist};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> codebook_lookup_cuda(const at::Tensor& z, const at::Tensor& codebook,
                                                                     c10::string_view metric) {
  const bool cosine = check_codebook_lookup_inputs(z, codebook, std::string_view(metric.data(), metric.size()));
  check_device_type("codebook_lookup", "z", z, at::kCUDA);
  const c10::cuda::OptionalCUDAGuard guard(z.device());
  const at::Tensor zc = z.contiguous(), cb = codebook.contiguous();
  const int64_t N = zc.size(0), K = cb.size(0), D = cb.size(1);
  const at::Tensor cnorm = checked_row_norms(cb, !cosine, false);
  at::Tensor indices = at::empty({N}, zc.options().dtype(at::kLong));
  at::Tensor dist = at::empty({N}, zc.options().dtype(at::kFloat));
  if (N == 0) return {cb.index_select(0, indices), indices, dist};
  const at::Tensor znorm = checked_row_norms(zc, !cosine, true);
  const int splits = lookup_splits(N, K, at::cuda::getCurrentDeviceProperties()->multiProcessorCount);
  if (!cosine) return lookup_l2_mma(zc, cb, znorm, splits, indices, dist);
  // cosine: fp32 normalised copies, x / max(|x|, 1e-12) as torch.nn.functional.normalize
  const at::Tensor zin = zc.to(at::kFloat) / znorm.clamp_min(1e-12).unsqueeze(1);
  const at::Tensor cin = cb.to(at::kFloat) / cnorm.clamp_min(1e-12).unsqueeze(1);
  at::Tensor part_dist, part_idx;
  if (splits > 1) {
    part_dist = at::empty({splits, N}, dist.options());
    part_idx = at::empty({splits, N}, indices.options());
  }
  LookupParams p{zin.const_data_ptr<float>(), cin.const_data_ptr<float>(), indices.mutable_data_ptr<int64_t>(),
                 dist.mutable_data_ptr<float>(), splits > 1 ? part_dist.mutable_data_ptr<float>() : nullptr,
                 splits > 1 ? part_idx.mutable_data_ptr<int64_t>() : nullptr, N, K, D, splits};
  SPARSEOPS_CUDA_CHECK(launch_codebook_lookup_cosine(p, current_stream()));
  return {cb.index_select(0, indices), indices, dist};
}

// Exact counts of idx (flattened) with the range check (reads back one int64: a sync).
at::Tensor checked_counts(const char* op, const at::Tensor& idx, int64_t num_codes) {
  at::Tensor counts = at::zeros({num_codes}, idx.options());
  at::Tensor slot = make_first_index_slot(idx);
  SPARSEOPS_CUDA_CHECK(launch_codebook_histogram(idx.const_data_ptr<int64_t>(), idx.numel(), num_codes,
                                                 counts.mutable_data_ptr<int64_t>(), slot_ptr(slot), current_stream()));
  const int64_t pos = read_slot(slot);
  if (pos >= 0) TORCH_CHECK(false, index_error(op, num_codes, idx.reshape(-1)[pos].item<int64_t>(), pos));
  return counts;
}

// Rows ordered by code (a stable sort: ascending rows within a code) and each code's [start, end).
std::pair<at::Tensor, at::Tensor> bucket_rows(const at::Tensor& idx, const at::Tensor& counts) {
  at::Tensor order = std::get<1>(at::sort(idx, /*stable=*/true, /*dim=*/0, /*descending=*/false));
  at::Tensor offsets = at::zeros({counts.size(0) + 1}, counts.options());
  offsets.slice(0, 1).copy_(counts.cumsum(0));
  return {order, offsets};
}

at::Tensor codebook_usage_cuda(const at::Tensor& indices, int64_t num_codes) {
  check_codebook_usage_inputs(indices, num_codes);
  check_device_type("codebook_usage", "indices", indices, at::kCUDA);
  const c10::cuda::OptionalCUDAGuard guard(indices.device());
  return checked_counts("codebook_usage", indices.contiguous(), num_codes);
}

at::Tensor codebook_grad_cuda(const at::Tensor& grad_quantized, const at::Tensor& indices, int64_t num_codes) {
  check_codebook_grad_inputs(grad_quantized, indices, num_codes);
  check_device_type("codebook_grad", "grad_quantized", grad_quantized, at::kCUDA);
  const c10::cuda::OptionalCUDAGuard guard(grad_quantized.device());
  const at::Tensor g = grad_quantized.contiguous(), idx = indices.contiguous();
  const auto [order, offsets] = bucket_rows(idx, checked_counts("codebook_grad", idx, num_codes));
  at::Tensor out = at::empty({num_codes, g.size(1)}, g.options());
  SegmentSumParams p{g.const_data_ptr(), order.const_data_ptr<int64_t>(), offsets.const_data_ptr<int64_t>(),
                     num_codes, g.size(1), to_device_dtype("codebook_grad", g.scalar_type()),
                     out.mutable_data_ptr(), nullptr, nullptr, 0.0f};
  SPARSEOPS_CUDA_CHECK(launch_codebook_segment_sum(p, current_stream()));
  return out;
}

void codebook_ema_update_cuda(at::Tensor& codebook, at::Tensor& cluster_size, at::Tensor& embed_sum,
                              const at::Tensor& z, const at::Tensor& indices, double decay, double eps) {
  check_codebook_ema_update_inputs(codebook, cluster_size, embed_sum, z, indices, decay, eps);
  check_device_type("codebook_ema_update_", "codebook", codebook, at::kCUDA);
  const c10::cuda::OptionalCUDAGuard guard(codebook.device());
  const at::Tensor zc = z.contiguous(), idx = indices.contiguous();
  const int64_t K = codebook.size(0), D = codebook.size(1);
  const auto [order, offsets] = bucket_rows(idx, checked_counts("codebook_ema_update_", idx, K));
  SegmentSumParams p{zc.const_data_ptr(), order.const_data_ptr<int64_t>(), offsets.const_data_ptr<int64_t>(), K, D,
                     to_device_dtype("codebook_ema_update_", zc.scalar_type()), nullptr,
                     embed_sum.mutable_data_ptr<float>(), cluster_size.mutable_data_ptr<float>(),
                     static_cast<float>(decay)};
  SPARSEOPS_CUDA_CHECK(launch_codebook_segment_sum(p, current_stream()));
  const at::Tensor total = cluster_size.sum(at::kDouble);  // a fixed-order reduction: deterministic
  SPARSEOPS_CUDA_CHECK(launch_codebook_ema_normalise(
      codebook.mutable_data_ptr(), to_device_dtype("codebook_ema_update_", codebook.scalar_type()),
      embed_sum.const_data_ptr<float>(), cluster_size.const_data_ptr<float>(), total.const_data_ptr<double>(), K, D,
      eps, current_stream()));
}

}  // namespace

TORCH_LIBRARY_IMPL(sparseops, CUDA, m) {
  m.impl("codebook_lookup", &codebook_lookup_cuda);
  m.impl("codebook_grad", &codebook_grad_cuda);
  m.impl("codebook_usage", &codebook_usage_cuda);
  m.impl("codebook_ema_update_", &codebook_ema_update_cuda);
}

}  // namespace sparseops::codebook
