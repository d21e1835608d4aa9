// sparse24_linear on CPU, AVX2 small-M kernels, for x86 CPUs without AVX-512 (compiled with -mavx2 -mfma
// -mf16c; linear24_cpu.cpp calls them only when sparseops::cpu_use_avx2() and not AVX-512).
//
// AVX2 has no two-source permute, so x cannot be gathered by W's indices 16 lanes at a time as in the
// AVX-512 kernel. Two schemes instead, by the number of x rows (linear24_cpu.h, avx2_x_transposed):
// - Up to 4 rows, "expand": per 8 columns (2 groups, one meta byte, 4 kept values) one vpermps with an
//   index vector from a 256-entry table spreads the 4 values into their dense lanes and zeros the others
//   (for bf16 one vpshufb also converts them to fp32; for fp16 a vpshufb spreads the 16-bit values
//   before one 8-wide conversion); the dense 8 columns then serve every x row with
//   one FMA each. Half of those FMA lanes multiply zeros, which is free while W's stream is the limit.
// - From 5 rows, "transposed": x is packed as x^T panels (8 rows in the 8 lanes of a vector, one vector
//   per column), and each kept value, broadcast, multiplies the column of x^T its meta code names: one
//   FMA per kept value for 8 rows, half the FMAs of the expand scheme and half its x loads. On a Zen 3
//   the expand scheme ran at ~8.5 cycles per 8 columns at 8 rows (4.6 GB/s of W on one core, half the
//   read limit): it was FMA- and load-bound, not memory-bound.
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

#include "common/simd_transpose_avx.h"
#include "sparse24/linear24_cpu.h"

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

// fp16: the same expansion on the 16-bit values before one 8-wide conversion (vcvtph2ps of 4 values
// then vpermps, as fp32 does, ran ~25% slower per chunk on a Zen 3). Dense lane j takes the bytes of its
// kept value among the 8 loaded (2 chunks: `second` adds 8, the next chunk's values), or zeros (+0.0).
struct HalfShuffleTable {
  alignas(16) uint8_t ctrl[2][256][16];
  constexpr HalfShuffleTable() : ctrl() {
    for (int second = 0; second < 2; ++second) {
      for (int b = 0; b < 256; ++b) {
        for (int j = 0; j < 8; ++j) {
          const int vi = kExpand.idx[b][j];
          ctrl[second][b][2 * j] = vi == 4 ? 0x80 : static_cast<uint8_t>(8 * second + 2 * vi);
          ctrl[second][b][2 * j + 1] = vi == 4 ? 0x80 : static_cast<uint8_t>(8 * second + 2 * vi + 1);
        }
      }
    }
  }
};
constexpr HalfShuffleTable kHalfShuffle{};

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
  } else if constexpr (sizeof(T) == 2) {  // fp16 bits
    uint64_t bits = 0;
    std::memcpy(&bits, v, 2 * static_cast<size_t>(count));
    const __m128i ctrl = _mm_load_si128(reinterpret_cast<const __m128i*>(kHalfShuffle.ctrl[0][meta_byte]));
    return _mm256_cvtph_ps(_mm_shuffle_epi8(_mm_cvtsi64_si128(static_cast<long long>(bits)), ctrl));
  } else {  // fp32
    const __m128 q = count == 4 ? _mm_loadu_ps(reinterpret_cast<const float*>(v))
                                : _mm_castsi128_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(v)));
    const __m256i idx = _mm256_load_si256(reinterpret_cast<const __m256i*>(kExpand.idx[meta_byte]));
    return _mm256_permutevar8x32_ps(_mm256_zextps128_ps256(q), idx);  // lanes 4..7 of the source are 0
  }
}

// Two full chunks (16 columns, 8 kept values) at once, into w[0] and w[1]: for bf16 and fp16 one 16-byte
// load serves both shuffles (bf16: in both 128-bit lanes; the second chunk's bytes are 8-15, so its
// control bytes get 8 or'ed in, which leaves the zeroing 0x80 ones zeroing). ~5-10% (bf16) and ~20%
// (fp16) less time per chunk than one chunk at a time, measured from L1 on a Zen 3.
template <class T>
inline void expand16(const T* v, uint8_t meta0, uint8_t meta1, __m256* w) {
  if constexpr (std::is_same_v<T, Bf16Bits>) {
    const __m256i raw = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(v)));
    const __m256i c0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(kShuffle.ctrl[meta0]));
    const __m256i c1 = _mm256_or_si256(_mm256_load_si256(reinterpret_cast<const __m256i*>(kShuffle.ctrl[meta1])),
                                       _mm256_set1_epi8(8));
    w[0] = _mm256_castsi256_ps(_mm256_shuffle_epi8(raw, c0));
    w[1] = _mm256_castsi256_ps(_mm256_shuffle_epi8(raw, c1));
  } else if constexpr (sizeof(T) == 2) {
    const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(v));
    w[0] = _mm256_cvtph_ps(_mm_shuffle_epi8(raw, _mm_load_si128(reinterpret_cast<const __m128i*>(kHalfShuffle.ctrl[0][meta0]))));
    w[1] = _mm256_cvtph_ps(_mm_shuffle_epi8(raw, _mm_load_si128(reinterpret_cast<const __m128i*>(kHalfShuffle.ctrl[1][meta1]))));
  } else {
    w[0] = expand8(v, 4, meta0);
    w[1] = expand8(v + 4, 4, meta1);
  }
}

// Bit 2 of each nibble set where the code of the 32 meta bytes at p is invalid: the nibble test of
// packed_meta_check.h (first kept index >= second), 32 bytes at once.
inline __m256i invalid_codes32(const uint8_t* p) {
  const __m256i k33 = _mm256_set1_epi8(0x33), k44 = _mm256_set1_epi8(0x44), k11 = _mm256_set1_epi8(0x11);
  const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  const __m256i f = _mm256_and_si256(v, k33), s = _mm256_and_si256(_mm256_srli_epi16(v, 2), k33);
  const __m256i t = _mm256_sub_epi8(_mm256_sub_epi8(_mm256_or_si256(s, k44), f), k11);
  return _mm256_xor_si256(_mm256_and_si256(t, k44), k44);
}

inline bool meta_valid(const uint8_t* p, int64_t bytes) {  // 32 bytes per step, the tail byte by byte
  __m256i bad = _mm256_setzero_si256();
  int64_t i = 0;
  for (; i + 32 <= bytes; i += 32) bad = _mm256_or_si256(bad, invalid_codes32(p + i));
  bool ok = _mm256_testz_si256(bad, bad);
  for (; i < bytes; ++i) ok &= (p[i] & 3) < ((p[i] >> 2) & 3) && ((p[i] >> 4) & 3) < (p[i] >> 6);
  return ok;
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
template <class T, int MR, int kSets = MR <= 2 ? 4 : 2>
bool block_piece(const T* vp, const uint8_t* mp, int64_t K, int64_t k0, int64_t kl, const float* x, int64_t ldx,
                 const float* bias, int64_t nb0, int64_t nb1, int64_t n_end, float* z, int64_t ldz) {
  const int64_t half = K / 2, meta_cols = (K / 4 + 1) / 2;
  const int64_t chunks = kl / 8, tail = (kl % 8) / 4;  // kl % 4 == 0; a last odd group only at K's end
  const int64_t b0 = k0 / 8;
  bool ok = true;
  for (int64_t n = nb0; n < nb1; ++n) {
    const T* v = vp + n * half + k0 / 2;
    const uint8_t* m = mp + n * meta_cols + b0;
    const int64_t pn = n + kPrefetchRows < n_end ? n + kPrefetchRows : -1;
    const char* pv = pn >= 0 ? reinterpret_cast<const char*>(vp + pn * half + k0 / 2) : nullptr;
    // kSets accumulator sets, chunks alternating between them: with few x rows one set alone would be a
    // chain of dependent FMAs (bf16 M=1 ran at the FMA latency, 0.84 ms on 4096x4096, with one).
    static_assert(kSets % 2 == 0, "the loop takes chunks in pairs");
    __m256 acc[kSets][MR];
    for (int s = 0; s < kSets; ++s) {
      for (int r = 0; r < MR; ++r) acc[s][r] = _mm256_setzero_ps();
    }
    auto multiply = [&](int s, int64_t c, __m256 w) {  // chunk c's dense columns times the x rows
      const float* xc = x + k0 + 8 * c;
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) acc[s][r] = _mm256_fmadd_ps(w, _mm256_loadu_ps(xc + r * ldx), acc[s][r]);
    };
    auto chunk_pair = [&](int s, int64_t c) {  // chunks c, c + 1 into sets s, s + 1
      __m256 w[2];
      expand16(v + 4 * c, m[c], m[c + 1], w);
      multiply(s, c, w[0]);
      multiply(s + 1, c + 1, w[1]);
    };
    // The meta check rides in the loop, 32 bytes (chunks) at a time as the loop reaches them (a pass of
    // its own before the loop cost bf16 M=1 4-6% on a Zen 3, one thread); the rest after it.
    const int64_t checked = chunks / 32 * 32;
    __m256i bad = _mm256_setzero_si256();
    int64_t c = 0;
    for (; c + kSets <= chunks; c += kSets) {
      if (pv != nullptr) {
        _mm_prefetch(pv + 4 * c * static_cast<int64_t>(sizeof(T)), _MM_HINT_T0);
        if ((c & 63) == 0) _mm_prefetch(reinterpret_cast<const char*>(mp + pn * meta_cols + b0 + c), _MM_HINT_T0);
      }
      if ((c & 31) == 0 && c < checked) bad = _mm256_or_si256(bad, invalid_codes32(m + c));
#pragma GCC unroll 2
      for (int s = 0; s < kSets; s += 2) chunk_pair(s, c + s);
    }
    for (; c < chunks; ++c) multiply(0, c, expand8(v + 4 * c, 4, m[c]));
    ok &= _mm256_testz_si256(bad, bad) && meta_valid(m + checked, chunks - checked) &&
          (tail == 0 || (m[chunks] & 3) < ((m[chunks] >> 2) & 3));
    if (tail) {  // the last group of a row with K % 8 == 4: 2 values, the low nibble of its byte
      multiply(0, chunks, expand8(v + 4 * chunks, 2, static_cast<uint8_t>(m[chunks] & 0xF)));  // x: 0 beyond K
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

// ---- transposed scheme (5-8 rows per pass) --------------------------------------------------------

// Per meta byte: the dense lane (0..7) of each of its 4 kept values, times 32 (the bytes of one x^T
// column of 8 floats), in the 4 bytes of an entry; an invalid code still names a lane of its own group.
struct LaneOffsetTable {
  uint32_t off[256];
  constexpr LaneOffsetTable() : off() {
    for (int b = 0; b < 256; ++b) {
      const uint32_t l0 = b & 3, l1 = (b >> 2) & 3, l2 = 4 + ((b >> 4) & 3), l3 = 4 + ((b >> 6) & 3);
      off[b] = (l0 << 5) | (l1 << 13) | (l2 << 21) | (l3 << 29);
    }
  }
};
constexpr LaneOffsetTable kLaneOffset{};

template <class T>
inline float to_float(T v) {
  if constexpr (sizeof(T) == 4) {
    return v;
  } else if constexpr (std::is_same_v<T, Bf16Bits>) {
    const uint32_t bits = static_cast<uint32_t>(v.bits) << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
  } else {
    return _cvtsh_ss(v);
  }
}

// The 4 kept values of a meta byte as fp32, duplicated in both 128-bit halves (so that an in-lane shuffle
// broadcasts any one of them to all 8 lanes). For bf16 the 8 bytes as loaded (broadcast_lane converts).
template <class T>
inline __m256 load4_dup(const T* v) {
  if constexpr (sizeof(T) == 4) {
    return _mm256_broadcast_ps(reinterpret_cast<const __m128*>(v));
  } else {
    int64_t bits;
    std::memcpy(&bits, v, 8);
    const __m128i q = _mm_set1_epi64x(bits);
    if constexpr (std::is_same_v<T, Bf16Bits>) return _mm256_castsi256_ps(_mm256_broadcastsi128_si256(q));
    else return _mm256_cvtph_ps(q);  // fp16: 8 halves (the 4 values twice) to 8 floats
  }
}

// Value j of load4_dup's result in all 8 lanes, as fp32.
template <class T, int j>
inline __m256 broadcast_lane(__m256 dup) {
  if constexpr (std::is_same_v<T, Bf16Bits>) {  // bf16 j's bytes to the high half of each fp32 lane
    const __m256i ctrl = _mm256_set1_epi32(static_cast<int>(0x8080u | ((2u * j) << 16) | ((2u * j + 1) << 24)));
    return _mm256_castsi256_ps(_mm256_shuffle_epi8(_mm256_castps_si256(dup), ctrl));
  } else {
    return _mm256_permute_ps(dup, j * 0x55);
  }
}

// As block_piece, with x as one group's x^T panel (xt: element (row r, column k) at xt[8 k + r], zero
// for k >= K and for rows beyond the group's `mr`), which the kernel reads at column k0 onwards.
template <class T>
bool block_piece_transposed(const T* vp, const uint8_t* mp, int64_t K, int64_t k0, int64_t kl, const float* xt,
                            int64_t mr, const float* bias, int64_t nb0, int64_t nb1, int64_t n_end, float* z,
                            int64_t ldz) {
  const int64_t half = K / 2, meta_cols = (K / 4 + 1) / 2;
  const int64_t chunks = kl / 8, tail = (kl % 8) / 4;
  const int64_t b0 = k0 / 8;
  const char* xk0 = reinterpret_cast<const char*>(xt + 8 * k0);
  bool ok = true;
  for (int64_t n = nb0; n < nb1; ++n) {
    const T* v = vp + n * half + k0 / 2;
    const uint8_t* m = mp + n * meta_cols + b0;
    ok &= meta_valid(m, chunks) && (tail == 0 || (m[chunks] & 3) < ((m[chunks] >> 2) & 3));
    const int64_t pn = n + kPrefetchRows < n_end ? n + kPrefetchRows : -1;
    const char* pv = pn >= 0 ? reinterpret_cast<const char*>(vp + pn * half + k0 / 2) : nullptr;
    // Two chunks per step into 8 accumulators: each FMA chain then waits on itself every other chunk.
    __m256 acc[8];
    for (auto& a : acc) a = _mm256_setzero_ps();
    // Column `lane` (its byte offset, lane * 32) of the 8-column x^T block at xc.
    auto column = [](const char* xc, uint32_t lane_bytes) {
      return _mm256_load_ps(reinterpret_cast<const float*>(xc + lane_bytes));
    };
    auto chunk = [&](__m256* a, int64_t c) {
      const __m256 dup = load4_dup(v + 4 * c);
      const uint32_t off = kLaneOffset.off[m[c]];
      const char* xc = xk0 + 256 * c;  // 8 columns x 8 rows x 4 bytes
      a[0] = _mm256_fmadd_ps(broadcast_lane<T, 0>(dup), column(xc, off & 0xFF), a[0]);
      a[1] = _mm256_fmadd_ps(broadcast_lane<T, 1>(dup), column(xc, (off >> 8) & 0xFF), a[1]);
      a[2] = _mm256_fmadd_ps(broadcast_lane<T, 2>(dup), column(xc, (off >> 16) & 0xFF), a[2]);
      a[3] = _mm256_fmadd_ps(broadcast_lane<T, 3>(dup), column(xc, off >> 24), a[3]);
    };
    int64_t c = 0;
    for (; c + 2 <= chunks; c += 2) {
      if (pv != nullptr) {
        _mm_prefetch(pv + 4 * c * static_cast<int64_t>(sizeof(T)), _MM_HINT_T0);
        if ((c & 63) == 0) _mm_prefetch(reinterpret_cast<const char*>(mp + pn * meta_cols + b0 + c), _MM_HINT_T0);
      }
      chunk(acc, c);
      chunk(acc + 4, c + 1);
    }
    if (c < chunks) chunk(acc, c);
    if (tail) {  // the last group of a row with K % 8 == 4: 2 values, the low nibble of its byte
      const uint32_t off = kLaneOffset.off[m[chunks] & 0xF];
      const char* xc = xk0 + 256 * chunks;
      const float w0 = to_float(v[4 * chunks]), w1 = to_float(v[4 * chunks + 1]);
      acc[4] = _mm256_fmadd_ps(_mm256_set1_ps(w0), column(xc, off & 0xFF), acc[4]);
      acc[5] = _mm256_fmadd_ps(_mm256_set1_ps(w1), column(xc, (off >> 8) & 0xFF), acc[5]);
    }
    const __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])),
                                   _mm256_add_ps(_mm256_add_ps(acc[4], acc[5]), _mm256_add_ps(acc[6], acc[7])));
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, s);
    for (int64_t r = 0; r < mr; ++r) {
      float& out = z[r * ldz + n];
      out = k0 == 0 ? lanes[r] + (bias != nullptr ? bias[n] : 0.0f) : out + lanes[r];
    }
  }
  return ok;
}

template <class T>
bool rows(const void* values, const uint8_t* meta, int64_t K, const float* x, int64_t ldx, int64_t M,
          const float* bias, int64_t n0, int64_t n1, float* z, int64_t ldz) {
  const T* vp = static_cast<const T*>(values);
  const bool transposed = avx2_x_transposed(M);
  // x rows of a pass in kPieceBytes of L1: fp32 rows (expand) or an x^T panel of 8 lanes (transposed).
  const int64_t lanes = transposed ? kPanelRows : (M < kPanelRows ? M : kPanelRows);
  const int64_t piece = kPieceBytes / (static_cast<int64_t>(sizeof(float)) * lanes) / 8 * 8;  // whole meta bytes
  bool ok = true;
  for (int64_t nb0 = n0; nb0 < n1; nb0 += kRowBlock) {
    const int64_t nb1 = nb0 + kRowBlock < n1 ? nb0 + kRowBlock : n1;
    for (int64_t k0 = 0; k0 < K; k0 += piece) {
      const int64_t kl = K - k0 < piece ? K - k0 : piece;
      for (int64_t m0 = 0; m0 < M; m0 += kPanelRows) {
        const int64_t mr = M - m0 < kPanelRows ? M - m0 : kPanelRows;
        float* zm = z + m0 * ldz;
        if (transposed) {
          ok &= block_piece_transposed<T>(vp, meta, K, k0, kl, x + m0 / kPanelRows * ldx, mr, bias, nb0, nb1, n1, zm, ldz);
          continue;
        }
        const float* xm = x + m0 * ldx;
        switch (mr) {
#define SPARSEOPS_PIECE(R) \
  case R: ok &= block_piece<T, R>(vp, meta, K, k0, kl, xm, ldx, bias, nb0, nb1, n1, zm, ldz); break;
          SPARSEOPS_PIECE(1) SPARSEOPS_PIECE(2) SPARSEOPS_PIECE(3) SPARSEOPS_PIECE(4)
#undef SPARSEOPS_PIECE
          default: break;
        }
      }
    }
  }
  return ok;
}

}  // namespace

void pack_x_transposed_avx2(const float* x, int64_t M, int64_t K, float* panels) {
  // 8x8 blocks transposed in registers; torch's transpose + contiguous
  // of an [8, 4096] x took ~54 us on a Zen 3, as long as the kernel's work on a 16-row W.
  const int64_t k8 = (K + 7) / 8 * 8;
  for (int64_t m0 = 0; m0 < M; m0 += kPanelRows) {
    const int64_t mr = M - m0 < kPanelRows ? M - m0 : kPanelRows;
    float* panel = panels + m0 / kPanelRows * 8 * k8;
    int64_t k = 0;
    for (; k + 8 <= K; k += 8) {
      __m256 r[8];
      for (int i = 0; i < 8; ++i) r[i] = i < mr ? _mm256_loadu_ps(x + (m0 + i) * K + k) : _mm256_setzero_ps();
      simd::transpose8x8_ps(r);  // r[j]: column k + j's 8 rows
      for (int i = 0; i < 8; ++i) _mm256_store_ps(panel + (k + i) * 8, r[i]);
    }
    for (; k < k8; ++k) {
      for (int64_t i = 0; i < 8; ++i) panel[k * 8 + i] = i < mr && k < K ? x[(m0 + i) * K + k] : 0.0f;
    }
  }
}

bool packed_meta_bytes_valid_avx2(const uint8_t* p, int64_t bytes) { return meta_valid(p, bytes); }

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
