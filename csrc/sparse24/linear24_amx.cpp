// sparse24_linear on CPU, bf16 small-M kernel on AMX tiles (this file is compiled with the AVX-512 flags
// plus -mavx512vbmi2 -mamx-tile -mamx-bf16; linear24_cpu.cpp calls it only when cpu_use_amx_bf16()).
//
// z^T = W x^T one 16 x 16 output tile at a time: A = 16 rows of W decompressed to dense bf16 (16 rows x 32
// columns, row-major, which is what TDPBF16PS takes as its first source), B = x^T in the VNNI layout that
// pack_x_amx_bf16 writes once per call (K pair k of 16 x rows), C = 16 W rows x 16 x rows in fp32. The
// decompression is one VPEXPANDW per W row and 32 columns: the kept values expanded into the positions that
// the meta nibbles name (a 16-entry vpshufb table maps a nibble to its 4-bit position mask). So the work per
// weight element no longer grows with M: one decompression serves up to 64 rows of x (4 C tiles), where
// the AVX-512 pair scheme does one permute + dot per x row (at M = 8 that kernel ran at ~40% of the read
// limit on a Sapphire Rapids class Xeon, 0.5x oneDNN's dense AMX GEMV; this one 2x that, at M = 64 ~5x).
// A code whose first index is not below its second maps to an empty mask: one vector test per row chunk
// is the meta check that the other kernels do.
// Pruned positions are multiplied by an explicit zero: the caller restores structural inf/NaN rows.
// Measured bound at M <= 16: the memory access of its 16 interleaved row streams (~15-17 GB/s a core with
// the products and expansions left out), not the tile products.
//
// No torch headers here (see linear24_cpu.h).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cstring>

#include "common/amx_tiles.h"
#include "common/simd_transpose_avx512.h"
#include "sparse24/linear24_cpu.h"

namespace sparseops::sparse24 {
namespace {

using namespace sparseops::amx;
using sparseops::simd::transpose16x16_epi32;

constexpr int64_t kStep = 32;        // K columns per tile step: 16 bf16 pairs, a 64-byte tile row
constexpr int64_t kTile = 16;        // rows of every tile; C is 16 x 16 fp32
constexpr int64_t kChunkCols = 256;  // K columns of a W row decompressed at a time (8 steps, 512 bytes)
constexpr int64_t kTileElems = kTile * kStep;  // bf16 elements of one A or B tile (1 KiB)

// Positions of the kept values of a 2:4 code (f = bits 1:0, s = bits 3:2): bits f and s, or 0 for a code
// with f >= s, so that an invalid code shows as an empty mask. Indexed per byte by vpshufb (16 entries,
// repeated in each 128-bit lane).
struct NibbleMasks {
  alignas(32) uint8_t m[32];
  constexpr NibbleMasks() : m() {
    for (int i = 0; i < 32; ++i) {
      const int code = i % 16, f = code & 3, s = code >> 2;
      m[i] = static_cast<uint8_t>(f < s ? (1 << f) | (1 << s) : 0);
    }
  }
};
constexpr NibbleMasks kNibbleMasks{};

// The 32-bit position masks of the steps of columns [0, cols) of a W row (meta bytes m; cols % 4 == 0,
// <= kChunkCols), all from the (up to 32) meta bytes at once by two vpshufb table lookups; masks of a
// last partial step hold its codes only. Returns non-zero when a code is invalid (an empty mask).
inline uint32_t row_masks(const uint8_t* m, int64_t cols, uint32_t* masks) {
  const int64_t groups = cols / 4, bytes = (groups + 1) / 2;
  const __mmask32 lo_codes = static_cast<__mmask32>((uint64_t{1} << bytes) - 1);       // bytes with a low code
  const __mmask32 hi_codes = static_cast<__mmask32>((uint64_t{1} << (groups / 2)) - 1);  // ... and a high one
  const __m256i meta = _mm256_maskz_loadu_epi8(lo_codes, m), nib = _mm256_set1_epi8(0x0F);
  const __m256i table = _mm256_load_si256(reinterpret_cast<const __m256i*>(kNibbleMasks.m));
  const __m256i lo = _mm256_shuffle_epi8(table, _mm256_and_si256(meta, nib));
  const __m256i hi = _mm256_maskz_shuffle_epi8(hi_codes, table, _mm256_and_si256(_mm256_srli_epi16(meta, 4), nib));
  // hi < 16: the 16-bit shift keeps each byte's bits within it
  _mm256_store_si256(reinterpret_cast<__m256i*>(masks), _mm256_or_si256(lo, _mm256_slli_epi16(hi, 4)));
  return (_mm256_testn_epi8_mask(lo, lo) & lo_codes) | (_mm256_testn_epi8_mask(hi, hi) & hi_codes);
}

// ---- tiles (common/amx_tiles.h: tmm0-1 A, tmm2-3 B, tmm4-7 C) ------------------------------------------

// One block of NB * 16 W rows [n, n + rows) against x blocks [mb0, mb0 + MBK) (16 rows each): C tiles
// held over all of K, A refilled every kChunkCols columns. Returns non-zero on an invalid meta code.
template <int NB, int MBK>
uint32_t tile_block(const uint16_t* vp, const uint8_t* mp, int64_t K, const uint16_t* xpk, int64_t mblocks, int64_t mb0,
                    int64_t M, const float* bias, int64_t n, int64_t rows, float* z, int64_t ldz) {
  static_assert(NB * MBK <= 4, "four C tiles");
  const int64_t half = K / 2, meta_cols = (K / 4 + 1) / 2;
  alignas(64) uint16_t abuf[NB * kTile * kChunkCols];
  alignas(64) float cbuf[kTile * kTile];
  alignas(32) uint32_t masks[NB * kTile][kChunkCols / kStep];
  alignas(64) static const uint16_t zeros[kChunkCols / 2] = {};  // the values of rows past the block's end
  const uint16_t* values[NB * kTile];
  uint32_t bad = 0;
  for (int c = 0; c < NB * MBK; ++c) zero_acc(4 + c);
  for (int64_t k0 = 0; k0 < K; k0 += kChunkCols) {
    const int64_t cols = K - k0 < kChunkCols ? K - k0 : kChunkCols, full = cols / kStep;
    const int64_t tail = (cols % kStep) / 4, steps = full + (tail > 0);  // tail: codes of a last partial step
    for (int64_t r = 0; r < NB * kTile; ++r) {
      if (r < rows) {
        values[r] = vp + (n + r) * half + k0 / 2;
        const uint8_t* m = mp + (n + r) * meta_cols + k0 / 8;
        if (k0 + kChunkCols < K) {  // this row's next chunk, needed one chunk of the block from now
          for (int64_t line = 0; line < kChunkCols * 2 / 2; line += 64) {
            _mm_prefetch(reinterpret_cast<const char*>(values[r] + kChunkCols / 2) + line, _MM_HINT_T1);
          }
          _mm_prefetch(reinterpret_cast<const char*>(m + kChunkCols / 8), _MM_HINT_T1);
        }
        bad |= row_masks(m, cols, masks[r]);
      } else {
        values[r] = zeros;
        for (int64_t s = 0; s < steps; ++s) masks[r][s] = 0;
      }
    }
    // Step by step: the rows' expansions of step s (plain stores), then the tile products of step s - 1,
    // whose stores have drained by then (a tile load does not take data from the store buffer).
    for (int64_t s = 0; s <= steps; ++s) {
      if (s < steps) {
        const __mmask16 part = static_cast<__mmask16>(s < full ? 0xFFFF : (1u << (2 * tail)) - 1);
        for (int64_t r = 0; r < NB * kTile; ++r) {
          const __m512i w = _mm512_zextsi256_si512(_mm256_maskz_loadu_epi16(part, values[r] + 16 * s));
          _mm512_store_si512(abuf + r * kChunkCols + kStep * s, _mm512_maskz_expand_epi16(masks[r][s], w));
        }
      }
      memory_barrier();
      if (s > 0) {
        const int64_t t = s - 1;
        for (int b = 0; b < NB; ++b) load_source(b, abuf + b * kTile * kChunkCols + t * kStep, kChunkCols * 2);
        const uint16_t* xs = xpk + ((k0 / kStep + t) * mblocks + mb0) * kTileElems;
        for (int mb = 0; mb < MBK; ++mb) {
          load_source(2 + mb % 2, xs + mb * kTileElems, 64);
          for (int b = 0; b < NB; ++b) dot_bf16(4 + b * MBK + mb, b, 2 + mb % 2);
        }
      }
      memory_barrier();
    }
  }
  // z rows get 16 W rows' sums at once: the C tile (W row i, x row j) transposed in registers.
  for (int b = 0; b < NB; ++b) {
    const int64_t nb = n + b * kTile, valid = rows - b * kTile < kTile ? rows - b * kTile : kTile;
    if (valid <= 0) break;
    const __mmask16 lanes = static_cast<__mmask16>((1u << valid) - 1);
    const __m512 bv = bias != nullptr ? _mm512_maskz_loadu_ps(lanes, bias + nb) : _mm512_setzero_ps();
    for (int mb = 0; mb < MBK; ++mb) {
      store_acc(4 + b * MBK + mb, cbuf, 64);
      memory_barrier();
      __m512i r[kTile];
      for (int i = 0; i < kTile; ++i) r[i] = _mm512_load_si512(cbuf + i * kTile);
      transpose16x16_epi32(r);
      const int64_t m0 = (mb0 + mb) * kTile;
      for (int64_t j = 0; j < kTile && m0 + j < M; ++j) {
        _mm512_mask_storeu_ps(z + (m0 + j) * ldz + nb, lanes, _mm512_add_ps(_mm512_castsi512_ps(r[j]), bv));
      }
    }
  }
  return bad;
}

}  // namespace

void pack_x_amx_bf16(const uint16_t* x, int64_t M, int64_t K, int64_t step0, int64_t step1, uint16_t* packed) {
  const int64_t mblocks = (M + kTile - 1) / kTile, pairs = K / 2;
  for (int64_t s = step0; s < step1; ++s) {
    const int64_t p0 = s * kTile, np = pairs - p0 < kTile ? pairs - p0 : kTile;  // K pairs of this step
    const __mmask16 lanes = static_cast<__mmask16>((1u << np) - 1);
    for (int64_t mb = 0; mb < mblocks; ++mb) {
      __m512i r[16];
      for (int64_t j = 0; j < kTile; ++j) {
        const int64_t m = mb * kTile + j;
        r[j] = m < M ? _mm512_maskz_loadu_epi32(lanes, x + m * K + 2 * p0) : _mm512_setzero_si512();
      }
      transpose16x16_epi32(r);  // r[k] lane j: pair k of x row 16 mb + j
      uint16_t* tile = packed + (s * mblocks + mb) * kTileElems;
      for (int64_t k = 0; k < kTile; ++k) _mm512_store_si512(tile + k * kStep, r[k]);
    }
  }
}

bool linear24_rows_amx_bf16(const uint16_t* values, const uint8_t* meta, int64_t K, const uint16_t* xpacked, int64_t M,
                            const float* bias, int64_t n0, int64_t n1, float* z, int64_t ldz) {
  configure_tiles();
  const int64_t mblocks = (M + kTile - 1) / kTile;
  uint32_t bad = 0;
  // Passes of up to 4 x blocks (64 rows) over this thread's W rows. With 2 x blocks, 2 W blocks at a time
  // (each B load then serves two products); with 1, one W block (16 rows): its 16 row streams read
  // memory 5-10% faster than 32 (M = 4-16, 2 threads).
  for (int64_t mb0 = 0; mb0 < mblocks; mb0 += 4) {
    const int64_t mbk = mblocks - mb0 < 4 ? mblocks - mb0 : 4;
    const int64_t block = mbk == 2 ? 2 * kTile : kTile;
    for (int64_t n = n0; n < n1; n += block) {
      const int64_t rows = n1 - n < block ? n1 - n : block;
      switch (mbk) {
        case 1: bad |= tile_block<1, 1>(values, meta, K, xpacked, mblocks, mb0, M, bias, n, rows, z, ldz); break;
        case 2: bad |= tile_block<2, 2>(values, meta, K, xpacked, mblocks, mb0, M, bias, n, rows, z, ldz); break;
        case 3: bad |= tile_block<1, 3>(values, meta, K, xpacked, mblocks, mb0, M, bias, n, rows, z, ldz); break;
        default: bad |= tile_block<1, 4>(values, meta, K, xpacked, mblocks, mb0, M, bias, n, rows, z, ldz); break;
      }
    }
  }
  _tile_release();
  return bad == 0;
}

}  // namespace sparseops::sparse24
