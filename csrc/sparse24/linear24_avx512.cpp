// sparse24_linear on CPU, AVX-512 small-M kernel (this file is compiled with -mavx512f/bw/vl/dq/bf16
// -mfma -mf16c; linear24_cpu.cpp calls it only when sparseops::cpu_use_avx512()).
//
// fp32 / fp16 weights ("perm scheme"), per W row, 8 groups at a time (32 input columns, 16 kept
// values, 4 meta bytes): the 4 meta bytes become a 16-lane index vector, lane 2g+s = 4g + (index s of
// group g), computed with one variable shift (the code of lane l sits at bits 2l..2l+1 of the 4 bytes
// read as a little-endian word). Each x row then contributes values * permutex2var(x[0:16], idx,
// x[16:32]) to its accumulator.
// bf16 weights ("pair scheme", below): 64 columns per step, x kept in bf16, vdpbf16ps.
// Register block: 2 W rows x up to 8 x rows per pass. The index vectors and values of the 2 W rows
// serve all 8 x rows, and each x chunk (loaded once into registers) serves both W rows, so one
// multiply-add costs one load + one permute + one FMA/dot: about one cycle on Zen 5, where the permute
// and the FMA/dot compete for the same pipes (one W row per pass needed two loads per multiply-add and
// was load-bound at ~2 cycles). x comes in the panel layout of linear24_cpu.h (the rows of a step in
// one 1 KiB block). W is streamed from memory once per call; M > 8 re-reads it from L2.
// Also here: the vectorised tile decompression of the large-M path.
//
// No torch headers here (see linear24_cpu.h): everything in this file is local to it.
// GCC 12 reports its own _mm512_undefined_*() (self-initialised on purpose) as uninitialised when
// reductions/casts inline; the warnings are false positives from the intrinsics headers.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cstring>

#include "sparse24/linear24_cpu.h"

namespace sparseops::sparse24 {
namespace {

// ---- the two schemes -------------------------------------------------------------------------------
// A scheme D gives, per step of D::kChunk columns (D::kGroups groups of 4): D::Word (the step's meta
// bytes as one little-endian word), D::index (the permute indices from that word), D::load_w (the kept
// values), D::load_x (half a chunk of one x row) and D::madd (acc += kept values * x gathered by the
// indices).

// fp32 / fp16 values: 8 groups per step (32 columns, 16 kept values, 4 meta bytes).
// Lane 2g+s: 4g + bits [4g+2s, 4g+2s+1] of meta4 = 4 * (l / 2) + ((meta4 >> 2l) & 3).
inline __m512i perm_index(uint32_t meta4) {
  const __m512i shifts = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i base = _mm512_setr_epi32(0, 0, 4, 4, 8, 8, 12, 12, 16, 16, 20, 20, 24, 24, 28, 28);
  const __m512i codes = _mm512_srlv_epi32(_mm512_set1_epi32(static_cast<int>(meta4)), shifts);
  // (codes & 3) + base as one ternary-logic op: base's low 2 bits are zero, so the add is an or.
  return _mm512_ternarylogic_epi32(codes, _mm512_set1_epi32(3), base, 0xEA);
}

template <class V>  // V: float or uint16_t (fp16 bits)
struct PermScheme {
  using T = V;
  using X = float;
  using W = __m512;
  using XV = __m512;
  using Word = uint32_t;
  static constexpr int64_t kChunk = 32, kGroups = 8;
  static __m512i index(Word meta4) { return perm_index(meta4); }
  static W load_w(const T* v, int64_t groups = kGroups) {
    const __mmask16 k = static_cast<__mmask16>((1u << (2 * groups)) - 1);
    if constexpr (sizeof(T) == 4) {
      return _mm512_maskz_loadu_ps(k, v);
    } else {
      return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, v));
    }
  }
  static XV load_x(const X* x) { return _mm512_loadu_ps(x); }
  static __m512 madd(__m512 acc, W w, XV lo, __m512i idx, XV hi) {
    return _mm512_fmadd_ps(w, _mm512_permutex2var_ps(lo, idx, hi), acc);
  }
};

// bf16 values ("pair scheme"): 16 groups per step (64 columns, 32 kept values, 8 meta bytes). The
// values are already laid out as one (first, second) bf16 pair per group; a two-source 16-bit permute
// gathers the matching (x[4g + first], x[4g + second]) pair from x's 64 columns, and vdpbf16ps
// multiplies the pairs and adds both products into one fp32 lane: 32 multiply-adds per permute + dot,
// twice the fp32 scheme's.
struct PairIndexConsts {
  alignas(64) uint16_t ctrl[32];    // vpshufb control: 16-bit lane l gets meta word l / 8
  alignas(64) uint16_t shifts[32];  // 2 * (l % 8)
  alignas(64) uint16_t base[32];    // 4 * (l / 2)
  constexpr PairIndexConsts() : ctrl(), shifts(), base() {
    for (int l = 0; l < 32; ++l) {
      const int word = l / 8;  // the 128-bit lane; vpshufb indexes bytes within it (meta8 is in each qword)
      ctrl[l] = static_cast<uint16_t>((2 * word) | ((2 * word + 1) << 8));
      shifts[l] = static_cast<uint16_t>(2 * (l % 8));
      base[l] = static_cast<uint16_t>(4 * (l / 2));
    }
  }
};
constexpr PairIndexConsts kPair{};

// 16-bit lane 2g + s: 4g + bits [4g + 2s, 4g + 2s + 1] of meta8 (= bits 2l, 2l + 1).
inline __m512i pair_index(uint64_t meta8) {
  const __m512i ctrl = _mm512_load_si512(kPair.ctrl);
  const __m512i words = _mm512_shuffle_epi8(_mm512_set1_epi64(static_cast<long long>(meta8)), ctrl);
  const __m512i codes = _mm512_srlv_epi16(words, _mm512_load_si512(kPair.shifts));
  // (codes & 3) + base, as in perm_index
  return _mm512_ternarylogic_epi32(codes, _mm512_set1_epi16(3), _mm512_load_si512(kPair.base), 0xEA);
}

struct PairScheme {
  using T = uint16_t;
  using X = uint16_t;
  using W = __m512i;
  using XV = __m512i;
  using Word = uint64_t;
  static constexpr int64_t kChunk = 64, kGroups = 16;
  static __m512i index(Word meta8) { return pair_index(meta8); }
  static W load_w(const T* v, int64_t groups = kGroups) {
    return _mm512_maskz_loadu_epi16(static_cast<__mmask32>((1ull << (2 * groups)) - 1), v);
  }
  static XV load_x(const X* x) { return _mm512_loadu_si512(x); }
  static __m512 madd(__m512 acc, W w, XV lo, __m512i idx, XV hi) {
    return _mm512_dpbf16_ps(acc, (__m512bh)w, (__m512bh)_mm512_permutex2var_epi16(lo, idx, hi));
  }
};

// ---- the register block: WR W rows x MR x rows --------------------------------------------------------
// Each x chunk (two half-chunk loads per x row) serves WR = 2 W rows, so a multiply-add needs one load,
// one permute and one FMA/dot: the kernel is no longer load-bound (8 x rows x 1 W row would need two
// loads per permute). Accumulators: WR * MR <= 16; with few of them, two sets alternate steps so that the
// FMA/dot latency (4-6 cycles) is hidden.

template <class D, int WR, int MR>
__attribute__((always_inline)) inline void block_step(__m512 (&acc)[WR][MR], const typename D::W (&w)[WR],
                                                      const __m512i (&idx)[WR], const typename D::X* xc) {
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    typename D::XV lo = D::load_x(xc + D::kChunk * r), hi = D::load_x(xc + D::kChunk * r + D::kChunk / 2);
    // Opaque to the compiler from here: otherwise GCC folds the loads into every permute that uses
    // them and loads each x chunk WR times again (load-bound, as without the register block).
    asm("" : "+v"(lo), "+v"(hi));
#pragma GCC unroll 2
    for (int j = 0; j < WR; ++j) acc[j][r] = D::madd(acc[j][r], w[j], lo, idx[j], hi);
  }
}

// Lane i of the result: the sum of a[i]'s 16 lanes. A tree of 4 levels, each halving the vectors and
// the lanes each one sums (45 shuffles/adds instead of ~9 per _mm512_reduce_add_ps); it leaves the sum
// of a[4u + k] in lane 4k + u, and one permute puts it in lane 4u + k.
inline __m512 reduce16(const __m512 (&a)[16]) {
  __m512 b[8], c[4], d[2];
#pragma GCC unroll 8
  for (int p = 0; p < 8; ++p) {  // 128-bit blocks [a[2p] 0+2, a[2p] 1+3, a[2p+1] 0+2, a[2p+1] 1+3]
    b[p] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * p], a[2 * p + 1], 0x44),
                         _mm512_shuffle_f32x4(a[2 * p], a[2 * p + 1], 0xEE));
  }
#pragma GCC unroll 4
  for (int q = 0; q < 4; ++q) {  // block k: 4 partial sums of a[4q + k]
    c[q] = _mm512_add_ps(_mm512_shuffle_f32x4(b[2 * q], b[2 * q + 1], 0x88),
                         _mm512_shuffle_f32x4(b[2 * q], b[2 * q + 1], 0xDD));
  }
#pragma GCC unroll 2
  for (int t = 0; t < 2; ++t) {  // block k: 2 partial sums each of a[8t + k], a[8t + 4 + k]
    d[t] = _mm512_add_ps(_mm512_shuffle_ps(c[2 * t], c[2 * t + 1], 0x44),
                         _mm512_shuffle_ps(c[2 * t], c[2 * t + 1], 0xEE));
  }
  // block k: the sums of a[k], a[4 + k], a[8 + k], a[12 + k]
  const __m512 e = _mm512_add_ps(_mm512_shuffle_ps(d[0], d[1], 0x88), _mm512_shuffle_ps(d[0], d[1], 0xDD));
  return _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), e);
}

// The W row pair (values v, meta m, rows vs / ms apart as in block_dot) whose piece block_dot prefetches
// into L2 as it goes, one step of each row per step it computes; v == nullptr: none.
template <class T>
struct PrefetchPair {
  const T* v;
  const uint8_t* m;
};

// Bits of the invalid codes among `bytes` bytes of packed meta (two codes each; 0: all valid). Per nibble
// (f = bits 1:0, s = bits 3:2): (s | 4) - f - 1 = 3 + s - f has bit 2 set iff s > f, and stays within
// its nibble, so byte-wise arithmetic tests both nibbles at once. Lanes past the end read as 0xEE (two
// valid codes).
inline __mmask64 invalid_meta_bytes(const uint8_t* p, int64_t bytes) {
  const __m512i k33 = _mm512_set1_epi8(0x33), k44 = _mm512_set1_epi8(0x44), k11 = _mm512_set1_epi8(0x11);
  __mmask64 bad = 0;
  for (int64_t i = 0; i < bytes; i += 64) {
    const __mmask64 lanes = bytes - i >= 64 ? ~__mmask64{0} : (__mmask64{1} << (bytes - i)) - 1;
    const __m512i v = _mm512_mask_loadu_epi8(_mm512_set1_epi8(static_cast<char>(0xEE)), lanes, p + i);
    const __m512i f = _mm512_and_si512(v, k33), s = _mm512_and_si512(_mm512_srli_epi16(v, 2), k33);
    const __m512i t = _mm512_sub_epi8(_mm512_sub_epi8(_mm512_or_si512(s, k44), f), k11);
    bad |= _mm512_cmpneq_epi8_mask(_mm512_and_si512(t, k44), k44);
  }
  return bad;
}

// Whether one of the `groups` codes at meta (a W row's piece) is invalid; the padding nibble after an
// odd group count is not read. block_dot tests each row's piece this way as it starts on it, so the
// bytes come into L1 right before its own loads read them. Measured against no check (M=1, one thread,
// quiet): fp32 +7-16%, bf16 +19-21%; a scalar test of each step's meta word cost +3-26%; with 2 threads
// streaming from DRAM, within noise.
inline bool invalid_meta_piece(const uint8_t* meta, int64_t groups) {
  if (invalid_meta_bytes(meta, groups / 2) != 0) return true;
  if (groups % 2 == 0) return false;
  const uint8_t last = meta[groups / 2];
  return (last & 3) >= ((last >> 2) & 3);
}

// The permute indices and kept values of a W row's step of `groups` groups (kGroups, or fewer for a
// row's last step, whose bytes past them are not read).
template <class D, bool kFull>
__attribute__((always_inline)) inline void load_step(const typename D::T* v, const uint8_t* meta, int64_t groups,
                                                     typename D::W& w, __m512i& idx) {
  typename D::Word word = 0;
  if constexpr (kFull) {
    std::memcpy(&word, meta, sizeof(word));
  } else {
    for (int64_t b = 0; b < (groups + 1) / 2; ++b) word |= static_cast<typename D::Word>(meta[b]) << (8 * b);
  }
  idx = D::index(word);
  w = kFull ? D::load_w(v) : D::load_w(v, groups);
}

// sums[j * MR + r] = <W row j piece, x row r piece>: W rows at v + j * vs (values) and meta + j * ms,
// K columns (K % 4 == 0); x in the panel layout (linear24_cpu.h), chunks ldc apart. Returns non-zero
// when the rows' meta holds an invalid code (the sums are then garbage; an invalid code still indexes
// within its group, so nothing outside the rows is read).
template <class D, int WR, int MR>
uint64_t block_dot(const typename D::T* v, int64_t vs, const uint8_t* meta, int64_t ms, int64_t K,
               const typename D::X* x, int64_t ldc, float* sums, PrefetchPair<typename D::T> pf) {
  constexpr int kSets = WR * MR <= 8 ? 2 : 1;
  constexpr int64_t kValues = 2 * D::kGroups, kMetaBytes = D::kGroups / 2;
  const int64_t groups = K / 4, steps = groups / D::kGroups, rem = groups % D::kGroups;
  __m512 acc[kSets][WR][MR];
#pragma GCC unroll 2
  for (int s = 0; s < kSets; ++s) {
#pragma GCC unroll 2
    for (int j = 0; j < WR; ++j) {
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) acc[s][j][r] = _mm512_setzero_ps();
    }
  }
  typename D::W w[WR];
  __m512i idx[WR];
  uint64_t bad = 0;
#pragma GCC unroll 2
  for (int j = 0; j < WR; ++j) bad |= invalid_meta_piece(meta + j * ms, groups);
  int64_t c = 0;
  for (; c + kSets <= steps; c += kSets) {
#pragma GCC unroll 2
    for (int s = 0; s < kSets; ++s) {
      if (pf.v != nullptr) {
#pragma GCC unroll 2
        for (int j = 0; j < 2; ++j) {
          _mm_prefetch(reinterpret_cast<const char*>(pf.v + j * vs + kValues * (c + s)), _MM_HINT_T1);
          _mm_prefetch(reinterpret_cast<const char*>(pf.m + j * ms + kMetaBytes * (c + s)), _MM_HINT_T1);
        }
      }
#pragma GCC unroll 2
      for (int j = 0; j < WR; ++j) {
        load_step<D, true>(v + j * vs + kValues * (c + s), meta + j * ms + kMetaBytes * (c + s), D::kGroups, w[j],
                           idx[j]);
      }
      block_step<D, WR, MR>(acc[s], w, idx, x + (c + s) * ldc);
    }
  }
  for (; c < steps; ++c) {
#pragma GCC unroll 2
    for (int j = 0; j < WR; ++j) {
      load_step<D, true>(v + j * vs + kValues * c, meta + j * ms + kMetaBytes * c, D::kGroups, w[j], idx[j]);
    }
    block_step<D, WR, MR>(acc[0], w, idx, x + c * ldc);
  }
  if (rem > 0) {  // the last 1..kGroups-1 groups: masked W loads (the panel's x is zero beyond K)
#pragma GCC unroll 2
    for (int j = 0; j < WR; ++j) {
      load_step<D, false>(v + j * vs + kValues * steps, meta + j * ms + kMetaBytes * steps, rem, w[j], idx[j]);
    }
    block_step<D, WR, MR>(acc[0], w, idx, x + steps * ldc);
  }
  if constexpr (WR * MR == 16) {  // the full block (kSets == 1): one transposing tree for all 16 sums
    _mm512_storeu_ps(sums, reduce16(reinterpret_cast<const __m512(&)[16]>(acc[0])));
  } else {
#pragma GCC unroll 2
    for (int j = 0; j < WR; ++j) {
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) {
        __m512 a = acc[0][j][r];
        if constexpr (kSets == 2) a = _mm512_add_ps(a, acc[1][j][r]);
        sums[j * MR + r] = _mm512_reduce_add_ps(a);
      }
    }
  }
  return bad;
}

// ---- row loops ------------------------------------------------------------------------------------

// Loop order, for the x rows to stay in L1 (48 KB) and W to be read from memory once: blocks of kRowBlock
// W rows; within one, K pieces sized so that 8 x rows of a piece take ~24 KB; within a piece, the x rows
// 8 at a time, and the block's W rows two at a time (their piece, from L2 after the first 8 x rows).
constexpr int64_t kRowBlock = 64;
constexpr int64_t kPieceBytes = 24 * 1024;

// A K piece of a W row is a short stream (~1-6 KB, rows K/2 elements apart) that the hardware
// prefetchers would pick up only after a few misses. It is prefetched kPrefetchPairs row pairs ahead in
// this thread's order of work (pairs, then pieces, then row blocks), spread over the computation of the
// current pair: at M = 8 that took bf16 11008x4096 from ~1.5 to ~1.15 ms (2 threads), where prefetching
// the next pair in one burst before computing left DRAM latency exposed. 2-4 pairs measured alike.
// Into L2, not L1: at M = 1 three fp32 pairs of K = 4096 are 48 KiB, an L1's worth, and prefetching
// them into L1 evicted the pair in use (fp32 4096x4096 M=1, one thread, 5 alternating runs each: 1.8-5.7
// ms with L2 against 6.5-7.2 ms with L1; at M = 8 within noise); the L1 prefetcher takes it from L2.
constexpr int64_t kPrefetchPairs = 3;

// The pair kPrefetchPairs after the one at row n of piece [k0, k0 + kl) of block [nb0, nb1); next_k0: the
// next piece's first column, or -1 after the last piece (then the next block, ending at n_end or before).
template <class T>
PrefetchPair<T> prefetch_target(const T* vp, const uint8_t* mp, int64_t half, int64_t meta_cols, int64_t n,
                                int64_t k0, int64_t next_k0, int64_t nb0, int64_t nb1, int64_t n_end) {
  int64_t row = n + 2 * kPrefetchPairs, col = k0;
  if (row + 1 >= nb1) {  // past this piece's rows: the next piece's, or the next block's (its piece 0)
    if (next_k0 >= 0) {
      row = nb0 + (row - nb1);
      col = next_k0;
    } else {
      col = 0;
    }
  }
  if (row + 1 >= n_end) return {nullptr, nullptr};
  return {vp + row * half + col / 2, mp + row * meta_cols + col / 8};
}

template <class D, int MR>
uint64_t block_piece(const typename D::T* vp, const uint8_t* mp, int64_t half, int64_t meta_cols, int64_t k0, int64_t kl,
                 int64_t next_k0, const typename D::X* x, int64_t ldc, const float* bias, int64_t nb0, int64_t nb1,
                 int64_t n_end, float* z, int64_t ldz) {
  float sums[2 * MR];
  uint64_t bad = 0;
  const typename D::X* xk = x + k0 / D::kChunk * ldc;
  for (int64_t n = nb0; n < nb1; n += 2) {
    const int64_t wr = nb1 - n < 2 ? 1 : 2;
    const auto pf = prefetch_target(vp, mp, half, meta_cols, n, k0, next_k0, nb0, nb1, n_end);
    const typename D::T* v = vp + n * half + k0 / 2;
    const uint8_t* m = mp + n * meta_cols + k0 / 8;
    if (wr == 2) {
      bad |= block_dot<D, 2, MR>(v, half, m, meta_cols, kl, xk, ldc, sums, pf);
    } else {
      bad |= block_dot<D, 1, MR>(v, half, m, meta_cols, kl, xk, ldc, sums, pf);
    }
    for (int64_t j = 0; j < wr; ++j) {
      if (k0 == 0) {
        const float b = bias != nullptr ? bias[n + j] : 0.0f;
        for (int r = 0; r < MR; ++r) z[r * ldz + n + j] = sums[j * MR + r] + b;
      } else {
        for (int r = 0; r < MR; ++r) z[r * ldz + n + j] += sums[j * MR + r];
      }
    }
  }
  return bad;
}

template <class D>
bool rows(const void* values, const uint8_t* meta, int64_t K, const void* xv, int64_t M, const float* bias,
          int64_t n0, int64_t n1, float* z, int64_t ldz) {
  using T = typename D::T;
  using X = typename D::X;
  const T* vp = static_cast<const T*>(values);
  const X* x = static_cast<const X*>(xv);
  const int64_t half = K / 2, meta_cols = (K / 4 + 1) / 2, chunks = (K + D::kChunk - 1) / D::kChunk;
  const int64_t mr_max = M < kPanelRows ? M : kPanelRows;
  // K piece: whole steps (so whole meta bytes), at least 256 columns.
  int64_t piece = static_cast<int64_t>(kPieceBytes / (sizeof(X) * mr_max)) / D::kChunk * D::kChunk;
  piece = piece < 256 ? 256 : piece;
  uint64_t bad = 0;
  for (int64_t nb0 = n0; nb0 < n1; nb0 += kRowBlock) {
    const int64_t nb1 = nb0 + kRowBlock < n1 ? nb0 + kRowBlock : n1;
    for (int64_t k0 = 0; k0 < K; k0 += piece) {
      const int64_t kl = K - k0 < piece ? K - k0 : piece, next_k0 = k0 + kl < K ? k0 + kl : -1;
      for (int64_t m0 = 0; m0 < M; m0 += kPanelRows) {
        const int64_t mb = M - m0 < kPanelRows ? M - m0 : kPanelRows, ldc = mb * D::kChunk;
        const X* xm = x + m0 * chunks * D::kChunk;
        float* zm = z + m0 * ldz;
        switch (mb) {
#define SPARSEOPS_PIECE(R) \
  case R:                                                                                                     \
    bad |= block_piece<D, R>(vp, meta, half, meta_cols, k0, kl, next_k0, xm, ldc, bias, nb0, nb1, n1, zm, ldz); \
    break;
          SPARSEOPS_PIECE(1) SPARSEOPS_PIECE(2) SPARSEOPS_PIECE(3) SPARSEOPS_PIECE(4)
          SPARSEOPS_PIECE(5) SPARSEOPS_PIECE(6) SPARSEOPS_PIECE(7) SPARSEOPS_PIECE(8)
#undef SPARSEOPS_PIECE
          default: break;
        }
      }
    }
  }
  return bad == 0;
}

// ---- decompression of W row blocks (the large-M path's dense tiles) --------------------------------
// Dense lane j: group g = j / 4, position p = j % 4, kept iff p is the group's first (value lane 2g)
// or second (2g + 1) index: one zero-masking single-source permute per output vector.

// fp32: 16 dense lanes from the 4 groups whose codes are meta16's nibbles; src_base: lane of their
// first value in w.
inline __m512 dense16_f32(__m512 w, uint32_t meta16, int src_base) {
  const __m512i shifts = _mm512_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4, 8, 8, 8, 8, 12, 12, 12, 12);
  const __m512i pos = _mm512_setr_epi32(0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3);
  const __m512i base = _mm512_add_epi32(_mm512_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2, 4, 4, 4, 4, 6, 6, 6, 6),
                                        _mm512_set1_epi32(src_base));
  const __m512i three = _mm512_set1_epi32(3);
  const __m512i codes = _mm512_srlv_epi32(_mm512_set1_epi32(static_cast<int>(meta16)), shifts);
  const __mmask16 k1 = _mm512_cmpeq_epi32_mask(_mm512_and_si512(codes, three), pos);
  const __mmask16 k2 = _mm512_cmpeq_epi32_mask(_mm512_and_si512(_mm512_srli_epi32(codes, 2), three), pos);
  const __m512i idx = _mm512_mask_add_epi32(base, k2, base, _mm512_set1_epi32(1));
  return _mm512_maskz_permutexvar_ps(static_cast<__mmask16>(k1 | k2), idx, w);
}

// 16-bit: 32 dense lanes (groups 8h..8h+7 of a 16-group step) from meta bytes 4h..4h+3 of meta8.
struct Dense16Consts {
  alignas(64) uint16_t ctrl[2][32];  // vpshufb: 16-bit lane j gets meta byte 4h + j / 8 (high byte zeroed)
  alignas(64) uint16_t shifts[32];   // 4 * ((j / 4) % 2): the group's nibble within its byte
  alignas(64) uint16_t pos[32];      // j % 4
  alignas(64) uint16_t base[2][32];  // 16h + 2 * (j / 4): the group's first value lane in w
  constexpr Dense16Consts() : ctrl(), shifts(), pos(), base() {
    for (int h = 0; h < 2; ++h) {
      for (int j = 0; j < 32; ++j) {
        ctrl[h][j] = static_cast<uint16_t>((4 * h + j / 8) | (0x80 << 8));
        base[h][j] = static_cast<uint16_t>(16 * h + 2 * (j / 4));
      }
    }
    for (int j = 0; j < 32; ++j) {
      shifts[j] = static_cast<uint16_t>(4 * ((j / 4) % 2));
      pos[j] = static_cast<uint16_t>(j % 4);
    }
  }
};
constexpr Dense16Consts kDense16{};

inline __m512i dense32_16bit(__m512i w, uint64_t meta8, int h) {
  const __m512i bytes = _mm512_shuffle_epi8(_mm512_set1_epi64(static_cast<long long>(meta8)),
                                            _mm512_load_si512(kDense16.ctrl[h]));
  const __m512i codes = _mm512_srlv_epi16(bytes, _mm512_load_si512(kDense16.shifts));
  const __m512i three = _mm512_set1_epi16(3), pos = _mm512_load_si512(kDense16.pos);
  const __mmask32 k1 = _mm512_cmpeq_epi16_mask(_mm512_and_si512(codes, three), pos);
  const __mmask32 k2 = _mm512_cmpeq_epi16_mask(_mm512_and_si512(_mm512_srli_epi16(codes, 2), three), pos);
  const __m512i base = _mm512_load_si512(kDense16.base[h]);
  const __m512i idx = _mm512_mask_add_epi16(base, k2, base, _mm512_set1_epi16(1));
  return _mm512_maskz_permutexvar_epi16(static_cast<__mmask32>(k1 | k2), idx, w);
}

template <typename T>
void decompress_tail(const T* v, const uint8_t* meta, int64_t g0, int64_t groups, T* d) {
  for (int64_t g = g0; g < groups; ++g) {
    const int code = (meta[g / 2] >> (4 * (g % 2))) & 0xF;
    d[4 * g] = d[4 * g + 1] = d[4 * g + 2] = d[4 * g + 3] = T(0);
    d[4 * g + (code & 3)] = v[2 * g];
    d[4 * g + ((code >> 2) & 3)] = v[2 * g + 1];
  }
}

void decompress_f32(const float* vp, const uint8_t* mp, int64_t K, int64_t n0, int64_t rows, float* dense) {
  const int64_t half = K / 2, meta_cols = (K / 4 + 1) / 2, groups = K / 4, steps = groups / 8;
  for (int64_t r = 0; r < rows; ++r) {
    const float* v = vp + (n0 + r) * half;
    const uint8_t* m = mp + (n0 + r) * meta_cols;
    float* d = dense + r * K;
    for (int64_t c = 0; c < steps; ++c) {
      uint32_t meta4;
      std::memcpy(&meta4, m + 4 * c, 4);
      const __m512 w = _mm512_loadu_ps(v + 16 * c);
      _mm512_storeu_ps(d + 32 * c, dense16_f32(w, meta4 & 0xFFFF, 0));
      _mm512_storeu_ps(d + 32 * c + 16, dense16_f32(w, meta4 >> 16, 8));
    }
    decompress_tail(v, m, 8 * steps, groups, d);
  }
}

void decompress_16bit(const uint16_t* vp, const uint8_t* mp, int64_t K, int64_t n0, int64_t rows, uint16_t* dense) {
  const int64_t half = K / 2, meta_cols = (K / 4 + 1) / 2, groups = K / 4, steps = groups / 16;
  for (int64_t r = 0; r < rows; ++r) {
    const uint16_t* v = vp + (n0 + r) * half;
    const uint8_t* m = mp + (n0 + r) * meta_cols;
    uint16_t* d = dense + r * K;
    for (int64_t c = 0; c < steps; ++c) {
      uint64_t meta8;
      std::memcpy(&meta8, m + 8 * c, 8);
      const __m512i w = _mm512_loadu_si512(v + 32 * c);
      _mm512_storeu_si512(d + 64 * c, dense32_16bit(w, meta8, 0));
      _mm512_storeu_si512(d + 64 * c + 32, dense32_16bit(w, meta8, 1));
    }
    decompress_tail(v, m, 16 * steps, groups, d);
  }
}

}  // namespace

bool linear24_rows_avx512(ElemType type, const void* values, const uint8_t* meta, int64_t K, const void* x,
                          int64_t M, const float* bias, int64_t n0, int64_t n1, float* z, int64_t ldz) {
  switch (type) {
    case ElemType::kFloat: return rows<PermScheme<float>>(values, meta, K, x, M, bias, n0, n1, z, ldz);
    case ElemType::kHalf: return rows<PermScheme<uint16_t>>(values, meta, K, x, M, bias, n0, n1, z, ldz);
    case ElemType::kBFloat16: return rows<PairScheme>(values, meta, K, x, M, bias, n0, n1, z, ldz);
  }
  return false;
}

bool packed_meta_bytes_valid_avx512(const uint8_t* p, int64_t bytes) { return invalid_meta_bytes(p, bytes) == 0; }

void linear24_decompress_rows_avx512(ElemType type, const void* values, const uint8_t* meta, int64_t K, int64_t n0,
                                     int64_t rows, void* dense) {
  if (type == ElemType::kFloat) {
    decompress_f32(static_cast<const float*>(values), meta, K, n0, rows, static_cast<float*>(dense));
  } else {  // fp16 / bf16: the same bits move
    decompress_16bit(static_cast<const uint16_t*>(values), meta, K, n0, rows, static_cast<uint16_t*>(dense));
  }
}

}  // namespace sparseops::sparse24
