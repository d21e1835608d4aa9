#pragma once
// Row kernels of the CPU sparse24_linear, shared by linear24_cpu.cpp (baseline, large-M path, checks,
// registration) and linear24_avx512.cpp (compiled with -mavx512*).
//
// Deliberately free of torch headers: linear24_avx512.cpp includes only this file, so no inline
// function from a shared header is ever compiled with AVX-512 instructions (the linker may keep any
// one copy of an inline function, and an AVX-512 copy would then run on CPUs without it).
#include <cstdint>

namespace sparseops::sparse24 {

enum class ElemType { kFloat, kHalf, kBFloat16 };

// Small-M kernel: for every output row n in [n0, n1) and every m < M,
//   z[m * ldz + n] = bias[n] + sum_k W[n, k] * x[m * ldx + k]     (fp32 accumulation)
// W: values [N, K/2] (elements of type `type`, row stride K/2) and packed meta uint8 [N, ceil(K/8)]
// (row stride ceil(K/8)); x: fp32 [M, K] with row stride ldx >= K (linear24_cpu.cpp pads it so that
// rows do not start 4 KiB apart: 8 rows read in lockstep would then share L1 sets); bias: N floats or
// nullptr. K % 4 == 0, K > 0.
// Each W row is read once for all M rows (M is processed 8 rows at a time from L1).
void linear24_rows_baseline(ElemType type, const void* values, const uint8_t* meta, int64_t K, const float* x,
                            int64_t ldx, int64_t M, const float* bias, int64_t n0, int64_t n1, float* z, int64_t ldz);
// The AVX-512 kernel: the same z, with x as fp32 for kFloat/kHalf and as bf16 (uint16 bits) for
// kBFloat16 (multiplied in bf16 pairs with vdpbf16ps; products are exact in fp32, the sum is fp32), in
// the "panel" layout: one panel per group of up to kPanelRows = 8 rows (the rows one kernel pass
// reads), group g's panel starting at x + g * kPanelRows * chunks * C; within it, ceil(K / C) = chunks
// chunks of C = avx512_x_chunk(type) columns (128 bytes), each holding that chunk of the group's mb rows
// back to back: element (m0 + r, k) at panel[(k / C) * (mb * C) + r * C + k % C], zero beyond K (so the
// last partial step loads x unmasked). The rows that one kernel step reads together then lie in one
// 1 KiB block: on the Zen 5 this was tuned on, a microbenchmark loading from 8 rows >= 4 KiB apart
// (4 KiB pages) ran at a quarter of the L1 load rate (not so with 2 MiB pages). A group's K piece is
// contiguous too: with all M rows interleaved, the 8 rows of a pass would occupy every other 1 KiB
// (M = 16), i.e. half of the L1 sets.
// The AVX-512 and AVX2 kernels test every meta code they read and return false when one is invalid
// (first kept index not below the second): z is then garbage and the caller raises. An invalid code
// still indexes within its group, so nothing outside W's and x's rows is read.
constexpr int64_t kPanelRows = 8;
constexpr int64_t avx512_x_chunk(ElemType type) { return type == ElemType::kBFloat16 ? 64 : 32; }
bool linear24_rows_avx512(ElemType type, const void* values, const uint8_t* meta, int64_t K, const void* x, int64_t M,
                          const float* bias, int64_t n0, int64_t n1, float* z, int64_t ldz);

// The AVX2 kernel (x86 CPUs without AVX-512): the same z. x is fp32 in one of two layouts, by M:
// - M < 5 (expand scheme, linear24_avx2.cpp): the portable kernel's, rows ldx apart, each also zero from
//   K up to the next multiple of 8;
// - M >= 5 (transposed scheme): x^T panels, one per group of kPanelRows rows, ldx floats apart (>= 8 *
//   round_up(K, 8)), group g's element (8 g + r, k) at x[g * ldx + 8 k + r], zero for k >= K and for
//   rows beyond M; 32-byte aligned.
constexpr bool avx2_x_transposed(int64_t M) { return M >= 5; }
// x fp32 [M, K] (contiguous) into those panels (ceil(M / 8) * 8 * round_up(K, 8) floats, 32-byte aligned).
void pack_x_transposed_avx2(const float* x, int64_t M, int64_t K, float* panels);
bool linear24_rows_avx2(ElemType type, const void* values, const uint8_t* meta, int64_t K, const float* x,
                        int64_t ldx, int64_t M, const float* bias, int64_t n0, int64_t n1, float* z, int64_t ldz);

// The AMX kernel (linear24_amx.cpp; bf16 only, when cpu_use_amx_bf16()): the same z, from x packed by
// pack_x_amx_bf16 into the VNNI layout of AMX's second source: per K step of 32 columns and block of 16
// x rows, a 1 KiB tile whose row k holds K pair k of the 16 rows (bf16 x[16 b + j][32 s + 2k + t] at
// packed[((s * ceil(M / 16) + b) * 16 + k) * 32 + 2 j + t]), zero beyond M and K; 64-byte aligned.
// pack_x_amx_bf16 writes steps [step0, step1) of ceil(K / 32) (callers split them across threads).
// Pruned positions are multiplied by an explicit zero, as in the AVX2 expand scheme.
constexpr int64_t amx_x_elems(int64_t M, int64_t K) { return (K + 31) / 32 * ((M + 15) / 16) * 512; }
void pack_x_amx_bf16(const uint16_t* x, int64_t M, int64_t K, int64_t step0, int64_t step1, uint16_t* packed);
bool linear24_rows_amx_bf16(const uint16_t* values, const uint8_t* meta, int64_t K, const uint16_t* xpacked, int64_t M,
                            const float* bias, int64_t n0, int64_t n1, float* z, int64_t ldz);

// Metadata check: true when each of the `bytes` bytes at p holds two valid 2:4 codes (low nibble's
// first kept index < its second, the same for the high nibble). The AVX-512 / AVX2 versions of the
// SWAR test in packed_meta_check.h, 64 / 32 bytes per step.
bool packed_meta_bytes_valid_avx512(const uint8_t* p, int64_t bytes);
bool packed_meta_bytes_valid_avx2(const uint8_t* p, int64_t bytes);

// Large-M path: rows [n0, n0 + rows) of packed W written dense into `dense` ([rows, K], row stride K).
void linear24_decompress_rows_avx512(ElemType type, const void* values, const uint8_t* meta, int64_t K, int64_t n0,
                                     int64_t rows, void* dense);

}  // namespace sparseops::sparse24
