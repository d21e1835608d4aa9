// nm_srste / nm_srste_backward on CPU.
//   forward: one pass over w, groups of m split across threads: mask (top-n |w| per group, ties to the
//            lower index, NaN ranked largest) and w where kept / 0 elsewhere, written together. AVX-512
//            (nm_mask's ranking, nm_mask_avx512.cpp) for m in {2, 4, 8, 16}; else the portable loops below.
//   backward: elementwise in float32 (fp16/bf16 converted on load/store): AVX-512 (srste_avx512.cpp) or
//            a portable loop the compiler vectorises. Both ISA paths agree bit for bit.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>

#include "common/cpu_features.h"
#include "common/dispatch.h"
#include "common/nm_select.h"
#include "sparse24/cpu_dtype.h"
#include "sparse24/srste_checks.h"

namespace sparseops::sparse24 {
namespace {

// Magnitude with NaN ranked largest (ties to the lower index, as +inf).
inline float srste_mag(float v) { return std::isnan(v) ? std::numeric_limits<float>::infinity() : std::fabs(v); }

// m == 4: the same keep rule as top_n_mask (rank = number of elements that are larger, or equal with
// a lower index; keep rank < n) from the 6 pairwise comparisons instead of 16, branch-free.
template <typename scalar_t>
void srste_forward_groups4(const scalar_t* w, scalar_t* out, bool* mask, int64_t groups, int n) {
  at::parallel_for(0, groups, 8192, [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g) {
      const scalar_t* wg = w + 4 * g;
      const float a0 = srste_mag(static_cast<float>(wg[0])), a1 = srste_mag(static_cast<float>(wg[1]));
      const float a2 = srste_mag(static_cast<float>(wg[2])), a3 = srste_mag(static_cast<float>(wg[3]));
      int r0 = 0, r1 = 0, r2 = 0, r3 = 0;
      bool c;  // pair (j, k), j < k: k outranks j iff a_k > a_j, else j outranks k
      c = a1 > a0; r0 += c; r1 += !c;
      c = a2 > a0; r0 += c; r2 += !c;
      c = a3 > a0; r0 += c; r3 += !c;
      c = a2 > a1; r1 += c; r2 += !c;
      c = a3 > a1; r1 += c; r3 += !c;
      c = a3 > a2; r2 += c; r3 += !c;
      const bool k0 = r0 < n, k1 = r1 < n, k2 = r2 < n, k3 = r3 < n;
      bool* mg = mask + 4 * g;
      scalar_t* og = out + 4 * g;
      mg[0] = k0; mg[1] = k1; mg[2] = k2; mg[3] = k3;
      og[0] = k0 ? wg[0] : scalar_t(0);
      og[1] = k1 ? wg[1] : scalar_t(0);
      og[2] = k2 ? wg[2] : scalar_t(0);
      og[3] = k3 ? wg[3] : scalar_t(0);
    }
  });
}

// Any m (<= 16): the shared top_n_mask.
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
        mag[j] = srste_mag(v);  // NaN ranks as the largest magnitude: it stays in the output
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
#if SPARSEOPS_X86_KERNELS
    if (cpu_use_avx512() && cpu::nm_mask_avx512_supports(m)) {
      // Chunks of whole 64-element blocks (a multiple of every supported m and of the vector width).
      constexpr int64_t kBlock = 64;
      const int64_t numel = wc.numel();
      at::parallel_for(0, (numel + kBlock - 1) / kBlock, 512, [&](int64_t b0, int64_t b1) {
        cpu::nm_srste_forward_avx512(cpu_dtype<scalar_t>(), wp, op, mp, b0 * kBlock, std::min(b1 * kBlock, numel),
                                     static_cast<int>(n), static_cast<int>(m));
      });
    } else
#endif
    if (m == 4) {
      srste_forward_groups4(wp, op, mp, groups, static_cast<int>(n));
    } else {
      srste_forward_groups<0>(wp, op, mp, groups, static_cast<int>(n), static_cast<int>(m));
    }
  });
  return {out, mask};
}

// grad_w = kept ? grad : grad * scale + decay * w   (the SR-STE formula written as a select, so a
// kept element's gradient is exactly grad, even where w is inf). float32 maths, one rounding to the
// output dtype. A plain loop: GCC vectorises it (the float path with the baseline SSE2, the 16-bit
// conversions as far as the ISA allows); at::vec's generic (non-AVX) Vectorized ran 3x slower here.
template <typename scalar_t>
void srste_backward_range(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ w,
                          const uint8_t* __restrict__ mask, scalar_t* __restrict__ out, int64_t begin, int64_t end,
                          float scale, float decay) {
  for (int64_t i = begin; i < end; ++i) {
    const float g = static_cast<float>(grad[i]);
    const float pruned = g * scale + decay * static_cast<float>(w[i]);
    out[i] = static_cast<scalar_t>(mask[i] != 0 ? g : pruned);
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
    // The mask's bytes as uint8: any non-zero byte is "kept" (a bool tensor viewed from other bytes,
    // e.g. uint8.view(torch.bool), may hold values other than 0/1; reading those as bool is UB).
    const uint8_t* mp = static_cast<const uint8_t*>(mc.const_data_ptr());
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    [[maybe_unused]] const bool avx512 = cpu_use_avx512();
    at::parallel_for(0, numel, kGrain, [&](int64_t begin, int64_t end) {
#if SPARSEOPS_X86_KERNELS
      if (avx512) {
        cpu::nm_srste_backward_avx512(cpu_dtype<scalar_t>(), gp, wp, mp, op, begin, end, scale_f, decay_f);
        return;
      }
#endif
      srste_backward_range(gp, wp, mp, op, begin, end, scale_f, decay_f);
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
