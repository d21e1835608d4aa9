#pragma once
// Transposable 2:4 masks: the pattern table and the 4x4 block solver, shared by the CPU (.cpp) and
// CUDA (.cu) kernels of transposable_mask_24 so that both agree bit for bit.
//
// A transposable 2:4 pattern is a 4x4 0/1 matrix with exactly two ones in every row and every column
// (so the mask is 2:4 along the rows of W and along the rows of W^T). There are 90 of them.
//
// Enumeration order (it decides ties): a pattern is the tuple (p0, p1, p2, p3) of the column pairs
// kept in rows 0..3, each pair an index into
//     0:{0,1}  1:{0,2}  2:{0,3}  3:{1,2}  4:{1,3}  5:{2,3}
// and the 90 valid tuples are listed in lexicographic order of (p0, p1, p2, p3). Pattern 0 is
// ({0,1},{0,1},{2,3},{2,3}); pattern 89 is ({2,3},{2,3},{0,1},{0,1}).
//
// Solver: the kept magnitude of a pattern is ((s0[p0] + s1[p1]) + s2[p2]) + s3[p3], with
// sr[p] = |w[r][i]| + |w[r][j]| for pair p = {i, j}, i < j, all in float32 in exactly this order (the
// reference python/sparseops/reference/training.py sums the same way). The first pattern in
// enumeration order with the largest sum wins (a strict '>' scan).
#include <cstdint>

#include "common/host_device.h"

namespace sparseops {

constexpr int kTransposable24Patterns = 90;

// Column indices of pair p (0..5) in the order documented above.
SPARSEOPS_HD constexpr int t24_pair_first(int p) { return p < 3 ? 0 : (p < 5 ? 1 : 2); }
SPARSEOPS_HD constexpr int t24_pair_second(int p) { return p < 3 ? p + 1 : (p < 5 ? p - 1 : 3); }
// Row nibble (bit j = column j kept) of pair p.
SPARSEOPS_HD constexpr uint32_t t24_pair_bits(int p) { return (1u << t24_pair_first(p)) | (1u << t24_pair_second(p)); }

// Pattern codes: pair index of row r in bits [4r+3 : 4r].
struct Transposable24Table {
  uint16_t code[kTransposable24Patterns];
};

// True when rows keeping column pairs a, b, c, d keep exactly two elements of every column.
SPARSEOPS_HD constexpr bool t24_is_transposable(int a, int b, int c, int d) {
  for (int col = 0; col < 4; ++col) {
    const uint32_t count = ((t24_pair_bits(a) >> col) & 1) + ((t24_pair_bits(b) >> col) & 1) +
                           ((t24_pair_bits(c) >> col) & 1) + ((t24_pair_bits(d) >> col) & 1);
    if (count != 2) return false;
  }
  return true;
}

constexpr int count_transposable24_patterns() {
  int k = 0;
  for (int a = 0; a < 6; ++a)
    for (int b = 0; b < 6; ++b)
      for (int c = 0; c < 6; ++c)
        for (int d = 0; d < 6; ++d) k += t24_is_transposable(a, b, c, d);
  return k;
}

constexpr Transposable24Table make_transposable24_table() {
  Transposable24Table t{};
  int k = 0;
  for (int a = 0; a < 6; ++a)
    for (int b = 0; b < 6; ++b)
      for (int c = 0; c < 6; ++c)
        for (int d = 0; d < 6; ++d)
          if (t24_is_transposable(a, b, c, d) && k < kTransposable24Patterns)
            t.code[k++] = static_cast<uint16_t>(a | (b << 4) | (c << 8) | (d << 12));
  return t;
}
static_assert(count_transposable24_patterns() == kTransposable24Patterns, "there are 90 transposable 2:4 patterns");
static_assert(make_transposable24_table().code[0] == (0 | (0 << 4) | (5 << 8) | (5 << 12)), "pattern 0 order");
static_assert(make_transposable24_table().code[89] == (5 | (5 << 4) | (0 << 8) | (0 << 12)), "pattern 89 order");

// Index of the best pattern for one 4x4 block of magnitudes (row-major, mag[4 * r + j]); see the
// file comment for the summation order and the tie rule. `codes` is the table's code array (host or
// __constant__ memory). Magnitudes must not be NaN (the callers reject NaN blocks).
SPARSEOPS_HD int solve_transposable24(const float* mag, const uint16_t* codes) {
  float pair_sum[4][6];
#pragma unroll
  for (int r = 0; r < 4; ++r) {
#pragma unroll
    for (int p = 0; p < 6; ++p) pair_sum[r][p] = mag[4 * r + t24_pair_first(p)] + mag[4 * r + t24_pair_second(p)];
  }
  float best = -1.0f;
  int best_index = 0;
  for (int i = 0; i < kTransposable24Patterns; ++i) {
    const uint32_t c = codes[i];
    const float s = ((pair_sum[0][c & 0xF] + pair_sum[1][(c >> 4) & 0xF]) + pair_sum[2][(c >> 8) & 0xF]) +
                    pair_sum[3][(c >> 12) & 0xF];
    if (s > best) {
      best = s;
      best_index = i;
    }
  }
  return best_index;
}

// Row r's keep nibble (bit j = column j) of pattern code c.
SPARSEOPS_HD uint32_t transposable24_row_bits(uint32_t c, int r) { return t24_pair_bits((c >> (4 * r)) & 0xF); }

}  // namespace sparseops
