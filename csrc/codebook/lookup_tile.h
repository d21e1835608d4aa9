// The register-tiled scan of codebook_lookup (see lookup_cpu_kernels.h), written once against a small
// vector interface V and included *inside an anonymous namespace* by each ISA file (lookup_avx512.cpp,
// lookup_avx2.cpp, lookup_cpu.cpp): every copy gets internal linkage, so a copy compiled with -mavx512*
// can never be picked by the linker for another file (the ODR hazard of shared inline helpers).
// Include <cstdint> and the kernels header before the anonymous namespace.
//
// V provides: E (the packed element: float, uint16_t for bf16 pairs, int16_t for grid pairs), kPair (dims
// per step: 1, or 2 for a pair dot), F (vector of kW floats), P/B (a panel vector / a broadcast z step),
// load_panel(p), bcast_z(p), dot(acc, b, p) = acc + sum over the step's dims of z * c, lt(a, b) -> lane
// bitmask of a < b, load(p) / store(p, v) for floats. A V on integer grids (the int16 screen,
// lookup_quant.h) also provides Acc (its exact integer accumulator), zero() (an accumulator of zeros) and
// to_e(acc, scale, cn) (the expanded distance from the integer dot).
//
// Tile: MR query rows x NV vectors of codes, fp32 accumulators initialised with |c|^2 by the first
// d-step's FMA (grid V: integer accumulators from zero, turned into e at the tile's end). The argmin is
// fused: each tile only compares its MR x NV values of e with the rows' thresholds (one compare per
// vector) and branches to offer() in the rare case a lane beats one; the thresholds live in registers.

template <class V>
concept GridScan = requires { typename V::Acc; };

template <class V>
struct AccOf {
  using type = typename V::F;
};
template <GridScan V>
struct AccOf<V> {
  using type = typename V::Acc;
};

// Offers code k with expanded distance e to a row: keeps it when e < thr, tightens thr to best + margin
// and drops the entries that no longer pass it. When all kCap slots are taken the code goes to the spill
// buffer (row = the row's index within the scan's rc), and when that is full too the row is flagged
// (overflow) and spills no more: best/thr keep tracking either way, and the glue resolves the row after
// the task from the packed codes.
inline void offer(RowCands& r, float e, int32_t k, int32_t row, Spill* sp) {
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
  if (r.count == kCap) {  // many codes within the error bound (duplicate or near-identical codes)
    if (r.overflow) return;  // the glue re-collects all its codes within the bound after the task
    if (sp->size == sp->cap) {  // drop the entries that their rows' thresholds have passed by since, and
      int64_t kept = 0;         // those of rows flagged since (each compaction that fails flags one row)
      for (int64_t j = 0; j < sp->size; ++j) {
        const RowCands& owner = sp->rows[sp->row[j]];
        if (sp->val[j] < owner.thr && !owner.overflow) {
          sp->row[kept] = sp->row[j];
          sp->idx[kept] = sp->idx[j];
          sp->val[kept] = sp->val[j];
          ++kept;
        }
      }
      sp->size = kept;
    }
    if (sp->size < sp->cap) {
      sp->row[sp->size] = row;
      sp->idx[sp->size] = k;
      sp->val[sp->size] = e;
      ++sp->size;
    } else {
      r.overflow = 1;
    }
    return;
  }
  r.idx[r.count] = k;
  r.val[r.count] = e;
  ++r.count;
}

// zs: [rows][steps * kPair] elements; panel: [ntiles][steps][NR][kPair] elements.
template <class V, int MR, int NV>
void scan_tiles(const typename V::E* __restrict__ zs, int64_t rows, int64_t steps,
                const typename V::E* __restrict__ panel, const float* __restrict__ cn, int64_t ntiles, int32_t k0,
                RowCands* __restrict__ rc, Spill* __restrict__ spill) {
  using F = typename V::F;
  using P = typename V::P;
  constexpr int W = V::kW;
  constexpr int NR = W * NV;
  constexpr int K2 = V::kPair;
  const int64_t D = steps;  // the loops below count steps
  static_assert(NR <= 32, "hit masks are 32-bit");
  for (int64_t i0 = 0; i0 < rows; i0 += MR) {
    const typename V::E* z = zs + i0 * D * K2;
    RowCands* r = rc + i0;
    F thr[MR];
#pragma GCC unroll 16
    for (int m = 0; m < MR; ++m) thr[m] = V::bcast(&r[m].thr);
    for (int64_t t = 0; t < ntiles; ++t) {
      const typename V::E* p = panel + t * D * NR * K2;
      typename AccOf<V>::type acc[MR][NV];
      int64_t d0 = 0;
      if constexpr (GridScan<V>) {  // exact integer sums from zero
#pragma GCC unroll 16
        for (int m = 0; m < MR; ++m) {
#pragma GCC unroll 16
          for (int v = 0; v < NV; ++v) acc[m][v] = V::zero();
        }
      } else {  // the first step's FMA starts from |c|^2
        P pv[NV];
#pragma GCC unroll 16
        for (int v = 0; v < NV; ++v) pv[v] = V::load_panel(p + v * W * K2);
#pragma GCC unroll 16
        for (int m = 0; m < MR; ++m) {
          const auto b = V::bcast_z(z + m * D * K2);
#pragma GCC unroll 16
          for (int v = 0; v < NV; ++v) acc[m][v] = V::dot(V::load(cn + t * NR + v * W), b, pv[v]);
        }
        d0 = 1;
      }
      auto step = [&](int64_t d) {
        P pv[NV];
#pragma GCC unroll 16
        for (int v = 0; v < NV; ++v) pv[v] = V::load_panel(p + (d * NR + v * W) * K2);
#pragma GCC unroll 16
        for (int m = 0; m < MR; ++m) {
          const auto b = V::bcast_z(z + (m * D + d) * K2);
#pragma GCC unroll 16
          for (int v = 0; v < NV; ++v) acc[m][v] = V::dot(acc[m][v], b, pv[v]);
        }
      };
      for (int64_t d = d0; d < D; ++d) step(d);
      F ev[MR][NV];  // e (for fp32 / bf16 V: the accumulators themselves)
#pragma GCC unroll 16
      for (int m = 0; m < MR; ++m) {
#pragma GCC unroll 16
        for (int v = 0; v < NV; ++v) {
          if constexpr (GridScan<V>) {
            ev[m][v] = V::to_e(acc[m][v], V::bcast(&r[m].scale), V::load(cn + t * NR + v * W));
          } else {
            ev[m][v] = acc[m][v];
          }
        }
      }
      uint32_t any = 0;
#pragma GCC unroll 16
      for (int m = 0; m < MR; ++m) {
#pragma GCC unroll 16
        for (int v = 0; v < NV; ++v) any |= V::lt(ev[m][v], thr[m]);
      }
      if (__builtin_expect(any != 0, 0)) {
        // Rare: hand the lanes that beat a threshold to offer(), in increasing code order per row.
        alignas(64) float e[NR];
#pragma GCC unroll 16
        for (int m = 0; m < MR; ++m) {
          uint32_t hit = 0;
#pragma GCC unroll 16
          for (int v = 0; v < NV; ++v) hit |= V::lt(ev[m][v], thr[m]) << (v * W);
          if (hit == 0) continue;
#pragma GCC unroll 16
          for (int v = 0; v < NV; ++v) V::store(e + v * W, ev[m][v]);
          while (hit != 0) {
            const int lane = __builtin_ctz(hit);
            hit &= hit - 1;
            offer(r[m], e[lane], k0 + static_cast<int32_t>(t * NR + lane), static_cast<int32_t>(i0 + m), spill);
          }
          thr[m] = V::bcast(&r[m].thr);
        }
      }
    }
  }
}
