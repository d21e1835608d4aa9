#pragma once
// The CPU scan kernels of codebook_lookup: plain pointers and sizes, no torch types, so that the ISA
// variants (lookup_avx512.cpp, lookup_avx2.cpp) compile without torch headers. lookup_cpu.cpp packs the
// inputs, calls one variant per (query block, code block) and re-checks the candidates exactly.
//
// What a scan computes: for every query row i of a packed block and every code k of a packed panel, the
// expanded distance  e(i, k) = |c_k|^2 + sum_d (-2 z_id) c_kd  (fp32, |z_i|^2 left out: it is the same
// for the whole row) -- and, fused into the same register tile, keeps the codes whose e is below the
// row's threshold  thr_i = min_e_i + margin_i  as candidates (RowCands). margin_i bounds twice the fp32
// rounding error of e, so the exact winner is always among the candidates; the glue then picks it by an
// exact float64 (z - c)^2 over the candidates.
#include <cstdint>

namespace sparseops::codebook::cpu {

// Candidate slots per (row, code split). A row whose candidates overflow (more than kCap codes within
// the error bound of its best: duplicate codes, data-initialised codebooks) is flagged; the glue then
// re-collects its codes within the bound from the task's packed codes and keeps their exact winner.
constexpr int kCap = 8;

struct RowCands {
  float thr;       // a code is offered when e < thr (+inf until the first code)
  float best;      // smallest e seen
  float margin;    // the row's error bound
  float scale;     // the int16 screen: the fp32 product of the row's and the codebook's grid steps
  int32_t count;   // valid entries in idx/val
  int32_t overflow;
  int32_t idx[kCap];
  float val[kCap];
};

// Where a scan puts the codes offered to a row whose kCap slots are full: (row within rows, code, value)
// triples, one buffer per task (thread). When it is full, the entries that no longer pass their row's
// threshold are dropped; when it is still full, the row is flagged (overflow). The glue filters the
// entries by the rows' final thresholds and compares them exactly.
struct Spill {
  RowCands* rows;  // the task's rows (the scan's rc)
  int64_t cap;
  int64_t size;
  int32_t* row;
  int32_t* idx;
  float* val;
};

// Codes per register tile (panel width) and the row padding every variant accepts.
constexpr int kNrAvx512 = 32;
constexpr int kNrAvx2 = 16;
constexpr int kNrAvx2Grid = 24;  // the int16 screen's tile: 4 rows x 24 codes
constexpr int kNrPortable = 8;
constexpr int kRowPad = 8;

// zs: [rows][D] fp32 = -2 z (rows a multiple of kRowPad; padded rows are zeros with their own RowCands);
// panel: [ntiles][D][NR] fp32, codes k0 + t*NR + j (padding codes are zeros); cn: [ntiles*NR] fp32 |c|^2
// (+inf for padding codes); rc: [rows] (this block's rows, this code split); spill: see Spill.
void scan_avx512(const float* zs, int64_t rows, int64_t D, const float* panel, const float* cn, int64_t ntiles,
                 int32_t k0, RowCands* rc, Spill* spill);
// bf16 l2 variant (AVX-512 BF16): zs [rows][steps][2] = bf16(-2 z) with D padded to 2 * steps by zeros;
// panel [ntiles][steps][32][2] bf16 codes.
void scan_avx512_bf16(const uint16_t* zs, int64_t rows, int64_t steps, const uint16_t* panel, const float* cn,
                      int64_t ntiles, int32_t k0, RowCands* rc, Spill* spill);
// The same on AMX tiles (lookup_amx.cpp; CPUs with AMX-BF16), on the same packed inputs.
void scan_amx_bf16(const uint16_t* zs, int64_t rows, int64_t steps, const uint16_t* panel, const float* cn,
                   int64_t ntiles, int32_t k0, RowCands* rc, Spill* spill);
void scan_avx2(const float* zs, int64_t rows, int64_t D, const float* panel, const float* cn, int64_t ntiles,
               int32_t k0, RowCands* rc, Spill* spill);
// int16 variant (AVX2, lookup_quant.h; l2 and cosine): zs [rows][steps][2] = -2 z on each row's grid, panel
// [ntiles][steps][24][2] codes on the codebook's grid (D padded to 2 * steps by zeros); e = float(dot) *
// rc[row].scale + cn.
void scan_avx2_i16(const int16_t* zs, int64_t rows, int64_t steps, const int16_t* panel, const float* cn,
                   int64_t ntiles, int32_t k0, RowCands* rc, Spill* spill);

// The pruned search's box test (lookup_cpu.cpp, run_tree): whether some of the kRowPad rows (zt: [D][kRowPad],
// rows in lanes) has its squared distance to the box [lo, hi] (D floats each) at most its cut (cut:
// [kRowPad]). AVX2 + FMA (lookup_avx2.cpp; AVX-512 CPUs run it too).
bool box_within_cut_avx2(const float* lo, const float* hi, const float* zt, const float* cut, int64_t D);

}  // namespace sparseops::codebook::cpu
