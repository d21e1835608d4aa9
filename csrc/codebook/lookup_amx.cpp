// The bf16 l2 scan of codebook_lookup on AMX tiles (compiled with the AVX-512 flags plus -mamx-tile
// -mamx-bf16; lookup_cpu.cpp calls it only when sparseops::cpu_use_amx_bf16()). Same contract as
// scan_avx512_bf16 (lookup_cpu_kernels.h), same packed inputs: zs rows are bf16 pairs along D (AMX's
// first-source layout) and a panel tile is [steps][32 codes][2] (its second-source, VNNI, layout, 128
// bytes a row). Each pass computes a 32 x 32 block of expanded distances with 4 C tiles (2 row blocks x 2
// halves of the panel tile, TDPBF16PS over 16 pairs at a time), then compares them with the rows'
// thresholds as the register-tiled scan does; offers go through the same offer(). The tile product's
// fp32 accumulation may round differently from VDPBF16PS (Intel documents it without a rounding mode for
// the intermediate sums), so lookup_cpu.cpp widens the margin to the tensor-core bound (unit 2^-23).
// No torch headers and no standard containers (see lookup_cpu_kernels.h: nothing inline that the linker
// could share with files built without these flags).
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "codebook/lookup_cpu_kernels.h"
#include "common/amx_tiles.h"

namespace sparseops::codebook::cpu {
namespace {

#include "codebook/lookup_tile.h"

using namespace sparseops::amx;

constexpr int64_t kPairs = kTileBytes / 4;  // pairs per tile row; also fp32 columns of a C tile (16)

}  // namespace

void scan_amx_bf16(const uint16_t* zs, int64_t rows, int64_t steps, const uint16_t* panel, const float* cn,
                   int64_t ntiles, int32_t k0, RowCands* rc, Spill* spill) {
  static_assert(kNrAvx512 == 2 * kPairs, "a panel tile is two C tiles wide");
  const int64_t chunks = (steps + kPairs - 1) / kPairs;
  const uint32_t* z = reinterpret_cast<const uint32_t*>(zs);  // [rows][steps] pairs
  alignas(64) uint32_t apad[2][kTileRows * kPairs];
  alignas(64) uint32_t bpad[2][kTileRows * kPairs];
  alignas(64) float cbuf[4][kTileRows * kPairs];
  configure_tiles();
  for (int64_t t = 0; t < ntiles; ++t) {
    const uint16_t* p = panel + t * steps * kNrAvx512 * 2;
    const __m512 cn0 = _mm512_loadu_ps(cn + t * kNrAvx512), cn1 = _mm512_loadu_ps(cn + t * kNrAvx512 + kPairs);
    for (int64_t i0 = 0; i0 < rows; i0 += 32) {
      for (int c = 4; c < 8; ++c) zero_acc(c);
      for (int64_t ch = 0; ch < chunks; ++ch) {
        const int64_t pairs = steps - ch * kPairs < kPairs ? steps - ch * kPairs : kPairs;
        for (int a = 0; a < 2; ++a) {  // rows i0 + 16a .. + 15; past `rows` or `steps`: zeros (padded copy)
          const int64_t r0 = i0 + 16 * a, nrows = rows - r0 < 0 ? 0 : (rows - r0 < 16 ? rows - r0 : 16);
          const uint32_t* src = z + r0 * steps + ch * kPairs;
          if (nrows == kTileRows && pairs == kPairs) {
            load_source(a, src, steps * 4);
            continue;
          }
          const __mmask16 lanes = static_cast<__mmask16>((1u << pairs) - 1);
          for (int64_t r = 0; r < kTileRows; ++r) {
            const __m512i v = r < nrows ? _mm512_maskz_loadu_epi32(lanes, src + r * steps) : _mm512_setzero_si512();
            _mm512_store_si512(apad[a] + r * kPairs, v);
          }
          memory_barrier();
          load_source(a, apad[a], kTileBytes);
        }
        for (int h = 0; h < 2; ++h) {
          const uint16_t* b = p + (ch * kPairs * kNrAvx512 + h * kPairs) * 2;
          if (pairs == kPairs) {
            load_source(2 + h, b, kNrAvx512 * 4);
          } else {  // the panel's last pairs: rows past them belong to the next tile (or past the panel)
            for (int64_t r = 0; r < kTileRows; ++r) {
              if (r < pairs) {
                std::memcpy(bpad[h] + r * kPairs, b + r * kNrAvx512 * 2, kTileBytes);
              } else {
                std::memset(bpad[h] + r * kPairs, 0, kTileBytes);
              }
            }
            memory_barrier();
            load_source(2 + h, bpad[h], kTileBytes);
          }
          dot_bf16(4 + h, 0, 2 + h);      // rows i0..i0+15
          dot_bf16(6 + h, 1, 2 + h);      // rows i0+16..i0+31
        }
      }
      for (int c = 0; c < 4; ++c) store_acc(4 + c, cbuf[c], kTileBytes);
      memory_barrier();
      const int64_t n = rows - i0 < 32 ? rows - i0 : 32;
      for (int64_t m = 0; m < n; ++m) {
        const int blk = m < 16 ? 0 : 2, r = static_cast<int>(m % 16);
        const __m512 e0 = _mm512_add_ps(_mm512_load_ps(cbuf[blk] + r * kPairs), cn0);
        const __m512 e1 = _mm512_add_ps(_mm512_load_ps(cbuf[blk + 1] + r * kPairs), cn1);
        const __m512 th = _mm512_set1_ps(rc[i0 + m].thr);
        uint32_t hit = static_cast<uint32_t>(_mm512_cmp_ps_mask(e0, th, _CMP_LT_OQ)) |
                       static_cast<uint32_t>(_mm512_cmp_ps_mask(e1, th, _CMP_LT_OQ)) << 16;
        if (__builtin_expect(hit == 0, 1)) continue;
        alignas(64) float e[kNrAvx512];
        _mm512_store_ps(e, e0);
        _mm512_store_ps(e + kPairs, e1);
        RowCands& row = rc[i0 + m];
        while (hit != 0) {  // in increasing code order, as the register-tiled scan offers them
          const int lane = __builtin_ctz(hit);
          hit &= hit - 1;
          offer(row, e[lane], k0 + static_cast<int32_t>(t * kNrAvx512 + lane), static_cast<int32_t>(i0 + m), spill);
        }
      }
    }
  }
  _tile_release();
}

}  // namespace sparseops::codebook::cpu
