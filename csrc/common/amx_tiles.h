#pragma once
// AMX tile helpers for the *_amx.cpp kernels (compiled with -mamx-tile -mamx-bf16 on top of the AVX-512
// flags; only those files include this, all with the same flags, so its inline functions are ODR-safe).
//
// One tile-register convention for every kernel: tmm0-1 first sources (A), tmm2-3 second sources (B;
// two so that loading the next one need not wait for the product reading the previous), tmm4-7 fp32
// accumulators (C). Every tile is configured as 16 rows x 64 bytes (16 x 32 bf16, 16 x 16 uint32 pairs or
// fp32); kernels pad partial tiles with zeros in their own buffers rather than reconfigure.
// The intrinsics name tiles by immediates (they stringify them), hence the switches: with constant
// arguments after inlining each folds to one instruction.
#include <immintrin.h>

#include <cstdint>

namespace sparseops::amx {

constexpr int64_t kTileRows = 16;
constexpr int64_t kTileBytes = 64;

// Loads the 16 x 64-byte configuration of tmm0-7 into this thread's tile state. Call at the start of every
// kernel call: other code on the thread (oneDNN) may have loaded its own configuration in between.
inline void configure_tiles() {
  struct alignas(64) {
    uint8_t palette = 1, start_row = 0, reserved[14] = {};
    uint16_t colsb[16] = {};
    uint8_t rows[16] = {};
  } cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = kTileRows;
    cfg.colsb[t] = kTileBytes;
  }
  _tile_loadconfig(&cfg);
}

// configure_tiles unless this thread's tiles are configured so already (reading the configuration back
// is cheaper than loading it), for kernels called many times in a row that leave the tiles configured
// and whose caller releases them when done.
inline void ensure_tiles_configured() {
  struct alignas(64) {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
  } have;
  _tile_storeconfig(&have);
  bool same = have.palette == 1 && have.start_row == 0;
  for (int t = 0; t < 8; ++t) same = same && have.rows[t] == kTileRows && have.colsb[t] == kTileBytes;
  if (!same) configure_tiles();
}
// A (0-1) or B (2-3) tile from 16 rows `stride` bytes apart.
__attribute__((always_inline)) inline void load_source(int t, const void* p, int64_t stride) {
  switch (t) {
    case 0: _tile_loadd(0, p, stride); break;
    case 1: _tile_loadd(1, p, stride); break;
    case 2: _tile_loadd(2, p, stride); break;
    default: _tile_loadd(3, p, stride); break;
  }
}

// C tile t (4-7) to 16 rows `stride` bytes apart.
__attribute__((always_inline)) inline void store_acc(int t, void* p, int64_t stride) {
  switch (t) {
    case 4: _tile_stored(4, p, stride); break;
    case 5: _tile_stored(5, p, stride); break;
    case 6: _tile_stored(6, p, stride); break;
    default: _tile_stored(7, p, stride); break;
  }
}

// C tile t (4-7) from 16 rows `stride` bytes apart (to accumulate onto them).
__attribute__((always_inline)) inline void load_acc(int t, const void* p, int64_t stride) {
  switch (t) {
    case 4: _tile_loadd(4, p, stride); break;
    case 5: _tile_loadd(5, p, stride); break;
    case 6: _tile_loadd(6, p, stride); break;
    default: _tile_loadd(7, p, stride); break;
  }
}
__attribute__((always_inline)) inline void zero_acc(int t) {
  switch (t) {
    case 4: _tile_zero(4); break;
    case 5: _tile_zero(5); break;
    case 6: _tile_zero(6); break;
    default: _tile_zero(7); break;
  }
}

// C tile c (4-7) += A tile a (0-1) . B tile b (2-3), bf16 pairs multiplied and summed in fp32.
__attribute__((always_inline)) inline void dot_bf16(int c, int a, int b) {
#define SPARSEOPS_DOT(C, A, B) \
  case (C) * 4 + (A) * 2 + (B) - 2: _tile_dpbf16ps(C, A, B); break;
  switch (c * 4 + a * 2 + b - 2) {
    SPARSEOPS_DOT(4, 0, 2) SPARSEOPS_DOT(4, 0, 3) SPARSEOPS_DOT(4, 1, 2) SPARSEOPS_DOT(4, 1, 3)
    SPARSEOPS_DOT(5, 0, 2) SPARSEOPS_DOT(5, 0, 3) SPARSEOPS_DOT(5, 1, 2) SPARSEOPS_DOT(5, 1, 3)
    SPARSEOPS_DOT(6, 0, 2) SPARSEOPS_DOT(6, 0, 3) SPARSEOPS_DOT(6, 1, 2) SPARSEOPS_DOT(6, 1, 3)
    SPARSEOPS_DOT(7, 0, 2) SPARSEOPS_DOT(7, 0, 3) SPARSEOPS_DOT(7, 1, 2) SPARSEOPS_DOT(7, 1, 3)
    default: break;
  }
#undef SPARSEOPS_DOT
}

// The intrinsics' asm does not declare the memory it reads or writes: keeps the compiler from moving
// plain stores into a buffer past the tile load that reads it, or reads of a buffer before the tile store
// that writes it.
inline void memory_barrier() { asm volatile("" ::: "memory"); }

}  // namespace sparseops::amx
