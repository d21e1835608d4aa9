// codebook_lookup's scan, AVX-512 (compiled with -mavx512*; lookup_cpu.cpp calls it only when
// sparseops::cpu_use_avx512()): tiles of 8 query rows x 32 codes (16 accumulators + 8 thresholds in zmm
// registers). No torch headers (see lookup_cpu_kernels.h).
#include <immintrin.h>

#include <cstdint>

#include "codebook/lookup_cpu_kernels.h"

namespace sparseops::codebook::cpu {
namespace {

struct V512 {
  using F = __m512;
  static constexpr int kW = 16;
  static F load(const float* p) { return _mm512_loadu_ps(p); }
  static F bcast(const float* p) { return _mm512_set1_ps(*p); }
  static F fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static uint32_t lt(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
  static void store(float* p, F v) { _mm512_storeu_ps(p, v); }
};

#include "codebook/lookup_tile.h"

}  // namespace

void scan_avx512(const float* zs, int64_t rows, int64_t D, const float* panel, const float* cn, int64_t ntiles,
                 int32_t k0, RowCands* rc) {
  static_assert(V512::kW * 2 == kNrAvx512);
  scan_tiles<V512, 8, 2>(zs, rows, D, panel, cn, ntiles, k0, rc);
}

}  // namespace sparseops::codebook::cpu
