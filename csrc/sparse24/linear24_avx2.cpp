// sparse24_linear on CPU, AVX2 small-M kernel, for x86 CPUs without AVX-512 (compiled with -mavx2 -mfma
// -mf16c; linear24_cpu.cpp calls it only when sparseops::cpu_use_avx2() and not AVX-512).
//
// AVX2 has no two-source permute, so instead of gathering x by W's indices (the AVX-512 scheme) this
// kernel expands W: per 8 columns (2 groups, one meta byte, 4 kept values) one vpermps with an index
// vector from a 256-entry table (one per meta byte) spreads the 4 values into their dense lanes and zeros
// the others (a zero lane 4..7 of the loaded values); for bf16 one vpshufb also converts them to fp32. The dense 8 columns then serve every x row of the
// pass with one FMA each, so the expansion costs ~4 instructions per 8 columns and W row, shared by up
// to 8 x rows. Half of the FMA lanes multiply zeros: above a few rows this is dense-GEMM work on half the
// weight bytes, and the large-M tiled path takes over (linear24_cpu.cpp).
// Loop order as in the AVX-512 kernel: blocks of W rows, K pieces with the x rows of a pass in L1, x rows
// 8 at a time, W rows one at a time (their piece from L2 after the first pass), the piece of the row a
// few rows ahead prefetched as the current one is computed.
//
// No torch headers here (see linear24_cpu.h): everything in this file is local to it.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "sparse24/linear24_cpu.h"
#include "sparse24/packed_meta_check.h"

namespace sparseops::sparse24 {
namespace {

// Dense lane j (group j / 4, position j % 4) of a meta byte's 8 columns: the index of its kept value
// among the 4 loaded (2 per group, first then second), or 4, a lane that holds 0. A group whose code is
// not a valid pair (first < second) keeps nothing: that is also what the tail's padding nibble gives.
struct ExpandTable {
  alignas(32) int32_t idx[256][8];
  constexpr ExpandTable() : idx() {
    for (int b = 0; b < 256; ++b) {
      for (int j = 0; j < 8; ++j) {
        const int g = j / 4, p = j % 4, code = (b >> (4 * g)) & 0xF, first = code & 3, second = (code >> 2) & 3;
        idx[b][j] = first >= second ? 4 : p == first ? 2 * g : p == second ? 2 * g + 1 : 4;
      }
    }
  }
};
constexpr ExpandTable kExpand{};

// bf16: the same expansion and the conversion to fp32 in one vpshufb. The 4 kept bf16 values (8 bytes)
// are broadcast to every 64-bit lane; dense lane j takes bytes [zero, zero, value low, value high] (the
// bf16 bits as the high half of an fp32), or zeros (control byte 0x80).
struct ShuffleTable {
  alignas(32) uint8_t ctrl[256][32];
  constexpr ShuffleTable() : ctrl() {
    for (int b = 0; b < 256; ++b) {
      for (int j = 0; j < 8; ++j) {
        const int vi = kExpand.idx[b][j];
        ctrl[b][4 * j] = ctrl[b][4 * j + 1] = 0x80;
        ctrl[b][4 * j + 2] = vi == 4 ? 0x80 : static_cast<uint8_t>(2 * vi);
        ctrl[b][4 * j + 3] = vi == 4 ? 0x80 : static_cast<uint8_t>(2 * vi + 1);
      }
    }
  }
};
constexpr ShuffleTable kShuffle{};

struct Bf16Bits {  // the bf16 element type here (fp16 is plain uint16_t)
  uint16_t bits;
};

// The dense fp32 values of 8 columns (2 groups) from their `count` kept values (4, or 2 for a last odd
// group) and the groups' meta byte (for 2 values, its low nibble only).
template <class T>
inline __m256 expand8(const T* v, int count, uint8_t meta_byte) {
  if constexpr (std::is_same_v<T, Bf16Bits>) {
    // The 8 bytes broadcast straight from memory (one load, no trip through a general register).
    double bits = 0;
    std::memcpy(&bits, v, 2 * static_cast<size_t>(count));
    const __m256i ctrl = _mm256_load_si256(reinterpret_cast<const __m256i*>(kShuffle.ctrl[meta_byte]));
    return _mm256_castsi256_ps(_mm256_shuffle_epi8(_mm256_castpd_si256(_mm256_set1_pd(bits)), ctrl));
  } else {
    __m128 q;
    if constexpr (sizeof(T) == 4) {
      q = count == 4 ? _mm_loadu_ps(reinterpret_cast<const float*>(v))
                     : _mm_castsi128_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(v)));
    } else {  // fp16 bits
      uint64_t bits = 0;
      std::memcpy(&bits, v, 2 * static_cast<size_t>(count));
      q = _mm_cvtph_ps(_mm_cvtsi64_si128(static_cast<long long>(bits)));
    }
    const __m256i idx = _mm256_load_si256(reinterpret_cast<const __m256i*>(kExpand.idx[meta_byte]));
    return _mm256_permutevar8x32_ps(_mm256_zextps128_ps256(q), idx);  // lanes 4..7 of the source are 0
  }
}

inline float hsum(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
}

constexpr int64_t kRowBlock = 64;
// K pieces: the x rows of a pass (up to 8) take ~24 KiB of L1, so 768 columns at 8 rows and whole rows
// of K <= 6144 at M = 1. Fewer, longer pieces keep W's read sequential: at M = 1 a fixed 768 columns made
// it 64 streams a row apart, which the hardware prefetchers follow poorly.
constexpr int64_t kPieceBytes = 24 * 1024;
constexpr int64_t kPrefetchRows = 4;

// z rows m0..m0+MR-1 (ldz apart) at columns [nb0, nb1) += (or, for k0 == 0, = bias +) the piece
// [k0, k0 + kl) of W's rows times x's rows (fp32, ldx apart, zero beyond K up to a multiple of 8).
// Returns false when a meta code of the piece is invalid (linear24_cpu.cpp reports it): each row's
// piece of meta (96-768 bytes) is tested as it is first read, so the check needs no pass of its own.
template <class T, int MR, int kSets = MR <= 2 ? 4 : MR <= 4 ? 2 : 1>
bool block_piece(const T* vp, const uint8_t* mp, int64_t K, int64_t k0, int64_t kl, const float* x, int64_t ldx,
                 const float* bias, int64_t nb0, int64_t nb1, int64_t n_end, float* z, int64_t ldz) {
  const int64_t half = K / 2, meta_cols = (K / 4 + 1) / 2;
  const int64_t chunks = kl / 8, tail = (kl % 8) / 4;  // kl % 4 == 0; a last odd group only at K's end
  const int64_t b0 = k0 / 8;
  bool ok = true;
  for (int64_t n = nb0; n < nb1; ++n) {
    const T* v = vp + n * half + k0 / 2;
    const uint8_t* m = mp + n * meta_cols + b0;
    ok &= packed_meta_bytes_valid(m, chunks) && (tail == 0 || (m[chunks] & 3) < ((m[chunks] >> 2) & 3));
    const int64_t pn = n + kPrefetchRows < n_end ? n + kPrefetchRows : -1;
    const char* pv = pn >= 0 ? reinterpret_cast<const char*>(vp + pn * half + k0 / 2) : nullptr;
    // kSets accumulator sets, chunks alternating between them: with few x rows one set alone would be a
    // chain of dependent FMAs (bf16 M=1 ran at the FMA latency, 0.84 ms on 4096x4096, with one).
    __m256 acc[kSets][MR];
    for (int s = 0; s < kSets; ++s) {
      for (int r = 0; r < MR; ++r) acc[s][r] = _mm256_setzero_ps();
    }
    auto chunk = [&](int s, int64_t c) {
      const __m256 w = expand8(v + 4 * c, 4, m[c]);
      const float* xc = x + k0 + 8 * c;
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) acc[s][r] = _mm256_fmadd_ps(w, _mm256_loadu_ps(xc + r * ldx), acc[s][r]);
    };
    int64_t c = 0;
    for (; c + kSets <= chunks; c += kSets) {
      if (pv != nullptr) {
        _mm_prefetch(pv + 4 * c * static_cast<int64_t>(sizeof(T)), _MM_HINT_T0);
        if ((c & 63) == 0) _mm_prefetch(reinterpret_cast<const char*>(mp + pn * meta_cols + b0 + c), _MM_HINT_T0);
      }
#pragma GCC unroll 4
      for (int s = 0; s < kSets; ++s) chunk(s, c + s);
    }
    for (; c < chunks; ++c) chunk(0, c);
    if (tail) {  // the last group of a row with K % 8 == 4: 2 values, the low nibble of its byte
      const __m256 w = expand8(v + 4 * chunks, 2, static_cast<uint8_t>(m[chunks] & 0xF));
      const float* xc = x + k0 + 8 * chunks;  // x is zero from K to the next multiple of 8
      for (int r = 0; r < MR; ++r) acc[0][r] = _mm256_fmadd_ps(w, _mm256_loadu_ps(xc + r * ldx), acc[0][r]);
    }
    for (int r = 0; r < MR; ++r) {
      for (int s = 1; s < kSets; ++s) acc[0][r] = _mm256_add_ps(acc[0][r], acc[s][r]);
      const float s = hsum(acc[0][r]);
      float& out = z[r * ldz + n];
      out = k0 == 0 ? s + (bias != nullptr ? bias[n] : 0.0f) : out + s;
    }
  }
  return ok;
}

template <class T>
bool rows(const void* values, const uint8_t* meta, int64_t K, const float* x, int64_t ldx, int64_t M,
          const float* bias, int64_t n0, int64_t n1, float* z, int64_t ldz) {
  const T* vp = static_cast<const T*>(values);
  const int64_t mr_max = M < kPanelRows ? M : kPanelRows;
  const int64_t piece = kPieceBytes / (static_cast<int64_t>(sizeof(float)) * mr_max) / 8 * 8;  // whole meta bytes
  bool ok = true;
  for (int64_t nb0 = n0; nb0 < n1; nb0 += kRowBlock) {
    const int64_t nb1 = nb0 + kRowBlock < n1 ? nb0 + kRowBlock : n1;
    for (int64_t k0 = 0; k0 < K; k0 += piece) {
      const int64_t kl = K - k0 < piece ? K - k0 : piece;
      for (int64_t m0 = 0; m0 < M; m0 += kPanelRows) {
        const float* xm = x + m0 * ldx;
        float* zm = z + m0 * ldz;
        switch (M - m0 < kPanelRows ? M - m0 : kPanelRows) {
#define SPARSEOPS_PIECE(R) \
  case R: ok &= block_piece<T, R>(vp, meta, K, k0, kl, xm, ldx, bias, nb0, nb1, n1, zm, ldz); break;
          SPARSEOPS_PIECE(1) SPARSEOPS_PIECE(2) SPARSEOPS_PIECE(3) SPARSEOPS_PIECE(4)
          SPARSEOPS_PIECE(5) SPARSEOPS_PIECE(6) SPARSEOPS_PIECE(7) SPARSEOPS_PIECE(8)
#undef SPARSEOPS_PIECE
          default: break;
        }
      }
    }
  }
  return ok;
}

}  // namespace

bool packed_meta_bytes_valid_avx2(const uint8_t* p, int64_t bytes) {
  // The nibble test of linear24_avx512.cpp's version, 32 bytes per step; the tail byte by byte.
  const __m256i k33 = _mm256_set1_epi8(0x33), k44 = _mm256_set1_epi8(0x44), k11 = _mm256_set1_epi8(0x11);
  __m256i bad = _mm256_setzero_si256();
  int64_t i = 0;
  for (; i + 32 <= bytes; i += 32) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i));
    const __m256i f = _mm256_and_si256(v, k33), s = _mm256_and_si256(_mm256_srli_epi16(v, 2), k33);
    const __m256i t = _mm256_sub_epi8(_mm256_sub_epi8(_mm256_or_si256(s, k44), f), k11);
    bad = _mm256_or_si256(bad, _mm256_xor_si256(_mm256_and_si256(t, k44), k44));
  }
  bool ok = _mm256_testz_si256(bad, bad);
  for (; i < bytes; ++i) ok &= (p[i] & 3) < ((p[i] >> 2) & 3) && ((p[i] >> 4) & 3) < (p[i] >> 6);
  return ok;
}

bool linear24_rows_avx2(ElemType type, const void* values, const uint8_t* meta, int64_t K, const float* x,
                        int64_t ldx, int64_t M, const float* bias, int64_t n0, int64_t n1, float* z, int64_t ldz) {
  switch (type) {
    case ElemType::kFloat: return rows<float>(values, meta, K, x, ldx, M, bias, n0, n1, z, ldz);
    case ElemType::kHalf: return rows<uint16_t>(values, meta, K, x, ldx, M, bias, n0, n1, z, ldz);
    case ElemType::kBFloat16: return rows<Bf16Bits>(values, meta, K, x, ldx, M, bias, n0, n1, z, ldz);
  }
  return false;
}

}  // namespace sparseops::sparse24
