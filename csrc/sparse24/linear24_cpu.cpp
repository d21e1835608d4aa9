// sparse24_linear on CPU: y = act(x @ W^T + bias), W [N, K] in the "packed" 2:4 layout.
//
// Two paths, chosen by M (rows of x) and the CPU (gemv_max_m below):
//  - small M: parallel over blocks of output rows n; each W row is streamed once for all M rows of x
//    (the AVX-512 kernel in linear24_avx512.cpp on x repacked into its chunk-interleaved panels, the
//    AMX one for bf16 on Xeons with AMX tiles in linear24_amx.cpp, the AVX2 one in linear24_avx2.cpp, or
//    the portable one below), writing fp32 z = x W^T + bias; the
//    activation then runs on z in fp32 before the one rounding to x's dtype. Bandwidth-bound for a few
//    rows: the packed W is ~9/16 (fp32) or ~5/8 (16-bit) of dense.
//  - large M: parallel over tiles of kTileN rows of W; each thread decompresses its tile into a
//    thread-local dense [kTileN, K] buffer (AVX-512 permutes when available) and runs torch's dense GEMM
//    (MKL / oneDNN, one thread each) straight into its column slice of the output, bias fused in the
//    GEMM (addmm), then the activation in place. For fp16/bf16 the activation sees the GEMM's rounded
//    output (as F.linear + act would).
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "common/cpu_features.h"
#include "common/dispatch.h"
#include "common/first_error.h"
#include "sparse24/linear24_checks.h"
#include "sparse24/sparse24_checks.h"
#include "sparse24/linear24_cpu.h"
#include "sparse24/packed_meta_check.h"

namespace sparseops::sparse24 {
namespace {

constexpr const char* kOp = "sparse24_linear";
constexpr int64_t kTileN = 256;  // rows of W per dense tile in the large-M path
constexpr int64_t kAmxMinM = 4;    // fewest rows of x for the AMX kernel (bf16; measured below)

// Small-M / large-M crossover (largest M on the small-M path), measured with 2 threads on the bench
// shapes (N, K) in {4096, 11008} x {4096, 11008} on a Zen 5 with OpenMP.
// - AVX-512, x packed in one panel per 8 rows and W prefetched ahead: the bf16 kernel (vdpbf16ps) beats
//   dense tiles + oneDNN up to M = 96 (by 1.2-1.3x at M = 64, 1.05-1.1x at M = 96), about even at
//   M = 128; the fp32 one beats tiles + MKL at every M measured (1.5-2.1x vs F.linear at M = 256-2048,
//   where tiles give 1.0x) and the fp16 one too (torch's fp16 CPU GEMM, without AVX512-FP16 here, is
//   ~3.5x slower than this kernel even at M = 512), so those two use it at every M.
// - AVX2 (measured on the same machine with the kernel forced to AVX2 and torch's kernels capped to
//   AVX2 too: ONEDNN_MAX_CPU_ISA=AVX2, MKL_ENABLE_INSTRUCTIONS=AVX2, ATEN_CPU_CAPABILITY=avx2): fp32
//   beats tiles + MKL up to M = 64 (1.2-1.6x vs F.linear at M = 32), tiles win from M = 128; bf16 and
//   fp16, which torch computes without native support there, stay ~2.9x faster than F.linear at every M
//   measured (up to 512), so they use the kernel at every M.
// - AVX-512 on an Intel Xeon with AMX (Sapphire Rapids class, 2 threads): torch's dense GEMMs are strong
//   there (MKL fp32; oneDNN bf16 on AMX tiles). fp32: the kernel beats tiles + MKL up to M = 64 (1.1-1.2x),
//   tiles win from M = 128 (1.1-1.3x), hence 96. bf16 runs the AMX kernel (linear24_amx.cpp) from
//   kAmxMinM = 4 rows (below, the AVX-512 pair scheme is faster: 0.45 vs 0.75 ms at M = 1, 4096x4096;
//   even at M = 4); it beats tiles + oneDNN by 1.4-3.6x up to M = 128 on the three bench shapes and at
//   M = 256 on two of them (the packed x of a long K then spills out of L2), hence 192.
// - The portable kernel is scalar: only for a handful of rows (a guess, not measured on such a CPU).
// SPARSEOPS_LINEAR24_GEMV_MAX_M overrides all of them (tuning, benchmarks, tests forcing the tiled path).
int64_t gemv_max_m(at::ScalarType dtype) {
  static const int64_t forced = [] {
    const char* env = std::getenv("SPARSEOPS_LINEAR24_GEMV_MAX_M");
    if (env == nullptr) return int64_t{-1};
    char* end = nullptr;
    errno = 0;
    const long long v = std::strtoll(env, &end, 10);
    if (end == env || *end != '\0' || errno != 0 || v < 0) {  // "", "abc", "5x", "-5", overflow
      TORCH_WARN("sparseops: ignoring SPARSEOPS_LINEAR24_GEMV_MAX_M=\"", env,
                 "\" (expected a whole number >= 0); using the measured default crossovers");
      return int64_t{-1};
    }
    return static_cast<int64_t>(v);
  }();
  if (forced >= 0) return forced;
  constexpr int64_t kEvery = std::numeric_limits<int64_t>::max();
  if (cpu_use_avx2()) return dtype == at::kFloat ? 64 : kEvery;
  if (!cpu_use_avx512()) return 4;
  if (dtype == at::kBFloat16) return cpu_use_amx_bf16() ? 192 : 96;
  return dtype == at::kFloat && cpu_is_intel() ? 96 : kEvery;
}

void apply_activation_(at::Tensor& t, Act act) {
  switch (act) {
    case Act::kNone:
      break;
    case Act::kRelu:
      at::relu_(t);
      break;
    case Act::kGelu:
      at::gelu_(t, "none");
      break;
    case Act::kSilu:
      at::silu_(t);
      break;
    case Act::kRelu2:
      at::relu_(t);
      t.mul_(t);
      break;
  }
}

// ---- portable small-M kernel ------------------------------------------------------------------

template <typename T>
void rows_baseline(const T* vp, const uint8_t* mp, int64_t K, const float* x, int64_t ldx, int64_t M, const float* bias,
                   int64_t n0, int64_t n1, float* z, int64_t ldz) {
  const int64_t half = K / 2, meta_cols = packed_meta_cols(K), groups = K / 4;
  for (int64_t n = n0; n < n1; ++n) {
    const T* vr = vp + n * half;
    const uint8_t* mr = mp + n * meta_cols;
    const float b = bias != nullptr ? bias[n] : 0.0f;
    for (int64_t m0 = 0; m0 < M; m0 += 8) {
      const int64_t mb = std::min<int64_t>(8, M - m0);
      float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      for (int64_t g = 0; g < groups; ++g) {
        const uint8_t code = (mr[g / 2] >> (4 * (g % 2))) & 0xF;
        const float v0 = static_cast<float>(vr[2 * g]), v1 = static_cast<float>(vr[2 * g + 1]);
        const float* xg = x + m0 * ldx + 4 * g;
        for (int64_t r = 0; r < mb; ++r) {
          acc[r] += v0 * xg[r * ldx + code_first(code)] + v1 * xg[r * ldx + code_second(code)];
        }
      }
      for (int64_t r = 0; r < mb; ++r) z[(m0 + r) * ldz + n] = acc[r] + b;
    }
  }
}

ElemType elem_type(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return ElemType::kFloat;
    case at::kHalf: return ElemType::kHalf;
    case at::kBFloat16: return ElemType::kBFloat16;
    default: TORCH_CHECK(false, kOp, ": unsupported dtype ", t);
  }
}

// Contiguous x [M, K] into the AVX-512 kernel's panels (layout: linear24_cpu.h), zero beyond K, In -> Out
// converted. Plain loops: for the few rows of a typical call, the strided torch copies this replaces cost
// more in dispatch than the copy itself (~4 of the ~6 us of a tiny call).
template <typename In, typename Out>
void pack_panels(const In* x, int64_t M, int64_t K, int64_t c, Out* panels) {
  const int64_t chunks = (K + c - 1) / c;
  at::parallel_for(0, M, std::max<int64_t>(1, (int64_t{1} << 16) / K), [&](int64_t m_begin, int64_t m_end) {
    for (int64_t m = m_begin; m < m_end; ++m) {
      const int64_t m0 = m / kPanelRows * kPanelRows, mb = std::min(kPanelRows, M - m0), r = m - m0;
      const In* src = x + m * K;
      Out* panel = panels + m0 * chunks * c;
      for (int64_t q = 0; q < chunks; ++q) {
        Out* dst = panel + (q * mb + r) * c;
        const int64_t n = std::min(c, K - q * c);
        if constexpr (std::is_same_v<In, Out>) {
          std::memcpy(dst, src + q * c, sizeof(Out) * n);
        } else {
          for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<Out>(src[q * c + i]);
        }
        for (int64_t i = n; i < c; ++i) dst[i] = Out(0);
      }
    }
  });
}

// Every path checks the metadata rows of each block it multiplies (the AVX-512 / AVX2 small-M kernels as
// they read them; the portable one right after; tiles before decompressing them) and stops at an invalid
// code: corrupt metadata is an error on every path instead of a path-dependent answer. meta_rows_valid
// records the first bad code's flat index.
constexpr int64_t kCheckRows = 512;

bool meta_bytes_valid(const uint8_t* p, int64_t bytes) {
#if SPARSEOPS_X86_KERNELS
  if (cpu_use_avx512()) return packed_meta_bytes_valid_avx512(p, bytes);
  if (cpu_use_avx2()) return packed_meta_bytes_valid_avx2(p, bytes);
#endif
  return packed_meta_bytes_valid(p, bytes);
}

bool meta_rows_valid(const uint8_t* mp, int64_t K, int64_t n0, int64_t n1, std::atomic<int64_t>& first_bad) {
  const int64_t meta_cols = packed_meta_cols(K), groups = K / 4;
  if (groups % 2 == 0) {  // no padding nibble: the rows are one span of whole bytes
    if (meta_bytes_valid(mp + n0 * meta_cols, (n1 - n0) * meta_cols)) return true;
  } else {  // the last byte of a row holds one code and the padding nibble
    bool ok = true;
    for (int64_t n = n0; n < n1 && ok; ++n) {
      const uint8_t* row = mp + n * meta_cols;
      ok = meta_bytes_valid(row, groups / 2) && code_valid(row[groups / 2] & 0xF);
    }
    if (ok) return true;
  }
  for (int64_t n = n0; n < n1; ++n) {  // an invalid code somewhere: find the first
    const int64_t g = first_invalid_packed_group(mp + n * meta_cols, groups);
    if (g >= 0) {
      record_min(first_bad, n * groups + g);
      return false;
    }
  }
  return true;
}

// Whether the small-M path runs the AMX kernel (bf16 on CPUs with AMX-BF16), which multiplies pruned
// positions by an explicit zero.
bool small_m_uses_amx(at::ScalarType dtype, int64_t M) {
  return dtype == at::kBFloat16 && M >= kAmxMinM && cpu_use_amx_bf16();
}

// gather_only: never the AVX2 expand or AMX kernels, which multiply pruned positions by explicit zeros
// (see restore_structural_rows).
void linear24_small_m(const at::Tensor& xc, const at::Tensor& vc, const at::Tensor& mc,
                      const std::optional<at::Tensor>& bias, Act act, at::Tensor& out, bool gather_only = false) {
  const int64_t M = xc.size(0), K = xc.size(1), N = vc.size(0);
  [[maybe_unused]] const bool amx = small_m_uses_amx(vc.scalar_type(), M) && !gather_only;
  const bool avx512 = cpu_use_avx512() && !amx;
  [[maybe_unused]] const bool avx2 = cpu_use_avx2() && !gather_only;
  const ElemType type = elem_type(vc.scalar_type());
  // x as the kernel reads it (M is small here): the AVX-512 kernel's panel, the AVX2 kernel's x^T panels
  // from 5 rows (linear24_cpu.h), or for fewer rows and the portable kernel fp32 rows padded to a 64-byte
  // multiple + 64 bytes (so that they do not start a multiple of 4 KiB apart: for K = 1024, 4096, ... 8
  // rows read in lockstep would share L1 sets).
  at::Tensor xk;
#if SPARSEOPS_X86_KERNELS
  if (amx) {
    xk = at::empty({amx_x_elems(M, K)}, xc.options());  // the CPU allocator aligns to 64 bytes
    const uint16_t* src = static_cast<const uint16_t*>(xc.const_data_ptr());
    uint16_t* dst = static_cast<uint16_t*>(xk.mutable_data_ptr());
    at::parallel_for(0, (K + 31) / 32, std::max<int64_t>(1, 4096 / M), [&](int64_t s0, int64_t s1) {
      pack_x_amx_bf16(src, M, K, s0, s1, dst);
    });
  } else
#endif
  if (avx512) {
    const int64_t c = avx512_x_chunk(type), chunks = (K + c - 1) / c;
    if (type == ElemType::kBFloat16) {
      xk = at::empty({M * chunks * c}, xc.options());
      pack_panels(xc.const_data_ptr<c10::BFloat16>(), M, K, c, xk.mutable_data_ptr<c10::BFloat16>());
    } else {
      xk = at::empty({M * chunks * c}, xc.options().dtype(at::kFloat));
      if (type == ElemType::kFloat) {
        pack_panels(xc.const_data_ptr<float>(), M, K, c, xk.mutable_data_ptr<float>());
      } else {
        pack_panels(xc.const_data_ptr<c10::Half>(), M, K, c, xk.mutable_data_ptr<float>());
      }
    }
#if SPARSEOPS_X86_KERNELS
  } else if (avx2 && avx2_x_transposed(M)) {
    const int64_t groups = (M + kPanelRows - 1) / kPanelRows, k8 = (K + 7) / 8 * 8;
    xk = at::empty({groups, k8, kPanelRows}, xc.options().dtype(at::kFloat));
    pack_x_transposed_avx2(xc.to(at::kFloat).const_data_ptr<float>(), M, K, xk.mutable_data_ptr<float>());
#endif
  } else {  // fp32 rows, zero beyond K (the AVX2 kernel reads up to the next multiple of 8)
    const int64_t ldx = (K + 15) / 16 * 16 + 16;
    xk = at::empty({M, ldx}, xc.options().dtype(at::kFloat));
    // Plain row copies: a torch copy into a narrowed view and a zero_ of the rest took 8-12 us at M = 1,
    // K = 4096 (timed from Python, one thread), longer than the kernel on a small layer.
    const at::Tensor xf = xc.to(at::kFloat);  // no copy for fp32
    const float* src = xf.const_data_ptr<float>();
    float* dst = xk.mutable_data_ptr<float>();
    for (int64_t m = 0; m < M; ++m) {
      std::memcpy(dst + m * ldx, src + m * K, sizeof(float) * K);
      std::memset(dst + m * ldx + K, 0, sizeof(float) * (ldx - K));
    }
  }
  const at::Tensor bf = bias.has_value() ? bias->to(at::kFloat).contiguous() : at::Tensor();
  at::Tensor z = out.scalar_type() == at::kFloat ? out : at::empty({M, N}, xc.options().dtype(at::kFloat));
  const void* vp = vc.const_data_ptr();
  const uint8_t* mp = mc.const_data_ptr<uint8_t>();
  const void* xp = xk.const_data_ptr();
  const float* bp = bf.defined() ? bf.const_data_ptr<float>() : nullptr;
  float* zp = z.mutable_data_ptr<float>();
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 15) / K);
  std::atomic<int64_t> first_bad{kNoError};
  // Rows [n0, n1) of z; false when their metadata holds an invalid code. A code indexes within its own
  // group of 4, so an invalid one cannot make a kernel read out of bounds, and the output is discarded
  // when the error is raised. The portable kernel's rows are checked right after it has read them (in
  // L2 then): checking before measured +9-47% at M = 1 (one thread, 4096x4096), the metadata coming from
  // L3 / DRAM without overlapping the kernel's own stream; a separate check after, +10-16%.
  const auto rows_valid = [&](int64_t n0, int64_t n1) -> bool {
#if SPARSEOPS_X86_KERNELS
    if (amx) {
      return linear24_rows_amx_bf16(static_cast<const uint16_t*>(vp), mp, K, static_cast<const uint16_t*>(xp), M, bp, n0,
                                    n1, zp, N);
    }
    if (avx512) return linear24_rows_avx512(type, vp, mp, K, xp, M, bp, n0, n1, zp, N);
    if (avx2) {
      const int64_t ldx = avx2_x_transposed(M) ? xk.stride(0) : xk.size(1);
      return linear24_rows_avx2(type, vp, mp, K, static_cast<const float*>(xp), ldx, M, bp, n0, n1, zp, N);
    }
#endif
    linear24_rows_baseline(type, vp, mp, K, static_cast<const float*>(xp), xk.size(1), M, bp, n0, n1, zp, N);
    return meta_rows_valid(mp, K, n0, n1, first_bad);
  };
  at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
    for (int64_t n0 = begin; n0 < end; n0 += kCheckRows) {
      const int64_t n1 = std::min(end, n0 + kCheckRows);
      if (!rows_valid(n0, n1)) {
        meta_rows_valid(mp, K, n0, n1, first_bad);  // where (the kernels only say whether)
        return;
      }
    }
  });
  check_meta_result(kOp, "meta", first_bad == kNoError ? -1 : first_bad.load(), K / 4);
  apply_activation_(z, act);
  if (!z.is_same(out)) out.copy_(z);
}

// ---- large-M path: dense tiles + torch GEMM ---------------------------------------------------------

template <typename T>
void decompress_rows(const T* vp, const uint8_t* mp, int64_t K, int64_t n0, int64_t rows, T* dense) {
  const int64_t half = K / 2, meta_cols = packed_meta_cols(K), groups = K / 4;
  for (int64_t r = 0; r < rows; ++r) {
    const T* vr = vp + (n0 + r) * half;
    const uint8_t* mr = mp + (n0 + r) * meta_cols;
    T* d = dense + r * K;
    std::memset(static_cast<void*>(d), 0, sizeof(T) * K);  // +0.0 is all-zero bits in fp32/fp16/bf16
    for (int64_t g = 0; g < groups; ++g) {
      const uint8_t code = (mr[g / 2] >> (4 * (g % 2))) & 0xF;
      d[4 * g + code_first(code)] = vr[2 * g];
      d[4 * g + code_second(code)] = vr[2 * g + 1];
    }
  }
}

void linear24_large_m(const at::Tensor& xc, const at::Tensor& vc, const at::Tensor& mc,
                      const std::optional<at::Tensor>& bias, Act act, at::Tensor& out) {
  const int64_t K = xc.size(1), N = vc.size(0);
  // Tiles of at most kTileN rows (a multiple of 16), their count a multiple of the thread count: a small
  // N (e.g. a 384-row projection) then still splits evenly instead of one 256-row tile and one 128.
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t wanted = ((std::max((N + kTileN - 1) / kTileN, threads) + threads - 1) / threads) * threads;
  const int64_t tile_n = std::min(N, ((N + wanted - 1) / wanted + 15) / 16 * 16);
  const int64_t tiles = (N + tile_n - 1) / tile_n;
  // The GEMM and activation below are torch ops run on worker threads: carry the caller's dispatcher
  // state over (inference mode, grad mode, ...), or writing into an inference-mode `out` would fail.
  const at::ThreadLocalState tls;
  [[maybe_unused]] const bool avx512 = cpu_use_avx512();
  [[maybe_unused]] const ElemType type = elem_type(xc.scalar_type());
  SPARSEOPS_DISPATCH_FLOAT_HALF_BF16(xc.scalar_type(), kOp, [&] {
    const scalar_t* vp = vc.const_data_ptr<scalar_t>();
    const uint8_t* mp = mc.const_data_ptr<uint8_t>();
    std::atomic<int64_t> first_bad{kNoError};
    at::parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) {
      at::ThreadLocalStateGuard guard(tls);
      at::Tensor tile = at::empty({tile_n, K}, xc.options());
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t n0 = t * tile_n, rows = std::min(tile_n, N - n0);
        if (!meta_rows_valid(mp, K, n0, n0 + rows, first_bad)) return;
#if SPARSEOPS_X86_KERNELS
        if (avx512) {
          linear24_decompress_rows_avx512(type, vp, mp, K, n0, rows, tile.mutable_data_ptr());
        } else
#endif
        {
          decompress_rows<scalar_t>(vp, mp, K, n0, rows, tile.mutable_data_ptr<scalar_t>());
        }
        const at::Tensor w = tile.narrow(0, 0, rows);
        at::Tensor o = out.narrow(1, n0, rows);
        if (bias.has_value()) {
          at::addmm_out(o, bias->narrow(0, n0, rows), xc, w.t());
        } else {
          at::mm_out(o, xc, w.t());
        }
        apply_activation_(o, act);
      }
    });
    check_meta_result(kOp, "meta", first_bad == kNoError ? -1 : first_bad.load(), K / 4);
  });
}

// ---- inf / NaN in x -----------------------------------------------------------------------------------

// Rows of a contiguous x [M, K] that hold an inf or a NaN: an all-ones exponent, tested on the raw bits
// without an early exit (the compiler vectorises it; std::isfinite on each element did not, ~1 ns each).
template <typename Bits, Bits kExponent>
bool row_finite(const Bits* row, int64_t K) {
  bool finite = true;
  for (int64_t k = 0; k < K; ++k) finite &= (row[k] & kExponent) != kExponent;
  return finite;
}

std::vector<int64_t> nonfinite_rows(const at::Tensor& xc) {
  const int64_t M = xc.size(0), K = xc.size(1);
  std::vector<int64_t> rows;
  for (int64_t m = 0; m < M; ++m) {
    bool finite = true;
    if (xc.scalar_type() == at::kFloat) {
      finite = row_finite<uint32_t, 0x7F800000u>(static_cast<const uint32_t*>(xc.const_data_ptr()) + m * K, K);
    } else {  // fp16 (exponent bits 0x7C00) or bf16 (0x7F80)
      const uint16_t* row = static_cast<const uint16_t*>(xc.const_data_ptr()) + m * K;
      finite = xc.scalar_type() == at::kHalf ? row_finite<uint16_t, 0x7C00>(row, K) : row_finite<uint16_t, 0x7F80>(row, K);
    }
    if (!finite) rows.push_back(m);
  }
  return rows;
}

// A pruned weight is structurally absent: x at a pruned position never enters the product (so an inf
// there cannot turn into 0 * inf = NaN), as on sparse tensor cores. The gather kernels (AVX-512,
// portable, AVX2 from 5 rows) read x at kept positions only; the AVX2 kernel below 5 rows and the tiles
// multiply pruned positions by an explicit zero, so after them the rows of x holding inf/NaN (rare; found by one pass over x) are
// recomputed by a gather kernel.
void restore_structural_rows(const at::Tensor& xc, const at::Tensor& vc, const at::Tensor& mc,
                             const std::optional<at::Tensor>& bias, Act act, at::Tensor& out) {
  const std::vector<int64_t> rows = nonfinite_rows(xc);
  if (rows.empty()) return;
  const at::Tensor idx = at::tensor(rows, xc.options().dtype(at::kLong));
  const at::Tensor xb = xc.index_select(0, idx);
  at::Tensor ob = at::empty({xb.size(0), out.size(1)}, out.options());
  linear24_small_m(xb, vc, mc, bias, act, ob, /*gather_only=*/true);
  out.index_copy_(0, idx, ob);
}

// ---- the op ---------------------------------------------------------------------------------------

// values_t/meta_t (W^T compressed) are for the backward (python/sparseops/sparse24/linear.py): checked, not read.
at::Tensor sparse24_linear_cpu(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
                               const std::optional<at::Tensor>& bias, c10::string_view activation,
                               const std::optional<at::Tensor>& values_t, const std::optional<at::Tensor>& meta_t) {
  const Act act = parse_activation(kOp, activation);
  const Linear24Sizes s = check_linear24_inputs(x, values, meta, bias);
  check_linear24_transposed(x, s, values, values_t, meta_t);
  check_device_type(kOp, "x", x, at::kCPU);
  at::Tensor out = at::empty({s.m, s.n}, x.options());
  if (s.m == 0 || s.n == 0) return out;
  if (s.k == 0) {  // an empty sum: act(bias), or act(0) = 0
    if (bias.has_value()) {
      out.copy_(bias->unsqueeze(0).expand({s.m, s.n}));
      apply_activation_(out, act);
    } else {
      out.zero_();
    }
    return out;
  }
  const at::Tensor xc = x.contiguous();
  const at::Tensor vc = values.contiguous();
  const at::Tensor mc = meta.contiguous();
  const std::optional<at::Tensor> bc = bias.has_value() ? std::optional<at::Tensor>(bias->contiguous()) : std::nullopt;
  const bool small_m = s.m <= gemv_max_m(x.scalar_type());
  if (small_m) {
    linear24_small_m(xc, vc, mc, bc, act, out);
  } else {
    linear24_large_m(xc, vc, mc, bc, act, out);
  }
  // Kernels that multiply pruned positions by 0:
  const bool expands = (cpu_use_avx2() && !avx2_x_transposed(s.m)) || small_m_uses_amx(x.scalar_type(), s.m);
  if (!small_m || expands) restore_structural_rows(xc, vc, mc, bc, act, out);
  return out;
}

}  // namespace

void linear24_rows_baseline(ElemType type, const void* values, const uint8_t* meta, int64_t K, const float* x,
                            int64_t ldx, int64_t M, const float* bias, int64_t n0, int64_t n1, float* z, int64_t ldz) {
  switch (type) {
    case ElemType::kFloat:
      rows_baseline(static_cast<const float*>(values), meta, K, x, ldx, M, bias, n0, n1, z, ldz);
      break;
    case ElemType::kHalf:
      rows_baseline(static_cast<const c10::Half*>(values), meta, K, x, ldx, M, bias, n0, n1, z, ldz);
      break;
    case ElemType::kBFloat16:
      rows_baseline(static_cast<const c10::BFloat16*>(values), meta, K, x, ldx, M, bias, n0, n1, z, ldz);
      break;
  }
}

TORCH_LIBRARY_IMPL(sparseops, CPU, m) { m.impl("sparse24_linear", &sparse24_linear_cpu); }

}  // namespace sparseops::sparse24
