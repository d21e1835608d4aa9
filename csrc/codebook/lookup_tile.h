// The register-tiled scan of codebook_lookup (see lookup_cpu_kernels.h), written once against a small
// vector interface V and included *inside an anonymous namespace* by each ISA file (lookup_avx512.cpp,
// lookup_avx2.cpp, lookup_cpu.cpp): every copy gets internal linkage, so a copy compiled with -mavx512*
// can never be picked by the linker for another file (the ODR hazard of shared inline helpers).
// Include <cstdint> and the kernels header before the anonymous namespace.
//
// V provides: F (vector of kW floats), load(p), bcast(p), fma(a, b, c) = a*b + c, lt(a, b) -> lane bitmask
// of a < b, store(p, v).
//
// Tile: MR query rows x NV vectors of codes, accumulators initialised with |c|^2 by the first
// d-step's FMA. The argmin is fused: each tile only compares its MR x NV accumulators with the rows'
// thresholds (one compare per vector) and branches to offer() in the rare case a lane beats one; the
// thresholds live in registers.

// Offers code k with expanded distance e to a row: keeps it when e < thr, tightens thr to best + margin
// and drops the entries that no longer pass it; flags overflow when all kCap slots are taken.
inline void offer(RowCands& r, float e, int32_t k) {
  if (!(e < r.thr)) return;
  if (e < r.best) {
    r.best = e;
    r.thr = e + r.margin;
    int32_t kept = 0;
    for (int32_t j = 0; j < r.count; ++j) {
      if (r.val[j] < r.thr) {
        r.idx[kept] = r.idx[j];
        r.val[kept] = r.val[j];
        ++kept;
      }
    }
    r.count = kept;
  }
  if (r.count == kCap) {  // too many codes within the error bound: the glue re-scans this row exactly
    r.overflow = 1;
    r.thr = -__builtin_inff();
    return;
  }
  r.idx[r.count] = k;
  r.val[r.count] = e;
  ++r.count;
}

template <class V, int MR, int NV>
void scan_tiles(const float* __restrict__ zs, int64_t rows, int64_t D, const float* __restrict__ panel,
                const float* __restrict__ cn, int64_t ntiles, int32_t k0, RowCands* __restrict__ rc) {
  using F = typename V::F;
  constexpr int W = V::kW;
  constexpr int NR = W * NV;
  static_assert(NR <= 32, "hit masks are 32-bit");
  for (int64_t i0 = 0; i0 < rows; i0 += MR) {
    const float* z = zs + i0 * D;
    RowCands* r = rc + i0;
    F thr[MR];
#pragma GCC unroll 16
    for (int m = 0; m < MR; ++m) thr[m] = V::bcast(&r[m].thr);
    for (int64_t t = 0; t < ntiles; ++t) {
      const float* p = panel + t * D * NR;
      F acc[MR][NV];
      {
        F c[NV], pv[NV];
#pragma GCC unroll 16
        for (int v = 0; v < NV; ++v) {
          c[v] = V::load(cn + t * NR + v * W);
          pv[v] = V::load(p + v * W);
        }
#pragma GCC unroll 16
        for (int m = 0; m < MR; ++m) {
          const F b = V::bcast(z + m * D);
#pragma GCC unroll 16
          for (int v = 0; v < NV; ++v) acc[m][v] = V::fma(b, pv[v], c[v]);
        }
      }
      for (int64_t d = 1; d < D; ++d) {
        F pv[NV];
#pragma GCC unroll 16
        for (int v = 0; v < NV; ++v) pv[v] = V::load(p + d * NR + v * W);
#pragma GCC unroll 16
        for (int m = 0; m < MR; ++m) {
          const F b = V::bcast(z + m * D + d);
#pragma GCC unroll 16
          for (int v = 0; v < NV; ++v) acc[m][v] = V::fma(b, pv[v], acc[m][v]);
        }
      }
      uint32_t any = 0;
#pragma GCC unroll 16
      for (int m = 0; m < MR; ++m) {
#pragma GCC unroll 16
        for (int v = 0; v < NV; ++v) any |= V::lt(acc[m][v], thr[m]);
      }
      if (__builtin_expect(any != 0, 0)) {
        // Rare: hand the lanes that beat a threshold to offer(), in increasing code order per row.
        alignas(64) float e[NR];
#pragma GCC unroll 16
        for (int m = 0; m < MR; ++m) {
          uint32_t hit = 0;
#pragma GCC unroll 16
          for (int v = 0; v < NV; ++v) hit |= V::lt(acc[m][v], thr[m]) << (v * W);
          if (hit == 0) continue;
#pragma GCC unroll 16
          for (int v = 0; v < NV; ++v) V::store(e + v * W, acc[m][v]);
          while (hit != 0) {
            const int lane = __builtin_ctz(hit);
            hit &= hit - 1;
            offer(r[m], e[lane], k0 + static_cast<int32_t>(t * NR + lane));
          }
          thr[m] = V::bcast(&r[m].thr);
        }
      }
    }
  }
}
