// nm_srste backward, AVX-512 (compiled with -mavx512*; srste_cpu.cpp calls it only when
// sparseops::cpu_use_avx512()): out = mask ? grad : grad * scale + decay * w, 16 elements per step, in
// float32 with the baseline's exact roundings (each product rounded, then the sum: no FMA) and the
// output rounded as c10::Half / c10::BFloat16 round a float (nearest-even; NaN to 0x7E00 | sign for
// fp16 and to 0x7FC0 for bf16), so that both ISA paths agree bit for bit.
// No torch headers here (see sparse24_cpu_kernels.h).
// GCC 12 reports its own _mm512_undefined_*() (inside the conversions) as uninitialised when they
// inline: false positives from the intrinsics headers, silenced before including them.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cstdint>

#include "sparse24/sparse24_cpu_kernels.h"

namespace sparseops::sparse24::cpu {
namespace {

// 16 elements from p + i (kFull: all, unmasked; masked loads and stores are slow on Zen 4/5, so only the
// last partial vector uses them).
template <Dtype D, bool kFull>
inline __m512 load16(const void* p, int64_t i, __mmask16 lanes) {
  if constexpr (D == Dtype::kFloat32) {
    const float* f = static_cast<const float*>(p) + i;
    return kFull ? _mm512_loadu_ps(f) : _mm512_maskz_loadu_ps(lanes, f);
  } else {
    const uint16_t* q = static_cast<const uint16_t*>(p) + i;
    const __m256i h = kFull ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q)) : _mm256_maskz_loadu_epi16(lanes, q);
    if constexpr (D == Dtype::kFloat16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));  // bf16: the high half
  }
}

template <Dtype D, bool kFull>
inline void store16(void* p, int64_t i, __mmask16 lanes, __m512 v) {
  if constexpr (D == Dtype::kFloat32) {
    float* f = static_cast<float*>(p) + i;
    kFull ? _mm512_storeu_ps(f, v) : _mm512_mask_storeu_ps(f, lanes, v);
  } else {
    const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    const __m512i bits = _mm512_castps_si512(v);
    __m256i h;
    if constexpr (D == Dtype::kFloat16) {
      h = _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      const __m256i nan16 = _mm512_cvtepi32_epi16(
          _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(0x8000)),
                          _mm512_set1_epi32(0x7E00)));
      h = _mm256_mask_blend_epi16(nan, h, nan16);
    } else {  // round to nearest even on the bits: + 0x7FFF + (bit 16), keep the high half
      const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
      const __m512i rounded = _mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF)));
      h = _mm512_cvtepi32_epi16(_mm512_srli_epi32(rounded, 16));
      h = _mm256_mask_blend_epi16(nan, h, _mm256_set1_epi16(0x7FC0));
    }
    uint16_t* q = static_cast<uint16_t*>(p) + i;
    kFull ? _mm256_storeu_si256(reinterpret_cast<__m256i*>(q), h) : _mm256_mask_storeu_epi16(q, lanes, h);
  }
}

template <Dtype D, bool kFull>
inline void step(const void* grad, const void* w, const uint8_t* mask, void* out, int64_t i, __mmask16 lanes, __m512 s,
                 __m512 d) {
  const __m512 g = load16<D, kFull>(grad, i, lanes);
  __m512 gs = _mm512_mul_ps(g, s), wd = _mm512_mul_ps(load16<D, kFull>(w, i, lanes), d);
  asm("" : "+v"(gs), "+v"(wd));  // keeps the two roundings: no contraction into an FMA
  const __m128i m = kFull ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(mask + i)) : _mm_maskz_loadu_epi8(lanes, mask + i);
  const __mmask16 kept = _mm_test_epi8_mask(m, m);
  store16<D, kFull>(out, i, lanes, _mm512_mask_blend_ps(kept, _mm512_add_ps(gs, wd), g));
}

template <Dtype D>
void backward(const void* grad, const void* w, const uint8_t* mask, void* out, int64_t begin, int64_t end, float scale,
              float decay) {
  const __m512 s = _mm512_set1_ps(scale), d = _mm512_set1_ps(decay);
  int64_t i = begin;
  for (; i + 16 <= end; i += 16) step<D, true>(grad, w, mask, out, i, 0xFFFF, s, d);
  if (i < end) step<D, false>(grad, w, mask, out, i, static_cast<__mmask16>((1u << (end - i)) - 1), s, d);
}

}  // namespace

void nm_srste_backward_avx512(Dtype dtype, const void* grad, const void* w, const uint8_t* mask, void* out,
                              int64_t begin, int64_t end, float scale, float decay) {
  switch (dtype) {
    case Dtype::kFloat32: backward<Dtype::kFloat32>(grad, w, mask, out, begin, end, scale, decay); break;
    case Dtype::kFloat16: backward<Dtype::kFloat16>(grad, w, mask, out, begin, end, scale, decay); break;
    case Dtype::kBFloat16: backward<Dtype::kBFloat16>(grad, w, mask, out, begin, end, scale, decay); break;
  }
}

}  // namespace sparseops::sparse24::cpu
