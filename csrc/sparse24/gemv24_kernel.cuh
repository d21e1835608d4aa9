#pragma once
// The small-M 2:4 GEMV (sparse24_linear on the "packed" layout, M <= 16) as templates: included by
// linear24_kernel.cu (which dispatches) and instantiated per dtype in gemv24_{f32,f16,bf16}.cu, so that
// the 12 heavily unrolled instantiations compile in parallel instead of in one long unit.
//
// GEMV layout of the work: a warp owns kRows consecutive output features n; its 32 lanes stride over
// K in chunks of 16 bytes of values (8 kept 16-bit values = 4 groups = 16 dense columns; fp32: 4 kept
// = 2 groups = 8 columns). Per chunk a lane loads, with 128-bit loads, the values of its kRows rows,
// their metadata (2 or 1 bytes per row), and the 32 bytes of x under the chunk for every row m of x
// (read through L1: every warp of the grid reads the same x, which stays cached). Each 2:4 code picks
// the two kept columns of x (one PRMT for 16-bit types), products accumulate in fp32, and the warp
// reduces with shuffles before the fused bias + activation and the store. One chunk of x serves kRows
// rows of W, so L1 traffic per weight byte falls by kRows.
#include <cstring>

#include "common/cuda_dispatch.cuh"
#include "sparse24/linear24_launch.h"

namespace sparseops::sparse24 {
namespace gemv24_detail {

constexpr int kWarpsPerBlock = 4;

template <typename T>
struct GemvTraits {
  static constexpr int kGroups = 16 / (2 * static_cast<int>(sizeof(T)));  // groups per 16 B of values
  static constexpr int kCols = 4 * kGroups;                                 // dense columns per chunk
  static constexpr bool k16Bit = sizeof(T) == 2;
};

__device__ __forceinline__ float2 bits_to_float2(uint32_t b, const __half*) {
  __half2 h;
  memcpy(&h, &b, sizeof(h));
  return __half22float2(h);
}
__device__ __forceinline__ float2 bits_to_float2(uint32_t b, const __nv_bfloat16*) {
  return make_float2(__uint_as_float(b << 16), __uint_as_float(b & 0xffff0000u));
}

// Metadata of chunk c (kGroups nibbles, group 0 in the low nibble) from one row's packed bytes.
template <typename T>
__device__ __forceinline__ uint32_t load_meta_chunk(const uint8_t* row_meta, int64_t c) {
  if constexpr (GemvTraits<T>::kGroups == 4) {
    return static_cast<uint32_t>(__ldg(row_meta + 2 * c)) | (static_cast<uint32_t>(__ldg(row_meta + 2 * c + 1)) << 8);
  } else {
    return __ldg(row_meta + c);
  }
}

// Per (row, group) selector: for 16-bit types the __byte_perm control that gathers x[a] (low half)
// and x[b] (high half) from the group's 8 bytes of x; for fp32 the code itself.
template <typename T>
__device__ __forceinline__ uint32_t make_selector(uint32_t code) {
  if constexpr (GemvTraits<T>::k16Bit) {
    const uint32_t a2 = 2 * (code & 3), b2 = 2 * ((code >> 2) & 3);
    return a2 | ((a2 + 1) << 4) | (b2 << 8) | ((b2 + 1) << 12);
  } else {
    return code;
  }
}

// The two kept weights of group g of a 16-byte values chunk, as floats.
template <typename T>
__device__ __forceinline__ float2 pair_weights(const uint32_t (&w)[4], int g) {
  if constexpr (GemvTraits<T>::k16Bit) {
    return bits_to_float2(w[g], static_cast<const T*>(nullptr));
  } else {
    return make_float2(__uint_as_float(w[2 * g]), __uint_as_float(w[2 * g + 1]));
  }
}

// x at the two kept columns of group g of a 32-byte x chunk.
template <typename T>
__device__ __forceinline__ float2 pick_x(const uint32_t (&xw)[8], int g, uint32_t sel) {
  if constexpr (GemvTraits<T>::k16Bit) {
    return bits_to_float2(__byte_perm(xw[2 * g], xw[2 * g + 1], sel), static_cast<const T*>(nullptr));
  } else {
    const float x0 = __uint_as_float(xw[4 * g]), x1 = __uint_as_float(xw[4 * g + 1]);
    const float x2 = __uint_as_float(xw[4 * g + 2]), x3 = __uint_as_float(xw[4 * g + 3]);
    const uint32_t a = sel & 3, b = (sel >> 2) & 3;
    const float xa = (a & 2) ? ((a & 1) ? x3 : x2) : ((a & 1) ? x1 : x0);
    const float xb = (b & 2) ? ((b & 1) ? x3 : x2) : ((b & 1) ? x1 : x0);
    return make_float2(xa, xb);
  }
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

template <typename T, int kMaxM, int kRows>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    gemv24_kernel(const T* __restrict__ x, const T* __restrict__ values, const uint8_t* __restrict__ meta,
                  const T* __restrict__ bias, T* __restrict__ y, int M, int64_t N, int64_t K, int64_t ldx, int act,
                  bool vectorized) {
  using Tr = GemvTraits<T>;
  const int lane = threadIdx.x & 31;
  const int64_t warp = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  const int64_t n0 = warp * kRows;
  if (n0 >= N) return;  // uniform per warp
  const int64_t half_k = K / 2, meta_cols = (K / 4 + 1) / 2;

  const T* row_v[kRows];
  const uint8_t* row_m[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int64_t nr = n0 + r < N ? n0 + r : N - 1;  // rows past N re-read row N-1; never stored
    row_v[r] = values + nr * half_k;
    row_m[r] = meta + nr * meta_cols;
  }

  float acc[kRows][kMaxM];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
#pragma unroll
    for (int m = 0; m < kMaxM; ++m) acc[r][m] = 0.0f;
  }

  if (vectorized) {
    const int64_t chunks = K / Tr::kCols;
#pragma unroll 2
    for (int64_t c = lane; c < chunks; c += 32) {
      uint32_t sel[kRows][Tr::kGroups];
      float2 wf[kRows][Tr::kGroups];
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const uint4 v = __ldg(reinterpret_cast<const uint4*>(row_v[r]) + c);
        const uint32_t w[4] = {v.x, v.y, v.z, v.w};
        const uint32_t mc = load_meta_chunk<T>(row_m[r], c);
#pragma unroll
        for (int g = 0; g < Tr::kGroups; ++g) {
          sel[r][g] = make_selector<T>((mc >> (4 * g)) & 0xF);
          wf[r][g] = pair_weights<T>(w, g);
        }
      }
#pragma unroll
      for (int m = 0; m < kMaxM; ++m) {
        if (m < M) {
          const uint4* xp = reinterpret_cast<const uint4*>(x + m * ldx + c * Tr::kCols);
          const uint4 x0 = __ldg(xp), x1 = __ldg(xp + 1);
          const uint32_t xw[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
#pragma unroll
          for (int r = 0; r < kRows; ++r) {
#pragma unroll
            for (int g = 0; g < Tr::kGroups; ++g) {
              const float2 xv = pick_x<T>(xw, g, sel[r][g]);
              acc[r][m] = fmaf(wf[r][g].x, xv.x, acc[r][m]);
              acc[r][m] = fmaf(wf[r][g].y, xv.y, acc[r][m]);
            }
          }
        }
      }
    }
  } else {
    // Any K % 4 == 0 and any alignment: one group per lane step, scalar loads.
    const int64_t groups = K / 4;
    for (int64_t g = lane; g < groups; g += 32) {
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const float v0 = to_float(row_v[r][2 * g]), v1 = to_float(row_v[r][2 * g + 1]);
        const uint32_t code = (row_m[r][g >> 1] >> ((g & 1) * 4)) & 0xF;
        const int a = code & 3, b = (code >> 2) & 3;
#pragma unroll
        for (int m = 0; m < kMaxM; ++m) {
          if (m < M) {
            const T* xr = x + m * ldx + 4 * g;
            acc[r][m] = fmaf(v0, to_float(xr[a]), acc[r][m]);
            acc[r][m] = fmaf(v1, to_float(xr[b]), acc[r][m]);
          }
        }
      }
    }
  }

#pragma unroll
  for (int r = 0; r < kRows; ++r) {
#pragma unroll
    for (int m = 0; m < kMaxM; ++m) {
      if (m < M) acc[r][m] = warp_sum(acc[r][m]);
    }
  }
  // Every lane now holds every sum; lane (r * kMaxM + m) % 32 stores entry (r, m).
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int64_t n = n0 + r;
#pragma unroll
    for (int m = 0; m < kMaxM; ++m) {
      if (m < M && n < N && lane == ((r * kMaxM + m) & 31)) {
        float v = acc[r][m];
        if (bias != nullptr) v += to_float(bias[n]);
        y[m * N + n] = from_float<T>(apply_activation(v, act));
      }
    }
  }
}

}  // namespace gemv24_detail

// Launches the GEMV for M <= kMaxM rows of x (kMaxM in {1, 4, 8, 16}).
template <typename T, int kMaxM>
cudaError_t launch_gemv24_m(const Gemv24Params& p, cudaStream_t stream) {
  using namespace gemv24_detail;
  constexpr int kRows = kMaxM == 1 ? 2 : 4;
  const int64_t warps = (p.N + kRows - 1) / kRows;
  const int64_t blocks = (warps + kWarpsPerBlock - 1) / kWarpsPerBlock;
  if (blocks > 2147483647LL) return cudaErrorInvalidConfiguration;
  gemv24_kernel<T, kMaxM, kRows><<<static_cast<unsigned int>(blocks), kWarpsPerBlock * 32, 0, stream>>>(
      static_cast<const T*>(p.x), static_cast<const T*>(p.values), p.meta, static_cast<const T*>(p.bias),
      static_cast<T*>(p.y), static_cast<int>(p.M), p.N, p.K, p.ldx, static_cast<int>(p.act), p.vectorized);
  return cudaGetLastError();
}

// Explicit instantiations: `extern` everywhere but in the one gemv24_<dtype>.cu that defines them.
#define SPARSEOPS_GEMV24_INSTANCES(EXTERN, T)                                  \
  EXTERN template cudaError_t launch_gemv24_m<T, 1>(const Gemv24Params&, cudaStream_t);  \
  EXTERN template cudaError_t launch_gemv24_m<T, 4>(const Gemv24Params&, cudaStream_t);  \
  EXTERN template cudaError_t launch_gemv24_m<T, 8>(const Gemv24Params&, cudaStream_t);  \
  EXTERN template cudaError_t launch_gemv24_m<T, 16>(const Gemv24Params&, cudaStream_t);

}  // namespace sparseops::sparse24
