// codebook_lookup's scan, AVX-512 (compiled with -mavx512*; lookup_cpu.cpp calls it only when
// sparseops::cpu_use_avx512()): tiles of 8 query rows x 32 codes (16 accumulators + 8 thresholds in zmm
// registers); for bf16 inputs (l2) a variant on VDPBF16PS over pairs of dims. No torch headers (see
// lookup_cpu_kernels.h).
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
  using E = float;
  using P = F;
  static constexpr int kPair = 1;
  static P load_panel(const float* p) { return load(p); }
  static F bcast_z(const float* p) { return bcast(p); }
  static F dot(F acc, F b, P p) { return fma(b, p, acc); }
};

// bf16 inputs: pairs of dims per step with VDPBF16PS (32 bf16 products per instruction, twice the fp32
// FMA's); bf16 products are exact in fp32 and the sums are fp32, so the fp32 error bound still holds
// (plus the instruction's flushing of denormals, which the glue's margin covers).
struct V512Bf16 {
  using F = __m512;
  using E = uint16_t;
  using P = __m512bh;
  static constexpr int kW = 16;
  static constexpr int kPair = 2;
  static F load(const float* p) { return _mm512_loadu_ps(p); }
  static F bcast(const float* p) { return _mm512_set1_ps(*p); }
  static P load_panel(const uint16_t* p) { return (P)_mm512_loadu_si512(p); }
  static P bcast_z(const uint16_t* p) {
    int32_t pair;
    __builtin_memcpy(&pair, p, sizeof pair);
    return (P)_mm512_set1_epi32(pair);
  }
  static F dot(F acc, P b, P p) { return _mm512_dpbf16_ps(acc, b, p); }
  static uint32_t lt(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
  static void store(float* p, F v) { _mm512_storeu_ps(p, v); }
};

#include "codebook/lookup_tile.h"

}  // namespace

void scan_avx512(const float* zs, int64_t rows, int64_t D, const float* panel, const float* cn, int64_t ntiles,
                 int32_t k0, RowCands* rc, Spill* spill) {
  static_assert(V512::kW * 2 == kNrAvx512);
  scan_tiles<V512, 8, 2>(zs, rows, D, panel, cn, ntiles, k0, rc, spill);
}

void scan_avx512_bf16(const uint16_t* zs, int64_t rows, int64_t steps, const uint16_t* panel, const float* cn,
                      int64_t ntiles, int32_t k0, RowCands* rc, Spill* spill) {
  static_assert(V512Bf16::kW * 2 == kNrAvx512);
  scan_tiles<V512Bf16, 8, 2>(zs, rows, steps, panel, cn, ntiles, k0, rc, spill);
}

}  // namespace sparseops::codebook::cpu
