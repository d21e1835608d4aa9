#pragma once
// Validation of "packed" 2:4 metadata rows (common/sparse24_format.h), cheap enough to run on every
// call of the linear op: the AVX-512 / AVX2 kernels test each W row's piece of meta as they start on it
// (linear24_avx512.cpp has the 64-byte vector form); the portable path checks a block's rows right after
// reading them (then in cache).
// The functions are static (internal linkage): files compiled with -mavx512* / -mavx2 include this
// too, and a shared inline copy could otherwise carry their instructions to CPUs without them.
#include <cstdint>
#include <cstring>

namespace sparseops::sparse24 {

// Per nibble of w: bit 2 set where the code is invalid (first kept index >= second). With f = bits
// [1:0] and s = bits [3:2] of a nibble, (s | 4) - f - 1 = 3 + s - f lies in [0, 6] (no borrow into the
// next nibble) and has bit 2 set exactly when s > f.
static inline uint64_t invalid_code_bits(uint64_t w) {
  constexpr uint64_t k3 = 0x3333333333333333ull, k4 = 0x4444444444444444ull, k1 = 0x1111111111111111ull;
  const uint64_t f = w & k3, s = (w >> 2) & k3;
  return ~((s | k4) - f - k1) & k4;
}

// True when each of the `bytes` bytes at p holds two valid codes: the same test without an early exit
// (the compiler vectorises it); the AVX-512 / AVX2 versions are in linear24_avx512.cpp / _avx2.cpp.
static inline bool packed_meta_bytes_valid(const uint8_t* p, int64_t bytes) {
  uint64_t bad = 0;
  int64_t i = 0;
  for (; i + 8 <= bytes; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    bad |= invalid_code_bits(w);
  }
  if (i < bytes) {
    uint64_t w = 0xEEEEEEEEEEEEEEEEull;  // two valid codes per padding byte
    std::memcpy(&w, p + i, static_cast<size_t>(bytes - i));
    bad |= invalid_code_bits(w);
  }
  return bad == 0;
}

// The first group of a packed metadata row (`groups` codes, two per byte, group 2j in the low nibble of
// byte j) whose code is invalid, or -1. 16 codes per 64-bit step; the padding nibble after an odd group
// count is not read.
static inline int64_t first_invalid_packed_group(const uint8_t* row, int64_t groups) {
  int64_t g = 0;
  for (; g + 16 <= groups; g += 16) {
    uint64_t w;
    std::memcpy(&w, row + g / 2, 8);
    if (const uint64_t bad = invalid_code_bits(w)) return g + __builtin_ctzll(bad) / 4;
  }
  if (g < groups) {
    const int64_t rest = groups - g;  // 1..15 codes in (rest + 1) / 2 bytes
    uint64_t w = 0;
    std::memcpy(&w, row + g / 2, static_cast<size_t>((rest + 1) / 2));
    const uint64_t bad = invalid_code_bits(w) & ((uint64_t{1} << (4 * rest)) - 1);
    if (bad) return g + __builtin_ctzll(bad) / 4;
  }
  return -1;
}

}  // namespace sparseops::sparse24
