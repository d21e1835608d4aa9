// block_sparse_attention (forward, backward) and topk_block_mask on CPU.
//
// Forward (FlashAttention-2 on the kept blocks only): one work item per (b, kv head, q-block); its rows
// are the q-block's tokens of every query head of the GQA group (one list of kept KV blocks when the
// mask is shared by the heads, else one per head), so each K/V block is read once per item for all of
// them. Per kept KV block, in chunks of row_chunk rows: S = q K^T (gemm micro-kernel), the token-level
// causal/window rule on blocks that it cuts, online softmax of scale S (vectorised exp), acc += P V.
// Decode (fewer items than threads): each item's kept list is split across threads and the partial
// results are merged with their log-sum-exp (flash-decoding).
// K/V go through fp32 copies of the blocks the mask uses (K transposed per block), converted once per
// call and shared by every q-block: extra memory up to 2 * B * Hkv * Skv * D floats (fp32 inputs with D a
// multiple of 16 read V in place), plus per thread ~(2 G block_q D + row_chunk block_k) floats. When the
// q-blocks hardly reuse them (decode; under 2 uses per used block), each task converts its blocks into
// per-thread scratch instead.
//
// Backward (recompute from the saved lse, no Sq x Skv buffer), per tile (a q-block's rows x a KV block's
// keys) in the forward's orientation: S = q (scale K)^T, P = exp(S - lse), dv += P^T dO, dP = dO V^T,
// dS = scale P (dP - delta), dk += dS^T q, dq += dS K; P^T and dS^T are read in place by gemm_at, so the
// only transposed operands are the KV block's K^T / V^T panels, made once per KV block (AVX transpose
// micro-kernel) into per-thread scratch. dk/dv: one KV block at a time, walking the transposed mask (the
// q-blocks that keep it), summed over the group's query heads. dq: when the (b, kv head) pairs keep the
// threads evenly busy, each is one work item owning its heads' dq rows (fused, 5 products per tile; a
// q-block's rows are prepared on first use); else dq gets its own pass per (b, kv head, q-block)
// recomputing S and dP (7 products per tile). q, dO, K rows are read in place when fp32 with D a multiple
// of 16, else converted into per-thread scratch (q/dO once per item that uses them). Nothing is copied
// per call at the size of the tensors: no page-fault storms, and blocks the mask skips cost nothing.
// Extra memory: delta [B, Hq, Sq] floats; per worker thread (2 D + 2 bq) (bkP + 16) + 2 bk Dp floats, and,
// unless fp32 with D % 16 == 0, 3 G Sq Dp (fused: q, dO rows and dq of one KV head's query rows) or
// 3 G bq Dp (two-pass) floats.
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
#include "common/aligned_vector.h"
#include "common/cpu_features.h"
#include "common/dispatch.h"

namespace sparseops::attention {
namespace {

using cpu::round_up_cols;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
// Forward rows per S tile: 48 x 128 floats stay in L1/L2. The AMX products take a whole 128-row q-block
// (fewer, larger tile products: 3-8 % faster on one thread; neutral on the VDPBF16PS and fp32 paths).
constexpr int64_t kRowChunk = 48;
constexpr int64_t kRowChunkAmx = 128;

cpu::MicroKernels pick_kernels() {
#if SPARSEOPS_X86_KERNELS
  if (cpu_use_amx_bf16()) return cpu::microkernels_amx();
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
// left); at most one worker per item. Each worker thread then runs mk.release_tiles, if any (the AMX
// products leave the tiles configured across calls).
template <typename Body>
void parallel_pull(int64_t total, bool heavy_last, const cpu::MicroKernels& mk, const Body& body) {
  ItemQueue queue(total, heavy_last);
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), total));
  at::parallel_for(0, workers, 1, [&](int64_t begin, int64_t end) {
    for (int64_t w = begin; w < end; ++w) body(queue);
    if (mk.release_tiles != nullptr) mk.release_tiles();
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

// dst = s * src^T, a [D x ldd] fp32 panel of src's n rows (D columns, contiguous), zero for columns
// n..ldd: through the transpose micro-kernel, fp32 rows in place, others converted into tmp [n x D] first.
template <typename T>
void transpose_block(const cpu::MicroKernels& mk, const T* src, int64_t n, int64_t D, float s, float* dst, int64_t ldd,
                     float* tmp) {
  const float* f = nullptr;
  if constexpr (std::is_same_v<T, float>) {
    f = src;
  } else {
    convert_rows(src, n, D, D, tmp, D, 1.0f);
    f = tmp;
  }
  mk.transpose(f, D, n, D, s, dst, ldd);
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
  // Cache-line aligned: the AMX products load and store their tiles in place.
  AlignedVector<float> q, acc, m, l, alpha, S, kt, v, tmp;
  AlignedVector<uint16_t> qb;              // bf16 path: the item's q rows (raw bf16)
  AlignedVector<uint32_t> pb, ktb, vb;     // bf16 path: P as pairs; per-task K^T / V pairs
  FwdScratch(const AttnDims& d, int64_t Dp, int64_t row_chunk, bool per_task_kv, bool bf16) {
    const int64_t rows = d.Hq / d.Hkv * d.block_q, bkP = round_up_cols(d.block_k);
    if (bf16) {
      qb.resize(rows * d.D);
      pb.resize(row_chunk * bkP / 2);
      if (per_task_kv) {
        ktb.resize(d.D / 2 * bkP);
        vb.resize((d.block_k + 1) / 2 * Dp);
      }
    } else if (per_task_kv) {
      kt.resize(d.D * bkP);
      v.resize(d.block_k * Dp);
      tmp.resize(d.block_k * d.D);
    }
    if (!bf16) q.resize(rows * d.D);
    acc.resize(rows * Dp);
    m.resize(rows);
    l.resize(rows);
    alpha.resize(rows);
    S.resize(row_chunk * round_up_cols(d.block_k));
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
  bool per_task_kv;  // convert each kept K/V block inside the task (kt unused; vf only for fp32 V in place)
  // bf16 inputs with AVX-512 BF16 (vdpbf16ps) and even D: q and K as bf16 pairs, P rounded to bf16 for
  // P V; K^T pairs [blk][D/2][bkP] and V row pairs [blk][ceil(bk/2)][Dp] replace kt / vf.
  bool bf16 = false;
  const uint32_t* ktb = nullptr;
  const uint32_t* vpb = nullptr;
  int64_t row_chunk = kRowChunk;  // kRowChunkAmx when the bf16 products run on AMX

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
      const EntryRange entries = split_entries(cnt, split, nsplit);
      // A positive scale is applied in the softmax, to the logits; any other scales q (fp32 path) or S (bf16).
      const bool scale_in_softmax = d.scale > 0.0f;
      // q rows in the products' A layout as they are (bf16 pairs, or fp32 with the scale left to the
      // softmax) are read in place when the set is one head (its rows contiguous) and, for bf16, q is
      // aligned for 32-bit pairs (D is even); else gathered.
      const bool q_in_place =
          sets.heads == 1 && (bf16 ? reinterpret_cast<uintptr_t>(q) % 4 == 0
                                   : std::is_same_v<T, float> && scale_in_softmax);
      const T* q_set = q + ((b * d.Hq + h0) * d.Sq + i0) * d.D;
      for (int64_t hh = 0; hh < sets.heads && !q_in_place; ++hh) {
        const T* src = q_set + hh * d.Sq * d.D;
        if (bf16)
          std::memcpy(s.qb.data() + hh * mq * d.D, src, sizeof(T) * mq * d.D);
        else
          convert_rows(src, mq, d.D, d.D, s.q.data() + hh * mq * d.D, d.D, scale_in_softmax ? 1.0f : d.scale);
      }
      const uint32_t* qpairs = reinterpret_cast<const uint32_t*>(
          q_in_place && bf16 ? static_cast<const void*>(q_set) : s.qb.data());
      const float* qf = q_in_place && !bf16 ? reinterpret_cast<const float*>(q_set) : s.q.data();
      const int64_t half_d = d.D / 2, half_bk = (d.block_k + 1) / 2;
      const bool fused_bf16 = bf16 && mk.softmax_step_bf16 != nullptr && scale_in_softmax;
      const float softmax_scale = scale_in_softmax ? d.scale : 1.0f;
      std::fill_n(s.m.data(), M, kNegInf);
      std::fill_n(s.l.data(), M, 0.0f);
      bool first = true;  // no block seen yet: acc is written, not rescaled and accumulated onto
      for (int64_t c = entries.begin; c < entries.end; ++c) {
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
            mk.transpose_pairs_bf16(kr, n, d.D, s.ktb.data(), nP);
            mk.pair_rows_bf16(vr, d.D, n, d.D, s.vb.data(), Dp, Dp);
            KTb = s.ktb.data();
            Vb = s.vb.data();
          } else {
            KTb = ktb + blk * half_d * bkP;
            Vb = vpb + blk * half_bk * Dp;
          }
        } else if (per_task_kv) {
          transpose_block(mk, k + (bh * d.Skv + j0) * d.D, n, d.D, 1.0f, s.kt.data(), nP, s.tmp.data());
          KT = s.kt.data();
          if (vf) {  // fp32 V read in place
            V = vf + (bh * d.Skv + j0) * ldv;
          } else {
            convert_rows(v + (bh * d.Skv + j0) * d.D, n, d.D, d.D, s.v.data(), Dp, 1.0f);
            V = s.v.data();
            ld_v = Dp;
          }
        } else {
          KT = kt + (bh * d.nkv + kb) * d.D * bkP;
          V = vf + (bh * d.Skv + j0) * ldv;
        }
        const int64_t ld_kt = per_task_kv ? nP : bkP;
        for (int64_t r0 = 0; r0 < M; r0 += row_chunk) {
          const int64_t rc = std::min(row_chunk, M - r0);
          float* S = s.S.data();
          if (bf16)
            mk.gemm_bf16(rc, nP, half_d, qpairs + r0 * half_d, half_d, KTb, ld_kt, S, nP, false,
                         fused_bf16 ? 1.0f : d.scale);
          else
            mk.gemm(rc, nP, d.D, qf + r0 * d.D, d.D, KT, ld_kt, S, nP, false);
          if (cls == 1 || n < nP)
            mask_tile(S, nP, rc, n, nP, cls == 1, rule, j0, [&](int64_t r) { return i0 + (r0 + r) % mq; });
          float* alpha = s.alpha.data() + r0;
          float* acc = s.acc.data() + r0 * Dp;
          if (fused_bf16)
            mk.softmax_step_bf16(S, nP, rc, nP, d.scale, s.m.data() + r0, s.l.data() + r0, alpha, s.pb.data(), nP / 2);
          else
            mk.softmax_step(S, nP, rc, nP, bf16 ? 1.0f : softmax_scale, s.m.data() + r0, s.l.data() + r0, alpha);
          if (!first) rescale_rows(acc, rc, alpha);
          if (bf16) {
            if (!fused_bf16) mk.pack_bf16(S, nP, rc, nP, s.pb.data(), nP / 2);
            mk.gemm_bf16(rc, Dp, (n + 1) / 2, s.pb.data(), nP / 2, Vb, Dp, acc, Dp, !first, 1.0f);
          } else {
            mk.gemm(rc, Dp, n, S, nP, V, ld_v, acc, Dp, !first);
          }
        }
        first = false;
      }
      if (first) std::fill_n(s.acc.data(), M * Dp, 0.0f);
      const int64_t row0 = set * sets.heads * mq;  // this set's first row among the item's G mq rows
      constexpr bool out_bf16 = std::is_same_v<T, c10::BFloat16>, out_f32 = std::is_same_v<T, float>;
      if (nsplit == 1 && ((out_bf16 && mk.store_rows_bf16 != nullptr) || (out_f32 && mk.store_rows_f32 != nullptr))) {
        float* inv_l = s.alpha.data();
        for (int64_t r = 0; r < M; ++r) {
          const RowResult res = finish_softmax_row(s.m[r], s.l[r]);
          inv_l[r] = res.inv_l;
          lse[(b * d.Hq + h0 + r / mq) * d.Sq + i0 + r % mq] = res.lse;
        }
        for (int64_t hh = 0; hh < sets.heads; ++hh) {
          T* o = out + ((b * d.Hq + h0 + hh) * d.Sq + i0) * d.D;
          const float* a = s.acc.data() + hh * mq * Dp;
          if constexpr (out_bf16)
            mk.store_rows_bf16(a, Dp, mq, d.D, inv_l + hh * mq, reinterpret_cast<uint16_t*>(o), d.D);
          else if constexpr (out_f32)
            mk.store_rows_f32(a, Dp, mq, d.D, inv_l + hh * mq, o, d.D);
        }
      } else if (nsplit == 1) {
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

  // The online softmax's accumulator rescale: row r of acc (rows of Dp floats) times alpha[r].
  void rescale_rows(float* acc, int64_t rows, const float* alpha) const {
    if (mk.scale_rows != nullptr) return mk.scale_rows(acc, Dp, rows, Dp, alpha);
    for (int64_t r = 0; r < rows; ++r) {
      if (alpha[r] == 1.0f) continue;
      for (int64_t x = 0; x < Dp; ++x) acc[r * Dp + x] *= alpha[r];
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

// How many times the forward's tasks use each (b, kv head, kv-block) (0: not converted).
std::vector<int32_t> kv_block_uses(const AttnDims& d, const MaskView& mask) {
  std::vector<int32_t> uses(static_cast<size_t>(d.B * d.Hkv * d.nkv), 0);
  const int64_t G = d.Hq / d.Hkv;
  for (int64_t b = 0; b < d.B; ++b)
    for (int64_t h = 0; h < d.Hq; h += (d.mask_h == 1 ? G : 1))
      for (int64_t qb = 0; qb < d.nq; ++qb) {
        const int64_t r = mask.row(b, h, qb);
        for (int64_t c = 0; c < mask.num[r]; ++c) ++uses[(b * d.Hkv + h / G) * d.nkv + mask.idx[r * mask.width + c]];
      }
  return uses;
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
  // A K/V block that several q-blocks use is converted once, into the shared fp32 copy. When they mostly
  // do not (decode: one q-block; very sparse masks: under 2 uses per used block on average), each is
  // converted inside the task that uses it, where it stays in cache, and no copy at the size of K/V is
  // allocated (and page-faulted in) per call.
  const std::vector<int32_t> used = d.nq == 1 ? std::vector<int32_t>() : kv_block_uses(d, mask);
  const int64_t total_uses = std::accumulate(used.begin(), used.end(), int64_t{0});
  const int64_t used_blocks = std::count_if(used.begin(), used.end(), [](int32_t u) { return u > 0; });
  const bool per_task_kv = d.nq == 1 || total_uses < 2 * used_blocks;
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
          mk.transpose_pairs_bf16(kr, n, d.D, ktbp + blk * d.D / 2 * bkP, bkP);
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
      std::vector<float> tmp(std::is_same_v<scalar_t, float> ? 0 : d.block_k * d.D);
      for (int64_t blk = begin; blk < end; ++blk) {
        if (!used[blk]) continue;
        const int64_t kb = blk % d.nkv, bh = blk / d.nkv, j0 = kb * d.block_k, n = std::min(d.block_k, d.Skv - j0);
        transpose_block(mk, kp + (bh * d.Skv + j0) * d.D, n, d.D, 1.0f, ktp + blk * d.D * bkP, bkP, tmp.data());
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
    if (bf16 && cpu_use_amx_bf16()) f.row_chunk = kRowChunkAmx;
    if (ktb.defined()) {
      f.ktb = reinterpret_cast<const uint32_t*>(ktb.const_data_ptr<int32_t>());
      f.vpb = reinterpret_cast<const uint32_t*>(vpb.const_data_ptr<int32_t>());
    }
    parallel_pull(items * nsplit, /*heavy_last=*/true, mk, [&](ItemQueue& queue) {
      FwdScratch s(d, Dp, f.row_chunk, per_task_kv, bf16);
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

// dS = scale * P * (dP - delta[r]) over rows x cols, in place in dP (the softmax scale of dq and dk
// folded in here, once per tile, instead of into their write-back).
void ds_tile(const float* P, float* dP, int64_t ld, int64_t rows, int64_t cols, const float* delta, float scale) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* p = P + r * ld;
    float* g = dP + r * ld;
    const float dl = delta[r];
    for (int64_t j = 0; j < cols; ++j) g[j] = scale * p[j] * (g[j] - dl);
  }
}

// Per-thread scratch of the backward, allocated once per worker and reused across its items.
struct BwdScratch {  // cache-line aligned, as the forward's
  AlignedVector<float> kt, vt, kr;   // one KV block: (scale K)^T, V^T [D x bkP]; K rows [bk x Dp]
  AlignedVector<float> tmp;          // V rows [bk x D] on their way to V^T (non-fp32 inputs)
  AlignedVector<float> S, dP;        // one tile [bq x bkP]
  AlignedVector<float> dk, dv;       // one KV block's accumulators [bk x Dp]
  AlignedVector<float> qr, gr, dqa;  // q, dO rows and fp32 dq of the item's query rows [.. x Dp]
  // bf16 products on AMX (Backward::amx): one KV block's K^T and V^T as pairs along D [D/2 x ld] and K as
  // pairs of rows [bk/2 x Dp]; one tile's dS as row pairs [bq x ld/2], P^T or dS^T as pairs along the
  // query rows [bkP x ldt], q and dO rows as row pairs [bq/2 x Dp]
  AlignedVector<uint32_t> ktb, vtb, kpr, dsb, pt, qpr, gpr;
  std::vector<uint8_t> ready;        // fused: per (head, q-block) of the item, its rows are prepared
};

// Backward products per tile, all in the forward's orientation (rows = query tokens, columns = keys):
// S = q (scale K)^T, P = exp(S - lse), dv += P^T dO, dP = dO V^T, dS = scale P (dP - delta),
// dk += dS^T q, dq += dS K. The transposed products read P and dS in place (gemm_at), so the only
// transposed operands are the KV block's K^T and V^T panels, converted once per KV block into per-thread
// scratch. q, dO, K rows are read in place when fp32 with D a multiple of kColAlign (ld = Dp = D), else
// converted (a q-block's rows once per item that uses it).
template <typename T>
struct Backward {
  AttnDims d;
  MaskView mask;
  const TransposedMask& tmask;
  TokenRule rule;
  cpu::MicroKernels mk;
  const T* q;
  const T* k;
  const T* v;
  const T* go;
  const T* o;
  const float* lse;
  const float* glse;  // null: no lse gradient
  float* delta;       // [B Hq Sq]: rowsum(dO * O) - grad_lse
  T* dq;
  T* dk;
  T* dv;
  int64_t Dp, bkP, G;
  bool direct;  // fp32 inputs with D == Dp: rows read in place, dq accumulated in place (fused mode)
  // bf16 inputs, even D, AMX-BF16: all five products in bf16 on AMX tiles, from q, dO, K and V as they are
  // and P, dS rounded to bf16 (as FlashAttention's backward does).
  bool amx;

  // Leading dimension of the K^T / V^T panels and the S / dP tiles: one 16-float group past the width, so
  // that a 128-float width does not put consecutive rows 512 B apart (rows that map to 1/8 of L1's sets:
  // the gemm's B panel would not stay in L1).
  static int64_t tile_ld(int64_t nP) { return nP + cpu::kColAlign; }

  BwdScratch scratch(int64_t q_rows) const {
    BwdScratch s;
    if (amx) {
      s.ktb.resize(d.D / 2 * tile_ld(bkP));
      s.vtb.resize(d.D / 2 * tile_ld(bkP));
      s.kpr.resize((d.block_k + 1) / 2 * Dp);
      s.dsb.resize(d.block_q * tile_ld(bkP) / 2);
      s.pt.resize(bkP * pair_ld());
      s.qpr.resize((d.block_q + 1) / 2 * Dp);
      s.gpr.resize((d.block_q + 1) / 2 * Dp);
    } else {
      s.kt.resize(d.D * tile_ld(bkP));
      s.vt.resize(d.D * tile_ld(bkP));
      if (!direct) s.kr.resize(d.block_k * Dp);
      if (!std::is_same_v<T, float>) s.tmp.resize(d.block_k * d.D);
    }
    s.S.resize(d.block_q * tile_ld(bkP));
    s.dP.resize(d.block_q * tile_ld(bkP));
    s.dk.resize(d.block_k * Dp);
    s.dv.resize(d.block_k * Dp);
    if (!direct) {
      s.qr.resize(q_rows * Dp);
      s.gr.resize(q_rows * Dp);
    }
    return s;
  }

  // Pairs of query rows of a tile, padded to whole 16-pair tiles (pack_bf16_t's ldd).
  int64_t pair_ld() const { return round_up_cols((d.block_q + 1) / 2); }

  int64_t mask_row_of(int64_t b, int64_t h) const {
    return (d.mask_b == 1 ? 0 : b) * d.mask_h + (d.mask_h == 1 ? 0 : h);
  }

  // KV block (bh, tokens j0..j0+n): K^T (scaled) and V^T panels [D x nP] (zero past n) into s; returns
  // K's fp32 rows (ld Dp), in place when direct. With amx: the bf16 pair panels instead (returns null).
  const float* kv_panels(int64_t bh, int64_t j0, int64_t n, int64_t nP, BwdScratch& s) const {
    const T* kb = k + (bh * d.Skv + j0) * d.D;
    if (amx) {
      const uint16_t* kbits = reinterpret_cast<const uint16_t*>(kb);
      mk.transpose_pairs_bf16(kbits, n, d.D, s.ktb.data(), tile_ld(nP));
      mk.transpose_pairs_bf16(reinterpret_cast<const uint16_t*>(v + (bh * d.Skv + j0) * d.D), n, d.D, s.vtb.data(),
                      tile_ld(nP));
      mk.pair_rows_bf16(kbits, d.D, n, d.D, s.kpr.data(), Dp, Dp);
      return nullptr;
    }
    const float* KR = s.kr.data();
    if (direct)
      KR = reinterpret_cast<const float*>(kb);
    else
      convert_rows(kb, n, d.D, d.D, s.kr.data(), Dp, 1.0f);
    mk.transpose(KR, Dp, n, d.D, d.scale, s.kt.data(), tile_ld(nP));
    transpose_block(mk, v + (bh * d.Skv + j0) * d.D, n, d.D, 1.0f, s.vt.data(), tile_ld(nP), s.tmp.data());
    return KR;
  }

  // fp32 rows (ld Dp) of q and dO for global rows row0..row0+mq: in place when direct, else converted
  // into qbuf / gbuf. With want_delta, also delta of those rows (from the same dO rows).
  void q_rows(int64_t row0, int64_t mq, float* qbuf, float* gbuf, const float*& Q, const float*& dO,
              bool want_delta) const {
    if (direct) {
      Q = reinterpret_cast<const float*>(q) + row0 * d.D;
      dO = reinterpret_cast<const float*>(go) + row0 * d.D;
    } else {
      convert_rows(q + row0 * d.D, mq, d.D, d.D, qbuf, Dp, 1.0f);
      convert_rows(go + row0 * d.D, mq, d.D, d.D, gbuf, Dp, 1.0f);
      Q = qbuf;
      dO = gbuf;
    }
    if (!want_delta) return;
    for (int64_t r = 0; r < mq; ++r) {
      const float* g = dO + r * Dp;
      const T* orow = o + (row0 + r) * d.D;
      float acc = 0.0f;
      for (int64_t x = 0; x < d.D; ++x) acc += g[x] * static_cast<float>(orow[x]);
      delta[row0 + r] = glse ? acc - glse[row0 + r] : acc;
    }
  }

  // One tile: query rows row0..row0+mq (tokens i0..), keys j0..j0+n of one KV block. Adds to dk_acc and
  // dv_acc ([n x Dp]) when given, and to dq_acc ([mq x Dp]) when given.
  void tile(const float* Q, const float* dO, int64_t row0, int64_t i0, int64_t mq, int64_t j0, int64_t n, int cls,
            const float* KR, float* dk_acc, float* dv_acc, float* dq_acc, BwdScratch& s) const {
    const int64_t nP = round_up_cols(n), ld = tile_ld(nP);
    float* S = s.S.data();
    float* dP = s.dP.data();
    const int64_t half_d = d.D / 2;
    // amx: q and dO rows of this tile as bf16 pairs (row-major: AMX's first-source layout), read in place
    const uint32_t* qpairs = amx ? reinterpret_cast<const uint32_t*>(q + row0 * d.D) : nullptr;
    const uint32_t* gpairs = amx ? reinterpret_cast<const uint32_t*>(go + row0 * d.D) : nullptr;
    if (amx)
      mk.gemm_bf16(mq, nP, half_d, qpairs, half_d, s.ktb.data(), ld, S, ld, false, d.scale);
    else
      mk.gemm(mq, nP, d.D, Q, Dp, s.kt.data(), ld, S, ld, false);
    if (cls == 1 || n < nP) mask_tile(S, ld, mq, n, nP, cls == 1, rule, j0, [&](int64_t r) { return i0 + r; });
    mk.exp_shift(S, ld, mq, nP, lse + row0, nullptr);
    const int64_t mp = (mq + 1) / 2, ldt = pair_ld();  // amx: pairs of query rows
    if (amx && (dv_acc || dk_acc)) {  // the B sides of P^T dO and dS^T Q: dO and q rows in pairs
      mk.pair_rows_bf16(reinterpret_cast<const uint16_t*>(go + row0 * d.D), d.D, mq, d.D, s.gpr.data(), Dp, Dp);
      mk.pair_rows_bf16(reinterpret_cast<const uint16_t*>(q + row0 * d.D), d.D, mq, d.D, s.qpr.data(), Dp, Dp);
    }
    if (dv_acc && amx) {
      mk.pack_bf16_t(S, ld, mq, n, s.pt.data(), ldt);
      mk.gemm_bf16(n, Dp, mp, s.pt.data(), ldt, s.gpr.data(), Dp, dv_acc, Dp, true, 1.0f);
    } else if (dv_acc) {
      mk.gemm_at(n, Dp, mq, S, ld, dO, Dp, dv_acc, Dp, true);
    }
    if (amx)
      mk.gemm_bf16(mq, nP, half_d, gpairs, half_d, s.vtb.data(), ld, dP, ld, false, 1.0f);
    else
      mk.gemm(mq, nP, d.D, dO, Dp, s.vt.data(), ld, dP, ld, false);
    ds_tile(S, dP, ld, mq, n, delta + row0, d.scale);
    if (dk_acc && amx) {
      mk.pack_bf16_t(dP, ld, mq, n, s.pt.data(), ldt);
      mk.gemm_bf16(n, Dp, mp, s.pt.data(), ldt, s.qpr.data(), Dp, dk_acc, Dp, true, 1.0f);
    } else if (dk_acc) {
      mk.gemm_at(n, Dp, mq, dP, ld, Q, Dp, dk_acc, Dp, true);
    }
    if (dq_acc && amx) {  // dS past column n is 0 (P and V^T are 0 there), as is K's pair row past n
      mk.pack_bf16(dP, ld, mq, nP, s.dsb.data(), nP / 2);
      mk.gemm_bf16(mq, Dp, (n + 1) / 2, s.dsb.data(), nP / 2, s.kpr.data(), Dp, dq_acc, Dp, true, 1.0f);
    } else if (dq_acc) {
      mk.gemm(mq, Dp, n, dP, ld, KR, Dp, dq_acc, Dp, true);
    }
  }

  void store_rows(const float* src, int64_t n, T* dst) const {
    for (int64_t r = 0; r < n; ++r)
      for (int64_t x = 0; x < d.D; ++x) dst[r * d.D + x] = static_cast<T>(src[r * Dp + x]);
  }

  // dk, dv of KV block kb of (b, kv head), summed over the group's query heads, walking the q-blocks that
  // keep it. prepare(g, qb, Q, dO) supplies the rows of a tile; dq_of(g, qb) its dq accumulator (null:
  // dq not accumulated here).
  template <typename Prepare, typename DqOf>
  void kv_block(int64_t bh, int64_t kb, BwdScratch& s, const Prepare& prepare, const DqOf& dq_of) const {
    const int64_t b = bh / d.Hkv, hkv = bh % d.Hkv;
    const int64_t j0 = kb * d.block_k, n = std::min(d.block_k, d.Skv - j0), krow0 = bh * d.Skv + j0;
    const float* KR = nullptr;
    bool converted = false;
    for (int64_t g = 0; g < G; ++g) {
      const int64_t h = hkv * G + g, mr = mask_row_of(b, h);
      for (int64_t t = tmask.start[mr * d.nkv + kb]; t < tmask.start[mr * d.nkv + kb + 1]; ++t) {
        const int64_t qb = tmask.qblocks[t], i0 = qb * d.block_q, mq = std::min(d.block_q, d.Sq - i0);
        const int cls = rule.block(i0, i0 + mq, j0, j0 + n);
        if (cls == 0) continue;
        float* dqa = dq_of(g, qb);
        if (!converted) {  // the first visible tile: this block's panels, its accumulators
          KR = kv_panels(bh, j0, n, round_up_cols(n), s);
          std::fill_n(s.dk.data(), n * Dp, 0.0f);
          std::fill_n(s.dv.data(), n * Dp, 0.0f);
          converted = true;
        }
        const float* Q;
        const float* dO;
        prepare(g, qb, Q, dO);
        tile(Q, dO, (b * d.Hq + h) * d.Sq + i0, i0, mq, j0, n, cls, KR, s.dk.data(), s.dv.data(), dqa, s);
      }
    }
    if (!converted) {  // no query sees this block
      std::fill_n(dk + krow0 * d.D, n * d.D, T(0));
      std::fill_n(dv + krow0 * d.D, n * d.D, T(0));
      return;
    }
    store_rows(s.dk.data(), n, dk + krow0 * d.D);
    store_rows(s.dv.data(), n, dv + krow0 * d.D);
  }

  // Fused mode, item (b, kv head): every KV block of the head, dq of the group's G heads accumulated
  // here (the item owns those rows). A q-block's rows are prepared on first use (converted, delta, dq
  // zeroed); the ones no KV block reaches get dq = 0.
  void fused_item(int64_t bh, BwdScratch& s) const {
    const int64_t b = bh / d.Hkv, hkv = bh % d.Hkv, qrow0 = (b * d.Hq + hkv * G) * d.Sq;  // the group's rows
    float* dq_base = direct ? reinterpret_cast<float*>(dq) + qrow0 * d.D : s.dqa.data();
    s.ready.assign(G * d.nq, 0);
    auto prepare = [&](int64_t g, int64_t qb, const float*& Q, const float*& dO) {
      const int64_t r = g * d.Sq + qb * d.block_q, mq = std::min(d.block_q, d.Sq - qb * d.block_q);
      float* qbuf = direct ? nullptr : s.qr.data() + r * Dp;
      float* gbuf = direct ? nullptr : s.gr.data() + r * Dp;
      if (!s.ready[g * d.nq + qb]) {
        s.ready[g * d.nq + qb] = 1;
        q_rows(qrow0 + r, mq, qbuf, gbuf, Q, dO, /*want_delta=*/true);
        std::fill_n(dq_base + r * Dp, mq * Dp, 0.0f);
      } else if (direct) {
        Q = reinterpret_cast<const float*>(q) + (qrow0 + r) * d.D;
        dO = reinterpret_cast<const float*>(go) + (qrow0 + r) * d.D;
      } else {
        Q = qbuf;
        dO = gbuf;
      }
    };
    auto dq_of = [&](int64_t g, int64_t qb) { return dq_base + (g * d.Sq + qb * d.block_q) * Dp; };
    for (int64_t kb = 0; kb < d.nkv; ++kb) kv_block(bh, kb, s, prepare, dq_of);
    for (int64_t g = 0; g < G; ++g)
      for (int64_t qb = 0; qb < d.nq; ++qb) {
        const int64_t r = g * d.Sq + qb * d.block_q, mq = std::min(d.block_q, d.Sq - qb * d.block_q);
        if (!s.ready[g * d.nq + qb])
          std::fill_n(dq + (qrow0 + r) * d.D, mq * d.D, T(0));
        else if (!direct)
          store_rows(dq_base + r * Dp, mq, dq + (qrow0 + r) * d.D);
      }
  }

  // Two-pass mode, pass 1, item (b, kv head, q-block): dq of the group's heads for this q-block, and the
  // delta of its rows (which pass 2 reads). Each kept KV block's panels are converted once for the heads
  // that share its list.
  void dq_item(int64_t item, BwdScratch& s) const {
    const int64_t qb = item % d.nq, bh = item / d.nq, hkv = bh % d.Hkv, b = bh / d.Hkv;
    const int64_t i0 = qb * d.block_q, mq = std::min(d.block_q, d.Sq - i0);
    const HeadSets sets = head_sets(d);
    std::vector<const float*> Q(sets.heads), dO(sets.heads);
    for (int64_t set = 0; set < sets.count; ++set) {
      const int64_t h0 = hkv * G + set * sets.heads, mrow = mask.row(b, h0, qb), cnt = mask.num[mrow];
      const int32_t* list = mask.idx + mrow * mask.width;
      for (int64_t hh = 0; hh < sets.heads; ++hh) {
        const int64_t row0 = ((b * d.Hq + h0 + hh) * d.Sq + i0);
        q_rows(row0, mq, direct ? nullptr : s.qr.data() + hh * d.block_q * Dp,
               direct ? nullptr : s.gr.data() + hh * d.block_q * Dp, Q[hh], dO[hh], /*want_delta=*/true);
      }
      std::fill_n(s.dqa.data(), sets.heads * d.block_q * Dp, 0.0f);
      for (int64_t c = 0; c < cnt; ++c) {
        const int64_t kb = list[c], j0 = kb * d.block_k, n = std::min(d.block_k, d.Skv - j0);
        const int cls = rule.block(i0, i0 + mq, j0, j0 + n);
        if (cls == 0) continue;
        const float* KR = kv_panels(bh, j0, n, round_up_cols(n), s);
        for (int64_t hh = 0; hh < sets.heads; ++hh)
          tile(Q[hh], dO[hh], (b * d.Hq + h0 + hh) * d.Sq + i0, i0, mq, j0, n, cls, KR, nullptr, nullptr,
               s.dqa.data() + hh * d.block_q * Dp, s);
      }
      for (int64_t hh = 0; hh < sets.heads; ++hh)
        store_rows(s.dqa.data() + hh * d.block_q * Dp, mq, dq + ((b * d.Hq + h0 + hh) * d.Sq + i0) * d.D);
    }
  }

  // Two-pass mode, pass 2, item (b, kv head, KV block): dk, dv; the q-side rows converted per tile.
  void dkv_item(int64_t blk, BwdScratch& s) const {
    const int64_t kb = blk % d.nkv, bh = blk / d.nkv, b = bh / d.Hkv, hkv = bh % d.Hkv;
    auto prepare = [&](int64_t g, int64_t qb, const float*& Q, const float*& dO) {
      const int64_t row0 = (b * d.Hq + hkv * G + g) * d.Sq + qb * d.block_q;
      q_rows(row0, std::min(d.block_q, d.Sq - qb * d.block_q), s.qr.data(), s.gr.data(), Q, dO, false);
    };
    kv_block(bh, kb, s, prepare, [](int64_t, int64_t) -> float* { return nullptr; });
  }
};

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
  const TransposedMask tmask = transpose_mask(d, mask);
  const int64_t Dp = round_up_cols(d.D), G = d.Hq / d.Hkv;
  // Fused mode (one pass over KV blocks, dq accumulated per (b, kv head)) when those items keep the
  // threads evenly busy; else dq in its own pass over q-blocks.
  const int64_t threads = at::get_num_threads(), groups = d.B * d.Hkv;
  const bool fused = groups % threads == 0 || groups >= 4 * threads;
  SPARSEOPS_DISPATCH_FLOAT_HALF_BF16(qc.scalar_type(), op, [&] {
    const bool direct = std::is_same_v<scalar_t, float> && d.D == Dp;
    const Backward<scalar_t> bw{d,
                                mask,
                                tmask,
                                token_rule(d),
                                pick_kernels(),
                                qc.const_data_ptr<scalar_t>(),
                                kc.const_data_ptr<scalar_t>(),
                                vc.const_data_ptr<scalar_t>(),
                                gc.const_data_ptr<scalar_t>(),
                                oc.const_data_ptr<scalar_t>(),
                                lse_c.const_data_ptr<float>(),
                                glse.defined() ? glse.const_data_ptr<float>() : nullptr,
                                delta.mutable_data_ptr<float>(),
                                dq.mutable_data_ptr<scalar_t>(),
                                dk.mutable_data_ptr<scalar_t>(),
                                dv.mutable_data_ptr<scalar_t>(),
                                Dp,
                                round_up_cols(d.block_k),
                                G,
                                direct,
                                std::is_same_v<scalar_t, c10::BFloat16> && d.D % 2 == 0 && cpu_use_amx_bf16()};
    if (fused) {
      // One item per (b, kv head): it owns its heads' dq rows, so dS K is added without races and the
      // dq pass (S, dP recomputed once more) is skipped.
      parallel_pull(groups, /*heavy_last=*/false, bw.mk, [&](ItemQueue& queue) {
        BwdScratch s = bw.scratch(G * d.Sq);
        if (!direct) s.dqa.resize(G * d.Sq * Dp);
        for (int64_t bh; queue.next(bh);) bw.fused_item(bh, s);
      });
    } else {
      // Pass 1: dq (and delta) per (b, kv head, q-block); pass 2: dk, dv per (b, kv head, KV block).
      parallel_pull(groups * d.nq, /*heavy_last=*/true, bw.mk, [&](ItemQueue& queue) {
        BwdScratch s = bw.scratch(G * d.block_q);
        s.dqa.resize(G * d.block_q * Dp);
        for (int64_t item; queue.next(item);) bw.dq_item(item, s);
      });
      parallel_pull(groups * d.nkv, /*heavy_last=*/false, bw.mk, [&](ItemQueue& queue) {
        BwdScratch s = bw.scratch(d.block_q);
        for (int64_t blk; queue.next(blk);) bw.dkv_item(blk, s);
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
