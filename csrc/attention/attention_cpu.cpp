// block_sparse_attention (forward, backward) and topk_block_mask on CPU.
//
// Forward (FlashAttention-2 on the kept blocks only): one work item per (b, kv head, q-block); its rows
// are the q-block's tokens of every query head of the GQA group (one list of kept KV blocks when the
// mask is shared by the heads, else one per head), so each K/V block is read once per item for all of
// them. Per kept KV block, in chunks of kRowChunk rows: S = (scale q) K^T (gemm micro-kernel), the
// token-level causal/window rule on blocks that it cuts, online softmax (vectorised exp), acc += P V.
// Decode (fewer items than threads): each item's kept list is split across threads and the partial
// results are merged with their log-sum-exp (flash-decoding).
// K/V go through fp32 copies of the blocks the mask uses (K transposed per block), converted once per
// call and shared by every q-block: extra memory up to 2 * B * Hkv * Skv * D floats (fp32 inputs with D a
// multiple of 16 read V in place), plus per thread ~(2 G block_q D + kRowChunk block_k) floats.
//
// Backward (recompute from the saved lse, no Sq x Skv buffer), one pass per (b, kv head, KV-block)
// walking the transposed mask (the q-blocks that keep the block) in transposed products: S^T = K Q^T,
// P^T = exp(S^T - lse), dv += P^T dO, dP^T = V dO^T, dS^T = P^T (dP^T - delta), dk += dS^T q; dk/dv
// summed over the group's query heads. dq: when the (b, kv head) pairs keep the threads evenly busy,
// each is one work item owning its heads' dq rows and adds dS K there (fused, 5 products per tile);
// else dq gets its own pass per (b, kv head, q-block) recomputing S and dP (7 products per tile).
// Extra memory: fp32 copies of q, dO (row-major and block-transposed) and k, v (the same): 4 x (q's + k's
// + v's) element counts in floats, plus the fp32 dq rows (fused) and delta [B, Hq, Sq].
//
// Both hand their work items to the threads one at a time from a shared counter (ItemQueue), heavy
// ones first, not in fixed ranges: ragged per-row block counts and a busy machine stay balanced.
//
// topk_block_mask: mean-pooled q-blocks scored against mean-pooled k-blocks (float64 sums), per
// (b, query head, q-block) the forced blocks (sinks, local) then the top-k others; O(nq nkv D) work.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "attention/attention_checks.h"
#include "attention/attention_microkernels.h"
#include "attention/attention_tile.h"
#include "common/cpu_features.h"
#include "common/dispatch.h"

namespace sparseops::attention {
namespace {

using cpu::round_up_cols;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr int64_t kRowChunk = 48;  // rows per S tile: 48 x 128 floats stay in L1/L2

cpu::MicroKernels pick_kernels() {
#if SPARSEOPS_X86_KERNELS
  if (cpu_use_avx512()) return cpu::microkernels_avx512();
  if (cpu_use_avx2()) return cpu::microkernels_avx2();
#endif
  return cpu::microkernels_portable();
}

// Work items handed out one at a time from a shared counter instead of at::parallel_for's fixed
// contiguous ranges: items differ in cost (ragged per-row block counts; causal masks make late q-blocks
// and early KV blocks the heavy ones), and on a loaded machine a thread that loses its time slice
// leaves its share to the others instead of holding everyone up at the end. heavy_last: hand out the
// items in descending index order (so that the heavy ones go first).
class ItemQueue {
 public:
  ItemQueue(int64_t total, bool heavy_last) : total_(total), heavy_last_(heavy_last) {}
  bool next(int64_t& item) {
    const int64_t n = next_.fetch_add(1, std::memory_order_relaxed);
    item = heavy_last_ ? total_ - 1 - n : n;
    return n < total_;
  }

 private:
  std::atomic<int64_t> next_{0};
  const int64_t total_;
  const bool heavy_last_;
};

// body(queue) once per worker thread (each sets up its scratch once, then pulls items until none is
// left); at most one worker per item.
template <typename Body>
void parallel_pull(int64_t total, bool heavy_last, const Body& body) {
  ItemQueue queue(total, heavy_last);
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), total));
  at::parallel_for(0, workers, 1, [&](int64_t begin, int64_t end) {
    for (int64_t w = begin; w < end; ++w) body(queue);
  });
}

// The validated mask (CPU, contiguous), broadcast over B and H.
struct MaskView {
  const int32_t* num;
  const int32_t* idx;
  int64_t mask_b, mask_h, nq, width;
  int64_t row(int64_t b, int64_t h, int64_t qb) const { return mask_row(b, h, qb, mask_b, mask_h, nq); }
};

// Rows r of a work item's head set: head h0 + r / mq, token i0 + r % mq.
struct HeadSets {
  int64_t count, heads;  // count sets of `heads` heads each
};
HeadSets head_sets(const AttnDims& d) {
  const int64_t G = d.Hq / d.Hkv;
  return d.mask_h == 1 ? HeadSets{1, G} : HeadSets{G, 1};
}

template <typename T>
void convert_rows(const T* src, int64_t rows, int64_t cols, int64_t lds, float* dst, int64_t ldd, float s) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* a = src + r * lds;
    float* b = dst + r * ldd;
    for (int64_t c = 0; c < cols; ++c) b[c] = static_cast<float>(a[c]) * s;
    for (int64_t c = cols; c < ldd; ++c) b[c] = 0.0f;
  }
}

// dst[c][r] = src[r][c] * s for r < rows, zero for rows <= r < ldd: a [cols x ldd] panel.
template <typename T>
void convert_transposed(const T* src, int64_t rows, int64_t cols, int64_t lds, float* dst, int64_t ldd, float s) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* a = src + r * lds;
    for (int64_t c = 0; c < cols; ++c) dst[c * ldd + r] = static_cast<float>(a[c]) * s;
  }
  for (int64_t c = 0; c < cols; ++c)
    for (int64_t r = rows; r < ldd; ++r) dst[c * ldd + r] = 0.0f;
}

// bf16 K block as pairs along D, transposed: dst[p][j] = (k[j][2p], k[j][2p+1]) for j < n, zero for
// n <= j < ldd (D even).
void transpose_pairs(const uint16_t* k, int64_t n, int64_t D, uint32_t* dst, int64_t ldd) {
  const int64_t P = D / 2;
  for (int64_t j = 0; j < n; ++j) {
    const uint16_t* row = k + j * D;
    for (int64_t p = 0; p < P; ++p) dst[p * ldd + j] = row[2 * p] | static_cast<uint32_t>(row[2 * p + 1]) << 16;
  }
  for (int64_t p = 0; p < P; ++p)
    for (int64_t j = n; j < ldd; ++j) dst[p * ldd + j] = 0;
}

// S[r][j] = -inf where the rule hides key j0 + j from query token(r), and for padding columns j >= n.
template <typename TokenOf>
void mask_tile(float* S, int64_t lds, int64_t rows, int64_t n, int64_t nP, bool partial, const TokenRule& rule,
               int64_t j0, TokenOf token_of) {
  for (int64_t r = 0; r < rows; ++r) {
    float* s = S + r * lds;
    if (partial) {
      const int64_t i = token_of(r);
      for (int64_t j = 0; j < n; ++j)
        if (!rule.visible(i, j0 + j)) s[j] = kNegInf;
    }
    for (int64_t j = n; j < nP; ++j) s[j] = kNegInf;
  }
}

// ---- forward ------------------------------------------------------------------------------------

struct FwdScratch {
  std::vector<float> q, acc, m, l, alpha, S, kt, v;
  std::vector<uint16_t> qb;                // bf16 path: the item's q rows (raw bf16)
  std::vector<uint32_t> pb, ktb, vb;       // bf16 path: P as pairs; per-task K^T / V pairs
  FwdScratch(const AttnDims& d, int64_t Dp, bool per_task_kv, bool bf16) {
    const int64_t rows = d.Hq / d.Hkv * d.block_q, bkP = round_up_cols(d.block_k);
    if (bf16) {
      qb.resize(rows * d.D);
      pb.resize(kRowChunk * bkP / 2);
      if (per_task_kv) {
        ktb.resize(d.D / 2 * bkP);
        vb.resize((d.block_k + 1) / 2 * Dp);
      }
    } else if (per_task_kv) {
      kt.resize(d.D * bkP);
      v.resize(d.block_k * Dp);
    }
    if (!bf16) q.resize(rows * d.D);
    acc.resize(rows * Dp);
    m.resize(rows);
    l.resize(rows);
    alpha.resize(rows);
    S.resize(kRowChunk * round_up_cols(d.block_k));
  }
};

template <typename T>
struct Forward {
  AttnDims d;
  MaskView mask;
  TokenRule rule;
  cpu::MicroKernels mk;
  const T* q;
  const T* k;
  const T* v;
  T* out;
  float* lse;
  int64_t Dp, bkP, nsplit;
  const float* kt;  // [(b Hkv + hkv) nkv + kb][D][bkP]
  const float* vf;  // rows ((b Hkv + hkv) Skv + j), ldv apart
  int64_t ldv;
  float* part;      // nsplit > 1: per (item, split): acc [G bq x Dp], m [G bq], l [G bq]
  bool per_task_kv;  // convert each kept K/V block inside the task (kt/vf unused): one q-block, no reuse
  // bf16 inputs with AVX-512 BF16 (vdpbf16ps) and even D: q and K as bf16 pairs, P rounded to bf16 for
  // P V; K^T pairs [blk][D/2][bkP] and V row pairs [blk][ceil(bk/2)][Dp] replace kt / vf.
  bool bf16 = false;
  const uint32_t* ktb = nullptr;
  const uint32_t* vpb = nullptr;

  // The group's heads share one list when the mask has one head, or when their lists are identical.
  HeadSets sets_for(int64_t b, int64_t hkv, int64_t qb) const {
    const int64_t G = d.Hq / d.Hkv;
    if (d.mask_h == 1 || G == 1) return head_sets(d);
    const int64_t r0 = mask.row(b, hkv * G, qb);
    for (int64_t g = 1; g < G; ++g) {
      const int64_t r = mask.row(b, hkv * G + g, qb);
      if (mask.num[r] != mask.num[r0] ||
          !std::equal(mask.idx + r * mask.width, mask.idx + r * mask.width + mask.num[r], mask.idx + r0 * mask.width))
        return HeadSets{G, 1};
    }
    return HeadSets{1, G};
  }

  int64_t part_stride() const { return (d.Hq / d.Hkv * d.block_q) * (Dp + 2); }

  void run(int64_t item, int64_t split, FwdScratch& s) const {
    const int64_t qb = item % d.nq, bh = item / d.nq, hkv = bh % d.Hkv, b = bh / d.Hkv;
    const int64_t G = d.Hq / d.Hkv, i0 = qb * d.block_q, mq = std::min(d.block_q, d.Sq - i0);
    const HeadSets sets = sets_for(b, hkv, qb);
    for (int64_t set = 0; set < sets.count; ++set) {
      const int64_t h0 = hkv * G + set * sets.heads, M = sets.heads * mq;
      const int64_t mrow = mask.row(b, h0, qb), cnt = mask.num[mrow];
      const int32_t* list = mask.idx + mrow * mask.width;
      const int64_t c0 = cnt * split / nsplit, c1 = cnt * (split + 1) / nsplit;
      for (int64_t hh = 0; hh < sets.heads; ++hh) {
        const T* src = q + ((b * d.Hq + h0 + hh) * d.Sq + i0) * d.D;
        if (bf16)
          std::memcpy(s.qb.data() + hh * mq * d.D, src, sizeof(T) * mq * d.D);
        else
          convert_rows(src, mq, d.D, d.D, s.q.data() + hh * mq * d.D, d.D, d.scale);
      }
      const uint32_t* qpairs = reinterpret_cast<const uint32_t*>(s.qb.data());
      const int64_t half_d = d.D / 2, half_bk = (d.block_k + 1) / 2;
      std::fill_n(s.acc.data(), M * Dp, 0.0f);
      std::fill_n(s.m.data(), M, kNegInf);
      std::fill_n(s.l.data(), M, 0.0f);
      for (int64_t c = c0; c < c1; ++c) {
        const int64_t kb = list[c], j0 = kb * d.block_k, n = std::min(d.block_k, d.Skv - j0);
        const int cls = rule.block(i0, i0 + mq, j0, j0 + n);
        if (cls == 0) continue;
        const int64_t nP = round_up_cols(n);
        const float* KT = nullptr;
        const float* V = nullptr;
        const uint32_t* KTb = nullptr;
        const uint32_t* Vb = nullptr;
        int64_t ld_v = ldv;
        if (bf16) {
          const int64_t blk = bh * d.nkv + kb;
          if (per_task_kv) {
            const uint16_t* kr = reinterpret_cast<const uint16_t*>(k + (bh * d.Skv + j0) * d.D);
            const uint16_t* vr = reinterpret_cast<const uint16_t*>(v + (bh * d.Skv + j0) * d.D);
            transpose_pairs(kr, n, d.D, s.ktb.data(), nP);
            mk.pair_rows_bf16(vr, d.D, n, d.D, s.vb.data(), Dp, Dp);
            KTb = s.ktb.data();
            Vb = s.vb.data();
          } else {
            KTb = ktb + blk * half_d * bkP;
            Vb = vpb + blk * half_bk * Dp;
          }
        } else if (per_task_kv) {
          convert_transposed(k + (bh * d.Skv + j0) * d.D, n, d.D, d.D, s.kt.data(), nP, 1.0f);
          convert_rows(v + (bh * d.Skv + j0) * d.D, n, d.D, d.D, s.v.data(), Dp, 1.0f);
          KT = s.kt.data();
          V = s.v.data();
          ld_v = Dp;
        } else {
          KT = kt + (bh * d.nkv + kb) * d.D * bkP;
          V = vf + (bh * d.Skv + j0) * ldv;
        }
        const int64_t ld_kt = per_task_kv ? nP : bkP;
        for (int64_t r0 = 0; r0 < M; r0 += kRowChunk) {
          const int64_t rc = std::min(kRowChunk, M - r0);
          float* S = s.S.data();
          if (bf16)
            mk.gemm_bf16(rc, nP, half_d, qpairs + r0 * half_d, half_d, KTb, ld_kt, S, nP, false, d.scale);
          else
            mk.gemm(rc, nP, d.D, s.q.data() + r0 * d.D, d.D, KT, ld_kt, S, nP, false);
          if (cls == 1 || n < nP)
            mask_tile(S, nP, rc, n, nP, cls == 1, rule, j0, [&](int64_t r) { return i0 + (r0 + r) % mq; });
          float* alpha = s.alpha.data() + r0;
          mk.softmax_step(S, nP, rc, nP, s.m.data() + r0, s.l.data() + r0, alpha);
          for (int64_t r = 0; r < rc; ++r) {
            if (alpha[r] == 1.0f) continue;
            float* a = s.acc.data() + (r0 + r) * Dp;
            for (int64_t x = 0; x < Dp; ++x) a[x] *= alpha[r];
          }
          if (bf16) {
            mk.pack_bf16(S, nP, rc, nP, s.pb.data(), nP / 2);
            mk.gemm_bf16(rc, Dp, (n + 1) / 2, s.pb.data(), nP / 2, Vb, Dp, s.acc.data() + r0 * Dp, Dp, true, 1.0f);
          } else {
            mk.gemm(rc, Dp, n, S, nP, V, ld_v, s.acc.data() + r0 * Dp, Dp, true);
          }
        }
      }
      const int64_t row0 = set * sets.heads * mq;  // this set's first row among the item's G mq rows
      if (nsplit == 1) {
        for (int64_t r = 0; r < M; ++r) {
          const int64_t h = h0 + r / mq, i = i0 + r % mq;
          finish_row(s.acc.data() + r * Dp, s.m[r], s.l[r], out + ((b * d.Hq + h) * d.Sq + i) * d.D,
                     lse + (b * d.Hq + h) * d.Sq + i);
        }
      } else {
        const int64_t rows = G * d.block_q;
        float* p = part + (item * nsplit + split) * part_stride();
        std::copy_n(s.acc.data(), M * Dp, p + row0 * Dp);
        std::copy_n(s.m.data(), M, p + rows * Dp + row0);
        std::copy_n(s.l.data(), M, p + rows * Dp + rows + row0);
      }
    }
  }

  void finish_row(const float* acc, float m, float l, T* o, float* lse_out) const {
    const RowResult res = finish_softmax_row(m, l);  // l == 0 (attended to nothing): zeros, lse -inf
    for (int64_t x = 0; x < d.D; ++x) o[x] = res.inv_l == 0.0f ? T(0) : static_cast<T>(acc[x] * res.inv_l);
    *lse_out = res.lse;
  }

  // nsplit > 1: combine the splits of one item with their (m, l).
  void merge(int64_t item, std::vector<float>& acc) const {
    const int64_t qb = item % d.nq, bh = item / d.nq, hkv = bh % d.Hkv, b = bh / d.Hkv;
    const int64_t G = d.Hq / d.Hkv, i0 = qb * d.block_q, mq = std::min(d.block_q, d.Sq - i0);
    const int64_t rows = G * d.block_q;
    const float* p0 = part + item * nsplit * part_stride();
    acc.resize(Dp);
    for (int64_t r = 0; r < G * mq; ++r) {
      float mmax = kNegInf;
      for (int64_t sp = 0; sp < nsplit; ++sp) {
        const float m = p0[sp * part_stride() + rows * Dp + r];
        mmax = nan_max(mmax, m);
        if (std::isnan(mmax)) break;
      }
      float l = 0.0f;
      std::fill(acc.begin(), acc.end(), 0.0f);
      if (mmax != kNegInf) {
        for (int64_t sp = 0; sp < nsplit; ++sp) {
          const float* p = p0 + sp * part_stride();
          const float ls = p[rows * Dp + rows + r];
          if (ls == 0.0f) continue;
          const float w = softmax_rescale(p[rows * Dp + r], mmax);  // this split's weight
          l += ls * w;
          for (int64_t x = 0; x < d.D; ++x) acc[x] += p[r * Dp + x] * w;
        }
      }
      const int64_t h = hkv * G + r / mq, i = i0 + r % mq;
      finish_row(acc.data(), mmax, l, out + ((b * d.Hq + h) * d.Sq + i) * d.D, lse + (b * d.Hq + h) * d.Sq + i);
    }
  }
};

// Which (b, kv head, kv-block) the mask uses anywhere (so that only those are converted).
std::vector<uint8_t> used_kv_blocks(const AttnDims& d, const MaskView& mask) {
  std::vector<uint8_t> used(static_cast<size_t>(d.B * d.Hkv * d.nkv), 0);
  const int64_t G = d.Hq / d.Hkv;
  for (int64_t b = 0; b < d.B; ++b)
    for (int64_t h = 0; h < d.Hq; h += (d.mask_h == 1 ? G : 1))
      for (int64_t qb = 0; qb < d.nq; ++qb) {
        const int64_t r = mask.row(b, h, qb);
        for (int64_t c = 0; c < mask.num[r]; ++c) used[(b * d.Hkv + h / G) * d.nkv + mask.idx[r * mask.width + c]] = 1;
      }
  return used;
}

std::tuple<at::Tensor, at::Tensor> block_sparse_attention_cpu(const at::Tensor& q, const at::Tensor& k,
                                                              const at::Tensor& v, const at::Tensor& kv_num_blocks,
                                                              const at::Tensor& kv_indices, int64_t block_q,
                                                              int64_t block_k, bool causal, int64_t window_left,
                                                              int64_t window_right, std::optional<double> scale) {
  constexpr const char* op = "block_sparse_attention";
  const AttnDims d = check_block_sparse_attention_inputs(op, q, k, v, kv_num_blocks, kv_indices, block_q, block_k,
                                                         causal, window_left, window_right, scale,
                                                         /*check_mask_contents=*/true);
  check_device_type(op, "q", q, at::kCPU);
  const at::Tensor qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous();
  const at::Tensor num = kv_num_blocks.contiguous(), idx = kv_indices.contiguous();
  at::Tensor out = at::empty(qc.sizes(), qc.options());
  at::Tensor lse = at::empty({d.B, d.Hq, d.Sq}, qc.options().dtype(at::kFloat));
  const MaskView mask{num.const_data_ptr<int32_t>(), idx.const_data_ptr<int32_t>(), d.mask_b, d.mask_h, d.nq,
                      d.width};
  const int64_t Dp = round_up_cols(d.D), bkP = round_up_cols(d.block_k);
  const int64_t items = d.B * d.Hkv * d.nq, threads = at::get_num_threads();
  const int64_t nsplit = items >= threads ? 1 : std::max<int64_t>(1, std::min(ceil_div(threads, items), d.width));
  // One q-block (decode): every K/V block is used by one item only, so it is converted inside that
  // item, where it stays in cache, instead of into the shared fp32 copy.
  const bool per_task_kv = d.nq == 1;
  const std::vector<uint8_t> used = per_task_kv ? std::vector<uint8_t>() : used_kv_blocks(d, mask);
  SPARSEOPS_DISPATCH_FLOAT_HALF_BF16(qc.scalar_type(), op, [&] {
    const scalar_t* kp = kc.const_data_ptr<scalar_t>();
    const scalar_t* vp = vc.const_data_ptr<scalar_t>();
    const bool v_direct = std::is_same_v<scalar_t, float> && d.D == Dp;
    const int64_t ldv = Dp;
    const auto f32 = qc.options().dtype(at::kFloat);
    const cpu::MicroKernels mk = pick_kernels();
    const bool bf16 = std::is_same_v<scalar_t, c10::BFloat16> && mk.gemm_bf16 != nullptr && d.D % 2 == 0;
    const int64_t half_bk = (d.block_k + 1) / 2, blocks = d.B * d.Hkv * d.nkv;
    at::Tensor ktb, vpb;
    if (bf16 && !per_task_kv) {
      ktb = at::empty({blocks * d.D / 2 * bkP}, qc.options().dtype(at::kInt));
      vpb = at::empty({blocks * half_bk * Dp}, qc.options().dtype(at::kInt));
      uint32_t* ktbp = reinterpret_cast<uint32_t*>(ktb.mutable_data_ptr<int32_t>());
      uint32_t* vpbp = reinterpret_cast<uint32_t*>(vpb.mutable_data_ptr<int32_t>());
      at::parallel_for(0, blocks, 4, [&](int64_t begin, int64_t end) {
        for (int64_t blk = begin; blk < end; ++blk) {
          if (!used[blk]) continue;
          const int64_t kb = blk % d.nkv, bh = blk / d.nkv, j0 = kb * d.block_k, n = std::min(d.block_k, d.Skv - j0);
          const uint16_t* kr = reinterpret_cast<const uint16_t*>(kp + (bh * d.Skv + j0) * d.D);
          const uint16_t* vr = reinterpret_cast<const uint16_t*>(vp + (bh * d.Skv + j0) * d.D);
          transpose_pairs(kr, n, d.D, ktbp + blk * d.D / 2 * bkP, bkP);
          mk.pair_rows_bf16(vr, d.D, n, d.D, vpbp + blk * half_bk * Dp, Dp, Dp);
        }
      });
    }
    const bool fp32_copies = !per_task_kv && !bf16;
    at::Tensor kt = fp32_copies ? at::empty({blocks * d.D * bkP}, f32) : at::Tensor();
    at::Tensor vf = (fp32_copies && !v_direct) ? at::empty({d.B * d.Hkv * d.Skv * Dp}, f32) : at::Tensor();
    float* ktp = kt.defined() ? kt.mutable_data_ptr<float>() : nullptr;
    float* vfp = vf.defined() ? vf.mutable_data_ptr<float>() : nullptr;
    if (fp32_copies) at::parallel_for(0, blocks, 4, [&](int64_t begin, int64_t end) {
      for (int64_t blk = begin; blk < end; ++blk) {
        if (!used[blk]) continue;
        const int64_t kb = blk % d.nkv, bh = blk / d.nkv, j0 = kb * d.block_k, n = std::min(d.block_k, d.Skv - j0);
        convert_transposed(kp + (bh * d.Skv + j0) * d.D, n, d.D, d.D, ktp + blk * d.D * bkP, bkP, 1.0f);
        if (!v_direct) convert_rows(vp + (bh * d.Skv + j0) * d.D, n, d.D, d.D, vfp + (bh * d.Skv + j0) * Dp, Dp, 1.0f);
      }
    });
    at::Tensor part;
    if (nsplit > 1)
      part = at::empty({items * nsplit * (d.Hq / d.Hkv * d.block_q) * (Dp + 2)}, qc.options().dtype(at::kFloat));
    Forward<scalar_t> f{d, mask, token_rule(d), mk, qc.const_data_ptr<scalar_t>(), kp, vp,
                        out.mutable_data_ptr<scalar_t>(), lse.mutable_data_ptr<float>(), Dp, bkP, nsplit, ktp,
                        v_direct ? reinterpret_cast<const float*>(vp) : vfp, v_direct ? d.D : ldv,
                        nsplit > 1 ? part.mutable_data_ptr<float>() : nullptr, per_task_kv};
    f.bf16 = bf16;
    if (ktb.defined()) {
      f.ktb = reinterpret_cast<const uint32_t*>(ktb.const_data_ptr<int32_t>());
      f.vpb = reinterpret_cast<const uint32_t*>(vpb.const_data_ptr<int32_t>());
    }
    parallel_pull(items * nsplit, /*heavy_last=*/true, [&](ItemQueue& queue) {
      FwdScratch s(d, Dp, per_task_kv, bf16);
      for (int64_t t; queue.next(t);) f.run(t / nsplit, t % nsplit, s);
    });
    if (nsplit > 1) {
      at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
        std::vector<float> acc;
        for (int64_t t = begin; t < end; ++t) f.merge(t, acc);
      });
    }
  });
  return {out, lse};
}

// ---- backward -----------------------------------------------------------------------------------

// For each (mask b, mask h, kv-block): the q-blocks whose kept list holds it (ascending).
struct TransposedMask {
  std::vector<int64_t> start;  // size mask_b * mask_h * nkv + 1
  std::vector<int32_t> qblocks;
};

TransposedMask transpose_mask(const AttnDims& d, const MaskView& mask) {
  TransposedMask t;
  const int64_t rows = d.mask_b * d.mask_h;
  t.start.assign(rows * d.nkv + 1, 0);
  for (int64_t mr = 0; mr < rows; ++mr)
    for (int64_t qb = 0; qb < d.nq; ++qb) {
      const int64_t r = mr * d.nq + qb;
      for (int64_t c = 0; c < mask.num[r]; ++c) ++t.start[mr * d.nkv + mask.idx[r * mask.width + c] + 1];
    }
  std::partial_sum(t.start.begin(), t.start.end(), t.start.begin());
  t.qblocks.resize(t.start.back());
  std::vector<int64_t> fill(t.start.begin(), t.start.end() - 1);
  for (int64_t mr = 0; mr < rows; ++mr)
    for (int64_t qb = 0; qb < d.nq; ++qb) {
      const int64_t r = mr * d.nq + qb;
      for (int64_t c = 0; c < mask.num[r]; ++c)
        t.qblocks[fill[mr * d.nkv + mask.idx[r * mask.width + c]]++] = static_cast<int32_t>(qb);
    }
  return t;
}

// dS = P * (dP - delta) over rows x cols, delta per row (row_delta) or per column (col_delta).
void ds_tile(const float* P, float* dP, int64_t ld, int64_t rows, int64_t cols, const float* row_delta,
             const float* col_delta) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* p = P + r * ld;
    float* g = dP + r * ld;
    if (row_delta) {
      const float dl = row_delta[r];
      for (int64_t j = 0; j < cols; ++j) g[j] = p[j] * (g[j] - dl);
    } else {
      for (int64_t j = 0; j < cols; ++j) g[j] = p[j] * (g[j] - col_delta[j]);
    }
  }
}

// fp32 copies for the backward, block t (of nb per head) of a [heads, S, D] tensor: its rows into rows
// ([S x Dp] per head, scaled by s) and transposed into blocks ([D x bP] per block).
template <typename T>
void convert_both(const T* src, int64_t S, int64_t D, int64_t block, float s, float* rows, float* blocks, int64_t t) {
  const int64_t Dp = round_up_cols(D), bP = round_up_cols(block), nb = ceil_div(S, block);
  const int64_t h = t / nb, j0 = (t % nb) * block, n = std::min(block, S - j0);
  const T* a = src + (h * S + j0) * D;
  convert_rows(a, n, D, D, rows + (h * S + j0) * Dp, Dp, s);
  convert_transposed(a, n, D, D, blocks + t * D * bP, bP, s);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> block_sparse_attention_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, const at::Tensor& kv_num_blocks, const at::Tensor& kv_indices, int64_t block_q,
    int64_t block_k, bool causal, int64_t window_left, int64_t window_right, std::optional<double> scale,
    const std::optional<at::Tensor>& grad_lse) {
  constexpr const char* op = "block_sparse_attention_backward";
  const AttnDims d = check_block_sparse_attention_inputs(op, q, k, v, kv_num_blocks, kv_indices, block_q, block_k,
                                                         causal, window_left, window_right, scale,
                                                         /*check_mask_contents=*/true);
  check_backward_extra(op, d, q, grad_out, out, lse, grad_lse);
  check_device_type(op, "q", q, at::kCPU);
  const at::Tensor qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous(), gc = grad_out.contiguous();
  const at::Tensor num = kv_num_blocks.contiguous(), idx = kv_indices.contiguous();
  const at::Tensor lse_c = lse.contiguous();
  const at::Tensor oc = out.contiguous();
  const at::Tensor glse = grad_lse.has_value() ? grad_lse->contiguous() : at::Tensor();
  // delta = rowsum(dO * O) - grad_lse (d lse / d S = P: the lse gradient folds into delta).
  at::Tensor delta = at::empty({d.B, d.Hq, d.Sq}, qc.options().dtype(at::kFloat));
  at::Tensor dq = at::empty(qc.sizes(), qc.options()), dk = at::empty(kc.sizes(), kc.options()),
             dv = at::empty(vc.sizes(), vc.options());
  const MaskView mask{num.const_data_ptr<int32_t>(), idx.const_data_ptr<int32_t>(), d.mask_b, d.mask_h, d.nq,
                      d.width};
  const TokenRule rule = token_rule(d);
  const cpu::MicroKernels mk = pick_kernels();
  const int64_t Dp = round_up_cols(d.D), bqP = round_up_cols(d.block_q), bkP = round_up_cols(d.block_k);
  const int64_t G = d.Hq / d.Hkv;
  const auto f32 = qc.options().dtype(at::kFloat);
  at::Tensor q_rows = at::empty({d.B * d.Hq * d.Sq * Dp}, f32), q_blk = at::empty({d.B * d.Hq * d.nq * d.D * bqP}, f32);
  at::Tensor g_rows = at::empty_like(q_rows), g_blk = at::empty_like(q_blk);
  at::Tensor k_rows = at::empty({d.B * d.Hkv * d.Skv * Dp}, f32), k_blk = at::empty({d.B * d.Hkv * d.nkv * d.D * bkP}, f32);
  at::Tensor v_rows = at::empty_like(k_rows), v_blk = at::empty_like(k_blk);
  const float* QR = q_rows.const_data_ptr<float>();
  const float* QB = q_blk.const_data_ptr<float>();
  const float* GR = g_rows.const_data_ptr<float>();
  const float* GB = g_blk.const_data_ptr<float>();
  const float* KR = k_rows.const_data_ptr<float>();
  const float* KB = k_blk.const_data_ptr<float>();
  const float* VR = v_rows.const_data_ptr<float>();
  const float* VB = v_blk.const_data_ptr<float>();
  const float* L = lse_c.const_data_ptr<float>();
  const float* DL = delta.const_data_ptr<float>();
  const TransposedMask tmask = transpose_mask(d, mask);
  // Fused mode (one pass over KV blocks, dq accumulated per (b, kv head)) when those items keep the
  // threads evenly busy; else dq in its own pass over q-blocks.
  const int64_t threads = at::get_num_threads(), groups = d.B * d.Hkv;
  const bool fused = groups % threads == 0 || groups >= 4 * threads;
  at::Tensor dq_acc = fused ? at::zeros({d.B * d.Hq * d.Sq * Dp}, f32) : at::Tensor();
  SPARSEOPS_DISPATCH_FLOAT_HALF_BF16(qc.scalar_type(), op, [&] {
    // One parallel region for every conversion and delta: q-side blocks first, then k/v-side ones.
    const int64_t q_tasks = d.B * d.Hq * d.nq, kv_tasks = d.B * d.Hkv * d.nkv;
    const scalar_t* op_ = oc.const_data_ptr<scalar_t>();
    const scalar_t* gp = gc.const_data_ptr<scalar_t>();
    const float* glp = glse.defined() ? glse.const_data_ptr<float>() : nullptr;
    float* dlp = delta.mutable_data_ptr<float>();
    at::parallel_for(0, q_tasks + kv_tasks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        if (t < q_tasks) {
          convert_both(qc.const_data_ptr<scalar_t>(), d.Sq, d.D, d.block_q, d.scale, q_rows.mutable_data_ptr<float>(),
                       q_blk.mutable_data_ptr<float>(), t);
          convert_both(gp, d.Sq, d.D, d.block_q, 1.0f, g_rows.mutable_data_ptr<float>(),
                       g_blk.mutable_data_ptr<float>(), t);
          const int64_t h = t / d.nq, i0 = (t % d.nq) * d.block_q, mq = std::min(d.block_q, d.Sq - i0);
          for (int64_t i = h * d.Sq + i0; i < h * d.Sq + i0 + mq; ++i) {
            const float* g = g_rows.const_data_ptr<float>() + i * Dp;
            float acc = 0.0f;
            for (int64_t x = 0; x < d.D; ++x) acc += g[x] * static_cast<float>(op_[i * d.D + x]);
            dlp[i] = glp ? acc - glp[i] : acc;
          }
        } else {
          const int64_t u = t - q_tasks;
          convert_both(kc.const_data_ptr<scalar_t>(), d.Skv, d.D, d.block_k, 1.0f, k_rows.mutable_data_ptr<float>(),
                       k_blk.mutable_data_ptr<float>(), u);
          convert_both(vc.const_data_ptr<scalar_t>(), d.Skv, d.D, d.block_k, 1.0f, v_rows.mutable_data_ptr<float>(),
                       v_blk.mutable_data_ptr<float>(), u);
        }
      }
    });
    scalar_t* dqp = dq.mutable_data_ptr<scalar_t>();
    scalar_t* dkp = dk.mutable_data_ptr<scalar_t>();
    scalar_t* dvp = dv.mutable_data_ptr<scalar_t>();
    const HeadSets sets = head_sets(d);

    // Pass 1 (two-pass mode): dq per (b, kv head, q-block).
    if (!fused) parallel_pull(d.B * d.Hkv * d.nq, /*heavy_last=*/true, [&](ItemQueue& queue) {
      std::vector<float> acc(d.block_q * Dp), S(kRowChunk * bkP), dP(kRowChunk * bkP);
      for (int64_t item; queue.next(item);) {
        const int64_t qb = item % d.nq, bh = item / d.nq, hkv = bh % d.Hkv, b = bh / d.Hkv;
        const int64_t i0 = qb * d.block_q, mq = std::min(d.block_q, d.Sq - i0);
        for (int64_t set = 0; set < sets.count; ++set) {
          const int64_t h0 = hkv * G + set * sets.heads, mrow = mask.row(b, h0, qb), cnt = mask.num[mrow];
          const int32_t* list = mask.idx + mrow * mask.width;
          for (int64_t hh = 0; hh < sets.heads; ++hh) {
            const int64_t bhq = b * d.Hq + h0 + hh, row0 = bhq * d.Sq + i0;
            std::fill_n(acc.data(), mq * Dp, 0.0f);
            for (int64_t c = 0; c < cnt; ++c) {
              const int64_t kb = list[c], j0 = kb * d.block_k, n = std::min(d.block_k, d.Skv - j0);
              const int cls = rule.block(i0, i0 + mq, j0, j0 + n);
              if (cls == 0) continue;
              const int64_t nP = round_up_cols(n), blk = bh * d.nkv + kb;
              for (int64_t r0 = 0; r0 < mq; r0 += kRowChunk) {
                const int64_t rc = std::min(kRowChunk, mq - r0);
                mk.gemm(rc, nP, d.D, QR + (row0 + r0) * Dp, Dp, KB + blk * d.D * bkP, bkP, S.data(), nP, false);
                if (cls == 1 || n < nP)
                  mask_tile(S.data(), nP, rc, n, nP, cls == 1, rule, j0, [&](int64_t r) { return i0 + r0 + r; });
                mk.exp_shift(S.data(), nP, rc, nP, L + row0 + r0, nullptr);
                mk.gemm(rc, nP, d.D, GR + (row0 + r0) * Dp, Dp, VB + blk * d.D * bkP, bkP, dP.data(), nP, false);
                ds_tile(S.data(), dP.data(), nP, rc, n, DL + row0 + r0, nullptr);
                mk.gemm(rc, Dp, n, dP.data(), nP, KR + (bh * d.Skv + j0) * Dp, Dp, acc.data() + r0 * Dp, Dp, true);
              }
            }
            for (int64_t r = 0; r < mq; ++r)
              for (int64_t x = 0; x < d.D; ++x)
                dqp[(row0 + r) * d.D + x] = static_cast<scalar_t>(acc[r * Dp + x] * d.scale);
          }
        }
      }
    });

    // dk, dv of one KV block, summed over the group's query heads, walking the q-blocks that keep it.
    // With dq_acc (fused mode) it also adds this block's dS^T K to the fp32 dq rows [B Hq Sq x Dp].
    struct KvScratch {
      std::vector<float> dk_acc, dv_acc, S, dP, dsT, lse_pad, delta_pad;
    };
    auto kv_block = [&](int64_t blk, KvScratch& w, float* dq_acc) {
      const int64_t kb = blk % d.nkv, bh = blk / d.nkv, hkv = bh % d.Hkv, b = bh / d.Hkv;
      const int64_t j0 = kb * d.block_k, n = std::min(d.block_k, d.Skv - j0), krow0 = bh * d.Skv + j0;
      std::fill_n(w.dk_acc.data(), n * Dp, 0.0f);
      std::fill_n(w.dv_acc.data(), n * Dp, 0.0f);
      for (int64_t g = 0; g < G; ++g) {
        const int64_t h = hkv * G + g, bhq = b * d.Hq + h;
        const int64_t mr = (d.mask_b == 1 ? 0 : b) * d.mask_h + (d.mask_h == 1 ? 0 : h);
        for (int64_t t = tmask.start[mr * d.nkv + kb]; t < tmask.start[mr * d.nkv + kb + 1]; ++t) {
          const int64_t qb = tmask.qblocks[t], i0 = qb * d.block_q, mq = std::min(d.block_q, d.Sq - i0);
          const int cls = rule.block(i0, i0 + mq, j0, j0 + n);
          if (cls == 0) continue;
          const int64_t mP = round_up_cols(mq), row0 = bhq * d.Sq + i0, qblk = bhq * d.nq + qb;
          std::copy_n(L + row0, mq, w.lse_pad.data());
          std::fill(w.lse_pad.begin() + mq, w.lse_pad.begin() + mP, 0.0f);
          std::copy_n(DL + row0, mq, w.delta_pad.data());
          std::fill(w.delta_pad.begin() + mq, w.delta_pad.begin() + mP, 0.0f);
          float* S = w.S.data();
          float* dP = w.dP.data();
          mk.gemm(n, mP, d.D, KR + krow0 * Dp, Dp, QB + qblk * d.D * bqP, bqP, S, mP, false);
          if (cls == 1 || mq < mP) {
            for (int64_t j = 0; j < n; ++j) {
              float* s = S + j * mP;
              if (cls == 1)
                for (int64_t r = 0; r < mq; ++r)
                  if (!rule.visible(i0 + r, j0 + j)) s[r] = kNegInf;
              for (int64_t r = mq; r < mP; ++r) s[r] = kNegInf;
            }
          }
          mk.exp_shift(S, mP, n, mP, nullptr, w.lse_pad.data());
          mk.gemm(n, Dp, mq, S, mP, GR + row0 * Dp, Dp, w.dv_acc.data(), Dp, true);
          mk.gemm(n, mP, d.D, VR + krow0 * Dp, Dp, GB + qblk * d.D * bqP, bqP, dP, mP, false);
          ds_tile(S, dP, mP, n, mq, nullptr, w.delta_pad.data());
          mk.gemm(n, Dp, mq, dP, mP, QR + row0 * Dp, Dp, w.dk_acc.data(), Dp, true);
          if (dq_acc) {
            for (int64_t r = 0; r < mq; ++r)
              for (int64_t j = 0; j < n; ++j) w.dsT[r * n + j] = dP[j * mP + r];
            mk.gemm(mq, Dp, n, w.dsT.data(), n, KR + krow0 * Dp, Dp, dq_acc + row0 * Dp, Dp, true);
          }
        }
      }
      for (int64_t j = 0; j < n; ++j)
        for (int64_t x = 0; x < d.D; ++x) {
          dkp[(krow0 + j) * d.D + x] = static_cast<scalar_t>(w.dk_acc[j * Dp + x]);
          dvp[(krow0 + j) * d.D + x] = static_cast<scalar_t>(w.dv_acc[j * Dp + x]);
        }
    };
    auto kv_scratch = [&] {
      return KvScratch{std::vector<float>(d.block_k * Dp), std::vector<float>(d.block_k * Dp),
                       std::vector<float>(d.block_k * bqP), std::vector<float>(d.block_k * bqP),
                       std::vector<float>(d.block_q * d.block_k), std::vector<float>(bqP), std::vector<float>(bqP)};
    };

    if (fused) {
      // One item per (b, kv head): it owns its heads' dq rows, so dS^T K is added without races and
      // the dq pass (S, dP recomputed once more) is skipped.
      float* dqa = dq_acc.mutable_data_ptr<float>();
      parallel_pull(d.B * d.Hkv, /*heavy_last=*/false, [&](ItemQueue& queue) {
        KvScratch w = kv_scratch();
        for (int64_t bh; queue.next(bh);) {
          for (int64_t kb = 0; kb < d.nkv; ++kb) kv_block(bh * d.nkv + kb, w, dqa);
          const int64_t b = bh / d.Hkv, hkv = bh % d.Hkv;
          for (int64_t r = (b * d.Hq + hkv * G) * d.Sq; r < (b * d.Hq + hkv * G + G) * d.Sq; ++r)
            for (int64_t x = 0; x < d.D; ++x) dqp[r * d.D + x] = static_cast<scalar_t>(dqa[r * Dp + x] * d.scale);
        }
      });
    } else {
      // Pass 2: dk, dv per (b, kv head, kv-block).
      parallel_pull(d.B * d.Hkv * d.nkv, /*heavy_last=*/false, [&](ItemQueue& queue) {
        KvScratch w = kv_scratch();
        for (int64_t blk; queue.next(blk);) kv_block(blk, w, nullptr);
      });
    }
  });
  return {dq, dk, dv};
}

// ---- topk_block_mask ----------------------------------------------------------------------------

// Block means in float64: src [heads, S, D] -> pooled [heads, nb, D].
template <typename T>
std::vector<double> pool_blocks(const T* src, int64_t heads, int64_t S, int64_t D, int64_t block) {
  const int64_t nb = ceil_div(S, block);
  std::vector<double> pooled(static_cast<size_t>(heads * nb * D), 0.0);
  at::parallel_for(0, heads * nb, 16, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t h = t / nb, j0 = (t % nb) * block, n = std::min(block, S - j0);
      double* p = pooled.data() + t * D;
      for (int64_t j = 0; j < n; ++j)
        for (int64_t x = 0; x < D; ++x) p[x] += static_cast<double>(src[(h * S + j0 + j) * D + x]);
      for (int64_t x = 0; x < D; ++x) p[x] /= static_cast<double>(n);
    }
  });
  return pooled;
}

std::tuple<at::Tensor, at::Tensor> topk_block_mask_cpu(const at::Tensor& q, const at::Tensor& k, int64_t block_q,
                                                       int64_t block_k, int64_t topk, bool causal,
                                                       int64_t sink_blocks, int64_t local_blocks) {
  constexpr const char* op = "topk_block_mask";
  AttnDims d = check_topk_block_mask_inputs(op, q, k, block_q, block_k, topk, sink_blocks, local_blocks);
  check_device_type(op, "q", q, at::kCPU);
  d.causal = causal;
  const at::Tensor qc = q.contiguous(), kc = k.contiguous();
  at::Tensor num = at::empty({d.B, d.Hq, d.nq}, qc.options().dtype(at::kInt));
  at::Tensor idx = at::zeros({d.B, d.Hq, d.nq, d.nkv}, qc.options().dtype(at::kInt));
  std::vector<double> pq, pk;
  SPARSEOPS_DISPATCH_FLOAT_HALF_BF16(qc.scalar_type(), op, [&] {
    pq = pool_blocks(qc.const_data_ptr<scalar_t>(), d.B * d.Hq, d.Sq, d.D, d.block_q);
    pk = pool_blocks(kc.const_data_ptr<scalar_t>(), d.B * d.Hkv, d.Skv, d.D, d.block_k);
  });
  const TokenRule rule = token_rule(d);
  const int64_t G = d.Hq / d.Hkv;
  int32_t* np = num.mutable_data_ptr<int32_t>();
  int32_t* ip = idx.mutable_data_ptr<int32_t>();
  at::parallel_for(0, d.B * d.Hq * d.nq, 4, [&](int64_t begin, int64_t end) {
    std::vector<double> score(d.nkv);
    std::vector<uint8_t> state(d.nkv);  // 0 hidden, 1 candidate, 2 forced
    std::vector<int32_t> cand;
    for (int64_t row = begin; row < end; ++row) {
      const int64_t qb = row % d.nq, bhq = row / d.nq, b = bhq / d.Hq, h = bhq % d.Hq;
      const int64_t i0 = qb * d.block_q, i1 = std::min(i0 + d.block_q, d.Sq);
      const double* pqr = pq.data() + row * d.D;
      const double* pkh = pk.data() + (b * d.Hkv + h / G) * d.nkv * d.D;
      const int64_t diag = std::clamp<int64_t>((i1 - 1 + rule.offset) / d.block_k, 0, d.nkv - 1);
      cand.clear();
      for (int64_t kb = 0; kb < d.nkv; ++kb) {
        const int64_t j0 = kb * d.block_k;
        const bool visible = rule.block(i0, i1, j0, std::min(j0 + d.block_k, d.Skv)) != 0;
        const bool forced = kb < sink_blocks || (kb <= diag && kb > diag - local_blocks);
        state[kb] = !visible ? 0 : forced ? 2 : 1;
        if (state[kb] == 1) {
          double s = 0.0;
          for (int64_t x = 0; x < d.D; ++x) s += pqr[x] * pkh[kb * d.D + x];
          score[kb] = std::isnan(s) ? -std::numeric_limits<double>::infinity() : s;
          cand.push_back(static_cast<int32_t>(kb));
        }
      }
      const int64_t keep = std::min<int64_t>(topk, static_cast<int64_t>(cand.size()));
      std::partial_sort(cand.begin(), cand.begin() + keep, cand.end(), [&](int32_t a, int32_t c) {
        return score[a] > score[c] || (score[a] == score[c] && a < c);
      });
      for (int64_t t = 0; t < keep; ++t) state[cand[t]] = 2;
      int32_t* out = ip + row * d.nkv;
      int32_t count = 0;
      for (int64_t kb = 0; kb < d.nkv; ++kb)
        if (state[kb] == 2) out[count++] = static_cast<int32_t>(kb);
      np[row] = count;
    }
  });
  return {num, idx};
}

}  // namespace

TORCH_LIBRARY_IMPL(sparseops, CPU, m) {
  m.impl("block_sparse_attention", &block_sparse_attention_cpu);
  m.impl("block_sparse_attention_backward", &block_sparse_attention_backward_cpu);
  m.impl("topk_block_mask", &topk_block_mask_cpu);
}

}  // namespace sparseops::attention
