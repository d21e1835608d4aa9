#pragma once
// Tensor-core block-sparse attention for sm80+ (fp16 / bf16), included by one .cu per dtype
// (attention_tc_fp16.cu, attention_tc_bf16.cu) to keep each nvcc run short. No torch headers.
//
// Forward (FlashAttention-2 over the kept KV blocks only): one thread block of 4 warps per (kM = 64
// query rows of one q-block, query head, batch); each warp owns 16 rows. The q-block's kept list is
// walked block by block, each block in steps of kN keys: K/V tiles go to shared memory (cp.async,
// zero-filled past the block's end), S = Q K^T on tensor cores (mma.sync m16n8k16, ldmatrix), the
// token-level causal/window rule and the ragged edges applied per element, the online softmax on the
// fragments (each row's 4 lanes reduce with two shuffles), then O += P V with P rounded to the input
// dtype, as FlashAttention-2 does. GQA: query head h reads K/V head h / (Hq / Hkv); nothing expanded.
// Saves lse (fp32) for the backward.
//
// Backward (recompute from lse, no Sq x Skv buffer), the same walk: S, P = exp(S - lse), dP = dO V^T,
// dS = P (dP - delta); dQ += dS K stays in registers; P and dS go through shared memory so that each
// warp computes dV = P^T dO and dK = dS^T Q for 16 keys of the step, added with fp32 atomics into
// the [B, Hkv, Skv, D] accumulators (they sum over the q-blocks and the GQA group's heads, so no
// transposed mask is needed; summation order, and so the last bits of dK/dV, vary run to run).
//
// The head dim is padded with zeros to kD in {64, 128, 256} (forward) / {64, 128} (backward).
// Extra memory: none beyond the outputs (forward; with a KV split, the glue's fp32 partial rows); the
// glue's fp32 dK/dV accumulators (backward).
#include <cuda_runtime.h>
#include <type_traits>

#include "attention/attention_launch.h"
#include "attention/attention_mma.cuh"
#include "attention/attention_tile.h"

namespace sparseops::attention::tc {

template <int kD_, bool kBackward>
struct Shape {
  static constexpr int kD = kD_;                  // head dim, padded with zeros from p.D
  static constexpr int kWarps = 4;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kM = 16 * kWarps;          // query rows per thread block, 16 per warp
  static_assert(kM == kTensorCoreRowsPerBlock, "the glue's grid size (attention_fwd_blocks)");
  static constexpr int kN = kD <= 128 ? 64 : 32;  // keys per step (fewer at D=256: registers)
  static constexpr int kLd = kD + 8;              // shared row stride of Q, K, V, dO tiles (elements)
  static constexpr int kLdP = kN + 8;             // shared row stride of the P and dS tiles (backward)
  static_assert(kD % 16 == 0 && kN % 16 == 0, "mma.m16n8k16 tiles: head dim and key step multiples of 16");
  static_assert(!kBackward || kN == 16 * kWarps, "backward: each warp owns 16 keys of the dK/dV tile");
  static_assert(!kBackward || kD <= 128, "backward: the dQ fragment (kD / 2 floats per thread) must fit");
};

template <typename T, int kD>
constexpr int fwd_smem_bytes() {
  using S = Shape<kD, false>;
  return (S::kM + 2 * S::kN) * S::kLd * static_cast<int>(sizeof(T));  // Q, K, V
}

template <typename T, int kD>
constexpr int bwd_smem_bytes() {
  using S = Shape<kD, true>;
  return ((2 * S::kM + 2 * S::kN) * S::kLd + 2 * S::kM * S::kLdP) * static_cast<int>(sizeof(T));  // Q dO K V, P dS
}

// The opt-in shared-memory limit of the smallest sm80+ parts (sm86/sm89: 99 KiB): the tensor-core
// kernels fit every GPU they run on, so the glue checks none of their sizes at run time.
constexpr int kMinSm80SmemOptin = 99 * 1024;
static_assert(fwd_smem_bytes<__half, 256>() <= kMinSm80SmemOptin, "forward tiles must fit every sm80+ GPU");
static_assert(bwd_smem_bytes<__half, 128>() <= kMinSm80SmemOptin, "backward tiles must fit every sm80+ GPU");

// Where a thread block's rows lie: q-block qb, rows [row_lo, row_hi) of the sequence (up to kM), and
// which of the row's KV splits it walks (AttnParams::splits).
struct TileCoords {
  int64_t qb, b, h, hkv, row_lo, row_hi, mrow, split;
};

__device__ __forceinline__ TileCoords tile_coords(const AttnParams& p, int kM) {
  const int64_t tiles = (p.block_q + kM - 1) / kM;  // thread blocks per q-block (before splits)
  const int64_t tile = blockIdx.x / p.splits;
  TileCoords c;
  c.split = blockIdx.x % p.splits;
  c.qb = tile / tiles;
  c.h = blockIdx.y;
  c.b = blockIdx.z;
  c.hkv = c.h / (p.Hq / p.Hkv);
  const int64_t i0 = c.qb * p.block_q, mq = min(p.block_q, p.Sq - i0);
  c.row_lo = i0 + min((tile % tiles) * kM, mq);
  c.row_hi = i0 + min((tile % tiles) * kM + kM, mq);
  c.mrow = mask_row(c.b, c.h, c.qb, p.mask_b, p.mask_h, p.nq);
  return c;
}

// Rows [0, valid) of a [rows x D] global tile (row stride D, 16-byte aligned rows) into a shared
// [kRows x kLd] tile, zeros elsewhere (rows past valid, columns past D). Asynchronous: wait with
// cp_async_wait_all() and a __syncthreads().
template <typename T, int kRows, int kD, int kLd>
__device__ __forceinline__ void load_tile_async(T* s, const T* g, int64_t valid, int D) {
  constexpr int kChunks = kD / 8;  // 16-byte chunks per row
  for (int e = threadIdx.x; e < kRows * kChunks; e += blockDim.x) {
    const int r = e / kChunks, c = e % kChunks;
    const bool ok = r < valid && c * 8 < D;
    cp_async_16(s + r * kLd + c * 8, ok ? g + static_cast<int64_t>(r) * D + c * 8 : g, ok);
  }
}

// The sequence positions of the two rows a lane holds in C fragments (g and g + 8 of its warp).
struct LaneRows {
  int64_t i[2];
};
__device__ __forceinline__ LaneRows lane_rows(const TileCoords& c) {
  const int warp = threadIdx.x / 32, g = (threadIdx.x % 32) / 4;
  const int64_t r0 = c.row_lo + warp * 16 + g;
  return LaneRows{{r0, r0 + 8}};
}

// Scores of one step (keys j0 + column), scaled; -inf where the key is past the step's n, the row past
// the tile, or the token rule hides it (all_visible: the rule's block test said every pair is visible).
template <int kN>
__device__ __forceinline__ void mask_scores(float (&s)[kN / 8][4], const TokenRule& rule, const LaneRows& rows,
                                            int64_t row_hi, int64_t j0, int n, bool all_visible, float scale) {
  const int t = threadIdx.x % 4;
#pragma unroll
  for (int nt = 0; nt < kN / 8; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int col = nt * 8 + 2 * t + (e & 1);
      const int64_t i = rows.i[e / 2];
      const bool keep = col < n && i < row_hi && (all_visible || rule.visible(i, j0 + col));
      s[nt][e] = keep ? s[nt][e] * scale : -INFINITY;
    }
}

// One online-softmax step on the fragments: running max m and (lane-partial) sum l per row, scores
// replaced by their weights, the output accumulator rescaled.
template <int kN, int kD>
__device__ __forceinline__ void online_softmax_step(float (&s)[kN / 8][4], float (&m)[2], float (&l)[2],
                                                    float (&o)[kD / 8][4]) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float mx = m[r];
#pragma unroll
    for (int nt = 0; nt < kN / 8; ++nt) mx = nan_max(mx, nan_max(s[nt][2 * r], s[nt][2 * r + 1]));
    mx = nan_max(mx, __shfl_xor_sync(kFullMask, mx, 1));
    mx = nan_max(mx, __shfl_xor_sync(kFullMask, mx, 2));
    const float alpha = softmax_rescale(m[r], mx);
    m[r] = mx;
    float sum = 0.0f;
#pragma unroll
    for (int nt = 0; nt < kN / 8; ++nt)
#pragma unroll
      for (int e = 2 * r; e < 2 * r + 2; ++e) {
        s[nt][e] = softmax_weight(s[nt][e], mx);
        sum += s[nt][e];
      }
    l[r] = l[r] * alpha + sum;
#pragma unroll
    for (int nt = 0; nt < kD / 8; ++nt) {
      o[nt][2 * r] *= alpha;
      o[nt][2 * r + 1] *= alpha;
    }
  }
}

// Row r's fragment values (f[nt][2r], f[nt][2r+1]) times `scale`, rounded to T, at columns < D of
// `dst` (row stride D). D is a multiple of 8, so a column pair is either wholly in or out.
// T = float: the split forward's fp32 partial rows (8-byte aligned pairs: D is even).
template <typename T, int kCols>
__device__ __forceinline__ void store_row_pairs(T* dst, const float (&f)[kCols / 8][4], int r, float scale, int D) {
  const int t = threadIdx.x % 4;
#pragma unroll
  for (int nt = 0; nt < kCols / 8; ++nt) {
    const int col = nt * 8 + 2 * t;
    if (col >= D) continue;
    if constexpr (std::is_same_v<T, float>)
      *reinterpret_cast<float2*>(dst + col) = make_float2(f[nt][2 * r] * scale, f[nt][2 * r + 1] * scale);
    else
      *reinterpret_cast<uint32_t*>(dst + col) = pack2<T>(f[nt][2 * r] * scale, f[nt][2 * r + 1] * scale);
  }
}

// A warp's C fragment [16 x kN] rounded to T into a shared [16 x kN] tile (row stride ld).
template <typename T, int kN>
__device__ __forceinline__ void store_fragment(T* s, int ld, const float (&f)[kN / 8][4]) {
  const int g = (threadIdx.x % 32) / 4, t = threadIdx.x % 4;
#pragma unroll
  for (int nt = 0; nt < kN / 8; ++nt) {
    *reinterpret_cast<uint32_t*>(s + g * ld + nt * 8 + 2 * t) = pack2<T>(f[nt][0], f[nt][1]);
    *reinterpret_cast<uint32_t*>(s + (g + 8) * ld + nt * 8 + 2 * t) = pack2<T>(f[nt][2], f[nt][3]);
  }
}

// dst[key][col] += scale * f for a warp's 16 keys (key0 + fragment row) of a step, keys < n, cols < D;
// dst is the fp32 accumulator at the step's first key (row stride D).
template <int kD>
__device__ __forceinline__ void add_keys_atomic(float* dst, const float (&f)[kD / 8][4], int key0, int n, int D,
                                                float scale) {
  const int g = (threadIdx.x % 32) / 4, t = threadIdx.x % 4;
#pragma unroll
  for (int nt = 0; nt < kD / 8; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int key = key0 + g + (e / 2) * 8, col = nt * 8 + 2 * t + (e & 1);
      if (key < n && col < D) atomicAdd(dst + static_cast<int64_t>(key) * D + col, f[nt][e] * scale);
    }
}

// The KV steps a thread block walks: for each readable entry of its mask row (of its split's share),
// a valid block that the token rule does not hide entirely, in steps of kN keys. visit(j0, n,
// all_visible) per step.
template <int kN, typename Visit>
__device__ __forceinline__ void for_each_kv_step(const AttnParams& p, const TileCoords& c, Visit visit) {
  const EntryRange entries = split_entries(readable_count(p.num[c.mrow], p.width), c.split, p.splits);
  const int32_t* list = p.idx + c.mrow * p.width;
  for (int64_t e = entries.begin; e < entries.end; ++e) {
    const int64_t kb = list[e];
    if (!valid_kv_block(kb, p.nkv)) continue;
    const KeyRange keys = kv_block_keys(kb, p.block_k, p.Skv);
    const int cls = p.rule.block(c.row_lo, c.row_hi, keys.begin, keys.end);
    if (cls == 0) continue;
    for (int64_t j0 = keys.begin; j0 < keys.end; j0 += kN)
      visit(j0, static_cast<int>(min(static_cast<int64_t>(kN), keys.end - j0)), cls == 2);
  }
}

template <typename T, int kD>
__global__ void __launch_bounds__(Shape<kD, false>::kThreads) fwd_tc_kernel(AttnParams p) {
  using S = Shape<kD, false>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* Qs = reinterpret_cast<T*>(smem_raw);
  T* Ks = Qs + S::kM * S::kLd;
  T* Vs = Ks + S::kN * S::kLd;
  const TileCoords c = tile_coords(p, S::kM);
  if (c.row_lo >= c.row_hi) return;  // a q-block shorter than the grid's tiles: no rows here
  const int warp = threadIdx.x / 32, D = static_cast<int>(p.D);
  const T* k = static_cast<const T*>(p.k);
  const T* v = static_cast<const T*>(p.v);
  const int64_t q_row0 = (c.b * p.Hq + c.h) * p.Sq;  // row 0 of this (b, h) in q / out / lse
  const int64_t kv_row0 = (c.b * p.Hkv + c.hkv) * p.Skv;
  load_tile_async<T, S::kM, kD, S::kLd>(Qs, static_cast<const T*>(p.q) + (q_row0 + c.row_lo) * p.D,
                                         c.row_hi - c.row_lo, D);
  cp_async_wait_all();  // the first step's __syncthreads publishes Q
  const LaneRows rows = lane_rows(c);
  float o[kD / 8][4];
  zero<kD>(o);
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  for_each_kv_step<S::kN>(p, c, [&](int64_t j0, int n, bool all_visible) {
    __syncthreads();  // every warp is done with the previous step's K/V
    load_tile_async<T, S::kN, kD, S::kLd>(Ks, k + (kv_row0 + j0) * p.D, n, D);
    load_tile_async<T, S::kN, kD, S::kLd>(Vs, v + (kv_row0 + j0) * p.D, n, D);
    cp_async_wait_all();
    __syncthreads();
    float s[S::kN / 8][4];
    zero<S::kN>(s);
    warp_gemm_abt<T, S::kN, kD>(s, Qs + warp * 16 * S::kLd, S::kLd, Ks, S::kLd);
    mask_scores<S::kN>(s, p.rule, rows, c.row_hi, j0, n, all_visible, p.scale);
    online_softmax_step<S::kN, kD>(s, m, l, o);
    uint32_t pa[S::kN / 16][4];
    pack_a<T, S::kN>(pa, s);
    warp_gemm_ab<T, kD, S::kN>(o, pa, Vs, S::kLd);
  });
  // A split's rows go to its fp32 partials, merged afterwards (launch_merge_splits).
  const int64_t part_row0 = c.split * p.B * p.Hq * p.Sq + q_row0;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const RowResult res = finish_softmax_row(m[r], quad_sum(l[r]));
    if (rows.i[r] >= c.row_hi) continue;
    if (p.splits > 1) {
      store_row_pairs<float, kD>(p.part_out + (part_row0 + rows.i[r]) * p.D, o, r, res.inv_l, D);
      if (threadIdx.x % 4 == 0) p.part_lse[part_row0 + rows.i[r]] = res.lse;
    } else {
      store_row_pairs<T, kD>(static_cast<T*>(p.out) + (q_row0 + rows.i[r]) * p.D, o, r, res.inv_l, D);
      if (threadIdx.x % 4 == 0) p.lse[q_row0 + rows.i[r]] = res.lse;
    }
  }
}

template <typename T, int kD>
__global__ void __launch_bounds__(Shape<kD, true>::kThreads) bwd_tc_kernel(AttnParams p) {
  using S = Shape<kD, true>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* Qs = reinterpret_cast<T*>(smem_raw);
  T* Gs = Qs + S::kM * S::kLd;  // dO
  T* Ks = Gs + S::kM * S::kLd;
  T* Vs = Ks + S::kN * S::kLd;
  T* Ps = Vs + S::kN * S::kLd;    // [kM][kLdP]: P of the step, all warps' rows
  T* dSs = Ps + S::kM * S::kLdP;  // [kM][kLdP]: dS of the step
  const TileCoords c = tile_coords(p, S::kM);
  if (c.row_lo >= c.row_hi) return;
  const int warp = threadIdx.x / 32, D = static_cast<int>(p.D);
  const T* k = static_cast<const T*>(p.k);
  const T* v = static_cast<const T*>(p.v);
  const int64_t q_row0 = (c.b * p.Hq + c.h) * p.Sq;
  const int64_t kv_row0 = (c.b * p.Hkv + c.hkv) * p.Skv;
  load_tile_async<T, S::kM, kD, S::kLd>(Qs, static_cast<const T*>(p.q) + (q_row0 + c.row_lo) * p.D,
                                         c.row_hi - c.row_lo, D);
  load_tile_async<T, S::kM, kD, S::kLd>(Gs, static_cast<const T*>(p.grad_out) + (q_row0 + c.row_lo) * p.D,
                                         c.row_hi - c.row_lo, D);
  cp_async_wait_all();
  const LaneRows rows = lane_rows(c);
  float lse[2], delta[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {  // rows past the tile: P = 0, so they add nothing
    const bool in = rows.i[r] < c.row_hi;
    lse[r] = in ? p.lse_in[q_row0 + rows.i[r]] : -INFINITY;
    delta[r] = in ? p.delta[q_row0 + rows.i[r]] : 0.0f;
  }
  float dq[kD / 8][4];
  zero<kD>(dq);
  for_each_kv_step<S::kN>(p, c, [&](int64_t j0, int n, bool all_visible) {
    __syncthreads();  // the previous step's readers of K, V, P, dS are done
    load_tile_async<T, S::kN, kD, S::kLd>(Ks, k + (kv_row0 + j0) * p.D, n, D);
    load_tile_async<T, S::kN, kD, S::kLd>(Vs, v + (kv_row0 + j0) * p.D, n, D);
    cp_async_wait_all();
    __syncthreads();
    float s[S::kN / 8][4], dp[S::kN / 8][4];
    zero<S::kN>(s);
    zero<S::kN>(dp);
    warp_gemm_abt<T, S::kN, kD>(s, Qs + warp * 16 * S::kLd, S::kLd, Ks, S::kLd);
    warp_gemm_abt<T, S::kN, kD>(dp, Gs + warp * 16 * S::kLd, S::kLd, Vs, S::kLd);
    mask_scores<S::kN>(s, p.rule, rows, c.row_hi, j0, n, all_visible, p.scale);
#pragma unroll
    for (int nt = 0; nt < S::kN / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[nt][e] = recomputed_prob(s[nt][e], lse[e / 2]);  // P
        dp[nt][e] = s[nt][e] * (dp[nt][e] - delta[e / 2]);  // dS
      }
    store_fragment<T, S::kN>(Ps + warp * 16 * S::kLdP, S::kLdP, s);
    store_fragment<T, S::kN>(dSs + warp * 16 * S::kLdP, S::kLdP, dp);
    uint32_t da[S::kN / 16][4];
    pack_a<T, S::kN>(da, dp);
    warp_gemm_ab<T, kD, S::kN>(dq, da, Ks, S::kLd);
    __syncthreads();  // P and dS of every warp's rows are in shared memory
    float acc[kD / 8][4];
    zero<kD>(acc);
    warp_gemm_atb<T, kD, S::kM>(acc, Ps + warp * 16, S::kLdP, Gs, S::kLd);  // dV rows: this warp's 16 keys
    add_keys_atomic<kD>(p.dv_acc + (kv_row0 + j0) * p.D, acc, warp * 16, n, D, 1.0f);
    zero<kD>(acc);
    warp_gemm_atb<T, kD, S::kM>(acc, dSs + warp * 16, S::kLdP, Qs, S::kLd);  // dK rows
    add_keys_atomic<kD>(p.dk_acc + (kv_row0 + j0) * p.D, acc, warp * 16, n, D, p.scale);
  });
  T* dq_out = static_cast<T*>(p.dq);
#pragma unroll
  for (int r = 0; r < 2; ++r)
    if (rows.i[r] < c.row_hi) store_row_pairs<T, kD>(dq_out + (q_row0 + rows.i[r]) * p.D, dq, r, p.scale, D);
}

// One thread block per (kM query rows of one q-block, KV split, query head, batch): grid.x walks the
// q-blocks' row tiles (ceil(block_q / kM) per q-block) times the splits (1 in the backward); B and
// Hq <= 65535 are checked by the glue.
inline dim3 tc_grid(const AttnParams& p, int kM) {
  const int64_t tiles = (p.block_q + kM - 1) / kM;
  return dim3(static_cast<unsigned>(p.nq * tiles * p.splits), static_cast<unsigned>(p.Hq),
              static_cast<unsigned>(p.B));
}

template <typename T, int kD>
cudaError_t launch_fwd_padded(const AttnParams& p, cudaStream_t stream) {
  using S = Shape<kD, false>;
  constexpr int smem = fwd_smem_bytes<T, kD>();
  const cudaError_t err = cudaFuncSetAttribute(fwd_tc_kernel<T, kD>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (err != cudaSuccess) return err;
  fwd_tc_kernel<T, kD><<<tc_grid(p, S::kM), S::kThreads, smem, stream>>>(p);
  return cudaGetLastError();
}

template <typename T, int kD>
cudaError_t launch_bwd_padded(const AttnParams& p, cudaStream_t stream) {
  using S = Shape<kD, true>;
  constexpr int smem = bwd_smem_bytes<T, kD>();
  const cudaError_t err = cudaFuncSetAttribute(bwd_tc_kernel<T, kD>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (err != cudaSuccess) return err;
  bwd_tc_kernel<T, kD><<<tc_grid(p, S::kM), S::kThreads, smem, stream>>>(p);
  return cudaGetLastError();
}

// The head dim padded to the next instantiated kD (tc_supported() in the launch header says which D).
template <typename T>
cudaError_t launch_fwd(const AttnParams& p, cudaStream_t stream) {
  if (p.D <= 64) return launch_fwd_padded<T, 64>(p, stream);
  if (p.D <= 128) return launch_fwd_padded<T, 128>(p, stream);
  if (p.D <= 256) return launch_fwd_padded<T, 256>(p, stream);
  return cudaErrorInvalidValue;
}

template <typename T>
cudaError_t launch_bwd(const AttnParams& p, cudaStream_t stream) {
  if (p.D <= 64) return launch_bwd_padded<T, 64>(p, stream);
  if (p.D <= 128) return launch_bwd_padded<T, 128>(p, stream);
  return cudaErrorInvalidValue;
}

}  // namespace sparseops::attention::tc
