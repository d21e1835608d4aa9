// codebook_grad, codebook_usage and codebook_ema_update_ on CPU. All deterministic: the rows are
// bucketed by code with a counting sort (stable: ascending row order inside a bucket), and each code's
// rows are summed by one thread in that order, in fp32. Extra memory: O(N + K) (bucket offsets and the
// row order, int64), plus for codebook_usage one int64 histogram of K per worker chunk.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "codebook/stats_checks.h"
#include "common/dispatch.h"

namespace sparseops::codebook {
namespace {

// Rows grouped by code: rows of code k are order[offsets[k] .. offsets[k + 1]), ascending.
struct Buckets {
  std::vector<int64_t> offsets, order;
};

Buckets bucket_rows(const char* op, const int64_t* idx, int64_t n, int64_t num_codes) {
  Buckets b;
  b.offsets.assign(num_codes + 1, 0);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t k = idx[i];
    TORCH_CHECK(k >= 0 && k < num_codes, index_error(op, num_codes, k, i));
    ++b.offsets[k + 1];
  }
  for (int64_t k = 0; k < num_codes; ++k) b.offsets[k + 1] += b.offsets[k];
  b.order.resize(n);
  std::vector<int64_t> cursor(b.offsets.begin(), b.offsets.end() - 1);
  for (int64_t i = 0; i < n; ++i) b.order[cursor[idx[i]]++] = i;
  return b;
}

// acc[0..D) = sum over the bucket's rows of x[row] (fp32, ascending row order).
template <typename T>
void sum_bucket(const Buckets& b, int64_t k, const T* x, int64_t D, float* acc) {
  std::fill(acc, acc + D, 0.0f);
  for (int64_t j = b.offsets[k]; j < b.offsets[k + 1]; ++j) {
    const T* row = x + b.order[j] * D;
    for (int64_t d = 0; d < D; ++d) acc[d] += static_cast<float>(row[d]);
  }
}

at::Tensor codebook_grad_cpu(const at::Tensor& grad_quantized, const at::Tensor& indices, int64_t num_codes) {
  check_codebook_grad_inputs(grad_quantized, indices, num_codes);
  check_device_type("codebook_grad", "grad_quantized", grad_quantized, at::kCPU);
  const at::Tensor g = grad_quantized.contiguous(), idx = indices.contiguous();
  const int64_t N = g.size(0), D = g.size(1);
  at::Tensor out = at::empty({num_codes, D}, g.options());
  const Buckets b = bucket_rows("codebook_grad", idx.const_data_ptr<int64_t>(), N, num_codes);
  SPARSEOPS_DISPATCH_FLOAT_HALF_BF16(g.scalar_type(), "codebook_grad", [&] {
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, num_codes, std::max<int64_t>(1, 4096 / D), [&](int64_t k0, int64_t k1) {
      std::vector<float> acc(D);
      for (int64_t k = k0; k < k1; ++k) {
        sum_bucket(b, k, gp, D, acc.data());
        for (int64_t d = 0; d < D; ++d) op[k * D + d] = static_cast<scalar_t>(acc[d]);
      }
    });
  });
  return out;
}

at::Tensor codebook_usage_cpu(const at::Tensor& indices, int64_t num_codes) {
  check_codebook_usage_inputs(indices, num_codes);
  check_device_type("codebook_usage", "indices", indices, at::kCPU);
  const at::Tensor idx = indices.contiguous();
  const int64_t* ip = idx.const_data_ptr<int64_t>();
  const int64_t N = idx.numel();
  const int64_t chunks = std::clamp<int64_t>(N / 65536, 1, std::max<int64_t>(1, at::get_num_threads()));
  std::vector<std::vector<int64_t>> hist(chunks);
  std::vector<int64_t> first_bad(chunks, -1);
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      std::vector<int64_t>& h = hist[c];
      h.assign(num_codes, 0);
      for (int64_t i = N * c / chunks; i < N * (c + 1) / chunks; ++i) {
        const int64_t k = ip[i];
        if (k < 0 || k >= num_codes) {
          first_bad[c] = i;
          break;
        }
        ++h[k];
      }
    }
  });
  for (int64_t c = 0; c < chunks; ++c) {
    if (first_bad[c] >= 0) TORCH_CHECK(false, index_error("codebook_usage", num_codes, ip[first_bad[c]], first_bad[c]));
  }
  at::Tensor out = at::empty({num_codes}, idx.options());
  int64_t* op = out.mutable_data_ptr<int64_t>();
  at::parallel_for(0, num_codes, 16384, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      int64_t s = 0;
      for (int64_t c = 0; c < chunks; ++c) s += hist[c][k];
      op[k] = s;
    }
  });
  return out;
}

void codebook_ema_update_cpu(at::Tensor& codebook, at::Tensor& cluster_size, at::Tensor& embed_sum, const at::Tensor& z,
                             const at::Tensor& indices, double decay, double eps) {
  check_codebook_ema_update_inputs(codebook, cluster_size, embed_sum, z, indices, decay, eps);
  check_device_type("codebook_ema_update_", "codebook", codebook, at::kCPU);
  const at::Tensor zc = z.contiguous(), idx = indices.contiguous();
  const int64_t N = zc.size(0), K = codebook.size(0), D = codebook.size(1);
  const Buckets b = bucket_rows("codebook_ema_update_", idx.const_data_ptr<int64_t>(), N, K);
  float* cs = cluster_size.mutable_data_ptr<float>();
  float* es = embed_sum.mutable_data_ptr<float>();
  const float keep = static_cast<float>(decay), add = static_cast<float>(1.0 - decay);
  const int64_t grain = std::max<int64_t>(1, 4096 / D);
  SPARSEOPS_DISPATCH_FLOAT_HALF_BF16(zc.scalar_type(), "codebook_ema_update_", [&] {
    const scalar_t* zp = zc.const_data_ptr<scalar_t>();
    at::parallel_for(0, K, grain, [&](int64_t k0, int64_t k1) {
      std::vector<float> acc(D);
      for (int64_t k = k0; k < k1; ++k) {
        sum_bucket(b, k, zp, D, acc.data());
        cs[k] = keep * cs[k] + add * static_cast<float>(b.offsets[k + 1] - b.offsets[k]);
        for (int64_t d = 0; d < D; ++d) es[k * D + d] = keep * es[k * D + d] + add * acc[d];
      }
    });
  });
  double n = 0.0;  // sequential: the same sum on every run
  for (int64_t k = 0; k < K; ++k) n += cs[k];
  // Laplace smoothing: (cs + eps) / (n + K eps) * n keeps the total and never divides by 0.
  const double scale = n / (n + static_cast<double>(K) * eps);
  SPARSEOPS_DISPATCH_FLOAT_HALF_BF16(codebook.scalar_type(), "codebook_ema_update_", [&] {
    scalar_t* cb = codebook.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, K, grain, [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k) {
        const float denom = static_cast<float>((static_cast<double>(cs[k]) + eps) * scale);
        for (int64_t d = 0; d < D; ++d) cb[k * D + d] = static_cast<scalar_t>(es[k * D + d] / denom);
      }
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(sparseops, CPU, m) {
  m.impl("codebook_grad", &codebook_grad_cpu);
  m.impl("codebook_usage", &codebook_usage_cpu);
  m.impl("codebook_ema_update_", &codebook_ema_update_cpu);
}

}  // namespace sparseops::codebook
