// AMX attention micro-kernel (compiled with the AVX-512 flags plus -mamx-tile -mamx-bf16; attention_cpu.cpp
// uses this set only when sparseops::cpu_use_amx_bf16()): the AVX-512 set with its bf16 product (q K^T and
// P V of the bf16 forward) on AMX tiles. The operands are already in AMX's layouts: A is [M x K2 pairs],
// i.e. row-major bf16, and B is [K2 pairs x N], pairs along the reduction dim (the VNNI layout). On a
// Sapphire Rapids class Xeon torch's dense SDPA runs its bf16 products on AMX (500-740 GFLOP/s on two
// cores at S = 1024) while the AVX-512 VDPBF16PS product ran at ~150, so sparse attention lost to dense
// SDPA in bf16 at up to ~80% of blocks dropped.
// Tiles: common/amx_tiles.h (tmm0 A, tmm2-3 B, tmm4-7 four 16 x 16 C tiles: up to 64 columns per pass).
// No torch headers (see attention_microkernels.h).
#include <immintrin.h>

#include <cstring>

#include "attention/attention_microkernels.h"
#include "common/amx_tiles.h"

namespace sparseops::attention::cpu {
namespace {

using namespace sparseops::amx;

constexpr int64_t kPairs = kTileBytes / 4;  // pairs per tile row (16), and C columns per tile (16 fp32)

// Rows [0, rows) x pairs [0, pairs) of a pair matrix (row stride ld, uint32 elements) into a full zero-
// padded 16 x 16 tile buffer, for the partial tiles at a matrix's edge (a tile load of 16 x 64 bytes there
// would read past the matrix).
inline void pad_tile(const uint32_t* src, int64_t ld, int64_t rows, int64_t pairs, uint32_t* tile) {
  const __mmask16 lanes = static_cast<__mmask16>((1u << pairs) - 1);
  for (int64_t r = 0; r < kTileRows; ++r) {
    const __m512i v = r < rows ? _mm512_maskz_loadu_epi32(lanes, src + r * ld) : _mm512_setzero_si512();
    _mm512_store_si512(tile + r * kPairs, v);
  }
}

// C[M x N] = out_scale * (A B), or C += A B (the contract in attention_microkernels.h; N % 16 == 0).
void gemm_bf16_amx(int64_t M, int64_t N, int64_t K2, const uint32_t* A, int64_t lda, const uint32_t* B, int64_t ldb,
                   float* C, int64_t ldc, bool accumulate, float out_scale) {
  alignas(64) uint32_t abuf[kTileRows * kPairs];
  alignas(64) uint32_t bbuf[2][kTileRows * kPairs];
  alignas(64) float cbuf[4][kTileRows * kPairs];
  ensure_tiles_configured();  // left configured: the caller runs release_tiles
  const __m512 scale = _mm512_set1_ps(out_scale);
  for (int64_t r0 = 0; r0 < M; r0 += kTileRows) {
    const int64_t rows = M - r0 < kTileRows ? M - r0 : kTileRows;
    for (int64_t j0 = 0; j0 < N; j0 += 4 * kPairs) {
      const int tiles = static_cast<int>((N - j0) / kPairs < 4 ? (N - j0) / kPairs : 4);
      // Whole row tiles read and write C in place; a partial one goes through cbuf (a 16-row tile access
      // would reach past row M).
      const bool in_place = rows == kTileRows && (accumulate || out_scale == 1.0f);
      float* c0 = C + r0 * ldc + j0;
      memory_barrier();
      for (int t = 0; t < tiles; ++t) {
        if (in_place && accumulate)
          load_acc(4 + t, c0 + t * kPairs, ldc * 4);
        else
          zero_acc(4 + t);
      }
      for (int64_t k0 = 0; k0 < K2; k0 += kPairs) {
        const int64_t pairs = K2 - k0 < kPairs ? K2 - k0 : kPairs;
        const uint32_t* a = A + r0 * lda + k0;
        if (rows == kTileRows && pairs == kPairs) {
          load_source(0, a, lda * 4);
        } else {
          pad_tile(a, lda, rows, pairs, abuf);
          memory_barrier();
          load_source(0, abuf, kTileBytes);
        }
        for (int t = 0; t < tiles; ++t) {
          const uint32_t* b = B + k0 * ldb + j0 + t * kPairs;
          if (pairs == kPairs) {
            load_source(2 + t % 2, b, ldb * 4);
          } else {  // the last pairs along the reduction dim: B's rows past them are not B's
            pad_tile(b, ldb, pairs, kPairs, bbuf[t % 2]);
            memory_barrier();
            load_source(2 + t % 2, bbuf[t % 2], kTileBytes);
          }
          dot_bf16(4 + t, 0, 2 + t % 2);
        }
      }
      if (in_place) {
        for (int t = 0; t < tiles; ++t) store_acc(4 + t, c0 + t * kPairs, ldc * 4);
        memory_barrier();
        continue;
      }
      for (int t = 0; t < tiles; ++t) store_acc(4 + t, cbuf[t], kTileBytes);
      memory_barrier();
      for (int t = 0; t < tiles; ++t) {
        for (int64_t r = 0; r < rows; ++r) {
          float* c = C + (r0 + r) * ldc + j0 + t * kPairs;
          const __m512 p = _mm512_load_ps(cbuf[t] + r * kPairs);
          _mm512_storeu_ps(c, accumulate ? _mm512_add_ps(_mm512_loadu_ps(c), p) : _mm512_mul_ps(p, scale));
        }
      }
    }
  }
}

void release_tiles_amx() { _tile_release(); }

}  // namespace

MicroKernels microkernels_amx() {
  MicroKernels k = microkernels_avx512();
  k.gemm_bf16 = gemm_bf16_amx;
  k.release_tiles = release_tiles_amx;
  return k;
}

}  // namespace sparseops::attention::cpu
