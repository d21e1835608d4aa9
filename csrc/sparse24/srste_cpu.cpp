// nm_srste / nm_srste_backward on CPU.
//   forward: one pass over w, groups of m split across threads: mask (top-n |w| per group, ties to the
//            lower index, NaN ranked largest) and w where kept / 0 elsewhere, written together.
//   backward: elementwise, vectorised with at::vec in float32 (fp16/bf16 converted on load/store).
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <cmath>
#include <limits>

#include "common/dispatch.h"
#include "common/nm_select.h"
#include "sparse24/srste_checks.h"

namespace sparseops::sparse24 {
namespace {

// M > 0: group size known at compile time (unrolled); M == 0: runtime m.
template <int M, typename scalar_t>
void srste_forward_groups(const scalar_t* w, scalar_t* out, bool* mask, int64_t groups, int n, int m_runtime) {
  const int m = M > 0 ? M : m_runtime;
  const int64_t grain = std::max<int64_t>(1, 32768 / m);
  at::parallel_for(0, groups, grain, [&](int64_t begin, int64_t end) {
    float mag[kMaxGroupSize];
    for (int64_t g = begin; g < end; ++g) {
      const scalar_t* wg = w + g * m;
      for (int j = 0; j < m; ++j) {
        const float v = static_cast<float>(wg[j]);
        // NaN ranks as the largest magnitude (ties to the lower index): it stays in the output.
        mag[j] = std::isnan(v) ? std::numeric_limits<float>::infinity() : std::fabs(v);
      }
      const uint32_t keep = top_n_mask(mag, n, m);
      for (int j = 0; j < m; ++j) {
        const bool k = (keep >> j) & 1u;
        mask[g * m + j] = k;
        out[g * m + j] = k ? wg[j] : scalar_t(0);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> nm_srste_cpu(const at::Tensor& w, int64_t n, int64_t m, double decay,
                                                const std::optional<at::Tensor>& pruned_grad_scale) {
  check_nm_srste_inputs(w, n, m, decay, pruned_grad_scale);
  check_device_type("nm_srste", "w", w, at::kCPU);
  const at::Tensor wc = w.contiguous();
  at::Tensor out = at::empty(wc.sizes(), wc.options());
  at::Tensor mask = at::empty(wc.sizes(), wc.options().dtype(at::kBool));
  const int64_t groups = wc.numel() / m;
  SPARSEOPS_DISPATCH_FLOAT_HALF_BF16(wc.scalar_type(), "nm_srste", [&] {
    const scalar_t* wp = wc.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    bool* mp = mask.mutable_data_ptr<bool>();
    if (m == 4) {
      srste_forward_groups<4>(wp, op, mp, groups, static_cast<int>(n), 4);
    } else {
      srste_forward_groups<0>(wp, op, mp, groups, static_cast<int>(n), static_cast<int>(m));
    }
  });
  return {out, mask};
}

using fVec = at::vec::Vectorized<float>;

// grad_w = kept ? grad : grad * scale + decay * w   (the SR-STE formula written as a select, so a
// kept element's gradient is exactly grad, even where w is inf). One fVec-wide chunk in float32.
inline fVec srste_grad(const fVec& g, const fVec& x, const fVec& keep, const fVec& scale, const fVec& decay) {
  const fVec pruned = g * scale + decay * x;
  return fVec::blendv(pruned, g, keep != fVec(0.0f));
}

inline fVec load_keep(const bool* mask, int64_t count) {
  alignas(64) float kf[fVec::size()] = {};
  for (int64_t j = 0; j < count; ++j) kf[j] = mask[j] ? 1.0f : 0.0f;
  return fVec::loadu(kf);
}

void srste_backward_chunk(const float* grad, const float* w, const bool* mask, float* out, int64_t begin, int64_t end,
                          float scale_s, float decay_s) {
  const fVec scale(scale_s), decay(decay_s);
  int64_t i = begin;
  for (; i + fVec::size() <= end; i += fVec::size()) {
    srste_grad(fVec::loadu(grad + i), fVec::loadu(w + i), load_keep(mask + i, fVec::size()), scale, decay)
        .store(out + i);
  }
  if (i < end) {
    const int64_t rest = end - i;
    srste_grad(fVec::loadu(grad + i, rest), fVec::loadu(w + i, rest), load_keep(mask + i, rest), scale, decay)
        .store(out + i, rest);
  }
}

// fp16 / bf16: a Vectorized<scalar_t> holds two fVecs' worth; convert, compute in float32, round once.
template <typename scalar_t>
void srste_backward_chunk(const scalar_t* grad, const scalar_t* w, const bool* mask, scalar_t* out, int64_t begin,
                            int64_t end, float scale_s, float decay_s) {
  using bVec = at::vec::Vectorized<scalar_t>;
  const fVec scale(scale_s), decay(decay_s);
  const int64_t half = fVec::size();
  for (int64_t i = begin; i < end; i += bVec::size()) {
    const int64_t count = std::min<int64_t>(bVec::size(), end - i);
    const bVec gb = count == bVec::size() ? bVec::loadu(grad + i) : bVec::loadu(grad + i, count);
    const bVec wb = count == bVec::size() ? bVec::loadu(w + i) : bVec::loadu(w + i, count);
    auto [g0, g1] = at::vec::convert_to_float<scalar_t>(gb);
    auto [w0, w1] = at::vec::convert_to_float<scalar_t>(wb);
    const fVec k0 = load_keep(mask + i, std::min(count, half));
    const fVec k1 = load_keep(mask + i + half, std::max<int64_t>(0, count - half));
    const bVec r = at::vec::convert_from_float<scalar_t>(srste_grad(g0, w0, k0, scale, decay),
                                                         srste_grad(g1, w1, k1, scale, decay));
    if (count == bVec::size()) {
      r.store(out + i);
    } else {
      r.store(out + i, count);
    }
  }
}

at::Tensor nm_srste_backward_cpu(const at::Tensor& grad, const at::Tensor& w, const at::Tensor& mask, double decay,
                                 const std::optional<at::Tensor>& pruned_grad_scale) {
  const ScaleArg scale = check_nm_srste_backward_inputs(grad, w, mask, decay, pruned_grad_scale);
  check_device_type("nm_srste_backward", "w", w, at::kCPU);
  const at::Tensor gc = grad.contiguous(), wc = w.contiguous(), mc = mask.contiguous();
  at::Tensor out = at::empty(wc.sizes(), wc.options());
  const int64_t numel = wc.numel();
  const float scale_f = scale.value, decay_f = static_cast<float>(decay);
  constexpr int64_t kGrain = 32768;
  SPARSEOPS_DISPATCH_FLOAT_HALF_BF16(wc.scalar_type(), "nm_srste_backward", [&] {
    const scalar_t* gp = gc.const_data_ptr<scalar_t>();
    const scalar_t* wp = wc.const_data_ptr<scalar_t>();
    const bool* mp = mc.const_data_ptr<bool>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, numel, kGrain, [&](int64_t begin, int64_t end) {
      srste_backward_chunk(gp, wp, mp, op, begin, end, scale_f, decay_f);  // float overload or the fp16/bf16 template
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparseops, CPU, m) {
  m.impl("nm_srste", &nm_srste_cpu);
  m.impl("nm_srste_backward", &nm_srste_backward_cpu);
}

}  // namespace sparseops::sparse24
