#pragma once
// The 2:4 metadata formats, shared by CPU and CUDA code.
//
// Metadata code of one group of 4: a nibble, bits [1:0] = index of the first kept element, bits
// [3:2] = index of the second, first < second. This is the code the sparse tensor cores read, so
// the layouts below differ only in where nibbles are stored, never in the nibbles themselves.
//
//  "packed"  (sparseops' own, CPU and CUDA): uint8 meta [rows, ceil(cols/8)]; byte j of a row holds
//            group 2j in its low nibble and group 2j+1 in its high nibble. values [rows, cols/2] hold
//            the kept elements of each group in index order.
//  "cutlass" (CUTLASS sm80 SparseGemm, 16-bit operands): int16 meta [rows, cols/16]; word (r, c)
//            holds groups 4c..4c+3 of row r (group 4c in the low nibble) -- the packed bytes read as
//            little-endian int16 -- stored (rows % 32 == 0, cols % 32 == 0) at the ColumnMajorInterleaved<2> position with CUTLASS's
//            row interleave and 2x2 swizzle (cutlass_meta_offset). values as in "packed".
#include <cstdint>
#include "common/host_device.h"

namespace sparseops::sparse24 {

SPARSEOPS_HD int popcount4(uint32_t keep) {
  return (keep & 1) + ((keep >> 1) & 1) + ((keep >> 2) & 1) + ((keep >> 3) & 1);
}

// Adds the lowest unkept positions to a keep mask of at most 2 bits until exactly 2 are set, so that
// groups with fewer than two non-zeros still get a valid code (their extra kept value is zero).
SPARSEOPS_HD uint32_t complete_pair(uint32_t keep) {
  for (int j = 0; j < 4 && popcount4(keep) < 2; ++j) keep |= 1u << j;
  return keep;
}

// Nibble for a keep mask with exactly two bits set.
SPARSEOPS_HD uint8_t code_from_keep(uint32_t keep) {
  int first = -1, second = -1;
  for (int j = 0; j < 4; ++j) {
    if (keep & (1u << j)) {
      if (first < 0) first = j; else second = j;
    }
  }
  return static_cast<uint8_t>(first | (second << 2));
}

SPARSEOPS_HD int code_first(uint8_t code) { return code & 3; }
SPARSEOPS_HD int code_second(uint8_t code) { return (code >> 2) & 3; }
SPARSEOPS_HD bool code_valid(uint8_t code) { return code_first(code) < code_second(code); }

// Sizes of the metadata tensors (the fake kernels use the same functions, so shapes cannot drift).
SPARSEOPS_HD int64_t packed_meta_cols(int64_t cols) { return (cols / 4 + 1) / 2; }
SPARSEOPS_HD int64_t cutlass_meta_cols(int64_t cols) { return cols / 16; }
constexpr int64_t kCutlassRowMultiple = 32;
constexpr int64_t kCutlassColMultiple = 32;  // meta words come in 2x2 swizzled blocks

// Linear int16 offset of metadata word (r, c) in CUTLASS's reordered layout (rows % 32 == 0).
SPARSEOPS_HD int64_t cutlass_meta_offset(int64_t r, int64_t c, int64_t rows) {
  int64_t dst_row = r / 32 * 32 + (r % 8) * 4 + (r % 32) / 8;
  int64_t dst_col = c;
  if (dst_row % 2 == 0 && dst_col % 2 == 1) {  // swap the 2x2 block's off-diagonal words
    ++dst_row;
    --dst_col;
  } else if (dst_row % 2 == 1 && dst_col % 2 == 0) {
    --dst_row;
    ++dst_col;
  }
  return (dst_col / 2) * rows * 2 + dst_row * 2 + dst_col % 2;
}

}  // namespace sparseops::sparse24
