// The bf16 l2 scan of codebook_lookup on AMX tiles (compiled with the AVX-512 flags plus -mamx-tile
// -mamx-bf16; lookup_cpu.cpp calls it only when sparseops::cpu_use_amx_bf16()). Same contract as
// scan_avx512_bf16 (lookup_cpu_kernels.h), same packed inputs: zs rows are bf16 pairs along D (AMX's
// first-source layout) and a panel tile is [steps][32 codes][2] (its second-source, VNNI, layout, 128
// bytes a row). Each pass computes a 32 x 32 block of expanded distances with 4 C tiles (2 row blocks x 2
// halves of the panel tile, TDPBF16PS over 16 pairs at a time), then compares them with the rows'
// thresholds as the register-tiled scan does; offers go through the same offer(). The tile product's
// fp32 accumulation may round differently from VDPBF16PS (Intel documents it without a rounding mode for
// the intermediate sums), so lookup_cpu.cpp widens the margin to the tensor-core bound (unit 2^-23).
// No torch headers (see lookup_cpu_kernels.h).
#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <vector>

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
  // The rows as 32-row blocks of pairs padded with zeros to whole tiles (rows and pairs), so every tile
  // load stays inside this buffer.
  const int64_t chunks = (steps + kPairs - 1) / kPairs, ldz = chunks * kPairs, rows32 = (rows + 31) / 32 * 32;
  thread_local std::vector<uint32_t> zbuf;
  zbuf.assign(static_cast<size_t>(rows32 * ldz), 0u);
  for (int64_t i = 0; i < rows; ++i) std::memcpy(zbuf.data() + i * ldz, zs + i * steps * 2, sizeof(uint32_t) * steps);
  thread_local std::vector<float> thr;
  thr.resize(static_cast<size_t>(rows));
  for (int64_t i = 0; i < rows; ++i) thr[i] = rc[i].thr;
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
        load_source(0, zbuf.data() + i0 * ldz + ch * kPairs, ldz * 4);
        load_source(1, zbuf.data() + (i0 + 16) * ldz + ch * kPairs, ldz * 4);
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
        const __m512 th = _mm512_set1_ps(thr[i0 + m]);
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
        thr[i0 + m] = row.thr;
      }
    }
  }
  _tile_release();
}

}  // namespace sparseops::codebook::cpu
