// codebook_lookup's scan, AVX2 + FMA (compiled with -mavx2 -mfma; lookup_cpu.cpp calls it when the CPU
// has AVX2 but not the AVX-512 set): tiles of 4 query rows x 16 codes in fp32 (8 accumulators + 4
// thresholds in the 16 ymm registers), or 4 x 24 on int16 grids (lookup_quant.h: 12 integer
// accumulators). Also the pruned search's box test (AVX-512 CPUs use it too). No torch headers (see lookup_cpu_kernels.h).
#include <immintrin.h>

#include <cstdint>

#include "codebook/lookup_cpu_kernels.h"

namespace sparseops::codebook::cpu {
namespace {

struct V256 {
  using F = __m256;
  static constexpr int kW = 8;
  static F load(const float* p) { return _mm256_loadu_ps(p); }
  static F bcast(const float* p) { return _mm256_broadcast_ss(p); }
  static F fma(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static uint32_t lt(F a, F b) { return static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_LT_OQ))); }
  static void store(float* p, F v) { _mm256_storeu_ps(p, v); }
  using E = float;
  using P = F;
  static constexpr int kPair = 1;
  static P load_panel(const float* p) { return load(p); }
  static F bcast_z(const float* p) { return bcast(p); }
  static F dot(F acc, F b, P p) { return fma(b, p, acc); }
};

// The int16 screen (lookup_quant.h): pairs of dims per step, VPMADDWD's 16 products per instruction into
// exact int32 sums; e = float(sum) * scale + |c|^2 at the tile's end.
struct V256I16 {
  using F = __m256;
  using E = int16_t;
  using P = __m256i;
  using Acc = __m256i;
  static constexpr int kW = 8;
  static constexpr int kPair = 2;
  static F load(const float* p) { return _mm256_loadu_ps(p); }
  static F bcast(const float* p) { return _mm256_broadcast_ss(p); }
  static P load_panel(const int16_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static P bcast_z(const int16_t* p) {
    int32_t pair;
    __builtin_memcpy(&pair, p, sizeof pair);
    return _mm256_set1_epi32(pair);
  }
  static Acc zero() { return _mm256_setzero_si256(); }
  // In asm with acc read and written in place: from intrinsics GCC 12 adds into the product's register
  // and copies every accumulator back per step (8 extra moves per 8 products).
  static Acc dot(Acc acc, P b, P p) {
    __m256i prod;
    asm("vpmaddwd %[p], %[b], %[prod]\n\tvpaddd %[prod], %[acc], %[acc]"
        : [acc] "+x"(acc), [prod] "=&x"(prod)
        : [b] "x"(b), [p] "xm"(p));
    return acc;
  }
  static F to_e(Acc acc, F scale, F cn) { return _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc), scale, cn); }
  static uint32_t lt(F a, F b) { return static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_LT_OQ))); }
  static void store(float* p, F v) { _mm256_storeu_ps(p, v); }
};

#include "codebook/lookup_tile.h"

}  // namespace

void scan_avx2(const float* zs, int64_t rows, int64_t D, const float* panel, const float* cn, int64_t ntiles,
               int32_t k0, RowCands* rc, Spill* spill) {
  static_assert(V256::kW * 2 == kNrAvx2);
  scan_tiles<V256, 4, 2>(zs, rows, D, panel, cn, ntiles, k0, rc, spill);
}

void scan_avx2_i16(const int16_t* zs, int64_t rows, int64_t steps, const int16_t* panel, const float* cn,
                   int64_t ntiles, int32_t k0, RowCands* rc, Spill* spill) {
  static_assert(V256I16::kW * 3 == kNrAvx2Grid);
  scan_tiles<V256I16, 4, 3>(zs, rows, steps, panel, cn, ntiles, k0, rc, spill);
}

bool box_within_cut_avx2(const float* lo, const float* hi, const float* zt, const float* cut, int64_t D) {
  static_assert(kRowPad == 8, "one ymm register holds the block's rows");
  const __m256 zero = _mm256_setzero_ps();
  __m256 acc[2] = {zero, zero};  // two chains: half the FMA latency on the path to the branch
  for (int64_t d = 0; d < D; ++d) {
    const __m256 x = _mm256_loadu_ps(zt + d * kRowPad);
    const __m256 below = _mm256_sub_ps(_mm256_broadcast_ss(lo + d), x);
    const __m256 above = _mm256_sub_ps(x, _mm256_broadcast_ss(hi + d));
    const __m256 g = _mm256_max_ps(_mm256_max_ps(below, above), zero);
    acc[d & 1] = _mm256_fmadd_ps(g, g, acc[d & 1]);
  }
  const __m256 s = _mm256_add_ps(acc[0], acc[1]);
  return _mm256_movemask_ps(_mm256_cmp_ps(s, _mm256_loadu_ps(cut), _CMP_LE_OQ)) != 0;
}

}  // namespace sparseops::codebook::cpu
