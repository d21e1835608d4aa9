// CUDA block-sparse attention (forward, backward) and topk_block_mask. No torch headers.
//
// The CUDA-core kernels: fp32 on every GPU, and fp16/bf16 where the tensor-core kernels
// (attention_tc.cuh) do not apply. A straightforward tiled kernel on CUDA cores (fp32 FMA, no tensor cores): one warp per query row,
// kRows rows (warps) per thread block, all in one q-block, so they share its list of kept KV blocks;
// each kept block is walked in tiles of 32 keys staged in shared memory as fp32 (one key per lane for
// q.k, lanes over the head dim for P V), with the FlashAttention-2 online softmax per row in registers
// (D <= 256: 8 accumulators per lane). Backward: the same walk recomputes P from lse; dq stays in
// registers, dk/dv go through shared-memory tiles (shared atomics across the block's rows) into fp32
// global accumulators (global atomics), converted to the dtype by the glue.
#include <cuda_runtime.h>

#include <cmath>

#include "attention/attention_launch.h"
#include "attention/attention_tile.h"
#include "common/cuda_dispatch.cuh"

namespace sparseops::attention {
namespace {

constexpr int kRows = kCudaCoreRowsPerBlock;  // warps (query rows) per thread block
constexpr int kTile = 32;  // keys per shared-memory tile
constexpr int kMaxDPerLane = 8;
constexpr unsigned kFull = 0xffffffffu;

__device__ __forceinline__ float warp_max(float x) {
  for (int o = 16; o; o >>= 1) x = nan_max(x, __shfl_xor_sync(kFull, x, o));
  return x;
}

__device__ __forceinline__ float warp_sum(float x) {
  for (int o = 16; o; o >>= 1) x += __shfl_xor_sync(kFull, x, o);
  return x;
}

// Where this thread block's rows lie: q-block qb, rows [row_lo, row_hi) of the sequence, and which of
// the row's KV splits it walks (AttnParams::splits).
struct RowGroup {
  int64_t qb, b, h, hkv, row_lo, row_hi, mrow, split;
};

__device__ __forceinline__ RowGroup row_group(const AttnParams& p) {
  const int64_t groups = (p.block_q + kRows - 1) / kRows;
  const int64_t group = blockIdx.x / p.splits;
  RowGroup g;
  g.split = blockIdx.x % p.splits;
  g.qb = group / groups;
  const int64_t rg = group % groups;
  g.h = blockIdx.y;
  g.b = blockIdx.z;
  g.hkv = g.h / (p.Hq / p.Hkv);
  const int64_t i0 = g.qb * p.block_q, mq = min(p.block_q, p.Sq - i0);
  g.row_lo = i0 + min(rg * kRows, mq);
  g.row_hi = i0 + min(rg * kRows + kRows, mq);
  g.mrow = mask_row(g.b, g.h, g.qb, p.mask_b, p.mask_h, p.nq);
  return g;
}

template <typename T>
__device__ void load_tile(const T* k, const T* v, int64_t base, int n, int D, float* Ks, float* Vs) {
  const int ld = D + 1;
  for (int e = threadIdx.x; e < kTile * D; e += blockDim.x) {
    const int jj = e / D, dd = e % D;
    float kv = 0.0f, vv = 0.0f;
    if (jj < n) {
      kv = to_float(k[base + static_cast<int64_t>(jj) * D + dd]);
      vv = to_float(v[base + static_cast<int64_t>(jj) * D + dd]);
    }
    Ks[jj * ld + dd] = kv;
    Vs[jj * ld + dd] = vv;
  }
}

template <typename T>
__global__ void __launch_bounds__(kRows * 32) fwd_kernel(AttnParams p) {
  extern __shared__ float smem[];
  const int D = static_cast<int>(p.D), ld = D + 1;
  float* Ks = smem;
  float* Vs = Ks + kTile * ld;
  float* Qs = Vs + kTile * ld;  // [kRows][D]
  const RowGroup g = row_group(p);
  if (g.row_lo >= g.row_hi) return;  // the whole block: no rows
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t i = g.row_lo + warp;
  const bool active = i < g.row_hi;
  const T* q = static_cast<const T*>(p.q);
  const T* k = static_cast<const T*>(p.k);
  const T* v = static_cast<const T*>(p.v);
  const int64_t qrow = (g.b * p.Hq + g.h) * p.Sq + i;
  if (active)
    for (int d = lane; d < D; d += 32) Qs[warp * D + d] = to_float(q[qrow * D + d]) * p.scale;
  float acc[kMaxDPerLane];
#pragma unroll
  for (int t = 0; t < kMaxDPerLane; ++t) acc[t] = 0.0f;
  float m = -INFINITY, l = 0.0f;
  // The mask is validated as it is read; this split's share of the row's entries.
  const EntryRange entries = split_entries(readable_count(p.num[g.mrow], p.width), g.split, p.splits);
  const int32_t* list = p.idx + g.mrow * p.width;
  const int64_t kv_base = (g.b * p.Hkv + g.hkv) * p.Skv;
  for (int64_t c = entries.begin; c < entries.end; ++c) {
    const int64_t kb = list[c];
    if (!valid_kv_block(kb, p.nkv)) continue;
    const int64_t j0 = kb * p.block_k, nb = min(p.block_k, p.Skv - j0);
    if (p.rule.block(g.row_lo, g.row_hi, j0, j0 + nb) == 0) continue;
    for (int64_t t0 = 0; t0 < nb; t0 += kTile) {
      const int n = static_cast<int>(min(static_cast<int64_t>(kTile), nb - t0));
      __syncthreads();
      load_tile(k, v, (kv_base + j0 + t0) * D, n, D, Ks, Vs);
      __syncthreads();
      if (!active) continue;
      float s = -INFINITY;
      if (lane < n && p.rule.visible(i, j0 + t0 + lane)) {
        float a = 0.0f;
        for (int d = 0; d < D; ++d) a += Qs[warp * D + d] * Ks[lane * ld + d];
        s = a;
      }
      const float m_new = nan_max(m, warp_max(s));
      if (m_new == -INFINITY) continue;  // nothing visible yet (warp-uniform)
      const float pj = softmax_weight(s, m_new);
      const float alpha = softmax_rescale(m, m_new);
      l = l * alpha + warp_sum(pj);
#pragma unroll
      for (int t = 0; t < kMaxDPerLane; ++t) acc[t] *= alpha;
      for (int jj = 0; jj < n; ++jj) {
        const float pb = __shfl_sync(kFull, pj, jj);
#pragma unroll
        for (int t = 0; t < kMaxDPerLane; ++t) {
          const int d = lane + 32 * t;
          if (d < D) acc[t] += pb * Vs[jj * ld + d];
        }
      }
      m = m_new;
    }
  }
  if (!active) return;
  const RowResult res = finish_softmax_row(m, l);
  if (p.splits > 1) {  // this split's fp32 partial row, merged afterwards (launch_merge_splits)
    const int64_t prow = g.split * p.B * p.Hq * p.Sq + qrow;
#pragma unroll
    for (int t = 0; t < kMaxDPerLane; ++t) {
      const int d = lane + 32 * t;
      if (d < D) p.part_out[prow * D + d] = res.inv_l == 0.0f ? 0.0f : acc[t] * res.inv_l;
    }
    if (lane == 0) p.part_lse[prow] = res.lse;
    return;
  }
  T* out = static_cast<T*>(p.out);
#pragma unroll
  for (int t = 0; t < kMaxDPerLane; ++t) {
    const int d = lane + 32 * t;
    if (d < D) out[qrow * D + d] = from_float<T>(res.inv_l == 0.0f ? 0.0f : acc[t] * res.inv_l);
  }
  if (lane == 0) p.lse[qrow] = res.lse;
}

// out / lse from the forward's KV splits (attention_tile.h's merge rules), one thread per element.
template <typename T>
__global__ void merge_splits_kernel(AttnParams p) {
  const int64_t rows = p.B * p.Hq * p.Sq, D = p.D;
  T* out = static_cast<T*>(p.out);
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < rows * D;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = e / D, d = e % D;
    const float lse = merged_lse(p.part_lse + row, rows, p.splits);
    float acc = 0.0f;
    for (int64_t s = 0; s < p.splits; ++s) {
      const float lse_s = p.part_lse[s * rows + row];
      if (lse_s != -INFINITY) acc += split_weight(lse_s, lse) * p.part_out[(s * rows + row) * D + d];
    }
    out[e] = from_float<T>(lse == -INFINITY ? 0.0f : acc);
    if (d == 0) p.lse[row] = lse;
  }
}

template <typename T>
__global__ void __launch_bounds__(kRows * 32) bwd_kernel(AttnParams p) {
  extern __shared__ float smem[];
  const int D = static_cast<int>(p.D), ld = D + 1;
  float* Ks = smem;
  float* Vs = Ks + kTile * ld;
  float* dKs = Vs + kTile * ld;
  float* dVs = dKs + kTile * ld;
  float* Qs = dVs + kTile * ld;  // [kRows][D], scaled
  float* Gs = Qs + kRows * D;    // [kRows][D], grad_out
  const RowGroup g = row_group(p);
  if (g.row_lo >= g.row_hi) return;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t i = g.row_lo + warp;
  const bool active = i < g.row_hi;
  const T* q = static_cast<const T*>(p.q);
  const T* k = static_cast<const T*>(p.k);
  const T* v = static_cast<const T*>(p.v);
  const T* go = static_cast<const T*>(p.grad_out);
  const int64_t qrow = (g.b * p.Hq + g.h) * p.Sq + i;
  float lse = 0.0f, delta = 0.0f;
  if (active) {
    for (int d = lane; d < D; d += 32) {
      Qs[warp * D + d] = to_float(q[qrow * D + d]) * p.scale;
      Gs[warp * D + d] = to_float(go[qrow * D + d]);
    }
    lse = p.lse_in[qrow];
    delta = p.delta[qrow];
  }
  float acc[kMaxDPerLane];
#pragma unroll
  for (int t = 0; t < kMaxDPerLane; ++t) acc[t] = 0.0f;
  const int64_t cnt = readable_count(p.num[g.mrow], p.width);  // the mask is validated as it is read
  const int32_t* list = p.idx + g.mrow * p.width;
  const int64_t kv_base = (g.b * p.Hkv + g.hkv) * p.Skv;
  for (int64_t c = 0; c < cnt; ++c) {
    const int64_t kb = list[c];
    if (!valid_kv_block(kb, p.nkv)) continue;
    const int64_t j0 = kb * p.block_k, nb = min(p.block_k, p.Skv - j0);
    if (p.rule.block(g.row_lo, g.row_hi, j0, j0 + nb) == 0) continue;
    for (int64_t t0 = 0; t0 < nb; t0 += kTile) {
      const int n = static_cast<int>(min(static_cast<int64_t>(kTile), nb - t0));
      __syncthreads();
      load_tile(k, v, (kv_base + j0 + t0) * D, n, D, Ks, Vs);
      for (int e = threadIdx.x; e < kTile * ld; e += blockDim.x) dKs[e] = dVs[e] = 0.0f;
      __syncthreads();
      if (active) {
        float pj = 0.0f, ds = 0.0f;
        if (lane < n && p.rule.visible(i, j0 + t0 + lane) && lse != -INFINITY) {
          float s = 0.0f, dp = 0.0f;
          for (int d = 0; d < D; ++d) {
            s += Qs[warp * D + d] * Ks[lane * ld + d];
            dp += Gs[warp * D + d] * Vs[lane * ld + d];
          }
          pj = recomputed_prob(s, lse);
          ds = pj * (dp - delta);
        }
        for (int jj = 0; jj < n; ++jj) {
          const float pb = __shfl_sync(kFull, pj, jj), db = __shfl_sync(kFull, ds, jj);
          if (pb == 0.0f && db == 0.0f) continue;  // warp-uniform
#pragma unroll
          for (int t = 0; t < kMaxDPerLane; ++t) {
            const int d = lane + 32 * t;
            if (d < D) {
              acc[t] += db * Ks[jj * ld + d];
              atomicAdd(&dVs[jj * ld + d], pb * Gs[warp * D + d]);
              atomicAdd(&dKs[jj * ld + d], db * Qs[warp * D + d]);
            }
          }
        }
      }
      __syncthreads();
      for (int e = threadIdx.x; e < n * D; e += blockDim.x) {
        const int jj = e / D, dd = e % D;
        const int64_t at = (kv_base + j0 + t0 + jj) * D + dd;
        const float dkv = dKs[jj * ld + dd], dvv = dVs[jj * ld + dd];
        if (dkv != 0.0f) atomicAdd(&p.dk_acc[at], dkv);
        if (dvv != 0.0f) atomicAdd(&p.dv_acc[at], dvv);
      }
    }
  }
  if (!active) return;
  T* dq = static_cast<T*>(p.dq);
#pragma unroll
  for (int t = 0; t < kMaxDPerLane; ++t) {
    const int d = lane + 32 * t;
    if (d < D) dq[qrow * D + d] = from_float<T>(acc[t] * p.scale);
  }
}

// ---- topk_block_mask ----------------------------------------------------------------------------

// pooled[row][d] = mean over the block's tokens (float64, tokens summed in order, as the CPU kernel).
template <typename T>
__global__ void pool_kernel(const T* x, int64_t heads, int64_t S, int64_t D, int64_t block, double* pooled) {
  const int64_t nb = (S + block - 1) / block, total = heads * nb * D;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t d = e % D, t = e / D, h = t / nb, j0 = (t % nb) * block, n = min(block, S - j0);
    double s = 0.0;
    for (int64_t j = 0; j < n; ++j) s += static_cast<double>(to_float(x[(h * S + j0 + j) * D + d]));
    pooled[e] = s / static_cast<double>(n);
  }
}

// One thread block per (b, query head, q-block): states and scores in parallel, then the selection by
// thread 0 (topk passes of an argmax; ties to the lower index).
__global__ void select_kernel(TopkParams p) {
  const int64_t row = blockIdx.x, qb = row % p.nq, bhq = row / p.nq, b = bhq / p.Hq, h = bhq % p.Hq;
  const int64_t i0 = qb * p.block_q, i1 = min(i0 + p.block_q, p.Sq);
  const int64_t diag = min(max((i1 - 1 + p.rule.offset) / p.block_k, int64_t{0}), p.nkv - 1);
  const double* pq = p.pooled_q + row * p.D;
  const double* pk = p.pooled_k + (b * p.Hkv + h / (p.Hq / p.Hkv)) * p.nkv * p.D;
  double* score = p.scores + row * p.nkv;
  uint8_t* state = p.state + row * p.nkv;
  for (int64_t kb = threadIdx.x; kb < p.nkv; kb += blockDim.x) {
    const int64_t j0 = kb * p.block_k;
    const bool visible = p.rule.block(i0, i1, j0, min(j0 + p.block_k, p.Skv)) != 0;
    const bool forced = kb < p.sink_blocks || (kb <= diag && kb > diag - p.local_blocks);
    state[kb] = !visible ? 0 : forced ? 2 : 1;
    if (state[kb] == 1) {
      double s = 0.0;
      for (int64_t x = 0; x < p.D; ++x) s = __dadd_rn(s, __dmul_rn(pq[x], pk[kb * p.D + x]));  // no FMA: as on the CPU
      score[kb] = isnan(s) ? -INFINITY : s;
    }
  }
  __syncthreads();
  if (threadIdx.x != 0) return;
  for (int64_t t = 0; t < p.topk; ++t) {
    int64_t best = -1;
    for (int64_t kb = 0; kb < p.nkv; ++kb)
      if (state[kb] == 1 && (best < 0 || score[kb] > score[best])) best = kb;
    if (best < 0) break;
    state[best] = 2;
  }
  int32_t count = 0;
  int32_t* out = p.idx + row * p.nkv;
  for (int64_t kb = 0; kb < p.nkv; ++kb)
    if (state[kb] == 2) out[count++] = static_cast<int32_t>(kb);
  p.num[row] = count;
}

}  // namespace

int64_t attention_fwd_smem_bytes(int64_t D) { return (2 * kTile * (D + 1) + kRows * D) * 4; }
int64_t attention_bwd_smem_bytes(int64_t D) { return (4 * kTile * (D + 1) + 2 * kRows * D) * 4; }

// grid.x: the q-blocks' row groups times the KV splits (1 in the backward).
static dim3 attention_grid(const AttnParams& p) {
  const int64_t groups = (p.block_q + kRows - 1) / kRows;
  return dim3(static_cast<unsigned>(p.nq * groups * p.splits), static_cast<unsigned>(p.Hq),
              static_cast<unsigned>(p.B));
}

cudaError_t launch_merge_splits(const AttnParams& p, cudaStream_t stream) {
  const int64_t total = p.B * p.Hq * p.Sq * p.D;
  if (total == 0) return cudaSuccess;
  const int64_t wanted = (total + 255) / 256;
  const unsigned blocks = static_cast<unsigned>(wanted < 4096 ? wanted : 4096);
  return SPARSEOPS_CUDA_DISPATCH(p.dtype, [&] {
    merge_splits_kernel<scalar_t><<<blocks, 256, 0, stream>>>(p);
    return cudaGetLastError();
  });
}

cudaError_t launch_block_sparse_attention_fwd(const AttnParams& p, cudaStream_t stream) {
  return SPARSEOPS_CUDA_DISPATCH(p.dtype, [&] {
    const int smem = static_cast<int>(attention_fwd_smem_bytes(p.D));
    cudaError_t err = cudaFuncSetAttribute(fwd_kernel<scalar_t>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (err != cudaSuccess) return err;
    fwd_kernel<scalar_t><<<attention_grid(p), kRows * 32, smem, stream>>>(p);
    return cudaGetLastError();
  });
}

cudaError_t launch_block_sparse_attention_bwd(const AttnParams& p, cudaStream_t stream) {
  return SPARSEOPS_CUDA_DISPATCH(p.dtype, [&] {
    const int smem = static_cast<int>(attention_bwd_smem_bytes(p.D));
    cudaError_t err = cudaFuncSetAttribute(bwd_kernel<scalar_t>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (err != cudaSuccess) return err;
    bwd_kernel<scalar_t><<<attention_grid(p), kRows * 32, smem, stream>>>(p);
    return cudaGetLastError();
  });
}

cudaError_t launch_topk_block_mask(const TopkParams& p, cudaStream_t stream) {
  return SPARSEOPS_CUDA_DISPATCH(p.dtype, [&] {
    const scalar_t* q = static_cast<const scalar_t*>(p.q);
    const scalar_t* k = static_cast<const scalar_t*>(p.k);
    pool_kernel<scalar_t><<<256, 256, 0, stream>>>(q, p.B * p.Hq, p.Sq, p.D, p.block_q, p.pooled_q);
    pool_kernel<scalar_t><<<256, 256, 0, stream>>>(k, p.B * p.Hkv, p.Skv, p.D, p.block_k, p.pooled_k);
    const int64_t rows = p.B * p.Hq * p.nq;
    if (rows > 0) select_kernel<<<static_cast<unsigned>(rows), 128, 0, stream>>>(p);
    return cudaGetLastError();
  });
}

}  // namespace sparseops::attention
