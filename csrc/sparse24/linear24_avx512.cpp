// sparse24_linear on CPU, AVX-512 small-M kernel (this file is compiled with -mavx512f/bw/vl/dq/bf16
// -mfma -mf16c; linear24_cpu.cpp calls it only when sparseops::cpu_use_avx512()).
//
// fp32 / fp16 weights ("perm scheme"), per W row, 8 groups at a time (32 input columns, 16 kept
// values, 4 meta bytes): the 4 meta bytes become a 16-lane index vector, lane 2g+s = 4g + (index s of group g), computed with one variable
// shift (the code of lane l sits at bits 2l..2l+1 of the 4 bytes read as a little-endian word). Each x
// row then contributes values * permutex2var(x[0:16], idx, x[16:32]) to its accumulator. The index
// vector and the converted values serve all M rows (up to 8 per pass), so W is streamed once.
// bf16 weights ("pair scheme", below): 64 columns per step, x kept in bf16, vdpbf16ps.
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

struct LoadF32 {
  using T = float;
  static __m512 load(const float* p) { return _mm512_loadu_ps(p); }
  static __m512 load(const float* p, __mmask16 k) { return _mm512_maskz_loadu_ps(k, p); }
};

struct LoadF16 {
  using T = uint16_t;
  static __m512 load(const uint16_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static __m512 load(const uint16_t* p, __mmask16 k) { return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, p)); }
};

// Lane 2g+s: 4g + bits [4g+2s, 4g+2s+1] of meta4 = 4 * (l / 2) + ((meta4 >> 2l) & 3).
inline __m512i chunk_index(uint32_t meta4) {
  const __m512i shifts = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i base = _mm512_setr_epi32(0, 0, 4, 4, 8, 8, 12, 12, 16, 16, 20, 20, 24, 24, 28, 28);
  const __m512i codes = _mm512_srlv_epi32(_mm512_set1_epi32(static_cast<int>(meta4)), shifts);
  return _mm512_add_epi32(_mm512_and_si512(codes, _mm512_set1_epi32(3)), base);
}

template <class L, int MR>
inline void chunk_step(const typename L::T* v, const uint8_t* meta, const float* x, int64_t ldx, int64_t c,
                       __m512 (&acc)[MR]) {
  uint32_t meta4;
  std::memcpy(&meta4, meta + 4 * c, 4);
  const __m512i idx = chunk_index(meta4);
  const __m512 w = L::load(v + 16 * c);
  const float* xc = x + 32 * c;
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    const float* xr = xc + r * ldx;
    const __m512 xg = _mm512_permutex2var_ps(_mm512_loadu_ps(xr), idx, _mm512_loadu_ps(xr + 16));
    acc[r] = _mm512_fmadd_ps(w, xg, acc[r]);
  }
}

// sums[r] = <W row piece, x row r piece> for r < MR: K columns (K % 4 == 0), x rows ldx apart.
template <class L, int MR>
void row_dot(const typename L::T* v, const uint8_t* meta, int64_t K, const float* x, int64_t ldx, float* sums) {
  const int64_t groups = K / 4, chunks = groups / 8, rem = groups % 8;
  __m512 a0[MR], a1[MR];
  for (int r = 0; r < MR; ++r) a0[r] = a1[r] = _mm512_setzero_ps();
  int64_t c = 0;
  for (; c + 1 < chunks; c += 2) {  // two accumulator sets: two independent FMA chains per row
    chunk_step<L, MR>(v, meta, x, ldx, c, a0);
    chunk_step<L, MR>(v, meta, x, ldx, c + 1, a1);
  }
  if (c < chunks) chunk_step<L, MR>(v, meta, x, ldx, c, a0);
  if (rem > 0) {  // the last 1..7 groups: masked loads (zeros beyond the row), same index maths
    uint32_t meta4 = 0;
    for (int64_t b = 0; b < (rem + 1) / 2; ++b) meta4 |= static_cast<uint32_t>(meta[4 * chunks + b]) << (8 * b);
    const __m512i idx = chunk_index(meta4);
    const int64_t cols = 4 * rem;
    const __mmask16 kv = static_cast<__mmask16>((1u << (2 * rem)) - 1);
    const __mmask16 klo = static_cast<__mmask16>(cols >= 16 ? 0xFFFFu : (1u << cols) - 1);
    const __mmask16 khi = static_cast<__mmask16>(cols > 16 ? (1u << (cols - 16)) - 1 : 0u);
    const __m512 w = L::load(v + 16 * chunks, kv);
    const float* xc = x + 32 * chunks;
    for (int r = 0; r < MR; ++r) {
      const float* xr = xc + r * ldx;
      const __m512 xg = _mm512_permutex2var_ps(_mm512_maskz_loadu_ps(klo, xr), idx, _mm512_maskz_loadu_ps(khi, xr + 16));
      a0[r] = _mm512_fmadd_ps(w, xg, a0[r]);
    }
  }
  for (int r = 0; r < MR; ++r) sums[r] = _mm512_reduce_add_ps(_mm512_add_ps(a0[r], a1[r]));
}

// ---- bf16: pairs of kept values meet pairs of gathered x in one vdpbf16ps ------------------------
// 16 groups per step (64 columns, 32 kept values, 8 meta bytes). The values are already laid out as
// one (first, second) bf16 pair per group; a two-source 16-bit permute gathers the matching
// (x[4g + first], x[4g + second]) pair from x's 64 columns, and vdpbf16ps multiplies the pairs and adds
// both products into one fp32 lane: 32 multiply-adds per permute + dot, twice the fp32 scheme's.
struct PairIndexConsts {
  alignas(64) uint16_t ctrl[32];   // vpshufb control: 16-bit lane l gets meta word l / 8
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
  return _mm512_add_epi16(_mm512_and_si512(codes, _mm512_set1_epi16(3)), _mm512_load_si512(kPair.base));
}

inline __m512 dot_pairs(__m512 acc, __m512i values, __m512i x_pairs) {
  return _mm512_dpbf16_ps(acc, (__m512bh)values, (__m512bh)x_pairs);
}

template <int MR>
void row_dot_bf16(const uint16_t* v, const uint8_t* meta, int64_t K, const uint16_t* x, int64_t ldx, float* sums) {
  const int64_t groups = K / 4, chunks = groups / 16, rem = groups % 16;
  __m512 a0[MR], a1[MR];
  for (int r = 0; r < MR; ++r) a0[r] = a1[r] = _mm512_setzero_ps();
  auto step = [&](int64_t c, __m512(&acc)[MR]) {
    uint64_t meta8;
    std::memcpy(&meta8, meta + 8 * c, 8);
    const __m512i idx = pair_index(meta8);
    const __m512i w = _mm512_loadu_si512(v + 32 * c);
    const uint16_t* xc = x + 64 * c;
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const uint16_t* xr = xc + r * ldx;
      const __m512i xg = _mm512_permutex2var_epi16(_mm512_loadu_si512(xr), idx, _mm512_loadu_si512(xr + 32));
      acc[r] = dot_pairs(acc[r], w, xg);
    }
  };
  int64_t c = 0;
  for (; c + 1 < chunks; c += 2) {
    step(c, a0);
    step(c + 1, a1);
  }
  if (c < chunks) step(c, a0);
  if (rem > 0) {  // the last 1..15 groups: masked loads (zeros beyond the row)
    uint64_t meta8 = 0;
    for (int64_t b = 0; b < (rem + 1) / 2; ++b) meta8 |= static_cast<uint64_t>(meta[8 * chunks + b]) << (8 * b);
    const __m512i idx = pair_index(meta8);
    const int64_t cols = 4 * rem;
    const __mmask32 kv = static_cast<__mmask32>((1ull << (2 * rem)) - 1);
    const __mmask32 klo = static_cast<__mmask32>(cols >= 32 ? 0xFFFFFFFFull : (1ull << cols) - 1);
    const __mmask32 khi = static_cast<__mmask32>(cols > 32 ? (1ull << (cols - 32)) - 1 : 0ull);
    const __m512i w = _mm512_maskz_loadu_epi16(kv, v + 32 * chunks);
    const uint16_t* xc = x + 64 * chunks;
    for (int r = 0; r < MR; ++r) {
      const uint16_t* xr = xc + r * ldx;
      const __m512i xg = _mm512_permutex2var_epi16(_mm512_maskz_loadu_epi16(klo, xr), idx,
                                                   _mm512_maskz_loadu_epi16(khi, xr + 32));
      a0[r] = dot_pairs(a0[r], w, xg);
    }
  }
  for (int r = 0; r < MR; ++r) sums[r] = _mm512_reduce_add_ps(_mm512_add_ps(a0[r], a1[r]));
}

// ---- row loops ------------------------------------------------------------------------------------

// The two schemes behind one interface: D::T (values), D::X (x), D::kChunk (columns per step).
template <class L>
struct PermScheme {
  using T = typename L::T;
  using X = float;
  static constexpr int64_t kChunk = 32;
  template <int MR>
  static void dot(const T* v, const uint8_t* meta, int64_t K, const X* x, int64_t ldx, float* sums) {
    row_dot<L, MR>(v, meta, K, x, ldx, sums);
  }
};

struct PairScheme {
  using T = uint16_t;
  using X = uint16_t;
  static constexpr int64_t kChunk = 64;
  template <int MR>
  static void dot(const T* v, const uint8_t* meta, int64_t K, const X* x, int64_t ldx, float* sums) {
    row_dot_bf16<MR>(v, meta, K, x, ldx, sums);
  }
};

// Loop order, for the x rows to stay in L1 (48 KB) and W to be read from memory once: blocks of kRowBlock
// W rows; within one, K pieces sized so that 8 x rows of a piece take ~24 KB; within a piece, the x rows
// 8 at a time, and the block's W rows (their piece, from L2 after the first 8 x rows).
constexpr int64_t kRowBlock = 64;

// A K piece of a W row is a short stream (~1-6 KB, rows K/2 elements apart) that the hardware
// prefetchers would pick up only after a few misses; it is prefetched one row ahead instead.
inline void prefetch_bytes(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t o = 0; o < bytes; o += 64) _mm_prefetch(c + o, _MM_HINT_T0);
}

template <class D, int MR>
void block_piece(const typename D::T* vp, const uint8_t* mp, int64_t half, int64_t meta_cols, int64_t k0, int64_t kl,
                 const typename D::X* x, int64_t ldx, const float* bias, int64_t nb0, int64_t nb1, float* z,
                 int64_t ldz) {
  float sums[MR];
  for (int64_t n = nb0; n < nb1; ++n) {
    if (n + 1 < nb1) {
      prefetch_bytes(vp + (n + 1) * half + k0 / 2, kl / 2 * static_cast<int64_t>(sizeof(typename D::T)));
      prefetch_bytes(mp + (n + 1) * meta_cols + k0 / 8, kl / 8);
    }
    D::template dot<MR>(vp + n * half + k0 / 2, mp + n * meta_cols + k0 / 8, kl, x + k0, ldx, sums);
    if (k0 == 0) {
      const float b = bias != nullptr ? bias[n] : 0.0f;
      for (int r = 0; r < MR; ++r) z[r * ldz + n] = sums[r] + b;
    } else {
      for (int r = 0; r < MR; ++r) z[r * ldz + n] += sums[r];
    }
  }
}

template <class D>
void rows(const void* values, const uint8_t* meta, int64_t K, const void* xv, int64_t ldx, int64_t M,
          const float* bias, int64_t n0, int64_t n1, float* z, int64_t ldz) {
  using T = typename D::T;
  using X = typename D::X;
  const T* vp = static_cast<const T*>(values);
  const X* x = static_cast<const X*>(xv);
  const int64_t half = K / 2, meta_cols = (K / 4 + 1) / 2;
  const int64_t mr_max = M < 8 ? M : 8;
  // K piece: whole steps (so whole meta bytes), at least 256 columns.
  int64_t piece = static_cast<int64_t>(24 * 1024 / (sizeof(X) * mr_max)) / D::kChunk * D::kChunk;
  piece = piece < 256 ? 256 : piece;
  for (int64_t nb0 = n0; nb0 < n1; nb0 += kRowBlock) {
    const int64_t nb1 = nb0 + kRowBlock < n1 ? nb0 + kRowBlock : n1;
    for (int64_t k0 = 0; k0 < K; k0 += piece) {
      const int64_t kl = K - k0 < piece ? K - k0 : piece;
      for (int64_t m0 = 0; m0 < M; m0 += 8) {
        const int64_t mb = M - m0 < 8 ? M - m0 : 8;
        const X* xm = x + m0 * ldx;
        float* zm = z + m0 * ldz;
        switch (mb) {
#define SPARSEOPS_PIECE(R) \
  case R: block_piece<D, R>(vp, meta, half, meta_cols, k0, kl, xm, ldx, bias, nb0, nb1, zm, ldz); break;
          SPARSEOPS_PIECE(1) SPARSEOPS_PIECE(2) SPARSEOPS_PIECE(3) SPARSEOPS_PIECE(4)
          SPARSEOPS_PIECE(5) SPARSEOPS_PIECE(6) SPARSEOPS_PIECE(7) SPARSEOPS_PIECE(8)
#undef SPARSEOPS_PIECE
          default: break;
        }
      }
    }
  }
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

void linear24_rows_avx512(ElemType type, const void* values, const uint8_t* meta, int64_t K, const void* x,
                          int64_t ldx, int64_t M, const float* bias, int64_t n0, int64_t n1, float* z, int64_t ldz) {
  switch (type) {
    case ElemType::kFloat: rows<PermScheme<LoadF32>>(values, meta, K, x, ldx, M, bias, n0, n1, z, ldz); break;
    case ElemType::kHalf: rows<PermScheme<LoadF16>>(values, meta, K, x, ldx, M, bias, n0, n1, z, ldz); break;
    case ElemType::kBFloat16: rows<PairScheme>(values, meta, K, x, ldx, M, bias, n0, n1, z, ldz); break;
  }
}

void linear24_decompress_rows_avx512(ElemType type, const void* values, const uint8_t* meta, int64_t K, int64_t n0,
                                     int64_t rows, void* dense) {
  if (type == ElemType::kFloat) {
    decompress_f32(static_cast<const float*>(values), meta, K, n0, rows, static_cast<float*>(dense));
  } else {  // fp16 / bf16: the same bits move
    decompress_16bit(static_cast<const uint16_t*>(values), meta, K, n0, rows, static_cast<uint16_t*>(dense));
  }
}

}  // namespace sparseops::sparse24
