#pragma once
// CPU kernels of the sparse24 mask/format/training ops that live outside the *_cpu.cpp glue files: the
// AVX-512 variants (nm_mask_avx512.cpp, compress24_avx512.cpp, srste_avx512.cpp) and the scalar 2:4
// selection the baseline uses.
//
// The AVX-512 files are compiled with -mavx512*: they include no torch header and call no inline
// function shared with baseline files (an inline function compiled in both could be merged by the linker
// into its AVX-512 copy and then run on a CPU without AVX-512). Everything they need is below: plain
// types, declarations, and helpers with internal linkage.
//
// Selection rule (common/nm_select.h top_n_mask): element j of a group is kept iff fewer than n others
// beat it, where k beats j iff |s_k| > |s_j|, or |s_k| == |s_j| and k < j. For non-NaN values the order
// of |s| equals the order of the sign-cleared bit patterns read as integers (fp32, fp16 and bf16 alike),
// which is what the AVX-512 kernels compare; NaN groups are reported, never ranked.
#include <cstdint>

namespace sparseops::sparse24::cpu {

enum class Dtype : int { kFloat32, kFloat16, kBFloat16 };

// ---- nm_mask ----------------------------------------------------------------------------------

// m values with an AVX-512 kernel (a group is a power-of-two block of lanes inside one zmm).
constexpr bool nm_mask_avx512_supports(int64_t m) { return m == 2 || m == 4 || m == 8 || m == 16; }

// Writes out[begin, end) for the flat scores score[begin, end); begin and end are multiples of m.
// Returns the flat index of the first element of the first group in the range that holds a NaN (the
// range is then left partly written), or -1.
int64_t nm_mask_avx512(Dtype dtype, const void* score, bool* out, int64_t begin, int64_t end, int n, int m);

// ---- nm_srste -----------------------------------------------------------------------------------

// The nm_srste forward over the flat w[begin, end) (multiples of m, nm_mask_avx512_supports(m)): the
// keep mask as nm_mask's but with NaN ranked as the largest magnitude, and out = w where kept, +0
// elsewhere (the bits of kept elements unchanged).
void nm_srste_forward_avx512(Dtype dtype, const void* w, void* out, bool* mask, int64_t begin, int64_t end, int n,
                             int m);

// The nm_srste backward over flat elements [begin, end): out = mask ? grad : grad * scale + decay * w in
// float32 (two roundings then the add, no fused multiply-add), rounded once to dtype as torch rounds.
void nm_srste_backward_avx512(Dtype dtype, const void* grad, const void* w, const uint8_t* mask, void* out,
                              int64_t begin, int64_t end, float scale, float decay);

// ---- compress_24 / decompress_24 --------------------------------------------------------------

// Where one row's metadata lives. A metadata word holds the 4 nibbles of groups 4c..4c+3 (group 4c in
// the low nibble). "packed": word c is bytes 2c, 2c+1 of the row (the last byte may be a half word).
// "cutlass": word c is cutlass[(c % 2 ? odd : even) + (c / 2) * pair_stride] (cutlass_meta_offset for
// this row: the offset of word c differs from that of word c % 2 by (c / 2) * 2 * rows).
struct RowMeta {
  uint8_t* packed = nullptr;  // non-null: "packed" layout
  int16_t* cutlass = nullptr;
  int64_t even = 0, odd = 0, pair_stride = 0;
};

// One row of compress_24: w has cols elements (cols % 4 == 0), values receives cols / 2. Returns the
// index within the row of the first group that holds a NaN (prune) or more than 2 non-zeros (!prune),
// or -1; after such a group the row is left partly written.
int64_t compress24_row_avx512(Dtype dtype, const void* w, void* values, const RowMeta& meta, int64_t cols,
                              bool prune);

// One row of decompress_24 (the meta pointers are only read). Returns the index within the row of the
// first group with an invalid code, or -1; after such a group the row is left partly written.
int64_t decompress24_row_avx512(Dtype dtype, const void* values, const RowMeta& meta, void* dense, int64_t cols);

// ---- transposable_mask_24 ------------------------------------------------------------------------

// The 16 4x4 blocks of rows [row0, row0 + 4) x columns [col0, col0 + 64) of w (row stride cols): each
// block's keep pattern, the best of codes[0..num_codes) (the table of common/transposable24.h) by its
// solver's sums and tie rule, written into mask (same strides). Returns false, writing nothing, when
// one of the values is NaN.
bool transposable16_avx512(Dtype dtype, const void* w, int64_t cols, int64_t row0, int64_t col0, const uint16_t* codes,
                           int num_codes, bool* mask);

// ---- scalar helpers (baseline files only; internal linkage) --------------------------------------

// top_n_mask(mag, n, 4) with the 6 pairwise compares instead of 16 (identical for non-NaN input):
// k > j beats j iff mag[k] > mag[j]; k < j beats j iff !(mag[j] > mag[k]).
static inline uint32_t top_n_mask4(const float* mag, int n) {
  const int g01 = mag[1] > mag[0], g02 = mag[2] > mag[0], g03 = mag[3] > mag[0];
  const int g12 = mag[2] > mag[1], g13 = mag[3] > mag[1], g23 = mag[3] > mag[2];
  const int r0 = g01 + g02 + g03;
  const int r1 = 1 - g01 + g12 + g13;
  const int r2 = 2 - g02 - g12 + g23;
  const int r3 = 3 - g03 - g13 - g23;
  return static_cast<uint32_t>(r0 < n) | static_cast<uint32_t>(r1 < n) << 1 | static_cast<uint32_t>(r2 < n) << 2 |
         static_cast<uint32_t>(r3 < n) << 3;
}

}  // namespace sparseops::sparse24::cpu
