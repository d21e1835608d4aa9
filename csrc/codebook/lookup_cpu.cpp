// codebook_lookup on CPU: the nearest code of every query row, ties to the lowest index, without ever
// materialising the N x K distance matrix.
//
// 1. Once per call: |c_k|^2 in fp32 (cosine: the inverse norms, in float64), max_k |c_k|^2, and |z_i|^2;
//    a NaN/Inf (or a squared norm overflowing fp32, l2) is an error naming the row.
// 2. The codes in superblocks of <= 16 MiB fp32, each packed once (in parallel) into [tile][D][NR] panels
//    shared by all threads. Per superblock, tasks = (block of <= 256 query rows) x (code split; more than
//    one only when there are too few query blocks to keep every thread busy), taken by the threads from
//    an atomic counter. A task packs its rows as -2 z (fp32; cosine: normalised) and runs the ISA scan
//    (lookup_tile.h: register tile + fused candidate test) over its codes in L2-sized blocks
//    (KC x D fp32 <= 192 KiB). Screens other than fp32 pack bf16 pairs (AVX-512 BF16, AMX) or int16 grid
//    values (AVX2: lookup_quant.h, after a probe of a few rows shows the codes are not crowded).
// 3. Per row, the candidates of every split are re-checked exactly: float64 (z - c)^2 (cosine: 1 - cos),
//    the smallest wins, ties to the lowest index. A row with more than kCap codes within its bound
//    (duplicate or near-identical codes, e.g. a codebook initialised from data) puts the others in its
//    task's spill buffer; the task compares them exactly at its end and keeps only the winner. Should
//    the buffer fill up, the task re-collects such a row's codes within the bound from the packed block.
// In few dimensions (l2, D <= 10, many codes and rows) steps 2-3 become a pruned search instead: a k-d tree
// over the codes (code_tree.h), a block of rows scanning only the leaves within reach of its rows (see
// run_tree); same candidates, same re-check, same answer.
// Extra memory: O(N + K) -- |c|^2 and the inverse norms (K floats/doubles), |z|^2 (N floats), the
// candidate records (N x splits x 88 B), the int16 screen's row grids (N doubles + N floats) -- plus one
// packed code superblock (<= 16 MiB, less when the codebook is smaller; the int16 screen's probe: <= 2 MiB
// before it) and per thread one packed query block (<= 256 x D fp32) and a 384 KiB spill buffer; and the
// outputs.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <numeric>
#include <type_traits>
#include <utility>
#include <vector>

#include "codebook/code_tree.h"
#include "codebook/lookup_bound.h"
#include "codebook/lookup_checks.h"
#include "codebook/lookup_cpu_kernels.h"
#include "codebook/lookup_quant.h"
#include "common/aligned_vector.h"
#include "common/cpu_features.h"
#include "common/dispatch.h"

// ---- the portable scan: the same tile as the ISA files, on 4-wide GCC/Clang vector extensions -------
namespace sparseops::codebook::cpu {
namespace {

struct VPortable {
  using F = float __attribute__((vector_size(16)));
  static constexpr int kW = 4;
  static F load(const float* p) {
    F v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
  static F bcast(const float* p) {
    const float x = *p;
    return F{x, x, x, x};
  }
  static F fma(F a, F b, F c) { return a * b + c; }
  static uint32_t lt(F a, F b) {
    const auto m = a < b;
    return static_cast<uint32_t>((m[0] & 1) | ((m[1] & 1) << 1) | ((m[2] & 1) << 2) | ((m[3] & 1) << 3));
  }
  static void store(float* p, F v) { std::memcpy(p, &v, sizeof v); }
  using E = float;
  using P = F;
  static constexpr int kPair = 1;
  static P load_panel(const float* p) { return load(p); }
  static F bcast_z(const float* p) { return bcast(p); }
  static F dot(F acc, F b, P p) { return fma(b, p, acc); }
};

#include "codebook/lookup_tile.h"

}  // namespace

void scan_portable(const float* zs, int64_t rows, int64_t D, const float* panel, const float* cn, int64_t ntiles,
                   int32_t k0, RowCands* rc, cpu::Spill* spill) {
  static_assert(VPortable::kW * 2 == kNrPortable);
  scan_tiles<VPortable, 4, 2>(zs, rows, D, panel, cn, ntiles, k0, rc, spill);
}

}  // namespace sparseops::codebook::cpu

namespace sparseops::codebook {
namespace {

using cpu::RowCands;

enum class ScanIsa { kPortable, kAvx2, kAvx512 };

ScanIsa scan_isa() {
#if SPARSEOPS_X86_KERNELS
  if (cpu_use_avx512()) return ScanIsa::kAvx512;
  if (cpu_use_avx2()) return ScanIsa::kAvx2;
#endif
  return ScanIsa::kPortable;
}

int scan_nr(ScanIsa isa) {
  switch (isa) {
    case ScanIsa::kAvx512: return cpu::kNrAvx512;
    case ScanIsa::kAvx2: return cpu::kNrAvx2;
    default: return cpu::kNrPortable;
  }
}

void run_scan(ScanIsa isa, const float* zs, int64_t rows, int64_t D, const float* panel, const float* cn,
              int64_t ntiles, int32_t k0, RowCands* rc, cpu::Spill* spill) {
#if SPARSEOPS_X86_KERNELS
  if (isa == ScanIsa::kAvx512) return cpu::scan_avx512(zs, rows, D, panel, cn, ntiles, k0, rc, spill);
  if (isa == ScanIsa::kAvx2) return cpu::scan_avx2(zs, rows, D, panel, cn, ntiles, k0, rc, spill);
#endif
  cpu::scan_portable(zs, rows, D, panel, cn, ntiles, k0, rc, spill);
}

constexpr double kEps = 1e-12;          // cosine: x / max(|x|, eps), as torch.nn.functional.normalize
constexpr double kUnit = 0x1p-24;       // fp32 unit roundoff
constexpr double kUnitTensorCore = 0x1p-23;  // fp32 sums that may truncate (lookup_bound.h)
constexpr int64_t kRoundedScreenMinD = 64;  // see Lookup::run
// The int16 screen (AVX2; Lookup::run): from D = 16 (Zen 3, one thread, random codes, N = 2048,
// K = 16384: 1.17x the fp32 scan at D = 16, ~1.45x at D = 64-256, a tie at D = 8) to D = 4096 (finer
// grids below; beyond, rows spread over many dims get coarse grids). kGridProbeRows rows, evenly spaced,
// are screened against up to kGridProbeCodes codes first; more than kGridProbeMaxCands candidates per row
// on average (crowded codes, e.g. a codebook initialised from image patches: hundreds) keeps the fp32
// scan, whose tighter margin passes fewer.
constexpr int64_t kGridScreenMinD = 16;
constexpr int64_t kGridScreenMaxD = 4096;
constexpr int64_t kGridProbeRows = 32;
constexpr int64_t kGridProbeCodes = 4096;
constexpr double kGridProbeMaxCands = 4.0;
constexpr int64_t kSpillCap = 1 << 15;  // spilled candidates per task (see cpu::Spill): 384 KiB per thread
// The pruned search (code_tree.h): leaves of kTreeLeaf codes (a multiple of every ISA's tile width; 32 and
// 64 spent more on box tests than they saved, 256 scanned too much), used by default for l2 lookups with
// D <= kTreeMaxD, K >= kTreeMinK, N >= kTreeMinN and N >= K / kTreeCodesPerRow, where it beat the
// brute-force scan (Zen 4, 2 threads, Gaussian codes and queries, N = 16384 unless said): K = 262144:
// 3.7x (D = 8), 4.7x (D = 6), 1.8x (D = 10), 1.2x (D = 12), 0.6x (D = 16); D = 8: 1.35x at K = 262144,
// N = 2048, 0.74x at N = 1024; 1.8x at K = 65536, a tie at K = 16384; 3.9x at K = 2^20 but 0.58x at
// N = 2048 (its build took ~300 ms). Queries go in blocks of cpu::kRowPad rows, kTreeBlocksPerTask blocks
// a task.
constexpr int64_t kTreeLeaf = 128;
constexpr int64_t kTreeMaxD = 10;
constexpr int64_t kTreeMinK = 65536;
constexpr int64_t kTreeMinN = 2048;
constexpr int64_t kTreeCodesPerRow = 128;
constexpr int64_t kTreeBlocksPerTask = 8;
static_assert(kTreeLeaf % cpu::kNrAvx512 == 0 && kTreeLeaf % cpu::kNrAvx2 == 0 && kTreeLeaf % cpu::kNrPortable == 0);

// An on/off switch read from the environment per call: 0 or 1, or -1 when unset or empty (the default rule);
// another value is ignored with a warning (once per process and switch: `warned`).
int env_switch(const char* name, std::atomic<bool>& warned) {
  const char* env = std::getenv(name);
  if (env == nullptr || env[0] == '\0') return -1;
  if (std::strcmp(env, "0") == 0 || std::strcmp(env, "1") == 0) return env[0] - '0';
  if (!warned.exchange(true)) TORCH_WARN("sparseops: ignoring ", name, "=\"", env, "\" (expected 0 or 1); using the default");
  return -1;
}

// SPARSEOPS_CODEBOOK_TREE: "0" never uses the pruned search, "1" uses it for every l2 lookup (tests), unset
// or empty: the measured default above.
int tree_override() {
  static std::atomic<bool> warned{false};
  return env_switch("SPARSEOPS_CODEBOOK_TREE", warned);
}

// SPARSEOPS_CODEBOOK_GRID: "0" never uses the int16 screen, "1" uses it for every lookup on AVX2 with
// D <= kGridScreenMaxD (tests: crowded, off-centre and extreme inputs), unset or empty: the rule above.
int grid_override() {
  static std::atomic<bool> warned{false};
  return env_switch("SPARSEOPS_CODEBOOK_GRID", warned);
}

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Records the smallest bad row index (several threads may find one).
void note_bad(std::atomic<int64_t>& slot, int64_t i) {
  int64_t cur = slot.load();
  while (i < cur && !slot.compare_exchange_weak(cur, i)) {
  }
}

template <typename T>
struct Lookup {
  const T* z;
  const T* cb;
  int64_t N, K, D;
  bool cosine;
  std::vector<float> cn;        // per code: |c|^2 (l2) or 1 (cosine: ranks by -2 zhat.chat alone)
  std::vector<double> cinv;     // cosine: 1 / max(|c|, eps)
  std::vector<double> zinv;     // cosine: 1 / max(|z|, eps)
  std::vector<uint8_t> zero_row;  // cosine: z_i == 0 (cos is 0 for every code: all tie, code 0 wins)
  std::vector<float> margin;    // per row: bound on twice the fp32 error of the expanded distance
  std::vector<float> zz;        // the pruned search: per row |z|^2 in fp32
  bool tree_search = false;
  float maxc2 = 0.0f;
  // fp32/fp16 inputs screened with bf16-rounded values (VDPBF16PS; see run()): the margin then also
  // covers the rounding of z and c to bf16.
  bool rounded_screen = false;
  bool bf16_scan_on_amx = false;  // the bf16 screen runs on AMX tiles (its margin: kUnitTensorCore)
  // l2 on AVX2 (no AVX-512 BF16), see run(): the int16 screen (lookup_quant.h) with grid steps code_step
  // for the codebook and row_step[i] for -2 z_i; row_scale[i] = fp32(row_step[i] * code_step).
  bool grid_screen = false;
  int grid_forced = -1;  // SPARSEOPS_CODEBOOK_GRID (grid_override)
  double code_step = 0.0;
  double code_grid_norm = 0.0;  // bound on max_k |cq_k|_2
  double max_code_l1 = 0.0;     // max_k |c_k|_1
  std::vector<double> row_step;
  std::vector<float> row_scale;

  // Whether the codebook is roughly centred: |mean c|^2 <= E|c|^2 / 2 over an evenly spaced sample of at
  // most 4096 codes. Off-centre data make bf16's rounding (relative to |z| |c|) large against the gaps
  // between codes, and the rounded screen would pass too many candidates: the fp32 scan is used then.
  bool centred_codebook() const {
    const int64_t step = std::max<int64_t>(1, K / 4096);
    std::vector<double> mean(D, 0.0);
    double sq = 0.0;
    int64_t m = 0;
    for (int64_t k = 0; k < K; k += step, ++m) {
      for (int64_t d = 0; d < D; ++d) mean[d] += static_cast<float>(cb[k * D + d]);
      sq += cn[k];
    }
    double mean2 = 0.0;
    for (int64_t d = 0; d < D; ++d) mean2 += (mean[d] / m) * (mean[d] / m);
    return mean2 <= 0.5 * sq / m;
  }

  // |x|^2 of a row in fp32 with 8 partial sums (vectorisable; the margin's error bound holds for any
  // summation order).
  float sq_norm_f32(const T* x) const {
    float acc[8] = {};
    int64_t d = 0;
    for (; d + 8 <= D; d += 8) {
      for (int j = 0; j < 8; ++j) {
        const float v = static_cast<float>(x[d + j]);
        acc[j] += v * v;
      }
    }
    float s = 0.0f;
    for (; d < D; ++d) {
      const float v = static_cast<float>(x[d]);
      s += v * v;
    }
    for (int j = 0; j < 8; ++j) s += acc[j];
    return s;
  }

  void prepare() {
    prepare_codes();
    prepare_rows();
  }

  // Per code: |c|^2 in fp32 (cosine: the inverse norms), their max; whether the rounded / int16 screens
  // stay on (centred_codebook) and the int16 screen's codebook grid. NaN/Inf is an error naming the row.
  void prepare_codes() {
    cn.assign(K, 1.0f);
    if (cosine) cinv.resize(K);
    std::atomic<int64_t> bad{std::numeric_limits<int64_t>::max()};
    at::parallel_for(0, K, 256, [&](int64_t b, int64_t e) {
      for (int64_t k = b; k < e; ++k) {
        const T* c = cb + k * D;
        if (!cosine) {  // a NaN/Inf value makes s NaN/Inf too
          const float s = sq_norm_f32(c);
          if (!std::isfinite(s)) note_bad(bad, k);
          cn[k] = s;
          continue;
        }
        double s64 = 0.0;
        for (int64_t d = 0; d < D; ++d) {
          const double v = static_cast<float>(c[d]);
          s64 += v * v;
        }
        if (!std::isfinite(s64)) note_bad(bad, k);
        cinv[k] = 1.0 / std::max(std::sqrt(s64), kEps);
      }
    });
    TORCH_CHECK(bad.load() == std::numeric_limits<int64_t>::max(), "codebook_lookup: expected finite codebook values "
                "(got NaN or Inf, or a squared norm beyond float32, in codebook row ", bad.load(), ")");
    maxc2 = cosine ? 1.0f : *std::max_element(cn.begin(), cn.end());
    if (rounded_screen && !centred_codebook()) rounded_screen = false;
    if (grid_screen && grid_forced != 1 && !cosine && !centred_codebook()) grid_screen = false;
    if (grid_screen) {  // the codebook's grid from max |c_kd|, max_k |c_k|_2, max_k |c_k|_1 of the packed
                        // values (cosine: normalised as pack_codes does)
      struct Stats {
        double max_abs = 0.0, max_l1 = 0.0, max_l2sq = 0.0;
      };
      const Stats st = at::parallel_reduce(0, K, 256, Stats{}, [&](int64_t b, int64_t e, Stats acc) {
        for (int64_t k = b; k < e; ++k) {
          double l1 = 0.0, l2sq = 0.0;
          const float scale = cosine ? static_cast<float>(cinv[k]) : 1.0f;
          for (int64_t d = 0; d < D; ++d) {
            const float x = static_cast<float>(cb[k * D + d]);
            const double v = std::fabs(static_cast<double>(cosine ? x * scale : x));
            acc.max_abs = std::max(acc.max_abs, v);
            l1 += v;
            l2sq += v * v;
          }
          acc.max_l1 = std::max(acc.max_l1, l1);
          acc.max_l2sq = std::max(acc.max_l2sq, l2sq);
        }
        return acc;
      }, [](Stats a, Stats b) {
        return Stats{std::max(a.max_abs, b.max_abs), std::max(a.max_l1, b.max_l1), std::max(a.max_l2sq, b.max_l2sq)};
      });
      const double shape = st.max_abs > 0.0 ? std::sqrt(st.max_l2sq) / st.max_abs : 1.0;
      const double levels = code_levels(shape);
      code_step = grid_step(st.max_abs, levels);
      code_grid_norm = grid_norm_bound(levels, shape, D);
      max_code_l1 = st.max_l1;
    }
  }

  // Per row: |z|^2 and the screen's margin (and, for the screens that need them, |z|^2 in fp32, cosine's
  // 1 / |z|, the int16 screen's grid); NaN/Inf in z is an error naming the row. After prepare_codes().
  void prepare_rows() {
    std::atomic<int64_t> bad{std::numeric_limits<int64_t>::max()};
    if (grid_screen) {
      row_step.resize(N);
      row_scale.resize(N);
    }
    margin.resize(N);
    if (tree_search) zz.resize(N);
    // AMX's tile products (bf16 scans on CPUs with AMX-BF16) get the tensor-core accumulation bound.
    const bool amx = bf16_scan_on_amx && (rounded_screen || std::is_same_v<T, c10::BFloat16>);
    const double unit = amx ? kUnitTensorCore : kUnit;
    if (cosine) {
      zinv.resize(N);
      zero_row.assign(N, 0);
    }
    at::parallel_for(0, N, 256, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const T* zr = z + i * D;
        float s = 0.0f;
        double s64 = 0.0, l1 = 0.0, max_abs = 0.0;
        for (int64_t d = 0; d < D; ++d) {
          const float v = static_cast<float>(zr[d]);
          s += v * v;
          s64 += static_cast<double>(v) * v;
          l1 += std::fabs(static_cast<double>(v));
          max_abs = std::max(max_abs, std::fabs(static_cast<double>(v)));
        }
        if (!std::isfinite(s64) || (!cosine && !std::isfinite(s))) note_bad(bad, i);
        if (tree_search) zz[i] = s;
        // |e~ - e| <= gamma_D (3 |c|^2 + |z|^2) for the candidate and for the best: 2x, with slack.
        double zz = s;
        if (cosine) {
          zinv[i] = 1.0 / std::max(std::sqrt(s64), kEps);
          zero_row[i] = s64 == 0.0;
          zz = 1.0;  // normalised; the normalisation's own rounding is covered by the extra 4 terms below
        }
        // lookup_bound.h: fp32 sums, flushed denormals (VDPBF16PS), bf16 rounding when rounded_screen.
        double bound = screen_margin(D, unit, maxc2, zz, rounded_screen);
        if (grid_screen) {  // -2 z_i on its own grid; the grids' error on top (lookup_quant.h)
          // cosine: of the normalised row (pack_rows rounds z / |z| to fp32: 2^-20 of slack covers it)
          const double norm = cosine ? zinv[i] * (1.0 + 0x1p-20) : 1.0;
          const double shape = max_abs > 0.0 ? std::sqrt(s64) / max_abs : 1.0;
          const double levels = row_levels(shape, code_grid_norm, D);  // >= ~46000 / sqrt(D) for D <= 4096
          TORCH_INTERNAL_ASSERT(levels >= 1.0, "codebook_lookup: int16 screen without a row grid");
          row_step[i] = grid_step(2.0 * max_abs * norm, levels);
          row_scale[i] = static_cast<float>(row_step[i] * code_step);
          bound += quant_margin(row_step[i], code_step, 2.0 * l1 * norm, max_code_l1, D, row_scale[i]);
        }
        margin[i] = static_cast<float>(std::min(bound, 3.0e38));
      }
    });
    TORCH_CHECK(bad.load() == std::numeric_limits<int64_t>::max(), "codebook_lookup: expected finite z values "
                "(got NaN or Inf, or a squared norm beyond float32, in row ", bad.load(), " of z flattened to [N, D])");
  }

  // Whether the int16 screen keeps few candidates on these inputs (see kGridProbeRows): kGridProbeRows
  // rows spread over z, screened against the first kGridProbeCodes codes (fewer for D > 256: <= 2 MiB
  // packed). Costs ~1.6% of the scan at N = 2048 (less for larger N or K) and the packing of those codes.
  bool grid_screen_pays() const {
#if SPARSEOPS_X86_KERNELS
    constexpr int64_t nr = cpu::kNrAvx2Grid;
    const int64_t steps = (D + 1) / 2, width = 2 * steps;
    const int64_t codes = std::min({K, kGridProbeCodes, std::max<int64_t>(1, (int64_t{1} << 20) / width)});  // <= 2 MiB
    const int64_t ntiles = (codes + nr - 1) / nr;
    AlignedVector<int16_t> panel(static_cast<size_t>(ntiles * nr * width));
    std::vector<float> cnb(static_cast<size_t>(ntiles * nr));
    pack_codes<int16_t, 2>(0, codes, nr, steps, panel.data(), cnb.data());
    AlignedVector<int16_t> zs(static_cast<size_t>(kGridProbeRows * width));
    std::vector<RowCands> rc(kGridProbeRows);
    for (int64_t s = 0; s < kGridProbeRows; ++s) {
      const int64_t i = s * N / kGridProbeRows;
      pack_rows<int16_t, 2>(i, i + 1, 1, steps, zs.data() + s * width);
      rc[s].thr = rc[s].best = std::numeric_limits<float>::infinity();
      rc[s].margin = margin[i];
      rc[s].scale = row_scale[i];
      rc[s].count = rc[s].overflow = 0;
    }
    constexpr int64_t cap = kGridProbeRows * 64;  // more spilled candidates than this is crowded anyway
    std::vector<int32_t> sp_row(cap), sp_idx(cap);
    std::vector<float> sp_val(cap);
    cpu::Spill spill{rc.data(), cap, 0, sp_row.data(), sp_idx.data(), sp_val.data()};
    cpu::scan_avx2_i16(zs.data(), kGridProbeRows, steps, panel.data(), cnb.data(), ntiles, 0, rc.data(), &spill);
    int64_t cands = 0;
    for (const RowCands& r : rc) cands += r.overflow ? cap : r.count;
    for (int64_t j = 0; j < spill.size; ++j) cands += spill.val[j] < rc[spill.row[j]].thr;
    return static_cast<double>(cands) <= kGridProbeMaxCands * kGridProbeRows;
#else
    return false;
#endif
  }

  // The packed element for value v: fp32, or the bits of bf16(v), rounded to nearest even (exact for bf16
  // inputs; the margin covers the rounding of fp32/fp16 ones).
  template <typename E>
  static E elem(float v) {
    if constexpr (std::is_same_v<E, float>) {
      return v;
    } else {  // round to nearest even, as c10::BFloat16 does for the finite values seen here
      uint32_t u;
      std::memcpy(&u, &v, sizeof u);
      return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    }
  }

  // Rows [r0, r1) as -2 z (cosine: -2 z / |z|; int16: on the row's grid) into zs [rows_pad][steps * kPair]
  // (dims past D and rows past r1: zeros).
  template <typename E, int kPair>
  void pack_rows(int64_t r0, int64_t r1, int64_t rows_pad, int64_t steps, E* zs) const {
    const int64_t width = steps * kPair;
    for (int64_t i = r0; i < r1; ++i) {
      const T* zr = z + i * D;
      E* out = zs + (i - r0) * width;
      if constexpr (std::is_same_v<E, int16_t>) {
        const double inv = row_step[i] > 0.0 ? 1.0 / row_step[i] : 0.0;
        const float norm = cosine ? static_cast<float>(zinv[i]) : 1.0f;
        for (int64_t d = 0; d < D; ++d) {
          const float v = static_cast<float>(zr[d]);
          out[d] = to_grid(-2.0f * (cosine ? v * norm : v), inv);
        }
      } else if (cosine) {
        const float inv = static_cast<float>(zinv[i]);
        for (int64_t d = 0; d < D; ++d) out[d] = elem<E>(-2.0f * (static_cast<float>(zr[d]) * inv));
      } else {
        for (int64_t d = 0; d < D; ++d) out[d] = elem<E>(-2.0f * static_cast<float>(zr[d]));
      }
      std::fill(out + D, out + width, E(0));
    }
    std::fill(zs + (r1 - r0) * width, zs + rows_pad * width, E(0));
  }

  // Codes [k0, k1) into panel [ntiles][steps][nr][kPair] (int16: on the codebook's grid) and cnb
  // [ntiles * nr]; padding codes: zeros and +inf, padding dims zeros.
  template <typename E, int kPair>
  void pack_codes(int64_t k0, int64_t k1, int64_t nr, int64_t steps, E* panel, float* cnb) const {
    const int64_t ntiles = (k1 - k0 + nr - 1) / nr;
    const int64_t width = steps * kPair;
    const double inv_code_step = code_step > 0.0 ? 1.0 / code_step : 0.0;
    for (int64_t t = 0; t < ntiles; ++t) {
      E* p = panel + t * width * nr;
      for (int64_t j = 0; j < nr; ++j) {
        const int64_t k = k0 + t * nr + j;
        E* dst = p + j * kPair;  // dim d goes to dst[(d / kPair) * nr * kPair + d % kPair]
        int64_t d = 0;
        if (k < k1) {
          const T* c = cb + k * D;
          const float scale = cosine ? static_cast<float>(cinv[k]) : 1.0f;
          for (; d < D; ++d) {
            const float v = static_cast<float>(c[d]);
            E& out = dst[(d / kPair) * nr * kPair + d % kPair];
            if constexpr (std::is_same_v<E, int16_t>) {
              out = to_grid(cosine ? v * scale : v, inv_code_step);
            } else {
              out = elem<E>(cosine ? v * scale : v);
            }
          }
        }
        for (; d < width; ++d) dst[(d / kPair) * nr * kPair + d % kPair] = E(0);
        cnb[t * nr + j] = k < k1 ? cn[k] : std::numeric_limits<float>::infinity();
      }
    }
  }

  // float64 distance of row i to code k: (z - c)^2, or 1 - cos(z, c).
  double exact(int64_t i, int64_t k) const {
    const T* zr = z + i * D;
    const T* c = cb + k * D;
    double s = 0.0;
    if (cosine) {
      for (int64_t d = 0; d < D; ++d) s += static_cast<double>(static_cast<float>(zr[d])) * static_cast<float>(c[d]);
      return 1.0 - s * zinv[i] * cinv[k];
    }
    for (int64_t d = 0; d < D; ++d) s = add_sq_diff(s, static_cast<float>(zr[d]), static_cast<float>(c[d]));
    return s;
  }

  // Whether run() takes the pruned search (see kTreeLeaf). bf16 inputs on AVX-512 would be scanned with
  // VDPBF16PS at twice the fp32 rate, so the tree needs more rows to pay there (Zen 4, K = 262144, D = 8:
  // 0.83x at N = 4096, 1.33x at N = 8192; K = 65536: 1.26x at N = 16384; D = 10 tied at N = 16384).
  bool pick_tree_search(ScanIsa isa) const {
    const int forced = tree_override();
    if (cosine || forced == 0) return false;
    if (forced == 1) return true;
    const bool bf16_scan = isa == ScanIsa::kAvx512 && std::is_same_v<T, c10::BFloat16>;
    const int64_t max_d = bf16_scan ? 8 : kTreeMaxD, min_n = bf16_scan ? 4 * kTreeMinN : kTreeMinN;
    const int64_t codes_per_row = bf16_scan ? kTreeCodesPerRow / 4 : kTreeCodesPerRow;
    return D <= max_d && K >= kTreeMinK && N >= min_n && N * codes_per_row >= K;
  }

  void run(int64_t* out_idx, float* out_dist) {
    const ScanIsa isa = scan_isa();
    tree_search = pick_tree_search(isa);
    if (tree_search) {  // fp32 screen of exact fp32 values (bf16 / fp16 inputs convert exactly)
      prepare();
      run_tree(isa, out_idx, out_dist);
      return;
    }
    bool bf16_scan = false;
    grid_forced = grid_override();  // read (and a bad value warned about) on every build
#if SPARSEOPS_X86_KERNELS
    // l2 with D >= kRoundedScreenMinD on AVX-512 BF16: fp32/fp16 inputs are ranked with bf16-rounded
    // values too (twice the fp32 FMA rate), with a margin covering the rounding, so the exact re-check
    // still decides. Below that D the nearest codes are too close for bf16's 8 bits (too many candidates).
    // An off-centre codebook keeps the fp32 scan (centred_codebook).
    bf16_scan = isa == ScanIsa::kAvx512 && !cosine &&
                (std::is_same_v<T, c10::BFloat16> || D >= kRoundedScreenMinD);
    rounded_screen = bf16_scan && !std::is_same_v<T, c10::BFloat16>;
    bf16_scan_on_amx = bf16_scan && cpu_use_amx_bf16();
    // On AVX2 (no VDPBF16PS): the int16 screen, VPMADDWD at twice the fp32 FMA's products
    // (lookup_quant.h), for any input dtype, l2 or cosine (on the normalised vectors); prepare_codes()
    // keeps the fp32 scan for an off-centre l2 codebook, and grid_screen_pays() for a crowded one.
    grid_screen = isa == ScanIsa::kAvx2 && D <= kGridScreenMaxD && grid_forced != 0 &&
                  (grid_forced == 1 || (D >= kGridScreenMinD && N >= 2 * kGridProbeRows));
#endif
    prepare();
#if SPARSEOPS_X86_KERNELS
    if (grid_screen && grid_forced != 1 && !grid_screen_pays()) {  // back to fp32, with the fp32 margins
      grid_screen = false;
      prepare_rows();
    }
#endif
    if (!std::is_same_v<T, c10::BFloat16>) bf16_scan = rounded_screen;
    const int64_t nr = grid_screen ? cpu::kNrAvx2Grid : scan_nr(isa);
    const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
    // Query blocks of <= 256 rows, at least ~4 tasks per thread; with too few blocks, each superblock's
    // codes are split too (every split keeps its own candidates; the re-check merges them).
    const int64_t mc = std::clamp<int64_t>(round_up((N + 4 * threads - 1) / (4 * threads), cpu::kRowPad),
                                           cpu::kRowPad, 256);
    const int64_t nqb = (N + mc - 1) / mc;
    // Codes per superblock: packed once, shared by all threads (<= 16 MiB); per L2 block: <= 192 KiB
    // (int16 codes take half the bytes of fp32 ones: twice the codes).
    const int64_t per_4_bytes = grid_screen ? 2 : 1;
    const int64_t sb_codes =
        std::min(round_up(K, nr), std::max(nr, (int64_t{1} << 22) * per_4_bytes / D / nr * nr));
    const int64_t sb_tiles = sb_codes / nr;
    const int64_t kc_tiles = std::clamp<int64_t>(49152 * per_4_bytes / D / nr, 1, 4096 / nr);
    int64_t splits = 1;
    if (nqb < 4 * threads) splits = std::clamp<int64_t>((4 * threads + nqb - 1) / nqb, 1, std::max<int64_t>(1, sb_tiles / 8));
    const int64_t n_pad = round_up(N, cpu::kRowPad);
    std::vector<RowCands> cands(static_cast<size_t>(splits * n_pad));
    at::parallel_for(0, splits * n_pad, 4096, [&](int64_t b, int64_t e) {
      for (int64_t j = b; j < e; ++j) {
        RowCands& r = cands[j];
        const int64_t i = j % n_pad;
        r.thr = r.best = std::numeric_limits<float>::infinity();
        r.margin = i < N ? margin[i] : 0.0f;
        r.scale = grid_screen && i < N ? row_scale[i] : 0.0f;
        r.count = r.overflow = 0;
      }
    });
#if SPARSEOPS_X86_KERNELS
    if (bf16_scan) {  // bf16 pair dots: twice the fp32 FMA rate
      scan_all<uint16_t, 2>(nr, mc, nqb, sb_codes, kc_tiles, splits, n_pad, cands,
                            cpu_use_amx_bf16() ? cpu::scan_amx_bf16 : cpu::scan_avx512_bf16);
      finish(cands, splits, n_pad, out_idx, out_dist);
      return;
    }
    if (grid_screen) {
      scan_all<int16_t, 2>(nr, mc, nqb, sb_codes, kc_tiles, splits, n_pad, cands, cpu::scan_avx2_i16);
      finish(cands, splits, n_pad, out_idx, out_dist);
      return;
    }
#endif
    scan_all<float, 1>(nr, mc, nqb, sb_codes, kc_tiles, splits, n_pad, cands,
                       [isa](const float* zs, int64_t rows, int64_t steps, const float* panel, const float* cn,
                             int64_t ntiles, int32_t k0, RowCands* rc, cpu::Spill* spill) {
                         run_scan(isa, zs, rows, steps, panel, cn, ntiles, k0, rc, spill);
                       });
    finish(cands, splits, n_pad, out_idx, out_dist);
  }

  // ---- the pruned search for few dimensions (code_tree.h) ------------------------------------------
  // The codes are reordered into the tree's leaves and packed once; the queries are ordered by the leaf
  // they descend to and taken in blocks of kRowPad rows. A block walks the tree depth first, the child
  // on its side of the split first, and scans a leaf (one ISA scan call over its tiles, the same fused
  // candidate test as the brute-force scan) only when some row's box distance to it is within that
  // row's cut: a code can be a candidate of row i (e < thr_i) only if its true distance is below
  // thr_i + margin_i + |z_i|^2 (the margin is twice the screen's error bound), so a leaf whose box is
  // farther for every row holds none, and the exact re-check sees the same candidates as after a full
  // scan. Extra memory: the tree (code_tree.h; its reordered codes are dropped once packed), the packed
  // codes (K x D fp32, all of them: a leaf is read in any order), the query order (N int64), and for
  // fp16 / bf16 inputs an fp32 copy of the codebook while building. Measured peak at N = 2048,
  // K = 262144, D = 8, fp32: ~24 MiB against ~11 MiB for the brute-force scan.
  void run_tree(ScanIsa isa, int64_t* out_idx, float* out_dist) const {
    const int64_t nr = scan_nr(isa);
    CodeTree tree;
    if constexpr (std::is_same_v<T, float>) {
      tree = build_code_tree(cb, K, D, kTreeLeaf);
    } else {  // fp16 / bf16: an exact fp32 copy for the build
      std::vector<float> c32(static_cast<size_t>(K * D));
      at::parallel_for(0, K * D, 1 << 16, [&](int64_t b, int64_t e) {
        for (int64_t j = b; j < e; ++j) c32[j] = static_cast<float>(cb[j]);
      });
      tree = build_code_tree(c32.data(), K, D, kTreeLeaf);
    }
    const int64_t ntiles = (K + nr - 1) / nr;
    AlignedVector<float> panel(static_cast<size_t>(ntiles * nr * D));
    std::vector<float> cnb(static_cast<size_t>(ntiles * nr));
    at::parallel_for(0, ntiles, 256, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        for (int64_t j = 0; j < nr; ++j) {
          const int64_t p = t * nr + j;
          for (int64_t d = 0; d < D; ++d) panel[(t * D + d) * nr + j] = p < K ? tree.points[p * D + d] : 0.0f;
          cnb[p] = p < K ? cn[tree.order[p]] : std::numeric_limits<float>::infinity();
        }
      }
    });
    std::vector<float>().swap(tree.points);  // packed into the panel; the search reads boxes and splits only
    const std::vector<int64_t> rows = rows_by_leaf(tree);
    std::vector<RowCands> cands(static_cast<size_t>(N));
    const int64_t blocks = (N + cpu::kRowPad - 1) / cpu::kRowPad;
    const int64_t tasks = (blocks + kTreeBlocksPerTask - 1) / kTreeBlocksPerTask;
    const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
    std::atomic<int64_t> next{0};
    at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
      TreeBlock blk(D);
      std::vector<int32_t> sp_row(kSpillCap), sp_idx(kSpillCap);
      std::vector<float> sp_val(kSpillCap);
      cpu::Spill spill{blk.rc, kSpillCap, 0, sp_row.data(), sp_idx.data(), sp_val.data()};
      std::vector<int64_t> found;
      for (int64_t task = next++; task < tasks; task = next++) {
        for (int64_t b = task * kTreeBlocksPerTask; b < std::min(blocks, (task + 1) * kTreeBlocksPerTask); ++b) {
          const int64_t r0 = b * cpu::kRowPad, count = std::min<int64_t>(cpu::kRowPad, N - r0);
          blk.load(*this, rows.data() + r0, count);
          search_block(isa, tree, panel.data(), cnb.data(), blk, spill);
          for (int64_t r = 0; r < count; ++r) {  // scan positions -> codes
            for (int32_t j = 0; j < blk.rc[r].count; ++j) blk.rc[r].idx[j] = tree.order[blk.rc[r].idx[j]];
          }
          resolve_spill(count, blk.rc, spill, found, [&](int32_t r) { return rows[r0 + r]; },
                        [&](int32_t p) { return tree.order[p]; });
          for (int64_t r = 0; r < count; ++r) cands[rows[r0 + r]] = blk.rc[r];
        }
      }
    });
    finish(cands, 1, N, out_idx, out_dist);
  }

  // The rows of z ordered by the first position of the leaf each descends to (a counting sort over the
  // leaves), so that a block's rows search nearby leaves.
  std::vector<int64_t> rows_by_leaf(const CodeTree& tree) const {
    const int64_t leaves = (K + kTreeLeaf - 1) / kTreeLeaf;
    std::vector<int32_t> leaf(static_cast<size_t>(N));
    at::parallel_for(0, N, 256, [&](int64_t b, int64_t e) {
      std::vector<float> zf(static_cast<size_t>(D));
      for (int64_t i = b; i < e; ++i) {
        for (int64_t d = 0; d < D; ++d) zf[d] = static_cast<float>(z[i * D + d]);
        leaf[i] = static_cast<int32_t>(tree.leaf_of(zf.data()) / kTreeLeaf);
      }
    });
    std::vector<int64_t> start(static_cast<size_t>(leaves + 1), 0);
    for (int64_t i = 0; i < N; ++i) ++start[leaf[i] + 1];
    std::partial_sum(start.begin(), start.end(), start.begin());
    std::vector<int64_t> rows(static_cast<size_t>(N));
    for (int64_t i = 0; i < N; ++i) rows[start[leaf[i]]++] = i;
    return rows;
  }

  // One block of the pruned search: its rows packed for the scan, and what the box tests need.
  struct TreeBlock {
    static constexpr int64_t R = cpu::kRowPad;
    int64_t D, count = 0;
    AlignedVector<float> zs;  // [R][D] -2 z, padding rows zero
    std::vector<float> zt;    // [D][R]: z transposed (the box test's lanes), padding rows copy the last row
    std::vector<float> mean;  // [D] over the block's rows: which child to visit first
    float zz[R];
    float cut[R];
    std::vector<int64_t> stack;
    RowCands rc[R];
    explicit TreeBlock(int64_t dims) : D(dims), zs(R * dims), zt(dims * R), mean(dims) {}

    void load(const Lookup& job, const int64_t* rows, int64_t n) {
      count = n;
      std::fill(zs.begin(), zs.end(), 0.0f);
      std::fill(mean.begin(), mean.end(), 0.0f);
      for (int64_t r = 0; r < R; ++r) {
        RowCands& c = rc[r];
        c.thr = c.best = std::numeric_limits<float>::infinity();
        c.margin = r < n ? job.margin[rows[r]] : 0.0f;
        c.scale = 0.0f;  // the pruned search scans in fp32
        c.count = c.overflow = 0;
        zz[r] = r < n ? job.zz[rows[r]] : 0.0f;
        for (int64_t d = 0; d < D; ++d) {
          const float v = static_cast<float>(job.z[rows[std::min(r, n - 1)] * D + d]);
          zt[d * R + r] = v;
          if (r < n) {
            zs[r * D + d] = -2.0f * v;
            mean[d] += v / static_cast<float>(n);
          }
        }
      }
      update_cuts();
    }

    // Row r's cut on the squared distance to a box (see run_tree), with 1e-5 relative slack for the fp32
    // sums of the cut and the box distance; +inf until the row's first candidate; -1 for padding rows.
    void update_cuts() {
      for (int64_t r = 0; r < R; ++r)
        cut[r] = r < count ? (rc[r].thr + rc[r].margin + zz[r]) * (1.0f + 1e-5f) : -1.0f;
    }

    // Whether some row's squared distance to node n's box is within its cut.
    bool reaches(ScanIsa isa, const CodeTree& t, int64_t n) const {
      const float* lo = t.lo.data() + n * D;
      const float* hi = t.hi.data() + n * D;
#if SPARSEOPS_X86_KERNELS
      if (isa != ScanIsa::kPortable) return cpu::box_within_cut_avx2(lo, hi, zt.data(), cut, D);
#endif
      float s[R] = {};
      for (int64_t d = 0; d < D; ++d) {
        for (int64_t r = 0; r < R; ++r) {
          const float g = std::max(std::max(lo[d] - zt[d * R + r], zt[d * R + r] - hi[d]), 0.0f);
          s[r] += g * g;
        }
      }
      bool any = false;
      for (int64_t r = 0; r < R; ++r) any |= s[r] <= cut[r];
      return any;
    }
  };

  void search_block(ScanIsa isa, const CodeTree& t, const float* panel, const float* cnb, TreeBlock& blk,
                    cpu::Spill& spill) const {
    blk.stack.assign(1, 0);
    while (!blk.stack.empty()) {
      const int64_t n = blk.stack.back();
      blk.stack.pop_back();
      if (!blk.reaches(isa, t, n)) continue;
      if (t.is_leaf(n)) {
        const int64_t p0 = t.begin[n], tiles = (t.end[n] - p0 + scan_nr(isa) - 1) / scan_nr(isa);
        run_scan(isa, blk.zs.data(), cpu::kRowPad, D, panel + p0 * D, cnb + p0, tiles, static_cast<int32_t>(p0),
                 blk.rc, &spill);
        blk.update_cuts();
        continue;
      }
      const bool left_near = blk.mean[t.split_dim[n]] < t.split_value[n];
      blk.stack.push_back(left_near ? 2 * n + 2 : 2 * n + 1);  // the far child, popped last
      blk.stack.push_back(left_near ? 2 * n + 1 : 2 * n + 2);
    }
  }

  // Step 2 over all superblocks, with packed elements E (kPair dims per step) and the scan function.
  template <typename E, int kPair, typename Scan>
  void scan_all(int64_t nr, int64_t mc, int64_t nqb, int64_t sb_codes, int64_t kc_tiles, int64_t splits,
                int64_t n_pad, std::vector<RowCands>& cands, Scan scan) const {
    const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
    const int64_t steps = (D + kPair - 1) / kPair, width = steps * kPair;
    // panel and zs cache-line aligned: the AMX screen loads its tiles from them in place.
    AlignedVector<E> panel(static_cast<size_t>(sb_codes * width));
    std::vector<float> cnb(static_cast<size_t>(sb_codes));
    for (int64_t sb0 = 0; sb0 < K; sb0 += sb_codes) {
      const int64_t sb1 = std::min(K, sb0 + sb_codes);
      const int64_t tiles = (sb1 - sb0 + nr - 1) / nr;
      at::parallel_for(0, tiles, std::max<int64_t>(1, 16384 / (width * nr)), [&](int64_t t0, int64_t t1) {
        pack_codes<E, kPair>(sb0 + t0 * nr, std::min(sb1, sb0 + t1 * nr), nr, steps, panel.data() + t0 * nr * width,
                             cnb.data() + t0 * nr);
      });
      // Dynamic scheduling: threads take (query block, split) tasks from a counter, so a thread slowed by
      // another process on the machine does not hold the others up.
      std::atomic<int64_t> next{0};
      at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
        AlignedVector<E> zs(static_cast<size_t>(mc * width));
        std::vector<int64_t> found;  // the codes resolve_* compare exactly
        std::vector<int32_t> sp_row(kSpillCap), sp_idx(kSpillCap);
        std::vector<float> sp_val(kSpillCap);
        cpu::Spill spill{nullptr, kSpillCap, 0, sp_row.data(), sp_idx.data(), sp_val.data()};
        for (int64_t task = next++; task < nqb * splits; task = next++) {
          const int64_t qb = task / splits, s = task % splits;
          const int64_t r0 = qb * mc, r1 = std::min(N, r0 + mc);
          const int64_t rows_pad = round_up(r1 - r0, cpu::kRowPad);
          pack_rows<E, kPair>(r0, r1, rows_pad, steps, zs.data());
          RowCands* rc = cands.data() + s * n_pad + r0;
          spill.rows = rc;
          const int64_t st0 = tiles * s / splits, st1 = tiles * (s + 1) / splits;  // this split's tiles
          for (int64_t t = st0; t < st1; t += kc_tiles) {
            const int64_t te = std::min(st1, t + kc_tiles);
            scan(zs.data(), rows_pad, steps, panel.data() + t * nr * width, cnb.data() + t * nr, te - t,
                 static_cast<int32_t>(sb0 + t * nr), rc, &spill);
          }
          resolve_spill(r1 - r0, rc, spill, found, [r0](int32_t r) { return r0 + r; }, [](int32_t k) { return k; });
          for (int64_t i = r0; i < r1; ++i) {
            if (rc[i - r0].overflow == 0) continue;
            resolve_overflow<E, kPair>(i, zs.data() + (i - r0) * width, steps, panel.data() + st0 * nr * width,
                                       cnb.data() + st0 * nr, nr, st1 - st0, sb0 + st0 * nr, sb1, rc[i - r0], found);
          }
        }
      });
    }
  }

  template <typename E>
  static float to_float(E x) {
    if constexpr (std::is_same_v<E, float>) {
      return x;
    } else {  // bf16 bits
      const uint32_t u = static_cast<uint32_t>(x) << 16;
      float f;
      std::memcpy(&f, &u, sizeof f);
      return f;
    }
  }

  // Row i overflowed while scanning the packed tiles [panel, + ntiles) (codes k_first + t * nr + j, valid
  // below k_end): every code there whose fp32 expanded distance (any evaluation order: the same error
  // bound) is <= best + margin, plus the row's stored candidates, is compared exactly; their exact winner
  // (ties to the lowest index) becomes the row's only candidate. It beats or ties every code it replaces,
  // so the final re-check is unchanged; its value is set to best, which only keeps it longer. Cost: one
  // fp32 pass over the task's codes for this row (rare: duplicate or near-identical codes).
  template <typename E, int kPair>
  void resolve_overflow(int64_t i, const E* zrow, int64_t steps, const E* panel, const float* cnb, int64_t nr,
                        int64_t ntiles, int64_t k_first, int64_t k_end, RowCands& r,
                        std::vector<int64_t>& found) const {
    found.clear();
    const float lim = r.best + r.margin;
    float acc[cpu::kNrAvx512];
    for (int64_t t = 0; t < ntiles; ++t) {
      const E* p = panel + t * steps * nr * kPair;
      if constexpr (std::is_same_v<E, int16_t>) {  // the scan's exact integer dot, and its e to the bit
        static_assert(kPair == 2, "int16 codes come in pairs of dims");
        constexpr int64_t kNr = cpu::kNrAvx2Grid;  // == nr: a compile-time width vectorises (PMADDWD)
        int32_t dot[kNr] = {};
        for (int64_t st = 0; st < steps; ++st) {
          const int32_t z0 = zrow[2 * st], z1 = zrow[2 * st + 1];
          const E* pd = p + st * kNr * 2;
          for (int64_t j = 0; j < kNr; ++j) dot[j] += z0 * pd[2 * j] + z1 * pd[2 * j + 1];
        }
        for (int64_t j = 0; j < nr; ++j) acc[j] = std::fma(static_cast<float>(dot[j]), r.scale, cnb[t * nr + j]);
      } else {
        for (int64_t j = 0; j < nr; ++j) acc[j] = cnb[t * nr + j];
        for (int64_t d = 0; d < steps; ++d) {
          for (int q = 0; q < kPair; ++q) {
            const float zd = to_float(zrow[d * kPair + q]);
            const E* pd = p + d * nr * kPair + q;
            for (int64_t j = 0; j < nr; ++j) acc[j] += zd * to_float(pd[j * kPair]);
          }
        }
      }
      for (int64_t j = 0; j < nr; ++j) {
        const int64_t k = k_first + t * nr + j;
        if (acc[j] <= lim && k < k_end) found.push_back(k);
      }
    }
    r.overflow = 0;
    keep_exact_winner(i, found, r);
  }

  // Row i's stored candidates and the codes in found are compared exactly; their winner (ties to the
  // lowest index) becomes the row's only candidate, with value best (it beats or ties every code it
  // replaces, so the final re-check is unchanged; the value only keeps it longer).
  void keep_exact_winner(int64_t i, std::vector<int64_t>& found, RowCands& r) const {
    for (int32_t j = 0; j < r.count; ++j) found.push_back(r.idx[j]);
    int64_t best_k = -1;
    double best = std::numeric_limits<double>::infinity();
    for (const int64_t k : found) {
      const double d = exact(i, k);
      if (better(d, k, best, best_k)) {
        best = d;
        best_k = k;
      }
    }
    r.count = best_k < 0 ? 0 : 1;
    if (best_k >= 0) {
      r.idx[0] = static_cast<int32_t>(best_k);
      r.val[0] = r.best;
    }
  }

  // After a task: the spilled codes that still pass their row's final threshold join that row's exact
  // comparison (keep_exact_winner); the buffer is emptied for the next task. rc: `rows` rows, the r-th
  // being z's row row_of(r); the spill holds scan positions, code_of(position) is the code (the pruned
  // search scans reordered codes).
  template <typename RowOf, typename CodeOf>
  void resolve_spill(int64_t rows, RowCands* rc, cpu::Spill& sp, std::vector<int64_t>& found, RowOf row_of,
                     CodeOf code_of) const {
    if (sp.size == 0) return;
    std::vector<std::pair<int32_t, int32_t>> kept;  // (row within rc, code), sorted to group by row
    for (int64_t j = 0; j < sp.size; ++j) {
      const int32_t row = sp.row[j];
      if (row < rows && sp.val[j] < rc[row].thr) kept.emplace_back(row, code_of(sp.idx[j]));
    }
    sp.size = 0;
    std::sort(kept.begin(), kept.end());
    for (size_t a = 0; a < kept.size();) {
      size_t b = a;
      found.clear();
      while (b < kept.size() && kept[b].first == kept[a].first) found.push_back(kept[b++].second);
      keep_exact_winner(row_of(kept[a].first), found, rc[kept[a].first]);
      a = b;
    }
  }

  // Step 3: the exact re-check of every row's candidates.
  void finish(const std::vector<RowCands>& cands, int64_t splits, int64_t n_pad, int64_t* out_idx,
              float* out_dist) const {
    at::parallel_for(0, N, 64, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        int64_t best_k = -1;
        double best = std::numeric_limits<double>::infinity();
        bool overflow = false;
        auto consider = [&](int64_t k) {
          const double d = exact(i, k);
      if (better(d, k, best, best_k)) {
            best = d;
            best_k = k;
          }
        };
        for (int64_t s = 0; s < splits; ++s) {
          const RowCands& r = cands[s * n_pad + i];
          overflow |= r.overflow != 0;
          for (int32_t j = 0; j < r.count; ++j) consider(r.idx[j]);
        }
        if (cosine && zero_row[i]) {  // cos is 0 for every code: all tie (saves the exact re-scan)
          best_k = 0;
          best = 1.0;
        } else if (overflow || best_k < 0) {
          for (int64_t k = 0; k < K; ++k) consider(k);
        }
        out_idx[i] = best_k;
        out_dist[i] = static_cast<float>(best);
      }
    });
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> codebook_lookup_cpu(const at::Tensor& z, const at::Tensor& codebook,
                                                                    c10::string_view metric) {
  const bool cosine = check_codebook_lookup_inputs(z, codebook, std::string_view(metric.data(), metric.size()));
  check_device_type("codebook_lookup", "z", z, at::kCPU);
  const at::Tensor zc = z.contiguous(), cb = codebook.contiguous();
  const int64_t N = zc.size(0), K = cb.size(0), D = cb.size(1);
  at::Tensor indices = at::empty({N}, zc.options().dtype(at::kLong));
  at::Tensor dist = at::empty({N}, zc.options().dtype(at::kFloat));
  if (N > 0) {
    SPARSEOPS_DISPATCH_FLOAT_HALF_BF16(zc.scalar_type(), "codebook_lookup", [&] {
      Lookup<scalar_t> job{zc.const_data_ptr<scalar_t>(), cb.const_data_ptr<scalar_t>(), N, K, D, cosine};
      job.run(indices.mutable_data_ptr<int64_t>(), dist.mutable_data_ptr<float>());
    });
  }
  return {cb.index_select(0, indices), indices, dist};
}

}  // namespace

TORCH_LIBRARY_IMPL(sparseops, CPU, m) { m.impl("codebook_lookup", &codebook_lookup_cpu); }

}  // namespace sparseops::codebook
